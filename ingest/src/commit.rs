//! Group commit: reports accepted at the same moment are stored in one transaction.
//!
//! Request handlers hand their validated report to [`GroupCommit::submit`] and wait for
//! its own outcome. `store.concurrentBatches` tasks take turns at the queue: one gathers
//! a batch (up to `store.maxBatchRows` reports or `store.maxBatchBytes`, waiting at most
//! `store.maxBatchWaitMs` after the first report of the batch became ready) while the
//! others commit theirs with [`store::store_batch`]. A client is answered only after the
//! commit that holds its report.
//!
//! When the database refuses a batch for what is in it (a constraint, a row-level
//! security policy, a deadlock), the batch is stored again one report per transaction,
//! so one bad report gets its own error and the others are stored. When the database is
//! unreachable or the connection is lost, the whole batch is answered with the failure:
//! its transaction never committed, so none of it is stored, and retrying each report
//! would only hold the clients longer.

use std::sync::Arc;
use std::time::Duration;

use anchorpipe_crds::config::{BrokerTopology, StoreConfig};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::{self, Stored, Submission};

/// Why a report was not stored. Cloneable: one failure can answer a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The database could not be reached or the connection was lost; nothing of the
    /// batch was stored.
    #[error("database unavailable: {0}")]
    Unavailable(Arc<sqlx::Error>),
    /// The database refused this report (after its batch was retried one by one).
    #[error("report refused by the database: {0}")]
    Refused(Arc<sqlx::Error>),
    /// The committing tasks are gone (the process is stopping).
    #[error("the committer has stopped")]
    Stopped,
}

impl CommitError {
    fn from_sqlx(error: sqlx::Error) -> Self {
        if refused_for_its_content(&error) {
            Self::Refused(Arc::new(error))
        } else {
            Self::Unavailable(Arc::new(error))
        }
    }
}

/// Whether `error` is the database refusing what was sent (so a retry of the reports one
/// by one can tell the bad one from the good), rather than the database being away.
fn refused_for_its_content(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            let class = error
                .code()
                .map(|code| code.chars().take(2).collect::<String>());
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, terminated backend), 58 system error, XX internal.
            !matches!(
                class.as_deref(),
                None | Some("08" | "53" | "57" | "58" | "XX")
            )
        }
        sqlx::Error::RowNotFound | sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Bounds of a batch, from the `store` section of the config.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    rows: usize,
    bytes: usize,
    wait: Duration,
}

impl From<&StoreConfig> for Bounds {
    fn from(config: &StoreConfig) -> Self {
        Self {
            rows: usize::try_from(config.max_batch_rows).unwrap_or(1).max(1),
            bytes: usize::try_from(config.max_batch_bytes).unwrap_or(usize::MAX),
            wait: Duration::from_millis(config.max_batch_wait_ms),
        }
    }
}

/// A report in the queue, with the way back to its handler.
struct Pending {
    submission: Submission,
    ready_at: Instant,
    reply: oneshot::Sender<Result<Stored, CommitError>>,
    /// What the report's request reserved for its body (in-flight budget), released
    /// only once the report is stored or refused.
    _hold: Box<dyn Send>,
}

/// What the committing tasks share.
struct Committer {
    pool: PgPool,
    tenant: String,
    topology: BrokerTopology,
    bounds: Bounds,
    metrics: Arc<Metrics>,
}

/// The handle request handlers submit reports through. The committing tasks stop once
/// every handle is dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("request_id", &self.submission.meta.request_id)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the committing tasks for `tenant`. Must be called inside a Tokio runtime.
    pub fn spawn(
        pool: PgPool,
        tenant: String,
        topology: BrokerTopology,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let bounds = Bounds::from(config);
        let tasks = usize::try_from(config.concurrent_batches)
            .unwrap_or(1)
            .max(1);
        // Room for a full batch per task plus one gathering: beyond that, submitting
        // waits, which only happens when the database is slower than the arrivals.
        let (queue, receiver) = mpsc::channel(bounds.rows.saturating_mul(tasks + 1));
        let receiver = Arc::new(Mutex::new(receiver));
        let committer = Arc::new(Committer {
            pool,
            tenant,
            topology,
            bounds,
            metrics,
        });
        for _ in 0..tasks {
            tokio::spawn(run(Arc::clone(&committer), Arc::clone(&receiver)));
        }
        Self { queue }
    }

    /// Stores `submission` with whatever else is ready to be stored now, and returns its
    /// own outcome once the transaction that holds it committed. `hold` (the request's
    /// share of the in-flight byte budget) is dropped with the submission, so the budget
    /// covers a queued body even if its request is given up on while it waits.
    pub async fn submit(
        &self,
        submission: Submission,
        hold: impl Send + 'static,
    ) -> Result<Stored, CommitError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            submission,
            ready_at: Instant::now(),
            reply,
            _hold: Box::new(hold),
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
    }
}

/// One committing task: gather a batch (holding the queue), then commit it (not holding
/// it, so another task gathers meanwhile).
async fn run(committer: Arc<Committer>, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            match gather(&mut queue, committer.bounds).await {
                Some(batch) => batch,
                None => return,
            }
        };
        committer.commit(batch).await;
    }
}

