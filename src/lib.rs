//! nca-portal: the results-release service. `http` owns the listener, TLS and limits; `auth`
//! identity and sessions; `accounts` the account-management rules; `portal` the pages; `api`
//! the JSON flows; `db` the portal database; `email` outgoing mail; `config` the settings.

pub mod accounts;
pub mod activities;
pub mod api;
pub mod api_tokens;
pub mod auth;
pub mod config;
pub mod ctf;
pub mod db;
pub mod email;
pub mod error;
pub mod http;
pub mod ks3;
pub mod orgs;
pub mod pdf;
pub mod portal;
pub mod prerendered;
pub mod protect;
pub mod queue;
pub mod results;
pub mod results_pages;
pub mod reviews;
pub mod scripts;

use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum_extra::extract::cookie::Key;
use base64::Engine;
use nca_pipeline::store::Store;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use auth::{Clock, Revocations, Throttle, password::Hasher};
use config::Settings;

/// Shared state of the server; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub settings: Settings,
    pub public_url: String,
    pub db: db::Db,
    pub store: Store,
    pub mailer: email::Mailer,
    pub hasher: Hasher,
    pub key: Key,
    pub clock: Clock,
    pub throttle: Throttle,
    pub revocations: Revocations,
    pub tz: jiff::tz::TimeZone,
    pub results: results::Results,
    pub scripts: scripts::Pages,
    pub audit_tx: tokio::sync::mpsc::Sender<results::AuditEvent>,
    pub limits: protect::Limits,
    pub gates: protect::Gates,
    pub api_tokens: api_tokens::Tokens,
    pub queue: queue::Queue,
    pub sessions: auth::session::SessionCache,
    /// The test cycle's activities (checked at start).
    pub cycle: activities::Cycle,
    /// The operator's changes to the cycle's windows.
    pub windows: activities::Windows,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Open everything the settings name: database (migrated), store, mailer, keys.
    pub async fn open(settings: Settings, clock: Clock) -> anyhow::Result<AppState> {
        let store = Store::open(&settings.store_url())?;
        AppState::open_with_store(settings, clock, store).await
    }

    /// As `open`, with the object store given (tests wrap one to inject faults).
    pub async fn open_with_store(
        settings: Settings,
        clock: Clock,
        store: Store,
    ) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&settings.data.dir)
            .with_context(|| format!("creating data folder {}", settings.data.dir.display()))?;
        let db = db::connect(&settings.database_url(), settings.database.max_connections).await?;
        let mailer = if settings.email.smtp_url.is_empty() {
            email::Mailer::outbox(settings.outbox(), &settings.email.from)?
        } else {
            email::Mailer::smtp(
                &settings.email.smtp_url,
                &settings.email.smtp_password,
                &settings.email.from,
            )?
        };
        let key = session_key(&settings)?;
        let settings_limits = settings.rate_limits.clone();
        let settings_admission = settings.admission.clone();
        let hash_threads = settings.hash_threads();
        let revocations = Revocations::default();
        revocations.refresh(&db).await?;
        let results = results::Results::new(
            store.clone(),
            settings.results.cache_mib * 1024 * 1024,
            settings.results.pages_cache_mib * 1024 * 1024,
        );
        if let Err(e) = results.refresh().await {
            tracing::warn!(error = %e, "no release loaded yet");
        }
        let scripts = scripts::Pages::new(
            store.clone(),
            settings.scripts.cache_mib * 1024 * 1024,
            std::time::Duration::from_millis(settings.scripts.read_timeout_ms),
        );
        let cycle = activities::cycle::load(&settings.activities, &settings.timezone())?;
        let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(65_536);
        results::spawn_audit_writer(db.clone(), audit_rx);
        Ok(AppState(Arc::new(Inner {
            public_url: settings.public_url(),
            hasher: Hasher::new(hash_threads),
            throttle: Throttle::new(
                settings.auth.ip_attempts_per_minute,
                settings.auth.free_failures,
                settings.auth.max_delay_secs,
            ),
            tz: settings.timezone(),
            settings,
            db,
            store,
            mailer,
            key,
            clock,
            revocations,
            results,
            scripts,
            audit_tx,
            limits: protect::Limits::new(&settings_limits),
            gates: protect::Gates::new(&settings_admission),
            api_tokens: api_tokens::Tokens::default(),
            queue: queue::Queue::new(hash_threads),
            sessions: auth::session::session_cache(),
            cycle,
            windows: activities::Windows::default(),
        })))
    }
}

