//! `orgs import`: schools, LAs and trusts from an intake's `schools` and `las` files (CSV or
//! Parquet, the data contract's columns) into the portal database. Every row is checked first;
//! any problem imports nothing. Re-running updates changed details in place.

use std::collections::BTreeMap;
use std::path::Path;

use nca_pipeline::domain::{LaCode, Laestab};
use nca_pipeline::intake::{self, Table};
use nca_pipeline::report::Problem;

use crate::auth::roles::OrgKind;
use crate::db::{self, OrgImport};

/// Called for each row: (file name, row number, cells, problems found).
type RowFn<'f> = dyn FnMut(&str, u64, &[intake::Cell<'_>], &mut Vec<Problem>) + 'f;

/// Read and check the organisations of an intake folder.
pub fn read(dir: &Path) -> Result<Vec<OrgImport>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out: BTreeMap<String, OrgImport> = BTreeMap::new();
    let load = |table: Table, f: &mut RowFn<'_>| match intake::find(dir, table) {
        Ok(Some(tf)) => {
            let mut bad = Vec::new();
            let mut local = Vec::new();
            if let Err(p) = intake::for_each_row(
                &tf,
                |row, cells| f(&tf.name, row, cells, &mut local),
                &mut |p| bad.push(p),
            ) {
                bad.push(p);
            }
            bad.extend(local);
            bad
        }
        Ok(None) => vec![Problem::file(
            &format!("{}.csv", table.name()),
            "missing: the intake has no such file (CSV or Parquet)",
        )],
        Err(p) => vec![p],
    };
    let mut las = Vec::new();
    problems.extend(load(Table::Las, &mut |file, row, c, bad| {
        let code = c[0].text();
        match LaCode::parse(&code) {
            Ok(_) if c[1].text().trim().is_empty() => bad.push(Problem::cell(
                file,
                row,
                "name",
                "",
                "missing: a name is required",
            )),
            Ok(_) => las.push(OrgImport {
                id: code.to_string(),
                kind: OrgKind::La,
                name: c[1].text().trim().to_string(),
                la_code: Some(code.to_string()),
                trust_uid: None,
                urn: None,
                phase: None,
                school_type: None,
            }),
            Err(reason) => bad.push(Problem::cell(file, row, "la_code", &code, reason)),
        }
    }));
    let la_codes: std::collections::HashSet<String> = las.iter().map(|l| l.id.clone()).collect();
    for l in las {
        out.insert(l.id.clone(), l);
    }
    let mut trusts: BTreeMap<String, String> = BTreeMap::new();
    let mut schools = Vec::new();
    problems.extend(load(Table::Schools, &mut |file, row, c, bad| {
        // urn, laestab, name, la_code, phase, type, trust_uid, trust_name
        let t = |i: usize| c[i].text().trim().to_string();
        let laestab = t(1);
        if let Err(reason) = Laestab::parse(&laestab) {
            bad.push(Problem::cell(file, row, "laestab", &laestab, reason));
            return;
        }
        if t(2).is_empty() {
            bad.push(Problem::cell(
                file,
                row,
                "name",
                "",
                "missing: a name is required",
            ));
            return;
        }
        let la = t(3);
        if !la_codes.contains(&la) {
            bad.push(Problem::cell(
                file,
                row,
                "la_code",
                &la,
                "unknown LA: not in the las file",
            ));
            return;
        }
        let phase = t(4);
        let kind = match phase.as_str() {
            "primary" | "middle" | "all_through" => OrgKind::Ks2School,
            "secondary" => OrgKind::Ks3School,
            _ => {
                bad.push(Problem::cell(
                    file,
                    row,
                    "phase",
                    &phase,
                    "unknown phase: expected primary, middle, secondary or all_through",
                ));
                return;
            }
        };
        let trust = t(6);
        if !trust.is_empty() {
            if t(7).is_empty() {
                bad.push(Problem::cell(
                    file,
                    row,
                    "trust_name",
                    "",
                    "missing: a trust needs a name",
                ));
                return;
            }
            trusts.insert(trust.clone(), t(7));
        }
        schools.push(OrgImport {
            id: laestab,
            kind,
            name: t(2),
            la_code: Some(la),
            trust_uid: (!trust.is_empty()).then_some(trust),
            urn: Some(t(0)),
            phase: Some(phase),
            school_type: Some(t(5)),
        });
    }));
    for s in schools {
        if out.contains_key(&s.id) {
            problems.push(Problem::file(
                "schools",
                format!("laestab {} appears twice or clashes with an LA code", s.id),
            ));
        }
        out.insert(s.id.clone(), s);
    }
    for (uid, name) in trusts {
        out.insert(
            uid.clone(),
            OrgImport {
                id: uid,
                kind: OrgKind::Mat,
                name,
                la_code: None,
                trust_uid: None,
                urn: None,
                phase: None,
                school_type: None,
            },
        );
    }
    out.insert("operator".into(), operator());
    if problems.is_empty() {
        Ok(out.into_values().collect())
    } else {
        Err(problems)
    }
}

/// The agency running the tests: always present.
pub fn operator() -> OrgImport {
    OrgImport {
        id: "operator".into(),
        kind: OrgKind::Operator,
        name: "Standards and Testing Agency".into(),
        la_code: None,
        trust_uid: None,
        urn: None,
        phase: None,
        school_type: None,
    }
}

/// Import an intake's organisations: (added, updated), or every problem found.
pub async fn import(db: &db::Db, dir: &Path, now: i64) -> anyhow::Result<(usize, usize)> {
    let orgs = read(dir).map_err(|problems| {
        let lines: Vec<String> = problems.iter().take(50).map(|p| format!("  {p}")).collect();
        anyhow::anyhow!(
            "{} problem(s) in {}; nothing imported:\n{}",
            problems.len(),
            dir.display(),
            lines.join("\n")
        )
    })?;
    Ok(db::upsert_orgs(db, &orgs, now).await?)
}
