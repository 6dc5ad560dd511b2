//! The HTTP load generator: signed, uniquely keyed reports at a fixed concurrency
//! (closed loop) or a fixed rate (open loop), for a duration or a count.
//!
//! Latency goes into an HDR histogram in microseconds. In fixed-rate mode it is measured
//! from the moment a request was *due*, not from when it was sent, so a server that
//! stalls is charged for the requests queued behind the stall (no coordinated
//! omission); that is what makes the half-of-maximum run's tail honest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::report::{Template, signed};

/// Highest latency the histograms track: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A request without an answer after this long is counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// In-flight cap of the open-loop mode: past it requests wait (and that wait counts as
/// latency), so a collapsing server cannot make the generator open unbounded sockets.
const MAX_OPEN_LOOP_IN_FLIGHT: usize = 512;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One client per run; connections are kept alive and reused like a CI fleet's would
/// not be, which is the favourable case for the server and the usual benchmark choice.
pub fn client(max_idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

/// How requests are issued.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// N workers, each sending its next request when the previous one is answered.
    Concurrency(usize),
    /// Requests due at a fixed rate (per second), whatever the server does.
    Rate(f64),
}

/// When to stop issuing requests.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    Duration(Duration),
    Count(u64),
}

/// What one load run sends.
#[derive(Clone)]
pub struct Target {
    pub url: http::Uri,
    pub secret: Arc<str>,
    pub template: Arc<Template>,
    /// Prefix of every `run_id`, unique per run so runs never collide.
    pub run_prefix: String,
}

/// Everything measured in one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection errors, timeouts).
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

impl Outcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            statuses: BTreeMap::new(),
            errors: 0,
            bytes_sent: 0,
            bytes_received: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn merge(&mut self, other: &Outcome) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.errors += other.errors;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        Ok(())
    }

    fn record(&mut self, latency: Duration, answer: Result<(u16, u64), ()>, sent: u64) {
        self.bytes_sent += sent;
        match answer {
            Ok((status, received)) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US);
                self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
                *self.statuses.entry(status).or_default() += 1;
                self.bytes_received += received;
            }
            Err(()) => self.errors += 1,
        }
    }

    pub fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    /// Answered-200 requests per second.
    pub fn ok_per_sec(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// `200×12345 503×3` and the error count, for tables.
    pub fn status_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!("err×{}", self.errors));
        }
        parts.join(" ")
    }
}

/// Sends one signed report and reads the whole answer.
async fn send_one(
    client: &HttpClient,
    target: &Target,
    run_id: &str,
) -> (Result<(u16, u64), ()>, u64) {
    let (body, signature) = signed(&target.template, &target.secret, run_id);
    let sent = body.len() as u64;
    let request = hyper::Request::post(target.url.clone())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", target.template.repo))
        .header("x-fr-sig", signature)
        .header("user-agent", "anchorpipe-bench")
        .body(Full::new(body));
    let Ok(request) = request else {
        return (Err(()), sent);
    };
    // A request unanswered after REQUEST_TIMEOUT counts as an error, so one stuck
    // connection cannot hold a run open forever.
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(collected) => Ok((status, collected.to_bytes().len() as u64)),
                Err(_) => Err(()),
            }
        }
        _ => Err(()),
    };
    (answer, sent)
}

/// Runs one load and returns what it measured.
pub async fn run(
    client: &HttpClient,
    target: &Target,
    mode: Mode,
    stop: Stop,
) -> anyhow::Result<Outcome> {
    match mode {
        Mode::Concurrency(workers) => closed_loop(client, target, workers.max(1), stop).await,
        Mode::Rate(per_sec) => open_loop(client, target, per_sec, stop).await,
    }
}

async fn closed_loop(
    client: &HttpClient,
    target: &Target,
    workers: usize,
    stop: Stop,
) -> anyhow::Result<Outcome> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (client, target, issued) = (client.clone(), target.clone(), Arc::clone(&issued));
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::new()?;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let more = match stop {
                    Stop::Duration(d) => started.elapsed() < d,
                    Stop::Count(count) => n < count,
                };
                if !more {
                    break;
                }
                let run_id = format!("{}-{n}", target.run_prefix);
                let begun = Instant::now();
                let (answer, sent) = send_one(&client, &target, &run_id).await;
                outcome.record(begun.elapsed(), answer, sent);
            }
            anyhow::Ok(outcome)
        }));
    }
    let mut total = Outcome::new()?;
    for task in tasks {
        total.merge(&task.await.context("load worker panicked")??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn open_loop(
    client: &HttpClient,
    target: &Target,
    per_sec: f64,
    stop: Stop,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(per_sec > 0.0, "rate must be positive");
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_LOOP_IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n: u64 = 0;
    loop {
        let due = started + interval.mul_f64(n as f64);
        let more = match stop {
            Stop::Duration(d) => due.duration_since(started) < d,
            Stop::Count(count) => n < count,
        };
        if !more {
            break;
        }
        tokio::time::sleep_until(due).await;
        let (client, target, gate) = (client.clone(), target.clone(), Arc::clone(&gate));
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            let run_id = format!("{}-{n}", target.run_prefix);
            let (answer, sent) = send_one(&client, &target, &run_id).await;
            // From the due time: waiting behind a slow server is latency too.
            (due.elapsed(), answer, sent)
        }));
        n += 1;
    }
    let mut total = Outcome::new()?;
    for task in tasks {
        let (latency, answer, sent) = task.await.context("load task panicked")?;
        total.record(latency, answer, sent);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
