/// jemalloc with background threads (configured in `.cargo/config.toml`): pages freed
/// after a burst of large reports go back to the system within about a second, even
/// when every request thread has gone idle. An allocator that purges only on the owning
/// thread's next call, or never, keeps the burst resident. The binary only: library
/// users keep their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    anchorpipe_ingest::cli::main().await
}
