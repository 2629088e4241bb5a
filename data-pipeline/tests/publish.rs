//! Publishing is atomic: a store that fails on any write, or a process killed at any
//! moment, leaves the previous release current and byte-identical. Also: late results,
//! release listing and rollback.

mod common;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use futures::stream::BoxStream;
use nca_pipeline::publish::{self, PublishError};
use nca_pipeline::store::Store;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// A local store whose Nth put fails (a fake that exists only to inject the fault).
#[derive(Debug)]
struct FailingStore {
    inner: LocalFileSystem,
    puts: AtomicUsize,
    fail_at: usize,
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore(put {})", self.fail_at)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.puts.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(object_store::Error::Generic {
                store: "failing",
                source: "injected write failure".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn failing(dir: &std::path::Path, fail_at: usize) -> Store {
    let inner = LocalFileSystem::new_with_prefix(dir).unwrap();
    Store::from_object_store(
        Arc::new(FailingStore {
            inner,
            puts: AtomicUsize::new(0),
            fail_at,
        }),
        "",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_failing_on_any_write_leaves_the_previous_release_current_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let good = publish(
        &Store::open(dir.path().to_str().unwrap()).unwrap(),
        &rules_fixture(),
    )
    .await
    .unwrap();
    let before = snapshot(dir.path());
    // Every put of a publish: each object, then the manifest, then CURRENT.
    let total = good.objects + 2;
    for fail_at in [1, 2, total / 2, total - 1, total] {
        let store = failing(dir.path(), fail_at);
        let res = publish(&store, &rules_fixture()).await;
        assert!(
            matches!(res, Err(PublishError::Failed(_))),
            "put {fail_at} of {total} failed, yet: {res:?}"
        );
        assert_eq!(
            store.current().await.unwrap(),
            Some(good.id.clone()),
            "put {fail_at}: CURRENT moved"
        );
        let after = snapshot(dir.path());
        for (path, bytes) in &before {
            assert_eq!(
                after.get(path),
                Some(bytes),
                "put {fail_at}: {path} changed"
            );
        }
    }
    // None of the interrupted releases is current; those cut off before their manifest are
    // listed as incomplete and cannot be made current. (A failure on the CURRENT write itself
    // leaves a complete release that was simply never switched to.)
    let list = publish::releases(&Store::open(dir.path().to_str().unwrap()).unwrap())
        .await
        .unwrap();
    // (A failure on the very first put may leave no folder at all.)
    assert!((3..=6).contains(&list.len()), "{} releases", list.len());
    assert!(list.iter().filter(|r| r.id != good.id).all(|r| !r.current));
    assert_eq!(
        list.iter().filter(|r| r.manifest.is_some()).count(),
        2,
        "the good one and the one cut off at CURRENT"
    );
    let incomplete = list.iter().find(|r| r.manifest.is_none()).unwrap();
    let err = publish::rollback(
        &Store::open(dir.path().to_str().unwrap()).unwrap(),
        &incomplete.id,
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("incomplete"), "{err:#}");
}

#[test]
fn killing_the_process_mid_publish_leaves_the_previous_release_current() {
    use nca_pipeline::generate::{GenOptions, generate};
    let tmp = tempfile::tempdir().unwrap();
    let intake = tmp.path().join("intake");
    generate(&GenOptions {
        out: intake.clone(),
        schools: 150,
        seed: 3,
        year: 2025,
        script_pupils: 0,
        progress: false,
    })
    .unwrap();
    let store_dir = tmp.path().join("store");
    let bin = env!("CARGO_BIN_EXE_nca-pipeline");
    let run = || {
        let mut c = std::process::Command::new(bin);
        c.args([
            "publish",
            intake.to_str().unwrap(),
            "--store",
            store_dir.to_str().unwrap(),
            "--opens-at",
            "now",
            "--ks3-opens-at",
            "now",
            "--report",
        ])
        .arg(tmp.path().join("report"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        c
    };
    let status = run().status().unwrap();
    assert!(status.success());
    let current = std::fs::read_to_string(store_dir.join("CURRENT")).unwrap();
    let release = store_dir.join("releases").join(current.trim());
    let before = snapshot(&release);
    // Time a whole publish, then kill later ones at points spread across it.
    let t = std::time::Instant::now();
    assert!(run().status().unwrap().success());
    let whole = t.elapsed();
    let latest = std::fs::read_to_string(store_dir.join("CURRENT")).unwrap();
    let before_latest = snapshot(&store_dir.join("releases").join(latest.trim()));
    for fraction in [0.1, 0.3, 0.5, 0.7, 0.9] {
        let mut child = run().spawn().unwrap();
        std::thread::sleep(whole.mul_f64(fraction));
        child.kill().unwrap();
        child.wait().unwrap();
        let now = std::fs::read_to_string(store_dir.join("CURRENT")).unwrap();
        if now != latest {
            // The publish won the race and finished: that is a complete, valid release.
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    store_dir
                        .join("releases")
                        .join(now.trim())
                        .join("manifest.json"),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(m["id"].as_str(), Some(now.trim()));
            continue;
        }
        assert_eq!(
            snapshot(&store_dir.join("releases").join(latest.trim())),
            before_latest,
            "killed at {fraction}: current release changed"
        );
    }
    assert_eq!(snapshot(&release), before, "the first release is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn late_results_make_a_new_release_listing_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store").to_str().unwrap()).unwrap();
    let first = publish(&store, &rules_fixture()).await.unwrap();
    assert!(first.changes.schools.is_empty());
    // Ivy Ince's reading script was missing (M); it has now been marked: 33 converts to 104.
    let late = tmp.path().join("late");
    copy_dir(&rules_fixture(), &late);
    let marks = std::fs::read_to_string(late.join("marks.csv")).unwrap();
    std::fs::write(
        late.join("marks.csv"),
        format!("{marks}C999200113009,reading,1,33\n"),
    )
    .unwrap();
    let second = publish(&store, &late).await.unwrap();
    assert_eq!(second.previous.as_deref(), Some(first.id.as_str()));
    assert_eq!(second.changes.schools.len(), 1);
    let school = &second.changes.schools[0];
    assert_eq!(school.laestab, "9992001");
    assert_eq!(school.pupils.len(), 1);
    let p = &school.pupils[0];
    assert_eq!(
        (p.upn.as_str(), p.kind.as_str()),
        ("C999200113009", "changed")
    );
    let fields: Vec<(&str, &str, &str)> = p
        .fields
        .iter()
        .map(|f| (f.column.as_str(), f.before.as_str(), f.after.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("reading_raw", "", "33"),
            ("reading_result", "M", "104"),
            ("reading_met", "", "AS"),
            ("reading_high", "", "N"),
            ("rwm_met", "", "Y"),
        ]
    );
    // The list is in the release too, and the new release is current.
    let stored: publish::Changes = serde_json::from_slice(
        &store
            .get_release_object(&second.id, "changes.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, second.changes);
    assert_eq!(store.current().await.unwrap(), Some(second.id.clone()));

    // Rollback makes the first current again; releases shows which is current.
    publish::rollback(&store, &first.id).await.unwrap();
    let list = publish::releases(&store).await.unwrap();
    assert_eq!(
        list.iter()
            .filter(|r| r.current)
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![first.id.clone()]
    );
    let csv = publish::export(&store, &publish::Target::School("9992001".into()), false)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&csv).contains("C999200113009,Ince,Ivy,2013-03-01,F,,M,,,"));
    assert!(publish::rollback(&store, "no-such-release").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_times_must_be_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
    let mut opts = options(&rules_fixture());
    opts.ks3_opens_at = OPENS - time::Duration::days(1);
    let res = publish::publish(
        &store,
        &opts,
        Arc::new(nca_pipeline::report::Reporter::in_memory()),
    )
    .await;
    assert!(format!("{:?}", res.unwrap_err()).contains("before --opens-at"));
    assert_eq!(store.current().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn reviewed_marks_become_a_corrected_intake_and_a_late_release() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store").to_str().unwrap()).unwrap();
    let first = publish(&store, &rules_fixture()).await.unwrap();
    // A review raised Ann Able's reading mark from 27 to 29, and marked Ivy Ince's reading
    // script, which had been missing.
    let corrections = tmp.path().join("corrections.csv");
    std::fs::write(
        &corrections,
        "upn,paper,item,mark\nP999200113001,reading,1,29\nC999200113009,reading,1,33\n",
    )
    .unwrap();
    let fixed = tmp.path().join("corrected");
    let before = snapshot(&rules_fixture());
    let n = nca_pipeline::correct::correct(&rules_fixture(), &corrections, &fixed).unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        snapshot(&rules_fixture()),
        before,
        "the source intake is untouched"
    );
    // A second run into the same folder is refused rather than overwriting it.
    assert!(nca_pipeline::correct::correct(&rules_fixture(), &corrections, &fixed).is_err());
    let second = publish(&store, &fixed).await.unwrap();
    assert_eq!(second.previous.as_deref(), Some(first.id.as_str()));
    let school = &second.changes.schools[0];
    type Change<'a> = (&'a str, &'a str, &'a str);
    let changed: Vec<(&str, Vec<Change>)> = school
        .pupils
        .iter()
        .map(|p| {
            (
                p.upn.as_str(),
                p.fields
                    .iter()
                    .filter(|f| f.column == "reading_raw")
                    .map(|f| (f.column.as_str(), f.before.as_str(), f.after.as_str()))
                    .collect(),
            )
        })
        .collect();
    assert!(
        changed.contains(&("P999200113001", vec![("reading_raw", "27", "29")])),
        "{changed:?}"
    );
    assert!(
        changed.contains(&("C999200113009", vec![("reading_raw", "", "33")])),
        "{changed:?}"
    );
}