/// The cookie key from settings, or one generated once and kept under the data folder.
fn session_key(settings: &Settings) -> anyhow::Result<Key> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = if settings.auth.session_key.is_empty() {
        let path = settings.data.dir.join("session.key");
        if !path.exists() {
            let bytes: Vec<u8> = (0..4).flat_map(|_| rand::random::<[u8; 16]>()).collect();
            std::fs::write(&path, b64.encode(bytes))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        std::fs::read_to_string(&path)?
    } else {
        settings.auth.session_key.clone()
    };
    let bytes = b64
        .decode(text.trim())
        .context("auth.session_key is not base64")?;
    anyhow::ensure!(
        bytes.len() >= 64,
        "auth.session_key must be at least 64 bytes"
    );
    Ok(Key::from(&bytes))
}

/// The server's routes and middleware.
pub fn router(state: AppState) -> Router {
    let request_id = REQUEST_ID;
    let timeout = std::time::Duration::from_secs(state.settings.server.request_timeout_secs);
    let gates = state.gates.clone();
    Router::new()
        .merge(
            portal::routes()
                .merge(results_pages::routes())
                .merge(ks3::routes())
                .merge(api_tokens::routes())
                .merge(scripts::page_routes())
                .merge(reviews::routes())
                .merge(activities::routes())
                .route_layer(middleware::from_fn_with_state(
                    gates.clone(),
                    protect::admit_page,
                )),
        )
        .merge(api::routes())
        .merge(
            scripts::file_routes().route_layer(middleware::from_fn_with_state(
                gates.clone(),
                protect::admit_download,
            )),
        )
        .merge(
            results::routes()
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    api_tokens::middleware,
                ))
                .route_layer(middleware::from_fn_with_state(
                    gates,
                    protect::admit_download,
                )),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::session::middleware,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn(record_metrics))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            state.settings.server.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, request_id = id)
        }))
        .layer(SetRequestIdLayer::new(request_id, RequestIds))
        .with_state(state)
}

/// The headers every response carries, unless a handler chose its own.
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
];

/// The headers of a download (a file sent as an attachment, never rendered as a page): the
/// transport and sniffing rules, and a policy that lets the body do nothing if it were opened.
/// Framing and referrer rules concern documents, and downloads are the busiest responses.
pub(crate) const DOWNLOAD_HEADERS: [(HeaderName, &str); 3] = [
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; sandbox",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let attachment = h
        .get(header::CONTENT_DISPOSITION)
        .is_some_and(|v| v.as_bytes().starts_with(b"attachment"));
    let set: &[(HeaderName, &str)] = if attachment {
        &DOWNLOAD_HEADERS
    } else {
        &SECURITY_HEADERS
    };
    for (name, value) in set.iter().cloned() {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    resp
}

/// The header a request's id travels in (a client's own id is kept).
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: this process's random prefix and a counter (no system call per request, and
/// unique across instances by the prefix).
#[derive(Clone, Copy, Debug)]
struct RequestIds;

static REQUEST_PREFIX: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{:08x}", rand::random::<u32>()));
static REQUEST_COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl RequestIds {
    /// `prefix-counter`, the counter in lower-case hex without leading zeros.
    fn next() -> HeaderValue {
        Self::id(REQUEST_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn id(n: u64) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let prefix = REQUEST_PREFIX.as_bytes();
        let mut buf = [0u8; 32];
        buf[..prefix.len()].copy_from_slice(prefix);
        buf[prefix.len()] = b'-';
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        let start = prefix.len() + 1;
        for (i, b) in buf[start..start + digits].iter_mut().enumerate() {
            *b = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf[..start + digits]).expect("hex id")
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(RequestIds::next()))
    }
}

/// The whole server as one service: the results fast path first, then the router.
#[derive(Clone, Debug)]
pub struct App {
    state: AppState,
    router: Router,
}

/// The server's service over `state`.
pub fn app(state: AppState) -> App {
    App {
        router: router(state.clone()),
        state,
    }
}

impl<B> tower::Service<axum::http::Request<B>> for App
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let addr = req.extensions().get::<http::ClientAddr>().map(|a| a.0);
        Box::pin(self.clone().handle(req, addr, None))
    }
}

