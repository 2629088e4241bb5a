//! Marked test scripts: which pages each pupil's papers have (the release's per-school
//! `school/<laestab>.scripts.csv`, fetched and parsed only when that school's scripts are
//! viewed), the page cache (moka, bounded in bytes; any number of concurrent requests for an
//! uncached page cause one object-store read, checked against the manifest's sha256 and
//! bounded by a timeout), page delivery (strong ETag, Range, long private caching), the
//! script viewer with the marks per question, the print view and a whole paper as one PDF.
//! A store that fails or stalls answers that page 503 with Retry-After and nothing else;
//! bytes that do not match the manifest are never served.
//!
//! Who sees what: a school its own pupils' pages, an LA its schools' pupils' pages, the
//! operator any; KS3 schools and trusts none. Every page, view and PDF is in the access log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::domain::{Paper, Subject};
use nca_pipeline::store::{Store, layout};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::roles::OrgKind;
use crate::auth::session::{Signed, SignedIn};
use crate::error::AppError;
use crate::portal::{Page, Row, Section, render};
use crate::results::{AuditEvent, Refusal, Release, opened};
use crate::results_pages::{PupilRow, TESTS, parse_school_csv};

/// One scanned page of a pupil's paper.
#[derive(Debug, Clone)]
pub struct PageRef {
    pub page: u32,
    pub key: String,
    pub sha256: String,
}

/// A school's script pages: UPN -> paper -> pages in order.
#[derive(Debug, Default)]
pub struct SchoolScripts {
    pub pupils: HashMap<String, BTreeMap<Paper, Vec<PageRef>>>,
}

impl SchoolScripts {
    pub fn parse(bytes: &[u8]) -> anyhow::Result<SchoolScripts> {
        let mut rdr = csv::Reader::from_reader(bytes);
        let mut out = SchoolScripts::default();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec?;
            let field = |n: usize| rec.get(n).unwrap_or("").to_string();
            let paper = Paper::parse(&field(1))
                .map_err(|e| anyhow::anyhow!("scripts list row {}: {e}", i + 1))?;
            let page = field(2)
                .parse()
                .map_err(|e| anyhow::anyhow!("scripts list row {}: page: {e}", i + 1))?;
            let pages = out
                .pupils
                .entry(field(0))
                .or_default()
                .entry(paper)
                .or_default();
            pages.push(PageRef {
                page,
                key: field(3),
                sha256: field(4),
            });
        }
        for papers in out.pupils.values_mut() {
            for pages in papers.values_mut() {
                pages.sort_by_key(|p| p.page);
            }
        }
        Ok(out)
    }

    pub fn pages(&self, upn: &str, paper: Paper) -> &[PageRef] {
        self.pupils
            .get(upn)
            .and_then(|p| p.get(&paper))
            .map_or(&[], Vec::as_slice)
    }
}

/// A school's item-level marks: the items (paper, label) and each pupil's mark per item.
#[derive(Debug, Default)]
pub struct ItemMarks {
    pub items: Vec<(Paper, String)>,
    pub pupils: HashMap<String, Vec<Option<u8>>>,
}

impl ItemMarks {
    pub fn parse(bytes: &[u8]) -> anyhow::Result<ItemMarks> {
        let mut rdr = csv::Reader::from_reader(bytes);
        let mut items = Vec::new();
        for h in rdr.headers()?.iter().skip(1) {
            let (paper, label) = h
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("item marks column {h:?} is not paper:item"))?;
            items.push((
                Paper::parse(paper).map_err(anyhow::Error::msg)?,
                label.to_string(),
            ));
        }
        let mut pupils = HashMap::new();
        for rec in rdr.records() {
            let rec = rec?;
            let marks = rec.iter().skip(1).map(|m| m.parse().ok()).collect();
            pupils.insert(rec.get(0).unwrap_or("").to_string(), marks);
        }
        Ok(ItemMarks { items, pupils })
    }

    /// A pupil's marks on one paper: (item label, mark if any, index into `items`).
    pub fn for_paper(&self, upn: &str, paper: Paper) -> Vec<(String, Option<u8>, usize)> {
        let marks = self.pupils.get(upn);
        self.items
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| *p == paper)
            .map(|(i, (_, label))| {
                (
                    label.clone(),
                    marks.and_then(|m| m.get(i).copied().flatten()),
                    i,
                )
            })
            .collect()
    }
}

