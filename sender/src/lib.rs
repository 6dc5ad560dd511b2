//! The anchorpipe sender.
//!
//! The library holds what both the CLI and the ingest service need, with light
//! dependencies (serde, quick-xml, chrono):
//! - [`report`]: the contract-1 report types and the schema's limits;
//! - [`junit`]: JUnit XML → report tests, streaming ([`junit::convert`]);
//! - [`split`]: a report over the limits → parts that are each valid ([`split::split`]).
//!
//! With the default feature `cli`, also the `anchorpipe` command line: CI detection
//! ([`ci`]), signing ([`sign`]), the HTTP client with retries ([`client`]) and the
//! commands ([`cli`]).

pub mod junit;
pub mod report;
pub mod split;

#[cfg(feature = "cli")]
pub mod ci;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod client;
#[cfg(feature = "cli")]
pub mod sign;

pub use junit::{ConvertOptions, Converted, JunitError, convert, convert_str};
pub use report::{Report, Status, TestResult};
pub use split::{SplitLimits, split};
