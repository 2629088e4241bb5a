//! Sign-in bench: how many password sign-ins per second the server completes with its real
//! argon2id parameters, against what the machine could hash at most, and how a cheap
//! authenticated request (`GET /api/v1/me`) fares while sign-ins run flat out.
//!
//! Phase 1 signs one client in (password, then the emailed code read from the outbox) and
//! measures `/me` on it while the server is idle. Phase 2 runs `--concurrency` tasks posting
//! `/api/v1/sign-in` with rotating users and the right password for `--secs` seconds, while one
//! task on its own thread and runtime keeps asking `/me` every `--me-interval-ms` on the
//! signed-in client. The machine limit is cores / (seconds per hash), the seconds measured here
//! by hashing with the same parameters (m=19456 KiB, t=2, p=1) before and after the load (the
//! faster median of the two, since this machine's speed drifts): the computation
//! alone (block memory reused), and, for comparison, with the 19 MiB allocated afresh for each
//! hash, as argon2's `verify_password` does on every sign-in.
//!
//! Run through `bench/signin.sh`, which builds, sets up a server with users and runs this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use clap::Parser;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};

/// The p99 of `/me` under sign-in load must stay below this.
const TARGET_P99_MS: f64 = 10.0;

#[derive(Parser, Debug)]
#[command(
    about = "Sign-ins per second against the machine's argon2 limit, and /api/v1/me latency under that load"
)]
struct Args {
    /// Base URL of the server, e.g. https://127.0.0.1:8443 (any certificate is accepted).
    #[arg(long)]
    url: String,
    /// Users to rotate through: the first N addresses of --emails-file.
    #[arg(long)]
    users: usize,
    /// Seconds of sign-in load measured (after --warmup-secs).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// The password of every bench user.
    #[arg(long)]
    password: String,
    /// One email address per line.
    #[arg(long)]
    emails_file: PathBuf,
    /// Sign-in requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The server's outbox folder, where the emailed code for phase 1 is read.
    #[arg(long)]
    outbox: PathBuf,
    /// The account kept signed in for /me (default: the first address of --emails-file).
    #[arg(long)]
    me_email: Option<String>,
    /// Pause between the start of one /me request and the next (they run one at a time).
    #[arg(long, default_value_t = 5)]
    me_interval_ms: u64,
    /// Seconds of /me on an idle server, before the load.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Seconds of sign-in load before measuring starts (connections, queues filling).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Hashes timed in-process to measure seconds per hash (after one untimed).
    #[arg(long, default_value_t = 15)]
    hash_samples: usize,
    /// The server's process id, to report its CPU use during the load (optional, Linux).
    #[arg(long)]
    server_pid: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emails = read_emails(&args.emails_file)?;
    ensure!(args.users >= 1, "--users must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        emails.len() >= args.users,
        "--users {} but {} holds only {} addresses",
        args.users,
        args.emails_file.display(),
        emails.len()
    );
    let users: Arc<Vec<String>> = Arc::new(emails[..args.users].to_vec());
    let me_email = args.me_email.clone().unwrap_or_else(|| emails[0].clone());
    let url = args.url.trim_end_matches('/').to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // The machine's hashing cost, measured before the server has any work (and again after the
    // load: this machine's speed drifts, and the limit should be the best it showed).
    let before = measure_hashing(args.hash_samples, cores)?;
    print_hashing("before load", &before, cores);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(args, url, users, me_email, cores, before))
}

fn print_hashing(when: &str, h: &HashCost, cores: usize) {
    println!(
        "argon2id m=19456 KiB t=2 p=1, {when}: one thread {:.2} ms per hash reusing its memory, \
         {:.2} ms allocating it afresh (as the server's verify does) (medians of {}); \
         {cores} threads at once: {:.1} hashes/s reusing, {:.1} allocating",
        h.reuse.median_ms,
        h.fresh.median_ms,
        h.reuse.samples_ms.len(),
        h.reuse.parallel_per_sec,
        h.fresh.parallel_per_sec,
    );
}

