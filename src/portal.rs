//! The portal's pages: sign-in, MFA, passwords, My account, Manage users, organisation details
//! and the LA switcher. Server-rendered with askama (auto-escaping) in the GOV.UK Design
//! System's look: errors re-render with 422 and an error summary, success redirects with 303.
//! Every POST checks the session's CSRF token; every handler that needs a user takes `Signed`.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::AppState;
use crate::accounts::{self, AccountError, AccountFailure, Actor};
use crate::auth::roles::{Action, OrgKind, Role, RoleSet};
use crate::auth::session::{
    self, SessionData, SetDevice, SetSession, Signed, SignedIn, Visitor, check_csrf,
};
use crate::auth::{self, MfaStep, PasswordStep, normalise_email};
use crate::db;
use crate::error::AppError;
use crate::http::ClientAddr;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-in/mfa", get(mfa_page).post(mfa))
        .route("/sign-in/mfa/resend", post(mfa_resend))
        .route("/sign-in/queue", get(queue_page))
        .route("/sign-out", post(sign_out))
        .route("/forgotten-password", get(forgotten_page).post(forgotten))
        .route("/set-password", get(set_password_page).post(set_password))
        .route("/account", get(account))
        .route(
            "/account/password",
            get(change_password_page).post(change_password),
        )
        .route("/account/users", get(users))
        .route("/account/users/new", get(new_user_page).post(new_user))
        .route(
            "/account/users/{id}/permissions",
            get(permissions_page).post(permissions),
        )
        .route("/account/users/{id}/remove", get(remove_page).post(remove))
        .route("/account/organisation", get(org_page).post(org_update))
        .route("/account/switch", get(switch_page).post(switch))
        .route("/session/keepalive", post(keepalive))
        .route("/assets/portal.css", get(css))
        .route("/assets/session.js", get(js))
        .route("/assets/print.js", get(print_js))
        .route("/assets/viewer.js", get(viewer_js))
}

// ---------- templates ----------

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub title: &'a str,
    pub text: &'a str,
}

#[derive(Debug, Clone, Default)]
pub struct Field {
    pub kind: &'static str,
    pub name: &'static str,
    pub label: String,
    pub hint: String,
    pub value: String,
    pub error: Option<String>,
    pub options: Vec<(String, String, bool)>,
    pub autocomplete: &'static str,
}

impl Field {
    pub fn input(kind: &'static str, name: &'static str, label: &str) -> Field {
        Field {
            kind,
            name,
            label: label.into(),
            ..Default::default()
        }
    }
    pub fn value(mut self, v: &str) -> Field {
        self.value = v.into();
        self
    }
    pub fn hint(mut self, h: &str) -> Field {
        self.hint = h.into();
        self
    }
    pub fn auto(mut self, a: &'static str) -> Field {
        self.autocomplete = a;
        self
    }
}

#[derive(Template, Default)]
#[template(path = "form.html")]
pub struct FormPage {
    pub title: String,
    pub errors: Vec<(String, String)>,
    pub notice: Option<String>,
    pub user: Option<SignedIn>,
    pub csrf: String,
    pub idle_seconds: i64,
    pub warning_seconds: i64,
    pub intro: Vec<String>,
    pub action: String,
    pub fields: Vec<Field>,
    pub submit: String,
    pub danger: bool,
    pub links: Vec<(String, String)>,
    pub side_forms: Vec<(String, String)>,
    pub refresh: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Row {
    pub cells: Vec<String>,
    pub links: Vec<(String, String)>,
}

/// A headed part of a page: paragraphs, a table and links.
#[derive(Debug, Default)]
pub struct Section {
    pub heading: String,
    pub paragraphs: Vec<String>,
    pub head: Vec<String>,
    pub rows: Vec<Row>,
    pub links: Vec<(String, String)>,
}

#[derive(Template, Default)]
#[template(path = "page.html")]
pub struct Page {
    pub title: String,
    pub errors: Vec<(String, String)>,
    pub notice: Option<String>,
    pub user: Option<SignedIn>,
    pub csrf: String,
    pub idle_seconds: i64,
    pub warning_seconds: i64,
    pub paragraphs: Vec<String>,
    pub table_head: Vec<String>,
    pub table_rows: Vec<Row>,
    pub links: Vec<(String, String)>,
    /// HTML rendered earlier (`SchoolResults`), placed before `sections`, unescaped. The
    /// results page puts a mark here instead (`results_pages::PART_MARK`) and splices the
    /// part in at the mark, so that its compressed form can be sent as it is.
    pub prerendered: Option<Arc<str>>,
    pub sections: Vec<Section>,
    /// A search box (GET, parameter `q`) with its current text.
    pub search: Option<String>,
    /// Reload the page after this many seconds (the results countdown).
    pub refresh: Option<i64>,
}

pub fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => AppError::Unexpected(e.into()).into_response(),
    }
}

