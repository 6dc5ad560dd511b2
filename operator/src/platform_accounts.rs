//! [`Accounts`] on the platform's own services: claims and database logins in
//! PostgreSQL ([`crate::database`]), broker users through RabbitMQ's management API
//! ([`crate::broker_users`]). This is where the platform's admin credentials are used;
//! the URLs handed to tenants carry only the tenant's minted credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use uuid::Uuid;

use crate::accounts::{
    AccountError, Accounts, Claimant, CredentialSet, Grant, RepositoryClaims, TenantClaim,
    TenantUrls,
};
use crate::broker_users::{self, BrokerUsers, TenantGrant};
use crate::database::{self, TenantDb};

/// Claims and credentials on the platform database and broker.
pub struct PlatformAccounts {
    /// Also reads the `key_usage` table, as the owner.
    db: TenantDb,
    users: Arc<dyn BrokerUsers>,
    /// The owner's URL: tenant URLs reuse its host, port, database and parameters.
    database_url: String,
    /// The broker admin's URL: tenant URLs reuse its host, port and vhost.
    amqp_url: String,
    vhost: String,
    /// Per tenant: which credential set and grant [`Accounts::ensure`] last confirmed,
    /// and when. A tenant's reconciles come in bursts while it converges (its own
    /// Deployment's progress wakes it), and confirming again what was just confirmed
    /// costs a database round trip and five management API calls each time.
    ensured: Mutex<HashMap<String, (u64, Instant)>>,
}

/// How long a confirmed login and broker user are taken to be still there. Longer than
/// a burst of reconciles, shorter than the resync period, so a resync still finds and
/// repairs a login or user removed behind the operator's back.
pub const REVERIFY_AFTER: Duration = Duration::from_secs(60);

/// What an ensured credential set and grant are remembered by (a hash: the passwords
/// are part of it, since a changed password must be set).
fn fingerprint(set: &CredentialSet, grant: &Grant) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        &set.id,
        &set.database_login,
        &set.database_password,
        &set.amqp_user,
        &set.amqp_password,
        &grant.exchange,
        &grant.routing_key,
    )
        .hash(&mut hasher);
    hasher.finish()
}

fn failed(what: &str, e: impl std::fmt::Display) -> AccountError {
    AccountError(format!("{what}: {e}"))
}

impl PlatformAccounts {
    pub fn new(
        db: TenantDb,
        users: Arc<dyn BrokerUsers>,
        database_url: String,
        amqp_url: String,
    ) -> Result<Self, AccountError> {
        let vhost = broker_users::vhost_of(&amqp_url).map_err(|e| failed("broker URL", e))?;
        Ok(Self {
            db,
            users,
            database_url,
            amqp_url,
            vhost,
            ensured: Mutex::new(HashMap::new()),
        })
    }

    fn ensured(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        match self.ensured.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The broker user name prefix of every credential set of `tenant`.
    fn user_prefix(tenant: &str) -> String {
        broker_users::user_name(tenant, "")
    }

    /// Whether `user` is one of `tenant`'s own users: the prefix followed by a credential
    /// id and nothing else. (Tenant `a.b`'s prefix also starts tenant `a.b-c`'s users;
    /// their rest is not a bare id.)
    fn is_users_of(tenant: &str, user: &str) -> bool {
        user.strip_prefix(&Self::user_prefix(tenant))
            .is_some_and(|id| {
                id.len() == CREDENTIAL_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
            })
    }
}

impl PlatformAccounts {
    /// Drops the tenant's database logins but those of the sets in `keep`.
    async fn revoke_logins_except(
        &self,
        tenant: &str,
        keep: &[String],
    ) -> Result<(), AccountError> {
        let kept: Vec<String> = keep
            .iter()
            .map(|id| database::login_name(tenant, id))
            .collect();
        for login in self
            .db
            .logins(tenant)
            .await
            .map_err(|e| failed("listing logins", e))?
        {
            if !kept.contains(&login) {
                self.db
                    .drop_login(&login)
                    .await
                    .map_err(|e| failed("dropping a login", e))?;
            }
        }
        Ok(())
    }

