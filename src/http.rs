//! The listener: accepts TCP connections up to a limit, runs each TLS handshake inside the
//! connection's own task with a timeout, serves HTTP/1.1 and HTTP/2 (ALPN) with header limits,
//! and on shutdown stops accepting and drains in-flight requests until a deadline.
//! Also the plain-HTTP admin listener for Prometheus metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The client's address, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// The client's IP, for handlers that take `Option<Extension<ClientAddr>>`; loopback when
    /// the request did not come through the listener (tests calling the router directly).
    pub fn ip_of(addr: Option<axum::Extension<ClientAddr>>) -> std::net::IpAddr {
        addr.map_or(
            std::net::Ipv4Addr::LOCALHOST.into(),
            |axum::Extension(ClientAddr(a))| a.ip(),
        )
    }
}

/// Limits applied per connection.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub drain: Duration,
}

impl Limits {
    pub fn from_settings(s: &crate::config::Settings) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(s.server.handshake_timeout_secs),
            max_connections: s.server.max_connections,
            max_header_bytes: s.server.max_header_bytes,
            drain: Duration::from_secs(s.server.drain_secs),
        }
    }
}

/// Install one rustls crypto provider for the process (object_store's S3 client may compile
/// in a second one, and rustls refuses to guess).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS settings from PEM files, or a self-signed certificate for localhost generated with
/// rcgen and kept under `dir` (for local use only).
pub fn tls_config(cert: &str, key: &str, dir: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_crypto_provider();
    let (cert_path, key_path) = if cert.is_empty() {
        let c = dir.join("tls/cert.pem");
        let k = dir.join("tls/key.pem");
        if !c.exists() || !k.exists() {
            std::fs::create_dir_all(dir.join("tls"))?;
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .context("generating a self-signed certificate")?;
            std::fs::write(&c, generated.cert.pem())?;
            std::fs::write(&k, generated.signing_key.serialize_pem())?;
            tracing::info!(cert = %c.display(), "generated a self-signed certificate for local use");
        }
        (c, k)
    } else {
        (cert.into(), key.into())
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path)
            .with_context(|| format!("opening {}", cert_path.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| format!("reading certificates from {}", cert_path.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path)
            .with_context(|| format!("opening {}", key_path.display()))?,
    ))
    .with_context(|| format!("reading {}", key_path.display()))?
    .with_context(|| format!("no private key in {}", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `app` on `listener` (over TLS when `tls` is given, else plain HTTP for use behind a
/// TLS-terminating load balancer) until `shutdown` resolves, then drain.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: crate::App,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(100);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free connection slot before accepting, so excess connections queue in
        // the kernel's backlog instead of consuming memory here.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                // Plain HTTP, behind a TLS-terminating load balancer.
                serve_connection(TokioIo::new(stream), addr, app, &builder, watcher).await;
                return;
            };
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            serve_connection(TokioIo::new(tls), addr, app, &builder, watcher).await;
        });
    }
    drop(listener);
    tracing::info!(
        deadline_secs = limits.drain.as_secs(),
        "draining connections"
    );
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    Ok(())
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    addr: SocketAddr,
    app: crate::App,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(addr));
        app.clone().oneshot(req)
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The admin listener: plain HTTP, /metrics only. Bind it on loopback or a private network.
pub async fn serve_admin(listener: TcpListener) -> anyhow::Result<()> {
    let handle = metrics_handle();
    let app = Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    axum::serve(listener, app).await.context("admin listener")
}
