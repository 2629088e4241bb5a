//! Sessions in an encrypted cookie (AES-GCM, axum-extra's private jar): the user, organisation,
//! roles and times travel in the cookie, so checking a session needs no database read. A
//! middleware decodes it once per request, ends idle or revoked sessions, and re-issues it
//! as the user goes; handlers take the `Signed` guard or the `Visitor` state.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};

use super::roles::{Action, OrgKind, RoleSet, allows};
use crate::AppState;

pub const SESSION_COOKIE: &str = "nca_session";

use std::sync::Arc;
pub const DEVICE_COOKIE: &str = "nca_mfa";

/// Everything a session carries. Short field names keep the cookie small.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionData {
    /// The CSRF token every form of this browser must echo.
    #[serde(rename = "c")]
    pub csrf: String,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<SignedIn>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// A place in the sign-in queue (see `queue`).
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<crate::queue::Ticket>,
}

impl SessionData {
    pub fn fresh() -> SessionData {
        SessionData {
            csrf: format!("{:032x}", rand::random::<u128>()),
            user: None,
            pending: None,
            queue: None,
        }
    }
}

/// Password passed, email code awaited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub uid: String,
    pub at: i64,
}

/// A signed-in user in one organisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedIn {
    pub uid: String,
    pub email: String,
    pub name: String,
    pub org: String,
    pub org_name: String,
    pub kind: OrgKind,
    pub roles: RoleSet,
    /// Organisations this account belongs to (more than one: the LA switcher shows).
    pub orgs: u32,
    /// Issued at (sign-in), and last seen: Unix seconds.
    pub iat: i64,
    pub seen: i64,
    /// The password has expired and must be changed before anything else.
    pub must_change: bool,
}

impl SignedIn {
    pub fn may(&self, action: Action) -> bool {
        allows(self.roles, action)
    }
}

/// The decoded session of this request, put in the request's extensions by the middleware.
#[derive(Debug, Clone)]
pub struct Current {
    pub data: SessionData,
    /// A signed-in session ended by inactivity on this request.
    pub timed_out: bool,
}

/// Put this in a response's extensions to replace the session cookie.
#[derive(Debug, Clone)]
pub struct SetSession(pub SessionData);

/// Put this in a response's extensions to remember that this browser passed MFA today.
#[derive(Debug, Clone)]
pub struct SetDevice(pub String);

fn cookie(name: &'static str, value: String, max_age: Option<i64>) -> Cookie<'static> {
    let mut c = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .build();
    if let Some(s) = max_age {
        c.set_max_age(time::Duration::seconds(s));
    }
    c
}

/// Decode the session, end it when idle or revoked, run the handler, then write the cookie
/// back when the handler replaced it or the last-seen time needs moving on.
pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let decoded = decode(&state, req.headers());
    let had_cookie = decoded.is_some();
    let mut data = decoded.unwrap_or_else(SessionData::fresh);
    let mut timed_out = false;
    let mut changed = !had_cookie;
    let mut due = false;
    if let Some(u) = &data.user {
        match standing(&state, u, now) {
            Standing::Ended { idle } => {
                timed_out = idle;
                data.user = None;
                changed = true;
            }
            Standing::Due => due = true,
            Standing::Current => {}
        }
    }
    // Keep-alive and page views move "last seen" on; re-issue at most once a minute.
    let keepalive = req.uri().path() == "/session/keepalive";
    if let Some(u) = &mut data.user
        && (due || keepalive)
    {
        u.seen = now;
        changed = true;
    }
    req.extensions_mut().insert(Current {
        data: data.clone(),
        timed_out,
    });
    let mut resp = next.run(req).await;
    let replaced = resp.extensions_mut().remove::<SetSession>();
    let device = resp.extensions_mut().remove::<SetDevice>();
    let mut jar = PrivateCookieJar::from_headers(&axum::http::HeaderMap::new(), state.key.clone());
    let mut any = false;
    if let Some(SetSession(d)) = replaced {
        jar = jar.add(cookie(
            SESSION_COOKIE,
            serde_json::to_string(&d).expect("json"),
            None,
        ));
        any = true;
    } else if changed {
        jar = jar.add(cookie(
            SESSION_COOKIE,
            serde_json::to_string(&data).expect("json"),
            None,
        ));
        any = true;
    }
    if let Some(SetDevice(v)) = device {
        jar = jar.add(cookie(DEVICE_COOKIE, v, Some(86_400)));
        any = true;
    }
    if any {
        // The jar's own response parts carry the encrypted values.
        let parts = jar.into_response();
        for v in parts.headers().get_all(header::SET_COOKIE) {
            resp.headers_mut().append(header::SET_COOKIE, v.clone());
        }
    }
    resp
}

/// Where a signed-in session stands at a moment.
enum Standing {
    /// Nothing to write back.
    Current,
    /// Still valid; "last seen" is a minute or more old, so the cookie is re-issued.
    Due,
    /// Ended: idle past the limit (`idle`), or revoked.
    Ended { idle: bool },
}

