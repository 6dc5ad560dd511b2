//! RabbitMQ inspection: what reached a tenant's queue, and whether a queue exists.
//! Each call opens its own connection: a passive declare of a missing queue closes the
//! channel, and tests run in parallel.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::required_env;

async fn open() -> (Connection, Channel) {
    let url = required_env("AMQP_URL");
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to RabbitMQ: {e}"));
    let channel = connection
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("AMQP channel: {e}"));
    (connection, channel)
}

/// Takes (and acks) messages from `queue` until one satisfies `wanted` or `timeout`
/// passes; returns every message body taken, the wanted one last if found.
pub async fn take_until(
    queue: &str,
    timeout: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> (Option<Value>, Vec<Value>) {
    let (connection, channel) = open().await;
    let deadline = Instant::now() + timeout;
    let mut taken = Vec::new();
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap_or_else(|e| panic!("basic_get {queue}: {e}"));
        let Some(message) = message else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let body: Value = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
        channel
            .basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap_or_else(|e| panic!("ack: {e}"));
        if wanted(&body) {
            found = Some(body.clone());
        }
        taken.push(body);
    }
    let _ = connection.close(200, "done".into()).await;
    (found, taken)
}

/// Number of ready messages in `queue`, or `None` when it does not exist.
pub async fn depth(queue: &str) -> Option<u32> {
    let (connection, channel) = open().await;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = connection.close(200, "done".into()).await;
    declared
}

/// Deletes `queues` (missing ones are fine): test clean-up.
pub async fn delete_queues(queues: &[String]) {
    let url = required_env("AMQP_URL");
    let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Publishes one persistent message to `exchange` with `routing_key` on a confirm
/// channel, connected with `url` (a tenant's credentials). `Err` when the broker refuses
/// (the channel is closed, or the publish is not confirmed).
pub async fn publish_as(url: &str, exchange: &str, routing_key: &str) -> Result<(), String> {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let result = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm_select: {e}"))?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?
            .await
            .map_err(|e| format!("confirm: {e}"))?;
        if confirm.is_nack() {
            return Err("nacked".to_owned());
        }
        // A refused publish closes the channel asynchronously; a round trip after it
        // makes the refusal visible.
        channel
            .basic_qos(1, Default::default())
            .await
            .map_err(|e| format!("after publish: {e}"))?;
        Ok(())
    }
    .await;
    let _ = connection.close(200, "done".into()).await;
    result
}

/// One `basic.get` on `queue` connected with `url` (a tenant's credentials); the
/// message is requeued. `Err` when the broker refuses.
pub async fn get_as(url: &str, queue: &str) -> Result<bool, String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let result = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .map_err(|e| format!("basic_get: {e}"))?;
        Ok(message.is_some())
    }
    .await;
    let _ = connection.close(200, "done".into()).await;
    result
}