async fn run(
    args: Args,
    url: String,
    users: Arc<Vec<String>>,
    me_email: String,
    cores: usize,
    before: HashCost,
) -> anyhow::Result<()> {
    // Phase 1: one client signed in (password, then the emailed code).
    let cookie = sign_in_fully(&url, &me_email, &args.password, &args.outbox).await?;
    println!(
        "signed in as {me_email} (session cookie {} bytes)",
        cookie.len()
    );

    // The /me prober runs on its own thread and single-threaded runtime, so that its timings
    // are not held up behind the load generator's tasks in this process.
    let (idle_tx, idle_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    let stop_probe = Arc::new(AtomicBool::new(false));
    let prober = {
        let me_url = format!("{url}/api/v1/me");
        let interval = Duration::from_millis(args.me_interval_ms);
        let idle = Duration::from_secs(args.idle_secs);
        let stop = stop_probe.clone();
        std::thread::Builder::new().name("me-prober".into()).spawn(
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let client = client()?;
                    // Open the connection and settle before timing anything.
                    for _ in 0..20 {
                        let r = client.get(&me_url).header(COOKIE, &cookie).send().await?;
                        ensure!(r.status() == 200, "GET /api/v1/me answered {}", r.status());
                        r.bytes().await?;
                    }
                    let deadline = Instant::now() + idle;
                    let idle_probe = probe(&client, &me_url, &cookie, interval, || {
                        Instant::now() >= deadline
                    })
                    .await;
                    let _ = idle_tx.send(idle_probe);
                    if go_rx.await.is_err() {
                        return Ok(());
                    }
                    let loaded = probe(&client, &me_url, &cookie, interval, || {
                        stop.load(Ordering::Relaxed)
                    })
                    .await;
                    let _ = loaded_tx.send(loaded);
                    Ok(())
                })
            },
        )?
    };
    let idle = match idle_rx.await {
        Ok(p) => p,
        Err(_) => {
            return Err(prober
                .join()
                .expect("prober panicked")
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("prober ended early")));
        }
    };
    println!(
        "/me idle: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        idle.latencies.len(),
        idle.stats().p50,
        idle.stats().p99,
        idle.stats().max
    );

    // Phase 2: sign-ins flat out, /me alongside.
    let load = Arc::new(Load::default());
    let stop_load = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup_secs);
    let sign_in_client = client()?;
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        tasks.push(tokio::spawn(sign_in_loop(
            sign_in_client.clone(),
            format!("{url}/api/v1/sign-in"),
            users.clone(),
            args.password.clone(),
            load.clone(),
            stop_load.clone(),
            measure_from,
        )));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let _ = go_tx.send(());
    let cpu_from = CpuSnapshot::take(args.server_pid);
    let mut last = load.signed_in.load(Ordering::Relaxed);
    let first = last;
    let mut per_second = Vec::new();
    for i in 1..=args.secs {
        tokio::time::sleep_until((measure_from + Duration::from_secs(i)).into()).await;
        let now = load.signed_in.load(Ordering::Relaxed);
        per_second.push(now - last);
        last = now;
    }
    let window = measure_from.elapsed().as_secs_f64();
    let cpu_to = CpuSnapshot::take(args.server_pid);
    let signed_in = last - first;
    stop_load.store(true, Ordering::Relaxed);
    stop_probe.store(true, Ordering::Relaxed);
    let mut sign_in_latencies = Vec::new();
    for t in tasks {
        sign_in_latencies.extend(t.await?);
    }
    let loaded = loaded_rx.await.context("the /me prober ended early")?;
    prober.join().expect("prober panicked")?;

    // Results.
    let samples = args.hash_samples;
    let after = tokio::task::spawn_blocking(move || measure_hashing(samples, cores)).await??;
    print_hashing("after load", &after, cores);
    // The machine's limit: every core doing nothing but the hash's computation, at the speed
    // this machine showed at its best; for comparison, the limit with the memory allocated
    // for every hash, as the server does.
    let reuse_ms = before.reuse.median_ms.min(after.reuse.median_ms);
    let fresh_ms = before.fresh.median_ms.min(after.fresh.median_ms);
    let machine_limit = cores as f64 * 1e3 / reuse_ms;
    let fresh_limit = cores as f64 * 1e3 / fresh_ms;

    let rate = signed_in as f64 / window;
    let ratio = rate / machine_limit;
    let idle_s = idle.stats();
    let loaded_s = loaded.stats();
    let sign_in_s = Stats::of(&sign_in_latencies);
    let pass = loaded_s.n > 0 && loaded_s.p99 < TARGET_P99_MS && loaded.errors == 0;
    let cpu = cpu_from
        .zip(cpu_to)
        .map(|(a, b)| a.usage(&b, args.server_pid));
    let errors = load.errors.load(Ordering::Relaxed);
    let refused = load.refused.load(Ordering::Relaxed);
    let throttled = load.throttled.load(Ordering::Relaxed);

    println!(
        "--- sign-in load: {} tasks, {} users, {:.1} s measured after {} s warm-up",
        args.concurrency,
        users.len(),
        window,
        args.warmup_secs
    );
    println!(
        "sign-ins/s:            {rate:.1}  ({signed_in} completed; per second {per_second:?})"
    );
    println!(
        "machine limit:         {machine_limit:.1} sign-ins/s  ({cores} cores / {reuse_ms:.2} ms per hash, memory reused)"
    );
    println!("ratio:                 {ratio:.2}  (sign-ins/s / machine limit)");
    println!(
        "allocating limit:      {fresh_limit:.1} sign-ins/s  ({cores} cores / {fresh_ms:.2} ms per hash allocating its memory); ratio {:.2}",
        rate / fresh_limit
    );
    println!(
        "sign-in latency:       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  (non-2xx: {refused} refused, {throttled} throttled, {errors} errors)",
        sign_in_s.p50, sign_in_s.p99, sign_in_s.max
    );
    println!(
        "/me idle:              p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  ({} requests, {} errors)",
        idle_s.p50, idle_s.p99, idle_s.max, idle_s.n, idle.errors
    );
    println!(
        "/me under load:        p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  ({} requests, {} errors)",
        loaded_s.p50, loaded_s.p99, loaded_s.max, loaded_s.n, loaded.errors
    );
    if let Some(c) = &cpu {
        println!(
            "cpu during load:       machine {:.0}% busy of {cores} cores ({:.0}% stolen by the hypervisor); this bench {:.2} cores{}",
            c.machine_busy * 100.0,
            c.machine_steal * 100.0,
            c.bench_cores,
            c.server_cores.map_or(String::new(), |s| format!(
                "; server {s:.2} cores; everything else {:.2} cores",
                (c.machine_busy * cores as f64 - s - c.bench_cores).max(0.0)
            ))
        );
        if !c.others.is_empty() {
            let list: Vec<String> = c
                .others
                .iter()
                .map(|(comm, pid, x)| format!("{comm} (pid {pid}) {x:.2}"))
                .collect();
            println!("busiest other processes: {}", list.join(", "));
        }
    }
    println!(
        "p99 /me under load < {TARGET_P99_MS} ms: {}",
        if pass { "PASS" } else { "FAIL" }
    );

    let out = json!({
        "cores": cores,
        "concurrency": args.concurrency,
        "users": users.len(),
        "measured_secs": window,
        "argon2": {
            "m_kib": 19456, "t": 2, "p": 1,
            "before_load": { "memory_reused": before.reuse.json(), "memory_allocated_per_hash": before.fresh.json() },
            "after_load": { "memory_reused": after.reuse.json(), "memory_allocated_per_hash": after.fresh.json() },
            "ms_per_hash_used": reuse_ms,
            "ms_per_hash_allocating_used": fresh_ms,
        },
        "sign_ins": signed_in,
        "sign_ins_per_sec": rate,
        "sign_ins_per_second_series": per_second,
        "machine_limit_per_sec": machine_limit,
        "ratio": ratio,
        "allocating_limit_per_sec": fresh_limit,
        "ratio_to_allocating_limit": rate / fresh_limit,
        "sign_in_ms": sign_in_s.json(),
        "sign_in_refused": refused,
        "sign_in_throttled": throttled,
        "sign_in_errors": errors,
        "me_idle_ms": idle_s.json(),
        "me_idle_errors": idle.errors,
        "me_loaded_ms": loaded_s.json(),
        "me_loaded_errors": loaded.errors,
        "cpu": cpu.map(|c| json!({
            "machine_busy_fraction": c.machine_busy,
            "bench_cores": c.bench_cores,
            "server_cores": c.server_cores,
            "other_cores": c.server_cores.map(|s| (c.machine_busy * cores as f64 - s - c.bench_cores).max(0.0)),
            "steal_fraction": c.machine_steal,
            "busiest_others": c.others.iter().map(|(comm, pid, x)| json!({ "command": comm, "pid": pid, "cores": x })).collect::<Vec<_>>(),
        })),
        "target_p99_ms": TARGET_P99_MS,
        "p99_under_target": pass,
    });
    println!("{out}");
    Ok(())
}

