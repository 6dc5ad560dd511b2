//! JUnit XML → report tests, in one streaming pass (quick-xml), so memory grows with the
//! number of tests, not with the size of the XML (system-out and the like are skipped,
//! failure text is kept only up to the schema's limit).
//!
//! Mapping (the de-facto JUnit format as Surefire, pytest, gotestsum, go-junit-report,
//! jest-junit, the JUnit Platform console launcher and Gradle write it):
//! - status: a `<failure>` or `<error>` child → `fail`, `<skipped>` → `skip`, else
//!   `pass`; a Surefire rerun that passed (`<flakyFailure>`/`<flakyError>` only) is a
//!   `pass` tagged `flaky`; an `<error>` is tagged `error`.
//! - `durationMs`: the `time` attribute (seconds) rounded up to whole milliseconds,
//!   at least 1 (the schema wants a positive integer; a tool writing `0.000` means
//!   "under a millisecond"); left out when the attribute is missing or not a number.
//! - `path`: the case's `file` attribute, else the innermost suite's `file`, else the
//!   `classname` (a dotted name such as `com.acme.FooTest` becomes `com/acme/FooTest`),
//!   else the innermost suite's name, else the source name the caller gave.
//! - `startedAt`: the case's `timestamp`, else the innermost suite's, else the caller's
//!   time. Timestamps without an offset are taken as UTC (what the tools write).
//! - `failureDetails`: the failure's `message` and its text (the stack trace), cut to
//!   10,000 characters with a marker saying how much was left out.
//! - `name` and `path` are cut to 500 characters, ending in `…`.
//!
//! Suites may nest to any depth (`<testsuites>` is optional). Malformed XML is an error
//! naming the source and the line.

use std::io::BufRead;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};

use crate::report::{
    MAX_FAILURE_DETAILS_CHARS, MAX_NAME_CHARS, MAX_PATH_CHARS, Status, TestResult, truncate_chars,
};

/// What the caller supplies besides the XML.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `startedAt` of cases when neither the case nor any enclosing suite has a timestamp
    /// (the CLI uses the file's modification time, the endpoint the time of receipt).
    pub default_started_at: DateTime<Utc>,
    /// Stop with [`JunitError::TooManyTests`] past this many tests (the endpoint's limit);
    /// `None` converts everything (the CLI splits big reports instead).
    pub max_tests: Option<usize>,
}

/// The tests of one JUnit XML document.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub tests: Vec<TestResult>,
    /// The report `framework` the document's producer suggests (`pytest`, `jest`,
    /// `vitest`, `mocha`), else `junit`.
    pub framework: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("{source_name}:{line}: malformed XML: {message}")]
    Malformed {
        source_name: String,
        line: u64,
        message: String,
    },
    #[error(
        "{source_name}: not JUnit XML: the root element is <{root}>, not <testsuites> or <testsuite>"
    )]
    NotJunit { source_name: String, root: String },
    #[error("{source_name}: more than {limit} tests")]
    TooManyTests { source_name: String, limit: usize },
    #[error("{source_name}: {source}")]
    Io {
        source_name: String,
        source: std::io::Error,
    },
}

/// Converts the JUnit XML read from `reader`. `source_name` (a file name) is used in
/// error messages and as the last-resort test path.
pub fn convert<R: BufRead>(
    source_name: &str,
    reader: R,
    options: &ConvertOptions,
) -> Result<Converted, JunitError> {
    Parser::new(source_name, options).run(reader)
}

/// Converts a JUnit XML document held in memory.
pub fn convert_str(
    source_name: &str,
    xml: &str,
    options: &ConvertOptions,
) -> Result<Converted, JunitError> {
    convert(source_name, xml.as_bytes(), options)
}

/// Counts newlines in what the XML reader consumed, so an error offset becomes a line.
/// Newlines before the current event are only counted; those inside it are kept by
/// offset, as the error may point anywhere in the event.
struct LineCounter<R> {
    inner: R,
    consumed: u64,
    lines_before_mark: u64,
    since_mark: Vec<u64>,
}

