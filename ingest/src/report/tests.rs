//! The parser against every rule of the schema (each accepted at its edge and refused one
//! past it), against the previous `jsonschema` validator on arbitrary report-like
//! input, and on the bodies that used to cost many times their size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::legacy::{self, SchemaValidator};
use super::*;

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

/// The new parser's answer in a comparable shape: the test count, or `None` for
/// `Invalid JSON payload`, or the details.
fn new_outcome(validator: &ReportValidator, body: &[u8]) -> Result<usize, Option<Vec<Detail>>> {
    match validator.parse(body) {
        Ok(report) => Ok(report.test_count),
        Err(Rejection::InvalidJson) => Err(None),
        Err(Rejection::Invalid(details)) => Err(Some(details)),
    }
}

fn old_outcome(validator: &SchemaValidator, body: &[u8]) -> Result<usize, Option<Vec<Detail>>> {
    legacy::parse_and_validate(validator, body).map(|(_, tests)| tests)
}

/// Both validators on one body; they must give the same answer, details in the same
/// order.
fn agree(max_tests: u32, body: &[u8]) -> Result<usize, Option<Vec<Detail>>> {
    let new = new_outcome(&ReportValidator::new(max_tests), body);
    let old = old_outcome(&SchemaValidator::new(max_tests).unwrap(), body);
    assert_eq!(new, old, "body: {}", String::from_utf8_lossy(body));
    new
}

fn details(body: &Value) -> Vec<Detail> {
    match agree(10_000, body.to_string().as_bytes()) {
        Err(Some(details)) => details,
        other => panic!("expected invalid, got {other:?} for {body}"),
    }
}

fn accepted(body: &Value) {
    let outcome = agree(10_000, body.to_string().as_bytes());
    assert!(
        outcome.is_ok(),
        "expected valid, got {outcome:?} for {body}"
    );
}

/// The valid report with the value at `pointer` set (added if absent).
fn with(pointer: &str, value: Value) -> Value {
    let mut body = valid();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = body.pointer_mut(parent).unwrap();
    match parent {
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => parent[key] = value,
    }
    body
}

fn without(pointer: &str) -> Value {
    let mut body = valid();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    body.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    body
}

fn one(path: &str, message: &str) -> Vec<Detail> {
    vec![Detail {
        path: path.to_owned(),
        message: message.to_owned(),
    }]
}

#[test]
fn a_valid_report_gives_the_header_without_a_second_parse() {
    let mut body = valid();
    body["branch"] = "main".into();
    body["pull_request"] = "42".into();
    body["environment"] = json!({"CI": "true", "RUNNER": "linux"});
    body["metadata"] = json!({"any": [1, 2, {"deep": null}]});
    body["idempotency_key"] = "k".into();
    body["tests"][0]["failureDetails"] = "boom".into();
    body["tests"][0]["tags"] = json!(["slow"]);
    body["tests"][0]["metadata"] = json!({"retries": 1});
    let text = body.to_string();
    let report = ReportValidator::new(10_000).parse(text.as_bytes()).unwrap();
    assert_eq!(report.test_count, 1);
    assert!(matches!(report.run_id, Cow::Borrowed("run-1")));
    let header = report.header();
    assert_eq!(header.framework, "jest");
    assert_eq!(header.branch.as_deref(), Some("main"));
    assert_eq!(header.pull_request.as_deref(), Some("42"));
    assert_eq!(header.idempotency_key.as_deref(), Some("k"));
    assert_eq!(
        header.repo_id.to_string(),
        "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"
    );
    let environment: Value =
        serde_json::from_str(header.environment.as_ref().unwrap().get()).unwrap();
    assert_eq!(environment, body["environment"]);
    let metadata: Value = serde_json::from_str(header.metadata.as_ref().unwrap().get()).unwrap();
    assert_eq!(metadata, body["metadata"]);
    accepted(&body);
}

#[test]
fn escaped_strings_are_decoded() {
    let body = br#"{"repo_id":"7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61","commit_sha":"0123456789abcdef0123456789abcdef01234567","run_id":"r\u00e9\n","framework":"j\u0065st","tests":[{"path":"a","name":"b","status":"pass","startedAt":"2026-11-28T17:43:00Z"}]}"#;
    let report = ReportValidator::new(10).parse(body).unwrap();
    assert_eq!(report.run_id, "ré\n");
    assert_eq!(report.framework, "jest");
    agree(10, body).unwrap();
}