fn standing(state: &AppState, u: &SignedIn, now: i64) -> Standing {
    let since = now - u.seen;
    if since > state.settings.auth.idle_minutes * 60 {
        Standing::Ended { idle: true }
    } else if state.revocations.revoked(&u.uid, u.iat) {
        Standing::Ended { idle: false }
    } else if since >= 60 {
        Standing::Due
    } else {
        Standing::Current
    }
}

/// The session in a request's cookie, if it has one this server wrote.
fn decode(state: &AppState, headers: &axum::http::HeaderMap) -> Option<SessionData> {
    PrivateCookieJar::from_headers(headers, state.key.clone())
        .get(SESSION_COOKIE)
        .and_then(|c| serde_json::from_str::<SessionData>(c.value()).ok())
}

/// The signed-in user of a request whose session needs nothing written back, for the
/// results fast path. None when there is no session, or it is idle, revoked, due to be
/// re-issued or its password must change: the full middleware handles all of those.
pub fn signed_in_as_is(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    memo: Option<&SessionMemo>,
    now: i64,
) -> Option<Arc<FastSession>> {
    let raw = raw_session_cookie(headers);
    let memoed = raw.zip(memo).and_then(|(r, m)| m.get(r));
    let from_memo = memoed.is_some();
    let s = match memoed.or_else(|| raw.and_then(|r| state.sessions.get(r))) {
        Some(s) => s,
        None => {
            let user = decode(state, headers)?.user?;
            let s = Arc::new(FastSession {
                actor: user.email.as_str().into(),
                org: user.org.as_str().into(),
                user_limit: state.limits.user(&user.uid),
                org_limit: state.limits.org(&user.org),
                user,
            });
            if let Some(r) = raw {
                state.sessions.insert(r.into(), s.clone());
            }
            s
        }
    };
    if let (false, Some(r), Some(m)) = (from_memo, raw, memo) {
        m.set(r, &s);
    }
    let current = matches!(standing(state, &s.user, now), Standing::Current);
    (current && !s.user.must_change).then_some(s)
}

/// A session as the fast path keeps it: the user, the shared strings its access records are
/// keyed by, and its user's and organisation's rate limiters, found once per session rather
/// than once per request.
#[derive(Debug)]
pub struct FastSession {
    pub user: SignedIn,
    pub actor: Arc<str>,
    pub org: Arc<str>,
    pub user_limit: Arc<crate::protect::Limiter>,
    pub org_limit: Arc<crate::protect::Limiter>,
}

/// The last session a connection's requests carried, by the cookie's exact (encrypted) value:
/// a browser or an API client sends the same cookie on every request of a kept-alive
/// connection, so comparing it with the last one finds the session without hashing the cookie
/// or asking the shared cache. Like the cache it holds no authority of its own (the standing
/// is checked on every request), and it holds one session, for the connection's lifetime.
/// It also keeps the rate limiter of the IP its last request came from (a connection's
/// requests come from one address, or through one balancer).
#[derive(Debug, Default)]
pub struct SessionMemo(
    std::sync::Mutex<Option<(Box<str>, Arc<FastSession>)>>,
    std::sync::Mutex<Option<(std::net::IpAddr, Arc<crate::protect::Limiter>)>>,
);

impl SessionMemo {
    fn get(&self, raw: &str) -> Option<Arc<FastSession>> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(cookie, _)| **cookie == *raw)
            .map(|(_, s)| s.clone())
    }

    fn set(&self, raw: &str, session: &Arc<FastSession>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((raw.into(), session.clone()));
    }

    /// The rate limiter of `ip`, kept from the connection's last request when it came from
    /// the same address.
    pub fn ip_limiter(
        &self,
        limits: &crate::protect::Limits,
        ip: std::net::IpAddr,
    ) -> Arc<crate::protect::Limiter> {
        let mut last = self.1.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((kept, l)) if *kept == ip => l.clone(),
            _ => {
                let l = limits.ip(ip);
                *last = Some((ip, l.clone()));
                l
            }
        }
    }
}

/// The session cookie's value exactly as sent (still encrypted), when there is one.
/// None unless there is exactly one: the cookie jar the router reads keeps the last of two,
/// and the fast path must never key a session by a value that was not the one decrypted.
fn raw_session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    // Every download asks this, and a session cookie is a few hundred bytes: the pairs are
    // found with memchr's vector search rather than a char-by-char split.
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(mut rest) = std::str::from_utf8(v.as_bytes()) else {
            continue;
        };
        loop {
            let (pair, more) = match memchr::memchr(b';', rest.as_bytes()) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let value = pair
                .trim_ascii()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='));
            if let Some(value) = value
                && found.replace(value).is_some()
            {
                return None;
            }
            match more {
                Some(m) => rest = m,
                None => break,
            }
        }
    }
    found
}

