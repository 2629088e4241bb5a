//! Black-box tests of identity and access through the real router: sign-in with email MFA,
//! sessions, throttling, account management rules, CSRF, and the TLS listener.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use nca_portal::accounts::{self, AccountError, AccountFailure, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, db, email, orgs};
use tower::ServiceExt;

const PW: &str = "Tr0ubadour&Bells-42";
const SCHOOL: &str = "9992001";

struct App {
    state: AppState,
    router: nca_portal::App,
    _dir: tempfile::TempDir,
}

async fn spawn_app(clock: Clock) -> App {
    nca_portal::http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(
        Path::new("/nonexistent-config"),
        &Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let state = AppState::open(settings, clock).await.unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("data-pipeline/tests/fixtures/rules");
    orgs::import(&state.db, &fixture, 0).await.unwrap();
    App {
        router: nca_portal::app(state.clone()),
        state,
        _dir: dir,
    }
}

impl App {
    async fn user(&self, email: &str, org: &str, roles: &[Role]) -> String {
        accounts::create_user(
            &self.state,
            &Actor::cli(),
            org,
            email,
            email,
            RoleSet::of(roles),
            Some(PW),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .user_id
    }

    fn code_for(&self, email: &str) -> String {
        let (_, body) =
            email::latest_in_outbox(&self.state.settings.outbox(), email).expect("an email");
        let at = body.find("code is ").expect("a code") + 8;
        body[at..at + 6].to_string()
    }
}

/// A browser: cookies kept between requests.
#[derive(Default, Clone)]
struct Browser {
    cookies: HashMap<String, String>,
}

struct Resp {
    status: StatusCode,
    body: String,
    location: Option<String>,
}

impl Browser {
    async fn send(
        &mut self,
        app: &App,
        method: &str,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Resp {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = Request::builder().method(method).uri(path);
        if !cookie.is_empty() {
            req = req.header(header::COOKIE, cookie);
        }
        if !content_type.is_empty() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        let resp = app
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let c = v.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, val) = kv.split_once('=').unwrap();
            self.cookies.insert(k.to_string(), val.to_string());
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Resp {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            location,
        }
    }
    async fn json(&mut self, app: &App, path: &str, body: serde_json::Value) -> Resp {
        self.send(app, "POST", path, "application/json", body.to_string())
            .await
    }
    async fn get(&mut self, app: &App, path: &str) -> Resp {
        self.send(app, "GET", path, "", String::new()).await
    }
    /// A page's CSRF token (from any form on it).
    async fn csrf(&mut self, app: &App, path: &str) -> String {
        let page = self.get(app, path).await.body;
        let at = page.find("name=\"csrf\" value=\"").expect("a form") + 19;
        page[at..at + 32].to_string()
    }
    async fn form(&mut self, app: &App, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(app, "POST", path, "application/x-www-form-urlencoded", body)
            .await
    }
    async fn sign_in(&mut self, app: &App, email: &str) {
        let r = self
            .json(
                app,
                "/api/v1/sign-in",
                serde_json::json!({"email": email, "password": PW}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.contains("\"mfa_required\":true") {
            let code = app.code_for(email);
            let r = self
                .json(
                    app,
                    "/api/v1/sign-in/mfa",
                    serde_json::json!({ "code": code }),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
}

#[tokio::test]
async fn sign_in_needs_the_emailed_code_once_a_day_per_browser_and_codes_cannot_be_replayed() {
    let app = spawn_app(Clock::System).await;
    app.user(
        "head@school.sch.uk",
        SCHOOL,
        &[Role::AccountManager, Role::GeneralUser],
    )
    .await;
    let mut b = Browser::default();
    assert_eq!(b.get(&app, "/api/v1/me").await.status, 401);
    let r = b
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "head@school.sch.uk", "password": "wrong"}),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = b
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "head@school.sch.uk", "password": PW}),
        )
        .await;
    assert!(r.body.contains("\"mfa_required\":true"), "{}", r.body);
    assert_eq!(
        b.get(&app, "/api/v1/me").await.status,
        401,
        "not in before the code"
    );
    let code = app.code_for("head@school.sch.uk");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = b
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": wrong }),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = b
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": code }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let me = b.get(&app, "/api/v1/me").await;
    assert_eq!(me.status, 200);
    assert!(
        me.body.contains(SCHOOL) && me.body.contains("account-manager"),
        "{}",
        me.body
    );

    // Replay: the used code does not sign in another browser.
    let mut other = Browser::default();
    let r = other
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "head@school.sch.uk", "password": PW}),
        )
        .await;
    assert!(r.body.contains("\"mfa_required\":true"));
    let r = other
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": code }),
        )
        .await;
    let fresh = app.code_for("head@school.sch.uk");
    if fresh != code {
        assert_eq!(r.status, 401, "an old code is refused: {}", r.body);
    }
    let r = other
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": fresh }),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = other
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": fresh }),
        )
        .await;
    assert_eq!(
        r.status, 400,
        "a used code cannot be used again: {}",
        r.body
    );

    // The first browser signs out and back in the same day: no code asked.
    let r = b
        .json(&app, "/api/v1/sign-out", serde_json::json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get(&app, "/api/v1/me").await.status, 401);
    let r = b
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "head@school.sch.uk", "password": PW}),
        )
        .await;
    assert!(r.body.contains("\"signed_in\":true"), "{}", r.body);
}

