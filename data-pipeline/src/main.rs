//! `nca-pipeline`: generate, validate, publish, export, list and roll back releases.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nca_pipeline::publish::{self, PublishError, PublishOptions, Target};
use nca_pipeline::report::Reporter;
use nca_pipeline::store::Store;
use time::OffsetDateTime;

#[derive(Parser)]
#[command(
    name = "nca-pipeline",
    version,
    about = "KS2 release pipeline: from a test cycle's intake to a published release"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a complete synthetic intake, deterministic for a seed.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// KS2 (primary) schools; secondaries, LAs and trusts follow in national proportion.
        #[arg(long, default_value_t = 200)]
        schools: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The test cycle's year.
        #[arg(long, default_value_t = 2025)]
        year: i32,
        /// Pupils whose scripts get page images.
        #[arg(long, default_value_t = 8)]
        script_pupils: usize,
    },
    /// Check every file of an intake against the data contract; exit 0 only when clean.
    Validate {
        dir: PathBuf,
        /// The cycle's year (needed when the conversion file holds several years).
        #[arg(long)]
        year: Option<i32>,
        /// Report files are written to <REPORT>.txt and <REPORT>.csv.
        #[arg(long, default_value = "validation-report")]
        report: PathBuf,
    },
    /// Validate, compute and publish an intake as a new release, then make it current.
    Publish {
        dir: PathBuf,
        /// Object store: a folder (plain path or file://) or s3://bucket/prefix.
        #[arg(long, env = "NCA_PIPELINE_STORE")]
        store: String,
        /// When KS2 schools, LAs and MATs may see results (RFC 3339, or `now`).
        #[arg(long, value_parser = parse_when)]
        opens_at: OffsetDateTime,
        /// When KS3 schools may look up incoming pupils (RFC 3339, or `now`).
        #[arg(long, value_parser = parse_when)]
        ks3_opens_at: OffsetDateTime,
        #[arg(long)]
        year: Option<i32>,
        #[arg(long, default_value = "validation-report")]
        report: PathBuf,
        /// Object writes in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Write the late-results change list (JSON) here as well as into the release.
        #[arg(long)]
        changes_out: Option<PathBuf>,
    },
    /// Print one download from the current release to stdout, byte for byte as served.
    Export {
        #[arg(long, env = "NCA_PIPELINE_STORE")]
        store: String,
        #[arg(long, group = "target")]
        laestab: Option<String>,
        #[arg(long, group = "target")]
        la: Option<String>,
        #[arg(long, group = "target")]
        trust: Option<String>,
        #[arg(long, default_value = "csv", value_parser = ["csv", "ctf"])]
        format: String,
    },
    /// List releases and show which is current.
    Releases {
        #[arg(long, env = "NCA_PIPELINE_STORE")]
        store: String,
    },
    /// Apply corrected marks (reviews of marking) to an intake, writing a new intake to
    /// publish as late results.
    Correct {
        /// The intake the current release was published from.
        dir: PathBuf,
        /// CSV `upn,paper,item,mark`, as `nca-portal reviews corrections` writes it.
        #[arg(long)]
        corrections: PathBuf,
        /// A new folder for the corrected intake.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make an earlier release current.
    Rollback {
        #[arg(long, env = "NCA_PIPELINE_STORE")]
        store: String,
        #[arg(long)]
        to: String,
    },
}

