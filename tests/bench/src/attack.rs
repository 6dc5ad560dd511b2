//! The "under attack" scenario of issue 10: legitimate signed small reports at a fixed
//! rate, first alone (the baseline), then beside each hostile traffic shape of the
//! issue's two tables for the same duration. For every phase: the legitimate success
//! rate and latency (from each request's due time, as in `load`), the verdict against
//! the targets (success ≥ 99.9 %, p99 ≤ 3 × the baseline's), the attack
//! requests made, the pod's peak RSS and the audit rows written.
//!
//! Attackers speak raw HTTP/1.1 over TCP (as `ingest/tests/abuse.rs` does) from their
//! own loopback addresses (127.0.0.2 and up), so the pod sees them as sources other
//! than the legitimate CI (127.0.0.1), as it would on a real network. Legitimate
//! requests open a new connection each (a CI job posts once), so they compete for
//! connection slots like real CI does.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use uuid::Uuid;

use crate::load::{self, Mode, Outcome, Stop, Target};
use crate::matrix::{self, Ingest, SECRET, progress};
use crate::procstat;
use crate::report::{Size, Template};

/// The targets.
pub const MIN_SUCCESS_PERCENT: f64 = 99.9;
pub const MAX_P99_FACTOR: f64 = 3.0;

/// Half-sent request lines opened beyond the pod's connection cap.
const SLOWLORIS_OVER_CAP: usize = 76;

/// What the scenario was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest_bin: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    pub rate: f64,
    pub duration: Duration,
}

/// The hostile traffic shapes, in the order of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    ForgedSignatures,
    DeclaredUnsentBodies,
    Slowloris,
    ForwardedForSpray,
    HugeZeroArrays,
}

impl Attack {
    pub const ALL: [Attack; 5] = [
        Attack::ForgedSignatures,
        Attack::DeclaredUnsentBodies,
        Attack::Slowloris,
        Attack::ForwardedForSpray,
        Attack::HugeZeroArrays,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Attack::ForgedSignatures => {
                "forged `X-FR-Sig` for the real repository, 8 clients, new connection each"
            }
            Attack::DeclaredUnsentBodies => {
                "16 connections declaring 50 MiB, junk signature, sending nothing (reopened when closed)"
            }
            Attack::Slowloris => {
                "half-sent request lines, cap + 76 connections held (reopened when closed)"
            }
            Attack::ForwardedForSpray => {
                "unauthenticated, a different spoofed `X-Forwarded-For` each, 4 clients"
            }
            Attack::HugeZeroArrays => "tenant's own CI: 25 MiB signed `[0,0,…]`, 2 at once",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Attack::ForgedSignatures => "forged signatures",
            Attack::DeclaredUnsentBodies => "declared 50 MiB, unsent",
            Attack::Slowloris => "slowloris",
            Attack::ForwardedForSpray => "X-Forwarded-For spray",
            Attack::HugeZeroArrays => "25 MiB [0,0,…] signed",
        }
    }
}

/// The figures of one phase (the baseline has no attack).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub attack: Option<Attack>,
    pub attack_requests: u64,
    /// Legitimate requests issued, and answered 200.
    pub sent: u64,
    pub ok: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub statuses: String,
    pub peak_rss_mib: Option<f64>,
    /// Audit rows other than the legitimate reports' `accepted` ones.
    pub audit_rows: i64,
    /// Cores the pod, and this process (legitimate client and attackers), kept busy.
    pub pod_cores: f64,
    pub client_cores: f64,
}

impl Phase {
    pub fn success_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.ok as f64 * 100.0 / self.sent as f64
        }
    }
}

/// Pass/miss of one attack phase against the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub success_met: bool,
    pub p99_factor: f64,
    pub p99_met: bool,
}

impl Verdict {
    pub fn met(&self) -> bool {
        self.success_met && self.p99_met
    }
}

