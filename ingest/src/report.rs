//! The report schema (contract 1) and its validation.
//!
//! The rules live in `schema/report.schema.json` (JSON Schema 2020-12) and are checked
//! by the `jsonschema` crate, which reports every failure at once. Messages are written
//! here rather than taken from the library's `Display`, which quotes the offending
//! instance in full (a 10,001-item array would be echoed back). Paths use the dotted
//! form existing clients know (`tests.3.status`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

const SCHEMA: &str = include_str!("../schema/report.schema.json");

/// At most this many problems are listed in one response; a body with 10,000 bad test
/// entries would otherwise produce a response larger than the request.
pub const MAX_DETAILS: usize = 100;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    pub path: String,
    pub message: String,
}

/// The fields of a report the service itself needs; the rest is stored as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportHeader {
    pub repo_id: Uuid,
    pub commit_sha: String,
    pub run_id: String,
    pub framework: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub pull_request: Option<String>,
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the built-in report schema is invalid: {0}")]
    Invalid(String),
}

/// A compiled validator for one tenant's limits.
pub struct ReportValidator {
    validator: jsonschema::Validator,
}

impl ReportValidator {
    /// Compiles the schema with this tenant's `maxTests`.
    pub fn new(max_tests: u32) -> Result<Self, SchemaError> {
        let mut schema: Value =
            serde_json::from_str(SCHEMA).map_err(|e| SchemaError::Invalid(e.to_string()))?;
        schema["properties"]["tests"]["maxItems"] = max_tests.into();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SchemaError::Invalid(e.to_string()))?;
        Ok(Self { validator })
    }

    /// Validates a parsed body: returns the header fields and test count, or every
    /// problem found (up to [`MAX_DETAILS`], then one line saying how many more).
    pub fn validate(&self, body: &Value) -> Result<(ReportHeader, usize), Vec<Detail>> {
        let mut details: Vec<Detail> = Vec::new();
        find_nul(body, &mut Vec::new(), &mut details);
        let mut extra = 0usize;
        for error in self.validator.iter_errors(body) {
            if details.len() < MAX_DETAILS {
                details.push(detail(&error));
            } else {
                extra += 1;
            }
        }
        if extra > 0 {
            details.push(Detail {
                path: String::new(),
                message: format!("{extra} more problems not listed"),
            });
        }
        if !details.is_empty() {
            return Err(details);
        }
        let header = ReportHeader::deserialize(body).map_err(|e| {
            vec![Detail {
                path: String::new(),
                message: e.to_string(),
            }]
        })?;
        let tests = body
            .get("tests")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Ok((header, tests))
    }
}