impl FormPage {
    pub fn new(
        state: &AppState,
        data: &SessionData,
        title: &str,
        action: &str,
        submit: &str,
    ) -> FormPage {
        FormPage {
            title: title.into(),
            user: data.user.clone(),
            csrf: data.csrf.clone(),
            idle_seconds: state.settings.auth.idle_minutes * 60,
            warning_seconds: state.settings.auth.warning_minutes * 60,
            action: action.into(),
            submit: submit.into(),
            ..Default::default()
        }
    }
    /// Set an error on a field and in the summary.
    pub fn error(&mut self, field: &str, message: &str) {
        self.errors.push((field.to_string(), message.to_string()));
        if let Some(f) = self.fields.iter_mut().find(|f| f.name == field) {
            f.error.get_or_insert_with(|| message.to_string());
        }
    }
    pub fn respond(&self) -> Response {
        let status = if self.errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        render(status, self)
    }
}

impl Page {
    pub fn new(state: &AppState, s: &Signed, title: &str) -> Page {
        Page {
            title: title.into(),
            user: Some(s.user.clone()),
            csrf: s.csrf.clone(),
            idle_seconds: state.settings.auth.idle_minutes * 60,
            warning_seconds: state.settings.auth.warning_minutes * 60,
            ..Default::default()
        }
    }
}

/// A url-encoded form body, with repeated keys (checkboxes) kept.
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &Bytes) -> FormData {
        FormData(url::form_urlencoded::parse(body).into_owned().collect())
    }
    pub fn get(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    /// Every (name, value) pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Redirect with 303, replacing the session cookie.
fn redirect_with(to: &str, data: SessionData) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.extensions_mut().insert(SetSession(data));
    r
}

/// Only same-site paths are followed after sign-in.
fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/".into()
    }
}

// ---------- sign-in ----------

#[derive(Deserialize, Default)]
struct SignInQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    reset: Option<String>,
}

fn sign_in_form(state: &AppState, data: &SessionData, next: &str, email: &str) -> FormPage {
    let mut p = FormPage::new(state, data, "Sign in", "/sign-in", "Sign in");
    p.user = None;
    p.fields = vec![
        Field::input("email", "email", "Email address")
            .value(email)
            .auto("username"),
        Field::input("password", "password", "Password").auto("current-password"),
        Field::input("hidden", "next", "").value(next),
    ];
    p.links = vec![(
        "/forgotten-password".into(),
        "I have forgotten my password".into(),
    )];
    p
}

async fn home(State(state): State<AppState>, Visitor(cur): Visitor) -> Response {
    let Some(u) = cur.data.user.clone() else {
        return Redirect::to("/sign-in").into_response();
    };
    let s = Signed {
        csrf: cur.data.csrf.clone(),
        data: cur.data,
        user: u,
    };
    let mut p = Page::new(&state, &s, "Welcome to the NCA Portal");
    p.paragraphs = vec![format!(
        "You are signed in as {} for {} ({}).",
        s.user.email,
        s.user.org_name,
        s.user.kind.label()
    )];
    p.links = account_links(&s.user);
    render(StatusCode::OK, &p)
}

fn account_links(u: &SignedIn) -> Vec<(String, String)> {
    let mut l = vec![("/account".to_string(), "My account".to_string())];
    if u.may(Action::ViewResults) {
        l.insert(0, ("/results".into(), "KS2 test results".into()));
    }
    if matches!(u.kind, OrgKind::Ks2School | OrgKind::La | OrgKind::Mat) {
        l.insert(0, ("/activities".into(), "My Activity".into()));
    }
    if u.may(Action::Operate) {
        l.insert(
            0,
            (
                "/operator/activities".into(),
                "Activities: every school's status".into(),
            ),
        );
    }
    if u.may(Action::ManageUsers) {
        l.push(("/account/users".into(), "Manage users".into()));
        if matches!(u.kind, OrgKind::Ks2School | OrgKind::La | OrgKind::Mat) {
            l.push(("/account/tokens".into(), "API tokens".into()));
        }
    }
    l.push((
        "/account/organisation".into(),
        "View organisation details".into(),
    ));
    if u.orgs > 1 && u.kind == OrgKind::La {
        l.push(("/account/switch".into(), "Switch local authority".into()));
    }
    l.push(("/account/password".into(), "Change password".into()));
    l
}

async fn sign_in_page(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    Query(q): Query<SignInQuery>,
) -> Response {
    if let Some(r) = queue_if_busy(&state, &cur.data, &q.next) {
        return r;
    }
    let mut p = sign_in_form(&state, &cur.data, &q.next, "");
    if q.timeout.is_some() || cur.timed_out {
        p.notice = Some(format!(
            "You have been signed out because you were inactive for {} minutes. Sign in to carry on where you left off.",
            state.settings.auth.idle_minutes
        ));
    }
    if q.reset.is_some() {
        p.notice = Some("Your password has been set. Sign in with your new password.".into());
    }
    p.respond()
}

