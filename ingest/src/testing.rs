//! Fixtures shared by unit tests.

use anchorpipe_crds::config::{BrokerTopology, IngestConfig, Limit, RateLimitConfig};

/// A valid config for tenant `test` with generous limits.
pub fn config() -> IngestConfig {
    IngestConfig {
        tenant: "test".to_owned(),
        repositories: vec![uuid::Uuid::nil()],
        signatures: Default::default(),
        rate_limit: RateLimitConfig {
            per_repository: Limit {
                requests_per_minute: 6000,
                burst: 1000,
            },
            per_endpoint: Limit {
                requests_per_minute: 60000,
                burst: 10000,
            },
        },
        limits: Default::default(),
        broker: BrokerTopology::for_tenant("test"),
        outbox: Default::default(),
        protection: Default::default(),
        store: Default::default(),
    }
}
