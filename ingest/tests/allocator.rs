//! The ingest binary's allocator is built to give memory back on its own
//! (`.cargo/config.toml`): a burst of 50 MiB reports must not stay resident once it is
//! over, and the request threads go idle with it, so purging cannot wait for their next
//! allocation. `tests/bench` measures the effect; this checks that the configuration
//! reached the allocator the binary links.

#![allow(clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocator_options() -> String {
    let mut printed = Vec::new();
    let mut options = tikv_jemalloc_ctl::stats_print::Options::default();
    options.skip_merged_arenas = true;
    options.skip_per_arena = true;
    options.skip_bin_size_classes = true;
    options.skip_large_size_classes = true;
    options.skip_mutex_statistics = true;
    tikv_jemalloc_ctl::stats_print::stats_print(&mut printed, options).unwrap();
    String::from_utf8(printed).unwrap()
}

#[test]
fn freed_pages_are_purged_by_background_threads_within_a_second() {
    let options = allocator_options();
    for expected in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(options.contains(expected), "{expected} not in:\n{options}");
    }
    assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
}
