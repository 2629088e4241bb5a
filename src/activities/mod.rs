//! The activity engine: the portal the rest of the year. Activities are declared in the cycle
//! file (`cycle.rs`); this module decides where each stands for an organisation (audience,
//! gates, window, the operator's reopening, status), shows My Activity (outstanding,
//! available, in progress, completed, with the audit trail of copies, emails and letters, and
//! search), keeps drafts, enforces deadlines on every POST, and gives the operator each
//! activity's status across schools, chasing, reopening, gates and decisions. The forms
//! themselves are in `registration.rs`, `attendance.rs`, `hdf.rs` and `ta.rs`; `export.rs`
//! writes what they collected in the data contract's format.

pub mod attendance;
pub mod cycle;
pub mod export;
pub mod fields;
pub mod hdf;
pub mod la_choice;
pub mod materials;
pub mod messages;
pub mod registration;
pub mod ta;

use askama::Template;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;

use crate::AppState;
use crate::auth::roles::{Action, OrgKind};
use crate::auth::session::{Signed, SignedIn, check_csrf};
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Row, Section, render};
pub use cycle::{Activity, Audience, Cycle, EmailEvent, Form, Gate};

// ---------- pages ----------

/// A form inside an activity page.
#[derive(Debug, Default)]
pub struct PageForm {
    pub action: String,
    pub multipart: bool,
    /// Where the page's script saves the form as the user types (empty: no autosave).
    pub autosave: String,
    pub fields: Vec<Field>,
    pub grid: Option<Grid>,
    pub submit: String,
    pub submit_name: String,
    pub submit_value: String,
    pub secondary: Option<(String, String, String)>,
    pub danger: bool,
}

/// A table of pupils with a choice per cell (attendance codes, TA codes).
#[derive(Debug, Default)]
pub struct Grid {
    pub caption: String,
    pub head: Vec<String>,
    pub rows: Vec<GridRow>,
}

#[derive(Debug, Default)]
pub struct GridRow {
    pub cells: Vec<String>,
    pub inputs: Vec<GridInput>,
}

#[derive(Debug, Default)]
pub struct GridInput {
    pub name: String,
    pub label: String,
    pub options: Vec<(String, String, bool)>,
    pub error: Option<String>,
    /// A number typed in (with this value) rather than a choice.
    pub number: Option<String>,
}

#[derive(Template, Default)]
#[template(path = "activity.html")]
pub struct ActivityPage {
    pub title: String,
    pub caption: String,
    pub errors: Vec<(String, String)>,
    pub notice: Option<String>,
    pub warning: Option<String>,
    pub user: Option<SignedIn>,
    pub csrf: String,
    pub idle_seconds: i64,
    pub warning_seconds: i64,
    pub refresh: Option<i64>,
    pub back: Option<String>,
    pub intro: Vec<String>,
    pub search: Option<String>,
    pub search_label: String,
    pub summary: Vec<(String, String, String)>,
    pub sections: Vec<Section>,
    pub form: Option<PageForm>,
    pub links: Vec<(String, String)>,
}

impl ActivityPage {
    pub fn new(state: &AppState, s: &Signed, title: &str) -> ActivityPage {
        ActivityPage {
            title: title.into(),
            user: Some(s.user.clone()),
            csrf: s.csrf.clone(),
            idle_seconds: state.settings.auth.idle_minutes * 60,
            warning_seconds: state.settings.auth.warning_minutes * 60,
            ..Default::default()
        }
    }
    /// An error in the summary, and on the field or grid cell it names.
    pub fn error(&mut self, field: &str, message: &str) {
        self.errors.push((field.to_string(), message.to_string()));
        if let Some(f) = self.form.as_mut() {
            if let Some(fl) = f.fields.iter_mut().find(|x| x.name == field) {
                fl.error.get_or_insert_with(|| message.to_string());
            }
            if let Some(g) = f.grid.as_mut() {
                for r in &mut g.rows {
                    for i in &mut r.inputs {
                        if i.name == field {
                            i.error.get_or_insert_with(|| message.to_string());
                        }
                    }
                }
            }
        }
    }
    pub fn respond(self) -> Response {
        let status = if self.errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        render(status, &self)
    }
}

/// The printable copy of a submission: what the check-your-answers page showed.
#[derive(Template, Default)]
#[template(path = "copy.html")]
pub struct Copy {
    pub summary: Vec<(String, String)>,
    pub sections: Vec<Section>,
}

#[derive(Template)]
#[template(path = "document.html")]
struct DocumentPage {
    title: String,
    org_label: String,
    created: String,
    is_html: bool,
    body: String,
}

pub fn select(name: &'static str, label: &str, options: &[(&str, &str)], current: &str) -> Field {
    let mut f = Field::input("select", name, label);
    f.options = options
        .iter()
        .map(|(v, l)| (v.to_string(), l.to_string(), *v == current))
        .collect();
    f
}

pub fn radios(name: &'static str, label: &str, options: &[(&str, &str)], current: &str) -> Field {
    let mut f = select(name, label, options, current);
    f.kind = "radios";
    f
}

/// A time as users read it: "5:00pm on Friday 30 May 2025" (the service's time zone).
pub fn when(state: &AppState, t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| {
            t.to_zoned(state.tz.clone())
                .strftime("%-I:%M%P on %A %-d %B %Y")
                .to_string()
        })
        .unwrap_or_default()
}

// ---------- where an activity stands ----------

/// The time rules for one organisation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    NotYet(i64),
    Open(i64),
    /// After the deadline, additions only, until the time given.
    Late(i64),
    /// Reopened by the operator for this organisation, until the time given.
    Reopened(i64),
    Closed(i64),
}

impl Window {
    pub fn of(a: &Audience, now: i64, reopened_until: Option<i64>) -> Window {
        if let Some(u) = reopened_until.filter(|u| now <= *u && now >= a.opens) {
            return Window::Reopened(u);
        }
        if now < a.opens {
            Window::NotYet(a.opens)
        } else if now <= a.closes {
            Window::Open(a.closes)
        } else if let Some(l) = a.late_until.filter(|l| now <= *l) {
            Window::Late(l)
        } else {
            Window::Closed(a.closes)
        }
    }
    /// Whether full changes are taken now.
    pub fn is_open(self) -> bool {
        matches!(self, Window::Open(_) | Window::Reopened(_))
    }
}

/// The operator's changes to audiences' windows (table `activity_windows`), over the cycle
/// file: read from the database at most every 5 seconds per node, and at once after an edit on
/// this node, so a change needs no restart.
#[derive(Debug, Default)]
pub struct Windows {
    inner: std::sync::RwLock<WindowsInner>,
}

type WindowKey = (String, usize);

#[derive(Debug, Default)]
struct WindowsInner {
    loaded: Option<std::time::Instant>,
    map: std::collections::HashMap<WindowKey, (i64, i64, Option<i64>)>,
}

impl Windows {
    pub async fn refresh(&self, db: &Db, year: i32) -> sqlx::Result<()> {
        use sqlx::Row as _;
        let rows = sqlx::query("SELECT * FROM activity_windows WHERE cycle = $1")
            .bind(year as i64)
            .fetch_all(db)
            .await?;
        let map = rows
            .iter()
            .map(|r| {
                (
                    (
                        r.get::<String, _>("activity"),
                        r.get::<i64, _>("audience") as usize,
                    ),
                    (r.get("opens"), r.get("closes"), r.get("late_until")),
                )
            })
            .collect();
        let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
        w.map = map;
        w.loaded = Some(std::time::Instant::now());
        Ok(())
    }
    fn stale(&self) -> bool {
        let w = self.inner.read().unwrap_or_else(|e| e.into_inner());
        w.loaded
            .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(5))
    }
    /// The audience with the operator's window, if one was set.
    pub fn apply(&self, act: &Activity, aud: &Audience) -> Audience {
        let mut a = aud.clone();
        if let Some(i) = act.audiences.iter().position(|x| std::ptr::eq(x, aud)) {
            let w = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if let Some((o, c, l)) = w.map.get(&(act.id.clone(), i)) {
                a.opens = *o;
                a.closes = *c;
                a.late_until = *l;
            }
        }
        a
    }
}

/// An audience as it stands now (the operator's window over the cycle file's).
pub async fn audience_now(state: &AppState, act: &Activity, aud: &Audience) -> Audience {
    if state.windows.stale()
        && let Err(e) = state.windows.refresh(&state.db, state.cycle.year).await
    {
        tracing::warn!(error = %e, "activity windows not refreshed");
    }
    state.windows.apply(act, aud)
}

/// An organisation's row for an activity.
#[derive(Debug, Clone)]
pub struct Status {
    pub status: String,
    pub draft: serde_json::Value,
    pub updated_at: i64,
    pub submitted_by: Option<String>,
    pub submitted_org: Option<String>,
    pub submitted_at: Option<i64>,
    pub decision: Option<String>,
}