fn read_emails(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let emails: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    ensure!(!emails.is_empty(), "{} holds no addresses", path.display());
    Ok(emails)
}

/// An HTTPS client accepting the server's self-signed certificate; HTTP/1.1, so that each
/// request in flight has its own connection, as separate browsers would.
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .http1_only()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(60))
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// Hashing cost

/// Milliseconds per hash, and hashes per second with every core hashing at once, two ways:
/// with the 19 MiB block memory reused from hash to hash (the computation alone: the machine's
/// limit), and allocated afresh for each hash as argon2's `hash_password`/`verify_password` do,
/// which is what the server pays on every sign-in.
struct HashCost {
    reuse: HashWay,
    fresh: HashWay,
}

struct HashWay {
    samples_ms: Vec<f64>,
    median_ms: f64,
    parallel_per_sec: f64,
}

impl HashWay {
    fn json(&self) -> Value {
        json!({
            "ms_per_hash_median": self.median_ms,
            "ms_per_hash_samples": self.samples_ms,
            "parallel_hashes_per_sec": self.parallel_per_sec,
        })
    }
}

/// The server's parameters (OWASP's argon2id: 19 MiB, 2 passes, 1 lane).
fn argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// One hash, into `memory` when given, else into memory allocated for it; milliseconds.
fn hash_once(a: &Argon2<'_>, i: usize, memory: Option<&mut [Block]>) -> anyhow::Result<f64> {
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let mut out = [0u8; 32];
    let t = Instant::now();
    match memory {
        Some(m) => a.hash_password_into_with_memory(b"Tr0ubadour&Bells-42", &salt, &mut out, m),
        None => a.hash_password_into(b"Tr0ubadour&Bells-42", &salt, &mut out),
    }
    .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(out);
    Ok(ms)
}

