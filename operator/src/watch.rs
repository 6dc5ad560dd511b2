//! The watches that trigger reconciles, each with its own bounded backoff.
//!
//! `Controller::new(..).owns(..)` puts every watch behind one shared trigger backoff
//! (client-go's: 0.8 s doubling to 30 s, plus up to as much again of jitter). While it
//! backs off no watch is polled, and an error from any watch lengthens the pause of all.
//! After an API server restart each watch reports refused connections and then a 410
//! Expired as it resumes from a resource version the new server no longer has, so the
//! operator saw changes made right after a restart only 85–122 s later.
//!
//! Here each watch (endpoints, and the Deployments, Secrets and ConfigMaps they own)
//! backs off on its own with [`WatchBackoff`], at most [`MAX_DELAY`] apart, and resets as
//! soon as it delivers anything. Its errors are logged here and not passed on, so the
//! controller's shared backoff never engages.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::{Stream, StreamExt, future};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, reflector};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

/// First pause after a watch error: a dropped connection to a healthy API server is
/// re-established almost at once.
const MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest pause between attempts: a restarted API server is noticed within this.
/// client-go uses 30 s to spare struggling API servers; one operator's four watches are
/// not a load that needs it.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Exponential backoff from [`MIN_DELAY`], doubling up to [`MAX_DELAY`], each pause
/// drawn from its upper half so that watches failing together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: MIN_DELAY }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.next;
        self.next = self.next.saturating_mul(2).min(MAX_DELAY);
        Some(ceiling.mul_f64(rand::random_range(0.5..=1.0)))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = MIN_DELAY;
    }
}

/// Logs and drops a watch error: the watch's own backoff already paused it.
fn without_errors<K>(
    kind: String,
) -> impl FnMut(watcher::Result<K>) -> future::Ready<Option<watcher::Result<K>>> {
    move |item| {
        future::ready(match item {
            Ok(obj) => Some(Ok(obj)),
            Err(error) => {
                warn!(watch = %kind, %error, "watch failed; retrying");
                None
            }
        })
    }
}

/// What of an endpoint asks for work: its spec (through `metadata.generation`, which
/// also moves when deletion starts), its annotations (rotation requests, cleanup
/// overrides), labels and finalizers. Its status does not: the operator writes it, and
/// each of those writes used to come back as a trigger for one more reconcile.
pub fn wants_reconcile<K: Resource>(obj: &K) -> Option<u64> {
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::labels)
        .combine(predicates::finalizers)
        .hash_property(obj)
}

/// The controller's own watch: every applied object of `api`, cached in `writer`; only
/// changes that [`wants_reconcile`] sees are passed on (the cache holds every change).
pub fn primary<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = watcher::Result<K>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + std::hash::Hash,
{
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wants_reconcile, PredicateConfig::default())
        .filter_map(without_errors(
            K::kind(&K::DynamicType::default()).into_owned(),
        ))
}

/// A watch of owned objects, metadata only (their owner references are all it needs).
/// Objects for which `own_write` holds (the echo of the operator's own write) are
/// dropped: they ask for nothing the write's reconcile did not already do.
pub fn owned<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    own_write: impl Fn(&ObjectMeta) -> bool + Send + 'static,
) -> impl Stream<Item = watcher::Result<PartialObjectMeta<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .touched_objects()
        .filter_map(without_errors(K::kind(&()).into_owned()))
        .filter(move |object| future::ready(!matches!(object, Ok(o) if own_write(&o.metadata))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorpipe_crds::v1alpha1::IngestionEndpoint;

    fn endpoint() -> IngestionEndpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "anchorpipe.dev/v1alpha1",
            "kind": "IngestionEndpoint",
            "metadata": {"name": "a", "namespace": "t", "generation": 1, "resourceVersion": "10"},
            "spec": {"repositories": ["r"]},
        }))
        .expect("a valid endpoint")
    }

    #[test]
    fn status_writes_do_not_trigger_but_spec_and_metadata_changes_do() {
        let before = endpoint();
        let hash = |e: &IngestionEndpoint| wants_reconcile(e);

        let mut status_only = before.clone();
        status_only.metadata.resource_version = Some("11".into());
        status_only.status = Some(Default::default());
        assert_eq!(hash(&status_only), hash(&before));

        let mut spec = before.clone();
        spec.metadata.generation = Some(2);
        assert_ne!(hash(&spec), hash(&before));

        let mut annotated = before.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("anchorpipe.dev/rotate".into(), "now".into());
        assert_ne!(hash(&annotated), hash(&before));

        let mut finalized = before.clone();
        finalized.metadata.finalizers = Some(vec!["anchorpipe.dev/cleanup".into()]);
        assert_ne!(hash(&finalized), hash(&before));
    }

    #[test]
    fn backoff_doubles_to_a_bounded_maximum_and_resets() {
        let mut backoff = WatchBackoff::default();
        let pauses: Vec<Duration> = backoff.by_ref().take(12).collect();
        let mut ceiling = MIN_DELAY;
        for pause in &pauses {
            assert!(
                *pause >= ceiling / 2 && *pause <= ceiling,
                "{pause:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(MAX_DELAY);
        }
        // Capped: an API server back after a long outage is seen within MAX_DELAY.
        assert!(pauses.iter().all(|p| *p <= MAX_DELAY));
        assert!(pauses[8..].iter().all(|p| *p >= MAX_DELAY / 2));
        backoff.reset();
        assert!(backoff.next().is_some_and(|p| p <= MIN_DELAY));
    }
}
