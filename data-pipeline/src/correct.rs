//! A corrected intake for the late-results path: the reviews of marking's changed marks
//! (`upn,paper,item,mark`, as `nca-portal reviews corrections` writes them) applied to an
//! intake's marks, written as a new intake folder beside the old one. Publishing it makes a
//! new release whose `changes.json` lists the pupils whose results moved, and the schools are
//! told. The source intake is never modified; a bad corrections file writes nothing.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};

use crate::domain::{Paper, Upn};
use crate::intake::{self, Table};
use crate::report::Problem;

/// One corrected mark, from row `row` of the corrections file.
#[derive(Debug, Clone)]
struct Correction {
    row: u64,
    mark: u8,
    used: bool,
}

/// Read and check a corrections file; every problem, each naming its row and column.
fn read(file: &Path) -> anyhow::Result<HashMap<(String, String, String), Correction>> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rdr =
        csv::Reader::from_path(file).with_context(|| format!("opening {}", file.display()))?;
    let header: Vec<String> = rdr.headers()?.iter().map(String::from).collect();
    if header != ["upn", "paper", "item", "mark"] {
        bail!(
            "{name} header: expected upn,paper,item,mark, found {}",
            header.join(",")
        );
    }
    let mut out = HashMap::new();
    let mut problems: Vec<Problem> = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let row = i as u64 + 1;
        let rec = rec.with_context(|| format!("{name} row {row}"))?;
        let cell = |n: usize| rec.get(n).unwrap_or("").trim().to_string();
        let (upn, paper, item, mark) = (cell(0), cell(1), cell(2), cell(3));
        if let Err(e) = Upn::parse(&upn) {
            problems.push(Problem::cell(&name, row, "upn", &upn, e));
        }
        if let Err(e) = Paper::parse(&paper) {
            problems.push(Problem::cell(&name, row, "paper", &paper, e));
        }
        if item.is_empty() {
            problems.push(Problem::cell(&name, row, "item", &item, "empty"));
        }
        let m = match mark.parse::<u8>() {
            Ok(m) => m,
            Err(_) => {
                problems.push(Problem::cell(
                    &name,
                    row,
                    "mark",
                    &mark,
                    "not a whole number of marks",
                ));
                continue;
            }
        };
        out.insert(
            (upn, paper, item),
            Correction {
                row,
                mark: m,
                used: false,
            },
        );
    }
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        bail!("{} problem(s):\n{}", list.len(), list.join("\n"));
    }
    Ok(out)
}

/// Write `out` as `intake` with the corrections applied; returns how many marks changed or
/// were added. `out` must not exist yet.
pub fn correct(intake_dir: &Path, corrections: &Path, out: &Path) -> anyhow::Result<usize> {
    let mut fixes = read(corrections)?;
    if out.exists() {
        bail!("{} already exists: give a new folder", out.display());
    }
    let marks = intake::find(intake_dir, Table::Marks)
        .map_err(|p| anyhow::anyhow!("{p}"))?
        .with_context(|| format!("{} has no marks table", intake_dir.display()))?;
    let tmp = out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    // Every other table as it is.
    for entry in std::fs::read_dir(intake_dir)? {
        let entry = entry?;
        let path = entry.path();
        if !path.is_file() || path == marks.path {
            continue;
        }
        std::fs::copy(&path, tmp.join(entry.file_name()))
            .with_context(|| format!("copying {}", path.display()))?;
    }
    let mut w = csv::Writer::from_path(tmp.join("marks.csv"))?;
    w.write_record(Table::Marks.columns())?;
    let mut changed = 0;
    let mut write_err: Option<anyhow::Error> = None;
    let mut bad: Vec<Problem> = Vec::new();
    intake::for_each_row(
        &marks,
        |_, cells| {
            let text: Vec<String> = cells.iter().map(|c| c.text().trim().to_string()).collect();
            let key = (text[0].clone(), text[1].clone(), text[2].clone());
            let mark = match fixes.get_mut(&key) {
                Some(c) => {
                    c.used = true;
                    if c.mark.to_string() != text[3] {
                        changed += 1;
                    }
                    c.mark.to_string()
                }
                None => text[3].clone(),
            };
            if let Err(e) = w.write_record([&text[0], &text[1], &text[2], &mark])
                && write_err.is_none()
            {
                write_err = Some(e.into());
            }
        },
        &mut |p| bad.push(p),
    )
    .map_err(|p| anyhow::anyhow!("{p}"))?;
    if let Some(e) = write_err {
        return Err(e);
    }
    if let Some(p) = bad.first() {
        bail!("the intake's marks are not readable: {p}");
    }
    // Marks for items that had none (a late-marked script) are added.
    let mut added: Vec<_> = fixes.iter().filter(|(_, c)| !c.used).collect();
    added.sort_by_key(|(_, c)| c.row);
    for ((upn, paper, item), c) in added {
        w.write_record([upn, paper, item, &c.mark.to_string()])?;
        changed += 1;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_corrections_file_names_its_rows_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrections.csv");
        std::fs::write(
            &file,
            "upn,paper,item,mark\nZ801200001001,reading,1,1\nH801200001001,science,1,x\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        let e = correct(dir.path(), &file, &out).unwrap_err().to_string();
        assert!(e.contains("corrections.csv row 1, column upn"), "{e}");
        assert!(e.contains("corrections.csv row 2, column paper"), "{e}");
        assert!(e.contains("corrections.csv row 2, column mark"), "{e}");
        assert!(!out.exists());
    }
}