/// Decrypted sessions of the fast path, by the cookie's exact (encrypted) value: decrypting
/// and parsing a cookie costs more than the rest of a download. A value can only be here if
/// it decrypted under our key, and it cannot change, so the cache holds no authority of its
/// own; the session's standing (idle, revoked, expired password) is still checked on every
/// request. Bounded in entries and time.
/// Keys are hashed with foldhash: only values that decrypted under our key are ever inserted,
/// so nobody can choose keys to collide.
pub type SessionCache = moka::sync::Cache<Box<str>, Arc<FastSession>, foldhash::fast::RandomState>;

pub fn session_cache() -> SessionCache {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_idle(std::time::Duration::from_secs(120))
        .build_with_hasher(Default::default())
}

/// The device cookie's value, if this browser has one.
pub fn device(parts: &axum::http::HeaderMap, state: &AppState) -> Option<String> {
    PrivateCookieJar::from_headers(parts, state.key.clone())
        .get(DEVICE_COOKIE)
        .map(|c| c.value().to_string())
}

/// Any visitor's session (signed in or not), for forms that come before sign-in.
#[derive(Debug, Clone)]
pub struct Visitor(pub Current);

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = StatusCode;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Current>()
            .cloned()
            .map(Visitor)
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A signed-in user: the guard every protected handler takes, so no route can forget the check.
/// Pages without a session redirect to sign-in; the API answers 401.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: SignedIn,
    pub csrf: String,
    pub data: SessionData,
}

impl Signed {
    /// Refuse with 403 unless the user's roles allow `action`.
    pub fn require(&self, action: Action) -> Result<(), crate::error::AppError> {
        if self.user.may(action) {
            Ok(())
        } else {
            Err(crate::error::AppError::Forbidden)
        }
    }
}

/// Why a request is not signed in.
#[derive(Debug)]
pub struct NotSignedIn {
    api: bool,
    timed_out: bool,
    next: String,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.api {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({ "error": "sign in first" })),
            )
                .into_response();
        }
        let mut to = String::from("/sign-in?next=");
        to.push_str(
            &url::form_urlencoded::byte_serialize(self.next.as_bytes()).collect::<String>(),
        );
        if self.timed_out {
            to.push_str("&timeout=1");
        }
        Redirect::to(&to).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Signed {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = parts.uri.path().to_string();
        let current = parts
            .extensions
            .get::<Current>()
            .cloned()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let Some(user) = current.data.user.clone() else {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            return Err(NotSignedIn {
                api: path.starts_with("/api/"),
                timed_out: current.timed_out,
                next,
            }
            .into_response());
        };
        // An expired password must be changed before anything else.
        if user.must_change
            && !matches!(
                path.as_str(),
                "/account/password" | "/sign-out" | "/session/keepalive"
            )
        {
            if path.starts_with("/api/") {
                return Err((
                    StatusCode::FORBIDDEN,
                    axum::Json(
                        serde_json::json!({ "error": "your password has expired: change it" }),
                    ),
                )
                    .into_response());
            }
            return Err(Redirect::to("/account/password?expired=1").into_response());
        }
        Ok(Signed {
            csrf: current.data.csrf.clone(),
            data: current.data,
            user,
        })
    }
}

/// Check a form's CSRF token against the session's.
pub fn check_csrf(expected: &str, given: &str) -> Result<(), crate::error::AppError> {
    let same: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), given.as_bytes()).into();
    if same && !given.is_empty() {
        Ok(())
    } else {
        Err(crate::error::AppError::Csrf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&[u8]]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for v in values {
            h.append(
                header::COOKIE,
                axum::http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_raw_session_cookie_is_the_one_value_sent_under_its_name() {
        let one = |v: &[&[u8]]| raw_session_cookie(&cookies(v)).map(str::to_string);
        assert_eq!(one(&[b"nca_session=abc"]), Some("abc".into()));
        assert_eq!(
            one(&[b"theme=dark;  nca_session=abc ; lang=en"]),
            Some("abc".into())
        );
        assert_eq!(
            one(&[b"theme=dark", b"x=1; nca_session=a+b/c=="]),
            Some("a+b/c==".into())
        );
        // Names that only start or end like it, and no cookie at all.
        assert_eq!(one(&[b"nca_session_old=abc; my_nca_session=d"]), None);
        assert_eq!(one(&[b"nca_session"]), None);
        assert_eq!(one(&[]), None);
        // Two values, in one header or in two: none (the router's jar keeps the last).
        assert_eq!(one(&[b"nca_session=a; nca_session=b"]), None);
        assert_eq!(one(&[b"nca_session=a", b"nca_session=b"]), None);
        // A header that is not UTF-8 is skipped, as the jar skips it.
        assert_eq!(
            one(&[b"x=\xff\xfe; nca_session=a", b"nca_session=b"]),
            Some("b".into())
        );
        assert_eq!(one(&[b"nca_session="]), Some(String::new()));
    }
}
