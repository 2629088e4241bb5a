//! Protection of the results plane: rate limits per user, organisation and IP (governor), and
//! admission control (a bounded number of requests in flight per class, 503 past it).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::config::{Admission, RateLimits};

/// One limiter (a GCRA cell, governor's direct limiter) for one user, organisation or IP, and
/// the sweep epoch it was last checked in.
pub struct Limiter {
    gcra: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    used: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

/// The limiters of one kind, by key. A key's limiter is made on first use and shared by every
/// holder: the fast path's sessions keep their user's and organisation's limiters, and a
/// connection keeps its IP's, so a download checks three cells without hashing a key. An
/// entry leaves only when nobody holds it and it has not been checked for a whole quota
/// period (so its cell is full again, and a new one is the same): two limiters never exist at
/// once for one key, and the map holds only keys used lately (memory stays bounded).
struct Registry<K> {
    quota: Quota,
    map: Mutex<foldhash::HashMap<K, Arc<Limiter>>>,
}

impl<K: std::hash::Hash + Eq + Clone> Registry<K> {
    fn new(per_minute: u32) -> Self {
        Registry {
            quota: Quota::per_minute(NonZeroU32::new(per_minute.max(1)).expect("at least 1")),
            map: Mutex::default(),
        }
    }

    fn get<Q>(&self, key: &Q, make_key: impl FnOnce() -> K, epoch: u64) -> Arc<Limiter>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(key) {
            return l.clone();
        }
        let l = Arc::new(Limiter {
            gcra: RateLimiter::direct(self.quota),
            used: AtomicU64::new(epoch),
        });
        map.insert(make_key(), l.clone());
        l
    }

    /// Drop the limiters nobody holds that were last checked before epoch `before`.
    fn sweep(&self, before: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| Arc::strong_count(l) > 1 || l.used.load(Ordering::Relaxed) >= before);
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Download rate limits, per user, organisation and IP.
pub struct Limits(Arc<Shared>);

struct Shared {
    user: Registry<Arc<str>>,
    org: Registry<Arc<str>>,
    ip: Registry<IpAddr>,
    /// Advanced by each sweep (`SWEEP_EVERY`); a limiter records the epoch it was checked in.
    epoch: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limits")
    }
}

