//! The broker step of the reconcile, behind a trait so tests can simulate a broker that
//! is down.
//!
//! The real implementation keeps one AMQP connection, opens a channel per operation
//! (a failed declare closes its channel) and goes through
//! `anchorpipe_crds::topology`, the only code that creates or deletes broker objects.
//! Every call is bounded by a timeout so a hung broker cannot stall a reconcile.

use std::time::Duration;

use anchorpipe_crds::BrokerTopology;
use anchorpipe_crds::topology;
use futures_util::future::BoxFuture;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::Mutex;

/// A broker operation that did not succeed; the message names the object, never the
/// broker URL (which carries credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// What the operator needs from the broker.
pub trait Broker: Send + Sync {
    /// Declares the tenant's topology (idempotent).
    fn declare<'a>(
        &'a self,
        topology: &'a BrokerTopology,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Deletes the tenant's queues (deleting what is gone succeeds).
    fn delete<'a>(&'a self, topology: &'a BrokerTopology)
    -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// RabbitMQ over AMQP 0-9-1.
pub struct AmqpBroker {
    url: String,
    timeout: Duration,
    connection: Mutex<Option<Connection>>,
}

impl AmqpBroker {
    pub fn new(url: String, timeout: Duration) -> Self {
        Self {
            url,
            timeout,
            connection: Mutex::new(None),
        }
    }

    async fn with_channel<F, Fut>(&self, op: F) -> Result<(), BrokerError>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: std::future::Future<Output = Result<(), topology::TopologyError>>,
    {
        let work = async {
            let mut guard = self.connection.lock().await;
            let connected = guard.as_ref().is_some_and(|c| c.status().connected());
            if !connected {
                let connection = Connection::connect(&self.url, ConnectionProperties::default())
                    .await
                    .map_err(|e| BrokerError::Failed(format!("connecting to the broker: {e}")))?;
                *guard = Some(connection);
            }
            let Some(connection) = guard.as_ref() else {
                return Err(BrokerError::Failed("no broker connection".to_owned()));
            };
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(e) => {
                    *guard = None;
                    return Err(BrokerError::Failed(format!("opening a channel: {e}")));
                }
            };
            drop(guard);
            let result = op(channel.clone()).await;
            // The channel may already be closed by the broker after an error.
            let _ = channel.close(200, "done".into()).await;
            result.map_err(|e| BrokerError::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that hung once is not trusted again.
                *self.connection.lock().await = None;
                Err(BrokerError::Timeout(self.timeout))
            }
        }
    }
}

impl Broker for AmqpBroker {
    fn declare<'a>(&'a self, t: &'a BrokerTopology) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.with_channel(move |ch| async move { topology::declare(&ch, t).await }))
    }

    fn delete<'a>(&'a self, t: &'a BrokerTopology) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.with_channel(move |ch| async move { topology::delete(&ch, t).await }))
    }
}