impl<R: BufRead> LineCounter<R> {
    fn mark(&mut self) {
        self.lines_before_mark += self.since_mark.len() as u64;
        self.since_mark.clear();
    }

    fn line_at(&self, offset: u64) -> u64 {
        let inside = self.since_mark.iter().filter(|&&o| o < offset).count() as u64;
        self.lines_before_mark + inside + 1
    }
}

impl<R: BufRead> std::io::Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for LineCounter<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(buffer) = self.inner.fill_buf() {
            let start = self.consumed;
            self.since_mark.extend(
                buffer[..amount.min(buffer.len())]
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| start + i as u64),
            );
        }
        self.consumed += amount as u64;
        self.inner.consume(amount);
    }
}

/// A `<testsuite>` the parser is inside of.
struct Suite {
    name: Option<String>,
    file: Option<String>,
    timestamp: Option<DateTime<Utc>>,
}

/// A `<testcase>` being read.
struct Case {
    name: Option<String>,
    classname: Option<String>,
    file: Option<String>,
    time: Option<String>,
    timestamp: Option<DateTime<Utc>>,
    failed: bool,
    errored: bool,
    skipped: bool,
    flaky: bool,
    skip_message: Option<String>,
    /// `type: message` of the first failure, shown before its text unless the text
    /// already starts with it (as Java stack traces do).
    header: Option<String>,
    details: Details,
}

/// Failure text, kept up to the schema's limit while its full length is counted.
#[derive(Default)]
struct Details {
    text: String,
    kept_chars: usize,
    total_chars: usize,
}

impl Details {
    fn push(&mut self, piece: &str) {
        for ch in piece.chars() {
            self.total_chars += 1;
            if self.kept_chars < MAX_FAILURE_DETAILS_CHARS {
                self.text.push(ch);
                self.kept_chars += 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.total_chars == 0
    }

    /// The details with `header` in front unless the text starts with it, cut to the
    /// schema's limit with a marker saying how much was left out.
    fn finish(self, header: Option<String>) -> Option<String> {
        let body = self.text.trim_start();
        let header = header.filter(|h| {
            let first = h.lines().next().unwrap_or_default().trim();
            !first.is_empty() && !body.starts_with(first)
        });
        let (mut text, mut total) = match header {
            Some(header) if body.is_empty() => (header, 0),
            Some(header) => {
                let extra = header.chars().count() + 1;
                (format!("{header}\n{body}"), extra)
            }
            None => (body.to_owned(), 0),
        };
        let skipped_ws = self.text.chars().count() - body.chars().count();
        total += self.total_chars - skipped_ws;
        let kept = text.chars().count();
        total = total.max(kept);
        if text.trim().is_empty() {
            return None;
        }
        if total > MAX_FAILURE_DETAILS_CHARS {
            // Make room for the marker inside the limit; the count is of characters of
            // the original text left out.
            let longest = format!("\n… [truncated: {total} more characters]");
            let keep = MAX_FAILURE_DETAILS_CHARS - longest.chars().count();
            let cut = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            text.truncate(cut);
            text.push_str(&format!(
                "\n… [truncated: {} more characters]",
                total - keep
            ));
        }
        Some(text)
    }
}

/// Which child of a test case the parser is in, if its text matters.
#[derive(PartialEq, Eq)]
enum Collect {
    Nothing,
    Failure,
    SkipMessage,
}

struct Parser<'a> {
    source_name: &'a str,
    options: &'a ConvertOptions,
    suites: Vec<Suite>,
    case: Option<Case>,
    /// Depth of elements below the current case (its children and theirs).
    case_depth: usize,
    collect: Collect,
    /// Depth of every open element, to report a document cut off mid-way.
    open: Vec<String>,
    tests: Vec<TestResult>,
    framework: &'static str,
    seen_root: bool,
}

fn attr(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element
        .attributes()
        .with_checks(false)
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| {
            a.normalized_value(XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
        .filter(|v| !v.trim().is_empty())
}

/// Parses the timestamps the tools write: RFC 3339 (pytest), or ISO 8601 without an
/// offset (Surefire, Gradle, jest-junit, the console launcher), taken as UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

/// Seconds (`"1.5"`, also `"1,234.5"` as old Surefire versions wrote in some locales)
/// → whole milliseconds, rounded up, at least 1.
fn duration_ms(time: &str) -> Option<u64> {
    let seconds: f64 = time.trim().replace(',', "").parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let ms = (seconds * 1000.0).ceil();
    // Beyond u64 is not a duration any tool meant; drop it rather than saturate.
    (ms < 1.8e19).then(|| (ms as u64).max(1))
}

/// `com.acme.FooTest` → `com/acme/FooTest`; anything that is not a plain dotted name
/// (it has a slash, spaces, …) is kept as it is.
fn classname_path(classname: &str) -> String {
    let dotted = classname.contains('.')
        && classname
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '.');
    if dotted {
        classname.replace('.', "/")
    } else {
        classname.to_owned()
    }
}

fn framework_of(root_name: Option<&str>) -> Option<&'static str> {
    match root_name?.trim().to_ascii_lowercase().as_str() {
        "pytest" | "pytest tests" => Some("pytest"),
        "jest tests" => Some("jest"),
        "vitest tests" => Some("vitest"),
        "mocha tests" => Some("mocha"),
        _ => None,
    }
}

impl<'a> Parser<'a> {
    fn new(source_name: &'a str, options: &'a ConvertOptions) -> Self {
        Self {
            source_name,
            options,
            suites: Vec::new(),
            case: None,
            case_depth: 0,
            collect: Collect::Nothing,
            open: Vec::new(),
            tests: Vec::new(),
            framework: "junit",
            seen_root: false,
        }
    }

