//! Forms whose questions are declared in the cycle file (`form = "fields"`): test orders,
//! holiday dates, access arrangements applications, notifications, monitoring records. One
//! question per page, each checked as it is answered (numbers in range, real dates, pupils from
//! the school's registration, quantities only where a format exists, evidence files), then
//! check your answers and submit. Activities without drafts keep answers only for the session
//! that gave them ("completed in one session", seed 000).

use axum::Router;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::store::layout;
use serde_json::{Map, Value};

use super::cycle::{Field as Question, FieldKind};
use super::registration::{Pupil, pupils};

use super::{
    ActivityPage, Copy, Ctx, Form, Grid, GridInput, GridRow, PageForm, ctx, record_access,
    save_draft, submit, when,
};
use crate::AppState;
use crate::auth::session::{Signed, check_csrf};
use crate::db;
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Section};

/// Largest evidence file, bytes.
pub const MAX_FILE: usize = 5 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/q/{n}", get(question_page).post(answer))
        .route(
            "/activities/{id}/q/{n}/file",
            axum::routing::post(answer_file),
        )
        .route("/activities/{id}/files/{file}", get(file))
        .route("/activities/{id}/results", get(results))
        .route("/activities/{id}/results/{uid}", get(result))
}

async fn fields_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::Fields, None).await
}

/// The questions this organisation is asked, with their 1-based step numbers.
fn questions(c: &Ctx) -> Vec<(usize, &Question)> {
    c.act
        .fields
        .iter()
        .filter(|q| q.asks(c.school.school_type.as_deref()))
        .enumerate()
        .map(|(i, q)| (i + 1, q))
        .collect()
}

/// Which sign-in gave an answer: a hash of the session's CSRF token (random per browser
/// session; the token itself is never stored) and its sign-in time.
fn session_tag(s: &Signed) -> String {
    use sha2::Digest as _;
    let text = format!("{}:{}", s.csrf, s.user.iat);
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..12])
}

/// The answers so far; for activities without drafts, only this session's.
pub fn answers(c: &Ctx, s: &Signed) -> Map<String, Value> {
    let Some(st) = c.standing.status.as_ref() else {
        return Map::new();
    };
    let d = st.draft.as_object().cloned().unwrap_or_default();
    if st.status == "draft"
        && !c.act.drafts
        && d.get("_session").and_then(Value::as_str) != Some(session_tag(s).as_str())
    {
        return Map::new();
    }
    d
}

/// What a form may choose from: a school's pupils on roll (not `unregistered` everywhere), or
/// an LA's schools.
#[derive(Debug, Default)]
pub struct Choices {
    pub pupils: Vec<Pupil>,
    pub schools: Vec<db::Org>,
}

pub async fn choices(state: &AppState, org: &db::Org) -> sqlx::Result<Choices> {
    Ok(match org.kind {
        crate::auth::roles::OrgKind::La => Choices {
            pupils: Vec::new(),
            schools: db::schools_of(&state.db, Some(&org.id), None).await?,
        },
        _ => Choices {
            pupils: pupils(&state.db, state.cycle.year, &org.id)
                .await?
                .into_iter()
                .filter(|p| !p.reg.iter().all(|r| r == "unregistered"))
                .collect(),
            schools: Vec::new(),
        },
    })
}

