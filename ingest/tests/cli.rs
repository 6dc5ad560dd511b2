//! The binary refuses an unusable config at start-up, naming the field, before it
//! binds a port or touches a dependency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn serve_with(config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("ingest-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_anchorpipe-ingest"))
        .args(["serve", "--config"])
        .arg(dir.join("config.json"))
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env_remove("AMQP_URL")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_configs_are_refused_with_the_field_named() {
    let valid = serde_json::json!({
        "tenant": "acme",
        "repositories": ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"],
        "rateLimit": {
            "perRepository": {"requestsPerMinute": 60, "burst": 10},
            "perEndpoint": {"requestsPerMinute": 600, "burst": 50}
        },
        "broker": {
            "exchange": "x", "routingKey": "r", "queue": "q",
            "deadLetterExchange": "dlx", "deadLetterQueue": "dlq"
        }
    });
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            {
                let mut v = valid.clone();
                v["rateLimit"]["perRepository"]["burst"] = 0.into();
                v
            },
            "rateLimit.perRepository",
        ),
        (
            {
                let mut v = valid.clone();
                v["repositories"][0] = "nope".into();
                v
            },
            "repositories[0]",
        ),
        (
            {
                let mut v = valid.clone();
                v["limits"] = serde_json::json!({"maxTestz": 5});
                v
            },
            "maxTestz",
        ),
    ];
    for (config, field) in cases {
        let (ok, stderr) = serve_with(&config.to_string());
        assert!(!ok, "started with an invalid config ({field})");
        assert!(stderr.contains(field), "`{field}` not named in: {stderr}");
    }
    let (ok, stderr) = serve_with("{ not json");
    assert!(!ok);
    assert!(stderr.contains("config"), "{stderr}");
}
