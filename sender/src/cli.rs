//! The `anchorpipe` command line: `send` and `verify`.
//!
//! Everything is read once at start-up: flags (with `ANCHORPIPE_*` environment
//! fallbacks, through clap), the key (from `ANCHORPIPE_KEY` or `--key-file`, never from
//! an argument, which would show in process listings and CI logs) and the CI variables.
//! Precedence for each report field: flag > the JSON input's own value > CI variables.
//!
//! Exit codes ([`Exit`]): 0 sent, 1 unusable input, 2 usage, 3 duplicate, 4 refused,
//! 5 unreachable.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::ci::{self, CiInfo};
use crate::client::{self, Answer, Endpoint, RetryPolicy};
use crate::junit::{self, ConvertOptions};
use crate::report::{MAX_TESTS, Report};
use crate::sign::{Key, Scheme};
use crate::split::{self, SplitLimits};

/// The process exit codes, part of the CLI's contract with CI scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Every part stored (`verify`: the key was accepted).
    Sent = 0,
    /// An input file is unreadable, malformed or not a report.
    BadInput = 1,
    /// Wrong flags, or the URL, repository id, key, commit or run id is missing.
    Usage = 2,
    /// Every part had already been stored (nothing new).
    Duplicate = 3,
    /// The endpoint refused the report or the key (4xx other than 408/429).
    Refused = 4,
    /// No answer, or only 429/5xx, until `--timeout`.
    Unreachable = 5,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "anchorpipe",
    version,
    about = "Send test reports (anchorpipe JSON or JUnit XML) from CI to an anchorpipe endpoint",
    after_help = "Exit codes: 0 sent, 1 unusable input, 2 usage, 3 duplicate (already stored), 4 refused, 5 unreachable.\n\
                  The key is read from ANCHORPIPE_KEY or --key-file, never from the command line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert, sign and send test reports: one run's results, split into parts if over the limits.
    Send(SendArgs),
    /// Check that the URL, repository id and key work, storing nothing.
    Verify(ConnectionArgs),
}

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// The endpoint's base URL (e.g. https://reports.example.com); `/api/ingestion` is added.
    #[arg(long, env = "ANCHORPIPE_URL")]
    pub url: Option<String>,
    /// The repository's anchorpipe id (a UUID), sent as the Bearer token.
    #[arg(long, env = "ANCHORPIPE_REPO_ID")]
    pub repo_id: Option<String>,
    /// File holding the HMAC key (`whsec_…`); without it the key comes from ANCHORPIPE_KEY.
    #[arg(long, env = "ANCHORPIPE_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Sign with the legacy `X-FR-Sig` header instead of Standard Webhooks.
    #[arg(long)]
    pub legacy_signature: bool,
    /// Seconds to keep retrying 429, 5xx and connection failures before giving up.
    #[arg(long, env = "ANCHORPIPE_TIMEOUT", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Report files (anchorpipe JSON or JUnit XML, told apart by content) or directories
    /// (every `*.xml` below them).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Commit SHA (40 hex digits); default: the CI's.
    #[arg(long, env = "ANCHORPIPE_COMMIT_SHA")]
    pub commit_sha: Option<String>,
    /// Run id (part of the duplicate key); default: the CI's job or build id.
    #[arg(long, env = "ANCHORPIPE_RUN_ID")]
    pub run_id: Option<String>,
    /// Branch; default: the CI's.
    #[arg(long, env = "ANCHORPIPE_BRANCH")]
    pub branch: Option<String>,
    /// Pull/merge request number; default: the CI's.
    #[arg(long, env = "ANCHORPIPE_PULL_REQUEST")]
    pub pull_request: Option<String>,
    /// Framework: junit, jest, pytest, playwright, mocha, vitest or unknown; default:
    /// the JSON's, or what the XML's producer suggests.
    #[arg(long, env = "ANCHORPIPE_FRAMEWORK")]
    pub framework: Option<String>,
    /// Extra `environment` entries (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub environment: Vec<String>,
    /// Print the signed request(s) instead of sending.
    #[arg(long)]
    pub dry_run: bool,
    /// Most tests per part (the endpoint's `maxTests`).
    #[arg(long, default_value_t = MAX_TESTS)]
    pub max_tests: usize,
    /// Largest body per part in bytes (the endpoint's `maxBodyBytes`).
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// Everything from outside the flags, read once by `main`.
pub struct Environment {
    /// The process environment (CI variables, `ANCHORPIPE_KEY`).
    pub vars: HashMap<String, String>,
    pub now: DateTime<Utc>,
}

