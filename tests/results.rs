//! The results routes: an authorisation matrix over every route and organisation type (own
//! data, another's, none), the embargo on a paused clock, precompressed variants with strong
//! ETags, and a release switch picked up without a restart.

mod common;

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use nca_portal::accounts::{self, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, orgs};
use tower::ServiceExt;

const START: i64 = 1_720_500_000; // 2024-07-09 04:40 UTC, before opening
const OPENS: i64 = 1_720_506_600; // 2024-07-09 07:30 +01:00

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data-pipeline/tests/fixtures/rules")
}

async fn app() -> (AppState, nca_portal::App, tempfile::TempDir) {
    app_with(|_| {}).await
}

async fn app_with(
    tweak: impl FnOnce(&mut Settings),
) -> (AppState, nca_portal::App, tempfile::TempDir) {
    nca_portal::http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(
        Path::new("/nonexistent-config"),
        &Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    tweak(&mut settings);
    let state = AppState::open(settings, Clock::paused_at(START))
        .await
        .unwrap();
    orgs::import(&state.db, &fixture(), 0).await.unwrap();
    publish(&state).await;
    assert!(state.results.refresh().await.unwrap());
    let users: &[(&str, &str, Role)] = &[
        ("school@a.sch.uk", "9992001", Role::GeneralUser),
        ("manager@a.sch.uk", "9992001", Role::AccountManager),
        ("academy@b.sch.uk", "9992002", Role::GeneralUser),
        ("la@la.gov.uk", "999", Role::LaGeneralUser),
        ("moderator@la.gov.uk", "999", Role::Moderator),
        ("mat@trust.org.uk", "12345", Role::MatUser),
        ("ks3@high.sch.uk", "9994001", Role::Ks3User),
        ("operator@sta.gov.uk", "operator", Role::Operator),
    ];
    for (email, org, role) in users {
        accounts::create_user(
            &state,
            &Actor::cli(),
            org,
            email,
            email,
            RoleSet::of(&[*role]),
            Some(PW),
        )
        .await
        .unwrap();
    }
    let router = nca_portal::app(state.clone());
    (state, router, dir)
}

async fn publish(state: &AppState) {
    let opts = nca_pipeline::publish::PublishOptions {
        dir: fixture(),
        year: None,
        opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS).unwrap(),
        ks3_opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS + 86_400).unwrap(),
        progress: false,
        concurrency: 4,
    };
    let rep = std::sync::Arc::new(nca_pipeline::report::Reporter::in_memory());
    nca_pipeline::publish::publish(&state.store, &opts, rep)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_route_and_organisation_type_sees_only_its_own_results() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let routes = [
        "/api/v1/results/school/9992001.csv",
        "/api/v1/results/school/9992001.ctf",
        "/api/v1/results/school/9992002.csv",
        "/api/v1/results/school/9992002.ctf",
        "/api/v1/results/school/9990000.csv",
        "/api/v1/results/la/999.csv",
        "/api/v1/results/la/998.csv",
        "/api/v1/results/trust/12345.csv",
        "/api/v1/results/trust/99999.csv",
        "/api/v1/results/school/9992001.csv?subject=maths",
        "/api/v1/results/school/9992001-summary.csv",
        "/api/v1/results/school/9992001-qla.csv",
        "/api/v1/results/school/9992002-summary.csv",
        "/results/school/9992001",
        "/results/school/9992001/reading",
        "/results/school/9992001/letters",
        "/results/school/9992002",
        "/results/school/9992002/maths",
        "/api/v1/results/school/9992002.csv?ta=no",
    ];
    // For each user, the routes that answer 200; every other one must not.
    let school_a: &[usize] = &[0, 1, 9, 10, 11, 13, 14, 15];
    let school_b: &[usize] = &[2, 3, 12, 16, 17, 18];
    let both = [school_a, school_b].concat();
    let la = [both.as_slice(), &[5]].concat();
    let mat = [school_b, &[7]].concat();
    let operator = [la.as_slice(), &[7]].concat();
    let allowed: &[(&str, &[usize])] = &[
        ("school@a.sch.uk", school_a),
        ("manager@a.sch.uk", &[]),
        ("academy@b.sch.uk", school_b),
        ("la@la.gov.uk", &la),
        ("moderator@la.gov.uk", &[]),
        ("mat@trust.org.uk", &mat),
        ("ks3@high.sch.uk", &[]),
        ("operator@sta.gov.uk", &operator),
    ];
    let upns: Vec<String> = std::fs::read_to_string(fixture().join("pupils.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let expected_school = std::fs::read(fixture().join("expected/school-9992001.csv")).unwrap();
    for (email, ok) in allowed {
        let cookie = sign_in(&state, &router, email).await;
        for (i, route) in routes.iter().enumerate() {
            let (status, _, body) = send(&router, get(route, &cookie)).await;
            if ok.contains(&i) {
                assert_eq!(status, 200, "{email} {route}");
                if i == 0 {
                    assert_eq!(
                        body, expected_school,
                        "{email}: exactly the published bytes"
                    );
                }
            } else {
                assert!(status == 403 || status == 404, "{email} {route}: {status}");
                let body = String::from_utf8_lossy(&body);
                assert!(
                    !body.contains("upn") && !upns.iter().any(|u| body.contains(u.as_str())),
                    "{email} {route} leaked rows"
                );
            }
        }
    }
    // Nobody signed in: 401 from the API, and the pages send you to sign in.
    for route in routes {
        let (status, headers, _) = send(&router, get(route, "")).await;
        if route.starts_with("/api/") {
            assert_eq!(status, 401, "{route}");
        } else {
            assert_eq!(status, 303, "{route}");
            assert!(
                headers[header::LOCATION]
                    .to_str()
                    .unwrap()
                    .starts_with("/sign-in")
            );
        }
    }
    // Every download was audited with who and what.
    let log = nca_portal::db::audit_rows(&state.db, Some("999"), 100)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log2 = nca_portal::db::audit_rows(&state.db, Some("999"), 100)
        .await
        .unwrap();
    assert!(log2.len() >= log.len());
    assert!(
        log2.iter().any(|r| r.1 == "la@la.gov.uk"
            && r.2 == "results-download"
            && r.3.ends_with("la/999.csv")),
        "{log2:?}"
    );
}

#[tokio::test]
async fn results_are_embargoed_until_the_opening_time() {
    let (state, router, _dir) = app().await;
    let mut cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let route = "/api/v1/results/school/9992001.csv";
    let (status, _, body) = send(&router, get(route, &cookie)).await;
    assert_eq!(status, 403);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("2024-07-09T06:30:00Z"), "{body}");
    // Waiting signed in (the page keeps the session alive), asking every 20 minutes.
    let mut waited = 0;
    while waited + 1200 < OPENS - START - 1 {
        state.clock.advance(1200);
        waited += 1200;
        let (status, headers, _) = send(&router, get(route, &cookie)).await;
        assert_eq!(status, 403, "{waited} s in");
        cookie = follow(&cookie, &headers);
    }
    state.clock.advance(OPENS - START - 1 - waited);
    let (status, headers, _) = send(&router, get(route, &cookie)).await;
    assert_eq!(status, 403, "one second before");
    cookie = follow(&cookie, &headers);
    state.clock.advance(1);
    assert_eq!(
        send(&router, get(route, &cookie)).await.0,
        200,
        "at the opening time"
    );
}

