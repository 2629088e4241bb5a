//! The results fast path's own cost per download, in-process (no sockets, no TLS): a signed-in
//! school user's CSV through `App::handle`, the way the listener calls it, beside the anchor of
//! a handler that does nothing but answer with the same bytes (what bench/src/bin/bare.rs
//! serves). The difference is the budget the checks use: session, admission, permissions,
//! embargo, authorisation, three rate limits, the access record, metrics and headers.
//! Every iteration's response is checked: a 200 with the file, and no re-issued cookie (which
//! would mean the request went the long way).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use criterion::{Criterion, criterion_group, criterion_main};
use nca_portal::accounts::{self, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::auth::session::SessionMemo;
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, orgs};

const PW: &str = "Tr0ubadour&Bells-42";
const EMAIL: &str = "bench@a.sch.uk";
const SCHOOL: &str = "9992001";

struct World {
    rt: tokio::runtime::Runtime,
    state: AppState,
    app: nca_portal::App,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, app) = rt.block_on(async {
        nca_portal::http::install_crypto_provider();
        let mut settings = Settings::load(
            Path::new("/nonexistent-config"),
            &Overrides {
                data_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        // Checked on every request, never refusing (as in bench/downloads.sh).
        settings.rate_limits.per_user_per_minute = 1_000_000_000;
        settings.rate_limits.per_org_per_minute = 1_000_000_000;
        settings.rate_limits.per_ip_per_minute = 1_000_000_000;
        let state = AppState::open(settings, Clock::System).await.unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-pipeline/tests/fixtures/rules");
        orgs::import(&state.db, &fixture, 0).await.unwrap();
        let opened = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let opts = nca_pipeline::publish::PublishOptions {
            dir: fixture,
            year: None,
            opens_at: opened,
            ks3_opens_at: opened,
            progress: false,
            concurrency: 2,
        };
        let rep = Arc::new(nca_pipeline::report::Reporter::in_memory());
        nca_pipeline::publish::publish(&state.store, &opts, rep)
            .await
            .unwrap();
        assert!(state.results.refresh().await.unwrap());
        accounts::create_user(
            &state,
            &Actor::cli(),
            SCHOOL,
            EMAIL,
            EMAIL,
            RoleSet::of(&[Role::GeneralUser]),
            Some(PW),
        )
        .await
        .unwrap();
        let app = nca_portal::app(state.clone());
        (state, app)
    });
    World {
        rt,
        state,
        app,
        _dir: dir,
    }
}

impl World {
    async fn send(&self, req: Request<Body>) -> Response<Body> {
        let addr = "127.0.0.1:40000".parse().ok();
        self.app.clone().handle(req, addr, None).await.unwrap()
    }

    /// A fresh session cookie (a session is re-issued once it is a minute old, so each bench
    /// signs in anew): password, then the code from the outbox.
    fn sign_in(&self) -> String {
        self.rt.block_on(async {
            let mut cookies = std::collections::BTreeMap::new();
            for step in 0..2 {
                let (path, body) = if step == 0 {
                    (
                        "/api/v1/sign-in",
                        serde_json::json!({ "email": EMAIL, "password": PW }),
                    )
                } else {
                    let outbox = self.state.settings.outbox();
                    let (_, text) = nca_portal::email::latest_in_outbox(&outbox, EMAIL).unwrap();
                    let at = text.find("code is ").unwrap() + 8;
                    (
                        "/api/v1/sign-in/mfa",
                        serde_json::json!({ "code": &text[at..at + 6] }),
                    )
                };
                let cookie: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let req = Request::post(path)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::COOKIE, cookie.join("; "))
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let resp = self.send(req).await;
                assert_eq!(resp.status(), StatusCode::OK, "{path}");
                for v in resp.headers().get_all(header::SET_COOKIE) {
                    let (kv, _) = v.to_str().unwrap().split_once(';').unwrap();
                    let (k, v) = kv.split_once('=').unwrap();
                    cookies.insert(k.to_string(), v.to_string());
                }
            }
            format!("nca_session={}", cookies["nca_session"])
        })
    }
}

/// The request headers a download carries (cloned per iteration, as hyper makes a map per
/// request).
fn download_headers(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, "127.0.0.1".parse().unwrap());
    h.insert(header::COOKIE, cookie.parse().unwrap());
    h
}

fn request(headers: &HeaderMap) -> Request<Body> {
    let mut req = Request::get(format!("/api/v1/results/school/{SCHOOL}.csv").as_str())
        .body(Body::empty())
        .unwrap();
    *req.headers_mut() = headers.clone();
    req
}

/// A download answered the fast way: the file, and no new cookie.
fn check(resp: &Response<Body>, len: usize) {
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get(header::SET_COOKIE).is_none(),
        "went the long way"
    );
    use axum::body::HttpBody;
    assert_eq!(resp.body().size_hint().exact(), Some(len as u64));
}

fn benches(c: &mut Criterion) {
    let w = world();
    let release = w.state.results.release().expect("a release is loaded");
    let file =
        w.rt.block_on(
            w.state
                .results
                .object(&release, &format!("school/{SCHOOL}.csv")),
        )
        .unwrap()
        .expect("the school's CSV is published");
    let mut g = c.benchmark_group("download");

    // The anchor: answer with the same bytes and a content type, nothing else.
    let headers = download_headers("nca_session=x");
    g.bench_function("bare handler (same bytes, no checks)", |b| {
        b.iter(|| {
            w.rt.block_on(async {
                let req = request(&headers);
                black_box(&req);
                let mut r = Response::new(Body::from(file.clone()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
                black_box(r)
            })
        })
    });

    let headers = download_headers(&w.sign_in());
    let memo = Arc::new(SessionMemo::default());
    let addr = "127.0.0.1:40000".parse().ok();
    let once = |memo: Option<Arc<SessionMemo>>| {
        w.rt.block_on(w.app.clone().handle(request(&headers), addr, memo))
            .unwrap()
    };
    check(&once(Some(memo.clone())), file.len());
    g.bench_function("fast path (a kept-alive connection)", |b| {
        b.iter(|| black_box(once(Some(memo.clone()))))
    });
    check(&once(Some(memo.clone())), file.len());

    let headers = download_headers(&w.sign_in());
    let once = |memo: Option<Arc<SessionMemo>>| {
        w.rt.block_on(w.app.clone().handle(request(&headers), addr, memo))
            .unwrap()
    };
    check(&once(None), file.len());
    g.bench_function("fast path (each request on a new connection)", |b| {
        b.iter(|| black_box(once(None)))
    });
    check(&once(None), file.len());
    g.finish();
}

criterion_group!(fast_path, benches);
criterion_main!(fast_path);
