//! Marked test scripts and reviews of marking, through the router: authorisation on every
//! route by organisation type; ETag, Range and caching headers; fault injection through a
//! wrapping object store that fails, stalls or corrupts chosen reads (one store read for 1,000
//! concurrent requests of a cold page; 503 for that page and nothing else); the review window
//! on a paused clock; a review from application to outcome, email and corrections file.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use bytes::Bytes;
use common::*;
use futures::stream::BoxStream;
use nca_portal::accounts::{self, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, orgs};
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

const START: i64 = 1_751_950_000; // 2025-07-08 05:46 BST, before results open
const OPENS: i64 = 1_751_956_200; // 2025-07-08 07:30 BST
const CLOSES: i64 = 1_752_879_599; // 2025-07-18 23:59:59 BST

/// What the wrapping store does to reads whose key contains a pattern.
#[derive(Debug, Clone)]
enum Fault {
    Fail,
    Stall,
    Corrupt,
}

/// An object store that counts reads of script pages and injects faults on chosen keys.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Vec<(String, Fault)>>,
    page_reads: AtomicU64,
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    fn fault_for(&self, location: &ObjPath) -> Option<Fault> {
        let l = location.as_ref();
        self.faults
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| l.contains(p.as_str()))
            .map(|(_, f)| f.clone())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if location.as_ref().contains("scripts/") && !options.head {
            self.page_reads.fetch_add(1, Ordering::SeqCst);
            // A cold read takes a moment, as from a real store: the requests pile up on it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.fault_for(location) {
            Some(Fault::Fail) => Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected failure".into(),
            }),
            Some(Fault::Stall) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                unreachable!("stalled read")
            }
            Some(Fault::Corrupt) => {
                let r = self.inner.get_opts(location, options).await?;
                let meta = r.meta.clone();
                let mut b = r.bytes().await?.to_vec();
                b[100] ^= 0xFF;
                Ok(GetResult {
                    payload: object_store::GetResultPayload::Stream(Box::pin(
                        futures::stream::once(async move { Ok(Bytes::from(b)) }),
                    )),
                    range: 0..meta.size,
                    meta,
                    attributes: Default::default(),
                    extensions: Default::default(),
                })
            }
            None => self.inner.get_opts(location, options).await,
        }
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

struct World {
    state: AppState,
    app: nca_portal::App,
    store: Arc<Faulty>,
    /// A school with scripts, one of its pupils with pages, and that pupil's papers.
    school: String,
    la: String,
    other_school: String,
    upn: String,
    paper: String,
    pages: usize,
    _dir: tempfile::TempDir,
}

