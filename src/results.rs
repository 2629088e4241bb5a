//! The results plane's hot path: the current release's precomputed downloads, served from a
//! memory cache (moka, weighted by bytes; concurrent misses on one object coalesce into one
//! object-store read, checked against the manifest's sha256). A watcher picks up a new
//! `CURRENT` without a restart; requests in flight keep the release they started with.
//! Never touches the portal database on the hot path: authorisation uses the session and the
//! release's own organisation index; audit records go to a background writer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use nca_pipeline::outputs::{Organisations, Summaries};
use nca_pipeline::publish::{Changes, PupilChange};
use nca_pipeline::store::{Manifest, Store, layout};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::roles::{Action, OrgKind};
use crate::auth::session::{Signed, SignedIn};
use crate::db;
use crate::http::ClientAddr;
use crate::ks3::{Closed, Ks3Query, MAX_PUPILS as KS3_MAX_PUPILS};
use crate::prerendered::Prerendered;

/// A loaded release: its manifest and which LA and trust each school belongs to.
#[derive(Debug)]
pub struct Release {
    pub id: String,
    pub manifest: Manifest,
    /// laestab -> (LA code, trust UID)
    /// Keyed by data from the release (never by what a request chose), so hashed with
    /// foldhash: every download's authorisation looks a school up here.
    pub schools: FoldMap<String, (String, Option<String>)>,
    /// UPN -> the pupils' identities and CSV lines, for KS3 lookups.
    pub pupils: HashMap<String, Vec<Ks3Entry>>,
    /// Names by laestab (schools), LA code and trust UID, for the pages.
    pub names: HashMap<String, String>,
    /// Each school's, LA's and trust's summary and the national one.
    pub summaries: Summaries,
    /// Late results: what changed since the previous release, by laestab.
    pub changes: HashMap<String, Vec<PupilChange>>,
    /// The cycle's items and conversion tables (releases before they were published: None).
    pub cycle: Option<nca_pipeline::outputs::Cycle>,
    /// The precomputed downloads by the names the API uses.
    pub(crate) downloads: Downloads,
}

/// What the API's download paths name: a school's, an LA's or a trust's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    School,
    La,
    Trust,
}

/// A release's downloads by the file name the API uses (`2012046.csv`, `2012046.ctf`,
/// `2012046-qla.csv`, `999.csv`), each with everything its response needs worked out when the
/// release is loaded: the hot path looks one up, picks a variant and sends it.
#[derive(Debug, Default)]
pub(crate) struct Downloads {
    school: FoldMap<Box<str>, Arc<Download>>,
    la: FoldMap<Box<str>, Arc<Download>>,
    trust: FoldMap<Box<str>, Arc<Download>>,
}

/// A map whose keys come from a release (manifest paths, laestabs), hashed with foldhash
/// (seeded per process) rather than SipHash: nobody outside chooses what is inserted.
pub type FoldMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(crate) struct Download {
    /// `release/path` of the file asked for, as the access log records it.
    audit_target: Arc<str>,
    /// Brotli, gzip, then the file itself, as published: the first the client accepts is sent.
    variants: Vec<Variant>,
}

#[derive(Debug)]
struct Variant {
    encoding: Option<&'static str>,
    /// The object's path in the release, and its cache key (`release/path`).
    path: Box<str>,
    key: Arc<str>,
    etag: Box<str>,
    etag_header: HeaderValue,
    /// Every header of this variant's 200 response but the request id, made once: a clone
    /// costs less than building the map on every download.
    headers: HeaderMap,
}

const CSV: &str = "text/csv; charset=utf-8";

impl Downloads {
    fn index(id: &str, manifest: &Manifest) -> Downloads {
        let mut d = Downloads::default();
        for (path, _) in manifest.objects.iter() {
            let plain = |rest: &str, ext: &str| {
                rest.strip_suffix(ext)
                    .filter(|n| !n.is_empty() && !n.contains(['.', '/']))
                    .map(String::from)
            };
            let (map, name, content_type) = if let Some(rest) = path.strip_prefix("school/") {
                if let Some(l) = plain(rest, ".qla.csv") {
                    (&mut d.school, format!("{l}-qla.csv"), CSV)
                } else if let Some(l) = plain(rest, ".ctf.xml") {
                    (&mut d.school, format!("{l}.ctf"), "application/xml")
                } else if let Some(l) = plain(rest, ".csv") {
                    (&mut d.school, format!("{l}.csv"), CSV)
                } else {
                    continue;
                }
            } else if let Some(l) = path.strip_prefix("la/").and_then(|r| plain(r, ".csv")) {
                (&mut d.la, format!("{l}.csv"), CSV)
            } else if let Some(l) = path.strip_prefix("trust/").and_then(|r| plain(r, ".csv")) {
                (&mut d.trust, format!("{l}.csv"), CSV)
            } else {
                continue;
            };
            let filename = path.rsplit('/').next().unwrap_or(path);
            let Ok(disposition) =
                HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
            else {
                continue;
            };
            let variants = [
                (Some("br"), layout::brotli(path)),
                (Some("gzip"), layout::gzip(path)),
                (None, path.clone()),
            ]
            .into_iter()
            .filter_map(|(encoding, p)| {
                let sha = &manifest.objects.get(&p)?.sha256;
                let etag = format!("\"{}\"", sha.get(..32).unwrap_or(sha));
                let etag_header = HeaderValue::from_str(&etag).ok()?;
                Some(Variant {
                    encoding,
                    key: format!("{id}/{p}").into(),
                    headers: ok_headers(content_type, encoding, &disposition, &etag_header),
                    etag_header,
                    etag: etag.into(),
                    path: p.into(),
                })
            })
            .collect();
            map.insert(
                name.into(),
                Arc::new(Download {
                    audit_target: format!("{id}/{path}").into(),
                    variants,
                }),
            );
        }
        d
    }

