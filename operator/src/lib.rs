//! The anchorpipe operator: turns each `IngestionEndpoint` into a running tenant.
//!
//! - [`reconcile`]: the pipeline (finalizer → validate → keys → objects → broker → status).
//! - [`keys`], [`builders`], [`status`]: the pure decisions it is made of.
//! - [`broker`]: the broker step behind a trait (AMQP in production, fakes in tests).
//! - [`accounts`], [`credentials`]: tenant claims and minted credentials, behind a trait;
//!   [`platform_accounts`] implements it with [`database`] (claims, repository ownership,
//!   per-tenant logins) and [`broker_users`] (per-tenant broker users).
//! - [`leader`], [`http`], [`metrics`], [`run`], [`watch`]: running it as a replicated service.
//! - [`pod_defaults`]: the platform's pull Secrets and scheduling for tenant pods.
//! - [`uninstall`]: `release-finalizers`, run by the chart before it is uninstalled.
//! - [`smoke`]: `smoke-test`, run by the chart's `helm test` pod.
//! - [`crdgen`]: the CRD manifest generated from the types.

pub mod accounts;
pub mod broker;
pub mod broker_users;
pub mod builders;
pub mod crdgen;
pub mod credentials;
pub mod database;
pub mod error;
pub mod http;
pub mod key_usage;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod platform_accounts;
pub mod pod_defaults;
pub mod reconcile;
pub mod run;
pub mod smoke;
pub mod status;
pub mod uninstall;
pub mod watch;

pub use error::{Error, Result};