fn queue_url(next: &str) -> String {
    format!(
        "/sign-in/queue?next={}",
        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    )
}

/// Send a browser without a pass to the sign-in queue when the queue is forming (hashing is
/// full or others already wait); None lets it sign in now.
fn queue_if_busy(state: &AppState, data: &SessionData, next: &str) -> Option<Response> {
    let now = state.clock.now();
    let free = state.gates.sign_ins.available_permits();
    if !state.queue.must_queue(now, free, data.queue) {
        return None;
    }
    Some(join_queue(state, data, next))
}

fn join_queue(state: &AppState, data: &SessionData, next: &str) -> Response {
    let mut d = data.clone();
    d.queue = Some(state.queue.join(state.clock.now(), data.queue));
    redirect_with(&queue_url(next), d)
}

/// The waiting page: place, honest wait, and a refresh that cannot move anyone forward.
async fn queue_page(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    Query(q): Query<SignInQuery>,
) -> Response {
    let next = safe_next(&q.next);
    let sign_in = format!(
        "/sign-in?next={}",
        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    );
    let now = state.clock.now();
    let Some(ticket) = cur.data.queue.filter(|_| state.queue.healthy(now)) else {
        return Redirect::to(&sign_in).into_response();
    };
    match state.queue.status(now, ticket) {
        crate::queue::Status::Admitted => Redirect::to(&sign_in).into_response(),
        crate::queue::Status::Waiting {
            position,
            waiting,
            wait_secs,
        } => {
            let wait = match wait_secs {
                s if s < 60 => "less than a minute".to_string(),
                s => {
                    let m = (s + 59) / 60;
                    format!("about {m} minute{}", if m == 1 { "" } else { "s" })
                }
            };
            let mut p = Page {
                title: "You are in a queue to sign in".into(),
                csrf: cur.data.csrf.clone(),
                ..Default::default()
            };
            p.paragraphs = vec![
                format!("Many people are signing in right now. You are number {position} of {waiting} in the queue."),
                format!("Your estimated wait is {wait}. This page updates itself every {} seconds and takes you to sign in when it is your turn.", crate::queue::REFRESH_SECS),
                "Keep this page open. You do not need to refresh it: refreshing does not move you forward, and you will not lose your place.".into(),
                "If you are waiting for results, they will be there when you have signed in: everyone's results open at the same time.".into(),
            ];
            p.refresh = Some(crate::queue::REFRESH_SECS);
            let mut r = render(StatusCode::OK, &p);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}

async fn sign_in(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    addr: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    let (email, password, next) = (f.get("email"), f.get("password"), safe_next(&f.get("next")));
    let mut p = sign_in_form(&state, &cur.data, &next, &email);
    if email.trim().is_empty() {
        p.error("email", "Enter your email address");
    }
    if password.is_empty() {
        p.error("password", "Enter your password");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    // Past capacity: queue. A pass from the queue is good for this one attempt.
    if let Some(r) = queue_if_busy(&state, &cur.data, &next) {
        return Ok(r);
    }
    let mut data = cur.data.clone();
    if let Some(t) = data.queue
        && state.queue.use_pass(state.clock.now() * 1000, t)
    {
        data.queue = None;
    }
    let device = session::device(&headers, &state);
    let step = auth::password_step(
        &state,
        ClientAddr::ip_of(addr),
        &email,
        &password,
        device.as_deref(),
        data.clone(),
    )
    .await?;
    Ok(match step {
        PasswordStep::SignedIn(d) => redirect_with(&next, *d),
        PasswordStep::NeedsMfa(d) => redirect_with(
            &format!(
                "/sign-in/mfa?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ),
            *d,
        ),
        PasswordStep::Refused => {
            p.error("email", "Enter a valid email address and password");
            p.respond()
        }
        PasswordStep::Busy if state.queue.healthy(state.clock.now()) => {
            join_queue(&state, &data, &next)
        }
        PasswordStep::Busy => {
            p.error(
                "email",
                "Many people are signing in right now. Wait a few seconds, then select Sign in again",
            );
            let mut r = render(StatusCode::SERVICE_UNAVAILABLE, &p);
            r.headers_mut().insert(header::RETRY_AFTER, 5.into());
            r
        }
        PasswordStep::Throttled(wait) => {
            p.error(
                "email",
                &format!("Too many attempts to sign in. Wait {wait} seconds, then try again"),
            );
            let mut r = render(StatusCode::TOO_MANY_REQUESTS, &p);
            r.headers_mut().insert(header::RETRY_AFTER, wait.into());
            r
        }
    })
}

fn mfa_form(state: &AppState, data: &SessionData, next: &str) -> FormPage {
    let mut p = FormPage::new(state, data, "Check your email", "/sign-in/mfa", "Continue");
    p.user = None;
    p.intro = vec![format!(
        "We have sent a 6-digit code to your email address. The code expires after {} minutes and can be used once.",
        state.settings.auth.mfa_code_minutes
    )];
    p.fields = vec![
        Field::input("text", "code", "Enter the code").auto("one-time-code"),
        Field::input("hidden", "next", "").value(next),
    ];
    p.side_forms = vec![("/sign-in/mfa/resend".into(), "Send a new code".into())];
    p
}

async fn mfa_page(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    Query(q): Query<SignInQuery>,
) -> Response {
    if cur.data.pending.is_none() {
        return Redirect::to("/sign-in").into_response();
    }
    mfa_form(&state, &cur.data, &q.next).respond()
}

async fn mfa(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    let next = safe_next(&f.get("next"));
    let code = f.get("code");
    let mut p = mfa_form(&state, &cur.data, &next);
    if code.trim().len() != 6 || !code.trim().chars().all(|c| c.is_ascii_digit()) {
        p.error("code", "Enter the 6-digit code from the email");
        return Ok(p.respond());
    }
    Ok(
        match auth::mfa_step(&state, ClientAddr::ip_of(addr), cur.data.clone(), &code).await? {
            MfaStep::SignedIn(d) => {
                let uid = d.user.as_ref().map(|u| u.uid.clone()).unwrap_or_default();
                let mut r = redirect_with(&next, *d);
                r.extensions_mut().insert(SetDevice(auth::device_value(
                    &uid,
                    &state.today(state.clock.now()),
                )));
                r
            }
            MfaStep::Wrong => {
                p.error(
                    "code",
                    "The code is not correct. Check the email and try again",
                );
                p.respond()
            }
            MfaStep::Dead(why) => {
                p.error("code", why);
                p.respond()
            }
            MfaStep::NotPending => Redirect::to("/sign-in").into_response(),
        },
    )
}

async fn mfa_resend(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    let Some(pending) = cur.data.pending.clone() else {
        return Ok(Redirect::to("/sign-in").into_response());
    };
    let now = state.clock.now();
    let mut p = mfa_form(&state, &cur.data, "/");
    if let Some(c) = db::mfa_code(&state.db, &pending.uid).await? {
        let wait = c.sent_at + state.settings.auth.mfa_resend_seconds - now;
        if wait > 0 {
            p.error(
                "code",
                &format!("Wait {wait} seconds before asking for a new code"),
            );
            return Ok(p.respond());
        }
    }
    if let Some(u) = db::user(&state.db, &pending.uid).await? {
        auth::send_mfa_code(&state, &u.id, &u.email).await?;
    }
    let mut data = cur.data.clone();
    if let Some(pd) = &mut data.pending {
        pd.at = now;
    }
    Ok(redirect_with("/sign-in/mfa", data))
}

async fn sign_out(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    if let Some(u) = &cur.data.user {
        db::audit(
            &state.db,
            db::Audit {
                actor: Some(&u.email),
                org_id: Some(&u.org),
                action: "sign-out",
                ..Default::default()
            },
            state.clock.now(),
        )
        .await?;
    }
    Ok(redirect_with("/sign-in", SessionData::fresh()))
}

async fn keepalive(s: Signed, headers: HeaderMap) -> Result<StatusCode, AppError> {
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    check_csrf(&s.csrf, given)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- passwords ----------

fn forgotten_form(state: &AppState, data: &SessionData) -> FormPage {
    let mut p = FormPage::new(
        state,
        data,
        "Reset your password",
        "/forgotten-password",
        "Send reset link",
    );
    p.intro = vec!["Enter the email address you use to sign in. If it has an account, we will email a link to set a new password.".into()];
    p.fields = vec![Field::input("email", "email", "Email address").auto("username")];
    p
}

async fn forgotten_page(State(state): State<AppState>, Visitor(cur): Visitor) -> Response {
    forgotten_form(&state, &cur.data).respond()
}

async fn forgotten(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    let email = normalise_email(&f.get("email"));
    let mut p = forgotten_form(&state, &cur.data);
    if email.is_empty() {
        p.error("email", "Enter your email address");
        return Ok(p.respond());
    }
    let now = state.clock.now();
    if let Err(wait) = state.throttle.check(ClientAddr::ip_of(addr), &email, now) {
        p.error(
            "email",
            &format!("Too many attempts. Wait {wait} seconds, then try again"),
        );
        return Ok(render(StatusCode::TOO_MANY_REQUESTS, &p));
    }
    // The same answer whether or not the address has an account.
    if let Some(u) = db::user_by_email(&state.db, &email).await?
        && u.password_hash.is_some()
    {
        let (token, hash) = auth::new_link_token();
        let minutes = state.settings.auth.reset_minutes;
        db::insert_token(&state.db, &hash, &u.id, "reset", now + minutes * 60).await?;
        state
            .mailer
            .send(
                &u.email,
                "Reset your NCA Portal password",
                &format!(
                    "Use this link to set a new password. It can be used once and expires in {minutes} minutes:\n{}/set-password?token={token}\n\n\
                     If you did not ask for this, you can ignore this email.\n",
                    state.public_url
                ),
            )
            .await?;
        db::audit(
            &state.db,
            db::Audit {
                actor: Some(&u.email),
                action: "password-reset-requested",
                ..Default::default()
            },
            now,
        )
        .await?;
    }
    Ok(render(
        StatusCode::OK,
        &Page {
            title: "Check your email".into(),
            paragraphs: vec![format!(
                "If {email} has an NCA Portal account, we have sent it a link to reset the password."
            )],
            links: vec![("/sign-in".into(), "Return to sign in".into())],
            csrf: cur.data.csrf.clone(),
            ..Default::default()
        },
    ))
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

fn set_password_form(state: &AppState, data: &SessionData, token: &str) -> FormPage {
    let mut p = FormPage::new(
        state,
        data,
        "Set your password",
        "/set-password",
        "Set password",
    );
    p.user = None;
    p.intro = vec!["Your password must be at least 8 characters long and contain upper and lower case letters, a number and a special character, such as ?, !, & or £.".into()];
    p.fields = vec![
        Field::input("password", "password", "New password").auto("new-password"),
        Field::input("password", "confirm", "Confirm new password").auto("new-password"),
        Field::input("hidden", "token", "").value(token),
    ];
    p
}

async fn set_password_page(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    Query(q): Query<TokenQuery>,
) -> Result<Response, AppError> {
    let now = state.clock.now();
    let hash = auth::token_hash(&q.token);
    let valid = db::token_user(&state.db, &hash, "invite", now)
        .await?
        .is_some()
        || db::token_user(&state.db, &hash, "reset", now)
            .await?
            .is_some();
    if !valid {
        return Ok(dead_link(&state, &cur.data));
    }
    Ok(set_password_form(&state, &cur.data, &q.token).respond())
}

fn dead_link(_state: &AppState, data: &SessionData) -> Response {
    render(StatusCode::GONE, &Page {
        title: "This link has expired or has already been used".into(),
        paragraphs: vec!["Ask your account manager for a new invitation, or reset your password from the sign-in page.".into()],
        links: vec![("/forgotten-password".into(), "Reset your password".into())],
        csrf: data.csrf.clone(),
        ..Default::default()
    })
}

async fn set_password(
    State(state): State<AppState>,
    Visitor(cur): Visitor,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&cur.data.csrf, &f.get("csrf"))?;
    let token = f.get("token");
    let now = state.clock.now();
    let hash = auth::token_hash(&token);
    let uid = match db::token_user(&state.db, &hash, "invite", now).await? {
        Some(u) => Some(u),
        None => db::token_user(&state.db, &hash, "reset", now).await?,
    };
    let Some(user) = (match uid {
        Some(id) => db::user(&state.db, &id).await?,
        None => None,
    }) else {
        return Ok(dead_link(&state, &cur.data));
    };
    let (pw, confirm) = (f.get("password"), f.get("confirm"));
    let mut p = set_password_form(&state, &cur.data, &token);
    for problem in crate::auth::password::policy_problems(&pw, &user.email) {
        p.error("password", problem);
    }
    if pw != confirm {
        p.error("confirm", "The passwords do not match");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    if !db::use_token(&state.db, &hash, now).await? {
        return Ok(dead_link(&state, &cur.data));
    }
    store_new_password(&state, &user, pw, None, "set").await?;
    Ok(Redirect::to("/sign-in?reset=1").into_response())
}

/// Hash and store a new password, end every session issued before it, audit it and tell the
/// user (`verb`: "set" from a link, "changed" by the signed-in user).
async fn store_new_password(
    state: &AppState,
    user: &db::User,
    password: String,
    org: Option<&str>,
    verb: &str,
) -> Result<(), AppError> {
    let now = state.clock.now();
    let stored = state.hasher.hash(password).await;
    db::set_password(&state.db, &user.id, &stored, now).await?;
    state.revocations.set(&user.id, now);
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&user.email),
            org_id: org,
            action: &format!("password-{verb}"),
            target: Some(&user.email),
            ..Default::default()
        },
        now,
    )
    .await?;
    state
        .mailer
        .send(
            &user.email,
            &format!("Your NCA Portal password has been {verb}"),
            &format!(
                "Your password was {verb}. If this was not you, contact the helpline at once.\n"
            ),
        )
        .await?;
    Ok(())
}

#[derive(Deserialize, Default)]
struct ExpiredQuery {
    #[serde(default)]
    expired: Option<String>,
}

fn change_form(state: &AppState, s: &Signed) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        "Change password",
        "/account/password",
        "Change password",
    );
    p.fields = vec![
        Field::input("password", "current", "Current password").auto("current-password"),
        Field::input("password", "password", "New password")
            .hint("At least 8 characters, with upper and lower case letters, a number and a special character")
            .auto("new-password"),
        Field::input("password", "confirm", "Confirm new password").auto("new-password"),
    ];
    p
}

async fn change_password_page(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<ExpiredQuery>,
) -> Response {
    let mut p = change_form(&state, &s);
    if q.expired.is_some() || s.user.must_change {
        p.notice = Some(format!(
            "Your password has expired: passwords must be changed every {} days. Choose a new one to continue.",
            state.settings.auth.password_expiry_days
        ));
    }
    p.respond()
}

async fn change_password(
    State(state): State<AppState>,
    s: Signed,
    body: Bytes,
) -> Result<Response, AppError> {
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let mut p = change_form(&state, &s);
    let (cur, pw, confirm) = (f.get("current"), f.get("password"), f.get("confirm"));
    let user = db::user(&state.db, &s.user.uid)
        .await?
        .ok_or(AppError::Forbidden)?;
    if !state
        .hasher
        .verify(cur.clone(), user.password_hash.clone())
        .await
    {
        p.error("current", "Your current password is not correct");
    }
    for problem in crate::auth::password::policy_problems(&pw, &user.email) {
        p.error("password", problem);
    }
    if pw == cur && !pw.is_empty() {
        p.error(
            "password",
            "Your new password must be different from your current one",
        );
    }
    if pw != confirm {
        p.error("confirm", "The passwords do not match");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let now = state.clock.now();
    // Every other session of this user ends; this browser gets a new one.
    store_new_password(&state, &user, pw, Some(&s.user.org), "changed").await?;
    let mut data = s.data.clone();
    let mut fresh = auth::start_session(&state, &user, Some(&s.user.org))
        .await
        .map_err(AppError::Unexpected)?;
    fresh.must_change = false;
    fresh.iat = now;
    data.user = Some(fresh);
    Ok(redirect_with("/account", data))
}

// ---------- account ----------

async fn account(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    let mut p = Page::new(&state, &s, "My account");
    let perms: Vec<&str> = s.user.roles.iter().map(Role::label).collect();
    p.paragraphs = vec![
        format!("Name: {}", s.user.name),
        format!("Email address: {}", s.user.email),
        format!(
            "Organisation: {} ({})",
            s.user.org_name,
            s.user.kind.label()
        ),
        format!(
            "Permissions: {}",
            if perms.is_empty() {
                "none".into()
            } else {
                perms.join(", ")
            }
        ),
    ];
    p.links = account_links(&s.user);
    Ok(render(StatusCode::OK, &p))
}

pub fn actor(s: &Signed, addr: Option<Extension<ClientAddr>>) -> Actor {
    Actor {
        label: s.user.email.clone(),
        user_id: Some(s.user.uid.clone()),
        roles: s.user.roles,
        ip: Some(ClientAddr::ip_of(addr).to_string()),
    }
}

async fn users(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let members = db::members(&state.db, &s.user.org).await?;
    let mut p = Page::new(&state, &s, "Manage users");
    if matches!(s.user.kind, OrgKind::Ks2School | OrgKind::Ks3School) {
        p.paragraphs.push(format!(
            "Your school has {} of {} users, and {} of {} account managers.",
            members.len(),
            crate::auth::roles::SCHOOL_MAX_USERS,
            members
                .iter()
                .filter(|m| m.roles.has(Role::AccountManager))
                .count(),
            crate::auth::roles::SCHOOL_MAX_ACCOUNT_MANAGERS
        ));
    }
    p.table_head = vec![
        "Name".into(),
        "Email address".into(),
        "Permissions".into(),
        "Status".into(),
        "Actions".into(),
    ];
    p.table_rows = members
        .iter()
        .map(|m| Row {
            cells: vec![
                m.name.clone(),
                m.email.clone(),
                m.roles
                    .iter()
                    .map(Role::label)
                    .collect::<Vec<_>>()
                    .join(", "),
                if m.active {
                    "Active".into()
                } else {
                    "Invited".into()
                },
            ],
            links: if m
                .roles
                .iter()
                .all(|r| crate::auth::roles::can_grant(s.user.roles, r))
            {
                vec![
                    (
                        format!("/account/users/{}/permissions", m.user_id),
                        format!("Amend permissions for {}", m.name),
                    ),
                    (
                        format!("/account/users/{}/remove", m.user_id),
                        format!("Remove {}", m.name),
                    ),
                ]
            } else {
                vec![]
            },
        })
        .collect();
    p.links = vec![("/account/users/new".into(), "Create a new user".into())];
    Ok(render(StatusCode::OK, &p))
}

fn role_options(s: &Signed, checked: RoleSet) -> Vec<(String, String, bool)> {
    Role::for_kind(s.user.kind)
        .filter(|r| crate::auth::roles::can_grant(s.user.roles, *r))
        .map(|r| (r.name().to_string(), r.label().to_string(), checked.has(r)))
        .collect()
}

fn new_user_form(
    state: &AppState,
    s: &Signed,
    name: &str,
    email: &str,
    roles: RoleSet,
) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        "Create a new user",
        "/account/users/new",
        "Create user",
    );
    p.fields = vec![
        Field::input("text", "name", "Full name").value(name).auto("off"),
        Field::input("email", "email", "Email address")
            .value(email)
            .hint("For a school user who is also a local authority moderator, use their school address with +mod before the @")
            .auto("off"),
        Field {
            kind: "checkboxes",
            name: "roles",
            label: "Permissions".into(),
            hint: "Select all that apply".into(),
            options: role_options(s, roles),
            ..Default::default()
        },
    ];
    p
}

