//! Tenant broker users against the real RabbitMQ (`scripts/services.sh env`: `AMQP_URL`
//! and `RABBITMQ_MANAGEMENT_URL`, both admin).
//!
//! Each test declares, as admin, the topology of two tenants A and B on an exchange of
//! its own, mints B's user through the management API, connects as B and checks what the
//! broker lets B do. Names carry a random suffix and everything is removed afterwards,
//! so the tests run in parallel with each other and with the rest of the suite.

// A test crate: its helpers panic on broken invariants by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anchorpipe_crds::BrokerTopology;
use anchorpipe_crds::config::QueueType;
use anchorpipe_crds::topology;
use anchorpipe_operator::broker_users::{
    BrokerUserError, BrokerUsers, ManagementApi, TenantGrant, tenant_amqp_url, user_name, vhost_of,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);
/// RabbitMQ's reply code for a refused permission (channel.close ACCESS_REFUSED).
const ACCESS_REFUSED: u16 = 403;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/services.sh env)"))
}

fn admin_amqp_url() -> String {
    env("AMQP_URL")
}

fn api() -> ManagementApi {
    ManagementApi::new(&env("RABBITMQ_MANAGEMENT_URL"), TIMEOUT).unwrap()
}

/// A call to the management API as `user:password` from `RABBITMQ_MANAGEMENT_URL`
/// unless given: the status and the JSON answer. For what the module under test does
/// not expose.
async fn management(
    method: http::Method,
    path: &str,
    credentials: Option<(&str, &str)>,
) -> (u16, Value) {
    use base64::Engine as _;
    use http_body_util::BodyExt as _;
    let url = url::Url::parse(&env("RABBITMQ_MANAGEMENT_URL")).unwrap();
    let (user, password) = credentials.unwrap_or((url.username(), url.password().unwrap_or("")));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let uri = format!(
        "http://{}:{}{path}",
        url.host_str().unwrap(),
        url.port().unwrap_or(80)
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn management_get(path: &str, credentials: Option<(&str, &str)>) -> (u16, Value) {
    management(http::Method::GET, path, credentials).await
}

/// The vhost and topic permissions `user` holds, as the management API lists them.
async fn permissions_of(user: &str) -> (Value, Value) {
    let (status, vhost) = management_get(&format!("/api/users/{user}/permissions"), None).await;
    assert_eq!(status, 200, "{vhost}");
    let (status, topic) =
        management_get(&format!("/api/users/{user}/topic-permissions"), None).await;
    assert_eq!(status, 200, "{topic}");
    (vhost, topic)
}

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// Two tenants on a test-unique exchange, and B's minted user.
struct Fixture {
    suffix: String,
    exchange: String,
    a: BrokerTopology,
    b: BrokerTopology,
    /// Prefix of every user name this test mints.
    user_prefix: String,
    user_b: String,
    password_b: String,
    grant_b: TenantGrant,
    api: ManagementApi,
    admin: Connection,
}

fn tenant_topology(tenant: &str, suffix: &str) -> BrokerTopology {
    BrokerTopology {
        exchange: format!("anchorpipe.test-{suffix}.reports"),
        dead_letter_exchange: format!("anchorpipe.test-{suffix}.reports.dlx"),
        // Classic queues: a quorum queue per test would cost more than the test.
        queue_type: QueueType::Classic,
        ..BrokerTopology::for_tenant(&format!("{tenant}-{suffix}"))
    }
}

fn password() -> String {
    format!("pw-{:032x}", rand::random::<u128>())
}

impl Fixture {
    async fn new() -> Self {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let a = tenant_topology("a", &suffix);
        let b = tenant_topology("b", &suffix);
        let admin = connect(&admin_amqp_url()).await.unwrap();
        let channel = admin.create_channel().await.unwrap();
        topology::declare(&channel, &a).await.unwrap();
        topology::declare(&channel, &b).await.unwrap();
        let _ = channel.close(200, "declared".into()).await;

        let tenant_b = format!("b{suffix}");
        let user_prefix = format!("anchorpipe-{tenant_b}-");
        let user_b = user_name(&tenant_b, "1");
        let grant_b = TenantGrant {
            vhost: vhost_of(&admin_amqp_url()).unwrap(),
            exchange: b.exchange.clone(),
            routing_key: b.routing_key.clone(),
        };
        let password_b = password();
        let api = api();
        api.ensure_user(&user_b, &password_b, &grant_b)
            .await
            .unwrap();
        Self {
            suffix,
            exchange: a.exchange.clone(),
            a,
            b,
            user_prefix,
            user_b,
            password_b,
            grant_b,
            api,
            admin,
        }
    }

    fn url_b(&self) -> String {
        tenant_amqp_url(&admin_amqp_url(), &self.user_b, &self.password_b).unwrap()
    }

    async fn connect_b(&self) -> Connection {
        connect(&self.url_b()).await.unwrap()
    }

    async fn admin_channel(&self) -> Channel {
        self.admin.create_channel().await.unwrap()
    }

    /// Takes every message in `queue`, as admin.
    async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        let channel = self.admin_channel().await;
        let mut bodies = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            bodies.push(message.delivery.data.clone());
        }
        let _ = channel.close(200, "drained".into()).await;
        bodies
    }

    /// Whether `queue` exists, as admin (passive declare on a throwaway channel).
    async fn queue_exists(&self, queue: &str) -> bool {
        let channel = self.admin_channel().await;
        let found = channel
            .queue_declare(queue.into(), passive_queue(), FieldTable::default())
            .await
            .is_ok();
        let _ = channel.close(200, "checked".into()).await;
        found
    }

    async fn exchange_exists(&self, exchange: &str) -> bool {
        let channel = self.admin_channel().await;
        let found = channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = channel.close(200, "checked".into()).await;
        found
    }

    async fn cleanup(self) {
        for user in self.api.users_with_prefix(&self.user_prefix).await.unwrap() {
            self.api.delete_user(&user).await.unwrap();
        }
        let channel = self.admin_channel().await;
        topology::delete(&channel, &self.a).await.unwrap();
        topology::delete(&channel, &self.b).await.unwrap();
        for exchange in [&self.a.exchange, &self.a.dead_letter_exchange] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .unwrap();
        }
        let _ = self.admin.close(200, "done".into()).await;
    }
}