/// Each length rule: accepted at its limit, refused one character past it, counted in
/// characters (a two-byte `é` and a four-byte emoji count as one).
#[test]
fn lengths_are_inclusive_and_counted_in_characters() {
    let cases: [(&str, &str, usize, usize); 7] = [
        ("/run_id", "run_id", 1, 255),
        ("/branch", "branch", 0, 255),
        ("/pull_request", "pull_request", 0, 255),
        ("/idempotency_key", "idempotency_key", 0, 255),
        ("/tests/0/path", "tests.0.path", 1, 500),
        ("/tests/0/name", "tests.0.name", 1, 500),
        (
            "/tests/0/failureDetails",
            "tests.0.failureDetails",
            0,
            10_000,
        ),
    ];
    let mut body = valid();
    body["branch"] = "".into();
    body["pull_request"] = "".into();
    body["idempotency_key"] = "".into();
    body["tests"][0]["failureDetails"] = "".into();
    for (pointer, path, min, max) in cases {
        for unit in ["x", "é", "😀"] {
            let mut b = body.clone();
            *b.pointer_mut(pointer).unwrap() = unit.repeat(max).into();
            accepted(&b);
            *b.pointer_mut(pointer).unwrap() = unit.repeat(max + 1).into();
            assert_eq!(
                details(&b),
                one(path, &format!("Must contain at most {max} character(s)"))
            );
            *b.pointer_mut(pointer).unwrap() = unit.repeat(min.max(1)).into();
            accepted(&b);
        }
        let mut b = body.clone();
        *b.pointer_mut(pointer).unwrap() = "".into();
        if min == 1 {
            assert_eq!(
                details(&b),
                one(path, "Must contain at least 1 character(s)")
            );
        } else {
            accepted(&b);
        }
    }
}

#[test]
fn formats_and_patterns_on_both_sides() {
    let uuid = "Must be a UUID";
    let sha = "Must be exactly 40 hexadecimal characters";
    let date = "Must be an ISO-8601 date-time such as 2026-11-28T17:43:00Z";
    for ok in [
        "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61",
        "7D3C1C8E-6A4C-4B55-9D84-2F1C0F0B8F61",
    ] {
        accepted(&with("/repo_id", ok.into()));
    }
    for bad in [
        "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f6",
        "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f611",
        "7d3c1c8e6a4c4b559d842f1c0f0b8f61",
        "{7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61}",
        "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f6g",
        "7d3c1c8e_6a4c-4b55-9d84-2f1c0f0b8f61",
        "",
    ] {
        assert_eq!(details(&with("/repo_id", bad.into())), one("repo_id", uuid));
    }
    for ok in [
        "0123456789abcdef0123456789abcdef01234567",
        "ABCDEF0123456789abcdef0123456789ABCDEF01",
    ] {
        accepted(&with("/commit_sha", ok.into()));
    }
    for bad in [
        "0123456789abcdef0123456789abcdef0123456",
        "0123456789abcdef0123456789abcdef012345678",
        "0123456789abcdef0123456789abcdef0123456g",
        "0123456789abcdef0123456789abcdef01234567\n",
        "",
    ] {
        assert_eq!(
            details(&with("/commit_sha", bad.into())),
            one("commit_sha", sha)
        );
    }
    for ok in [
        "2026-11-28T17:43:00Z",
        "2026-11-28T17:43:00.123+01:00",
        "2024-02-29T00:00:00-23:59",
        "2026-11-28T23:59:60Z",
        "2026-11-29T00:59:60+01:00",
        "2026-11-28T17:43:00.5z",
    ] {
        accepted(&with("/tests/0/startedAt", ok.into()));
    }
    // Refused by the format only (one problem), or by the format and the `T` pattern (two).
    for bad in [
        "2026-02-29T17:43:00Z",
        "2026-11-31T17:43:00Z",
        "2026-13-01T17:43:00Z",
        "2026-11-28T24:00:00Z",
        "2026-11-28T17:60:00Z",
        "2026-11-28T17:43:00.Z",
        "2026-11-28T17:43:00",
        "2026-11-28T17:43:00+01:60",
        "2026-11-28T17:43:00+0100",
        "2026-11-28T17:43:60Z",
        "2026-11-28 T17:43:00Z",
        "yesterday T",
    ] {
        assert_eq!(
            details(&with("/tests/0/startedAt", bad.into())),
            one("tests.0.startedAt", date)
        );
    }
    for bad in ["2026-11-28", "2026-11-28t17:43:00z", ""] {
        let found = details(&with("/tests/0/startedAt", bad.into()));
        assert!(
            found
                .iter()
                .all(|d| d.path == "tests.0.startedAt" && d.message == date)
        );
    }
}

