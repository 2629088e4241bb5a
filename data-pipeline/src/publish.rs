//! Publishing: validate, compute every pupil's result, precompute every download, write a
//! new release folder, write its manifest, then switch the one `CURRENT` pointer.
//! Nothing outside the new release folder is written before that final pointer write, so
//! a failure or kill at any moment leaves the previous release current and intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::model::Intake;
use crate::outputs::{self, Organisations, ResultRow, Summaries, Summary};
use crate::report::{Problem, Reporter};
use crate::rules;
use crate::store::{Manifest, ObjectEntry, Store, layout};

/// What to publish and when it opens.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub dir: PathBuf,
    pub year: Option<i32>,
    pub opens_at: OffsetDateTime,
    pub ks3_opens_at: OffsetDateTime,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Object writes in flight at once.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the intake has {0} problem(s); nothing was published")]
    Refused(u64),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub previous: Option<String>,
    pub objects: usize,
    pub bytes: u64,
    pub changes: Changes,
    pub counts: BTreeMap<String, u64>,
}

/// Late results: what changed for each school since the previous release.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Changes {
    pub release: String,
    pub previous_release: Option<String>,
    /// Schools whose results changed, in laestab order.
    pub schools: Vec<SchoolChanges>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchoolChanges {
    pub laestab: String,
    pub pupils: Vec<PupilChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PupilChange {
    pub upn: String,
    pub surname: String,
    pub forename: String,
    /// `changed`, `added` or `removed`.
    pub kind: String,
    /// Changed columns with their values before and after (empty for added/removed).
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldChange {
    pub column: String,
    pub before: String,
    pub after: String,
}

fn bar(mp: &MultiProgress, len: Option<u64>, msg: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let pb = mp.add(pb);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {human_pos}/{human_len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Validate, compute and publish an intake as a new release, then make it current.
pub async fn publish(
    store: &Store,
    opts: &PublishOptions,
    rep: Arc<Reporter>,
) -> Result<Published, PublishError> {
    if opts.ks3_opens_at < opts.opens_at {
        return Err(anyhow!(
            "--ks3-opens-at ({}) is before --opens-at ({}); KS3 schools open after KS2 schools",
            opts.ks3_opens_at,
            opts.opens_at
        )
        .into());
    }
    let mp = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });

    // Stage 1: validate and load.
    let total_marks = crate::intake::find(&opts.dir, crate::intake::Table::Marks)
        .ok()
        .flatten()
        .filter(|tf| tf.format == crate::intake::Format::Parquet)
        .and_then(|tf| crate::intake::parquet_row_groups(&tf).ok())
        .map(|g| g.iter().sum());
    let pb = bar(&mp, total_marks, "validate and read marks");
    let (dir, year, rep2, pb2) = (opts.dir.clone(), opts.year, rep.clone(), pb.clone());
    let intake =
        tokio::task::spawn_blocking(move || crate::validate::load(&dir, year, &rep2, Some(&pb2)))
            .await
            .context("validation task")?;
    pb.finish();
    check_pages(store, &opts.dir, &intake, &rep).await?;
    if rep.count() > 0 {
        return Err(PublishError::Refused(rep.count()));
    }
    let intake = Arc::new(intake);

    // Stage 2: compute every pupil's result.
    let pb = bar(&mp, Some(intake.pupils.len() as u64), "compute results");
    let (i2, pb2) = (intake.clone(), pb.clone());
    let by_school = tokio::task::spawn_blocking(move || compute(&i2, Some(&pb2)))
        .await
        .context("compute task")?;
    pb.finish();
    let by_school = Arc::new(by_school);

    // Stage 3: compare with the current release (late results).
    let previous = store.current().await?;
    let id = new_release_id();
    let before = match &previous {
        Some(p) => Some(
            previous_rows(store, p)
                .await
                .with_context(|| format!("reading previous release {p}"))?,
        ),
        None => None,
    };
    let changes = diff(
        &intake,
        &by_school,
        before.as_ref(),
        &id,
        previous.as_deref(),
    );

    // Stage 4: precompute and write every object.
    let n_objects = intake.schools.len() * 7 + (intake.las.len() + intake.trusts.len()) * 3 + 7;
    let pb = bar(&mp, Some(n_objects as u64), "write release objects");
    let entries: Arc<Mutex<BTreeMap<String, ObjectEntry>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<(String, Bytes)>>(8);
    let generated = opts
        .opens_at
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting opens_at")?;
    let producer = {
        let (intake, by_school, entries, changes) = (
            intake.clone(),
            by_school.clone(),
            entries.clone(),
            changes.clone(),
        );
        tokio::task::spawn_blocking(move || {
            produce(&intake, &by_school, &changes, &generated, &entries, tx)
        })
    };
    let written = {
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
                .flat_map(futures::stream::iter)
                .map(|(rel, bytes)| {
                    let (store, id, pb) = (store.clone(), id.clone(), pb.clone());
                    async move {
                        let n = bytes.len() as u64;
                        store.put_release_object(&id, &rel, bytes).await?;
                        pb.inc(1);
                        Ok::<u64, anyhow::Error>(n)
                    }
                })
                .buffer_unordered(opts.concurrency.max(1));
        stream
            .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
            .await
    };
    // On a write error the receiver is dropped, so the producer stops at its next send.
    let produced = producer.await.context("producer task")?;
    let bytes = written?;
    produced?;
    pb.finish();

    // Stage 5: manifest, then the pointer.
    let mut counts = BTreeMap::new();
    counts.insert("schools".to_string(), intake.schools.len() as u64);
    counts.insert("las".to_string(), intake.las.len() as u64);
    counts.insert("trusts".to_string(), intake.trusts.len() as u64);
    counts.insert("pupils".to_string(), intake.pupils.len() as u64);
    counts.insert(
        "result_rows".to_string(),
        by_school.iter().map(|s| s.len() as u64).sum(),
    );
    counts.insert("mark_rows".to_string(), intake.marks.rows);
    counts.insert("script_pages".to_string(), intake.scripts.len() as u64);
    counts.insert("schools_changed".to_string(), changes.schools.len() as u64);
    let objects = std::mem::take(&mut *entries.lock().expect("entries poisoned"));
    let n = objects.len();
    let manifest = Manifest {
        format: 1,
        id: id.clone(),
        created_at: OffsetDateTime::now_utc(),
        cycle_year: intake.year,
        opens_at: opts.opens_at,
        ks3_opens_at: opts.ks3_opens_at,
        previous: previous.clone(),
        counts: counts.clone(),
        objects,
    };
    let mbytes = serde_json::to_vec(&manifest).context("serialising manifest")?;
    store
        .put_release_object(&id, layout::MANIFEST, mbytes.into())
        .await?;
    store.set_current(&id).await?;
    Ok(Published {
        id,
        previous,
        objects: n,
        bytes,
        changes,
        counts,
    })
}

/// Script pages must be in the store, or in the intake's `pages/` folder to be uploaded;
/// either way their bytes must match the manifest's sha256.
async fn check_pages(
    store: &Store,
    dir: &Path,
    intake: &Intake,
    rep: &Reporter,
) -> anyhow::Result<()> {
    let name = crate::intake::find(dir, crate::intake::Table::Scripts)
        .ok()
        .flatten()
        .map(|t| t.name)
        .unwrap_or_else(|| "scripts.csv".into());
    let results: Vec<Option<Problem>> = futures::stream::iter(intake.scripts.iter())
        .map(|s| {
            let local = dir.join("pages").join(&s.object_key);
            let name = name.clone();
            async move {
                match tokio::fs::read(&local).await {
                    Ok(bytes) => {
                        let sha = hex::encode(Sha256::digest(&bytes));
                        if sha != s.sha256 {
                            return Ok::<_, anyhow::Error>(Some(Problem::cell(
                                &name,
                                s.row,
                                "sha256",
                                &s.sha256,
                                format!("pages/{} has sha256 {sha}", s.object_key),
                            )));
                        }
                        store.put_key(&s.object_key, bytes.into()).await?;
                        Ok(None)
                    }
                    Err(_) if store.has_key(&s.object_key).await? => Ok(None),
                    Err(_) => Ok(Some(Problem::cell(
                        &name,
                        s.row,
                        "object_key",
                        &s.object_key,
                        "page image is neither in the store nor in the intake's pages/ folder",
                    ))),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    for p in results.into_iter().flatten() {
        rep.push(p);
    }
    Ok(())
}

/// Every pupil's result row, grouped by school and sorted in the contract's order.
pub fn compute(intake: &Intake, pb: Option<&ProgressBar>) -> Vec<Vec<ResultRow>> {
    let rows: Vec<Option<ResultRow>> = intake
        .pupils
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let r = rules::pupil_result(intake, i, p)?;
            Some(ResultRow {
                pupil: i as u32,
                line: outputs::csv_line(p, &r),
                result: r,
            })
        })
        .collect();
    if let Some(pb) = pb {
        pb.inc(rows.len() as u64);
    }
    let mut by_school: Vec<Vec<ResultRow>> = vec![Vec::new(); intake.schools.len()];
    for r in rows.into_iter().flatten() {
        by_school[intake.pupils[r.pupil as usize].school as usize].push(r);
    }
    by_school
        .par_iter_mut()
        .for_each(|rows| outputs::sort_rows(rows, &intake.pupils));
    by_school
}

/// A sortable, unique release id: UTC time and a random suffix.
pub fn new_release_id() -> String {
    let now = OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "{}-{:06x}",
        now.format(&fmt).expect("formats"),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// One job of the producer: everything made for one school, LA or trust, or one table.
enum Job {
    School(usize),
    La(usize),
    Trust(usize),
    Results,
    UpnIndex,
    Scripts,
    Cycle,
    Summaries,
    Organisations,
    Changes,
}

fn produce(
    intake: &Intake,
    by_school: &[Vec<ResultRow>],
    changes: &Changes,
    generated: &str,
    entries: &Mutex<BTreeMap<String, ObjectEntry>>,
    tx: tokio::sync::mpsc::Sender<Vec<(String, Bytes)>>,
) -> anyhow::Result<()> {
    let national_items = outputs::national_item_totals(intake);
    let mut school_pages: Vec<Vec<&crate::model::ScriptPage>> =
        vec![Vec::new(); intake.schools.len()];
    for page in &intake.scripts {
        school_pages[intake.pupils[page.pupil as usize].school as usize].push(page);
    }
    let mut las_schools: HashMap<crate::domain::LaCode, Vec<usize>> = HashMap::new();
    let mut trust_schools: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut order: Vec<usize> = (0..intake.schools.len()).collect();
    order.sort_by_key(|&i| intake.schools[i].laestab);
    for &i in &order {
        let s = &intake.schools[i];
        las_schools.entry(s.la).or_default().push(i);
        if let Some(t) = s.trust {
            trust_schools.entry(t).or_default().push(i);
        }
    }
    let mut jobs: Vec<Job> = vec![
        Job::Results,
        Job::UpnIndex,
        Job::Scripts,
        Job::Cycle,
        Job::Summaries,
        Job::Organisations,
        Job::Changes,
    ];
    jobs.extend((0..intake.las.len()).map(Job::La));
    jobs.extend((0..intake.trusts.len()).map(Job::Trust));
    jobs.extend((0..intake.schools.len()).map(Job::School));

    let combined = |schools: Option<&Vec<usize>>| {
        let list = schools.map(Vec::as_slice).unwrap_or(&[]);
        outputs::combined_csv(
            list.iter()
                .map(|&i| (intake.schools[i].laestab, by_school[i].as_slice())),
        )
    };
    let with_variants = |out: &mut Vec<(String, Vec<u8>)>, path: String, data: Vec<u8>| {
        out.push((layout::gzip(&path), outputs::gzip(&data)));
        out.push((layout::brotli(&path), outputs::brotli(&data)));
        out.push((path, data));
    };
    let make = |job: &Job| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        match job {
            Job::School(i) => {
                let s = &intake.schools[*i];
                let l = s.laestab.to_string();
                let rows = &by_school[*i];
                with_variants(&mut out, layout::school_csv(&l), outputs::school_csv(rows));
                with_variants(
                    &mut out,
                    layout::school_ctf(&l),
                    outputs::ctf(intake, s, rows, generated),
                );
                out.push((
                    layout::school_qla(&l),
                    outputs::qla_csv(intake, *i, &national_items),
                ));
                out.push((
                    layout::school_item_marks(&l),
                    outputs::item_marks_csv(intake, rows),
                ));
                if !school_pages[*i].is_empty() {
                    out.push((
                        layout::school_scripts(&l),
                        outputs::school_scripts_csv(intake, &school_pages[*i]),
                    ));
                }
            }
            Job::La(i) => {
                let la = &intake.las[*i];
                with_variants(
                    &mut out,
                    layout::la_csv(&la.code.to_string()),
                    combined(las_schools.get(&la.code)),
                );
            }
            Job::Trust(i) => {
                let t = &intake.trusts[*i];
                with_variants(
                    &mut out,
                    layout::trust_csv(&t.uid),
                    combined(trust_schools.get(&(*i as u32))),
                );
            }
            Job::Results => {
                let rows: Vec<&ResultRow> =
                    order.iter().flat_map(|&i| by_school[i].iter()).collect();
                out.push((
                    layout::RESULTS.into(),
                    outputs::results_parquet(intake, &rows),
                ));
            }
            Job::UpnIndex => {
                let rows: Vec<&ResultRow> = by_school.iter().flatten().collect();
                out.push((layout::UPN_INDEX.into(), outputs::upn_index(intake, &rows)));
            }
            Job::Scripts => {
                out.push((layout::SCRIPTS_INDEX.into(), outputs::scripts_index(intake)))
            }
            Job::Cycle => out.push((
                layout::CYCLE.into(),
                serde_json::to_vec(&outputs::cycle(intake))?,
            )),
            Job::Summaries => out.push((
                layout::SUMMARIES.into(),
                serde_json::to_vec(&summaries(intake, by_school))?,
            )),
            Job::Organisations => out.push((
                layout::ORGANISATIONS.into(),
                serde_json::to_vec(&organisations(intake, by_school))?,
            )),
            Job::Changes => out.push((layout::CHANGES.into(), serde_json::to_vec_pretty(changes)?)),
        }
        Ok(out)
    };
    jobs.par_chunks(32)
        .try_for_each(|chunk| -> anyhow::Result<()> {
            let mut batch = Vec::new();
            for job in chunk {
                for (path, data) in make(job)? {
                    let entry = ObjectEntry {
                        size: data.len() as u64,
                        sha256: hex::encode(Sha256::digest(&data)),
                    };
                    entries
                        .lock()
                        .expect("entries poisoned")
                        .insert(path.clone(), entry);
                    batch.push((path, Bytes::from(data)));
                }
            }
            tx.blocking_send(batch)
                .map_err(|_| anyhow!("object writer stopped"))
        })
}

fn summaries(intake: &Intake, by_school: &[Vec<ResultRow>]) -> Summaries {
    let mut out = Summaries::default();
    let mut las: BTreeMap<String, Summary> = intake
        .las
        .iter()
        .map(|l| (l.code.to_string(), Summary::default()))
        .collect();
    let mut trusts: BTreeMap<String, Summary> = intake
        .trusts
        .iter()
        .map(|t| (t.uid.clone(), Summary::default()))
        .collect();
    let mut national = Summary::default();
    for (i, s) in intake.schools.iter().enumerate() {
        let mut sum = Summary::default();
        for r in &by_school[i] {
            sum.add(&r.result);
        }
        national.merge(&sum);
        las.get_mut(&s.la.to_string())
            .expect("school's LA is known")
            .merge(&sum);
        if let Some(t) = s.trust {
            trusts
                .get_mut(&intake.trusts[t as usize].uid)
                .expect("known trust")
                .merge(&sum);
        }
        out.schools.insert(s.laestab.to_string(), sum.finish());
    }
    out.national = national.finish();
    out.las = las.into_iter().map(|(k, v)| (k, v.finish())).collect();
    out.trusts = trusts.into_iter().map(|(k, v)| (k, v.finish())).collect();
    out
}

fn organisations(intake: &Intake, by_school: &[Vec<ResultRow>]) -> Organisations {
    Organisations {
        las: intake
            .las
            .iter()
            .map(|l| outputs::OrgLa {
                code: l.code.to_string(),
                name: l.name.clone(),
            })
            .collect(),
        trusts: intake
            .trusts
            .iter()
            .map(|t| outputs::OrgTrust {
                uid: t.uid.clone(),
                name: t.name.clone(),
            })
            .collect(),
        schools: intake
            .schools
            .iter()
            .enumerate()
            .map(|(i, s)| outputs::OrgSchool {
                laestab: s.laestab.to_string(),
                urn: s.urn,
                name: s.name.clone(),
                la_code: s.la.to_string(),
                phase: s.phase.to_string(),
                kind: s.kind.to_string(),
                trust_uid: s.trust.map(|t| intake.trusts[t as usize].uid.clone()),
                pupils: by_school[i].len() as u32,
            })
            .collect(),
    }
}

/// A previous release's rows: upn -> (laestab, surname, forename, CSV fields).
type PreviousRows = HashMap<String, (String, Vec<String>)>;

async fn previous_rows(store: &Store, id: &str) -> anyhow::Result<PreviousRows> {
    use arrow::array::{Array, AsArray};
    let bytes = store.get_release_object(id, layout::RESULTS).await?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let names = outputs::results_columns();
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch?;
        let cols: Vec<_> = names
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .map(|c| c.as_string::<i32>().clone())
                    .ok_or_else(|| anyhow!("results.parquet lacks {n}"))
            })
            .collect::<anyhow::Result<_>>()?;
        for i in 0..batch.num_rows() {
            let get = |c: usize| {
                if cols[c].is_null(i) {
                    String::new()
                } else {
                    cols[c].value(i).to_string()
                }
            };
            let fields: Vec<String> = (3..names.len()).map(get).collect();
            out.insert(get(3), (get(0), fields));
        }
    }
    Ok(out)
}

/// Which pupils' rows changed, by school.
fn diff(
    intake: &Intake,
    by_school: &[Vec<ResultRow>],
    before: Option<&PreviousRows>,
    id: &str,
    previous: Option<&str>,
) -> Changes {
    let mut changes = Changes {
        release: id.into(),
        previous_release: previous.map(str::to_string),
        schools: Vec::new(),
    };
    let Some(before) = before else { return changes };
    let header: Vec<&str> = outputs::HEADER.split(',').collect();
    let mut by: BTreeMap<String, Vec<PupilChange>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, rows) in by_school.iter().enumerate() {
        let laestab = intake.schools[i].laestab.to_string();
        for r in rows {
            let p = &intake.pupils[r.pupil as usize];
            let upn = p.upn.to_string();
            let now = outputs::fields(p, &r.result);
            seen.insert(upn.clone());
            let change = match before.get(&upn) {
                None => Some(PupilChange {
                    upn,
                    surname: p.surname.clone(),
                    forename: p.forename.clone(),
                    kind: "added".into(),
                    fields: vec![],
                }),
                Some((_, old)) => {
                    let fields: Vec<FieldChange> = header
                        .iter()
                        .enumerate()
                        .filter(|(c, _)| old[*c] != now[*c])
                        .map(|(c, h)| FieldChange {
                            column: h.to_string(),
                            before: old[c].clone(),
                            after: now[c].clone(),
                        })
                        .collect();
                    (!fields.is_empty()).then(|| PupilChange {
                        upn,
                        surname: p.surname.clone(),
                        forename: p.forename.clone(),
                        kind: "changed".into(),
                        fields,
                    })
                }
            };
            if let Some(c) = change {
                by.entry(laestab.clone()).or_default().push(c);
            }
        }
    }
    for (upn, (laestab, old)) in before {
        if !seen.contains(upn) {
            by.entry(laestab.clone()).or_default().push(PupilChange {
                upn: upn.clone(),
                surname: old[1].clone(),
                forename: old[2].clone(),
                kind: "removed".into(),
                fields: vec![],
            });
        }
    }
    changes.schools = by
        .into_iter()
        .map(|(laestab, mut pupils)| {
            pupils.sort_by(|a, b| a.upn.cmp(&b.upn));
            SchoolChanges { laestab, pupils }
        })
        .collect();
    changes
}