fn parse_roles(values: &[String]) -> RoleSet {
    RoleSet::of(
        &values
            .iter()
            .filter_map(|v| Role::parse(v))
            .collect::<Vec<_>>(),
    )
}

async fn new_user_page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    Ok(new_user_form(&state, &s, "", "", RoleSet::default()).respond())
}

fn refusal_field(e: &AccountError) -> &'static str {
    match e {
        AccountError::Field(f, _) => f,
        AccountError::CannotGrant(_) => "roles",
        _ => "email",
    }
}

async fn new_user(
    State(state): State<AppState>,
    s: Signed,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let roles = parse_roles(&f.all("roles"));
    let (name, email) = (f.get("name"), f.get("email"));
    match accounts::create_user(
        &state,
        &actor(&s, addr),
        &s.user.org,
        &name,
        &email,
        roles,
        None,
    )
    .await
    {
        Ok(_) => Ok(Redirect::to("/account/users").into_response()),
        Err(AccountFailure::Refused(e)) => {
            let mut p = new_user_form(&state, &s, &name, &email, roles);
            p.error(refusal_field(&e), &e.to_string());
            Ok(p.respond())
        }
        Err(AccountFailure::Unexpected(e)) => Err(AppError::Unexpected(e)),
    }
}

async fn member(state: &AppState, s: &Signed, id: &str) -> Result<db::Member, AppError> {
    db::members(&state.db, &s.user.org)
        .await?
        .into_iter()
        .find(|m| m.user_id == id)
        .ok_or(AppError::NotFound)
}

