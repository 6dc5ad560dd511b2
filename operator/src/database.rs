//! The database half of tenant isolation: which endpoint holds a tenant id, which
//! tenant owns which repository, and the per-tenant PostgreSQL logins the ingest pods
//! connect with.
//!
//! The operator connects as the database owner (the role that ran the migrations, with
//! CREATEROLE) and writes `tenants`, `repository_owners` and `tenant_logins`
//! (`migrations/20261129000001_tenants.sql`). What a minted login may then do is decided
//! in the database, by the group role `anchorpipe_tenant`'s grants and the row-level
//! security policies, which read these tables: the checks made here are enforced again
//! there, so a wrong spec cannot cross tenants.
//!
//! Passwords never reach the server in clear: [`TenantDb::ensure_login`] sends a
//! SCRAM-SHA-256 verifier computed here, as a bind parameter, and the role statements
//! are formatted server-side (`format('%I', …)`, `format('%L', …)`). Nothing here logs a
//! password, a verifier or a URL with credentials.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// The group role every minted login is a member of (created by the migration).
pub const TENANT_GROUP: &str = "anchorpipe_tenant";

/// PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1); a longer login name
/// would silently become another name.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Connections the operator holds: it makes a few short transactions per reconcile
/// (claims, key usage, a login's role and grants). With 2, 250 endpoints applied at once
/// queued behind each other: a reconcile took 5.2 s on average, mostly waiting for a
/// connection. A handful lets the burst through without loading PostgreSQL.
const POOL_MAX_CONNECTIONS: u32 = 8;

/// A reconcile must not hang on an unreachable database; it fails and is retried.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Random bytes in a minted password (256 bits).
const PASSWORD_BYTES: usize = 32;

