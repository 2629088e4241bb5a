//! Reviews of marking (ARA 8.4): a school's headteacher or a delegate with the school-tasks
//! permission applies for a marking or clerical review of chosen pupils' papers, giving a
//! reason per paper, inside the window (results day 7:30 until 23:59 on the configured
//! deadline); the operator records each outcome (new item marks, or unchanged), which is
//! free or chargeable by the published criteria; the school is emailed and sees the outcome
//! here; changed marks leave as a corrections file for the pipeline's late-results path
//! (`nca-portal reviews corrections`, then `nca-pipeline correct` and `publish`).
//!
//! Forms follow the GOV.UK pattern: choose, give reasons, check your answers, submit (a
//! repeated submit finds the application already made), confirmation. After the deadline
//! every form is read-only and says why; the server refuses late submissions itself.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use nca_pipeline::domain::{Paper, Subject};
use nca_pipeline::store::layout;

use crate::AppState;
use crate::auth::roles::{Action, OrgKind, Role};
use crate::auth::session::{Signed, SignedIn, check_csrf};
use crate::db;
use crate::error::AppError;
use crate::portal::{FormData, Page, Row, Section, render};
use crate::results::{Release, opened};
use crate::results_pages::{PupilRow, TESTS, parse_school_csv};
use crate::scripts::ItemMarks;

/// Which review the school asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Marking,
    Clerical,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "marking" => Some(Kind::Marking),
            "clerical" => Some(Kind::Clerical),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Marking => "marking",
            Kind::Clerical => "clerical",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Marking => "Marking review: the mark scheme was not applied correctly",
            Kind::Clerical => "Clerical review: marks were added up or recorded wrongly",
        }
    }
}

// ---------- the rules ----------

/// When applications are taken: from the release's opening time (7:30 on results day) to
/// 23:59:59 on the deadline date in the service's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub opens: i64,
    pub closes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    NotYet,
    Open,
    Closed,
}

impl Window {
    pub fn state(&self, now: i64) -> WindowState {
        if now < self.opens {
            WindowState::NotYet
        } else if now <= self.closes {
            WindowState::Open
        } else {
            WindowState::Closed
        }
    }
}

/// The window for a release under these settings.
pub fn window(
    settings: &crate::config::ReviewsSettings,
    tz: &jiff::tz::TimeZone,
    opens_at: i64,
) -> Window {
    let opens_day = jiff::Timestamp::from_second(opens_at)
        .map(|t| t.to_zoned(tz.clone()).date())
        .unwrap_or_default();
    let date = settings.deadline_date().unwrap_or_else(|| {
        opens_day
            .checked_add(jiff::Span::new().days(settings.deadline_days))
            .unwrap_or(opens_day)
    });
    let closes = date
        .at(23, 59, 59, 0)
        .to_zoned(tz.clone())
        .map(|z| z.timestamp().as_second())
        .unwrap_or(opens_at);
    Window {
        opens: opens_at,
        closes,
    }
}

/// A subject's result before or after a review: the raw score (when rule 6 gave one) and the
/// scaled score or code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub raw: Option<u16>,
    pub result: String,
}

/// Whether a result meets the expected standard: scaled 100 or more yes; below 100, `N` and
/// the not-achieved codes no; `L`, `M`, `F`, `P` (and none) are not counted either way.
pub fn meets_expected(result: &str) -> Option<bool> {
    match result.parse::<u16>() {
        Ok(v) => Some(v >= 100),
        Err(_) => match result {
            "N" | "A" | "B" | "H" | "J" | "Q" | "U" => Some(false),
            _ => None,
        },
    }
}

/// The published criteria: a review is free when its outcome crosses the expected standard,
/// changes the raw score by 2 marks or more, or corrects a code; otherwise chargeable.
pub fn free_of_charge(before: &Outcome, after: &Outcome, code_corrected: bool) -> bool {
    let crosses = match (
        meets_expected(&before.result),
        meets_expected(&after.result),
    ) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    };
    let raw_change = match (before.raw, after.raw) {
        (Some(a), Some(b)) => a.abs_diff(b) >= 2,
        _ => false,
    };
    code_corrected || crosses || raw_change
}

/// The scaled score (or `N`) a raw score converts to in the release's tables.
pub fn convert(release: &Release, subject: Subject, raw: u16) -> Option<String> {
    let table = release.cycle.as_ref()?.conversion.get(subject.as_str())?;
    let c = table.get(raw as usize)?;
    Some(c.map_or_else(|| "N".to_string(), |v| v.to_string()))
}

// ---------- storage ----------

#[derive(Debug, Clone)]
pub struct Application {
    pub id: String,
    pub laestab: String,
    pub kind: String,
    pub release_id: String,
    pub submitted_by: String,
    pub submitted_at: i64,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub upn: String,
    pub paper: String,
    pub reason: String,
    pub raw_before: Option<i64>,
    pub result_before: String,
    pub outcome: Option<String>,
    pub new_marks: Option<String>,
    pub raw_after: Option<i64>,
    pub result_after: Option<String>,
    pub free: Option<bool>,
    pub decided_at: Option<i64>,
}

fn application(r: &sqlx::any::AnyRow) -> Application {
    use sqlx::Row as _;
    Application {
        id: r.get("id"),
        laestab: r.get("laestab"),
        kind: r.get("kind"),
        release_id: r.get("release_id"),
        submitted_by: r.get("submitted_by"),
        submitted_at: r.get("submitted_at"),
        status: r.get("status"),
    }
}

