//! The online attendance register: for each test day's papers and each pupil registered for
//! the subject, present (the default), absent (A), unable to access (U) or just arrived (J),
//! the data contract's attendance codes. A day's register opens on the day of its tests and is
//! submitted after them; the activity is complete when every day is submitted, by the deadline.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::domain::{AttendanceCode, Paper};

use super::cycle::TestDay;
use super::registration::{Pupil, pupils};
use super::{
    ActivityPage, Copy, Ctx, Form, Grid, GridInput, GridRow, PageForm, add_document, ctx,
    record_access, save_draft, submit, when,
};
use crate::AppState;
use crate::auth::session::Signed;
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{FormData, Row, Section};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/day/{date}", get(day_page).post(save_day))
        .route(
            "/activities/{id}/day/{date}/check",
            get(day_check).post(day_submit),
        )
}

const CODES: &[(&str, &str)] = &[
    ("", "Present"),
    ("A", "Absent"),
    ("U", "Unable to access"),
    ("J", "Just arrived"),
];

fn code_label(c: &str) -> &str {
    CODES.iter().find(|(v, _)| *v == c).map_or(c, |(_, l)| l)
}

fn paper_name(p: Paper) -> &'static str {
    match p {
        Paper::Gps1 => "GPS paper 1: questions",
        Paper::Gps2 => "GPS paper 2: spelling",
        Paper::Reading => "English reading",
        Paper::Maths1 => "Maths paper 1: arithmetic",
        Paper::Maths2 => "Maths paper 2: reasoning",
        Paper::Maths3 => "Maths paper 3: reasoning",
    }
}

/// Whether a pupil is registered (status `registered`) for the paper's subject.
fn sits(p: &Pupil, paper: Paper) -> bool {
    let i = match paper.subject() {
        nca_pipeline::domain::Subject::Reading => 0,
        nca_pipeline::domain::Subject::Gps => 1,
        nca_pipeline::domain::Subject::Maths => 2,
    };
    p.reg[i] == "registered"
}

pub async fn codes(
    db: &Db,
    year: i32,
    laestab: &str,
) -> sqlx::Result<HashMap<(String, String), String>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT upn, paper, code FROM attendance_codes WHERE cycle = $1 AND laestab = $2",
    )
    .bind(year as i64)
    .bind(laestab)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get("upn"), r.get("paper")), r.get("code")))
        .collect())
}

async fn att_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::Attendance, None).await
}

fn day_of<'a>(state: &'a AppState, date: &str) -> Result<&'a TestDay, AppError> {
    state
        .cycle
        .tests
        .iter()
        .find(|d| d.date.to_string() == date)
        .ok_or(AppError::NotFound)
}

fn day_label(d: &TestDay) -> String {
    d.date.strftime("%A %-d %B %Y").to_string()
}

/// When each day was submitted (from the draft).
fn submitted_days(c: &Ctx) -> HashMap<String, i64> {
    c.standing
        .status
        .as_ref()
        .and_then(|s| s.draft.get("days"))
        .and_then(|d| d.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_i64().map(|t| (k.clone(), t)))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let c = att_ctx(state, s, id).await?;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.notice = notice;
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.warning = c.notice(state);
    p.intro.push(c.act.description.clone());
    p.intro.push(c.standing.status_text(state, &c.act));
    let done = submitted_days(&c);
    let now = state.clock.now();
    let mut sec = Section {
        heading: "Test days".into(),
        head: vec!["Day".into(), "Papers".into(), "Register".into(), "".into()],
        ..Default::default()
    };
    for d in &state.cycle.tests {
        let key = d.date.to_string();
        let status = match done.get(&key) {
            Some(t) => format!("Submitted at {}", when(state, *t)),
            None if now < d.register_opens => format!("Opens at {}", when(state, d.register_opens)),
            None => "Not submitted".into(),
        };
        let links = if now >= d.register_opens {
            vec![(
                format!("{}/day/{key}", c.base),
                format!("Register for {}", day_label(d)),
            )]
        } else {
            Vec::new()
        };
        sec.rows.push(Row {
            cells: vec![
                day_label(d),
                d.papers
                    .iter()
                    .map(|p| paper_name(*p))
                    .collect::<Vec<_>>()
                    .join(", "),
                status,
            ],
            links,
        });
    }
    p.sections.push(sec);
    Ok(p.respond())
}

