//! The KS2 headteacher's declaration form (ARA 3.1): who is submitting it, whether they are the
//! headteacher (and their role if not), and that the tests were administered according to the
//! published guidance or that issues were reported; check your answers; submit. One question
//! per page; every step saves the draft.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;

use super::{ActivityPage, Copy, Ctx, Form, PageForm, ctx, radios, save_draft, submit};
use crate::AppState;
use crate::auth::session::Signed;
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/who", get(who_page).post(who))
        .route("/activities/{id}/role", get(role_page).post(role))
        .route("/activities/{id}/confirm", get(confirm_page).post(confirm))
}

const KEYS: [&str; 5] = ["name", "is_head", "role", "administration", "details"];

async fn hdf_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::Hdf, None).await
}

fn draft(c: &Ctx, k: &str) -> String {
    c.standing
        .status
        .as_ref()
        .and_then(|s| s.draft.get(k))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

async fn keep(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    f: &FormData,
    keys: &[&str],
) -> Result<(), AppError> {
    let m: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| {
            (
                k.to_string(),
                serde_json::Value::String(f.get(k).trim().to_string()),
            )
        })
        .collect();
    save_draft(state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
    Ok(())
}

pub async fn autosave(
    state: &AppState,
    s: &Signed,
    id: &str,
    f: &FormData,
) -> Result<(), AppError> {
    let c = hdf_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    let present: Vec<&str> = KEYS.iter().copied().filter(|k| f.has(k)).collect();
    keep(state, s, &c, f, &present).await
}

fn page(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    title: &str,
    step: &str,
    fields: Vec<Field>,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, title);
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.form = Some(PageForm {
        action: format!("{}/{step}", c.base),
        autosave: format!("/activities/{}/draft", c.act.id),
        fields,
        submit: "Continue".into(),
        ..Default::default()
    });
    p
}

fn who_form(state: &AppState, s: &Signed, c: &Ctx, name: &str, head: &str) -> ActivityPage {
    page(
        state,
        s,
        c,
        "Who is submitting the declaration?",
        "who",
        vec![
            Field::input("text", "name", "Your full name")
                .value(name)
                .auto("name"),
            radios(
                "is_head",
                "Are you the headteacher?",
                &[("yes", "Yes"), ("no", "No, I have delegated authority")],
                head,
            ),
        ],
    )
}

pub async fn overview(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = hdf_ctx(state, s, id).await?;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.warning = c.notice(state);
    p.intro.push(c.act.description.clone());
    p.intro.push("The declaration applies even if every pupil is working below the standard of the tests or cannot access them.".into());
    p.intro.push(c.standing.status_text(state, &c.act));
    if c.standing.submitted() {
        p.summary = answers(&c)
            .into_iter()
            .map(|(k, v)| (k, v, String::new()))
            .collect();
    }
    if c.standing.window.is_open() {
        let label = if c.standing.submitted() {
            "Change and submit again"
        } else if c.standing.status.is_some() {
            "Continue your declaration"
        } else {
            "Start now"
        };
        p.links.push((format!("{}/who", c.base), label.into()));
    }
    Ok(p.respond())
}

async fn who_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, false)?;
    let name = Some(draft(&c, "name"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| s.user.name.clone());
    Ok(who_form(&state, &s, &c, &name, &draft(&c, "is_head")).respond())
}

async fn who(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    keep(&state, &s, &c, &f, &["name", "is_head"]).await?;
    let (name, head) = (f.get("name").trim().to_string(), f.get("is_head"));
    let mut p = who_form(&state, &s, &c, &name, &head);
    if name.is_empty() {
        p.error("name", "Enter your full name");
    }
    if !matches!(head.as_str(), "yes" | "no") {
        p.error("is_head", "Select whether you are the headteacher");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let next = if head == "no" { "role" } else { "confirm" };
    Ok(Redirect::to(&format!("{}/{next}", c.base)).into_response())
}

fn role_form(state: &AppState, s: &Signed, c: &Ctx, role: &str) -> ActivityPage {
    let mut p = page(
        state,
        s,
        c,
        "What is your role?",
        "role",
        vec![Field::input("text", "role", "Your role").value(role).hint(
            "For example, deputy headteacher with delegated authority in the headteacher's absence",
        )],
    );
    p.back = Some(format!("{}/who", c.base));
    p
}

async fn role_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, false)?;
    Ok(role_form(&state, &s, &c, &draft(&c, "role")).respond())
}

async fn role(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    keep(&state, &s, &c, &f, &["role"]).await?;
    let r = f.get("role").trim().to_string();
    if r.is_empty() {
        let mut p = role_form(&state, &s, &c, "");
        p.error("role", "Enter your role");
        return Ok(p.respond());
    }
    Ok(Redirect::to(&format!("{}/confirm", c.base)).into_response())
}

