//! HMAC key minting and rotation, as pure decisions over the Secret's current keys.
//!
//! The minted Secret is self-describing: each data entry is one key, named by its key
//! id, and the id carries the time the key was minted (`k20261128-174300-ab12cd`). So
//! the current key is the newest id, and a replaced key's grace period runs from the
//! moment its successor was minted. The only other bookkeeping is which on-demand
//! rotation request was already served, kept in an annotation on the Secret.
//!
//! Rotation is on demand (the annotation) unless the endpoint opts into a schedule.
//!
//! Invariants, each covered by a test below:
//! - an existing key's value is never replaced: the plan copies it verbatim;
//! - at most one key is minted per reconcile;
//! - without a rotation period, no key is ever minted but the first and requested ones;
//! - a key is removed only once its successor has existed for the grace period, because
//!   the ingest pods accept every file in the mounted keys directory.
//!
//! [`expiry_warning`] decides, from the key ids and when the ingest pods last saw each
//! verify a request (the `key_usage` table), whether a key that is still in use stops
//! verifying soon.

use std::collections::BTreeMap;
use std::time::Duration;

use anchorpipe_crds::render::RotationPolicy;
use base64::Engine;
use k8s_openapi::jiff::{Timestamp, tz::TimeZone};

use crate::error::{Error, Result};

/// Prefix of the secret values, as Standard Webhooks secrets are written.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of randomness in a key: 256 bits, the HMAC-SHA256 block-size guidance.
pub const KEY_BYTES: usize = 32;

/// `strftime` layout of the mint time inside a key id; fixed width so that ids sort
/// chronologically as plain strings.
const ID_TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// Why a key was minted (a bounded metric label and event reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintReason {
    /// The Secret had no key yet.
    Initial,
    /// The current key reached the rotation period.
    Schedule,
    /// The rotation annotation was set to a new value.
    Requested,
}

impl MintReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MintReason::Initial => "initial",
            MintReason::Schedule => "schedule",
            MintReason::Requested => "requested",
        }
    }
}

/// What the Secret should hold after this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// Key id → secret value: every key still valid, including a new one.
    pub keys: BTreeMap<String, String>,
    /// The newest key: clients sign with it.
    pub current: String,
    /// The key minted by this reconcile, if any, and why.
    pub minted: Option<(String, MintReason)>,
    /// Keys whose grace period is over, removed by this reconcile.
    pub removed: Vec<String>,
    /// The rotation request value now served (to record on the Secret).
    pub served_request: Option<String>,
    /// Time until the next rotation or removal is due.
    pub next_change: Duration,
}

/// The mint time encoded in one of our key ids, or `None` for any other name.
pub fn minted_at(id: &str) -> Option<Timestamp> {
    // k + YYYYmmdd-HHMMSS + - + 6 hex
    let rest = id.strip_prefix('k')?;
    let (time, suffix) = rest.rsplit_once('-')?;
    if suffix.len() != 6 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) || time.len() != 15 {
        return None;
    }
    let civil = k8s_openapi::jiff::civil::DateTime::strptime(ID_TIME_FORMAT, time).ok()?;
    civil.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// A key id for a key minted at `at`, with a random suffix so that two keys minted in
/// the same second by accident still differ.
pub fn key_id(at: Timestamp, suffix: [u8; 3]) -> String {
    format!(
        "k{}-{}",
        at.to_zoned(TimeZone::UTC).strftime(ID_TIME_FORMAT),
        hex::encode(suffix)
    )
}

/// A fresh key from the operating system's CSPRNG: `(id, value)`.
pub fn mint_random(at: Timestamp) -> Result<(String, String)> {
    use rand::TryRngCore;
    let mut key = [0u8; KEY_BYTES];
    let mut suffix = [0u8; 3];
    let mut rng = rand::rngs::OsRng;
    rng.try_fill_bytes(&mut key)
        .and_then(|()| rng.try_fill_bytes(&mut suffix))
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok((key_id(at, suffix), secret_value(&key)))
}

