//! Per-pod defences against strangers: who the client is, how much unverified work a
//! source may cause, and how many body bytes one source may hold.
//!
//! - [`ClientAddress`]: the peer address, or the forwarded client address when (and
//!   only when) the peer is a configured trusted proxy.
//! - [`FailureGuard`]: counts refusals per source and failed signature checks per
//!   endpoint in fixed one-minute windows. Nothing is refused for them: a correctly
//!   signed report always gets its normal answer. A source past its own allowance reads
//!   and verifies through a narrow lane (`unverifiedConcurrency` requests at once, all
//!   such sources together), so a flood costs the pod a constant amount of concurrent
//!   work; and its refusals are held `failureDelayMs` before they are sent, as every
//!   source's are while the endpoint-wide allowance is exceeded (a flood spread over
//!   many addresses), so a flooding client that waits for its answers is slowed to one
//!   request per delay per connection. Sources that have not failed are never queued:
//!   a CI farm behind one address must not be serialised because strangers flood.
//! - [`SourceBudget`]: body bytes held per source, so one source cannot take more than
//!   its share of the pod-wide in-flight budget.
//!
//! Every map here is bounded by [`MAX_SOURCES`]; sources beyond it share one bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anchorpipe_crds::config::ProtectionConfig;
use axum::http::HeaderMap;
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Distinct sources tracked at once. Sources beyond it are counted together under the
/// unspecified address, which only makes them more likely to be slowed, never refused.
pub const MAX_SOURCES: usize = 4096;

