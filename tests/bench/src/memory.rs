//! The memory run: 16 correctly signed reports of almost 50 MiB each (the default body
//! limit) sent at once. The service's in-flight budget (`limits.maxInFlightBytes`,
//! default 200 MiB) lets about four bodies in at a time; the others wait up to 10 s for
//! budget or are answered 503, so the peak RSS must stay near idle + a small multiple of
//! the cap however many uploads arrive.

use std::sync::Arc;
use std::time::Duration;

use anchorpipe_crds::config::IngestConfig;
use uuid::Uuid;

use crate::load::{self, HttpClient, Mode, Outcome, Stop, Target};
use crate::matrix::{Ingest, SECRET};
use crate::procstat;
use crate::report::Template;

/// Concurrent uploads of the run.
pub const UPLOADS: u64 = 16;

/// Failure details per test: 10,000 tests × (this + ~190 bytes of the rest) ≈ 49.6 MiB,
/// just under the 50 MiB default body limit.
pub const HUGE_FAILURE_BYTES: usize = 5_000;

#[derive(Debug, Clone)]
pub struct MemoryRun {
    pub body_bytes: usize,
    pub outcome: Outcome,
    pub idle_rss: Option<f64>,
    pub peak_rss: Option<f64>,
    /// Highest RSS seen by sampling every 20 ms (a cross-check of `VmHWM`).
    pub sampled_peak: f64,
    pub cap_mib: f64,
    /// RSS two seconds after the last answer: what the process keeps once idle again.
    pub settled_rss: Option<f64>,
    /// Peak RSS of a first phase with only as many uploads as the cap admits at once
    /// (4): if 16 peak no higher, memory does not grow with the number of uploads.
    pub within_cap_peak: Option<f64>,
}

pub async fn run(
    client: &HttpClient,
    service: &Ingest,
    repo: Uuid,
    config: &IngestConfig,
) -> anyhow::Result<MemoryRun> {
    let template = Arc::new(Template::huge(repo, HUGE_FAILURE_BYTES));
    let body_bytes = template.len() + 12;
    let target = Target {
        url: service.url()?,
        secret: Arc::from(SECRET),
        template,
        run_prefix: "huge".to_owned(),
    };
    // Let the allocator give back what the matrix left before taking the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = procstat::rss_mib(service.pid);
    let admitted = (config.limits.max_in_flight_bytes / body_bytes as u64).max(1);
    procstat::reset_peak(service.pid);
    let first = Target {
        run_prefix: "huge-within-cap".to_owned(),
        ..target.clone()
    };
    load::run(
        client,
        &first,
        Mode::Concurrency(admitted as usize),
        Stop::Count(admitted),
    )
    .await?;
    let within_cap_peak = procstat::peak_rss_mib(service.pid);
    procstat::reset_peak(service.pid);
    let pid = service.pid;
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(procstat::rss_mib(pid).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let outcome = load::run(
        client,
        &target,
        Mode::Concurrency(UPLOADS as usize),
        Stop::Count(UPLOADS),
    )
    .await?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.await.unwrap_or(0.0);
    let peak_rss = procstat::peak_rss_mib(service.pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(MemoryRun {
        body_bytes,
        outcome,
        idle_rss,
        peak_rss,
        sampled_peak,
        cap_mib: config.limits.max_in_flight_bytes as f64 / 1048576.0,
        settled_rss: procstat::rss_mib(service.pid),
        within_cap_peak,
    })
}
