/// jemalloc with background threads (configured in `.cargo/config.toml`): pages freed
/// after a burst of large reports go back to the system within about a second, even
/// when every request thread has gone idle and makes no allocator call that could purge
/// them. With glibc's malloc the service kept its high-water mark resident (~440 MiB
/// idle after the benchmark matrix); with mimalloc, which purges at the owning thread's
/// next allocation, half of a 16 × 50 MiB burst stayed. The binary only: library users
/// keep their own allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    anchorpipe_ingest::cli::main().await
}
