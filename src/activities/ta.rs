//! Teacher assessment data submission (ARA 3.1 and 3.2): each pupil's English writing and
//! science TA code, entered in a form or uploaded as a CSV (`upn,writing,science`) or a CTF,
//! with a validation report per upload (green, amber or red per pupil, with reasons; any red
//! and nothing is saved). Submitted by the school, or by its LA where the school has arranged
//! that; an LA can upload (a `laestab` column) and submit for many schools at once.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::domain::{ScienceTa, Upn, WritingTa};

use super::registration::{Pupil, pupils};
use super::{
    ActivityPage, Copy, Ctx, Form, Grid, GridInput, GridRow, PageForm, ctx, keep_report, radios,
    read_upload, record_access, report_csv, save_draft, submit,
};
use crate::AppState;
use crate::auth::roles::OrgKind;
use crate::auth::session::{Signed, check_csrf};
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Row, Section};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/entry", get(entry_page).post(entry))
        .route(
            "/activities/{id}/arrangement",
            get(arrangement_page).post(arrangement),
        )
        .route("/activities/{id}/for/{laestab}", get(for_overview))
        .route(
            "/activities/{id}/for/{laestab}/entry",
            get(for_entry_page).post(for_entry),
        )
        .route(
            "/activities/{id}/for/{laestab}/upload",
            get(for_upload_page).post(for_upload),
        )
        .route(
            "/activities/{id}/for/{laestab}/check",
            get(for_check_page).post(for_check_submit),
        )
}

const WRITING: &[(&str, &str)] = &[
    ("", "Not entered"),
    ("GDS", "GDS: working at greater depth"),
    ("EXS", "EXS: working at the expected standard"),
    ("WTS", "WTS: working towards the expected standard"),
    ("PK6", "PK6"),
    ("PK5", "PK5"),
    ("PK4", "PK4"),
    ("PK3", "PK3"),
    ("PK2", "PK2"),
    ("PK1", "PK1"),
    ("EM", "EM: engagement model"),
    ("A", "A: absent or not enough information"),
    ("L", "L: left the school"),
    ("F", "F: assessed in a future year"),
    ("P", "P: assessed in a previous year"),
];

const SCIENCE: &[(&str, &str)] = &[
    ("", "Not entered"),
    ("EXS", "EXS: working at the expected standard"),
    ("HNM", "HNM: has not met the expected standard"),
    ("A", "A: absent or not enough information"),
    ("L", "L: left the school"),
    ("F", "F: assessed in a future year"),
    ("P", "P: assessed in a previous year"),
];

/// A row of an uploaded TA file: (row or pupil number, laestab, upn, writing, science).
pub type UploadRow = (usize, String, String, String, String);
/// TA to keep: (laestab, upn, writing, science).
type Keep = (String, String, String, String);

/// A pupil's line in a validation report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub laestab: String,
    pub upn: String,
    pub name: String,
    pub writing: String,
    pub science: String,
    /// green, amber or red
    pub rag: &'static str,
    pub reasons: Vec<String>,
}

/// The TA rules for one pupil: red for what cannot be accepted, amber for what is accepted but
/// should be checked against the pupil's registration.
pub fn judge(p: Option<&Pupil>, writing: &str, science: &str) -> (&'static str, Vec<String>) {
    let mut red = Vec::new();
    let mut amber = Vec::new();
    let Some(p) = p else {
        return (
            "red",
            vec!["this UPN is not on the school's pupil registration".into()],
        );
    };
    if !writing.is_empty() && WritingTa::parse(writing).is_err() {
        red.push(format!("writing: \u{201c}{writing}\u{201d} is not a writing TA code (GDS, EXS, WTS, PK1 to PK6, EM, A, L, F or P)"));
    }
    if !science.is_empty() && ScienceTa::parse(science).is_err() {
        red.push(format!(
            "science: \u{201c}{science}\u{201d} is not a science TA code (EXS, HNM, A, L, F or P)"
        ));
    }
    if writing.is_empty() {
        amber.push("no writing TA yet".into());
    }
    if science.is_empty() {
        amber.push("no science TA yet".into());
    }
    let all = |s: &str| p.reg.iter().all(|r| r == s);
    for (subject, code) in [("writing", writing), ("science", science)] {
        let (want, reg) = match code {
            "L" => (true, "left"),
            "F" => (true, "future"),
            "P" => (true, "previous"),
            _ => (false, ""),
        };
        if want && !p.reg.iter().any(|r| r == reg) {
            amber.push(format!(
                "{subject} is {code} but the pupil is not registered as {reg} for any test"
            ));
        }
        if !code.is_empty() && code != "L" && all("left") {
            amber.push(format!(
                "the pupil is registered as left, but {subject} is {code} rather than L"
            ));
        }
    }
    if p.reg.iter().all(|r| r == "unregistered") {
        red.push("the pupil is registered as not on the school roll".into());
    }
    if !red.is_empty() {
        red.extend(amber);
        ("red", red)
    } else if !amber.is_empty() {
        ("amber", amber)
    } else {
        ("green", Vec::new())
    }
}