#[derive(Debug)]
struct Failure(Exit, String);

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self(Exit::Usage, message.into())
    }
    fn input(message: impl Into<String>) -> Self {
        Self(Exit::BadInput, message.into())
    }
}

/// Runs the parsed command; messages go to stdout (results) and stderr (the rest).
pub fn run(cli: Cli, env: &Environment) -> Exit {
    let result = match cli.command {
        Command::Send(args) => send(&args, env),
        Command::Verify(args) => verify(&args, env),
    };
    match result {
        Ok(exit) => exit,
        Err(Failure(exit, message)) => {
            eprintln!("anchorpipe: {message}");
            exit
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Environment {
        vars: std::env::vars().collect(),
        now: Utc::now(),
    };
    run(cli, &env).into()
}

fn ingestion_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/api/ingestion") {
        base.to_owned()
    } else {
        format!("{base}/api/ingestion")
    }
}

fn read_key(args: &ConnectionArgs, env: &Environment) -> Result<Key, Failure> {
    let text = match &args.key_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read the key file {}: {e}", path.display()))
        })?,
        None => env
            .vars
            .get("ANCHORPIPE_KEY")
            .cloned()
            .ok_or_else(|| Failure::usage("no key: set ANCHORPIPE_KEY or pass --key-file"))?,
    };
    let key = Key::new(&text);
    if key.is_empty() {
        return Err(Failure::usage("the key is empty"));
    }
    Ok(key)
}

fn endpoint(args: &ConnectionArgs, env: &Environment, need_url: bool) -> Result<Endpoint, Failure> {
    let url = match (&args.url, need_url) {
        (Some(url), _) => ingestion_url(url),
        (None, true) => return Err(Failure::usage("no URL: set ANCHORPIPE_URL or pass --url")),
        (None, false) => "<ANCHORPIPE_URL>/api/ingestion".to_owned(),
    };
    let repo_id = args.repo_id.clone().ok_or_else(|| {
        Failure::usage("no repository id: set ANCHORPIPE_REPO_ID or pass --repo-id")
    })?;
    uuid::Uuid::parse_str(repo_id.trim())
        .map_err(|_| Failure::usage(format!("the repository id `{repo_id}` is not a UUID")))?;
    Ok(Endpoint {
        url,
        repo_id: repo_id.trim().to_owned(),
        key: read_key(args, env)?,
        scheme: if args.legacy_signature {
            Scheme::Legacy
        } else {
            Scheme::StandardWebhooks
        },
    })
}

fn policy(args: &ConnectionArgs) -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(args.timeout),
        ..RetryPolicy::default()
    }
}

/// Files named, with directories replaced by the `*.xml` files below them (sorted, so
/// the same directory always gives the same report).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("xml"))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            walk(path, &mut files)
                .map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
            if files.len() == before {
                return Err(Failure::input(format!(
                    "{}: no *.xml files in this directory",
                    path.display()
                )));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// One input file, read.
enum Input {
    Json(Box<Report>),
    Junit(junit::Converted),
}

fn read_input(path: &Path, now: DateTime<Utc>) -> Result<Input, Failure> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Failure::input(format!("{name}: {e}")))?;
    // Cases without any timestamp started, at the latest, when the file was written.
    let written = file
        .metadata()
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or(now);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let first = loop {
        let buffer = reader
            .fill_buf()
            .map_err(|e| Failure::input(format!("{name}: {e}")))?;
        if buffer.is_empty() {
            return Err(Failure::input(format!("{name}: the file is empty")));
        }
        let skip = if buffer.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            buffer
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count()
        };
        if skip < buffer.len() {
            break buffer[skip];
        }
        reader.consume(skip);
    };
    match first {
        b'<' => {
            let options = ConvertOptions {
                default_started_at: written,
                max_tests: None,
            };
            junit::convert(&name, reader, &options)
                .map(Input::Junit)
                .map_err(|e| Failure::input(e.to_string()))
        }
        b'{' => serde_json::from_reader(reader)
            .map(|report| Input::Json(Box::new(report)))
            .map_err(|e| Failure::input(format!("{name}: not an anchorpipe JSON report: {e}"))),
        _ => Err(Failure::input(format!(
            "{name}: neither JSON (`{{`) nor XML (`<`) at the start"
        ))),
    }
}

