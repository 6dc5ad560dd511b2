//! The tenant's minted database and broker credentials, as pure decisions over the
//! credentials Secret.
//!
//! The Secret (`<name>-credentials`, in the tenant's namespace) holds one credential set:
//! the URLs the pods read (`database-url`, `amqp-url`) and the login, user and passwords
//! they were built from. Its annotations say which set is current, which one is being
//! retired, and which rotation request was served. A rotation mints a new set and marks
//! the old one retiring; the pod template carries the current set's id, so the pods roll
//! onto the new set, and the old one is revoked once no pod of the old rollout is left.

use std::collections::BTreeMap;

use crate::accounts::CredentialSet;
use crate::builders::{AMQP_URL_KEY, DATABASE_URL_KEY};
use crate::error::Result;

/// Secret and pod template annotation: the id of the credential set in use.
pub const CREDENTIALS_ID_ANNOTATION: &str = "anchorpipe.dev/credentials-id";
/// Secret annotation: the id of the set replaced by a rotation, still valid until the
/// pods have rolled.
pub const RETIRING_ANNOTATION: &str = "anchorpipe.dev/retiring-credentials-id";
/// Secret annotation: the credential rotation request already served.
pub const SERVED_ANNOTATION: &str = "anchorpipe.dev/credentials-rotation-served";

pub const DATABASE_LOGIN_KEY: &str = "database-login";
pub const DATABASE_PASSWORD_KEY: &str = "database-password";
pub const AMQP_USER_KEY: &str = "amqp-user";
pub const AMQP_PASSWORD_KEY: &str = "amqp-password";

/// Why a set was minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintReason {
    Initial,
    Requested,
}

/// What the credentials Secret should hold after this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialPlan {
    pub current: CredentialSet,
    /// The id of the set being retired, if any.
    pub retiring: Option<String>,
    pub minted: Option<MintReason>,
    /// The rotation request now served (to record on the Secret).
    pub served_request: Option<String>,
}

/// The set recorded in the Secret's data and annotations, if complete.
pub fn read(
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<CredentialSet> {
    let get = |key: &str| data.get(key).filter(|v| !v.is_empty()).cloned();
    Some(CredentialSet {
        id: annotations
            .get(CREDENTIALS_ID_ANNOTATION)
            .filter(|v| !v.is_empty())
            .cloned()?,
        database_login: get(DATABASE_LOGIN_KEY)?,
        database_password: get(DATABASE_PASSWORD_KEY)?,
        amqp_user: get(AMQP_USER_KEY)?,
        amqp_password: get(AMQP_PASSWORD_KEY)?,
    })
}

/// Decides the credential set. `data` and `annotations` are the Secret's as read (empty
/// when it does not exist), `request` the endpoint's rotation annotation, `mint` makes a
/// new set.
pub fn plan(
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    request: Option<&str>,
    mint: impl FnOnce() -> Result<CredentialSet>,
) -> Result<CredentialPlan> {
    let served = annotations.get(SERVED_ANNOTATION).cloned();
    let retiring = annotations
        .get(RETIRING_ANNOTATION)
        .filter(|v| !v.is_empty())
        .cloned();
    let Some(existing) = read(data, annotations) else {
        return Ok(CredentialPlan {
            current: mint()?,
            retiring,
            minted: Some(MintReason::Initial),
            // A request made before the first set exists is served by it.
            served_request: request.map(str::to_owned).or(served),
        });
    };
    match request {
        Some(request) if served.as_deref() != Some(request) => Ok(CredentialPlan {
            current: mint()?,
            // A rotation during a rotation: the set in between never reached every pod,
            // the oldest still may have; both go once the pods have rolled.
            retiring: Some(existing.id),
            minted: Some(MintReason::Requested),
            served_request: Some(request.to_owned()),
        }),
        _ => Ok(CredentialPlan {
            current: existing,
            retiring,
            minted: None,
            served_request: served,
        }),
    }
}

/// The Secret's data for `set` with its URLs.
pub fn secret_data(
    set: &CredentialSet,
    database_url: &str,
    amqp_url: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DATABASE_URL_KEY.to_owned(), database_url.to_owned()),
        (AMQP_URL_KEY.to_owned(), amqp_url.to_owned()),
        (DATABASE_LOGIN_KEY.to_owned(), set.database_login.clone()),
        (
            DATABASE_PASSWORD_KEY.to_owned(),
            set.database_password.clone(),
        ),
        (AMQP_USER_KEY.to_owned(), set.amqp_user.clone()),
        (AMQP_PASSWORD_KEY.to_owned(), set.amqp_password.clone()),
    ])
}