/// Everything that decides what an organisation may do with an activity now.
#[derive(Debug, Clone)]
pub struct Standing {
    pub audience: Audience,
    pub window: Window,
    pub status: Option<Status>,
    /// Gates not yet met, as sentences.
    pub missing: Vec<String>,
    /// Exceptions recorded that close the activity to this organisation, as sentences.
    pub blocked: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section4 {
    Outstanding,
    Available,
    InProgress,
    Completed,
    Upcoming,
}

impl Standing {
    pub fn submitted(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.status != "draft")
    }
    pub fn section(&self, act: &Activity) -> Section4 {
        let st = self.status.as_ref().map(|s| s.status.as_str());
        match st {
            Some("accepted") | Some("rejected") => return Section4::Completed,
            Some("submitted") if act.decided => return Section4::InProgress,
            Some("submitted") => return Section4::Completed,
            _ => {}
        }
        if matches!(self.window, Window::NotYet(_)) {
            return Section4::Upcoming;
        }
        if self.audience.mandatory {
            Section4::Outstanding
        } else {
            Section4::Available
        }
    }
    pub fn due_text(&self, state: &AppState) -> String {
        match self.window {
            Window::NotYet(t) => format!("Opens at {}", when(state, t)),
            Window::Open(t) => format!("Due by {}", when(state, t)),
            Window::Late(t) => format!("Deadline passed; additions taken until {}", when(state, t)),
            Window::Reopened(t) => format!("Reopened for you until {}", when(state, t)),
            Window::Closed(t) => format!("Closed at {}", when(state, t)),
        }
    }
    pub fn status_text(&self, state: &AppState, act: &Activity) -> String {
        if !self.blocked.is_empty() {
            return format!("Not available: {}", self.blocked.join("; "));
        }
        if !self.missing.is_empty() {
            return format!("Not yet available: needs {}", self.missing.join(" and "));
        }
        match self.status.as_ref() {
            None => "Not started".into(),
            Some(s) => match s.status.as_str() {
                "draft" => format!("Draft saved at {}", when(state, s.updated_at)),
                "submitted" if act.decided => format!(
                    "Submitted at {}; awaiting a decision",
                    when(state, s.submitted_at.unwrap_or(0))
                ),
                "submitted" => format!("Submitted at {}", when(state, s.submitted_at.unwrap_or(0))),
                "accepted" => "Accepted".into(),
                "rejected" => "Rejected".into(),
                other => other.into(),
            },
        }
    }
}

fn status_from(r: &sqlx::any::AnyRow) -> Status {
    use sqlx::Row as _;
    Status {
        status: r.get("status"),
        draft: serde_json::from_str(&r.get::<String, _>("draft")).unwrap_or_default(),
        updated_at: r.get("updated_at"),
        submitted_by: r.get("submitted_by"),
        submitted_org: r.get("submitted_org"),
        submitted_at: r.get("submitted_at"),
        decision: r.get("decision"),
    }
}

pub async fn status(db: &Db, year: i32, act: &str, org: &str) -> sqlx::Result<Option<Status>> {
    let r = sqlx::query(
        "SELECT * FROM activity_status WHERE cycle = $1 AND activity = $2 AND org_id = $3",
    )
    .bind(year as i64)
    .bind(act)
    .bind(org)
    .fetch_optional(db)
    .await?;
    Ok(r.as_ref().map(status_from))
}

/// Every organisation's row for an activity.
pub async fn statuses(
    db: &Db,
    year: i32,
    act: &str,
) -> sqlx::Result<std::collections::HashMap<String, Status>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT * FROM activity_status WHERE cycle = $1 AND activity = $2")
        .bind(year as i64)
        .bind(act)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>("org_id"), status_from(r)))
        .collect())
}

/// Keep a draft: the form so far (merged into what was saved), marking the activity as started.
/// A submitted activity that changes goes back to draft until submitted again.
pub async fn save_draft(
    state: &AppState,
    act: &Activity,
    org: &str,
    by: &str,
    merge: Option<&serde_json::Map<String, serde_json::Value>>,
) -> sqlx::Result<()> {
    let year = state.cycle.year as i64;
    let now = state.clock.now();
    let current = status(&state.db, state.cycle.year, &act.id, org).await?;
    let mut draft = current
        .as_ref()
        .and_then(|s| s.draft.as_object().cloned())
        .unwrap_or_default();
    if let Some(m) = merge {
        for (k, v) in m {
            draft.insert(k.clone(), v.clone());
        }
    }
    let draft = serde_json::Value::Object(draft).to_string();
    match current {
        Some(_) => {
            sqlx::query(
                "UPDATE activity_status SET status = 'draft', draft = $1, updated_by = $2, updated_at = $3 \
                 WHERE cycle = $4 AND activity = $5 AND org_id = $6",
            )
            .bind(draft)
            .bind(by)
            .bind(now)
            .bind(year)
            .bind(&act.id)
            .bind(org)
            .execute(&state.db)
            .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO activity_status (cycle, activity, org_id, status, draft, updated_by, updated_at) \
                 VALUES ($1, $2, $3, 'draft', $4, $5, $6)",
            )
            .bind(year)
            .bind(&act.id)
            .bind(org)
            .bind(draft)
            .bind(by)
            .bind(now)
            .execute(&state.db)
            .await?;
        }
    }
    Ok(())
}

/// The record key of an activity each user of `org` completes themselves.
fn user_record_key(org: &str, uid: &str) -> String {
    format!("{org}:{uid}")
}

/// One organisation's activity rows this cycle (its statuses, under each record key asked
/// for, and its exceptions), read in two queries: a page that asks where every activity
/// stands reads them once, not two or three queries per activity.
pub struct OrgRows {
    statuses: std::collections::HashMap<(String, String), Status>,
    /// By activity: the reopened-until time, and the operator gates recorded.
    exceptions: std::collections::HashMap<String, (Option<i64>, Vec<String>)>,
}

impl OrgRows {
    /// The rows of `org` (its own statuses, and those of any other record `keys`, such as
    /// `org:user` for activities each user completes).
    pub async fn load(db: &Db, year: i32, org: &str, keys: &[&str]) -> sqlx::Result<OrgRows> {
        use sqlx::Row as _;
        let mut all: Vec<&str> = vec![org];
        all.extend(keys.iter().copied().filter(|k| *k != org));
        let marks = (0..all.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT * FROM activity_status WHERE cycle = $1 AND org_id IN ({marks})");
        let mut q = sqlx::query(&sql).bind(year as i64);
        for k in &all {
            q = q.bind(*k);
        }
        let statuses = q
            .fetch_all(db)
            .await?
            .iter()
            .map(|r| {
                (
                    (r.get::<String, _>("activity"), r.get::<String, _>("org_id")),
                    status_from(r),
                )
            })
            .collect();
        let rows = sqlx::query(
            "SELECT activity, what, until_at FROM activity_exceptions WHERE cycle = $1 AND org_id = $2",
        )
        .bind(year as i64)
        .bind(org)
        .fetch_all(db)
        .await?;
        let mut exceptions: std::collections::HashMap<String, (Option<i64>, Vec<String>)> =
            std::collections::HashMap::new();
        for r in rows {
            let e = exceptions.entry(r.get("activity")).or_default();
            let what: String = r.get("what");
            if what == "reopen" {
                e.0 = r.get::<Option<i64>, _>("until_at");
            } else if let Some(g) = what.strip_prefix("gate:") {
                e.1.push(g.to_string());
            }
        }
        Ok(OrgRows {
            statuses,
            exceptions,
        })
    }

    /// Until when the operator reopened `act` for the organisation, if they did.
    pub fn reopened_until(&self, act: &str) -> Option<i64> {
        self.exceptions.get(act).and_then(|(r, _)| *r)
    }

    /// The status of `act` under record key `key` (one of those loaded).
    pub fn status(&self, act: &str, key: &str) -> Option<Status> {
        self.statuses
            .get(&(act.to_string(), key.to_string()))
            .cloned()
    }
}

/// Where `act` stands for `org` now; None when the organisation is not in its audience.
pub async fn standing(
    state: &AppState,
    act: &Activity,
    org: &db::Org,
) -> anyhow::Result<Option<Standing>> {
    let rows = OrgRows::load(&state.db, state.cycle.year, &org.id, &[]).await?;
    Ok(standing_in(state, act, org, &rows).await)
}

/// As `standing`, from the organisation's rows already read.
pub async fn standing_in(
    state: &AppState,
    act: &Activity,
    org: &db::Org,
    rows: &OrgRows,
) -> Option<Standing> {
    let aud = act.audience(org.kind, org.school_type.as_deref())?;
    let aud = &audience_now(state, act, aud).await;
    let (reopen, recorded) = rows
        .exceptions
        .get(&act.id)
        .map_or((None, &[][..]), |(r, g)| (*r, g.as_slice()));
    let mut missing = Vec::new();
    for g in &aud.requires {
        let met = match g {
            Gate::Operator(n) => recorded.iter().any(|r| r == n),
            // A decided activity counts once accepted; others once submitted.
            Gate::Activity(id) => {
                let decided = state.cycle.activity(id).is_some_and(|a| a.decided);
                rows.status(id, &org.id).is_some_and(|s| {
                    s.status == "accepted" || (!decided && s.status == "submitted")
                })
            }
        };
        if !met {
            missing.push(g.label(&state.cycle));
        }
    }
    let blocked = aud
        .unless
        .iter()
        .filter(|g| matches!(g, Gate::Operator(n) if recorded.contains(n)))
        .map(|g| g.label(&state.cycle))
        .collect();
    Some(Standing {
        blocked,
        audience: aud.clone(),
        window: Window::of(aud, state.clock.now(), reopen),
        status: rows.status(&act.id, &org.id),
        missing,
    })
}

/// An activity as one school's (or, for TA, its LA's) form sees it.
pub struct Ctx {
    pub act: Activity,
    pub school: db::Org,
    pub standing: Standing,
    /// The signed-in LA acting for the school, when it is not the school itself.
    pub by_la: bool,
    pub base: String,
    /// The key of the activity's records: the organisation, or `org:user` for activities each
    /// user completes themselves.
    pub key: String,
}

impl Ctx {
    /// A form posted to this activity: parsed, its CSRF token checked, and the window asked
    /// whether it takes the change (`ensure_open`).
    pub fn posted(
        &self,
        state: &AppState,
        s: &Signed,
        body: &Bytes,
        adding: bool,
    ) -> Result<FormData, AppError> {
        let f = FormData::parse(body);
        check_csrf(&s.csrf, &f.get("csrf"))?;
        self.ensure_open(state, adding)?;
        Ok(f)
    }