/// An answer as people read it.
pub fn display(q: &Question, v: Option<&Value>, list: &Choices) -> String {
    let Some(v) = v else {
        return "Not answered".into();
    };
    let label = |opts: &[(String, String)], x: &str| {
        opts.iter()
            .find(|(k, _)| k == x)
            .map_or(x.to_string(), |(_, l)| l.clone())
    };
    match q.kind {
        FieldKind::Radios => label(&q.options, v.as_str().unwrap_or("")),
        FieldKind::Checkboxes => strings(v)
            .iter()
            .map(|x| label(&q.options, x))
            .collect::<Vec<_>>()
            .join("; "),
        FieldKind::Confirm => {
            if v.as_str() == Some("yes") {
                "Confirmed".into()
            } else {
                "Not confirmed".into()
            }
        }
        FieldKind::Pupils => strings(v)
            .iter()
            .map(|u| {
                list.pupils
                    .iter()
                    .find(|p| p.upn == *u)
                    .map_or(u.clone(), |p| format!("{} {} ({u})", p.forename, p.surname))
            })
            .collect::<Vec<_>>()
            .join("; "),
        FieldKind::Schools => strings(v)
            .iter()
            .map(|l| {
                list.schools
                    .iter()
                    .find(|o| o.id == *l)
                    .map_or(l.clone(), |o| format!("{} ({l})", o.name))
            })
            .collect::<Vec<_>>()
            .join("; "),
        FieldKind::Quantities => {
            let cells: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_i64().unwrap_or(0) > 0)
                .map(|(k, n)| {
                    let (r, c) = k.split_once(':').unwrap_or((k, ""));
                    format!("{}, {}: {}", label(&q.rows, r), label(&q.columns, c), n)
                })
                .collect();
            if cells.is_empty() {
                "None".into()
            } else {
                cells.join("; ")
            }
        }
        FieldKind::SchoolFiles => v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(l, f)| {
                let school = list
                    .schools
                    .iter()
                    .find(|o| o.id == *l)
                    .map_or(l.clone(), |o| format!("{} ({l})", o.name));
                format!(
                    "{school}: {}",
                    f.get("name").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        FieldKind::File => v
            .get("name")
            .and_then(Value::as_str)
            .map_or(String::new(), |n| {
                format!(
                    "{n} ({} KB)",
                    v.get("size")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .div_ceil(1024)
                )
            }),
        _ => v.as_str().unwrap_or("").to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

fn answered(q: &Question, v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) if q.kind == FieldKind::SchoolFiles => !o.is_empty(),
        Some(Value::Object(o)) if q.kind == FieldKind::Quantities => {
            o.values().any(|n| n.as_i64().unwrap_or(0) > 0)
        }
        Some(_) => true,
    }
}

/// Check one answer from the posted form; the value to keep, or the message to show.
pub fn check_answer(q: &Question, f: &FormData, list: &Choices) -> Result<Value, String> {
    let v = f.get("value").trim().to_string();
    let need = |empty: bool| {
        if empty && q.required {
            Err(match q.kind {
                FieldKind::Radios => format!("Select {}", q.label.to_lowercase()),
                FieldKind::Checkboxes | FieldKind::Pupils => {
                    format!("Select at least one: {}", q.label.to_lowercase())
                }
                FieldKind::Confirm => format!("Confirm: {}", q.label),
                _ => format!("Enter {}", q.label.to_lowercase()),
            })
        } else {
            Ok(())
        }
    };
    match q.kind {
        FieldKind::Text | FieldKind::Textarea => {
            need(v.is_empty())?;
            if v.chars().count() > 5000 {
                return Err(format!("{} must be 5,000 characters or fewer", q.label));
            }
            Ok(Value::String(v))
        }
        FieldKind::Number => {
            need(v.is_empty())?;
            if v.is_empty() {
                return Ok(Value::String(v));
            }
            let n: i64 = v
                .parse()
                .map_err(|_| format!("{} must be a whole number", q.label))?;
            if q.min.is_some_and(|m| n < m) || q.max.is_some_and(|m| n > m) {
                return Err(format!(
                    "{} must be between {} and {}",
                    q.label,
                    q.min.unwrap_or(0),
                    q.max.unwrap_or(i64::MAX)
                ));
            }
            Ok(Value::String(n.to_string()))
        }
        FieldKind::Date => {
            need(v.is_empty())?;
            if v.is_empty() {
                return Ok(Value::String(v));
            }
            crate::ks3::parse_dob(&v)
                .map(Value::String)
                .map_err(|e| format!("{}: {e}", q.label))
        }
        FieldKind::Radios => {
            need(v.is_empty())?;
            if !v.is_empty() && !q.options.iter().any(|(k, _)| *k == v) {
                return Err(format!("Select {}", q.label.to_lowercase()));
            }
            Ok(Value::String(v))
        }
        FieldKind::Confirm => {
            need(v != "yes")?;
            Ok(Value::String(v))
        }
        FieldKind::Schools => {
            let chosen = f.all("value");
            need(chosen.is_empty())?;
            if let Some(x) = chosen
                .iter()
                .find(|x| !list.schools.iter().any(|o| o.id == **x))
            {
                return Err(format!("{x} is not one of your schools"));
            }
            // `min`: the least share, in per cent, of the maintained schools (ARA 6.3: 10%).
            let maintained: Vec<&db::Org> = list
                .schools
                .iter()
                .filter(|o| o.school_type.as_deref() == Some("maintained"))
                .collect();
            let picked = maintained.iter().filter(|o| chosen.contains(&o.id)).count();
            if let Some(m) = q.min
                && (picked as i64) * 100 < m * maintained.len() as i64
            {
                let need = (m * maintained.len() as i64 + 99) / 100;
                return Err(format!(
                    "Choose at least {m}% of your maintained schools: {need} of {}, not {picked}",
                    maintained.len()
                ));
            }
            Ok(Value::Array(
                chosen.into_iter().map(Value::String).collect(),
            ))
        }
        FieldKind::Checkboxes | FieldKind::Pupils => {
            let chosen = f.all("value");
            need(chosen.is_empty())?;
            for x in &chosen {
                let known = if q.kind == FieldKind::Pupils {
                    list.pupils.iter().any(|p| p.upn == *x)
                } else {
                    q.options.iter().any(|(k, _)| k == x)
                };
                if !known {
                    return Err(format!("{x} is not one of the choices"));
                }
            }
            if q.kind == FieldKind::Pupils {
                if let Some(m) = q.min.filter(|m| (chosen.len() as i64) < *m) {
                    return Err(format!("Select at least {m} pupils"));
                }
                if let Some(m) = q.max.filter(|m| (chosen.len() as i64) > *m) {
                    return Err(format!("Select at most {m} pupils"));
                }
            }
            Ok(Value::Array(
                chosen.into_iter().map(Value::String).collect(),
            ))
        }
        FieldKind::Quantities => {
            let mut out = Map::new();
            let mut total = 0;
            for (r, rl) in &q.rows {
                for (c, cl) in &q.columns {
                    let raw = f.get(&format!("q:{r}:{c}")).trim().to_string();
                    if raw.is_empty() || raw == "0" {
                        continue;
                    }
                    if !q.cell_allowed(r, c) {
                        return Err(format!("{cl} is not available for {rl}"));
                    }
                    let n: i64 = raw
                        .parse()
                        .ok()
                        .filter(|n| *n >= 0 && q.max.is_none_or(|m| *n <= m))
                        .ok_or_else(|| {
                            format!(
                                "{rl}, {cl}: enter a whole number from 0 to {}",
                                q.max.unwrap_or(999)
                            )
                        })?;
                    total += n;
                    out.insert(format!("{r}:{c}"), Value::from(n));
                }
            }
            need(total == 0).map_err(|_| {
                format!("Enter how many of at least one: {}", q.label.to_lowercase())
            })?;
            Ok(Value::Object(out))
        }
        FieldKind::Periods => {
            need(v.is_empty())?;
            for (i, line) in v
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                let (a, b) = line.split_once(" to ").ok_or_else(|| {
                    format!(
                        "Line {}: write each period as 2024-12-20 to 2025-01-06",
                        i + 1
                    )
                })?;
                let (a, b) = (
                    crate::ks3::parse_dob(a).map_err(|e| format!("Line {}: {e}", i + 1))?,
                    crate::ks3::parse_dob(b).map_err(|e| format!("Line {}: {e}", i + 1))?,
                );
                if b < a {
                    return Err(format!("Line {}: the period ends before it starts", i + 1));
                }
            }
            Ok(Value::String(v))
        }
        FieldKind::File | FieldKind::SchoolFiles => Err("Choose a file".into()),
    }
}