fn item(r: &sqlx::any::AnyRow) -> Item {
    use sqlx::Row as _;
    Item {
        upn: r.get("upn"),
        paper: r.get("paper"),
        reason: r.get("reason"),
        raw_before: r.get("raw_before"),
        result_before: r.get("result_before"),
        outcome: r.get("outcome"),
        new_marks: r.get("new_marks"),
        raw_after: r.get("raw_after"),
        result_after: r.get("result_after"),
        free: r.get::<Option<i64>, _>("free").map(|v| v != 0),
        decided_at: r.get("decided_at"),
    }
}

const APP_COLUMNS: &str = "id, laestab, kind, release_id, submitted_by, submitted_at, status";
const ITEM_COLUMNS: &str = "upn, paper, reason, raw_before, result_before, outcome, new_marks, \
                            raw_after, result_after, free, decided_at";

async fn applications(db: &db::Db, laestab: Option<&str>) -> sqlx::Result<Vec<Application>> {
    let rows = match laestab {
        Some(l) => {
            sqlx::query(&format!(
                "SELECT {APP_COLUMNS} FROM review_applications WHERE laestab = $1 \
                 ORDER BY submitted_at DESC, id"
            ))
            .bind(l)
            .fetch_all(db)
            .await?
        }
        None => sqlx::query(&format!(
            "SELECT {APP_COLUMNS} FROM review_applications ORDER BY status DESC, submitted_at, id"
        ))
        .fetch_all(db)
        .await?,
    };
    Ok(rows.iter().map(application).collect())
}

async fn find(db: &db::Db, id: &str) -> sqlx::Result<Option<(Application, Vec<Item>)>> {
    let Some(app) = sqlx::query(&format!(
        "SELECT {APP_COLUMNS} FROM review_applications WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(application) else {
        return Ok(None);
    };
    let items = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM review_items WHERE application_id = $1 ORDER BY upn, paper"
    ))
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some((app, items.iter().map(item).collect())))
}

/// Every changed mark of every decided review: (upn, paper, item, new mark).
pub async fn corrections(db: &db::Db) -> anyhow::Result<Vec<(String, String, String, u8)>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT upn, paper, new_marks FROM review_items WHERE outcome = 'changed' \
         ORDER BY decided_at, upn, paper",
    )
    .fetch_all(db)
    .await?;
    let mut latest: BTreeMap<(String, String, String), u8> = BTreeMap::new();
    for r in rows {
        let (upn, paper): (String, String) = (r.get("upn"), r.get("paper"));
        let marks: BTreeMap<String, u8> =
            serde_json::from_str(&r.get::<Option<String>, _>("new_marks").unwrap_or_default())
                .unwrap_or_default();
        for (item, m) in marks {
            latest.insert((upn.clone(), paper.clone(), item), m);
        }
    }
    Ok(latest
        .into_iter()
        .map(|((u, p, i), m)| (u, p, i, m))
        .collect())
}

// ---------- shared page parts ----------

#[derive(Template, Default)]
#[template(path = "review.html")]
struct ReviewPage {
    title: String,
    errors: Vec<(String, String)>,
    notice: Option<String>,
    user: Option<SignedIn>,
    csrf: String,
    idle_seconds: i64,
    warning_seconds: i64,
    refresh: Option<i64>,
    back: Option<String>,
    intro: Vec<String>,
    summary: Vec<(String, String, String)>,
    action: String,
    hidden: Vec<(String, String)>,
    kinds: Vec<(String, String, bool)>,
    kind_error: Option<String>,
    items: Vec<(String, String, bool)>,
    items_error: Option<String>,
    /// (field name, label, value, error)
    reasons: Vec<(String, String, String, Option<String>)>,
    /// (field name, label, value, max, error)
    mark_inputs: Vec<(String, String, String, String, Option<String>)>,
    code_choice: bool,
    submit: String,
    links: Vec<(String, String)>,
    calculator: bool,
}

impl ReviewPage {
    fn new(state: &AppState, s: &Signed, title: &str) -> ReviewPage {
        ReviewPage {
            title: title.into(),
            user: Some(s.user.clone()),
            csrf: s.csrf.clone(),
            idle_seconds: state.settings.auth.idle_minutes * 60,
            warning_seconds: state.settings.auth.warning_minutes * 60,
            ..Default::default()
        }
    }
    fn respond(self) -> Response {
        let status = if self.errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        render(status, &self)
    }
}

fn when(state: &AppState, t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| {
            t.to_zoned(state.tz.clone())
                .strftime("%-H:%M on %-d %B %Y")
                .to_string()
        })
        .unwrap_or_default()
}

fn paper_label(paper: &str) -> String {
    Paper::parse(paper).map_or(paper.to_string(), |p| {
        let subject = TESTS
            .iter()
            .find(|(s, _)| *s == p.subject().as_str())
            .map_or("", |(_, n)| n);
        format!("{subject}, paper {p}")
    })
}

/// The school user, the release and its window, or the page to show instead.
fn school_user(state: &AppState, s: &Signed) -> Result<std::sync::Arc<Release>, AppError> {
    if s.user.kind != OrgKind::Ks2School {
        return Err(AppError::Forbidden);
    }
    s.require(Action::SchoolTasks)?;
    // Reviews exist once results do; before that the release is embargoed like results.
    opened(state, &s.user).map_err(|_| AppError::NotFound)
}

fn window_of(state: &AppState, release: &Release) -> Window {
    window(
        &state.settings.reviews,
        &state.tz,
        release.manifest.opens_at.unix_timestamp(),
    )
}

