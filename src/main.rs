//! `nca-portal`: the server binary. Thin: parses arguments, loads settings and wires the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use nca_portal::accounts::{self, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, db, http, orgs};

#[derive(Parser)]
#[command(
    name = "nca-portal",
    version,
    about = "KS2 results-release service and portal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Folder for the database, outbox, local object store and generated certificate.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Folder holding base.toml and <env>.toml.
    #[arg(long, global = true, default_value = "config")]
    config_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the portal over HTTPS.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Object store of releases (overrides store.url).
        #[arg(long)]
        store: Option<String>,
    },
    /// Organisations.
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Reviews of marking.
    Reviews {
        #[command(subcommand)]
        command: ReviewsCommand,
    },
    /// The activities of the cycle (My Activity): census import and export to the pipeline.
    Activities {
        #[command(subcommand)]
        command: ActivitiesCommand,
    },
    /// The main job on embedded defaults: a synthetic cohort, a release, demo accounts, serve.
    Demo {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 200)]
        schools: usize,
        #[arg(long)]
        listen: Option<String>,
    },
}

#[derive(Subcommand)]
enum ActivitiesCommand {
    /// Pre-fill pupil registration from a census export: a CSV of the data contract's `pupils`
    /// columns (statuses may be empty for "registered"). Every row is checked first; any
    /// problem and nothing is written. Pupils schools already have are kept as they are.
    Census {
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write what schools registered, recorded and submitted as the data contract's
    /// pupils.csv, attendance.csv and ta.csv, for `nca-pipeline validate` and `publish`.
    Export {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Check a cycle file and list its activities (the server refuses a bad one at start).
    Check {
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum ReviewsCommand {
    /// Write every mark changed by a decided review as CSV (upn,paper,item,mark), for
    /// `nca-pipeline correct` and a late-results publish.
    Corrections {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum OrgsCommand {
    /// Load schools, LAs and trusts from an intake's `schools` and `las` files (re-runnable).
    Import {
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user and print the invitation link (or set a password for scripted set-up).
    Add {
        #[arg(long)]
        email: String,
        /// LAESTAB, LA code, trust UID or `operator`.
        #[arg(long)]
        org: String,
        /// Role names, e.g. account-manager, general-user, la-account-manager, mat-user.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Set this password instead of sending an invitation (demo and load tests).
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Create many users from a CSV file with the header `email,org,role,password` (role may
    /// list several separated by `;`; an empty password sends an invitation). Every row is
    /// checked before any account is created.
    Import {
        file: std::path::PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// List an organisation's users.
    List {
        #[arg(long)]
        org: String,
        #[command(flatten)]
        common: Common,
    },
}

/// One row of a `users import` file.
struct UserRow {
    row: usize,
    email: String,
    org: String,
    roles: RoleSet,
    password: Option<String>,
}

/// Read and check a whole `users import` file: errors name the file, row and column.
fn read_user_rows(file: &std::path::Path) -> anyhow::Result<Vec<UserRow>> {
    let mut reader =
        csv::Reader::from_path(file).with_context(|| format!("opening {}", file.display()))?;
    let headers = reader.headers()?.clone();
    let want = ["email", "org", "role", "password"];
    anyhow::ensure!(
        headers.iter().collect::<Vec<_>>() == want,
        "{}: the header must be {}",
        file.display(),
        want.join(",")
    );
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let row = i + 2;
        let rec = rec.with_context(|| format!("{}, row {row}", file.display()))?;
        let at = |col: &str| format!("{}, row {row}, column {col}", file.display());
        let email = rec[0].trim().to_string();
        anyhow::ensure!(email.contains('@'), "{}: not an email address", at("email"));
        let org = rec[1].trim().to_string();
        anyhow::ensure!(!org.is_empty(), "{}: missing", at("org"));
        anyhow::ensure!(
            seen.insert((email.to_lowercase(), org.clone())),
            "{}: {email} in {org} appears twice",
            at("email")
        );
        let mut roles = RoleSet::default();
        for r in rec[2].split(';').map(str::trim).filter(|r| !r.is_empty()) {
            roles.insert(
                Role::parse(r).with_context(|| format!("{}: unknown role {r:?}", at("role")))?,
            );
        }
        anyhow::ensure!(!roles.is_empty(), "{}: missing", at("role"));
        let password = Some(rec[3].to_string()).filter(|p| !p.is_empty());
        rows.push(UserRow {
            row,
            email,
            org,
            roles,
            password,
        });
    }
    Ok(rows)
}

fn settings(
    common: &Common,
    listen: Option<String>,
    store: Option<String>,
) -> anyhow::Result<Settings> {
    Ok(Settings::load(
        &common.config_dir,
        &Overrides {
            data_dir: common.data_dir.clone(),
            listen,
            store,
        },
    )?)
}

fn init_logs(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// mimalloc: the hot path allocates small, short-lived buffers on every request, where glibc
/// malloc spends measurably more (perf: ~8% of a download in malloc/free).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Errors are for the operator: the message and its causes, without a backtrace.
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    http::install_crypto_provider();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting runtime")?;
    match cli.command {
        Command::Serve {
            common,
            listen,
            store,
        } => {
            let s = settings(&common, listen, store)?;
            init_logs(s.server.json_logs);
            rt.block_on(serve(s, None))
        }
        Command::Orgs {
            command: OrgsCommand::Import { dir, common },
        } => {
            let s = settings(&common, None, None)?;
            rt.block_on(async {
                let db = db::connect(&s.database_url(), s.database.max_connections).await?;
                let now = Clock::System.now();
                let (added, updated) = orgs::import(&db, &dir, now).await?;
                db::audit(
                    &db,
                    db::Audit {
                        actor: Some("cli"),
                        action: "orgs-imported",
                        detail: format!(
                            "{} added, {} updated from {}",
                            added,
                            updated,
                            dir.display()
                        ),
                        ..Default::default()
                    },
                    now,
                )
                .await?;
                println!("{added} organisations added, {updated} updated");
                Ok(())
            })
        }
        Command::Users { command } => rt.block_on(users(command)),
        Command::Reviews {
            command: ReviewsCommand::Corrections { out, common },
        } => {
            let s = settings(&common, None, None)?;
            rt.block_on(async {
                let db = db::connect(&s.database_url(), s.database.max_connections).await?;
                let rows = nca_portal::reviews::corrections(&db).await?;
                let mut w = csv::Writer::from_path(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                w.write_record(["upn", "paper", "item", "mark"])?;
                for (upn, paper, item, mark) in &rows {
                    w.write_record([upn, paper, item, &mark.to_string()])?;
                }
                w.flush()?;
                println!(
                    "{} corrected marks written to {}",
                    rows.len(),
                    out.display()
                );
                Ok(())
            })
        }
        Command::Activities { command } => rt.block_on(activities(command)),
        Command::Demo {
            common,
            schools,
            listen,
        } => {
            let s = settings(&common, listen, None)?;
            init_logs(s.server.json_logs);
            rt.block_on(demo(s, schools))
        }
    }
}

async fn activities(command: ActivitiesCommand) -> anyhow::Result<()> {
    use nca_portal::activities::{cycle, export};
    match command {
        ActivitiesCommand::Census { file, common } => {
            let s = settings(&common, None, None)?;
            let c = cycle::load(&s.activities, &s.timezone())?;
            let db = db::connect(&s.database_url(), s.database.max_connections).await?;
            let now = jiff::Timestamp::now().as_second();
            match export::census(&db, c.year, &file, now).await? {
                Ok(n) => {
                    db::audit(
                        &db,
                        db::Audit {
                            actor: Some("cli"),
                            action: "census-imported",
                            target: Some(&file.display().to_string()),
                            detail: format!("{n} pupils added"),
                            ..Default::default()
                        },
                        now,
                    )
                    .await?;
                    println!(
                        "{n} pupils added to pupil registration for the {} cycle",
                        c.year
                    );
                    Ok(())
                }
                Err(problems) => {
                    for p in problems.iter().take(200) {
                        eprintln!("{p}");
                    }
                    anyhow::bail!(
                        "{} problems in {}: nothing was imported",
                        problems.len(),
                        file.display()
                    )
                }
            }
        }
        ActivitiesCommand::Export { out, common } => {
            let s = settings(&common, None, None)?;
            let c = cycle::load(&s.activities, &s.timezone())?;
            let db = db::connect(&s.database_url(), s.database.max_connections).await?;
            let [p, a, t] = export::write_all(&db, c.year, &out).await?;
            db::audit(
                &db,
                db::Audit {
                    actor: Some("cli"),
                    action: "activities-exported",
                    target: Some(&out.display().to_string()),
                    detail: format!("{p} pupils, {a} attendance, {t} ta"),
                    ..Default::default()
                },
                jiff::Timestamp::now().as_second(),
            )
            .await?;
            println!(
                "{}: pupils.csv ({p} pupils), attendance.csv ({a} rows), ta.csv ({t} pupils)",
                out.display()
            );
            Ok(())
        }
        ActivitiesCommand::Check { file, common } => {
            let s = settings(&common, None, None)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let c = cycle::parse(
                &file.display().to_string(),
                &text,
                &s.timezone(),
                s.activities.shift_days,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}: the {} cycle, {} activities",
                file.display(),
                c.year,
                c.activities.len()
            );
            for a in &c.activities {
                println!("  {} ({} audiences)", a.id, a.audiences.len());
            }
            Ok(())
        }
    }
}

async fn users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            email,
            org,
            roles,
            name,
            password,
            common,
        } => {
            let s = settings(&common, None, None)?;
            let state = AppState::open(s, Clock::System).await?;
            let mut set = RoleSet::default();
            for r in &roles {
                set.insert(Role::parse(r).with_context(|| {
                    let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                    format!("unknown role {r:?}: expected one of {}", names.join(", "))
                })?);
            }
            let name = if name.is_empty() {
                email.split('@').next().unwrap_or("").to_string()
            } else {
                name
            };
            let created = accounts::create_user(
                &state,
                &Actor::cli(),
                &org,
                &name,
                &email,
                set,
                password.as_deref(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            match (created.invitation, created.added_to_existing) {
                (Some(link), _) => {
                    println!("user {email} created; invitation link (also emailed):\n{link}")
                }
                (None, true) => println!("existing account {email} given roles in {org}"),
                (None, false) => println!("user {email} created with the given password"),
            }
            Ok(())
        }
        UsersCommand::Import { file, common } => {
            let rows = read_user_rows(&file)?;
            let mut s = settings(&common, None, None)?;
            // An import serves no requests, so unless told otherwise it hashes on every core.
            if s.auth.hash_threads == 0 {
                s.auth.hash_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            }
            let state = AppState::open(s, Clock::System).await?;
            let concurrency = state.settings.hash_threads().max(1);
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(rows.iter())
                .map(|r| {
                    let (state, file) = (&state, &file);
                    async move {
                        let name = r.email.split('@').next().unwrap_or("").to_string();
                        accounts::create_user(
                            state,
                            &Actor::cli(),
                            &r.org,
                            &name,
                            &r.email,
                            r.roles,
                            r.password.as_deref(),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            anyhow::anyhow!("{}, row {} ({}): {e}", file.display(), r.row, r.email)
                        })
                    }
                })
                .buffered(concurrency)
                .collect()
                .await;
            let failed: Vec<String> = results
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            println!("{} users imported", rows.len() - failed.len());
            anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
            Ok(())
        }
        UsersCommand::List { org, common } => {
            let s = settings(&common, None, None)?;
            let db = db::connect(&s.database_url(), s.database.max_connections).await?;
            anyhow::ensure!(
                db::org(&db, &org).await?.is_some(),
                "organisation {org} does not exist"
            );
            for m in db::members(&db, &org).await? {
                let roles: Vec<&str> = m.roles.iter().map(|r| r.name()).collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    m.email,
                    m.name,
                    roles.join(","),
                    if m.active { "active" } else { "invited" }
                );
            }
            Ok(())
        }
    }
}

async fn serve(s: Settings, banner: Option<String>) -> anyhow::Result<()> {
    let tls = if s.server.tls {
        Some(http::tls_config(
            &s.server.tls_cert,
            &s.server.tls_key,
            &s.data.dir,
        )?)
    } else {
        tracing::warn!("serving plain HTTP: only behind a TLS-terminating load balancer");
        None
    };
    let mut limits = http::Limits::from_settings(&s);
    // Every connection is a file descriptor: raise the soft open-file limit as far as the
    // hard one allows, and keep max_connections under it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(open_files) => {
            if let Some(asked) = limits.fit_open_files(open_files) {
                tracing::warn!(
                    asked,
                    max_connections = limits.max_connections,
                    open_files,
                    "server.max_connections lowered to fit the open-file limit; raise the \
                     hard limit (ulimit -Hn, systemd LimitNOFILE) to allow more"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let listen = s.listen();
    let admin = s.admin_listen();
    let io_threads = s.io_threads();
    let state = AppState::open(s, Clock::System).await?;
    nca_portal::auth::spawn_revocation_refresh(state.clone());
    nca_portal::results::spawn_watch(state.clone());
    nca_portal::queue::spawn_admitter(state.clone());
    http::spawn_metrics_upkeep(http::metrics_handle());
    if let Some(addr) = admin {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin {addr}"))?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        tokio::spawn(async move {
            if let Err(e) = http::serve_admin(l).await {
                tracing::error!(error = %e, "admin listener");
            }
        });
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    };
    let app = nca_portal::app(state);
    let threads = io_threads;
    if listen.port() == 0 || threads <= 1 {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(listen = %listener.local_addr()?, "serving");
        if let Some(b) = banner {
            println!("{b}");
        }
        return http::serve_tls(listener, tls, app, limits, shutdown).await;
    }
    // Bind (and so report a taken port) before saying we serve.
    let serving = http::serve_threads(listen, threads, tls, app, limits, shutdown)?;
    tracing::info!(%listen, threads, "serving");
    if let Some(b) = banner {
        println!("{b}");
    }
    serving.await
}

/// Demo accounts, all with this password (local use only).
const DEMO_PASSWORD: &str = "Demo-Portal-2025!";

/// A school whose pupils have script pages in the intake, so the demo head sees scripts.
fn school_with_scripts(intake: &std::path::Path) -> Option<String> {
    let mut scripts = csv::Reader::from_path(intake.join("scripts.csv")).ok()?;
    let upn = scripts.records().next()?.ok()?.get(0)?.to_string();
    let mut pupils = csv::Reader::from_path(intake.join("pupils.csv")).ok()?;
    let at = pupils.headers().ok()?.iter().position(|h| h == "laestab")?;
    pupils
        .records()
        .flatten()
        .find(|r| r.get(0) == Some(upn.as_str()))
        .and_then(|r| r.get(at).map(String::from))
}

async fn demo(mut s: Settings, schools: usize) -> anyhow::Result<()> {
    if s.activities.cycle.trim().is_empty() && s.activities.shift_days == 0 {
        // The 2025 calendar, moved so that today is Tuesday 20 May 2025: the attendance
        // register, the headteacher's declaration and TA are open to try.
        let today = jiff::Zoned::now().with_time_zone(s.timezone()).date();
        let may20 = jiff::civil::date(2025, 5, 20);
        s.activities.shift_days = i64::from((today - may20).get_days());
    }
    let data = s.data.dir.clone();
    let intake = data.join("intake");
    println!(
        "generating a synthetic cohort of {schools} primary schools in {}",
        intake.display()
    );
    let g = nca_pipeline::generate::generate(&nca_pipeline::generate::GenOptions {
        out: intake.clone(),
        schools,
        seed: 1,
        year: 2025,
        script_pupils: 4,
        progress: false,
    })?;
    println!(
        "  {} pupils, {} mark rows, {} script pages",
        g.pupils, g.mark_rows, g.script_pages
    );
    let store = nca_pipeline::store::Store::open(&s.store_url())?;
    let now = time::OffsetDateTime::now_utc();
    let opts = nca_pipeline::publish::PublishOptions {
        dir: intake.clone(),
        year: None,
        opens_at: now,
        ks3_opens_at: now,
        progress: false,
        concurrency: 32,
    };
    let rep = std::sync::Arc::new(nca_pipeline::report::Reporter::in_memory());
    let p = nca_pipeline::publish::publish(&store, &opts, rep.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", rep.problems().first()))?;
    println!(
        "published release {} ({} objects) to {}",
        p.id,
        p.objects,
        store.url()
    );
    let state = AppState::open(s.clone(), Clock::System).await?;
    let (added, updated) = orgs::import(&state.db, &intake, Clock::System.now()).await?;
    println!("organisations: {added} added, {updated} updated");
    // The census export pre-fills pupil registration with the cohort's pupils (the generator's
    // deliberate rule cases include names like "Lost Maths2", which registration refuses, so
    // those rows are left out here).
    let cycle = &state.cycle;
    let bytes = std::fs::read(intake.join("pupils.csv"))?;
    let (rows, problems) =
        nca_portal::activities::registration::parse_csv(cycle.year, &bytes, None);
    let census = data.join("census.csv");
    {
        let mut w = csv::Writer::from_path(&census)?;
        w.write_record([
            "upn",
            "laestab",
            "surname",
            "forename",
            "dob",
            "gender",
            "reading_reg",
            "gps_reg",
            "maths_reg",
        ])?;
        for (_, laestab, p) in &rows {
            w.write_record([
                &p.upn,
                laestab,
                &p.surname,
                &p.forename,
                &p.dob,
                &p.gender,
                &p.reg[0],
                &p.reg[1],
                &p.reg[2],
            ])?;
        }
        w.flush()?;
    }
    match nca_portal::activities::export::census(
        &state.db,
        cycle.year,
        &census,
        Clock::System.now(),
    )
    .await?
    {
        Ok(n) => println!(
            "pupil registration: {n} pupils from the census ({} rows left out: {})",
            problems.len(),
            problems.first().map_or(String::new(), |p| p.3.clone())
        ),
        Err(p) => println!(
            "pupil registration not pre-filled: {} problems, first: {}",
            p.len(),
            p[0]
        ),
    }
    println!(
        "activities: the {} cycle, dates moved by {} days so that today is 20 May {} (My Activity)",
        cycle.year, s.activities.shift_days, cycle.year
    );
    let schools_file = orgs::read(&intake).map_err(|p| anyhow::anyhow!("{} problems", p.len()))?;
    let first = |kind: nca_portal::auth::roles::OrgKind| {
        schools_file
            .iter()
            .find(|o| o.kind == kind)
            .map(|o| o.id.clone())
    };
    use nca_portal::auth::roles::OrgKind;
    let demo_users = [
        (
            "head@demo.school",
            school_with_scripts(&intake).or_else(|| first(OrgKind::Ks2School)),
            vec![
                Role::AccountManager,
                Role::GeneralUser,
                Role::AccessArrangements,
            ],
        ),
        (
            "la@demo.gov.uk",
            first(OrgKind::La),
            vec![Role::LaAccountManager, Role::LaSeniorManager],
        ),
        ("mat@demo.trust", first(OrgKind::Mat), vec![Role::MatUser]),
        (
            "ks3@demo.school",
            first(OrgKind::Ks3School),
            vec![Role::Ks3User],
        ),
        (
            "operator@demo.sta",
            Some("operator".to_string()),
            vec![Role::Operator],
        ),
    ];
    let mut lines = Vec::new();
    for (email, org, roles) in demo_users {
        let Some(org) = org else { continue };
        if db::user_by_email(&state.db, email).await?.is_none() {
            accounts::create_user(
                &state,
                &Actor::cli(),
                &org,
                email,
                email,
                RoleSet::of(&roles),
                Some(DEMO_PASSWORD),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        lines.push(format!("  {email:<20} at {org}"));
    }
    drop(state);
    let banner = format!(
        "\nNCA Portal is running at {url}/ (self-signed certificate: accept the browser's warning)\n\
         Sign in with one of these demo accounts, password {DEMO_PASSWORD}\n{}\n\
         The daily email code is written to {outbox}/ as an .eml file.\nPress Ctrl-C to stop.",
        lines.join("\n"),
        url = s.public_url(),
        outbox = s.outbox().display()
    );
    serve(s, Some(banner)).await
}