    fn get(&self, target: Target, file: &str) -> Option<&Arc<Download>> {
        match target {
            Target::School => self.school.get(file),
            Target::La => self.la.get(file),
            Target::Trust => self.trust.get(file),
        }
    }
}

/// A download's 200 headers: what the file is, how to save it, how to cache it, and the
/// download security headers (`security_headers` finds them present and adds nothing).
fn ok_headers(
    content_type: &'static str,
    encoding: Option<&'static str>,
    disposition: &HeaderValue,
    etag: &HeaderValue,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(12);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    h.insert(header::CONTENT_DISPOSITION, disposition.clone());
    caching_headers(&mut h, etag);
    for (name, value) in crate::DOWNLOAD_HEADERS.iter().cloned() {
        h.insert(name, HeaderValue::from_static(value));
    }
    // Room for the request's id, which whoever sends the response writes over
    // (`with_request_id`): a clone of a HeaderMap has no spare capacity, and growing it for
    // one more header cost more than the rest of building the response
    // (bench/instructions.sh).
    h.insert(crate::REQUEST_ID, HeaderValue::from_static(REQUEST_ID_ROOM));
    h
}

/// The placeholder request id of a download's prebuilt headers (see `ok_headers`).
const REQUEST_ID_ROOM: &str = "-";

/// Put the request's id on a download's response, over the placeholder of its prebuilt
/// headers (in place: the map does not grow).
pub(crate) fn with_request_id(mut resp: Response, id: HeaderValue) -> Response {
    resp.headers_mut().insert(crate::REQUEST_ID, id);
    resp
}

/// What a download's 200 and 304 both say about caching: its ETag, that a browser keeps it
/// but asks again, and what it varies by.
fn caching_headers(h: &mut HeaderMap, etag: &HeaderValue) {
    h.insert(header::ETAG, etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::VARY, HeaderValue::from_static(VARY));
}

/// One pupil in the KS3 lookup index.
#[derive(Debug, Clone)]
pub struct Ks3Entry {
    pub surname: String,
    pub dob: String,
    pub line: String,
}

/// Surnames match whatever their letter case and spacing.
pub fn normalise_surname(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn read_upn_index(bytes: Bytes) -> anyhow::Result<HashMap<String, Vec<Ks3Entry>>> {
    use arrow::array::{Array, StringArray};
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out: HashMap<String, Vec<Ks3Entry>> = HashMap::new();
    for batch in reader {
        let batch = batch?;
        let col = |name: &str| -> anyhow::Result<StringArray> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("upn-index has no {name} column"))?;
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)?;
            Ok(c.as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let (upn, surname, dob, line) =
            (col("upn")?, col("surname")?, col("dob")?, col("csv_line")?);
        for i in 0..batch.num_rows() {
            if upn.is_null(i) {
                continue;
            }
            out.entry(upn.value(i).to_string())
                .or_default()
                .push(Ks3Entry {
                    surname: normalise_surname(surname.value(i)),
                    dob: dob.value(i).to_string(),
                    line: line.value(i).to_string(),
                });
        }
    }
    Ok(out)
}

/// The current release and the object cache.
pub struct Results {
    store: Store,
    current: RwLock<Option<Arc<Release>>>,
    /// By `release/path` (keys come from manifests, so a fast hasher is safe).
    cache: moka::future::Cache<Arc<str>, Bytes, foldhash::fast::RandomState>,
    /// Parts of pages rendered from a release's objects, by `release#what`: made once, ahead
    /// of the opening time where a user is waiting for them (`results_pages`).
    rendered: moka::future::Cache<Arc<str>, Arc<Prerendered>, foldhash::fast::RandomState>,
    hits: std::sync::atomic::AtomicU64,
    /// The release whose late-results emails have all been sent (or claimed by another node).
    told: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results")
            .field("release", &self.release().map(|r| r.id.clone()))
            .field("cached_bytes", &self.cache.weighted_size())
            .field("rendered_bytes", &self.rendered.weighted_size())
            .finish()
    }
}

impl Results {
    /// `cache_bytes` for the release's objects, `rendered_bytes` for parts of pages made
    /// from them.
    pub fn new(store: Store, cache_bytes: u64, rendered_bytes: u64) -> Results {
        Results {
            store,
            current: RwLock::new(None),
            cache: moka::future::Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build_with_hasher(Default::default()),
            rendered: moka::future::Cache::builder()
                .max_capacity(rendered_bytes)
                .weigher(|k: &Arc<str>, v: &Arc<Prerendered>| {
                    u32::try_from(k.len() + v.bytes()).unwrap_or(u32::MAX)
                })
                .build_with_hasher(Default::default()),
            hits: std::sync::atomic::AtomicU64::new(0),
            told: std::sync::Mutex::new(None),
        }
    }

    pub fn release(&self) -> Option<Arc<Release>> {
        self.current.read().expect("release lock poisoned").clone()
    }

