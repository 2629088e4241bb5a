//! One bad-input fixture per kind of error: the rules intake with one thing broken, and
//! the exact problem that must be reported. Publishing any of them writes nothing.

mod common;

use std::path::Path;

use common::*;
use nca_pipeline::report::{Problem, Reporter};

/// Copy the rules intake, apply `edit` to one file, and return the problems reported.
fn problems_after(file: &str, edit: impl FnOnce(String) -> String) -> Vec<Problem> {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&rules_fixture(), tmp.path());
    let path = tmp.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = edit(text);
    if new.is_empty() {
        std::fs::remove_file(&path).unwrap();
    } else {
        std::fs::write(&path, new).unwrap();
    }
    validate(tmp.path())
}

fn validate(dir: &Path) -> Vec<Problem> {
    let rep = Reporter::in_memory();
    nca_pipeline::validate::load(dir, None, &rep, None);
    rep.problems()
}

fn cell(file: &str, row: u64, column: &str, value: &str, reason: &str) -> Problem {
    Problem::cell(file, row, column, value, reason)
}

fn replace(from: &'static str, to: &'static str) -> impl FnOnce(String) -> String {
    move |s| {
        assert!(s.contains(from), "fixture lacks {from:?}");
        s.replacen(from, to, 1)
    }
}

#[test]
fn the_fixture_itself_is_clean() {
    assert_eq!(validate(&rules_fixture()), vec![]);
}

#[test]
fn missing_header_column() {
    let p = problems_after("pupils.csv", |s| s.replacen(",gender,", ",sex,", 1));
    assert_eq!(p, vec![Problem {
        file: "pupils.csv".into(),
        row: None,
        column: Some("gender".into()),
        value: None,
        reason: "header lacks column(s) gender; expected upn,laestab,surname,forename,dob,gender,reading_reg,gps_reg,maths_reg".into(),
    }]);
}

#[test]
fn wrong_upn_check_letter() {
    let p = problems_after("pupils.csv", replace("P999200113001,", "Z999200113001,"));
    assert_eq!(
        p[0],
        cell(
            "pupils.csv",
            1,
            "upn",
            "Z999200113001",
            "check letter should be P"
        )
    );
    // Its marks and TA then name an unknown pupil: each is reported too.
    assert!(
        p.iter()
            .any(|x| x.file == "marks.csv" && x.reason == "unknown pupil: not in pupils")
    );
}

#[test]
fn unknown_registration_code() {
    let p = problems_after(
        "pupils.csv",
        replace(
            "F,registered,registered,registered",
            "F,absent,registered,registered",
        ),
    );
    assert_eq!(
        p,
        vec![cell(
            "pupils.csv",
            1,
            "reading_reg",
            "absent",
            "not a known registration status; expected one of registered, below, future, previous, left, unregistered"
        )]
    );
}

#[test]
fn impossible_and_implausible_dates() {
    let p = problems_after("pupils.csv", |s| {
        s.replacen("2013-03-02", "2013-02-30", 1)
            .replacen("2013-03-03", "2001-03-03", 1)
    });
    assert_eq!(
        p,
        vec![
            cell(
                "pupils.csv",
                1,
                "dob",
                "2013-02-30",
                "not a real date in the form YYYY-MM-DD"
            ),
            cell(
                "pupils.csv",
                2,
                "dob",
                "2001-03-03",
                "not a plausible date of birth for a KS2 pupil in 2024 (expected 2010-09-01 to 2016-08-31)"
            ),
        ]
    );
}

#[test]
fn mark_above_max() {
    let p = problems_after("marks.csv", replace("reading,1,27", "reading,1,51"));
    assert_eq!(
        p,
        vec![cell(
            "marks.csv",
            3,
            "mark",
            "51",
            "must be between 0 and 50, the item's max_mark"
        )]
    );
}

#[test]
fn unknown_paper_and_item() {
    let p = problems_after("marks.csv", |s| {
        s.replacen("gps1,1,30", "gps3,1,30", 1)
            .replacen("gps2,1,5", "gps2,7,5", 1)
    });
    assert_eq!(
        p,
        vec![
            cell(
                "marks.csv",
                1,
                "paper",
                "gps3",
                "not a known paper; expected one of gps1, gps2, reading, maths1, maths2, maths3"
            ),
            cell(
                "marks.csv",
                2,
                "item",
                "7",
                "unknown item: not in items for gps2"
            ),
        ]
    );
}

#[test]
fn unknown_school() {
    let p = problems_after(
        "pupils.csv",
        replace("P999200113001,9992001", "P999200113001,9992999"),
    );
    assert_eq!(
        p[0],
        cell(
            "pupils.csv",
            1,
            "laestab",
            "9992999",
            "unknown school: not in schools"
        )
    );
}