/// Success ≥ 99.9 % and p99 ≤ 3 × the baseline's p99.
pub fn verdict(baseline: &Phase, phase: &Phase) -> Verdict {
    let p99_factor = if baseline.p99_ms > 0.0 {
        phase.p99_ms / baseline.p99_ms
    } else {
        f64::INFINITY
    };
    Verdict {
        success_met: phase.success_percent() >= MIN_SUCCESS_PERCENT,
        p99_factor,
        p99_met: p99_factor <= MAX_P99_FACTOR,
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The table of all phases, baseline first, as Markdown.
pub fn table(rate: f64, phases: &[Phase]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "| phase | attack requests | legit sent | legit 200 | success % | p50 ms | p99 ms | p99 ÷ baseline | success ≥ 99.9 % | p99 ≤ 3 × | pod peak RSS MiB | audit rows | pod CPU cores | client CPU cores | legit statuses ({rate:.0}/s) |\n"
    ));
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|---|---|--:|--:|--:|--:|---|\n");
    let baseline = phases.iter().find(|p| p.attack.is_none());
    for phase in phases {
        let name = phase.attack.map_or("baseline (no attack)", Attack::name);
        let (factor, success, p99) = match (phase.attack, baseline) {
            (Some(_), Some(base)) => {
                let v = verdict(base, phase);
                (
                    format!("{:.2}", v.p99_factor),
                    met(v.success_met),
                    met(v.p99_met),
                )
            }
            _ => ("1.00".to_owned(), "–", "–"),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {factor} | {success} | {p99} | {} | {} | {:.2} | {:.2} | {} |",
            phase.attack_requests,
            phase.sent,
            phase.ok,
            phase.success_percent(),
            phase.p50_ms,
            phase.p99_ms,
            phase
                .peak_rss_mib
                .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}")),
            phase.audit_rows,
            phase.pod_cores,
            phase.client_cores,
            phase.statuses,
        );
    }
    out
}

/// The whole `ATTACK.md`.
pub fn render(settings: &Settings, context: &[(String, String)], phases: &[Phase]) -> String {
    let mut out = String::new();
    out.push_str("# Ingest under attack (issue 10)\n\n");
    out.push_str(
        "Written by `anchorpipe-bench attack` (`scripts/bench.sh --attack`). Legitimate signed \
         small reports at a fixed rate, latency from each request's due time, a new connection \
         per request; first alone, then beside each attack for the same duration. Targets: \
         legitimate success ≥ 99.9 % and p99 ≤ 3 × the baseline's p99.\n\n",
    );
    for (key, value) in context {
        let _ = writeln!(out, "- {key}: {value}");
    }
    let _ = writeln!(
        out,
        "- Rate {:.0}/s, {:.0} s per phase\n",
        settings.rate,
        settings.duration.as_secs_f64()
    );
    out.push_str(&table(settings.rate, phases));
    out.push_str("\nAttacks:\n\n");
    for attack in Attack::ALL {
        let _ = writeln!(out, "- **{}**: {}", attack.name(), attack.describe());
    }
    out.push_str(
        "\nPeak RSS is the pod's `VmHWM`, reset before each phase. Audit rows are the rows \
         other than the legitimate reports' `accepted` ones written during the phase and the \
         following flush interval.\n",
    );
    out
}

/// Shared state of the attacking tasks.
#[derive(Clone)]
struct Attackers {
    port: u16,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
}

impl Attackers {
    async fn connect(&self, source: u8) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, source), 0)))?;
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
            .await
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// One whole request on a new connection, the answer read to the end.
    async fn exchange(&self, source: u8, request: &[u8]) {
        self.made.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut stream) = self.connect(source).await
            && stream.write_all(request).await.is_ok()
        {
            let mut sink = [0u8; 4096];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `head` and then nothing, until the server closes or the phase ends.
    async fn hold(&self, source: u8, head: &[u8]) {
        self.made.fetch_add(1, Ordering::Relaxed);
        let Ok(mut stream) = self.connect(source).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        };
        if stream.write_all(head).await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        while !self.stopped() {
            let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
        }
    }
}

fn post(repo: Option<Uuid>, sig: &str, extra: &str, body_len: usize, close: bool) -> String {
    let auth = repo.map_or(String::new(), |r| {
        format!("Authorization: Bearer {r}\r\nX-FR-Sig: {sig}\r\n")
    });
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "POST /api/ingestion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         {auth}{extra}Content-Length: {body_len}\r\n{connection}\r\n"
    )
}

fn zeros(bytes: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes);
    body.push(b'[');
    while body.len() + 4 <= bytes {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]");
    body
}