/// Why the form cannot be used now, if it cannot.
fn closed_message(state: &AppState, w: &Window) -> Option<String> {
    match w.state(state.clock.now()) {
        WindowState::Open => None,
        WindowState::NotYet => Some(format!(
            "Applications for reviews of marking open at {}.",
            when(state, w.opens)
        )),
        WindowState::Closed => Some(format!(
            "Applications for reviews of marking closed at {}. The deadline in the assessment and reporting arrangements has passed, so no new applications can be made; you can still see your applications and their outcomes.",
            when(state, w.closes)
        )),
    }
}

/// Every pupil and paper that was marked at this school: ("UPN:paper", label).
struct SchoolData {
    rows: Vec<PupilRow>,
    marks: ItemMarks,
}

async fn school_data(
    state: &AppState,
    release: &Release,
    laestab: &str,
) -> anyhow::Result<SchoolData> {
    let rows = match state
        .results
        .object(release, &layout::school_csv(laestab))
        .await?
    {
        Some(b) => parse_school_csv(&b)?,
        None => Vec::new(),
    };
    let marks = match state
        .results
        .object(release, &layout::school_item_marks(laestab))
        .await?
    {
        Some(b) => ItemMarks::parse(&b)?,
        None => ItemMarks::default(),
    };
    Ok(SchoolData { rows, marks })
}

impl SchoolData {
    fn choices(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in &self.rows {
            for paper in Paper::ALL {
                let marked = self
                    .marks
                    .for_paper(&r.upn, *paper)
                    .iter()
                    .any(|(_, m, _)| m.is_some());
                if marked {
                    out.push((
                        format!("{}:{paper}", r.upn),
                        format!(
                            "{} {} ({}): {}",
                            r.forename,
                            r.surname,
                            r.upn,
                            paper_label(paper.as_str())
                        ),
                    ));
                }
            }
        }
        out
    }

    fn row(&self, upn: &str) -> Option<&PupilRow> {
        self.rows.iter().find(|r| r.upn == upn)
    }

    /// The subject's outcome for a pupil now, from the results file.
    fn outcome(&self, upn: &str, subject: Subject) -> Outcome {
        let i = TESTS
            .iter()
            .position(|(s, _)| *s == subject.as_str())
            .unwrap_or(0);
        match self.row(upn) {
            Some(r) => Outcome {
                raw: r.tests[i].raw.parse().ok(),
                result: r.tests[i].result.clone(),
            },
            None => Outcome {
                raw: None,
                result: String::new(),
            },
        }
    }
}

fn parse_item(v: &str) -> Option<(String, Paper)> {
    let (upn, paper) = v.split_once(':')?;
    Some((upn.to_string(), Paper::parse(paper).ok()?))
}

// ---------- school pages ----------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/reviews", get(list))
        .route("/reviews/new", get(new_page).post(choose))
        .route("/reviews/reasons", post(reasons))
        .route("/reviews/submit", post(submit))
        .route("/reviews/calculator", get(calculator))
        .route("/reviews/{id}", get(show))
        .route("/operator/reviews", get(operator_list))
        .route("/operator/reviews/{id}", get(operator_show))
        .route(
            "/operator/reviews/{id}/{upn}/{paper}",
            get(operator_form).post(operator_decide),
        )
}

async fn list(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    if s.user.kind == OrgKind::Operator {
        return Ok(Redirect::to("/operator/reviews").into_response());
    }
    let release = school_user(&state, &s)?;
    let w = window_of(&state, &release);
    let apps = applications(&state.db, Some(&s.user.org)).await?;
    let mut p = Page::new(&state, &s, "Reviews of marking");
    p.paragraphs = vec![format!(
        "You can apply for a review of marking if you believe a part of the mark scheme was not applied correctly, or for a clerical review if marks were added up or recorded wrongly. Applications close at {}.",
        when(&state, w.closes)
    )];
    match closed_message(&state, &w) {
        Some(m) => p.notice = Some(m),
        None => p.links = vec![("/reviews/new".into(), "Apply for a review".into())],
    }
    p.links.push((
        "#calculator".into(),
        "Raw-to-scaled score calculator".into(),
    ));
    p.links.push((
        format!("/scripts/{}", s.user.org),
        "Marked test scripts".into(),
    ));
    p.sections.push(Section {
        heading: "Your applications".into(),
        paragraphs: if apps.is_empty() {
            vec!["You have not applied for any reviews.".into()]
        } else {
            vec![]
        },
        head: if apps.is_empty() {
            vec![]
        } else {
            ["Submitted", "Kind", "By", "Status", "Details"]
                .map(String::from)
                .to_vec()
        },
        rows: apps
            .iter()
            .map(|a| Row {
                cells: vec![
                    when(&state, a.submitted_at),
                    a.kind.clone(),
                    a.submitted_by.clone(),
                    status_label(&a.status).into(),
                ],
                links: vec![(
                    format!("/reviews/{}", a.id),
                    format!(
                        "View application submitted {}",
                        when(&state, a.submitted_at)
                    ),
                )],
            })
            .collect(),
        ..Default::default()
    });
    p.sections.push(calculator_section());
    Ok(render(StatusCode::OK, &p))
}

fn status_label(s: &str) -> &'static str {
    match s {
        "decided" => "Outcome available",
        _ => "Submitted: awaiting outcome",
    }
}

fn calculator_section() -> Section {
    Section {
        heading: "Raw-to-scaled score calculator".into(),
        paragraphs: vec![
            "Work out what a change of raw marks would do to a pupil's scaled score and outcome."
                .into(),
        ],
        links: vec![("/reviews/calculator".into(), "Open the calculator".into())],
        ..Default::default()
    }
}

