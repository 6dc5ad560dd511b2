//! Renders a run as `RESULTS.md`: the machine, every figure next to the limit it is
//! measured against (as a ratio), the issue's targets with pass/miss, the memory run,
//! and where the CPU went.

use std::fmt::Write as _;

use crate::matrix::{Point, Results, SizeResults};
use crate::procstat::{CpuUse, Group};
use crate::report::Size;

fn ratio(value: f64, limit: f64) -> String {
    if limit > 0.0 {
        format!("{:.2}", value / limit)
    } else {
        "–".to_owned()
    }
}

fn mib(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"))
}

/// The verdict row of the small-report p99 target (issues 6 and 13 word it each their way).
fn small_p99_row(out: &mut String, small: &SizeResults, rate_named: &str) {
    if let Some(rate) = &small.rate {
        let p99 = rate.outcome.ms(0.99);
        let _ = writeln!(
            out,
            "| small p99 ≤ 20 ms at {rate_named} | {p99:.1} ms at {:.0}/s | {} |",
            rate.rate,
            verdict(p99 <= 20.0)
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**missed**" }
}

fn cores(cpu: &CpuUse) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
        cpu.get(Group::Ingest),
        cpu.get(Group::Postgres),
        cpu.get(Group::RabbitMq),
        cpu.get(Group::LoadGenerator),
        cpu.get(Group::Other)
    )
}

/// CPU milliseconds one accepted report cost a component.
fn cpu_ms_per_report(cpu: &CpuUse, group: Group, per_sec: f64) -> f64 {
    if per_sec > 0.0 {
        cpu.get(group) / per_sec * 1000.0
    } else {
        0.0
    }
}

/// Total CPU per accepted small report at the best point of the run committed before
/// issue 13 (commit 4ad7275, `RESULTS.md` of 2026-11-28 19:38): ingest 0.24 ms +
/// PostgreSQL 0.41 ms + RabbitMQ 0.12 ms.
const SMALL_CPU_BEFORE_MS: f64 = 0.24 + 0.41 + 0.12;

/// Best end-to-end rate for large reports in that same committed run (conc. 8 and 128).
const LARGE_E2E_BEFORE: f64 = 35.0;

/// The components a report costs CPU in: the service, its database and its broker (not
/// the load generator, not other work on the machine).
const SERVICE_GROUPS: [Group; 3] = [Group::Ingest, Group::Postgres, Group::RabbitMq];

/// CPU milliseconds one accepted report cost ingest, PostgreSQL and RabbitMQ together.
fn all_ms_per_report(cpu: &CpuUse, per_sec: f64) -> f64 {
    SERVICE_GROUPS
        .iter()
        .map(|g| cpu_ms_per_report(cpu, *g, per_sec))
        .sum()
}