pub async fn codes(
    db: &Db,
    year: i32,
    laestab: &str,
) -> sqlx::Result<HashMap<String, (String, String)>> {
    use sqlx::Row as _;
    let rows =
        sqlx::query("SELECT upn, writing, science FROM ta_codes WHERE cycle = $1 AND laestab = $2")
            .bind(year as i64)
            .bind(laestab)
            .fetch_all(db)
            .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("upn"), (r.get("writing"), r.get("science"))))
        .collect())
}

async fn save_codes(
    db: &Db,
    year: i32,
    rows: &[(String, String, String, String)],
    by: &str,
    now: i64,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for (laestab, upn, w, sc) in rows {
        sqlx::query(
            "INSERT INTO ta_codes (cycle, laestab, upn, writing, science, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (cycle, laestab, upn) DO UPDATE SET writing = excluded.writing, science = excluded.science, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(year as i64)
        .bind(laestab)
        .bind(upn)
        .bind(w)
        .bind(sc)
        .bind(by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The school's LA submits its TA.
pub async fn by_la(db: &Db, year: i32, laestab: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("SELECT laestab FROM ta_by_la WHERE cycle = $1 AND laestab = $2")
        .bind(year as i64)
        .bind(laestab)
        .fetch_optional(db)
        .await?;
    Ok(r.is_some())
}

/// The schools of an LA that have arranged for it to submit their TA.
async fn arranged(db: &Db, year: i32, la: &str) -> sqlx::Result<Vec<db::Org>> {
    use sqlx::Row as _;
    let chosen: std::collections::HashSet<String> =
        sqlx::query("SELECT laestab FROM ta_by_la WHERE cycle = $1 AND laestab IN (SELECT id FROM orgs WHERE la_code = $2 AND kind = 'ks2-school')")
            .bind(year as i64)
            .bind(la)
            .fetch_all(db)
            .await?
            .iter()
            .map(|r| r.get("laestab"))
            .collect();
    let mut schools = db::schools_of(db, Some(la), None).await?;
    schools.retain(|s| chosen.contains(&s.id));
    Ok(schools)
}

async fn ta_ctx(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
) -> Result<Ctx, AppError> {
    let c = ctx(state, s, id, Form::Ta, laestab).await?;
    if c.by_la && !by_la(&state.db, state.cycle.year, &c.school.id).await? {
        return Err(AppError::Refused(
            StatusCode::FORBIDDEN,
            "This school submits its own TA".into(),
            format!(
                "{} has not arranged for its local authority to submit its teacher assessment data.",
                c.school.name
            ),
        ));
    }
    Ok(c)
}

/// Every pupil on the registration with their TA and its judgement.
async fn lines(state: &AppState, laestab: &str) -> Result<Vec<Line>, AppError> {
    let list = pupils(&state.db, state.cycle.year, laestab).await?;
    let codes = codes(&state.db, state.cycle.year, laestab).await?;
    Ok(list
        .iter()
        .filter(|p| !p.reg.iter().all(|r| r == "unregistered"))
        .map(|p| {
            let (w, sc) = codes.get(&p.upn).cloned().unwrap_or_default();
            let (rag, reasons) = judge(Some(p), &w, &sc);
            Line {
                laestab: laestab.into(),
                upn: p.upn.clone(),
                name: format!("{} {}", p.forename, p.surname),
                writing: w,
                science: sc,
                rag,
                reasons,
            }
        })
        .collect())
}

fn report_section(heading: &str, lines: &[Line]) -> Section {
    Section {
        heading: heading.into(),
        head: vec![
            "Pupil".into(),
            "UPN".into(),
            "Writing".into(),
            "Science".into(),
            "Check".into(),
            "Reasons".into(),
        ],
        rows: lines
            .iter()
            .map(|l| Row {
                cells: vec![
                    l.name.clone(),
                    l.upn.clone(),
                    l.writing.clone(),
                    l.science.clone(),
                    l.rag.to_string(),
                    l.reasons.join("; "),
                ],
                links: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn counts(lines: &[Line]) -> String {
    let n = |c: &str| lines.iter().filter(|l| l.rag == c).count();
    format!(
        "{} green, {} amber, {} red",
        n("green"),
        n("amber"),
        n("red")
    )
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
    school_overview(state, s, id, None).await
}

async fn school_overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
) -> Result<Response, AppError> {
    let c = ta_ctx(state, s, id, laestab).await?;
    let lines = lines(state, &c.school.id).await?;
    record_access(state, &s.user, "ta-viewed", c.audit_target()).await;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some(if c.by_la {
        format!("/activities/{}", c.act.id)
    } else {
        "/activities".into()
    });
    p.warning = c.notice(state);
    p.intro.push(c.act.description.clone());
    let la = by_la(&state.db, state.cycle.year, &c.school.id).await?;
    if la && !c.by_la {
        p.intro.push("Your local authority submits your TA data on your behalf. You can still check it here.".into());
    }
    p.intro.push(format!(
        "{} pupils: {}. {}",
        lines.len(),
        counts(&lines),
        c.standing.status_text(state, &c.act)
    ));
    p.sections.push(report_section("Pupils", &lines));
    if c.standing.window.is_open() {
        p.links
            .push((format!("{}/entry", c.base), "Enter TA in a form".into()));
        p.links.push((
            format!("{}/upload", c.base),
            "Upload a CSV or CTF file".into(),
        ));
        p.links
            .push((format!("{}/check", c.base), "Check and submit TA".into()));
        if !c.by_la {
            p.links.push((
                format!("{}/arrangement", c.base),
                "Choose who submits your TA".into(),
            ));
        }
    }
    Ok(p.respond())
}

async fn for_overview(
    State(state): State<AppState>,
    s: Signed,
    Path((id, laestab)): Path<(String, String)>,
) -> Result<Response, AppError> {
    school_overview(&state, &s, &id, Some(&laestab)).await
}

/// The LA's page: the schools that have arranged for it to submit, with each one's status.
async fn la_overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.form == Form::Ta)
        .ok_or(AppError::NotFound)?;
    let aud = act.audience(OrgKind::La, None).ok_or(AppError::NotFound)?;
    s.require(aud.permission)?;
    let schools = arranged(&state.db, state.cycle.year, &s.user.org).await?;
    let mut p = ActivityPage::new(state, s, &act.name);
    p.notice = notice;
    p.caption = s.user.org_name.clone();
    p.back = Some("/activities".into());
    let la = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::Forbidden)?;
    let st = super::standing(state, act, &la)
        .await?
        .ok_or(AppError::NotFound)?;
    p.warning = Some(st.due_text(state));
    p.intro.push("The schools that have arranged for your local authority to submit their teacher assessment data. Open a school to enter, upload or submit its TA, or upload one CSV file for many schools (with a laestab column) and submit them together.".into());
    let mut sec = Section {
        heading: "Schools".into(),
        head: vec![
            "School".into(),
            "DfE number".into(),
            "Pupils".into(),
            "Check".into(),
            "Status".into(),
            "".into(),
        ],
        ..Default::default()
    };
    for o in &schools {
        let ls = lines(state, &o.id).await?;
        let status = super::status(&state.db, state.cycle.year, &act.id, &o.id).await?;
        sec.rows.push(Row {
            cells: vec![
                o.name.clone(),
                o.id.clone(),
                ls.len().to_string(),
                counts(&ls),
                super::state_label(&status).to_string(),
            ],
            links: vec![(
                format!("/activities/{}/for/{}", act.id, o.id),
                format!("Open {}", o.name),
            )],
        });
    }
    if schools.is_empty() {
        sec.head.clear();
        sec.paragraphs
            .push("No school has arranged for you to submit its TA yet.".into());
    }
    p.sections.push(sec);
    if st.window.is_open() && !schools.is_empty() {
        p.links.push((
            format!("/activities/{}/upload", act.id),
            "Upload TA for several schools (CSV)".into(),
        ));
        p.links.push((
            format!("/activities/{}/check", act.id),
            "Check and submit TA for your schools".into(),
        ));
    }
    Ok(p.respond())
}

fn entry_grid(lines: &[Line], posted: Option<&FormData>) -> Grid {
    Grid {
        caption: "Teacher assessment per pupil".into(),
        head: vec![
            "Pupil".into(),
            "UPN".into(),
            "Writing".into(),
            "Science".into(),
        ],
        rows: lines
            .iter()
            .map(|l| {
                let cur = |k: &str, saved: &str| {
                    posted.map_or(saved.to_string(), |f| f.get(&format!("{}:{k}", l.upn)))
                };
                let opt = |list: &[(&str, &str)], v: String| {
                    list.iter()
                        .map(|(c, t)| (c.to_string(), t.to_string(), *c == v))
                        .collect()
                };
                GridRow {
                    cells: vec![l.name.clone(), l.upn.clone()],
                    inputs: vec![
                        GridInput {
                            name: format!("{}:writing", l.upn),
                            label: format!("{}: writing TA", l.name),
                            options: opt(WRITING, cur("writing", &l.writing)),
                            error: None,
                            number: None,
                        },
                        GridInput {
                            name: format!("{}:science", l.upn),
                            label: format!("{}: science TA", l.name),
                            options: opt(SCIENCE, cur("science", &l.science)),
                            error: None,
                            number: None,
                        },
                    ],
                }
            })
            .collect(),
    }
}

fn entry_form(state: &AppState, s: &Signed, c: &Ctx, g: Grid) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, "Enter teacher assessment");
    p.caption = format!("{}: {}", c.act.name, c.school.name);
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.form = Some(PageForm {
        action: format!("{}/entry", c.base),
        autosave: if c.by_la {
            String::new()
        } else {
            format!("/activities/{}/draft", c.act.id)
        },
        grid: Some(g),
        submit: "Save".into(),
        ..Default::default()
    });
    p
}

async fn show_entry(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
) -> Result<Response, AppError> {
    let c = ta_ctx(state, s, id, laestab).await?;
    c.ensure_open(state, false)?;
    let ls = lines(state, &c.school.id).await?;
    Ok(entry_form(state, s, &c, entry_grid(&ls, None)).respond())
}

/// The posted grid as rows to keep, or errors naming each field.
fn read_grid(c: &Ctx, ls: &[Line], f: &FormData) -> (Vec<Keep>, Vec<(String, String)>) {
    let mut keep = Vec::new();
    let mut errors = Vec::new();
    for l in ls {
        let w = f.get(&format!("{}:writing", l.upn)).trim().to_uppercase();
        let sc = f.get(&format!("{}:science", l.upn)).trim().to_uppercase();
        if !w.is_empty() && WritingTa::parse(&w).is_err() {
            errors.push((
                format!("{}:writing", l.upn),
                format!("Choose a writing TA code for {}", l.name),
            ));
        }
        if !sc.is_empty() && ScienceTa::parse(&sc).is_err() {
            errors.push((
                format!("{}:science", l.upn),
                format!("Choose a science TA code for {}", l.name),
            ));
        }
        if f.has(&format!("{}:writing", l.upn)) || f.has(&format!("{}:science", l.upn)) {
            keep.push((c.school.id.clone(), l.upn.clone(), w, sc));
        }
    }
    (keep, errors)
}

async fn save_entry(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = ta_ctx(state, s, id, laestab).await?;
    let f = c.posted(state, s, &body, false)?;
    let ls = lines(state, &c.school.id).await?;
    let (keep, errors) = read_grid(&c, &ls, &f);
    if !errors.is_empty() {
        let mut p = entry_form(state, s, &c, entry_grid(&ls, Some(&f)));
        for (k, e) in errors {
            p.error(&k, &e);
        }
        return Ok(p.respond());
    }
    save_codes(
        &state.db,
        state.cycle.year,
        &keep,
        &s.user.email,
        state.clock.now(),
    )
    .await?;
    save_draft(state, &c.act, &c.school.id, &s.user.email, None).await?;
    Ok(Redirect::to(&c.base).into_response())
}

pub async fn autosave(
    state: &AppState,
    s: &Signed,
    id: &str,
    f: &FormData,
) -> Result<(), AppError> {
    let c = ta_ctx(state, s, id, None).await?;
    c.ensure_open(state, false)?;
    let ls = lines(state, &c.school.id).await?;
    let (keep, errors) = read_grid(&c, &ls, f);
    if errors.is_empty() && !keep.is_empty() {
        save_codes(
            &state.db,
            state.cycle.year,
            &keep,
            &s.user.email,
            state.clock.now(),
        )
        .await?;
        save_draft(state, &c.act, &c.school.id, &s.user.email, None).await?;
    }
    Ok(())
}

async fn entry_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    show_entry(&state, &s, &id, None).await
}
async fn entry(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    save_entry(&state, &s, &id, None, body).await
}
async fn for_entry_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
) -> Result<Response, AppError> {
    show_entry(&state, &s, &id, Some(&l)).await
}
async fn for_entry(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    save_entry(&state, &s, &id, Some(&l), body).await
}