    /// Load `CURRENT` if it names a different release from the one loaded. A release that
    /// cannot be loaded leaves the previous one serving.
    pub async fn refresh(&self) -> anyhow::Result<bool> {
        let Some(id) = self.store.current().await? else {
            return Ok(false);
        };
        if self.release().is_some_and(|r| r.id == id) {
            return Ok(false);
        }
        let manifest = self.store.manifest(&id).await?;
        let orgs_bytes = self
            .store
            .get_release_object(&id, layout::ORGANISATIONS)
            .await?;
        let orgs: Organisations = serde_json::from_slice(&orgs_bytes)?;
        let names = orgs
            .las
            .iter()
            .map(|l| (l.code.clone(), l.name.clone()))
            .chain(orgs.trusts.iter().map(|t| (t.uid.clone(), t.name.clone())))
            .chain(
                orgs.schools
                    .iter()
                    .map(|s| (s.laestab.clone(), s.name.clone())),
            )
            .collect();
        let schools = orgs
            .schools
            .into_iter()
            .map(|s| (s.laestab, (s.la_code, s.trust_uid)))
            .collect();
        let summaries: Summaries = serde_json::from_slice(
            &self
                .store
                .get_release_object(&id, layout::SUMMARIES)
                .await?,
        )?;
        let changes: HashMap<String, Vec<PupilChange>> =
            if manifest.objects.contains_key(layout::CHANGES) {
                let c: Changes = serde_json::from_slice(
                    &self.store.get_release_object(&id, layout::CHANGES).await?,
                )?;
                c.schools
                    .into_iter()
                    .map(|s| (s.laestab, s.pupils))
                    .collect()
            } else {
                HashMap::new()
            };
        let pupils = match self.store.get_release_object(&id, layout::UPN_INDEX).await {
            Ok(b) => read_upn_index(b)?,
            Err(e) => {
                tracing::warn!(error = %e, "release has no UPN index: KS3 lookups find nothing");
                HashMap::new()
            }
        };
        let cycle = if manifest.objects.contains_key(layout::CYCLE) {
            Some(serde_json::from_slice(
                &self.store.get_release_object(&id, layout::CYCLE).await?,
            )?)
        } else {
            None
        };
        let release = Arc::new(Release {
            downloads: Downloads::index(&id, &manifest),
            id: id.clone(),
            cycle,
            manifest,
            schools,
            pupils,
            names,
            summaries,
            changes,
        });
        *self.current.write().expect("release lock poisoned") = Some(release);
        // Pages rendered from the previous release are never shown again (their keys name
        // it): give their memory back now rather than when they are evicted.
        self.rendered.invalidate_all();
        tracing::info!(release = %id, "release loaded");
        Ok(true)
    }