/// PostgreSQL's CPU milliseconds per report by process role (roles above 0.01 ms).
fn postgres_split(cpu: &CpuUse, per_sec: f64) -> String {
    if per_sec <= 0.0 {
        return "–".to_owned();
    }
    let parts: Vec<String> = cpu
        .postgres_roles
        .iter()
        .map(|(role, cores)| (role, cores / per_sec * 1000.0))
        .filter(|(_, ms)| *ms >= 0.01)
        .map(|(role, ms)| format!("{role} {ms:.2} ms"))
        .collect();
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `ingest + pg + mq = all` CPU milliseconds per accepted report.
fn per_report(cpu: &CpuUse, per_sec: f64) -> String {
    format!(
        "{:.2} + {:.2} + {:.2} = {:.2}",
        cpu_ms_per_report(cpu, Group::Ingest, per_sec),
        cpu_ms_per_report(cpu, Group::Postgres, per_sec),
        cpu_ms_per_report(cpu, Group::RabbitMq, per_sec),
        all_ms_per_report(cpu, per_sec)
    )
}

/// The rate this machine's cores could sustain at `ms` of CPU per report.
fn ceiling(ms: f64) -> String {
    if ms > 0.0 {
        format!("{:.0}", machine_cores() * 1000.0 / ms)
    } else {
        "–".to_owned()
    }
}

fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn best_postgres(size: &SizeResults) -> f64 {
    size.points
        .iter()
        .map(|p| p.postgres.per_sec())
        .fold(0.0, f64::max)
}

fn best_point(size: &SizeResults) -> Option<&Point> {
    size.points
        .iter()
        .max_by(|a, b| a.e2e.ok_per_sec().total_cmp(&b.e2e.ok_per_sec()))
}

pub fn render(results: &Results, perf: Option<&str>) -> String {
    let mut out = String::new();
    let s = &results.settings;
    let _ = writeln!(out, "# anchorpipe ingest benchmark\n");
    let _ = writeln!(
        out,
        "Written by `scripts/bench.sh` (the `anchorpipe-bench` crate in `tests/bench/`) on {} (UTC), \
         run took {:.0} s. Every figure below was printed by that run; rerunning the command \
         rewrites this file and `throughput.png`. Method and analysis: `tests/bench/README.md`.\n",
        results.started.format("%Y-%m-%d %H:%M"),
        (results.finished - results.started).num_milliseconds() as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "Under attack (issue 10): [`ATTACK.md`](ATTACK.md), written by `scripts/bench.sh --attack` \
         (`anchorpipe-bench attack`); this command does not rewrite it.\n"
    );
    let _ = writeln!(out, "## Machine and versions\n\n| | |\n|---|---|");
    for (key, value) in &results.environment {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    let _ = writeln!(
        out,
        "| Settings | {} s per point, concurrency {:?}, relay batch {}, ingest DB pool {}, load generator on the same machine |\n",
        s.duration.as_secs_f64(),
        s.concurrency,
        s.relay_batch,
        s.db_max_connections
    );

    let mq = results.rabbitmq.per_sec();
    let _ = writeln!(out, "## Limits measured in this run\n");
    let _ = writeln!(
        out,
        "- **RabbitMQ**: {mq:.0} confirmed messages/s (publish-with-confirms of the relay's message, persistent, \
         {} in flight per batch like the relay, quorum queue; batch p50 {:.1} ms, p99 {:.1} ms; {} nacked). \
         CPU (cores, ingest / postgres / rabbitmq / bench client / other): {}.",
        s.relay_batch,
        results.rabbitmq.ms(0.5),
        results.rabbitmq.ms(0.99),
        results.rabbitmq.failed,
        cores(&results.rabbitmq_cpu)
    );
    let _ = writeln!(
        out,
        "- **PostgreSQL**: `store_report` (ingestion + outbox + audit in one transaction) driven directly, same \
         concurrency, one connection per worker — the `PG tx/s` column.\n\
         - **HTTP + HMAC floor**: the same binary with `--bench-verify-only` (answers 200 right after the \
         signature verified) — the `floor/s` column.\n"
    );

    for size in &results.sizes {
        let pg_best = best_postgres(size);
        let _ = writeln!(
            out,
            "## {} reports ({} tests, {} bytes)\n",
            size.size.name(),
            size.size.tests(),
            size.body_bytes
        );
        let _ = writeln!(
            out,
            "Verify + parse + validate alone, one core, no I/O: p50 {:.3} ms, p99 {:.3} ms.\n",
            size.alone.ms(0.5),
            size.alone.ms(0.99)
        );
        let _ = writeln!(
            out,
            "| conc. | e2e ok/s | p50 ms | p99 ms | statuses | floor/s | e2e ÷ floor | floor p99 ms | floor RSS MiB / ingest cores / client cores | PG tx/s | e2e ÷ PG | PG p99 ms | e2e ÷ min(PG, MQ) | peak RSS MiB | relay drain s | cores: ingest / pg / mq / client / other | CPU ms per report: ingest + pg + mq = all | ceiling/s |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|"
        );
        for p in &size.points {
            let e2e = p.e2e.ok_per_sec();
            let pg = p.postgres.per_sec();
            let all = all_ms_per_report(&p.e2e_cpu, e2e);
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {} | {:.1} | {} / {:.2} / {:.2} | {:.0} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} |",
                p.concurrency,
                e2e,
                p.e2e.ms(0.5),
                p.e2e.ms(0.99),
                p.e2e.status_summary(),
                p.floor.ok_per_sec(),
                ratio(e2e, p.floor.ok_per_sec()),
                p.floor.ms(0.99),
                mib(p.floor_peak_rss),
                p.floor_cpu.get(Group::Ingest),
                p.floor_cpu.get(Group::LoadGenerator),
                pg,
                ratio(e2e, pg),
                p.postgres.ms(0.99),
                ratio(e2e, pg.min(mq)),
                mib(p.e2e_peak_rss),
                p.drain.as_secs_f64(),
                cores(&p.e2e_cpu),
                per_report(&p.e2e_cpu, e2e),
                ceiling(all),
            );
        }
        let _ = writeln!(
            out,
            "\nCPU per report counts ingest, PostgreSQL and RabbitMQ (not the load generator, not `other`); \
             ceiling = {:.0} cores ÷ that CPU, the rate this machine could reach if nothing else ran.",
            machine_cores()
        );
        let _ = writeln!(out);
        if let Some(rate) = &size.rate {
            let _ = writeln!(
                out,
                "Fixed rate at half the best end-to-end rate ({:.0}/s offered, {:.0}/s answered 200): \
                 p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms [{}], peak RSS {} MiB, \
                 cores {}, CPU ms per report {} → ceiling {}/s (latency from each request's due time, \
                 so queueing counts).\n",
                rate.rate,
                rate.outcome.ok_per_sec(),
                rate.outcome.ms(0.5),
                rate.outcome.ms(0.99),
                rate.outcome.ms(0.999),
                rate.outcome.ms(1.0),
                rate.outcome.status_summary(),
                mib(rate.peak_rss),
                cores(&rate.cpu),
                per_report(&rate.cpu, rate.outcome.ok_per_sec()),
                ceiling(all_ms_per_report(&rate.cpu, rate.outcome.ok_per_sec())),
            );
        }
        if let Some(best) = best_point(size) {
            let per = best.e2e.ok_per_sec();
            let _ = writeln!(
                out,
                "CPU per accepted report at the best point (conc. {}): ingest {:.2} ms, PostgreSQL {:.2} ms, \
                 RabbitMQ {:.2} ms, all components {:.2} ms (ceiling {}/s), bench client {:.2} ms; the \
                 PostgreSQL limit run cost PostgreSQL {:.2} ms per transaction. Best PostgreSQL limit for \
                 this size: {pg_best:.0} tx/s.\n",
                best.concurrency,
                cpu_ms_per_report(&best.e2e_cpu, Group::Ingest, per),
                cpu_ms_per_report(&best.e2e_cpu, Group::Postgres, per),
                cpu_ms_per_report(&best.e2e_cpu, Group::RabbitMq, per),
                all_ms_per_report(&best.e2e_cpu, per),
                ceiling(all_ms_per_report(&best.e2e_cpu, per)),
                cpu_ms_per_report(&best.e2e_cpu, Group::LoadGenerator, per),
                cpu_ms_per_report(&best.postgres_cpu, Group::Postgres, best.postgres.per_sec()),
            );
            let _ = writeln!(
                out,
                "PostgreSQL's CPU per report by process at that point: service {}; limit run {}.\n",
                postgres_split(&best.e2e_cpu, per),
                postgres_split(&best.postgres_cpu, best.postgres.per_sec()),
            );
        }
    }

    issue_13_targets(&mut out, results);

    let _ = writeln!(out, "## Targets of issue 6\n");
    let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
    if let Some(small) = results.sizes.iter().find(|r| r.size == Size::Small) {
        let best = small.best_e2e();
        let limit = best_postgres(small).min(mq);
        let _ = writeln!(
            out,
            "| small e2e ≥ 0.8 × min(PostgreSQL, RabbitMQ) | {best:.0}/s vs min({:.0}, {mq:.0}) = {limit:.0}/s → {} | {} |",
            best_postgres(small),
            ratio(best, limit),
            verdict(limit > 0.0 && best / limit >= 0.8)
        );
        small_p99_row(&mut out, small, "half the maximum rate");
    }
    if let Some(large) = results.sizes.iter().find(|r| r.size == Size::Large)
        && let Some(one) = large.points.iter().find(|p| p.concurrency == 1)
    {
        let e2e = one.e2e.ms(0.5);
        let alone = large.alone.ms(0.5);
        let _ = writeln!(
            out,
            "| large e2e ≤ 3 × verify+validate alone | p50 {e2e:.1} ms at conc. 1 vs {alone:.1} ms alone → {} × | {} |",
            ratio(e2e, alone),
            verdict(alone > 0.0 && e2e / alone <= 3.0)
        );
    }
    let _ = writeln!(out);

    if let Some(memory) = &results.memory {
        let _ = writeln!(
            out,
            "## Memory: {} concurrent uploads of {} bytes\n",
            crate::memory::UPLOADS,
            memory.body_bytes
        );
        let _ = writeln!(
            out,
            "In-flight cap (`limits.maxInFlightBytes`, default): {:.0} MiB. Idle RSS before: {} MiB; peak RSS \
             (VmHWM): {} MiB; highest sampled RSS: {:.0} MiB; peak − idle = {} × the cap. Answers: [{}]; \
             slowest answer {:.1} s. Idle RSS of the service at start-up: {} MiB. \
             Peak RSS of a first phase with only as many uploads as the cap admits at once: {} MiB. \
             RSS 2 s after the last answer: {} MiB. (The matrix's long-running service held {} MiB \
             resident when it ended; the memory run uses a fresh process.)\n",
            memory.cap_mib,
            mib(memory.idle_rss),
            mib(memory.peak_rss),
            memory.sampled_peak,
            match (memory.peak_rss, memory.idle_rss) {
                (Some(peak), Some(idle)) => ratio(peak - idle, memory.cap_mib),
                _ => "?".to_owned(),
            },
            memory.outcome.status_summary(),
            memory.outcome.ms(1.0) / 1000.0,
            mib(results.idle_rss),
            mib(memory.within_cap_peak),
            mib(memory.settled_rss),
            mib(results.retained_rss),
        );
    }

    if let Some(perf) = perf {
        let _ = writeln!(
            out,
            "## Profile (perf, whole machine, small reports, conc. 32)\n\n```\n{}\n```\n",
            perf.trim()
        );
    }
    out
}

