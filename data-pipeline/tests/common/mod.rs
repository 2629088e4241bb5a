//! Helpers shared by the pipeline's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nca_pipeline::publish::{self, PublishError, PublishOptions, Published};
use nca_pipeline::report::Reporter;
use nca_pipeline::store::Store;
use time::OffsetDateTime;
use time::macros::datetime;

pub const OPENS: OffsetDateTime = datetime!(2024-07-09 07:30 +01:00);
pub const KS3_OPENS: OffsetDateTime = datetime!(2024-07-10 07:30 +01:00);

/// The hand-checked intake that covers every rule.
pub fn rules_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

/// Copy an intake folder so a test can change it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn options(dir: &Path) -> PublishOptions {
    PublishOptions {
        dir: dir.to_path_buf(),
        year: None,
        opens_at: OPENS,
        ks3_opens_at: KS3_OPENS,
        progress: false,
        concurrency: 8,
    }
}

pub async fn publish(store: &Store, dir: &Path) -> Result<Published, PublishError> {
    publish::publish(store, &options(dir), Arc::new(Reporter::in_memory())).await
}

/// Every file under a folder with its bytes, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}
