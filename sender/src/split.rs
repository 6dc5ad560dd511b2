//! Splits a report over the contract's limits into parts that are each a valid report
//! and together carry every test, in order.
//!
//! A part is closed when it holds `max_tests` tests or the next test would take its
//! body past `max_body_bytes`. Parts of a split report get the run id
//! `<run_id>#<part>/<parts>` (e.g. `1234#2/3`): the duplicate key
//! `(repo_id, commit_sha, run_id, framework)` stays meaningful per part, so resending
//! the same file resends the same parts and each is answered as a duplicate, and a
//! consumer can regroup the parts by the prefix. The run id is shortened first when the
//! suffix would take it past 255 characters. Each part's `metadata.anchorpipePart` says
//! `{"runId", "part", "parts"}`; an `idempotency_key` gets the same suffix. A report
//! within the limits is returned unchanged.

use serde_json::{Value, json};

use crate::report::{MAX_HEADER_CHARS, MAX_TESTS, Report, truncate_chars};

/// The limits a part must keep to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Most tests in one part: the contract's 10,000, or a tenant's lower `maxTests`.
    pub max_tests: usize,
    /// Largest body of one part: the endpoint's `maxBodyBytes` (50 MiB by default).
    pub max_body_bytes: usize,
}

impl Default for SplitLimits {
    fn default() -> Self {
        Self {
            max_tests: MAX_TESTS,
            max_body_bytes: 50 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("the report has no tests")]
    Empty,
    #[error("test {index} alone is {bytes} bytes, over the body limit of {limit} bytes")]
    TestTooLarge {
        index: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("could not serialize the report: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Room kept in each part for the run id suffix and the `anchorpipePart` metadata, which
/// are added after the parts are cut.
const PART_OVERHEAD_BYTES: usize = 512;

/// Splits `report` into parts within `limits` (one part if it already fits).
pub fn split(report: Report, limits: SplitLimits) -> Result<Vec<Report>, SplitError> {
    if report.tests.is_empty() {
        return Err(SplitError::Empty);
    }
    let max_tests = limits.max_tests.max(1);
    let mut header = report;
    let tests = std::mem::take(&mut header.tests);
    let header_bytes = serde_json::to_vec(&header)?.len() + PART_OVERHEAD_BYTES;

    let mut groups: Vec<Vec<_>> = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = header_bytes;
    for (index, test) in tests.into_iter().enumerate() {
        // +1 for the comma between array items.
        let bytes = serde_json::to_vec(&test)?.len() + 1;
        if header_bytes + bytes > limits.max_body_bytes {
            return Err(SplitError::TestTooLarge {
                index,
                bytes,
                limit: limits.max_body_bytes,
            });
        }
        if !current.is_empty()
            && (current.len() >= max_tests || current_bytes + bytes > limits.max_body_bytes)
        {
            groups.push(std::mem::take(&mut current));
            current_bytes = header_bytes;
        }
        current_bytes += bytes;
        current.push(test);
    }
    groups.push(current);

    let count = groups.len();
    if count == 1 {
        header.tests = groups.pop().unwrap_or_default();
        return Ok(vec![header]);
    }
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, tests)| part(&header, tests, i + 1, count))
        .collect())
}

fn with_suffix(base: &str, suffix: &str) -> String {
    let room = MAX_HEADER_CHARS.saturating_sub(suffix.chars().count());
    format!("{}{suffix}", truncate_chars(base, room))
}

fn part(
    header: &Report,
    tests: Vec<crate::report::TestResult>,
    number: usize,
    count: usize,
) -> Report {
    let suffix = format!("#{number}/{count}");
    let mut part = header.clone();
    part.run_id = with_suffix(&header.run_id, &suffix);
    part.idempotency_key = header
        .idempotency_key
        .as_deref()
        .map(|k| with_suffix(k, &suffix));
    let mut metadata = header.metadata.clone().unwrap_or_default();
    metadata.insert(
        "anchorpipePart".to_owned(),
        json!({"runId": header.run_id, "part": number, "parts": count}),
    );
    part.metadata = Some(metadata);
    part.tests = tests;
    part
}

/// The run id a part was cut from, if `run_id` is one written by [`split`].
pub fn base_run_id(part: &Report) -> Option<&str> {
    part.metadata
        .as_ref()?
        .get("anchorpipePart")?
        .get("runId")
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Status, TestResult};
    use serde_json::Map;

    fn report(tests: usize) -> Report {
        let mut report = Report::new("junit");
        report.run_id = "run-7".to_owned();
        report.tests = (0..tests)
            .map(|i| TestResult {
                path: "a/b.rs".to_owned(),
                name: format!("test {i}"),
                status: Status::Pass,
                duration_ms: Some(1),
                started_at: "2026-11-29T12:00:00.000Z".to_owned(),
                failure_details: None,
                tags: Vec::new(),
                metadata: None,
                extra: Map::new(),
            })
            .collect();
        report
    }

    #[test]
    fn a_report_within_the_limits_is_unchanged() {
        let parts = split(report(3), SplitLimits::default()).unwrap();
        assert_eq!(parts, vec![report(3)]);
    }

    #[test]
    fn twenty_five_thousand_tests_make_three_parts_with_every_test_in_order() {
        let parts = split(report(25_000), SplitLimits::default()).unwrap();
        let sizes: Vec<_> = parts.iter().map(|p| p.tests.len()).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
        let ids: Vec<_> = parts.iter().map(|p| p.run_id.as_str()).collect();
        assert_eq!(ids, vec!["run-7#1/3", "run-7#2/3", "run-7#3/3"]);
        let names: Vec<_> = parts
            .iter()
            .flat_map(|p| &p.tests)
            .map(|t| &t.name)
            .collect();
        assert_eq!(names.len(), 25_000);
        assert_eq!(names[10_000], "test 10000");
        assert_eq!(base_run_id(&parts[2]), Some("run-7"));
        assert_eq!(
            parts[1].metadata.as_ref().unwrap()["anchorpipePart"]["part"],
            2
        );
    }

    #[test]
    fn parts_also_keep_under_the_body_limit() {
        let limits = SplitLimits {
            max_tests: 10_000,
            max_body_bytes: 20_000,
        };
        let parts = split(report(1_000), limits).unwrap();
        assert!(parts.len() > 1);
        for part in &parts {
            assert!(serde_json::to_vec(part).unwrap().len() <= limits.max_body_bytes);
        }
        assert_eq!(parts.iter().map(|p| p.tests.len()).sum::<usize>(), 1_000);
    }

    #[test]
    fn a_long_run_id_is_shortened_to_fit_the_suffix() {
        let mut long = report(3);
        long.run_id = "r".repeat(255);
        let limits = SplitLimits {
            max_tests: 2,
            ..SplitLimits::default()
        };
        let parts = split(long, limits).unwrap();
        assert_eq!(parts[0].run_id.chars().count(), 255);
        assert!(parts[0].run_id.ends_with("…#1/2"));
    }
}
