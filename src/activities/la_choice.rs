//! The choice of LA for monitoring and moderation (ARA 3.1, 6.3): an academy or independent
//! school chooses an LA other than its geographic one and confirms a written agreement; the
//! chosen LA sees the request and approves or rejects it. Academies that have not chosen by the
//! deadline, and academies that converted after the cut-off (recorded by the operator as the
//! `converted-after-cutoff` exception), are monitored by their geographic LA.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;

use super::{
    ActivityPage, Copy, Ctx, EmailEvent, Form, PageForm, ctx, radios, save_draft, status, submit,
    when,
};
use crate::AppState;
use crate::auth::roles::{Action, OrgKind};
use crate::auth::session::{Signed, check_csrf};
use crate::db;
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Row, Section};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/choose", post(choose))
        .route(
            "/activities/{id}/requests/{laestab}",
            get(request_page).post(decide),
        )
}

async fn las(db: &db::Db) -> sqlx::Result<Vec<db::Org>> {
    db::orgs_of_kind(db, OrgKind::La).await
}

/// Who monitors a school, and why: (LA code, explanation).
pub async fn monitoring_la(
    state: &AppState,
    act: &super::Activity,
    school: &db::Org,
) -> anyhow::Result<(String, String)> {
    let geo = school.la_code.clone().unwrap_or_default();
    let st = status(&state.db, state.cycle.year, &act.id, &school.id).await?;
    let chosen = st
        .as_ref()
        .and_then(|s| s.draft.get("la").and_then(|v| v.as_str()).map(String::from));
    Ok(match (st.as_ref().map(|s| s.status.as_str()), chosen) {
        (Some("accepted"), Some(la)) => (
            la.clone(),
            format!("LA {la}, chosen by the school and approved by that LA"),
        ),
        (Some("submitted"), Some(la)) => (
            geo.clone(),
            format!("LA {geo} (geographic) until LA {la} approves the school's request"),
        ),
        _ => (geo.clone(), format!("LA {geo} (geographic)")),
    })
}

fn choose_form(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    all: &[db::Org],
    la: &str,
    agreed: bool,
) -> ActivityPage {
    let geo = c.school.la_code.clone().unwrap_or_default();
    let mut p = ActivityPage::new(
        state,
        s,
        "Choose a local authority for monitoring and moderation",
    );
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    // Academies choose another LA (their geographic one is the default); independent schools
    // may choose their geographic LA or another (ARA 6.3).
    let academy = matches!(c.school.school_type.as_deref(), Some("academy" | "free"));
    let opts: Vec<(String, String)> = all
        .iter()
        .filter(|o| !academy || o.id != geo)
        .map(|o| (o.id.clone(), format!("{} ({})", o.name, o.id)))
        .collect();
    let mut sel = Field::input("select", "la", "Local authority");
    sel.options = std::iter::once((
        String::new(),
        "Choose a local authority".to_string(),
        la.is_empty(),
    ))
    .chain(opts.into_iter().map(|(k, l)| {
        let on = k == la;
        (k, l, on)
    }))
    .collect();
    sel.hint = if academy {
        format!("Your geographic local authority ({geo}) monitors you unless you choose another.")
    } else {
        "Your geographic local authority or another of your choosing.".into()
    };
    let mut agree = Field::input("checkboxes", "agreement", "Written agreement");
    agree.options = vec![("yes".into(), "We have a written agreement with this local authority to monitor our KS2 tests and moderate our KS2 English writing TA".into(), agreed)];
    p.form = Some(PageForm {
        action: format!("{}/choose", c.base),
        fields: vec![sel, agree],
        submit: "Continue".into(),
        ..Default::default()
    });
    p
}

async fn school_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::LaChoice, None).await
}

pub async fn overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    if s.user.kind == OrgKind::La {
        return la_overview(state, s, id, notice).await;
    }
    let c = school_ctx(state, s, id).await?;
    let (_, how) = monitoring_la(state, &c.act, &c.school).await?;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.notice = notice;
    p.warning = c.notice(state);
    p.intro.push(c.act.description.clone());
    p.intro.push(format!("Monitored and moderated by: {how}."));
    p.intro.push(c.standing.status_text(state, &c.act));
    if let Some(d) = c
        .standing
        .status
        .as_ref()
        .and_then(|st| st.decision.clone())
    {
        p.intro.push(format!("The LA's reason: {d}"));
    }
    if c.standing.window.is_open() {
        let all = las(&state.db).await?;
        let cur = c
            .standing
            .status
            .as_ref()
            .and_then(|st| {
                st.draft
                    .get("la")
                    .and_then(|v| v.as_str())
                    .map(String::from)
            })
            .unwrap_or_default();
        let mut form = choose_form(state, s, &c, &all, &cur, false);
        form.title = c.act.name.clone();
        form.caption = c.school.name.clone();
        form.back = Some("/activities".into());
        form.intro = p.intro;
        form.notice = p.notice;
        return Ok(form.respond());
    }
    Ok(p.respond())
}

