//! Report bodies the way CI clients send them: valid against the wire contract, unique
//! per request (the `run_id` differs, so every request is a new ingestion and never a
//! duplicate), and signed with the legacy scheme.
//!
//! The tests array is rendered once per size; each request only splices its `run_id`
//! into a copy, so the load generator spends its CPU on copying and signing (what a
//! client really does), not on formatting JSON.

use std::fmt::Write as _;

use bytes::Bytes;
use uuid::Uuid;

/// A fixed commit, so the duplicate key differs only by `run_id`.
pub const COMMIT_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Report sizes of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// 10 tests (about 1.5 KB, like the 1.4 KB payload of the svix comparison).
    Small,
    /// 1,000 tests.
    Medium,
    /// 10,000 tests, the contract's maximum.
    Large,
}

impl Size {
    #[cfg(test)]
    pub const ALL: [Size; 3] = [Size::Small, Size::Medium, Size::Large];

    pub fn tests(self) -> usize {
        match self {
            Size::Small => 10,
            Size::Medium => 1_000,
            Size::Large => 10_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

/// A report body with a hole for the `run_id`.
#[derive(Debug, Clone)]
pub struct Template {
    pub repo: Uuid,
    pub tests: usize,
    prefix: Bytes,
    suffix: Bytes,
}

impl Template {
    /// A realistic report: mostly passing tests, every tenth failing with a short
    /// stack trace, `failure_bytes` of failure details on each failing test.
    pub fn new(repo: Uuid, tests: usize, failure_bytes: usize) -> Self {
        Self::build(repo, tests, failure_bytes, 10)
    }

    /// A report whose every test fails with `failure_bytes` of details: used to reach
    /// the 50 MiB body limit with the contract's 10,000 tests.
    pub fn huge(repo: Uuid, failure_bytes: usize) -> Self {
        Self::build(repo, 10_000, failure_bytes, 1)
    }

    fn build(repo: Uuid, tests: usize, failure_bytes: usize, fail_every: usize) -> Self {
        let prefix = format!(
            r#"{{"repo_id":"{repo}","commit_sha":"{COMMIT_SHA}","framework":"junit","branch":"main","environment":{{"ci":"bench"}},"run_id":""#
        );
        // A stack-trace-like filler; JSON-safe characters only.
        let trace: String = "at com.example.Module.method(Module.java:42) "
            .chars()
            .cycle()
            .take(failure_bytes)
            .collect();
        let mut suffix = String::with_capacity(tests * (160 + failure_bytes / fail_every));
        suffix.push_str(r#"","tests":["#);
        for i in 0..tests {
            if i > 0 {
                suffix.push(',');
            }
            let failing = i % fail_every == fail_every - 1;
            let status = if failing { "fail" } else { "pass" };
            let _ = write!(
                suffix,
                r#"{{"path":"src/test/java/com/example/module{m}/Test{i}.java","name":"test_case_{i}","status":"{status}","durationMs":{d},"startedAt":"2026-11-28T17:43:00Z","tags":["unit"]"#,
                m = i % 50,
                d = i % 500 + 1,
            );
            if failing {
                let _ = write!(suffix, r#","failureDetails":"{trace}""#);
            }
            suffix.push('}');
        }
        suffix.push_str("]}");
        Self {
            repo,
            tests,
            prefix: Bytes::from(prefix),
            suffix: Bytes::from(suffix),
        }
    }

    /// The body for one request.
    pub fn body(&self, run_id: &str) -> Bytes {
        let mut body = Vec::with_capacity(self.len() + run_id.len());
        body.extend_from_slice(&self.prefix);
        body.extend_from_slice(run_id.as_bytes());
        body.extend_from_slice(&self.suffix);
        Bytes::from(body)
    }

    /// Body length without the `run_id`.
    pub fn len(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }
}

/// A signed request body: the body and its `X-FR-Sig`.
pub fn signed(template: &Template, secret: &str, run_id: &str) -> (Bytes, String) {
    let body = template.body(run_id);
    let signature = anchorpipe_ingest::signature::sign_legacy(secret, &body);
    (body, signature)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bodies_are_valid_reports_of_the_requested_size() {
        let validator = anchorpipe_ingest::report::ReportValidator::new(10_000);
        for size in Size::ALL {
            let template = Template::new(Uuid::new_v4(), size.tests(), 300);
            let body = template.body("run-1");
            let report = validator.parse(&body).unwrap();
            assert_eq!(report.test_count, size.tests());
            assert_eq!(report.run_id, "run-1");
            assert_eq!(report.repo_id, template.repo);
        }
    }

    #[test]
    fn the_huge_body_is_valid_and_just_under_50_mib() {
        let validator = anchorpipe_ingest::report::ReportValidator::new(10_000);
        let template = Template::huge(Uuid::new_v4(), crate::memory::HUGE_FAILURE_BYTES);
        let body = template.body("run-huge-00");
        assert!(body.len() <= 50 * 1024 * 1024, "{}", body.len());
        assert!(body.len() > 49 * 1024 * 1024, "{}", body.len());
        validator.parse(&body).unwrap();
    }
}
