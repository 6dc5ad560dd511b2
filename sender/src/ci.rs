//! What the CI system tells about the run, from its own environment variables.
//!
//! Pure: takes the variables as a map (the CLI reads the process environment once at
//! start-up), so each provider is tested from plain values.
//!
//! `run_id` is chosen per provider so that two jobs of one pipeline, and a retried job,
//! never share it: the duplicate key is `(repo_id, commit_sha, run_id, framework)`, so
//! a shared run id would make the second job's report a "duplicate" and drop it.
//! Matrix jobs on GitHub Actions share every variable but the matrix values, so give
//! them `--run-id` (see the README).

use std::collections::{BTreeMap, HashMap};

/// The report fields a CI system supplies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CiInfo {
    /// `github-actions`, `gitlab-ci`, `jenkins`, `buildkite`, `circleci`,
    /// `azure-pipelines`, or `None` outside a known CI.
    pub provider: Option<&'static str>,
    pub commit_sha: Option<String>,
    pub run_id: Option<String>,
    pub branch: Option<String>,
    pub pull_request: Option<String>,
    /// Provider name, job, pipeline and a link back to the run.
    pub environment: BTreeMap<String, String>,
}

struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn is(&self, name: &str, value: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    }
}

fn env_map(pairs: &[(&str, Option<String>)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// Detects the CI provider from `vars` and reads its fields.
pub fn detect(vars: &HashMap<String, String>) -> CiInfo {
    let v = Vars(vars);
    if v.is("GITHUB_ACTIONS", "true") {
        github(&v)
    } else if v.is("GITLAB_CI", "true") {
        gitlab(&v)
    } else if v.is("BUILDKITE", "true") {
        buildkite(&v)
    } else if v.is("CIRCLECI", "true") {
        circleci(&v)
    } else if v.is("TF_BUILD", "true") {
        azure(&v)
    } else if v.get("JENKINS_URL").is_some() || v.get("JENKINS_HOME").is_some() {
        jenkins(&v)
    } else {
        CiInfo::default()
    }
}

fn github(v: &Vars<'_>) -> CiInfo {
    // On a pull_request event GITHUB_REF is refs/pull/<n>/merge and GITHUB_HEAD_REF the
    // source branch; GITHUB_SHA is the merge commit that was tested.
    let pull_request = v
        .get("GITHUB_REF")
        .and_then(|r| r.strip_prefix("refs/pull/").map(str::to_owned))
        .and_then(|r| r.split('/').next().map(str::to_owned));
    let branch = v
        .get("GITHUB_HEAD_REF")
        .or_else(|| v.get("GITHUB_REF_NAME"));
    let run_id = v.get("GITHUB_RUN_ID").map(|id| {
        let attempt = v
            .get("GITHUB_RUN_ATTEMPT")
            .unwrap_or_else(|| "1".to_owned());
        match v.get("GITHUB_JOB") {
            Some(job) => format!("{id}-{attempt}-{job}"),
            None => format!("{id}-{attempt}"),
        }
    });
    let url = match (
        v.get("GITHUB_SERVER_URL"),
        v.get("GITHUB_REPOSITORY"),
        v.get("GITHUB_RUN_ID"),
    ) {
        (Some(server), Some(repo), Some(id)) => Some(format!("{server}/{repo}/actions/runs/{id}")),
        _ => None,
    };
    CiInfo {
        provider: Some("github-actions"),
        commit_sha: v.get("GITHUB_SHA"),
        run_id,
        branch,
        pull_request,
        environment: env_map(&[
            ("ci", Some("github-actions".to_owned())),
            ("workflow", v.get("GITHUB_WORKFLOW")),
            ("job", v.get("GITHUB_JOB")),
            ("runner", v.get("RUNNER_OS")),
            ("url", url),
        ]),
    }
}

fn gitlab(v: &Vars<'_>) -> CiInfo {
    // CI_JOB_ID is unique per job, also across retries and parallel/matrix jobs.
    let branch = v
        .get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
        .or_else(|| v.get("CI_COMMIT_BRANCH"))
        .or_else(|| v.get("CI_COMMIT_REF_NAME"));
    CiInfo {
        provider: Some("gitlab-ci"),
        commit_sha: v.get("CI_COMMIT_SHA"),
        run_id: v.get("CI_JOB_ID"),
        branch,
        pull_request: v.get("CI_MERGE_REQUEST_IID"),
        environment: env_map(&[
            ("ci", Some("gitlab-ci".to_owned())),
            ("pipeline", v.get("CI_PIPELINE_ID")),
            ("job", v.get("CI_JOB_NAME")),
            ("url", v.get("CI_JOB_URL")),
        ]),
    }
}

fn jenkins(v: &Vars<'_>) -> CiInfo {
    // BUILD_TAG is `jenkins-<job>-<number>`, unique per build. GIT_BRANCH from the Git
    // plugin is `origin/main`; multibranch pipelines set BRANCH_NAME (and CHANGE_ID for
    // a pull request, CHANGE_BRANCH for its source branch).
    let branch = v
        .get("CHANGE_BRANCH")
        .or_else(|| v.get("BRANCH_NAME"))
        .or_else(|| {
            v.get("GIT_BRANCH")
                .map(|b| b.strip_prefix("origin/").map(str::to_owned).unwrap_or(b))
        });
    let run_id = v
        .get("BUILD_TAG")
        .or_else(|| match (v.get("JOB_NAME"), v.get("BUILD_NUMBER")) {
            (Some(job), Some(number)) => Some(format!("{job}-{number}")),
            _ => None,
        });
    CiInfo {
        provider: Some("jenkins"),
        commit_sha: v.get("GIT_COMMIT"),
        run_id,
        branch,
        pull_request: v.get("CHANGE_ID"),
        environment: env_map(&[
            ("ci", Some("jenkins".to_owned())),
            ("job", v.get("JOB_NAME")),
            ("url", v.get("BUILD_URL")),
        ]),
    }
}

fn buildkite(v: &Vars<'_>) -> CiInfo {
    // BUILDKITE_JOB_ID is a UUID per job (retries get a new one). BUILDKITE_COMMIT can
    // be `HEAD` before checkout resolves it; that is no commit SHA.
    CiInfo {
        provider: Some("buildkite"),
        commit_sha: v.get("BUILDKITE_COMMIT").filter(|c| c != "HEAD"),
        run_id: v.get("BUILDKITE_JOB_ID"),
        branch: v.get("BUILDKITE_BRANCH"),
        pull_request: v.get("BUILDKITE_PULL_REQUEST").filter(|p| p != "false"),
        environment: env_map(&[
            ("ci", Some("buildkite".to_owned())),
            ("pipeline", v.get("BUILDKITE_PIPELINE_SLUG")),
            ("build", v.get("BUILDKITE_BUILD_NUMBER")),
            ("job", v.get("BUILDKITE_LABEL")),
            ("url", v.get("BUILDKITE_BUILD_URL")),
        ]),
    }
}

fn circleci(v: &Vars<'_>) -> CiInfo {
    // CIRCLE_WORKFLOW_JOB_ID is unique per job; parallel containers of one job share it,
    // so the container index is added when there are several.
    let base = v
        .get("CIRCLE_WORKFLOW_JOB_ID")
        .or_else(|| v.get("CIRCLE_BUILD_NUM"));
    let parallel = v
        .get("CIRCLE_NODE_TOTAL")
        .and_then(|t| t.parse::<u32>().ok())
        .is_some_and(|t| t > 1);
    let run_id = base.map(|b| match (parallel, v.get("CIRCLE_NODE_INDEX")) {
        (true, Some(index)) => format!("{b}-{index}"),
        _ => b,
    });
    // CIRCLE_PR_NUMBER is set only for forks; CIRCLE_PULL_REQUEST is the PR's URL.
    let pull_request = v.get("CIRCLE_PR_NUMBER").or_else(|| {
        v.get("CIRCLE_PULL_REQUEST")
            .and_then(|url| url.rsplit('/').next().map(str::to_owned))
    });
    CiInfo {
        provider: Some("circleci"),
        commit_sha: v.get("CIRCLE_SHA1"),
        run_id,
        branch: v.get("CIRCLE_BRANCH"),
        pull_request,
        environment: env_map(&[
            ("ci", Some("circleci".to_owned())),
            ("workflow", v.get("CIRCLE_WORKFLOW_ID")),
            ("job", v.get("CIRCLE_JOB")),
            ("url", v.get("CIRCLE_BUILD_URL")),
        ]),
    }
}

fn azure(v: &Vars<'_>) -> CiInfo {
    // BUILD_SOURCEBRANCH is `refs/heads/main` (or `refs/pull/<n>/merge` for a PR build,
    // where SYSTEM_PULLREQUEST_SOURCEBRANCH has the branch). SYSTEM_JOBID is unique per
    // job of a run, SYSTEM_JOBATTEMPT counts its retries.
    let strip = |b: String| {
        b.strip_prefix("refs/heads/")
            .map(str::to_owned)
            .unwrap_or(b)
    };
    let branch = v
        .get("SYSTEM_PULLREQUEST_SOURCEBRANCH")
        .or_else(|| v.get("BUILD_SOURCEBRANCH"))
        .map(strip);
    let pull_request = v
        .get("SYSTEM_PULLREQUEST_PULLREQUESTNUMBER")
        .or_else(|| v.get("SYSTEM_PULLREQUEST_PULLREQUESTID"));
    let run_id = v.get("BUILD_BUILDID").map(|build| {
        let mut id = build;
        if let Some(job) = v.get("SYSTEM_JOBID") {
            id = format!("{id}-{job}");
        }
        if let Some(attempt) = v.get("SYSTEM_JOBATTEMPT") {
            id = format!("{id}-{attempt}");
        }
        id
    });
    let url = match (
        v.get("SYSTEM_COLLECTIONURI"),
        v.get("SYSTEM_TEAMPROJECT"),
        v.get("BUILD_BUILDID"),
    ) {
        (Some(base), Some(project), Some(id)) => Some(format!(
            "{}/{project}/_build/results?buildId={id}",
            base.trim_end_matches('/')
        )),
        _ => None,
    };
    CiInfo {
        provider: Some("azure-pipelines"),
        commit_sha: v.get("BUILD_SOURCEVERSION"),
        run_id,
        branch,
        pull_request,
        environment: env_map(&[
            ("ci", Some("azure-pipelines".to_owned())),
            ("pipeline", v.get("BUILD_DEFINITIONNAME")),
            ("job", v.get("SYSTEM_JOBDISPLAYNAME")),
            ("url", url),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn fields(info: &CiInfo) -> (Option<&str>, Option<&str>, Option<&str>, Option<&str>) {
        (
            info.commit_sha.as_deref(),
            info.run_id.as_deref(),
            info.branch.as_deref(),
            info.pull_request.as_deref(),
        )
    }

    #[test]
    fn github_actions_push_and_pull_request() {
        let push = detect(&vars(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SHA", SHA),
            ("GITHUB_RUN_ID", "9001"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "test"),
            ("GITHUB_REF", "refs/heads/main"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_HEAD_REF", ""),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/app"),
            ("GITHUB_WORKFLOW", "CI"),
        ]));
        assert_eq!(push.provider, Some("github-actions"));
        assert_eq!(
            fields(&push),
            (Some(SHA), Some("9001-2-test"), Some("main"), None)
        );
        assert_eq!(
            push.environment["url"],
            "https://github.com/acme/app/actions/runs/9001"
        );
        assert_eq!(push.environment["workflow"], "CI");

        let pr = detect(&vars(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SHA", SHA),
            ("GITHUB_RUN_ID", "9002"),
            ("GITHUB_REF", "refs/pull/42/merge"),
            ("GITHUB_REF_NAME", "42/merge"),
            ("GITHUB_HEAD_REF", "feature/x"),
        ]));
        assert_eq!(
            fields(&pr),
            (Some(SHA), Some("9002-1"), Some("feature/x"), Some("42"))
        );
    }

    #[test]
    fn gitlab_ci_branch_and_merge_request() {
        let mr = detect(&vars(&[
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_SHA", SHA),
            ("CI_JOB_ID", "777"),
            ("CI_PIPELINE_ID", "55"),
            ("CI_JOB_NAME", "test: [3.11]"),
            ("CI_COMMIT_REF_NAME", "feature/y"),
            ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature/y"),
            ("CI_MERGE_REQUEST_IID", "12"),
            ("CI_JOB_URL", "https://gitlab.example/acme/app/-/jobs/777"),
        ]));
        assert_eq!(mr.provider, Some("gitlab-ci"));
        assert_eq!(
            fields(&mr),
            (Some(SHA), Some("777"), Some("feature/y"), Some("12"))
        );
        assert_eq!(mr.environment["pipeline"], "55");
        assert_eq!(mr.environment["job"], "test: [3.11]");

        let push = detect(&vars(&[
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_SHA", SHA),
            ("CI_JOB_ID", "778"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_COMMIT_REF_NAME", "main"),
        ]));
        assert_eq!(fields(&push), (Some(SHA), Some("778"), Some("main"), None));
    }

    #[test]
    fn jenkins_git_plugin_and_multibranch() {
        let plain = detect(&vars(&[
            ("JENKINS_URL", "https://ci.example/"),
            ("GIT_COMMIT", SHA),
            ("BUILD_TAG", "jenkins-app-31"),
            ("JOB_NAME", "app"),
            ("BUILD_NUMBER", "31"),
            ("GIT_BRANCH", "origin/main"),
            ("BUILD_URL", "https://ci.example/job/app/31/"),
        ]));
        assert_eq!(plain.provider, Some("jenkins"));
        assert_eq!(
            fields(&plain),
            (Some(SHA), Some("jenkins-app-31"), Some("main"), None)
        );
        assert_eq!(plain.environment["url"], "https://ci.example/job/app/31/");

        let pr = detect(&vars(&[
            ("JENKINS_HOME", "/var/jenkins"),
            ("GIT_COMMIT", SHA),
            ("JOB_NAME", "app/PR-9"),
            ("BUILD_NUMBER", "2"),
            ("BRANCH_NAME", "PR-9"),
            ("CHANGE_ID", "9"),
            ("CHANGE_BRANCH", "fix/z"),
        ]));
        assert_eq!(
            fields(&pr),
            (Some(SHA), Some("app/PR-9-2"), Some("fix/z"), Some("9"))
        );
    }

    #[test]
    fn buildkite_with_and_without_a_pull_request() {
        let info = detect(&vars(&[
            ("BUILDKITE", "true"),
            ("BUILDKITE_COMMIT", SHA),
            ("BUILDKITE_JOB_ID", "0190-abcd"),
            ("BUILDKITE_BRANCH", "main"),
            ("BUILDKITE_PULL_REQUEST", "false"),
            ("BUILDKITE_PIPELINE_SLUG", "app"),
            (
                "BUILDKITE_BUILD_URL",
                "https://buildkite.com/acme/app/builds/5",
            ),
        ]));
        assert_eq!(info.provider, Some("buildkite"));
        assert_eq!(
            fields(&info),
            (Some(SHA), Some("0190-abcd"), Some("main"), None)
        );

        let pr = detect(&vars(&[
            ("BUILDKITE", "true"),
            ("BUILDKITE_COMMIT", "HEAD"),
            ("BUILDKITE_JOB_ID", "0190-ef01"),
            ("BUILDKITE_BRANCH", "feat"),
            ("BUILDKITE_PULL_REQUEST", "17"),
        ]));
        assert_eq!(
            fields(&pr),
            (None, Some("0190-ef01"), Some("feat"), Some("17"))
        );
    }

    #[test]
    fn circleci_parallel_containers_and_pull_requests() {
        let info = detect(&vars(&[
            ("CIRCLECI", "true"),
            ("CIRCLE_SHA1", SHA),
            ("CIRCLE_WORKFLOW_JOB_ID", "job-uuid"),
            ("CIRCLE_BUILD_NUM", "88"),
            ("CIRCLE_NODE_TOTAL", "4"),
            ("CIRCLE_NODE_INDEX", "2"),
            ("CIRCLE_BRANCH", "feature/w"),
            ("CIRCLE_PULL_REQUEST", "https://github.com/acme/app/pull/64"),
            ("CIRCLE_JOB", "test"),
        ]));
        assert_eq!(info.provider, Some("circleci"));
        assert_eq!(
            fields(&info),
            (Some(SHA), Some("job-uuid-2"), Some("feature/w"), Some("64"))
        );

        let single = detect(&vars(&[
            ("CIRCLECI", "true"),
            ("CIRCLE_SHA1", SHA),
            ("CIRCLE_BUILD_NUM", "89"),
            ("CIRCLE_NODE_TOTAL", "1"),
            ("CIRCLE_NODE_INDEX", "0"),
            ("CIRCLE_BRANCH", "main"),
        ]));
        assert_eq!(fields(&single), (Some(SHA), Some("89"), Some("main"), None));
    }

    #[test]
    fn azure_pipelines_branch_and_pull_request() {
        let info = detect(&vars(&[
            ("TF_BUILD", "True"),
            ("BUILD_SOURCEVERSION", SHA),
            ("BUILD_BUILDID", "1200"),
            ("SYSTEM_JOBID", "a1b2"),
            ("SYSTEM_JOBATTEMPT", "1"),
            ("BUILD_SOURCEBRANCH", "refs/heads/release/1.0"),
            ("SYSTEM_COLLECTIONURI", "https://dev.azure.com/acme/"),
            ("SYSTEM_TEAMPROJECT", "app"),
        ]));
        assert_eq!(info.provider, Some("azure-pipelines"));
        assert_eq!(
            fields(&info),
            (Some(SHA), Some("1200-a1b2-1"), Some("release/1.0"), None)
        );
        assert_eq!(
            info.environment["url"],
            "https://dev.azure.com/acme/app/_build/results?buildId=1200"
        );

        let pr = detect(&vars(&[
            ("TF_BUILD", "True"),
            ("BUILD_SOURCEVERSION", SHA),
            ("BUILD_BUILDID", "1201"),
            ("BUILD_SOURCEBRANCH", "refs/pull/5/merge"),
            ("SYSTEM_PULLREQUEST_SOURCEBRANCH", "refs/heads/topic"),
            ("SYSTEM_PULLREQUEST_PULLREQUESTID", "99123"),
            ("SYSTEM_PULLREQUEST_PULLREQUESTNUMBER", "5"),
        ]));
        assert_eq!(
            fields(&pr),
            (Some(SHA), Some("1201"), Some("topic"), Some("5"))
        );
    }

    #[test]
    fn outside_ci_nothing_is_detected() {
        assert_eq!(detect(&vars(&[("HOME", "/root")])), CiInfo::default());
    }
}