/// A synthetic cohort with script pages, published, organisations imported, one user of each
/// kind; the clock paused before results open.
async fn world(tweak: impl FnOnce(&mut Settings)) -> World {
    nca_portal::http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let intake = dir.path().join("intake");
    nca_pipeline::generate::generate(&nca_pipeline::generate::GenOptions {
        out: intake.clone(),
        schools: 6,
        seed: 7,
        year: 2025,
        script_pupils: 6,
        progress: false,
    })
    .unwrap();
    let mut settings = Settings::load(
        std::path::Path::new("/nonexistent-config"),
        &Overrides {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    settings.scripts.read_timeout_ms = 300;
    settings.reviews.deadline = "2025-07-18".into();
    tweak(&mut settings);
    let local = object_store::local::LocalFileSystem::new_with_prefix({
        let p = dir.path().join("data/store");
        std::fs::create_dir_all(&p).unwrap();
        p
    })
    .unwrap();
    let faulty = Arc::new(Faulty {
        inner: Arc::new(local),
        faults: Mutex::new(Vec::new()),
        page_reads: AtomicU64::new(0),
    });
    let store = nca_pipeline::store::Store::from_object_store(faulty.clone(), "");
    let opts = nca_pipeline::publish::PublishOptions {
        dir: intake.clone(),
        year: None,
        opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS).unwrap(),
        ks3_opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS + 86_400).unwrap(),
        progress: false,
        concurrency: 8,
    };
    let rep = Arc::new(nca_pipeline::report::Reporter::in_memory());
    nca_pipeline::publish::publish(&store, &opts, rep.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", rep.problems()));
    faulty.page_reads.store(0, Ordering::SeqCst);
    let state = AppState::open_with_store(settings, Clock::paused_at(START), store)
        .await
        .unwrap();
    orgs::import(&state.db, &intake, 0).await.unwrap();
    assert!(state.results.refresh().await.unwrap() || state.results.release().is_some());

    // The first pupil with pages, their school and LA.
    let mut scripts = csv::Reader::from_path(intake.join("scripts.csv")).unwrap();
    let first = scripts.records().next().unwrap().unwrap();
    let (upn, paper) = (first[0].to_string(), first[1].to_string());
    let pages = csv::Reader::from_path(intake.join("scripts.csv"))
        .unwrap()
        .records()
        .flatten()
        .filter(|r| r[0] == upn && r[1] == paper)
        .count();
    let release = state.results.release().unwrap();
    let school = release
        .pupils
        .get(&upn)
        .map(|_| ())
        .and_then(|_| {
            let mut p = csv::Reader::from_path(intake.join("pupils.csv")).unwrap();
            p.records()
                .flatten()
                .find(|r| r[0] == upn)
                .map(|r| r[1].to_string())
        })
        .unwrap();
    let (la, trust) = release.schools[&school].clone();
    // Another primary school (KS3 schools cannot hold school roles), in another LA if any.
    let primaries: Vec<(String, String)> = csv::Reader::from_path(intake.join("schools.csv"))
        .unwrap()
        .records()
        .flatten()
        .filter(|r| &r[4] == "primary" && r[1] != school)
        .map(|r| (r[1].to_string(), r[3].to_string()))
        .collect();
    let other_school = primaries
        .iter()
        .find(|(_, l)| *l != la)
        .or_else(|| primaries.first())
        .map(|(l, _)| l.clone())
        .unwrap();
    let other_la = release
        .schools
        .values()
        .map(|(l, _)| l.clone())
        .find(|l| *l != la);
    let mat = trust.or_else(|| release.schools.values().find_map(|(_, t)| t.clone()));
    let ks3 = {
        let mut s = csv::Reader::from_path(intake.join("schools.csv")).unwrap();
        s.records()
            .flatten()
            .find(|r| &r[4] == "secondary")
            .map(|r| r[1].to_string())
            .unwrap()
    };
    let mut users: Vec<(&str, String, Vec<Role>)> = vec![
        (
            "head@school.sch.uk",
            school.clone(),
            vec![Role::AccountManager, Role::GeneralUser],
        ),
        (
            "viewer@school.sch.uk",
            school.clone(),
            vec![Role::AccountManager],
        ),
        (
            "other@school.sch.uk",
            other_school.clone(),
            vec![Role::GeneralUser],
        ),
        ("la@la.gov.uk", la.clone(), vec![Role::LaGeneralUser]),
        ("ks3@high.sch.uk", ks3, vec![Role::Ks3User]),
        (
            "operator@sta.gov.uk",
            "operator".into(),
            vec![Role::Operator],
        ),
    ];
    if let Some(l) = other_la {
        users.push(("otherla@la.gov.uk", l, vec![Role::LaGeneralUser]));
    }
    if let Some(m) = mat {
        users.push(("mat@trust.org.uk", m, vec![Role::MatUser]));
    }
    for (email, org, roles) in &users {
        accounts::create_user(
            &state,
            &Actor::cli(),
            org,
            email,
            email,
            RoleSet::of(roles),
            Some(PW),
        )
        .await
        .unwrap();
    }
    let app = nca_portal::app(state.clone());
    World {
        state,
        app,
        store: faulty,
        school,
        la,
        other_school,
        upn,
        paper,
        pages,
        _dir: dir,
    }
}

impl World {
    fn base(&self) -> String {
        format!("/scripts/{}/{}/{}", self.school, self.upn, self.paper)
    }
    async fn open_results(&self) {
        self.state.clock.advance(OPENS - START);
    }
}

#[tokio::test]
async fn every_script_route_is_authorised_by_organisation_type() {
    let w = world(|_| {}).await;
    let base = w.base();
    let routes = [
        format!("/scripts/{}", w.school),
        base.clone(),
        format!("{base}/print"),
        format!("{base}/pdf"),
        format!("{base}/pages/1"),
    ];
    // Before 7:30 nobody but the operator sees scripts, even their own.
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    for r in &routes {
        let (status, _, _) = send(&w.app, get(r, &head)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{r} before opening");
    }
    w.open_results().await;
    let mut expect: Vec<(&str, StatusCode)> = vec![
        ("head@school.sch.uk", StatusCode::OK),
        ("la@la.gov.uk", StatusCode::OK),
        ("operator@sta.gov.uk", StatusCode::OK),
        ("other@school.sch.uk", StatusCode::FORBIDDEN),
        ("ks3@high.sch.uk", StatusCode::FORBIDDEN),
        // An account manager without the general-user permission cannot view results.
        ("viewer@school.sch.uk", StatusCode::FORBIDDEN),
    ];
    let emails: HashSet<String> = nca_portal::db::members(&w.state.db, &w.la)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.email)
        .collect();
    assert!(emails.contains("la@la.gov.uk"));
    if nca_portal::db::user_by_email(&w.state.db, "otherla@la.gov.uk")
        .await
        .unwrap()
        .is_some()
    {
        expect.push(("otherla@la.gov.uk", StatusCode::FORBIDDEN));
    }
    if nca_portal::db::user_by_email(&w.state.db, "mat@trust.org.uk")
        .await
        .unwrap()
        .is_some()
    {
        expect.push(("mat@trust.org.uk", StatusCode::FORBIDDEN));
    }
    let mut leaks = 0;
    for (email, want) in &expect {
        let cookie = sign_in(&w.state, &w.app, email).await;
        for r in &routes {
            let (status, _, body) = send(&w.app, get(r, &cookie)).await;
            assert_eq!(status, *want, "{email} {r}");
            if *want != StatusCode::OK && body.windows(4).any(|b| b == b"\x89PNG") {
                leaks += 1;
            }
        }
    }
    assert_eq!(leaks, 0);
    // Signed out: nothing.
    for r in &routes {
        let (status, _, _) = send(&w.app, get(r, "")).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::SEE_OTHER,
            "{r} signed out: {status}"
        );
    }
    // Another school's pupil through this school's path finds nothing either.
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let (status, _, _) = send(
        &w.app,
        get(
            &format!("/scripts/{}/{}/{}/pages/1", w.other_school, w.upn, w.paper),
            &head,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Every view is in the access log (written in batches: wait for the writer).
    let want = format!("{}/{}/{}/1", w.school, w.upn, w.paper);
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = nca_portal::db::audit_rows(&w.state.db, None, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, actor, action, target, _)| {
                action == "script-page-viewed"
                    && target.ends_with(&want)
                    && actor == "head@school.sch.uk"
            })
            .collect();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!seen.is_empty(), "page views are audited");
    let actions: HashSet<String> = nca_portal::db::audit_rows(&w.state.db, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, _, a, _, _)| a)
        .collect();
    for a in [
        "scripts-list-viewed",
        "script-viewed",
        "script-pdf-downloaded",
    ] {
        assert!(actions.contains(a), "{a} audited");
    }
}