/// Why a page could not be read: the store failed, stalled past the timeout, or gave bytes
/// that are not the manifest's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PageError {
    #[error("reading {key}: {reason}")]
    Store { key: String, reason: String },
    #[error("reading {key}: no answer within {ms} ms")]
    Timeout { key: String, ms: u64 },
    #[error("{key}: sha256 {got}, the scripts manifest says {want}")]
    Mismatch {
        key: String,
        got: String,
        want: String,
    },
}

/// The page cache and the parsed per-school lists, in front of the object store.
pub struct Pages {
    store: Store,
    cache: moka::future::Cache<String, Bytes>,
    schools: moka::future::Cache<(String, String), Arc<SchoolScripts>>,
    timeout: Duration,
    reads: AtomicU64,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("cached_bytes", &self.cache.weighted_size())
            .field("store_reads", &self.store_reads())
            .finish()
    }
}

impl Pages {
    pub fn new(store: Store, cache_bytes: u64, timeout: Duration) -> Pages {
        Pages {
            store,
            cache: moka::future::Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(|k: &String, v: &Bytes| {
                    u32::try_from(v.len() + k.len()).unwrap_or(u32::MAX)
                })
                .build(),
            schools: moka::future::Cache::new(4096),
            timeout,
            reads: AtomicU64::new(0),
        }
    }

    /// Object-store reads of pages so far (a cold page read by many at once counts once).
    pub fn store_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// One page's bytes, from memory or from one store read however many ask at once.
    pub async fn page(&self, page: &PageRef) -> Result<Bytes, PageError> {
        // Keyed by content too: a key republished with new bytes is a different entry.
        let id = format!("{}#{}", page.key, page.sha256);
        let (store, key, want, timeout) = (
            self.store.clone(),
            page.key.clone(),
            page.sha256.clone(),
            self.timeout,
        );
        let reads = &self.reads;
        self.cache
            .try_get_with(id, async move {
                reads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("nca_script_page_reads_total").increment(1);
                let bytes = match tokio::time::timeout(timeout, store.get_key(&key)).await {
                    Err(_) => {
                        return Err(PageError::Timeout {
                            key,
                            ms: timeout.as_millis() as u64,
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(PageError::Store {
                            key,
                            reason: format!("{e:#}"),
                        });
                    }
                    Ok(Ok(b)) => b,
                };
                let got = hex::encode(Sha256::digest(&bytes));
                if got != want {
                    return Err(PageError::Mismatch { key, got, want });
                }
                Ok(bytes)
            })
            .await
            .map_err(|e: Arc<PageError>| (*e).clone())
    }

    /// A school's script pages in a release (empty when it has none).
    pub async fn school(
        &self,
        state: &AppState,
        release: &Release,
        laestab: &str,
    ) -> anyhow::Result<Arc<SchoolScripts>> {
        let key = (release.id.clone(), laestab.to_string());
        let results = &state.results;
        self.schools
            .try_get_with(key, async move {
                match results
                    .object(release, &layout::school_scripts(laestab))
                    .await?
                {
                    Some(b) => Ok(Arc::new(SchoolScripts::parse(&b)?)),
                    None => Ok(Arc::new(SchoolScripts::default())),
                }
            })
            .await
            .map_err(|e: Arc<anyhow::Error>| anyhow::anyhow!("{e:#}"))
    }
}

/// Who may see a school's scripts: the school, its LA, the operator. Not trusts, not KS3.
pub fn may_see_scripts(user: &SignedIn, release: &Release, laestab: &str) -> bool {
    let Some((la, _)) = release.schools.get(laestab) else {
        return false;
    };
    match user.kind {
        OrgKind::Ks2School => user.org == laestab,
        OrgKind::La => user.org == *la,
        OrgKind::Operator => true,
        OrgKind::Mat | OrgKind::Ks3School => false,
    }
}

/// The pages: a school's list, the viewer and its print view.
pub fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/scripts/{laestab}", get(school_list))
        .route("/scripts/{laestab}/{upn}/{paper}", get(viewer))
        .route("/scripts/{laestab}/{upn}/{paper}/print", get(print_view))
}

/// The files: page images and whole papers as PDF (admitted as downloads).
pub fn file_routes() -> Router<AppState> {
    Router::new()
        .route("/scripts/{laestab}/{upn}/{paper}/pdf", get(pdf))
        .route(
            "/scripts/{laestab}/{upn}/{paper}/pages/{page}",
            get(page_image),
        )
}

/// The release this user may read scripts from, checked for this school: permission,
/// opening time, and whose school it is.
fn release_for(state: &AppState, s: &Signed, laestab: &str) -> Result<Arc<Release>, Box<Response>> {
    let release = match opened(state, &s.user) {
        Ok(r) => r,
        Err(refusal @ Refusal::NotOpen(_)) => return Err(Box::new(refusal.into_response())),
        Err(Refusal::Error(StatusCode::NOT_FOUND, _)) => {
            return Err(Box::new(AppError::NotFound.into_response()));
        }
        Err(_) => return Err(Box::new(AppError::Forbidden.into_response())),
    };
    if !may_see_scripts(&s.user, &release, laestab) {
        return Err(Box::new(AppError::Forbidden.into_response()));
    }
    Ok(release)
}

async fn record(state: &AppState, user: &SignedIn, action: &'static str, target: String) {
    let event = AuditEvent {
        action,
        actor: user.email.as_str().into(),
        org_id: user.org.as_str().into(),
        target: target.into(),
        at: state.clock.now(),
    };
    if state.audit_tx.send(event).await.is_err() {
        tracing::error!("audit writer stopped: a script view was not recorded");
    }
}

fn unavailable(e: &PageError) -> Response {
    tracing::error!(error = %e, "script page unavailable");
    metrics::counter!("nca_script_page_unavailable_total").increment(1);
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": "this page of the script is briefly unavailable: try again" })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn content_type(key: &str) -> &'static str {
    let k = key.to_ascii_lowercase();
    if k.ends_with(".jpg") || k.ends_with(".jpeg") {
        "image/jpeg"
    } else {
        "image/png"
    }
}

/// A byte range asked for, resolved against the length: `Ok(None)` for the whole body.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parse a `Range` header for one range of `len` bytes (RFC 9110 14.1.2). Several ranges
/// or units other than bytes are answered with the whole body, as the RFC allows.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeAsk {
    use RangeAsk::*;
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Whole;
    };
    if spec.contains(',') {
        return Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse::<u64>().map(Some)
        }
    };
    // A range that does not parse is ignored, as the RFC says: the whole body.
    let (Ok(first), Ok(last)) = (number(a), number(b)) else {
        return Whole;
    };
    match (first, last) {
        (None, None) => Whole,
        (None, Some(n)) if n == 0 || len == 0 => Unsatisfiable,
        (None, Some(n)) => Part(len.saturating_sub(n), len - 1),
        (Some(f), Some(l)) if l < f => Whole,
        (Some(f), _) if f >= len => Unsatisfiable,
        (Some(f), None) => Part(f, len - 1),
        (Some(f), Some(l)) => Part(f, l.min(len - 1)),
    }
}