/// Runs `test` with a fresh fixture and removes what it created even when `test` fails.
async fn with_fixture(test: impl for<'a> FnOnce(&'a Fixture) -> BoxFuture<'a, ()>) {
    let fixture = Fixture::new().await;
    let outcome = std::panic::AssertUnwindSafe(test(&fixture))
        .catch_unwind()
        .await;
    fixture.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn passive_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Whether the broker closes `connection` within a second (a close is asynchronous).
async fn closed_soon(connection: &Connection) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while connection.status().connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !connection.status().connected()
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Ok(value) => panic!("{what}: allowed ({value:?}), expected ACCESS_REFUSED"),
        Err(error) => assert_eq!(
            reply_code(&error),
            Some(ACCESS_REFUSED),
            "{what}: expected ACCESS_REFUSED, got {error}"
        ),
    }
}

/// Publishes on a fresh confirm channel of `connection` and returns the broker's answer:
/// the confirmation, or the error that closed the channel.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<Confirmation, lapin::Error> {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?;
    let confirmation = confirm.await;
    let _ = channel.close(200, "published".into()).await;
    confirmation
}

#[tokio::test]
async fn b_publishes_with_its_own_routing_key_and_the_message_reaches_its_queue() {
    with_fixture(|fx| {
        Box::pin(async move {
            let b = fx.connect_b().await;
            let confirmation = publish(&b, &fx.b.exchange, &fx.b.routing_key, b"report-b")
                .await
                .unwrap();
            assert!(
                matches!(confirmation, Confirmation::Ack(None)),
                "expected a plain ack, got {confirmation:?}"
            );
            assert_eq!(fx.drain(&fx.b.queue).await, vec![b"report-b".to_vec()]);
            assert!(fx.drain(&fx.a.queue).await.is_empty());
            let _ = b.close(200, "done".into()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn ensure_user_grants_exactly_the_tenant_permissions_and_no_management_access() {
    with_fixture(|fx| {
        Box::pin(async move {
            let (vhost, topic) = permissions_of(&fx.user_b).await;
            let escaped = |s: &str| s.replace('.', r"\.").replace('-', r"\-");
            assert_eq!(
                vhost,
                json!([{
                    "user": fx.user_b, "vhost": fx.grant_b.vhost,
                    "configure": "^$", "write": format!("^{}$", escaped(&fx.b.exchange)),
                    "read": "^$",
                }])
            );
            assert_eq!(
                topic,
                json!([{
                    "user": fx.user_b, "vhost": fx.grant_b.vhost, "exchange": fx.b.exchange,
                    "write": format!("^{}$", escaped(&fx.b.routing_key)), "read": "^$",
                }])
            );
            // No tags: the tenant user cannot use the management API at all.
            let (status, _) =
                management_get("/api/overview", Some((&fx.user_b, &fx.password_b))).await;
            assert_eq!(status, 401);
            let (status, _) = management_get(&format!("/api/users/{}", fx.user_b), None).await;
            assert_eq!(status, 200);
        })
    })
    .await;
}

#[tokio::test]
async fn b_publishing_with_the_routing_key_of_a_is_refused_and_nothing_reaches_a() {
    with_fixture(|fx| {
        Box::pin(async move {
            let b = fx.connect_b().await;
            // The topic permission: the right exchange, another tenant's key.
            assert_refused(
                "publish with A's routing key",
                publish(&b, &fx.b.exchange, &fx.a.routing_key, b"forged").await,
            );
            // A wildcard-looking key is a key like any other: refused as well.
            assert_refused(
                "publish with a key matching every tenant",
                publish(&b, &fx.b.exchange, "tenant.#", b"forged").await,
            );
            // The write permission: straight into A's queue through the default exchange,
            // or into A's dead-letter queue through the dead-letter exchange.
            assert_refused(
                "publish to A's queue through the default exchange",
                publish(&b, "", &fx.a.queue, b"forged").await,
            );
            assert_refused(
                "publish to the dead-letter exchange",
                publish(&b, &fx.a.dead_letter_exchange, &fx.a.routing_key, b"forged").await,
            );
            assert!(fx.drain(&fx.a.queue).await.is_empty());
            assert!(fx.drain(&fx.a.dead_letter_queue).await.is_empty());
            assert!(fx.drain(&fx.b.queue).await.is_empty());
            // The connection survives a refused publish: only the channel was closed.
            let confirmation = publish(&b, &fx.b.exchange, &fx.b.routing_key, b"ok")
                .await
                .unwrap();
            assert!(matches!(confirmation, Confirmation::Ack(None)));
            let _ = b.close(200, "done".into()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn b_cannot_consume_get_declare_bind_delete_or_purge() {
    with_fixture(|fx| {
        Box::pin(async move {
            let b = fx.connect_b().await;
            // Every refusal closes its channel, so each attempt gets a fresh one.
            macro_rules! refused {
                ($what:expr, |$ch:ident| $op:expr) => {{
                    let $ch = b.create_channel().await.unwrap();
                    assert_refused($what, $op.await);
                }};
            }
            let rogue_queue = format!("anchorpipe.test-{}.rogue", fx.suffix);
            let rogue_exchange = format!("anchorpipe.test-{}.rogue-x", fx.suffix);
            for queue in [&fx.a.queue, &fx.b.queue, &fx.a.dead_letter_queue] {
                refused!(&format!("consume {queue}"), |ch| ch.basic_consume(
                    queue.as_str().into(),
                    "thief".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default()
                ));
                refused!(&format!("basic.get {queue}"), |ch| ch
                    .basic_get(queue.as_str().into(), BasicGetOptions::default()));
                refused!(&format!("purge {queue}"), |ch| ch
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default()));
                refused!(&format!("delete {queue}"), |ch| ch.queue_delete(
                    queue.as_str().into(),
                    QueueDeleteOptions::default()
                ));
            }
            refused!("declare a new queue", |ch| ch.queue_declare(
                rogue_queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default()
            ));
            refused!("declare a server-named exclusive queue", |ch| ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default()
                ));
            refused!("re-declare its own queue (not passive)", |ch| ch
                .queue_declare(
                    fx.b.queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    topology::queue_arguments(&fx.b)
                ));
            refused!("declare a new exchange", |ch| ch.exchange_declare(
                rogue_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default()
            ));
            refused!("re-declare the reports exchange (not passive)", |ch| ch
                .exchange_declare(
                    fx.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default()
                ));
            refused!("delete the reports exchange", |ch| ch.exchange_delete(
                fx.exchange.as_str().into(),
                ExchangeDeleteOptions::default()
            ));
            // Binding its own queue with A's key would copy A's reports into B's queue.
            refused!("bind its queue with A's routing key", |ch| ch.queue_bind(
                fx.b.queue.as_str().into(),
                fx.exchange.as_str().into(),
                fx.a.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default()
            ));
            refused!("bind A's queue with its own key", |ch| ch.queue_bind(
                fx.a.queue.as_str().into(),
                fx.exchange.as_str().into(),
                fx.b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default()
            ));

            // Nothing was created or removed.
            for queue in [
                &fx.a.queue,
                &fx.a.dead_letter_queue,
                &fx.b.queue,
                &fx.b.dead_letter_queue,
            ] {
                assert!(fx.queue_exists(queue).await, "{queue} was deleted");
            }
            assert!(fx.exchange_exists(&fx.exchange).await);
            assert!(!fx.queue_exists(&rogue_queue).await);
            assert!(!fx.exchange_exists(&rogue_exchange).await);
            let _ = b.close(200, "done".into()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn b_passes_the_passive_topology_check_the_ingest_relay_runs() {
    with_fixture(|fx| {
        Box::pin(async move {
            let b = fx.connect_b().await;
            // What `ingest/src/relay.rs::connect` does: check on a throwaway channel, then
            // publish on a confirm channel.
            let probe = b.create_channel().await.unwrap();
            topology::check(&probe, &fx.b).await.unwrap();
            let _ = probe.close(200, "checked".into()).await;
            let channel = b.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let _ = channel.close(200, "done".into()).await;

            // A missing queue is still NOT_FOUND (404), not a permission error: the relay
            // tells "topology missing" from "broker down" by that.
            let missing = BrokerTopology {
                queue: format!("anchorpipe.test-{}.missing", fx.suffix),
                ..fx.b.clone()
            };
            let probe = b.create_channel().await.unwrap();
            let error = topology::check(&probe, &missing).await.unwrap_err();
            assert_eq!(reply_code(&error.source), Some(404), "{error}");
            assert!(error.source.is_amqp_soft_error());

            // Passive declares are authorised for anyone in the vhost, so B can also see
            // that A's queue exists and its message count. A RabbitMQ property, pinned
            // here so that a change shows up.
            let probe = b.create_channel().await.unwrap();
            probe
                .queue_declare(
                    fx.a.queue.as_str().into(),
                    passive_queue(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = b.close(200, "done".into()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn ensure_user_again_with_a_new_password_lets_only_the_new_one_in() {
    with_fixture(|fx| {
        Box::pin(async move {
            let old = fx.url_b();
            let new_password = password();
            // Idempotent: the same call twice changes nothing.
            fx.api
                .ensure_user(&fx.user_b, &fx.password_b, &fx.grant_b)
                .await
                .unwrap();
            connect(&old)
                .await
                .unwrap()
                .close(200, "ok".into())
                .await
                .unwrap();

            let open = connect(&old).await.unwrap();
            fx.api
                .ensure_user(&fx.user_b, &new_password, &fx.grant_b)
                .await
                .unwrap();
            assert!(connect(&old).await.is_err(), "the old password still works");
            // Same rights, new password: a rotation does not cut what is connected.
            assert!(
                !closed_soon(&open).await,
                "a password change closed a connection"
            );
            let _ = open.close(200, "done".into()).await;
            let new = tenant_amqp_url(&admin_amqp_url(), &fx.user_b, &new_password).unwrap();
            let b = connect(&new).await.unwrap();
            // The permissions survived the password change.
            let confirmation = publish(&b, &fx.b.exchange, &fx.b.routing_key, b"after")
                .await
                .unwrap();
            assert!(matches!(confirmation, Confirmation::Ack(None)));
            assert_refused(
                "publish with A's routing key after the change",
                publish(&b, &fx.b.exchange, &fx.a.routing_key, b"forged").await,
            );
            let _ = b.close(200, "done".into()).await;
        })
    })
    .await;
}

#[tokio::test]
async fn ensure_user_with_a_new_exchange_moves_both_permissions_to_it() {
    with_fixture(|fx| {
        Box::pin(async move {
            // A channel that has published keeps that right (RabbitMQ caches it per
            // channel), so ensure_user closes the connections of a user whose rights change.
            let before = fx.connect_b().await;
            let confirmation = publish(&before, &fx.b.exchange, &fx.b.routing_key, b"before")
                .await
                .unwrap();
            assert!(matches!(confirmation, Confirmation::Ack(None)));

            // B's grant moves to A's dead-letter exchange (any other topic exchange will do).
            let moved = TenantGrant {
                exchange: fx.a.dead_letter_exchange.clone(),
                ..fx.grant_b.clone()
            };
            fx.api
                .ensure_user(&fx.user_b, &fx.password_b, &moved)
                .await
                .unwrap();
            assert!(
                closed_soon(&before).await,
                "a connection from before the change is still open"
            );
            let b = fx.connect_b().await;
            assert_refused(
                "publish to the old exchange",
                publish(&b, &fx.b.exchange, &fx.b.routing_key, b"old").await,
            );
            assert_refused(
                "publish to the new exchange with another key",
                publish(&b, &moved.exchange, &fx.a.routing_key, b"forged").await,
            );
            let confirmation = publish(&b, &moved.exchange, &fx.b.routing_key, b"new")
                .await
                .unwrap();
            assert!(matches!(confirmation, Confirmation::Ack(None)));
            let _ = b.close(200, "done".into()).await;
            // Nothing is left on the old exchange.
            let (vhost, topic) = permissions_of(&fx.user_b).await;
            assert_eq!(vhost.as_array().unwrap().len(), 1, "{vhost}");
            let topic = topic.as_array().unwrap();
            assert_eq!(topic.len(), 1, "{topic:?}");
            assert_eq!(topic[0]["exchange"], json!(moved.exchange));
        })
    })
    .await;
}

#[tokio::test]
async fn delete_user_shuts_b_out_and_deleting_a_missing_user_succeeds() {
    with_fixture(|fx| {
        Box::pin(async move {
            let open = fx.connect_b().await;
            fx.api.delete_user(&fx.user_b).await.unwrap();
            assert!(
                connect(&fx.url_b()).await.is_err(),
                "a deleted user connected"
            );
            // RabbitMQ closes the connection opened before the delete on its own
            // (connection_forced, "user ... is deleted").
            assert!(
                closed_soon(&open).await,
                "the deleted user's connection is still open"
            );
            fx.api.delete_user(&fx.user_b).await.unwrap();
            fx.api
                .delete_user(&format!("{}never-minted", fx.user_prefix))
                .await
                .unwrap();
            assert!(
                fx.api
                    .users_with_prefix(&fx.user_prefix)
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
    })
    .await;
}

#[tokio::test]
async fn users_with_prefix_lists_exactly_the_minted_users() {
    with_fixture(|fx| {
        Box::pin(async move {
            let tenant = format!("b{}", fx.suffix);
            let second = user_name(&tenant, "2");
            fx.api
                .ensure_user(&second, &password(), &fx.grant_b)
                .await
                .unwrap();
            let mut expected = vec![fx.user_b.clone(), second.clone()];
            expected.sort();
            assert_eq!(
                fx.api.users_with_prefix(&fx.user_prefix).await.unwrap(),
                expected
            );
            // Another tenant whose name starts the same way is not listed.
            assert!(
                !fx.api
                    .users_with_prefix(&format!("{}2", fx.user_prefix))
                    .await
                    .unwrap()
                    .contains(&fx.user_b)
            );
            fx.api.delete_user(&second).await.unwrap();
            assert_eq!(
                fx.api.users_with_prefix(&fx.user_prefix).await.unwrap(),
                vec![fx.user_b.clone()]
            );
        })
    })
    .await;
}

#[tokio::test]
async fn management_errors_name_the_user_and_never_a_password() {
    let user = format!("anchorpipe-err{:08x}-1", rand::random::<u32>());
    let secret = password();
    let grant = TenantGrant {
        vhost: format!("no-such-vhost-{:08x}", rand::random::<u32>()),
        exchange: "anchorpipe.reports".into(),
        routing_key: "tenant.x.test-run".into(),
    };
    let api = api();
    let error = api.ensure_user(&user, &secret, &grant).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, BrokerUserError::Status { status: 400, .. }),
        "{message}"
    );
    assert!(message.contains(&user), "{message}");
    assert!(!message.contains(&secret), "{message}");
    api.delete_user(&user).await.unwrap();

    // Wrong admin credentials: 401, and the admin password is not in the message.
    let management = url::Url::parse(&env("RABBITMQ_MANAGEMENT_URL")).unwrap();
    let mut wrong = management.clone();
    wrong.set_password(Some("not-the-password")).unwrap();
    let error = ManagementApi::new(wrong.as_str(), TIMEOUT)
        .unwrap()
        .users_with_prefix("anchorpipe-")
        .await
        .unwrap_err();
    assert!(
        matches!(error, BrokerUserError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("not-the-password"));
    let admin_password = management.password().unwrap_or_default().to_owned();

    // Nobody listening: a transport error, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let error = ManagementApi::new(
        &format!("http://admin:{admin_password}@127.0.0.1:{port}"),
        TIMEOUT,
    )
    .unwrap()
    .delete_user(&user)
    .await
    .unwrap_err();
    assert!(
        matches!(error, BrokerUserError::Transport { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&user), "{error}");
    assert!(!error.to_string().contains(&format!(":{admin_password}@")));

    // A server that accepts and never answers: bounded by the timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let error = ManagementApi::new(&format!("http://admin:x@127.0.0.1:{port}"), timeout)
        .unwrap()
        .ensure_user(&user, &secret, &grant)
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerUserError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < timeout * 5);
    assert!(!error.to_string().contains(&secret));
    hold.abort();
}

#[tokio::test]
async fn ensure_user_with_a_new_vhost_removes_every_permission_in_the_old_one() {
    with_fixture(|fx| {
        Box::pin(async move {
            let old_vhost = format!("anchorpipe-test-{}", fx.suffix);
            let path = format!("/api/vhosts/{old_vhost}");
            let (status, _) = management(http::Method::PUT, &path, None).await;
            assert!(
                status == 201 || status == 204,
                "creating {old_vhost}: {status}"
            );
            let elsewhere = TenantGrant {
                vhost: old_vhost.clone(),
                ..fx.grant_b.clone()
            };
            let result = async {
                fx.api
                    .ensure_user(&fx.user_b, &fx.password_b, &elsewhere)
                    .await
                    .unwrap();
                let (vhost, topic) = permissions_of(&fx.user_b).await;
                assert_eq!(vhost.as_array().unwrap().len(), 1, "{vhost}");
                assert_eq!(vhost[0]["vhost"], json!(old_vhost));
                assert_eq!(topic.as_array().unwrap().len(), 1, "{topic}");
                assert_eq!(topic[0]["vhost"], json!(old_vhost));

                fx.api
                    .ensure_user(&fx.user_b, &fx.password_b, &fx.grant_b)
                    .await
                    .unwrap();
                let (vhost, topic) = permissions_of(&fx.user_b).await;
                assert_eq!(vhost.as_array().unwrap().len(), 1, "{vhost}");
                assert_eq!(vhost[0]["vhost"], json!(fx.grant_b.vhost));
                assert_eq!(topic.as_array().unwrap().len(), 1, "{topic}");
                assert_eq!(topic[0]["vhost"], json!(fx.grant_b.vhost));
            };
            let outcome = std::panic::AssertUnwindSafe(result).catch_unwind().await;
            management(http::Method::DELETE, &path, None).await;
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        })
    })
    .await;
}

/// As many users minted at once as a burst of new endpoints asks for: each succeeds the
/// first time (the API bounds its own connections instead of having the broker refuse
/// some), and all of them go again.
#[tokio::test]
async fn a_burst_of_users_minted_and_deleted_at_once_all_succeed_while_others_list() {
    const USERS: usize = 200;
    let api = api();
    let prefix = format!("anchorpipe-burst-{:08x}-", rand::random::<u32>());
    let grant = TenantGrant {
        vhost: vhost_of(&admin_amqp_url()).unwrap(),
        exchange: "anchorpipe.reports".to_owned(),
        routing_key: format!("{prefix}key"),
    };
    let users: Vec<String> = (0..USERS).map(|i| format!("{prefix}{i:04}")).collect();
    let results = futures_util::future::join_all(
        users
            .iter()
            .map(|user| api.ensure_user(user, "pw-burst-0123456789abcdef", &grant)),
    )
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    let listed = api.users_with_prefix(&prefix).await.unwrap();
    // Other tenants' users are listed while these are deleted, as the operator does
    // while another tenant is torn down: RabbitMQ answers such a listing 500 when a user
    // disappears between its listing and its lookup, and that must not surface.
    let done = std::sync::atomic::AtomicBool::new(false);
    let deleting = async {
        let deleted =
            futures_util::future::join_all(users.iter().map(|user| api.delete_user(user))).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        deleted
    };
    let listing = async {
        let mut listings = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            listings.push(api.users_with_prefix("anchorpipe-").await);
        }
        listings
    };
    let (deleted, listings) = tokio::join!(deleting, listing);
    assert!(
        failed.is_empty(),
        "{} of {USERS} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(listed.len(), USERS);
    let not_deleted: Vec<_> = deleted.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(not_deleted.is_empty(), "{not_deleted:?}");
    let not_listed: Vec<_> = listings.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        not_listed.is_empty(),
        "{} of {} listings failed: {not_listed:?}",
        not_listed.len(),
        listings.len()
    );
    assert!(api.users_with_prefix(&prefix).await.unwrap().is_empty());
}
