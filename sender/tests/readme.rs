//! The README's pipeline snippets, run: the commands of the GitHub Actions step and of
//! the GitLab CI `after_script`, taken from the README's YAML, run by bash with each
//! CI's variables against a local ingest (the `cargo install` line aside: the test
//! puts the binary it built on `PATH`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use sqlx::PgPool;
use support::{Ingest, SECRET, SHA, fixture, scratch, start};

/// The YAML blocks of the README's "Use it in CI" section, parsed.
fn snippets() -> Vec<Value> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Use it in CI")
        .expect("a `Use it in CI` section")..];
    section
        .split("```yaml\n")
        .skip(1)
        .map(|block| serde_saphyr::from_str(block.split("```").next().unwrap()).unwrap())
        .collect()
}

/// A job's workspace: the Surefire reports where `mvn verify` leaves them.
fn workspace() -> std::path::PathBuf {
    let dir = scratch();
    let reports = dir.join("target/surefire-reports");
    std::fs::create_dir_all(&reports).unwrap();
    for entry in std::fs::read_dir(fixture("surefire")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, reports.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Runs `script` as the CI would (bash, stop at the first failing command).
async fn run_script(
    script: &str,
    cwd: &Path,
    env: &HashMap<String, String>,
) -> std::process::Output {
    let bin_dir = Path::new(support::binary()).parent().unwrap();
    tokio::process::Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", script])
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
        )
        .output()
        .await
        .unwrap()
}

fn expression_value(expression: &str, ingest: &Ingest) -> String {
    match expression {
        "${{ vars.ANCHORPIPE_URL }}" => ingest.url.clone(),
        "${{ vars.ANCHORPIPE_REPO_ID }}" => ingest.repo.to_string(),
        "${{ secrets.ANCHORPIPE_KEY }}" => SECRET.to_owned(),
        other => panic!("the test does not know the expression {other}"),
    }
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_github_actions_snippet_sends_the_reports(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let workflow = &snippets()[0];
    let steps = workflow["jobs"]["test"]["steps"].as_array().unwrap();
    let step = steps
        .iter()
        .find(|s| s["name"] == "Send test results to anchorpipe")
        .expect("the report step");
    assert_eq!(
        step["if"], "always()",
        "the report step runs after failed tests too"
    );

    let mut env: HashMap<String, String> = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_SHA", SHA),
        ("GITHUB_RUN_ID", "9001"),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_JOB", "test"),
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_REF_NAME", "main"),
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_REPOSITORY", "acme/app"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in step["env"].as_object().unwrap() {
        env.insert(
            name.clone(),
            expression_value(value.as_str().unwrap(), &ingest),
        );
    }
    let dir = workspace();
    let output = run_script(step["run"].as_str().unwrap(), &dir, &env).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("key accepted"), "{stdout}");
    assert_eq!(
        ingest.stored().await,
        vec![(
            "9001-1-test".to_owned(),
            "junit".to_owned(),
            Some("main".to_owned()),
            None,
            6
        )]
    );
    let payload = ingest.payload("9001-1-test").await;
    assert_eq!(
        payload["environment"]["url"],
        "https://github.com/acme/app/actions/runs/9001"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_gitlab_ci_snippet_sends_the_reports(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let pipeline = &snippets()[1];
    let job = &pipeline["test"];
    let script: Vec<&str> = job["after_script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap())
        .filter(|line| !line.starts_with("cargo install"))
        .collect();
    assert!(
        script.iter().any(|l| l.starts_with("anchorpipe send")),
        "{script:?}"
    );

    let mut env: HashMap<String, String> = [
        ("GITLAB_CI", "true"),
        ("CI_COMMIT_SHA", SHA),
        ("CI_JOB_ID", "31337"),
        ("CI_PIPELINE_ID", "700"),
        ("CI_JOB_NAME", "test"),
        ("CI_COMMIT_REF_NAME", "feature/x"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature/x"),
        ("CI_MERGE_REQUEST_IID", "12"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in job["variables"].as_object().unwrap() {
        env.insert(name.clone(), value.as_str().unwrap().to_owned());
    }
    // Project CI/CD variables take precedence over the YAML's: this project's endpoint.
    env.insert("ANCHORPIPE_URL".to_owned(), ingest.url.clone());
    env.insert("ANCHORPIPE_REPO_ID".to_owned(), ingest.repo.to_string());
    env.insert("ANCHORPIPE_KEY".to_owned(), SECRET.to_owned());

    let dir = workspace();
    let output = run_script(&script.join("\n"), &dir, &env).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        ingest.stored().await,
        vec![(
            "31337".to_owned(),
            "junit".to_owned(),
            Some("feature/x".to_owned()),
            Some("12".to_owned()),
            6
        )]
    );
    std::fs::remove_dir_all(dir).unwrap();
}
