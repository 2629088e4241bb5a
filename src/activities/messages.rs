//! 'Message us – access arrangements' (seed 000): free-text messages from a school to the
//! operator, threaded with the operator's replies. Only users with the activity's permission
//! (access arrangements) see a school's threads; the operator sees every school's. A reply
//! emails the school's writers; every message is audited and every view is in the access log.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;

use super::{ActivityPage, Ctx, Form, PageForm, ctx, record_access, when};
use crate::AppState;
use crate::auth::roles::Action;
use crate::auth::session::{Signed, check_csrf};
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, FormData, Row, Section};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/activities/{id}/threads/new",
            get(new_page).post(new_thread),
        )
        .route(
            "/activities/{id}/threads/{tid}",
            get(thread_page).post(reply),
        )
        .route("/operator/messages/{id}", get(operator_list))
        .route(
            "/operator/messages/{id}/{tid}",
            get(operator_thread).post(operator_reply),
        )
}

#[derive(Debug, Clone)]
struct Message {
    org_id: String,
    thread_id: String,
    subject: String,
    body: String,
    author: String,
    from_operator: bool,
    at: i64,
}

async fn messages(
    db: &Db,
    year: i32,
    act: &str,
    org: Option<&str>,
    thread: Option<&str>,
) -> sqlx::Result<Vec<Message>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT * FROM activity_messages WHERE cycle = $1 AND activity = $2 AND ($3 = '' OR org_id = $3) AND ($4 = '' OR thread_id = $4) ORDER BY at, id",
    )
    .bind(year as i64)
    .bind(act)
    .bind(org.unwrap_or(""))
    .bind(thread.unwrap_or(""))
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Message {
            org_id: r.get("org_id"),
            thread_id: r.get("thread_id"),
            subject: r.get("subject"),
            body: r.get("body"),
            author: r.get("author"),
            from_operator: r.get::<i64, _>("from_operator") == 1,
            at: r.get("at"),
        })
        .collect())
}

/// A message to keep: in which activity, for which school, in which thread (none: a new one).
struct Post<'a> {
    act: &'a str,
    org: &'a str,
    thread: Option<&'a str>,
    subject: &'a str,
    body: &'a str,
}

/// Keep a message from the signed-in user (the operator when `operator`), and audit it; the
/// thread's id.
async fn post(
    state: &AppState,
    s: &Signed,
    addr: Option<Extension<ClientAddr>>,
    m: Post<'_>,
    operator: bool,
) -> Result<String, AppError> {
    let id = db::new_id();
    let thread = m.thread.map_or(id.clone(), String::from);
    let now = state.clock.now();
    sqlx::query("INSERT INTO activity_messages (id, cycle, activity, org_id, thread_id, subject, body, author, from_operator, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(&id)
        .bind(state.cycle.year as i64)
        .bind(m.act)
        .bind(m.org)
        .bind(&thread)
        .bind(m.subject)
        .bind(m.body)
        .bind(&s.user.email)
        .bind(i64::from(operator))
        .bind(now)
        .execute(&state.db)
        .await?;
    let action = if operator {
        "message-replied"
    } else {
        "message-sent"
    };
    db::audit(
        &state.db,
        super::audited(s, m.org, action, m.act, thread.clone(), addr),
        now,
    )
    .await?;
    Ok(thread)
}

/// A thread's page: its messages in order, and a reply form posting to `action` (none when
/// replies are closed), with `reply` typed so far.
fn thread_view(
    state: &AppState,
    s: &Signed,
    list: &[Message],
    action: Option<String>,
    reply: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, list.first().map_or("", |m| m.subject.as_str()));
    p.sections = thread_section(state, list);
    p.form = action.map(|action| PageForm {
        action,
        fields: vec![Field::input("textarea", "body", "Reply").value(reply)],
        submit: "Send reply".into(),
        ..Default::default()
    });
    p
}

/// Threads, newest activity first: (thread id, subject, org, messages, last message).
fn threads(all: &[Message]) -> Vec<(String, String, String, usize, Message)> {
    let mut out: Vec<(String, String, String, usize, Message)> = Vec::new();
    for m in all {
        match out.iter_mut().find(|t| t.0 == m.thread_id) {
            Some(t) => {
                t.3 += 1;
                t.4 = m.clone();
            }
            None => out.push((
                m.thread_id.clone(),
                m.subject.clone(),
                m.org_id.clone(),
                1,
                m.clone(),
            )),
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.4.at));
    out
}