/// The next batch: the first report to arrive, then whatever is already queued, then
/// what arrives until the first report has waited `bounds.wait`, up to the row and byte
/// bounds. `None` once the queue is closed and empty.
async fn gather(queue: &mut mpsc::Receiver<Pending>, bounds: Bounds) -> Option<Vec<Pending>> {
    let first = queue.recv().await?;
    let deadline = first.ready_at + bounds.wait;
    let mut bytes = first.submission.size();
    let mut batch = vec![first];
    while batch.len() < bounds.rows && bytes < bounds.bytes {
        let next = match queue.try_recv() {
            Ok(next) => next,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        bytes = bytes.saturating_add(next.submission.size());
        batch.push(next);
    }
    Some(batch)
}

impl Committer {
    async fn commit(&self, batch: Vec<Pending>) {
        let rows = batch.len();
        self.metrics.commit_batch_rows.observe(rows as f64);
        let result = {
            let submissions: Vec<&Submission> = batch.iter().map(|p| &p.submission).collect();
            store::store_batch(&self.pool, &self.tenant, &self.topology, &submissions).await
        };
        match result {
            Ok(outcomes) => {
                tracing::debug!(tenant = %self.tenant, rows, "batch committed");
                for (pending, stored) in batch.into_iter().zip(outcomes) {
                    // The client may have gone (timeout, disconnect); its report is
                    // stored anyway and a retry is answered as a duplicate.
                    let _ = pending.reply.send(Ok(stored));
                }
            }
            Err(error) if rows > 1 && refused_for_its_content(&error) => {
                self.metrics.commit_fallbacks.inc();
                tracing::warn!(
                    tenant = %self.tenant,
                    rows,
                    %error,
                    "batch refused by the database; storing its reports one by one"
                );
                self.commit_one_by_one(batch).await;
            }
            Err(error) => {
                let error = CommitError::from_sqlx(error);
                tracing::error!(tenant = %self.tenant, rows, %error, "batch not stored");
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Each report in its own transaction. Once the database is found unavailable the
    /// remaining reports get that answer without another attempt each.
    async fn commit_one_by_one(&self, batch: Vec<Pending>) {
        let mut unavailable: Option<CommitError> = None;
        for pending in batch {
            let result = match &unavailable {
                Some(error) => Err(error.clone()),
                None => {
                    let report = pending
                        .submission
                        .as_new_report(&self.tenant, &self.topology);
                    store::store_report(&self.pool, &report, &pending.submission.meta)
                        .await
                        .map_err(|error| {
                            let error = CommitError::from_sqlx(error);
                            tracing::warn!(
                                tenant = %self.tenant,
                                request_id = %pending.submission.meta.request_id,
                                %error,
                                "report not stored"
                            );
                            if matches!(error, CommitError::Unavailable(_)) {
                                unavailable = Some(error.clone());
                            }
                            error
                        })
                }
            };
            let _ = pending.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_unavailability_and_constraint_errors_are_refusals() {
        assert!(!refused_for_its_content(&sqlx::Error::PoolTimedOut));
        assert!(!refused_for_its_content(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset)
        )));
        assert!(refused_for_its_content(&sqlx::Error::RowNotFound));
    }

    fn pending(body_len: usize, ready_at: Instant) -> Pending {
        let submission = Submission {
            header: crate::report::ReportHeader {
                repo_id: uuid::Uuid::nil(),
                commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                run_id: "r".to_owned(),
                framework: "jest".to_owned(),
                branch: None,
                pull_request: None,
                environment: None,
                metadata: None,
                idempotency_key: None,
            },
            test_count: 1,
            body: "x".repeat(body_len),
            original: None,
            meta: Default::default(),
        };
        Pending {
            submission,
            ready_at,
            reply: oneshot::channel().0,
            _hold: Box::new(()),
        }
    }

    fn bounds(rows: usize, bytes: usize, wait_ms: u64) -> Bounds {
        Bounds {
            rows,
            bytes,
            wait: Duration::from_millis(wait_ms),
        }
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_its_row_bound_without_waiting() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..5 {
            tx.send(pending(10, Instant::now())).await.unwrap();
        }
        let started = std::time::Instant::now();
        let batch = gather(&mut rx, bounds(3, 1 << 20, 10_000)).await.unwrap();
        assert_eq!(batch.len(), 3);
        assert!(started.elapsed() < Duration::from_secs(5));
        let batch = gather(&mut rx, bounds(3, 1 << 20, 0)).await.unwrap();
        assert_eq!(batch.len(), 2, "the rest, and no wait with a zero wait");
    }

    #[tokio::test]
    async fn a_batch_closes_at_its_byte_bound_with_the_report_that_crossed_it() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..4 {
            tx.send(pending(100, Instant::now())).await.unwrap();
        }
        let batch = gather(&mut rx, bounds(64, 150, 10_000)).await.unwrap();
        assert_eq!(batch.len(), 2);
    }

    #[tokio::test]
    async fn a_lone_report_waits_for_company_at_most_the_wait_counted_from_when_it_was_ready() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(pending(10, Instant::now())).await.unwrap();
        let started = std::time::Instant::now();
        let batch = gather(&mut rx, bounds(64, 1 << 20, 200)).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(batch.len(), 1);
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");

        // A report that already waited its time in the queue waits no more.
        let long_ago = Instant::now() - Duration::from_secs(1);
        tx.send(pending(10, long_ago)).await.unwrap();
        let started = std::time::Instant::now();
        let batch = gather(&mut rx, bounds(64, 1 << 20, 200)).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() < Duration::from_millis(150));

        drop(tx);
        assert!(gather(&mut rx, bounds(64, 1 << 20, 200)).await.is_none());
    }

    #[test]
    fn bounds_come_from_the_config() {
        let bounds = Bounds::from(&StoreConfig::default());
        assert_eq!(bounds.rows, 64);
        assert_eq!(bounds.bytes, 8 * 1024 * 1024);
        assert_eq!(bounds.wait, Duration::from_millis(2));
    }
}
