//! The CRD manifest, generated from the Rust types in `anchorpipe-crds`.
//!
//! `anchorpipe-operator crd` prints it; the committed copy in
//! `crds/yaml/ingestionendpoint.yaml` is checked against it by a test, so the types and
//! the manifest users install cannot drift apart.

use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use kube::CustomResourceExt;

use crate::error::{Error, Result};

/// The CRD as YAML, the form users `kubectl apply`.
pub fn crd_yaml() -> Result<String> {
    serde_saphyr::to_string(&IngestionEndpoint::crd()).map_err(|e| Error::Serialize {
        what: "CustomResourceDefinition",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regenerate with `cargo run -p anchorpipe-operator -- crd > crds/yaml/ingestionendpoint.yaml`.
    #[test]
    fn committed_crd_matches_the_types() {
        let committed = include_str!("../../crds/yaml/ingestionendpoint.yaml");
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/yaml/ingestionendpoint.yaml is stale; regenerate it with \
             `cargo run -p anchorpipe-operator -- crd > crds/yaml/ingestionendpoint.yaml`"
        );
    }

    /// The chart installs its own copy (Helm reads `crds/` verbatim, no templating).
    #[test]
    fn chart_crd_matches_the_types() {
        let chart = include_str!("../../charts/anchorpipe/crds/ingestionendpoint.yaml");
        assert!(
            chart == crd_yaml().unwrap(),
            "charts/anchorpipe/crds/ingestionendpoint.yaml is stale; copy crds/yaml/ingestionendpoint.yaml there"
        );
    }

    /// The YAML says exactly what the types say (no folding or quoting surprises in
    /// long CEL rules).
    #[test]
    fn crd_yaml_parses_back_to_the_same_crd() {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&crd_yaml().unwrap()).unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("ingestionendpoints.anchorpipe.dev")
        );
        assert_eq!(
            serde_json::to_value(&crd).unwrap(),
            serde_json::to_value(IngestionEndpoint::crd()).unwrap()
        );
    }
}
