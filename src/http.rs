//! The listener: accepts TCP connections up to a limit, runs each TLS handshake inside the
//! connection's own task with a timeout, serves HTTP/1.1 and HTTP/2 (ALPN) with header limits,
//! and on shutdown stops accepting and drains in-flight requests until a deadline. When every
//! connection slot is taken, the connections idle longest are asked to close to make room
//! (see [`connections`]). Also the plain-HTTP admin listener for Prometheus metrics.

mod connections;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use connections::{Conn, Connections};

/// Idle connections asked to close at a time, at most, when every connection slot is taken
/// (nginx reuses 32 at a time in the same case); a 64th of the slots when that is fewer.
const RECLAIM_BATCH: usize = 32;

/// File descriptors kept for everything but client connections: the database, the object
/// store's files, the outbox, logs.
const RESERVED_FILES: u64 = 1024;

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
    /// Plain HTTP also speaks HTTP/2 with prior knowledge (`server.h2c`).
    pub h2c: bool,
    pub handshake_timeout: Duration,
    /// How long an idle HTTP/1.1 connection waits for its next request's head.
    pub keep_alive: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub drain: Duration,
}

impl Limits {
    /// Fit `max_connections` under an open-file limit of `open_files` (each connection is a
    /// file descriptor, and [`RESERVED_FILES`] are kept for the rest); returns the limit it had
    /// when that lowered it. Past the limit, accept fails and new clients wait in the backlog
    /// while idle connections hold every descriptor; under it, they are reclaimed.
    pub fn fit_open_files(&mut self, open_files: u64) -> Option<usize> {
        let room = open_files.saturating_sub(RESERVED_FILES).max(1);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        (self.max_connections > room).then(|| std::mem::replace(&mut self.max_connections, room))
    }

    pub fn from_settings(s: &crate::config::Settings) -> Limits {
        Limits {
            h2c: s.server.h2c,
            handshake_timeout: Duration::from_secs(s.server.handshake_timeout_secs),
            keep_alive: Duration::from_secs(s.server.keep_alive_secs),
            max_connections: s.server.max_connections,
            max_header_bytes: s.server.max_header_bytes,
            drain: Duration::from_secs(s.server.drain_secs),
        }
    }
}

/// Install the process's rustls crypto provider, aws-lc-rs: rustls's default, and the one
/// crypto library in the dependency tree (object_store's S3 client needs it; rustls refuses
/// to guess when crates' features could name two).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
    // Stateless session tickets (keys rotated by rustls), so a returning browser resumes
    // without a certificate signature from us or a chain check on its side, however many
    // clients there are: the default keeps only 256 sessions in memory, far fewer than the
    // organisations that reconnect at 7:30, when idle connections have been closed.
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().context("making the TLS session ticket key")?;
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
    let conns = Arc::new(Connections::default());
    let reclaim_batch = (limits.max_connections / 64).clamp(1, RECLAIM_BATCH);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.keep_alive);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(100);
    let builder = Arc::new(builder);
    // HTTP/1.1 alone, for connections that cannot be HTTP/2: no protocol detection, and the
    // busiest connections of results morning cost less per request.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.keep_alive);
    let http1 = Arc::new(http1);
    let h2c = limits.h2c;
    tokio::pin!(shutdown);
    'accept: loop {
        // A free connection slot is taken before accepting, so excess connections queue in
        // the kernel's backlog instead of consuming memory here. With none free, the next
        // client is accepted (one at a time) and the connections idle longest are asked to
        // close for it: kept-alive browsers that may not ask again for a while. Connections
        // with a request in flight are left alone, so look again every second while none is
        // idle.
        let free = permits.clone().try_acquire_owned().ok();
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
        let permit = match free.or_else(|| permits.clone().try_acquire_owned().ok()) {
            Some(p) => p,
            None => loop {
                let asked = conns.reclaim_idle(reclaim_batch);
                if asked > 0 {
                    metrics::counter!("nca_connections_reclaimed_total").increment(asked as u64);
                    tracing::debug!(asked, "every connection slot taken; closing idle ones");
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => break p.expect("semaphore never closed"),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut shutdown => break 'accept,
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let (builder, http1) = (builder.clone(), http1.clone());
        let registered = conns.register();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let conn = registered.conn.clone();
            let _registered = registered;
            let Some(acceptor) = acceptor else {
                // Plain HTTP, behind a TLS-terminating load balancer.
                if h2c {
                    serve_connection(TokioIo::new(stream), addr, app, &builder, conn).await;
                } else {
                    serve_http1(TokioIo::new(stream), addr, app, &http1, conn).await;
                }
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
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_connection(TokioIo::new(tls), addr, app, &builder, conn).await;
            } else {
                serve_http1(TokioIo::new(tls), addr, app, &http1, conn).await;
            }
        });
    }
    drop(listener);
    tracing::info!(
        deadline_secs = limits.drain.as_secs(),
        "draining connections"
    );
    // Every connection finishes the request it is answering and closes; each gives back its
    // slot as its task ends, so holding every slot again means all have.
    conns.close_all();
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    Ok(())
}