/// `n` hashes after one untimed, each thread with its own memory when `reuse`; milliseconds.
fn hash_series(n: usize, seed: usize, reuse: bool) -> anyhow::Result<Vec<f64>> {
    let a = argon2()?;
    let mut memory = reuse.then(|| vec![Block::default(); a.params().block_count()]);
    let mut times = Vec::with_capacity(n);
    for i in 0..=n {
        let ms = hash_once(&a, seed + i, memory.as_deref_mut())?;
        if i > 0 {
            times.push(ms);
        }
    }
    Ok(times)
}

/// Milliseconds per hash on one thread (median of `samples`), then hashes per second with
/// `cores` threads hashing at once. Runs on spawned threads, as the server hashes on tokio's
/// blocking pool rather than on a main thread.
fn measure_way(samples: usize, cores: usize, reuse: bool) -> anyhow::Result<HashWay> {
    let n = samples.max(1);
    let times = std::thread::scope(|s| s.spawn(|| hash_series(n, 0, reuse)).join())
        .expect("hashing thread panicked")?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..cores)
            .map(|c| s.spawn(move || hash_series(n, 1000 * (c + 1), reuse)))
            .collect();
        for h in handles {
            h.join().expect("hashing thread panicked")?;
        }
        Ok(())
    })?;
    // Each thread also hashed one untimed.
    let parallel = (cores * (n + 1)) as f64 / t.elapsed().as_secs_f64();
    Ok(HashWay {
        median_ms: sorted[sorted.len() / 2],
        samples_ms: times,
        parallel_per_sec: parallel,
    })
}