// ---------- uploads ----------

/// Rows of an uploaded TA file: (row or pupil number, laestab, upn, writing, science), or the
/// problems that make the file unreadable.
pub fn parse_file(name: &str, bytes: &[u8]) -> Result<Vec<UploadRow>, Vec<String>> {
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xEF && *b != 0xBB && *b != 0xBF);
    if text_start.is_some_and(|i| bytes[i] == b'<') || name.to_lowercase().ends_with(".xml") {
        return parse_ctf(name, bytes);
    }
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let head: Vec<String> = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_lowercase())
            .collect(),
        Err(e) => return Err(vec![format!("{name}: not a readable CSV: {e}")]),
    };
    let col = |n: &str| head.iter().position(|h| h == n);
    let missing: Vec<String> = ["upn", "writing", "science"]
        .iter()
        .filter(|c| col(c).is_none())
        .map(|c| format!("{name}: the header has no `{c}` column"))
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| vec![format!("{name}, row {}: not readable: {e}", i + 2)])?;
        let cell = |n: &str| {
            col(n)
                .and_then(|c| rec.get(c))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push((
            i + 2,
            cell("laestab"),
            cell("upn").to_uppercase(),
            cell("writing").to_uppercase(),
            cell("science").to_uppercase(),
        ));
    }
    if out.is_empty() {
        return Err(vec![format!("{name}: the file has no pupils")]);
    }
    Ok(out)
}

