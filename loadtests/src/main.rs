//! The results-morning load test. Generates a synthetic cohort, publishes it with 7:30 a short
//! time ahead, imports the organisations, creates one account per organisation, starts the
//! real release server over HTTPS, then drives it with goose: every account signs in with
//! password and the emailed code (read from the outbox) before 7:30 and waits; at 7:30 KS2
//! schools download CSV and CTF and open the results page, LAs and trusts pull their combined
//! files, KS3 schools look up 150 incoming pupils. 429 and 503 answers are retried after their
//! Retry-After. Prints success rate, throughput, p50/p95/p99 per step, 429/503 counts,
//! whether every retried request finally succeeded, the download p99 while sign-ins were
//! still running, and how long after 7:30 the last organisation had all its files.
//!
//! Sign-in arrivals are paced to finish about 80% of sign-ins by 7:30, so the rest run beside
//! the downloads. All simulated users share one address, so the per-IP limits (which exist
//! for a whole LA behind one address, not for a whole country) are raised; the per-user and
//! per-organisation limits and admission control are the shipped defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use goose::prelude::*;

const PASSWORD: &str = "Load-Test-Morning-2025!";
/// Tries per request before a step counts as failed (429 and 503 are retried).
const TRIES: usize = 30;

#[derive(Parser, Debug)]
#[command(about = "Results-morning load test against the release binaries")]
struct Args {
    /// KS2 schools in the cohort; KS3 schools, LAs and trusts follow in national proportion
    /// (2,000 KS2 schools make about 2,500 organisations).
    #[arg(long, default_value_t = 2000)]
    schools: usize,
    /// A whole national release (16,800 KS2 schools, about 21,000 organisations; long).
    #[arg(long)]
    national: bool,
    /// Incoming pupils each KS3 school looks up.
    #[arg(long, default_value_t = 150)]
    ks3_pupils: usize,
    /// Sign-ins a second the server is expected to sustain (sets how far ahead 7:30 is).
    #[arg(long, default_value_t = 30.0)]
    sign_ins_per_sec: f64,
    /// Keep the working folder here (default: a temporary folder, removed at the end).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Folder holding the release binaries nca-portal and nca-pipeline (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Every waiting browser reloads at the same instant at 7:30 (the worst case), rather
    /// than when its countdown page's refresh says, which spreads them over a second.
    #[arg(long)]
    same_instant: bool,
}

#[derive(Debug, Clone)]
enum Org {
    Ks2(String),
    Ks3(String),
    La(String),
    Trust(String),
}

#[derive(Debug, Clone)]
struct Account {
    email: String,
    org: Org,
}

/// A pupil a KS3 school may ask about: (upn, surname, dob).
type Pupil = (String, String, String);

/// Shared by every simulated user.
struct World {
    accounts: Mutex<Vec<Account>>,
    pupils: Vec<Pupil>,
    ks3_pupils: usize,
    /// `--same-instant`.
    same_instant: bool,
    outbox: PathBuf,
    /// Email -> the latest sign-in code mailed to it, and a sequence number.
    codes: Mutex<HashMap<String, (u64, String)>>,
    opens: Instant,
    signing_in: AtomicUsize,
    ks3_asked: AtomicUsize,
    ks3_matched: AtomicUsize,
    /// Per step: latencies (ms) of successful requests, and final outcomes.
    steps: Mutex<HashMap<&'static str, Step>>,
    during_sign_in: DuringSignIn,
    /// When the last organisation that was waiting at 7:30 had all its files.
    last_waiting_done: Mutex<Duration>,
    last_done: Mutex<Duration>,
    /// CPU time of the load generator and the server, through the attack.
    cpu: CpuSamples,
    /// Compressed bodies to inflate and check, by the checker thread (`check_compressed`).
    compressed: std::sync::mpsc::Sender<Option<Compressed>>,
}

/// CPU time used so far by this process (the load generator) and by the server, sampled from
/// `/proc` every 50 ms while the attack runs, so the summary can say how the cores were
/// shared during the 7:30 burst: client and server share this machine's cores, and a burst's
/// latencies include the time the server waited for the client's share.
#[derive(Default)]
struct CpuSamples(Mutex<Vec<(Instant, CpuTimes)>>);

/// CPU seconds (user + system) of the load generator and of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    load_generator: f64,
    server: f64,
}

impl CpuSamples {
    const EVERY: Duration = Duration::from_millis(50);

    /// Sample until `running` is cleared.
    fn sample(&self, server_pid: u32, running: &std::sync::atomic::AtomicBool) {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| cpu_ticks(&s))
                .map(|t| t as f64 / tick)
        };
        let server = format!("/proc/{server_pid}/stat");
        while running.load(Ordering::Relaxed) {
            if let (Some(load_generator), Some(server)) = (read("/proc/self/stat"), read(&server)) {
                let times = CpuTimes {
                    load_generator,
                    server,
                };
                self.0.lock().expect("cpu").push((Instant::now(), times));
            }
            std::thread::sleep(Self::EVERY);
        }
    }

    /// CPU seconds each side used from `from` to `to`, between the samples nearest before
    /// each (None without samples around both).
    fn between(&self, from: Instant, to: Instant) -> Option<CpuTimes> {
        let samples = self.0.lock().expect("cpu");
        let at = |t: Instant| samples.iter().rev().find(|(s, _)| *s <= t).map(|(_, c)| *c);
        let (a, b) = (at(from)?, at(to)?);
        Some(CpuTimes {
            load_generator: b.load_generator - a.load_generator,
            server: b.server - a.server,
        })
    }
}