fn permissions_form(state: &AppState, s: &Signed, m: &db::Member, roles: RoleSet) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        &format!("Amend permissions for {}", m.name),
        &format!("/account/users/{}/permissions", m.user_id),
        "Save permissions",
    );
    p.intro = vec![m.email.clone()];
    p.fields = vec![Field {
        kind: "checkboxes",
        name: "roles",
        label: "Permissions".into(),
        hint: "Select all that apply".into(),
        options: role_options(s, roles),
        ..Default::default()
    }];
    p
}

async fn permissions_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let m = member(&state, &s, &id).await?;
    Ok(permissions_form(&state, &s, &m, m.roles).respond())
}

async fn permissions(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let m = member(&state, &s, &id).await?;
    let roles = parse_roles(&f.all("roles"));
    match accounts::set_permissions(&state, &actor(&s, addr), &s.user.org, &id, roles).await {
        Ok(()) if id == s.user.uid => {
            // Amending one's own permissions: carry on with a session that has them.
            let user = db::user(&state.db, &id).await?.ok_or(AppError::NotFound)?;
            let mut data = s.data.clone();
            data.user = Some(auth::start_session(&state, &user, Some(&s.user.org)).await?);
            Ok(redirect_with("/account/users", data))
        }
        Ok(()) => Ok(Redirect::to("/account/users").into_response()),
        Err(AccountFailure::Refused(e)) => {
            let mut p = permissions_form(&state, &s, &m, roles);
            p.error("roles", &e.to_string());
            Ok(p.respond())
        }
        Err(AccountFailure::Unexpected(e)) => Err(AppError::Unexpected(e)),
    }
}