fn confirm_form(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    choice: &str,
    details: &str,
) -> ActivityPage {
    let mut p = page(
        state,
        s,
        c,
        "How were the tests administered?",
        "confirm",
        vec![
            radios(
                "administration",
                "Confirm one of the following",
                &[
                    (
                        "guidance",
                        "The KS2 tests were administered according to the published guidance",
                    ),
                    ("issues", "Issues arose and they have been reported to STA"),
                ],
                choice,
            ),
            Field::input(
                "textarea",
                "details",
                "If issues were reported: what they were and when you reported them",
            )
            .value(details),
        ],
    );
    p.back = Some(format!("{}/who", c.base));
    p
}

async fn confirm_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, false)?;
    Ok(confirm_form(
        &state,
        &s,
        &c,
        &draft(&c, "administration"),
        &draft(&c, "details"),
    )
    .respond())
}

async fn confirm(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = hdf_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    keep(&state, &s, &c, &f, &["administration", "details"]).await?;
    let (choice, details) = (f.get("administration"), f.get("details").trim().to_string());
    let mut p = confirm_form(&state, &s, &c, &choice, &details);
    if !matches!(choice.as_str(), "guidance" | "issues") {
        p.error("administration", "Select how the tests were administered");
    }
    if choice == "issues" && details.is_empty() {
        p.error(
            "details",
            "Say what the issues were and when you reported them to STA",
        );
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    Ok(Redirect::to(&format!("{}/check", c.base)).into_response())
}

/// The answers as check-your-answers rows.
fn answers(c: &Ctx) -> Vec<(String, String)> {
    let head = draft(c, "is_head");
    let mut rows = vec![
        (
            "School".to_string(),
            format!("{} ({})", c.school.name, c.school.id),
        ),
        ("Submitted by".to_string(), draft(c, "name")),
        (
            "Headteacher".to_string(),
            if head == "yes" {
                "Yes".into()
            } else {
                "No".into()
            },
        ),
    ];
    if head == "no" {
        rows.push(("Role".into(), draft(c, "role")));
    }
    rows.push((
        "Administration".into(),
        if draft(c, "administration") == "issues" {
            "Issues arose and they have been reported to STA".into()
        } else {
            "The KS2 tests were administered according to the published guidance".into()
        },
    ));
    if draft(c, "administration") == "issues" {
        rows.push(("Issues reported".into(), draft(c, "details")));
    }
    rows
}

/// What is still missing from the draft: (step, message).
fn incomplete(c: &Ctx) -> Option<(&'static str, &'static str)> {
    if draft(c, "name").is_empty() || !matches!(draft(c, "is_head").as_str(), "yes" | "no") {
        return Some(("who", "Say who is submitting the declaration"));
    }
    if draft(c, "is_head") == "no" && draft(c, "role").is_empty() {
        return Some(("role", "Enter your role"));
    }
    match draft(c, "administration").as_str() {
        "guidance" => None,
        "issues" if !draft(c, "details").is_empty() => None,
        _ => Some(("confirm", "Confirm how the tests were administered")),
    }
}

pub async fn check_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = hdf_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    if let Some((step, _)) = incomplete(&c) {
        return Ok(Redirect::to(&format!("{}/{step}", c.base)).into_response());
    }
    let mut p = ActivityPage::new(
        state,
        s,
        "Check your answers before submitting your declaration",
    );
    p.caption = c.act.name.clone();
    p.back = Some(format!("{}/confirm", c.base));
    p.warning = c.notice(state);
    let change = |k: &str| match k {
        "Submitted by" | "Headteacher" => format!("{}/who", c.base),
        "Role" => format!("{}/role", c.base),
        "Administration" | "Issues reported" => format!("{}/confirm", c.base),
        _ => String::new(),
    };
    p.summary = answers(&c)
        .into_iter()
        .map(|(k, v)| {
            let l = change(&k);
            (k, v, l)
        })
        .collect();
    p.intro.push("By submitting this declaration you confirm, as headteacher or with the headteacher's delegated authority, that the statements above are true (article 5(4) of the Key Stage 2 Assessment Arrangements Order 2003).".into());
    p.form = Some(PageForm {
        action: format!("{}/check", c.base),
        submit: "Accept and submit".into(),
        ..Default::default()
    });
    Ok(p.respond())
}

pub async fn check_submit(
    state: &AppState,
    s: &Signed,
    id: &str,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = hdf_ctx(state, s, id).await?;
    c.posted(state, s, &body, false)?;
    if let Some((step, _)) = incomplete(&c) {
        return Ok(Redirect::to(&format!("{}/{step}", c.base)).into_response());
    }
    let copy = Copy {
        summary: answers(&c),
        sections: Vec::new(),
    };
    submit(
        state,
        s,
        &c,
        &copy,
        &draft(&c, "name"),
        super::ip(addr),
        None,
    )
    .await?;
    Ok(Redirect::to(&format!("/activities/{}/submitted", c.act.id)).into_response())
}
