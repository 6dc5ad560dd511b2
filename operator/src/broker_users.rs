//! Per-tenant RabbitMQ users, minted and revoked through the management HTTP API.
//!
//! An ingest pod connects with its tenant's own broker user, never the platform admin.
//! That user may publish to one exchange with one routing key, and nothing else:
//!
//! - vhost permissions: configure `^$` (declare or delete nothing), write `^<exchange>$`
//!   (publish to the reports exchange only), read `^$` (consume, get, purge or bind
//!   from nothing);
//! - topic permissions on the exchange: write `^<routing key>$`, read `^$`, so the broker
//!   itself refuses a publish with another tenant's routing key.
//!
//! The pod also checks its topology with passive declares, which RabbitMQ authorises
//! without any permission (`operator/tests/broker_users.rs` holds that to the real broker).
//!
//! [`BrokerUsers::ensure_user`] converges a user on exactly one grant: permissions left
//! in another vhost or on another exchange are removed, and when the rights change the
//! user's connections are closed, because a RabbitMQ channel keeps a right it has used.
//!
//! Names are regex-escaped before they become patterns, and percent-encoded before they
//! become path segments. The admin credentials come from the management URL given to
//! [`ManagementApi::new`]; they are sent only as a Basic authorization header and never
//! appear in an error, nor does a tenant password.
//!
//! HTTP/1 through `hyper-util`'s client, which kube already brings, rather than the
//! `rabbitmq_http_client` crate: that adds reqwest, backtrace and rayon for five calls,
//! and its base64 dependency installs mimalloc as the process's global allocator. Plain
//! `http://` only: the management API is reached inside the cluster.

use std::fmt;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

/// What one tenant's broker user may do: publish to `exchange` in `vhost` with
/// `routing_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantGrant {
    pub vhost: String,
    pub exchange: String,
    pub routing_key: String,
}

/// A management API call or a URL that did not work out. Messages name the operation
/// and the user; they never carry a password or a credential-bearing URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUserError {
    #[error("invalid RabbitMQ management URL: {0}")]
    InvalidManagementUrl(&'static str),
    #[error("invalid AMQP URL: {0}")]
    InvalidAmqpUrl(&'static str),
    #[error("{operation}: the management API did not answer within {timeout:?}")]
    Timeout {
        operation: String,
        timeout: Duration,
    },
    #[error("{operation}: {message}")]
    Transport { operation: String, message: String },
    #[error("{operation}: the management API refused the admin credentials ({status})")]
    Unauthorized { operation: String, status: u16 },
    #[error("{operation}: the management API answered {status}: {reason}")]
    Status {
        operation: String,
        status: u16,
        reason: String,
    },
    #[error("{operation}: unexpected answer: {message}")]
    Body { operation: String, message: String },
}

/// What the operator needs to mint and revoke tenant broker users.
pub trait BrokerUsers: Send + Sync {
    /// Creates `user` or sets its password, and sets its permissions to exactly `grant`
    /// (permissions it holds elsewhere are removed). When its rights change, the user's
    /// open connections are closed so that no channel keeps a right it lost; a password
    /// change alone leaves them open. Idempotent.
    fn ensure_user<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        grant: &'a TenantGrant,
    ) -> BoxFuture<'a, Result<(), BrokerUserError>>;
    /// Deletes `user` with its permissions; RabbitMQ then closes the user's open
    /// connections itself. Deleting a user that does not exist succeeds.
    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BrokerUserError>>;
    /// The names of all users that start with `prefix`, sorted.
    fn users_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerUserError>>;
}

/// The broker user name for a tenant. `id` tells apart the users of one tenant (e.g. a
/// generation during a credential rotation); both parts come from the platform.
pub fn user_name(tenant: &str, id: &str) -> String {
    format!("anchorpipe-{tenant}-{id}")
}

