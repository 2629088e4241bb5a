//! The object store and the release layout in it: the only code that names object paths.
//!
//! ```text
//! <prefix>/CURRENT                         the current release's id (the one pointer)
//! <prefix>/releases/<id>/manifest.json     written last inside a release: it marks it complete
//! <prefix>/releases/<id>/...               every precomputed object of the release
//! <prefix>/<object_key>                    script page images, as the scripts manifest names them
//! ```
//! A release's objects are never rewritten once its manifest exists.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A handle on the store a release is published to.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

/// One object of a release in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub size: u64,
    pub sha256: String,
}

/// What a release holds; written last, it marks the release complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub cycle_year: i32,
    /// When KS2 schools, LAs and MATs may see results.
    #[serde(with = "time::serde::rfc3339")]
    pub opens_at: OffsetDateTime,
    /// When KS3 schools may look up incoming pupils.
    #[serde(with = "time::serde::rfc3339")]
    pub ks3_opens_at: OffsetDateTime,
    /// The release that was current when this one was published.
    pub previous: Option<String>,
    pub counts: BTreeMap<String, u64>,
    /// Every object, by path relative to the release folder.
    pub objects: BTreeMap<String, ObjectEntry>,
}

/// Names of objects inside a release folder.
pub mod layout {
    pub const MANIFEST: &str = "manifest.json";
    pub const RESULTS: &str = "results.parquet";
    pub const SUMMARIES: &str = "summaries.json";
    pub const ORGANISATIONS: &str = "organisations.json";
    pub const UPN_INDEX: &str = "upn-index.parquet";
    pub const SCRIPTS_INDEX: &str = "scripts-index.parquet";
    pub const CHANGES: &str = "changes.json";
    pub const CYCLE: &str = "cycle.json";

    pub fn school_csv(laestab: &str) -> String {
        format!("school/{laestab}.csv")
    }
    pub fn school_ctf(laestab: &str) -> String {
        format!("school/{laestab}.ctf.xml")
    }
    pub fn school_qla(laestab: &str) -> String {
        format!("school/{laestab}.qla.csv")
    }
    pub fn school_scripts(laestab: &str) -> String {
        format!("school/{laestab}.scripts.csv")
    }
    pub fn school_item_marks(laestab: &str) -> String {
        format!("school/{laestab}.marks.csv")
    }
    pub fn la_csv(code: &str) -> String {
        format!("la/{code}.csv")
    }
    pub fn trust_csv(uid: &str) -> String {
        format!("trust/{uid}.csv")
    }
    /// A file uploaded to the portal for an activity (evidence), outside any release.
    pub fn activity_file(year: i32, activity: &str, org: &str, id: &str) -> String {
        format!("portal/{year}/{activity}/{org}/{id}")
    }
    /// A file the operator publishes for an activity's audience (test materials).
    pub fn material(year: i32, activity: &str, id: &str) -> String {
        format!("portal/{year}/{activity}/materials/{id}")
    }
    /// The precompressed variants of a download sit beside it.
    pub fn gzip(path: &str) -> String {
        format!("{path}.gz")
    }
    pub fn brotli(path: &str) -> String {
        format!("{path}.br")
    }
}

const CURRENT: &str = "CURRENT";

