//! Validation problems: each names the file, row, column, value and reason. The reporter
//! streams every problem to a readable text file and a machine-readable CSV, keeping only
//! counts and the first few in memory, so a flood of errors stays in bounded memory.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One thing wrong with an intake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// File name within the intake, e.g. `pupils.csv`.
    pub file: String,
    /// 1-based data row (the first row after the header is 1); `None` for the file or header.
    pub row: Option<u64>,
    pub column: Option<String>,
    pub value: Option<String>,
    pub reason: String,
}

impl Problem {
    pub fn file(file: &str, reason: impl Into<String>) -> Problem {
        Problem {
            file: file.into(),
            row: None,
            column: None,
            value: None,
            reason: reason.into(),
        }
    }
    pub fn cell(
        file: &str,
        row: u64,
        column: &str,
        value: &str,
        reason: impl Into<String>,
    ) -> Problem {
        Problem {
            file: file.into(),
            row: Some(row),
            column: Some(column.into()),
            value: Some(value.into()),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        match self.row {
            Some(r) => write!(f, " row {r}")?,
            None if self.column.is_some() => write!(f, " header")?,
            None => {}
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        if let Some(v) = &self.value {
            write!(f, ", value {v:?}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// How many problems are kept in memory for printing (all are written to the files).
const KEEP_IN_MEMORY: usize = 200;

struct Inner {
    count: u64,
    first: Vec<Problem>,
    by_file: BTreeMap<String, u64>,
    files: Option<(BufWriter<File>, csv::Writer<BufWriter<File>>)>,
    keep_all: bool,
    io_error: Option<std::io::Error>,
}

/// Collects problems from any thread.
pub struct Reporter {
    inner: Mutex<Inner>,
    paths: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("count", &self.count())
            .finish()
    }
}

impl Reporter {
    /// Keep every problem in memory (tests, small intakes).
    pub fn in_memory() -> Reporter {
        Reporter::new(None, true)
    }

    /// Stream every problem to `<stem>.txt` and `<stem>.csv`.
    pub fn to_files(stem: &Path) -> std::io::Result<Reporter> {
        let txt = stem.with_extension("txt");
        let csv_path = stem.with_extension("csv");
        if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let t = BufWriter::new(File::create(&txt)?);
        let mut c = csv::Writer::from_writer(BufWriter::new(File::create(&csv_path)?));
        c.write_record(["file", "row", "column", "value", "reason"])?;
        let mut r = Reporter::new(Some((t, c)), false);
        r.paths = Some((txt, csv_path));
        Ok(r)
    }

    fn new(
        files: Option<(BufWriter<File>, csv::Writer<BufWriter<File>>)>,
        keep_all: bool,
    ) -> Reporter {
        Reporter {
            inner: Mutex::new(Inner {
                count: 0,
                first: Vec::new(),
                by_file: BTreeMap::new(),
                files,
                keep_all,
                io_error: None,
            }),
            paths: None,
        }
    }

    pub fn push(&self, p: Problem) {
        let mut g = self.inner.lock().expect("reporter poisoned");
        let g = &mut *g;
        g.count += 1;
        *g.by_file.entry(p.file.clone()).or_default() += 1;
        if let Some((t, c)) = &mut g.files {
            let row = p.row.map(|r| r.to_string()).unwrap_or_default();
            let res = writeln!(t, "{p}").and_then(|_| {
                c.write_record([
                    p.file.as_str(),
                    row.as_str(),
                    p.column.as_deref().unwrap_or(""),
                    p.value.as_deref().unwrap_or(""),
                    p.reason.as_str(),
                ])
                .map_err(std::io::Error::other)
            });
            if let Err(e) = res {
                g.io_error.get_or_insert(e);
            }
        }
        if g.keep_all || g.first.len() < KEEP_IN_MEMORY {
            g.first.push(p);
        }
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().expect("reporter poisoned").count
    }

    /// Problems kept in memory: all of them for `in_memory`, else the first few.
    pub fn problems(&self) -> Vec<Problem> {
        self.inner.lock().expect("reporter poisoned").first.clone()
    }

    pub fn counts_by_file(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .expect("reporter poisoned")
            .by_file
            .clone()
    }

    /// Paths of the text and CSV reports, when writing to files.
    pub fn paths(&self) -> Option<&(PathBuf, PathBuf)> {
        self.paths.as_ref()
    }

    /// Flush the report files, surfacing any write error met on the way.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut g = self.inner.lock().expect("reporter poisoned");
        if let Some(e) = g.io_error.take() {
            return Err(e);
        }
        if let Some((t, c)) = &mut g.files {
            t.flush()?;
            c.flush()?;
        }
        Ok(())
    }
}