    /// Read a release's downloads into memory ahead of its opening time, so that at 7:30 every
    /// download is a memory hit: compressed variants first (what browsers ask for, and the
    /// smallest), then the plain files, schools before LAs and trusts, until the cache is
    /// three-quarters full. Returns the objects and bytes read.
    pub async fn prewarm(&self, release: &Release) -> (usize, u64) {
        use futures::StreamExt;
        let budget = self.cache.policy().max_capacity().unwrap_or(0) * 3 / 4;
        let rank = |p: &str| {
            let encoded = p.ends_with(".br") || p.ends_with(".gz");
            let kind = if p.starts_with("school/") { 0 } else { 1 };
            (!encoded as u8, kind, p.ends_with(".br") as u8 ^ 1)
        };
        let mut wanted: Vec<(&String, u64)> = release
            .manifest
            .objects
            .iter()
            .filter(|(p, _)| {
                (p.starts_with("school/") || p.starts_with("la/") || p.starts_with("trust/"))
                    && !p.contains(".qla.")
                    && !p.contains(".marks.")
                    && !p.contains(".scripts.")
            })
            .map(|(p, e)| (p, e.size))
            .collect();
        wanted.sort_by_key(|(p, _)| rank(p));
        let mut total = 0u64;
        let chosen: Vec<String> = wanted
            .into_iter()
            .take_while(|(_, size)| {
                total += size;
                total <= budget
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut reads = futures::stream::iter(chosen)
            .map(|p: String| async move { self.object(release, &p).await })
            .buffer_unordered(8);
        let (mut n, mut bytes) = (0, 0);
        while let Some(r) = reads.next().await {
            if let Ok(Some(b)) = r {
                n += 1;
                bytes += b.len() as u64;
            }
        }
        (n, bytes)
    }

    /// One object of a release if it is in memory now.
    pub async fn cached(&self, release: &Release, path: &str) -> Option<Bytes> {
        self.cached_at(&format!("{}/{path}", release.id)).await
    }

    /// As `cached`, by the cache's key (`release/path`), which the download index holds.
    async fn cached_at(&self, key: &str) -> Option<Bytes> {
        let hit = self.cache.get(key).await;
        if hit.is_some() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        hit
    }

    /// How many fast-path requests found their object in memory.
    pub fn cached_hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A part of a page made from `release`'s objects, from memory or made by `make` (once,
    /// however many ask at once) and compressed then. `what` names the part within the
    /// release; a new release has new keys, so nothing rendered from an older one is served
    /// with it.
    pub async fn rendered(
        &self,
        release: &Release,
        what: &str,
        make: impl Future<Output = anyhow::Result<String>>,
    ) -> anyhow::Result<Arc<Prerendered>> {
        self.rendered
            .try_get_with(rendered_key(release, what), async {
                metrics::counter!("nca_results_pages_rendered_total").increment(1);
                Ok::<_, anyhow::Error>(Arc::new(Prerendered::new(make.await?)))
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// Whether a part of a page for `release` is in memory now.
    pub fn is_rendered(&self, release: &Release, what: &str) -> bool {
        self.rendered.contains_key(&rendered_key(release, what))
    }

    /// One object of a release, from memory or (once, however many ask at once) the store.
    pub async fn object(&self, release: &Release, path: &str) -> anyhow::Result<Option<Bytes>> {
        let Some(entry) = release.manifest.objects.get(path) else {
            return Ok(None);
        };
        let key: Arc<str> = format!("{}/{path}", release.id).into();
        let store = self.store.clone();
        let (id, rel, want) = (release.id.clone(), path.to_string(), entry.sha256.clone());
        let bytes = self
            .cache
            .try_get_with(key, async move {
                metrics::counter!("nca_results_cache_misses_total").increment(1);
                let b = store.get_release_object(&id, &rel).await?;
                let got = hex::encode(Sha256::digest(&b));
                anyhow::ensure!(
                    got == want,
                    "{rel} in release {id}: sha256 {got}, manifest says {want}"
                );
                Ok::<_, anyhow::Error>(b)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Some(bytes))
    }
}

/// What `Results::rendered` keeps a part of a page under: its release, then the part.
fn rendered_key(release: &Release, what: &str) -> Arc<str> {
    format!("{}#{what}", release.id).into()
}

/// Keep the loaded release in step with the store's `CURRENT`, and tell schools whose
/// results a new release changed.
pub fn spawn_watch(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let mut warmed: Option<String> = None;
        loop {
            tick.tick().await;
            if let Err(e) = state.results.refresh().await {
                tracing::warn!(error = %e, "loading the current release");
            }
            if let Some(release) = state.results.release()
                && warmed.as_deref() != Some(release.id.as_str())
            {
                warmed = Some(release.id.clone());
                let state = state.clone();
                tokio::spawn(async move {
                    let (n, bytes) = state.results.prewarm(&release).await;
                    tracing::info!(release = %release.id, objects = n, bytes, "downloads in memory");
                });
            }
            if let Err(e) = notify_late_results(&state).await {
                tracing::warn!(error = %e, "telling schools about late results");
            }
        }
    });
}

/// Late results: once the current release is open, email the account managers of every
/// school whose results it changed (once per school and release, whichever node gets there
/// first). The email names no pupils; the results page says what changed. Returns how many
/// schools this call told.
pub async fn notify_late_results(state: &AppState) -> anyhow::Result<usize> {
    let Some(release) = state.results.release() else {
        return Ok(0);
    };
    let done = |id: &str| state.results.told.lock().expect("told poisoned").as_deref() == Some(id);
    let now = state.clock.now();
    if release.changes.is_empty()
        || done(&release.id)
        || now < release.manifest.opens_at.unix_timestamp()
    {
        return Ok(0);
    }
    let mut schools: Vec<(&String, usize)> =
        release.changes.iter().map(|(l, c)| (l, c.len())).collect();
    schools.sort();
    let mut told = 0;
    for (laestab, pupils) in schools {
        if !db::claim_release_notice(&state.db, &release.id, laestab, now).await? {
            continue;
        }
        let sent = tell_school(state, &release, laestab, pupils).await;
        if let Err(e) = sent {
            db::unclaim_release_notice(&state.db, &release.id, laestab).await?;
            return Err(e);
        }
        told += 1;
    }
    *state.results.told.lock().expect("told poisoned") = Some(release.id.clone());
    Ok(told)
}

async fn tell_school(
    state: &AppState,
    release: &Release,
    laestab: &str,
    pupils: usize,
) -> anyhow::Result<()> {
    let name = release.names.get(laestab).map_or(laestab, String::as_str);
    let managers: Vec<String> = db::members(&state.db, laestab)
        .await?
        .into_iter()
        .filter(|m| m.active && m.roles.has(crate::auth::roles::Role::AccountManager))
        .map(|m| m.email)
        .collect();
    // Short lines, so the message travels as plain 7-bit text.
    // A result that was M (missing) and now is not: that pupil's script has arrived.
    let scripts_now = release.changes.get(laestab).map_or(0, |c| {
        c.iter()
            .filter(|p| {
                p.fields
                    .iter()
                    .any(|f| f.column.ends_with("_result") && f.before == "M" && f.after != "M")
            })
            .count()
    });
    let scripts_line = if scripts_now > 0 {
        format!(
            "{scripts_now} pupils' marked test scripts that were not available\n\
             before are now in the portal, with their results.\n\n"
        )
    } else {
        String::new()
    };
    let body = format!(
        "The key stage 2 results of {name} ({laestab}) have been updated.\n\n\
         {pupils} pupils' results changed in the latest release.\n\n\
         {scripts_line}\
         Sign in to the NCA Portal to see what changed and to download\n\
         the updated files:\n{}/results\n\n\
         This email does not name pupils, to keep their data safe.\n",
        state.public_url
    );
    for to in &managers {
        state
            .mailer
            .send(
                to,
                "Your school's key stage 2 results have been updated",
                &body,
            )
            .await?;
    }
    db::audit(
        &state.db,
        db::Audit {
            action: "late-results-notified",
            org_id: Some(laestab),
            target: Some(&release.id),
            detail: format!(
                "{pupils} pupils changed; {} account managers emailed",
                managers.len()
            ),
            ..Default::default()
        },
        state.clock.now(),
    )
    .await?;
    Ok(())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/results/school/{file}", get(school))
        .route("/api/v1/results/la/{file}", get(la))
        .route("/api/v1/results/trust/{file}", get(trust))
        .route(
            "/api/v1/results/ks3/lookup",
            axum::routing::post(ks3_lookup),
        )
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// 403 before an audience's opening time, saying when it opens.
fn not_open_yet(at: time::OffsetDateTime, message: &str) -> Response {
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({ "error": format!("{message} {at}"), "opens_at": at })),
    )
        .into_response()
}

/// Who may see a school's results: the school, its LA, its trust, the operator.
pub(crate) fn may_see_school(user: &SignedIn, release: &Release, laestab: &str) -> bool {
    let Some((la, trust)) = release.schools.get(laestab) else {
        return false;
    };
    match user.kind {
        OrgKind::Ks2School => user.org == laestab,
        OrgKind::La => user.org == *la,
        OrgKind::Mat => trust.as_deref() == Some(user.org.as_str()),
        OrgKind::Operator => true,
        OrgKind::Ks3School => false,
    }
}

type Addr = Option<Extension<ClientAddr>>;

async fn school(
    State(state): State<AppState>,
    s: Signed,
    addr: Addr,
    Path(file): Path<String>,
    Query(variant): Query<CsvVariant>,
    headers: HeaderMap,
) -> Response {
    if let Some(laestab) = file.strip_suffix("-summary.csv") {
        return derived(&state, &s, addr, laestab, &headers, Derived::Summary).await;
    }
    if variant.subject.is_some() || variant.ta.is_some() {
        let Some(laestab) = file.strip_suffix(".csv") else {
            return error(
                StatusCode::BAD_REQUEST,
                "subject and ta apply only to a school's CSV download",
            );
        };
        return match variant.derived() {
            Ok(d) => derived(&state, &s, addr, laestab, &headers, d).await,
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        };
    }
    download(&state, &s, addr, &file, &headers, Target::School).await
}

/// `?subject=reading|gps|maths` and `?ta=no` on a school's CSV download.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CsvVariant {
    subject: Option<String>,
    ta: Option<String>,
}

/// Downloads made on request from a release's data: rarely asked for, small, and cheap.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Derived {
    /// The school's summary beside its LA's, its trust's and the national one.
    Summary,
    /// The school's CSV with one subject's columns, or without the TA columns.
    Columns {
        subject: Option<&'static str>,
        ta: bool,
    },
}

impl CsvVariant {
    fn derived(&self) -> Result<Derived, &'static str> {
        let subject = match self.subject.as_deref().map(str::trim) {
            None | Some("" | "all") => None,
            Some("reading") => Some("reading"),
            Some("gps") => Some("gps"),
            Some("maths") => Some("maths"),
            Some(_) => return Err("subject must be reading, gps or maths"),
        };
        let ta = match self.ta.as_deref().map(str::trim) {
            None | Some("" | "yes" | "true") => true,
            Some("no" | "false") => false,
            Some(_) => return Err("ta must be yes or no"),
        };
        Ok(Derived::Columns { subject, ta })
    }
}