// ---------- pages ----------

pub async fn overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let c = fields_ctx(state, s, id).await?;
    let list = choices(state, &c.school).await?;
    let a = answers(&c, s);
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.notice = notice;
    p.warning = c.notice(state);
    p.intro.push(c.act.description.clone());
    if !c.act.drafts {
        p.intro.push(
            "Complete this form in one session: answers are not kept once you sign out.".into(),
        );
    }
    p.intro.push(c.standing.status_text(state, &c.act));
    if let Some(d) = c
        .standing
        .status
        .as_ref()
        .and_then(|st| st.decision.clone())
    {
        p.intro.push(format!("Reason given: {d}"));
    }
    let qs = questions(&c);
    if c.act.scored() && c.standing.submitted() {
        let (right, out_of) = score(&c.act, &a);
        p.intro.push(format!(
            "Your score: {right} of {out_of} judgements agree with the standard."
        ));
        p.sections.push(feedback(&c.act, &a));
        if s.user.may(crate::auth::roles::Action::Moderation) {
            p.links.push((
                format!("{}/results", c.base),
                "Your moderators' results".into(),
            ));
        }
        return Ok(p.respond());
    }
    if !a.is_empty() {
        p.summary = qs
            .iter()
            .map(|(_, q)| {
                (
                    q.label.clone(),
                    display(q, a.get(&q.name), &list),
                    String::new(),
                )
            })
            .collect();
        record_access(state, &s.user, "activity-viewed", c.audit_target()).await;
        for (_, q) in qs.iter().filter(|(_, q)| q.kind == FieldKind::SchoolFiles) {
            for (l, f) in a
                .get(&q.name)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(fid) = f.get("id").and_then(Value::as_str) {
                    let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                    p.links.push((
                        format!("{}/files/{fid}", c.base),
                        format!("Download the summary for {l}: {name}"),
                    ));
                }
            }
        }
        for (_, q) in qs.iter().filter(|(_, q)| q.kind == FieldKind::File) {
            if let Some(fid) = a
                .get(&q.name)
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
            {
                p.links.push((
                    format!("{}/files/{fid}", c.base),
                    format!("Download {}", display(q, a.get(&q.name), &list)),
                ));
            }
        }
    }
    if c.standing.window.is_open() {
        let first_missing = qs
            .iter()
            .find(|(_, q)| !answered(q, a.get(&q.name)))
            .map(|(n, _)| *n);
        let label = if c.standing.submitted() {
            "Change and submit again"
        } else if a.is_empty() {
            "Start now"
        } else {
            "Continue"
        };
        let to = match first_missing {
            Some(n) => format!("{}/q/{n}", c.base),
            None if c.standing.submitted() => format!("{}/q/1", c.base),
            None => format!("{}/check", c.base),
        };
        p.links.insert(0, (to, label.into()));
    }
    Ok(p.respond())
}