#[test]
fn enums_integers_types_and_required_fields() {
    for framework in rules::FRAMEWORKS {
        accepted(&with("/framework", framework.into()));
    }
    for status in rules::STATUSES {
        accepted(&with("/tests/0/status", status.into()));
    }
    let frameworks = r#"Invalid value; expected one of ["junit","jest","pytest","playwright","mocha","vitest","unknown"]"#;
    for bad in [
        json!("nunit"),
        json!("Jest"),
        json!(1),
        json!(["jest"]),
        json!(null),
    ] {
        assert_eq!(
            details(&with("/framework", bad)),
            one("framework", frameworks)
        );
    }
    let statuses = r#"Invalid value; expected one of ["pass","fail","skip"]"#;
    assert_eq!(
        details(&with("/tests/0/status", "passed".into())),
        one("tests.0.status", statuses)
    );
    for ok in [
        json!(1),
        json!(1.0),
        json!(1e2),
        json!(18446744073709551615u64),
    ] {
        accepted(&with("/tests/0/durationMs", ok));
    }
    let path = "tests.0.durationMs";
    assert_eq!(
        details(&with("/tests/0/durationMs", 0.into())),
        one(path, "Must be greater than 0")
    );
    assert_eq!(
        details(&with("/tests/0/durationMs", 1.5.into())),
        one(path, "Expected Integer), received number")
    );
    assert_eq!(
        details(&with("/tests/0/durationMs", (-0.5).into())).len(),
        2,
        "not an integer and not positive"
    );
    assert_eq!(
        details(&with("/tests/0/durationMs", "1".into())),
        one(path, "Expected Integer), received string")
    );
    let types = [
        ("/repo_id", "repo_id", "String"),
        ("/run_id", "run_id", "String"),
        ("/tests", "tests", "Array"),
        ("/tests/0", "tests.0", "Object"),
        ("/tests/0/tags", "tests.0.tags", "Array"),
        ("/tests/0/metadata", "tests.0.metadata", "Object"),
        ("/metadata", "metadata", "Object"),
        ("/environment", "environment", "Object"),
        ("/branch", "branch", "String"),
    ];
    for (pointer, path, expected) in types {
        assert_eq!(
            details(&with(pointer, true.into())),
            one(path, &format!("Expected {expected}), received boolean"))
        );
    }
    accepted(&with("/tests/0/tags", json!([])));
    accepted(&with("/tests/0/metadata", json!({})));
    assert_eq!(
        details(&with("/tests/0/tags", json!(["a", 1]))),
        one("tests.0.tags.1", "Expected String), received number")
    );
    assert_eq!(
        details(&with("/environment", json!({"A": "1", "B": 2}))),
        one("environment.B", "Expected String), received number")
    );
    for field in ["repo_id", "commit_sha", "run_id", "framework", "tests"] {
        assert_eq!(
            details(&without(&format!("/{field}"))),
            one(field, "Required")
        );
    }
    for field in ["path", "name", "status", "startedAt"] {
        assert_eq!(
            details(&without(&format!("/tests/0/{field}"))),
            one(&format!("tests.0.{field}"), "Required")
        );
    }
    accepted(&without("/tests/0/durationMs"));
    assert_eq!(
        details(&json!([])),
        one("", "Expected Object), received array")
    );
    // Extra fields are allowed anywhere (the schema has no `additionalProperties: false`).
    let mut body = valid();
    body["extra"] = json!({"x": [1]});
    body["tests"][0]["extra"] = json!(null);
    accepted(&body);
}

