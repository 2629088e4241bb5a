//! Helpers shared by the black-box test binaries: send a request through the whole app, sign
//! in with the emailed code, follow Set-Cookie, build GET and form requests.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use nca_portal::AppState;
use tower::ServiceExt;

pub const PW: &str = "Tr0ubadour&Bells-42";

pub async fn send(
    router: &nca_portal::App,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

/// Sign in through the JSON API (password, then the emailed code); returns the cookies.
pub async fn sign_in(state: &AppState, router: &nca_portal::App, email: &str) -> String {
    let mut cookies = std::collections::HashMap::new();
    for (path, body) in [
        (
            "/api/v1/sign-in",
            serde_json::json!({ "email": email, "password": PW }),
        ),
        ("/api/v1/sign-in/mfa", serde_json::Value::Null),
    ] {
        let body = if body.is_null() {
            let (_, text) =
                nca_portal::email::latest_in_outbox(&state.settings.outbox(), email).unwrap();
            let at = text.find("code is ").unwrap() + 8;
            serde_json::json!({ "code": &text[at..at + 6] })
        } else {
            body
        };
        let cookie: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, cookie.join("; "))
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, headers, _) = send(router, req).await;
        assert_eq!(status, 200, "{email} {path}");
        for v in headers.get_all(header::SET_COOKIE) {
            let (kv, _) = v.to_str().unwrap().split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            cookies.insert(k.to_string(), v.to_string());
        }
    }
    cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The cookie header after a response's Set-Cookie (the session moves "last seen" on).
pub fn follow(cookie: &str, headers: &axum::http::HeaderMap) -> String {
    let mut jar: Vec<(String, String)> = cookie
        .split("; ")
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for v in headers.get_all(header::SET_COOKIE) {
        let (kv, _) = v.to_str().unwrap().split_once(';').unwrap();
        let (k, v) = kv.split_once('=').unwrap();
        jar.retain(|(name, _)| name != k);
        jar.push((k.to_string(), v.to_string()));
    }
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn get(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

pub fn form_post(path: &str, cookie: &str, pairs: &[(&str, &str)]) -> Request<Body> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

pub fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    page[at..].split('"').next().unwrap().to_string()
}