    /// Deletes the tenant's broker users but those of the sets in `keep`.
    async fn revoke_broker_users_except(
        &self,
        tenant: &str,
        keep: &[String],
    ) -> Result<(), AccountError> {
        let kept: Vec<String> = keep
            .iter()
            .map(|id| broker_users::user_name(tenant, id))
            .collect();
        for user in self
            .users
            .users_with_prefix(&Self::user_prefix(tenant))
            .await
            .map_err(|e| failed("listing broker users", e))?
        {
            if Self::is_users_of(tenant, &user) && !kept.contains(&user) {
                self.users
                    .delete_user(&user)
                    .await
                    .map_err(|e| failed("deleting a broker user", e))?;
            }
        }
        Ok(())
    }
}

/// Hex digits of a credential set id.
const CREDENTIAL_ID_LEN: usize = 8;

/// A short random id for a credential set (8 hex digits): part of the login and user
/// names, so each set's names are new.
fn credential_id() -> Result<String, AccountError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 4];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| failed("randomness", e))?;
    Ok(hex::encode(bytes))
}

impl Accounts for PlatformAccounts {
    fn claim_tenant<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<TenantClaim, AccountError>> {
        Box::pin(async move {
            self.db
                .claim_tenant(tenant, who)
                .await
                .map_err(|e| failed("claiming the tenant", e))
        })
    }

    fn claim_repositories<'a>(
        &'a self,
        tenant: &'a str,
        repositories: &'a [Uuid],
    ) -> BoxFuture<'a, Result<RepositoryClaims, AccountError>> {
        Box::pin(async move {
            self.db
                .claim_repositories(tenant, repositories)
                .await
                .map_err(|e| failed("claiming repositories", e))
        })
    }

    fn mint(&self, tenant: &str) -> Result<CredentialSet, AccountError> {
        let id = credential_id()?;
        Ok(CredentialSet {
            database_login: database::login_name(tenant, &id),
            database_password: database::mint_password().map_err(|e| failed("password", e))?,
            amqp_user: broker_users::user_name(tenant, &id),
            amqp_password: database::mint_password().map_err(|e| failed("password", e))?,
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
            let print = fingerprint(set, grant);
            if self
                .ensured()
                .get(tenant)
                .is_some_and(|(last, at)| *last == print && at.elapsed() < REVERIFY_AFTER)
            {
                return Ok(());
            }
            self.db
                .ensure_login(tenant, &set.database_login, &set.database_password)
                .await
                .map_err(|e| failed("database login", e))?;
            let grant = TenantGrant {
                vhost: self.vhost.clone(),
                exchange: grant.exchange.clone(),
                routing_key: grant.routing_key.clone(),
            };
            self.users
                .ensure_user(&set.amqp_user, &set.amqp_password, &grant)
                .await
                .map_err(|e| failed("broker user", e))?;
            self.ensured()
                .insert(tenant.to_owned(), (print, Instant::now()));
            Ok(())
        })
    }

    fn revoke_except<'a>(
        &'a self,
        tenant: &'a str,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            self.ensured().remove(tenant);
            self.revoke_logins_except(tenant, keep).await?;
            self.revoke_broker_users_except(tenant, keep).await
        })
    }

    fn release<'a>(
        &'a self,
        tenant: &'a str,
        who: &'a Claimant,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            // The database first: its claims decide whether a recreated endpoint gets the
            // tenant id back, so they go even when the broker is away.
            let claim = self.claim_tenant(tenant, who).await?;
            if claim != TenantClaim::Ours {
                return Ok(());
            }
            self.ensured().remove(tenant);
            self.db
                .release_tenant(tenant, &who.uid)
                .await
                .map_err(|e| failed("releasing the tenant", e))?;
            self.revoke_broker_users_except(tenant, &[]).await
        })
    }

    fn key_usage<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Timestamp>, AccountError>> {
        Box::pin(async move {
            crate::key_usage::last_verified(self.db.pool(), tenant)
                .await
                .map_err(|e| failed("reading key usage", e))
        })
    }

    fn urls(&self, set: &CredentialSet) -> Result<TenantUrls, AccountError> {
        Ok(TenantUrls {
            database_url: database::tenant_database_url(
                &self.database_url,
                &set.database_login,
                &set.database_password,
            )
            .map_err(|e| failed("database URL", e))?,
            amqp_url: broker_users::tenant_amqp_url(
                &self.amqp_url,
                &set.amqp_user,
                &set.amqp_password,
            )
            .map_err(|e| failed("broker URL", e))?,
        })
    }
}