/// The small, large and relay targets of issue 13, each with what this run measured.
fn issue_13_targets(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Targets of issue 13\n");
    let _ = writeln!(
        out,
        "Before this work (the committed run of 2026-11-28 19:38, commit 4ad7275): small reports \
         cost {SMALL_CPU_BEFORE_MS:.2} ms of CPU per accepted report over ingest, PostgreSQL and \
         RabbitMQ at the best point; large reports reached {LARGE_E2E_BEFORE:.0}/s end to end.\n"
    );
    let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
    if let Some(small) = results.sizes.iter().find(|r| r.size == Size::Small) {
        let best = small.best_e2e();
        let pg = best_postgres(small);
        let _ = writeln!(
            out,
            "| small e2e ≥ 1.5 × the one-transaction-per-report PostgreSQL limit | {best:.0}/s vs {pg:.0} tx/s → {} × | {} |",
            ratio(best, pg),
            verdict(pg > 0.0 && best / pg >= 1.5)
        );
        if let Some(point) = best_point(small) {
            let all = all_ms_per_report(&point.e2e_cpu, point.e2e.ok_per_sec());
            let half = SMALL_CPU_BEFORE_MS / 2.0;
            let _ = writeln!(
                out,
                "| small CPU per accepted report, all components, ≤ ½ × {SMALL_CPU_BEFORE_MS:.2} = {half:.3} ms | {all:.3} ms at conc. {} (ceiling {}/s) | {} |",
                point.concurrency,
                ceiling(all),
                verdict(all > 0.0 && all <= half)
            );
            let _ = writeln!(
                out,
                "| small ≥ 2 × the peer (svix-server, 0.99–1.34 ms per request on this machine class) ⇔ ≤ 0.5 ms per report | {all:.3} ms | {} |",
                verdict(all > 0.0 && all <= 0.5)
            );
        }
        small_p99_row(out, small, "half the best rate");
    }
    if let Some(large) = results.sizes.iter().find(|r| r.size == Size::Large) {
        let best = large.best_e2e();
        let goal = 3.0 * LARGE_E2E_BEFORE;
        let _ = writeln!(
            out,
            "| large e2e ≥ 3 × {LARGE_E2E_BEFORE:.0}/s = {goal:.0}/s | {best:.0}/s → {} × | {} |",
            ratio(best, LARGE_E2E_BEFORE),
            verdict(best >= goal)
        );
        if let Some(point) = best_point(large) {
            let per = point.e2e.ok_per_sec();
            let ingest = cpu_ms_per_report(&point.e2e_cpu, Group::Ingest, per);
            let _ = writeln!(
                out,
                "| large ingest CPU per report ≤ 8 ms | {ingest:.2} ms at conc. {} (all components {:.2} ms) | {} |",
                point.concurrency,
                all_ms_per_report(&point.e2e_cpu, per),
                verdict(ingest > 0.0 && ingest <= 8.0)
            );
        }
        if let Some(rate) = &large.rate {
            let _ = writeln!(
                out,
                "| large peak RSS at the fixed-rate point ≤ 150 MiB | {} MiB at {:.0}/s | {} |",
                mib(rate.peak_rss),
                rate.rate,
                verdict(rate.peak_rss.is_some_and(|rss| rss <= 150.0))
            );
        }
    }
    if let Some(memory) = &results.memory
        && let (Some(idle), Some(peak), Some(settled)) =
            (memory.idle_rss, memory.peak_rss, memory.settled_rss)
    {
        let returned = if peak > idle {
            (peak - settled) / (peak - idle)
        } else {
            1.0
        };
        let _ = writeln!(
            out,
            "| memory given back after a burst: 2 s after the {} × 50 MiB uploads, ≥ 90 % of the growth returned | idle {idle:.0} → peak {peak:.0} → {settled:.0} MiB: {:.0} % returned | {} |",
            crate::memory::UPLOADS,
            returned * 100.0,
            verdict(returned >= 0.9)
        );
    }
    if let Some(retained) = results.retained_rss {
        let _ = writeln!(
            out,
            "| memory given back after the matrix: the long-running service's RSS once idle ≤ 150 MiB | {retained:.0} MiB | {} |",
            verdict(retained <= 150.0)
        );
    }
    if !results.relay.is_empty() {
        let mut ratios: Vec<f64> = results.relay.iter().map(|r| r.ratio()).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
        let rounds = results
            .relay
            .iter()
            .map(|r| format!("{:.0} / {:.0}", r.relay, r.rabbitmq))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| relay ≥ 0.8 × publish-with-confirms (median of {} rounds, relay / broker msg/s: {rounds}) | {median:.2} × | {} |",
            ratios.len(),
            verdict(median >= 0.8)
        );
    }
    let _ = writeln!(out);
}
