//! Protection of the results plane: rate limits per user, organisation and IP (governor), and
//! admission control (a bounded number of requests in flight per class, 503 past it).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::config::{Admission, RateLimits};

/// A keyed limiter whose map hashes with foldhash (seeded per process): every download checks
/// three, and SipHash was a visible part of a download's cost.
type Keyed<K> =
    RateLimiter<K, DefaultKeyedStateStore<K, foldhash::fast::RandomState>, DefaultClock>;

/// Download rate limits, keyed three ways.
pub struct Limits {
    user: Keyed<Arc<str>>,
    org: Keyed<Arc<str>>,
    ip: Keyed<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limits")
    }
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute.max(1)).expect("at least 1"))
}

impl Limits {
    pub fn new(c: &RateLimits) -> Limits {
        Limits {
            user: RateLimiter::dashmap_with_hasher(
                quota(c.per_user_per_minute),
                Default::default(),
            ),
            org: RateLimiter::dashmap_with_hasher(quota(c.per_org_per_minute), Default::default()),
            ip: RateLimiter::dashmap_with_hasher(quota(c.per_ip_per_minute), Default::default()),
        }
    }

    /// Ok, or the whole seconds to wait (at least 1) before the request could succeed.
    pub fn check(&self, user: &str, org: &str, ip: IpAddr) -> Result<(), u64> {
        self.check_keys(&user.into(), &org.into(), ip)
    }

    /// As `check`, with the keys already shared (the fast path's sessions keep them).
    pub fn check_keys(&self, user: &Arc<str>, org: &Arc<str>, ip: IpAddr) -> Result<(), u64> {
        // Only a refusal needs the time (and creating a clock is costly: CPU feature checks).
        let wait = |e: governor::NotUntil<_>| {
            e.wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1)
        };
        self.ip.check_key(&ip).map_err(wait)?;
        self.org.check_key(org).map_err(wait)?;
        self.user.check_key(user).map_err(wait)?;
        Ok(())
    }
}

/// 429 with Retry-After, for the JSON API.
pub fn too_many(wait: u64) -> Response {
    metrics::counter!("nca_rate_limited_total").increment(1);
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(serde_json::json!({ "error": "too many requests: try again shortly", "retry_after": wait })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    r
}

/// Requests in flight per class.
#[derive(Debug, Clone)]
pub struct Gates {
    pub downloads: Arc<Semaphore>,
    pub pages: Arc<Semaphore>,
    pub sign_ins: Arc<Semaphore>,
}

impl Gates {
    pub fn new(a: &Admission) -> Gates {
        Gates {
            downloads: Arc::new(Semaphore::new(a.downloads_in_flight)),
            pages: Arc::new(Semaphore::new(a.pages_in_flight)),
            sign_ins: Arc::new(Semaphore::new(a.sign_ins_waiting)),
        }
    }
}

/// 503 with Retry-After: the service is at capacity for this class of request.
pub fn busy(class: &'static str) -> Response {
    busy_for(class, 2)
}

/// As `busy`, telling the client to wait `secs` seconds (in Retry-After and the body).
pub fn busy_for(class: &'static str, secs: u64) -> Response {
    metrics::counter!("nca_admission_refused_total", "class" => class).increment(1);
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "error": "the service is busy: try again in a moment",
            "retry_after": secs,
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Admit a request if its class has room, else answer 503 at once.
async fn admit(gate: &Arc<Semaphore>, class: &'static str, req: Request, next: Next) -> Response {
    match gate.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => busy(class),
    }
}

pub async fn admit_download(State(g): State<Gates>, req: Request, next: Next) -> Response {
    admit(&g.downloads, "download", req, next).await
}

pub async fn admit_page(State(g): State<Gates>, req: Request, next: Next) -> Response {
    admit(&g.pages, "page", req, next).await
}