/// utime + stime, in clock ticks, from the text of a `/proc/PID/stat` (fields 14 and 15; the
/// command name, field 2, is in parentheses and may hold spaces or parentheses itself).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Latencies (ms) of downloads made while sign-ins were running: by organisations that had
/// signed in before 7:30 and waited (the 7:30 burst), and by those that signed in after 7:30.
#[derive(Default)]
struct DuringSignIn {
    burst: Mutex<Vec<f64>>,
    late: Mutex<Vec<f64>>,
}

impl DuringSignIn {
    fn list(&self, waited: bool) -> &Mutex<Vec<f64>> {
        if waited { &self.burst } else { &self.late }
    }
}

/// A compressed answer whose check waits for the checker thread. A real client inflates on
/// its own machine; inflating here, in the same instant as thousands of other answers, would
/// take the cores the server is measured on (in the 7:30 burst, brotli and the pages its
/// buffers touch were half of the load generator's CPU).
struct Compressed {
    name: &'static str,
    encoding: String,
    body: Vec<u8>,
    ms: f64,
    /// The step was refused (429/503) before this answer.
    retried: bool,
    /// The list of downloads while sign-ins ran that its latency went into, if any
    /// (`DuringSignIn::list`).
    listed: Option<bool>,
    check: Check,
}

/// A step's test of the start of its answer's body.
type Check = Box<dyn Fn(&[u8]) -> bool + Send>;

#[derive(Default)]
struct Step {
    latencies: Vec<f64>,
    ok: usize,
    failed: usize,
    retried: usize,
    retried_ok: usize,
    status: HashMap<u16, usize>,
}

static WORLD: OnceLock<Arc<World>> = OnceLock::new();

fn world() -> &'static Arc<World> {
    WORLD.get().expect("world set before the attack")
}

struct Session {
    account: Account,
    /// Signed in before 7:30 and waited for it.
    waited: bool,
}