    /// Refuse a change unless the window takes it (full changes, or additions when `adding`
    /// in the late period), with a message that says why.
    pub fn ensure_open(&self, state: &AppState, adding: bool) -> Result<(), AppError> {
        match self.standing.window {
            Window::Open(_) | Window::Reopened(_) => Ok(()),
            Window::Late(_) if adding => Ok(()),
            w => Err(AppError::Refused(
                StatusCode::FORBIDDEN,
                format!("{}: this form is closed", self.act.name),
                closed_text(state, &self.act, w),
            )),
        }
    }
    /// The read-only notice for a page, when it is read-only.
    pub fn notice(&self, state: &AppState) -> Option<String> {
        match self.standing.window {
            Window::Open(t) => Some(format!("The deadline is {}.", when(state, t))),
            Window::Reopened(t) => Some(format!(
                "The operator has reopened this activity for you until {}.",
                when(state, t)
            )),
            w => Some(closed_text(state, &self.act, w)),
        }
    }
    pub fn audit_target(&self) -> String {
        format!("{}/{}", self.act.id, self.school.id)
    }
}

fn closed_text(state: &AppState, act: &Activity, w: Window) -> String {
    match w {
        Window::NotYet(t) => format!("{} opens at {}.", act.name, when(state, t)),
        Window::Late(t) => format!(
            "The deadline for {} has passed. You can still add pupils who arrived after it until {}; other changes are closed. Contact the helpline on 0300 303 3013 if you need to change something else.",
            act.name,
            when(state, t)
        ),
        Window::Closed(t) => format!(
            "The deadline for {} was {}. The form is now read-only. If you need to make a change, contact the national curriculum assessments helpline on 0300 303 3013.",
            act.name,
            when(state, t)
        ),
        Window::Open(_) | Window::Reopened(_) => String::new(),
    }
}

/// Resolve the activity `id` (which must use `form`) for the signed-in school, or for the school
/// `laestab` when an LA acts for it; checks audience, permission and gates.
pub async fn ctx(
    state: &AppState,
    s: &Signed,
    id: &str,
    form: Form,
    laestab: Option<&str>,
) -> Result<Ctx, AppError> {
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.form == form)
        .ok_or(AppError::NotFound)?
        .clone();
    let (school, audience_kind) = match laestab {
        None => {
            // The user's own organisation: a school, or an LA or trust for their own activities.
            let org = db::org(&state.db, &s.user.org)
                .await?
                .ok_or(AppError::Forbidden)?;
            let kind = org.kind;
            (org, kind)
        }
        Some(l) => {
            if s.user.kind != OrgKind::La {
                return Err(AppError::Forbidden);
            }
            let org = db::org(&state.db, l).await?.ok_or(AppError::NotFound)?;
            if org.kind != OrgKind::Ks2School || org.la_code.as_deref() != Some(&s.user.org) {
                return Err(AppError::Forbidden);
            }
            (org, OrgKind::La)
        }
    };
    let mut standing = standing(state, &act, &school)
        .await?
        .ok_or(AppError::Forbidden)?;
    if laestab.is_some() && audience_kind == OrgKind::La {
        // The LA works to its own audience's dates and permission.
        let aud = audience_now(
            state,
            &act,
            act.audience(OrgKind::La, None).ok_or(AppError::Forbidden)?,
        )
        .await;
        let reopen = OrgRows::load(&state.db, state.cycle.year, &s.user.org, &[])
            .await?
            .reopened_until(&act.id);
        standing.window = Window::of(&aud, state.clock.now(), reopen);
        standing.audience = aud;
    }
    s.require(standing.audience.permission)?;
    if !standing.blocked.is_empty() {
        return Err(AppError::Refused(
            StatusCode::FORBIDDEN,
            format!("{} is not available to your school", act.name),
            format!("{}: {}.", act.name, standing.blocked.join("; ")),
        ));
    }
    if !standing.missing.is_empty() {
        return Err(AppError::Refused(
            StatusCode::FORBIDDEN,
            format!("{} is not available yet", act.name),
            format!(
                "Your school can reach {} once it has {}. Contact the helpline on 0300 303 3013 if you think this is wrong.",
                act.name,
                standing.missing.join(" and ")
            ),
        ));
    }
    let base = match laestab {
        None => format!("/activities/{}", act.id),
        Some(l) => format!("/activities/{}/for/{l}", act.id),
    };
    let key = record_key(&act, &school.id, &s.user.uid);
    if act.per_user {
        standing.status = status(&state.db, state.cycle.year, &act.id, &key).await?;
    }
    Ok(Ctx {
        key,
        act,
        school,
        standing,
        by_la: laestab.is_some(),
        base,
    })
}

/// Where an activity's records for this user in this organisation are kept.
pub fn record_key(act: &Activity, org: &str, uid: &str) -> String {
    if act.per_user {
        user_record_key(org, uid)
    } else {
        org.to_string()
    }
}

