//! JUnit XML bodies (`Content-Type: application/xml` or `text/xml`): the report fields
//! XML does not carry, and the conversion to the JSON report that the rest of the
//! pipeline validates and stores.
//!
//! The request is authenticated exactly like a JSON one: the signature covers the body
//! as sent (the XML bytes), and the repository is the Bearer token's. The other header
//! fields come from query parameters, or headers for clients that cannot change the URL:
//!
//! | report field      | query parameter   | header                         |
//! |-------------------|-------------------|--------------------------------|
//! | `commit_sha`      | `commit_sha`      | `X-Anchorpipe-Commit-Sha`      |
//! | `run_id`          | `run_id`          | `X-Anchorpipe-Run-Id`          |
//! | `framework`       | `framework`       | `X-Anchorpipe-Framework`       |
//! | `branch`          | `branch`          | `X-Anchorpipe-Branch`          |
//! | `pull_request`    | `pull_request`    | `X-Anchorpipe-Pull-Request`    |
//! | `idempotency_key` | `idempotency_key` | `X-Anchorpipe-Idempotency-Key` |
//!
//! `commit_sha` and `run_id` are required; `framework` defaults to what the XML's
//! producer suggests (`pytest`, `jest`, … else `junit`). The converter is the one the
//! `anchorpipe` CLI uses ([`anchorpipe_sender::convert`]), so a file converted by the CLI
//! and the same file posted directly make the same report.

use std::collections::BTreeMap;

use anchorpipe_sender::{ConvertOptions, JunitError, Report};
use axum::extract::Query;
use axum::http::{HeaderMap, Uri, header};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::report::Detail;

/// Media types taken as JUnit XML (parameters such as `charset` are ignored; the
/// converter reads UTF-8 only).
pub const XML_MEDIA_TYPES: [&str; 2] = ["application/xml", "text/xml"];

/// Longest content type kept with the stored body (the column's limit).
const MAX_CONTENT_TYPE_LEN: usize = 255;

/// The fields, as (query parameter, header) pairs, in the order the table above lists
/// them.
const FIELDS: [(&str, &str); 6] = [
    ("commit_sha", "x-anchorpipe-commit-sha"),
    ("run_id", "x-anchorpipe-run-id"),
    ("framework", "x-anchorpipe-framework"),
    ("branch", "x-anchorpipe-branch"),
    ("pull_request", "x-anchorpipe-pull-request"),
    ("idempotency_key", "x-anchorpipe-idempotency-key"),
];

/// Fields without which an XML body cannot become a report.
const REQUIRED: [&str; 2] = ["commit_sha", "run_id"];

/// The `Content-Type` as sent when it names JUnit XML, else `None` (JSON, the default).
pub fn xml_content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    XML_MEDIA_TYPES
        .iter()
        .any(|t| media.eq_ignore_ascii_case(t))
        .then(|| value.chars().take(MAX_CONTENT_TYPE_LEN).collect())
}

/// Why an XML body was refused. Each is a 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// Report fields missing, given twice with different values, or unknown query
    /// parameters: one detail per problem, `path` naming the field.
    Fields(Vec<Detail>),
    /// Not UTF-8, not well-formed, or not JUnit: the converter's message, with the line.
    Invalid { message: String, line: Option<u64> },
    /// More tests than the endpoint's limit.
    TooManyTests(usize),
}

/// The report fields an XML body needs, from the query string and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlFields {
    values: BTreeMap<&'static str, String>,
}

impl XmlFields {
    fn get(&self, field: &str) -> Option<String> {
        self.values.get(field).cloned()
    }
}

