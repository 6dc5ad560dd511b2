#[tokio::main]
async fn main() -> std::process::ExitCode {
    anchorpipe_ingest::cli::main().await
}
