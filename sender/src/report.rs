//! The report of contract 1 as Rust types, and the schema's limits the converter and
//! the splitter keep to.
//!
//! Header fields a JSON input may leave out (the CLI fills them from CI variables) are
//! read as empty strings; fields this crate does not know are kept as they came, so a
//! JSON report passes through unchanged apart from what is filled in.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most tests one report may carry (`tests.maxItems`).
pub const MAX_TESTS: usize = 10_000;
/// `tests[].path` and `tests[].name` are at most this many characters.
pub const MAX_PATH_CHARS: usize = 500;
pub const MAX_NAME_CHARS: usize = 500;
/// `tests[].failureDetails` is at most this many characters.
pub const MAX_FAILURE_DETAILS_CHARS: usize = 10_000;
/// `run_id`, `branch`, `pull_request` and `idempotency_key` are at most this many characters.
pub const MAX_HEADER_CHARS: usize = 255;

/// The outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One test result (`tests[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    pub path: String,
    pub name: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// RFC 3339, always with a `T` and an offset.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Fields this crate does not model, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A whole report, as posted to `POST /api/ingestion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub repo_id: String,
    #[serde(default)]
    pub commit_sha: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub framework: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub tests: Vec<TestResult>,
    /// Fields this crate does not model, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Report {
    /// An empty report for `framework`; the caller fills the header and the tests.
    pub fn new(framework: impl Into<String>) -> Self {
        Self {
            repo_id: String::new(),
            commit_sha: String::new(),
            run_id: String::new(),
            framework: framework.into(),
            branch: None,
            pull_request: None,
            environment: None,
            metadata: None,
            idempotency_key: None,
            tests: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Counts of tests by status: (pass, fail, skip).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.tests
            .iter()
            .fold((0, 0, 0), |(p, f, s), t| match t.status {
                Status::Pass => (p + 1, f, s),
                Status::Fail => (p, f + 1, s),
                Status::Skip => (p, f, s + 1),
            })
    }
}

/// `text` cut to at most `max` characters (as the schema counts them: Unicode scalar
/// values), ending in `…` when it was cut, so a reader sees it is incomplete.
pub fn truncate_chars(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &text[..end]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_ends_in_a_marker_within_the_limit() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        let long = "é".repeat(600);
        let cut = truncate_chars(&long, MAX_NAME_CHARS);
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let json = r#"{"repo_id":"r","commit_sha":"c","run_id":"1","framework":"jest","custom":1,
            "tests":[{"path":"p","name":"n","status":"pass","startedAt":"2026-01-01T00:00:00Z","retries":2}]}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        let back = serde_json::to_value(&report).unwrap();
        assert_eq!(back["custom"], 1);
        assert_eq!(back["tests"][0]["retries"], 2);
        assert!(back.get("branch").is_none());
    }
}
