//! `nca-portal`: the server binary. Thin: parses arguments and wires the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nca_pipeline::store::Store;
use nca_portal::AppState;

#[derive(Parser)]
#[command(name = "nca-portal", version, about = "KS2 results-release service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the current release's health over HTTP.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080", env = "NCA_SERVER__LISTEN")]
        listen: SocketAddr,
        #[arg(long, default_value = "nca-data/store", env = "NCA_PIPELINE_STORE")]
        store: String,
    },
    /// The main job on embedded defaults: generate a synthetic cohort, publish it, serve.
    Demo {
        #[arg(long, default_value = "nca-data")]
        data: PathBuf,
        #[arg(long, default_value_t = 200)]
        schools: usize,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting runtime")?;
    match Cli::parse().command {
        Command::Serve { listen, store } => rt.block_on(serve(listen, Store::open(&store)?)),
        Command::Demo {
            data,
            schools,
            listen,
        } => {
            let intake = data.join("intake");
            println!(
                "generating a synthetic cohort of {schools} primary schools in {}",
                intake.display()
            );
            let s = nca_pipeline::generate::generate(&nca_pipeline::generate::GenOptions {
                out: intake.clone(),
                schools,
                seed: 1,
                year: 2025,
                script_pupils: 4,
                progress: false,
            })?;
            println!(
                "  {} pupils, {} mark rows, {} script pages",
                s.pupils, s.mark_rows, s.script_pages
            );
            let store = Store::open(
                data.join("store")
                    .to_str()
                    .context("data path is not UTF-8")?,
            )?;
            let now = time::OffsetDateTime::now_utc();
            let opts = nca_pipeline::publish::PublishOptions {
                dir: intake,
                year: None,
                opens_at: now,
                ks3_opens_at: now,
                progress: false,
                concurrency: 32,
            };
            let rep = std::sync::Arc::new(nca_pipeline::report::Reporter::in_memory());
            let p = rt
                .block_on(nca_pipeline::publish::publish(&store, &opts, rep.clone()))
                .map_err(|e| anyhow::anyhow!("{e}: {:?}", rep.problems().first()))?;
            println!(
                "published release {} ({} objects) to {}",
                p.id,
                p.objects,
                store.url()
            );
            println!(
                "try: cargo run --release -p nca-pipeline -- export --store {} --laestab 2012000",
                store.url()
            );
            println!(
                "sign-in and the results pages arrive with the identity and results-morning issues;"
            );
            println!(
                "for now the server answers http://{listen}/healthz and http://{listen}/readyz"
            );
            rt.block_on(serve(listen, store))
        }
    }
}

async fn serve(listen: SocketAddr, store: Store) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "serving");
    nca_portal::serve(listener, AppState { store }, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