/// Reads the fields from `uri`'s query and `headers`. A field given in both places must
/// have the same value; unknown query parameters are refused so a typo
/// (`?commit=…`) is named instead of reported as a missing field.
pub fn fields(uri: &Uri, headers: &HeaderMap) -> Result<XmlFields, XmlError> {
    let mut problems = Vec::new();
    let query: Vec<(String, String)> = match Query::try_from_uri(uri) {
        Ok(Query(pairs)) => pairs,
        Err(_) => {
            return Err(XmlError::Fields(vec![Detail {
                path: String::new(),
                message: "the query string could not be decoded".to_owned(),
            }]));
        }
    };
    let mut values = BTreeMap::new();
    for (name, value) in query {
        let Some((field, _)) = FIELDS.iter().find(|(f, _)| *f == name) else {
            let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
            problems.push(Detail {
                path: name.chars().take(64).collect(),
                message: format!(
                    "unknown query parameter; an XML report takes {}",
                    known.join(", ")
                ),
            });
            continue;
        };
        if values
            .insert(*field, value.clone())
            .is_some_and(|v| v != value)
        {
            problems.push(twice(field));
        }
    }
    for (field, header_name) in FIELDS {
        let Some(header_value) = headers.get(header_name) else {
            continue;
        };
        let Ok(text) = header_value.to_str() else {
            problems.push(Detail {
                path: field.to_owned(),
                message: format!("the {header_name} header is not visible ASCII"),
            });
            continue;
        };
        match values.get(field) {
            Some(existing) if existing != text => problems.push(twice(field)),
            Some(_) => {}
            None => {
                values.insert(field, text.to_owned());
            }
        }
    }
    for field in REQUIRED {
        if values.get(field).is_none_or(String::is_empty) {
            let header_name = FIELDS
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, h)| *h)
                .unwrap_or_default();
            problems.push(Detail {
                path: field.to_owned(),
                message: format!(
                    "required for a JUnit XML body: add ?{field}=… to the URL or the {header_name} header"
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(XmlFields { values })
    } else {
        Err(XmlError::Fields(problems))
    }
}

fn twice(field: &str) -> Detail {
    Detail {
        path: field.to_owned(),
        message: "given twice with different values (query parameters and headers must agree)"
            .to_owned(),
    }
}

/// Converts a JUnit XML body to the JSON report for `repo_id`, with the other header
/// fields from `fields`. `received_at` is the `startedAt` of tests whose XML has no
/// timestamp. The result still goes through the schema validation JSON bodies get.
pub fn to_report(
    body: &[u8],
    repo_id: Uuid,
    fields: &XmlFields,
    max_tests: usize,
    received_at: DateTime<Utc>,
) -> Result<Vec<u8>, XmlError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        // The line of the first byte that is not UTF-8, counted like the converter does.
        let line = 1 + body[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        XmlError::Invalid {
            message: format!("line {line}: the body is not UTF-8"),
            line: Some(line),
        }
    })?;
    let options = ConvertOptions {
        default_started_at: received_at,
        max_tests: Some(max_tests),
    };
    let converted =
        anchorpipe_sender::convert_str("body", text, &options).map_err(|e| match e {
            JunitError::TooManyTests { limit, .. } => XmlError::TooManyTests(limit),
            JunitError::Malformed { line, message, .. } => XmlError::Invalid {
                message: format!("line {line}: malformed XML: {message}"),
                line: Some(line),
            },
            other => XmlError::Invalid {
                message: other.to_string(),
                line: None,
            },
        })?;
    let report = Report {
        repo_id: repo_id.to_string(),
        commit_sha: fields.get("commit_sha").unwrap_or_default(),
        run_id: fields.get("run_id").unwrap_or_default(),
        framework: fields
            .get("framework")
            .unwrap_or_else(|| converted.framework.to_owned()),
        branch: fields.get("branch"),
        pull_request: fields.get("pull_request"),
        environment: None,
        metadata: None,
        idempotency_key: fields.get("idempotency_key"),
        tests: converted.tests,
        extra: serde_json::Map::new(),
    };
    serde_json::to_vec(&report).map_err(|e| XmlError::Invalid {
        message: format!("the converted report could not be encoded: {e}"),
        line: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn uri(query: &str) -> Uri {
        format!("/api/ingestion?{query}").parse().unwrap()
    }

    fn paths(error: XmlError) -> Vec<String> {
        match error {
            XmlError::Fields(details) => details.into_iter().map(|d| d.path).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xml_is_recognised_by_media_type_whatever_the_parameters() {
        let mut headers = HeaderMap::new();
        assert_eq!(xml_content_type(&headers), None);
        for (value, xml) in [
            ("application/json", false),
            ("application/xml", true),
            ("text/xml; charset=utf-8", true),
            ("Application/XML", true),
            ("application/xml-dtd", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(xml_content_type(&headers).is_some(), xml, "{value}");
        }
    }

    #[test]
    fn fields_come_from_the_query_or_headers_and_must_agree() {
        let mut headers = HeaderMap::new();
        headers.insert("x-anchorpipe-run-id", HeaderValue::from_static("r1"));
        let ok = fields(&uri("commit_sha=abc&branch=main"), &headers).unwrap();
        assert_eq!(ok.get("commit_sha").as_deref(), Some("abc"));
        assert_eq!(ok.get("run_id").as_deref(), Some("r1"));
        assert_eq!(ok.get("branch").as_deref(), Some("main"));
        assert_eq!(ok.get("framework"), None);

        let conflict = fields(&uri("commit_sha=abc&run_id=r2"), &headers).unwrap_err();
        assert_eq!(paths(conflict), ["run_id"]);
    }

    #[test]
    fn missing_and_unknown_fields_are_each_named() {
        let error = fields(&uri("commit=abc"), &HeaderMap::new()).unwrap_err();
        assert_eq!(paths(error), ["commit", "commit_sha", "run_id"]);
        let empty = fields(&uri("commit_sha=&run_id=r"), &HeaderMap::new()).unwrap_err();
        assert_eq!(paths(empty), ["commit_sha"]);
    }

    #[test]
    fn malformed_xml_names_the_line() {
        let xml = b"<testsuite name=\"s\">\n<testcase name=\"a\">\n</testsuite>\n";
        let fields = fields(&uri("commit_sha=a&run_id=r"), &HeaderMap::new()).unwrap();
        let error = to_report(xml, Uuid::nil(), &fields, 10, Utc::now()).unwrap_err();
        let XmlError::Invalid { message, line } = error else {
            panic!("{error:?}");
        };
        assert_eq!(line, Some(3), "{message}");
        assert!(message.starts_with("line 3: malformed XML"), "{message}");
    }

    #[test]
    fn a_converted_report_carries_the_fields_and_the_producers_framework() {
        let xml =
            br#"<testsuites name="pytest"><testsuite name="s" timestamp="2026-11-28T17:43:00">
            <testcase classname="tests.test_a" name="test_one" time="0.5"/>
            <testcase classname="tests.test_a" name="test_two"><failure message="boom"/></testcase>
        </testsuite></testsuites>"#;
        let fields = fields(&uri("commit_sha=c&run_id=r&branch=main"), &HeaderMap::new()).unwrap();
        let json = to_report(xml, Uuid::nil(), &fields, 10, Utc::now()).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(report["repo_id"], Uuid::nil().to_string());
        assert_eq!(report["commit_sha"], "c");
        assert_eq!(report["branch"], "main");
        assert_eq!(report["framework"], "pytest");
        assert_eq!(report["tests"].as_array().unwrap().len(), 2);
        assert_eq!(report["tests"][1]["status"], "fail");
        assert_eq!(
            to_report(xml, Uuid::nil(), &fields, 1, Utc::now()).unwrap_err(),
            XmlError::TooManyTests(1)
        );
    }
}