#[tokio::test]
async fn downloads_use_precompressed_variants_with_strong_etags() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let route = "/api/v1/results/school/9992001.csv";
    let plain = std::fs::read(fixture().join("expected/school-9992001.csv")).unwrap();
    let asking = |enc: &str| {
        Request::get(route)
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT_ENCODING, enc)
    };
    let mut etags = Vec::new();
    for enc in ["br, gzip", "gzip", "identity", ""] {
        let req = asking(enc).body(Body::empty()).unwrap();
        let (status, h, body) = send(&router, req).await;
        assert_eq!(status, 200);
        assert_eq!(h[header::CACHE_CONTROL], "private, no-cache");
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && !etag.starts_with("W/"),
            "strong: {etag}"
        );
        let decoded = match h.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap()) {
            Some("br") => {
                assert_eq!(enc, "br, gzip");
                let mut out = Vec::new();
                brotli::BrotliDecompress(&mut body.as_slice(), &mut out).unwrap();
                out
            }
            Some("gzip") => {
                assert_eq!(enc, "gzip");
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(body.as_slice()),
                    &mut out,
                )
                .unwrap();
                out
            }
            None => body,
            Some(other) => panic!("{other}"),
        };
        assert_eq!(decoded, plain, "{enc}");
        // The same representation again with If-None-Match: 304, no body.
        let req = asking(enc)
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send(&router, req).await;
        assert_eq!(status, 304);
        assert!(body.is_empty());
        etags.push(etag);
    }
    assert_ne!(etags[0], etags[1], "each representation has its own tag");
    // A zero weight refuses a coding, however it is written; any other weight accepts it.
    for (enc, want) in [
        ("br;q=0.0, gzip", Some("gzip")),
        ("BR; Q=0.000, gzip;q=0", None),
        ("gzip;q=0.5", Some("gzip")),
    ] {
        let req = asking(enc).body(Body::empty()).unwrap();
        let (status, h, _) = send(&router, req).await;
        assert_eq!(status, 200);
        let got = h.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap());
        assert_eq!(got, want, "{enc}");
    }
}

/// The request with the client's own request id, which every answer keeps.
fn with_id(mut r: Request<Body>) -> Request<Body> {
    r.headers_mut().insert(
        "x-request-id",
        header::HeaderValue::from_static("client-id-7"),
    );
    r
}