/// The vhost an AMQP URL connects to, read the way lapin reads it: `/%2f` is `/`, no
/// path at all is the default vhost `/`.
pub fn vhost_of(amqp_url: &str) -> Result<String, BrokerUserError> {
    amqp_url
        .parse::<lapin::uri::AMQPUri>()
        // lapin's message may quote the URL, which carries the admin password.
        .map(|uri| uri.vhost)
        .map_err(|_| BrokerUserError::InvalidAmqpUrl("not an amqp:// or amqps:// URL"))
}

/// `admin_amqp_url` with the tenant's credentials instead of the admin's: same scheme,
/// host, port, vhost and query.
pub fn tenant_amqp_url(
    admin_amqp_url: &str,
    user: &str,
    password: &str,
) -> Result<String, BrokerUserError> {
    let mut url = url::Url::parse(admin_amqp_url)
        .map_err(|_| BrokerUserError::InvalidAmqpUrl("not a URL"))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(BrokerUserError::InvalidAmqpUrl(
            "the scheme is not amqp or amqps",
        ));
    }
    // `Url` leaves `%` as it is in userinfo, so encode everything but unreserved
    // characters ourselves; lapin decodes it back.
    let user = utf8_percent_encode(user, USERINFO).to_string();
    let password = utf8_percent_encode(password, USERINFO).to_string();
    url.set_username(&user)
        .and_then(|()| url.set_password(Some(&password)))
        .map_err(|()| BrokerUserError::InvalidAmqpUrl("the URL cannot carry credentials"))?;
    Ok(url.into())
}

/// Userinfo characters kept as they are: RFC 3986 unreserved.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Path segment characters kept as they are; `.` is encoded too so that no name can
/// become a `..` segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `name` as a regular expression (PCRE, RabbitMQ's) that matches only `name` itself.
/// A backslash before an ASCII non-alphanumeric character is always a literal in PCRE,
/// and an escaped `{` also stops RabbitMQ from expanding `{username}` or `{vhost}` in a
/// topic permission.
pub fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A pattern matching exactly `name`.
fn exactly(name: &str) -> String {
    format!("^{}$", regex_escape(name))
}

/// The pattern that matches no resource name RabbitMQ checks (the default exchange is
/// checked as `amq.default`).
const NOTHING: &str = "^$";

/// Largest management API answer read. The biggest is the user list: about 100 bytes
/// per user with `columns=name`, so this holds well over 100,000 tenants' users.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Longest part of a management API error reason kept in an error message.
const MAX_REASON_CHARS: usize = 200;

/// Management API requests in flight at once. Every reconcile makes a few, and the
/// controller runs reconciles without bound: 50 endpoints applied together opened 50
/// connections at once and RabbitMQ's listener refused some (`Connection refused`), so
/// each of those endpoints failed once and waited 5 s for its retry. A few connections
/// kept busy serve the same calls without a refusal.
pub const MAX_IN_FLIGHT: usize = 8;

/// Attempts at a call that a concurrent deletion can make RabbitMQ answer with 500, and
/// the first and longest wait between them. See [`overtaken_by_a_deletion`].
const RACE_ATTEMPTS: usize = 5;
const RACE_MIN_DELAY: Duration = Duration::from_millis(20);
const RACE_MAX_DELAY: Duration = Duration::from_millis(500);

/// Runs an idempotent call again when RabbitMQ answers 500, a few times with jittered
/// backoff, before that answer counts.
///
/// The management API lists first and looks each item up after: `GET /api/users` crashes
/// on a user deleted in between (`rabbit_mgmt_wm_users`, `{badmatch,{error,not_found}}`
/// in the broker's log), and closing a user's connections does on a connection that
/// closed in between. Both happen whenever other tenants are being deleted at the same
/// moment, which is the normal state of a busy operator, so one such answer must not fail
/// a reconcile or a cleanup.
async fn overtaken_by_a_deletion<T, F, Fut>(call: F) -> Result<T, BrokerUserError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerUserError>>,
{
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(RACE_MIN_DELAY)
            .with_max_delay(RACE_MAX_DELAY)
            .with_max_times(RACE_ATTEMPTS - 1)
            .with_jitter(),
    )
    .when(|error| matches!(error, BrokerUserError::Status { status: 500, .. }))
    .await
}