/// How often idle limiters are looked for. A limiter checked in epoch `e` is dropped at the
/// earliest in the sweep that starts epoch `e + 3`: at least two whole periods, 60 s, after
/// its last check, by when a per-minute cell is full again.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Limits {
    /// The limits, with a background task (when there is a runtime) that sweeps idle
    /// limiters every `SWEEP_EVERY` and ends when the limits are dropped.
    pub fn new(c: &RateLimits) -> Limits {
        let limits = Limits(Arc::new(Shared {
            user: Registry::new(c.per_user_per_minute),
            org: Registry::new(c.per_org_per_minute),
            ip: Registry::new(c.per_ip_per_minute),
            epoch: AtomicU64::new(0),
        }));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&limits.0);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(shared) => Limits(shared).sweep(),
                        None => break,
                    }
                }
            });
        }
        limits
    }

    fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Relaxed)
    }

    /// The limiter for a user (by uid), to keep and check with `check_held`.
    pub fn user(&self, uid: &str) -> Arc<Limiter> {
        self.0.user.get(uid, || uid.into(), self.epoch())
    }

    /// The limiter for an organisation (by id).
    pub fn org(&self, org: &str) -> Arc<Limiter> {
        self.0.org.get(org, || org.into(), self.epoch())
    }

    /// The limiter for an IP address.
    pub fn ip(&self, ip: IpAddr) -> Arc<Limiter> {
        self.0.ip.get(&ip, || ip, self.epoch())
    }

    /// Ok, or the whole seconds to wait (at least 1) before the request could succeed.
    pub fn check(&self, user: &str, org: &str, ip: IpAddr) -> Result<(), u64> {
        self.check_held(&self.user(user), &self.org(org), &self.ip(ip))
    }

    /// As `check`, with the limiters already in hand (the fast path keeps them). The IP is
    /// checked first, then the organisation, then the user; a refusal stops there.
    pub fn check_held(&self, user: &Limiter, org: &Limiter, ip: &Limiter) -> Result<(), u64> {
        let epoch = self.epoch();
        for l in [ip, org, user] {
            // A store only when the epoch moved: the cell's line is not written twice.
            if l.used.load(Ordering::Relaxed) != epoch {
                l.used.store(epoch, Ordering::Relaxed);
            }
            // Only a refusal needs the time (and creating a clock is costly: CPU feature
            // checks).
            l.gcra.check().map_err(|e| {
                e.wait_time_from(DefaultClock::default().now())
                    .as_secs()
                    .max(1)
            })?;
        }
        Ok(())
    }

    /// Start a new epoch and drop the limiters nobody holds that were not checked in the
    /// last two (see `SWEEP_EVERY`).
    pub fn sweep(&self) {
        let now = self.0.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let before = now.saturating_sub(2);
        self.0.user.sweep(before);
        self.0.org.sweep(before);
        self.0.ip.sweep(before);
    }

    /// Limiters kept now (user, organisation, IP).
    pub fn kept(&self) -> (usize, usize, usize) {
        (self.0.user.len(), self.0.org.len(), self.0.ip.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(user: u32, org: u32, ip: u32) -> Limits {
        Limits::new(&RateLimits {
            per_user_per_minute: user,
            per_org_per_minute: org,
            per_ip_per_minute: ip,
        })
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn holders_of_one_key_share_its_cell() {
        let l = limits(2, 100, 100);
        // Two sessions of one user, each keeping the user's limiter, and the router's path
        // looking it up by key: one user's allowance, not three.
        let (a, b) = (l.user("u1"), l.user("u1"));
        let org = l.org("o1");
        let ip = l.ip(IP);
        assert!(l.check_held(&a, &org, &ip).is_ok());
        assert!(l.check_held(&b, &org, &ip).is_ok());
        let wait = l
            .check("u1", "o1", IP)
            .expect_err("a third download in the minute");
        assert!((1..=60).contains(&wait), "{wait}");
        // Another user of the same organisation is not held back.
        assert!(l.check("u2", "o1", IP).is_ok());
    }

    #[test]
    fn a_refusal_by_ip_spends_nothing_of_the_organisation_or_user() {
        let l = limits(1, 1, 1);
        assert!(l.check("u1", "o1", IP).is_ok());
        // The IP is spent: refused there, before the organisation or user is counted.
        assert!(l.check("u2", "o2", IP).is_err());
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        assert!(l.check("u2", "o2", other).is_ok());
    }

    #[test]
    fn sweeps_drop_only_limiters_nobody_holds_that_have_been_idle_a_whole_minute() {
        let l = limits(1, 100, 100);
        let held = l.user("held");
        assert!(l.check("idle", "o1", IP).is_ok());
        assert_eq!(l.kept(), (2, 1, 1));
        // One and two sweeps later the idle user's cell may still be refilling: kept, and
        // still spent.
        l.sweep();
        l.sweep();
        assert_eq!(l.kept(), (2, 1, 1));
        assert!(l.check("idle", "o1", IP).is_err(), "the same cell");
        // That refusal was a check: two more sweeps pass before it may go.
        l.sweep();
        l.sweep();
        assert_eq!(l.kept().0, 2);
        l.sweep();
        // Idle since three sweeps began (60 s at least): dropped; the held one stays.
        assert_eq!(l.kept(), (1, 0, 0));
        assert!(Arc::ptr_eq(&held, &l.user("held")));
        drop(held);
        for _ in 0..3 {
            l.sweep();
        }
        assert_eq!(l.kept(), (0, 0, 0), "memory stays bounded");
    }
}