fn thread_section(state: &AppState, list: &[Message]) -> Vec<Section> {
    list.iter()
        .map(|m| Section {
            heading: format!(
                "{} at {}",
                if m.from_operator {
                    "Standards and Testing Agency".to_string()
                } else {
                    m.author.clone()
                },
                when(state, m.at)
            ),
            paragraphs: m.body.lines().map(String::from).collect(),
            ..Default::default()
        })
        .collect()
}

async fn msg_ctx(state: &AppState, s: &Signed, id: &str) -> Result<Ctx, AppError> {
    ctx(state, s, id, Form::Messages, None).await
}

pub async fn overview(
    state: &AppState,
    s: &Signed,
    id: &str,
    notice: Option<String>,
) -> Result<Response, AppError> {
    let c = msg_ctx(state, s, id).await?;
    let all = messages(
        &state.db,
        state.cycle.year,
        &c.act.id,
        Some(&c.school.id),
        None,
    )
    .await?;
    record_access(state, &s.user, "messages-viewed", c.audit_target()).await;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.notice = notice;
    p.intro.push(c.act.description.clone());
    let mut sec = Section {
        heading: "Your messages".into(),
        head: vec![
            "Subject".into(),
            "Messages".into(),
            "Last message".into(),
            String::new(),
        ],
        ..Default::default()
    };
    for (tid, subject, _, n, last) in threads(&all) {
        sec.rows.push(Row {
            cells: vec![
                subject.clone(),
                n.to_string(),
                format!(
                    "{} at {}",
                    if last.from_operator {
                        "Reply from STA"
                    } else {
                        "You"
                    },
                    when(state, last.at)
                ),
            ],
            links: vec![(
                format!("{}/threads/{tid}", c.base),
                format!("Open {subject}"),
            )],
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No messages yet.".into());
    }
    p.sections.push(sec);
    if c.standing.window.is_open() {
        p.links.push((
            format!("{}/threads/new", c.base),
            "Send a new message".into(),
        ));
    } else {
        p.warning = c.notice(state);
    }
    Ok(p.respond())
}

fn compose(state: &AppState, s: &Signed, c: &Ctx, subject: &str, body: &str) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, "Send a message about access arrangements");
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    p.intro
        .push("Do not include more about a pupil than the question needs.".into());
    p.form = Some(PageForm {
        action: format!("{}/threads/new", c.base),
        fields: vec![
            Field::input("text", "subject", "Subject").value(subject),
            Field::input("textarea", "body", "Your message").value(body),
        ],
        submit: "Send message".into(),
        ..Default::default()
    });
    p
}

async fn new_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = msg_ctx(&state, &s, &id).await?;
    c.ensure_open(&state, false)?;
    Ok(compose(&state, &s, &c, "", "").respond())
}

fn check_text(p: &mut ActivityPage, field: &str, label: &str, v: &str, max: usize) {
    if v.trim().is_empty() {
        p.error(field, &format!("Enter {label}"));
    } else if v.chars().count() > max {
        p.error(field, &format!("{label} must be {max} characters or fewer"));
    }
}

async fn new_thread(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = msg_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let (subject, text) = (
        f.get("subject").trim().to_string(),
        f.get("body").trim().to_string(),
    );
    let mut p = compose(&state, &s, &c, &subject, &text);
    check_text(&mut p, "subject", "a subject", &subject, 150);
    check_text(&mut p, "body", "your message", &text, 5000);
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let tid = post(
        &state,
        &s,
        addr,
        Post {
            act: &c.act.id,
            org: &c.school.id,
            thread: None,
            subject: &subject,
            body: &text,
        },
        false,
    )
    .await?;
    Ok(Redirect::to(&format!("{}/threads/{tid}", c.base)).into_response())
}

