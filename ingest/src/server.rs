//! The accept loop: HTTP/1.1 connections served by hyper with the connection limits of
//! the config contract (`protection`), which `axum::serve` has no knobs for.
//!
//! - At most `maxConnections` connections at once, shared fairly between client
//!   addresses. At the cap, a half-sent head or an idle keep-alive gives way: a new
//!   connection from an address holding less than its fair share (the cap divided by
//!   the addresses holding connections) takes the place of the longest-waiting idle
//!   connection of the address holding the most. A half-sent head costs an attacker
//!   nothing to hold, so letting such connections keep their place would hand the pod
//!   to whoever opens the most (slowloris); a real client sends its head at once and is
//!   never the longest waiter. An address at or over its share replaces its own
//!   longest-waiting idle connection if that has waited [`MIN_IDLE_TO_REPLACE`];
//!   otherwise its new connection is held unread, asking again every quarter second,
//!   and closed if no place came up within [`OVER_SHARE_HOLD`] (at most [`MAX_HELD`]
//!   held at once, beyond that closed at once). That admits a real client behind the
//!   attacker's address a moment later, and slows a client that reconnects as soon as
//!   it is closed to the pace of those timers instead of the pod's. Only when every connection is mid-request does the loop stop
//!   accepting, and further clients wait in the kernel's listen backlog.
//! - `headerReadTimeoutMs`: hyper closes a connection whose request head is not complete
//!   in time (the timer also runs while a kept-alive connection waits for its next head).
//! - `idleTimeoutSeconds`: a watchdog closes a connection with no request in progress
//!   for that long, gracefully first and by dropping it if that does not finish within
//!   another header timeout.
//! - On shutdown every connection is asked to finish its in-flight request and close;
//!   the loop returns once all have.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anchorpipe_crds::config::ProtectionConfig;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::metrics::Metrics;
use crate::protect::canonical;