/// The identity columns every variant of the school CSV keeps.
const IDENTITY: [&str; 5] = ["upn", "surname", "forename", "dob", "gender"];

/// A school CSV cut down to one subject's columns, or without the TA columns.
pub fn select_columns(csv: &[u8], subject: Option<&str>, ta: bool) -> anyhow::Result<Vec<u8>> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(csv);
    let header = rdr.headers()?.clone();
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| match subject {
            Some(sub) => IDENTITY.contains(h) || h.split('_').next() == Some(sub),
            None => ta || !h.ends_with("_ta"),
        })
        .map(|(i, _)| i)
        .collect();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(csv.len()));
    w.write_record(keep.iter().map(|&i| &header[i]))?;
    for rec in rdr.records() {
        let rec = rec?;
        w.write_record(keep.iter().map(|&i| rec.get(i).unwrap_or("")))?;
    }
    Ok(w.into_inner()?)
}

/// A school's summary beside its LA's, its trust's (if any) and England's.
pub fn summary_csv(release: &Release, laestab: &str) -> Vec<u8> {
    use nca_pipeline::outputs::{EOL, Summary};
    let mut out = String::from("group,code,name,pupils");
    for s in ["reading", "gps", "maths"] {
        out.push_str(&format!(",{s}_pct_met,{s}_pct_high,{s}_average_scaled"));
    }
    out.push_str(",rwm_pct_met");
    out.push_str(EOL);
    let num = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
    let mut row = |group: &str, code: &str, sum: Option<&Summary>| {
        let Some(sum) = sum else { return };
        let name = match group {
            "england" => "England",
            _ => release.names.get(code).map_or(code, String::as_str),
        };
        let mut field = String::new();
        nca_pipeline::outputs::push_field(&mut field, name);
        out.push_str(&format!("{group},{code},{field},{}", sum.pupils));
        for t in [&sum.reading, &sum.gps, &sum.maths] {
            out.push_str(&format!(
                ",{},{},{}",
                num(t.pct_met),
                num(t.pct_high),
                num(t.average_scaled)
            ));
        }
        out.push_str(&format!(",{}{EOL}", num(sum.rwm.pct_met)));
    };
    let sums = &release.summaries;
    row("school", laestab, sums.schools.get(laestab));
    if let Some((la, trust)) = release.schools.get(laestab) {
        row("la", la, sums.las.get(la));
        if let Some(t) = trust {
            row("trust", t, sums.trusts.get(t));
        }
    }
    row("england", "E92000001", Some(&sums.national));
    out.into_bytes()
}