impl App {
    /// One request from `addr`: the results fast path first, then the router (which finds
    /// the address in the request's extensions). `memo` is the connection's last session,
    /// when the request came over a connection.
    pub async fn handle<B>(
        self,
        req: axum::http::Request<B>,
        addr: Option<std::net::SocketAddr>,
        memo: Option<std::sync::Arc<auth::session::SessionMemo>>,
    ) -> Result<Response, std::convert::Infallible>
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use tower::ServiceExt;
        let start = std::time::Instant::now();
        let (mut parts, body) = req.into_parts();
        let ip = addr.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
        if let Some(resp) = results::fast_download(&self.state, &parts, ip, memo.as_deref()).await {
            let id = parts
                .headers
                .get(&REQUEST_ID)
                .cloned()
                .unwrap_or_else(RequestIds::next);
            let resp = results::with_request_id(resp, id);
            FAST_METRICS.observe(resp.status(), start);
            return Ok(security_headers(resp).await);
        }
        if let Some(a) = addr {
            parts.extensions.insert(http::ClientAddr(a));
        }
        let req = axum::http::Request::from_parts(parts, axum::body::Body::new(body));
        self.router.oneshot(req).await
    }
}

/// The fast path's request counters and timer, looked up once (a labelled lookup per request
/// costs more than the rest of the bookkeeping). Statuses it rarely answers go through
/// `observe`. Made on first use, after main has installed the recorder.
struct FastMetrics {
    ok: metrics::Counter,
    not_modified: metrics::Counter,
    seconds: metrics::Histogram,
}

static FAST_METRICS: std::sync::LazyLock<FastMetrics> = std::sync::LazyLock::new(|| {
    let count = |status: StatusCode| metrics::counter!("nca_http_requests_total", "route" => results::FAST_ROUTE, "method" => "GET", "status" => status.as_u16().to_string());
    FastMetrics {
        ok: count(StatusCode::OK),
        not_modified: count(StatusCode::NOT_MODIFIED),
        seconds: metrics::histogram!("nca_http_request_seconds", "route" => results::FAST_ROUTE),
    }
});

impl FastMetrics {
    fn observe(&self, status: StatusCode, start: std::time::Instant) {
        match status {
            StatusCode::OK => self.ok.increment(1),
            StatusCode::NOT_MODIFIED => self.not_modified.increment(1),
            _ => return observe(results::FAST_ROUTE, "GET", status, start),
        }
        self.seconds.record(start.elapsed().as_secs_f64());
    }
}

/// Count and time every request by route template (never the raw path: no UPNs in metrics).
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    observe(route, method, resp.status(), start);
    resp
}

/// Count a request and record its time, labelled by route template, method and status.
fn observe(
    route: impl Into<metrics::SharedString>,
    method: impl Into<metrics::SharedString>,
    status: StatusCode,
    start: std::time::Instant,
) {
    let route = route.into();
    metrics::counter!("nca_http_requests_total", "route" => route.clone(), "method" => method.into(), "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!("nca_http_request_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
}

/// Ready when the database answers and the object store can be read.
async fn readyz(State(s): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    use serde_json::json;
    if sqlx::query("SELECT 1").execute(&s.db).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": "database unavailable" })),
        );
    }
    match s.store.current().await {
        Ok(release) => (
            StatusCode::OK,
            axum::Json(json!({ "ready": true, "release": release })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": "object store unavailable" })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_a_rising_hex_counter() {
        let ids: Vec<String> = (0..40)
            .map(|_| RequestIds::next().to_str().unwrap().to_string())
            .collect();
        let counts: Vec<u64> = ids
            .iter()
            .map(|id| {
                let (prefix, n) = id.split_once('-').unwrap();
                assert_eq!(prefix, REQUEST_PREFIX.as_str());
                assert!(n == "0" || !n.starts_with('0'), "{id}: no leading zeros");
                assert_eq!(n, n.to_lowercase());
                u64::from_str_radix(n, 16).unwrap()
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
        for n in [0, 1, 0xf, 0x10, 0xabc, 1 << 40, u64::MAX] {
            assert_eq!(
                RequestIds::id(n).to_str().unwrap(),
                format!("{}-{n:x}", *REQUEST_PREFIX)
            );
        }
    }
}
