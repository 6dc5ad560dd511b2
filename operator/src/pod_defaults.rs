//! Where and how every tenant's ingest pods run: registry credentials, node selection,
//! tolerations, affinity and default resources.
//!
//! These are the platform's choice. They come from the operator's start-up configuration
//! (the chart's `ingest.pods` values, passed as one JSON document in
//! `ANCHORPIPE_INGEST_POD_DEFAULTS`) and never from an `IngestionEndpoint`: a tenant's
//! namespace admin cannot pick the nodes their pods land on, tolerate a taint the
//! platform reserved, or name registry credentials. The one per-endpoint setting is
//! `spec.resources`, which overrides [`PodDefaults::resources`].
//!
//! Image pull Secrets are referenced by name in the tenant's namespace (a pod can only
//! use Secrets of its own namespace). The operator does not copy them there: a copy
//! would hand the platform's registry credentials to every tenant namespace admin, who
//! can read Secrets in their namespace. The platform provisions them per namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, PodSpec, ResourceRequirements, Toleration,
};
use serde::{Deserialize, Serialize};

/// Pod settings applied to every endpoint's Deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDefaults {
    /// Names of image pull Secrets, looked up in each tenant's namespace.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub affinity: Option<Affinity>,
    /// Resources of the ingest container when the endpoint sets none.
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
}

/// Why the pod defaults could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodDefaultsError {
    #[error("ingest pod defaults are not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("ingest pod defaults: {0}")]
    Invalid(String),
}

impl PodDefaults {
    /// Parses the JSON document the chart renders; blank text means no defaults.
    pub fn from_json(text: &str) -> Result<Self, PodDefaultsError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut defaults: Self = serde_json::from_str(text)?;
        // `{}` in the chart's values means "not set", not "empty": an empty resources
        // block would otherwise replace the built-in default with no requests at all.
        if defaults.affinity.as_ref() == Some(&Affinity::default()) {
            defaults.affinity = None;
        }
        if defaults.resources.as_ref() == Some(&ResourceRequirements::default()) {
            defaults.resources = None;
        }
        defaults.validate()?;
        Ok(defaults)
    }

    fn validate(&self) -> Result<(), PodDefaultsError> {
        if let Some(bad) = self
            .image_pull_secrets
            .iter()
            .find(|name| !is_dns_subdomain(name))
        {
            return Err(PodDefaultsError::Invalid(format!(
                "imagePullSecrets: `{bad}` is not a Secret name (lowercase letters, digits, '-' and '.', at most 253 characters)"
            )));
        }
        Ok(())
    }

    /// Writes the platform's settings into `pod` (the ingest Deployment's pod template).
    /// Empty settings leave the fields unset, so nothing appears in the applied object.
    pub fn apply_to(&self, pod: &mut PodSpec) {
        pod.image_pull_secrets = (!self.image_pull_secrets.is_empty()).then(|| {
            self.image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        });
        pod.node_selector = (!self.node_selector.is_empty()).then(|| self.node_selector.clone());
        pod.tolerations = (!self.tolerations.is_empty()).then(|| self.tolerations.clone());
        pod.affinity = self.affinity.clone();
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_no_defaults() {
        assert_eq!(
            PodDefaults::from_json("").ok(),
            Some(PodDefaults::default())
        );
        assert_eq!(
            PodDefaults::from_json("  \n").ok(),
            Some(PodDefaults::default())
        );
        assert_eq!(
            PodDefaults::from_json("{}").ok(),
            Some(PodDefaults::default())
        );
    }

    #[test]
    fn the_charts_document_is_read_into_typed_fields() {
        let defaults = PodDefaults::from_json(
            r#"{"imagePullSecrets":["regcred"],
                "nodeSelector":{"pool":"ingest"},
                "tolerations":[{"key":"dedicated","operator":"Equal","value":"ingest","effect":"NoSchedule"}],
                "affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}},
                "resources":{"requests":{"cpu":"200m"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(defaults.image_pull_secrets, ["regcred"]);
        assert_eq!(defaults.node_selector["pool"], "ingest");
        assert_eq!(defaults.tolerations[0].key.as_deref(), Some("dedicated"));
        assert!(defaults.affinity.is_some_and(|a| a.node_affinity.is_some()));
        assert!(defaults.resources.is_some());
    }

    #[test]
    fn empty_blocks_mean_unset() {
        let defaults =
            PodDefaults::from_json(r#"{"affinity":{},"resources":{}}"#).unwrap_or_default();
        assert_eq!(defaults, PodDefaults::default());
        assert!(PodDefaults::from_json(r#"{"affinity":{},"resources":{}}"#).is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        // A typo must not silently drop a setting.
        assert!(PodDefaults::from_json(r#"{"nodeSelecter":{"a":"b"}}"#).is_err());
        assert!(PodDefaults::from_json(r#"{"tolerations":{"key":"x"}}"#).is_err());
        assert!(PodDefaults::from_json(r#"{"imagePullSecrets":[{"name":"regcred"}]}"#).is_err());
        assert!(PodDefaults::from_json("not json").is_err());
    }

    #[test]
    fn pull_secret_names_must_be_object_names() {
        assert!(PodDefaults::from_json(r#"{"imagePullSecrets":["Reg Cred"]}"#).is_err());
        assert!(PodDefaults::from_json(r#"{"imagePullSecrets":[""]}"#).is_err());
        assert!(PodDefaults::from_json(r#"{"imagePullSecrets":["-x"]}"#).is_err());
        assert!(PodDefaults::from_json(r#"{"imagePullSecrets":["reg.cred-1"]}"#).is_ok());
    }

    #[test]
    fn empty_settings_leave_the_pod_spec_untouched() {
        let mut pod = PodSpec::default();
        PodDefaults::default().apply_to(&mut pod);
        assert_eq!(pod, PodSpec::default());
    }
}