async fn derived(
    state: &AppState,
    s: &Signed,
    addr: Addr,
    laestab: &str,
    headers: &HeaderMap,
    d: Derived,
) -> Response {
    if let Err(wait) = state
        .limits
        .check(&s.user.uid, &s.user.org, ClientAddr::ip_of(addr))
    {
        return crate::protect::too_many(wait);
    }
    let release = match opened(state, &s.user) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    if !may_see_school(&s.user, &release, laestab) {
        return Refusal::Error(
            StatusCode::FORBIDDEN,
            "these results belong to another organisation",
        )
        .into_response();
    }
    let (bytes, name) = match d {
        Derived::Summary => (
            Bytes::from(summary_csv(&release, laestab)),
            format!("{laestab}-summary.csv"),
        ),
        Derived::Columns { subject, ta } => {
            let full = match state
                .results
                .object(&release, &layout::school_csv(laestab))
                .await
            {
                Ok(Some(b)) => b,
                Ok(None) => return error(StatusCode::NOT_FOUND, "no such download"),
                Err(e) => return unavailable(&e, &layout::school_csv(laestab)),
            };
            match select_columns(&full, subject, ta) {
                Ok(b) => (
                    Bytes::from(b),
                    format!(
                        "{laestab}{}{}.csv",
                        subject.map(|s| format!("-{s}")).unwrap_or_default(),
                        if ta { "" } else { "-without-ta" }
                    ),
                ),
                Err(e) => return unavailable(&e, &layout::school_csv(laestab)),
            }
        }
    };
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..32]);
    let event = AuditEvent {
        action: "results-download",
        actor: s.user.email.as_str().into(),
        org_id: s.user.org.as_str().into(),
        target: format!("{}/school/{name}", release.id).into(),
        at: state.clock.now(),
    };
    if state.audit_tx.send(event).await.is_err() {
        tracing::error!("audit writer stopped: a download was not recorded");
    }
    let body = (!if_none_match(headers, &etag)).then_some(bytes);
    attachment(body, "text/csv; charset=utf-8", None, &name, &etag)
}

