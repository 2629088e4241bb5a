//! Organisation API tokens: an account manager of a KS2 school, an LA or a trust creates them
//! so the organisation's own system can pull its results files without a person signing in.
//! A token is read-only and results-only: it is accepted on `GET /api/v1/results/...` and
//! nowhere else, and it acts with just the permission to view results. It can be revoked at
//! any time. Only a SHA-256 hash of the secret is stored (the secret is 256 random bits, so a
//! slow hash adds nothing); the secret is shown once, when it is made.
//!
//! Lookups are cached for `CACHE_SECONDS` so a script pulling many files costs one query;
//! revoking clears this node's cache at once, and other nodes within `CACHE_SECONDS`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::roles::{Action, OrgKind, Role, RoleSet};
use crate::auth::session::{Current, SessionData, Signed, SignedIn, check_csrf};
use crate::db;
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, FormPage, Page, Row, Section, actor, render};

/// How long a token lookup is trusted before the database is asked again.
pub const CACHE_SECONDS: u64 = 30;

/// Tokens start with this, so they are recognisable in a secrets scanner.
pub const PREFIX: &str = "nca_";

/// The cache of token lookups: hash -> the caller it stands for (None: no such live token).
pub struct Tokens {
    cache: moka::future::Cache<String, Option<Arc<SignedIn>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Default for Tokens {
    fn default() -> Tokens {
        Tokens {
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(CACHE_SECONDS))
                .build(),
        }
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The role a token acts with: viewing its organisation's results, nothing more.
fn viewer_role(kind: OrgKind) -> Option<Role> {
    match kind {
        OrgKind::Ks2School => Some(Role::GeneralUser),
        OrgKind::La => Some(Role::LaGeneralUser),
        OrgKind::Mat => Some(Role::MatUser),
        _ => None,
    }
}

impl Tokens {
    /// The caller a presented token stands for, if it is live.
    async fn caller(
        &self,
        state: &AppState,
        secret: &str,
    ) -> anyhow::Result<Option<Arc<SignedIn>>> {
        let h = hash(secret);
        let db = state.db.clone();
        let now = state.clock.now();
        self.cache
            .try_get_with(h.clone(), async move {
                let Some(t) = db::api_token_by_hash(&db, &h, now).await? else {
                    return Ok(None);
                };
                if t.revoked_at.is_some() {
                    return Ok(None);
                }
                let Some(org) = db::org(&db, &t.org_id).await? else {
                    return Ok(None);
                };
                let Some(role) = viewer_role(org.kind) else {
                    return Ok(None);
                };
                Ok::<_, anyhow::Error>(Some(Arc::new(SignedIn {
                    uid: format!("api-token:{}", t.id),
                    email: format!("api-token:{} ({})", t.name, t.id),
                    name: t.name.clone(),
                    org: org.id.clone(),
                    org_name: org.name.clone(),
                    kind: org.kind,
                    roles: RoleSet::of(&[role]),
                    orgs: 1,
                    iat: now,
                    seen: now,
                    must_change: false,
                })))
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    }
}

fn unauthorised(message: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"nca-portal\""),
    );
    r
}

/// On the results routes: a request carrying `Authorization: Bearer nca_...` acts as its
/// token's organisation, read-only. A bad, revoked or misused token is refused outright.
pub async fn middleware(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(auth) = req.headers().get(header::AUTHORIZATION) else {
        return next.run(req).await;
    };
    let Some(secret) = auth
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| s.starts_with(PREFIX))
    else {
        return unauthorised("use Authorization: Bearer with an NCA Portal API token");
    };
    if req.method() != axum::http::Method::GET {
        return unauthorised("API tokens are read-only: they can only download results");
    }
    let caller = match state.api_tokens.caller(&state, secret).await {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorised("this API token is not valid or has been revoked"),
        Err(e) => {
            tracing::error!(error = %e, "checking an API token");
            return crate::protect::busy("api-token");
        }
    };
    let mut data = SessionData::fresh();
    data.user = Some((*caller).clone());
    req.extensions_mut().insert(Current {
        data,
        timed_out: false,
    });
    next.run(req).await
}

// ---------- pages for account managers ----------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/account/tokens", get(list))
        .route("/account/tokens/new", get(new_page).post(create))
        .route("/account/tokens/{id}/revoke", get(revoke_page).post(revoke))
}

/// Account managers of organisations that have results files to pull.
fn require(s: &Signed) -> Result<(), AppError> {
    s.require(Action::ManageUsers)?;
    if viewer_role(s.user.kind).is_none() {
        return Err(AppError::Forbidden);
    }
    Ok(())
}

