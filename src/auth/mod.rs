//! Identity: passwords, email MFA, sessions, throttling, and the sign-in steps shared by the
//! pages and the JSON API. Knows nothing of page layout; never logs a password, code or token.

pub mod password;
pub mod roles;
pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::db::{self, Audit};
use roles::{OrgKind, RoleSet};
use session::{Pending, SessionData, SignedIn};

/// Wall-clock seconds. `Paused` stands still until a test moves it on with `advance`, so
/// tests move sessions, codes and links through time without waiting.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Paused(Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    pub fn paused_at(wall: i64) -> Clock {
        Clock::Paused(Arc::new(std::sync::atomic::AtomicI64::new(wall)))
    }

    pub fn now(&self) -> i64 {
        match self {
            Clock::System => jiff::Timestamp::now().as_second(),
            Clock::Paused(t) => t.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Move a paused clock on (no effect on the system clock).
    pub fn advance(&self, secs: i64) {
        if let Clock::Paused(t) = self {
            t.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A random single-use secret for a link, and the hash kept in the database.
pub fn new_link_token() -> (String, String) {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Keyed hash of an MFA code, bound to its user so that a stolen table reveals nothing.
pub fn mfa_hash(key: &[u8], user_id: &str, code: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(user_id.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Sign-in throttling: a generous limit per IP address (a whole LA may share one) and a delay
/// per account that doubles with each failure past the free ones. Keyed on the address typed,
/// so unknown emails are throttled exactly like real ones.
pub struct Throttle {
    ip: DefaultKeyedRateLimiter<IpAddr>,
    failures: moka::sync::Cache<String, (u32, i64)>,
    free: u32,
    max_delay: i64,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("free", &self.free)
            .finish()
    }
}

impl Throttle {
    pub fn new(ip_per_minute: u32, free: u32, max_delay: u64) -> Throttle {
        let per_min = NonZeroU32::new(ip_per_minute.max(1)).expect("at least 1");
        Throttle {
            ip: RateLimiter::keyed(Quota::per_minute(per_min)),
            failures: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(max_delay.max(60) * 2))
                .build(),
            free,
            max_delay: max_delay as i64,
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, ip: IpAddr, email: &str, now: i64) -> Result<(), u64> {
        if let Some((n, last)) = self.failures.get(email)
            && n >= self.free
        {
            let wait = (5i64 << (n - self.free).min(30)).min(self.max_delay);
            if now < last + wait {
                return Err((last + wait - now) as u64);
            }
        }
        if self.ip.check_key(&ip).is_err() {
            return Err(60);
        }
        Ok(())
    }

    pub fn failed(&self, email: &str, now: i64) {
        let n = self.failures.get(email).map_or(0, |(n, _)| n);
        self.failures.insert(email.to_string(), (n + 1, now));
    }

    pub fn succeeded(&self, email: &str) {
        self.failures.invalidate(email);
    }
}

/// Users whose sessions end before a time, held in memory so that checking a session needs no
/// database read; refreshed from the database every few seconds for other nodes' changes.
#[derive(Debug, Default)]
pub struct Revocations {
    by_user: RwLock<HashMap<String, i64>>,
}

impl Revocations {
    pub fn revoked(&self, user_id: &str, issued_at: i64) -> bool {
        self.by_user
            .read()
            .expect("revocations poisoned")
            .get(user_id)
            .is_some_and(|&after| issued_at < after)
    }

    pub fn set(&self, user_id: &str, after: i64) {
        self.by_user
            .write()
            .expect("revocations poisoned")
            .insert(user_id.to_string(), after);
    }

    pub async fn refresh(&self, db: &db::Db) -> sqlx::Result<()> {
        let rows = db::revocations_since(db, 0).await?;
        let mut map = self.by_user.write().expect("revocations poisoned");
        for (id, after) in rows {
            let e = map.entry(id).or_insert(after);
            *e = (*e).max(after);
        }
        Ok(())
    }
}

/// Normalise an email as typed: trimmed, lower case.
pub fn normalise_email(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The result of the password step.
#[derive(Debug)]
pub enum PasswordStep {
    /// Signed in (MFA already passed today on this browser).
    SignedIn(Box<SessionData>),
    /// Password right; a code was emailed.
    NeedsMfa(Box<SessionData>),
    /// Wrong email or password (the same answer for both).
    Refused,
    /// Too many attempts: wait this many seconds.
    Throttled(u64),
    /// Too many sign-ins already waiting for a hashing thread: try again shortly.
    Busy,
}

/// Check email and password; on success either finish (MFA passed today on this browser, per
/// `device`) or email a code.
pub async fn password_step(
    state: &AppState,
    ip: IpAddr,
    email: &str,
    password: &str,
    device: Option<&str>,
    mut session: SessionData,
) -> anyhow::Result<PasswordStep> {
    let now = state.clock.now();
    let email = normalise_email(email);
    if let Err(wait) = state.throttle.check(ip, &email, now) {
        metrics::counter!("nca_sign_in_total", "outcome" => "throttled").increment(1);
        return Ok(PasswordStep::Throttled(wait));
    }
    // Bound the sign-ins waiting for a hashing thread; past it, answer at once.
    let Ok(_waiting) = state.gates.sign_ins.clone().try_acquire_owned() else {
        metrics::counter!("nca_sign_in_total", "outcome" => "busy").increment(1);
        return Ok(PasswordStep::Busy);
    };
    let user = db::user_by_email(&state.db, &email).await?;
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = state.hasher.verify(password.to_string(), stored).await;
    let Some(user) = user.filter(|_| ok) else {
        state.throttle.failed(&email, now);
        metrics::counter!("nca_sign_in_total", "outcome" => "refused").increment(1);
        db::audit(
            &state.db,
            Audit {
                actor: None,
                action: "sign-in-refused",
                target: Some(&email),
                ip: Some(ip.to_string()),
                ..Default::default()
            },
            now,
        )
        .await?;
        return Ok(PasswordStep::Refused);
    };
    state.throttle.succeeded(&email);
    session.user = None;
    if device == Some(device_value(&user.id, &state.today(now)).as_str()) {
        let signed = start_session(state, &user, None).await?;
        session.user = Some(signed);
        metrics::counter!("nca_sign_in_total", "outcome" => "signed-in").increment(1);
        audit_sign_in(
            state,
            &user.email,
            ip,
            "sign-in",
            "MFA passed earlier today",
        )
        .await?;
        return Ok(PasswordStep::SignedIn(Box::new(session)));
    }
    send_mfa_code(state, &user.id, &user.email).await?;
    session.pending = Some(Pending {
        uid: user.id.clone(),
        at: now,
    });
    metrics::counter!("nca_sign_in_total", "outcome" => "mfa").increment(1);
    Ok(PasswordStep::NeedsMfa(Box::new(session)))
}

async fn audit_sign_in(
    state: &AppState,
    email: &str,
    ip: IpAddr,
    action: &str,
    detail: &str,
) -> anyhow::Result<()> {
    db::audit(
        &state.db,
        Audit {
            actor: Some(email),
            action,
            detail: detail.into(),
            ip: Some(ip.to_string()),
            ..Default::default()
        },
        state.clock.now(),
    )
    .await?;
    Ok(())
}

/// The value of the device cookie that lets this browser skip MFA for the rest of `day`.
pub fn device_value(user_id: &str, day: &str) -> String {
    format!("{user_id}:{day}")
}

/// Email a fresh 6-digit code, replacing any earlier one.
pub async fn send_mfa_code(state: &AppState, user_id: &str, email: &str) -> anyhow::Result<()> {
    let now = state.clock.now();
    let code = format!("{:06}", rand::random_range(0..1_000_000u32));
    let hash = mfa_hash(state.key.master(), user_id, &code);
    let minutes = state.settings.auth.mfa_code_minutes;
    db::put_mfa_code(&state.db, user_id, &hash, now, now + minutes * 60).await?;
    state
        .mailer
        .send(
            email,
            "Your NCA Portal verification code",
            &format!(
                "Your verification code is {code}\n\nEnter it on the NCA Portal to finish signing in. \
                 It can be used once and expires in {minutes} minutes.\n\n\
                 If you did not try to sign in, change your password and tell your account manager.\n"
            ),
        )
        .await
}

/// The result of the MFA step.
#[derive(Debug)]
pub enum MfaStep {
    SignedIn(Box<SessionData>),
    /// Wrong code; attempts remain.
    Wrong,
    /// Expired, used, or out of attempts: sign in again or resend.
    Dead(&'static str),
    /// No password step in this session.
    NotPending,
}

pub async fn mfa_step(
    state: &AppState,
    ip: IpAddr,
    mut session: SessionData,
    code: &str,
) -> anyhow::Result<MfaStep> {
    let now = state.clock.now();
    let Some(pending) = session.pending.clone() else {
        return Ok(MfaStep::NotPending);
    };
    // The password step itself expires with the code.
    if now > pending.at + state.settings.auth.mfa_code_minutes * 60 {
        return Ok(MfaStep::Dead(
            "Your code has expired. Sign in again to get a new code",
        ));
    }
    let Some(stored) = db::mfa_code(&state.db, &pending.uid).await? else {
        return Ok(MfaStep::NotPending);
    };
    if stored.used_at.is_some() {
        return Ok(MfaStep::Dead(
            "This code has already been used. Sign in again",
        ));
    }
    if now > stored.expires_at {
        return Ok(MfaStep::Dead("Your code has expired. Request a new code"));
    }
    let attempts = db::mfa_attempt(&state.db, &pending.uid).await?;
    if attempts > state.settings.auth.mfa_max_attempts {
        return Ok(MfaStep::Dead(
            "You have entered the wrong code too many times. Request a new code",
        ));
    }
    let given = mfa_hash(state.key.master(), &pending.uid, code.trim());
    let right: bool =
        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), stored.code_hash.as_bytes()).into();
    if !right {
        return Ok(MfaStep::Wrong);
    }
    if !db::use_mfa_code(&state.db, &pending.uid, now).await? {
        return Ok(MfaStep::Dead(
            "This code has already been used. Sign in again",
        ));
    }
    let Some(user) = db::user(&state.db, &pending.uid).await? else {
        return Ok(MfaStep::NotPending);
    };
    session.pending = None;
    session.user = Some(start_session(state, &user, None).await?);
    audit_sign_in(state, &user.email, ip, "sign-in", "password and email code").await?;
    Ok(MfaStep::SignedIn(Box::new(session)))
}

/// Build the signed-in part of a session for `user`, in `org` when given (the LA switcher)
/// or in the first organisation the user belongs to.
pub async fn start_session(
    state: &AppState,
    user: &db::User,
    org: Option<&str>,
) -> anyhow::Result<SignedIn> {
    let now = state.clock.now();
    let members = db::memberships(&state.db, &user.id).await?;
    let (org_id, roles) = match org {
        Some(o) => members
            .iter()
            .find(|(id, _)| id == o)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not a member of {o}"))?,
        None => members
            .first()
            .cloned()
            .unwrap_or_else(|| (String::new(), RoleSet::default())),
    };
    let org_row = db::org(&state.db, &org_id).await?;
    let expiry = state.settings.auth.password_expiry_days;
    let must_change = expiry > 0
        && user
            .password_set_at
            .is_some_and(|at| now - at > expiry * 86_400);
    Ok(SignedIn {
        uid: user.id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        org: org_id,
        org_name: org_row.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
        kind: org_row.map_or(OrgKind::Operator, |o| o.kind),
        roles,
        orgs: members.len() as u32,
        iat: now,
        seen: now,
        must_change,
    })
}

impl AppState {
    /// Today's date in the configured zone, for "first sign-in of each day".
    pub fn today(&self, now: i64) -> String {
        jiff::Timestamp::from_second(now)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
            .date()
            .to_string()
    }
}

/// Keep the revocation map fresh from the database (other nodes, the CLI).
pub fn spawn_revocation_refresh(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Err(e) = state.revocations.refresh(&state.db).await {
                tracing::warn!(error = %e, "refreshing session revocations");
            }
        }
    });
}