/// Starts the attack's tasks; they run until `stop` is set.
fn launch(
    attack: Attack,
    attackers: &Attackers,
    repo: Uuid,
    max_connections: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    match attack {
        Attack::ForgedSignatures => {
            let body = Template::new(repo, Size::Small.tests(), 300).body("forged");
            let sig = anchorpipe_ingest::signature::sign_legacy(
                "whsec_bm90LXRoZS1yZWFsLWtleS1mb3JnZWQtYnktYS1zdHJhbmdlcg==",
                &body,
            );
            let mut request = post(Some(repo), &sig, "", body.len(), true).into_bytes();
            request.extend_from_slice(&body);
            let request: Arc<[u8]> = Arc::from(request);
            for i in 0..8u8 {
                let (a, request) = (attackers.clone(), Arc::clone(&request));
                tasks.push(tokio::spawn(async move {
                    while !a.stopped() {
                        a.exchange(2 + i, &request).await;
                    }
                }));
            }
        }
        Attack::DeclaredUnsentBodies => {
            let head = post(Some(repo), "00", "", 52_428_800, false).into_bytes();
            let head: Arc<[u8]> = Arc::from(head);
            for i in 0..16u8 {
                let (a, head) = (attackers.clone(), Arc::clone(&head));
                tasks.push(tokio::spawn(async move {
                    while !a.stopped() {
                        a.hold(20 + i % 8, &head).await;
                    }
                }));
            }
        }
        Attack::Slowloris => {
            for i in 0..max_connections + SLOWLORIS_OVER_CAP {
                let a = attackers.clone();
                let source = 40 + (i % 16) as u8;
                tasks.push(tokio::spawn(async move {
                    while !a.stopped() {
                        a.hold(source, b"POST /api/ing").await;
                    }
                }));
            }
        }
        Attack::ForwardedForSpray => {
            for i in 0..4u8 {
                let a = attackers.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n: u32 = 0;
                    while !a.stopped() {
                        let xff = format!(
                            "X-Forwarded-For: 10.{}.{}.{}\r\n",
                            i,
                            (n / 256) % 256,
                            n % 256
                        );
                        let mut request = post(None, "", &xff, 2, true).into_bytes();
                        request.extend_from_slice(b"{}");
                        a.exchange(60 + i, &request).await;
                        n = n.wrapping_add(1);
                    }
                }));
            }
        }
        Attack::HugeZeroArrays => {
            let body = zeros(25 << 20);
            let sig = anchorpipe_ingest::signature::sign_legacy(SECRET, &body);
            let mut request = post(Some(repo), &sig, "", body.len(), true).into_bytes();
            request.extend_from_slice(&body);
            let request: Arc<[u8]> = Arc::from(request);
            for i in 0..2u8 {
                let (a, request) = (attackers.clone(), Arc::clone(&request));
                tasks.push(tokio::spawn(async move {
                    while !a.stopped() {
                        a.exchange(80 + i, &request).await;
                    }
                }));
            }
        }
    }
    tasks
}

async fn audit_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action <> 'accepted'")
            .fetch_one(pool)
            .await?,
    )
}

