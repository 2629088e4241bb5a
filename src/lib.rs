//! nca-portal: the results-release service. For now the server only reports its health and
//! the current release; sign-in, the results plane and the portal arrive in later issues.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use nca_pipeline::store::Store;

/// Shared state of the server.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
}

/// The server's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Ready when the store answers and a release is current.
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match s.store.current().await {
        Ok(Some(id)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "ready": true, "release": id })),
        ),
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": "no release published" })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": "object store unavailable" })),
        ),
    }
}

/// Serve until `shutdown` resolves; tests bind port 0 and pass their own listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("server")
}