fn measure_hashing(samples: usize, cores: usize) -> anyhow::Result<HashCost> {
    Ok(HashCost {
        reuse: measure_way(samples, cores, true)?,
        fresh: measure_way(samples, cores, false)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 1: a signed-in client

/// `name=value` pairs from Set-Cookie headers, replacing earlier values of the same name.
fn merge_cookies(jar: &mut Vec<(String, String)>, headers: &HeaderMap) {
    for v in headers.get_all(SET_COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        let pair = v.split(';').next().unwrap_or("");
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        jar.retain(|(n, _)| *n != name);
        if !value.is_empty() {
            jar.push((name, value));
        }
    }
}

fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    body: &Value,
) -> anyhow::Result<(u16, HeaderMap, Value)> {
    let mut req = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body)?);
    if !cookie.is_empty() {
        req = req.header(COOKIE, cookie);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, headers, value))
}

/// Sign in with password and emailed code; returns the Cookie header of the signed-in client.
async fn sign_in_fully(
    url: &str,
    email: &str,
    password: &str,
    outbox: &Path,
) -> anyhow::Result<String> {
    let client = client()?;
    let mut jar = Vec::new();
    // Coarse file-system clocks can stamp a file a tick before the system clock said.
    let since = SystemTime::now() - Duration::from_millis(100);
    let (status, headers, body) = post_json(
        &client,
        &format!("{url}/api/v1/sign-in"),
        "",
        &json!({ "email": email, "password": password }),
    )
    .await?;
    ensure!(
        status == 200,
        "sign-in as {email} answered {status}: {body}"
    );
    merge_cookies(&mut jar, &headers);
    if body["mfa_required"] == true {
        let code = wait_for_code(outbox, email, since).await?;
        let (status, headers, body) = post_json(
            &client,
            &format!("{url}/api/v1/sign-in/mfa"),
            &cookie_header(&jar),
            &json!({ "code": code }),
        )
        .await?;
        ensure!(
            status == 200 && body["signed_in"] == true,
            "MFA as {email} answered {status}: {body}"
        );
        merge_cookies(&mut jar, &headers);
    } else {
        ensure!(
            body["signed_in"] == true,
            "sign-in as {email} answered {body}"
        );
    }
    ensure!(
        jar.iter().any(|(n, _)| n == "nca_session"),
        "no nca_session cookie after signing in"
    );
    let cookie = cookie_header(&jar);
    let r = client
        .get(format!("{url}/api/v1/me"))
        .header(COOKIE, &cookie)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    ensure!(
        status == 200,
        "GET /api/v1/me after signing in answered {status}: {body}"
    );
    Ok(cookie)
}

