//! The JSON API's identity flows, for scripts and load tests, with the same cookies as the
//! pages: `POST /api/v1/sign-in`, `POST /api/v1/sign-in/mfa`, `POST /api/v1/sign-out`, and
//! `GET /api/v1/me`. JSON bodies need `Content-Type: application/json`, which a cross-site
//! form cannot send, so these routes need no CSRF token.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::auth::session::{self, SessionData, SetDevice, SetSession, Signed, Visitor};
use crate::auth::{self, MfaStep, PasswordStep};
use crate::http::ClientAddr;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sign-in", post(sign_in))
        .route("/api/v1/sign-in/mfa", post(mfa))
        .route("/api/v1/sign-out", post(sign_out))
        .route("/api/v1/me", get(me))
        .route("/api/v1/openapi.json", get(openapi))
}

#[derive(Deserialize)]
struct SignIn {
    email: String,
    password: String,
}

fn with_session(status: StatusCode, body: serde_json::Value, data: SessionData) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.extensions_mut().insert(SetSession(data));
    r
}

fn unexpected(e: anyhow::Error) -> Response {
    tracing::error!(error = %e, "unexpected error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "unexpected error" })),
    )
        .into_response()
}

async fn sign_in(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    addr: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Json(b): Json<SignIn>,
) -> Response {
    let ip = ClientAddr::ip_of(addr);
    let device = session::device(&headers, &state);
    match auth::password_step(
        &state,
        ip,
        &b.email,
        &b.password,
        device.as_deref(),
        cur.data,
    )
    .await
    {
        Ok(PasswordStep::SignedIn(d)) => with_session(
            StatusCode::OK,
            json!({ "signed_in": true, "mfa_required": false }),
            *d,
        ),
        Ok(PasswordStep::NeedsMfa(d)) => with_session(
            StatusCode::OK,
            json!({ "signed_in": false, "mfa_required": true }),
            *d,
        ),
        Ok(PasswordStep::Refused) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "Enter a valid email address and password" })),
        )
            .into_response(),
        Ok(PasswordStep::Throttled(wait)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.to_string())],
            Json(json!({ "error": "too many attempts", "retry_after": wait })),
        )
            .into_response(),
        // No waiting page here: the queue's estimate says when to ask again.
        Ok(PasswordStep::Busy) => {
            crate::protect::busy_for("sign-in", state.queue.retry_after(state.clock.now()))
        }
        Err(e) => unexpected(e),
    }
}

#[derive(Deserialize)]
struct Code {
    code: String,
}

async fn mfa(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    addr: Option<Extension<ClientAddr>>,
    Json(b): Json<Code>,
) -> Response {
    let ip = ClientAddr::ip_of(addr);
    match auth::mfa_step(&state, ip, cur.data, &b.code).await {
        Ok(MfaStep::SignedIn(d)) => {
            let uid = d.user.as_ref().map(|u| u.uid.clone()).unwrap_or_default();
            let mut r = with_session(StatusCode::OK, json!({ "signed_in": true }), *d);
            r.extensions_mut().insert(SetDevice(auth::device_value(
                &uid,
                &state.today(state.clock.now()),
            )));
            r
        }
        Ok(MfaStep::Wrong) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "wrong code" })),
        )
            .into_response(),
        Ok(MfaStep::Dead(why)) => {
            (StatusCode::UNAUTHORIZED, Json(json!({ "error": why }))).into_response()
        }
        Ok(MfaStep::NotPending) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "sign in with email and password first" })),
        )
            .into_response(),
        Err(e) => unexpected(e),
    }
}

async fn sign_out(Visitor(_): Visitor) -> Response {
    with_session(
        StatusCode::OK,
        json!({ "signed_out": true }),
        SessionData::fresh(),
    )
}

/// A cheap authenticated request: who am I. Reads only the session cookie.
async fn me(s: Signed) -> Json<serde_json::Value> {
    Json(json!({
        "email": s.user.email,
        "name": s.user.name,
        "organisation": s.user.org,
        "organisation_kind": s.user.kind.as_str(),
        "roles": s.user.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
    }))
}

/// The OpenAPI document of the JSON API (api/openapi.json; a test checks it names every route).
pub const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