/// Step 1: the kind of review and the papers.
fn choose_page(
    state: &AppState,
    s: &Signed,
    data: &SchoolData,
    kind: Option<Kind>,
    chosen: &[String],
) -> ReviewPage {
    let mut p = ReviewPage::new(state, s, "Apply for a review of marking");
    p.back = Some("/reviews".into());
    p.intro = vec!["Choose the kind of review and each pupil's paper to be reviewed. You will give your reasons for each paper next.".into()];
    p.action = "/reviews/new".into();
    p.kinds = [Kind::Marking, Kind::Clerical]
        .iter()
        .map(|k| (k.as_str().into(), k.label().into(), kind == Some(*k)))
        .collect();
    p.items = data
        .choices()
        .into_iter()
        .map(|(v, l)| {
            let on = chosen.contains(&v);
            (v, l, on)
        })
        .collect();
    p.submit = "Continue".into();
    p.calculator = true;
    p
}

async fn new_page(
    State(state): State<AppState>,
    s: Signed,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Response, AppError> {
    // `?item=UPN:paper`, repeated: the papers chosen already (from the script viewer).
    let chosen: Vec<String> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "item")
        .map(|(_, v)| v.into_owned())
        .collect();
    let release = school_user(&state, &s)?;
    let w = window_of(&state, &release);
    if let Some(m) = closed_message(&state, &w) {
        let mut p = Page::new(&state, &s, "Apply for a review of marking");
        p.paragraphs = vec![m];
        p.links = vec![("/reviews".into(), "Your applications".into())];
        return Ok(render(StatusCode::OK, &p));
    }
    let data = school_data(&state, &release, &s.user.org).await?;
    Ok(choose_page(&state, &s, &data, None, &chosen).respond())
}

/// Read and check the kind and items of a posted form.
fn read_choice(
    f: &FormData,
    data: &SchoolData,
) -> (Option<Kind>, Vec<String>, Vec<(String, String)>) {
    let kind = Kind::parse(&f.get("kind"));
    let valid: Vec<String> = data.choices().into_iter().map(|(v, _)| v).collect();
    let mut items: Vec<String> = f.all("item");
    items.dedup();
    let mut errors = Vec::new();
    if kind.is_none() {
        errors.push(("kind".to_string(), "Select the kind of review".to_string()));
    }
    if items.is_empty() {
        errors.push(("items".into(), "Select at least one pupil's paper".into()));
    } else if items.iter().any(|i| !valid.contains(i)) {
        errors.push((
            "items".into(),
            "Select only papers listed: one of those chosen is not a marked paper at your school"
                .into(),
        ));
    }
    (kind, items, errors)
}

/// Refuse a posted form outside the window, with the reason on the page.
fn refuse_closed(state: &AppState, s: &Signed, release: &Release) -> Option<Response> {
    let w = window_of(state, release);
    closed_message(state, &w).map(|m| {
        let mut p = Page::new(state, s, "Applications are closed");
        p.paragraphs = vec![m];
        p.links = vec![("/reviews".into(), "Your applications".into())];
        render(StatusCode::FORBIDDEN, &p)
    })
}

fn reasons_page(
    state: &AppState,
    s: &Signed,
    data: &SchoolData,
    kind: Kind,
    items: &[String],
    f: Option<&FormData>,
) -> ReviewPage {
    let mut p = ReviewPage::new(state, s, "Your reasons for each paper");
    p.back = Some(format!(
        "/reviews/new?{}",
        items
            .iter()
            .map(|i| format!("item={i}"))
            .collect::<Vec<_>>()
            .join("&")
    ));
    p.intro = vec![format!("{}.", kind.label())];
    p.action = "/reviews/reasons".into();
    p.hidden = vec![("kind".into(), kind.as_str().into())];
    let labels: BTreeMap<String, String> = data.choices().into_iter().collect();
    for (n, i) in items.iter().enumerate() {
        p.hidden.push(("item".into(), i.clone()));
        let name = format!("reason-{n}");
        let value = f.map(|f| f.get(&name)).unwrap_or_default();
        p.reasons.push((
            name,
            format!(
                "Reason for {}",
                labels.get(i).cloned().unwrap_or_else(|| i.clone())
            ),
            value,
            None,
        ));
    }
    p.submit = "Continue".into();
    p.calculator = true;
    p
}

