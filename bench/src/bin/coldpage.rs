//! One cold script page asked for by N clients at once (bench/scripts.sh): every answer's
//! status and body, and the server's count of object-store page reads before and after, read
//! from its Prometheus endpoint. Target: one read.

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The page's URL (plain HTTP).
    #[arg(long)]
    url: String,
    /// The session cookie header value.
    #[arg(long)]
    cookie: String,
    /// The server's metrics URL.
    #[arg(long)]
    metrics: String,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
}

async fn reads(client: &reqwest::Client, metrics: &str) -> anyhow::Result<u64> {
    let text = client.get(metrics).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("nca_script_page_reads_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.requests)
        .build()?;
    let before = reads(&client, &args.metrics).await?;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..args.requests)
        .map(|_| {
            let (c, url, cookie) = (client.clone(), args.url.clone(), args.cookie.clone());
            tokio::spawn(async move {
                let r = c.get(&url).header("cookie", cookie).send().await?;
                let status = r.status().as_u16();
                let body = r.bytes().await?;
                Ok::<_, anyhow::Error>((status, body))
            })
        })
        .collect();
    let mut ok = 0;
    let mut bodies = std::collections::HashSet::new();
    let mut other = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, body) = t.await.context("request task")??;
        if status == 200 {
            ok += 1;
            bodies.insert(body);
        } else {
            *other.entry(status).or_insert(0) += 1;
        }
    }
    let elapsed = started.elapsed();
    let after = reads(&client, &args.metrics).await?;
    println!(
        "{} concurrent requests for one cold page: {ok} answered 200 ({} distinct bodies), others {other:?}, in {:.0} ms",
        args.requests,
        bodies.len(),
        elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "object-store reads of pages: {} (target 1): {}",
        after - before,
        if after - before == 1 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