/// The results fast path (ahead of the router) must answer exactly as the router's handlers
/// do: same status, headers and bytes for every user, route, encoding and revalidation.
#[tokio::test]
async fn the_fast_path_answers_exactly_as_the_router_does() {
    let (state, app, _dir) = app_with(|s| s.rate_limits.per_user_per_minute = 10_000).await;
    state.clock.advance(OPENS - START);
    let router = nca_portal::router(state.clone());
    let routes = [
        "/api/v1/results/school/9992001.csv",
        "/api/v1/results/school/9992001.ctf",
        "/api/v1/results/school/9992002.csv",
        "/api/v1/results/school/9990000.csv",
        "/api/v1/results/school/9992001.pdf",
        "/api/v1/results/la/999.csv",
        "/api/v1/results/la/998.csv",
        "/api/v1/results/trust/12345.csv",
    ];
    let comparable = |h: &axum::http::HeaderMap| {
        let mut v: Vec<(String, String)> = h
            .iter()
            // hyper writes Content-Length from the body on the wire either way.
            .filter(|(k, _)| ![header::SET_COOKIE, header::CONTENT_LENGTH].contains(k))
            .filter(|(k, _)| *k != "x-request-id")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let mut fast_answers = 0;
    for email in [
        "school@a.sch.uk",
        "la@la.gov.uk",
        "mat@trust.org.uk",
        "ks3@high.sch.uk",
    ] {
        let cookie = sign_in(&state, &app, email).await;
        for route in routes {
            for enc in ["br, gzip", "gzip", ""] {
                let req = || {
                    Request::get(route)
                        .header(header::COOKIE, &cookie)
                        .header(header::ACCEPT_ENCODING, enc)
                        .body(Body::empty())
                        .unwrap()
                };
                // The router first: it fills the cache, so the service's fast path can answer.
                let slow = router.clone().oneshot(req()).await.unwrap();
                let (ss, sh) = (slow.status(), slow.headers().clone());
                let sb = axum::body::to_bytes(slow.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let before = state.results.cached_hits();
                let (fs, fh, fb) = send(&app, req()).await;
                if state.results.cached_hits() > before {
                    fast_answers += 1;
                }
                assert_eq!(
                    (ss, comparable(&sh)),
                    (fs, comparable(&fh)),
                    "{email} {route} {enc}"
                );
                assert_eq!(sb.as_ref(), fb.as_slice(), "{email} {route} {enc}");
                // Each answer carries its request's own id (a download's prebuilt headers
                // hold a placeholder for it, which must never reach the client).
                for (path, h) in [("router", &sh), ("fast path", &fh)] {
                    let id = h["x-request-id"].to_str().unwrap();
                    assert!(
                        id.len() > 8 && id.contains('-') && id != "-",
                        "{path}: {id}"
                    );
                }
                assert_ne!(sh["x-request-id"], fh["x-request-id"]);
                for (path, answer) in [
                    (
                        "router",
                        router.clone().oneshot(with_id(req())).await.unwrap(),
                    ),
                    (
                        "fast path",
                        app.clone().oneshot(with_id(req())).await.unwrap(),
                    ),
                ] {
                    assert_eq!(answer.headers()["x-request-id"], "client-id-7", "{path}");
                }
                assert_eq!(fh[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
                if let Some(etag) = fh.get(header::ETAG) {
                    let mut r = req();
                    r.headers_mut().insert(header::IF_NONE_MATCH, etag.clone());
                    let (status, _, body) = send(&app, r).await;
                    assert_eq!(status, 304, "{email} {route} {enc}");
                    assert!(body.is_empty());
                }
            }
        }
    }
    assert!(
        fast_answers >= 10,
        "the fast path answered {fast_answers} times"
    );
}

/// A connection remembers its last session by the cookie's exact value. It must never answer
/// for another cookie: two users alternating on one connection each get their own answers, and
/// a request carrying two session cookies is answered as the router reads it (the last one),
/// without teaching the fast path that the first belongs to that session.
#[tokio::test]
async fn a_connections_session_memo_answers_only_for_the_cookie_it_was_given() {
    let (state, app, _dir) = app_with(|s| s.rate_limits.per_user_per_minute = 10_000).await;
    state.clock.advance(OPENS - START);
    let router = nca_portal::router(state.clone());
    let session = |cookies: &str| {
        cookies
            .split("; ")
            .find(|c| c.starts_with("nca_session="))
            .unwrap()
            .to_string()
    };
    let a = session(&sign_in(&state, &app, "school@a.sch.uk").await);
    let b = session(&sign_in(&state, &app, "academy@b.sch.uk").await);
    let memo = std::sync::Arc::new(nca_portal::auth::session::SessionMemo::default());
    let addr = Some("127.0.0.1:40000".parse().unwrap());
    let req = |cookie: &str, school: &str| {
        Request::get(format!("/api/v1/results/school/{school}.csv"))
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap()
    };
    // Fill the cache the long way, so the fast path answers what follows.
    for (cookie, school) in [(&a, "9992001"), (&b, "9992002")] {
        let r = router.clone().oneshot(req(cookie, school)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let on_connection = |cookie: &str, school: &str| {
        let r = req(cookie, school);
        let (app, memo) = (app.clone(), memo.clone());
        async move { app.handle(r, addr, Some(memo)).await.unwrap().status() }
    };
    let before = state.results.cached_hits();
    for _ in 0..3 {
        assert_eq!(on_connection(&a, "9992001").await, 200);
        assert_eq!(on_connection(&a, "9992002").await, 403);
        assert_eq!(on_connection(&b, "9992002").await, 200);
        assert_eq!(on_connection(&b, "9992001").await, 403);
    }
    assert!(
        state.results.cached_hits() >= before + 6,
        "the fast path answered"
    );
    // Two session cookies: whatever the router makes of them, and nothing remembered.
    let both = format!("{a}; {b}");
    for school in ["9992001", "9992002"] {
        let slow = router.clone().oneshot(req(&both, school)).await.unwrap();
        assert_eq!(
            on_connection(&both, school).await,
            slow.status(),
            "{school}"
        );
    }
    assert_eq!(on_connection(&a, "9992001").await, 200);
    assert_eq!(on_connection(&a, "9992002").await, 403);
}

#[tokio::test]
async fn a_new_release_is_picked_up_without_a_restart() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let route = "/api/v1/results/school/9992001.csv";
    let first = state.results.release().unwrap().id.clone();
    let (s1, h1, _) = send(&router, get(route, &cookie)).await;
    assert_eq!(s1, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    publish(&state).await;
    assert!(state.results.refresh().await.unwrap());
    let second = state.results.release().unwrap().id.clone();
    assert_ne!(first, second);
    let (s2, h2, _) = send(&router, get(route, &cookie)).await;
    assert_eq!(s2, 200);
    // Same intake, same bytes: the tag is stable across releases.
    assert_eq!(h1[header::ETAG], h2[header::ETAG]);
}

#[tokio::test]
async fn rate_limits_answer_429_and_a_full_class_answers_503() {
    let (state, router, _dir) = app_with(|s| s.rate_limits.per_user_per_minute = 3).await;
    state.clock.advance(OPENS - START);
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let route = "/api/v1/results/school/9992001.csv";
    for _ in 0..3 {
        assert_eq!(send(&router, get(route, &cookie)).await.0, 200);
    }
    let (status, h, _) = send(&router, get(route, &cookie)).await;
    assert_eq!(status, 429);
    let wait: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another user of another organisation is not held up by that user's limit.
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    assert_eq!(send(&router, get(route, &la)).await.0, 200);

    // Every download slot taken: the next download is refused at once with 503, not queued.
    let slots = state.settings.admission.downloads_in_flight as u32;
    let held = state
        .gates
        .downloads
        .clone()
        .acquire_many_owned(slots)
        .await
        .unwrap();
    let (status, h, _) = send(&router, get(route, &la)).await;
    assert_eq!(status, 503);
    assert!(h.contains_key(header::RETRY_AFTER));
    drop(held);
    assert_eq!(send(&router, get(route, &la)).await.0, 200);
}

async fn lookup(
    router: &nca_portal::App,
    cookie: &str,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let req = Request::post("/api/v1/results/ks3/lookup")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, body) = send(router, req).await;
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn ks3_lookups_need_upn_surname_and_date_of_birth_to_match() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let ks3 = sign_in(&state, &router, "ks3@high.sch.uk").await;
    let ann =
        serde_json::json!([{ "upn": "P999200113001", "surname": "Able", "dob": "2013-03-02" }]);
    let (status, body) = lookup(&router, &ks3, ann.clone()).await;
    assert_eq!(status, 403, "KS3 lookups open the next day: {body}");
    state.clock.advance(86_400);
    let ks3 = sign_in(&state, &router, "ks3@high.sch.uk").await;
    let (status, body) = lookup(&router, &ks3, ann).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines[0].starts_with("upn,surname"), "{body}");
    assert_eq!(lines.len(), 2, "{body}");
    assert!(
        lines[1].starts_with("P999200113001,Able,Ann,2013-03-02"),
        "{body}"
    );

    // Case and spacing in surnames do not matter; every other near miss finds nothing.
    let asked = serde_json::json!([
        { "upn": " p999200113001 ", "surname": "  ABLE ", "dob": "2013-03-02" },
        { "upn": "D999200113002", "surname": "Bright", "dob": "2013-03-04" },
        { "upn": "D999200113002", "surname": "Brigh", "dob": "2013-03-03" },
        { "upn": "D999200113003", "surname": "Bright", "dob": "2013-03-03" },
        { "upn": "T999200113003", "surname": "Cole", "dob": "2013-03-04" },
    ]);
    let (status, body) = lookup(&router, &ks3, asked).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = body.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        1,
        "only Ann matches (Cole is unregistered: no result row): {body}"
    );
    assert!(rows[0].starts_with("P999200113001,"));

    // Only KS3 users may look up; the lookup was audited with what matched.
    for email in ["school@a.sch.uk", "la@la.gov.uk", "mat@trust.org.uk"] {
        let cookie = sign_in(&state, &router, email).await;
        let (status, _) = lookup(&router, &cookie, serde_json::json!([])).await;
        assert_eq!(status, 403, "{email}");
    }
    assert_eq!(lookup(&router, "", serde_json::json!([])).await.0, 401);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = nca_portal::db::audit_rows(&state.db, Some("9994001"), 20)
        .await
        .unwrap();
    assert!(
        log.iter()
            .any(|r| r.2 == "ks3-lookup" && r.3.contains("5 asked, 1 matched: P999200113001")),
        "{log:?}"
    );
}

#[tokio::test]
async fn the_results_page_counts_down_then_shows_the_schools_pupils() {
    let (state, router, _dir) = app().await;
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let (status, _, body) = send(&router, get("/results", &cookie)).await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("not available yet") && page.contains("7:30"),
        "{page}"
    );
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"60\">"),
        "{page}"
    );
    assert!(
        !page.contains("P999200113001"),
        "no pupil data before the opening time"
    );
    state.clock.advance(OPENS - START);
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    let (status, _, body) = send(&router, get("/results", &cookie)).await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("P999200113001") && page.contains("Ann Able"),
        "{page}"
    );
    assert!(page.contains("/api/v1/results/school/9992001.ctf"));
    assert!(
        !page.contains("9992002"),
        "another school's data is not on the page"
    );
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    let page = String::from_utf8(send(&router, get("/results", &la)).await.2).unwrap();
    assert!(
        page.contains("9992001")
            && page.contains("9992002")
            && page.contains("/api/v1/results/la/999.csv"),
        "{page}"
    );
    // A KS3 school's results are its lookups.
    let ks3 = sign_in(&state, &router, "ks3@high.sch.uk").await;
    let (status, headers, _) = send(&router, get("/results", &ks3)).await;
    assert_eq!(status, 303);
    assert_eq!(headers[header::LOCATION], "/results/ks3");
}