fn remove_form(state: &AppState, s: &Signed, m: &db::Member) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        &format!("Are you sure you want to remove {}?", m.name),
        &format!("/account/users/{}/remove", m.user_id),
        "Delete user",
    );
    p.danger = true;
    p.intro = vec![format!(
        "{} will no longer be able to sign in to the NCA Portal for {}.",
        m.email, s.user.org_name
    )];
    p.links = vec![("/account/users".into(), "Cancel".into())];
    p
}

async fn remove_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let m = member(&state, &s, &id).await?;
    Ok(remove_form(&state, &s, &m).respond())
}

async fn remove(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::ManageUsers)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let m = member(&state, &s, &id).await?;
    match accounts::remove_user(&state, &actor(&s, addr), &s.user.org, &id).await {
        Ok(()) => Ok(Redirect::to("/account/users").into_response()),
        Err(AccountFailure::Refused(e)) => {
            let mut p = remove_form(&state, &s, &m);
            p.errors.push(("main-content".into(), e.to_string()));
            Ok(p.respond())
        }
        Err(AccountFailure::Unexpected(e)) => Err(AppError::Unexpected(e)),
    }
}

// ---------- organisation and LA switcher ----------

fn org_form(state: &AppState, s: &Signed, org: &db::Org, phone: &str, email: &str) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        "Organisation details",
        "/account/organisation",
        "Save details",
    );
    p.intro = vec![
        format!("{} ({})", org.name, org.kind.label()),
        format!("DfE number or code: {}", org.id),
        "To change the name, address or DfE number, update Get Information about Schools (GIAS): the portal follows it.".into(),
    ];
    if s.user.may(Action::UpdateOrgDetails) {
        p.fields = vec![
            Field::input("tel", "phone", "Telephone number")
                .value(phone)
                .auto("tel"),
            Field::input("email", "email", "Contact email address")
                .value(email)
                .auto("email"),
        ];
    } else {
        p.intro.push(format!(
            "Telephone: {}",
            if phone.is_empty() { "not given" } else { phone }
        ));
        p.intro.push(format!(
            "Email: {}",
            if email.is_empty() { "not given" } else { email }
        ));
        p.submit.clear();
    }
    p
}