#[test]
fn items_are_counted_against_the_tenant_limit() {
    let mut body = valid();
    let test = body["tests"][0].clone();
    body["tests"] = Value::Array(vec![test.clone(); 3]);
    assert_eq!(agree(3, body.to_string().as_bytes()), Ok(3));
    body["tests"] = Value::Array(vec![test; 4]);
    assert_eq!(
        agree(3, body.to_string().as_bytes()),
        Err(Some(one("tests", "Must contain at most 3 item(s)")))
    );
    assert_eq!(
        details(&with("/tests", json!([]))),
        one("tests", "Must contain at least 1 item(s)")
    );
}

#[test]
fn nul_characters_are_refused_anywhere_and_listed_first() {
    let mut body = valid();
    body["run_id"] = "a\u{0}b".into();
    body["framework"] = "x".into();
    body["metadata"] = json!({"k\u{0}": ["\u{0}"]});
    body["zzz"] = json!({"b": "\u{0}", "a": "\u{0}"});
    let found = details(&body);
    let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "metadata.k\u{0}",
            "metadata.k\u{0}.0",
            "run_id",
            "zzz.a",
            "zzz.b",
            "framework"
        ]
    );
}

#[test]
fn all_problems_are_reported_at_once_and_bounded() {
    let found = details(&{
        let mut b = valid();
        b["commit_sha"] = "x".into();
        b["framework"] = "x".into();
        b["tests"][0]["status"] = "x".into();
        b
    });
    let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["commit_sha", "framework", "tests.0.status"]);

    let bad = json!({"path": "", "name": "", "status": "x", "startedAt": "x"});
    let found = details(&with("/tests", Value::Array(vec![bad; 500])));
    assert_eq!(found.len(), MAX_DETAILS + 1);
    assert_eq!(found[MAX_DETAILS].message, "2400 more problems not listed");
}