async fn choose(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = school_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let all = las(&state.db).await?;
    let (la, agreed) = (f.get("la"), f.get("agreement") == "yes");
    let mut p = choose_form(&state, &s, &c, &all, &la, agreed);
    if !all.iter().any(|o| o.id == la) {
        p.error("la", "Choose a local authority");
    } else if matches!(c.school.school_type.as_deref(), Some("academy" | "free"))
        && c.school.la_code.as_deref() == Some(la.as_str())
    {
        p.error(
            "la",
            "That is your geographic local authority: you need not choose it",
        );
    }
    if !agreed {
        p.error(
            "agreement",
            "Confirm that you have a written agreement with the local authority",
        );
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let mut m = serde_json::Map::new();
    m.insert("la".into(), serde_json::Value::String(la));
    save_draft(&state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
    Ok(Redirect::to(&format!("{}/check", c.base)).into_response())
}

fn chosen(c: &Ctx) -> Option<String> {
    c.standing.status.as_ref().and_then(|st| {
        st.draft
            .get("la")
            .and_then(|v| v.as_str())
            .map(String::from)
    })
}

pub async fn check_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = school_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    let Some(la) = chosen(&c) else {
        return Ok(Redirect::to(&c.base).into_response());
    };
    let name = db::org(&state.db, &la)
        .await?
        .map_or(la.clone(), |o| o.name);
    let mut p = ActivityPage::new(state, s, "Check your answers before sending your request");
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.summary = vec![
        (
            "Local authority".into(),
            format!("{name} ({la})"),
            c.base.clone(),
        ),
        (
            "Written agreement".into(),
            "Confirmed".into(),
            c.base.clone(),
        ),
    ];
    p.intro.push(format!("{name} will be asked to approve your request. Until it does, your geographic local authority remains responsible."));
    p.form = Some(PageForm {
        action: format!("{}/check", c.base),
        submit: "Send request".into(),
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
    let c = school_ctx(state, s, id).await?;
    c.posted(state, s, &body, false)?;
    let Some(la) = chosen(&c) else {
        return Ok(Redirect::to(&c.base).into_response());
    };
    let la_org = db::org(&state.db, &la).await?.ok_or(AppError::NotFound)?;
    let copy = Copy {
        summary: vec![
            (
                "School".into(),
                format!("{} ({})", c.school.name, c.school.id),
            ),
            (
                "Local authority chosen".into(),
                format!("{} ({la})", la_org.name),
            ),
            ("Written agreement".into(), "Confirmed".into()),
        ],
        sections: Vec::new(),
    };
    submit(state, s, &c, &copy, &la_org.name, super::ip(addr), None).await?;
    // The chosen LA's account managers hear of the request.
    let text = format!(
        "{} ({}) has chosen your local authority for monitoring its KS2 tests and moderating its KS2 English writing TA. Sign in to the NCA Portal and open My Activity, {}, to approve or reject the request.",
        c.school.name, c.school.id, c.act.name
    );
    super::email(
        state,
        &c.act,
        &la,
        &format!("Request to monitor {}", c.school.name),
        &text,
        &mut Vec::new(),
    )
    .await?;
    Ok(Redirect::to(&format!("/activities/{}/submitted", c.act.id)).into_response())
}

/// The LA's page: requests addressed to it, and the schools it monitors.
async fn la_overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.form == Form::LaChoice)
        .ok_or(AppError::NotFound)?
        .clone();
    let aud = act.audience(OrgKind::La, None).ok_or(AppError::Forbidden)?;
    s.require(aud.permission)?;
    let mut p = ActivityPage::new(state, s, &act.name);
    p.caption = s.user.org_name.clone();
    p.back = Some("/activities".into());
    p.notice = notice;
    p.intro.push("Academies and independent schools that have chosen your local authority for monitoring and moderation. Approve a request once you have the written agreement.".into());
    let rows = super::statuses(&state.db, state.cycle.year, &act.id).await?;
    let mut sec = Section {
        heading: "Requests".into(),
        head: vec![
            "School".into(),
            "DfE number".into(),
            "Status".into(),
            "Requested".into(),
            String::new(),
        ],
        ..Default::default()
    };
    let mut ids: Vec<&String> = rows.keys().collect();
    ids.sort();
    for laestab in ids {
        let st = &rows[laestab];
        if st.status == "draft" || st.draft.get("la").and_then(|v| v.as_str()) != Some(&s.user.org)
        {
            continue;
        }
        let name = db::org(&state.db, laestab)
            .await?
            .map_or(String::new(), |o| o.name);
        let label = match st.status.as_str() {
            "submitted" => "awaiting your decision",
            "accepted" => "approved",
            "rejected" => "rejected",
            o => o,
        };
        sec.rows.push(Row {
            cells: vec![
                name.clone(),
                laestab.clone(),
                label.into(),
                st.submitted_at.map(|t| when(state, t)).unwrap_or_default(),
            ],
            links: vec![(
                format!("/activities/{}/requests/{laestab}", act.id),
                format!("Open the request from {name}"),
            )],
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No requests.".into());
    }
    p.sections.push(sec);
    Ok(p.respond())
}

async fn request_ctx(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: &str,
) -> Result<(super::Activity, db::Org, super::Status), AppError> {
    if s.user.kind != OrgKind::La || !s.user.may(Action::LaActivities) {
        return Err(AppError::Forbidden);
    }
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.form == Form::LaChoice)
        .ok_or(AppError::NotFound)?
        .clone();
    let st = status(&state.db, state.cycle.year, id, laestab)
        .await?
        .ok_or(AppError::NotFound)?;
    if st.status == "draft" || st.draft.get("la").and_then(|v| v.as_str()) != Some(&s.user.org) {
        return Err(AppError::NotFound);
    }
    let school = db::org(&state.db, laestab)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok((act, school, st))
}

fn decide_form(
    state: &AppState,
    s: &Signed,
    act: &super::Activity,
    school: &db::Org,
    st: &super::Status,
    choice: &str,
    reason: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, &format!("Request from {}", school.name));
    p.caption = act.name.clone();
    p.back = Some(format!("/activities/{}", act.id));
    p.summary = vec![
        (
            "School".into(),
            format!("{} ({})", school.name, school.id),
            String::new(),
        ),
        (
            "Geographic local authority".into(),
            school.la_code.clone().unwrap_or_default(),
            String::new(),
        ),
        (
            "Requested".into(),
            st.submitted_at.map(|t| when(state, t)).unwrap_or_default(),
            String::new(),
        ),
        (
            "Written agreement".into(),
            "Confirmed by the school".into(),
            String::new(),
        ),
    ];
    if st.status == "submitted" {
        p.form = Some(PageForm {
            action: format!("/activities/{}/requests/{}", act.id, school.id),
            fields: vec![
                radios(
                    "decision",
                    "Your decision",
                    &[
                        (
                            "accepted",
                            "Approve: we have a written agreement with this school",
                        ),
                        ("rejected", "Reject"),
                    ],
                    choice,
                ),
                Field::input("textarea", "reason", "Reason, as the school will read it")
                    .value(reason),
            ],
            submit: "Record decision".into(),
            ..Default::default()
        });
    } else {
        p.intro.push(format!("Decided: {}.", st.status));
    }
    p
}

async fn request_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, laestab)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (act, school, st) = request_ctx(&state, &s, &id, &laestab).await?;
    Ok(decide_form(&state, &s, &act, &school, &st, "", "").respond())
}