/// A CTF's pupils: `UPN` and the KS2 `StageAssessment`s with Method TA for subjects WRI and SCI.
fn parse_ctf(name: &str, bytes: &[u8]) -> Result<Vec<UploadRow>, Vec<String>> {
    let pupils = crate::ctf::pupils(name, bytes).map_err(|e| vec![e])?;
    Ok(pupils
        .into_iter()
        .map(|p| {
            let (mut writing, mut science) = (String::new(), String::new());
            for a in &p.assessments {
                let get = |k: &str| {
                    a.get(k)
                        .map(|s| s.trim().to_uppercase())
                        .unwrap_or_default()
                };
                if get("METHOD") == "TA" {
                    match get("SUBJECT").as_str() {
                        "WRI" => writing = get("RESULT"),
                        "SCI" => science = get("RESULT"),
                        _ => {}
                    }
                }
            }
            let upn = p.field("UPN").trim().to_uppercase();
            (p.n, String::new(), upn, writing, science)
        })
        .collect())
}

/// Judge every row of an upload against the registrations of the schools it may cover.
async fn judge_upload(
    state: &AppState,
    rows: &[(usize, String, String, String, String)],
    schools: &[String],
    default_school: Option<&str>,
) -> Result<Vec<(usize, Line)>, AppError> {
    let mut regs: HashMap<String, Vec<Pupil>> = HashMap::new();
    for l in schools {
        regs.insert(l.clone(), pupils(&state.db, state.cycle.year, l).await?);
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (row, laestab, upn, w, sc) in rows {
        let school = if laestab.is_empty() {
            default_school.unwrap_or("").to_string()
        } else {
            laestab.clone()
        };
        let mut line = Line {
            laestab: school.clone(),
            upn: upn.clone(),
            name: String::new(),
            writing: w.clone(),
            science: sc.clone(),
            rag: "green",
            reasons: Vec::new(),
        };
        if let Err(e) = Upn::parse(upn) {
            line.rag = "red";
            line.reasons.push(format!("UPN {e}"));
        } else if !regs.contains_key(&school) {
            line.rag = "red";
            line.reasons.push(if school.is_empty() {
                "no laestab given for this row".into()
            } else {
                format!("school {school} is not one you can submit TA for")
            });
        } else if !seen.insert((school.clone(), upn.clone())) {
            line.rag = "red";
            line.reasons
                .push("this pupil is on an earlier row too".into());
        } else {
            let p = regs[&school].iter().find(|p| p.upn == *upn);
            if let Some(p) = p {
                line.name = format!("{} {}", p.forename, p.surname);
            }
            let (rag, reasons) = judge(p, w, sc);
            line.rag = rag;
            line.reasons = reasons;
        }
        out.push((*row, line));
    }
    Ok(out)
}

fn upload_form(
    state: &AppState,
    s: &Signed,
    action: &str,
    back: &str,
    caption: &str,
    many: bool,
) -> ActivityPage {
    let mut p = ActivityPage::new(
        state,
        s,
        if many {
            "Upload TA for several schools"
        } else {
            "Upload teacher assessment"
        },
    );
    p.caption = caption.into();
    p.back = Some(back.into());
    p.intro.push(if many {
        "A CSV file with a header row and the columns laestab, upn, writing and science. Each row is checked against that school's pupil registration.".into()
    } else {
        "A CSV file with a header row and the columns upn, writing and science, or a common transfer file (CTF) from your management information system.".into()
    });
    p.intro.push("You get a report for every pupil: green is accepted, amber is accepted but worth checking, red cannot be accepted. If any pupil is red nothing is saved: correct the file and upload it again.".into());
    p.form = Some(PageForm {
        action: action.into(),
        multipart: true,
        fields: vec![Field::input(
            "file",
            "file",
            if many { "CSV file" } else { "CSV or CTF file" },
        )],
        submit: "Upload and check".into(),
        ..Default::default()
    });
    p
}

/// An upload: read, judge, keep (only when nothing is red), show the report.
#[allow(clippy::too_many_arguments)]
async fn take_upload(
    state: &AppState,
    s: &Signed,
    act_id: &str,
    schools: Vec<String>,
    default: Option<&str>,
    mut p: ActivityPage,
    form: Multipart,
    addr: Option<Extension<ClientAddr>>,
) -> Result<Response, AppError> {
    let (name, bytes, csrf) = read_upload(form, "file").await?;
    check_csrf(&s.csrf, &csrf)?;
    if name.is_empty() || bytes.is_empty() {
        p.error("file", "Choose a file to upload");
        return Ok(p.respond());
    }
    let rows = match parse_file(&name, &bytes) {
        Ok(r) => r,
        Err(es) => {
            for e in es {
                p.error("file", &e);
            }
            return Ok(p.respond());
        }
    };
    let judged = judge_upload(state, &rows, &schools, default).await?;
    let lines: Vec<Line> = judged.iter().map(|(_, l)| l.clone()).collect();
    let red = lines.iter().filter(|l| l.rag == "red").count();
    p.sections.push(report_section(
        &format!("Validation report for {name}: {}", counts(&lines)),
        &lines,
    ));
    if red > 0 {
        let problems: Vec<(usize, String, String, String)> = judged
            .iter()
            .filter(|(_, l)| l.rag == "red")
            .map(|(r, l)| (*r, "upn".to_string(), l.upn.clone(), l.reasons.join("; ")))
            .collect();
        let link = keep_report(state, &s.user.org, report_csv(&problems)).await?;
        p.error("file", &format!("{name}: {red} pupils are red, so nothing was saved. Correct them and upload the file again."));
        p.links.insert(
            0,
            (link, "Download the report of every problem (CSV)".into()),
        );
        return Ok(p.respond());
    }
    let keep: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l.laestab.clone(),
                l.upn.clone(),
                l.writing.clone(),
                l.science.clone(),
            )
        })
        .collect();
    save_codes(
        &state.db,
        state.cycle.year,
        &keep,
        &s.user.email,
        state.clock.now(),
    )
    .await?;
    let act = state.cycle.activity(act_id).ok_or(AppError::NotFound)?;
    let mut touched: Vec<&String> = keep.iter().map(|k| &k.0).collect();
    touched.dedup();
    for l in touched {
        save_draft(state, act, l, &s.user.email, None).await?;
    }
    db::audit(
        &state.db,
        super::audited(
            s,
            &s.user.org,
            "ta-uploaded",
            act_id,
            format!("{name}: {} pupils", keep.len()),
            addr,
        ),
        state.clock.now(),
    )
    .await?;
    p.notice = Some(format!(
        "{name}: {} pupils saved ({}). Check any amber pupils, then submit.",
        keep.len(),
        counts(&lines)
    ));
    p.form = None;
    Ok(p.respond())
}

