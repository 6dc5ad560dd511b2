//! `anchorpipe-bench parser`: the report parser alone, in this process, against the
//! previous path (`serde_json::Value` + `jsonschema` + header deserialization).
//!
//! For the matrix's three report sizes: time per parse and peak heap bytes during one
//! parse. Then the new parser's peak on pathological bodies, against their size. Heap
//! bytes come from a counting global allocator (`peak_alloc`): the peak of bytes
//! requested while the parse runs, above what was allocated before it (the body).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anchorpipe_ingest::report::ReportValidator;
use anchorpipe_ingest::report::legacy::{self, SchemaValidator};
use peak_alloc::PeakAlloc;
use uuid::Uuid;

use crate::report::{Size, Template};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// How long each implementation is timed per body.
const TIME_PER_CASE: Duration = Duration::from_secs(2);

const MIB: f64 = 1024.0 * 1024.0;

/// What one parse of `body` returned, reduced to the outcome.
fn new_parse(validator: &ReportValidator, body: &[u8]) -> &'static str {
    match validator.parse(body) {
        Ok(report) => {
            black_box(report.header());
            "valid"
        }
        Err(anchorpipe_ingest::report::Rejection::InvalidJson) => "invalid JSON",
        Err(anchorpipe_ingest::report::Rejection::Invalid(_)) => "invalid",
    }
}

fn old_parse(validator: &SchemaValidator, body: &[u8]) -> &'static str {
    match legacy::parse_and_validate(validator, body) {
        Ok(header) => {
            black_box(header);
            "valid"
        }
        Err(None) => "invalid JSON",
        Err(Some(_)) => "invalid",
    }
}

/// Peak heap bytes above the current level while `f` runs, and its result.
fn peak<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let out = f();
    (ALLOCATOR.peak_usage().saturating_sub(before), out)
}

/// Mean time per call, repeating for about [`TIME_PER_CASE`].
fn time(mut f: impl FnMut()) -> Duration {
    f();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < TIME_PER_CASE || n < 3 {
        f();
        n += 1;
    }
    started.elapsed() / n
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn mib(bytes: usize) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", bytes as f64 / MIB)
    }
}

pub fn run() -> anyhow::Result<()> {
    let new = ReportValidator::new(10_000);
    let old = SchemaValidator::new(10_000)?;

    println!("## Parser micro-benchmark (`anchorpipe-bench parser`)");
    println!();
    println!(
        "| report | body | old: time/parse | new: time/parse | speed-up | old: peak heap | new: peak heap |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for size in [Size::Small, Size::Medium, Size::Large] {
        let body = Template::new(Uuid::new_v4(), size.tests(), 300).body("run-1");
        anyhow::ensure!(
            new_parse(&new, &body) == "valid",
            "{} body refused",
            size.name()
        );
        anyhow::ensure!(
            old_parse(&old, &body) == "valid",
            "{} body refused (old)",
            size.name()
        );
        let (old_peak, _) = peak(|| old_parse(&old, &body));
        let (new_peak, _) = peak(|| new_parse(&new, &body));
        let old_time = time(|| {
            black_box(old_parse(&old, &body));
        });
        let new_time = time(|| {
            black_box(new_parse(&new, &body));
        });
        println!(
            "| {} ({} tests) | {} B | {} | {} | {:.1}× | {} | {} |",
            size.name(),
            size.tests(),
            body.len(),
            micros(old_time),
            micros(new_time),
            old_time.as_secs_f64() / new_time.as_secs_f64(),
            mib(old_peak),
            mib(new_peak),
        );
    }

    println!();
    println!("### Pathological bodies (heap above the body itself while parsing)");
    println!();
    println!(
        "| body | size | answer | new: peak heap | new: (body + peak) / body | new: time | old: peak heap | old: time |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (name, body) in pathological() {
        let (new_peak, answer) = peak(|| new_parse(&new, &body));
        let old_answer = old_parse(&old, &body);
        anyhow::ensure!(
            answer == old_answer,
            "{name}: new {answer}, old {old_answer}"
        );
        let (old_peak, _) = peak(|| old_parse(&old, &body));
        let started = Instant::now();
        black_box(new_parse(&new, &body));
        let new_time = started.elapsed();
        let started = Instant::now();
        black_box(old_parse(&old, &body));
        let old_time = started.elapsed();
        println!(
            "| {name} | {} | {answer} | {} | {:.2}× | {} | {} | {} |",
            mib(body.len()),
            mib(new_peak),
            (body.len() + new_peak) as f64 / body.len() as f64,
            micros(new_time),
            mib(old_peak),
            micros(old_time),
        );
    }
    Ok(())
}

