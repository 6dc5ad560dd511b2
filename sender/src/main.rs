fn main() -> std::process::ExitCode {
    anchorpipe_sender::cli::main()
}