/// Which download to export.
#[derive(Debug, Clone)]
pub enum Target {
    School(String),
    La(String),
    Trust(String),
}

/// The bytes the server serves for a download from the current release.
pub async fn export(store: &Store, target: &Target, ctf: bool) -> anyhow::Result<Bytes> {
    let id = store
        .current()
        .await?
        .ok_or_else(|| anyhow!("no release has been published to {}", store.url()))?;
    let rel = match (target, ctf) {
        (Target::School(l), false) => layout::school_csv(l),
        (Target::School(l), true) => layout::school_ctf(l),
        (Target::La(c), false) => layout::la_csv(c),
        (Target::Trust(u), false) => layout::trust_csv(u),
        (_, true) => return Err(anyhow!("CTF is made per school; use --laestab")),
    };
    let manifest = store.manifest(&id).await?;
    if !manifest.objects.contains_key(&rel) {
        let what = match target {
            Target::School(l) => format!("school {l}"),
            Target::La(c) => format!("LA {c}"),
            Target::Trust(u) => format!("trust {u}"),
        };
        return Err(anyhow!("{what} is not in release {id}"));
    }
    store.get_release_object(&id, &rel).await
}

/// A release as `releases` lists it.
#[derive(Debug, Clone)]
pub struct ReleaseInfo {
    pub id: String,
    pub current: bool,
    /// `None` when the folder has no manifest: an interrupted publish.
    pub manifest: Option<Manifest>,
}

pub async fn releases(store: &Store) -> anyhow::Result<Vec<ReleaseInfo>> {
    let current = store.current().await?;
    let mut out = Vec::new();
    for id in store.release_ids().await? {
        let manifest = store.manifest(&id).await.ok();
        out.push(ReleaseInfo {
            current: current.as_deref() == Some(id.as_str()),
            id,
            manifest,
        });
    }
    Ok(out)
}

/// Make an earlier, complete release current again.
pub async fn rollback(store: &Store, to: &str) -> anyhow::Result<()> {
    if !store.release_ids().await?.iter().any(|i| i == to) {
        return Err(anyhow!("no release {to} in {}", store.url()));
    }
    store.manifest(to).await.with_context(|| {
        format!("release {to} is incomplete (no manifest) and cannot be made current")
    })?;
    store.set_current(to).await
}
