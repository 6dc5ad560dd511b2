//! The previous validator: `schema/report.schema.json` checked by the `jsonschema` crate
//! over a parsed `serde_json::Value`, then the header deserialized from that tree.
//!
//! Not used by the service. It is the oracle of the agreement property test and the
//! baseline of the parser micro-benchmark (`anchorpipe-bench parser`), so it is compiled
//! only for tests and with the `legacy-validator` feature.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Detail, MAX_DETAILS};

const SCHEMA: &str = include_str!("../../schema/report.schema.json");

/// The header as the previous path deserialized it (a second pass over the tree).
#[derive(Debug, Clone, Deserialize)]
pub struct LegacyHeader {
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
pub struct SchemaValidator {
    validator: jsonschema::Validator,
}

impl SchemaValidator {
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
    pub fn validate(&self, body: &Value) -> Result<(LegacyHeader, usize), Vec<Detail>> {
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
        let header = LegacyHeader::deserialize(body).map_err(|e| {
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

/// The whole previous path for one body: parse into a tree, validate, deserialize the
/// header. `Err(None)` where the service answered `Invalid JSON payload`.
pub fn parse_and_validate(
    validator: &SchemaValidator,
    body: &[u8],
) -> Result<(LegacyHeader, usize), Option<Vec<Detail>>> {
    let value: Value = serde_json::from_slice(body).map_err(|_| None)?;
    validator.validate(&value).map_err(Some)
}