#[tokio::test]
async fn a_schools_results_are_rendered_while_its_users_wait_and_shown_only_at_the_opening() {
    let (state, router, _dir) = app().await;
    let release = state.results.release().unwrap();
    let key = nca_portal::results_pages::school_results_key;
    let rendered = |laestab: &str| state.results.is_rendered(&release, &key(laestab));
    assert!(!rendered("9992001") && !rendered("9992002"));
    // An LA waiting on its countdown renders nothing ahead; a school's user waiting on its
    // countdown renders that school's part of the page, and no other school's.
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    assert!(
        text(&router, "/results", &la)
            .await
            .1
            .contains("not available yet")
    );
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    let (status, page) = text(&router, "/results", &school).await;
    assert_eq!(status, 200);
    assert!(page.contains("not available yet"), "{page}");
    for _ in 0..100 {
        if rendered("9992001") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(rendered("9992001"), "rendered while the school waits");
    assert!(!rendered("9992002"), "only the waiting school's");
    // Rendered is not shown: the embargo holds, on the page and on the school's page route.
    let (_, page) = text(&router, "/results/school/9992001", &school).await;
    assert!(!page.contains("P999200113001") && page.contains("not available yet"));

    // (Hours pass: everyone signs in again, as the idle time-out asks.)
    state.clock.advance(OPENS - START);
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    let (status, page) = text(&router, "/results", &school).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("P999200113001") && page.contains("Ann Able"),
        "{page}"
    );
    assert!(
        !page.contains("9992002"),
        "another school's data is not on the page"
    );
    // The same rendered part serves everyone who may see the school, around what is theirs.
    let table = |p: &str| {
        let start = p.find("Results by pupil").unwrap_or_else(|| panic!("{p}"));
        p[start..start + p[start..].find("Results by subject").unwrap()].to_string()
    };
    let operator = sign_in(&state, &router, "operator@sta.gov.uk").await;
    let (_, for_operator) = text(&router, "/results/school/9992001", &operator).await;
    assert_eq!(table(&page), table(&for_operator));
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    let (_, for_la) = text(&router, "/results/school/9992001", &la).await;
    assert_eq!(table(&page), table(&for_la));
    // Each view is still recorded, whoever's it is.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for org in ["9992001", "operator", "999"] {
        let log = nca_portal::db::audit_rows(&state.db, Some(org), 50)
            .await
            .unwrap();
        assert!(
            log.iter()
                .any(|r| r.2 == "results-viewed" && r.3.ends_with("school/9992001")),
            "{org}: {log:?}"
        );
    }
}

