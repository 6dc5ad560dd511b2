//! The `anchorpipe` binary against a real ingest and PostgreSQL: sending, duplicates,
//! splitting, retrying after 429, dry runs, key checks and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use sqlx::PgPool;
use support::{SHA, anchorpipe, fixture, scratch, start};

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_junit_file_is_sent_with_the_ci_fields_then_answered_as_a_duplicate(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let mut env = ingest.env();
    env.extend([
        ("GITLAB_CI", "true".to_owned()),
        ("CI_COMMIT_SHA", SHA.to_owned()),
        ("CI_JOB_ID", "4242".to_owned()),
        ("CI_PIPELINE_ID", "99".to_owned()),
        ("CI_COMMIT_BRANCH", "main".to_owned()),
    ]);
    let file = fixture("pytest.xml");
    let args = ["send", file.to_str().unwrap()];

    let first = anchorpipe(&args, &env).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stdout
            .contains("stored part 1/1: run_id 4242, 6 tests (3 pass, 2 fail, 1 skip)"),
        "{first:?}"
    );
    assert!(first.stdout.contains("tests_parsed 6"), "{first:?}");
    assert_eq!(
        ingest.stored().await,
        vec![(
            "4242".to_owned(),
            "pytest".to_owned(),
            Some("main".to_owned()),
            None,
            6
        )]
    );
    let payload = ingest.payload("4242").await;
    assert_eq!(payload["commit_sha"], SHA);
    assert_eq!(payload["environment"]["ci"], "gitlab-ci");
    assert_eq!(payload["environment"]["pipeline"], "99");

    let again = anchorpipe(&args, &env).await;
    assert_eq!(again.code, 3, "a resend is a duplicate: {again:?}");
    assert!(again.stdout.contains("duplicate part 1/1"), "{again:?}");
    assert_eq!(ingest.stored().await.len(), 1);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_json_report_and_flags_fill_the_report_and_legacy_signatures_work(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let dir = scratch();
    let report = dir.join("report.json");
    std::fs::write(
        &report,
        r#"{"framework":"jest","branch":"from-json","metadata":{"team":"web"},
            "tests":[{"path":"a.test.ts","name":"adds","status":"pass","startedAt":"2026-11-28T17:43:00Z"}]}"#,
    )
    .unwrap();
    let run = anchorpipe(
        &[
            "send",
            report.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "local-1",
            "--pull-request",
            "7",
            "--env",
            "os=linux",
            "--legacy-signature",
        ],
        &ingest.env(),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        ingest.stored().await,
        vec![(
            "local-1".to_owned(),
            "jest".to_owned(),
            Some("from-json".to_owned()),
            Some("7".to_owned()),
            1
        )]
    );
    let payload = ingest.payload("local-1").await;
    assert_eq!(payload["metadata"]["team"], "web");
    assert_eq!(payload["environment"]["os"], "linux");
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_25000_test_junit_file_is_stored_as_three_parts_with_every_test(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let dir = scratch();
    let file = dir.join("big.xml");
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<testsuites>\n");
    for suite in 0..25 {
        let _ = writeln!(
            xml,
            "<testsuite name=\"suite{suite}\" timestamp=\"2026-11-29T10:00:00\">"
        );
        for case in 0..1000 {
            let n = suite * 1000 + case;
            match n % 100 {
                0 => {
                    let _ = writeln!(
                        xml,
                        "<testcase classname=\"com.acme.S{suite}\" name=\"t{n}\" time=\"0.01\"><failure message=\"boom {n}\">trace</failure></testcase>"
                    );
                }
                1 => {
                    let _ = writeln!(
                        xml,
                        "<testcase classname=\"com.acme.S{suite}\" name=\"t{n}\"><skipped/></testcase>"
                    );
                }
                _ => {
                    let _ = writeln!(
                        xml,
                        "<testcase classname=\"com.acme.S{suite}\" name=\"t{n}\" time=\"0.002\"/>"
                    );
                }
            }
        }
        xml.push_str("</testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    std::fs::write(&file, xml).unwrap();

    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "big",
        ],
        &ingest.env(),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("stored part"))
            .count(),
        3,
        "{run:?}"
    );
    let stored = ingest.stored().await;
    let summary: Vec<_> = stored
        .iter()
        .map(|(run, _, _, _, n)| (run.as_str(), *n))
        .collect();
    assert_eq!(
        summary,
        vec![("big#1/3", 10_000), ("big#2/3", 10_000), ("big#3/3", 5_000)]
    );

    // Every test arrived exactly once, with its status.
    let (names, fails, skips): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT t->>'name'), count(*) FILTER (WHERE t->>'status' = 'fail'), \
                count(*) FILTER (WHERE t->>'status' = 'skip') \
         FROM ingestions, jsonb_array_elements(payload::jsonb -> 'tests') AS t WHERE repo_id = $1",
    )
    .bind(ingest.repo)
    .fetch_one(&ingest.pool)
    .await
    .unwrap();
    assert_eq!((names, fails, skips), (25_000, 250, 250));
    let part = ingest.payload("big#2/3").await;
    assert_eq!(part["metadata"]["anchorpipePart"]["runId"], "big");

    // Resending the same file resends the same parts: all duplicates, nothing new.
    let again = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "big",
        ],
        &ingest.env(),
    )
    .await;
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(ingest.stored().await.len(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_rate_limited_report_is_retried_after_retry_after(pool: PgPool) {
    // One request, then one every two seconds: the second send is answered 429 with
    // Retry-After: 2 first.
    let ingest = start(pool, |config| {
        config.rate_limit.per_repository.requests_per_minute = 30;
        config.rate_limit.per_repository.burst = 1;
    })
    .await;
    let file = fixture("gotestsum.xml");
    let send = |run_id: &'static str| {
        let env = ingest.env();
        let file = file.clone();
        async move {
            anchorpipe(
                &[
                    "send",
                    file.to_str().unwrap(),
                    "--commit-sha",
                    SHA,
                    "--run-id",
                    run_id,
                ],
                &env,
            )
            .await
        }
    };
    let first = send("r1").await;
    assert_eq!(first.code, 0, "{first:?}");
    let second = send("r2").await;
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stderr.contains("HTTP 429"), "{second:?}");
    assert!(second.stderr.contains("retrying in 2."), "{second:?}");
    assert!(second.elapsed >= Duration::from_secs(2), "{second:?}");
    assert_eq!(ingest.stored().await.len(), 2);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_dry_run_prints_a_request_that_verifies_and_sends_nothing(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let file = fixture("jest-junit.xml");
    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "dry",
            "--dry-run",
        ],
        &ingest.env(),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(ingest.stored().await.is_empty(), "a dry run stores nothing");

    // The printed request is complete: replayed as printed, it is accepted.
    let mut lines = run.stdout.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("# part 1/1: run_id dry, 5 tests")
    );
    let url = lines
        .next()
        .unwrap()
        .strip_prefix("POST ")
        .unwrap()
        .to_owned();
    let mut headers = HashMap::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(": ").unwrap();
        headers.insert(name.to_owned(), value.to_owned());
    }
    let body = lines.next().unwrap().to_owned();
    assert!(headers["webhook-signature"].starts_with("v1,"));
    assert_eq!(headers["authorization"], format!("Bearer {}", ingest.repo));
    let status = tokio::task::spawn_blocking(move || {
        let mut request = ureq::post(&url);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        request.send(body).unwrap().status().as_u16()
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(ingest.stored().await.len(), 1);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn verify_tells_an_accepted_key_from_a_refused_one_and_stores_nothing(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let ok = anchorpipe(&["verify"], &ingest.env()).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.starts_with("key accepted"), "{ok:?}");
    let legacy = anchorpipe(&["verify", "--legacy-signature"], &ingest.env()).await;
    assert_eq!(legacy.code, 0, "{legacy:?}");

    let mut wrong = ingest.env();
    wrong.insert(
        "ANCHORPIPE_KEY",
        "whsec_bm90IHRoZSByaWdodCBrZXk=".to_owned(),
    );
    let refused = anchorpipe(&["verify"], &wrong).await;
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused.stderr.contains("key refused") && refused.stderr.contains("401"),
        "{refused:?}"
    );

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&ingest.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn malformed_xml_is_reported_with_the_file_and_line() {
    let dir = scratch();
    let file = dir.join("broken.xml");
    std::fs::write(
        &file,
        "<testsuite name=\"s\">\n  <testcase name=\"a\">\n    <failure>x</failure>\n  </testsuite>\n",
    )
    .unwrap();
    let env = HashMap::from([
        ("ANCHORPIPE_URL", "http://127.0.0.1:9".to_owned()),
        ("ANCHORPIPE_REPO_ID", uuid::Uuid::new_v4().to_string()),
        ("ANCHORPIPE_KEY", support::SECRET.to_owned()),
    ]);
    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "x",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("broken.xml:4: malformed XML"),
        "{run:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_gives_up_at_the_deadline() {
    // A port nothing listens on: connection refused on every attempt.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = HashMap::from([
        ("ANCHORPIPE_URL", format!("http://127.0.0.1:{port}")),
        ("ANCHORPIPE_REPO_ID", uuid::Uuid::new_v4().to_string()),
        ("ANCHORPIPE_KEY", support::SECRET.to_owned()),
    ]);
    let file = fixture("pytest.xml");
    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "x",
            "--timeout",
            "3",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("retrying in"), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{run:?}");
}