#[tokio::test]
async fn codes_expire_after_ten_minutes_and_allow_five_attempts() {
    let app = spawn_app(Clock::paused_at(1_750_000_000)).await;
    app.user("a@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    let mut b = Browser::default();
    b.json(
        &app,
        "/api/v1/sign-in",
        serde_json::json!({"email": "a@school.sch.uk", "password": PW}),
    )
    .await;
    let code = app.code_for("a@school.sch.uk");
    app.state.clock.advance(10 * 60 + 1);
    let r = b
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": code }),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);

    let mut b = Browser::default();
    b.json(
        &app,
        "/api/v1/sign-in",
        serde_json::json!({"email": "a@school.sch.uk", "password": PW}),
    )
    .await;
    let code = app.code_for("a@school.sch.uk");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let r = b
            .json(
                &app,
                "/api/v1/sign-in/mfa",
                serde_json::json!({ "code": wrong }),
            )
            .await;
        assert_eq!(r.status, 401);
        assert!(r.body.contains("wrong code"), "{}", r.body);
    }
    let r = b
        .json(
            &app,
            "/api/v1/sign-in/mfa",
            serde_json::json!({ "code": code }),
        )
        .await;
    assert_eq!(
        r.status, 401,
        "the right code after 5 wrong ones is refused"
    );
    assert!(r.body.contains("too many times"), "{}", r.body);
}