/// The secret string for key bytes: `whsec_` + standard base64.
pub fn secret_value(key: &[u8]) -> String {
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Whether a name is usable as a key file name (and a Secret data key).
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn to_duration(d: k8s_openapi::jiff::SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    k8s_openapi::jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Decides the Secret's keys at `now`.
///
/// `existing` is the Secret's data as read (entries whose name is not one of our key
/// ids are ignored: the operator neither serves nor removes them). `served_request` is
/// the rotation request recorded on the Secret, `request` the one on the endpoint now.
/// `mint` produces a new `(id, value)` for a mint time.
pub fn plan(
    existing: &BTreeMap<String, String>,
    served_request: Option<&str>,
    request: Option<&str>,
    policy: RotationPolicy,
    now: Timestamp,
    mint: impl FnOnce(Timestamp) -> Result<(String, String)>,
) -> Result<KeyPlan> {
    let mut keys: BTreeMap<String, String> = existing
        .iter()
        .filter(|(id, _)| minted_at(id).is_some())
        .map(|(id, value)| (id.clone(), value.clone()))
        .collect();

    let newest = keys.keys().next_back().and_then(|id| minted_at(id));
    let new_request = request.filter(|r| Some(*r) != served_request);
    let reason = match newest {
        None => Some(MintReason::Initial),
        Some(_) if new_request.is_some() => Some(MintReason::Requested),
        Some(at)
            if policy
                .rotation_period
                .is_some_and(|period| to_duration(now.duration_since(at)) >= period) =>
        {
            Some(MintReason::Schedule)
        }
        Some(_) => None,
    };

    let mut minted = None;
    if let Some(reason) = reason {
        // Keep ids strictly increasing even if the clock went back or two rotations
        // land in the same second: the newest id must be the current key. Ids carry
        // whole seconds, so `now` within the second after `prev` would give an id of
        // the same second, ordered by its random suffix only.
        let at = match newest {
            Some(prev) if add(prev, Duration::from_secs(1)) > now => {
                add(prev, Duration::from_secs(1))
            }
            _ => now,
        };
        let (id, value) = mint(at)?;
        if keys.contains_key(&id) {
            // Never overwrite a key, even on an astronomically unlikely id collision.
            return Err(Error::Random(format!(
                "minted key id `{id}` already exists"
            )));
        }
        keys.insert(id.clone(), value);
        minted = Some((id, reason));
    }

    // A key retires when its successor is minted; it is removed a grace period later.
    let ids: Vec<String> = keys.keys().cloned().collect();
    let mut removed = Vec::new();
    let mut next_change = Duration::MAX;
    for pair in ids.windows(2) {
        let (old, successor) = (&pair[0], &pair[1]);
        let Some(successor_at) = minted_at(successor) else {
            continue;
        };
        let expires = add(successor_at, policy.grace_period);
        if now >= expires {
            keys.remove(old);
            removed.push(old.clone());
        } else {
            next_change = next_change.min(to_duration(expires.duration_since(now)));
        }
    }

    let current = keys
        .keys()
        .next_back()
        .cloned()
        .ok_or(Error::Random("no key after minting".to_owned()))?;
    if let (Some(at), Some(period)) = (minted_at(&current), policy.rotation_period) {
        let due = add(at, period);
        next_change = next_change.min(to_duration(due.duration_since(now)));
    }

    Ok(KeyPlan {
        keys,
        current,
        minted,
        removed,
        served_request: request
            .map(str::to_owned)
            .or(served_request.map(str::to_owned)),
        next_change: next_change.max(Duration::from_secs(1)),
    })
}

/// When each key of a plan stops verifying, as far as is known now.
///
/// A replaced key stops a grace period after its successor was minted. The current key
/// stops only after it is replaced: with a rotation period that is known in advance
/// (its rotation plus the grace period); without one it is open-ended.
pub fn stops_verifying(ids: &[&str], policy: RotationPolicy) -> Vec<Option<Timestamp>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| match ids.get(i + 1) {
            Some(successor) => minted_at(successor).map(|at| add(at, policy.grace_period)),
            None => match (minted_at(id), policy.rotation_period) {
                (Some(at), Some(period)) => Some(add(add(at, period), policy.grace_period)),
                _ => None,
            },
        })
        .collect()
}