/// The response for a page's bytes: 200, 206 for a range, 304 when the ETag matches, 416
/// for a range beyond the end.
pub fn page_response(bytes: Bytes, sha256: &str, key: &str, headers: &HeaderMap) -> Response {
    let etag = format!("\"{sha256}\"");
    let matches = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    };
    let mut r = if matches(header::IF_NONE_MATCH) == Some(true) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let len = bytes.len() as u64;
        // If-Range with another validator means: send the whole current page.
        let range_ok = headers
            .get(header::IF_RANGE)
            .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
        let ask = if range_ok {
            parse_range(
                headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
                len,
            )
        } else {
            RangeAsk::Whole
        };
        match ask {
            RangeAsk::Whole => {
                let mut r = Response::new(Body::from(bytes));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(key)),
                );
                r
            }
            RangeAsk::Part(a, b) => {
                let mut r = Response::new(Body::from(bytes.slice(a as usize..=b as usize)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(key)),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                r
            }
            RangeAsk::Unsatisfiable => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
        }
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // A page's bytes never change under its ETag: let the browser keep it, privately.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Cookie"));
    r
}

fn parse_paper(paper: &str) -> Result<Paper, AppError> {
    Paper::parse(paper).map_err(|_| AppError::NotFound)
}

/// `GET /scripts/{laestab}/{upn}/{paper}/pages/{page}`: one page image.
async fn page_image(
    State(state): State<AppState>,
    s: Signed,
    Path((laestab, upn, paper, page)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let release = match release_for(&state, &s, &laestab) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let paper = match parse_paper(&paper) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Ok(number) = page.parse::<u32>() else {
        return AppError::NotFound.into_response();
    };
    let school = match state.scripts.school(&state, &release, &laestab).await {
        Ok(s) => s,
        Err(e) => {
            return unavailable(&PageError::Store {
                key: layout::school_scripts(&laestab),
                reason: format!("{e:#}"),
            });
        }
    };
    let Some(p) = school
        .pages(&upn, paper)
        .iter()
        .find(|p| p.page == number)
        .cloned()
    else {
        return AppError::NotFound.into_response();
    };
    record(
        &state,
        &s.user,
        "script-page-viewed",
        format!("{}/{laestab}/{upn}/{paper}/{number}", release.id),
    )
    .await;
    match state.scripts.page(&p).await {
        Ok(bytes) => page_response(bytes, &p.sha256, &p.key, &headers),
        Err(e) => unavailable(&e),
    }
}

/// A pupil's result for one subject, from the school's results file.
fn subject_result(row: Option<&PupilRow>, subject: Subject) -> (String, String, String) {
    let i = TESTS
        .iter()
        .position(|(s, _)| *s == subject.as_str())
        .unwrap_or(0);
    match row {
        Some(r) => {
            let t = &r.tests[i];
            let outcome = match t.met.as_str() {
                "AS" if t.high == "Y" => "Met the expected standard (high score)".to_string(),
                "AS" => "Met the expected standard".to_string(),
                "NS" => "Did not meet the expected standard".to_string(),
                _ => "Not counted".to_string(),
            };
            (t.raw.clone(), t.result.clone(), outcome)
        }
        None => (String::new(), String::new(), "No result".into()),
    }
}

fn subject_name(subject: Subject) -> &'static str {
    TESTS
        .iter()
        .find(|(s, _)| *s == subject.as_str())
        .map_or("", |(_, n)| n)
}

