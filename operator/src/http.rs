//! The operator's own HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (the process serves) and `/readyz` (start-up finished: the replica is leading or
//! standing by).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let state = Arc::new(HttpState {
            metrics: Arc::new(Metrics::default()),
            ready: AtomicBool::new(false),
        });
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        let app = router(state.clone());
        assert_eq!(
            app.clone().oneshot(get("/healthz")).await.unwrap().status(),
            200
        );
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            503
        );
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            200
        );
        assert_eq!(app.oneshot(get("/metrics")).await.unwrap().status(), 200);
    }
}