/// What the endpoint's status says about its keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyTimes {
    pub current_minted_at: Option<Timestamp>,
    /// When the current key is due to be replaced (scheduled rotation only).
    pub next_rotation_at: Option<Timestamp>,
    /// The newest replaced key still verifying, and when it stops.
    pub previous: Option<(String, Timestamp)>,
}

/// The status times of the keys `ids` (in id order, i.e. mint order).
pub fn key_times(ids: &[&str], policy: RotationPolicy) -> KeyTimes {
    let current = ids.last().copied();
    let current_minted_at = current.and_then(minted_at);
    let previous = ids.len().checked_sub(2).and_then(|i| {
        let stops = stops_verifying(ids, policy).get(i).copied().flatten()?;
        Some((ids[i].to_owned(), stops))
    });
    KeyTimes {
        current_minted_at,
        next_rotation_at: current_minted_at
            .zip(policy.rotation_period)
            .map(|(at, period)| add(at, period)),
        previous,
    }
}

/// A key still in use that stops verifying within the warning time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring {
    pub key_id: String,
    /// When it stops verifying.
    pub stops_at: Timestamp,
    /// When the ingest pods last saw it verify a request.
    pub last_verified_at: Timestamp,
    /// Whether it is the current key (then the rotation has not happened yet).
    pub current: bool,
}

/// The warning decision at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpiryCheck {
    /// The key in use that stops soonest, when one stops within the warning time.
    pub expiring: Option<Expiring>,
    /// When the next warning window opens (a key's end minus the warning time), so the
    /// reconcile looks again then.
    pub next_check: Option<Duration>,
}