/// RabbitMQ's management HTTP API.
pub struct ManagementApi {
    /// `http://host:port[/prefix]`, without credentials.
    base: String,
    authorization: HeaderValue,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Bounds the requests in flight to [`MAX_IN_FLIGHT`]; waiting for a turn is not
    /// part of a call's timeout (that bounds a hung broker, not a busy operator).
    in_flight: tokio::sync::Semaphore,
}

impl fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementApi")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
}

/// A user's permissions in one vhost, as `GET /api/users/{user}/permissions` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct VhostPermission {
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

/// A user's topic permissions on one exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct TopicPermission {
    vhost: String,
    exchange: String,
    write: String,
    read: String,
}

/// How a call treats 404.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Error,
    Ok,
}

impl ManagementApi {
    /// `management_url` is `http://admin:password@host:port[/path-prefix]`; every call is
    /// bounded by `timeout`.
    pub fn new(management_url: &str, timeout: Duration) -> Result<Self, BrokerUserError> {
        let url = url::Url::parse(management_url)
            .map_err(|_| BrokerUserError::InvalidManagementUrl("not a URL"))?;
        if url.scheme() != "http" {
            return Err(BrokerUserError::InvalidManagementUrl(
                "only http:// is supported",
            ));
        }
        let host = url
            .host_str()
            .ok_or(BrokerUserError::InvalidManagementUrl("no host"))?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| BrokerUserError::InvalidManagementUrl("credentials are not UTF-8"))
        };
        let user = decode(url.username())?;
        let password = decode(url.password().unwrap_or_default())?;
        if user.is_empty() {
            return Err(BrokerUserError::InvalidManagementUrl(
                "no admin user in the URL",
            ));
        }
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut authorization = HeaderValue::try_from(format!("Basic {token}"))
            .map_err(|_| BrokerUserError::InvalidManagementUrl("unusable credentials"))?;
        authorization.set_sensitive(true);
        // `host_str` keeps the brackets of an IPv6 address.
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let base = format!("http://{host}{port}{}", url.path().trim_end_matches('/'));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build_http();
        Ok(Self {
            base,
            authorization,
            timeout,
            client,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// One request, bounded by the timeout; 2xx (and 404 when `missing` says so) is
    /// success. `secret` is scrubbed from any reason the broker sends back.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        operation: &str,
        missing: Missing,
        secret: Option<&str>,
    ) -> Result<Bytes, BrokerUserError> {
        let transport = |message: String| BrokerUserError::Transport {
            operation: operation.to_owned(),
            message,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.authorization.clone());
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| transport(format!("building the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, BrokerUserError>((status, body))
        };
        // The semaphore is never closed; a closed one would only mean no bound.
        let _turn = self.in_flight.acquire().await.ok();
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| BrokerUserError::Timeout {
                operation: operation.to_owned(),
                timeout: self.timeout,
            })??;
        if status.is_success() || (status == StatusCode::NOT_FOUND && missing == Missing::Ok) {
            return Ok(body);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(BrokerUserError::Unauthorized {
                operation: operation.to_owned(),
                status: status.as_u16(),
            });
        }
        Err(BrokerUserError::Status {
            operation: operation.to_owned(),
            status: status.as_u16(),
            reason: reason(&body, secret),
        })
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        operation: &str,
    ) -> Result<T, BrokerUserError> {
        let body = self
            .call(Method::GET, path, None, operation, Missing::Error, None)
            .await?;
        serde_json::from_slice(&body).map_err(|e| BrokerUserError::Body {
            operation: operation.to_owned(),
            message: e.to_string(),
        })
    }

    async fn ensure(
        &self,
        user: &str,
        password: &str,
        grant: &TenantGrant,
    ) -> Result<(), BrokerUserError> {
        let u = segment(user);
        let v = segment(&grant.vhost);
        self.call(
            Method::PUT,
            &format!("/api/users/{u}"),
            Some(json!({ "password": password, "tags": "" })),
            &format!("creating broker user `{user}`"),
            Missing::Error,
            Some(password),
        )
        .await?;

        let wanted = VhostPermission {
            vhost: grant.vhost.clone(),
            configure: NOTHING.to_owned(),
            write: exactly(&grant.exchange),
            read: NOTHING.to_owned(),
        };
        let wanted_topic = TopicPermission {
            vhost: grant.vhost.clone(),
            exchange: grant.exchange.clone(),
            write: exactly(&grant.routing_key),
            read: NOTHING.to_owned(),
        };
        let held: Vec<VhostPermission> = self
            .get(
                &format!("/api/users/{u}/permissions"),
                &format!("reading permissions of `{user}`"),
            )
            .await?;
        let held_topics: Vec<TopicPermission> = self
            .get(
                &format!("/api/users/{u}/topic-permissions"),
                &format!("reading topic permissions of `{user}`"),
            )
            .await?;
        if held.as_slice() == std::slice::from_ref(&wanted)
            && held_topics.as_slice() == std::slice::from_ref(&wanted_topic)
        {
            return Ok(());
        }

        // Topic permissions left on another exchange or vhost (the grant changed). Only
        // all of a vhost's can be cleared at once, and a user with write on an exchange
        // but no topic permission for it may publish with any routing key: so in the
        // grant's vhost, revoke the vhost permissions first; the PUTs below restore them.
        let mut stale: Vec<&str> = held_topics
            .iter()
            .filter(|t| t.vhost != grant.vhost || t.exchange != grant.exchange)
            .map(|t| t.vhost.as_str())
            .collect();
        stale.sort_unstable();
        stale.dedup();
        if stale.contains(&grant.vhost.as_str()) {
            self.call(
                Method::DELETE,
                &format!("/api/permissions/{v}/{u}"),
                None,
                &format!(
                    "revoking permissions of `{user}` in vhost `{}`",
                    grant.vhost
                ),
                Missing::Ok,
                None,
            )
            .await?;
        }
        for vhost in stale {
            self.call(
                Method::DELETE,
                &format!("/api/topic-permissions/{}/{u}", segment(vhost)),
                None,
                &format!("revoking topic permissions of `{user}` in vhost `{vhost}`"),
                Missing::Ok,
                None,
            )
            .await?;
        }

        // Topic permission before the write permission on the exchange, for the same
        // reason: the write is never granted without the routing-key restriction.
        self.call(
            Method::PUT,
            &format!("/api/topic-permissions/{v}/{u}"),
            Some(json!({
                "exchange": wanted_topic.exchange,
                "write": wanted_topic.write,
                "read": wanted_topic.read,
            })),
            &format!(
                "setting topic permissions of `{user}` on exchange `{}` in vhost `{}`",
                grant.exchange, grant.vhost
            ),
            Missing::Error,
            None,
        )
        .await?;
        self.call(
            Method::PUT,
            &format!("/api/permissions/{v}/{u}"),
            Some(json!({
                "configure": wanted.configure,
                "write": wanted.write,
                "read": wanted.read,
            })),
            &format!("setting permissions of `{user}` in vhost `{}`", grant.vhost),
            Missing::Error,
            None,
        )
        .await?;
        for other in held.iter().filter(|p| p.vhost != grant.vhost) {
            self.call(
                Method::DELETE,
                &format!("/api/permissions/{}/{u}", segment(&other.vhost)),
                None,
                &format!(
                    "revoking permissions of `{user}` in vhost `{}`",
                    other.vhost
                ),
                Missing::Ok,
                None,
            )
            .await?;
        }

        // A channel keeps the rights it has already used (RabbitMQ caches permission
        // checks per channel), so narrowed rights only hold once the user reconnects.
        self.close_connections(user).await
    }

    /// Closes every open connection of `user`; see [`overtaken_by_a_deletion`] for its
    /// 500s.
    async fn close_connections(&self, user: &str) -> Result<(), BrokerUserError> {
        let path = format!("/api/connections/username/{}", segment(user));
        let operation = format!("closing the connections of broker user `{user}`");
        overtaken_by_a_deletion(|| {
            self.call(Method::DELETE, &path, None, &operation, Missing::Ok, None)
        })
        .await
        .map(drop)
    }

    /// No separate `DELETE /api/connections/username/{user}`: RabbitMQ closes a deleted
    /// user's connections on its own, and racing it makes that call fail with a 500 for
    /// a connection that just went away.
    async fn delete(&self, user: &str) -> Result<(), BrokerUserError> {
        self.call(
            Method::DELETE,
            &format!("/api/users/{}", segment(user)),
            None,
            &format!("deleting broker user `{user}`"),
            Missing::Ok,
            None,
        )
        .await?;
        Ok(())
    }

    /// The users whose names start with `prefix`; see [`overtaken_by_a_deletion`] for
    /// its 500s.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BrokerUserError> {
        let operation = format!("listing broker users starting with `{prefix}`");
        let users: Vec<NamedUser> =
            overtaken_by_a_deletion(|| self.get("/api/users?columns=name", &operation)).await?;
        let mut names: Vec<String> = users
            .into_iter()
            .map(|u| u.name)
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

impl BrokerUsers for ManagementApi {
    fn ensure_user<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        grant: &'a TenantGrant,
    ) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        Box::pin(self.ensure(user, password, grant))
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        Box::pin(self.delete(user))
    }

    fn users_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerUserError>> {
        Box::pin(self.list(prefix))
    }
}