async fn choose(
    State(state): State<AppState>,
    s: Signed,
    body: Bytes,
) -> Result<Response, AppError> {
    let release = school_user(&state, &s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    if let Some(r) = refuse_closed(&state, &s, &release) {
        return Ok(r);
    }
    let data = school_data(&state, &release, &s.user.org).await?;
    let (kind, items, errors) = read_choice(&f, &data);
    match kind {
        Some(kind) if errors.is_empty() => {
            Ok(reasons_page(&state, &s, &data, kind, &items, None).respond())
        }
        _ => {
            let mut p = choose_page(&state, &s, &data, kind, &items);
            for (field, e) in errors {
                match field.as_str() {
                    "kind" => p.kind_error = Some(e.clone()),
                    _ => p.items_error = Some(e.clone()),
                }
                p.errors.push((field, e));
            }
            Ok(p.respond())
        }
    }
}

/// Reasons as given, checked: one per item, 1 to 2,000 characters.
fn read_reasons(f: &FormData, items: &[String]) -> (Vec<String>, Vec<(usize, String)>) {
    let mut reasons = Vec::new();
    let mut errors = Vec::new();
    for n in 0..items.len() {
        let r = f.get(&format!("reason-{n}")).trim().to_string();
        if r.is_empty() {
            errors.push((n, "Enter your reason for reviewing this paper".to_string()));
        } else if r.chars().count() > 2000 {
            errors.push((n, "Reasons must be 2,000 characters or fewer".to_string()));
        }
        reasons.push(r);
    }
    (reasons, errors)
}

async fn reasons(
    State(state): State<AppState>,
    s: Signed,
    body: Bytes,
) -> Result<Response, AppError> {
    let release = school_user(&state, &s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    if let Some(r) = refuse_closed(&state, &s, &release) {
        return Ok(r);
    }
    let data = school_data(&state, &release, &s.user.org).await?;
    let (kind, items, choice_errors) = read_choice(&f, &data);
    let Some(kind) = kind.filter(|_| choice_errors.is_empty()) else {
        return Ok(choose_page(&state, &s, &data, kind, &items).respond());
    };
    let (reasons, errors) = read_reasons(&f, &items);
    if !errors.is_empty() {
        let mut p = reasons_page(&state, &s, &data, kind, &items, Some(&f));
        for (n, e) in errors {
            p.reasons[n].3 = Some(e.clone());
            p.errors.push((format!("reason-{n}"), e));
        }
        return Ok(p.respond());
    }
    // Check your answers.
    let labels: BTreeMap<String, String> = data.choices().into_iter().collect();
    let mut p = ReviewPage::new(&state, &s, "Check your answers before applying");
    p.summary.push((
        "Kind of review".into(),
        kind.label().into(),
        "/reviews/new".into(),
    ));
    p.hidden = vec![
        ("kind".into(), kind.as_str().into()),
        // One token per check-your-answers page: submitting it twice finds one application.
        ("token".into(), db::new_id()),
    ];
    for (n, (i, r)) in items.iter().zip(&reasons).enumerate() {
        p.summary.push((
            labels.get(i).cloned().unwrap_or_else(|| i.clone()),
            r.clone(),
            String::new(),
        ));
        p.hidden.push(("item".into(), i.clone()));
        p.hidden.push((format!("reason-{n}"), r.clone()));
    }
    p.intro = vec!["By submitting this application you confirm the information is correct. A review may be chargeable unless it changes the outcome as the criteria say.".into()];
    p.action = "/reviews/submit".into();
    p.submit = "Accept and submit".into();
    p.links = vec![("/reviews".into(), "Cancel".into())];
    Ok(p.respond())
}

async fn submit(
    State(state): State<AppState>,
    s: Signed,
    body: Bytes,
) -> Result<Response, AppError> {
    use sqlx::Row as _;
    let release = school_user(&state, &s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let token = f.get("token");
    // A repeated submit (double click, back and resubmit) finds the application it made.
    if !token.is_empty()
        && let Some(r) = sqlx::query(
            "SELECT id FROM review_applications WHERE submit_token = $1 AND laestab = $2",
        )
        .bind(&token)
        .bind(&s.user.org)
        .fetch_optional(&state.db)
        .await?
    {
        let id: String = r.get("id");
        return Ok(Redirect::to(&format!("/reviews/{id}?submitted=1")).into_response());
    }
    if let Some(r) = refuse_closed(&state, &s, &release) {
        return Ok(r);
    }
    let data = school_data(&state, &release, &s.user.org).await?;
    let (kind, items, choice_errors) = read_choice(&f, &data);
    let (reasons, reason_errors) = read_reasons(&f, &items);
    let Some(kind) = kind.filter(|_| choice_errors.is_empty() && reason_errors.is_empty()) else {
        return Ok(choose_page(&state, &s, &data, kind, &items).respond());
    };
    if token.is_empty() {
        return Err(AppError::Csrf);
    }
    let id = db::new_id();
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO review_applications \
         (id, laestab, kind, release_id, submitted_by, submitted_at, submit_token, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'submitted')",
    )
    .bind(&id)
    .bind(&s.user.org)
    .bind(kind.as_str())
    .bind(&release.id)
    .bind(&s.user.email)
    .bind(now)
    .bind(&token)
    .execute(&mut *tx)
    .await?;
    for (i, reason) in items.iter().zip(&reasons) {
        let Some((upn, paper)) = parse_item(i) else {
            continue;
        };
        let before = data.outcome(&upn, paper.subject());
        sqlx::query(
            "INSERT INTO review_items \
             (application_id, upn, paper, reason, raw_before, result_before) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&upn)
        .bind(paper.as_str())
        .bind(reason)
        .bind(before.raw.map(i64::from))
        .bind(&before.result)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&s.user.email),
            org_id: Some(&s.user.org),
            action: "review-applied",
            target: Some(&id),
            detail: format!("{} review of {} papers", kind.as_str(), items.len()),
            ip: None,
        },
        now,
    )
    .await?;
    Ok(Redirect::to(&format!("/reviews/{id}?submitted=1")).into_response())
}

#[derive(Debug, serde::Deserialize, Default)]
struct ShowQuery {
    submitted: Option<String>,
}

fn outcome_text(i: &Item) -> String {
    match i.outcome.as_deref() {
        None => "Awaiting outcome".into(),
        Some("unchanged") => format!(
            "Marks unchanged: result {}. {}",
            i.result_before,
            charge_text(i.free)
        ),
        Some(_) => format!(
            "Marks changed: raw score {} to {}, result {} to {}. {}",
            i.raw_before.map_or("–".into(), |v| v.to_string()),
            i.raw_after.map_or("–".into(), |v| v.to_string()),
            i.result_before,
            i.result_after.clone().unwrap_or_default(),
            charge_text(i.free)
        ),
    }
}

fn charge_text(free: Option<bool>) -> &'static str {
    match free {
        Some(true) => "Free of charge.",
        Some(false) => "Chargeable.",
        None => "",
    }
}

