//! Pupil registration (ARA 5.2 to 5.4): the school's pupil list, pre-filled from the census
//! (`nca-portal activities census`), with pupils added and edited one at a time or by CSV
//! upload, a status per subject, and a submission by the deadline (pupils who arrive later are
//! still added until `late_until`). Every pupil is checked the same way wherever it comes from:
//! the UPN and its check letter, legal names, a plausible date of birth, gender, statuses.

use axum::Router;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::domain::{Gender, RegStatus, Upn};

use super::{
    ActivityPage, Copy, Ctx, Form, PageForm, ctx, keep_report, radios, read_upload, record_access,
    report_csv, select, submit,
};
use crate::AppState;
use crate::auth::session::{Signed, check_csrf};
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Row, Section};

/// A registered pupil, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pupil {
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub dob: String,
    pub gender: String,
    /// reading, gps, maths
    pub reg: [String; 3],
}

pub const SUBJECTS: [(&str, &str); 3] = [
    ("reading_reg", "English reading"),
    ("gps_reg", "English grammar, punctuation and spelling"),
    ("maths_reg", "Mathematics"),
];

const STATUSES: &[(&str, &str)] = &[
    ("registered", "Registered"),
    ("below", "Working below the standard of the tests"),
    ("future", "Taking the test in a future year"),
    ("previous", "Took the test in a previous year"),
    ("left", "Left the school"),
    ("unregistered", "Not on the school roll"),
];

pub fn status_label(s: &str) -> &str {
    STATUSES.iter().find(|(v, _)| *v == s).map_or(s, |(_, l)| l)
}

/// A legal name: letters (any alphabet), with spaces, hyphens, apostrophes and full stops
/// between them; 1 to 50 characters.
pub fn legal_name(s: &str) -> Result<(), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.chars().count() > 50 {
        return Err("is longer than 50 characters".into());
    }
    if !s.chars().next().is_some_and(char::is_alphabetic) {
        return Err("must start with a letter".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_alphabetic() || matches!(c, ' ' | '-' | '\'' | '\u{2019}' | '.')))
    {
        return Err(format!(
            "contains \u{201c}{c}\u{201d}: use the pupil's legal name, in letters, spaces, hyphens and apostrophes"
        ));
    }
    Ok(())
}

/// The dates of birth accepted for a cycle: pupils aged 8 to 14 on 31 August of the cycle's
/// year (born 1 September `year-15` to 31 August `year-8`), which covers pupils a year or more
/// outside their year group.
pub fn dob_range(year: i32) -> (String, String) {
    (
        format!("{}-09-01", year - 15),
        format!("{}-08-31", year - 8),
    )
}

/// Check one pupil's fields; each problem names its column.
pub fn check(
    year: i32,
    f: &[(&str, &str); 8],
) -> Result<Pupil, Vec<(&'static str, String, String)>> {
    let get = |k: &str| {
        f.iter()
            .find(|(n, _)| *n == k)
            .map_or("", |(_, v)| v.trim())
    };
    let mut errors: Vec<(&'static str, String, String)> = Vec::new();
    let upn = get("upn").to_uppercase();
    if let Err(e) = Upn::parse(&upn) {
        errors.push(("upn", upn.clone(), format!("UPN {e}")));
    }
    for (col, label) in [("surname", "Surname"), ("forename", "First name")] {
        if let Err(e) = legal_name(get(col)) {
            errors.push((col, get(col).to_string(), format!("{label} {e}")));
        }
    }
    let dob = match crate::ks3::parse_dob(get("dob")) {
        Ok(d) => {
            let (lo, hi) = dob_range(year);
            if d < lo || d > hi {
                errors.push((
                    "dob",
                    get("dob").to_string(),
                    format!("Date of birth must be between {lo} and {hi} for the {year} tests"),
                ));
            }
            d
        }
        Err(e) => {
            errors.push(("dob", get("dob").to_string(), format!("Date of birth: {e}")));
            String::new()
        }
    };
    let gender = get("gender").to_uppercase();
    if Gender::parse(&gender).is_err() {
        errors.push(("gender", gender.clone(), "Gender must be F or M".into()));
    }
    let mut reg: [String; 3] = Default::default();
    for (i, (col, label)) in SUBJECTS.iter().enumerate() {
        let v = get(col).to_lowercase();
        let v = if v.is_empty() {
            "registered".to_string()
        } else {
            v
        };
        match RegStatus::parse(&v) {
            Ok(_) => reg[i] = v,
            Err(e) => errors.push((col, v, format!("{label} status: {e}"))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Pupil {
        upn,
        surname: get("surname").to_string(),
        forename: get("forename").to_string(),
        dob,
        gender,
        reg,
    })
}

// ---------- storage ----------

pub async fn pupils(db: &Db, year: i32, laestab: &str) -> sqlx::Result<Vec<Pupil>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT * FROM reg_pupils WHERE cycle = $1 AND laestab = $2 ORDER BY surname, forename, upn",
    )
    .bind(year as i64)
    .bind(laestab)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Pupil {
            upn: r.get("upn"),
            surname: r.get("surname"),
            forename: r.get("forename"),
            dob: r.get("dob"),
            gender: r.get("gender"),
            reg: [r.get("reading_reg"), r.get("gps_reg"), r.get("maths_reg")],
        })
        .collect())
}

