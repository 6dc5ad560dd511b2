//! The anchorpipe API crate.
//!
//! - [`v1alpha1`]: the `IngestionEndpoint` custom resource (spec, status, CRD schema).
//! - [`render`]: the pure step from an `IngestionEndpoint` spec to the ingest config and
//!   the tenant's broker topology, shared by the operator and local runs.
//! - [`config`]: the ingest config contract, written by the operator into a tenant's
//!   ConfigMap and read by the ingest pods.
//! - [`topology`] (feature `topology`): the one code path that declares a tenant's
//!   RabbitMQ topology, used by the operator for every `IngestionEndpoint` and by local
//!   runs and tests.

pub mod config;
pub mod render;
#[cfg(feature = "topology")]
pub mod topology;
pub mod v1alpha1;

pub use config::{BrokerTopology, IngestConfig};