#[allow(clippy::too_many_arguments)]
fn question_form(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    n: usize,
    q: &Question,
    value: Option<&Value>,
    posted: Option<&FormData>,
    list: &Choices,
) -> ActivityPage {
    let total = questions(c).len();
    let mut p = ActivityPage::new(state, s, &q.label);
    p.caption = format!("{}: question {n} of {total}", c.act.name);
    p.back = Some(if n > 1 {
        format!("{}/q/{}", c.base, n - 1)
    } else {
        c.base.clone()
    });
    p.warning = c.notice(state).filter(|_| !c.standing.window.is_open());
    let text = |v: Option<&Value>| {
        posted.map_or_else(
            || v.and_then(Value::as_str).unwrap_or("").to_string(),
            |f| f.get("value"),
        )
    };
    let chosen = |v: Option<&Value>| {
        posted.map_or_else(|| strings(v.unwrap_or(&Value::Null)), |f| f.all("value"))
    };
    let mut form = PageForm {
        fields: vec![Field::input("hidden", "_step", "").value(&n.to_string())],
        action: format!("{}/q/{n}", c.base),
        autosave: if c.act.drafts {
            format!("/activities/{}/draft", c.act.id)
        } else {
            String::new()
        },
        submit: "Continue".into(),
        ..Default::default()
    };
    let options = |opts: Vec<(String, String)>, cur: &[String]| {
        opts.into_iter()
            .map(|(k, l)| {
                let on = cur.contains(&k);
                (k, l, on)
            })
            .collect()
    };
    match q.kind {
        FieldKind::Text | FieldKind::Number | FieldKind::Date => {
            let mut f = Field::input("text", "value", &q.label)
                .value(&text(value))
                .hint(&q.hint);
            if q.kind == FieldKind::Date && q.hint.is_empty() {
                f = f.hint("For example, 2025-05-12 or 12/05/2025");
            }
            form.fields.push(f);
        }
        FieldKind::Textarea | FieldKind::Periods => {
            let hint = if q.kind == FieldKind::Periods && q.hint.is_empty() {
                "One period a line, for example: 2024-12-20 to 2025-01-06"
            } else {
                q.hint.as_str()
            };
            form.fields.push(
                Field::input("textarea", "value", &q.label)
                    .value(&text(value))
                    .hint(hint),
            );
        }
        FieldKind::Radios => {
            let mut f = Field::input("radios", "value", &q.label).hint(&q.hint);
            f.options = options(q.options.clone(), &[text(value)]);
            form.fields.push(f);
        }
        FieldKind::Checkboxes | FieldKind::Confirm | FieldKind::Pupils | FieldKind::Schools => {
            let mut f = Field::input("checkboxes", "value", &q.label).hint(&q.hint);
            let opts = match q.kind {
                FieldKind::Confirm => vec![("yes".to_string(), "I confirm".to_string())],
                FieldKind::Pupils => list
                    .pupils
                    .iter()
                    .map(|p| {
                        (
                            p.upn.clone(),
                            format!("{} {} ({})", p.forename, p.surname, p.upn),
                        )
                    })
                    .collect(),
                FieldKind::Schools => list
                    .schools
                    .iter()
                    .map(|o| {
                        (
                            o.id.clone(),
                            format!(
                                "{} ({}, {})",
                                o.name,
                                o.id,
                                o.school_type.clone().unwrap_or_default()
                            ),
                        )
                    })
                    .collect(),
                _ => q.options.clone(),
            };
            let cur = if q.kind == FieldKind::Confirm {
                vec![text(value)]
            } else {
                chosen(value)
            };
            f.options = options(opts, &cur);
            if q.kind == FieldKind::Pupils && list.pupils.is_empty() {
                p.intro
                    .push("No pupils are on your registration yet: register them first.".into());
            }
            form.fields.push(f);
        }
        FieldKind::Quantities => {
            let mut g = Grid {
                caption: q.label.clone(),
                head: vec![String::new()],
                rows: Vec::new(),
            };
            g.head[0] = "Test".into();
            g.head.extend(q.columns.iter().map(|(_, l)| l.clone()));
            for (r, rl) in &q.rows {
                let mut row = GridRow {
                    cells: vec![rl.clone()],
                    inputs: Vec::new(),
                };
                for (col, cl) in &q.columns {
                    let name = format!("q:{r}:{col}");
                    let cur = posted.map_or_else(
                        || {
                            value
                                .and_then(|v| v.get(format!("{r}:{col}")))
                                .and_then(Value::as_i64)
                                .map(|n| n.to_string())
                                .unwrap_or_default()
                        },
                        |f| f.get(&name),
                    );
                    row.inputs.push(GridInput {
                        label: format!("{rl}: {cl}"),
                        name,
                        options: Vec::new(),
                        error: None,
                        number: q.cell_allowed(r, col).then_some(cur),
                    });
                }
                g.rows.push(row);
            }
            if !q.hint.is_empty() {
                p.intro.push(q.hint.clone());
            }
            form.grid = Some(g);
        }
        FieldKind::SchoolFiles => {
            form.action = format!("{}/q/{n}/file", c.base);
            form.multipart = true;
            form.autosave.clear();
            let have: Vec<String> = value
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let hint = format!(
                "{} Choose one or more files; start each file's name with the school's DfE number, for example 9992001-summary.pdf.{}",
                q.hint,
                if have.is_empty() {
                    String::new()
                } else {
                    format!(" Already uploaded for: {}.", have.join(", "))
                }
            );
            form.fields
                .push(Field::input("files", "value", &q.label).hint(hint.trim()));
        }
        FieldKind::File => {
            form.action = format!("{}/q/{n}/file", c.base);
            form.multipart = true;
            form.autosave.clear();
            let mut hint = q.hint.clone();
            if let Some(v) = value.filter(|v| v.get("name").is_some()) {
                hint = format!(
                    "{hint} Already uploaded: {}. Choose a file only to replace it.",
                    display(q, Some(v), list)
                );
            }
            form.fields
                .push(Field::input("file", "value", &q.label).hint(hint.trim()));
        }
    }
    p.form = Some(form);
    p
}