/// Mark the activity submitted (with `answers` merged into what it keeps), keep the printable
/// copy, send the receipt email and audit it.
#[allow(clippy::too_many_arguments)]
pub async fn submit(
    state: &AppState,
    s: &Signed,
    ctx: &Ctx,
    copy: &Copy,
    search: &str,
    ip: Option<String>,
    answers: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(), AppError> {
    let now = state.clock.now();
    let year = state.cycle.year as i64;
    save_draft(state, &ctx.act, &ctx.key, &s.user.email, answers).await?;
    sqlx::query(
        "UPDATE activity_status SET status = 'submitted', submitted_by = $1, submitted_org = $2, submitted_at = $3, \
         decision = NULL, decided_at = NULL WHERE cycle = $4 AND activity = $5 AND org_id = $6",
    )
    .bind(&s.user.email)
    .bind(&s.user.org)
    .bind(now)
    .bind(year)
    .bind(&ctx.act.id)
    .bind(&ctx.key)
    .execute(&state.db)
    .await?;
    let body = copy.render().map_err(|e| AppError::Unexpected(e.into()))?;
    let by = if ctx.by_la {
        format!(
            "{} for the local authority ({})",
            s.user.name, s.user.org_name
        )
    } else {
        s.user.name.clone()
    };
    add_document(
        state,
        &ctx.act,
        &ctx.school.id,
        "form",
        &format!("{}: submitted by {by}", ctx.act.name),
        &body,
        search,
        &s.user.email,
    )
    .await?;
    db::audit(
        &state.db,
        db::Audit {
            actor: Some(&s.user.email),
            org_id: Some(&ctx.school.id),
            action: "activity-submitted",
            target: Some(&ctx.act.id),
            detail: if ctx.by_la {
                format!("by LA {}", s.user.org)
            } else {
                String::new()
            },
            ip,
        },
        now,
    )
    .await?;
    if ctx.act.sends(EmailEvent::Submitted) {
        let text = format!(
            "{by} submitted {} for {} ({}) at {}.\n\nA copy of what was submitted is in the portal: My Activity, completed activity, {}.\n\nIf this was not expected, contact the national curriculum assessments helpline on 0300 303 3013.",
            ctx.act.name,
            ctx.school.name,
            ctx.school.id,
            when(state, now),
            ctx.act.name
        );
        let mut to = vec![s.user.email.clone()];
        email(
            state,
            &ctx.act,
            &ctx.school.id,
            &format!("{} submitted", ctx.act.name),
            &text,
            &mut to,
        )
        .await?;
    }
    Ok(())
}

/// Add one document to the audit trail.
#[allow(clippy::too_many_arguments)]
pub async fn add_document(
    state: &AppState,
    act: &Activity,
    org: &str,
    kind: &str,
    title: &str,
    body: &str,
    search: &str,
    by: &str,
) -> sqlx::Result<String> {
    let id = db::new_id();
    sqlx::query(
        "INSERT INTO activity_documents (id, cycle, activity, org_id, kind, title, body, search, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(state.cycle.year as i64)
    .bind(&act.id)
    .bind(org)
    .bind(kind)
    .bind(title)
    .bind(body)
    .bind(search.to_lowercase())
    .bind(by)
    .bind(state.clock.now())
    .execute(&state.db)
    .await?;
    Ok(id)
}

/// Email the organisation's account managers (and `to`, already named), and keep the email in
/// the activity's audit trail.
pub async fn email(
    state: &AppState,
    act: &Activity,
    org: &str,
    subject: &str,
    body: &str,
    to: &mut Vec<String>,
) -> anyhow::Result<()> {
    for m in db::members(&state.db, org).await? {
        if (m.roles.has(crate::auth::roles::Role::AccountManager)
            || m.roles.has(crate::auth::roles::Role::LaAccountManager))
            && !to.contains(&m.email)
        {
            to.push(m.email.clone());
        }
    }
    for addr in to.iter() {
        state.mailer.send(addr, subject, body).await?;
    }
    add_document(
        state,
        act,
        org,
        "email",
        subject,
        &format!("To: {}\nSubject: {subject}\n\n{body}", to.join(", ")),
        "",
        "system",
    )
    .await?;
    Ok(())
}

/// Record an access to pupil data in the access log.
pub async fn record_access(
    state: &AppState,
    user: &SignedIn,
    action: &'static str,
    target: String,
) {
    let event = crate::results::AuditEvent {
        action,
        actor: user.email.as_str().into(),
        org_id: user.org.as_str().into(),
        target: target.into(),
        at: state.clock.now(),
    };
    if state.audit_tx.send(event).await.is_err() {
        tracing::error!("audit writer stopped: an access to pupil data was not recorded");
    }
}

/// Keep a refused upload's error report for download; returns its address.
pub async fn keep_report(state: &AppState, org: &str, csv: String) -> sqlx::Result<String> {
    let id = db::new_id();
    let now = state.clock.now();
    sqlx::query("DELETE FROM upload_reports WHERE created_at < $1")
        .bind(now - 86_400)
        .execute(&state.db)
        .await?;
    sqlx::query(
        "INSERT INTO upload_reports (id, org_id, body, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(org)
    .bind(csv)
    .bind(now)
    .execute(&state.db)
    .await?;
    Ok(format!("/activities/reports/{id}.csv"))
}

/// One problem in an uploaded file: row, column, value, problem.
pub type RowProblem = (usize, String, String, String);

/// A CSV file: a header row, then the rows (RFC 4180 quoting by the `csv` crate).
pub fn csv_of<H: AsRef<[u8]>, C: AsRef<[u8]>>(
    head: &[H],
    rows: impl Iterator<Item = Vec<C>>,
) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(head);
    for r in rows {
        let _ = w.write_record(&r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// A CSV body as a download named `filename`.
pub fn csv_download(filename: &str, body: String) -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// A CSV error report: row, column, value, problem.
pub fn report_csv(problems: &[RowProblem]) -> String {
    csv_of(
        &["row", "column", "value", "problem"],
        problems.iter().map(|(row, col, val, why)| {
            vec![row.to_string(), col.clone(), val.clone(), why.clone()]
        }),
    )
}

/// The bytes of an uploaded file field and the form's CSRF token, from a multipart body.
pub async fn read_upload(
    mut form: axum::extract::Multipart,
    field: &str,
) -> Result<(String, Bytes, String), AppError> {
    let (mut csrf, mut name, mut bytes) = (String::new(), String::new(), Bytes::new());
    while let Ok(Some(f)) = form.next_field().await {
        let n = f.name().unwrap_or("").to_string();
        let file = f.file_name().unwrap_or("").to_string();
        let b = f.bytes().await.unwrap_or_default();
        if n == "csrf" {
            csrf = String::from_utf8_lossy(&b).into_owned();
        } else if n == field {
            name = file;
            bytes = b;
        }
    }
    Ok((name, bytes, csrf))
}

// ---------- My Activity ----------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities", get(dashboard))
        .route("/activities/documents/{id}", get(document))
        .route("/activities/reports/{file}", get(report))
        .route("/activities/{id}", get(overview))
        .route("/activities/{id}/check", get(check_page).post(check_submit))
        .route("/activities/{id}/upload", get(upload_page).post(upload))
        .route("/activities/{id}/submitted", get(submitted))
        .route("/activities/{id}/draft", post(autosave))
        .route("/operator/activities", get(operator_list))
        .route("/operator/activities/{id}", get(operator_status))
        .route("/operator/activities/{id}/chase", post(chase))
        .route(
            "/operator/activities/{id}/orgs/{org}/reopen",
            get(reopen_page).post(reopen),
        )
        .route(
            "/operator/activities/{id}/orgs/{org}/gate/{gate}",
            get(gate_page).post(gate),
        )
        .route(
            "/operator/activities/{id}/orgs/{org}/decide",
            get(decide_page).post(decide),
        )
        .merge(registration::routes())
        .merge(attendance::routes())
        .merge(hdf::routes())
        .merge(ta::routes())
        .merge(fields::routes())
        .merge(messages::routes())
        .merge(materials::routes())
        .merge(la_choice::routes())
        .route(
            "/operator/activities/{id}/submissions.csv",
            get(submissions),
        )
        .route(
            "/operator/activities/{id}/windows/{n}",
            get(window_page).post(window_edit),
        )
        .route("/activities/schools", get(schools_status))
        .route("/activities/access-arrangements", get(aa_report))
        .merge(export::routes())
}

#[derive(Deserialize, Default)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// The organisations whose documents a user may see: their own, an LA's schools, a trust's.
async fn visible_orgs(state: &AppState, u: &SignedIn) -> sqlx::Result<Vec<db::Org>> {
    let mut out = Vec::new();
    if let Some(o) = db::org(&state.db, &u.org).await? {
        out.push(o);
    }
    match u.kind {
        OrgKind::La => out.extend(db::schools_of(&state.db, Some(&u.org), None).await?),
        OrgKind::Mat => out.extend(db::schools_of(&state.db, None, Some(&u.org)).await?),
        _ => {}
    }
    Ok(out)
}

struct Doc {
    id: String,
    activity: String,
    org_id: String,
    kind: String,
    title: String,
    created_at: i64,
}

/// Documents of the user's organisation and, for an LA or a trust, of its schools.
async fn documents_of(db: &Db, year: i32, u: &SignedIn) -> sqlx::Result<Vec<(Doc, String)>> {
    use sqlx::Row as _;
    let column = match u.kind {
        OrgKind::La => "la_code",
        OrgKind::Mat => "trust_uid",
        _ => "id",
    };
    let sql = format!(
        "SELECT id, activity, org_id, kind, title, created_at, search FROM activity_documents \
         WHERE cycle = $1 AND (org_id = $2 OR org_id IN (SELECT id FROM orgs WHERE {column} = $2 AND kind = 'ks2-school')) \
         ORDER BY created_at DESC"
    );
    let rows = sqlx::query(&sql)
        .bind(year as i64)
        .bind(&u.org)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Doc {
                    id: r.get("id"),
                    activity: r.get("activity"),
                    org_id: r.get("org_id"),
                    kind: r.get("kind"),
                    title: r.get("title"),
                    created_at: r.get("created_at"),
                },
                r.get::<String, _>("search"),
            )
        })
        .collect())
}

/// Whether the user may see a document of `act` belonging to `org`: the organisation's own users
/// with the activity's permission, the school's LA (users who see tasks), the school's trust,
/// the operator. Copies hold pupil data, so an account manager alone sees none.
pub fn may_see_doc(state: &AppState, u: &SignedIn, act: &str, org: &db::Org) -> bool {
    if u.may(Action::Operate) {
        return true;
    }
    // Access arrangements name pupils' needs: only the school's users with that permission
    // (and the operator) see them; LAs get counts in their report.
    let sensitive = state.cycle.activity(act).is_some_and(|a| {
        a.audiences
            .iter()
            .any(|x| x.permission == Action::AccessArrangements)
    });
    if sensitive && (org.id != u.org || !u.may(Action::AccessArrangements)) {
        return false;
    }
    if org.id == u.org {
        return state
            .cycle
            .activity(act)
            .and_then(|a| a.audience(org.kind, org.school_type.as_deref()))
            .is_some_and(|a| u.may(a.permission));
    }
    match u.kind {
        OrgKind::La => {
            org.la_code.as_deref() == Some(&u.org)
                && (u.may(Action::ManageTa) || u.may(Action::LaActivities))
        }
        OrgKind::Mat => org.trust_uid.as_deref() == Some(&u.org) && u.may(Action::ViewResults),
        _ => false,
    }
}

fn doc_kind(kind: &str) -> &'static str {
    match kind {
        "form" => "Copy of the form",
        "email" => "Email",
        "letter" => "Letter",
        _ => "Document",
    }
}