/// Whether a key that is still in use stops verifying within `policy.expiry_warning`.
///
/// `ids` are the Secret's key ids after this reconcile's plan; `last_verified` the time
/// each id last verified a request, per the ingest pods. A key counts as in use when it
/// verified within the warning time, and for a replaced key after it was replaced (a
/// pipeline that switched to the new key right away is not warned about).
pub fn expiry_warning(
    ids: &[&str],
    last_verified: &BTreeMap<String, Timestamp>,
    policy: RotationPolicy,
    now: Timestamp,
) -> ExpiryCheck {
    let warning = policy.expiry_warning;
    let since = now
        .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(warning).unwrap_or_default())
        .unwrap_or(Timestamp::MIN);
    let mut check = ExpiryCheck::default();
    for (i, stops) in stops_verifying(ids, policy).into_iter().enumerate() {
        let Some(stops_at) = stops else { continue };
        if now >= stops_at {
            continue; // already gone (removed by this plan or the next)
        }
        let opens = stops_at
            .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(warning).unwrap_or_default())
            .unwrap_or(Timestamp::MIN);
        if now < opens {
            let wait = to_duration(opens.duration_since(now));
            check.next_check = Some(check.next_check.map_or(wait, |w| w.min(wait)));
            continue;
        }
        let id = ids[i];
        let replaced_at = ids.get(i + 1).and_then(|s| minted_at(s));
        let Some(&last) = last_verified.get(id) else {
            continue;
        };
        let in_use = last >= since && replaced_at.is_none_or(|at| last >= at);
        if in_use
            && check
                .expiring
                .as_ref()
                .is_none_or(|e| stops_at < e.stops_at)
        {
            check.expiring = Some(Expiring {
                key_id: id.to_owned(),
                stops_at,
                last_verified_at: last,
                current: i + 1 == ids.len(),
            });
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> RotationPolicy {
        RotationPolicy {
            rotation_period: Some(10 * HOUR),
            grace_period: 2 * HOUR,
            expiry_warning: 3 * HOUR,
        }
    }

    fn on_demand() -> RotationPolicy {
        RotationPolicy {
            rotation_period: None,
            ..policy()
        }
    }

    fn t0() -> Timestamp {
        "2026-11-28T17:43:00Z".parse().unwrap()
    }

    fn at(hours: f64) -> Timestamp {
        add(t0(), Duration::from_secs_f64(hours * 3600.0))
    }

    /// Deterministic minting: the value names the mint time so tests can tell keys apart.
    fn mint(at: Timestamp) -> Result<(String, String)> {
        Ok((key_id(at, [0xab, 0x12, 0xcd]), format!("value-{at}")))
    }

    #[test]
    fn key_ids_carry_their_mint_time_and_sort_chronologically() {
        let id = key_id(t0(), [0xab, 0x12, 0xcd]);
        assert_eq!(id, "k20261128-174300-ab12cd");
        assert!(is_valid_key_id(&id));
        assert_eq!(minted_at(&id), Some(t0()));
        assert!(key_id(at(1.0), [0, 0, 0]) > key_id(t0(), [0xff, 0xff, 0xff]));
        for other in ["primary", "k2026-ab12cd", "k20261128-174300-zz12cd", ""] {
            assert_eq!(minted_at(other), None, "{other}");
        }
    }

    #[test]
    fn random_keys_have_the_documented_shape() {
        let (id, value) = mint_random(t0()).unwrap();
        assert!(minted_at(&id).is_some());
        let raw = value.strip_prefix(SECRET_PREFIX).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .unwrap();
        assert_eq!(bytes.len(), KEY_BYTES);
        assert_ne!(mint_random(t0()).unwrap().1, value);
    }

    /// Runs the reconcile loop over a timeline and checks the exact key set after each
    /// step: (hours since start, rotation request on the endpoint, expected keys by mint
    /// hour, expected mint reason).
    #[test]
    fn rotation_schedule_produces_exactly_the_expected_key_sets() {
        type Step<'a> = (f64, Option<&'a str>, &'a [f64], Option<MintReason>);
        let steps: &[Step] = &[
            (0.0, None, &[0.0], Some(MintReason::Initial)),
            (1.0, None, &[0.0], None),
            (9.9, None, &[0.0], None),
            // Rotation period reached: a second key, the first still valid.
            (10.0, None, &[0.0, 10.0], Some(MintReason::Schedule)),
            (11.9, None, &[0.0, 10.0], None),
            // Grace period over: the first key goes.
            (12.0, None, &[10.0], None),
            // On-demand rotation.
            (13.0, Some("r1"), &[10.0, 13.0], Some(MintReason::Requested)),
            // The same request again does nothing.
            (14.0, Some("r1"), &[10.0, 13.0], None),
            // A second request during the first's grace: three keys for a while.
            (
                14.5,
                Some("r2"),
                &[10.0, 13.0, 14.5],
                Some(MintReason::Requested),
            ),
            (15.0, Some("r2"), &[13.0, 14.5], None),
            (16.5, Some("r2"), &[14.5], None),
            // The schedule counts from the newest key.
            (24.4, Some("r2"), &[14.5], None),
            (24.5, Some("r2"), &[14.5, 24.5], Some(MintReason::Schedule)),
            // A long outage of the operator: rotate once, the old key still gets its grace.
            (
                100.0,
                Some("r2"),
                &[24.5, 100.0],
                Some(MintReason::Schedule),
            ),
            (102.0, Some("r2"), &[100.0], None),
        ];
        let mut data = BTreeMap::new();
        let mut served: Option<String> = None;
        for (hours, request, expected, reason) in steps {
            let plan = plan(
                &data,
                served.as_deref(),
                *request,
                policy(),
                at(*hours),
                mint,
            )
            .unwrap();
            let want: Vec<String> = expected
                .iter()
                .map(|h| key_id(at(*h), [0xab, 0x12, 0xcd]))
                .collect();
            let got: Vec<String> = plan.keys.keys().cloned().collect();
            assert_eq!(got, want, "at {hours}h");
            assert_eq!(plan.minted.map(|(_, r)| r), *reason, "at {hours}h");
            assert_eq!(&plan.current, want.last().unwrap(), "at {hours}h");
            data = plan.keys;
            served = plan.served_request;
        }
    }

    #[test]
    fn existing_keys_are_never_replaced() {
        let id = key_id(t0(), [1, 2, 3]);
        let existing = BTreeMap::from([
            (id.clone(), "whsec_user-edited-value".to_owned()),
            ("not-ours".to_owned(), "ignored".to_owned()),
        ]);
        // Rotation due and requested at once: still one new key, the old value verbatim.
        let plan = plan(&existing, None, Some("now"), policy(), at(11.0), mint).unwrap();
        assert_eq!(plan.keys[&id], "whsec_user-edited-value");
        assert_eq!(plan.keys.len(), 2);
        assert!(!plan.keys.contains_key("not-ours"));
        // A mint that collides with an existing id is refused instead of overwriting.
        let collide = |_| Ok((id.clone(), "other".to_owned()));
        assert!(
            super::plan(
                &existing,
                Some("now"),
                Some("later"),
                policy(),
                at(1.0),
                collide
            )
            .is_err()
        );
    }

    #[test]
    fn mint_time_never_goes_backwards() {
        let future = key_id(at(5.0), [0; 3]);
        let existing = BTreeMap::from([(future.clone(), "v".to_owned())]);
        let plan = plan(&existing, None, Some("r"), policy(), at(1.0), mint).unwrap();
        assert!(plan.current > future);
    }

    #[test]
    fn a_rotation_within_the_second_of_the_last_mint_still_sorts_last() {
        // The first key's id says 17:43:00 (whole seconds); a rotation at 17:43:00.900
        // must not mint another 17:43:00 id that a random suffix could sort first.
        let first = key_id(t0(), [0xff, 0xff, 0xff]);
        let existing = BTreeMap::from([(first.clone(), "v".to_owned())]);
        let now = add(t0(), Duration::from_millis(900));
        let low_suffix = |at| Ok((key_id(at, [0, 0, 0]), "new".to_owned()));
        let plan = plan(&existing, None, Some("r"), policy(), now, low_suffix).unwrap();
        assert_eq!(plan.minted.as_ref().map(|(id, _)| id), Some(&plan.current));
        assert!(plan.current > first, "{} <= {first}", plan.current);
        assert_eq!(plan.keys.len(), 2);
    }

    #[test]
    fn next_change_is_the_earliest_due_event() {
        let plan1 = plan(&BTreeMap::new(), None, None, policy(), t0(), mint).unwrap();
        assert_eq!(plan1.next_change, 10 * HOUR);
        let plan2 = plan(&plan1.keys, None, None, policy(), at(10.0), mint).unwrap();
        assert_eq!(plan2.next_change, 2 * HOUR);
    }

    #[test]
    fn without_a_rotation_period_keys_rotate_only_on_demand() {
        type Step<'a> = (f64, Option<&'a str>, &'a [f64], Option<MintReason>);
        let steps: &[Step] = &[
            (0.0, None, &[0.0], Some(MintReason::Initial)),
            // A year later: still the first key.
            (8760.0, None, &[0.0], None),
            (
                8761.0,
                Some("r1"),
                &[0.0, 8761.0],
                Some(MintReason::Requested),
            ),
            (8762.9, Some("r1"), &[0.0, 8761.0], None),
            (8763.0, Some("r1"), &[8761.0], None),
            (20000.0, Some("r1"), &[8761.0], None),
        ];
        let mut data = BTreeMap::new();
        let mut served: Option<String> = None;
        for (hours, request, expected, reason) in steps {
            let plan = plan(
                &data,
                served.as_deref(),
                *request,
                on_demand(),
                at(*hours),
                mint,
            )
            .unwrap();
            let want: Vec<String> = expected
                .iter()
                .map(|h| key_id(at(*h), [0xab, 0x12, 0xcd]))
                .collect();
            assert_eq!(
                plan.keys.keys().cloned().collect::<Vec<_>>(),
                want,
                "at {hours}h"
            );
            assert_eq!(plan.minted.map(|(_, r)| r), *reason, "at {hours}h");
            data = plan.keys;
            served = plan.served_request;
        }
        // Nothing is due: the plan does not ask to be woken for a rotation.
        let idle = plan(
            &data,
            served.as_deref(),
            Some("r1"),
            on_demand(),
            at(20000.0),
            mint,
        )
        .unwrap();
        assert_eq!(idle.next_change, Duration::MAX);
    }

    fn id(hours: f64) -> String {
        key_id(at(hours), [0xab, 0x12, 0xcd])
    }

    #[test]
    fn key_times_for_the_status() {
        let (k0, k10) = (id(0.0), id(10.0));
        let times = key_times(&[&k0], policy());
        assert_eq!(times.current_minted_at, Some(t0()));
        assert_eq!(times.next_rotation_at, Some(at(10.0)));
        assert_eq!(times.previous, None);
        let times = key_times(&[&k0, &k10], policy());
        assert_eq!(times.previous, Some((k0.clone(), at(12.0))));
        let times = key_times(&[&k0, &k10], on_demand());
        assert_eq!(times.next_rotation_at, None);
        assert_eq!(times.previous, Some((k0, at(12.0))));
    }

    /// The warning decision over a timeline: rotation every 10 h, grace 2 h, warning
    /// 3 h, one CI system that keeps signing with the first key.
    #[test]
    fn a_key_in_use_is_warned_about_the_warning_time_before_it_stops() {
        let (k0, k10) = (id(0.0), id(10.0));
        let used = |key: &str, hours: f64| BTreeMap::from([(key.to_owned(), at(hours))]);

        // The current key stops at 12 h (rotation at 10 h + grace): nothing before 9 h.
        let check = expiry_warning(&[&k0], &used(&k0, 8.0), policy(), at(8.5));
        assert_eq!(check.expiring, None);
        assert_eq!(check.next_check, Some(HOUR / 2));
        // From 9 h on, a key verified lately is warned about, as the current key.
        let check = expiry_warning(&[&k0], &used(&k0, 8.5), policy(), at(9.0));
        let expiring = check.expiring.unwrap();
        assert_eq!(
            (expiring.key_id.as_str(), expiring.stops_at),
            (k0.as_str(), at(12.0))
        );
        assert!(expiring.current);
        assert_eq!(expiring.last_verified_at, at(8.5));
        // An unused key (never, or not within the warning time) is not.
        assert_eq!(
            expiry_warning(&[&k0], &BTreeMap::new(), policy(), at(9.0)).expiring,
            None
        );
        assert_eq!(
            expiry_warning(&[&k0], &used(&k0, 5.0), policy(), at(9.0)).expiring,
            None
        );

        // After the rotation: still warned while the old key keeps verifying...
        let check = expiry_warning(&[&k0, &k10], &used(&k0, 10.5), policy(), at(11.0));
        let expiring = check.expiring.unwrap();
        assert_eq!(expiring.key_id, k0);
        assert!(!expiring.current);
        // ...but not when its last use was before it was replaced: the pipeline moved on.
        assert_eq!(
            expiry_warning(&[&k0, &k10], &used(&k0, 9.5), policy(), at(11.0)).expiring,
            None
        );
        // Once it stopped, it is no longer "expiring".
        assert_eq!(
            expiry_warning(&[&k0, &k10], &used(&k0, 11.9), policy(), at(12.0)).expiring,
            None
        );
    }

    #[test]
    fn on_demand_keys_warn_only_after_a_rotation() {
        let (k0, k5) = (id(0.0), id(5.0));
        let used = BTreeMap::from([(k0.clone(), at(5.5)), (k5.clone(), at(5.5))]);
        // The only key never expires: no warning, nothing to wake up for.
        let check = expiry_warning(&[&k0], &used, on_demand(), at(5.0));
        assert_eq!(check, ExpiryCheck::default());
        // Rotated on demand at 5 h, grace 2 h < warning 3 h: the old key, used after the
        // rotation, is warned about at once; the new one never expires.
        let check = expiry_warning(&[&k0, &k5], &used, on_demand(), at(6.0));
        assert_eq!(
            check.expiring.map(|e| (e.key_id, e.stops_at)),
            Some((k0, at(7.0)))
        );
        assert_eq!(check.next_check, None);
    }
}