#[tokio::test]
async fn missing_settings_are_usage_errors_and_the_key_is_never_an_argument() {
    let file = fixture("pytest.xml");
    let run = anchorpipe(&["send", file.to_str().unwrap()], &HashMap::new()).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("ANCHORPIPE_URL"), "{run:?}");
    let run = anchorpipe(
        &["send", "--key", "whsec_x", file.to_str().unwrap()],
        &HashMap::new(),
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn a_redirect_is_refused_with_the_location_to_use() {
    // An http:// URL in front of an https-only endpoint answers with a redirect; following
    // it would turn the POST into a GET without the report.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route(
        "/api/ingestion",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::PERMANENT_REDIRECT,
                [("location", "https://reports.example.com/api/ingestion")],
            )
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let env = HashMap::from([
        ("ANCHORPIPE_URL", url),
        ("ANCHORPIPE_REPO_ID", uuid::Uuid::new_v4().to_string()),
        ("ANCHORPIPE_KEY", support::SECRET.to_owned()),
    ]);
    let file = fixture("pytest.xml");
    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "x",
        ],
        &env,
    )
    .await;
    server.abort();
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("HTTP 308: redirected to https://reports.example.com/api/ingestion"),
        "{run:?}"
    );
}

/// Forwards connections to `target`, except that the first one is cut as soon as the
/// server starts answering: the report is stored, but the client never hears so.
async fn proxy_losing_the_first_response(target: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(&target).await.unwrap();
            if first {
                first = false;
                tokio::spawn(async move {
                    let (mut client_read, _client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let upload = tokio::io::copy(&mut client_read, &mut server_write);
                    let mut answer = [0u8; 1];
                    // Forward the request until the server's first answer byte, then
                    // drop both connections without passing the answer on.
                    tokio::select! {
                        _ = upload => {}
                        _ = server_read.read_exact(&mut answer) => {}
                    }
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    let _ = client.shutdown().await;
                });
            }
        }
    });
    url
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_report_stored_but_whose_answer_was_lost_counts_as_sent(pool: PgPool) {
    let ingest = start(pool, |_| {}).await;
    let mut env = ingest.env();
    env.insert(
        "ANCHORPIPE_URL",
        proxy_losing_the_first_response(ingest.url.clone()).await,
    );
    let file = fixture("pytest.xml");
    let run = anchorpipe(
        &[
            "send",
            file.to_str().unwrap(),
            "--commit-sha",
            SHA,
            "--run-id",
            "lost",
        ],
        &env,
    )
    .await;
    assert_eq!(
        run.code, 0,
        "the retry's duplicate is this run's report: {run:?}"
    );
    assert!(run.stderr.contains("retrying in"), "{run:?}");
    assert!(run.stdout.contains("stored part 1/1"), "{run:?}");
    assert_eq!(ingest.stored().await.len(), 1);
    // The first attempt stored it; the retry was answered as a duplicate.
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE repo_id = $1 ORDER BY id")
            .bind(ingest.repo)
            .fetch_all(&ingest.pool)
            .await
            .unwrap();
    assert_eq!(actions, vec!["accepted", "duplicate"]);
}