/// Sets `target` from `value` unless already set to something else.
fn merge_field(
    target: &mut String,
    value: String,
    field: &str,
    file: &Path,
) -> Result<(), Failure> {
    if value.is_empty() || *target == value {
        return Ok(());
    }
    if target.is_empty() {
        *target = value;
        return Ok(());
    }
    Err(Failure::input(format!(
        "{}: its {field} `{value}` differs from an earlier file's `{target}`; send them separately",
        file.display()
    )))
}

fn merge_option(
    target: &mut Option<String>,
    value: Option<String>,
    field: &str,
    file: &Path,
) -> Result<(), Failure> {
    let mut text = target.take().unwrap_or_default();
    merge_field(&mut text, value.unwrap_or_default(), field, file)?;
    *target = (!text.is_empty()).then_some(text);
    Ok(())
}

/// Reads every input into one report: JSON headers merged, all tests appended in order.
fn combine(files: &[PathBuf], now: DateTime<Utc>) -> Result<(Report, Vec<&'static str>), Failure> {
    let mut report = Report::new("");
    let mut detected = Vec::new();
    for path in files {
        match read_input(path, now)? {
            Input::Junit(converted) => {
                detected.push(converted.framework);
                report.tests.extend(converted.tests);
            }
            Input::Json(json) => {
                let json = *json;
                merge_field(&mut report.repo_id, json.repo_id, "repo_id", path)?;
                merge_field(&mut report.commit_sha, json.commit_sha, "commit_sha", path)?;
                merge_field(&mut report.run_id, json.run_id, "run_id", path)?;
                merge_field(&mut report.framework, json.framework, "framework", path)?;
                merge_option(&mut report.branch, json.branch, "branch", path)?;
                merge_option(
                    &mut report.pull_request,
                    json.pull_request,
                    "pull_request",
                    path,
                )?;
                merge_option(
                    &mut report.idempotency_key,
                    json.idempotency_key,
                    "idempotency_key",
                    path,
                )?;
                if let Some(environment) = json.environment {
                    report
                        .environment
                        .get_or_insert_with(BTreeMap::new)
                        .extend(environment);
                }
                if let Some(metadata) = json.metadata {
                    report
                        .metadata
                        .get_or_insert_with(serde_json::Map::new)
                        .extend(metadata);
                }
                report.extra.extend(json.extra);
                report.tests.extend(json.tests);
            }
        }
    }
    Ok((report, detected))
}

/// Fills the header: flags, then the inputs' own values, then the CI's.
fn fill(
    report: &mut Report,
    args: &SendArgs,
    repo_id: &str,
    detected: &[&str],
    ci: CiInfo,
) -> Result<(), Failure> {
    fn pick(flag: &Option<String>, current: &mut String, ci: Option<String>) {
        if let Some(flag) = flag {
            *current = flag.trim().to_owned();
        } else if current.is_empty() {
            *current = ci.unwrap_or_default();
        }
    }
    fn pick_option(flag: &Option<String>, current: &mut Option<String>, ci: Option<String>) {
        if let Some(flag) = flag {
            *current = Some(flag.trim().to_owned()).filter(|f| !f.is_empty());
        } else if current.is_none() {
            *current = ci;
        }
    }
    if !report.repo_id.is_empty() && report.repo_id != repo_id {
        return Err(Failure::input(format!(
            "the report's repo_id `{}` differs from the repository id `{repo_id}` it is sent as",
            report.repo_id
        )));
    }
    report.repo_id = repo_id.to_owned();
    pick(&args.commit_sha, &mut report.commit_sha, ci.commit_sha);
    pick(&args.run_id, &mut report.run_id, ci.run_id);
    pick_option(&args.branch, &mut report.branch, ci.branch);
    pick_option(
        &args.pull_request,
        &mut report.pull_request,
        ci.pull_request,
    );
    let framework = match detected {
        [first, rest @ ..] if rest.iter().all(|f| f == first) => *first,
        [] => "unknown",
        _ => "junit",
    };
    pick(
        &args.framework,
        &mut report.framework,
        Some(framework.to_owned()),
    );

    let mut environment = ci.environment;
    environment.extend(report.environment.take().unwrap_or_default());
    for pair in &args.environment {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--env {pair}: expected KEY=VALUE")))?;
        environment.insert(key.to_owned(), value.to_owned());
    }
    report.environment = (!environment.is_empty()).then_some(environment);

    if report.commit_sha.len() != 40 || !report.commit_sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Failure::usage(if report.commit_sha.is_empty() {
            "no commit SHA: none in the CI variables; pass --commit-sha".to_owned()
        } else {
            format!(
                "the commit SHA `{}` is not 40 hex digits",
                report.commit_sha
            )
        }));
    }
    if report.run_id.is_empty() {
        return Err(Failure::usage(
            "no run id: none in the CI variables; pass --run-id",
        ));
    }
    if report.tests.is_empty() {
        return Err(Failure::input("the inputs hold no tests"));
    }
    Ok(())
}