/// 503 with Retry-After when a release object cannot be read (logged with its path).
fn unavailable(e: &anyhow::Error, path: &str) -> Response {
    tracing::error!(error = %e, path, "reading a release object");
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "results are briefly unavailable: try again",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// Whether If-None-Match names this ETag.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// A download's response: the bytes (None for 304 Not Modified) with its headers.
fn attachment(
    bytes: Option<Bytes>,
    content_type: &'static str,
    encoding: Option<&'static str>,
    filename: &str,
    etag: &str,
) -> Response {
    let mut r = match bytes {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some(enc) = encoding {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
            }
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept-Encoding, Cookie"),
    );
    r
}

async fn la(
    State(state): State<AppState>,
    s: Signed,
    addr: Addr,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    download(&state, &s, addr, &file, &headers, Target::La).await
}

async fn trust(
    State(state): State<AppState>,
    s: Signed,
    addr: Addr,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    download(&state, &s, addr, &file, &headers, Target::Trust).await
}

/// The release a user may read results from now: they have the permission, a release is
/// loaded, and (unless they are the operator) their opening time has passed.
pub(crate) fn opened(state: &AppState, user: &SignedIn) -> Result<Arc<Release>, Refusal> {
    opened_at(state, user, state.clock.now())
}

/// As `opened`, at `now` (the fast path reads the clock once per request).
fn opened_at(state: &AppState, user: &SignedIn, now: i64) -> Result<Arc<Release>, Refusal> {
    if !user.may(Action::ViewResults) {
        return Err(Refusal::Error(
            StatusCode::FORBIDDEN,
            "your account does not have permission to view results",
        ));
    }
    let Some(release) = state.results.release() else {
        return Err(Refusal::Error(
            StatusCode::NOT_FOUND,
            "no results have been published",
        ));
    };
    let opens = release.manifest.opens_at.unix_timestamp();
    if now < opens && user.kind != OrgKind::Operator {
        return Err(Refusal::NotOpen(release.manifest.opens_at));
    }
    Ok(release)
}

/// Everything decided about a download before any bytes are fetched.
struct Plan {
    release: Arc<Release>,
    download: Arc<Download>,
    /// The variant (precompressed or not) chosen for this client.
    variant: usize,
    not_modified: bool,
    /// When the download was asked for (the access record's time).
    now: i64,
}

/// Check a download against permissions, the embargo and authorisation, and choose the
/// variant to send. Shared by the fast path and the router's handlers, so the two cannot
/// disagree; every refusal is the response to send. The callers check the rate limits.
fn plan(
    state: &AppState,
    user: &SignedIn,
    file: &str,
    headers: &HeaderMap,
    target: Target,
    now: i64,
) -> Result<Plan, Refusal> {
    let (name, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let release = opened_at(state, user, now)?;
    let owner = match (target, ext) {
        (Target::School, "csv") => name.strip_suffix("-qla").unwrap_or(name),
        (Target::School, "ctf") | (Target::La, "csv") | (Target::Trust, "csv") => name,
        _ => {
            return Err(Refusal::Error(
                StatusCode::NOT_FOUND,
                "no such download: use .csv, or .ctf for a school",
            ));
        }
    };
    let allowed = match target {
        Target::School => may_see_school(user, &release, owner),
        Target::La => {
            (user.kind == OrgKind::La && user.org == owner) || user.kind == OrgKind::Operator
        }
        Target::Trust => {
            (user.kind == OrgKind::Mat && user.org == owner) || user.kind == OrgKind::Operator
        }
    };
    if !allowed {
        // The same answer whether or not the organisation exists: nothing to probe.
        return Err(Refusal::Error(
            StatusCode::FORBIDDEN,
            "these results belong to another organisation",
        ));
    }
    let Some(download) = release.downloads.get(target, file).cloned() else {
        return Err(Refusal::Error(StatusCode::NOT_FOUND, "no such download"));
    };
    // The precompressed variant the client accepts, best first (the file itself always).
    let accepts = accept_encoding(headers);
    let Some(variant) = download.variants.iter().position(|v| {
        v.encoding
            .is_none_or(|enc| accepts.is_some_and(|a| accepts_coding(a, enc)))
    }) else {
        return Err(Refusal::Error(StatusCode::NOT_FOUND, "no such download"));
    };
    let not_modified = if_none_match(headers, &download.variants[variant].etag);
    Ok(Plan {
        release,
        download,
        variant,
        not_modified,
        now,
    })
}

/// Whether the request's Accept-Encoding names `enc` (a content coding such as "gzip") without
/// refusing it by a zero weight (`q=0`, `q=0.0`, `Q=0.000`).
pub(crate) fn accepts_encoding(headers: &HeaderMap, enc: &str) -> bool {
    accept_encoding(headers).is_some_and(|a| accepts_coding(a, enc))
}

/// The request's Accept-Encoding, when it sends a readable one (looked up once per request).
fn accept_encoding(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
}

/// Whether an Accept-Encoding value names `enc` without refusing it (see `accepts_encoding`).
fn accepts_coding(accepts: &str, enc: &str) -> bool {
    let refused = |q: &str| {
        let q = q.trim();
        q.get(..2).is_some_and(|k| k.eq_ignore_ascii_case("q="))
            && q[2..].trim().parse::<f32>() == Ok(0.0)
    };
    accepts.split(',').any(|p| {
        let mut parts = p.trim().split(';');
        parts
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case(enc))
            && !parts.any(refused)
    })
}

/// Why a download is refused (small, so plans pass cheaply; made a response only when sent).
pub(crate) enum Refusal {
    Error(StatusCode, &'static str),
    NotOpen(time::OffsetDateTime),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Error(status, message) => error(status, message),
            Refusal::NotOpen(at) => not_open_yet(at, "results are not available until"),
        }
    }
}

impl Plan {
    fn chosen(&self) -> &Variant {
        &self.download.variants[self.variant]
    }

    /// The response: the file's bytes (None for 304 Not Modified) with its headers, all
    /// worked out when the release was loaded. A 200's `x-request-id` is a placeholder the
    /// caller replaces (`with_request_id`).
    fn respond(&self, bytes: Option<Bytes>) -> Response {
        let v = self.chosen();
        let Some(bytes) = bytes else {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            caching_headers(r.headers_mut(), &v.etag_header);
            return r;
        };
        let mut r = Response::new(Body::from(bytes));
        *r.headers_mut() = v.headers.clone();
        r
    }
    fn audit_event(&self, actor: Arc<str>, org: Arc<str>) -> AuditEvent {
        AuditEvent {
            action: "results-download",
            actor,
            org_id: org,
            target: self.download.audit_target.clone(),
            at: self.now,
        }
    }
}

/// Every download's caching headers: a browser keeps its copy but asks again each time (the
/// ETag makes that a 304), and nothing shared may keep it.
const CACHE_CONTROL: &str = "private, no-cache";
const VARY: &str = "Accept-Encoding, Cookie";

async fn download(
    state: &AppState,
    s: &Signed,
    addr: Addr,
    file: &str,
    headers: &HeaderMap,
    target: Target,
) -> Response {
    if let Err(wait) = state
        .limits
        .check(&s.user.uid, &s.user.org, ClientAddr::ip_of(addr))
    {
        return crate::protect::too_many(wait);
    }
    let plan = match plan(state, &s.user, file, headers, target, state.clock.now()) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    // Waits only when the writer is a whole queue behind: no download goes unrecorded.
    if state
        .audit_tx
        .send(plan.audit_event(s.user.email.as_str().into(), s.user.org.as_str().into()))
        .await
        .is_err()
    {
        tracing::error!("audit writer stopped: a download was not recorded");
    }
    if plan.not_modified {
        return plan.respond(None);
    }
    let path = &plan.chosen().path;
    match state.results.object(&plan.release, path).await {
        // The router's request-id layer keeps an id a response already has, so the
        // placeholder is replaced here by the one it gave the request.
        Ok(Some(bytes)) => match headers.get(crate::REQUEST_ID) {
            Some(id) => with_request_id(plan.respond(Some(bytes)), id.clone()),
            None => plan.respond(Some(bytes)),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, "no such download"),
        Err(e) => unavailable(&e, path),
    }
}

