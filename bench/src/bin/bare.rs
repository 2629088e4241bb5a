//! The ceiling for bench/downloads.sh: a bare hyper + rustls server that answers every request
//! with one file held in memory, and does nothing else (no session, authorisation, limits or
//! audit). The same thread layout as nca-portal's listener (one current-thread runtime per
//! thread, each with its own SO_REUSEPORT socket), the same certificate, HTTP/1.1 only.
//! Measured beside nginx and nca-portal it shows how much of the budget the portal's checks use.
//! With `--header` it also sends the headers the portal's download sends (bench/downloads.sh
//! copies them from a real download), made once and cloned per response as the portal does:
//! what those headers alone cost, before any check.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    /// Address to listen on (a fixed port).
    #[arg(long)]
    listen: SocketAddr,
    /// The body to serve.
    #[arg(long)]
    file: std::path::PathBuf,
    /// PEM certificate and key; without them, plain HTTP.
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A header (`name: value`) to send with every response besides the content type;
    /// repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: a header is `name: value`"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("{name:?}: {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("{value:?}: {e}"))?;
    Ok((name, value))
}

fn tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
        .context("no private key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = Bytes::from(std::fs::read(&args.file)?);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    headers.extend(args.headers);
    let headers = Arc::new(headers);
    let acceptor = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(tls(c, k)?)),
        _ => None,
    };
    let mut threads = Vec::new();
    for _ in 0..args.threads.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(args.listen),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&args.listen.into())?;
        socket.listen(4096)?;
        let (body, acceptor, headers) = (body.clone(), acceptor.clone(), headers.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(socket.into())?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    let _ = stream.set_nodelay(true);
                    let (body, acceptor, headers) =
                        (body.clone(), acceptor.clone(), headers.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let mut r = hyper::Response::new(Full::new(body.clone()));
                            *r.headers_mut() = HeaderMap::clone(&headers);
                            async move { Ok::<_, Infallible>(r) }
                        });
                        let _ = match acceptor {
                            Some(a) => match a.accept(stream).await {
                                Ok(s) => {
                                    http1::Builder::new()
                                        .serve_connection(TokioIo::new(s), svc)
                                        .await
                                }
                                Err(_) => return,
                            },
                            None => {
                                http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await
                            }
                        };
                    });
                }
            })
        }));
    }
    for t in threads {
        t.join().expect("a serving thread panicked")?;
    }
    Ok(())
}