fn print_dry_run(request: &client::SignedRequest, label: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "# {label}\nPOST {}", request.url);
    for (name, value) in &request.headers {
        let _ = writeln!(out, "{name}: {value}");
    }
    let _ = writeln!(out);
    let _ = out.write_all(&request.body);
    let _ = writeln!(out, "\n");
}

fn summary(part: &Report) -> String {
    let (pass, fail, skip) = part.counts();
    format!(
        "{} tests ({pass} pass, {fail} fail, {skip} skip)",
        part.tests.len()
    )
}

fn answer_summary(value: &Value) -> String {
    let run = value.get("runId").and_then(Value::as_str).unwrap_or("?");
    let parsed = &value["summary"]["tests_parsed"];
    let flaky = &value["summary"]["flaky_candidates"];
    format!("runId {run}, tests_parsed {parsed}, flaky_candidates {flaky}")
}

fn send(args: &SendArgs, env: &Environment) -> Result<Exit, Failure> {
    let endpoint = endpoint(&args.connection, env, !args.dry_run)?;
    let files = expand(&args.files)?;
    let (mut report, detected) = combine(&files, env.now)?;
    fill(
        &mut report,
        args,
        &endpoint.repo_id,
        &detected,
        ci::detect(&env.vars),
    )?;
    let limits = SplitLimits {
        max_tests: args.max_tests.clamp(1, MAX_TESTS),
        max_body_bytes: args.max_body_bytes,
    };
    let parts = split::split(report, limits).map_err(|e| Failure::input(e.to_string()))?;
    let count = parts.len();
    if count > 1 {
        eprintln!(
            "anchorpipe: {count} parts (over {} tests or {} bytes per report)",
            limits.max_tests, limits.max_body_bytes
        );
    }

    let agent = client::agent();
    let policy = policy(&args.connection);
    let mut stored = 0;
    for (index, part) in parts.iter().enumerate() {
        let label = format!(
            "part {}/{count}: run_id {}, {}",
            index + 1,
            part.run_id,
            summary(part)
        );
        let body = serde_json::to_vec(part).map_err(|e| Failure::input(e.to_string()))?;
        if args.dry_run {
            print_dry_run(
                &client::sign_request(&endpoint, body, client::unix_now()),
                &label,
            );
            continue;
        }
        let mut log = |line: &str| eprintln!("anchorpipe: {label}: {line}");
        match client::deliver(&agent, &endpoint, &body, &policy, &mut log) {
            Answer::Stored(value) => {
                stored += 1;
                println!("stored {label}; {}", answer_summary(&value));
            }
            Answer::Duplicate(value) => {
                println!(
                    "duplicate {label}: already stored; {}",
                    answer_summary(&value)
                );
            }
            Answer::Refused { status, body } => {
                return Err(Failure(
                    Exit::Refused,
                    format!("{label}: refused with HTTP {status}: {body}"),
                ));
            }
            Answer::Unreachable(problem) => {
                return Err(Failure(Exit::Unreachable, format!("{label}: {problem}")));
            }
        }
    }
    Ok(if args.dry_run || stored > 0 {
        Exit::Sent
    } else {
        Exit::Duplicate
    })
}

