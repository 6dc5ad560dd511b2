//! Each JUnit XML fixture, written by the real tool (`tests/fixtures/generate.sh`), →
//! the expected tests: counts by status, a failure message, durations, paths and
//! timestamps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use anchorpipe_sender::{ConvertOptions, Converted, Status, TestResult, convert};
use chrono::{DateTime, Utc};

/// A time no fixture contains, to tell "from the XML" from "the caller's".
const CALLERS_TIME: &str = "2000-01-01T00:00:00Z";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/junit")
        .join(name)
}

/// Converts a fixture file, or every file of a fixture directory, in name order.
fn load(name: &str) -> Converted {
    let path = fixture(name);
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![path]
    };
    files.sort();
    let options = ConvertOptions {
        default_started_at: DateTime::parse_from_rfc3339(CALLERS_TIME)
            .unwrap()
            .with_timezone(&Utc),
        max_tests: None,
    };
    let mut all = Converted {
        tests: Vec::new(),
        framework: "junit",
    };
    for file in files {
        let reader = std::io::BufReader::new(std::fs::File::open(&file).unwrap());
        let converted = convert(&file.display().to_string(), reader, &options).unwrap();
        all.framework = converted.framework;
        all.tests.extend(converted.tests);
    }
    all
}

fn counts(tests: &[TestResult]) -> (usize, usize, usize) {
    let count = |s| tests.iter().filter(|t| t.status == s).count();
    (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip),
    )
}

fn named<'a>(tests: &'a [TestResult], name: &str) -> &'a TestResult {
    tests
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no test named {name}"))
}

/// Every test is valid for the schema: durations positive when present, startedAt
/// RFC 3339 with a `T`, failure details only on failures.
fn assert_valid(tests: &[TestResult]) {
    for test in tests {
        assert!(test.duration_ms.is_none_or(|d| d > 0), "{test:?}");
        assert!(
            DateTime::parse_from_rfc3339(&test.started_at).is_ok() && test.started_at.contains('T')
        );
        assert!(!test.path.is_empty() && !test.name.is_empty());
        if test.status != Status::Fail {
            assert!(test.failure_details.is_none(), "{test:?}");
        }
    }
}

#[test]
fn pytest_junitxml() {
    let converted = load("pytest.xml");
    let tests = &converted.tests;
    assert_valid(tests);
    assert_eq!(converted.framework, "pytest");
    assert_eq!(counts(tests), (3, 2, 1));
    let failed = named(tests, "test_multiplies");
    let details = failed.failure_details.as_deref().unwrap();
    assert!(
        details.starts_with("AssertionError: multiplication is broken"),
        "{details}"
    );
    assert!(details.contains("test_sample.py:17"), "{details}");
    let errored = named(tests, "test_uses_a_broken_fixture");
    assert_eq!(errored.tags, vec!["error"]);
    assert!(
        errored
            .failure_details
            .as_deref()
            .unwrap()
            .contains("fixture exploded")
    );
    assert!(named(tests, "test_sleeps").duration_ms.unwrap() >= 120);
    assert_eq!(
        named(tests, "test_inside_a_class").path,
        "test_sample/TestGroup"
    );
    assert_eq!(
        named(tests, "test_skipped").metadata.as_ref().unwrap()["skipMessage"],
        "not on this platform"
    );
    assert!(
        !tests[0].started_at.starts_with("2000"),
        "pytest writes a suite timestamp"
    );
}

fn assert_jupiter_calculator(tests: &[TestResult], with_parens: bool) {
    let name = |n: &str| {
        if with_parens {
            format!("{n}()")
        } else {
            n.to_owned()
        }
    };
    assert_valid(tests);
    assert_eq!(counts(tests), (3, 2, 1));
    let failed = named(tests, &name("multiplies"));
    let details = failed.failure_details.as_deref().unwrap();
    assert!(
        details.starts_with("org.opentest4j.AssertionFailedError: multiplication is broken ==> expected: <5> but was: <4>"),
        "{details}"
    );
    assert_eq!(
        details.matches("multiplication is broken").count(),
        1,
        "the message is not repeated"
    );
    assert_eq!(failed.path, "dev/anchorpipe/sample/CalculatorTest");
    let errored = named(tests, &name("divides"));
    assert_eq!(errored.tags, vec!["error"]);
    assert!(
        errored
            .failure_details
            .as_deref()
            .unwrap()
            .starts_with("java.lang.ArithmeticException: / by zero")
    );
    assert!(named(tests, &name("sleeps")).duration_ms.unwrap() >= 120);
    assert_eq!(
        named(tests, &name("negates")).path,
        "dev/anchorpipe/sample/CalculatorTest$WhenNegative"
    );
}

#[test]
fn maven_surefire() {
    let converted = load("surefire");
    assert_eq!(converted.framework, "junit");
    assert_jupiter_calculator(&converted.tests, false);
    // Surefire writes no timestamps: the caller's time is used.
    assert!(
        converted
            .tests
            .iter()
            .all(|t| t.started_at == "2000-01-01T00:00:00.000Z")
    );
}

#[test]
fn maven_failsafe() {
    let tests = load("failsafe").tests;
    assert_valid(&tests);
    assert_eq!(counts(&tests), (1, 1, 1));
    let details = named(&tests, "talksToTheDatabase")
        .failure_details
        .clone()
        .unwrap();
    assert!(details.contains("database unreachable"), "{details}");
    assert!(named(&tests, "startsUp").duration_ms.unwrap() >= 60);
}

#[test]
fn junit_platform_console_launcher() {
    let converted = load("console-launcher.xml");
    assert_jupiter_calculator(&converted.tests, true);
    assert!(
        !converted.tests[0].started_at.starts_with("2000"),
        "the launcher writes a suite timestamp"
    );
}

fn assert_go(tests: &[TestResult]) {
    assert_valid(tests);
    assert_eq!(counts(tests), (5, 1, 1));
    let details = named(tests, "TestMultiplies")
        .failure_details
        .clone()
        .unwrap();
    assert!(
        details.contains("multiplication is broken: got 4, want 5"),
        "{details}"
    );
    assert!(named(tests, "TestSleeps").duration_ms.unwrap() >= 120);
    assert_eq!(named(tests, "TestTable/one").path, "example.com/sample");
    assert!(!tests[0].started_at.starts_with("2000"));
}

#[test]
fn go_test_through_gotestsum() {
    assert_go(&load("gotestsum.xml").tests);
}

#[test]
fn go_test_through_go_junit_report() {
    assert_go(&load("go-junit-report.xml").tests);
}

#[test]
fn jest_junit() {
    let converted = load("jest-junit.xml");
    let tests = &converted.tests;
    assert_valid(tests);
    assert_eq!(converted.framework, "jest");
    assert_eq!(counts(tests), (3, 1, 1));
    let details = named(tests, "calculator multiplies")
        .failure_details
        .clone()
        .unwrap();
    assert!(
        details.contains("Expected: 5") && details.contains("Received: 4"),
        "{details}"
    );
    assert!(named(tests, "calculator sleeps").duration_ms.unwrap() >= 120);
    assert!(tests.iter().all(|t| t.path == "sample.test.js"));
    assert_eq!(
        named(tests, "calculator when negative negates").status,
        Status::Pass
    );
}