fn grid(
    list: &[Pupil],
    d: &TestDay,
    codes: &HashMap<(String, String), String>,
    posted: Option<&FormData>,
) -> Grid {
    let mut g = Grid {
        caption: format!("Pupils registered for the tests on {}", day_label(d)),
        head: vec!["Pupil".into(), "UPN".into()],
        rows: Vec::new(),
    };
    g.head
        .extend(d.papers.iter().map(|p| paper_name(*p).to_string()));
    for x in list.iter().filter(|x| d.papers.iter().any(|p| sits(x, *p))) {
        let mut r = GridRow {
            cells: vec![format!("{} {}", x.forename, x.surname), x.upn.clone()],
            inputs: Vec::new(),
        };
        for paper in &d.papers {
            let name = format!("{}:{}", x.upn, paper.as_str());
            let current = match posted {
                Some(f) => f.get(&name),
                None => codes
                    .get(&(x.upn.clone(), paper.as_str().to_string()))
                    .cloned()
                    .unwrap_or_default(),
            };
            let options = if sits(x, *paper) {
                CODES
                    .iter()
                    .map(|(v, l)| (v.to_string(), l.to_string(), *v == current))
                    .collect()
            } else {
                vec![(
                    String::new(),
                    "Not registered for this subject".to_string(),
                    true,
                )]
            };
            r.inputs.push(GridInput {
                label: format!("{} {}: {}", x.forename, x.surname, paper_name(*paper)),
                name,
                options,
                error: None,
                number: None,
            });
        }
        g.rows.push(r);
    }
    g
}

fn day_form(state: &AppState, s: &Signed, c: &Ctx, d: &TestDay, g: Grid) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, &format!("Attendance register: {}", day_label(d)));
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.intro.push("Every pupil is recorded as present unless you choose otherwise. Record a pupil as unable to access a test only if they were registered for it and could not take it; just arrived is for pupils who arrived in school during the test week and could not take it.".into());
    let empty = g.rows.is_empty();
    if empty {
        p.intro
            .push("No pupils are registered for these tests.".into());
    }
    p.form = Some(PageForm {
        action: format!("{}/day/{}", c.base, d.date),
        autosave: format!("/activities/{}/draft", c.act.id),
        fields: vec![crate::portal::Field::input("hidden", "date", "").value(&d.date.to_string())],
        grid: if empty { None } else { Some(g) },
        submit: "Continue".into(),
        submit_name: "next".into(),
        submit_value: "check".into(),
        secondary: Some((
            "next".into(),
            "save".into(),
            "Save and come back later".into(),
        )),
        ..Default::default()
    });
    p
}

async fn day_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, date)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let c = att_ctx(&state, &s, &id).await?;
    let d = day_of(&state, &date)?;
    if state.clock.now() < d.register_opens {
        return Err(AppError::Refused(
            axum::http::StatusCode::FORBIDDEN,
            "This register is not open yet".into(),
            format!(
                "The register for {} opens at {}.",
                day_label(d),
                when(&state, d.register_opens)
            ),
        ));
    }
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let codes = codes(&state.db, state.cycle.year, &c.school.id).await?;
    record_access(
        &state,
        &s.user,
        "attendance-viewed",
        format!("{}/{date}", c.audit_target()),
    )
    .await;
    let g = grid(&list, d, &codes, None);
    let mut p = day_form(&state, &s, &c, d, g);
    if !c.standing.window.is_open() {
        p.form = None;
        p.sections
            .push(copy_of(&list, d, &codes).sections.remove(0));
    }
    Ok(p.respond())
}