/// mimalloc, as the server: the load generator shares the server's two cores, and in the 7:30
/// burst glibc malloc was a quarter of its CPU (perf), time the server then did not get.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary folder")?
            .to_path_buf(),
    };
    let pipeline = bin.join("nca-pipeline");
    let portal = bin.join("nca-portal");
    for b in [&pipeline, &portal] {
        ensure!(
            b.exists(),
            "{} not found: build the release binaries first",
            b.display()
        );
    }
    // Every simulated browser holds a connection, here and in the server (which inherits
    // this limit): raise the soft open-file limit to the hard one.
    let open_files = rlimit::increase_nofile_limit(u64::MAX)?;
    eprintln!("open-file limit: {open_files} (the server keeps 1,024 of its own for other files)");
    let tmp = tempfile::tempdir()?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let data = work.join("data");
    let intake = work.join("intake");
    let schools = if args.national { 16_800 } else { args.schools };

    eprintln!(
        "generating a cohort of {schools} KS2 schools in {}",
        work.display()
    );
    sh(Command::new(&pipeline)
        .args([
            "generate",
            "--seed",
            "7",
            "--script-pupils",
            "0",
            "--schools",
        ])
        .arg(schools.to_string())
        .arg("--out")
        .arg(&intake))?;
    sh(Command::new(&portal)
        .args(["orgs", "import"])
        .arg(&intake)
        .arg("--data-dir")
        .arg(&data))?;
    let (accounts, pupils) = read_intake(&intake)?;
    let users_csv = work.join("users.csv");
    let mut w = csv::Writer::from_path(&users_csv)?;
    w.write_record(["email", "org", "role", "password"])?;
    for a in &accounts {
        let (org, role) = match &a.org {
            Org::Ks2(o) => (o, "general-user"),
            Org::Ks3(o) => (o, "ks3-user"),
            Org::La(o) => (o, "la-general-user"),
            Org::Trust(o) => (o, "mat-user"),
        };
        w.write_record([a.email.as_str(), org, role, PASSWORD])?;
    }
    w.flush()?;
    eprintln!("creating {} accounts, one per organisation", accounts.len());
    sh(Command::new(&portal)
        .args(["users", "import"])
        .arg(&users_csv)
        .arg("--data-dir")
        .arg(&data))?;

    // 7:30 is when about 80% of the accounts could have signed in at the expected rate.
    let lead = (accounts.len() as f64 / args.sign_ins_per_sec * 0.8).max(20.0);
    let publish_secs = 10.0 + schools as f64 / 400.0;
    let opens_in = Duration::from_secs_f64(lead + publish_secs + 5.0);
    // The release opens on a whole second; `opens` is that same moment on this clock.
    let (now_utc, now) = (time::OffsetDateTime::now_utc(), Instant::now());
    let opens_at = (now_utc + opens_in).replace_nanosecond(0)?;
    let opens = now + Duration::try_from(opens_at - now_utc)?;
    let at = opens_at.format(&time::format_description::well_known::Rfc3339)?;
    eprintln!("publishing with results opening at {at} (simulated 7:30)");
    sh(Command::new(&pipeline)
        .arg("publish")
        .arg(&intake)
        .arg("--store")
        .arg(data.join("store"))
        .args(["--opens-at", &at, "--ks3-opens-at", &at]))?;

    let port = free_port()?;
    let outbox = data.join("outbox");
    std::fs::create_dir_all(&outbox)?;
    let mut server = Server(
        Command::new(&portal)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("NCA_ADMIN__LISTEN", "")
            .env("NCA_AUTH__IP_ATTEMPTS_PER_MINUTE", "1000000")
            .env("NCA_RATE_LIMITS__PER_IP_PER_MINUTE", "1000000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("server.log"))?)
            .spawn()?,
    );
    let host = format!("https://127.0.0.1:{port}");
    wait_ready(&host).await?;
    let now = Instant::now();
    ensure!(
        opens > now + Duration::from_secs(5),
        "set-up took longer than planned"
    );
    let sign_in_window = (opens - now).as_secs_f64() / 0.8;
    let hatch = (accounts.len() as f64 / sign_in_window).max(1.0);
    let n = accounts.len();
    let (to_check, checks) = std::sync::mpsc::channel();
    let world = Arc::new(World {
        accounts: Mutex::new(accounts),
        pupils,
        ks3_pupils: args.ks3_pupils,
        same_instant: args.same_instant,
        outbox: outbox.clone(),
        codes: Mutex::new(HashMap::new()),
        opens,
        signing_in: AtomicUsize::new(0),
        ks3_asked: AtomicUsize::new(0),
        ks3_matched: AtomicUsize::new(0),
        steps: Mutex::new(HashMap::new()),
        during_sign_in: DuringSignIn::default(),
        last_waiting_done: Mutex::new(Duration::ZERO),
        last_done: Mutex::new(Duration::ZERO),
        cpu: CpuSamples::default(),
        compressed: to_check,
    });
    let _ = WORLD.set(world.clone());
    let checker = {
        let world = world.clone();
        std::thread::Builder::new()
            .name("body-checker".into())
            .spawn(move || check_compressed(&world.steps, &world.during_sign_in, &checks))?
    };
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (world, watching) = (world.clone(), watching.clone());
        std::thread::Builder::new()
            .name("outbox-watcher".into())
            .spawn(move || watch_outbox(&world, &watching))?
    };
    let sampler = {
        let (world, watching, pid) = (world.clone(), watching.clone(), server.0.id());
        std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || world.cpu.sample(pid, &watching))?
    };

    eprintln!(
        "{n} users arriving at {hatch:.1}/s; results open in {:.0} s",
        (opens - Instant::now()).as_secs_f64()
    );
    let started = Instant::now();
    let report = work.join("goose-report.html");
    let mut config = goose::config::GooseConfiguration::default();
    // Each organisation does its morning once (goose reads this field, not the default).
    config.iterations = 1;
    // A bound on the whole attack: the whole sign-in window with half as much again in hand
    // (it grows with the organisations), then five minutes for the downloads. (goose refuses a
    // run time beside iterations, so the bound is a timeout around it.)
    let bound = Duration::from_secs_f64(sign_in_window * 1.5) + Duration::from_secs(300);
    let metrics = GooseAttack::initialize_with_config(config)?
        .register_scenario(
            scenario!("Organisation")
                .register_transaction(transaction!(sign_in).set_on_start())
                .register_transaction(transaction!(morning)),
        )
        .set_default(GooseDefault::Host, host.as_str())?
        .set_default(GooseDefault::Users, n)?
        .set_default(GooseDefault::HatchRate, format!("{hatch:.3}").as_str())?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::Quiet, 1)?
        .set_default(GooseDefault::Timeout, "60")?
        .set_default(GooseDefault::ReportFile, report.to_str().context("path")?)?;
    let metrics = tokio::time::timeout(bound, metrics.execute())
        .await
        .map_err(|_| anyhow::anyhow!("the attack did not finish within {bound:?}"))??;
    let elapsed = started.elapsed();
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    let _ = sampler.join();
    // Every answer is checked before the summary counts it.
    let _ = world.compressed.send(None);
    let _ = checker.join();
    let exited = server.0.try_wait()?;
    server.stop();
    let failed = summarise(&world, &metrics, elapsed, n, &work)?;
    if let Some(status) = exited {
        bail!("the server exited during the test: {status}");
    }
    if args.work.is_none() {
        eprintln!("(working folder removed; pass --work to keep it)");
    }
    ensure!(failed == 0, "{failed} steps failed after retries");
    Ok(())
}

/// The server process, stopped when dropped.
struct Server(Child);

impl Server {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.env("RUST_LOG", "warn").output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// How often the results countdown page reloads itself (results_pages::COUNTDOWN_RELOAD_SECS).
const COUNTDOWN_RELOAD: Duration = Duration::from_secs(60);

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What Chromium sends.
const ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

/// How much of a compressed body the checks see: they look at how it starts, and a real
/// client inflates on its own machine, not on the cores the server is measured on.
const CHECKED_PREFIX: u64 = 4096;

/// The start of `body` as sent before `encoding`: all of it when it is not encoded, the first
/// `CHECKED_PREFIX` bytes inflated when it is; None when it does not inflate.
fn opening<'a>(encoding: Option<&str>, body: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    use std::io::Read;
    let mut out = Vec::new();
    let read = match encoding {
        None | Some("identity") => return Some(body.into()),
        Some("gzip") => flate2::read::GzDecoder::new(body)
            .take(CHECKED_PREFIX)
            .read_to_end(&mut out),
        Some("br") => brotli::Decompressor::new(body, 4096)
            .take(CHECKED_PREFIX)
            .read_to_end(&mut out),
        Some(_) => return None,
    };
    (read.is_ok() && !out.is_empty()).then_some(out.into())
}