/// A hyper client error with its causes (the connector's "connection refused" is a
/// source, not part of the top-level message). None of them contains the URL.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The `reason` of a management API error answer (a string, or an Erlang term rendered
/// as JSON), shortened, with `secret` scrubbed.
fn reason(body: &[u8], secret: Option<&str>) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("reason") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(map).to_string(),
        },
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let text = match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "<redacted>"),
        _ => text,
    };
    let mut short: String = text.chars().take(MAX_REASON_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(status: u16) -> BrokerUserError {
        BrokerUserError::Status {
            operation: "listing".to_owned(),
            status,
            reason: String::new(),
        }
    }

    /// Calls that answer `answers` in turn (the last one from then on), counting calls.
    async fn answered(answers: &[Result<(), u16>]) -> (Result<(), BrokerUserError>, usize) {
        let calls = AtomicUsize::new(0);
        let result = overtaken_by_a_deletion(|| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let answer = answers[n.min(answers.len() - 1)];
            async move { answer.map_err(status) }
        })
        .await;
        (result, calls.into_inner())
    }

    #[tokio::test]
    async fn a_500_is_asked_again_and_other_answers_are_not() {
        assert_eq!(answered(&[Err(500), Err(500), Ok(())]).await, (Ok(()), 3));
        assert_eq!(answered(&[Ok(())]).await, (Ok(()), 1));
        // Only the race's answer is retried: a refusal or a client error stands at once.
        assert_eq!(answered(&[Err(400), Ok(())]).await, (Err(status(400)), 1));
        assert_eq!(answered(&[Err(503), Ok(())]).await, (Err(status(503)), 1));
        // A broker that keeps failing is not asked forever.
        assert_eq!(
            answered(&[Err(500)]).await,
            (Err(status(500)), RACE_ATTEMPTS)
        );
    }

    #[test]
    fn regex_escape_makes_every_ascii_symbol_literal() {
        assert_eq!(
            regex_escape("tenant.acme.test-run"),
            r"tenant\.acme\.test\-run"
        );
        assert_eq!(regex_escape("a_b9"), "a_b9");
        assert_eq!(
            regex_escape(r"^x$|.*+?()[]{username}\"),
            r"\^x\$\|\.\*\+\?\(\)\[\]\{username\}\\"
        );
        assert_eq!(exactly("anchorpipe.reports"), r"^anchorpipe\.reports$");
    }

    #[test]
    fn vhost_of_reads_the_path_the_way_lapin_connects() {
        assert_eq!(vhost_of("amqp://u:p@127.0.0.1:5672/%2f").unwrap(), "/");
        assert_eq!(vhost_of("amqp://u:p@rabbit").unwrap(), "/");
        assert_eq!(vhost_of("amqps://u:p@rabbit/tenants").unwrap(), "tenants");
        assert_eq!(vhost_of("amqp://rabbit/a%2Fb").unwrap(), "a/b");
        assert!(vhost_of("http://rabbit/").is_err());
    }

    #[test]
    fn tenant_amqp_url_keeps_the_address_and_encodes_the_credentials() {
        let url = tenant_amqp_url(
            "amqp://admin:s3cret@10.0.0.7:5672/%2f?heartbeat=10",
            "anchorpipe-a-1",
            "p@ss:w/rd%41",
        )
        .unwrap();
        assert_eq!(
            url,
            "amqp://anchorpipe-a-1:p%40ss%3Aw%2Frd%2541@10.0.0.7:5672/%2f?heartbeat=10"
        );
        let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
        assert_eq!(parsed.authority.userinfo.password, "p@ss:w/rd%41");
        assert_eq!(parsed.vhost, "/");
        assert!(!url.contains("s3cret"));
        assert!(tenant_amqp_url("http://h/", "u", "p").is_err());
    }

    #[test]
    fn errors_never_show_the_url_or_the_admin_password() {
        let err = vhost_of("amqp://admin:s3cret@[::1/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        let err = tenant_amqp_url("amqp://admin:s3cret@[::1/", "u", "p").unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        let err = ManagementApi::new("https://admin:s3cret@rabbit:15671", Duration::from_secs(1))
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn management_api_keeps_credentials_out_of_its_base_and_debug() {
        let api = ManagementApi::new(
            "http://ad%40min:s3cret@rabbit.platform:15672/mgmt/",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(api.base, "http://rabbit.platform:15672/mgmt");
        let ipv6 = ManagementApi::new("http://a:b@[::1]:15672", Duration::from_secs(1)).unwrap();
        assert_eq!(ipv6.base, "http://[::1]:15672");
        let no_port = ManagementApi::new("http://a:b@rabbit/", Duration::from_secs(1)).unwrap();
        assert_eq!(no_port.base, "http://rabbit");
        assert!(!format!("{api:?}").contains("s3cret"));
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("ad@min:s3cret");
        assert_eq!(
            api.authorization.to_str().unwrap(),
            format!("Basic {expected}")
        );
    }

    #[test]
    fn reason_is_short_and_scrubbed() {
        assert_eq!(
            reason(
                br#"{"error":"bad_request","reason":"vhost_or_user_not_found"}"#,
                None
            ),
            "vhost_or_user_not_found"
        );
        assert_eq!(
            reason(br#"{"error":"x","reason":["invalid_regexp","^(k$"]}"#, None),
            r#"["invalid_regexp","^(k$"]"#
        );
        assert_eq!(
            reason(br#"{"reason":"bad password pw123"}"#, Some("pw123")),
            "bad password <redacted>"
        );
        assert!(reason("x".repeat(1000).as_bytes(), None).chars().count() <= 201);
    }

    #[test]
    fn paths_encode_slashes_and_dots() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("anchorpipe-a_1"), "anchorpipe-a_1");
        assert_eq!(segment(".."), "%2E%2E");
    }
}