pub async fn upload_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    if s.user.kind == OrgKind::La {
        let (act, _) = la_act(state, s, id).await?;
        return Ok(upload_form(
            state,
            s,
            &format!("/activities/{id}/upload"),
            &format!("/activities/{id}"),
            &act.name,
            true,
        )
        .respond());
    }
    let c = ta_ctx(state, s, id, None).await?;
    c.ensure_open(state, false)?;
    Ok(upload_form(
        state,
        s,
        &format!("{}/upload", c.base),
        &c.base,
        &c.act.name,
        false,
    )
    .respond())
}

/// The TA activity for the signed-in LA, open now.
async fn la_act(
    state: &AppState,
    s: &Signed,
    id: &str,
) -> Result<(super::Activity, Vec<db::Org>), AppError> {
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.form == Form::Ta)
        .ok_or(AppError::NotFound)?
        .clone();
    let la = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::Forbidden)?;
    let st = super::standing(state, &act, &la)
        .await?
        .ok_or(AppError::NotFound)?;
    s.require(st.audience.permission)?;
    if !st.window.is_open() {
        return Err(AppError::Refused(
            StatusCode::FORBIDDEN,
            format!("{}: this form is closed", act.name),
            format!("{}. The form is read-only.", st.due_text(state)),
        ));
    }
    let schools = arranged(&state.db, state.cycle.year, &s.user.org).await?;
    Ok((act, schools))
}