async fn org_page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    let org = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::NotFound)?;
    let p = org_form(&state, &s, &org, &org.phone, &org.email);
    if p.submit.is_empty() {
        return Ok(render(
            StatusCode::OK,
            &Page {
                paragraphs: p.intro,
                ..Page::new(&state, &s, "Organisation details")
            },
        ));
    }
    Ok(p.respond())
}

async fn org_update(
    State(state): State<AppState>,
    s: Signed,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::UpdateOrgDetails)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let org = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::NotFound)?;
    let (phone, email) = (
        f.get("phone").trim().to_string(),
        normalise_email(&f.get("email")),
    );
    let mut p = org_form(&state, &s, &org, &phone, &email);
    let digits = phone.chars().filter(|c| c.is_ascii_digit()).count();
    if !phone.is_empty()
        && (!(10..=13).contains(&digits)
            || phone
                .chars()
                .any(|c| !(c.is_ascii_digit() || " +()-".contains(c))))
    {
        p.error(
            "phone",
            "Enter a telephone number, like 01632 960 001 or +44 808 157 0192",
        );
    }
    if !email.is_empty() && email.parse::<lettre::Address>().is_err() {
        p.error(
            "email",
            "Enter an email address in the correct format, like name@example.com",
        );
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let now = state.clock.now();
    db::update_org_contact(&state.db, &org.id, &phone, &email, now).await?;
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&s.user.email),
            org_id: Some(&org.id),
            action: "org-details-updated",
            target: Some(&org.id),
            detail: format!(
                "phone {:?} -> {phone:?}; email {:?} -> {email:?}",
                org.phone, org.email
            ),
            ip: Some(ClientAddr::ip_of(addr).to_string()),
        },
        now,
    )
    .await?;
    accounts::notify_managers(
        &state,
        &org.id,
        "Organisation details updated",
        &format!("{} updated {}'s contact details.\n", s.user.email, org.name),
    )
    .await?;
    Ok(Redirect::to("/account/organisation").into_response())
}