/// Check and keep a day's codes: every posted code must be one of the contract's, for a pupil
/// registered for that paper's subject. Errors name the field; nothing is kept if any.
async fn keep_day(
    state: &AppState,
    c: &Ctx,
    s: &Signed,
    d: &TestDay,
    f: &FormData,
) -> Result<Vec<(String, String)>, AppError> {
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let mut errors = Vec::new();
    let mut keep = Vec::new();
    for x in &list {
        for paper in &d.papers {
            let name = format!("{}:{}", x.upn, paper.as_str());
            let v = f.get(&name).trim().to_uppercase();
            if v.is_empty() {
                continue;
            }
            if !sits(x, *paper) {
                errors.push((
                    name,
                    format!(
                        "{} {} is not registered for {}",
                        x.forename,
                        x.surname,
                        paper_name(*paper)
                    ),
                ));
            } else if AttendanceCode::parse(&v).is_err() {
                errors.push((
                    name,
                    format!(
                        "Choose present, absent, unable to access or just arrived for {} {}",
                        x.forename, x.surname
                    ),
                ));
            } else {
                keep.push((x.upn.clone(), paper.as_str().to_string(), v));
            }
        }
    }
    if !errors.is_empty() {
        return Ok(errors);
    }
    let mut tx = state.db.begin().await?;
    for paper in &d.papers {
        sqlx::query(
            "DELETE FROM attendance_codes WHERE cycle = $1 AND laestab = $2 AND paper = $3",
        )
        .bind(state.cycle.year as i64)
        .bind(&c.school.id)
        .bind(paper.as_str())
        .execute(&mut *tx)
        .await?;
    }
    for (upn, paper, code) in &keep {
        sqlx::query("INSERT INTO attendance_codes (cycle, laestab, upn, paper, code) VALUES ($1, $2, $3, $4, $5)")
            .bind(state.cycle.year as i64)
            .bind(&c.school.id)
            .bind(upn)
            .bind(paper)
            .bind(code)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // A changed day must be submitted again.
    let mut days = submitted_days(c);
    days.remove(&d.date.to_string());
    let mut m = serde_json::Map::new();
    m.insert("days".into(), serde_json::json!(days));
    save_draft(state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
    Ok(Vec::new())
}

pub async fn autosave(
    state: &AppState,
    s: &Signed,
    id: &str,
    f: &FormData,
) -> Result<(), AppError> {
    let c = att_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    let d = day_of(state, &f.get("date"))?;
    if state.clock.now() >= d.register_opens {
        keep_day(state, &c, s, d, f).await?;
    }
    Ok(())
}

async fn save_day(
    State(state): State<AppState>,
    s: Signed,
    Path((id, date)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = att_ctx(&state, &s, &id).await?;
    let d = day_of(&state, &date)?;
    let f = c.posted(&state, &s, &body, false)?;
    if state.clock.now() < d.register_opens {
        return Err(AppError::NotFound);
    }
    let errors = keep_day(&state, &c, &s, d, &f).await?;
    if !errors.is_empty() {
        let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
        let g = grid(&list, d, &HashMap::new(), Some(&f));
        let mut p = day_form(&state, &s, &c, d, g);
        for (field, e) in errors {
            p.error(&field, &e);
        }
        return Ok(p.respond());
    }
    if f.get("next") == "save" {
        return Ok(Redirect::to(&c.base).into_response());
    }
    Ok(Redirect::to(&format!("{}/day/{date}/check", c.base)).into_response())
}

fn copy_of(list: &[Pupil], d: &TestDay, codes: &HashMap<(String, String), String>) -> Copy {
    let mut rows = Vec::new();
    for x in list {
        for paper in &d.papers {
            if let Some(code) = codes.get(&(x.upn.clone(), paper.as_str().to_string())) {
                rows.push(Row {
                    cells: vec![
                        format!("{} {}", x.forename, x.surname),
                        x.upn.clone(),
                        paper_name(*paper).into(),
                        format!("{code}: {}", code_label(code)),
                    ],
                    links: Vec::new(),
                });
            }
        }
    }
    let sitting = list
        .iter()
        .filter(|x| d.papers.iter().any(|p| sits(x, *p)))
        .count();
    let mut sec = Section {
        heading: format!(
            "Pupils who did not sit a paper normally on {}",
            day_label(d)
        ),
        head: vec!["Pupil".into(), "UPN".into(), "Paper".into(), "Code".into()],
        rows,
        ..Default::default()
    };
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs
            .push("None: every registered pupil sat every paper.".into());
    }
    Copy {
        summary: vec![
            ("Test day".into(), day_label(d)),
            (
                "Papers".into(),
                d.papers
                    .iter()
                    .map(|p| paper_name(*p))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "Pupils registered for these tests".into(),
                sitting.to_string(),
            ),
        ],
        sections: vec![sec],
    }
}

async fn day_check(
    State(state): State<AppState>,
    s: Signed,
    Path((id, date)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let c = att_ctx(&state, &s, &id).await?;
    let d = day_of(&state, &date)?;
    c.ensure_open(&state, false)?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let codes = codes(&state.db, state.cycle.year, &c.school.id).await?;
    let copy = copy_of(&list, d, &codes);
    let mut p = ActivityPage::new(
        &state,
        &s,
        &format!("Check the register for {}", day_label(d)),
    );
    p.caption = c.act.name.clone();
    p.back = Some(format!("{}/day/{date}", c.base));
    p.warning = c.notice(&state);
    p.summary = copy
        .summary
        .into_iter()
        .map(|(k, v)| (k, v, String::new()))
        .collect();
    p.summary.push((
        "Pupils not sitting normally".into(),
        copy.sections[0].rows.len().to_string(),
        format!("{}/day/{date}", c.base),
    ));
    p.sections = copy.sections;
    p.form = Some(PageForm {
        action: format!("{}/day/{date}/check", c.base),
        submit: "Submit this day's register".into(),
        ..Default::default()
    });
    Ok(p.respond())
}

async fn day_submit(
    State(state): State<AppState>,
    s: Signed,
    Path((id, date)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = att_ctx(&state, &s, &id).await?;
    let d = day_of(&state, &date)?;
    c.posted(&state, &s, &body, false)?;
    let now = state.clock.now();
    if now < d.register_opens {
        return Err(AppError::NotFound);
    }
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let codes = codes(&state.db, state.cycle.year, &c.school.id).await?;
    let mut days = submitted_days(&c);
    days.insert(date.clone(), now);
    let mut m = serde_json::Map::new();
    m.insert("days".into(), serde_json::json!(days));
    save_draft(&state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
    let day_copy = copy_of(&list, d, &codes);
    let search: String = day_copy.sections[0]
        .rows
        .iter()
        .map(|r| format!("{} {} ", r.cells[0], r.cells[1]))
        .collect();
    add_document(
        &state,
        &c.act,
        &c.school.id,
        "form",
        &format!(
            "Attendance register for {}: submitted by {}",
            day_label(d),
            s.user.name
        ),
        &askama::Template::render(&day_copy).map_err(|e| AppError::Unexpected(e.into()))?,
        &search,
        &s.user.email,
    )
    .await?;
    db::audit(
        &state.db,
        super::audited(
            &s,
            &c.school.id,
            "attendance-day-submitted",
            &c.act.id,
            date.clone(),
            addr,
        ),
        now,
    )
    .await?;
    if state
        .cycle
        .tests
        .iter()
        .all(|t| days.contains_key(&t.date.to_string()))
    {
        // Every day is in: the whole register is submitted, with one copy of all of it.
        let c = att_ctx(&state, &s, &id).await?;
        let mut all = Copy {
            summary: vec![(
                "School".into(),
                format!("{} ({})", c.school.name, c.school.id),
            )],
            sections: Vec::new(),
        };
        let mut search = String::new();
        for t in &state.cycle.tests {
            let mut one = copy_of(&list, t, &codes);
            for r in &one.sections[0].rows {
                search.push_str(&format!("{} {} ", r.cells[0], r.cells[1]));
            }
            all.sections.append(&mut one.sections);
        }
        submit(&state, &s, &c, &all, &search, super::ip(addr), None).await?;
        return Ok(Redirect::to(&format!("/activities/{}/submitted", c.act.id)).into_response());
    }
    Ok(Redirect::to(&format!("{}?day={date}", c.base)).into_response())
}

/// Every pupil and paper with a code, for the export.
pub async fn all_codes(db: &Db, year: i32) -> sqlx::Result<Vec<(String, String, String)>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT upn, paper, code FROM attendance_codes WHERE cycle = $1 ORDER BY laestab, upn, paper")
        .bind(year as i64)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("upn"), r.get("paper"), r.get("code")))
        .collect())
}