pub async fn upload(
    state: &AppState,
    s: &Signed,
    id: &str,
    addr: Option<Extension<ClientAddr>>,
    form: Multipart,
) -> Result<Response, AppError> {
    if s.user.kind == OrgKind::La {
        let (act, schools) = la_act(state, s, id).await?;
        let p = upload_form(
            state,
            s,
            &format!("/activities/{id}/upload"),
            &format!("/activities/{id}"),
            &act.name,
            true,
        );
        return take_upload(
            state,
            s,
            id,
            schools.into_iter().map(|o| o.id).collect(),
            None,
            p,
            form,
            addr,
        )
        .await;
    }
    let c = ta_ctx(state, s, id, None).await?;
    c.ensure_open(state, false)?;
    let p = upload_form(
        state,
        s,
        &format!("{}/upload", c.base),
        &c.base,
        &c.act.name,
        false,
    );
    take_upload(
        state,
        s,
        id,
        vec![c.school.id.clone()],
        Some(&c.school.id),
        p,
        form,
        addr,
    )
    .await
}

async fn for_upload_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let c = ta_ctx(&state, &s, &id, Some(&l)).await?;
    c.ensure_open(&state, false)?;
    Ok(upload_form(
        &state,
        &s,
        &format!("{}/upload", c.base),
        &c.base,
        &format!("{}: {}", c.act.name, c.school.name),
        false,
    )
    .respond())
}

async fn for_upload(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    form: Multipart,
) -> Result<Response, AppError> {
    let c = ta_ctx(&state, &s, &id, Some(&l)).await?;
    c.ensure_open(&state, false)?;
    let p = upload_form(
        &state,
        &s,
        &format!("{}/upload", c.base),
        &c.base,
        &format!("{}: {}", c.act.name, c.school.name),
        false,
    );
    take_upload(
        &state,
        &s,
        &id,
        vec![c.school.id.clone()],
        Some(&c.school.id),
        p,
        form,
        addr,
    )
    .await
}

// ---------- submitting ----------

fn copy_of(school: &db::Org, lines: &[Line]) -> Copy {
    Copy {
        summary: vec![
            ("School".into(), format!("{} ({})", school.name, school.id)),
            ("Pupils".into(), lines.len().to_string()),
            ("Checks".into(), counts(lines)),
        ],
        sections: vec![report_section("Teacher assessment", lines)],
    }
}

async fn school_check(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
) -> Result<Response, AppError> {
    let c = ta_ctx(state, s, id, laestab).await?;
    c.ensure_open(state, false)?;
    let ls = lines(state, &c.school.id).await?;
    let copy = copy_of(&c.school, &ls);
    let mut p = ActivityPage::new(state, s, "Check your answers before submitting TA");
    p.caption = format!("{}: {}", c.act.name, c.school.name);
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.summary = copy
        .summary
        .into_iter()
        .map(|(k, v)| (k, v, String::new()))
        .collect();
    p.sections = copy.sections;
    let red = ls.iter().filter(|l| l.rag == "red").count();
    let missing = ls
        .iter()
        .filter(|l| l.writing.is_empty() || l.science.is_empty())
        .count();
    if red > 0 || missing > 0 || ls.is_empty() {
        p.intro.push(format!("TA cannot be submitted yet: {missing} pupils have no writing or science TA, and {red} are red."));
        p.links
            .push((format!("{}/entry", c.base), "Enter TA in a form".into()));
        return Ok(p.respond());
    }
    p.form = Some(PageForm {
        action: format!("{}/check", c.base),
        submit: "Submit TA".into(),
        ..Default::default()
    });
    Ok(p.respond())
}