#[tokio::test]
async fn the_viewer_shows_pages_in_order_with_marks_and_the_pdf_holds_every_page() {
    let w = world(|_| {}).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let (status, _, body) = send(&w.app, get(&w.base(), &head)).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(body).unwrap();
    let mut last = 0;
    for n in 1..=w.pages {
        let at = html
            .find(&format!("{}/pages/{n}\"", w.base()))
            .unwrap_or_else(|| panic!("page {n} missing"));
        assert!(at > last, "pages in order");
        last = at;
    }
    assert!(html.contains("Marks awarded per question"));
    assert!(html.contains("raw score"));
    assert!(html.contains("/assets/viewer.js"), "keyboard navigation");
    let (status, headers, pdf) = send(&w.app, get(&format!("{}/pdf", w.base()), &head)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/pdf");
    let text = String::from_utf8_lossy(&pdf);
    let pages = text.matches("/Type /Page").count() - text.matches("/Type /Pages").count();
    assert_eq!(pages, w.pages);
    let (status, _, body) = send(&w.app, get(&format!("{}/print", w.base()), &head)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("Print this paper")
    );
}

#[tokio::test]
async fn pages_carry_strong_etags_ranges_and_long_private_caching() {
    let w = world(|_| {}).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let url = format!("{}/pages/1", w.base());
    let (status, h, whole) = send(&w.app, get(&url, &head)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "image/png");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(
        h[header::CACHE_CONTROL],
        "private, max-age=31536000, immutable"
    );
    let etag = h[header::ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong");
    use sha2::Digest;
    assert_eq!(
        etag.trim_matches('"'),
        hex::encode(sha2::Sha256::digest(&whole))
    );
    let with = |name: header::HeaderName, v: &str| {
        let mut r = get(&url, &head);
        r.headers_mut().insert(name, v.parse().unwrap());
        r
    };
    let (status, _, body) = send(&w.app, with(header::IF_NONE_MATCH, &etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (status, h, part) = send(&w.app, with(header::RANGE, "bytes=0-99")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part, whole[..100]);
    assert_eq!(
        h[header::CONTENT_RANGE],
        format!("bytes 0-99/{}", whole.len()).as_str()
    );
    let (status, _, tail) = send(&w.app, with(header::RANGE, "bytes=-10")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, whole[whole.len() - 10..]);
    let (status, h, _) = send(
        &w.app,
        with(header::RANGE, &format!("bytes={}-", whole.len())),
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        h[header::CONTENT_RANGE],
        format!("bytes */{}", whole.len()).as_str()
    );
    // If-Range with another validator: the whole page.
    let mut r = with(header::RANGE, "bytes=0-9");
    r.headers_mut()
        .insert(header::IF_RANGE, "\"not-this\"".parse().unwrap());
    let (status, _, body) = send(&w.app, r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, whole);
}

#[tokio::test]
async fn a_thousand_requests_for_a_cold_page_cause_one_store_read() {
    // The world's 300 ms read timeout is for the slow-store tests; here a thousand debug-built
    // requests share one test thread with the read, which must not be timed out behind them.
    let w = world(|s| s.scripts.read_timeout_ms = 30_000).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    // The school's page list is read once first, so only the page itself is cold.
    let (status, _, _) = send(&w.app, get(&w.base(), &head)).await;
    assert_eq!(status, StatusCode::OK);
    let before = w.store.page_reads.load(Ordering::SeqCst);
    let url = format!("{}/pages/2", w.base());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (app, req) = (w.app.clone(), get(&url, &head));
            tokio::spawn(async move { send(&app, req).await })
        })
        .collect();
    let mut bodies = HashSet::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "every answer the same bytes");
    assert_eq!(w.store.page_reads.load(Ordering::SeqCst) - before, 1);
}

#[tokio::test]
async fn a_failing_stalled_or_corrupt_store_answers_503_for_that_page_only() {
    let w = world(|_| {}).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let page = |n: usize| format!("{}/pages/{n}", w.base());
    let key = |n: usize| format!("{}/{}/{:02}.png", w.upn, w.paper, n);
    w.store.faults.lock().unwrap().extend([
        (key(1), Fault::Fail),
        (key(2), Fault::Stall),
        (key(3), Fault::Corrupt),
    ]);
    for n in 1..=3 {
        let started = std::time::Instant::now();
        let (status, h, body) = send(&w.app, get(&page(n), &head)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "page {n}");
        assert!(h.contains_key(header::RETRY_AFTER), "page {n}");
        assert!(!body.windows(4).any(|b| b == b"\x89PNG"), "no image bytes");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered promptly"
        );
    }
    // The rest of the service is unaffected: another page, the results download, a page.
    let (status, _, body) = send(&w.app, get(&page(4), &head)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"\x89PNG"));
    let (status, _, _) = send(
        &w.app,
        get(&format!("/api/v1/results/school/{}.csv", w.school), &head),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Once the store recovers, the page is served (the failure was not cached).
    w.store.faults.lock().unwrap().clear();
    let (status, _, body) = send(&w.app, get(&page(1), &head)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"\x89PNG"));
}