#[test]
fn the_last_of_repeated_keys_counts() {
    let body = valid().to_string();
    for (inject, expect_ok) in [
        (r#"{"run_id":"","#, true),
        (r#"{"tests":5,"#, true),
        (r#"{"framework":"x","#, true),
        (r#"{"zz\u0000":1,"zz\u0000":2,"#, false),
    ] {
        let text = body.replacen('{', inject, 1);
        assert_eq!(agree(10, text.as_bytes()).is_ok(), expect_ok, "{text}");
    }
    let text = body.replacen(r#""run_id":"run-1""#, r#""run_id":"ok","run_id":"""#, 1);
    assert_eq!(
        agree(10, text.as_bytes()),
        Err(Some(one("run_id", "Must contain at least 1 character(s)")))
    );
    let text = body.replacen(
        r#""tests":["#,
        r#""environment":{"a":1,"a":"x","b":"x","b":2},"tests":["#,
        1,
    );
    assert_eq!(
        agree(10, text.as_bytes()),
        Err(Some(one(
            "environment.b",
            "Expected String), received number"
        )))
    );
}

/// Invalid JSON exactly where a `Value` refused it: syntax, escapes, numbers out of
/// range, and nesting past serde_json's 127 levels, in free-form parts too.
#[test]
fn invalid_json_is_what_value_refused() {
    let body = valid().to_string();
    let open = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases = [
        String::new(),
        "{".to_owned(),
        format!("{body} x"),
        body.replacen("run-1", r"\ud800", 1),
        body.replacen("run-1", r"\x", 1),
        body.replacen(r#""durationMs":12"#, r#""durationMs":1e400"#, 1),
        body.replacen('{', r#"{"metadata":{"a":-1e400},"#, 1),
        body.replacen('{', r#"{"metadata":{"a":"\udc00"},"#, 1),
        body.replacen('{', r#"{"environment":{"a":"\udc00"},"#, 1),
        body.replacen('{', &format!(r#"{{"metadata":{{"a":{}}},"#, open(126)), 1),
        body.replacen(
            '{',
            &format!(r#"{{"environment":{{"a":{}}},"#, open(126)),
            1,
        ),
        body.replacen('{', &format!(r#"{{"x":{},"#, open(127)), 1),
        body.replacen(
            r#""status""#,
            &format!(r#""tags":{},"status""#, open(125)),
            1,
        ),
        body.replacen(
            r#""status""#,
            &format!(r#""metadata":{},"status""#, open(125)),
            1,
        ),
    ];
    for case in &cases {
        assert_eq!(agree(10, case.as_bytes()), Err(None), "{case}");
    }
    assert_eq!(agree(10, b"\xff"), Err(None));
    // One level less is still JSON (and then a type problem, or fine).
    let deep_ok = [
        body.replacen('{', &format!(r#"{{"metadata":{{"a":{}}},"#, open(125)), 1),
        body.replacen('{', &format!(r#"{{"x":{},"#, open(126)), 1),
        body.replacen(
            r#""status""#,
            &format!(r#""tags":{},"status""#, open(124)),
            1,
        ),
    ];
    for case in &deep_ok {
        assert_ne!(agree(10, case.as_bytes()), Err(None), "{case}");
    }
}

// ---- agreement with the previous validator on arbitrary report-like input ----

/// Strings around every rule's edges.
fn arb_text() -> impl Strategy<Value = String> {
    let units = prop::sample::select(vec!["x", "é", "😀", "T", "0", "a"]);
    let lengths =
        prop::sample::select(vec![0usize, 1, 2, 39, 40, 41, 254, 255, 256, 499, 500, 501]);
    prop_oneof![
        (units, lengths).prop_map(|(unit, n)| unit.repeat(n)),
        prop::sample::select(vec![
            "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61",
            "7D3C1C8E-6A4C-4B55-9D84-2F1C0F0B8F6",
            "0123456789abcdef0123456789abcdef01234567",
            "0123456789ABCDEF0123456789abcdef0123456z",
            "2026-11-28T17:43:00Z",
            "2026-11-28T17:43:00.5+01:00",
            "2026-11-28T23:59:60Z",
            "2026-02-29T00:00:00Z",
            "2026-11-28t17:43:00z",
            "2026-11-28",
            "jest",
            "junit",
            "pass",
            "fail",
            "skip",
            "unknown",
            "a\u{0}b",
            "",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9:T.+-]{0,24}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop::sample::select(vec![-1i64, 0, 1, 2, 500]).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, -0.0, 1.0, 1e2, -2.5]).prop_map(Value::from),
        arb_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "k\u{0}", "path", "startedAt", "status"]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A field's value: usually right (often at an edge of its rules), sometimes absent,
/// sometimes wrong (anything, or a string at or past an edge).
fn field(right: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        40 => right.prop_map(Some),
        1 => Just(None),
        1 => arb_json().prop_map(Some),
        1 => arb_text().prop_map(|t| Some(Value::from(t))),
    ]
    .boxed()
}

/// Valid strings of `min..=max` characters, at the edges.
fn text_within(min: usize, max: usize) -> impl Strategy<Value = Value> {
    let units = prop::sample::select(vec!["x", "é", "😀", "a\\b"]);
    let lengths = prop::sample::select(vec![min.max(1), min, max, (min + max) / 2]);
    (units, lengths)
        .prop_map(|(unit, n)| Value::from(unit.repeat(n).chars().take(n).collect::<String>()))
}

fn one_of(options: &[&'static str]) -> impl Strategy<Value = Value> + use<> {
    prop::sample::select(options.to_vec()).prop_map(Value::from)
}

fn arb_test() -> impl Strategy<Value = Value> {
    (
        field(text_within(1, 500)),
        field(text_within(1, 500)),
        field(one_of(&["pass", "fail", "skip"])),
        field(prop::sample::select(vec![1i64, 12, 100_000]).prop_map(Value::from)),
        field(one_of(&[
            "2026-11-28T17:43:00Z",
            "2026-11-28T17:43:00.123+01:00",
            "2024-02-29T23:59:60Z",
            "2026-11-28t17:43:00ZT",
        ])),
        field(text_within(0, 10_000)),
        field(prop::collection::vec(text_within(0, 3), 0..3).prop_map(Value::Array)),
        field(arb_object()),
        prop::option::of(arb_json()),
    )
        .prop_map(
            |(path, name, status, duration, started, failure, tags, metadata, extra)| {
                let mut test = serde_json::Map::new();
                for (key, value) in [
                    ("path", path),
                    ("name", name),
                    ("status", status),
                    ("durationMs", duration),
                    ("startedAt", started),
                    ("failureDetails", failure),
                    ("tags", tags),
                    ("metadata", metadata),
                    ("extra", extra),
                ] {
                    if let Some(value) = value {
                        test.insert(key.to_owned(), value);
                    }
                }
                Value::Object(test)
            },
        )
}

fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{1,3}", arb_json(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn arb_report() -> impl Strategy<Value = Value> {
    let tests = prop::collection::vec(arb_test(), 1..5).prop_map(Value::Array);
    let environment = prop::collection::btree_map("[A-Z]{1,3}", text_within(0, 4), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    (
        (
            field(one_of(&[
                "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61",
                "7D3C1C8E-6A4C-4B55-9D84-2F1C0F0B8F61",
            ])),
            field(one_of(&[
                "0123456789abcdef0123456789abcdef01234567",
                "ABCDEF0123456789abcdef0123456789ABCDEF01",
            ])),
            field(text_within(1, 255)),
            field(one_of(&rules::FRAMEWORKS)),
        ),
        field(tests),
        (
            field(text_within(0, 255)),
            field(text_within(0, 255)),
            field(environment),
            field(arb_object()),
            field(text_within(0, 255)),
        ),
        prop::option::of(arb_json()),
    )
        .prop_map(
            |((repo, sha, run, framework), tests, (branch, pr, env, meta, key), extra)| {
                let mut report = serde_json::Map::new();
                for (name, value) in [
                    ("repo_id", repo),
                    ("commit_sha", sha),
                    ("run_id", run),
                    ("framework", framework),
                    ("tests", tests),
                    ("branch", branch),
                    ("pull_request", pr),
                    ("environment", env),
                    ("metadata", meta),
                    ("idempotency_key", key),
                    ("zextra", extra),
                ] {
                    if let Some(value) = value {
                        report.insert(name.to_owned(), value);
                    }
                }
                Value::Object(report)
            },
        )
}

/// Text-level changes a `Value` cannot express: a repeated key (the later one counts)
/// and a truncated body.
#[derive(Debug, Clone)]
enum Twist {
    None,
    RepeatFirst(String, Value),
    Truncate(usize),
}

fn arb_twist() -> impl Strategy<Value = Twist> {
    prop_oneof![
        8 => Just(Twist::None),
        2 => (
            prop::sample::select(vec!["run_id", "tests", "framework", "environment", "zextra"]),
            arb_json()
        )
            .prop_map(|(k, v)| Twist::RepeatFirst(k.to_owned(), v)),
        1 => (0usize..400).prop_map(Twist::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    /// The new parser and the previous validator agree on arbitrary report-like input:
    /// same acceptance, same `Invalid JSON payload`, same details in the same order.
    #[test]
    fn new_and_old_validators_agree(
        report in arb_report(),
        twist in arb_twist(),
        max_tests in prop::sample::select(vec![1u32, 3, 10_000]),
    ) {
        let mut text = report.to_string();
        match twist {
            Twist::None => {}
            Twist::RepeatFirst(key, value) => {
                text = text.replacen('{', &format!("{{{}:{value},", Value::from(key)), 1);
            }
            Twist::Truncate(at) => {
                let mut at = at.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
        }
        let _ = agree(max_tests, text.as_bytes());
    }
}

/// The agreement test is only as good as its input: the generator must produce valid
/// reports, invalid ones and non-JSON in useful proportions.
#[test]
fn the_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let validator = ReportValidator::new(10_000);
    let mut runner = TestRunner::deterministic();
    let (mut valid, mut invalid, mut not_json) = (0, 0, 0);
    for _ in 0..1_000 {
        let report = arb_report().new_tree(&mut runner).unwrap().current();
        let twist = arb_twist().new_tree(&mut runner).unwrap().current();
        let mut text = report.to_string();
        if let Twist::Truncate(mut at) = twist {
            at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        match new_outcome(&validator, text.as_bytes()) {
            Ok(_) => valid += 1,
            Err(Some(_)) => invalid += 1,
            Err(None) => not_json += 1,
        }
    }
    eprintln!("generator, 1,000 cases: {valid} valid, {invalid} invalid, {not_json} not JSON");
    assert!(valid >= 50 && invalid >= 300 && not_json >= 20);
}