/// Add or replace pupils in one transaction: all of them or none.
pub async fn upsert(
    db: &Db,
    year: i32,
    laestab: &str,
    list: &[Pupil],
    source: &str,
    late: bool,
    now: i64,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for p in list {
        sqlx::query(
            "INSERT INTO reg_pupils (cycle, laestab, upn, surname, forename, dob, gender, reading_reg, gps_reg, maths_reg, source, late, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (cycle, laestab, upn) DO UPDATE SET surname = excluded.surname, forename = excluded.forename, \
             dob = excluded.dob, gender = excluded.gender, reading_reg = excluded.reading_reg, gps_reg = excluded.gps_reg, \
             maths_reg = excluded.maths_reg, updated_at = excluded.updated_at",
        )
        .bind(year as i64)
        .bind(laestab)
        .bind(&p.upn)
        .bind(&p.surname)
        .bind(&p.forename)
        .bind(&p.dob)
        .bind(&p.gender)
        .bind(&p.reg[0])
        .bind(&p.reg[1])
        .bind(&p.reg[2])
        .bind(source)
        .bind(i64::from(late))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Read a CSV of the contract's `pupils` columns: every row checked, every problem kept as
/// (row, column, value, problem). `laestab`, when given, must be the school's own.
pub fn parse_csv(
    year: i32,
    bytes: &[u8],
    laestab: Option<&str>,
) -> (Vec<(usize, String, Pupil)>, Vec<super::RowProblem>) {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let head: Vec<String> = match rdr.headers() {
        Ok(h) => h
            .iter()
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_lowercase())
            .collect(),
        Err(e) => {
            problems.push((
                1,
                String::new(),
                String::new(),
                format!("not a readable CSV: {e}"),
            ));
            return (out, problems);
        }
    };
    let required = [
        "upn",
        "surname",
        "forename",
        "dob",
        "gender",
        "reading_reg",
        "gps_reg",
        "maths_reg",
    ];
    for c in required {
        if !head.iter().any(|h| h == c) {
            problems.push((
                1,
                c.to_string(),
                String::new(),
                format!("the header has no `{c}` column"),
            ));
        }
    }
    let need_laestab = laestab.is_none();
    if need_laestab && !head.iter().any(|h| h == "laestab") {
        problems.push((
            1,
            "laestab".into(),
            String::new(),
            "the header has no `laestab` column".into(),
        ));
    }
    if !problems.is_empty() {
        return (out, problems);
    }
    let col = |name: &str| head.iter().position(|h| h == name);
    let mut seen = std::collections::HashSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let row = i + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                problems.push((
                    row,
                    String::new(),
                    String::new(),
                    format!("not readable: {e}"),
                ));
                continue;
            }
        };
        let cell = |name: &str| col(name).and_then(|c| rec.get(c)).unwrap_or("");
        let school = cell("laestab").trim().to_string();
        let school = match laestab {
            Some(own) => {
                if !school.is_empty() && school != own {
                    problems.push((
                        row,
                        "laestab".into(),
                        school.clone(),
                        format!("this upload is for school {own} only"),
                    ));
                }
                own.to_string()
            }
            None => school,
        };
        let f = [
            ("upn", cell("upn")),
            ("surname", cell("surname")),
            ("forename", cell("forename")),
            ("dob", cell("dob")),
            ("gender", cell("gender")),
            ("reading_reg", cell("reading_reg")),
            ("gps_reg", cell("gps_reg")),
            ("maths_reg", cell("maths_reg")),
        ];
        match check(year, &f) {
            Ok(p) => {
                if !seen.insert(p.upn.clone()) {
                    problems.push((
                        row,
                        "upn".into(),
                        p.upn.clone(),
                        "this UPN is on an earlier row too".into(),
                    ));
                } else {
                    out.push((row, school, p));
                }
            }
            Err(es) => problems.extend(es.into_iter().map(|(c, v, e)| (row, c.to_string(), v, e))),
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push((
            2,
            String::new(),
            String::new(),
            "the file has no pupils".into(),
        ));
    }
    (out, problems)
}