impl Store {
    /// Open a store from a URL: a plain path or `file://` for a local folder (created if
    /// absent), or `s3://bucket/prefix` with credentials, region and endpoint from the
    /// standard `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP` for an
    /// S3-compatible server).
    pub fn open(url: &str) -> anyhow::Result<Store> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("store URL {url:?} names no bucket");
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .with_context(|| format!("cannot open S3 store {url}"))?;
            return Ok(Store {
                inner: Arc::new(s3),
                prefix: prefix.trim_matches('/').to_string(),
                url: url.into(),
            });
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => p,
            None if url.contains("://") => {
                bail!("unsupported store URL {url:?}: use a path, file:// or s3://")
            }
            None => url,
        };
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create store folder {path}"))?;
        let fs = LocalFileSystem::new_with_prefix(path)
            .with_context(|| format!("cannot open store folder {path}"))?;
        Ok(Store {
            inner: Arc::new(fs),
            prefix: String::new(),
            url: url.into(),
        })
    }

    /// Wrap any object store (tests use this to inject faults).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, prefix: &str) -> Store {
        Store {
            inner,
            prefix: prefix.trim_matches('/').to_string(),
            url: format!("memory:{prefix}"),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn release_path(&self, id: &str, rel: &str) -> Path {
        self.path(&format!("releases/{id}/{rel}"))
    }

    pub async fn put_release_object(
        &self,
        id: &str,
        rel: &str,
        bytes: Bytes,
    ) -> anyhow::Result<()> {
        let p = self.release_path(id, rel);
        self.inner
            .put(&p, PutPayload::from_bytes(bytes))
            .await
            .with_context(|| format!("writing {p}"))?;
        Ok(())
    }

    pub async fn get_release_object(&self, id: &str, rel: &str) -> anyhow::Result<Bytes> {
        let p = self.release_path(id, rel);
        let r = self
            .inner
            .get(&p)
            .await
            .with_context(|| format!("reading {p}"))?;
        r.bytes().await.with_context(|| format!("reading {p}"))
    }

    /// Put an object at a key relative to the store (script pages).
    pub async fn put_key(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        let p = self.path(key);
        self.inner
            .put(&p, PutPayload::from_bytes(bytes))
            .await
            .with_context(|| format!("writing {p}"))?;
        Ok(())
    }

    /// Read an object at a key relative to the store (script pages).
    pub async fn get_key(&self, key: &str) -> anyhow::Result<Bytes> {
        let p = self.path(key);
        let r = self
            .inner
            .get(&p)
            .await
            .with_context(|| format!("reading {p}"))?;
        r.bytes().await.with_context(|| format!("reading {p}"))
    }

    /// Whether an object exists at a key relative to the store.
    pub async fn has_key(&self, key: &str) -> anyhow::Result<bool> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The current release's id, if any release was ever made current.
    pub async fn current(&self) -> anyhow::Result<Option<String>> {
        match self.inner.get(&self.path(CURRENT)).await {
            Ok(r) => {
                let b = r.bytes().await?;
                let id = String::from_utf8(b.to_vec())
                    .context("CURRENT is not text")?
                    .trim()
                    .to_string();
                Ok(Some(id))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context("reading CURRENT")),
        }
    }

    /// Make a release current: one atomic object write.
    pub async fn set_current(&self, id: &str) -> anyhow::Result<()> {
        self.inner
            .put(&self.path(CURRENT), PutPayload::from(format!("{id}\n")))
            .await
            .context("writing CURRENT")?;
        Ok(())
    }

    pub async fn manifest(&self, id: &str) -> anyhow::Result<Manifest> {
        let b = self.get_release_object(id, layout::MANIFEST).await?;
        serde_json::from_slice(&b).with_context(|| format!("release {id}: manifest is not valid"))
    }

    /// Ids of every release folder, complete (with a manifest) or not, oldest first.
    pub async fn release_ids(&self) -> anyhow::Result<Vec<String>> {
        let base = self.path("releases");
        let listing = self
            .inner
            .list_with_delimiter(Some(&base))
            .await
            .context("listing releases")?;
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every object path inside a release folder, relative to it.
    pub async fn list_release(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let base = self.path(&format!("releases/{id}"));
        let base_s = format!("{base}/");
        let objs: Vec<_> = self.inner.list(Some(&base)).try_collect().await?;
        Ok(objs
            .into_iter()
            .map(|o| {
                o.location
                    .to_string()
                    .trim_start_matches(&base_s)
                    .to_string()
            })
            .collect())
    }
}
