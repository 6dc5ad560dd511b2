//! The accept loop: HTTP/1.1 connections served by hyper with the connection limits of
//! the config contract (`protection`), which `axum::serve` has no knobs for.
//!
//! - At most `maxConnections` connections at once. At the cap, a new connection does
//!   not wait behind the open ones: the connection that has waited longest *without a
//!   request in progress* (a half-sent head, or an idle keep-alive) is closed to make
//!   room. A half-sent head costs an attacker nothing to hold, so letting such
//!   connections keep their place would hand the pod to whoever opens the most of them
//!   (slowloris); a real client sends its head at once and is the newest, not the
//!   oldest, waiter. Only when every connection is serving a request does the loop
//!   stop accepting, and further clients wait in the kernel's listen backlog.
//! - `headerReadTimeoutMs`: hyper closes a connection whose request head is not complete
//!   in time (the timer also runs while a kept-alive connection waits for its next head).
//! - `idleTimeoutSeconds`: a watchdog closes a connection with no request in progress
//!   for that long, gracefully first and by dropping it if that does not finish within
//!   another header timeout.
//! - On shutdown every connection is asked to finish its in-flight request and close;
//!   the loop returns once all have.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

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
    'accept: loop {
        // Room for one more connection: a free place, or the longest waiter's.
        loop {
            let freed = registry.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match registry.make_room(limits.max_connections) {
                Room::Free => break,
                Room::Evicted => {
                    metrics.connections_evicted.inc();
                    break;
                }
                Room::Full => {}
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
        let _ = stream.set_nodelay(true);
        let place = registry.register();
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            limits,
            Arc::clone(&metrics),
            stop.clone(),
            place,
        ));
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

/// The open connections, each with its activity and a token that closes it.
#[derive(Default)]
struct Registry {
    open: Mutex<Places>,
    freed: Notify,
}

#[derive(Default)]
struct Places {
    next: u64,
    by_id: HashMap<u64, (Arc<Activity>, CancellationToken)>,
}

enum Room {
    Free,
    Evicted,
    Full,
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
        let removed = lock(&self.registry.open).by_id.remove(&self.id).is_some();
        if removed {
            self.registry.freed.notify_waiters();
        }
    }
}

impl Registry {
    fn register(self: &Arc<Self>) -> Place {
        let activity = Arc::new(Activity::new());
        let evicted = CancellationToken::new();
        let mut places = lock(&self.open);
        let id = places.next;
        places.next += 1;
        places
            .by_id
            .insert(id, (Arc::clone(&activity), evicted.clone()));
        Place {
            registry: Arc::clone(self),
            id,
            activity,
            evicted,
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.open).by_id.is_empty()
    }

    /// Below `max`, there is room; at it, the connection waiting longest without a
    /// request in progress gives up its place (it is closed by its task).
    fn make_room(&self, max: usize) -> Room {
        let mut places = lock(&self.open);
        if places.by_id.len() < max {
            return Room::Free;
        }
        let longest = places
            .by_id
            .iter()
            .filter_map(|(id, (activity, _))| activity.waiting_since().map(|since| (since, *id)))
            .min();
        let Some((_, id)) = longest else {
            return Room::Full;
        };
        if let Some((_, evicted)) = places.by_id.remove(&id) {
            evicted.cancel();
        }
        Room::Evicted
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