// ---------- pages ----------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/pupils/new", get(new_page).post(add))
        .route("/activities/{id}/pupils/{upn}", get(edit_page).post(edit))
        .route("/activities/{id}/pupils.csv", get(download))
}

async fn reg_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::Registration, None).await
}

pub async fn overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let c = reg_ctx(state, s, id).await?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    record_access(state, &s.user, "registration-viewed", c.audit_target()).await;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.warning = c.notice(state);
    p.notice = notice;
    p.intro.push(c.act.description.clone());
    p.intro.push(format!(
        "{} pupils on your list. {}",
        list.len(),
        c.standing.status_text(state, &c.act)
    ));
    let editable = c.standing.window.is_open();
    let mut sec = Section {
        heading: "Pupils".into(),
        head: vec![
            "UPN".into(),
            "Name".into(),
            "Date of birth".into(),
            "Gender".into(),
            "Reading".into(),
            "GPS".into(),
            "Maths".into(),
        ],
        ..Default::default()
    };
    if editable {
        sec.head.push(String::new());
    }
    for x in &list {
        sec.rows.push(Row {
            cells: vec![
                x.upn.clone(),
                format!("{} {}", x.forename, x.surname),
                x.dob.clone(),
                x.gender.clone(),
                x.reg[0].clone(),
                x.reg[1].clone(),
                x.reg[2].clone(),
            ],
            links: if editable {
                vec![(
                    format!("{}/pupils/{}", c.base, x.upn),
                    format!("Change {} {}", x.forename, x.surname),
                )]
            } else {
                Vec::new()
            },
        });
    }
    if list.is_empty() {
        sec.head.clear();
        sec.paragraphs
            .push("No pupils yet: add them one at a time or upload a CSV file.".into());
    }
    p.sections.push(sec);
    if c.ensure_open(state, true).is_ok() {
        p.links
            .push((format!("{}/pupils/new", c.base), "Add a pupil".into()));
        p.links.push((
            format!("{}/upload", c.base),
            "Upload pupils from a CSV file".into(),
        ));
        p.links.push((
            format!("{}/check", c.base),
            "Check and submit your registration".into(),
        ));
    }
    p.links.push((
        format!("{}/pupils.csv", c.base),
        "Download your pupil list (CSV)".into(),
    ));
    Ok(p.respond())
}