/// SCRAM-SHA-256 iteration count, PostgreSQL's default (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// SCRAM salt length, as PostgreSQL generates it.
const SCRAM_SALT_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),

    /// The owner URL does not parse; the message never contains the URL itself.
    #[error("invalid database URL: {0}")]
    Url(String),

    #[error(
        "invalid login name `{0}`: must be 1 to 63 lowercase letters, digits or '_', not starting with a digit"
    )]
    InvalidLogin(String),

    #[error("the password must not be empty")]
    EmptyPassword,

    #[error("tenant `{0}` is not claimed")]
    TenantNotClaimed(String),

    /// The login is recorded for another tenant (two tenant ids mapped to one name).
    #[error("login `{login}` belongs to tenant `{owner}`")]
    LoginOfAnotherTenant { login: String, owner: String },

    /// A role of that name exists and is not one of this database's tenant logins: it is
    /// never adopted, altered or dropped.
    #[error("role `{0}` exists and is not a tenant login of this database")]
    ForeignRole(String),

    #[error("no randomness available: {0}")]
    Random(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The IngestionEndpoint that claims (or holds) a tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The outcome of [`TenantDb::claim_tenant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantClaim {
    /// The tenant id is held by this endpoint (same uid).
    Ours,
    /// Another endpoint holds it.
    Taken(Claimant),
}

/// The outcome of [`TenantDb::claim_repositories`], each list in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryClaims {
    /// Repositories the tenant owns now.
    pub owned: Vec<Uuid>,
    /// Repositories another tenant owns; the tenant cannot store reports for them.
    pub taken: Vec<Uuid>,
}

/// The operator's handle on the platform database, connected as its owner.
#[derive(Debug, Clone)]
pub struct TenantDb {
    pool: PgPool,
}

impl TenantDb {
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// A small lazy pool: the operator starts (and serves its other duties) while the
    /// database is away, and each use fails after [`POOL_ACQUIRE_TIMEOUT`].
    pub fn connect(owner_url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_MAX_CONNECTIONS)
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .connect_lazy(owner_url)?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claims `tenant` for `who`, or reports who holds it. Atomic: of concurrent
    /// claimants exactly one inserts, the others wait for its commit and see it.
    pub async fn claim_tenant(&self, tenant: &str, who: &Claimant) -> Result<TenantClaim> {
        // A release can delete the row between the two statements; then claim again.
        for _ in 0..3 {
            sqlx::query(
                "INSERT INTO tenants (tenant, endpoint_namespace, endpoint_name, endpoint_uid)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant) DO NOTHING",
            )
            .bind(tenant)
            .bind(&who.namespace)
            .bind(&who.name)
            .bind(&who.uid)
            .execute(&self.pool)
            .await?;
            // A new statement, so a new snapshot: it sees a conflicting claim's commit.
            let holder: Option<(String, String, String)> = sqlx::query_as(
                "SELECT endpoint_namespace, endpoint_name, endpoint_uid
                 FROM tenants WHERE tenant = $1",
            )
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
            if let Some((namespace, name, uid)) = holder {
                let claim = if uid == who.uid {
                    TenantClaim::Ours
                } else {
                    TenantClaim::Taken(Claimant {
                        namespace,
                        name,
                        uid,
                    })
                };
                tracing::debug!(
                    tenant,
                    ours = matches!(claim, TenantClaim::Ours),
                    "tenant claim"
                );
                return Ok(claim);
            }
        }
        Err(Error::TenantNotClaimed(tenant.to_owned()))
    }

    /// Makes `repos` the tenant's repositories, as far as no other tenant owns them:
    /// claims the free ones and releases the tenant's repositories not listed any more,
    /// in one transaction. Concurrent claims of one repository leave exactly one owner
    /// (the insert waits for a concurrent inserter's commit and then sees its row).
    pub async fn claim_repositories(
        &self,
        tenant: &str,
        repos: &[Uuid],
    ) -> Result<RepositoryClaims> {
        let mut wanted: Vec<Uuid> = Vec::with_capacity(repos.len());
        for repo in repos {
            if !wanted.contains(repo) {
                wanted.push(*repo);
            }
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        lock_tenant(&mut tx, tenant).await?;
        let released =
            sqlx::query("DELETE FROM repository_owners WHERE tenant = $1 AND repo_id <> ALL($2)")
                .bind(tenant)
                .bind(&wanted)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query(
            "INSERT INTO repository_owners (repo_id, tenant)
             SELECT repo, $1 FROM unnest($2::uuid[]) AS repo
             ON CONFLICT (repo_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&wanted)
        .execute(&mut *tx)
        .await?;
        let owners: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT repo_id, tenant FROM repository_owners WHERE repo_id = ANY($1)")
                .bind(&wanted)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;

        let mut claims = RepositoryClaims::default();
        for repo in wanted {
            let ours = owners
                .iter()
                .any(|(id, owner)| *id == repo && owner == tenant);
            if ours {
                claims.owned.push(repo);
            } else {
                claims.taken.push(repo);
            }
        }
        tracing::debug!(
            tenant,
            owned = claims.owned.len(),
            taken = claims.taken.len(),
            released,
            "repository claims"
        );
        Ok(claims)
    }

    /// Makes `login` a login of `tenant` with `password`: creates the role (LOGIN,
    /// member of [`TENANT_GROUP`], recorded in `tenant_logins`) or, if it is already this
    /// tenant's login, sets its password. The group holds the privileges, including
    /// CONNECT on this database, so the login holds none of its own. A role of that name
    /// that is not this tenant's login is refused, never adopted.
    pub async fn ensure_login(&self, tenant: &str, login: &str, password: &str) -> Result<()> {
        check_login(login)?;
        if password.is_empty() {
            return Err(Error::EmptyPassword);
        }
        let verifier = scram_verifier(password)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        lock_tenant(&mut tx, tenant).await?;
        let recorded: Option<(String,)> =
            sqlx::query_as("SELECT tenant FROM tenant_logins WHERE login = $1 FOR UPDATE")
                .bind(login)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((owner,)) = &recorded
            && owner != tenant
        {
            return Err(Error::LoginOfAnotherTenant {
                login: login.to_owned(),
                owner: owner.clone(),
            });
        }
        let (exists,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)")
                .bind(login)
                .fetch_one(&mut *tx)
                .await?;
        if exists && recorded.is_none() {
            return Err(Error::ForeignRole(login.to_owned()));
        }

        // Transaction-local settings carry the values into the DO block, which cannot
        // take parameters; format() quotes them there.
        sqlx::query(
            "SELECT set_config('anchorpipe.login', $1, true),
                    set_config('anchorpipe.verifier', $2, true)",
        )
        .bind(login)
        .bind(&verifier)
        .execute(&mut *tx)
        .await?;
        let statement = if exists {
            // GRANT restores the membership should someone have revoked it.
            "DO $$ BEGIN
                 EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD %L',
                                current_setting('anchorpipe.login'),
                                current_setting('anchorpipe.verifier'));
                 EXECUTE format('GRANT anchorpipe_tenant TO %I',
                                current_setting('anchorpipe.login'));
             END $$"
        } else {
            "DO $$ BEGIN
                 EXECUTE format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
                                 NOREPLICATION NOBYPASSRLS INHERIT PASSWORD %L
                                 IN ROLE anchorpipe_tenant',
                                current_setting('anchorpipe.login'),
                                current_setting('anchorpipe.verifier'));
             END $$"
        };
        sqlx::raw_sql(statement).execute(&mut *tx).await?;
        sqlx::query("SELECT set_config('anchorpipe.verifier', '', true)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tenant_logins (login, tenant) VALUES ($1, $2)
             ON CONFLICT (login) DO NOTHING",
        )
        .bind(login)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            tenant,
            login,
            created = !exists,
            "tenant database login ensured"
        );
        Ok(())
    }

    /// The tenant's logins, sorted.
    pub async fn logins(&self, tenant: &str) -> Result<Vec<String>> {
        let logins: Vec<(String,)> =
            sqlx::query_as("SELECT login FROM tenant_logins WHERE tenant = $1 ORDER BY login")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
        Ok(logins.into_iter().map(|(login,)| login).collect())
    }

    /// Drops a tenant login and its record. Idempotent; a role that is not recorded as
    /// a tenant login (the owner, another database's logins) is left alone.
    pub async fn drop_login(&self, login: &str) -> Result<()> {
        check_login(login)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let recorded: Option<(String,)> =
            sqlx::query_as("SELECT tenant FROM tenant_logins WHERE login = $1 FOR UPDATE")
                .bind(login)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((tenant,)) = recorded else {
            tracing::debug!(login, "not a tenant login; nothing to drop");
            return Ok(());
        };
        drop_role(&mut tx, login).await?;
        sqlx::query("DELETE FROM tenant_logins WHERE login = $1")
            .bind(login)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(tenant, login, "tenant database login dropped");
        Ok(())
    }

    /// Releases `tenant` if the endpoint `uid` holds it: drops its logins, releases its
    /// repositories and the claim, in one transaction. Stored ingestions, audit and
    /// outbox rows are kept. A tenant held by another uid, or not held at all, is left
    /// untouched.
    ///
    /// A session a dropped login still has open keeps running but can do nothing: its
    /// privileges came through the group membership, which is gone, and its tenant
    /// lookup finds no row.
    pub async fn release_tenant(&self, tenant: &str, uid: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let holder: Option<(String,)> =
            sqlx::query_as("SELECT endpoint_uid FROM tenants WHERE tenant = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        match holder {
            None => {
                tracing::debug!(tenant, "tenant not claimed; nothing to release");
                return Ok(());
            }
            Some((holder,)) if holder != uid => {
                tracing::warn!(
                    tenant,
                    uid,
                    holder = %holder,
                    "tenant is held by another endpoint; not releasing it"
                );
                return Ok(());
            }
            Some(_) => {}
        }
        let logins: Vec<(String,)> =
            sqlx::query_as("SELECT login FROM tenant_logins WHERE tenant = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
        for (login,) in &logins {
            drop_role(&mut tx, login).await?;
        }
        // Cascades to tenant_logins and repository_owners.
        sqlx::query("DELETE FROM tenants WHERE tenant = $1 AND endpoint_uid = $2")
            .bind(tenant)
            .bind(uid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            tenant,
            uid,
            logins = logins.len(),
            "tenant released from the database"
        );
        Ok(())
    }
}

/// Locks the tenant's claim row against a concurrent release for the transaction.
async fn lock_tenant(tx: &mut PgConnection, tenant: &str) -> Result<()> {
    let claimed: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM tenants WHERE tenant = $1 FOR SHARE")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    match claimed {
        Some(_) => Ok(()),
        None => Err(Error::TenantNotClaimed(tenant.to_owned())),
    }
}

/// `DROP ROLE IF EXISTS`, the name quoted server-side.
async fn drop_role(tx: &mut PgConnection, login: &str) -> Result<()> {
    sqlx::query("SELECT set_config('anchorpipe.login', $1, true)")
        .bind(login)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "DO $$ BEGIN
             EXECUTE format('DROP ROLE IF EXISTS %I', current_setting('anchorpipe.login'));
         END $$",
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Refuses anything but a plain lower-case identifier: such a name means the same
/// quoted and unquoted, in SQL and in a URL, and is never truncated.
fn check_login(login: &str) -> Result<()> {
    let valid = !login.is_empty()
        && login.len() <= MAX_IDENTIFIER_BYTES
        && !login.starts_with(|c: char| c.is_ascii_digit())
        && login
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidLogin(login.to_owned()))
    }
}

/// The login name for `tenant`'s credential `id`: `ap_<tenant>_<id>`, a plain
/// identifier of at most 63 bytes. Tenant ids are DNS labels of at most 40 characters
/// (`anchorpipe_crds::render::MAX_TENANT_LEN`), so mapping `-` to `_` keeps distinct
/// tenants distinct; anything else is mapped to `_` and cut, and a resulting collision
/// is refused by [`TenantDb::ensure_login`]. The id is cut to what fits.
pub fn login_name(tenant: &str, id: &str) -> String {
    fn plain(s: &str) -> impl Iterator<Item = char> + '_ {
        s.chars().map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
    }
    let mut name = String::from("ap_");
    name.extend(plain(tenant).take(anchorpipe_crds::render::MAX_TENANT_LEN));
    name.push('_');
    let room = MAX_IDENTIFIER_BYTES - name.len();
    name.extend(plain(id).take(room));
    name
}

/// The URL a tenant's pods connect with: the owner's URL (host, port, database and
/// parameters such as `sslmode`) with the tenant's credentials instead, percent-encoded.
/// Errors never contain the URL.
pub fn tenant_database_url(owner_url: &str, login: &str, password: &str) -> Result<String> {
    let mut url = url::Url::parse(owner_url).map_err(|e| Error::Url(e.to_string()))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(Error::Url(format!(
            "scheme `{}` is not postgres or postgresql",
            url.scheme()
        )));
    }
    // The owner's credentials may also sit in the query (`?user=…&password=…`).
    let params: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "user" && key != "password")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    let in_userinfo = url.has_host() && !url.host_str().unwrap_or_default().is_empty();
    if in_userinfo {
        url.set_username(login)
            .and_then(|()| url.set_password(Some(password)))
            .map_err(|()| Error::Url("cannot carry credentials".to_owned()))?;
    } else {
        // A Unix-socket URL (`postgres:///db?host=/run/postgresql`) has no authority.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    if !params.is_empty() || !in_userinfo {
        let mut query = url.query_pairs_mut();
        for (key, value) in &params {
            query.append_pair(key, value);
        }
        if !in_userinfo {
            query.append_pair("user", login);
            query.append_pair("password", password);
        }
    }
    Ok(url.to_string())
}