fn paper_name(paper: Paper) -> &'static str {
    match paper {
        Paper::Gps1 => "English grammar, punctuation and spelling paper 1: questions",
        Paper::Gps2 => "English grammar, punctuation and spelling paper 2: spelling",
        Paper::Reading => "English reading",
        Paper::Maths1 => "Mathematics paper 1: arithmetic",
        Paper::Maths2 => "Mathematics paper 2: reasoning",
        Paper::Maths3 => "Mathematics paper 3: reasoning",
    }
}

async fn school_pupils(
    state: &AppState,
    release: &Release,
    laestab: &str,
) -> anyhow::Result<Vec<PupilRow>> {
    Ok(
        match state
            .results
            .object(release, &layout::school_csv(laestab))
            .await?
        {
            Some(b) => parse_school_csv(&b)?,
            None => Vec::new(),
        },
    )
}

/// `GET /scripts/{laestab}`: every pupil's papers, with a link to each script or why there
/// is none yet.
async fn school_list(
    State(state): State<AppState>,
    s: Signed,
    Path(laestab): Path<String>,
) -> Result<Response, AppError> {
    let release = match release_for(&state, &s, &laestab) {
        Ok(r) => r,
        Err(r) => return Ok(*r),
    };
    let pupils = school_pupils(&state, &release, &laestab).await?;
    let scripts = state.scripts.school(&state, &release, &laestab).await?;
    record(
        &state,
        &s.user,
        "scripts-list-viewed",
        format!("{}/{laestab}", release.id),
    )
    .await;
    let name = release.names.get(&laestab).cloned().unwrap_or_default();
    let mut p = Page::new(&state, &s, "Marked test scripts");
    p.paragraphs = vec![
        format!("{name} ({laestab}). Choose a pupil's paper to see the marked pages beside the marks for each question."),
        "Where a result is M, the script has not been marked yet: it will appear here, and you will be told, when a later release brings it.".into(),
    ];
    p.links = vec![
        (
            format!("/results/school/{laestab}"),
            "Back to results".into(),
        ),
        ("/reviews".into(), "Reviews of marking".into()),
    ];
    let mut section = Section {
        heading: "Pupils".into(),
        head: vec![
            "Pupil".into(),
            "UPN".into(),
            "Not yet available".into(),
            "Scripts".into(),
        ],
        ..Default::default()
    };
    for row in &pupils {
        let mut links = Vec::new();
        let mut missing = Vec::new();
        for paper in Paper::ALL {
            let (_, result, _) = subject_result(Some(row), paper.subject());
            if !scripts.pages(&row.upn, *paper).is_empty() {
                links.push((
                    format!("/scripts/{laestab}/{}/{paper}", row.upn),
                    format!("{} {}: {paper}", row.forename, row.surname),
                ));
            } else if result == "M" {
                missing.push(format!("{paper}: script not yet available"));
            }
        }
        section.rows.push(Row {
            cells: vec![
                format!("{} {}", row.forename, row.surname),
                row.upn.clone(),
                if missing.is_empty() && links.is_empty() {
                    "No scripts".into()
                } else if missing.is_empty() {
                    "None".into()
                } else {
                    missing.join("; ")
                },
            ],
            links,
        });
    }
    p.sections.push(section);
    Ok(render(StatusCode::OK, &p))
}