fn pupil_form(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    action: &str,
    v: &[(&str, String)],
    new: bool,
) -> ActivityPage {
    let get = |k: &str| {
        v.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, x)| x.clone())
            .unwrap_or_default()
    };
    let (lo, hi) = dob_range(state.cycle.year);
    let mut p = ActivityPage::new(
        state,
        s,
        if new {
            "Add a pupil"
        } else {
            "Change a pupil's details"
        },
    );
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state).filter(|_| !c.standing.window.is_open());
    let mut fields = vec![
        Field::input("text", "upn", "Unique pupil number (UPN)")
            .value(&get("upn"))
            .hint("13 characters, starting with the check letter, for example H801200001001"),
        Field::input("text", "forename", "First name")
            .value(&get("forename"))
            .hint("The pupil's legal first name")
            .auto("off"),
        Field::input("text", "surname", "Last name")
            .value(&get("surname"))
            .hint("The pupil's legal last name")
            .auto("off"),
        Field::input("text", "dob", "Date of birth")
            .value(&get("dob"))
            .hint(&format!(
                "For example 2014-03-27 or 27/03/2014; between {lo} and {hi}"
            )),
        radios(
            "gender",
            "Gender",
            &[("F", "Female"), ("M", "Male")],
            &get("gender"),
        ),
    ];
    if !new {
        fields[0] = Field::input("hidden", "upn", "").value(&get("upn"));
    }
    for (col, label) in SUBJECTS {
        let cur = get(col);
        fields.push(select(
            col,
            label,
            STATUSES,
            if cur.is_empty() { "registered" } else { &cur },
        ));
    }
    p.form = Some(PageForm {
        action: action.into(),
        autosave: if new {
            format!("/activities/{}/draft", c.act.id)
        } else {
            String::new()
        },
        fields,
        submit: if new {
            "Add pupil".into()
        } else {
            "Save changes".into()
        },
        ..Default::default()
    });
    p
}

const FIELDS: [&str; 8] = [
    "upn",
    "surname",
    "forename",
    "dob",
    "gender",
    "reading_reg",
    "gps_reg",
    "maths_reg",
];

fn values(f: &FormData) -> Vec<(&'static str, String)> {
    FIELDS.iter().map(|k| (*k, f.get(k))).collect()
}

fn as_array<'a>(v: &'a [(&'static str, String)]) -> [(&'static str, &'a str); 8] {
    std::array::from_fn(|i| (v[i].0, v[i].1.as_str()))
}

async fn new_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = reg_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, true)?;
    // A half-typed pupil saved before a time-out comes back.
    let draft = c
        .standing
        .status
        .as_ref()
        .and_then(|st| st.draft.get("new_pupil").cloned());
    let v: Vec<(&str, String)> = FIELDS
        .iter()
        .map(|k| {
            (
                *k,
                draft
                    .as_ref()
                    .and_then(|d| d.get(*k))
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    Ok(pupil_form(&state, &s, &c, &format!("{}/pupils/new", c.base), &v, true).respond())
}

pub async fn autosave(
    state: &AppState,
    s: &Signed,
    id: &str,
    f: &FormData,
) -> Result<(), AppError> {
    let c = reg_ctx(state, s, id).await?;
    c.ensure_open(state, true)?;
    let mut m = serde_json::Map::new();
    let obj: serde_json::Map<String, serde_json::Value> = values(f)
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    m.insert("new_pupil".into(), serde_json::Value::Object(obj));
    super::save_draft(state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
    Ok(())
}

async fn add(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = reg_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, true)?;
    let v = values(&f);
    let mut p = pupil_form(&state, &s, &c, &format!("{}/pupils/new", c.base), &v, true);
    let existing = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    match check(state.cycle.year, &as_array(&v)) {
        Err(es) => {
            for (col, _, e) in es {
                p.error(col, &e);
            }
        }
        Ok(pupil) => {
            if existing.iter().any(|x| x.upn == pupil.upn) {
                p.error(
                    "upn",
                    "A pupil with this UPN is already on your list: change their details instead",
                );
            } else {
                let late = matches!(c.standing.window, super::Window::Late(_));
                upsert(
                    &state.db,
                    state.cycle.year,
                    &c.school.id,
                    std::slice::from_ref(&pupil),
                    "added",
                    late,
                    state.clock.now(),
                )
                .await?;
                let mut m = serde_json::Map::new();
                m.insert("new_pupil".into(), serde_json::Value::Null);
                super::save_draft(&state, &c.act, &c.school.id, &s.user.email, Some(&m)).await?;
                audit(&state, &s, &c, "registration-pupil-added", &pupil.upn, addr).await?;
                return Ok(Redirect::to(&format!("{}?added={}", c.base, pupil.upn)).into_response());
            }
        }
    }
    Ok(p.respond())
}

async fn audit(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    action: &str,
    detail: &str,
    addr: Option<Extension<ClientAddr>>,
) -> Result<(), AppError> {
    db::audit(
        &state.db,
        super::audited(s, &c.school.id, action, &c.act.id, detail.to_string(), addr),
        state.clock.now(),
    )
    .await?;
    Ok(())
}

async fn edit_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, upn)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let c = reg_ctx(&state, &s, &id).await?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let x = list
        .iter()
        .find(|x| x.upn == upn)
        .ok_or(AppError::NotFound)?;
    record_access(
        &state,
        &s.user,
        "registration-pupil-viewed",
        format!("{}/{upn}", c.audit_target()),
    )
    .await;
    let v = vec![
        ("upn", x.upn.clone()),
        ("surname", x.surname.clone()),
        ("forename", x.forename.clone()),
        ("dob", x.dob.clone()),
        ("gender", x.gender.clone()),
        ("reading_reg", x.reg[0].clone()),
        ("gps_reg", x.reg[1].clone()),
        ("maths_reg", x.reg[2].clone()),
    ];
    let mut p = pupil_form(
        &state,
        &s,
        &c,
        &format!("{}/pupils/{upn}", c.base),
        &v,
        false,
    );
    p.intro.push(format!("UPN {upn}"));
    if !c.standing.window.is_open() {
        p.form = None;
        p.summary = v
            .iter()
            .map(|(k, x)| (k.to_string(), x.clone(), String::new()))
            .collect();
    }
    Ok(p.respond())
}