async fn school_submit(
    state: &AppState,
    s: &Signed,
    id: &str,
    laestab: Option<&str>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = ta_ctx(state, s, id, laestab).await?;
    c.posted(state, s, &body, false)?;
    submit_one(state, s, &c, addr).await?;
    Ok(Redirect::to(&if c.by_la {
        format!("/activities/{}?submitted=1", c.act.id)
    } else {
        format!("/activities/{}/submitted", c.act.id)
    })
    .into_response())
}

/// Submit one school's TA when every pupil has both codes and none is red.
async fn submit_one(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    addr: Option<Extension<ClientAddr>>,
) -> Result<(), AppError> {
    let ls = lines(state, &c.school.id).await?;
    if ls.is_empty()
        || ls
            .iter()
            .any(|l| l.rag == "red" || l.writing.is_empty() || l.science.is_empty())
    {
        return Err(AppError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "TA is not complete".into(),
            format!(
                "{}: every pupil needs a writing and a science TA code, with none red, before TA can be submitted.",
                c.school.name
            ),
        ));
    }
    let search: String = ls
        .iter()
        .map(|l| format!("{} {} ", l.upn, l.name))
        .collect();
    submit(
        state,
        s,
        c,
        &copy_of(&c.school, &ls),
        &search,
        super::ip(addr),
        None,
    )
    .await
}

pub async fn check_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    if s.user.kind != OrgKind::La {
        return school_check(state, s, id, None).await;
    }
    let (act, schools) = la_act(state, s, id).await?;
    let mut p = ActivityPage::new(state, s, "Submit TA for your schools");
    p.caption = act.name.clone();
    p.back = Some(format!("/activities/{id}"));
    let mut options = Vec::new();
    let mut sec = Section {
        heading: "Schools".into(),
        head: vec![
            "School".into(),
            "Pupils".into(),
            "Check".into(),
            "Ready".into(),
        ],
        ..Default::default()
    };
    for o in &schools {
        let ls = lines(state, &o.id).await?;
        let ready = !ls.is_empty()
            && ls
                .iter()
                .all(|l| l.rag != "red" && !l.writing.is_empty() && !l.science.is_empty());
        sec.rows.push(Row {
            cells: vec![
                format!("{} ({})", o.name, o.id),
                ls.len().to_string(),
                counts(&ls),
                if ready {
                    "yes".into()
                } else {
                    "no: TA missing or red".into()
                },
            ],
            links: Vec::new(),
        });
        if ready {
            options.push((o.id.clone(), format!("{} ({})", o.name, o.id), true));
        }
    }
    p.sections.push(sec);
    if options.is_empty() {
        p.intro.push("No school's TA is complete yet.".into());
        return Ok(p.respond());
    }
    let mut f = Field::input("checkboxes", "school", "Submit TA for these schools");
    f.options = options;
    p.form = Some(PageForm {
        action: format!("/activities/{id}/check"),
        fields: vec![f],
        submit: "Submit TA for the chosen schools".into(),
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
    if s.user.kind != OrgKind::La {
        return school_submit(state, s, id, None, addr, body).await;
    }
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let (_, schools) = la_act(state, s, id).await?;
    let chosen = f.all("school");
    if chosen.is_empty() {
        return Err(AppError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "No school chosen".into(),
            "Choose at least one school to submit TA for.".into(),
        ));
    }
    let mut n = 0;
    for l in &chosen {
        if !schools.iter().any(|o| &o.id == l) {
            return Err(AppError::Forbidden);
        }
        let c = ta_ctx(state, s, id, Some(l)).await?;
        submit_one(state, s, &c, addr).await?;
        n += 1;
    }
    Ok(Redirect::to(&format!("/activities/{id}?submitted={n}")).into_response())
}

async fn for_check_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
) -> Result<Response, AppError> {
    school_check(&state, &s, &id, Some(&l)).await
}
async fn for_check_submit(
    State(state): State<AppState>,
    s: Signed,
    Path((id, l)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    school_submit(&state, &s, &id, Some(&l), addr, body).await
}

// ---------- who submits ----------

fn arrangement_form(state: &AppState, s: &Signed, c: &Ctx, cur: &str) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, "Who submits your teacher assessment data?");
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.form = Some(PageForm {
        action: format!("{}/arrangement", c.base),
        fields: vec![radios(
            "who",
            "Who submits it",
            &[
                ("school", "Our school submits it"),
                (
                    "la",
                    "Our local authority submits it on our behalf (as we have arranged with them)",
                ),
            ],
            cur,
        )],
        submit: "Save".into(),
        ..Default::default()
    });
    p
}

