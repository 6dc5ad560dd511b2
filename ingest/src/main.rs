/// mimalloc returns the pages of freed blocks to the system shortly after they are
/// freed, so the memory of a burst of large reports is given back once it is over; with
/// glibc's malloc the service kept its high-water mark resident (~440 MiB idle after the
/// benchmark matrix). The binary only: library users keep their own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    anchorpipe_ingest::cli::main().await
}