#[derive(Template)]
#[template(path = "script.html")]
struct Viewer {
    title: String,
    errors: Vec<(String, String)>,
    notice: Option<String>,
    user: Option<SignedIn>,
    csrf: String,
    idle_seconds: i64,
    warning_seconds: i64,
    refresh: Option<i64>,
    print: bool,
    laestab: String,
    pupil: String,
    upn: String,
    school: String,
    paper: String,
    subject: String,
    raw: String,
    scaled: String,
    outcome: String,
    /// (number, src) in order.
    pages: Vec<(u32, String)>,
    /// (item, mark, max)
    marks: Vec<(String, String, String)>,
    paper_total: String,
    base: String,
    missing: bool,
    may_review: bool,
    other_papers: Vec<(String, String)>,
}

async fn viewer_page(
    state: &AppState,
    s: &Signed,
    laestab: &str,
    upn: &str,
    paper: &str,
    print: bool,
) -> Result<Response, AppError> {
    let release = match release_for(state, s, laestab) {
        Ok(r) => r,
        Err(r) => return Ok(*r),
    };
    let Ok(paper) = Paper::parse(paper) else {
        return Err(AppError::NotFound);
    };
    let pupils = school_pupils(state, &release, laestab).await?;
    let Some(row) = pupils.iter().find(|p| p.upn == upn) else {
        return Err(AppError::NotFound);
    };
    let scripts = state.scripts.school(state, &release, laestab).await?;
    let marks = match state
        .results
        .object(&release, &layout::school_item_marks(laestab))
        .await?
    {
        Some(b) => ItemMarks::parse(&b)?,
        None => ItemMarks::default(),
    };
    let maxes: HashMap<(String, String), u8> = release
        .cycle
        .as_ref()
        .map(|c| {
            c.items
                .iter()
                .map(|i| ((i.paper.clone(), i.item.clone()), i.max_mark))
                .collect()
        })
        .unwrap_or_default();
    record(
        state,
        &s.user,
        "script-viewed",
        format!("{}/{laestab}/{upn}/{paper}", release.id),
    )
    .await;
    let subject = paper.subject();
    let (raw, scaled, outcome) = subject_result(Some(row), subject);
    let base = format!("/scripts/{laestab}/{upn}/{paper}");
    let pages: Vec<(u32, String)> = scripts
        .pages(upn, paper)
        .iter()
        .map(|p| (p.page, format!("{base}/pages/{}", p.page)))
        .collect();
    let paper_marks = marks.for_paper(upn, paper);
    let total: u32 = paper_marks
        .iter()
        .filter_map(|(_, m, _)| m.map(u32::from))
        .sum();
    let max_total: u32 = paper_marks
        .iter()
        .map(|(l, _, _)| {
            u32::from(
                maxes
                    .get(&(paper.to_string(), l.clone()))
                    .copied()
                    .unwrap_or(0),
            )
        })
        .sum();
    let pupil = format!("{} {}", row.forename, row.surname);
    let other_papers = Paper::ALL
        .iter()
        .filter(|p| **p != paper && !scripts.pages(upn, **p).is_empty())
        .map(|p| {
            (
                format!("/scripts/{laestab}/{upn}/{p}"),
                paper_name(*p).to_string(),
            )
        })
        .collect();
    let t = Viewer {
        title: format!("{pupil}: {}", paper_name(paper)),
        errors: Vec::new(),
        notice: None,
        user: Some(s.user.clone()),
        csrf: s.csrf.clone(),
        idle_seconds: state.settings.auth.idle_minutes * 60,
        warning_seconds: state.settings.auth.warning_minutes * 60,
        refresh: None,
        print,
        laestab: laestab.to_string(),
        pupil,
        upn: upn.to_string(),
        school: crate::results_pages::school_label(&release, laestab),
        paper: paper.to_string(),
        subject: subject_name(subject).to_string(),
        missing: pages.is_empty(),
        raw: if raw.is_empty() { "–".into() } else { raw },
        scaled: if scaled.is_empty() {
            "–".into()
        } else {
            scaled
        },
        outcome,
        pages,
        marks: paper_marks
            .iter()
            .map(|(label, m, _)| {
                (
                    label.clone(),
                    m.map_or("–".to_string(), |m| m.to_string()),
                    maxes
                        .get(&(paper.to_string(), label.clone()))
                        .map_or("–".to_string(), |m| m.to_string()),
                )
            })
            .collect(),
        paper_total: format!("{total} out of {max_total}"),
        base,
        may_review: s.user.kind == OrgKind::Ks2School
            && s.user.may(crate::auth::roles::Action::SchoolTasks),
        other_papers,
    };
    Ok(render(StatusCode::OK, &t))
}