async fn switch_options(
    state: &AppState,
    s: &Signed,
) -> Result<Vec<(String, String, bool)>, AppError> {
    let mut out = Vec::new();
    for (org_id, _) in db::memberships(&state.db, &s.user.uid).await? {
        if let Some(o) = db::org(&state.db, &org_id).await? {
            out.push((
                o.id.clone(),
                format!("{} ({})", o.name, o.id),
                o.id == s.user.org,
            ));
        }
    }
    Ok(out)
}

async fn switch_page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    s.require(Action::SwitchLa)?;
    let mut p = FormPage::new(
        &state,
        &s.data,
        "Switch local authority",
        "/account/switch",
        "Switch",
    );
    p.fields = vec![Field {
        kind: "radios",
        name: "org",
        label: "Which local authority do you want to work in?".into(),
        options: switch_options(&state, &s).await?,
        ..Default::default()
    }];
    Ok(p.respond())
}

async fn switch(
    State(state): State<AppState>,
    s: Signed,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::SwitchLa)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let org = f.get("org");
    let user = db::user(&state.db, &s.user.uid)
        .await?
        .ok_or(AppError::Forbidden)?;
    let Ok(mut fresh) = auth::start_session(&state, &user, Some(&org)).await else {
        return Err(AppError::Forbidden);
    };
    fresh.iat = s.user.iat;
    let mut data = s.data.clone();
    data.user = Some(fresh);
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&s.user.email),
            org_id: Some(&org),
            action: "switched-la",
            ..Default::default()
        },
        state.clock.now(),
    )
    .await?;
    Ok(redirect_with("/", data))
}

// ---------- assets ----------

/// A static asset, cached by browsers for an hour.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../assets/portal.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/session.js"),
    )
}

async fn print_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/print.js"),
    )
}

async fn viewer_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/viewer.js"),
    )
}
