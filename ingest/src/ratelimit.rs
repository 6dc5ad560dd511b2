//! Rate limiting with `governor` (GCRA token buckets), per repository and per endpoint.
//!
//! Entirely in-process: there is no external store to go away, so the limiter can never
//! fail open. Each pod enforces its share of the endpoint's limits; the operator
//! divides the endpoint-wide figures by the replica count when it renders the config.
//! The keyed limiter only ever holds repositories from the config (requests for other
//! repositories are refused before they reach it), so its memory is bounded.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anchorpipe_crds::config::{Limit, RateLimitConfig};
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use uuid::Uuid;

type Keyed = governor::RateLimiter<
    Uuid,
    DefaultKeyedStateStore<Uuid>,
    DefaultClock,
    StateInformationMiddleware,
>;
type Direct =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome of one check, with what the `X-RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests per minute of the limit that decided.
    pub limit: u32,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Unix time (seconds) at which the bucket is full again.
    pub reset_unix: u64,
    /// Whole seconds to wait before retrying (denied requests only).
    pub retry_after_secs: u64,
}

pub struct RateLimiter {
    clock: DefaultClock,
    per_repository: Keyed,
    per_endpoint: Direct,
    repository_limit: Limit,
    endpoint_limit: Limit,
}

fn quota(limit: Limit) -> Quota {
    // The config validator guarantees both are at least 1.
    let rpm = NonZeroU32::new(limit.requests_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rpm).allow_burst(burst)
}

/// Time for one token to come back.
fn replenish_interval(limit: Limit) -> Duration {
    Duration::from_secs(60) / limit.requests_per_minute.max(1)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            clock: DefaultClock::default(),
            per_repository: governor::RateLimiter::keyed(quota(config.per_repository))
                .with_middleware::<StateInformationMiddleware>(),
            per_endpoint: governor::RateLimiter::direct(quota(config.per_endpoint))
                .with_middleware::<StateInformationMiddleware>(),
            repository_limit: config.per_repository,
            endpoint_limit: config.per_endpoint,
        }
    }

    /// Takes one request for `repo_id` from both buckets, or says how long to wait.
    pub fn check(&self, repo_id: Uuid) -> Decision {
        let now = unix_now();
        let repo = self.per_repository.check_key(&repo_id);
        let endpoint = self.per_endpoint.check();
        let denied = |limit: Limit, not_until: governor::NotUntil<_>| {
            let wait = not_until.wait_time_from(self.clock.now());
            Decision {
                allowed: false,
                limit: limit.requests_per_minute,
                remaining: 0,
                reset_unix: (now + wait).as_secs(),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        };
        match (repo, endpoint) {
            (Err(not_until), _) => denied(self.repository_limit, not_until),
            (_, Err(not_until)) => denied(self.endpoint_limit, not_until),
            (Ok(repo), Ok(endpoint)) => {
                // Report the tighter of the two buckets.
                let (limit, remaining) =
                    if endpoint.remaining_burst_capacity() < repo.remaining_burst_capacity() {
                        (self.endpoint_limit, endpoint.remaining_burst_capacity())
                    } else {
                        (self.repository_limit, repo.remaining_burst_capacity())
                    };
                let missing = limit.burst.saturating_sub(remaining);
                Decision {
                    allowed: true,
                    limit: limit.requests_per_minute,
                    remaining,
                    reset_unix: (now + replenish_interval(limit) * missing).as_secs(),
                    retry_after_secs: 0,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(repo: (u32, u32), endpoint: (u32, u32)) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            per_repository: Limit {
                requests_per_minute: repo.0,
                burst: repo.1,
            },
            per_endpoint: Limit {
                requests_per_minute: endpoint.0,
                burst: endpoint.1,
            },
        })
    }

    #[test]
    fn repository_burst_then_denied_with_retry_after() {
        let rl = limiter((60, 3), (6000, 100));
        let repo = Uuid::new_v4();
        let remaining: Vec<u32> = (0..3).map(|_| rl.check(repo).remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let denied = rl.check(repo);
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 60);
        assert_eq!(denied.retry_after_secs, 1);
        // Another repository has its own bucket.
        assert!(rl.check(Uuid::new_v4()).allowed);
    }

    #[test]
    fn endpoint_limit_applies_across_repositories() {
        let rl = limiter((600, 10), (60, 2));
        assert!(rl.check(Uuid::new_v4()).allowed);
        assert!(rl.check(Uuid::new_v4()).allowed);
        let denied = rl.check(Uuid::new_v4());
        assert!(!denied.allowed);
        assert_eq!(denied.limit, 60);
        assert!(denied.retry_after_secs >= 1);
    }
}