#[tokio::test]
async fn a_schools_results_page_is_sent_gzipped_to_a_browser_that_accepts_it_and_reads_the_same() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    let asking = |path: &str, cookie: &str, enc: &str| {
        Request::get(path)
            .header(header::COOKIE, cookie)
            .header(header::ACCEPT_ENCODING, enc)
            .body(Body::empty())
            .unwrap()
    };
    for (path, cookie) in [
        ("/results", &school),
        ("/results/school/9992001", &school),
        ("/results/school/9992001", &la),
    ] {
        let (status, h, plain) = send(&router, asking(path, cookie, "identity")).await;
        assert_eq!(status, 200);
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(h[header::VARY], "Accept-Encoding");
        let plain = String::from_utf8(plain).unwrap();
        assert!(
            plain.contains("Ann Able") && plain.contains("Sign out"),
            "{plain}"
        );
        for enc in ["gzip, deflate, br, zstd", "GZIP;q=0.5"] {
            let (status, h, body) = send(&router, asking(path, cookie, enc)).await;
            assert_eq!(status, 200);
            assert_eq!(h[header::CONTENT_ENCODING], "gzip", "{path} {enc}");
            assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(h[header::VARY], "Accept-Encoding");
            let mut page = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut page)
                .unwrap_or_else(|e| panic!("{path}: not gzip: {e}"));
            // The same page, byte for byte: the signed-in user's own parts and the school's.
            assert_eq!(page, plain, "{path}");
            assert!(
                body.len() < plain.len(),
                "{} of {}",
                body.len(),
                plain.len()
            );
        }
        // A coding refused by weight zero, or not named, is not used.
        for enc in ["gzip;q=0", "br", ""] {
            let (_, h, body) = send(&router, asking(path, cookie, enc)).await;
            assert!(h.get(header::CONTENT_ENCODING).is_none(), "{path} {enc}");
            assert_eq!(String::from_utf8(body).unwrap(), plain);
        }
    }
}