fn parse_when(s: &str) -> Result<OffsetDateTime, String> {
    if s == "now" {
        return Ok(OffsetDateTime::now_utc());
    }
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
        format!("not an RFC 3339 date-time such as 2025-07-08T07:30:00+01:00, or `now`: {e}")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_problems(rep: &Reporter) {
    let shown = rep.problems();
    let mut out = std::io::stdout().lock();
    for p in shown.iter().take(100) {
        let _ = writeln!(out, "{p}");
    }
    let total = rep.count();
    if total > 100 {
        let _ = writeln!(out, "... and {} more", total - 100);
    }
    for (file, n) in rep.counts_by_file() {
        let _ = writeln!(out, "{file}: {n} problem(s)");
    }
    if let Some((txt, csv)) = rep.paths() {
        let _ = writeln!(
            out,
            "{total} problem(s); every one is in {} and {}",
            txt.display(),
            csv.display()
        );
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let progress = std::io::stderr().is_terminal();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting runtime")
    };
    match cli.command {
        Command::Generate {
            out,
            schools,
            seed,
            year,
            script_pupils,
        } => {
            let s = nca_pipeline::generate::generate(&nca_pipeline::generate::GenOptions {
                out: out.clone(),
                schools,
                seed,
                year,
                script_pupils,
                progress,
            })?;
            println!(
                "wrote {}: {} primary and {} secondary schools, {} LAs, {} trusts, {} pupils, {} mark rows, {} script pages",
                out.display(),
                s.primaries,
                s.secondaries,
                s.las,
                s.trusts,
                s.pupils,
                s.mark_rows,
                s.script_pages
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { dir, year, report } => {
            let rep = Reporter::to_files(&report)
                .with_context(|| format!("creating report {}", report.display()))?;
            let pb = progress.then(indicatif::ProgressBar::new_spinner);
            let intake = nca_pipeline::validate::load(&dir, year, &rep, pb.as_ref());
            rep.finish().context("writing the report")?;
            print_problems(&rep);
            if rep.count() == 0 {
                println!(
                    "{}: clean ({} schools, {} pupils, {} mark rows, {} script pages, cycle {})",
                    dir.display(),
                    intake.schools.len(),
                    intake.pupils.len(),
                    intake.marks.rows,
                    intake.scripts.len(),
                    intake.year
                );
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Publish {
            dir,
            store,
            opens_at,
            ks3_opens_at,
            year,
            report,
            concurrency,
            changes_out,
        } => {
            let store = Store::open(&store)?;
            let rep = Arc::new(
                Reporter::to_files(&report)
                    .with_context(|| format!("creating report {}", report.display()))?,
            );
            let opts = PublishOptions {
                dir,
                year,
                opens_at,
                ks3_opens_at,
                progress,
                concurrency,
            };
            let res = rt()?.block_on(publish::publish(&store, &opts, rep.clone()));
            rep.finish().context("writing the report")?;
            match res {
                Ok(p) => {
                    println!(
                        "published release {} ({} objects, {} bytes) to {}",
                        p.id,
                        p.objects,
                        p.bytes,
                        store.url()
                    );
                    match &p.previous {
                        Some(prev) => println!(
                            "previous release {prev}; {} school(s) have changed results",
                            p.changes.schools.len()
                        ),
                        None => println!("first release in this store"),
                    }
                    for (k, v) in &p.counts {
                        println!("  {k}: {v}");
                    }
                    if let Some(path) = changes_out {
                        std::fs::write(&path, serde_json::to_vec_pretty(&p.changes)?)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(PublishError::Refused(n)) => {
                    print_problems(&rep);
                    eprintln!("refused: the intake has {n} problem(s); nothing was published");
                    Ok(ExitCode::FAILURE)
                }
                Err(PublishError::Failed(e)) => {
                    Err(e.context("publish failed; the previous release is still current"))
                }
            }
        }
        Command::Export {
            store,
            laestab,
            la,
            trust,
            format,
        } => {
            let store = Store::open(&store)?;
            let target = match (laestab, la, trust) {
                (Some(l), _, _) => Target::School(l),
                (_, Some(c), _) => Target::La(c),
                (_, _, Some(u)) => Target::Trust(u),
                _ => anyhow::bail!("give one of --laestab, --la or --trust"),
            };
            let bytes = rt()?.block_on(publish::export(&store, &target, format == "ctf"))?;
            std::io::stdout().lock().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Releases { store } => {
            let store = Store::open(&store)?;
            let list = rt()?.block_on(publish::releases(&store))?;
            if list.is_empty() {
                println!("no releases in {}", store.url());
            }
            for r in list {
                let mark = if r.current { "*" } else { " " };
                match r.manifest {
                    Some(m) => println!(
                        "{mark} {}  created {}  opens {}  KS3 opens {}  {} pupils, {} schools{}",
                        r.id,
                        m.created_at,
                        m.opens_at,
                        m.ks3_opens_at,
                        m.counts.get("result_rows").copied().unwrap_or(0),
                        m.counts.get("schools").copied().unwrap_or(0),
                        if r.current { "  (current)" } else { "" }
                    ),
                    None => println!(
                        "{mark} {}  incomplete (interrupted publish; never current)",
                        r.id
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Correct {
            dir,
            corrections,
            out,
        } => {
            let n = nca_pipeline::correct::correct(&dir, &corrections, &out)?;
            println!(
                "{n} marks corrected; publish {} to release them as late results",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { store, to } => {
            let store = Store::open(&store)?;
            rt()?.block_on(publish::rollback(&store, &to))?;
            println!("release {to} is now current");
            Ok(ExitCode::SUCCESS)
        }
    }
}
