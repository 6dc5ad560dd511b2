//! Declares and checks a tenant's RabbitMQ topology.
//!
//! This is the only code that creates broker objects. The operator calls
//! [`declare`] for each `IngestionEndpoint` (and [`delete`] under its finalizer); the
//! ingest service only calls [`check`], a passive declare, so it never creates a queue
//! with arguments that disagree with the operator's.
//!
//! Layout, for a tenant `t`:
//! - `exchange` (topic, durable), shared by tenants;
//! - `queue` (durable, `x-queue-type`, optional `x-message-ttl`), bound to `exchange`
//!   by `routing_key`, dead-lettering to `dead_letter_exchange` with the same key;
//! - `dead_letter_exchange` (topic, durable) and `dead_letter_queue` bound to it by
//!   `routing_key`, so each tenant's rejected messages land in that tenant's DLQ only.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::BrokerTopology;

/// A broker operation failed; the message names the object.
#[derive(Debug, thiserror::Error)]
#[error("{action} `{object}`: {source}")]
pub struct TopologyError {
    pub action: &'static str,
    pub object: String,
    #[source]
    pub source: lapin::Error,
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn passive<T>(mut options: T, set: impl FnOnce(&mut T)) -> T {
    set(&mut options);
    options
}

/// Queue arguments for the tenant's main queue.
pub fn queue_arguments(topology: &BrokerTopology) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(topology.queue_type.as_str())),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(topology.dead_letter_exchange.as_str())),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(topology.routing_key.as_str())),
    );
    if let Some(ttl) = topology.message_ttl_ms {
        args.insert(ShortString::from("x-message-ttl"), AMQPValue::LongUInt(ttl));
    }
    args
}

/// Queue arguments for the tenant's dead-letter queue (same type, no TTL: dead letters
/// wait for a person).
pub fn dead_letter_queue_arguments(topology: &BrokerTopology) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(topology.queue_type.as_str())),
    );
    args
}

/// Declares the whole topology. Idempotent: declaring what exists with the same
/// arguments is a no-op. A queue that exists with *different* arguments makes the
/// broker close the channel with PRECONDITION_FAILED, reported here as an error naming
/// the queue; the caller needs a fresh channel after that.
pub async fn declare(channel: &Channel, topology: &BrokerTopology) -> Result<(), TopologyError> {
    let err = |action, object: &str| {
        let object = object.to_owned();
        move |source| TopologyError {
            action,
            object,
            source,
        }
    };
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(err("declaring exchange", exchange))?;
    }
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            durable_queue(),
            dead_letter_queue_arguments(topology),
        )
        .await
        .map_err(err("declaring queue", &topology.dead_letter_queue))?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            topology.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("binding queue", &topology.dead_letter_queue))?;
    channel
        .queue_declare(
            topology.queue.as_str().into(),
            durable_queue(),
            queue_arguments(topology),
        )
        .await
        .map_err(err("declaring queue", &topology.queue))?;
    channel
        .queue_bind(
            topology.queue.as_str().into(),
            topology.exchange.as_str().into(),
            topology.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("binding queue", &topology.queue))?;
    tracing::debug!(
        exchange = %topology.exchange,
        queue = %topology.queue,
        dead_letter_queue = %topology.dead_letter_queue,
        "broker topology declared"
    );
    Ok(())
}

/// Checks, without creating anything, that the exchange and the tenant's queue exist.
/// A missing object closes the channel (NOT_FOUND); the caller needs a fresh one.
pub async fn check(channel: &Channel, topology: &BrokerTopology) -> Result<(), TopologyError> {
    channel
        .exchange_declare(
            topology.exchange.as_str().into(),
            ExchangeKind::Topic,
            passive(durable_exchange(), |o| o.passive = true),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError {
            action: "checking exchange",
            object: topology.exchange.clone(),
            source,
        })?;
    channel
        .queue_declare(
            topology.queue.as_str().into(),
            passive(durable_queue(), |o| o.passive = true),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError {
            action: "checking queue",
            object: topology.queue.clone(),
            source,
        })?;
    Ok(())
}

/// Deletes the tenant's queue and dead-letter queue (the shared exchanges stay: other
/// tenants publish through them). Deleting what does not exist succeeds.
pub async fn delete(channel: &Channel, topology: &BrokerTopology) -> Result<(), TopologyError> {
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|source| TopologyError {
                action: "deleting queue",
                object: queue.clone(),
                source,
            })?;
    }
    Ok(())
}