/// The route template the fast path's requests are counted under.
pub const FAST_ROUTE: &str = "/api/v1/results/{kind}/{file} (fast path)";

/// The hot path of results morning, ahead of the router: a signed-in user's download whose
/// session needs nothing written back and whose file is already in memory is answered here,
/// with the same checks as the handlers (session, admission, permissions, rate limits,
/// embargo, authorisation, audit) and none of the general middleware's per-request work.
/// None hands the request to the router, which covers every other case the long way.
pub async fn fast_download(
    state: &AppState,
    req: &axum::http::request::Parts,
    ip: std::net::IpAddr,
    memo: Option<&crate::auth::session::SessionMemo>,
) -> Option<Response> {
    if req.method != axum::http::Method::GET {
        return None;
    }
    let rest = req.uri.path().strip_prefix("/api/v1/results/")?;
    let (kind, file) = rest.split_once('/')?;
    let target = match kind {
        "school" => Target::School,
        "la" => Target::La,
        "trust" => Target::Trust,
        _ => return None,
    };
    // Variants made on request (a query, a summary) go the long way.
    if file.contains(['/', '%']) || file.ends_with("-summary.csv") || req.uri.query().is_some() {
        return None;
    }
    let now = state.clock.now();
    let session = crate::auth::session::signed_in_as_is(state, &req.headers, memo, now)?;
    let Ok(_permit) = state.gates.downloads.try_acquire() else {
        return Some(crate::protect::busy("download"));
    };
    let plan = plan(state, &session.user, file, &req.headers, target, now);
    // Anything that must wait goes the long way before the rate limits count this request: a
    // miss (where concurrent misses coalesce into one read), or a full audit queue.
    let bytes = match &plan {
        Ok(p) if !p.not_modified => Some(state.results.cached_at(&p.chosen().key).await?),
        _ => None,
    };
    let audit = match state.audit_tx.try_reserve() {
        Ok(permit) => Some(permit),
        Err(tokio::sync::mpsc::error::TrySendError::Full(())) => return None,
        Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => {
            tracing::error!("audit writer stopped: a download was not recorded");
            None
        }
    };
    let ip_limit = match memo {
        Some(m) => m.ip_limiter(&state.limits, ip),
        None => state.limits.ip(ip),
    };
    if let Err(wait) = state
        .limits
        .check_held(&session.user_limit, &session.org_limit, &ip_limit)
    {
        return Some(crate::protect::too_many(wait));
    }
    let plan = match plan {
        Ok(p) => p,
        Err(refusal) => return Some(refusal.into_response()),
    };
    if let Some(permit) = audit {
        permit.send(plan.audit_event(session.actor.clone(), session.org.clone()));
    }
    Some(plan.respond(bytes))
}

pub type AuditEvent = db::Access;

/// Write access records in the background, in arrival order, many to a statement: one
/// statement per batch keeps up with downloads where one per row could not. After the first
/// record of a batch the writer lingers `AUDIT_LINGER` so a busy stream gathers into a few
/// large statements a second rather than many small ones (each of which wakes the database
/// thread): on results morning that is the difference between the writer costing a fifth of
/// the CPU and almost nothing. A record waits at most that long before it is written.
pub fn spawn_audit_writer(db: db::Db, mut rx: tokio::sync::mpsc::Receiver<AuditEvent>) {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        while rx.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
            if batch.len() < AUDIT_BATCH {
                tokio::time::sleep(AUDIT_LINGER).await;
                while batch.len() < AUDIT_BATCH {
                    let room = AUDIT_BATCH - batch.len();
                    let more: Vec<AuditEvent> = std::iter::from_fn(|| rx.try_recv().ok())
                        .take(room)
                        .collect();
                    if more.is_empty() {
                        break;
                    }
                    batch.extend(more);
                }
            }
            if let Err(err) = db::access_batch(&db, &batch).await {
                tracing::error!(error = %err, rows = batch.len(), "writing access records");
            }
            batch.clear();
        }
    });
}

/// Most access records in one statement.
const AUDIT_BATCH: usize = 4096;
/// How long the writer gathers records after the first of a batch.
const AUDIT_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// One incoming pupil as a KS3 school knows them.
/// KS3 schools find incoming pupils' KS2 results (the rules are in `ks3`).
async fn ks3_lookup(
    State(state): State<AppState>,
    s: Signed,
    addr: Addr,
    axum::Json(asked): axum::Json<Vec<Ks3Query>>,
) -> Response {
    if asked.len() > KS3_MAX_PUPILS && s.user.may(Action::Ks3Lookup) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {KS3_MAX_PUPILS} pupils per lookup"),
        );
    }
    let release = match crate::ks3::admit(&state, &s.user, ClientAddr::ip_of(addr)) {
        Ok(r) => r,
        Err(Closed::NoPermission) => {
            return error(
                StatusCode::FORBIDDEN,
                "only KS3 school users can look up incoming pupils",
            );
        }
        Err(Closed::NoRelease) => {
            return error(StatusCode::NOT_FOUND, "no results have been published");
        }
        Err(Closed::NotOpen(at)) => return not_open_yet(at, "KS3 lookups open at"),
        Err(Closed::RateLimited(wait)) => return crate::protect::too_many(wait),
    };
    let found = crate::ks3::lookup(&release, &asked);
    crate::ks3::record(&state, &s.user, &release, &asked, &found).await;
    let mut r = Response::new(Body::from(found.csv()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    r
}