async fn show(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, AppError> {
    let operator = s.user.kind == OrgKind::Operator && s.user.may(Action::Operate);
    if !operator {
        school_user(&state, &s)?;
    }
    let Some((app, items)) = find(&state.db, &id).await? else {
        return Err(AppError::NotFound);
    };
    if !operator && app.laestab != s.user.org {
        // The same answer as an unknown id: nothing to probe.
        return Err(AppError::NotFound);
    }
    let mut p = Page::new(&state, &s, "Review of marking application");
    if q.submitted.is_some() {
        p.notice = Some(
            "Application submitted. You will be emailed when the outcome is available.".into(),
        );
    }
    p.paragraphs = vec![
        format!(
            "{} review submitted by {} at {}.",
            Kind::parse(&app.kind).map_or("", |k| match k {
                Kind::Marking => "Marking",
                Kind::Clerical => "Clerical",
            }),
            app.submitted_by,
            when(&state, app.submitted_at)
        ),
        format!("Status: {}.", status_label(&app.status)),
    ];
    p.sections.push(Section {
        heading: "Papers".into(),
        head: ["Pupil", "Paper", "Reason", "Outcome"]
            .map(String::from)
            .to_vec(),
        rows: items
            .iter()
            .map(|i| Row {
                cells: vec![
                    i.upn.clone(),
                    paper_label(&i.paper),
                    i.reason.clone(),
                    outcome_text(i),
                ],
                links: vec![],
            })
            .collect(),
        ..Default::default()
    });
    p.links = vec![("/reviews".into(), "All applications".into())];
    Ok(render(StatusCode::OK, &p))
}

#[derive(Debug, serde::Deserialize, Default)]
struct CalcQuery {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    raw: String,
    #[serde(default)]
    change: String,
}

/// The raw-to-scaled calculator: a raw score and a change, and what they give.
async fn calculator(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<CalcQuery>,
) -> Result<Response, AppError> {
    let release = if s.user.kind == OrgKind::Operator {
        state.results.release().ok_or(AppError::NotFound)?
    } else {
        school_user(&state, &s)?
    };
    let mut p = ReviewPage::new(&state, &s, "Raw-to-scaled score calculator");
    p.back = Some("/reviews".into());
    p.calculator = true;
    if q.subject.is_empty() && q.raw.is_empty() {
        return Ok(p.respond());
    }
    let subject = Subject::parse(&q.subject).ok();
    let raw = q.raw.trim().parse::<i32>().ok();
    let change = if q.change.trim().is_empty() {
        Some(0)
    } else {
        q.change.trim().trim_start_matches('+').parse::<i32>().ok()
    };
    match (subject, raw, change) {
        (None, _, _) => p
            .errors
            .push(("calc-subject".into(), "Choose a subject".into())),
        (Some(subject), Some(raw), Some(change))
            if (0..=i32::from(subject.max_raw())).contains(&raw) =>
        {
            let after = (raw + change).clamp(0, i32::from(subject.max_raw())) as u16;
            let before_s = convert(&release, subject, raw as u16).unwrap_or_default();
            let after_s = convert(&release, subject, after).unwrap_or_default();
            let outcome = |r: &str| match meets_expected(r) {
                Some(true) => "meets the expected standard",
                Some(false) => "does not meet the expected standard",
                None => "not counted",
            };
            p.summary = vec![
                ("Subject".into(), subject.to_string(), String::new()),
                (
                    "Now".into(),
                    format!("raw {raw}: scaled {before_s}, {}", outcome(&before_s)),
                    String::new(),
                ),
                (
                    "After the change".into(),
                    format!("raw {after}: scaled {after_s}, {}", outcome(&after_s)),
                    String::new(),
                ),
                (
                    "Would be free of charge".into(),
                    if free_of_charge(
                        &Outcome {
                            raw: Some(raw as u16),
                            result: before_s.clone(),
                        },
                        &Outcome {
                            raw: Some(after),
                            result: after_s.clone(),
                        },
                        false,
                    ) {
                        "Yes".into()
                    } else {
                        "No: the change is under 2 marks and does not cross the expected standard"
                            .into()
                    },
                    String::new(),
                ),
            ];
        }
        (Some(subject), Some(_), Some(_)) => p.errors.push((
            "calc-raw".into(),
            format!("Raw score must be between 0 and {}", subject.max_raw()),
        )),
        (_, None, _) => p.errors.push((
            "calc-raw".into(),
            "Enter the raw score as a whole number".into(),
        )),
        (_, _, None) => p.errors.push((
            "calc-change".into(),
            "Enter the change as a whole number, such as 2 or -1".into(),
        )),
    }
    Ok(p.respond())
}

// ---------- operator ----------

fn operator(s: &Signed) -> Result<(), AppError> {
    if s.user.kind != OrgKind::Operator {
        return Err(AppError::Forbidden);
    }
    s.require(Action::Operate)
}

async fn operator_list(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    operator(&s)?;
    let apps = applications(&state.db, None).await?;
    let mut p = Page::new(&state, &s, "Reviews of marking: all applications");
    p.sections.push(Section {
        heading: format!("{} applications", apps.len()),
        head: ["School", "Submitted", "Kind", "Status", "Decide"]
            .map(String::from)
            .to_vec(),
        rows: apps
            .iter()
            .map(|a| Row {
                cells: vec![
                    a.laestab.clone(),
                    when(&state, a.submitted_at),
                    a.kind.clone(),
                    status_label(&a.status).into(),
                ],
                links: vec![(
                    format!("/operator/reviews/{}", a.id),
                    format!("Record outcomes for {}", a.laestab),
                )],
            })
            .collect(),
        ..Default::default()
    });
    Ok(render(StatusCode::OK, &p))
}

/// One item's form: the paper's questions with the marks as they stand.
fn decide_form(
    state: &AppState,
    s: &Signed,
    app: &Application,
    item: &Item,
    release: &Release,
    data: &SchoolData,
) -> ReviewPage {
    let paper = Paper::parse(&item.paper).unwrap_or(Paper::Reading);
    let mut p = ReviewPage::new(
        state,
        s,
        &format!("Outcome for {} {}", item.upn, paper_label(&item.paper)),
    );
    p.back = Some(format!("/operator/reviews/{}", app.id));
    p.intro = vec![
        format!("School's reason: {}", item.reason),
        "Change any question's mark, or leave them all as they are for 'marks unchanged'.".into(),
    ];
    p.action = format!("/operator/reviews/{}/{}/{}", app.id, item.upn, item.paper);
    let maxes: BTreeMap<(String, String), u8> = release
        .cycle
        .as_ref()
        .map(|c| {
            c.items
                .iter()
                .map(|i| ((i.paper.clone(), i.item.clone()), i.max_mark))
                .collect()
        })
        .unwrap_or_default();
    for (n, (label, mark, _)) in data.marks.for_paper(&item.upn, paper).iter().enumerate() {
        p.mark_inputs.push((
            format!("q-{n}"),
            format!("Question {label}"),
            mark.map_or(String::new(), |m| m.to_string()),
            maxes
                .get(&(item.paper.clone(), label.clone()))
                .map_or("–".into(), |m| m.to_string()),
            None,
        ));
    }
    p.code_choice = app.kind == "clerical";
    p.submit = "Record outcome".into();
    p
}

async fn operator_show(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    operator(&s)?;
    let Some((app, items)) = find(&state.db, &id).await? else {
        return Err(AppError::NotFound);
    };
    let mut p = Page::new(&state, &s, &format!("Application from {}", app.laestab));
    p.paragraphs = vec![format!(
        "{} review by {} at {}.",
        app.kind,
        app.submitted_by,
        when(&state, app.submitted_at)
    )];
    p.sections.push(Section {
        heading: "Papers".into(),
        head: ["Pupil", "Paper", "Reason", "Outcome", "Script"]
            .map(String::from)
            .to_vec(),
        rows: items
            .iter()
            .map(|i| Row {
                cells: vec![
                    i.upn.clone(),
                    paper_label(&i.paper),
                    i.reason.clone(),
                    outcome_text(i),
                ],
                links: vec![
                    (
                        format!("/scripts/{}/{}/{}", app.laestab, i.upn, i.paper),
                        format!("Script of {} {}", i.upn, i.paper),
                    ),
                    (
                        format!("/operator/reviews/{}/{}/{}", app.id, i.upn, i.paper),
                        format!("Record outcome for {} {}", i.upn, i.paper),
                    ),
                ],
            })
            .collect(),
        ..Default::default()
    });
    p.links = vec![("/operator/reviews".into(), "All applications".into())];
    Ok(render(StatusCode::OK, &p))
}

async fn operator_form(
    State(state): State<AppState>,
    s: Signed,
    Path((id, upn, paper)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    operator(&s)?;
    let Some((app, items)) = find(&state.db, &id).await? else {
        return Err(AppError::NotFound);
    };
    let Some(item) = items.iter().find(|i| i.upn == upn && i.paper == paper) else {
        return Err(AppError::NotFound);
    };
    let release = state.results.release().ok_or(AppError::NotFound)?;
    let data = school_data(&state, &release, &app.laestab).await?;
    Ok(decide_form(&state, &s, &app, item, &release, &data).respond())
}

async fn operator_decide(
    State(state): State<AppState>,
    s: Signed,
    Path((id, upn, paper)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    operator(&s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let Some((app, items)) = find(&state.db, &id).await? else {
        return Err(AppError::NotFound);
    };
    let Some(item) = items.iter().find(|i| i.upn == upn && i.paper == paper) else {
        return Err(AppError::NotFound);
    };
    let release = state.results.release().ok_or(AppError::NotFound)?;
    let data = school_data(&state, &release, &app.laestab).await?;
    let mut form = decide_form(&state, &s, &app, item, &release, &data);
    let Ok(paper_v) = Paper::parse(&paper) else {
        return Err(AppError::NotFound);
    };
    let current = data.marks.for_paper(&upn, paper_v);
    let mut changed: BTreeMap<String, u8> = BTreeMap::new();
    let mut delta: i32 = 0;
    for (n, (label, mark, _)) in current.iter().enumerate() {
        let name = format!("q-{n}");
        let given = f.get(&name).trim().to_string();
        let max: u8 = form.mark_inputs[n].3.parse().unwrap_or(u8::MAX);
        match given.parse::<u8>() {
            Ok(m) if m <= max => {
                if Some(m) != *mark {
                    changed.insert(label.clone(), m);
                    delta += i32::from(m) - i32::from(mark.unwrap_or(0));
                }
            }
            _ if given.is_empty() && mark.is_none() => {}
            _ => {
                let e = format!("Question {label}: enter a mark from 0 to {max}");
                form.mark_inputs[n].2 = given.clone();
                form.mark_inputs[n].4 = Some(e.clone());
                form.errors.push((name, e));
            }
        }
    }
    if !form.errors.is_empty() {
        return Ok(form.respond());
    }
    let code_corrected = f.get("code_corrected") == "yes";
    let subject = paper_v.subject();
    let before = Outcome {
        raw: item.raw_before.map(|v| v as u16),
        result: item.result_before.clone(),
    };
    let after = match before.raw {
        Some(raw) if !changed.is_empty() => {
            let raw = (i32::from(raw) + delta).clamp(0, i32::from(subject.max_raw())) as u16;
            Outcome {
                raw: Some(raw),
                result: convert(&release, subject, raw).unwrap_or(before.result.clone()),
            }
        }
        _ => before.clone(),
    };
    let free = free_of_charge(&before, &after, code_corrected);
    let now = state.clock.now();
    sqlx::query(
        "UPDATE review_items SET outcome = $4, new_marks = $5, raw_after = $6, result_after = $7, \
         free = $8, decided_by = $9, decided_at = $10 \
         WHERE application_id = $1 AND upn = $2 AND paper = $3",
    )
    .bind(&id)
    .bind(&upn)
    .bind(&paper)
    .bind(if changed.is_empty() && !code_corrected {
        "unchanged"
    } else {
        "changed"
    })
    .bind(serde_json::to_string(&changed).unwrap_or_default())
    .bind(after.raw.map(i64::from))
    .bind(&after.result)
    .bind(i64::from(free))
    .bind(&s.user.email)
    .bind(now)
    .execute(&state.db)
    .await?;
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&s.user.email),
            org_id: Some(&app.laestab),
            action: "review-outcome-recorded",
            target: Some(&format!("{id}/{upn}/{paper}")),
            detail: format!(
                "{} marks changed; result {} -> {}; {}",
                changed.len(),
                before.result,
                after.result,
                if free { "free" } else { "chargeable" }
            ),
            ip: None,
        },
        now,
    )
    .await?;
    // When every paper has an outcome, the application is decided and the school told.
    let (_, items) = find(&state.db, &id).await?.ok_or(AppError::NotFound)?;
    if items.iter().all(|i| i.outcome.is_some()) {
        let r = sqlx::query(
            "UPDATE review_applications SET status = 'decided' WHERE id = $1 AND status <> 'decided'",
        )
        .bind(&id)
        .execute(&state.db)
        .await?;
        if r.rows_affected() == 1 {
            tell_school(&state, &app).await?;
        }
    }
    Ok(Redirect::to(&format!("/operator/reviews/{id}")).into_response())
}

async fn tell_school(state: &AppState, app: &Application) -> anyhow::Result<()> {
    let managers: Vec<String> = db::members(&state.db, &app.laestab)
        .await?
        .into_iter()
        .filter(|m| m.active && m.roles.has(Role::AccountManager))
        .map(|m| m.email)
        .collect();
    let body = format!(
        "The outcome of your school's review of marking application\n\
         (submitted {}) is now available.\n\n\
         Sign in to the NCA Portal to see it:\n{}/reviews/{}\n\n\
         This email does not name pupils, to keep their data safe.\n",
        when(state, app.submitted_at),
        state.public_url,
        app.id
    );
    for to in &managers {
        state
            .mailer
            .send(to, "Outcome of your review of marking application", &body)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(raw: Option<u16>, result: &str) -> Outcome {
        Outcome {
            raw,
            result: result.into(),
        }
    }

    #[test]
    fn free_or_chargeable_by_the_published_criteria() {
        // (before, after, code corrected, free?)
        let cases = [
            (o(Some(30), "99"), o(Some(31), "100"), false, true), // crosses the standard
            (o(Some(31), "100"), o(Some(30), "99"), false, true), // crosses downwards
            (o(Some(40), "104"), o(Some(42), "105"), false, true), // 2 marks
            (o(Some(42), "105"), o(Some(40), "104"), false, true), // 2 marks down
            (o(Some(40), "104"), o(Some(41), "104"), false, false), // 1 mark, same side
            (o(Some(40), "104"), o(Some(40), "104"), false, false), // unchanged
            (o(Some(5), "N"), o(Some(6), "N"), false, false),     // N stays N
            (o(Some(9), "N"), o(Some(10), "100"), false, true),   // N to the standard
            (o(None, "A"), o(None, "A"), true, true),             // code corrected
            (o(Some(20), "95"), o(Some(21), "96"), true, true),   // code corrected wins
            (o(None, "M"), o(Some(30), "101"), false, false),     // M is not counted either way
            (o(Some(60), "110"), o(Some(61), "111"), false, false), // high score: no rule
        ];
        for (before, after, code, want) in cases {
            assert_eq!(
                free_of_charge(&before, &after, code),
                want,
                "{before:?} -> {after:?} code corrected {code}"
            );
        }
    }

    #[test]
    fn the_window_runs_from_opening_to_2359_on_the_deadline() {
        let tz = jiff::tz::TimeZone::get("Europe/London").unwrap();
        // 2025-07-08 07:30 BST
        let opens = 1_751_956_200;
        let explicit = crate::config::ReviewsSettings {
            deadline: "2025-07-18".into(),
            deadline_days: 10,
        };
        let w = window(&explicit, &tz, opens);
        // 2025-07-18 23:59:59 BST = 22:59:59 UTC
        assert_eq!(w.closes, 1_752_879_599);
        assert_eq!(w.state(opens - 1), WindowState::NotYet);
        assert_eq!(w.state(opens), WindowState::Open);
        assert_eq!(w.state(w.closes), WindowState::Open);
        assert_eq!(w.state(w.closes + 1), WindowState::Closed);
        let by_days = crate::config::ReviewsSettings {
            deadline: String::new(),
            deadline_days: 10,
        };
        assert_eq!(window(&by_days, &tz, opens), w);
    }
}
