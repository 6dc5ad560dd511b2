//! The anchorpipe operator: turns each `IngestionEndpoint` into a running tenant.
//!
//! - [`reconcile`]: the pipeline (finalizer → validate → keys → objects → broker → status).
//! - [`keys`], [`builders`], [`status`]: the pure decisions it is made of.
//! - [`broker`]: the broker step behind a trait (AMQP in production, fakes in tests).
//! - [`database`]: tenant claims, repository ownership and per-tenant database logins.
//! - [`leader`], [`http`], [`metrics`], [`run`], [`watch`]: running it as a replicated service.
//! - [`crdgen`]: the CRD manifest generated from the types.

pub mod broker;
pub mod builders;
pub mod crdgen;
pub mod database;
pub mod error;
pub mod http;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod watch;

pub use error::{Error, Result};