async fn arrangement_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = ta_ctx(&state, &s, &id, None).await?;
    c.ensure_open(&state, false)?;
    let cur = if by_la(&state.db, state.cycle.year, &c.school.id).await? {
        "la"
    } else {
        "school"
    };
    Ok(arrangement_form(&state, &s, &c, cur).respond())
}

async fn arrangement(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = ta_ctx(&state, &s, &id, None).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let who = f.get("who");
    let la = c.school.la_code.clone().unwrap_or_default();
    match who.as_str() {
        "school" => {
            sqlx::query("DELETE FROM ta_by_la WHERE cycle = $1 AND laestab = $2")
                .bind(state.cycle.year as i64)
                .bind(&c.school.id)
                .execute(&state.db)
                .await?;
        }
        "la" if !la.is_empty() => {
            sqlx::query("DELETE FROM ta_by_la WHERE cycle = $1 AND laestab = $2")
                .bind(state.cycle.year as i64)
                .bind(&c.school.id)
                .execute(&state.db)
                .await?;
            sqlx::query("INSERT INTO ta_by_la (cycle, laestab, la_code, set_by, set_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(state.cycle.year as i64).bind(&c.school.id).bind(&la).bind(&s.user.email).bind(state.clock.now()).execute(&state.db).await?;
        }
        _ => {
            let mut p = arrangement_form(&state, &s, &c, "");
            p.error("who", "Select who submits your TA data");
            return Ok(p.respond());
        }
    }
    db::audit(
        &state.db,
        super::audited(&s, &c.school.id, "ta-arrangement", &c.act.id, who, addr),
        state.clock.now(),
    )
    .await?;
    Ok(Redirect::to(&c.base).into_response())
}

/// Every pupil's TA, for the export.
pub async fn all_codes(db: &Db, year: i32) -> sqlx::Result<Vec<(String, String, String)>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT upn, writing, science FROM ta_codes WHERE cycle = $1 AND (writing <> '' OR science <> '') ORDER BY laestab, upn")
        .bind(year as i64)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("upn"), r.get("writing"), r.get("science")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pupil(reg: [&str; 3]) -> Pupil {
        Pupil {
            upn: "H801200001001".into(),
            surname: "Able".into(),
            forename: "Ann".into(),
            dob: "2014-01-01".into(),
            gender: "F".into(),
            reg: reg.map(String::from),
        }
    }

    #[test]
    fn ta_is_judged_green_amber_or_red_with_reasons() {
        let r = pupil(["registered"; 3]);
        assert_eq!(judge(Some(&r), "EXS", "EXS").0, "green");
        assert_eq!(judge(Some(&r), "PK3", "HNM").0, "green");
        let (rag, why) = judge(Some(&r), "XYZ", "EXS");
        assert_eq!(rag, "red");
        assert!(why[0].starts_with("writing:"));
        assert_eq!(
            judge(Some(&r), "EXS", "GDS").0,
            "red",
            "GDS is not a science code"
        );
        assert_eq!(judge(None, "EXS", "EXS").0, "red");
        let (rag, why) = judge(Some(&r), "L", "EXS");
        assert_eq!(rag, "amber");
        assert!(why[0].contains("not registered as left"), "{why:?}");
        let left = pupil(["left"; 3]);
        assert_eq!(judge(Some(&left), "L", "L").0, "green");
        assert_eq!(judge(Some(&left), "EXS", "L").0, "amber");
        assert_eq!(judge(Some(&r), "EXS", "").0, "amber");
        assert_eq!(
            judge(Some(&pupil(["unregistered"; 3])), "EXS", "EXS").0,
            "red"
        );
    }

    #[test]
    fn csv_and_ctf_uploads_give_the_same_rows() {
        let csv = "upn,writing,science\nH801200001001,exs,EXS\n";
        let rows = parse_file("ta.csv", csv.as_bytes()).unwrap();
        assert_eq!(
            rows,
            vec![(
                2,
                String::new(),
                "H801200001001".into(),
                "EXS".into(),
                "EXS".into()
            )]
        );
        let ctf = r#"<?xml version="1.0"?><CTfile><CTFpupilData><Pupil><UPN>H801200001001</UPN><StageAssessments><KeyStage><Stage>KS2</Stage>
            <StageAssessment><Locale>ENG</Locale><Subject>WRI</Subject><Method>TA</Method><Component>TA</Component><Result>EXS</Result></StageAssessment>
            <StageAssessment><Subject>SCI</Subject><Method>TA</Method><Component>TA</Component><Result>EXS</Result></StageAssessment>
            <StageAssessment><Subject>REA</Subject><Method>TT</Method><Component>SCALED</Component><Result>104</Result></StageAssessment>
            </KeyStage></StageAssessments></Pupil></CTFpupilData></CTfile>"#;
        let rows2 = parse_file("school.xml", ctf.as_bytes()).unwrap();
        let key =
            |r: &(usize, String, String, String, String)| (r.2.clone(), r.3.clone(), r.4.clone());
        assert_eq!(key(&rows2[0]), key(&rows[0]));
        assert!(
            parse_file("x.csv", b"upn,writing\nA,B\n").unwrap_err()[0]
                .contains("no `science` column")
        );
        assert!(parse_file("x.xml", b"<CTfile><Broken").is_err());
    }
}
