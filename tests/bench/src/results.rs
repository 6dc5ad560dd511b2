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
            "| conc. | e2e ok/s | p50 ms | p99 ms | statuses | floor/s | e2e ÷ floor | floor p99 ms | floor RSS MiB / ingest cores / client cores | PG tx/s | e2e ÷ PG | PG p99 ms | e2e ÷ min(PG, MQ) | peak RSS MiB | relay drain s | cores: ingest / pg / mq / client / other |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
        );
        for p in &size.points {
            let e2e = p.e2e.ok_per_sec();
            let pg = p.postgres.per_sec();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {} | {:.1} | {} / {:.2} / {:.2} | {:.0} | {} | {:.1} | {} | {} | {:.1} | {} |",
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
            );
        }
        let _ = writeln!(out);
        if let Some(rate) = &size.rate {
            let _ = writeln!(
                out,
                "Fixed rate at half the best end-to-end rate ({:.0}/s offered, {:.0}/s answered 200): \
                 p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms [{}], peak RSS {} MiB, \
                 cores {} (latency from each request's due time, so queueing counts).\n",
                rate.rate,
                rate.outcome.ok_per_sec(),
                rate.outcome.ms(0.5),
                rate.outcome.ms(0.99),
                rate.outcome.ms(0.999),
                rate.outcome.ms(1.0),
                rate.outcome.status_summary(),
                mib(rate.peak_rss),
                cores(&rate.cpu),
            );
        }
        if let Some(best) = best_point(size) {
            let per = best.e2e.ok_per_sec();
            let _ = writeln!(
                out,
                "CPU per accepted report at the best point (conc. {}): ingest {:.2} ms, PostgreSQL {:.2} ms, \
                 RabbitMQ {:.2} ms, bench client {:.2} ms; the PostgreSQL limit run cost PostgreSQL {:.2} ms per \
                 transaction. Best PostgreSQL limit for this size: {pg_best:.0} tx/s.\n",
                best.concurrency,
                cpu_ms_per_report(&best.e2e_cpu, Group::Ingest, per),
                cpu_ms_per_report(&best.e2e_cpu, Group::Postgres, per),
                cpu_ms_per_report(&best.e2e_cpu, Group::RabbitMq, per),
                cpu_ms_per_report(&best.e2e_cpu, Group::LoadGenerator, per),
                cpu_ms_per_report(&best.postgres_cpu, Group::Postgres, best.postgres.per_sec()),
            );
        }
    }

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
        let _ = writeln!(
            out,
            "| small ≥ 2 × svix-server's 1,170/s | {best:.0}/s → {:.2} × | {} |",
            best / 1170.0,
            verdict(best >= 2340.0)
        );
        if let Some(rate) = &small.rate {
            let p99 = rate.outcome.ms(0.99);
            let _ = writeln!(
                out,
                "| small p99 ≤ 20 ms at half the maximum rate | {p99:.1} ms at {:.0}/s | {} |",
                rate.rate,
                verdict(p99 <= 20.0)
            );
        }
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