/// `GET /scripts/{laestab}/{upn}/{paper}`: the viewer.
async fn viewer(
    State(state): State<AppState>,
    s: Signed,
    Path((laestab, upn, paper)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    viewer_page(&state, &s, &laestab, &upn, &paper, false).await
}

/// `GET /scripts/{laestab}/{upn}/{paper}/print`: every page, one per sheet, and the marks.
async fn print_view(
    State(state): State<AppState>,
    s: Signed,
    Path((laestab, upn, paper)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    viewer_page(&state, &s, &laestab, &upn, &paper, true).await
}

/// `GET /scripts/{laestab}/{upn}/{paper}/pdf`: the whole paper as one PDF, a page a sheet.
async fn pdf(
    State(state): State<AppState>,
    s: Signed,
    Path((laestab, upn, paper)): Path<(String, String, String)>,
) -> Response {
    let release = match release_for(&state, &s, &laestab) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let paper = match parse_paper(&paper) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let school = match state.scripts.school(&state, &release, &laestab).await {
        Ok(s) => s,
        Err(e) => return AppError::Unexpected(e).into_response(),
    };
    let refs = school.pages(&upn, paper).to_vec();
    if refs.is_empty() {
        return AppError::NotFound.into_response();
    }
    let mut images = Vec::with_capacity(refs.len());
    for p in &refs {
        match state.scripts.page(p).await {
            Ok(b) => images.push((p.key.clone(), b)),
            Err(e) => return unavailable(&e),
        }
    }
    record(
        &state,
        &s.user,
        "script-pdf-downloaded",
        format!("{}/{laestab}/{upn}/{paper}", release.id),
    )
    .await;
    let title = format!("{upn} {paper}");
    let made = tokio::task::spawn_blocking(move || crate::pdf::paper_pdf(&title, &images)).await;
    match made {
        Ok(Ok(bytes)) => {
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pdf"),
            );
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"{upn}-{paper}.pdf\""))
            {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            r
        }
        Ok(Err(e)) => AppError::Unexpected(e).into_response(),
        Err(e) => AppError::Unexpected(e.into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_as_rfc_9110_says() {
        use RangeAsk::*;
        let cases: &[(Option<&str>, u64, RangeAsk)] = &[
            (None, 100, Whole),
            (Some("bytes=0-9"), 100, Part(0, 9)),
            (Some("bytes=90-"), 100, Part(90, 99)),
            (Some("bytes=-10"), 100, Part(90, 99)),
            (Some("bytes=-500"), 100, Part(0, 99)),
            (Some("bytes=50-5000"), 100, Part(50, 99)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=200-300"), 100, Unsatisfiable),
            (Some("bytes=0-1,5-6"), 100, Whole),
            (Some("items=0-1"), 100, Whole),
            (Some("bytes=x-y"), 100, Whole),
            (Some("bytes=9-3"), 100, Whole),
            (Some("bytes=-0"), 100, Unsatisfiable),
        ];
        for (header, len, want) in cases {
            assert_eq!(&parse_range(*header, *len), want, "{header:?} of {len}");
        }
    }

    #[test]
    fn item_marks_read_back_by_paper() {
        let csv = b"upn,gps1:1,gps1:2,reading:1a\r\nA1,1,,2\r\n";
        let m = ItemMarks::parse(csv).unwrap();
        assert_eq!(
            m.for_paper("A1", Paper::Gps1),
            vec![("1".to_string(), Some(1), 0), ("2".to_string(), None, 1)]
        );
        assert_eq!(
            m.for_paper("A1", Paper::Reading),
            vec![("1a".to_string(), Some(2), 2)]
        );
    }
}