/// Posts a correctly signed body that is deliberately not a valid report. The endpoint
/// checks the signature before it validates the body and stores only valid reports, so
/// 400 proves the key without storing anything, and 401 means the key (or repository)
/// was refused.
fn verify(args: &ConnectionArgs, env: &Environment) -> Result<Exit, Failure> {
    let endpoint = endpoint(args, env, true)?;
    let body = json!({
        "repo_id": endpoint.repo_id,
        "anchorpipe_verify": "a deliberately incomplete report: refused after the signature check, never stored",
    });
    let body = serde_json::to_vec(&body).map_err(|e| Failure::input(e.to_string()))?;
    let mut log = |line: &str| eprintln!("anchorpipe: verify: {line}");
    let scheme = match endpoint.scheme {
        Scheme::Legacy => "legacy X-FR-Sig",
        Scheme::StandardWebhooks => "Standard Webhooks",
    };
    match client::deliver(&client::agent(), &endpoint, &body, &policy(args), &mut log) {
        Answer::Refused { status: 400, .. } => {
            println!(
                "key accepted: {} verified the {scheme} signature for repository {} (nothing was stored)",
                endpoint.url, endpoint.repo_id
            );
            Ok(Exit::Sent)
        }
        Answer::Refused { status, body } => Err(Failure(
            Exit::Refused,
            format!("key refused by {} with HTTP {status}: {body}", endpoint.url),
        )),
        Answer::Stored(_) | Answer::Duplicate(_) => Err(Failure(
            Exit::Refused,
            format!(
                "{} accepted an invalid report; is it an anchorpipe endpoint?",
                endpoint.url
            ),
        )),
        Answer::Unreachable(problem) => Err(Failure(
            Exit::Unreachable,
            format!("{}: {problem}", endpoint.url),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingestion_path_is_added_once() {
        assert_eq!(
            ingestion_url("https://r.example.com/"),
            "https://r.example.com/api/ingestion"
        );
        assert_eq!(
            ingestion_url("http://127.0.0.1:8080/api/ingestion"),
            "http://127.0.0.1:8080/api/ingestion"
        );
    }

    fn send_args(extra: &[&str]) -> SendArgs {
        let mut argv = vec!["anchorpipe", "send", "report.xml"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Send(args) => args,
            Command::Verify(_) => unreachable!(),
        }
    }

    fn one_test() -> Vec<crate::report::TestResult> {
        serde_json::from_value(json!([{"path": "p", "name": "n", "status": "pass",
            "startedAt": "2026-11-29T12:00:00Z"}]))
        .unwrap()
    }

    const REPO: &str = "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn flags_override_the_json_which_overrides_the_ci() {
        let ci = ci::detect(&HashMap::from([
            ("GITLAB_CI".to_owned(), "true".to_owned()),
            ("CI_COMMIT_SHA".to_owned(), SHA.to_owned()),
            ("CI_JOB_ID".to_owned(), "77".to_owned()),
            ("CI_COMMIT_BRANCH".to_owned(), "main".to_owned()),
            ("CI_MERGE_REQUEST_IID".to_owned(), "5".to_owned()),
            ("CI_PIPELINE_ID".to_owned(), "9".to_owned()),
        ]));
        let mut report = Report::new("");
        report.branch = Some("from-json".to_owned());
        report.environment = Some(BTreeMap::from([("pipeline".to_owned(), "json".to_owned())]));
        report.tests = one_test();
        let args = send_args(&["--run-id", "flag-run", "--env", "os=linux"]);
        fill(&mut report, &args, REPO, &["pytest"], ci).unwrap();
        assert_eq!(report.repo_id, REPO);
        assert_eq!(report.commit_sha, SHA, "from the CI");
        assert_eq!(report.run_id, "flag-run", "from the flag");
        assert_eq!(
            report.branch.as_deref(),
            Some("from-json"),
            "the JSON over the CI"
        );
        assert_eq!(report.pull_request.as_deref(), Some("5"));
        assert_eq!(report.framework, "pytest", "from the XML producer");
        let environment = report.environment.unwrap();
        assert_eq!(environment["ci"], "gitlab-ci");
        assert_eq!(environment["pipeline"], "json");
        assert_eq!(environment["os"], "linux");
    }

    #[test]
    fn a_missing_commit_or_run_id_is_a_usage_error_naming_the_flag() {
        let mut report = Report::new("junit");
        report.tests = one_test();
        let error = fill(&mut report, &send_args(&[]), REPO, &[], CiInfo::default()).unwrap_err();
        assert_eq!(error.0, Exit::Usage);
        assert!(error.1.contains("--commit-sha"), "{}", error.1);
        let error = fill(
            &mut report,
            &send_args(&["--commit-sha", SHA]),
            REPO,
            &[],
            CiInfo::default(),
        )
        .unwrap_err();
        assert!(error.1.contains("--run-id"), "{}", error.1);
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