#[test]
fn the_openapi_document_describes_every_api_route() {
    let doc: serde_json::Value = serde_json::from_str(nca_portal::api::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Every /api/ route registered in the source is in the document, and nothing else.
    let mut routes = Vec::new();
    for file in ["src/api.rs", "src/results.rs"] {
        let src =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        for part in src.split(".route(").skip(1) {
            let Some(rest) = part.trim_start().strip_prefix('"') else {
                continue;
            };
            let route = rest.split('"').next().unwrap();
            if route.starts_with("/api/") {
                routes.push(route.to_string());
            }
        }
    }
    routes.sort();
    let mut documented: Vec<String> = paths.keys().cloned().collect();
    documented.sort();
    assert_eq!(routes, documented);
}

/// The text of a page or file.
async fn text(router: &nca_portal::App, path: &str, cookie: &str) -> (StatusCode, String) {
    let (status, _, body) = send(router, get(path, cookie)).await;
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_schools_pages_letters_and_csv_variants_agree_with_its_results_file() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    let (_, full) = text(&router, "/api/v1/results/school/9992001.csv", &school).await;
    let rows: Vec<Vec<&str>> = full
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert!(rows.len() >= 3, "{full}");

    // The results page: every pupil, the comparison, the downloads and the code table.
    let (status, page) = text(&router, "/results", &school).await;
    assert_eq!(status, 200);
    for r in &rows {
        assert!(page.contains(r[0]), "{} missing from the page", r[0]);
    }
    for needle in [
        "Rules Primary School (9992001)",
        "Compared with the local authority and England",
        "England",
        "/results/school/9992001/letters",
        "/api/v1/results/school/9992001-qla.csv",
        "/api/v1/results/school/9992001.csv?subject=maths",
        "Absent from the test",
    ] {
        assert!(page.contains(needle), "{needle} not on the page");
    }

    // Subject detail: each pupil's raw score from the file.
    let (status, reading) = text(&router, "/results/school/9992001/reading", &school).await;
    assert_eq!(status, 200);
    for r in rows.iter().filter(|r| !r[5].is_empty()) {
        assert!(
            reading.contains(&format!("<td class=\"govuk-table__cell\">{}</td>", r[5])),
            "raw {} of {}",
            r[5],
            r[0]
        );
    }
    assert_eq!(
        text(&router, "/results/school/9992001/history", &school)
            .await
            .0,
        404
    );
    let (status, writing) = text(&router, "/results/school/9992001/writing", &school).await;
    assert_eq!(status, 200);
    assert!(writing.contains("Pupils by code"));

    // Letters: exactly one printable page per pupil.
    let (status, letters) = text(&router, "/results/school/9992001/letters", &school).await;
    assert_eq!(status, 200);
    assert_eq!(letters.matches("class=\"nca-letter\"").count(), rows.len());
    assert!(letters.contains("Dear parent or carer"));

    // One subject: the identity columns and that subject's, every pupil.
    let (status, maths) = text(
        &router,
        "/api/v1/results/school/9992001.csv?subject=maths",
        &school,
    )
    .await;
    assert_eq!(status, 200);
    let mut lines = maths.lines();
    assert_eq!(
        lines.next().unwrap(),
        "upn,surname,forename,dob,gender,maths_raw,maths_result,maths_met,maths_high"
    );
    for (line, r) in lines.zip(&rows) {
        assert_eq!(line, [&r[..5], &r[13..17]].concat().join(","));
    }
    // Without TA: every column but the two TA ones.
    let (_, no_ta) = text(&router, "/api/v1/results/school/9992001.csv?ta=no", &school).await;
    let header = no_ta.lines().next().unwrap();
    assert!(!header.contains("_ta") && header.ends_with("maths_high,rwm_met"));
    assert_eq!(no_ta.lines().count(), full.lines().count());
    // Bad parameters are named.
    let (status, body) = text(
        &router,
        "/api/v1/results/school/9992001.csv?subject=history",
        &school,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("subject must be reading, gps or maths"));

    // The summary: the school's reading % met is what its file says, beside LA and England.
    let (status, summary) = text(
        &router,
        "/api/v1/results/school/9992001-summary.csv",
        &school,
    )
    .await;
    assert_eq!(status, 200);
    let (met, counted) = rows.iter().fold((0, 0), |(m, c), r| match r[7] {
        "AS" => (m + 1, c + 1),
        "NS" => (m, c + 1),
        _ => (m, c),
    });
    let want = format!(
        "{:.1}",
        (f64::from(met) * 1000.0 / f64::from(counted)).round() / 10.0
    );
    let groups: Vec<&str> = summary.lines().skip(1).collect();
    assert!(groups[0].starts_with("school,9992001,Rules Primary School,"));
    assert_eq!(groups[0].split(',').nth(4).unwrap(), want, "{summary}");
    assert!(groups[1].starts_with("la,999,"));
    assert!(
        groups
            .last()
            .unwrap()
            .starts_with("england,E92000001,England,")
    );
    // Question-level analysis: the school's item means beside national ones.
    let (status, qla) = text(&router, "/api/v1/results/school/9992001-qla.csv", &school).await;
    assert_eq!(status, 200);
    assert!(qla.starts_with("paper,item,max_mark,school_pupils,school_mean,national_mean"));

    // An LA chooses any of its schools from the list, searchable by name.
    let la = sign_in(&state, &router, "la@la.gov.uk").await;
    let (_, list) = text(&router, "/results", &la).await;
    assert!(list.contains("/results/school/9992001") && list.contains("/results/school/9992002"));
    let (_, found) = text(&router, "/results?q=anne", &la).await;
    assert!(
        found.contains("/results/school/9992002") && !found.contains("/results/school/9992001\"")
    );
    let (status, other) = text(&router, "/results/school/9992002", &la).await;
    assert_eq!(status, 200);
    assert!(other.contains("St Anne") && other.contains("Academy, Testshire (9992002)"));
}

/// Publish the fixture with one pupil's reading mark changed, as a late-results release.
async fn publish_changed(state: &AppState, dir: &Path) {
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    let marks = std::fs::read_to_string(dir.join("marks.csv")).unwrap();
    // Ann Able's reading mark changes, and Ivy Ince's missing (M) reading script is marked.
    let changed = marks.replace("P999200113001,reading,1,27", "P999200113001,reading,1,35")
        + "C999200113009,reading,1,33\n";
    assert_ne!(marks, changed);
    std::fs::write(dir.join("marks.csv"), changed).unwrap();
    let opts = nca_pipeline::publish::PublishOptions {
        dir: dir.to_path_buf(),
        year: None,
        opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS).unwrap(),
        ks3_opens_at: time::OffsetDateTime::from_unix_timestamp(OPENS + 86_400).unwrap(),
        progress: false,
        concurrency: 4,
    };
    let rep = std::sync::Arc::new(nca_pipeline::report::Reporter::in_memory());
    nca_pipeline::publish::publish(&state.store, &opts, rep)
        .await
        .unwrap();
}

#[tokio::test]
async fn late_results_email_the_account_managers_once_and_the_page_says_what_changed() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    // The first release changed nobody's results: nobody is told.
    assert_eq!(
        nca_portal::results::notify_late_results(&state)
            .await
            .unwrap(),
        0
    );
    let outbox = state.settings.outbox();
    let told = |to: &str| {
        nca_portal::email::latest_in_outbox(&outbox, to).is_some_and(|(s, _)| s.contains("updated"))
    };
    assert!(!told("manager@a.sch.uk"));

    // Viewed (and so rendered and kept) before the late release: the new release's page is
    // not the old one's.
    let (_, page) = text(&router, "/results", &school).await;
    assert!(page.contains("P999200113001") && !page.contains("What changed in this release"));

    let intake = tempfile::tempdir().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    publish_changed(&state, intake.path()).await;
    assert!(state.results.refresh().await.unwrap());
    assert_eq!(
        nca_portal::results::notify_late_results(&state)
            .await
            .unwrap(),
        1,
        "one school changed"
    );
    let (subject, body) =
        nca_portal::email::latest_in_outbox(&outbox, "manager@a.sch.uk").expect("manager told");
    assert!(subject.contains("results have been updated"), "{subject}");
    assert!(body.contains("2 pupils' results") && body.contains("/results"));
    assert!(
        body.contains("1 pupils' marked test scripts that were not available"),
        "a script that was missing is now in the portal: {body}"
    );
    assert!(
        !body.contains("Able") && !body.contains("Ince"),
        "the email names no pupil"
    );
    // General users are not account managers; the other school did not change.
    assert!(!told("school@a.sch.uk") && !told("academy@b.sch.uk"));
    // Told once: another pass (or another node) sends nothing.
    assert_eq!(
        nca_portal::results::notify_late_results(&state)
            .await
            .unwrap(),
        0
    );

    let (_, page) = text(&router, "/results", &school).await;
    assert!(page.contains("What changed in this release"), "{page}");
    assert!(page.contains("reading_raw: 27 to 35"), "{page}");
}