/// Connection limits, from the config contract.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ProtectionConfig> for ConnectionLimits {
    fn from(config: &ProtectionConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
            max_connections: usize::try_from(config.max_connections).unwrap_or(1024),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves and every connection closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry::default());
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    let held = Arc::new(Semaphore::new(MAX_HELD));
    'accept: loop {
        // Wait while every connection is mid-request at the cap.
        loop {
            let freed = registry.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if registry.can_admit(limits.max_connections) {
                break;
            }
            tokio::select! {
                () = freed => {}
                () = &mut shutdown => break 'accept,
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let source = canonical(peer.ip());
        let serve = {
            let (router, metrics, stop) = (router.clone(), Arc::clone(&metrics), stop.clone());
            move |stream: TcpStream, place: Place| {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream, peer, router, limits, metrics, stop, place,
                ));
            }
        };
        match registry.admit(source, limits.max_connections) {
            Admission::Free(place) => serve(stream, place),
            Admission::Replaced(place) => {
                metrics.connections_evicted.inc();
                serve(stream, place);
            }
            Admission::OverShare => {
                let Ok(permit) = Arc::clone(&held).try_acquire_owned() else {
                    metrics.connections_over_share.inc();
                    continue;
                };
                // Held unread; admitted if a place comes up within the hold (a real
                // client behind the same address gets in, a second late), else closed.
                let (registry, metrics) = (Arc::clone(&registry), Arc::clone(&metrics));
                let max = limits.max_connections;
                tokio::spawn(async move {
                    let _permit = permit;
                    let until = tokio::time::Instant::now() + OVER_SHARE_HOLD;
                    while tokio::time::Instant::now() < until {
                        tokio::time::sleep(HELD_RETRY).await;
                        match registry.admit(source, max) {
                            Admission::Free(place) => return serve(stream, place),
                            Admission::Replaced(place) => {
                                metrics.connections_evicted.inc();
                                return serve(stream, place);
                            }
                            Admission::OverShare => {}
                        }
                    }
                    metrics.connections_over_share.inc();
                });
            }
        }
    }
    drop(listener);
    stop.cancel();
    // Every connection holds its place until it closed.
    loop {
        let freed = registry.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if registry.is_empty() {
            break;
        }
        freed.await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// How long an address's own idle connection must have waited before a new connection
/// from an address at its share may take its place.
pub const MIN_IDLE_TO_REPLACE: Duration = Duration::from_secs(1);
/// How long a connection from an address at its share is held unread, waiting for a
/// place, before it is closed.
pub const OVER_SHARE_HOLD: Duration = Duration::from_secs(2);
/// How often a held connection asks for a place again.
const HELD_RETRY: Duration = Duration::from_millis(250);
/// Connections held that way at once.
pub const MAX_HELD: usize = 256;

/// The open connections, each with its address, activity and a token that closes it.
#[derive(Default)]
struct Registry {
    open: Mutex<Places>,
    freed: Notify,
}

struct Entry {
    source: IpAddr,
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

#[derive(Default)]
struct Places {
    next: u64,
    by_id: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

impl Places {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.by_id.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&entry.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// The idle connection that has waited longest, among `source`'s or, without one,
    /// among those of the address holding the most connections.
    fn longest_idle(&self, source: Option<IpAddr>) -> Option<(u64, u64)> {
        let count = |ip: &IpAddr| self.per_source.get(ip).copied().unwrap_or(0);
        self.by_id
            .iter()
            .filter(|(_, e)| source.is_none_or(|s| e.source == s))
            .filter_map(|(id, e)| {
                e.activity
                    .waiting_since()
                    .map(|since| (std::cmp::Reverse(count(&e.source)), since, *id))
            })
            .min()
            .map(|(_, since, id)| (since, id))
    }
}

enum Admission {
    Free(Place),
    Replaced(Place),
    OverShare,
}

/// A connection's place in the registry, given back on drop.
struct Place {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

impl Drop for Place {
    fn drop(&mut self) {
        let removed = lock(&self.registry.open).remove(self.id).is_some();
        if removed {
            self.registry.freed.notify_waiters();
        }
    }
}

impl Registry {
    fn is_empty(&self) -> bool {
        lock(&self.open).by_id.is_empty()
    }

    /// Below `max`, or at it with a connection that could give way.
    fn can_admit(&self, max: usize) -> bool {
        let places = lock(&self.open);
        places.by_id.len() < max
            || places
                .by_id
                .values()
                .any(|e| e.activity.waiting_since().is_some())
    }

    /// Admits a connection from `source` (see the module docs for the rules).
    fn admit(self: &Arc<Self>, source: IpAddr, max: usize) -> Admission {
        let mut places = lock(&self.open);
        if places.by_id.len() < max {
            return Admission::Free(self.register(&mut places, source));
        }
        let own = places.per_source.get(&source).copied().unwrap_or(0);
        let sources = places.per_source.len() + usize::from(own == 0);
        let share = (max / sources.max(1)).max(1);
        let victim = if own < share {
            places.longest_idle(None).map(|(_, id)| id)
        } else {
            let now = now_millis();
            let min_idle = u64::try_from(MIN_IDLE_TO_REPLACE.as_millis()).unwrap_or(u64::MAX);
            places
                .longest_idle(Some(source))
                .filter(|(since, _)| now.saturating_sub(*since) >= min_idle)
                .map(|(_, id)| id)
        };
        let Some(entry) = victim.and_then(|id| places.remove(id)) else {
            return Admission::OverShare;
        };
        entry.evicted.cancel();
        Admission::Replaced(self.register(&mut places, source))
    }

    fn register(self: &Arc<Self>, places: &mut Places, source: IpAddr) -> Place {
        let activity = Arc::new(Activity::new());
        let evicted = CancellationToken::new();
        let id = places.next;
        places.next += 1;
        places.by_id.insert(
            id,
            Entry {
                source,
                activity: Arc::clone(&activity),
                evicted: evicted.clone(),
            },
        );
        *places.per_source.entry(source).or_insert(0) += 1;
        Place {
            registry: Arc::clone(self),
            id,
            activity,
            evicted,
        }
    }
}

/// Since when a connection has had no request in progress, and how many it is serving.
struct Activity {
    /// Milliseconds since `EPOCH` of the last request's end (or the connection's start).
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
}

/// The time base of [`Activity`]; a process-wide `Instant` so that connections compare.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_millis() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    fn new() -> Self {
        Self {
            last_millis: AtomicU64::new(now_millis()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_millis.store(now_millis(), Ordering::Relaxed);
    }

    /// When the connection last had a request in progress; `None` while it has one.
    fn waiting_since(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.last_millis.load(Ordering::Relaxed))
    }

    fn idle_for(&self) -> Option<Duration> {
        self.waiting_since()
            .map(|since| Duration::from_millis(now_millis().saturating_sub(since)))
    }
}

/// Counts a request in flight until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    place: Place,
) {
    metrics.connections_open.inc();
    let activity = Arc::clone(&place.activity);
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(Arc::clone(&activity));
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await;
                drop(guard);
                response
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // One timer per connection, not one per wake-up of a busy upload.
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            // Its place was given to a newer connection. Nothing was in flight when it
            // was chosen; a head that completed since is still answered.
            () = place.evicted.cancelled(), if closing.is_none() => {
                if activity.idle_for().is_some() {
                    break;
                }
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = stop.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = ticker.tick() => {
                match closing {
                    None if activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) => {
                        metrics.connections_closed_idle.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    // A graceful close waits for a half-sent head; do not wait for it long.
                    Some(since)
                        if since.elapsed() >= limits.header_read_timeout
                            && activity.idle_for().is_some() =>
                    {
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    metrics.connections_open.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn place(admission: Admission) -> Option<Place> {
        match admission {
            Admission::Free(place) | Admission::Replaced(place) => Some(place),
            Admission::OverShare => None,
        }
    }

    #[test]
    fn at_the_cap_places_are_shared_fairly_between_addresses() {
        let registry = Arc::new(Registry::default());
        let (stranger, ci) = (ip(1), ip(2));
        let held: Vec<Place> = (0..4)
            .map(|_| place(registry.admit(stranger, 4)).expect("free"))
            .collect();
        // At its share with only fresh heads of its own: held, not served.
        assert!(matches!(registry.admit(stranger, 4), Admission::OverShare));
        // Another address is under its share: the stranger's oldest gives way.
        let ci_place = place(registry.admit(ci, 4)).expect("replaced");
        assert!(held[0].evicted.is_cancelled());
        assert!(held[1..].iter().all(|p| !p.evicted.is_cancelled()));
        // A connection mid-request never gives way.
        ci_place.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let second_ci = place(registry.admit(ci, 4)).expect("replaced");
        assert!(!ci_place.evicted.is_cancelled());
        assert!(held[1].evicted.is_cancelled());
        // Once its own head has waited long enough, the stranger replaces its own.
        held[2].activity.last_millis.store(0, Ordering::Relaxed);
        std::thread::sleep(
            MIN_IDLE_TO_REPLACE.saturating_sub(Duration::from_millis(now_millis().min(1000))),
        );
        let again = place(registry.admit(stranger, 4)).expect("replaced its own");
        assert!(held[2].evicted.is_cancelled());
        assert!(!ci_place.evicted.is_cancelled());
        assert!(!second_ci.evicted.is_cancelled(), "not the other address's");
        drop((again, second_ci));
        drop(ci_place);
        drop(held);
        assert!(registry.is_empty());
        assert!(lock(&registry.open).per_source.is_empty());
    }
}