async fn edit(
    State(state): State<AppState>,
    s: Signed,
    Path((id, upn)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = reg_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    if !list.iter().any(|x| x.upn == upn) {
        return Err(AppError::NotFound);
    }
    let mut v = values(&f);
    v[0].1 = upn.clone();
    let mut p = pupil_form(
        &state,
        &s,
        &c,
        &format!("{}/pupils/{upn}", c.base),
        &v,
        false,
    );
    match check(state.cycle.year, &as_array(&v)) {
        Err(es) => {
            for (col, _, e) in es {
                p.error(col, &e);
            }
            Ok(p.respond())
        }
        Ok(pupil) => {
            upsert(
                &state.db,
                state.cycle.year,
                &c.school.id,
                &[pupil],
                "added",
                false,
                state.clock.now(),
            )
            .await?;
            super::save_draft(&state, &c.act, &c.school.id, &s.user.email, None).await?;
            audit(&state, &s, &c, "registration-pupil-changed", &upn, addr).await?;
            Ok(Redirect::to(&format!("{}?changed={upn}", c.base)).into_response())
        }
    }
}

async fn download(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = reg_ctx(&state, &s, &id).await?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    record_access(&state, &s.user, "registration-downloaded", c.audit_target()).await;
    let body = super::csv_of(
        &[
            "upn",
            "laestab",
            "surname",
            "forename",
            "dob",
            "gender",
            "reading_reg",
            "gps_reg",
            "maths_reg",
        ],
        list.iter().map(|x| {
            vec![
                &x.upn,
                &c.school.id,
                &x.surname,
                &x.forename,
                &x.dob,
                &x.gender,
                &x.reg[0],
                &x.reg[1],
                &x.reg[2],
            ]
        }),
    );
    Ok(super::csv_download(
        &format!("{}-pupils.csv", c.school.id),
        body,
    ))
}

fn upload_form(state: &AppState, s: &Signed, c: &Ctx) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, "Upload pupils from a CSV file");
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.intro.push("The file needs a header row with the columns upn, surname, forename, dob, gender, reading_reg, gps_reg and maths_reg (laestab may be included). Pupils already on your list are updated; new pupils are added. If any row has a problem, nothing is changed and you can download a report of every problem.".into());
    p.intro
        .push("Statuses: registered, below, future, previous, left or unregistered.".into());
    p.form = Some(PageForm {
        action: format!("{}/upload", c.base),
        multipart: true,
        fields: vec![Field::input("file", "file", "CSV file")],
        submit: "Upload".into(),
        ..Default::default()
    });
    p
}

pub async fn upload_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = reg_ctx(state, s, id).await?;
    c.ensure_open(state, true)?;
    Ok(upload_form(state, s, &c).respond())
}