/// 25 MiB class bodies that are cheap to send and were expensive to parse.
fn pathological() -> Vec<(&'static str, Vec<u8>)> {
    const TARGET: usize = 25 * 1024 * 1024;
    let head = r#"{"repo_id":"7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61","commit_sha":"0123456789abcdef0123456789abcdef01234567","run_id":"r","framework":"jest","#;
    let test = r#"{"path":"a","name":"b","status":"pass","startedAt":"2026-11-28T17:43:00Z""#;
    let mut bodies = Vec::new();

    // `tests` as 25 MiB of zeros: 13 million wrong-typed items.
    let mut body = format!(r#"{head}"tests":[0"#);
    while body.len() < TARGET {
        body.push_str(",0");
    }
    body.push_str("]}");
    bodies.push(("`tests`: [0,0,…]", body.into_bytes()));

    // One test with 1,000,000 tiny tags (valid).
    let mut body = format!(r#"{head}"tests":[{test},"tags":["a""#);
    for _ in 1..1_000_000 {
        body.push_str(r#","a""#);
    }
    body.push_str("]}]}");
    bodies.push(("1,000,000 tags `\"a\"`", body.into_bytes()));

    // Nesting 12.5 million levels deep (closed): in `metadata` (taken raw, so its levels
    // are counted by the parser) and in an unknown field (serde_json's own limit).
    for (name, field) in [
        ("`metadata`: 12.5M levels `[[…]]`", "metadata"),
        ("unknown field: 12.5M levels `[[…]]`", "x"),
    ] {
        let mut body = format!(r#"{head}"tests":[{test}}}],"{field}":"#);
        body.push_str(&"[".repeat(TARGET / 2));
        body.push_str(&"]".repeat(TARGET / 2));
        body.push('}');
        bodies.push((name, body.into_bytes()));
    }

    // Many keys: a valid report whose `metadata` and `environment` hold ~2 million
    // entries each.
    for (name, field, value) in [
        ("`metadata`: 2M keys", "metadata", "0"),
        ("`environment`: 2M keys", "environment", r#""v""#),
    ] {
        let mut body = format!(r#"{head}"tests":[{test}}}],"{field}":{{"#);
        let mut i = 0u64;
        while body.len() < TARGET {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#""k{i}":{value}"#));
            i += 1;
        }
        body.push_str("}}");
        bodies.push((name, body.into_bytes()));
    }

    // Many keys with wrong values in `environment` (each one a problem).
    let mut body = format!(r#"{head}"tests":[{test}}}],"environment":{{"#);
    let mut i = 0u64;
    while body.len() < TARGET {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(r#""k{i}":0"#));
        i += 1;
    }
    body.push_str("}}");
    bodies.push(("`environment`: 2M wrong values", body.into_bytes()));

    // One 25 MiB string with escapes (decoded into a scratch buffer), too long for
    // `failureDetails`.
    let mut body = format!(r#"{head}"tests":[{test},"failureDetails":""#);
    while body.len() < TARGET {
        body.push_str(r"at x\n");
    }
    body.push_str(r#""}]}"#);
    bodies.push(("`failureDetails`: one 25 MiB string", body.into_bytes()));

    // 10,000 valid tests with 2,500-byte failure details each (a large legitimate body).
    let body = Template::huge(Uuid::nil(), 2_500).body("run-1").to_vec();
    bodies.push(("10,000 tests × 2.5 KB details (valid)", body));
    bodies
}