/// A multipart form as a browser sends it: (field, file name, bytes).
fn multipart(path: &str, cookie: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Request<Body> {
    let boundary = "----nca-test-boundary";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// The CSRF token a page's forms carry.
#[tokio::test]
async fn a_ks3_school_looks_up_pupils_by_paste_csv_or_ctf_on_the_page() {
    let (state, router, _dir) = app().await;
    // Before the KS3 opening time the page says when it opens.
    state.clock.advance(OPENS - START);
    let ks3 = sign_in(&state, &router, "ks3@high.sch.uk").await;
    let (status, page) = text(&router, "/results/ks3", &ks3).await;
    assert_eq!(status, 200);
    assert!(page.contains("Lookups are not open yet"), "{page}");
    state.clock.advance(86_400);
    let ks3 = sign_in(&state, &router, "ks3@high.sch.uk").await;
    let (status, page) = text(&router, "/results/ks3", &ks3).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);

    // A feeder primary's CTF (Ann and Ben, among others), a CSV naming Dan, and a pasted near
    // miss: Ben again with the wrong date of birth is simply not found.
    let release = state.results.release().unwrap();
    let ctf = state
        .results
        .object(&release, "school/9992001.ctf.xml")
        .await
        .unwrap()
        .unwrap();
    let csv = b"upn,surname,dob\nG999200113004,  dale ,05/03/2013\n";
    let pasted = b"D999200113002\tBright\t2013-03-04\n";
    let (status, _, body) = send(
        &router,
        multipart(
            "/results/ks3",
            &ks3,
            &[
                ("csrf", None, csrf.as_bytes()),
                ("pasted", None, pasted),
                ("csv_file", Some("intake.csv"), csv),
                ("ctf_files", Some("rules-primary.xml"), &ctf),
            ],
        ),
    )
    .await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Ann Able") && page.contains("Dan Dale"),
        "{page}"
    );
    assert!(
        page.contains("D999200113002, Bright, born 2013-03-04"),
        "the near miss is listed as not found"
    );
    let asked = page.matches("Found ").count();
    assert_eq!(asked, 1);

    // The found pupils download as CSV and as a CTF addressed to this school.
    let pupils = page
        .split("name=\"pupils\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&#9;", "\t")
        .replace("&#10;", "\n");
    for (format, want) in [
        ("csv", "upn,surname"),
        ("ctf", "<DestSchool><LEA>999</LEA><Estab>4001</Estab>"),
    ] {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", &csrf)
            .append_pair("pupils", &pupils)
            .append_pair("format", format)
            .finish();
        let req = Request::post("/results/ks3/download")
            .header(header::COOKIE, &ks3)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let (status, _, body) = send(&router, req).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200, "{format}: {body}");
        assert!(body.contains(want), "{format}: {body}");
        assert!(body.contains("P999200113001") && body.contains("G999200113004"));
    }

    // Bad input names the file and row, and nothing is looked up.
    let (status, _, body) = send(
        &router,
        multipart(
            "/results/ks3",
            &ks3,
            &[
                ("csrf", None, csrf.as_bytes()),
                (
                    "csv_file",
                    Some("intake.csv"),
                    b"upn,surname,dob\nP999200113001,Able,2013-02-30\n",
                ),
            ],
        ),
    )
    .await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 422);
    assert!(page.contains("intake.csv, row 2:"), "{page}");
    assert!(!page.contains("Ann Able"));
    // Without the form's token nothing happens.
    let (status, _, _) = send(
        &router,
        multipart("/results/ks3", &ks3, &[("pasted", None, pasted)]),
    )
    .await;
    assert_eq!(status, 403);
    // Other organisation types cannot use the page.
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    assert_eq!(text(&router, "/results/ks3", &school).await.0, 403);

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = nca_portal::db::audit_rows(&state.db, Some("9994001"), 20)
        .await
        .unwrap();
    assert!(
        log.iter()
            .any(|r| r.2 == "ks3-lookup" && r.3.contains(" matched: ")),
        "{log:?}"
    );
}