#[tokio::test]
async fn sessions_end_after_thirty_idle_minutes_and_activity_keeps_them() {
    let app = spawn_app(Clock::paused_at(1_750_000_000)).await;
    app.user("a@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    let mut b = Browser::default();
    b.sign_in(&app, "a@school.sch.uk").await;
    for _ in 0..3 {
        app.state.clock.advance(25 * 60);
        assert_eq!(
            b.get(&app, "/api/v1/me").await.status,
            200,
            "activity within 30 minutes"
        );
    }
    app.state.clock.advance(30 * 60 + 61);
    assert_eq!(b.get(&app, "/api/v1/me").await.status, 401);
    let page = b.get(&app, "/account").await;
    assert_eq!(page.status, 303);
    assert!(
        page.location
            .unwrap()
            .starts_with("/sign-in?next=%2Faccount")
    );
}

#[tokio::test]
async fn expired_passwords_must_be_changed_first() {
    let app = spawn_app(Clock::paused_at(1_750_000_000)).await;
    app.user("a@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    app.state.clock.advance(61 * 86_400);
    let mut b = Browser::default();
    b.sign_in(&app, "a@school.sch.uk").await;
    let r = b.get(&app, "/account").await;
    assert_eq!(r.location.as_deref(), Some("/account/password?expired=1"));
    assert_eq!(b.get(&app, "/account/password").await.status, 200);
}

#[tokio::test]
async fn removal_and_password_change_end_sessions_at_once() {
    let app = spawn_app(Clock::System).await;
    app.user("head@school.sch.uk", SCHOOL, &[Role::AccountManager])
        .await;
    let uid = app
        .user("teacher@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    let mut t = Browser::default();
    t.sign_in(&app, "teacher@school.sch.uk").await;
    assert_eq!(t.get(&app, "/api/v1/me").await.status, 200);
    let manager = Actor {
        label: "head@school.sch.uk".into(),
        user_id: None,
        roles: RoleSet::of(&[Role::AccountManager]),
        ip: None,
    };
    accounts::remove_user(&app.state, &manager, SCHOOL, &uid)
        .await
        .unwrap();
    assert_eq!(
        t.get(&app, "/api/v1/me").await.status,
        401,
        "removed: session over"
    );
    assert!(db::user(&app.state.db, &uid).await.unwrap().is_none());
    // The account managers were told, and it is in the audit log.
    let (subject, _) =
        email::latest_in_outbox(&app.state.settings.outbox(), "head@school.sch.uk").unwrap();
    assert_eq!(subject, "User removed: teacher@school.sch.uk");
    let log = db::audit_rows(&app.state.db, Some(SCHOOL), 10)
        .await
        .unwrap();
    assert!(log.iter().any(|r| r.2 == "user-removed"
        && r.3 == "teacher@school.sch.uk"
        && r.1 == "head@school.sch.uk"));

    // Changing the password through the page ends the other browser's session.
    let mut one = Browser::default();
    one.sign_in(&app, "head@school.sch.uk").await;
    let mut two = one.clone();
    two.cookies.remove("nca_session");
    two.sign_in(&app, "head@school.sch.uk").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let csrf = one.csrf(&app, "/account/password").await;
    let r = one
        .form(
            &app,
            "/account/password",
            &[
                ("csrf", &csrf),
                ("current", PW),
                ("password", "N3w&Different-Pass"),
                ("confirm", "N3w&Different-Pass"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        one.get(&app, "/api/v1/me").await.status,
        200,
        "this browser carries on"
    );
    assert_eq!(
        two.get(&app, "/api/v1/me").await.status,
        401,
        "the other session ends"
    );
}

fn refused(r: Result<accounts::Created, AccountFailure>) -> AccountError {
    match r {
        Err(AccountFailure::Refused(e)) => e,
        Err(AccountFailure::Unexpected(e)) => panic!("unexpected: {e}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[tokio::test]
async fn schools_have_at_most_seven_users_and_two_account_managers() {
    let app = spawn_app(Clock::System).await;
    let cli = Actor::cli();
    let add = |n: usize, roles: &'static [Role]| {
        let state = app.state.clone();
        let cli = cli.clone();
        async move {
            accounts::create_user(
                &state,
                &cli,
                SCHOOL,
                "User",
                &format!("u{n}@school.sch.uk"),
                RoleSet::of(roles),
                None,
            )
            .await
        }
    };
    add(1, &[Role::AccountManager]).await.unwrap();
    add(2, &[Role::AccountManager, Role::GeneralUser])
        .await
        .unwrap();
    let e = refused(add(3, &[Role::AccountManager]).await);
    assert_eq!(
        e.to_string(),
        "A school can have at most 2 account managers"
    );
    for n in 3..8 {
        add(n, &[Role::GeneralUser]).await.unwrap();
    }
    let e = refused(add(8, &[Role::GeneralUser]).await);
    assert!(e.to_string().contains("already has 7 users"), "{e}");
    // An account manager cannot grant LA roles, nor can a general user manage anyone.
    let manager = Actor {
        label: "u1".into(),
        user_id: None,
        roles: RoleSet::of(&[Role::AccountManager]),
        ip: None,
    };
    let e = refused(
        accounts::create_user(
            &app.state,
            &manager,
            "999",
            "X",
            "x@la.gov.uk",
            RoleSet::of(&[Role::LaGeneralUser]),
            None,
        )
        .await,
    );
    assert_eq!(e, AccountError::CannotGrant("Local authority general user"));
    let general = Actor {
        label: "u3".into(),
        user_id: None,
        roles: RoleSet::of(&[Role::GeneralUser]),
        ip: None,
    };
    let other = "9992002";
    let e = refused(
        accounts::create_user(
            &app.state,
            &general,
            other,
            "X",
            "x@s.sch.uk",
            RoleSet::of(&[Role::GeneralUser]),
            None,
        )
        .await,
    );
    assert_eq!(e, AccountError::CannotGrant("School general user"));
}

#[tokio::test]
async fn a_school_moderator_needs_plus_mod_and_an_la_account_spans_several_las() {
    let app = spawn_app(Clock::System).await;
    let cli = Actor::cli();
    let mk = |org: &'static str, email: &'static str, roles: &'static [Role]| {
        let state = app.state.clone();
        let cli = cli.clone();
        async move {
            accounts::create_user(
                &state,
                &cli,
                org,
                "Jo Smith",
                email,
                RoleSet::of(roles),
                Some(PW),
            )
            .await
        }
    };
    mk(SCHOOL, "jo.smith@school.sch.uk", &[Role::GeneralUser])
        .await
        .unwrap();
    let e = refused(mk("999", "jo.smith@school.sch.uk", &[Role::Moderator]).await);
    assert!(e.to_string().contains("jo.smith+mod@school.sch.uk"), "{e}");
    let e = refused(mk("9992002", "jo.smith@school.sch.uk", &[Role::GeneralUser]).await);
    assert!(e.to_string().contains("already registered"), "{e}");
    mk("999", "jo.smith+mod@school.sch.uk", &[Role::Moderator])
        .await
        .unwrap();
    // The code for the +mod account goes to the official address.
    let mut b = Browser::default();
    let r = b
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "jo.smith+mod@school.sch.uk", "password": PW}),
        )
        .await;
    assert!(r.body.contains("mfa_required"));
    assert!(
        email::latest_in_outbox(&app.state.settings.outbox(), "To: jo.smith@school.sch.uk")
            .is_some()
            || email::latest_in_outbox(&app.state.settings.outbox(), "jo.smith@school.sch.uk")
                .is_some()
    );

    // A second LA for an existing LA account adds roles to the same account.
    db::upsert_orgs(
        &app.state.db,
        &[db::OrgImport {
            id: "998".into(),
            kind: nca_portal::auth::roles::OrgKind::La,
            name: "Other LA".into(),
            la_code: Some("998".into()),
            trust_uid: None,
            urn: None,
            phase: None,
            school_type: None,
        }],
        0,
    )
    .await
    .unwrap();
    let added = mk("998", "jo.smith+mod@school.sch.uk", &[Role::LaGeneralUser])
        .await
        .unwrap();
    assert!(added.added_to_existing);
    let user = db::user_by_email(&app.state.db, "jo.smith+mod@school.sch.uk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        db::memberships(&app.state.db, &user.id)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn pages_check_permissions_and_csrf() {
    let app = spawn_app(Clock::System).await;
    app.user("head@school.sch.uk", SCHOOL, &[Role::AccountManager])
        .await;
    app.user("teacher@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    let mut head = Browser::default();
    head.sign_in(&app, "head@school.sch.uk").await;
    let mut teacher = Browser::default();
    teacher.sign_in(&app, "teacher@school.sch.uk").await;
    assert_eq!(head.get(&app, "/account/users").await.status, 200);
    assert_eq!(teacher.get(&app, "/account/users").await.status, 403);
    assert_eq!(teacher.get(&app, "/account/users/new").await.status, 403);
    let csrf = teacher.csrf(&app, "/account/password").await;
    let r = teacher
        .form(
            &app,
            "/account/users/new",
            &[
                ("csrf", &csrf),
                ("name", "X"),
                ("email", "x@s.sch.uk"),
                ("roles", "general-user"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    // Forms without the session's token are refused.
    let r = head
        .form(
            &app,
            "/account/users/new",
            &[
                ("csrf", "0000"),
                ("name", "X"),
                ("email", "x@s.sch.uk"),
                ("roles", "general-user"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    let csrf = head.csrf(&app, "/account/users/new").await;
    let r = head
        .form(
            &app,
            "/account/users/new",
            &[
                ("csrf", &csrf),
                ("name", ""),
                ("email", "not-an-email"),
                ("roles", "general-user"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body.contains("There is a problem") && r.body.contains("<title>Error: "),
        "{}",
        r.body
    );
    let r = head
        .form(
            &app,
            "/account/users/new",
            &[
                ("csrf", &csrf),
                ("name", "New Teacher"),
                ("email", "new@school.sch.uk"),
                ("roles", "general-user"),
                ("roles", "access-arrangements"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let list = head.get(&app, "/account/users").await.body;
    assert!(
        list.contains("new@school.sch.uk") && list.contains("Invited"),
        "{list}"
    );
    let (_, invite) =
        email::latest_in_outbox(&app.state.settings.outbox(), "new@school.sch.uk").unwrap();
    assert!(invite.contains("/set-password?token="), "{invite}");
    // Security headers on every page.
    let resp = app
        .router
        .clone()
        .oneshot(Request::get("/sign-in").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let h = resp.headers();
    assert!(
        h.get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(h.get(header::STRICT_TRANSPORT_SECURITY).is_some());
    assert!(h.get("x-request-id").is_some());
    let cookie = h.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
}

#[tokio::test]
async fn throttling_treats_unknown_emails_like_real_ones() {
    let app = spawn_app(Clock::System).await;
    app.user("a@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    for email in ["a@school.sch.uk", "nobody@school.sch.uk"] {
        let mut b = Browser::default();
        for _ in 0..3 {
            let r = b
                .json(
                    &app,
                    "/api/v1/sign-in",
                    serde_json::json!({"email": email, "password": "Wrong-pass-1"}),
                )
                .await;
            assert_eq!(r.status, 401, "{email}");
        }
        let r = b
            .json(
                &app,
                "/api/v1/sign-in",
                serde_json::json!({"email": email, "password": PW}),
            )
            .await;
        assert_eq!(r.status, 429, "{email}: {}", r.body);
    }
    // Someone else at the same address is not locked out.
    let mut c = Browser::default();
    let r = c
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "other@school.sch.uk", "password": "x"}),
        )
        .await;
    assert_eq!(r.status, 401);
}

/// GET /healthz on a kept-alive HTTP/1.1 connection: the whole answer.
async fn healthz<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn tls_listener_speaks_http1_and_http2_and_drops_slow_handshakes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Clock::System).await;
    let dir = app.state.settings.data.dir.clone();
    let tls = nca_portal::http::tls_config("", "", &dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let limits = nca_portal::http::Limits {
        handshake_timeout: Duration::from_millis(500),
        keep_alive: Duration::from_secs(1),
        max_connections: 100,
        drain: Duration::from_secs(2),
        ..nca_portal::http::Limits::from_settings(&app.state.settings)
    };
    let server = tokio::spawn(nca_portal::http::serve_tls(
        listener,
        Some(tls.clone()),
        app.router.clone(),
        limits,
        async {
            let _ = rx.await;
        },
    ));
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    // Sessions resume from stateless tickets, not a small in-memory cache.
    assert!(tls.ticketer.enabled());
    assert!(tls.send_tls13_tickets > 0);
    for (alpn, expect) in [(b"h2".to_vec(), "h2"), (b"http/1.1".to_vec(), "http/1.1")] {
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn];
        let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = conn
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(expect.as_bytes()));
        if expect == "http/1.1" {
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            tls.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full)
            );
            // The same client again: it resumes with the ticket it was given.
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut again = conn
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(
                again.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            );
            // An idle connection is kept for its next request until the keep-alive ends.
            for _ in 0..2 {
                assert!(healthz(&mut again).await.starts_with("HTTP/1.1 200"));
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), again.read_to_end(&mut rest))
                .await
                .expect("closed by the server after the keep-alive");
            assert_eq!(n.unwrap_or(0), 0, "{}", String::from_utf8_lossy(&rest));
        }
    }
    // A client that never finishes its handshake is dropped after the timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed by the server");
    assert_eq!(n.unwrap_or(0), 0);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_full_listener_closes_the_longest_idle_connection_for_a_new_one_and_drains_at_once() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app(Clock::System).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let limits = nca_portal::http::Limits {
        handshake_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(60),
        max_connections: 2,
        drain: Duration::from_secs(30),
        ..nca_portal::http::Limits::from_settings(&app.state.settings)
    };
    let server = tokio::spawn(nca_portal::http::serve_tls(
        listener,
        None,
        app.router.clone(),
        limits,
        async {
            let _ = rx.await;
        },
    ));
    // Two kept-alive connections take both slots; the first has been idle longest.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));
    // A third client is answered long before the others' keep-alive would have ended...
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), healthz(&mut third))
        .await
        .expect("a new client is served when every slot holds an idle connection");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // ...because the longest-idle connection was closed, and only that one.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("the longest-idle connection is closed");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));
    // Draining closes idle connections at once instead of waiting out the deadline.
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("drained well before the 30 s deadline")
        .unwrap()
        .unwrap();
    for s in [&mut second, &mut third] {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the drain");
        assert_eq!(n.unwrap_or(0), 0);
    }
}

#[tokio::test]
async fn orgs_import_is_rerunnable_and_bad_rows_import_nothing() {
    let app = spawn_app(Clock::System).await;
    let school = db::org(&app.state.db, SCHOOL).await.unwrap().unwrap();
    assert_eq!(school.kind, nca_portal::auth::roles::OrgKind::Ks2School);
    assert_eq!(school.la_code.as_deref(), Some("999"));
    let trust = db::org(&app.state.db, "12345").await.unwrap().unwrap();
    assert_eq!(trust.kind, nca_portal::auth::roles::OrgKind::Mat);
    assert!(db::org(&app.state.db, "operator").await.unwrap().is_some());

    // A renamed school updates in place; nothing else changes.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("data-pipeline/tests/fixtures/rules");
    let dir = tempfile::tempdir().unwrap();
    for f in ["schools.csv", "las.csv"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    let schools = std::fs::read_to_string(dir.path().join("schools.csv")).unwrap();
    let renamed = schools.replacen(&school.name, "Renamed Primary School", 1);
    assert_ne!(renamed, schools);
    std::fs::write(dir.path().join("schools.csv"), &renamed).unwrap();
    let (added, updated) = orgs::import(&app.state.db, dir.path(), 10).await.unwrap();
    assert_eq!((added, updated), (0, 1));
    let again = db::org(&app.state.db, SCHOOL).await.unwrap().unwrap();
    assert_eq!(again.name, "Renamed Primary School");

    // A bad LAESTAB is reported with file, row and column, and nothing is imported.
    let mut lines: Vec<String> = renamed.lines().map(String::from).collect();
    lines[1] = lines[1].replacen(SCHOOL, "99920X1", 1);
    let bad = lines
        .join("\n")
        .replace("Renamed Primary School", "Another Name")
        + "\n";
    std::fs::write(dir.path().join("schools.csv"), bad).unwrap();
    let e = orgs::import(&app.state.db, dir.path(), 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schools.csv") && e.contains("row 1") && e.contains("laestab"),
        "{e}"
    );
    assert_eq!(
        db::org(&app.state.db, SCHOOL).await.unwrap().unwrap().name,
        "Renamed Primary School",
        "nothing changed"
    );
}

#[tokio::test]
async fn account_managers_update_contact_details_and_la_users_switch_between_las() {
    let app = spawn_app(Clock::System).await;
    app.user("head@school.sch.uk", SCHOOL, &[Role::AccountManager])
        .await;
    app.user("teacher@school.sch.uk", SCHOOL, &[Role::GeneralUser])
        .await;
    let mut head = Browser::default();
    head.sign_in(&app, "head@school.sch.uk").await;
    let csrf = head.csrf(&app, "/account/organisation").await;
    let r = head
        .form(
            &app,
            "/account/organisation",
            &[
                ("csrf", &csrf),
                ("phone", "call me"),
                ("email", "office@school.sch.uk"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("Enter a telephone number"), "{}", r.body);
    let r = head
        .form(
            &app,
            "/account/organisation",
            &[
                ("csrf", &csrf),
                ("phone", "01632 960 001"),
                ("email", "office@school.sch.uk"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let org = db::org(&app.state.db, SCHOOL).await.unwrap().unwrap();
    assert_eq!(
        (org.phone.as_str(), org.email.as_str()),
        ("01632 960 001", "office@school.sch.uk")
    );
    let mut teacher = Browser::default();
    teacher.sign_in(&app, "teacher@school.sch.uk").await;
    let page = teacher.get(&app, "/account/organisation").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("01632 960 001") && !page.body.contains("name=\"phone\""));
    let csrf = teacher.csrf(&app, "/account/password").await;
    let r = teacher
        .form(
            &app,
            "/account/organisation",
            &[("csrf", &csrf), ("phone", "01632 960 002"), ("email", "")],
        )
        .await;
    assert_eq!(r.status, 403);

    // One LA account with roles in two LAs switches between them.
    db::upsert_orgs(
        &app.state.db,
        &[db::OrgImport {
            id: "998".into(),
            kind: nca_portal::auth::roles::OrgKind::La,
            name: "Other LA".into(),
            la_code: Some("998".into()),
            trust_uid: None,
            urn: None,
            phase: None,
            school_type: None,
        }],
        0,
    )
    .await
    .unwrap();
    app.user("officer@la.gov.uk", "999", &[Role::LaGeneralUser])
        .await;
    accounts::create_user(
        &app.state,
        &Actor::cli(),
        "998",
        "Officer",
        "officer@la.gov.uk",
        RoleSet::of(&[Role::LaSeniorManager]),
        None,
    )
    .await
    .unwrap();
    let mut la = Browser::default();
    la.sign_in(&app, "officer@la.gov.uk").await;
    assert!(
        la.get(&app, "/api/v1/me")
            .await
            .body
            .contains("\"organisation\":\"998\"")
            || la
                .get(&app, "/api/v1/me")
                .await
                .body
                .contains("\"organisation\":\"999\"")
    );
    let csrf = la.csrf(&app, "/account/switch").await;
    for (to, role) in [("999", "la-general-user"), ("998", "la-senior-manager")] {
        let r = la
            .form(&app, "/account/switch", &[("csrf", &csrf), ("org", to)])
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        let me = la.get(&app, "/api/v1/me").await.body;
        assert!(
            me.contains(&format!("\"organisation\":\"{to}\"")) && me.contains(role),
            "{me}"
        );
    }
    // Not an LA this account belongs to.
    let r = la
        .form(
            &app,
            "/account/switch",
            &[("csrf", &csrf), ("org", "9992001")],
        )
        .await;
    assert_eq!(r.status, 403);
}

/// An app on a paused clock with one account manager, every hashing place taken (the
/// permits returned), and the admitter's pass run on that.
async fn every_hashing_place_taken() -> (App, tokio::sync::OwnedSemaphorePermit) {
    let app = spawn_app(Clock::paused_at(1_720_500_000)).await;
    app.user("head@a.sch.uk", SCHOOL, &[Role::AccountManager])
        .await;
    let gate = app.state.gates.sign_ins.clone();
    let held = gate
        .clone()
        .try_acquire_many_owned(gate.available_permits() as u32)
        .unwrap();
    app.state.queue.tick(app.state.clock.now(), 0);
    (app, held)
}

#[tokio::test]
async fn a_busy_api_sign_in_is_told_to_come_back_once_everyone_waiting_could_be_through() {
    let (app, _held) = every_hashing_place_taken().await;
    let now = || app.state.clock.now();
    // A crowd on the waiting page worth several seconds of hashing at the nominal rate.
    for _ in 0..200 * app.state.settings.hash_threads() {
        app.state.queue.join(now(), None);
    }
    let r = Browser::default()
        .json(
            &app,
            "/api/v1/sign-in",
            serde_json::json!({"email": "head@a.sch.uk", "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let told: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let estimate = app.state.queue.retry_after(now());
    assert!(estimate >= 4, "200 a hashing thread take 4 s: {estimate}");
    assert_eq!(told["retry_after"], estimate, "{}", r.body);
}

#[tokio::test]
async fn past_hashing_capacity_sign_ins_wait_in_a_fair_queue_that_fails_open() {
    let (app, held) = every_hashing_place_taken().await;
    let now = || app.state.clock.now();
    let gate = app.state.gates.sign_ins.clone();

    let (mut first, mut second) = (Browser::default(), Browser::default());
    let r = first.get(&app, "/sign-in?next=/results").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.location.as_deref(),
        Some("/sign-in/queue?next=%2Fresults")
    );
    // A password posted while full also queues (and is not checked).
    let csrf = second.csrf(&app, "/forgotten-password").await;
    let r = second
        .form(
            &app,
            "/sign-in",
            &[
                ("csrf", &csrf),
                ("email", "head@a.sch.uk"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.location.unwrap().starts_with("/sign-in/queue"));
    app.state.queue.tick(now(), gate.available_permits());
    let place = |body: &str| {
        let at = body.find("You are number ").expect("a place") + 15;
        body[at..]
            .split(' ')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    let a = first.get(&app, "/sign-in/queue?next=/results").await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("of 2 in the queue") && a.body.contains("estimated wait"));
    assert!(
        a.body
            .contains("<meta http-equiv=\"refresh\" content=\"10\">")
    );
    let b = second.get(&app, "/sign-in/queue").await;
    let (pa, pb) = (place(&a.body), place(&b.body));
    assert_eq!([pa.min(pb), pa.max(pb)], [1, 2]);
    // Refreshing changes nobody's place.
    for _ in 0..5 {
        assert_eq!(place(&first.get(&app, "/sign-in/queue").await.body), pa);
    }

    // One place frees: the front of the queue is let through, and only it.
    drop(held);
    let _rest = gate
        .clone()
        .try_acquire_many_owned(gate.available_permits() as u32 - 1)
        .unwrap();
    app.state.queue.tick(now(), gate.available_permits());
    let (front, back) = if pa == 1 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    let r = front.get(&app, "/sign-in/queue?next=/results").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location.as_deref(), Some("/sign-in?next=%2Fresults"));
    assert!(
        back.get(&app, "/sign-in/queue")
            .await
            .body
            .contains("You are number 1 of 1")
    );
    let csrf = front.csrf(&app, "/sign-in").await;
    let r = front
        .form(
            &app,
            "/sign-in",
            &[
                ("csrf", &csrf),
                ("email", "head@a.sch.uk"),
                ("password", PW),
                ("next", "/results"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location.unwrap().starts_with("/sign-in/mfa"),
        "the pass let the password through"
    );

    // The admitter stops: the queue fails open, and newcomers go straight to the form.
    app.state
        .clock
        .advance(nca_portal::queue::HEARTBEAT_SECS + 1);
    let r = Browser::default().get(&app, "/sign-in").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("name=\"password\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_threads_share_one_port_and_drain_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Clock::System).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let limits = nca_portal::http::Limits {
        handshake_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_secs(30),
        max_connections: 64,
        drain: Duration::from_secs(2),
        ..nca_portal::http::Limits::from_settings(&app.state.settings)
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving =
        nca_portal::http::serve_threads(addr, 2, None, app.router.clone(), limits, async {
            let _ = rx.await;
        })
        .unwrap();
    let server = tokio::spawn(serving);
    // A second server cannot take the port from under it.
    assert!(tokio::net::TcpListener::bind(addr).await.is_err());
    // Many connections, spread by the kernel over both threads, all answered.
    let mut answered = 0;
    for _ in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        answered += usize::from(out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n"));
    }
    assert_eq!(answered, 40);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}