pub async fn upload(
    state: &AppState,
    s: &Signed,
    id: &str,
    addr: Option<Extension<ClientAddr>>,
    form: Multipart,
) -> Result<Response, AppError> {
    let c = reg_ctx(state, s, id).await?;
    let (name, bytes, csrf) = read_upload(form, "file").await?;
    check_csrf(&s.csrf, &csrf)?;
    c.ensure_open(state, true)?;
    let mut p = upload_form(state, s, &c);
    if name.is_empty() || bytes.is_empty() {
        p.error("file", "Choose a CSV file to upload");
        return Ok(p.respond());
    }
    let (rows, mut problems) = parse_csv(state.cycle.year, &bytes, Some(&c.school.id));
    let late = matches!(c.standing.window, super::Window::Late(_));
    if late && problems.is_empty() {
        let existing = pupils(&state.db, state.cycle.year, &c.school.id).await?;
        for (row, _, x) in &rows {
            if existing.iter().any(|e| e.upn == x.upn) {
                problems.push((*row, "upn".into(), x.upn.clone(), "the registration deadline has passed: only pupils who arrived after it can be added".into()));
            }
        }
    }
    if !problems.is_empty() {
        let link = keep_report(state, &s.user.org, report_csv(&problems)).await?;
        for (row, col, _, e) in problems.iter().take(10) {
            p.errors.push((
                "file".into(),
                format!(
                    "{name}, row {row}{}: {e}",
                    if col.is_empty() {
                        String::new()
                    } else {
                        format!(", column {col}")
                    }
                ),
            ));
        }
        if let Some(f) = p.form.as_mut() {
            f.fields[0].error = Some(format!(
                "{} problems found; nothing was changed",
                problems.len()
            ));
        }
        p.intro.insert(0, format!("{name}: {} problems found, so no pupils were changed. Correct the file and upload it again.", problems.len()));
        p.links
            .push((link, "Download the report of every problem (CSV)".into()));
        return Ok(p.respond());
    }
    let list: Vec<Pupil> = rows.into_iter().map(|(_, _, x)| x).collect();
    upsert(
        &state.db,
        state.cycle.year,
        &c.school.id,
        &list,
        "upload",
        late,
        state.clock.now(),
    )
    .await?;
    super::save_draft(state, &c.act, &c.school.id, &s.user.email, None).await?;
    audit(
        state,
        s,
        &c,
        "registration-uploaded",
        &format!("{name}: {} pupils", list.len()),
        addr,
    )
    .await?;
    Ok(Redirect::to(&format!("{}?uploaded={}", c.base, list.len())).into_response())
}

fn copy_of(list: &[Pupil], school: &crate::db::Org) -> Copy {
    let mut summary = vec![
        (
            "School".to_string(),
            format!("{} ({})", school.name, school.id),
        ),
        ("Pupils".to_string(), list.len().to_string()),
    ];
    for (i, (_, label)) in SUBJECTS.iter().enumerate() {
        let mut counts: Vec<String> = Vec::new();
        for (st, _) in STATUSES {
            let n = list.iter().filter(|x| x.reg[i] == *st).count();
            if n > 0 {
                counts.push(format!("{st} {n}"));
            }
        }
        summary.push((label.to_string(), counts.join(", ")));
    }
    let sec = Section {
        heading: "Pupils".into(),
        head: vec![
            "UPN".into(),
            "Name".into(),
            "Date of birth".into(),
            "Gender".into(),
            "Reading".into(),
            "GPS".into(),
            "Maths".into(),
        ],
        rows: list
            .iter()
            .map(|x| Row {
                cells: vec![
                    x.upn.clone(),
                    format!("{} {}", x.forename, x.surname),
                    x.dob.clone(),
                    x.gender.clone(),
                    x.reg[0].clone(),
                    x.reg[1].clone(),
                    x.reg[2].clone(),
                ],
                links: Vec::new(),
            })
            .collect(),
        ..Default::default()
    };
    Copy {
        summary,
        sections: vec![sec],
    }
}