/// Submit a form; the page's CSRF token comes from the session cookie's page.
async fn post_form(
    w: &World,
    path: &str,
    cookie: &str,
    pairs: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let (status, headers, body) = send(&w.app, form_post(path, cookie, pairs)).await;
    let location = headers
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, String::from_utf8(body).unwrap(), location)
}

async fn page_csrf(w: &World, path: &str, cookie: &str) -> (StatusCode, String, String) {
    let (status, _, body) = send(&w.app, get(path, cookie)).await;
    let html = String::from_utf8(body).unwrap();
    let csrf = csrf_of(&html);
    (status, html, csrf)
}

/// The session's CSRF token from any signed-in page (the page's meta tag).
fn meta_csrf(html: &str) -> String {
    let at = html.find("name=\"nca-csrf\" content=\"").unwrap() + 25;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn reviews_are_taken_only_inside_the_window() {
    let w = world(|_| {}).await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    // Before results: no reviews at all.
    let (status, _, _) = send(&w.app, get("/reviews/new", &head)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let (status, html, _) = page_csrf(&w, "/reviews/new", &head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("What kind of review?"),
        "the form is open at 7:30"
    );
    // One second after 23:59:59 on the deadline (signed in afresh: ten days have passed):
    // read-only, saying why.
    w.state.clock.advance(CLOSES - OPENS + 1);
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let (status, _, body) = send(&w.app, get("/reviews/new", &head)).await;
    let html = String::from_utf8(body).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("closed at 23:59 on 18 July 2025"), "{html}");
    assert!(!html.contains("What kind of review?"));
    let csrf = meta_csrf(&html);
    let item = format!("{}:{}", w.upn, w.paper);
    for path in ["/reviews/new", "/reviews/reasons", "/reviews/submit"] {
        let (status, html, _) = post_form(
            &w,
            path,
            &head,
            &[
                ("csrf", &csrf),
                ("kind", "marking"),
                ("item", &item),
                ("reason-0", "late"),
                ("token", "late-token"),
            ],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{path}: the server refuses late applications"
        );
        assert!(html.contains("closed at"), "{path}");
    }
    let (_, _, body) = send(&w.app, get("/reviews", &head)).await;
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("You have not applied")
    );
    // (23:59:59 itself is inside the window: see reviews::tests.)
}