async fn decide(
    State(state): State<AppState>,
    s: Signed,
    Path((id, laestab)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (act, school, st) = request_ctx(&state, &s, &id, &laestab).await?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let la_org = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::Forbidden)?;
    if let Some(w) = super::standing(&state, &act, &la_org)
        .await?
        .map(|x| x.window)
        && !w.is_open()
    {
        return Err(AppError::Refused(
            StatusCode::FORBIDDEN,
            "Decisions are closed".into(),
            "The window for this activity has closed.".into(),
        ));
    }
    let (choice, reason) = (f.get("decision"), f.get("reason").trim().to_string());
    let mut p = decide_form(&state, &s, &act, &school, &st, &choice, &reason);
    if !matches!(choice.as_str(), "accepted" | "rejected") {
        p.error("decision", "Select approve or reject");
    }
    if choice == "rejected" && reason.is_empty() {
        p.error("reason", "Enter the reason for rejecting the request");
    }
    if st.status != "submitted" {
        p.error("decision", "This request has already been decided");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let now = state.clock.now();
    let word = if choice == "accepted" {
        "approved"
    } else {
        "rejected"
    };
    let letter = Copy {
        summary: vec![
            ("School".into(), format!("{} ({})", school.name, school.id)),
            (
                "Local authority".into(),
                format!("{} ({})", la_org.name, la_org.id),
            ),
            ("Decision".into(), word.into()),
            ("Reason".into(), reason.clone()),
            ("Date".into(), when(&state, now)),
        ],
        sections: Vec::new(),
    };
    super::record_decision(
        &state,
        &act,
        &school.id,
        (&choice, &reason, now),
        &letter,
        &format!("{}: {word} by {}", act.name, la_org.name),
        &s.user.email,
    )
    .await?;
    db::audit(
        &state.db,
        super::audited(
            &s,
            &school.id,
            "la-choice-decided",
            &act.id,
            format!("{word} by {}: {reason}", la_org.id),
            addr,
        ),
        now,
    )
    .await?;
    if act.sends(EmailEvent::Decided) {
        let text = format!(
            "{} has {word} your request for it to monitor your KS2 tests and moderate your KS2 English writing TA.{}\n\nThe letter is in the portal: My Activity, completed activity.",
            la_org.name,
            if reason.is_empty() {
                String::new()
            } else {
                format!("\n\nReason: {reason}")
            }
        );
        let mut to: Vec<String> = st.submitted_by.into_iter().collect();
        super::email(
            &state,
            &act,
            &school.id,
            &format!("{}: {word}", act.name),
            &text,
            &mut to,
        )
        .await?;
    }
    Ok(Redirect::to(&format!("/activities/{}?decided={}", act.id, school.id)).into_response())
}
