//! Where the portal meets the release pipeline: the operator exports what schools registered,
//! recorded and submitted as the data contract's `pupils`, `attendance` and `ta` tables, and
//! imports the census export that pre-fills pupil registration. Both through `nca-portal
//! activities` and (export) the operator's pages.

use std::path::Path as FsPath;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;

use super::registration::{self, Pupil};
use super::{ActivityPage, csv_download, csv_of, record_access};
use crate::AppState;
use crate::auth::roles::{Action, OrgKind};
use crate::auth::session::Signed;
use crate::db::{self, Db};
use crate::error::AppError;

/// Every registered pupil, in the contract's `pupils` columns.
pub async fn pupils_csv(db: &Db, year: i32) -> sqlx::Result<String> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT * FROM reg_pupils WHERE cycle = $1 ORDER BY laestab, upn")
        .bind(year as i64)
        .fetch_all(db)
        .await?;
    Ok(csv_of(
        &[
            "upn",
            "laestab",
            "surname",
            "forename",
            "dob",
            "gender",
            "reading_reg",
            "gps_reg",
            "maths_reg",
        ],
        rows.iter().map(|r| {
            [
                "upn",
                "laestab",
                "surname",
                "forename",
                "dob",
                "gender",
                "reading_reg",
                "gps_reg",
                "maths_reg",
            ]
            .iter()
            .map(|c| r.get::<String, _>(*c))
            .collect()
        }),
    ))
}

pub async fn attendance_csv(db: &Db, year: i32) -> sqlx::Result<String> {
    let rows = super::attendance::all_codes(db, year).await?;
    Ok(csv_of(
        &["upn", "paper", "code"],
        rows.into_iter().map(|(a, b, c)| vec![a, b, c]),
    ))
}

pub async fn ta_csv(db: &Db, year: i32) -> sqlx::Result<String> {
    let rows = super::ta::all_codes(db, year).await?;
    Ok(csv_of(
        &["upn", "writing", "science"],
        rows.into_iter().map(|(a, b, c)| vec![a, b, c]),
    ))
}

/// Write `pupils.csv`, `attendance.csv` and `ta.csv` into `dir`; returns their row counts.
pub async fn write_all(db: &Db, year: i32, dir: &FsPath) -> anyhow::Result<[usize; 3]> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("pupils.csv", pupils_csv(db, year).await?),
        ("attendance.csv", attendance_csv(db, year).await?),
        ("ta.csv", ta_csv(db, year).await?),
    ];
    let mut counts = [0; 3];
    for (i, (name, body)) in files.iter().enumerate() {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
        counts[i] = body.lines().count().saturating_sub(1);
    }
    Ok(counts)
}

/// Pre-fill pupil registration from a census export (the contract's `pupils` columns; the
/// `*_reg` columns may be left empty for "registered"). Every row is checked, and every school
/// must be a KS2 school already imported; any problem and nothing is written. Pupils a school
/// already has are left as the school has them. Returns the pupils added.
pub async fn census(
    db: &Db,
    year: i32,
    file: &FsPath,
    now: i64,
) -> anyhow::Result<Result<usize, Vec<String>>> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let name = file.display().to_string();
    let (rows, problems) = registration::parse_csv(year, &bytes, None);
    let mut errors: Vec<String> = problems
        .iter()
        .map(|(row, col, val, why)| {
            format!(
                "{name}, row {row}{}{}: {why}",
                if col.is_empty() {
                    String::new()
                } else {
                    format!(", column {col}")
                },
                if val.is_empty() {
                    String::new()
                } else {
                    format!(" (\u{201c}{val}\u{201d})")
                }
            )
        })
        .collect();
    let mut by_school: std::collections::BTreeMap<String, Vec<Pupil>> = Default::default();
    let mut known = std::collections::HashMap::new();
    for (row, laestab, p) in rows {
        let ok = match known.get(&laestab) {
            Some(k) => *k,
            None => {
                let k = db::org(db, &laestab)
                    .await?
                    .is_some_and(|o| o.kind == OrgKind::Ks2School);
                known.insert(laestab.clone(), k);
                k
            }
        };
        if !ok {
            errors.push(format!("{name}, row {row}, column laestab: {laestab} is not an imported KS2 school (run `nca-portal orgs import` first)"));
        }
        by_school.entry(laestab).or_default().push(p);
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    let mut added = 0;
    let mut tx = db.begin().await?;
    for (laestab, list) in &by_school {
        for p in list {
            let r = sqlx::query(
                "INSERT INTO reg_pupils (cycle, laestab, upn, surname, forename, dob, gender, reading_reg, gps_reg, maths_reg, source, late, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'census', 0, $11) ON CONFLICT (cycle, laestab, upn) DO NOTHING",
            )
            .bind(year as i64)
            .bind(laestab)
            .bind(&p.upn)
            .bind(&p.surname)
            .bind(&p.forename)
            .bind(&p.dob)
            .bind(&p.gender)
            .bind(&p.reg[0])
            .bind(&p.reg[1])
            .bind(&p.reg[2])
            .bind(now)
            .execute(&mut *tx)
            .await?;
            added += r.rows_affected() as usize;
        }
    }
    tx.commit().await?;
    Ok(Ok(added))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/operator/export", get(page))
        .route("/operator/export/{file}", get(download))
}

async fn page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let mut p = ActivityPage::new(&state, &s, "Export for the release pipeline");
    p.back = Some("/operator/activities".into());
    p.intro.push("What schools have registered, recorded and submitted so far, in the data contract's format: put these files in the cycle's intake folder beside the marking supplier's files and run nca-pipeline validate. The command line does the same: nca-portal activities export --out DIR.".into());
    p.links = vec![
        (
            "/operator/export/pupils.csv".into(),
            "pupils.csv: every registered pupil".into(),
        ),
        (
            "/operator/export/attendance.csv".into(),
            "attendance.csv: pupils who did not sit a paper normally".into(),
        ),
        (
            "/operator/export/ta.csv".into(),
            "ta.csv: teacher assessment".into(),
        ),
    ];
    Ok(p.respond())
}

async fn download(
    State(state): State<AppState>,
    s: Signed,
    Path(file): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::Operate)?;
    let body = match file.as_str() {
        "pupils.csv" => pupils_csv(&state.db, state.cycle.year).await?,
        "attendance.csv" => attendance_csv(&state.db, state.cycle.year).await?,
        "ta.csv" => ta_csv(&state.db, state.cycle.year).await?,
        _ => return Err(AppError::NotFound),
    };
    record_access(&state, &s.user, "activities-exported", file.clone()).await;
    Ok(csv_download(&file, body))
}
