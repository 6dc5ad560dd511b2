//! The anchorpipe API crate.
//!
//! - [`config`]: the ingest config contract, written by the operator into a tenant's
//!   ConfigMap and read by the ingest pods.
//! - [`topology`] (feature `topology`): the one code path that declares a tenant's
//!   RabbitMQ topology, used by the operator for every `IngestionEndpoint` and by local
//!   runs and tests.

pub mod config;
#[cfg(feature = "topology")]
pub mod topology;

pub use config::{BrokerTopology, IngestConfig};