    fn malformed(&self, line: u64, message: impl Into<String>) -> JunitError {
        JunitError::Malformed {
            source_name: self.source_name.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn run<R: BufRead>(mut self, reader: R) -> Result<Converted, JunitError> {
        let counter = LineCounter {
            inner: reader,
            consumed: 0,
            lines_before_mark: 0,
            since_mark: Vec::new(),
        };
        let mut xml = quick_xml::Reader::from_reader(counter);
        xml.config_mut().check_end_names = true;
        let mut buf = Vec::new();
        loop {
            xml.get_mut().mark();
            buf.clear();
            let event = match xml.read_event_into(&mut buf) {
                Ok(event) => event,
                Err(quick_xml::Error::Io(error)) => {
                    return Err(JunitError::Io {
                        source_name: self.source_name.to_owned(),
                        source: std::io::Error::new(error.kind(), error.to_string()),
                    });
                }
                Err(error) => {
                    let line = xml.get_ref().line_at(xml.error_position());
                    return Err(self.malformed(line, error.to_string()));
                }
            };
            let line = || xml.get_ref().line_at(xml.buffer_position());
            match event {
                Event::Start(element) => {
                    let name = element.local_name().as_ref().to_owned();
                    self.start(&name, &element)?;
                    self.open.push(name);
                }
                Event::Empty(element) => {
                    let name = element.local_name().as_ref().to_owned();
                    self.start(&name, &element)?;
                    self.end(&name)?;
                }
                Event::End(element) => {
                    let name = element.local_name().as_ref().to_owned();
                    self.open.pop();
                    self.end(&name)?;
                }
                Event::Text(text) => self.text(&text.xml10_content()),
                Event::CData(data) => self.text(&data.xml10_content()),
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(ch)) => ch.to_string(),
                        Ok(None) => quick_xml::escape::resolve_predefined_entity(&reference)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                self.malformed(line(), format!("unknown entity &{};", &*reference))
                            })?,
                        Err(error) => return Err(self.malformed(line(), error.to_string())),
                    };
                    self.text(&resolved);
                }
                Event::Eof => {
                    if let Some(unclosed) = self.open.last() {
                        return Err(self.malformed(
                            line(),
                            format!("the document ends before <{unclosed}> is closed"),
                        ));
                    }
                    if !self.seen_root {
                        return Err(self.malformed(line(), "no root element"));
                    }
                    break;
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        Ok(Converted {
            tests: self.tests,
            framework: self.framework,
        })
    }