#[tokio::test]
async fn a_review_goes_from_application_to_outcome_email_and_corrections() {
    let w = world(|_| {}).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let item = format!("{}:{}", w.upn, w.paper);
    let (_, _, csrf) = page_csrf(&w, "/reviews/new", &head).await;
    // Nothing chosen: 422 with an error summary.
    let (status, html, _) = post_form(&w, "/reviews/new", &head, &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Error: ") && html.contains("Select the kind of review"));
    assert!(html.contains("Select at least one pupil"));
    // Another school's pupil is refused.
    let (status, _, _) = post_form(
        &w,
        "/reviews/new",
        &head,
        &[
            ("csrf", &csrf),
            ("kind", "marking"),
            ("item", "H801200001001:reading"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, html, _) = post_form(
        &w,
        "/reviews/new",
        &head,
        &[("csrf", &csrf), ("kind", "marking"), ("item", &item)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("reason-0"));
    // A missing reason: 422.
    let base = [
        ("csrf", csrf.as_str()),
        ("kind", "marking"),
        ("item", item.as_str()),
    ];
    let (status, html, _) = post_form(&w, "/reviews/reasons", &head, &base).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter your reason"));
    let mut with_reason = base.to_vec();
    with_reason.push(("reason-0", "Question 3 answer matches the mark scheme"));
    let (status, html, _) = post_form(&w, "/reviews/reasons", &head, &with_reason).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Check your answers"));
    let token = html
        .split("name=\"token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let mut submit = with_reason.clone();
    submit.push(("token", &token));
    let (status, _, first) = post_form(&w, "/reviews/submit", &head, &submit).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, second) = post_form(&w, "/reviews/submit", &head, &submit).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(first, second, "submitting twice makes one application");
    let id = first
        .trim_start_matches("/reviews/")
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let (status, _, body) = send(&w.app, get("/reviews", &head)).await;
    assert_eq!(status, StatusCode::OK);
    let list = String::from_utf8(body).unwrap();
    assert_eq!(list.matches(&format!("/reviews/{id}\"")).count(), 1);
    assert!(list.contains("awaiting outcome"));
    // Another school cannot see it.
    let other = sign_in(&w.state, &w.app, "other@school.sch.uk").await;
    let (status, _, _) = send(&w.app, get(&format!("/reviews/{id}"), &other)).await;
    assert!(status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN);
    // The school cannot record outcomes.
    let (status, _, _) = send(&w.app, get("/operator/reviews", &head)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The operator raises the first question's mark by 2.
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let form = format!("/operator/reviews/{id}/{}/{}", w.upn, w.paper);
    let (status, html, op_csrf) = page_csrf(&w, &form, &op).await;
    assert_eq!(status, StatusCode::OK);
    let inputs: Vec<(String, String)> = html
        .split("<input class=\"govuk-input")
        .skip(1)
        .map(|chunk| {
            let name = chunk
                .split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let value = chunk
                .split("value=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (name.to_string(), value.to_string())
        })
        .collect();
    assert!(!inputs.is_empty());
    let maxes: Vec<u8> = html
        .split("-max\">out of ")
        .skip(1)
        .map(|c| c.split('<').next().unwrap().trim().parse().unwrap_or(0))
        .collect();
    // Find a question with room for 2 more marks, or raise two questions by 1.
    let mut pairs: Vec<(String, String)> = inputs.clone();
    let mut raised = 0;
    for (i, (_, v)) in pairs.iter_mut().enumerate() {
        let m: u8 = v.parse().unwrap_or(0);
        if raised < 2 && m < maxes[i] {
            *v = (m + 1).to_string();
            raised += 1;
        }
    }
    assert_eq!(raised, 2, "two questions below their maximum");
    let mut body: Vec<(&str, &str)> = vec![("csrf", &op_csrf)];
    body.extend(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (status, _, _) = post_form(&w, &form, &op, &body).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Decided: the school sees the outcome, free (raw score up by 2), and was emailed.
    let (_, _, body) = send(&w.app, get(&format!("/reviews/{id}"), &head)).await;
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("Marks changed"), "{page}");
    assert!(page.contains("Free of charge"));
    let (_, mail) =
        nca_portal::email::latest_in_outbox(&w.state.settings.outbox(), "head@school.sch.uk")
            .unwrap();
    assert!(mail.contains("outcome of your school's review"), "{mail}");
    // The changed marks leave as corrections.
    let c = nca_portal::reviews::corrections(&w.state.db).await.unwrap();
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|(u, p, _, _)| *u == w.upn && *p == w.paper));
    // Out-of-range marks are refused with 422 naming the question.
    let (_, html, op_csrf) = page_csrf(&w, &form, &op).await;
    let _ = html;
    let mut bad: Vec<(&str, &str)> = vec![("csrf", &op_csrf)];
    let first_name = inputs[0].0.clone();
    bad.push((&first_name, "99"));
    let (status, html, _) = post_form(&w, &form, &op, &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("enter a mark from 0 to"));
}

#[tokio::test]
async fn the_calculator_shows_what_a_change_of_raw_marks_would_do() {
    let w = world(|_| {}).await;
    w.open_results().await;
    let head = sign_in(&w.state, &w.app, "head@school.sch.uk").await;
    let release = w.state.results.release().unwrap();
    let table = &release.cycle.as_ref().unwrap().conversion["reading"];
    // The raw score just below 100 and the change that reaches it.
    let at = table
        .iter()
        .position(|s| s.is_some_and(|v| v >= 100))
        .unwrap();
    let (status, _, body) = send(
        &w.app,
        get(
            &format!(
                "/reviews/calculator?subject=reading&raw={}&change=1",
                at - 1
            ),
            &head,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains(&format!("raw {at}: scaled {}", table[at].unwrap())),
        "{html}"
    );
    assert!(html.contains("meets the expected standard"));
    let (status, _, _) = send(
        &w.app,
        get(
            "/reviews/calculator?subject=reading&raw=900&change=1",
            &head,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