async fn thread_page(
    State(state): State<AppState>,
    s: Signed,
    Path((id, tid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let c = msg_ctx(&state, &s, &id).await?;
    let list = messages(
        &state.db,
        state.cycle.year,
        &c.act.id,
        Some(&c.school.id),
        Some(&tid),
    )
    .await?;
    if list.is_empty() {
        return Err(AppError::NotFound);
    }
    record_access(
        &state,
        &s.user,
        "message-viewed",
        format!("{}/{tid}", c.audit_target()),
    )
    .await;
    let open = c.standing.window.is_open();
    let mut p = thread_view(
        &state,
        &s,
        &list,
        open.then(|| format!("{}/threads/{tid}", c.base)),
        "",
    );
    p.caption = c.act.name.clone();
    p.back = Some(c.base.clone());
    Ok(p.respond())
}

async fn reply(
    State(state): State<AppState>,
    s: Signed,
    Path((id, tid)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    let c = msg_ctx(&state, &s, &id).await?;
    let f = c.posted(&state, &s, &body, false)?;
    let list = messages(
        &state.db,
        state.cycle.year,
        &c.act.id,
        Some(&c.school.id),
        Some(&tid),
    )
    .await?;
    let first = list.first().ok_or(AppError::NotFound)?;
    let text = f.get("body").trim().to_string();
    if text.is_empty() || text.chars().count() > 5000 {
        let mut p = thread_view(
            &state,
            &s,
            &list,
            Some(format!("{}/threads/{tid}", c.base)),
            &text,
        );
        p.back = Some(c.base.clone());
        p.error("body", "Enter your reply (5,000 characters at most)");
        return Ok(p.respond());
    }
    post(
        &state,
        &s,
        addr,
        Post {
            act: &c.act.id,
            org: &c.school.id,
            thread: Some(&tid),
            subject: &first.subject,
            body: &text,
        },
        false,
    )
    .await?;
    Ok(Redirect::to(&format!("{}/threads/{tid}", c.base)).into_response())
}

// ---------- the operator ----------

async fn operator_list(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let act = state
        .cycle
        .activity(&id)
        .filter(|a| a.form == Form::Messages)
        .ok_or(AppError::NotFound)?;
    let all = messages(&state.db, state.cycle.year, &act.id, None, None).await?;
    record_access(&state, &s.user, "messages-viewed", format!("{id}/all")).await;
    let mut p = ActivityPage::new(&state, &s, &act.name);
    p.caption = "Every school's messages".into();
    p.back = Some("/operator/activities".into());
    let mut sec = Section {
        head: vec![
            "Subject".into(),
            "School".into(),
            "Messages".into(),
            "Waiting for".into(),
            String::new(),
        ],
        ..Default::default()
    };
    for (tid, subject, org, n, last) in threads(&all) {
        sec.rows.push(Row {
            cells: vec![
                subject.clone(),
                org.clone(),
                n.to_string(),
                if last.from_operator {
                    "the school".into()
                } else {
                    format!("a reply since {}", when(&state, last.at))
                },
            ],
            links: vec![(
                format!("/operator/messages/{id}/{tid}"),
                format!("Open {subject}"),
            )],
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No messages.".into());
    }
    p.sections.push(sec);
    Ok(p.respond())
}

async fn operator_thread(
    State(state): State<AppState>,
    s: Signed,
    Path((id, tid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let list = messages(&state.db, state.cycle.year, &id, None, Some(&tid)).await?;
    let first = list.first().ok_or(AppError::NotFound)?;
    record_access(
        &state,
        &s.user,
        "message-viewed",
        format!("{id}/{}/{tid}", first.org_id),
    )
    .await;
    let org = db::org(&state.db, &first.org_id).await?;
    let mut p = thread_view(
        &state,
        &s,
        &list,
        Some(format!("/operator/messages/{id}/{tid}")),
        "",
    );
    p.caption = org.map_or(first.org_id.clone(), |o| format!("{} ({})", o.name, o.id));
    p.back = Some(format!("/operator/messages/{id}"));
    Ok(p.respond())
}

async fn operator_reply(
    State(state): State<AppState>,
    s: Signed,
    Path((id, tid)): Path<(String, String)>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let f = FormData::parse(&body);
    check_csrf(&s.csrf, &f.get("csrf"))?;
    let act = state
        .cycle
        .activity(&id)
        .filter(|a| a.form == Form::Messages)
        .ok_or(AppError::NotFound)?
        .clone();
    let list = messages(&state.db, state.cycle.year, &id, None, Some(&tid)).await?;
    let first = list.first().ok_or(AppError::NotFound)?.clone();
    let text = f.get("body").trim().to_string();
    if text.is_empty() {
        let mut p = thread_view(
            &state,
            &s,
            &list,
            Some(format!("/operator/messages/{id}/{tid}")),
            "",
        );
        p.error("body", "Enter your reply");
        return Ok(p.respond());
    }
    post(
        &state,
        &s,
        addr,
        Post {
            act: &id,
            org: &first.org_id,
            thread: Some(&tid),
            subject: &first.subject,
            body: &text,
        },
        true,
    )
    .await?;
    // Tell the school's writers in this thread that there is a reply (not the reply itself:
    // they read it signed in).
    let mut to: Vec<String> = list
        .iter()
        .filter(|m| !m.from_operator)
        .map(|m| m.author.clone())
        .collect();
    to.sort();
    to.dedup();
    for addr in &to {
        state.mailer.send(addr, &format!("Reply: {}", first.subject), &format!("The Standards and Testing Agency has replied to your message \u{201c}{}\u{201d}. Sign in to the NCA Portal and open My Activity, {}, to read it.", first.subject, act.name)).await?;
    }
    Ok(Redirect::to(&format!("/operator/messages/{id}/{tid}")).into_response())
}
