//! The operator's one error type.
//!
//! Every error is either *permanent* (only a change to the object can fix it: the
//! controller waits for that change) or *transient* (the API server or the broker may
//! recover: the controller retries with backoff). [`Error::is_permanent`] decides.

use anchorpipe_crds::render::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule the schema should have enforced.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),

    /// The stored object does not even deserialize into the current types.
    #[error("object does not match the IngestionEndpoint schema: {0}")]
    Malformed(String),

    /// An object the operator would write exists and belongs to someone else.
    #[error("{kind} `{name}` exists and is not owned by this IngestionEndpoint")]
    Conflict { kind: &'static str, name: String },

    /// A Secret the user referenced is missing or unusable (they may still create it).
    #[error("Secret `{name}`: {message}")]
    UserSecret { name: String, message: String },

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("broker: {0}")]
    Broker(String),

    /// The endpoint asks for an ingest image the platform does not allow.
    #[error("{0}")]
    ImageNotAllowed(String),

    /// Claiming the tenant, its repositories, or minting or revoking its credentials
    /// failed (the platform database or the broker's management API is away).
    #[error("tenant accounts: {0}")]
    Accounts(#[from] crate::accounts::AccountError),

    /// Deleting the tenant's queues failed; the finalizer is released anyway once
    /// `deadline_in` has passed, so retries must not be spaced beyond it.
    #[error("broker cleanup: {message}")]
    BrokerCleanup {
        message: String,
        deadline_in: std::time::Duration,
    },

    #[error("serializing {what}: {message}")]
    Serialize { what: &'static str, message: String },

    #[error("no randomness available for a new key: {0}")]
    Random(String),

    #[error("object has no {0}")]
    MissingMetadata(&'static str),

    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("leader election: {0}")]
    Lease(String),

    /// `release-finalizers` could not finish (the operator would not stop, or an
    /// endpoint kept changing).
    #[error("release-finalizers: {0}")]
    Release(String),

    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether the API server refused to create an object because its namespace is being
/// deleted. Retrying cannot succeed: the namespace's deletion reaches the endpoint too,
/// and that change starts the cleanup.
fn namespace_terminating(status: &kube::core::Status) -> bool {
    // The NamespaceLifecycle admission plugin answers 403 with this cause; the message is
    // checked too for API servers that leave the cause out.
    status.code == 403
        && (status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
            || status.message.contains("because it is being terminated"))
}

impl Error {
    /// Whether retrying without a change to the object is pointless.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_)
            | Error::ImageNotAllowed(_)
            | Error::Malformed(_)
            | Error::Conflict { .. }
            | Error::Serialize { .. }
            | Error::MissingMetadata(_) => true,
            // 400/422: the API server refused what we built from the spec, e.g. an image
            // reference it cannot accept; resubmitting the same object fails the same way.
            Error::Kube(kube::Error::Api(status)) => {
                matches!(status.code, 400 | 422) || namespace_terminating(status)
            }
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }

    /// The latest a retry may come for this error, if it has a deadline of its own.
    pub fn retry_deadline(&self) -> Option<std::time::Duration> {
        match self {
            Error::BrokerCleanup { deadline_in, .. } => Some(*deadline_in),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_deadline(),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: serde_json::Value) -> Error {
        let status: kube::core::Status = serde_json::from_value(status).unwrap_or_default();
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    fn terminating() -> Error {
        api_error(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
            "reason": "Forbidden",
            "message": "secrets \"acme-hmac\" is forbidden: unable to create new content in namespace tenants because it is being terminated",
            "details": {"name": "acme-hmac", "kind": "secrets",
                        "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                    "message": "namespace tenants is being terminated"}]}
        }))
    }

    #[test]
    fn a_namespace_being_deleted_is_waited_out_not_retried() {
        assert!(terminating().is_permanent());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            terminating(),
        )));
        assert!(wrapped.is_permanent());
        // Without the cause, by the message alone.
        let bare = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden",
            "message": "unable to create new content in namespace tenants because it is being terminated"
        }));
        assert!(bare.is_permanent());
        // Other refusals stay transient: RBAC can be fixed without touching the object.
        let rbac = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden",
            "message": "secrets is forbidden: User \"system:serviceaccount:x:y\" cannot create resource"
        }));
        assert!(!rbac.is_permanent());
    }
}
