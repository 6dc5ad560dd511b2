//! An in-memory [`Accounts`]: claims and credential sets kept in maps, so the reconcile
//! can be driven without the platform database and broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use anchorpipe_operator::accounts::{
    AccountError, Accounts, Claimant, CredentialSet, Grant, RepositoryClaims, TenantClaim,
    TenantUrls,
};
use futures_util::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use uuid::Uuid;

#[derive(Default)]
pub struct State {
    pub tenants: BTreeMap<String, Claimant>,
    pub repositories: BTreeMap<Uuid, String>,
    /// Tenant → ids of its live credential sets.
    pub credentials: BTreeMap<String, BTreeSet<String>>,
    pub grants: BTreeMap<String, Grant>,
    /// Tenant → key id → when it last verified (what the ingest pods would report).
    pub key_usage: BTreeMap<String, BTreeMap<String, Timestamp>>,
}

#[derive(Default)]
pub struct FakeAccounts {
    pub state: Mutex<State>,
    /// When set, every call fails as if the database were away.
    pub down: AtomicBool,
    next_id: AtomicU32,
}

impl FakeAccounts {
    fn check(&self) -> Result<(), AccountError> {
        if self.down.load(Ordering::SeqCst) {
            Err(AccountError("database unreachable".into()))
        } else {
            Ok(())
        }
    }

    /// Records that `key_id` verified a request at `at`, as an ingest pod would.
    pub fn key_verified(&self, tenant: &str, key_id: &str, at: Timestamp) {
        self.state
            .lock()
            .unwrap()
            .key_usage
            .entry(tenant.to_owned())
            .or_default()
            .insert(key_id.to_owned(), at);
    }

    pub fn live_credentials(&self, tenant: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .credentials
            .get(tenant)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Accounts for FakeAccounts {
    fn claim_tenant<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<TenantClaim, AccountError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.state.lock().unwrap();
            let holder = state
                .tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| who.clone());
            Ok(if holder.uid == who.uid {
                TenantClaim::Ours
            } else {
                TenantClaim::Taken(holder.clone())
            })
        })
    }

    fn claim_repositories<'a>(
        &'a self,
        tenant: &'a str,
        repositories: &'a [Uuid],
    ) -> BoxFuture<'a, Result<RepositoryClaims, AccountError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.state.lock().unwrap();
            state
                .repositories
                .retain(|r, t| t != tenant || repositories.contains(r));
            let mut claims = RepositoryClaims::default();
            for r in repositories {
                let owner = state
                    .repositories
                    .entry(*r)
                    .or_insert_with(|| tenant.to_owned());
                if owner == tenant {
                    claims.owned.push(*r);
                } else {
                    claims.taken.push(*r);
                }
            }
            Ok(claims)
        })
    }

    fn mint(&self, tenant: &str) -> Result<CredentialSet, AccountError> {
        let id = format!("{:08x}", self.next_id.fetch_add(1, Ordering::SeqCst) + 1);
        Ok(CredentialSet {
            database_login: format!("ap_{tenant}_{id}"),
            database_password: format!("db-secret-{id}"),
            amqp_user: format!("anchorpipe-{tenant}-{id}"),
            amqp_password: format!("amqp-secret-{id}"),
            id,
        })
    }

    fn ensure<'a>(
        &'a self,
        tenant: &'a str,
        set: &'a CredentialSet,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.state.lock().unwrap();
            state
                .credentials
                .entry(tenant.to_owned())
                .or_default()
                .insert(set.id.clone());
            state.grants.insert(set.id.clone(), grant.clone());
            Ok(())
        })
    }

    fn revoke_except<'a>(
        &'a self,
        tenant: &'a str,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            self.check()?;
            if let Some(ids) = self.state.lock().unwrap().credentials.get_mut(tenant) {
                ids.retain(|id| keep.contains(id));
            }
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.state.lock().unwrap();
            if state.tenants.get(tenant).is_some_and(|h| h.uid == who.uid) {
                state.tenants.remove(tenant);
                state.repositories.retain(|_, t| t != tenant);
                state.credentials.remove(tenant);
            }
            Ok(())
        })
    }

    fn key_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Timestamp>, AccountError>> {
        Box::pin(async move {
            self.check()?;
            let state = self.state.lock().unwrap();
            Ok(state.key_usage.get(tenant).cloned().unwrap_or_default())
        })
    }

    fn urls(&self, set: &CredentialSet) -> Result<TenantUrls, AccountError> {
        Ok(TenantUrls {
            database_url: format!(
                "postgres://{}:{}@db/anchorpipe",
                set.database_login, set.database_password
            ),
            amqp_url: format!("amqp://{}:{}@broker/%2f", set.amqp_user, set.amqp_password),
        })
    }
}