/// A new password: 32 bytes from the operating system's CSPRNG, base64url without
/// padding (43 characters, safe in URLs and environment variables).
pub fn mint_password() -> Result<String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    random_bytes(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn random_bytes(buffer: &mut [u8]) -> Result<()> {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buffer)
        .map_err(|e| Error::Random(e.to_string()))
}

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, the
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form). PostgreSQL takes
/// a password in this form as already hashed, so the clear password never leaves the
/// operator. Minted passwords are ASCII, which SASLprep leaves unchanged.
fn scram_verifier(password: &str) -> Result<String> {
    let mut salt = [0u8; SCRAM_SALT_BYTES];
    random_bytes(&mut salt)?;
    Ok(scram_verifier_with(password, &salt, SCRAM_ITERATIONS))
}

fn scram_verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    // Hi() is PBKDF2-HMAC-SHA-256 with one output block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac_sha256(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn login_names_are_plain_identifiers_of_at_most_63_bytes() {
        assert_eq!(login_name("acme-ci", "k1"), "ap_acme_ci_k1");
        let long = login_name(&"a".repeat(40), &"x".repeat(40));
        assert_eq!(long.len(), 63);
        assert!(check_login(&long).is_ok());
        let odd = login_name("Té\"st", "Key-1;DROP");
        assert!(check_login(&odd).is_ok(), "{odd}");
        assert_ne!(login_name("a-b", "1"), login_name("a-bb", "1"));
    }

    #[test]
    fn logins_that_need_quoting_are_refused() {
        for bad in ["", "1abc", "Ap_x", "ap-x", "ap x", "ap\"x", &"a".repeat(64)] {
            assert!(check_login(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn minted_passwords_are_long_url_safe_and_distinct() {
        let a = mint_password().unwrap();
        let b = mint_password().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn the_tenant_url_keeps_the_target_and_replaces_the_credentials() {
        let url = tenant_database_url(
            "postgres://owner:s3cret@db.example:5433/anchorpipe?sslmode=require&password=x",
            "ap_acme_k1",
            "p@ss/w:rd?",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://ap_acme_k1:p%40ss%2Fw%3Ard%3F@db.example:5433/anchorpipe?sslmode=require"
        );
        let socket = tenant_database_url(
            "postgres:///anchorpipe?host=/run/postgresql",
            "ap_a_1",
            "pw",
        )
        .unwrap();
        assert_eq!(
            socket,
            "postgres:///anchorpipe?host=%2Frun%2Fpostgresql&user=ap_a_1&password=pw"
        );
        let error = tenant_database_url("mysql://owner:s3cret@h/db", "a", "b").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let error = tenant_database_url("postgres://owner:s3cret@[::1/db", "a", "b").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn scram_verifiers_match_the_rfc_7677_example() {
        // RFC 7677 section 3: password "pencil", this salt, 4096 iterations. The keys are
        // checked against the exchange's client proof and server signature.
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = scram_verifier_with("pencil", &salt, 4096);
        let rest = verifier
            .strip_prefix("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
            .unwrap();
        let (stored, server) = rest.split_once(':').unwrap();
        let (stored, server) = (b64.decode(stored).unwrap(), b64.decode(server).unwrap());
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
        );
        assert_eq!(
            b64.encode(hmac_sha256(&server, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let proof = b64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let signature = hmac_sha256(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
    }
}
