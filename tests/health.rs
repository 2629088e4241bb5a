//! The server binds port 0 and reports readiness by the store's current release.

use nca_pipeline::store::Store;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    (code, out)
}

#[tokio::test]
async fn readyz_follows_the_current_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nca_portal::serve(
        listener,
        nca_portal::AppState {
            store: store.clone(),
        },
        async {
            let _ = rx.await;
        },
    ));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    store.set_current("r1").await.unwrap();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"release\":\"r1\""), "{body}");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