pub async fn check_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = reg_ctx(state, s, id).await?;
    c.ensure_open(state, true)?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    let copy = copy_of(&list, &c.school);
    let mut p = ActivityPage::new(
        state,
        s,
        "Check your answers before submitting your registration",
    );
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.summary = copy
        .summary
        .iter()
        .map(|(k, v)| (k.clone(), v.clone(), String::new()))
        .collect();
    p.sections = copy.sections;
    if list.is_empty() {
        p.intro.push("There are no pupils to submit yet.".into());
        return Ok(p.respond());
    }
    p.intro.push("By submitting you confirm that every pupil who will complete the KS2 programmes of study this year is on this list with the right status for each subject.".into());
    p.form = Some(PageForm {
        action: format!("{}/check", c.base),
        submit: "Submit registration".into(),
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
    let c = reg_ctx(state, s, id).await?;
    c.posted(state, s, &body, true)?;
    let list = pupils(&state.db, state.cycle.year, &c.school.id).await?;
    if list.is_empty() {
        return Err(AppError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing to submit".into(),
            "Add your pupils before submitting your registration.".into(),
        ));
    }
    let search: String = list
        .iter()
        .map(|x| format!("{} {} {} ", x.upn, x.forename, x.surname))
        .collect();
    submit(
        state,
        s,
        &c,
        &copy_of(&list, &c.school),
        &search,
        super::ip(addr),
        None,
    )
    .await?;
    Ok(Redirect::to(&format!("/activities/{}/submitted", c.act.id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(upn: &'a str, dob: &'a str, surname: &'a str) -> [(&'static str, &'a str); 8] {
        [
            ("upn", upn),
            ("surname", surname),
            ("forename", "Ann"),
            ("dob", dob),
            ("gender", "F"),
            ("reading_reg", "registered"),
            ("gps_reg", "below"),
            ("maths_reg", ""),
        ]
    }

    #[test]
    fn a_pupil_is_checked_field_by_field() {
        let p = check(
            2025,
            &fields("H801200001001", "2014-03-27", "O\u{2019}Neill-Smith"),
        )
        .unwrap();
        assert_eq!(
            p.reg,
            [
                "registered".to_string(),
                "below".into(),
                "registered".into()
            ]
        );
        let e = check(2025, &fields("Z801200001001", "2014-03-27", "Able")).unwrap_err();
        assert_eq!(e[0].0, "upn");
        let e = check(2025, &fields("H801200001001", "2005-01-01", "Able")).unwrap_err();
        assert!(
            e[0].2.contains("between 2010-09-01 and 2017-08-31"),
            "{e:?}"
        );
        let e = check(2025, &fields("H801200001001", "31/02/2014", "Able")).unwrap_err();
        assert!(e[0].2.contains("not a real date"));
        let e = check(2025, &fields("H801200001001", "2014-03-27", "R2D2")).unwrap_err();
        assert_eq!(e[0].0, "surname");
        assert!(legal_name("Zo\u{eb}").is_ok());
        assert!(legal_name("-Ann").is_err());
        assert!(legal_name(&"a".repeat(51)).is_err());
    }

    #[test]
    fn a_csv_reports_every_row_and_column_at_fault() {
        let csv = "upn,surname,forename,dob,gender,reading_reg,gps_reg,maths_reg\n\
                   H801200001001,Able,Ann,2014-03-27,F,registered,registered,registered\n\
                   Z801200001001,Bright,Ben,2014-03-27,X,registered,sideways,registered\n\
                   H801200001001,Able,Ann,2014-03-27,F,registered,registered,registered\n";
        let (ok, problems) = parse_csv(2025, csv.as_bytes(), Some("8012000"));
        assert_eq!(ok.len(), 1);
        let cols: Vec<(usize, &str)> = problems
            .iter()
            .map(|(r, c, _, _)| (*r, c.as_str()))
            .collect();
        assert_eq!(
            cols,
            vec![(3, "upn"), (3, "gender"), (3, "gps_reg"), (4, "upn")]
        );
        let (_, p) = parse_csv(2025, b"upn,surname\n", Some("8012000"));
        assert!(p.iter().any(|x| x.3.contains("no `forename` column")));
    }
}