async fn dashboard(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<SearchQuery>,
) -> Result<Response, AppError> {
    let org = db::org(&state.db, &s.user.org)
        .await?
        .ok_or(AppError::Forbidden)?;
    let query = q.q.trim().to_lowercase();
    let mut p = ActivityPage::new(&state, &s, "My Activity");
    p.caption = org.name.clone();
    p.intro = vec![
        "The activities for your organisation this test cycle. Outstanding activities are mandatory and due; available activities you complete if you need to; in progress activities are awaiting a decision; completed activities keep a copy of what was submitted and the emails and letters it produced.".into(),
    ];
    p.search = Some(q.q.clone());
    p.search_label = if matches!(s.user.kind, OrgKind::La | OrgKind::Mat) {
        "Search by activity name, pupil name, UPN, school name or DfE number".into()
    } else {
        "Search by activity name, pupil name or UPN".into()
    };
    let mut sections: [(Section4, Section); 4] = [
        (Section4::Outstanding, Section::default()),
        (Section4::Available, Section::default()),
        (Section4::InProgress, Section::default()),
        (Section4::Completed, Section::default()),
    ];
    let headings = [
        "Outstanding activity",
        "Available activity",
        "In progress activity",
        "Completed activity",
    ];
    for ((_, sec), h) in sections.iter_mut().zip(headings) {
        sec.heading = h.into();
        sec.head = vec!["Activity".into(), "Due".into(), "Status".into(), "".into()];
    }
    let mut upcoming = Vec::new();
    let orgs = visible_orgs(&state, &s.user).await?;
    let by_id: std::collections::HashMap<&str, &db::Org> =
        orgs.iter().map(|o| (o.id.as_str(), o)).collect();
    let docs: Vec<(Doc, String)> = documents_of(&state.db, state.cycle.year, &s.user)
        .await?
        .into_iter()
        .filter(|(d, _)| {
            by_id
                .get(d.org_id.as_str())
                .is_some_and(|o| may_see_doc(&state, &s.user, &d.activity, o))
        })
        .collect();
    let own_key = user_record_key(&org.id, &s.user.uid);
    let rows = OrgRows::load(&state.db, state.cycle.year, &org.id, &[&own_key]).await?;
    for act in &state.cycle.activities {
        let Some(mut st) = standing_in(&state, act, &org, &rows).await else {
            continue;
        };
        if act.per_user {
            st.status = rows.status(&act.id, &record_key(act, &org.id, &s.user.uid));
        }
        if !s.user.may(st.audience.permission) {
            continue;
        }
        let name_hit = query.is_empty() || act.name.to_lowercase().contains(&query);
        let section = st.section(act);
        if section == Section4::Upcoming {
            if name_hit {
                upcoming.push(format!("{}: {}", act.name, st.due_text(&state)));
            }
            continue;
        }
        if !name_hit {
            continue;
        }
        let mut row = Row {
            cells: vec![
                act.name.clone(),
                st.due_text(&state),
                st.status_text(&state, act),
            ],
            links: Vec::new(),
        };
        if st.missing.is_empty() && st.blocked.is_empty() {
            let label = match (
                section,
                st.window.is_open() || matches!(st.window, Window::Late(_)),
            ) {
                (Section4::Completed | Section4::InProgress, _) | (_, false) => "View",
                _ if st.status.is_some() => "Continue",
                _ => "Start",
            };
            row.links.push((
                format!("/activities/{}", act.id),
                format!("{label}: {}", act.name),
            ));
        }
        if section == Section4::Completed {
            for (d, _) in docs
                .iter()
                .filter(|(d, _)| d.activity == act.id && d.org_id == org.id)
            {
                row.links.push((
                    format!("/activities/documents/{}", d.id),
                    format!("{}: {}", doc_kind(&d.kind), when(&state, d.created_at)),
                ));
            }
        }
        if let Some((_, sec)) = sections.iter_mut().find(|(k, _)| *k == section) {
            sec.rows.push(row);
        }
    }
    for (_, sec) in sections.iter_mut() {
        if sec.rows.is_empty() {
            sec.head.clear();
            sec.paragraphs.push("None.".into());
        }
    }
    let mut all: Vec<Section> = sections.into_iter().map(|(_, s)| s).collect();
    if !upcoming.is_empty() {
        all.push(Section {
            heading: "Coming up".into(),
            paragraphs: upcoming,
            ..Default::default()
        });
    }
    if matches!(s.user.kind, OrgKind::La | OrgKind::Mat | OrgKind::Ks2School) {
        let mut found = Section {
            heading: if query.is_empty() {
                "Emails, letters and copies of forms".into()
            } else {
                format!("Documents matching \u{201c}{}\u{201d}", q.q.trim())
            },
            head: vec![
                "Document".into(),
                "School".into(),
                "Activity".into(),
                "Date".into(),
                "".into(),
            ],
            ..Default::default()
        };
        for (d, text) in &docs {
            let school = by_id.get(d.org_id.as_str()).map_or("", |o| o.name.as_str());
            let act_name = state
                .cycle
                .activity(&d.activity)
                .map_or(d.activity.as_str(), |a| a.name.as_str());
            let hit = query.is_empty()
                || text.contains(&query)
                || d.title.to_lowercase().contains(&query)
                || act_name.to_lowercase().contains(&query)
                || (matches!(s.user.kind, OrgKind::La | OrgKind::Mat)
                    && (school.to_lowercase().contains(&query) || d.org_id.contains(&query)));
            if hit && found.rows.len() < 200 {
                found.rows.push(Row {
                    cells: vec![
                        format!("{}: {}", doc_kind(&d.kind), d.title),
                        format!("{school} ({})", d.org_id),
                        act_name.to_string(),
                        when(&state, d.created_at),
                    ],
                    links: vec![(format!("/activities/documents/{}", d.id), "Open".into())],
                });
            }
        }
        if found.rows.is_empty() {
            found.head.clear();
            found.paragraphs.push("None.".into());
        }
        all.push(found);
    }
    if s.user.may(Action::Operate) {
        p.links.push((
            "/operator/activities".into(),
            "Every school's status, by activity".into(),
        ));
    }
    p.sections = all;
    record_access(
        &state,
        &s.user,
        "activities-viewed",
        format!("dashboard/{}", org.id),
    )
    .await;
    Ok(p.respond())
}

