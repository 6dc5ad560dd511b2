//! Where large bodies are verified, converted and parsed: blocking threads of their own
//! at a lower scheduling priority (nice +10), so that a tenant posting huge reports
//! (or its compromised CI posting 25 MiB arrays) takes the cores only when the small
//! reports of every other pipeline, the async workers and the pod's database and
//! broker clients, do not need them. The work itself is bounded elsewhere (CPU slots,
//! the in-flight byte budget); this only decides who waits when the cores are busy.

use std::sync::LazyLock;

use tokio::runtime::Runtime;
use tokio::task::JoinError;

/// How much nicer the bulk threads are than the pod (higher is lower priority).
const NICER_BY: i32 = 10;
/// The highest nice value there is.
const NICEST: i32 = 19;

static BULK: LazyLock<Option<Runtime>> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(threads * 2)
        .thread_name("bulk")
        .on_thread_start(lower_priority)
        .build()
        .inspect_err(|error| {
            tracing::warn!(%error, "no bulk threads; large bodies run at normal priority");
        })
        .ok()
});

fn lower_priority() {
    // On Linux the nice value is per thread; a non-root process may raise it (never
    // lower it again), which is all this needs.
    let thread = rustix::thread::gettid();
    // A new thread starts with its creator's nice value.
    let inherited = rustix::process::getpriority_process(Some(thread)).unwrap_or(0);
    let nice = (inherited + NICER_BY).min(NICEST);
    if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::debug!(%error, "could not lower a bulk thread's priority");
    }
}

/// Runs `work` on a bulk thread and waits for it.
pub async fn run<F, R>(work: F) -> Result<R, JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match &*BULK {
        Some(runtime) => runtime.spawn_blocking(work).await,
        None => tokio::task::spawn_blocking(work).await,
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bulk_work_runs_at_a_lower_priority() {
        let own = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = own().unwrap();
        let bulk = super::run(own).await.unwrap().unwrap();
        assert_eq!(bulk, (before + super::NICER_BY).min(super::NICEST));
        assert_eq!(own().unwrap(), before, "the caller's priority is untouched");
    }
}