fn when(state: &AppState, t: Option<i64>) -> String {
    t.and_then(|t| jiff::Timestamp::from_second(t).ok())
        .map(|t| {
            t.to_zoned(state.tz.clone())
                .strftime("%-d %B %Y %-H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "Never".into())
}

async fn list(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    require(&s)?;
    let tokens = db::api_tokens(&state.db, &s.user.org).await?;
    let mut p = Page::new(&state, &s, "API tokens");
    p.paragraphs = vec![
        "An API token lets your organisation's own system download your results files without a person signing in. Tokens can only download results: they cannot change anything or see anything else.".into(),
        format!(
            "Send it in the Authorization header: curl -H \"Authorization: Bearer <token>\" {}/api/v1/results/...",
            state.public_url
        ),
    ];
    p.links = vec![("/account/tokens/new".into(), "Create an API token".into())];
    p.sections.push(Section {
        heading: "Your organisation's tokens".into(),
        paragraphs: if tokens.is_empty() {
            vec!["There are no tokens yet.".into()]
        } else {
            vec![]
        },
        head: if tokens.is_empty() {
            vec![]
        } else {
            [
                "Name",
                "Created by",
                "Created",
                "Last used",
                "Status",
                "Actions",
            ]
            .map(String::from)
            .to_vec()
        },
        rows: tokens
            .iter()
            .map(|t| {
                let mut cells = vec![
                    t.name.clone(),
                    t.created_by.clone(),
                    when(&state, Some(t.created_at)),
                    when(&state, t.last_used_at),
                ];
                let mut links = vec![];
                match t.revoked_at {
                    Some(at) => {
                        cells.push(format!("Revoked {}", when(&state, Some(at))));
                        cells.push("None".into());
                    }
                    None => {
                        cells.push("Active".into());
                        links.push((
                            format!("/account/tokens/{}/revoke", t.id),
                            format!("Revoke {}", t.name),
                        ));
                    }
                }
                Row { cells, links }
            })
            .collect(),
        ..Default::default()
    });
    Ok(render(StatusCode::OK, &p))
}

fn new_form(state: &AppState, s: &Signed, name: &str) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        "Create an API token",
        "/account/tokens/new",
        "Create token",
    );
    p.intro = vec![
        "The token will be shown once, on the next page. Keep it as you would a password.".into(),
    ];
    p.fields = vec![
        Field::input("text", "name", "Name")
            .hint("What the token is for, for example \u{201c}MIS nightly import\u{201d}")
            .value(name),
    ];
    p.links = vec![("/account/tokens".into(), "Cancel".into())];
    p
}

async fn new_page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    require(&s)?;
    Ok(new_form(&state, &s, "").respond())
}

async fn create(
    State(state): State<AppState>,
    s: Signed,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    require(&s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let name = f.get("name").trim().to_string();
    let mut p = new_form(&state, &s, &name);
    if name.is_empty() {
        p.error("name", "Enter a name for the token");
    } else if name.chars().count() > 100 {
        p.error("name", "The name must be 100 characters or fewer");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let secret = format!(
        "{PREFIX}{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            rand::random::<[u8; 32]>()
        )
    );
    let now = state.clock.now();
    let t = db::ApiToken {
        id: db::new_id(),
        org_id: s.user.org.clone(),
        name: name.clone(),
        created_by: s.user.email.clone(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    db::insert_api_token(&state.db, &t, &hash(&secret)).await?;
    let who = actor(&s, addr);
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&who.label),
            org_id: Some(&s.user.org),
            action: "api-token-created",
            target: Some(&t.id),
            detail: name.clone(),
            ip: who.ip.clone(),
        },
        now,
    )
    .await?;
    let mut page = Page::new(&state, &s, "Your new API token");
    page.notice = Some("Copy this token now: it will not be shown again.".into());
    page.paragraphs = vec![
        format!("Token \u{201c}{name}\u{201d}:"),
        secret,
        "It can download your organisation's results files until you revoke it.".into(),
    ];
    page.links = vec![("/account/tokens".into(), "Back to API tokens".into())];
    let mut r = render(StatusCode::OK, &page);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

async fn token_of(state: &AppState, s: &Signed, id: &str) -> Result<db::ApiToken, AppError> {
    db::api_tokens(&state.db, &s.user.org)
        .await?
        .into_iter()
        .find(|t| t.id == id && t.revoked_at.is_none())
        .ok_or(AppError::NotFound)
}

fn revoke_form(state: &AppState, s: &Signed, t: &db::ApiToken) -> FormPage {
    let mut p = FormPage::new(
        state,
        &s.data,
        &format!("Revoke the token \u{201c}{}\u{201d}?", t.name),
        &format!("/account/tokens/{}/revoke", t.id),
        "Revoke token",
    );
    p.danger = true;
    p.intro = vec![
        "Anything using this token will stop being able to download results straight away.".into(),
    ];
    p.links = vec![("/account/tokens".into(), "Cancel".into())];
    p
}

async fn revoke_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    require(&s)?;
    let t = token_of(&state, &s, &id).await?;
    Ok(revoke_form(&state, &s, &t).respond())
}

async fn revoke(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    require(&s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let t = token_of(&state, &s, &id).await?;
    let now = state.clock.now();
    if db::revoke_api_token(&state.db, &t.id, &s.user.org, now).await? {
        state.api_tokens.cache.invalidate_all();
        let who = actor(&s, addr);
        db::audit(
            &state.db,
            db::Audit {
                actor: Some(&who.label),
                org_id: Some(&s.user.org),
                action: "api-token-revoked",
                target: Some(&t.id),
                detail: t.name.clone(),
                ip: who.ip.clone(),
            },
            now,
        )
        .await?;
    }
    Ok(Redirect::to("/account/tokens").into_response())
}
