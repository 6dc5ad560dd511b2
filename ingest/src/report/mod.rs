//! The report schema (contract 1) and its validation.
//!
//! A body is read once: serde visitors ([`parse`]) deserialize it straight into the
//! fields the service needs, borrowing from the body, and check every rule of
//! `schema/report.schema.json` as each value goes by. No generic JSON tree is built:
//! `tests` is counted and checked item by item, the free-form `metadata` and
//! `environment` objects are kept as raw slices of the body. Memory stays within a
//! small constant factor of the body whatever its shape.
//!
//! Every problem is reported at once (up to [`MAX_DETAILS`]), with the messages and
//! dotted paths (`tests.3.status`) existing clients know, in the order the previous
//! JSON Schema validator gave them: NUL characters first, then for each object its
//! missing required fields followed by its fields in name order.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

#[cfg(any(test, feature = "legacy-validator"))]
pub mod legacy;
mod parse;
pub mod rules;
#[cfg(test)]
mod tests;

/// At most this many problems are listed in one response; a body with 10,000 bad test
/// entries would otherwise produce a response larger than the request.
pub const MAX_DETAILS: usize = 100;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub path: String,
    pub message: String,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON (syntax, invalid UTF-8 or escapes, a number out of range, nesting deeper
    /// than serde_json's limit of 127 levels): `Invalid JSON payload`.
    InvalidJson,
    /// JSON, but not a valid report: every problem, up to [`MAX_DETAILS`], then one line
    /// saying how many more.
    Invalid(Vec<Detail>),
}

/// A valid report, borrowing from its body.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub repo_id: Uuid,
    pub commit_sha: Cow<'a, str>,
    pub run_id: Cow<'a, str>,
    /// One of [`rules::FRAMEWORKS`].
    pub framework: &'static str,
    pub branch: Option<Cow<'a, str>>,
    pub pull_request: Option<Cow<'a, str>>,
    /// A string → string object, as sent.
    pub environment: Option<&'a RawValue>,
    /// Any object, as sent.
    pub metadata: Option<&'a RawValue>,
    pub idempotency_key: Option<Cow<'a, str>>,
    /// Items in `tests`.
    pub test_count: usize,
}

impl Report<'_> {
    /// The owned fields the store and the event message need.
    pub fn header(&self) -> ReportHeader {
        let text = |value: &Option<Cow<'_, str>>| value.as_deref().map(str::to_owned);
        ReportHeader {
            repo_id: self.repo_id,
            commit_sha: self.commit_sha.clone().into_owned(),
            run_id: self.run_id.clone().into_owned(),
            framework: self.framework.to_owned(),
            branch: text(&self.branch),
            pull_request: text(&self.pull_request),
            environment: self.environment.map(ToOwned::to_owned),
            metadata: self.metadata.map(ToOwned::to_owned),
            idempotency_key: text(&self.idempotency_key),
        }
    }
}

/// The fields of a report the service itself needs; the rest is stored as sent.
/// `environment` and `metadata` stay raw JSON (validated, copied from the body): turning
/// an arbitrary object into a `Value` tree costs many times its size.
#[derive(Debug, Clone)]
pub struct ReportHeader {
    pub repo_id: Uuid,
    pub commit_sha: String,
    pub run_id: String,
    pub framework: String,
    pub branch: Option<String>,
    pub pull_request: Option<String>,
    pub environment: Option<Box<RawValue>>,
    pub metadata: Option<Box<RawValue>>,
    pub idempotency_key: Option<String>,
}

/// The validator for one tenant's limits.
#[derive(Debug, Clone)]
pub struct ReportValidator {
    max_tests: usize,
}

impl ReportValidator {
    /// A validator allowing at most `max_tests` items in `tests`.
    pub fn new(max_tests: u32) -> Self {
        Self {
            max_tests: usize::try_from(max_tests).unwrap_or(usize::MAX),
        }
    }

    /// Parses and validates a body in one pass.
    pub fn parse<'a>(&self, body: &'a [u8]) -> Result<Report<'a>, Rejection> {
        // JSON text is UTF-8; checking it up front lets serde_json borrow `&str`s from
        // the body, and refuses exactly what parsing into a `Value` refused.
        let text = std::str::from_utf8(body).map_err(|_| Rejection::InvalidJson)?;
        parse::parse(text, self.max_tests)
    }
}
