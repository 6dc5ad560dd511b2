//! Leader election over a Lease, against the in-memory API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchorpipe_operator::leader::{LeaderElector, LeaseConfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use support::Store;

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/anchorpipe-system/leases/anchorpipe-operator";

fn store() -> Arc<Mutex<Store>> {
    Arc::new(Mutex::new(Store {
        now: t(0).to_string(),
        ..Store::default()
    }))
}

fn elector(client: &kube::Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), "anchorpipe-system"),
        LeaseConfig {
            name: "anchorpipe-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
        },
    )
}

fn t(seconds: i64) -> Timestamp {
    "2026-03-01T09:00:00Z"
        .parse::<Timestamp>()
        .unwrap()
        .checked_add(SignedDuration::from_secs(seconds))
        .unwrap()
}

fn holder(store: &Arc<Mutex<Store>>) -> (Option<String>, i64) {
    let lease = store.lock().unwrap().objects.get(LEASE).cloned().unwrap();
    (
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned),
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
    )
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let store = store();
    let client = support::client(store.clone());
    let (a, b) = (elector(&client, "a"), elector(&client, "b"));

    // (replica, seconds, expected result, expected holder, expected transitions)
    let steps: [(&LeaderElector, i64, bool, &str, i64); 6] = [
        (&a, 0, true, "a", 0),   // creates the Lease
        (&b, 1, false, "a", 0),  // held and fresh
        (&a, 5, true, "a", 0),   // renews
        (&b, 19, false, "a", 0), // renewed at 5 s, valid until 20 s
        (&b, 21, true, "b", 1),  // expired: taken over
        (&a, 22, false, "b", 1), // the old leader does not get it back
    ];
    for (i, (elector, at, leads, want_holder, transitions)) in steps.into_iter().enumerate() {
        assert_eq!(
            elector.try_acquire_or_renew(t(at)).await.unwrap(),
            leads,
            "step {i}"
        );
        assert_eq!(
            holder(&store),
            (Some(want_holder.to_owned()), transitions),
            "step {i}"
        );
    }
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let store = store();
    let client = support::client(store.clone());
    let (a, b) = (elector(&client, "a"), elector(&client, "b"));
    assert!(a.try_acquire_or_renew(t(0)).await.unwrap());
    a.release().await;
    assert_eq!(holder(&store).0, None);
    assert!(b.try_acquire_or_renew(t(1)).await.unwrap());
    // Releasing a Lease one does not hold changes nothing.
    a.release().await;
    assert_eq!(holder(&store).0.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_stale_write_loses_the_race() {
    let store = store();
    let client = support::client(store.clone());
    let a = elector(&client, "a");
    assert!(a.try_acquire_or_renew(t(0)).await.unwrap());
    // Another replica's write lands between our read and our write: the server's
    // optimistic concurrency refuses ours (409), which counts as not leading.
    let api = Api::<Lease>::namespaced(client.clone(), "anchorpipe-system");
    let mut stale = api.get("anchorpipe-operator").await.unwrap();
    {
        let mut s = store.lock().unwrap();
        let mut lease = s.objects.get(LEASE).cloned().unwrap();
        lease["spec"]["holderIdentity"] = "b".into();
        s.bump(&mut lease);
        s.objects.insert(LEASE.into(), lease);
    }
    stale.spec.as_mut().unwrap().holder_identity = Some("a".into());
    let err = api
        .replace("anchorpipe-operator", &Default::default(), &stale)
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    assert_eq!(holder(&store).0.as_deref(), Some("b"));
}

/// An API server that takes every request and never answers.
fn silent_client() -> kube::Client {
    let service = tower::service_fn(|_: http::Request<kube::client::Body>| {
        std::future::pending::<Result<http::Response<kube::client::Body>, std::convert::Infallible>>(
        )
    });
    kube::Client::new(service, "default")
}

/// A standby may take the Lease over once it runs out, so a leader whose renewal was
/// accepted and never answered must count the Lease as lost by then, not wait on the
/// answer while another replica starts reconciling.
#[tokio::test]
async fn a_renewal_never_answered_loses_the_lease_when_it_runs_out() {
    const LEASE_DURATION: Duration = Duration::from_millis(600);
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(silent_client(), "anchorpipe-system"),
        LeaseConfig {
            name: "anchorpipe-operator".into(),
            identity: "a".into(),
            lease_duration: LEASE_DURATION,
            renew_period: Duration::from_millis(200),
        },
    );
    let renewed = tokio::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(10), elector.hold(renewed))
        .await
        .expect("still waiting on the unanswered renewal long after the Lease ran out");
    let held = renewed.elapsed();
    assert!(
        matches!(lost, anchorpipe_operator::error::Error::Lease(_)),
        "{lost}"
    );
    assert!(
        held >= LEASE_DURATION,
        "gave up before the Lease ran out: {held:?}"
    );
}

/// A standby's attempt the API server never answers is given up and tried again.
#[tokio::test]
async fn an_acquire_attempt_never_answered_is_given_up_and_retried() {
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let service = tower::service_fn(move |_: http::Request<kube::client::Body>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::pending::<Result<http::Response<kube::client::Body>, std::convert::Infallible>>(
        )
    });
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(kube::Client::new(service, "default"), "anchorpipe-system"),
        LeaseConfig {
            name: "anchorpipe-operator".into(),
            identity: "b".into(),
            lease_duration: Duration::from_millis(600),
            renew_period: Duration::from_millis(100),
        },
    );
    let waited = tokio::time::timeout(Duration::from_millis(1_000), elector.acquire()).await;
    assert!(waited.is_err(), "acquired a Lease nobody answered for");
    let attempts = requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        attempts >= 3,
        "only {attempts} attempts in 1 s at one per 100 ms"
    );
}
