//! Materials to download (seed 000, seed 001): the phonics screening check and optional KS1
//! materials for schools, standardisation training materials for LAs. The operator uploads the
//! files to the object store; the activity's audience downloads them from its opening date
//! (every download audited).

use axum::Router;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use nca_pipeline::store::layout;

use super::{ActivityPage, Form, PageForm, Window, ctx, record_access, when};
use crate::AppState;
use crate::auth::roles::Action;
use crate::auth::session::{Signed, check_csrf};
use crate::db::{self, Db};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::{Field, Row, Section};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/activities/{id}/materials/{mid}", get(download))
        .route(
            "/operator/activities/{id}/materials",
            get(operator_page).post(upload),
        )
}

struct Material {
    id: String,
    title: String,
    name: String,
    size: i64,
    key: String,
    at: i64,
}

async fn list(db: &Db, year: i32, act: &str) -> sqlx::Result<Vec<Material>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT * FROM activity_materials WHERE cycle = $1 AND activity = $2 ORDER BY title, at",
    )
    .bind(year as i64)
    .bind(act)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Material {
            id: r.get("id"),
            title: r.get("title"),
            name: r.get("name"),
            size: r.get("size"),
            key: r.get("object_key"),
            at: r.get("at"),
        })
        .collect())
}

fn table(state: &AppState, items: &[Material], link: Option<&str>) -> Section {
    let mut sec = Section {
        heading: "Files".into(),
        head: vec![
            "Title".into(),
            "File".into(),
            "Size".into(),
            "Published".into(),
        ],
        ..Default::default()
    };
    if link.is_some() {
        sec.head.push(String::new());
    }
    for m in items {
        sec.rows.push(Row {
            cells: vec![
                m.title.clone(),
                m.name.clone(),
                format!("{} KB", (m.size as u64).div_ceil(1024)),
                when(state, m.at),
            ],
            links: link
                .map(|base| {
                    vec![(
                        format!("{base}/materials/{}", m.id),
                        format!("Download {}", m.title),
                    )]
                })
                .unwrap_or_default(),
        });
    }
    if sec.rows.is_empty() {
        sec.head.clear();
        sec.paragraphs.push("No files yet.".into());
    }
    sec
}

pub async fn overview(state: &AppState, s: &Signed, id: &str) -> Result<Response, AppError> {
    let c = ctx(state, s, id, Form::Materials, None).await?;
    let items = list(&state.db, state.cycle.year, &c.act.id).await?;
    let mut p = ActivityPage::new(state, s, &c.act.name);
    p.caption = c.school.name.clone();
    p.back = Some("/activities".into());
    p.intro.push(c.act.description.clone());
    match c.standing.window {
        Window::NotYet(t) => {
            p.warning = Some(format!(
                "These materials are available to download from {}.",
                when(state, t)
            ))
        }
        _ => p.sections.push(table(state, &items, Some(&c.base))),
    }
    Ok(p.respond())
}

async fn download(
    State(state): State<AppState>,
    s: Signed,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let operator = s.user.may(Action::Operate);
    if !operator {
        let c = ctx(&state, &s, &id, Form::Materials, None).await?;
        if let Window::NotYet(t) = c.standing.window {
            return Err(AppError::Refused(
                StatusCode::FORBIDDEN,
                "Not available yet".into(),
                format!(
                    "These materials are available to download from {}.",
                    when(&state, t)
                ),
            ));
        }
    }
    let items = list(&state.db, state.cycle.year, &id).await?;
    let m = items
        .iter()
        .find(|m| m.id == mid)
        .ok_or(AppError::NotFound)?;
    let bytes = state.store.get_key(&m.key).await?;
    record_access(
        &state,
        &s.user,
        "material-downloaded",
        format!("{id}/{mid}"),
    )
    .await;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", m.name),
            ),
            (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
        ],
        bytes,
    )
        .into_response())
}

fn operator_form(
    state: &AppState,
    s: &Signed,
    act: &super::Activity,
    items: &[Material],
    title: &str,
) -> ActivityPage {
    let mut p = ActivityPage::new(state, s, &format!("{}: files", act.name));
    p.back = Some("/operator/activities".into());
    p.intro.push(format!(
        "The audience can download these from the activity's opening time. {}",
        act.description
    ));
    p.sections.push(table(
        state,
        items,
        Some(&format!("/activities/{}", act.id)),
    ));
    p.form = Some(PageForm {
        action: format!("/operator/activities/{}/materials", act.id),
        multipart: true,
        fields: vec![
            Field::input("text", "title", "Title").value(title),
            Field::input("file", "file", "File"),
        ],
        submit: "Upload".into(),
        ..Default::default()
    });
    p
}

async fn operator_page(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let act = state
        .cycle
        .activity(&id)
        .filter(|a| a.form == Form::Materials)
        .ok_or(AppError::NotFound)?;
    let items = list(&state.db, state.cycle.year, &id).await?;
    Ok(operator_form(&state, &s, act, &items, "").respond())
}

/// Largest material, bytes.
const MAX_MATERIAL: usize = 50 * 1024 * 1024;

async fn upload(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    addr: Option<Extension<ClientAddr>>,
    mut form: Multipart,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let act = state
        .cycle
        .activity(&id)
        .filter(|a| a.form == Form::Materials)
        .ok_or(AppError::NotFound)?
        .clone();
    let (mut csrf, mut title, mut name, mut bytes) = (
        String::new(),
        String::new(),
        String::new(),
        bytes::Bytes::new(),
    );
    while let Ok(Some(f)) = form.next_field().await {
        let n = f.name().unwrap_or("").to_string();
        let file = f.file_name().unwrap_or("").to_string();
        let b = f.bytes().await.unwrap_or_default();
        match n.as_str() {
            "csrf" => csrf = String::from_utf8_lossy(&b).into_owned(),
            "title" => title = String::from_utf8_lossy(&b).trim().to_string(),
            "file" => {
                name = file;
                bytes = b;
            }
            _ => {}
        }
    }
    check_csrf(&s.csrf, &csrf)?;
    let items = list(&state.db, state.cycle.year, &id).await?;
    let mut p = operator_form(&state, &s, &act, &items, &title);
    if title.is_empty() {
        p.error("title", "Enter a title");
    }
    if name.is_empty() || bytes.is_empty() {
        p.error("file", "Choose a file");
    } else if bytes.len() > MAX_MATERIAL {
        p.error("file", "The file is larger than 50 MB");
    }
    if !p.errors.is_empty() {
        return Ok(p.respond());
    }
    let mid = db::new_id();
    let key = layout::material(state.cycle.year, &id, &mid);
    state.store.put_key(&key, bytes.clone()).await?;
    let safe: String = name
        .chars()
        .filter(|ch| !ch.is_control() && *ch != '"' && *ch != '/' && *ch != '\\')
        .take(120)
        .collect();
    sqlx::query("INSERT INTO activity_materials (id, cycle, activity, title, name, size, object_key, by_email, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&mid)
        .bind(state.cycle.year as i64)
        .bind(&id)
        .bind(&title)
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
            &s,
            &s.user.org,
            "material-published",
            &id,
            format!("{title}: {safe}"),
            addr,
        ),
        state.clock.now(),
    )
    .await?;
    Ok(Redirect::to(&format!("/operator/activities/{id}/materials")).into_response())
}