/// Runs the baseline and every attack; writes `ATTACK.md`; returns the phases.
pub async fn run(settings: Settings) -> anyhow::Result<Vec<Phase>> {
    anyhow::ensure!(settings.rate > 0.0, "--rate must be positive");
    let dir = settings.work_dir.clone();
    let (config, repo) = matrix::write_tenant(&dir, "attack")?;
    let max_connections = config.protection.max_connections as usize;
    let matrix_settings = matrix::Settings::single(
        settings.ingest_bin.clone(),
        settings.database_url.clone(),
        settings.amqp_url.clone(),
        dir.clone(),
        settings.duration,
        256,
    );
    progress(&format!(
        "attack: load average {}; fresh database, topology, ingest",
        procstat::loadavg()
    ));
    let database_url = matrix::fresh_database(&matrix_settings).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;
    matrix::declare(&settings.amqp_url, &config.broker).await?;
    let ready_client = load::client(4);
    // A new connection per legitimate request: a CI job posts once.
    let client = load::client(0);
    let template = Arc::new(Template::new(repo, Size::Small.tests(), 300));
    let mut phases = Vec::new();
    let plan: Vec<Option<Attack>> = std::iter::once(None)
        .chain(Attack::ALL.into_iter().map(Some))
        .collect();
    for attack in plan {
        let label = attack.map_or("baseline", Attack::name);
        // A fresh pod per phase, so one attack's failure windows and leftovers do not
        // leak into the next.
        let mut service = Ingest::start(
            &matrix_settings,
            &dir,
            "ingest-attack",
            &database_url,
            false,
        )
        .await?;
        service.wait_ready(&ready_client).await?;
        let port: u16 = service
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("ingest port")?;
        load::run(
            &client,
            &Target {
                url: service.url()?,
                secret: Arc::from(SECRET),
                template: Arc::clone(&template),
                run_prefix: format!("warm-{}", label.replace(' ', "-")),
            },
            Mode::Rate(settings.rate),
            Stop::Duration(Duration::from_secs(2)),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows_before = audit_rows(&pool).await?;
        procstat::reset_peak(service.pid);
        let cpu_before = procstat::snapshot(&[service.pid]);
        let phase_started = std::time::Instant::now();
        let attackers = Attackers {
            port,
            stop: Arc::new(AtomicBool::new(false)),
            made: Arc::new(AtomicU64::new(0)),
        };
        let tasks = attack.map_or_else(Vec::new, |a| launch(a, &attackers, repo, max_connections));
        // Let the attack take hold before the legitimate traffic is measured.
        if attack.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let target = Target {
            url: service.url()?,
            secret: Arc::from(SECRET),
            template: Arc::clone(&template),
            run_prefix: format!("legit-{}", label.replace(' ', "-")),
        };
        // The attack ends with the phase, whether or not every legitimate request has
        // been answered by then (a stalled pod must not stretch the phase).
        let stopper = {
            let (stop, duration) = (Arc::clone(&attackers.stop), settings.duration);
            async move {
                tokio::time::sleep(duration).await;
                stop.store(true, Ordering::Relaxed);
                for task in tasks {
                    task.abort();
                }
            }
        };
        let (outcome, ()) = tokio::join!(
            load::run(
                &client,
                &target,
                Mode::Rate(settings.rate),
                Stop::Duration(settings.duration),
            ),
            stopper
        );
        let outcome: Outcome = outcome?;
        let cpu = procstat::snapshot(&[service.pid])
            .since(&cpu_before, phase_started.elapsed().as_secs_f64());
        let peak = procstat::peak_rss_mib(service.pid);
        // One audit flush interval (5 s) plus margin, so the phase's rows are written;
        // also lets the pod close what the attack left.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let rows = audit_rows(&pool).await? - rows_before;
        let sent = outcome.statuses.values().sum::<u64>() + outcome.errors;
        let phase = Phase {
            attack,
            attack_requests: attackers.made.load(Ordering::Relaxed),
            sent,
            ok: outcome.ok(),
            p50_ms: outcome.ms(0.5),
            p99_ms: outcome.ms(0.99),
            statuses: outcome.status_summary(),
            peak_rss_mib: peak,
            audit_rows: rows,
            pod_cores: cpu.get(procstat::Group::Ingest),
            client_cores: cpu.get(procstat::Group::LoadGenerator),
        };
        progress(&format!(
            "  {label}: {} attack requests; legit {:.2} % of {} ok, p50 {:.1} ms, p99 {:.1} ms [{}]; peak RSS {:.0} MiB; {} audit rows; cores: {}",
            phase.attack_requests,
            phase.success_percent(),
            phase.sent,
            phase.p50_ms,
            phase.p99_ms,
            phase.statuses,
            peak.unwrap_or(0.0),
            phase.audit_rows,
            cpu.summary()
        ));
        if let Some(baseline) = phases.first()
            && attack.is_some()
        {
            let v = verdict(baseline, &phase);
            progress(&format!(
                "  {label}: p99 {:.2} × baseline; targets {}",
                v.p99_factor,
                if v.met() { "met" } else { "missed" }
            ));
        }
        phases.push(phase);
        service.stop().await;
    }
    pool.close().await;
    let _ = matrix::delete_topology(&settings.amqp_url, &config.broker).await;

    let context = vec![
        (
            "Run".to_owned(),
            format!("{}", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")),
        ),
        (
            "Commit".to_owned(),
            std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
        ),
        (
            "Ingest binary".to_owned(),
            settings.ingest_bin.display().to_string(),
        ),
        (
            "Pod config".to_owned(),
            "documented defaults for limits and protection (connection cap 1,024, header \
             timeout 10 s, body stall 10 s); rate limits unlimited as in the matrix"
                .to_owned(),
        ),
        ("Load average at end".to_owned(), procstat::loadavg()),
    ];
    let markdown = render(&settings, &context, &phases);
    std::fs::create_dir_all(&settings.out_dir)?;
    let path = settings.out_dir.join("ATTACK.md");
    std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", table(settings.rate, &phases));
    println!("wrote {}", path.display());
    Ok(phases)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn phase(attack: Option<Attack>, sent: u64, ok: u64, p99_ms: f64) -> Phase {
        Phase {
            attack,
            attack_requests: 10,
            sent,
            ok,
            p50_ms: 2.0,
            p99_ms,
            statuses: format!("200×{ok}"),
            peak_rss_mib: Some(30.0),
            audit_rows: 1,
            pod_cores: 0.5,
            client_cores: 0.5,
        }
    }

    #[test]
    fn verdict_meets_both_targets_at_their_bounds() {
        let base = phase(None, 3000, 3000, 10.0);
        let v = verdict(&base, &phase(Some(Attack::Slowloris), 1000, 999, 30.0));
        assert!(v.success_met && v.p99_met && v.met());
        assert!((v.p99_factor - 3.0).abs() < 1e-9);
    }

    #[test]
    fn verdict_misses_below_99_9_percent_or_above_three_times() {
        let base = phase(None, 3000, 3000, 10.0);
        let low = verdict(&base, &phase(Some(Attack::Slowloris), 1000, 998, 5.0));
        assert!(!low.success_met && low.p99_met && !low.met());
        let slow = verdict(&base, &phase(Some(Attack::Slowloris), 1000, 1000, 30.1));
        assert!(slow.success_met && !slow.p99_met && !slow.met());
        let nothing = verdict(&base, &phase(Some(Attack::Slowloris), 0, 0, 1.0));
        assert!(!nothing.success_met, "no legitimate answer is no success");
    }

    #[test]
    fn verdict_without_a_baseline_tail_is_a_miss() {
        let base = phase(None, 0, 0, 0.0);
        let v = verdict(&base, &phase(Some(Attack::ForgedSignatures), 10, 10, 1.0));
        assert!(!v.p99_met);
    }

    #[test]
    fn table_has_the_baseline_then_one_row_per_attack_with_verdicts() {
        let mut phases = vec![phase(None, 3000, 3000, 10.0)];
        phases.push(phase(Some(Attack::ForgedSignatures), 3000, 3000, 12.0));
        phases.push(phase(Some(Attack::Slowloris), 3000, 2000, 50.0));
        let text = table(100.0, &phases);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[2].starts_with("| baseline (no attack) | 10 | 3000 | 3000 | 100.00 |"));
        assert!(lines[3].contains("| forged signatures |"));
        assert!(lines[3].contains("| 1.20 | met | met |"), "{}", lines[3]);
        assert!(lines[4].contains("| 66.67 |"), "{}", lines[4]);
        assert!(lines[4].contains("| 5.00 | **missed** | **missed** |"));
        for line in &lines {
            assert_eq!(line.matches('|').count(), 16, "{line}");
        }
    }

    #[test]
    fn the_zero_array_is_valid_json_of_the_requested_size() {
        let body = zeros(1 << 16);
        assert!(body.len() <= 1 << 16 && body.len() + 2 > 1 << 16);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(value.as_array().unwrap().iter().all(|v| v == 0));
    }

    #[test]
    fn render_names_every_attack() {
        let settings = Settings {
            ingest_bin: PathBuf::from("ingest"),
            database_url: String::new(),
            amqp_url: String::new(),
            work_dir: PathBuf::new(),
            out_dir: PathBuf::new(),
            rate: 100.0,
            duration: Duration::from_secs(30),
        };
        let text = render(&settings, &[], &[phase(None, 1, 1, 1.0)]);
        for attack in Attack::ALL {
            assert!(text.contains(attack.name()));
        }
    }
}