#[test]
fn duplicate_mark() {
    let p = problems_after("marks.csv", |s| format!("{s}P999200113001,reading,1,20\n"));
    assert_eq!(
        p,
        vec![cell(
            "marks.csv",
            48,
            "item",
            "1",
            "duplicate mark for this pupil, paper reading and item"
        )]
    );
}

#[test]
fn pupil_in_two_schools() {
    let p = problems_after("pupils.csv", |s| {
        format!("{s}P999200113001,9992002,Able,Ann,2013-03-02,F,registered,registered,registered\n")
    });
    assert_eq!(
        p,
        vec![cell(
            "pupils.csv",
            14,
            "upn",
            "P999200113001",
            "pupil is already in school 9992001 (row 1); each pupil must be in exactly one school"
        )]
    );
}

#[test]
fn conversion_incomplete_and_decreasing() {
    let p = problems_after("conversion.csv", |s| {
        s.replacen("2024,reading,30,102\n", "", 1)
            .replacen("2024,gps,40,102", "2024,gps,40,98", 1)
    });
    assert_eq!(p, vec![
        Problem { file: "conversion.csv".into(), row: None, column: Some("raw_score".into()), value: Some("30".into()),
            reason: "conversion table for reading 2024 lacks these raw scores; every raw score 0..50 needs a row".into() },
        cell("conversion.csv", 91, "scaled_score", "98", "decreases: raw 40 converts lower than raw 39 (102) for gps 2024"),
    ]);
}

#[test]
fn items_not_adding_up_to_the_paper() {
    let p = problems_after("items.csv", replace("maths3,1,35", "maths3,1,34"));
    assert_eq!(
        p,
        vec![
            Problem {
                file: "items.csv".into(),
                row: None,
                column: Some("max_mark".into()),
                value: Some("34".into()),
                reason: "items for maths3 add up to 34 marks; the paper's maximum is 35".into()
            },
            // The one pupil with full maths3 marks now exceeds the item's maximum too.
            cell(
                "marks.csv",
                12,
                "mark",
                "35",
                "must be between 0 and 34, the item's max_mark"
            )
        ]
    );
}

#[test]
fn unknown_attendance_and_annulment_codes_and_ta() {
    let p = problems_after("attendance.csv", replace(",reading,A", ",reading,X"));
    assert_eq!(
        p,
        vec![cell(
            "attendance.csv",
            1,
            "code",
            "X",
            "not a known attendance code; expected one of A, U, J"
        )]
    );
    let p = problems_after("annulments.csv", replace(",maths,H", ",maths,Z"));
    assert_eq!(
        p,
        vec![cell(
            "annulments.csv",
            1,
            "code",
            "Z",
            "not a known annulment code; expected one of H, Q"
        )]
    );
    let p = problems_after("ta.csv", replace(",EXS,EXS", ",EXP,EXS"));
    assert_eq!(p[0].column.as_deref(), Some("writing"));
    assert_eq!(p[0].value.as_deref(), Some("EXP"));
}

#[test]
fn missing_required_table_and_both_formats() {
    let p = problems_after("items.csv", |_| String::new());
    assert_eq!(
        p[0],
        Problem::file(
            "items.csv",
            "required table items is missing: expected items.csv or items.parquet"
        )
    );
    let p = problems_after("las.parquet", |_| "not parquet".into());
    assert_eq!(
        p[0],
        Problem::file(
            "las.csv",
            "both las.csv and las.parquet are present; keep one"
        )
    );
}

#[test]
fn malformed_row_and_wrong_field_count() {
    let p = problems_after("las.csv", |s| format!("{s}123\n"));
    assert_eq!(
        p,
        vec![Problem {
            file: "las.csv".into(),
            row: Some(2),
            column: None,
            value: None,
            reason: "has 1 fields, the header has 2".into()
        }]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let p = problems_after("marks.csv", |s| s.replace(",reading,1,27", ",reading,1,99"));
    // Five pupils have reading 27 in the fixture: all five are reported.
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(
        p.iter()
            .all(|x| x.column.as_deref() == Some("mark") && x.value.as_deref() == Some("99"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_intake_is_refused_and_the_store_is_untouched() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = nca_pipeline::store::Store::open(store_dir.path().to_str().unwrap()).unwrap();
    let good = publish(&store, &rules_fixture()).await.unwrap();
    let before = snapshot(store_dir.path());

    let bad = tempfile::tempdir().unwrap();
    copy_dir(&rules_fixture(), bad.path());
    let marks = std::fs::read_to_string(bad.path().join("marks.csv")).unwrap();
    std::fs::write(
        bad.path().join("marks.csv"),
        marks.replacen("reading,1,27", "reading,1,51", 1),
    )
    .unwrap();
    match publish(&store, bad.path()).await {
        Err(nca_pipeline::publish::PublishError::Refused(1)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(snapshot(store_dir.path()), before, "nothing written");
    assert_eq!(store.current().await.unwrap(), Some(good.id));
}