fn step(c: &Ctx, n: usize) -> Result<Question, AppError> {
    questions(c)
        .into_iter()
        .find(|(i, _)| *i == n)
        .map(|(_, q)| q.clone())
        .ok_or(AppError::NotFound)
}

async fn question_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, n)): Path<(String, usize)>,
) -> Result<Response, AppError> {
    let c = fields_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, false)?;
    let q = step(&c, n)?;
    let list = choices(&state, &c.school).await?;
    if q.kind == FieldKind::Pupils {
        record_access(&state, &s.user, "activity-pupils-viewed", c.audit_target()).await;
    }
    let a = answers(&c, &s);
    Ok(question_form(&state, &s, &c, n, &q, a.get(&q.name), None, &list).respond())
}

/// Keep one answer (with the session that gave it) and go on to the next question.
async fn keep(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    n: usize,
    q: &Question,
    v: Value,
) -> Result<Response, AppError> {
    let mut m = answers(c, s);
    m.insert(q.name.clone(), v);
    m.insert("_session".into(), Value::from(session_tag(s)));
    save_draft(state, &c.act, &c.key, &s.user.email, Some(&m)).await?;
    let next = questions(c).iter().map(|(i, _)| *i).find(|i| *i > n);
    Ok(Redirect::to(&match next {
        Some(i) => format!("{}/q/{i}", c.base),
        None => format!("{}/check", c.base),
    })
    .into_response())
}

async fn answer(
    State(state): State<AppState>,
    s: Signed,
    Path((id, n)): Path<(String, usize)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = fields_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let q = step(&c, n)?;
    let list = choices(&state, &c.school).await?;
    match check_answer(&q, &f, &list) {
        Ok(v) => keep(&state, &s, &c, n, &q, v).await,
        Err(e) => {
            let mut p = question_form(&state, &s, &c, n, &q, None, Some(&f), &list);
            let target = if q.kind == FieldKind::Quantities {
                p.form
                    .as_ref()
                    .and_then(|f| f.grid.as_ref())
                    .and_then(|g| g.rows.first())
                    .and_then(|r| r.inputs.iter().find(|i| i.number.is_some()))
                    .map(|i| i.name.clone())
                    .unwrap_or_default()
            } else {
                "value".into()
            };
            p.error(&target, &e);
            Ok(p.respond())
        }
    }
}

pub async fn autosave(
    state: &AppState,
    s: &Signed,
    id: &str,
    f: &FormData,
) -> Result<(), AppError> {
    let c = fields_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    if !c.act.drafts {
        return Ok(());
    }
    // The page posts its question's number with the answer so far; only valid answers are kept.
    let n: usize = f.get("_step").parse().unwrap_or(0);
    if let Ok(q) = step(&c, n) {
        let list = choices(state, &c.school).await?;
        if let Ok(v) = check_answer(&q, f, &list) {
            let mut m = answers(&c, s);
            m.insert(q.name.clone(), v);
            save_draft(state, &c.act, &c.key, &s.user.email, Some(&m)).await?;
        }
    }
    Ok(())
}

/// Every file in a multipart field, and the form's CSRF token.
async fn read_uploads(mut form: Multipart, field: &str) -> (Vec<(String, Bytes)>, String) {
    let (mut files, mut csrf) = (Vec::new(), String::new());
    while let Ok(Some(f)) = form.next_field().await {
        let n = f.name().unwrap_or("").to_string();
        let file = f.file_name().unwrap_or("").to_string();
        let b = f.bytes().await.unwrap_or_default();
        if n == "csrf" {
            csrf = String::from_utf8_lossy(&b).into_owned();
        } else if n == field && !file.is_empty() && !b.is_empty() {
            files.push((file, b));
        }
    }
    (files, csrf)
}

