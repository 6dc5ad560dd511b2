//! What a tenant is outside Kubernetes: its claims (tenant id, repositories) and its
//! minted credentials (a database login and a broker user), behind one trait so the
//! reconcile can be tested without the platform's database and broker.
//!
//! The production implementation ([`crate::platform_accounts`]) keeps the claims in
//! PostgreSQL (where row-level security enforces them again for every stored report)
//! and manages broker users through RabbitMQ's management API. Both hold the platform's
//! admin credentials, which therefore stay with the operator.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use uuid::Uuid;

/// A claim or credential operation failed; the message never holds a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccountError(pub String);

// Claims are recorded in the platform database; its types are the trait's.
pub use crate::database::{Claimant, RepositoryClaims, TenantClaim};

/// One generation of a tenant's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialSet {
    /// Short id, also part of the login and user names.
    pub id: String,
    pub database_login: String,
    pub database_password: String,
    pub amqp_user: String,
    pub amqp_password: String,
}

impl std::fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSet")
            .field("id", &self.id)
            .field("database_login", &self.database_login)
            .field("amqp_user", &self.amqp_user)
            .finish_non_exhaustive()
    }
}

/// What a tenant's broker user may do: publish to `exchange` with `routing_key`, nothing
/// else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub exchange: String,
    pub routing_key: String,
}

/// The tenant's connection URLs for one credential set.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantUrls {
    pub database_url: String,
    pub amqp_url: String,
}

/// Claims and credentials of tenants. Every operation is idempotent.
pub trait Accounts: Send + Sync {
    /// Claims `tenant` for `who`, atomically: of two claimants exactly one gets it.
    fn claim_tenant<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<TenantClaim, AccountError>>;

    /// Claims each repository for `tenant` (first claimant wins) and releases the
    /// tenant's repositories not listed any more.
    fn claim_repositories<'a>(
        &'a self,
        tenant: &'a str,
        repositories: &'a [Uuid],
    ) -> BoxFuture<'a, Result<RepositoryClaims, AccountError>>;

    /// A fresh credential set for `tenant`: new id, names and random passwords. Creates
    /// nothing yet.
    fn mint(&self, tenant: &str) -> Result<CredentialSet, AccountError>;

    /// Creates or updates the database login and broker user of `set`, with exactly the
    /// rights a tenant's pods need.
    fn ensure<'a>(
        &'a self,
        tenant: &'a str,
        set: &'a CredentialSet,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<(), AccountError>>;

    /// Revokes every credential set of `tenant` except `keep` (by id).
    fn revoke_except<'a>(
        &'a self,
        tenant: &'a str,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<(), AccountError>>;

    /// When `who` holds `tenant`: revokes all its credentials and releases its
    /// repositories and the tenant id. Stored reports and audit rows stay. Does nothing
    /// when another endpoint holds the tenant.
    fn release<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<(), AccountError>>;

    /// The URLs the tenant's pods connect with, using `set`.
    fn urls(&self, set: &CredentialSet) -> Result<TenantUrls, AccountError>;

    /// When each HMAC key id of `tenant` last verified a request, as its ingest pods
    /// report it (at most a minute late). Keys never seen verifying are absent.
    fn key_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Timestamp>, AccountError>>;
}