fn bearer(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn an_organisation_api_token_downloads_its_own_results_read_only_until_revoked() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    // Only account managers make tokens.
    let user = sign_in(&state, &router, "school@a.sch.uk").await;
    assert_eq!(text(&router, "/account/tokens", &user).await.0, 403);
    let manager = sign_in(&state, &router, "manager@a.sch.uk").await;
    let (status, form) = text(&router, "/account/tokens/new", &manager).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&form);
    let (status, _, body) = send(
        &router,
        form_post(
            "/account/tokens/new",
            &manager,
            &[("csrf", &csrf), ("name", "")],
        ),
    )
    .await;
    assert_eq!(status, 422, "a token needs a name");
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("Enter a name for the token")
    );
    let (status, _, body) = send(
        &router,
        form_post(
            "/account/tokens/new",
            &manager,
            &[("csrf", &csrf), ("name", "MIS nightly import")],
        ),
    )
    .await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{page}");
    let at = page.find("nca_").expect("the token is shown once");
    let token: String = page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(token.len() > 40, "{token}");

    // It downloads the school's own files, exactly as a signed-in user would get them.
    let (status, _, body) = send(
        &router,
        bearer("/api/v1/results/school/9992001.csv", &token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        std::fs::read(fixture().join("expected/school-9992001.csv")).unwrap()
    );
    // Nobody else's, nothing but results, and nothing written.
    for path in [
        "/api/v1/results/school/9992002.csv",
        "/api/v1/results/la/999.csv",
        "/api/v1/results/trust/12345.csv",
    ] {
        assert_eq!(send(&router, bearer(path, &token)).await.0, 403, "{path}");
    }
    assert_eq!(send(&router, bearer("/api/v1/me", &token)).await.0, 401);
    assert_eq!(send(&router, bearer("/account", &token)).await.0, 303);
    let lookup = Request::post("/api/v1/results/ks3/lookup")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("[]"))
        .unwrap();
    assert_eq!(send(&router, lookup).await.0, 401, "tokens are read-only");
    assert_eq!(
        send(
            &router,
            bearer("/api/v1/results/school/9992001.csv", "nca_made-up")
        )
        .await
        .0,
        401
    );

    // The list shows it, with who made it; revoking stops it at once.
    let (_, list) = text(&router, "/account/tokens", &manager).await;
    assert!(list.contains("MIS nightly import") && list.contains("manager@a.sch.uk"));
    assert!(!list.contains(&token), "the secret is never shown again");
    let end = list.find("/revoke\"").expect("a revoke link");
    let id = list[..end].rsplit('/').next().unwrap().to_string();
    let revoke = format!("/account/tokens/{id}/revoke");
    let (status, confirm) = text(&router, &revoke, &manager).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        &router,
        form_post(&revoke, &manager, &[("csrf", &csrf_of(&confirm))]),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        send(
            &router,
            bearer("/api/v1/results/school/9992001.csv", &token)
        )
        .await
        .0,
        401
    );

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = nca_portal::db::audit_rows(&state.db, Some("9992001"), 50)
        .await
        .unwrap();
    for action in ["api-token-created", "api-token-revoked"] {
        assert!(log.iter().any(|r| r.2 == action), "{action}: {log:?}");
    }
    assert!(
        log.iter()
            .any(|r| r.1.starts_with("api-token:MIS nightly import") && r.2 == "results-download"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_release_is_read_into_memory_before_it_opens() {
    let (state, _router, _dir) = app().await;
    let release = state.results.release().unwrap();
    for path in ["school/9992001.csv", "school/9992001.csv.br", "la/999.csv"] {
        assert!(
            state.results.cached(&release, path).await.is_none(),
            "{path}"
        );
    }
    let (objects, bytes) = state.results.prewarm(&release).await;
    assert!(
        objects >= 6 && bytes > 0,
        "{objects} objects, {bytes} bytes"
    );
    for path in [
        "school/9992001.csv",
        "school/9992001.csv.br",
        "school/9992002.ctf.xml",
        "la/999.csv",
    ] {
        let cached = state.results.cached(&release, path).await.expect(path);
        let stored = state.results.object(&release, path).await.unwrap().unwrap();
        assert_eq!(cached, stored, "{path}");
    }
    assert!(
        state
            .results
            .cached(&release, "school/9992001.qla.csv")
            .await
            .is_none(),
        "question-level analysis is read on demand"
    );
}

#[tokio::test]
async fn a_missing_script_says_not_yet_available() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let school = sign_in(&state, &router, "school@a.sch.uk").await;
    // Ivy Ince's reading result is M: her script has not been marked (nor scanned) yet.
    let (status, page) = text(&router, "/scripts/9992001", &school).await;
    assert_eq!(status, StatusCode::OK);
    let row = page
        .split("<tr")
        .find(|r| r.contains("C999200113009"))
        .expect("Ivy Ince listed");
    assert!(row.contains("reading: script not yet available"), "{row}");
    let (status, page) = text(&router, "/scripts/9992001/C999200113009/reading", &school).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Script not yet available"), "{page}");
    assert!(
        !page.contains("/pdf\""),
        "no PDF of a script that is not there"
    );
    let (status, _) = text(
        &router,
        "/scripts/9992001/C999200113009/reading/pdf",
        &school,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repeated_downloads_in_one_second_are_kept_as_one_access_row_with_their_count() {
    let (state, router, _dir) = app().await;
    state.clock.advance(OPENS - START);
    let cookie = sign_in(&state, &router, "school@a.sch.uk").await;
    for _ in 0..3 {
        let (status, _, _) =
            send(&router, get("/api/v1/results/school/9992001.csv", &cookie)).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = send(&router, get("/api/v1/results/school/9992001.ctf", &cookie)).await;
    assert_eq!(status, 200);
    // The writer batches: wait for it.
    let mut downloads = Vec::new();
    for _ in 0..50 {
        downloads = nca_portal::db::audit_rows(&state.db, Some("9992001"), 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.2 == "results-download")
            .collect();
        if downloads.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let csv: Vec<_> = downloads
        .iter()
        .filter(|r| r.3.ends_with("school/9992001.csv"))
        .collect();
    let ctf: Vec<_> = downloads
        .iter()
        .filter(|r| r.3.ends_with("school/9992001.ctf.xml"))
        .collect();
    assert_eq!(csv.len(), 1, "{downloads:?}");
    assert_eq!(csv[0].4, "3 times", "{downloads:?}");
    assert_eq!(csv[0].1, "school@a.sch.uk");
    assert_eq!(ctf.len(), 1, "{downloads:?}");
    assert_eq!(ctf[0].4, "", "one download says no count");
}