/// The window the failure allowances are counted in.
const WINDOW: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Which peers may tell us the client's address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses the configured CIDRs (validated with the config; bad entries are skipped).
    pub fn new(entries: &[String]) -> Self {
        let ranges = entries
            .iter()
            .filter_map(|entry| {
                entry
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Self { ranges }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ranges.iter().any(|range| range.contains(&ip))
    }

    /// The client address of a request from `peer`: the right-most forwarded address
    /// that is not itself a trusted proxy, when `peer` is trusted; `peer` otherwise.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Walk the chain from the nearest hop outwards: each trusted hop vouches for the
        // one before it; the first untrusted address is the client. Anything a client
        // put further left is its own claim and ignored.
        let mut hops = forwarded_for(headers);
        hops.reverse();
        let mut client = peer;
        for hop in hops {
            client = canonical(hop);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses from `Forwarded` (RFC 7239 `for=`) or, without it, `X-Forwarded-For`,
/// left to right. Unparsable entries (obfuscated identifiers, `unknown`) end the list
/// there, so nothing to their left is believed.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    let raw: Vec<String> = if forwarded.is_empty() {
        values("x-forwarded-for")
    } else {
        forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.eq_ignore_ascii_case("for"))
                    .map(|(_, v)| v.trim_matches('"').to_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let mut out: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for entry in raw.iter().rev() {
        match parse_node(entry) {
            Some(ip) => out.push(ip),
            None => break,
        }
    }
    out.reverse();
    out
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:80` or a bare IPv6.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

/// Failed-signature counts in a fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    #[cfg(test)]
    fn aged(mut self, by: Duration) -> Self {
        self.started -= by;
        self
    }

    fn current(&mut self, now: Instant) -> &mut Self {
        if now.duration_since(self.started) >= WINDOW {
            *self = Window {
                started: now,
                failures: 0,
            };
        }
        self
    }
}

/// Decides which requests verify through the narrow lane, and which refusals are held.
pub struct FailureGuard {
    per_source_allowance: u32,
    per_endpoint_allowance: u32,
    sources: Mutex<HashMap<IpAddr, Window>>,
    endpoint: Mutex<Window>,
    lane: Arc<Semaphore>,
    failure_delay: Duration,
    delayed: Arc<Semaphore>,
}

impl FailureGuard {
    pub fn new(config: &ProtectionConfig) -> Self {
        let now = Instant::now();
        Self {
            per_source_allowance: config.failed_signatures_per_source_per_minute,
            per_endpoint_allowance: config.failed_signatures_per_endpoint_per_minute,
            sources: Mutex::default(),
            endpoint: Mutex::new(Window {
                started: now,
                failures: 0,
            }),
            lane: Arc::new(Semaphore::new(
                usize::try_from(config.unverified_concurrency).unwrap_or(1),
            )),
            failure_delay: Duration::from_millis(config.failure_delay_ms),
            delayed: Arc::new(Semaphore::new(
                usize::try_from(config.max_delayed_failures).unwrap_or(0),
            )),
        }
    }

    /// Whether `source` is past its own allowance: its requests go through the narrow
    /// lane.
    pub fn suspect(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        lock(&self.sources)
            .get_mut(&source)
            .is_some_and(|w| w.current(now).failures >= self.per_source_allowance)
    }

    fn endpoint_flooded(&self) -> bool {
        lock(&self.endpoint).current(Instant::now()).failures >= self.per_endpoint_allowance
    }

    /// Waits for a place in the narrow lane; held while the body is read and verified.
    pub async fn enter_lane(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.lane).acquire_owned().await.ok()
    }

    /// How long to hold a refusal to `source` before sending it, with the place that
    /// allows it: while the source is past its own allowance, or every source while
    /// the endpoint is past its allowance (a flood spread over many addresses). `None`
    /// otherwise, or when too many refusals are held already.
    pub fn refusal_delay(&self, source: IpAddr) -> Option<(Duration, OwnedSemaphorePermit)> {
        if self.failure_delay.is_zero() || !(self.suspect(source) || self.endpoint_flooded()) {
            return None;
        }
        let place = Arc::clone(&self.delayed).try_acquire_owned().ok()?;
        Some((self.failure_delay, place))
    }

    /// Counts one failed verification from `source`.
    pub fn record_failure(&self, source: IpAddr) {
        let now = Instant::now();
        {
            // Reset an expired window first, then count (the assignment's right side
            // would otherwise read the expired count).
            let mut endpoint = lock(&self.endpoint);
            let window = endpoint.current(now);
            window.failures = window.failures.saturating_add(1);
        }
        self.record_refusal(source);
    }

    /// Counts one refusal of `source` that cost no verification (no or a malformed
    /// token or signature): against the source's allowance only, since the endpoint-wide
    /// one protects the verification work.
    pub fn record_refusal(&self, source: IpAddr) {
        let now = Instant::now();
        let mut sources = lock(&self.sources);
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            sources.retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        let key = if sources.contains_key(&source) || sources.len() < MAX_SOURCES {
            source
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let window = sources.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        let window = window.current(now);
        window.failures = window.failures.saturating_add(1);
    }
}

/// Body bytes held per source, against a per-source share.
pub struct SourceBudget {
    share: u64,
    held: Mutex<HashMap<IpAddr, u64>>,
}

/// Bytes reserved for one source; returned on drop.
pub struct SourceReservation {
    budget: Arc<SourceBudget>,
    source: IpAddr,
    bytes: u64,
}

impl SourceBudget {
    pub fn new(share: u64) -> Arc<Self> {
        Arc::new(Self {
            share,
            held: Mutex::default(),
        })
    }

    /// An empty reservation for `source`, grown with [`SourceReservation::grow`].
    pub fn reservation(self: &Arc<Self>, source: IpAddr) -> SourceReservation {
        SourceReservation {
            budget: Arc::clone(self),
            source,
            bytes: 0,
        }
    }

    /// Bytes currently held by all sources (for tests and metrics).
    pub fn total_held(&self) -> u64 {
        lock(&self.held).values().sum()
    }
}

impl SourceReservation {
    /// Takes `more` bytes of the source's share; false when it would exceed the share.
    pub fn grow(&mut self, more: u64) -> bool {
        let mut held = lock(&self.budget.held);
        if !held.contains_key(&self.source) && held.len() >= MAX_SOURCES {
            // A spray of sources shares one bucket rather than growing the map.
            self.source = IpAddr::from([0, 0, 0, 0]);
        }
        let entry = held.entry(self.source).or_insert(0);
        if entry.saturating_add(more) > self.budget.share {
            return false;
        }
        *entry += more;
        self.bytes += more;
        true
    }
}

impl Drop for SourceReservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = lock(&self.budget.held);
        if let Some(entry) = held.get_mut(&self.source) {
            *entry = entry.saturating_sub(self.bytes);
            if *entry == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_are_ignored_from_untrusted_peers() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".to_owned()]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(proxies.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.1.1.1"), &h),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn trusted_proxy_chain_yields_the_first_untrusted_hop() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".to_owned()]);
        // The client claims 1.1.1.1; the proxy appended the real peer 203.0.113.9.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.2.2.2")]);
        assert_eq!(proxies.client(ip("10.1.1.1"), &h), ip("203.0.113.9"));
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8::7]:4711\";proto=https",
        )]);
        assert_eq!(proxies.client(ip("10.1.1.1"), &h), ip("2001:db8::7"));
        // Unparsable hops stop the walk: the proxy itself is the client then.
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(proxies.client(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn failures_make_a_source_suspect_but_never_refused() {
        let config = ProtectionConfig {
            failed_signatures_per_source_per_minute: 3,
            failed_signatures_per_endpoint_per_minute: 10,
            ..ProtectionConfig::default()
        };
        let guard = FailureGuard::new(&config);
        let stranger = ip("203.0.113.1");
        for _ in 0..3 {
            assert!(!guard.suspect(stranger));
            guard.record_failure(stranger);
        }
        assert!(guard.suspect(stranger));
        assert!(
            !guard.suspect(ip("198.51.100.2")),
            "other sources unaffected"
        );
        for i in 0..7u8 {
            guard.record_failure(IpAddr::from([192, 0, 2, i]));
        }
        assert!(guard.endpoint_flooded());
        assert!(
            !guard.suspect(ip("198.51.100.2")),
            "a flood elsewhere does not queue a clean source"
        );
        // A minute later the windows start again from zero.
        {
            let mut endpoint = lock(&guard.endpoint);
            *endpoint = endpoint.aged(WINDOW);
            let mut sources = lock(&guard.sources);
            for w in sources.values_mut() {
                *w = w.aged(WINDOW);
            }
        }
        guard.record_failure(stranger);
        assert!(!guard.suspect(stranger));
        assert_eq!(lock(&guard.endpoint).failures, 1);
    }

    #[test]
    fn refusals_to_a_failing_source_are_delayed_within_a_bound() {
        let config = ProtectionConfig {
            failed_signatures_per_source_per_minute: 2,
            failed_signatures_per_endpoint_per_minute: 4,
            failure_delay_ms: 500,
            max_delayed_failures: 2,
            ..ProtectionConfig::default()
        };
        let guard = FailureGuard::new(&config);
        let stranger = ip("203.0.113.1");
        guard.record_refusal(stranger);
        assert!(
            guard.refusal_delay(stranger).is_none(),
            "within its allowance"
        );
        guard.record_refusal(stranger);
        let first = guard.refusal_delay(stranger).expect("delayed");
        assert_eq!(first.0, Duration::from_millis(500));
        let second = guard.refusal_delay(stranger).expect("delayed");
        assert!(guard.refusal_delay(stranger).is_none(), "at most 2 held");
        drop((first, second));
        let other = ip("198.51.100.2");
        assert!(guard.refusal_delay(other).is_none());
        // Refusals count against the source only; failed verifications also against
        // the endpoint, and past its allowance every source's refusals are held.
        assert_eq!(lock(&guard.endpoint).failures, 0);
        for i in 0..4u8 {
            guard.record_failure(IpAddr::from([192, 0, 2, i]));
        }
        assert!(guard.refusal_delay(other).is_some());
        let off = FailureGuard::new(&ProtectionConfig {
            failure_delay_ms: 0,
            failed_signatures_per_source_per_minute: 1,
            ..ProtectionConfig::default()
        });
        off.record_refusal(stranger);
        assert!(off.refusal_delay(stranger).is_none());
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let budget = SourceBudget::new(100);
        let mut a = budget.reservation(ip("203.0.113.1"));
        assert!(a.grow(60));
        let mut a2 = budget.reservation(ip("203.0.113.1"));
        assert!(!a2.grow(50));
        let mut b = budget.reservation(ip("203.0.113.2"));
        assert!(b.grow(100));
        drop(a);
        assert!(a2.grow(50));
        drop((a2, b));
        assert_eq!(budget.total_held(), 0);
    }
}