fn client() -> reqwest::ClientBuilder {
    // The server's certificate is the self-signed one it generated for this test.
    // Idle connections are dropped 10 s before the server's keep-alive ends them
    // (server.keep_alive_secs, 75 s unless NCA_SERVER__KEEP_ALIVE_SECS says otherwise), as a
    // browser's pool does: otherwise a user can send on a connection the server is closing at
    // that instant (seen once in 11,746 steps as "error sending request").
    let keep_alive = std::env::var("NCA_SERVER__KEEP_ALIVE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(75);
    // Browsers and HTTP libraries ask for compressed bodies, and the server has every
    // download precompressed: a client that never asked would make it send (and encrypt)
    // every file whole, a school's CTF over 30 times its compressed size.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static(ACCEPT_ENCODING),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .danger_accept_invalid_certs(true)
        .cookie_store(true)
        .pool_idle_timeout(Duration::from_secs(keep_alive.saturating_sub(10).max(1)))
        .timeout(Duration::from_secs(60))
}

async fn wait_ready(host: &str) -> anyhow::Result<()> {
    let c = client().build()?;
    for _ in 0..200 {
        if c.get(format!("{host}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not become ready; see server.log")
}

/// One account per organisation, and every pupil (for KS3 lookups).
fn read_intake(dir: &Path) -> anyhow::Result<(Vec<Account>, Vec<Pupil>)> {
    let mut accounts = Vec::new();
    let mut las = std::collections::BTreeSet::new();
    let mut trusts = std::collections::BTreeSet::new();
    let mut r = csv::Reader::from_path(dir.join("schools.csv"))?;
    for rec in r.records() {
        // urn, laestab, name, la_code, phase, type, trust_uid, trust_name
        let rec = rec?;
        let laestab = rec[1].to_string();
        las.insert(rec[3].to_string());
        if !rec[6].is_empty() {
            trusts.insert(rec[6].to_string());
        }
        let org = if &rec[4] == "secondary" {
            Org::Ks3(laestab.clone())
        } else {
            Org::Ks2(laestab.clone())
        };
        accounts.push(Account {
            email: format!("user@{laestab}.school.test"),
            org,
        });
    }
    accounts.extend(las.into_iter().map(|c| Account {
        email: format!("user@{c}.la.test"),
        org: Org::La(c),
    }));
    accounts.extend(trusts.into_iter().map(|u| Account {
        email: format!("user@{u}.trust.test"),
        org: Org::Trust(u),
    }));
    let mut pupils = Vec::new();
    let mut r = csv::Reader::from_path(dir.join("pupils.csv"))?;
    for rec in r.records() {
        // upn, laestab, surname, forename, dob, ...
        let rec = rec?;
        pupils.push((rec[0].to_string(), rec[2].to_string(), rec[4].to_string()));
    }
    // Interleave kinds so every kind arrives throughout the sign-in window.
    use rand::seq::SliceRandom;
    accounts.shuffle(&mut rand::rng());
    Ok((accounts, pupils))
}

/// Read each new mail in the outbox once, keeping the latest sign-in code per address. On its
/// own thread, polling every 100 ms: listing a folder of thousands of mails is blocking work
/// that must neither stall the simulated users' runtime nor take much of the CPU the server
/// shares with them.
fn watch_outbox(world: &World, watching: &std::sync::atomic::AtomicBool) {
    let mut seen = std::collections::HashSet::new();
    let mut seq = 0u64;
    while watching.load(Ordering::Relaxed) {
        if let Ok(dir) = std::fs::read_dir(&world.outbox) {
            let mut new: Vec<(std::time::SystemTime, PathBuf)> = dir
                .flatten()
                .filter(|e| !seen.contains(&e.file_name()))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
            new.sort();
            for (_, p) in new {
                let Ok(text) = std::fs::read_to_string(&p) else {
                    continue;
                };
                if !text.contains("\r\n\r\n") && !text.contains("\n\n") {
                    continue; // still being written
                }
                seen.insert(p.file_name().unwrap_or_default().to_owned());
                let to = text
                    .lines()
                    .find_map(|l| l.strip_prefix("To: "))
                    .map(|t| t.trim().trim_matches(['<', '>']).to_lowercase());
                let code = text.find("code is ").and_then(|i| text.get(i + 8..i + 14));
                if let (Some(to), Some(code)) = (to, code) {
                    seq += 1;
                    world
                        .codes
                        .lock()
                        .expect("codes")
                        .insert(to, (seq, code.to_string()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Inflate and check compressed answers as they come, at the lowest CPU priority, so that
/// while the server is busy this thread waits; a body that fails its check turns its step
/// from ok to failed, and its latency leaves the step's and any list of downloads while
/// sign-ins ran. Ends at `None`.
fn check_compressed(
    steps: &Mutex<HashMap<&'static str, Step>>,
    during_sign_in: &DuringSignIn,
    checks: &std::sync::mpsc::Receiver<Option<Compressed>>,
) {
    // (On Linux a thread has its own nice value: `None` is this thread.)
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        eprintln!("body checker keeps normal priority: {e}");
    }
    while let Ok(Some(c)) = checks.recv() {
        if opening(Some(&c.encoding), &c.body).is_some_and(|b| (c.check)(&b)) {
            continue;
        }
        let mut steps = steps.lock().expect("steps");
        let s = steps.entry(c.name).or_default();
        s.ok = s.ok.saturating_sub(1);
        s.failed += 1;
        if c.retried {
            s.retried_ok = s.retried_ok.saturating_sub(1);
        }
        let drop_from = |l: &mut Vec<f64>| {
            if let Some(i) = l.iter().position(|&x| x == c.ms) {
                l.swap_remove(i);
            }
        };
        drop_from(&mut s.latencies);
        if let Some(waited) = c.listed {
            drop_from(&mut during_sign_in.list(waited).lock().expect("lat"));
        }
    }
}

/// An opened results page (a school's results, or an LA's list of schools), not the
/// countdown: judged by its start, which is all a compressed body's check inflates.
fn results_page(b: &[u8]) -> bool {
    b.starts_with(b"<!DOCTYPE html>") && !b.windows(17).any(|x| x == b"not available yet")
}

/// Send one step's request, retrying 429 and 503 after their Retry-After; record the outcome.
async fn step(
    user: &mut GooseUser,
    name: &'static str,
    method: GooseMethod,
    path: &str,
    json: Option<&serde_json::Value>,
    check: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Result<bool, Box<TransactionError>> {
    let mut check = Some(check);
    let w = world();
    let mut retried = false;
    for _ in 0..TRIES {
        let during_sign_in = w.signing_in.load(Ordering::Relaxed) > 0;
        let url = format!("{}{path}", user.base_url.as_str().trim_end_matches('/'));
        let builder = match (&method, json) {
            (GooseMethod::Post, Some(j)) => user.client.post(&url).json(j),
            _ => user.client.get(&url),
        };
        let request = GooseRequest::builder()
            .method(method.clone())
            .path(path)
            .name(name)
            .set_request_builder(builder)
            .build();
        let start = Instant::now();
        let goose = user.request(request).await?;
        let Ok(resp) = goose.response else {
            record(name, 0, None, false, retried);
            return Ok(false);
        };
        let status = resp.status().as_u16();
        let wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let encoding = resp
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.unwrap_or_default();
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if status == 429 || status == 503 {
            record(name, status, None, false, retried);
            retried = true;
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
            continue;
        }
        let check = check.take().expect("checked once: the loop ends here");
        // A download while sign-ins run goes in the burst's list or the late arrivals'.
        let listed = (during_sign_in && !name.starts_with("sign-in") && !name.ends_with(" page"))
            .then(|| user.get_session_data::<Session>().is_some_and(|s| s.waited));
        let ok = match encoding {
            Some(encoding) if status == 200 => {
                // Counted as an answer now; the checker takes it back if it does not inflate
                // to what the step expects.
                let later = Compressed {
                    name,
                    encoding,
                    body: body.to_vec(),
                    ms,
                    retried,
                    listed,
                    check: Box::new(check),
                };
                let _ = w.compressed.send(Some(later));
                true
            }
            _ => status == 200 && opening(None, &body).is_some_and(|b| check(&b)),
        };
        record(name, status, Some(ms), ok, retried);
        if let Some(waited) = listed.filter(|_| ok) {
            w.during_sign_in.list(waited).lock().expect("lat").push(ms);
        }
        return Ok(ok);
    }
    // Refused every time: a failed step, counted as one.
    record(name, 0, None, false, retried);
    Ok(false)
}

/// A GET step: `step` without a body.
async fn get(
    user: &mut GooseUser,
    name: &'static str,
    path: &str,
    check: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Result<bool, Box<TransactionError>> {
    step(user, name, GooseMethod::Get, path, None, check).await
}

fn record(name: &'static str, status: u16, ms: Option<f64>, ok: bool, retried: bool) {
    let mut steps = world().steps.lock().expect("steps");
    let s = steps.entry(name).or_default();
    *s.status.entry(status).or_default() += 1;
    if status == 429 || status == 503 {
        return; // not an outcome: the step goes on
    }
    if let Some(ms) = ms
        && ok
    {
        s.latencies.push(ms);
    }
    if ok {
        s.ok += 1;
    } else {
        s.failed += 1;
    }
    if retried {
        s.retried += 1;
        s.retried_ok += usize::from(ok);
    }
}

/// Before 7:30: password, then the code from the outbox.
async fn sign_in(user: &mut GooseUser) -> TransactionResult {
    let w = world();
    let account = w.accounts.lock().expect("accounts").pop();
    let Some(account) = account else {
        return Ok(());
    };
    w.signing_in.fetch_add(1, Ordering::Relaxed);
    user.set_client_builder(client()).await?;
    let email = account.email.clone();
    let before = w
        .codes
        .lock()
        .expect("codes")
        .get(&email)
        .map_or(0, |c| c.0);
    let body = serde_json::json!({ "email": email, "password": PASSWORD });
    let mut ok = step(
        user,
        "sign-in: password",
        GooseMethod::Post,
        "/api/v1/sign-in",
        Some(&body),
        |b| String::from_utf8_lossy(b).contains("\"mfa_required\":true"),
    )
    .await?;
    if ok {
        // A person waits minutes for an email; the load test waits up to two.
        let mut code = None;
        for _ in 0..4800 {
            if let Some((seq, c)) = w.codes.lock().expect("codes").get(&email)
                && *seq > before
            {
                code = Some(c.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ok = match code {
            Some(code) => {
                let body = serde_json::json!({ "code": code });
                step(
                    user,
                    "sign-in: code",
                    GooseMethod::Post,
                    "/api/v1/sign-in/mfa",
                    Some(&body),
                    |_| true,
                )
                .await?
            }
            None => {
                record("sign-in: code", 0, None, false, false);
                false
            }
        };
    }
    w.signing_in.fetch_sub(1, Ordering::Relaxed);
    if ok {
        user.set_session_data(Session {
            account,
            waited: false,
        });
    }
    Ok(())
}

/// At 7:30: everything the organisation came for.
async fn morning(user: &mut GooseUser) -> TransactionResult {
    let w = world();
    let Some(session) = user.get_session_data::<Session>() else {
        return Ok(()); // sign-in failed: counted there
    };
    let account = session.account.clone();
    let waited = Instant::now() < w.opens;
    user.set_session_data(Session {
        account: account.clone(),
        waited,
    });
    // Waiting as a person's browser does: signed in, they open the results and find the
    // countdown page, which reloads itself after the seconds its refresh says (at least every
    // minute, results_pages::COUNTDOWN_RELOAD_SECS, and last at 7:30). The refresh is whole
    // seconds from when the page arrived, so browsers whose pages came at different moments
    // within a second reach 7:30 spread over that second, as real ones do.
    loop {
        let now = Instant::now();
        if now >= w.opens {
            break;
        }
        if now + Duration::from_secs(1) > w.opens {
            // Signed in within the last second: the page they open is the results.
            tokio::time::sleep_until(tokio::time::Instant::from_std(w.opens)).await;
            break;
        }
        let refresh = Arc::new(AtomicU64::new(0));
        let seen = refresh.clone();
        // The results countdown, or for a KS3 school the lookup page's ("not open yet").
        get(user, "countdown page", "/results", move |b| {
            seen.store(refresh_secs(b).unwrap_or(0), Ordering::Relaxed);
            b.windows(17)
                .any(|x| x == b"not available yet" || x.starts_with(b"not open yet"))
        })
        .await?;
        let wait = match refresh.load(Ordering::Relaxed) {
            secs if secs > 0 && !w.same_instant => Duration::from_secs(secs),
            _ => w
                .opens
                .saturating_duration_since(Instant::now())
                .min(COUNTDOWN_RELOAD),
        };
        tokio::time::sleep(wait).await;
    }
    let csv = |b: &[u8]| b.starts_with(b"upn,") || b.starts_with(b"\xef\xbb\xbfupn,");
    match &account.org {
        Org::Ks2(l) => {
            get(
                user,
                "school CSV",
                &format!("/api/v1/results/school/{l}.csv"),
                |b| !b.is_empty(),
            )
            .await?;
            get(
                user,
                "school CTF",
                &format!("/api/v1/results/school/{l}.ctf"),
                |b| b.starts_with(b"<?xml"),
            )
            .await?;
            get(user, "results page", "/results", results_page).await?;
        }
        Org::La(c) => {
            get(
                user,
                "LA combined CSV",
                &format!("/api/v1/results/la/{c}.csv"),
                |b| !b.is_empty(),
            )
            .await?;
            get(user, "results page", "/results", results_page).await?;
        }
        Org::Trust(u) => {
            get(
                user,
                "trust combined CSV",
                &format!("/api/v1/results/trust/{u}.csv"),
                |b| !b.is_empty(),
            )
            .await?;
        }
        Org::Ks3(_) => {
            use rand::seq::IndexedRandom;
            let asked: Vec<serde_json::Value> = w
                .pupils
                .choose_multiple(&mut rand::rng(), w.ks3_pupils)
                .map(|(upn, surname, dob)| serde_json::json!({ "upn": upn, "surname": surname, "dob": dob }))
                .collect();
            let want = asked.len();
            let body = serde_json::Value::Array(asked);
            step(
                user,
                "KS3 lookup",
                GooseMethod::Post,
                "/api/v1/results/ks3/lookup",
                Some(&body),
                move |b| {
                    // Real pupils asked about with their own details: at most a row each
                    // (pupils without published results have none).
                    let lines = b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
                    let rows = lines.saturating_sub(1);
                    w.ks3_matched.fetch_add(rows, Ordering::Relaxed);
                    w.ks3_asked.fetch_add(want, Ordering::Relaxed);
                    csv(b) && rows > 0 && rows <= want
                },
            )
            .await?;
        }
    }
    let done = w.opens.elapsed();
    let mut last = w.last_done.lock().expect("last");
    *last = (*last).max(done);
    if waited {
        let mut last = w.last_waiting_done.lock().expect("last");
        *last = (*last).max(done);
    }
    Ok(())
}

/// The seconds a page's `<meta http-equiv="refresh" content="N">` asks the browser to wait.
fn refresh_secs(page: &[u8]) -> Option<u64> {
    const META: &[u8] = b"http-equiv=\"refresh\" content=\"";
    let at = page.windows(META.len()).position(|w| w == META)? + META.len();
    let digits = page[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&page[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Print and save the report; returns how many steps finally failed.
fn summarise(
    world: &World,
    metrics: &GooseMetrics,
    elapsed: Duration,
    users: usize,
    work: &Path,
) -> anyhow::Result<usize> {
    use std::fmt::Write;
    let mut out = String::new();
    let steps = world.steps.lock().expect("steps");
    let requests: usize = metrics
        .requests
        .values()
        .map(|r| r.success_count + r.fail_count)
        .sum();
    let (mut ok, mut failed, mut retried, mut retried_ok, mut s429, mut s503) = (0, 0, 0, 0, 0, 0);
    writeln!(
        out,
        "{:<22} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9}",
        "step", "ok", "failed", "429s", "503s", "p50 ms", "p95 ms", "p99 ms"
    )?;
    let mut names: Vec<_> = steps.keys().copied().collect();
    names.sort();
    for name in names {
        let s = &steps[name];
        let mut l = s.latencies.clone();
        l.sort_by(f64::total_cmp);
        let c429 = s.status.get(&429).copied().unwrap_or(0);
        let c503 = s.status.get(&503).copied().unwrap_or(0);
        writeln!(
            out,
            "{name:<22} {:>7} {:>7} {c429:>6} {c503:>6} {:>9.1} {:>9.1} {:>9.1}",
            s.ok,
            s.failed,
            percentile(&l, 50.0),
            percentile(&l, 95.0),
            percentile(&l, 99.0)
        )?;
        ok += s.ok;
        failed += s.failed;
        retried += s.retried;
        retried_ok += s.retried_ok;
        s429 += c429;
        s503 += c503;
    }
    let sorted = |m: &Mutex<Vec<f64>>| {
        let mut v = m.lock().expect("lat").clone();
        v.sort_by(f64::total_cmp);
        v
    };
    let burst = sorted(&world.during_sign_in.burst);
    let late = sorted(&world.during_sign_in.late);
    let mut during: Vec<f64> = burst.iter().chain(&late).copied().collect();
    during.sort_by(f64::total_cmp);
    writeln!(out)?;
    writeln!(
        out,
        "organisations: {users}; steps: {ok} ok, {failed} failed; success rate {:.3}%",
        100.0 * ok as f64 / (ok + failed).max(1) as f64
    )?;
    writeln!(
        out,
        "requests: {requests} in {:.1} s ({:.1}/s overall); 429: {s429}, 503: {s503}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "retried steps: {retried}, of which finally succeeded: {retried_ok} ({})",
        if retried == retried_ok {
            "all"
        } else {
            "NOT all"
        }
    )?;
    writeln!(
        out,
        "waiting browsers reloaded at 7:30 {}",
        if world.same_instant {
            "all in the same instant (--same-instant)"
        } else {
            "when their countdown pages' refresh said (whole seconds from each page's arrival)"
        }
    )?;
    writeln!(
        out,
        "downloads while sign-ins were running: {} requests, p99 {:.1} ms (target < 50 ms)",
        during.len(),
        percentile(&during, 99.0)
    )?;
    writeln!(
        out,
        "  at the 7:30 burst, by organisations that had waited: {}, p99 {:.1} ms",
        burst.len(),
        percentile(&burst, 99.0)
    )?;
    writeln!(
        out,
        "  by organisations that signed in after 7:30: {}, p99 {:.1} ms",
        late.len(),
        percentile(&late, 99.0)
    )?;
    let waiting_done = *world.last_waiting_done.lock().expect("last");
    writeln!(
        out,
        "organisations signed in by 7:30 had all their files {:.1} s after 7:30 (national target: 120 s)",
        waiting_done.as_secs_f64()
    )?;
    // How the cores were shared in that time (when anyone waited): the burst's latencies
    // include the time the server waited while the load generator, on the same cores, ran.
    let cpu = (!waiting_done.is_zero())
        .then(|| world.cpu.between(world.opens, world.opens + waiting_done))
        .flatten();
    if let Some(cpu) = cpu {
        let secs = waiting_done.as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let room = cores as f64 * secs;
        writeln!(
            out,
            "  in those {secs:.1} s ({:.1} CPU-s on {cores} cores) the server used {:.1} CPU-s ({:.0}%), \
             the load generator {:.1} ({:.0}%); the burst's {} downloads came at {:.0}/s",
            room,
            cpu.server,
            100.0 * cpu.server / room,
            cpu.load_generator,
            100.0 * cpu.load_generator / room,
            burst.len(),
            burst.len() as f64 / secs
        )?;
    }
    writeln!(
        out,
        "the last organisation (the last sign-ins arrive after 7:30) had all its files {:.1} s after 7:30",
        world.last_done.lock().expect("last").as_secs_f64()
    )?;
    writeln!(
        out,
        "goose report: {}",
        work.join("goose-report.html").display()
    )?;
    print!("{out}");
    std::fs::write(work.join("summary.txt"), &out)?;
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_command_name() {
        // Fields 14 and 15 are 1234 and 56; the name holds a space and a parenthesis.
        let stat = "4242 (nca (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis at all"), None);
        // This process's own line parses, and its CPU time does not go backwards.
        let read = || cpu_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        let before = read();
        assert!(read() >= before);
    }

    #[test]
    fn cpu_between_two_instants_uses_the_samples_nearest_before_each() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let cpu = CpuSamples::default();
        for (ms, load_generator, server) in [(0, 1.0, 10.0), (50, 1.5, 10.1), (100, 2.0, 10.9)] {
            let times = CpuTimes {
                load_generator,
                server,
            };
            cpu.0.lock().unwrap().push((at(ms), times));
        }
        let d = cpu.between(at(60), at(120)).unwrap();
        assert!((d.load_generator - 0.5).abs() < 1e-9, "{d:?}");
        assert!((d.server - 0.8).abs() < 1e-9, "{d:?}");
        assert_eq!(cpu.between(at(0), at(0)), Some(CpuTimes::default()));
        // Nothing sampled before the start: no figure rather than a wrong one.
        assert_eq!(cpu.between(t0 - Duration::from_millis(1), at(100)), None);
    }

    #[test]
    fn checks_see_the_start_of_a_compressed_body_inflated() {
        let csv: Vec<u8> = std::iter::once("upn,surname\n".to_string())
            .chain((0..2000).map(|i| format!("A{i:012},Smith\n")))
            .collect::<String>()
            .into_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&csv).unwrap();
        let gz = gz.finish().unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&csv)
            .unwrap();
        for (encoding, body) in [(None, &csv), (Some("gzip"), &gz), (Some("br"), &br)] {
            let start = opening(encoding, body).unwrap();
            assert!(
                start.starts_with(b"upn,surname\nA000000000000,"),
                "{encoding:?}"
            );
            let want = if encoding.is_none() {
                csv.len()
            } else {
                CHECKED_PREFIX as usize
            };
            assert_eq!(start.len(), want, "{encoding:?}");
        }
        // A body that is not what its encoding says fails the check, as does an unknown one.
        assert!(opening(Some("gzip"), &csv).is_none());
        assert!(opening(Some("br"), b"not brotli at all").is_none());
        assert!(opening(Some("zstd"), &csv).is_none());
    }

    #[test]
    fn the_countdown_is_reloaded_when_its_page_says() {
        let page = br#"<head><meta http-equiv="refresh" content="37"><title>x</title>"#;
        assert_eq!(refresh_secs(page), Some(37));
        assert_eq!(refresh_secs(b"<head><title>no refresh</title>"), None);
        assert_eq!(
            refresh_secs(br#"<meta http-equiv="refresh" content="">"#),
            None
        );
    }

    #[test]
    fn an_opened_results_page_is_told_from_the_countdown_by_its_start() {
        let opened = format!(
            "<!DOCTYPE html>\n<html><h1>KS2 test results</h1>{}",
            "<tr></tr>".repeat(5_000)
        );
        let countdown = "<!DOCTYPE html>\n<html><p>Results are not available yet.</p>";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(opened.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert!(results_page(opened.as_bytes()));
        assert!(results_page(&opening(Some("gzip"), &gz).unwrap()));
        assert!(!results_page(countdown.as_bytes()));
        assert!(!results_page(b"upn,surname\n"));
        assert!(!results_page(b""));
    }

    #[test]
    fn a_compressed_answer_that_fails_its_check_later_turns_its_step_to_failed() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"upn,surname\n").unwrap();
        let gz = gz.finish().unwrap();
        let steps = Mutex::new(HashMap::new());
        for ms in [1.0, 2.0, 3.0] {
            let mut s = steps.lock().unwrap();
            let s: &mut Step = s.entry("school CSV").or_default();
            s.ok += 1;
            s.latencies.push(ms);
            if ms == 2.0 {
                s.retried += 1;
                s.retried_ok += 1;
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let csv = |b: &[u8]| b.starts_with(b"upn,");
        let answers: [(&str, &[u8], f64); 3] = [
            ("gzip", &gz, 1.0),                  // inflates to a CSV: stays ok
            ("gzip", b"upn, but not gzip", 2.0), // does not inflate
            ("br", &gz, 3.0),                    // not what its encoding says
        ];
        for (encoding, body, ms) in answers {
            let c = Compressed {
                name: "school CSV",
                encoding: encoding.into(),
                body: body.to_vec(),
                ms,
                retried: ms == 2.0,
                // The first two were downloads in the 7:30 burst, while sign-ins ran.
                listed: (ms < 3.0).then_some(true),
                check: Box::new(csv),
            };
            tx.send(Some(c)).unwrap();
        }
        tx.send(None).unwrap();
        let during = DuringSignIn::default();
        during.burst.lock().unwrap().extend([1.0, 2.0]);
        during.late.lock().unwrap().push(3.0); // another step's, with the same latency
        check_compressed(&steps, &during, &rx);
        let steps = steps.lock().unwrap();
        let s = &steps["school CSV"];
        assert_eq!((s.ok, s.failed), (1, 2));
        assert_eq!(
            (s.retried, s.retried_ok),
            (1, 0),
            "a retried step whose answer fails its check did not finally succeed"
        );
        assert_eq!(
            s.latencies,
            vec![1.0],
            "only the answer that passed keeps its latency"
        );
        assert_eq!(
            *during.burst.lock().unwrap(),
            vec![1.0],
            "nor in the burst's list"
        );
        assert_eq!(
            *during.late.lock().unwrap(),
            vec![3.0],
            "a list it was not in keeps its own"
        );
    }
}