/// Keep an uploaded file in the object store and the files table; its answer value.
async fn store_file(
    state: &AppState,
    s: &Signed,
    c: &Ctx,
    name: &str,
    bytes: Bytes,
    addr: Option<Extension<ClientAddr>>,
) -> Result<Value, AppError> {
    let fid = db::new_id();
    let key = layout::activity_file(state.cycle.year, &c.act.id, &c.school.id, &fid);
    state.store.put_key(&key, bytes.clone()).await?;
    let safe: String = name
        .chars()
        .filter(|ch| !ch.is_control() && *ch != '"' && *ch != '/' && *ch != '\\')
        .take(120)
        .collect();
    sqlx::query("INSERT INTO activity_files (id, cycle, activity, org_id, name, size, object_key, by_email, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&fid)
        .bind(state.cycle.year as i64)
        .bind(&c.act.id)
        .bind(&c.school.id)
        .bind(&safe)
        .bind(bytes.len() as i64)
        .bind(&key)
        .bind(&s.user.email)
        .bind(state.clock.now())
        .execute(&state.db)
        .await?;
    db::audit(
        &state.db,
        super::audited(
            s,
            &c.school.id,
            "activity-file-uploaded",
            &c.act.id,
            format!("{safe} ({} bytes)", bytes.len()),
            addr,
        ),
        state.clock.now(),
    )
    .await?;
    Ok(serde_json::json!({ "id": fid, "name": safe, "size": bytes.len() }))
}

/// The schools chosen in the activity's `schools` question (for per-school files).
fn chosen_schools(c: &Ctx, a: &Map<String, Value>) -> Vec<String> {
    c.act
        .fields
        .iter()
        .find(|q| q.kind == FieldKind::Schools)
        .and_then(|q| a.get(&q.name))
        .map(strings)
        .unwrap_or_default()
}

async fn answer_file(
    State(state): State<AppState>,
    s: Signed,
    Path((id, n)): Path<(String, usize)>,
    addr: Option<Extension<ClientAddr>>,
    form: Multipart,
) -> Result<Response, AppError> {
    let c = fields_ctx(&state, &s, &id).await?;
    let q = step(&c, n)?;
    let (files, csrf) = read_uploads(form, "value").await;
    check_csrf(&s.csrf, &csrf)?;
    c.ensure_open(&state, false)?;
    let list = choices(&state, &c.school).await?;
    let a = answers(&c, &s);
    let current = a.get(&q.name).cloned();
    let refuse = |e: String| {
        let mut p = question_form(&state, &s, &c, n, &q, current.as_ref(), None, &list);
        p.error("value", &e);
        p.respond()
    };
    if let Some((name, _)) = files.iter().find(|(_, b)| b.len() > MAX_FILE) {
        return Ok(refuse(format!("{name} is larger than 5 MB")));
    }
    if q.kind == FieldKind::SchoolFiles {
        // One summary (or more) per school chosen, each file named from its DfE number.
        let schools = chosen_schools(&c, &a);
        let mut kept = current
            .as_ref()
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        kept.retain(|k, _| schools.contains(k));
        for (name, _) in &files {
            if !schools.iter().any(|l| name.starts_with(l.as_str())) {
                return Ok(refuse(format!(
                    "{name}: start each file's name with the DfE number of one of the schools you chose ({})",
                    schools.join(", ")
                )));
            }
        }
        for (name, bytes) in files {
            let l = schools
                .iter()
                .find(|l| name.starts_with(l.as_str()))
                .cloned()
                .unwrap_or_default();
            let v = store_file(&state, &s, &c, &name, bytes, addr).await?;
            kept.insert(l, v);
        }
        let missing: Vec<&String> = schools.iter().filter(|l| !kept.contains_key(*l)).collect();
        if !missing.is_empty() && q.required {
            let mut p = question_form(
                &state,
                &s,
                &c,
                n,
                &q,
                Some(&Value::Object(kept.clone())),
                None,
                &list,
            );
            p.error(
                "value",
                &format!(
                    "Upload a summary for every school moderated: none yet for {}",
                    missing
                        .iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            let mut m = a.clone();
            m.insert(q.name.clone(), Value::Object(kept));
            save_draft(&state, &c.act, &c.key, &s.user.email, Some(&m)).await?;
            return Ok(p.respond());
        }
        return keep(&state, &s, &c, n, &q, Value::Object(kept)).await;
    }
    let Some((name, bytes)) = files.into_iter().next() else {
        if current.as_ref().is_some_and(|v| v.get("id").is_some()) || !q.required {
            // Keep the file already given (or none, when the question is optional).
            return keep(&state, &s, &c, n, &q, current.unwrap_or(Value::Null)).await;
        }
        return Ok(refuse("Choose a file to upload".to_string()));
    };
    let v = store_file(&state, &s, &c, &name, bytes, addr).await?;
    keep(&state, &s, &c, n, &q, v).await
}

/// An evidence file, to the organisation's users with the activity's permission, its LA's and
/// trust's task users and the operator (as the activity's documents).
async fn file(
    State(state): State<AppState>,
    s: Signed,
    Path((id, fid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    use sqlx::Row as _;
    let r = sqlx::query("SELECT * FROM activity_files WHERE id = $1 AND activity = $2")
        .bind(&fid)
        .bind(&id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(AppError::NotFound)?;
    let org_id: String = r.get("org_id");
    let org = db::org(&state.db, &org_id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !super::may_see_doc(&state, &s.user, &id, &org) {
        return Err(AppError::NotFound);
    }
    let bytes = state
        .store
        .get_key(&r.get::<String, _>("object_key"))
        .await?;
    record_access(
        &state,
        &s.user,
        "activity-file-downloaded",
        format!("{id}/{org_id}/{fid}"),
    )
    .await;
    let name: String = r.get("name");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

fn copy_of(c: &Ctx, a: &Map<String, Value>, list: &Choices) -> Copy {
    let mut summary = vec![(
        "Organisation".to_string(),
        format!("{} ({})", c.school.name, c.school.id),
    )];
    summary.extend(
        questions(c)
            .iter()
            .map(|(_, q)| (q.label.clone(), display(q, a.get(&q.name), list))),
    );
    Copy {
        summary,
        sections: Vec::new(),
    }
}

pub async fn check_page(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = fields_ctx(state, s, id).await?;
    c.ensure_open(state, false)?;
    let a = answers(&c, s);
    let list = choices(state, &c.school).await?;
    if let Some((n, _)) = questions(&c)
        .into_iter()
        .find(|(_, q)| q.required && !answered(q, a.get(&q.name)))
    {
        return Ok(Redirect::to(&format!("{}/q/{n}", c.base)).into_response());
    }
    let mut p = ActivityPage::new(state, s, "Check your answers before submitting");
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.warning = c.notice(state);
    p.summary = questions(&c)
        .iter()
        .map(|(n, q)| {
            (
                q.label.clone(),
                display(q, a.get(&q.name), &list),
                format!("{}/q/{n}", c.base),
            )
        })
        .collect();
    if c.act.decided {
        p.intro.push("The Standards and Testing Agency will decide this; you will be emailed the outcome and a letter will be kept in My Activity.".into());
    }
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
    let c = fields_ctx(state, s, id).await?;
    c.posted(state, s, &body, false)?;
    let a = answers(&c, s);
    if let Some((n, _)) = questions(&c)
        .into_iter()
        .find(|(_, q)| q.required && !answered(q, a.get(&q.name)))
    {
        return Ok(Redirect::to(&format!("{}/q/{n}", c.base)).into_response());
    }
    let list = choices(state, &c.school).await?;
    let search: String = questions(&c)
        .iter()
        .filter(|(_, q)| q.kind == FieldKind::Pupils)
        .map(|(_, q)| display(q, a.get(&q.name), &list))
        .collect::<Vec<_>>()
        .join(" ");
    // The submission keeps its answers (without the session stamp) for exports and reports.
    let mut kept = a.clone();
    // (A null replaces the stamp: the answers are merged into the draft kept so far.)
    kept.insert("_session".into(), Value::Null);
    if c.act.scored() {
        let (score, out_of) = score(&c.act, &kept);
        kept.insert("_score".into(), Value::from(score));
        kept.insert("_out_of".into(), Value::from(out_of));
    }
    submit(
        state,
        s,
        &c,
        &copy_of(&c, &a, &list),
        &search,
        super::ip(addr),
        Some(&kept),
    )
    .await?;
    Ok(Redirect::to(&format!("/activities/{}/submitted", c.act.id)).into_response())
}

/// Answers that match the agreed ones, out of the questions that have one.
pub fn score(act: &super::Activity, a: &Map<String, Value>) -> (usize, usize) {
    let marked: Vec<&Question> = act.fields.iter().filter(|q| q.answer.is_some()).collect();
    let right = marked
        .iter()
        .filter(|q| a.get(&q.name).and_then(Value::as_str) == q.answer.as_deref())
        .count();
    (right, marked.len())
}

/// After a scored exercise is submitted: each answer beside the agreed one, with the commentary.
pub fn feedback(act: &super::Activity, a: &Map<String, Value>) -> Section {
    let label = |q: &Question, v: Option<&str>| {
        v.map_or("Not answered".to_string(), |v| {
            q.options
                .iter()
                .find(|(k, _)| k == v)
                .map_or(v.to_string(), |(_, l)| l.clone())
        })
    };
    Section {
        heading: "Your judgements and the agreed standard".into(),
        head: vec![
            "Question".into(),
            "Your judgement".into(),
            "Agreed judgement".into(),
            "Commentary".into(),
        ],
        rows: act
            .fields
            .iter()
            .filter(|q| q.answer.is_some())
            .map(|q| crate::portal::Row {
                cells: vec![
                    q.label.clone(),
                    label(q, a.get(&q.name).and_then(Value::as_str)),
                    label(q, q.answer.as_deref()),
                    q.commentary.clone(),
                ],
                links: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }
}

/// One row per submission of a fields activity: the organisation, its status and every answer.
pub async fn submissions_csv(state: &AppState, act: &super::Activity) -> Result<String, AppError> {
    let mut out = Vec::new();
    let mut head = vec![
        "org_id".to_string(),
        "name".into(),
        "status".into(),
        "submitted_at".into(),
        "submitted_by".into(),
        "submitted_org".into(),
        "decision".into(),
    ];
    head.extend(act.fields.iter().map(|q| q.name.clone()));
    let rows = super::statuses(&state.db, state.cycle.year, &act.id).await?;
    let mut ids: Vec<&String> = rows.keys().collect();
    ids.sort();
    for id in ids {
        let st = &rows[id];
        if st.status == "draft" {
            continue;
        }
        let org = db::org(&state.db, id).await?;
        let list = match org.as_ref() {
            Some(o) => choices(state, o).await?,
            None => Choices::default(),
        };
        let mut rec = vec![
            id.clone(),
            org.map(|o| o.name).unwrap_or_default(),
            st.status.clone(),
            st.submitted_at.map(|t| when(state, t)).unwrap_or_default(),
            st.submitted_by.clone().unwrap_or_default(),
            st.submitted_org.clone().unwrap_or_default(),
            st.decision.clone().unwrap_or_default(),
        ];
        for q in &act.fields {
            let v = st.draft.get(&q.name);
            rec.push(if answered(q, v) {
                display(q, v, &list)
            } else {
                String::new()
            });
        }
        out.push(rec);
    }
    Ok(super::csv_of(&head, out.into_iter()))
}

/// A moderation manager's view of the exercise: every moderator of the LA with their score,
/// and each one's judgements beside the agreed ones with the commentaries.
async fn results(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let (act, rows) = exercise(&state, &s, &id).await?;
    let mut p = ActivityPage::new(&state, &s, &format!("{}: results", act.name));
    p.back = Some(format!("/activities/{id}"));
    let mut sec = crate::portal::Section {
        head: vec![
            "Moderator".into(),
            "Submitted".into(),
            "Score".into(),
            String::new(),
        ],
        ..Default::default()
    };
    for (uid, st) in &rows {
        let d = st.draft.as_object().cloned().unwrap_or_default();
        let (right, out_of) = score(&act, &d);
        sec.rows.push(crate::portal::Row {
            cells: vec![
                st.submitted_by.clone().unwrap_or_default(),
                st.submitted_at.map(|t| when(&state, t)).unwrap_or_default(),
                format!("{right} of {out_of}"),
            ],
            links: vec![(
                format!("/activities/{id}/results/{uid}"),
                format!(
                    "Judgements of {}",
                    st.submitted_by.clone().unwrap_or_default()
                ),
            )],
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs
            .push("No moderator has submitted the exercise yet.".into());
    }
    p.sections.push(sec);
    Ok(p.respond())
}

async fn result(
    State(state): State<AppState>,
    s: Signed,
    Path((id, uid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (act, rows) = exercise(&state, &s, &id).await?;
    let (_, st) = rows
        .iter()
        .find(|(u, _)| *u == uid)
        .ok_or(AppError::NotFound)?;
    let d = st.draft.as_object().cloned().unwrap_or_default();
    let (right, out_of) = score(&act, &d);
    let mut p = ActivityPage::new(
        &state,
        &s,
        &format!(
            "{}: {}",
            act.name,
            st.submitted_by.clone().unwrap_or_default()
        ),
    );
    p.back = Some(format!("/activities/{id}/results"));
    p.intro.push(format!("Score: {right} of {out_of}."));
    p.sections.push(feedback(&act, &d));
    Ok(p.respond())
}

/// The exercise and its submissions by the manager's LA: (user id, status).
async fn exercise(
    state: &AppState,
    s: &Signed,
    id: &str,
) -> Result<(super::Activity, Vec<(String, super::Status)>), AppError> {
    let act = state
        .cycle
        .activity(id)
        .filter(|a| a.per_user && a.scored())
        .ok_or(AppError::NotFound)?
        .clone();
    if s.user.kind != crate::auth::roles::OrgKind::La
        || !s.user.may(crate::auth::roles::Action::Moderation)
    {
        return Err(AppError::Forbidden);
    }
    let prefix = format!("{}:", s.user.org);
    let mut rows: Vec<(String, super::Status)> =
        super::statuses(&state.db, state.cycle.year, &act.id)
            .await?
            .into_iter()
            .filter(|(k, st)| k.starts_with(&prefix) && st.status != "draft")
            .map(|(k, st)| (k[prefix.len()..].to_string(), st))
            .collect();
    rows.sort_by(|a, b| a.1.submitted_by.cmp(&b.1.submitted_by));
    record_access(
        state,
        &s.user,
        "standardisation-results-viewed",
        format!("{id}/{}", s.user.org),
    )
    .await;
    Ok((act, rows))
}