async fn document(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    use sqlx::Row as _;
    let r = sqlx::query("SELECT * FROM activity_documents WHERE id = $1")
        .bind(&id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(AppError::NotFound)?;
    let org_id: String = r.get("org_id");
    let org = db::org(&state.db, &org_id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !may_see_doc(&state, &s.user, &r.get::<String, _>("activity"), &org) {
        return Err(AppError::NotFound);
    }
    let kind: String = r.get("kind");
    record_access(
        &state,
        &s.user,
        "activity-document-viewed",
        format!("{id}/{org_id}"),
    )
    .await;
    let page = DocumentPage {
        title: r.get("title"),
        org_label: format!("{} ({})", org.name, org.id),
        created: when(&state, r.get("created_at")),
        is_html: kind != "email",
        body: r.get("body"),
    };
    Ok(render(StatusCode::OK, &page))
}

async fn report(
    State(state): State<AppState>,
    s: Signed,
    Path(file): Path<String>,
) -> Result<Response, AppError> {
    use sqlx::Row as _;
    let id = file.strip_suffix(".csv").ok_or(AppError::NotFound)?;
    let r = sqlx::query("SELECT org_id, body FROM upload_reports WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(AppError::NotFound)?;
    if r.get::<String, _>("org_id") != s.user.org {
        return Err(AppError::NotFound);
    }
    Ok(csv_download(
        "upload-errors.csv",
        r.get::<String, _>("body"),
    ))
}

fn form_of(state: &AppState, id: &str) -> Result<Form, AppError> {
    state
        .cycle
        .activity(id)
        .map(|a| a.form)
        .ok_or(AppError::NotFound)
}

#[derive(Deserialize, Default)]
struct OverviewQuery {
    added: Option<String>,
    changed: Option<String>,
    uploaded: Option<usize>,
    day: Option<String>,
    submitted: Option<usize>,
    decided: Option<String>,
}

/// An activity's own page, by its form.
async fn overview(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<OverviewQuery>,
) -> Result<Response, AppError> {
    let notice = if let Some(u) = &q.added {
        Some(format!(
            "Pupil {u} added and saved. Submit your registration when your list is complete."
        ))
    } else if let Some(u) = &q.changed {
        Some(format!("Pupil {u}'s details saved."))
    } else if let Some(n) = q.uploaded {
        Some(format!("{n} pupils uploaded and saved."))
    } else if let Some(d) = &q.day {
        Some(format!("The register for {d} is submitted."))
    } else if let Some(l) = &q.decided {
        Some(format!(
            "Your decision on {l}'s request is recorded and the school has been told."
        ))
    } else {
        q.submitted
            .map(|n| format!("TA submitted for {n} schools."))
    };
    match form_of(&state, &id)? {
        Form::Registration => registration::overview(&state, &s, &id, notice).await,
        Form::Attendance => attendance::overview(&state, &s, &id, notice).await,
        Form::Hdf => hdf::overview(&state, &s, &id).await,
        Form::Ta => ta::overview(&state, &s, &id, notice).await,
        Form::Fields => fields::overview(&state, &s, &id, notice).await,
        Form::Messages => messages::overview(&state, &s, &id, notice).await,
        Form::Materials => materials::overview(&state, &s, &id).await,
        Form::LaChoice => la_choice::overview(&state, &s, &id, notice).await,
    }
}

async fn check_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    match form_of(&state, &id)? {
        Form::Registration => registration::check_page(&state, &s, &id).await,
        Form::Hdf => hdf::check_page(&state, &s, &id).await,
        Form::Ta => ta::check_page(&state, &s, &id).await,
        Form::Fields => fields::check_page(&state, &s, &id).await,
        Form::LaChoice => la_choice::check_page(&state, &s, &id).await,
        _ => Err(AppError::NotFound),
    }
}

async fn check_submit(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    match form_of(&state, &id)? {
        Form::Registration => registration::check_submit(&state, &s, &id, addr, body).await,
        Form::Hdf => hdf::check_submit(&state, &s, &id, addr, body).await,
        Form::Ta => ta::check_submit(&state, &s, &id, addr, body).await,
        Form::Fields => fields::check_submit(&state, &s, &id, addr, body).await,
        Form::LaChoice => la_choice::check_submit(&state, &s, &id, addr, body).await,
        _ => Err(AppError::NotFound),
    }
}

async fn upload_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    match form_of(&state, &id)? {
        Form::Registration => registration::upload_page(&state, &s, &id).await,
        Form::Ta => ta::upload_page(&state, &s, &id).await,
        _ => Err(AppError::NotFound),
    }
}

async fn upload(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    form: axum::extract::Multipart,
) -> Result<Response, AppError> {
    match form_of(&state, &id)? {
        Form::Registration => registration::upload(&state, &s, &id, addr, form).await,
        Form::Ta => ta::upload(&state, &s, &id, addr, form).await,
        _ => Err(AppError::NotFound),
    }
}

/// The confirmation page after a submission.
async fn submitted(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    let st = status(
        &state.db,
        state.cycle.year,
        &id,
        &record_key(act, &s.user.org, &s.user.uid),
    )
    .await?
    .filter(|st| st.status != "draft")
    .ok_or(AppError::NotFound)?;
    let mut p = ActivityPage::new(&state, &s, &format!("{} submitted", act.name));
    p.notice = Some(format!(
        "{} was submitted at {}.",
        act.name,
        when(&state, st.submitted_at.unwrap_or(0))
    ));
    p.intro.push("We have emailed a confirmation to you and your account managers. A copy of what you submitted is kept in My Activity, under completed activity, where you can print it.".into());
    if act.decided {
        p.intro.push(
            "The Standards and Testing Agency will decide it; you will be emailed the outcome."
                .into(),
        );
    }
    p.links
        .push(("/activities".into(), "Go to My Activity".into()));
    p.links
        .push((format!("/activities/{id}"), format!("View {}", act.name)));
    Ok(p.respond())
}

/// Save the form as the user types (the page's script posts it; CSRF in a header). Each form
/// decides what it keeps.
async fn autosave(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    check_csrf(&s.csrf, given)?;
    let f = FormData::parse(&body);
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    match act.form {
        Form::Hdf => hdf::autosave(&state, &s, &id, &f).await?,
        Form::Ta => ta::autosave(&state, &s, &id, &f).await?,
        Form::Attendance => attendance::autosave(&state, &s, &id, &f).await?,
        Form::Registration => registration::autosave(&state, &s, &id, &f).await?,
        Form::Fields => fields::autosave(&state, &s, &id, &f).await?,
        Form::Messages | Form::Materials | Form::LaChoice => return Err(AppError::NotFound),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every activity's status for each school of the signed-in LA or trust (seed 000: MAT users
/// see every activity's status for each academy). Access arrangements activities are left out
/// for users without that permission (their existence can be sensitive); LAs see them through
/// the access arrangements report.
async fn schools_status(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    let schools = match s.user.kind {
        OrgKind::La if s.user.may(Action::ManageTa) || s.user.may(Action::LaActivities) => {
            db::schools_of(&state.db, Some(&s.user.org), None).await?
        }
        OrgKind::Mat if s.user.may(Action::ViewResults) => {
            db::schools_of(&state.db, None, Some(&s.user.org)).await?
        }
        _ => return Err(AppError::Forbidden),
    };
    let acts: Vec<&Activity> = state
        .cycle
        .activities
        .iter()
        .filter(|a| {
            a.audiences
                .iter()
                .any(|x| x.orgs == OrgKind::Ks2School && x.permission != Action::AccessArrangements)
        })
        .collect();
    let mut p = ActivityPage::new(&state, &s, "Your schools' activities");
    p.back = Some("/activities".into());
    let mut sec = Section {
        head: std::iter::once("School".to_string())
            .chain(acts.iter().map(|a| a.name.clone()))
            .collect(),
        ..Default::default()
    };
    let mut rows: Vec<std::collections::HashMap<String, Status>> = Vec::new();
    for a in &acts {
        rows.push(statuses(&state.db, state.cycle.year, &a.id).await?);
    }
    for o in &schools {
        let mut cells = vec![format!("{} ({})", o.name, o.id)];
        for (a, st) in acts.iter().zip(&rows) {
            cells.push(if a.audience(o.kind, o.school_type.as_deref()).is_none() {
                "not applicable".into()
            } else {
                state_label(&st.get(&o.id).cloned()).to_string()
            });
        }
        sec.rows.push(Row {
            cells,
            links: Vec::new(),
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No schools.".into());
    }
    p.sections.push(sec);
    Ok(p.respond())
}

/// The LA's report of its schools' access arrangements applications (ARA 3.2: early opening,
/// additional time, timetable variations), to plan monitoring visits: counts of pupils, not
/// who they are. `?format=csv` downloads it.
async fn aa_report(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, AppError> {
    if s.user.kind != OrgKind::La || !s.user.may(Action::LaActivities) {
        return Err(AppError::Forbidden);
    }
    let schools = db::schools_of(&state.db, Some(&s.user.org), None).await?;
    let head = [
        "School",
        "DfE number",
        "Application",
        "Status",
        "Submitted",
        "Pupils",
    ];
    let mut lines: Vec<Vec<String>> = Vec::new();
    for a in state.cycle.activities.iter().filter(|a| {
        a.form == Form::Fields
            && a.audiences
                .iter()
                .any(|x| x.permission == Action::AccessArrangements)
    }) {
        let rows = statuses(&state.db, state.cycle.year, &a.id).await?;
        for o in &schools {
            let Some(st) = rows.get(&o.id).filter(|st| st.status != "draft") else {
                continue;
            };
            let pupils: usize = a
                .fields
                .iter()
                .filter(|f| f.kind == cycle::FieldKind::Pupils)
                .map(|f| {
                    st.draft
                        .get(&f.name)
                        .and_then(|v| v.as_array())
                        .map_or(0, Vec::len)
                })
                .sum();
            lines.push(vec![
                o.name.clone(),
                o.id.clone(),
                a.name.clone(),
                st.status.clone(),
                st.submitted_at.map(|t| when(&state, t)).unwrap_or_default(),
                pupils.to_string(),
            ]);
        }
    }
    record_access(&state, &s.user, "aa-report-viewed", s.user.org.clone()).await;
    if q.get("format").map(String::as_str) == Some("csv") {
        return Ok(csv_download(
            &format!("{}-access-arrangements.csv", s.user.org),
            csv_of(&head, lines.into_iter()),
        ));
    }
    let mut p = ActivityPage::new(
        &state,
        &s,
        "Access arrangements applications of your schools",
    );
    p.back = Some("/activities".into());
    p.intro.push("Applications for early opening, additional time, compensatory marks and timetable variations, to help plan monitoring visits. Pupils are counted, not named.".into());
    let mut sec = Section {
        head: head.iter().map(|h| h.to_string()).collect(),
        rows: lines
            .into_iter()
            .map(|cells| Row {
                cells,
                links: Vec::new(),
            })
            .collect(),
        ..Default::default()
    };
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No applications yet.".into());
    }
    p.sections.push(sec);
    p.links.push((
        "/activities/access-arrangements?format=csv".into(),
        "Download this report (CSV)".into(),
    ));
    Ok(p.respond())
}

// ---------- the operator ----------

/// Any activity's submissions as CSV (for `fields` forms every answer; for the contract's
/// forms the statuses, with the data itself in the pipeline export).
async fn submissions(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    operator(&s)?;
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?.clone();
    let body = fields::submissions_csv(&state, &act).await?;
    record_access(&state, &s.user, "activity-submissions-exported", id.clone()).await;
    Ok(csv_download(&format!("{id}-submissions.csv"), body))
}

/// An audit record of a change the signed-in user made to an activity of `org`.
pub fn audited<'a>(
    s: &'a Signed,
    org: &'a str,
    action: &'a str,
    target: &'a str,
    detail: String,
    addr: Option<Extension<ClientAddr>>,
) -> db::Audit<'a> {
    db::Audit {
        actor: Some(&s.user.email),
        org_id: Some(org),
        action,
        target: Some(target),
        detail,
        ip: ip(addr),
    }
}

/// The client's address for the audit log.
pub fn ip(addr: Option<Extension<ClientAddr>>) -> Option<String> {
    Some(ClientAddr::ip_of(addr).to_string())
}

fn operator(s: &Signed) -> Result<(), AppError> {
    s.require(Action::Operate)
}

/// Every organisation in an activity's audience with its standing (one query per table).
async fn audience_of(
    state: &AppState,
    act: &Activity,
) -> anyhow::Result<Vec<(db::Org, Option<Status>, bool)>> {
    let mut out = Vec::new();
    let mut rows = statuses(&state.db, state.cycle.year, &act.id).await?;
    if act.per_user {
        // Each user's own record (`org:user`): an organisation counts as submitted once any of
        // its users has submitted, as started once any has started.
        let mut by_org: std::collections::HashMap<String, Status> = Default::default();
        for (key, st) in rows {
            let org = key.split(':').next().unwrap_or("").to_string();
            let better = by_org
                .get(&org)
                .is_none_or(|cur| cur.status == "draft" && st.status != "draft");
            if better {
                by_org.insert(org, st);
            }
        }
        rows = by_org;
    }
    for kind in [OrgKind::Ks2School, OrgKind::La, OrgKind::Mat] {
        if !act.audiences.iter().any(|a| a.orgs == kind) {
            continue;
        }
        for o in db::orgs_of_kind(&state.db, kind).await? {
            if let Some(a) = act.audience(o.kind, o.school_type.as_deref()) {
                let mandatory = a.mandatory;
                let st = rows.get(&o.id).cloned();
                out.push((o, st, mandatory));
            }
        }
    }
    Ok(out)
}

fn state_label(st: &Option<Status>) -> &'static str {
    match st.as_ref().map(|s| s.status.as_str()) {
        None => "not started",
        Some("draft") => "draft",
        Some("submitted") => "submitted",
        Some("accepted") => "accepted",
        Some("rejected") => "rejected",
        Some(_) => "other",
    }
}

async fn operator_list(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    operator(&s)?;
    let mut p = ActivityPage::new(&state, &s, "Activities: every school's status");
    let mut sec = Section {
        head: vec![
            "Activity".into(),
            "Audience".into(),
            "Submitted".into(),
            "Draft".into(),
            "Not started".into(),
            "".into(),
        ],
        ..Default::default()
    };
    for act in &state.cycle.activities {
        let all = audience_of(&state, act).await?;
        let count = |l: &str| all.iter().filter(|(_, st, _)| state_label(st) == l).count();
        sec.rows.push(Row {
            cells: vec![
                act.name.clone(),
                all.len().to_string(),
                (count("submitted") + count("accepted") + count("rejected")).to_string(),
                count("draft").to_string(),
                count("not started").to_string(),
            ],
            links: vec![(
                format!("/operator/activities/{}", act.id),
                format!("Status: {}", act.name),
            )],
        });
    }
    p.sections.push(sec);
    p.links.push((
        "/operator/export".into(),
        "Export pupils, attendance and TA for the release pipeline".into(),
    ));
    Ok(p.respond())
}

#[derive(Deserialize, Default)]
struct StatusQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    show: String,
    #[serde(default)]
    chased: Option<usize>,
}

async fn operator_status(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Result<Response, AppError> {
    operator(&s)?;
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    let all = audience_of(&state, act).await?;
    let mut p = ActivityPage::new(&state, &s, &act.name);
    p.caption = "Every organisation's status".into();
    p.back = Some("/operator/activities".into());
    p.search = Some(q.q.clone());
    p.search_label = "Search by name or DfE number".into();
    if let Some(n) = q.chased {
        p.notice = Some(format!("{n} organisations were chased by email."));
    }
    let outstanding = all
        .iter()
        .filter(|(_, st, m)| *m && matches!(state_label(st), "not started" | "draft"))
        .count();
    p.intro.push(format!(
        "{} organisations in the audience; {} mandatory and not yet submitted.",
        all.len(),
        outstanding
    ));
    if outstanding > 0 {
        p.form = Some(PageForm {
            action: format!("/operator/activities/{}/chase", act.id),
            submit: format!("Chase the {outstanding} outstanding by email"),
            ..Default::default()
        });
    }
    let needle = q.q.trim().to_lowercase();
    let mut sec = Section {
        head: vec![
            "Organisation".into(),
            "DfE number or code".into(),
            "Status".into(),
            "Submitted".into(),
            "".into(),
        ],
        ..Default::default()
    };
    for (o, st, _) in &all {
        let label = state_label(st);
        if !needle.is_empty() && !o.name.to_lowercase().contains(&needle) && !o.id.contains(&needle)
        {
            continue;
        }
        if !q.show.is_empty() && q.show != label {
            continue;
        }
        if sec.rows.len() >= 500 {
            sec.paragraphs = vec!["The first 500 are shown: search to narrow the list.".into()];
            break;
        }
        let mut links = vec![(
            format!("/operator/activities/{}/orgs/{}/reopen", act.id, o.id),
            format!("Reopen for {}", o.name),
        )];
        if let Some(a) = act.audience(o.kind, o.school_type.as_deref()) {
            for g in a.requires.iter().chain(a.unless.iter()) {
                if let Gate::Operator(n) = g {
                    links.push((
                        format!("/operator/activities/{}/orgs/{}/gate/{n}", act.id, o.id),
                        format!("Record {} for {}", g.label(&state.cycle), o.name),
                    ));
                }
            }
        }
        if act.decided && label == "submitted" {
            links.push((
                format!("/operator/activities/{}/orgs/{}/decide", act.id, o.id),
                format!("Decide for {}", o.name),
            ));
        }
        sec.rows.push(Row {
            cells: vec![
                o.name.clone(),
                o.id.clone(),
                label.to_string(),
                st.as_ref()
                    .and_then(|s| s.submitted_at)
                    .map(|t| when(&state, t))
                    .unwrap_or_default(),
            ],
            links,
        });
    }
    p.sections.push(sec);
    p.links.push((
        format!("/operator/activities/{}/submissions.csv", act.id),
        "Download every submission (CSV)".into(),
    ));
    for (i, a) in act.audiences.iter().enumerate() {
        let now = audience_now(&state, act, a).await;
        p.links.push((
            format!("/operator/activities/{}/windows/{i}", act.id),
            format!(
                "Change the window for {}: {} to {}",
                audience_label(a),
                when(&state, now.opens),
                when(&state, now.closes)
            ),
        ));
    }
    match act.form {
        Form::Messages => p.links.push((
            format!("/operator/messages/{}", act.id),
            "Read and answer messages".into(),
        )),
        Form::Materials => p.links.push((
            format!("/operator/activities/{}/materials", act.id),
            "Publish files".into(),
        )),
        _ => {}
    }
    Ok(p.respond())
}

fn audience_label(a: &Audience) -> String {
    match a.orgs {
        OrgKind::La => "local authorities".into(),
        OrgKind::Mat => "trusts".into(),
        _ if a.school_types.is_empty() => "all schools".into(),
        _ => format!(
            "{} schools",
            a.school_types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A local time for a form field: YYYY-MM-DDTHH:MM.
fn local(state: &AppState, t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| {
            t.to_zoned(state.tz.clone())
                .strftime("%Y-%m-%dT%H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

fn parse_local(state: &AppState, v: &str) -> Option<i64> {
    let dt: jiff::civil::DateTime = v.trim().parse().ok()?;
    dt.to_zoned(state.tz.clone())
        .ok()
        .map(|z| z.timestamp().as_second())
}

fn window_form(
    state: &AppState,
    s: &Signed,
    act: &Activity,
    n: usize,
    a: &Audience,
    v: [String; 3],
) -> ActivityPage {
    let mut p = ActivityPage::new(
        state,
        s,
        &format!("{}: window for {}", act.name, audience_label(a)),
    );
    p.back = Some(format!("/operator/activities/{}", act.id));
    p.intro.push("Local times (Europe/London). The change applies at once, without a restart, on every node within 5 seconds, and is recorded in the audit log.".into());
    let hint = "For example, 2025-05-30T17:00";
    p.form = Some(PageForm {
        action: format!("/operator/activities/{}/windows/{n}", act.id),
        fields: vec![
            Field::input("text", "opens", "Opens")
                .value(&v[0])
                .hint(hint),
            Field::input("text", "closes", "Closes (the deadline)")
                .value(&v[1])
                .hint(hint),
            Field::input("text", "late_until", "Late additions until (optional)")
                .value(&v[2])
                .hint("Empty for none"),
        ],
        submit: "Save window".into(),
        ..Default::default()
    });
    p
}

async fn window_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, n)): Path<(String, usize)>,
) -> Result<Response, AppError> {
    operator(&s)?;
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    let a = act.audiences.get(n).ok_or(AppError::NotFound)?;
    let now = audience_now(&state, act, a).await;
    let v = [
        local(&state, now.opens),
        local(&state, now.closes),
        now.late_until.map(|t| local(&state, t)).unwrap_or_default(),
    ];
    Ok(window_form(&state, &s, act, n, a, v).respond())
}

async fn window_edit(
    State(state): State<AppState>,
    s: Signed,
    Path((id, n)): Path<(String, usize)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    operator(&s)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    let a = act.audiences.get(n).ok_or(AppError::NotFound)?;
    let v = [f.get("opens"), f.get("closes"), f.get("late_until")];
    let mut p = window_form(&state, &s, act, n, a, v.clone());
    let opens = parse_local(&state, &v[0]);
    let closes = parse_local(&state, &v[1]);
    let late = if v[2].trim().is_empty() {
        Ok(None)
    } else {
        parse_local(&state, &v[2]).map(Some).ok_or(())
    };
    if opens.is_none() {
        p.error("opens", "Enter when it opens, as 2025-05-15T08:00");
    }
    if closes.is_none() {
        p.error("closes", "Enter the deadline, as 2025-05-30T17:00");
    }
    if late.is_err() {
        p.error(
            "late_until",
            "Enter when late additions end, as 2025-05-15T23:59, or leave it empty",
        );
    }
    if let (Some(o), Some(c)) = (opens, closes)
        && c <= o
    {
        p.error("closes", "The deadline must be after the opening time");
    }
    if let (Some(c), Ok(Some(l))) = (closes, late)
        && l <= c
    {
        p.error("late_until", "Late additions must end after the deadline");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let (opens, closes, late) = (
        opens.unwrap_or(0),
        closes.unwrap_or(0),
        late.unwrap_or(None),
    );
    let year = state.cycle.year as i64;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "DELETE FROM activity_windows WHERE cycle = $1 AND activity = $2 AND audience = $3",
    )
    .bind(year)
    .bind(&act.id)
    .bind(n as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO activity_windows (cycle, activity, audience, opens, closes, late_until, by_email, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(year)
        .bind(&act.id)
        .bind(n as i64)
        .bind(opens)
        .bind(closes)
        .bind(late)
        .bind(&s.user.email)
        .bind(state.clock.now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.windows.refresh(&state.db, state.cycle.year).await?;
    db::audit(
        &state.db,
        audited(
            &s,
            &s.user.org,
            "activity-window-changed",
            &act.id,
            format!("{}: {} to {}", audience_label(a), v[0], v[1]),
            addr,
        ),
        state.clock.now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/operator/activities/{}", act.id)).into_response())
}

async fn chase(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    operator(&s)?;
    check_csrf(&s.csrf, &FormData::parse(&body).get("csrf"))?;
    let act = state.cycle.activity(&id).ok_or(AppError::NotFound)?;
    let mut n = 0;
    for (o, st, mandatory) in audience_of(&state, act).await? {
        if !mandatory || !matches!(state_label(&st), "not started" | "draft") {
            continue;
        }
        let Some(standing) = standing(&state, act, &o).await? else {
            continue;
        };
        if matches!(standing.window, Window::NotYet(_)) {
            continue;
        }
        if act.sends(EmailEvent::Chased) {
            let text = format!(
                "Our records show that {} has not yet been submitted for {} ({}). {}\n\nSign in to the NCA Portal and open My Activity to complete it: {}/activities/{}",
                act.name,
                o.name,
                o.id,
                standing.due_text(&state),
                state.public_url,
                act.id
            );
            email(
                &state,
                act,
                &o.id,
                &format!("Reminder: {}", act.name),
                &text,
                &mut Vec::new(),
            )
            .await?;
        }
        n += 1;
    }
    db::audit(
        &state.db,
        audited(
            &s,
            &s.user.org,
            "activity-chased",
            &act.id,
            format!("{n} organisations"),
            addr,
        ),
        state.clock.now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/operator/activities/{}?chased={n}", act.id)).into_response())
}

async fn operator_target(
    state: &AppState,
    s: &Signed,
    id: &str,
    org: &str,
) -> Result<(Activity, db::Org), AppError> {
    operator(s)?;
    let act = state.cycle.activity(id).ok_or(AppError::NotFound)?.clone();
    let o = db::org(&state.db, org).await?.ok_or(AppError::NotFound)?;
    if act.audience(o.kind, o.school_type.as_deref()).is_none() {
        return Err(AppError::NotFound);
    }
    Ok((act, o))
}

/// Record one of the operator's exceptions for an activity and organisation (a reopening
/// until a time, or a gate), replacing an earlier one of the same kind, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn record_exception(
    state: &AppState,
    act: &str,
    org: &str,
    what: &str,
    until: Option<i64>,
    reason: &str,
    by: &str,
    at: i64,
) -> sqlx::Result<()> {
    let year = state.cycle.year as i64;
    let mut tx = state.db.begin().await?;
    sqlx::query("DELETE FROM activity_exceptions WHERE cycle = $1 AND activity = $2 AND org_id = $3 AND what = $4")
        .bind(year)
        .bind(act)
        .bind(org)
        .bind(what)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO activity_exceptions (cycle, activity, org_id, what, until_at, reason, by_email, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(year)
    .bind(act)
    .bind(org)
    .bind(what)
    .bind(until)
    .bind(reason)
    .bind(by)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

fn reopen_form(
    state: &AppState,
    s: &Signed,
    act: &Activity,
    o: &db::Org,
    reason: &str,
    days: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, &format!("Reopen {} for {}", act.name, o.name));
    p.back = Some(format!("/operator/activities/{}", act.id));
    p.intro.push("The school can change and submit the activity again until the time you give. The reopening and its reason are recorded in the audit log.".into());
    p.form = Some(PageForm {
        action: format!("/operator/activities/{}/orgs/{}/reopen", act.id, o.id),
        fields: vec![
            Field::input("textarea", "reason", "Reason for reopening")
                .value(reason)
                .hint("For example, the helpline agreed a late registration on the telephone."),
            Field::input("text", "days", "Days to reopen for")
                .value(days)
                .hint("From now; 1 to 30."),
        ],
        submit: "Reopen".into(),
        ..Default::default()
    });
    p
}

async fn reopen_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    Ok(reopen_form(&state, &s, &act, &o, "", "7").respond())
}

async fn reopen(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let (reason, days) = (
        f.get("reason").trim().to_string(),
        f.get("days").trim().to_string(),
    );
    let mut p = reopen_form(&state, &s, &act, &o, &reason, &days);
    if reason.is_empty() {
        p.error("reason", "Enter the reason for reopening");
    }
    let n: i64 = match days.parse() {
        Ok(n) if (1..=30).contains(&n) => n,
        _ => {
            p.error("days", "Enter a number of days from 1 to 30");
            0
        }
    };
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let now = state.clock.now();
    let until = now + n * 86_400;
    record_exception(
        &state,
        &act.id,
        &o.id,
        "reopen",
        Some(until),
        &reason,
        &s.user.email,
        now,
    )
    .await?;
    db::audit(
        &state.db,
        audited(
            &s,
            &o.id,
            "activity-reopened",
            &act.id,
            format!("until {until}: {reason}"),
            addr,
        ),
        now,
    )
    .await?;
    if act.sends(EmailEvent::Reopened) {
        let text = format!(
            "{} has been reopened for {} ({}) until {}.\n\nReason: {reason}\n\nSign in to the NCA Portal and open My Activity to make your changes and submit again.",
            act.name,
            o.name,
            o.id,
            when(&state, until)
        );
        email(
            &state,
            &act,
            &o.id,
            &format!("{} reopened", act.name),
            &text,
            &mut Vec::new(),
        )
        .await?;
    }
    Ok(Redirect::to(&format!("/operator/activities/{}?q={}", act.id, o.id)).into_response())
}

fn gate_form(
    state: &AppState,
    s: &Signed,
    act: &Activity,
    o: &db::Org,
    gate: &Gate,
    reason: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(
        state,
        s,
        &format!("Record {} for {}", gate.label(&state.cycle), o.name),
    );
    p.back = Some(format!("/operator/activities/{}", act.id));
    p.intro.push(format!(
        "{} is reachable for this school only once this is recorded.",
        act.name
    ));
    let Gate::Operator(n) = gate else { return p };
    p.form = Some(PageForm {
        action: format!("/operator/activities/{}/orgs/{}/gate/{n}", act.id, o.id),
        fields: vec![Field::input("textarea", "reason", "Evidence or reason").value(reason)],
        submit: "Record".into(),
        ..Default::default()
    });
    p
}

fn operator_gate(act: &Activity, o: &db::Org, name: &str) -> Result<Gate, AppError> {
    act.audience(o.kind, o.school_type.as_deref())
        .and_then(|a| {
            a.requires
                .iter()
                .chain(a.unless.iter())
                .find(|g| **g == Gate::Operator(name.to_string()))
        })
        .cloned()
        .ok_or(AppError::NotFound)
}

async fn gate_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org, name)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    let g = operator_gate(&act, &o, &name)?;
    Ok(gate_form(&state, &s, &act, &o, &g, "").respond())
}

async fn gate(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org, name)): Path<(String, String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    let g = operator_gate(&act, &o, &name)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let reason = f.get("reason").trim().to_string();
    if reason.is_empty() {
        let mut p = gate_form(&state, &s, &act, &o, &g, "");
        p.error("reason", "Enter the evidence or reason");
        return Ok(p.respond());
    }
    let now = state.clock.now();
    let what = format!("gate:{name}");
    record_exception(
        &state,
        &act.id,
        &o.id,
        &what,
        None,
        &reason,
        &s.user.email,
        now,
    )
    .await?;
    db::audit(
        &state.db,
        audited(
            &s,
            &o.id,
            "activity-gate-recorded",
            &act.id,
            format!("{name}: {reason}"),
            addr,
        ),
        now,
    )
    .await?;
    Ok(Redirect::to(&format!("/operator/activities/{}?q={}", act.id, o.id)).into_response())
}

/// Record a decision on an organisation's submission (`choice` is accepted or rejected, with
/// its reason and time) and keep the letter in its audit trail. Only a submission awaiting a
/// decision changes.
pub async fn record_decision(
    state: &AppState,
    act: &Activity,
    org: &str,
    (choice, reason, at): (&str, &str, i64),
    letter: &Copy,
    title: &str,
    by: &str,
) -> Result<(), AppError> {
    sqlx::query(
        "UPDATE activity_status SET status = $1, decision = $2, decided_at = $3 WHERE cycle = $4 AND activity = $5 AND org_id = $6 AND status = 'submitted'",
    )
    .bind(choice)
    .bind(reason)
    .bind(at)
    .bind(state.cycle.year as i64)
    .bind(&act.id)
    .bind(org)
    .execute(&state.db)
    .await?;
    let body = letter
        .render()
        .map_err(|e| AppError::Unexpected(e.into()))?;
    add_document(state, act, org, "letter", title, &body, "", by).await?;
    Ok(())
}

fn decide_form(
    state: &AppState,
    s: &Signed,
    act: &Activity,
    o: &db::Org,
    choice: &str,
    reason: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, &format!("Decide {} for {}", act.name, o.name));
    p.back = Some(format!("/operator/activities/{}", act.id));
    p.form = Some(PageForm {
        action: format!("/operator/activities/{}/orgs/{}/decide", act.id, o.id),
        fields: vec![
            radios(
                "decision",
                "Decision",
                &[("accepted", "Accept"), ("rejected", "Reject")],
                choice,
            ),
            Field::input("textarea", "reason", "Reason, as the school will read it").value(reason),
        ],
        submit: "Record decision".into(),
        ..Default::default()
    });
    p
}

async fn decide_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    if !act.decided {
        return Err(AppError::NotFound);
    }
    Ok(decide_form(&state, &s, &act, &o, "", "").respond())
}

async fn decide(
    State(state): State<AppState>,
    s: Signed,
    Path((id, org)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (act, o) = operator_target(&state, &s, &id, &org).await?;
    if !act.decided {
        return Err(AppError::NotFound);
    }
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let (choice, reason) = (f.get("decision"), f.get("reason").trim().to_string());
    let mut p = decide_form(&state, &s, &act, &o, &choice, &reason);
    if !matches!(choice.as_str(), "accepted" | "rejected") {
        p.error("decision", "Select accept or reject");
    }
    if reason.is_empty() {
        p.error("reason", "Enter the reason for the decision");
    }
    let st = status(&state.db, state.cycle.year, &act.id, &o.id).await?;
    if st.as_ref().map(|s| s.status.as_str()) != Some("submitted") {
        p.error("decision", "There is no submission awaiting a decision");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let now = state.clock.now();
    let word = if choice == "accepted" {
        "accepted"
    } else {
        "rejected"
    };
    let letter = Copy {
        summary: vec![
            ("School".into(), format!("{} ({})", o.name, o.id)),
            ("Activity".into(), act.name.clone()),
            ("Decision".into(), word.into()),
            ("Reason".into(), reason.clone()),
            ("Date".into(), when(&state, now)),
        ],
        sections: Vec::new(),
    };
    record_decision(
        &state,
        &act,
        &o.id,
        (&choice, &reason, now),
        &letter,
        &format!("{}: {word}", act.name),
        &s.user.email,
    )
    .await?;
    db::audit(
        &state.db,
        audited(
            &s,
            &o.id,
            "activity-decided",
            &act.id,
            format!("{word}: {reason}"),
            addr,
        ),
        now,
    )
    .await?;
    if act.sends(EmailEvent::Decided) {
        let text = format!(
            "Your submission of {} for {} ({}) has been {word}.\n\nReason: {reason}\n\nThe letter is in the portal: My Activity, completed activity.",
            act.name, o.name, o.id
        );
        let mut to: Vec<String> = st.and_then(|s| s.submitted_by).into_iter().collect();
        email(
            &state,
            &act,
            &o.id,
            &format!("{}: {word}", act.name),
            &text,
            &mut to,
        )
        .await?;
    }
    Ok(Redirect::to(&format!("/operator/activities/{}?q={}", act.id, o.id)).into_response())
}