async fn wait_for_code(outbox: &Path, email: &str, since: SystemTime) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(code) = code_from_outbox(outbox, email, since)? {
            return Ok(code);
        }
        if Instant::now() >= deadline {
            bail!(
                "no verification code for {email} in {} within 10 s",
                outbox.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The code in the newest verification email to `to` written since `since`.
fn code_from_outbox(dir: &Path, to: &str, since: SystemTime) -> anyhow::Result<Option<String>> {
    let mut newest: Option<(SystemTime, String)> = None;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let Ok(at) = e.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if at < since || newest.as_ref().is_some_and(|(t, _)| at < *t) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Some(mail) = Mail::parse(&text) else {
            continue;
        };
        let addressed = mail
            .header("to")
            .is_some_and(|v| v.to_ascii_lowercase().contains(&to.to_ascii_lowercase()));
        let verification = mail
            .header("subject")
            .is_some_and(|s| s.contains("verification code"));
        if !addressed || !verification {
            continue;
        }
        if let Some(code) = find_code(&mail.text()) {
            newest = Some((at, code));
        }
    }
    Ok(newest.map(|(_, c)| c))
}

struct Mail {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn parse(text: &str) -> Option<Mail> {
        let text = text.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n")?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = headers.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Some(Mail {
            headers,
            body: body.to_string(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded per Content-Transfer-Encoding.
    fn text(&self) -> String {
        match self
            .header("content-transfer-encoding")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("quoted-printable") => decode_quoted_printable(&self.body),
            Some("base64") => {
                let compact: String = self.body.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            }
            _ => self.body.clone(),
        }
    }
}

fn decode_quoted_printable(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let Some(hex) = s.get(i + 1..i + 3)
                && let Ok(v) = u8::from_str_radix(hex, 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 6-digit code: after "code is", else the first run of exactly six digits.
fn find_code(text: &str) -> Option<String> {
    let six = |s: &str| -> Option<String> {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if i - start == 6 {
                    return Some(s[start..i].to_string());
                }
            } else {
                i += 1;
            }
        }
        None
    };
    text.find("code is")
        .and_then(|at| six(&text[at..]))
        .or_else(|| six(text))
}

// ---------------------------------------------------------------------------------------------
// Phase 2: load and probes

#[derive(Default)]
struct Load {
    next: AtomicUsize,
    signed_in: AtomicU64,
    refused: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
}

/// Post sign-ins with rotating users until `stop`; returns the latencies (ms) of the successful
/// ones started at or after `measure_from`.
async fn sign_in_loop(
    client: reqwest::Client,
    url: String,
    users: Arc<Vec<String>>,
    password: String,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
    measure_from: Instant,
) -> Vec<f64> {
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let i = load.next.fetch_add(1, Ordering::Relaxed) % users.len();
        let body = json!({ "email": users[i], "password": password });
        let t = Instant::now();
        match post_json(&client, &url, "", &body).await {
            Ok((200, _, v)) if v["mfa_required"] == true || v["signed_in"] == true => {
                load.signed_in.fetch_add(1, Ordering::Relaxed);
                if t >= measure_from {
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok((401, _, _)) => {
                load.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok((429, headers, _)) => {
                load.throttled.fetch_add(1, Ordering::Relaxed);
                let wait = headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
            }
            Ok(_) | Err(_) => {
                load.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    latencies
}

struct Probe {
    /// Milliseconds, in order of sending.
    latencies: Vec<f64>,
    errors: u64,
}

impl Probe {
    fn stats(&self) -> Stats {
        Stats::of(&self.latencies)
    }
}

/// GET `url` one request at a time, starting one every `interval` (or as soon as the previous
/// answers, when it took longer), until `done`.
async fn probe(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    interval: Duration,
    done: impl Fn() -> bool,
) -> Probe {
    let mut latencies = Vec::new();
    let mut errors = 0;
    while !done() {
        let t = Instant::now();
        let ok = match client.get(url).header(COOKIE, cookie).send().await {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            errors += 1;
        }
        tokio::time::sleep_until((t + interval).into()).await;
    }
    Probe { latencies, errors }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles of milliseconds.
    fn of(ms: &[f64]) -> Stats {
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Stats {
            n: v.len(),
            p50: pct(50.0),
            p99: pct(99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean: if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
        }
    }

    fn json(&self) -> Value {
        json!({ "n": self.n, "p50": self.p50, "p99": self.p99, "max": self.max, "mean": self.mean })
    }
}

// ---------------------------------------------------------------------------------------------
// CPU use (Linux /proc; absent elsewhere)

/// USER_HZ, the unit of /proc's CPU times: 100 on Linux for every mainstream architecture.
const TICKS_PER_SEC: f64 = 100.0;

struct CpuSnapshot {
    at: Instant,
    machine_busy: u64,
    machine_steal: u64,
    machine_total: u64,
    bench: u64,
    server: Option<u64>,
    /// Every process: pid -> (command, ticks).
    all: HashMap<u32, (String, u64)>,
}

struct CpuUse {
    machine_busy: f64,
    /// Time the hypervisor ran something else while this machine wanted a core.
    machine_steal: f64,
    bench_cores: f64,
    server_cores: Option<f64>,
    /// The busiest other processes during the window, in cores.
    others: Vec<(String, u32, f64)>,
}

impl CpuSnapshot {
    fn take(server_pid: Option<u32>) -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0);
        let steal = cpu.get(7).copied().unwrap_or(0);
        let mut all = HashMap::new();
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(t) = process_stat(&pid.to_string()) {
                all.insert(pid, t);
            }
        }
        Some(CpuSnapshot {
            at: Instant::now(),
            machine_busy: total - idle - steal,
            machine_steal: steal,
            machine_total: total,
            bench: process_stat("self")?.1,
            server: server_pid.and_then(|p| process_stat(&p.to_string()).map(|t| t.1)),
            all,
        })
    }

    fn usage(&self, later: &CpuSnapshot, server_pid: Option<u32>) -> CpuUse {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        let total = later
            .machine_total
            .saturating_sub(self.machine_total)
            .max(1);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SEC / secs;
        let me = std::process::id();
        let mut others: Vec<(String, u32, f64)> = later
            .all
            .iter()
            .filter(|(pid, _)| **pid != me && Some(**pid) != server_pid)
            .map(|(pid, (comm, t))| {
                let before = self.all.get(pid).map_or(0, |(_, b)| *b);
                (comm.clone(), *pid, cores(t.saturating_sub(before)))
            })
            .filter(|(_, _, c)| *c >= 0.01)
            .collect();
        others.sort_by(|a, b| b.2.total_cmp(&a.2));
        others.truncate(3);
        CpuUse {
            machine_busy: later.machine_busy.saturating_sub(self.machine_busy) as f64
                / total as f64,
            machine_steal: later.machine_steal.saturating_sub(self.machine_steal) as f64
                / total as f64,
            bench_cores: cores(later.bench.saturating_sub(self.bench)),
            server_cores: self
                .server
                .zip(later.server)
                .map(|(a, b)| cores(b.saturating_sub(a))),
            others,
        }
    }
}

/// The command name and utime + stime (ticks) of a process.
fn process_stat(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_in_plain_quoted_printable_and_base64_bodies() {
        let plain = "From: a@b\r\nTo: jo@x.uk\r\nSubject: Your NCA Portal verification code\r\n\r\nYour verification code is 012345\r\n\r\nIt expires in 10 minutes.\r\n";
        let m = Mail::parse(plain).unwrap();
        assert_eq!(find_code(&m.text()).as_deref(), Some("012345"));
        assert_eq!(m.header("to"), Some("jo@x.uk"));
        let qp = "To: jo@x.uk\nContent-Transfer-Encoding: quoted-printable\n\nYour verification code is 98=\n7654 =E2=80=94 expires in 10 minutes\n";
        assert_eq!(
            find_code(&Mail::parse(qp).unwrap().text()).as_deref(),
            Some("987654")
        );
        let b64 =
            base64::engine::general_purpose::STANDARD.encode("Your verification code is 555123\n");
        let m = Mail::parse(&format!(
            "To: jo@x.uk\nContent-Transfer-Encoding: base64\n\n{b64}\n"
        ))
        .unwrap();
        assert_eq!(find_code(&m.text()).as_deref(), Some("555123"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&v);
        assert_eq!((s.p50, s.p99, s.max, s.n), (50.0, 99.0, 100.0, 100));
        assert!(Stats::of(&[]).p99.is_nan());
    }

    #[test]
    fn later_cookies_replace_earlier_ones() {
        let mut jar = Vec::new();
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            "nca_session=abc; Path=/; HttpOnly".parse().unwrap(),
        );
        merge_cookies(&mut jar, &h);
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "nca_session=def; Path=/".parse().unwrap());
        h.append(SET_COOKIE, "nca_mfa=x; Max-Age=86400".parse().unwrap());
        merge_cookies(&mut jar, &h);
        assert_eq!(cookie_header(&jar), "nca_session=def; nca_mfa=x");
    }
}