    fn start(&mut self, name: &str, element: &BytesStart<'_>) -> Result<(), JunitError> {
        if !self.seen_root {
            self.seen_root = true;
            if name != "testsuites" && name != "testsuite" {
                return Err(JunitError::NotJunit {
                    source_name: self.source_name.to_owned(),
                    root: name.to_owned(),
                });
            }
            if let Some(framework) = framework_of(attr(element, "name").as_deref()) {
                self.framework = framework;
            }
        }
        if let Some(case) = &mut self.case {
            self.case_depth += 1;
            if self.case_depth > 1 {
                return Ok(()); // inside a child of the case (e.g. Surefire's stackTrace)
            }
            let message = attr(element, "message");
            let kind = attr(element, "type");
            match name {
                "failure" | "error" => {
                    case.failed = true;
                    case.errored |= name == "error";
                    let header = match (kind, message) {
                        (Some(kind), Some(message)) => Some(format!("{kind}: {message}")),
                        (None, Some(message)) => Some(message),
                        (Some(kind), None) => Some(kind),
                        (None, None) => None,
                    };
                    if case.header.is_none() && case.details.is_empty() {
                        case.header = header;
                    } else {
                        // A second failure of the same case (some runners write one per
                        // assertion): appended with its own header.
                        case.details.push("\n\n");
                        if let Some(header) = header {
                            case.details.push(&format!("{header}\n"));
                        }
                    }
                    self.collect = Collect::Failure;
                }
                "skipped" => {
                    case.skipped = true;
                    case.skip_message = message;
                    self.collect = if case.skip_message.is_none() {
                        Collect::SkipMessage
                    } else {
                        Collect::Nothing
                    };
                }
                "flakyFailure" | "flakyError" => case.flaky = true,
                _ => {}
            }
            return Ok(());
        }
        match name {
            "testsuite" => self.suites.push(Suite {
                name: attr(element, "name"),
                file: attr(element, "file"),
                timestamp: attr(element, "timestamp").and_then(|t| parse_timestamp(&t)),
            }),
            "testcase" => {
                if let Some(limit) = self.options.max_tests
                    && self.tests.len() >= limit
                {
                    return Err(JunitError::TooManyTests {
                        source_name: self.source_name.to_owned(),
                        limit,
                    });
                }
                self.case = Some(Case {
                    name: attr(element, "name"),
                    classname: attr(element, "classname"),
                    file: attr(element, "file"),
                    time: attr(element, "time"),
                    timestamp: attr(element, "timestamp").and_then(|t| parse_timestamp(&t)),
                    failed: false,
                    errored: false,
                    skipped: false,
                    flaky: false,
                    skip_message: None,
                    header: None,
                    details: Details::default(),
                });
                self.case_depth = 0;
            }
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, name: &str) -> Result<(), JunitError> {
        if self.case.is_some() {
            if self.case_depth == 0 {
                self.finish_case();
            } else {
                if self.case_depth == 1 {
                    self.collect = Collect::Nothing;
                }
                self.case_depth -= 1;
            }
            return Ok(());
        }
        if name == "testsuite" {
            self.suites.pop();
        }
        Ok(())
    }

    fn text(&mut self, text: &str) {
        let Some(case) = &mut self.case else { return };
        match self.collect {
            Collect::Failure => case.details.push(text),
            Collect::SkipMessage => {
                let trimmed = text.trim();
                // Kept to what fits the report anyway, so a huge skip text cannot grow
                // memory (it is cut to the limit when the case is finished).
                let held = case.skip_message.as_ref().map_or(0, String::len);
                if !trimmed.is_empty() && held < MAX_FAILURE_DETAILS_CHARS * 4 {
                    case.skip_message
                        .get_or_insert_with(String::new)
                        .push_str(trimmed);
                }
            }
            Collect::Nothing => {}
        }
    }

    fn finish_case(&mut self) {
        let Some(case) = self.case.take() else { return };
        self.collect = Collect::Nothing;
        let suite = self.suites.last();
        let path = case
            .file
            .or_else(|| suite.and_then(|s| s.file.clone()))
            .or_else(|| case.classname.as_deref().map(classname_path))
            .or_else(|| suite.and_then(|s| s.name.clone()))
            .unwrap_or_else(|| self.source_name.to_owned());
        let started_at = case
            .timestamp
            .or_else(|| self.suites.iter().rev().find_map(|s| s.timestamp))
            .unwrap_or(self.options.default_started_at);
        let status = if case.failed {
            Status::Fail
        } else if case.skipped {
            Status::Skip
        } else {
            Status::Pass
        };
        let mut tags = Vec::new();
        if case.errored {
            tags.push("error".to_owned());
        }
        if case.flaky && !case.failed {
            tags.push("flaky".to_owned());
        }
        let metadata = match (status, case.skip_message) {
            (Status::Skip, Some(message)) => {
                let mut map = serde_json::Map::new();
                let message = truncate_chars(&message, MAX_FAILURE_DETAILS_CHARS).into_owned();
                map.insert("skipMessage".to_owned(), message.into());
                Some(map)
            }
            _ => None,
        };
        let details = case
            .details
            .finish(case.header)
            .map(|d| d.trim_end().to_owned());
        self.tests.push(TestResult {
            path: truncate_chars(&path, MAX_PATH_CHARS).into_owned(),
            name: truncate_chars(case.name.as_deref().unwrap_or("(unnamed)"), MAX_NAME_CHARS)
                .into_owned(),
            status,
            duration_ms: case.time.as_deref().and_then(duration_ms),
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            failure_details: details.filter(|d| !d.is_empty() && status == Status::Fail),
            tags,
            metadata,
            extra: serde_json::Map::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConvertOptions {
        ConvertOptions {
            default_started_at: DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            max_tests: None,
        }
    }

    fn convert(xml: &str) -> Result<Converted, JunitError> {
        convert_str("report.xml", xml, &options())
    }

    #[test]
    fn statuses_durations_paths_and_timestamps_are_mapped() {
        let xml = r#"<?xml version="1.0"?>
<testsuites>
  <testsuite name="outer" timestamp="2026-11-28T10:00:00">
    <testsuite name="inner" file="src/inner.rs">
      <testcase name="passes" classname="com.acme.FooTest" time="0.0001"/>
      <testcase name="fails" classname="com.acme.FooTest" time="1.5" file="Foo.java" timestamp="2026-11-28T10:00:05+02:00">
        <failure message="expected 1" type="AssertionError">at Foo.java:3 &amp; more</failure>
      </testcase>
      <testcase name="errs"><error message="boom"/></testcase>
      <testcase name="skips"><skipped message="later"/></testcase>
      <testcase name="skips with text"><skipped>because</skipped></testcase>
    </testsuite>
    <testcase name="outer case" classname="pkg/with/slash" time="0"/>
  </testsuite>
  <testsuite name="no stamp"><testcase name="x" classname="Plain"/></testsuite>
</testsuites>"#;
        let converted = convert(xml).unwrap();
        let t = &converted.tests;
        assert_eq!(converted.framework, "junit");
        assert_eq!(t.len(), 7);
        assert_eq!(t[0].status, Status::Pass);
        assert_eq!(t[0].duration_ms, Some(1));
        assert_eq!(t[0].path, "src/inner.rs", "suite file wins over classname");
        assert_eq!(t[0].started_at, "2026-11-28T10:00:00.000Z");
        assert_eq!(t[1].status, Status::Fail);
        assert_eq!(t[1].duration_ms, Some(1500));
        assert_eq!(t[1].path, "Foo.java");
        assert_eq!(t[1].started_at, "2026-11-28T08:00:05.000Z");
        assert_eq!(
            t[1].failure_details.as_deref(),
            Some("AssertionError: expected 1\nat Foo.java:3 & more")
        );
        assert_eq!(t[2].status, Status::Fail);
        assert_eq!(t[2].tags, vec!["error"]);
        assert_eq!(t[2].failure_details.as_deref(), Some("boom"));
        assert_eq!(t[2].duration_ms, None);
        assert_eq!(t[3].status, Status::Skip);
        assert_eq!(t[3].metadata.as_ref().unwrap()["skipMessage"], "later");
        assert_eq!(t[4].metadata.as_ref().unwrap()["skipMessage"], "because");
        assert_eq!(t[5].path, "pkg/with/slash");
        assert_eq!(t[5].duration_ms, Some(1));
        assert_eq!(t[6].path, "Plain");
        assert_eq!(t[6].started_at, "2026-11-29T12:00:00.000Z", "caller's time");
    }

    #[test]
    fn dotted_classnames_become_paths() {
        let xml = r#"<testsuite name="s"><testcase name="a" classname="com.acme.FooTest$Inner"/></testsuite>"#;
        assert_eq!(
            convert(xml).unwrap().tests[0].path,
            "com/acme/FooTest$Inner"
        );
    }

    #[test]
    fn long_failure_details_are_cut_to_the_limit_with_a_marker() {
        let body = "x".repeat(25_000);
        let xml = format!(
            r#"<testsuite><testcase name="a" classname="A"><failure><![CDATA[{body}]]></failure></testcase></testsuite>"#
        );
        let details = convert(&xml).unwrap().tests[0]
            .failure_details
            .clone()
            .unwrap();
        assert_eq!(details.chars().count(), MAX_FAILURE_DETAILS_CHARS);
        assert!(
            details.ends_with("more characters]"),
            "{}",
            &details[9_900..]
        );
        let kept = details.chars().filter(|c| *c == 'x').count();
        assert!(details.contains(&format!("truncated: {} more", 25_000 - kept)));
    }

    #[test]
    fn long_names_and_paths_are_cut() {
        let long = "n".repeat(700);
        let xml = format!(r#"<testsuite><testcase name="{long}" file="{long}"/></testsuite>"#);
        let test = &convert(&xml).unwrap().tests[0];
        assert_eq!(test.name.chars().count(), MAX_NAME_CHARS);
        assert_eq!(test.path.chars().count(), MAX_PATH_CHARS);
    }

    #[test]
    fn surefire_reruns_that_passed_are_flaky_passes() {
        let xml = r#"<testsuite><testcase name="a" classname="A"><flakyFailure message="once"><stackTrace>t</stackTrace></flakyFailure></testcase></testsuite>"#;
        let test = &convert(xml).unwrap().tests[0];
        assert_eq!(test.status, Status::Pass);
        assert_eq!(test.tags, vec!["flaky"]);
        assert_eq!(test.failure_details, None);
    }

    #[test]
    fn malformed_xml_names_the_file_and_line() {
        let xml = "<testsuite>\n  <testcase name=\"a\">\n  </testsuite>\n";
        let error = convert(xml).unwrap_err().to_string();
        assert!(error.starts_with("report.xml:3: malformed XML"), "{error}");

        let cut = "<testsuites>\n<testsuite>\n<testcase name=\"a\"/>\n";
        let error = convert(cut).unwrap_err().to_string();
        assert!(error.starts_with("report.xml:4:"), "{error}");
        assert!(error.contains("<testsuite> is closed"), "{error}");

        let error = convert("<html><body/></html>").unwrap_err().to_string();
        assert!(error.contains("not JUnit XML"), "{error}");
    }

    #[test]
    fn the_test_limit_stops_conversion() {
        let xml = r#"<testsuite><testcase name="a"/><testcase name="b"/></testsuite>"#;
        let options = ConvertOptions {
            max_tests: Some(1),
            ..options()
        };
        let error = convert_str("r.xml", xml, &options).unwrap_err();
        assert!(matches!(error, JunitError::TooManyTests { limit: 1, .. }));
    }

    #[test]
    fn the_producer_names_the_framework() {
        let xml = r#"<testsuites name="jest tests"><testsuite name="x"><testcase name="a"/></testsuite></testsuites>"#;
        assert_eq!(convert(xml).unwrap().framework, "jest");
    }
}