/// Serve `app` on `threads` threads, each with a single-threaded runtime and its own socket
/// listening on `addr` (SO_REUSEPORT, so the kernel spreads connections between them): the
/// model of nginx's workers. A connection's requests never hop between threads, which on a
/// small machine costs more than the work itself. Binds and starts the threads at once (so a
/// taken port is reported before anything else); the future it returns ends once `shutdown`
/// has resolved and every thread has drained. `addr` needs a fixed port.
pub fn serve_threads(
    addr: SocketAddr,
    threads: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: crate::App,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>>> {
    let threads = threads.max(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let per_thread = Limits {
        max_connections: limits.max_connections.div_ceil(threads),
        ..limits
    };
    let mut handles = Vec::new();
    for i in 0..threads {
        let listener = reuse_port_listener(addr)?;
        let (tls, app, limits, mut stopped) = (
            tls.clone(),
            app.clone(),
            per_thread.clone(),
            stopped.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("nca-http-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting a connection thread's runtime")?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve_tls(listener, tls, app, limits, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                })
            })
            .context("starting a connection thread")?;
        handles.push(handle);
    }
    Ok(async move {
        shutdown.await;
        let _ = stop.send(true);
        tokio::task::spawn_blocking(move || {
            for h in handles {
                match h.join() {
                    Ok(Err(e)) => tracing::error!(error = %e, "connection thread"),
                    Err(_) => tracing::error!("a connection thread panicked"),
                    Ok(Ok(())) => {}
                }
            }
        })
        .await?;
        Ok(())
    })
}

/// A non-blocking listening socket on `addr` that other sockets may share (SO_REUSEPORT).
fn reuse_port_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    s.listen(4096)?;
    Ok(s.into())
}

/// One connection's requests into `App::handle`, with the client's address and the
/// connection's own session memo, each marking the connection busy while it is answered.
fn connection_service(
    app: crate::App,
    addr: SocketAddr,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let memo = Arc::new(crate::auth::session::SessionMemo::default());
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let busy = conn.busy();
        let answer = app.clone().handle(req, Some(addr), Some(memo.clone()));
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    })
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    addr: SocketAddr,
    app: crate::App,
    builder: &auto::Builder<TokioExecutor>,
    conn: Arc<Conn>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served =
        builder.serve_connection_with_upgrades(io, connection_service(app, addr, conn.clone()));
    tokio::pin!(served);
    let ended = until_closed(served, &conn, |s| s.graceful_shutdown()).await;
    if let Err(e) = ended {
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
}

/// Serve a connection to its end; when it is asked to close (drain, or its slot reclaimed),
/// shut it down gracefully: the request in flight is answered, then it closes.
async fn until_closed<F: Future>(
    mut served: std::pin::Pin<&mut F>,
    conn: &Conn,
    shut_down: impl FnOnce(std::pin::Pin<&mut F>),
) -> F::Output {
    tokio::select! {
        r = served.as_mut() => r,
        _ = conn.asked_to_close() => {
            shut_down(served.as_mut());
            served.await
        }
    }
}

/// One HTTP/1.1 connection (no protocol detection).
async fn serve_http1<I>(
    io: TokioIo<I>,
    addr: SocketAddr,
    app: crate::App,
    builder: &hyper::server::conn::http1::Builder,
    conn: Arc<Conn>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = builder.serve_connection(io, connection_service(app, addr, conn.clone()));
    tokio::pin!(served);
    let ended = until_closed(served, &conn, |s| s.graceful_shutdown()).await;
    if let Err(e) = ended {
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Request latencies are exported as Prometheus histograms with these bounds, in seconds
/// (50 ms is the download target on results morning): buckets add up across instances, where
/// quantile summaries cannot, and counting a sample into a bucket costs a small part of what
/// adding it to a quantile sketch did on every download (bench/instructions.sh).
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .expect("latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Fold the recorded latencies into their summaries every few seconds. The recorder keeps
/// every sample until then (a download records one), and rendering /metrics is the only other
/// time it folds them: with nobody scraping, memory would grow with every request.
pub fn spawn_metrics_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded defaults alone (no config folder, no environment).
    fn embedded_settings() -> crate::config::Settings {
        crate::config::Settings::load_from(
            Path::new("/nonexistent"),
            figment::providers::Env::prefixed("NCA_NOT_READ_"),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn latencies_are_exported_as_histograms_with_the_download_target_as_a_bound() {
        let handle = metrics_handle();
        metrics::histogram!("nca_http_request_seconds", "route" => "/histogram-test").record(0.03);
        let text = handle.render();
        let bucket = |le: &str| {
            format!("nca_http_request_seconds_bucket{{route=\"/histogram-test\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 1\n", bucket("0.05"))), "{text}");
        assert!(text.contains(&format!("{} 0\n", bucket("0.025"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", bucket("+Inf"))), "{text}");
    }

    #[test]
    fn max_connections_fits_under_the_open_file_limit() {
        let mut limits = Limits {
            max_connections: 20_000,
            ..Limits::from_settings(&embedded_settings())
        };
        assert_eq!(limits.fit_open_files(1_048_576), None);
        assert_eq!(limits.max_connections, 20_000);
        assert_eq!(limits.fit_open_files(20_000), Some(20_000));
        assert_eq!(limits.max_connections, 20_000 - RESERVED_FILES as usize);
        // A tiny limit still leaves one connection.
        assert_eq!(limits.fit_open_files(10), Some(20_000 - 1024));
        assert_eq!(limits.max_connections, 1);
    }
}