/// The Secret's annotations for `plan`.
pub fn secret_annotations(plan: &CredentialPlan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([(
        CREDENTIALS_ID_ANNOTATION.to_owned(),
        plan.current.id.clone(),
    )]);
    if let Some(retiring) = &plan.retiring {
        out.insert(RETIRING_ANNOTATION.to_owned(), retiring.clone());
    }
    if let Some(served) = &plan.served_request {
        out.insert(SERVED_ANNOTATION.to_owned(), served.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(id: &str) -> CredentialSet {
        CredentialSet {
            id: id.into(),
            database_login: format!("ap_t_{id}"),
            database_password: format!("pw-{id}"),
            amqp_user: format!("anchorpipe-t-{id}"),
            amqp_password: format!("apw-{id}"),
        }
    }

    fn stored(plan: &CredentialPlan) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        (
            secret_data(&plan.current, "postgres://x", "amqp://y"),
            secret_annotations(plan),
        )
    }

    #[test]
    fn the_first_reconcile_mints_and_later_ones_keep_the_set() {
        let empty = BTreeMap::new();
        let first = plan(&empty, &empty, None, || Ok(set("a1"))).unwrap();
        assert_eq!(first.minted, Some(MintReason::Initial));
        assert_eq!(first.current.id, "a1");
        let (data, annotations) = stored(&first);
        let again = plan(&data, &annotations, None, || panic!("no mint")).unwrap();
        assert_eq!(again.current, first.current);
        assert_eq!(again.minted, None);
        assert_eq!(again.retiring, None);
    }

    #[test]
    fn a_rotation_request_mints_once_and_retires_the_old_set() {
        let empty = BTreeMap::new();
        let first = plan(&empty, &empty, None, || Ok(set("a1"))).unwrap();
        let (data, annotations) = stored(&first);
        let rotated = plan(&data, &annotations, Some("r1"), || Ok(set("b2"))).unwrap();
        assert_eq!(rotated.minted, Some(MintReason::Requested));
        assert_eq!(rotated.current.id, "b2");
        assert_eq!(rotated.retiring.as_deref(), Some("a1"));
        assert_eq!(rotated.served_request.as_deref(), Some("r1"));
        // The same request is served once.
        let (data, annotations) = stored(&rotated);
        let again = plan(&data, &annotations, Some("r1"), || panic!("no mint")).unwrap();
        assert_eq!(again.current.id, "b2");
        assert_eq!(again.retiring.as_deref(), Some("a1"));
    }

    #[test]
    fn an_incomplete_secret_is_minted_again() {
        let empty = BTreeMap::new();
        let first = plan(&empty, &empty, None, || Ok(set("a1"))).unwrap();
        let (mut data, annotations) = stored(&first);
        data.remove(AMQP_PASSWORD_KEY);
        let again = plan(&data, &annotations, None, || Ok(set("c3"))).unwrap();
        assert_eq!(again.current.id, "c3");
        assert_eq!(again.minted, Some(MintReason::Initial));
    }

    #[test]
    fn debug_output_holds_no_password() {
        let text = format!("{:?}", set("a1"));
        assert!(!text.contains("pw-a1"), "{text}");
    }
}