fn dotted(location: &jsonschema::paths::Location) -> String {
    location
        .iter()
        .map(|segment| segment.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn join(parent: String, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn detail(error: &jsonschema::ValidationError<'_>) -> Detail {
    use jsonschema::error::ValidationErrorKind as K;
    let path = dotted(error.instance_path());
    let instance = error.instance();
    let (path, message) = match error.kind() {
        K::Required { property } => (
            join(path, property.as_str().unwrap_or_default()),
            "Required".to_owned(),
        ),
        K::Type { kind } => (
            path,
            format!("Expected {kind:?}, received {}", type_name(instance)).replace("Single(", ""),
        ),
        K::Enum { options } => (path, format!("Invalid value; expected one of {options}")),
        K::MinLength { limit } => (path, format!("Must contain at least {limit} character(s)")),
        K::MaxLength { limit } => (path, format!("Must contain at most {limit} character(s)")),
        K::MinItems { limit } => (path, format!("Must contain at least {limit} item(s)")),
        K::MaxItems { limit } => (path, format!("Must contain at most {limit} item(s)")),
        K::ExclusiveMinimum { limit } => (path, format!("Must be greater than {limit}")),
        K::Pattern { .. } if path.ends_with("commit_sha") => {
            (path, "Must be exactly 40 hexadecimal characters".to_owned())
        }
        K::Pattern { .. } | K::Format { .. } if path.ends_with("startedAt") => (
            path,
            "Must be an ISO-8601 date-time such as 2026-11-28T17:43:00Z".to_owned(),
        ),
        K::Format { format } if format == "uuid" => (path, "Must be a UUID".to_owned()),
        K::Format { format } => (path, format!("Must be a valid {format}")),
        other => (path, format!("Failed the `{}` rule", other.keyword())),
    };
    Detail { path, message }
}

/// PostgreSQL text and jsonb cannot hold U+0000, so a report containing it could never
/// be stored; it is refused up front as invalid instead of failing in the database.
fn find_nul(value: &Value, path: &mut Vec<String>, details: &mut Vec<Detail>) {
    if details.len() >= MAX_DETAILS {
        return;
    }
    let report = |path: &Vec<String>, details: &mut Vec<Detail>| {
        details.push(Detail {
            path: path.join("."),
            message: "Must not contain the NUL character (\\u0000)".to_owned(),
        });
    };
    match value {
        Value::String(s) if s.contains('\0') => report(path, details),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                find_nul(item, path, details);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                path.push(key.clone());
                if key.contains('\0') {
                    report(path, details);
                }
                find_nul(item, path, details);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "repo_id": "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61",
            "commit_sha": "0123456789abcdef0123456789abcdef01234567",
            "run_id": "run-1",
            "framework": "jest",
            "tests": [{
                "path": "src/a.test.ts",
                "name": "adds",
                "status": "pass",
                "durationMs": 12,
                "startedAt": "2026-11-28T17:43:00Z"
            }]
        })
    }

    fn errors(mutate: impl FnOnce(&mut Value)) -> Vec<Detail> {
        let mut body = valid();
        mutate(&mut body);
        ReportValidator::new(10_000)
            .unwrap()
            .validate(&body)
            .map(|_| ())
            .expect_err("expected the body to be invalid")
    }

    fn paths(details: &[Detail]) -> Vec<&str> {
        details.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn valid_minimal_and_full_reports_pass() {
        let v = ReportValidator::new(10_000).unwrap();
        let (header, tests) = v.validate(&valid()).unwrap();
        assert_eq!(tests, 1);
        assert_eq!(header.framework, "jest");
        let mut full = valid();
        full["branch"] = "main".into();
        full["pull_request"] = "42".into();
        full["environment"] = json!({"CI": "true"});
        full["metadata"] = json!({"any": [1, 2]});
        full["idempotency_key"] = "k".into();
        full["tests"][0]["failureDetails"] = "boom".into();
        full["tests"][0]["tags"] = json!(["slow"]);
        full["tests"][0]["metadata"] = json!({"retries": 1});
        let (header, _) = v.validate(&full).unwrap();
        assert_eq!(header.branch.as_deref(), Some("main"));
    }

    /// Each rule of contract 1, one invalid case each, with the path it must report.
    #[test]
    fn every_rule_reports_its_path() {
        let long = |n: usize| "x".repeat(n);
        type Mutation = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("repo_id", Box::new(|b| b["repo_id"] = "nope".into())),
            (
                "repo_id",
                Box::new(|b| {
                    b.as_object_mut().unwrap().remove("repo_id");
                }),
            ),
            ("commit_sha", Box::new(|b| b["commit_sha"] = "abc".into())),
            (
                "commit_sha",
                Box::new(|b| b["commit_sha"] = "g".repeat(40).into()),
            ),
            (
                "commit_sha",
                Box::new(|b| b["commit_sha"] = "a".repeat(41).into()),
            ),
            ("run_id", Box::new(|b| b["run_id"] = "".into())),
            ("run_id", Box::new(move |b| b["run_id"] = long(256).into())),
            ("run_id", Box::new(|b| b["run_id"] = 5.into())),
            ("framework", Box::new(|b| b["framework"] = "nunit".into())),
            ("tests", Box::new(|b| b["tests"] = json!([]))),
            ("tests", Box::new(|b| b["tests"] = json!({}))),
            (
                "tests.0.path",
                Box::new(|b| b["tests"][0]["path"] = "".into()),
            ),
            (
                "tests.0.path",
                Box::new(move |b| b["tests"][0]["path"] = long(501).into()),
            ),
            (
                "tests.0.name",
                Box::new(move |b| b["tests"][0]["name"] = long(501).into()),
            ),
            (
                "tests.0.name",
                Box::new(|b| {
                    b["tests"][0].as_object_mut().unwrap().remove("name");
                }),
            ),
            (
                "tests.0.status",
                Box::new(|b| b["tests"][0]["status"] = "passed".into()),
            ),
            (
                "tests.0.durationMs",
                Box::new(|b| b["tests"][0]["durationMs"] = 0.into()),
            ),
            (
                "tests.0.durationMs",
                Box::new(|b| b["tests"][0]["durationMs"] = 1.5.into()),
            ),
            (
                "tests.0.startedAt",
                Box::new(|b| b["tests"][0]["startedAt"] = "2026-11-28".into()),
            ),
            (
                "tests.0.startedAt",
                Box::new(|b| b["tests"][0]["startedAt"] = "yesterday T".into()),
            ),
            (
                "tests.0.startedAt",
                Box::new(|b| {
                    b["tests"][0].as_object_mut().unwrap().remove("startedAt");
                }),
            ),
            (
                "tests.0.failureDetails",
                Box::new(move |b| b["tests"][0]["failureDetails"] = long(10_001).into()),
            ),
            (
                "tests.0.tags.0",
                Box::new(|b| b["tests"][0]["tags"] = json!([1])),
            ),
            (
                "tests.0.metadata",
                Box::new(|b| b["tests"][0]["metadata"] = json!([])),
            ),
            ("branch", Box::new(move |b| b["branch"] = long(256).into())),
            (
                "pull_request",
                Box::new(move |b| b["pull_request"] = long(256).into()),
            ),
            (
                "environment.CI",
                Box::new(|b| b["environment"] = json!({"CI": true})),
            ),
            ("metadata", Box::new(|b| b["metadata"] = "x".into())),
            (
                "idempotency_key",
                Box::new(move |b| b["idempotency_key"] = long(256).into()),
            ),
            ("run_id", Box::new(|b| b["run_id"] = "a\u{0}b".into())),
        ];
        for (expected, mutate) in cases {
            let details = errors(mutate);
            assert!(
                paths(&details).contains(&expected),
                "expected {expected} in {details:?}"
            );
            assert!(details.iter().all(|d| !d.message.is_empty()));
        }
    }

    #[test]
    fn boundaries_are_inclusive() {
        let v = ReportValidator::new(10_000).unwrap();
        let mut b = valid();
        b["run_id"] = "r".repeat(255).into();
        b["tests"][0]["path"] = "p".repeat(500).into();
        b["tests"][0]["failureDetails"] = "f".repeat(10_000).into();
        b["commit_sha"] = "ABCDEF0123456789abcdef0123456789ABCDEF01".into();
        b["tests"][0]["durationMs"] = 1.into();
        b["tests"][0]["startedAt"] = "2026-11-28T17:43:00.123+01:00".into();
        assert!(v.validate(&b).is_ok(), "{:?}", v.validate(&b).err());
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let details = errors(|b| {
            b["commit_sha"] = "x".into();
            b["framework"] = "x".into();
            b["tests"][0]["status"] = "x".into();
        });
        assert_eq!(
            paths(&details),
            vec!["commit_sha", "framework", "tests.0.status"]
        );
    }

    #[test]
    fn too_many_tests_and_too_many_problems_stay_bounded() {
        let v = ReportValidator::new(3).unwrap();
        let mut b = valid();
        let test = b["tests"][0].clone();
        b["tests"] = Value::Array(vec![test; 4]);
        let details = v.validate(&b).unwrap_err();
        assert_eq!(details[0].path, "tests");
        assert_eq!(details[0].message, "Must contain at most 3 item(s)");

        let v = ReportValidator::new(10_000).unwrap();
        let bad = json!({"path": "", "name": "", "status": "x", "startedAt": "x"});
        b["tests"] = Value::Array(vec![bad; 500]);
        let details = v.validate(&b).unwrap_err();
        assert_eq!(details.len(), MAX_DETAILS + 1);
        assert!(
            details[MAX_DETAILS]
                .message
                .ends_with("more problems not listed")
        );
    }
}
