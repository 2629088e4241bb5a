//! Validation and loading in one streaming pass: every table is checked against the data
//! contract, every problem is reported (never just the first), and what is valid is loaded
//! into an [`Intake`]. Item-level marks are streamed, in parallel by Parquet row group,
//! and only their aggregates are kept, so a national intake validates in bounded memory.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use indicatif::ProgressBar;

use crate::domain::*;
use crate::intake::{self, Cell, Format, Table, TableFile};
use crate::model::*;
use crate::report::{Problem, Reporter};

/// Load and validate the intake in `dir`. Problems go to `rep`; the intake is returned even
/// when there were problems (callers must check `rep.count()` before using it).
pub fn load(
    dir: &Path,
    year: Option<i32>,
    rep: &Reporter,
    progress: Option<&ProgressBar>,
) -> Intake {
    if !dir.is_dir() {
        rep.push(Problem::file(
            &dir.display().to_string(),
            "intake folder not found",
        ));
    }
    let mut files = HashMap::new();
    for t in Table::ALL {
        match intake::find(dir, t) {
            Ok(Some(tf)) => {
                files.insert(t, tf);
            }
            Ok(None) => {}
            Err(p) => rep.push(p),
        }
    }
    let mut v = Loader {
        rep,
        pupils_known: true,
        las: Vec::new(),
        la_index: HashMap::new(),
        trusts: Vec::new(),
        trust_index: HashMap::new(),
        schools: Vec::new(),
        school_index: HashMap::new(),
        pupils: Vec::new(),
        pupil_index: HashMap::new(),
        items: Vec::new(),
        item_index: HashMap::new(),
    };
    if let Some(tf) = files.get(&Table::Las) {
        v.load_las(tf);
    }
    if let Some(tf) = files.get(&Table::Schools) {
        v.load_schools(tf);
    }
    let conversion = match files.get(&Table::Conversion) {
        Some(tf) => v.load_conversion(tf, year),
        None => None,
    };
    let conversion = conversion.unwrap_or(ConversionTables {
        year: year.unwrap_or(0),
        scaled: Default::default(),
    });
    if let Some(tf) = files.get(&Table::Items) {
        v.load_items(tf);
    }
    if let Some(tf) = files.get(&Table::Pupils) {
        v.load_pupils(tf, conversion.year);
    }
    if let Some(tf) = files.get(&Table::Attendance) {
        v.load_attendance(tf);
    }
    if let Some(tf) = files.get(&Table::Annulments) {
        v.load_annulments(tf);
    }
    if let Some(tf) = files.get(&Table::Ta) {
        v.load_ta(tf);
    }
    let scripts = match files.get(&Table::Scripts) {
        Some(tf) => v.load_scripts(tf),
        None => Vec::new(),
    };
    let marks = match files.get(&Table::Marks) {
        Some(tf) => v.load_marks(tf, progress),
        None => {
            let mut t = MarkTotals::new(v.pupils.len(), v.schools.len(), v.items.len());
            t.item_marks = vec![crate::model::NO_MARK; v.pupils.len() * v.items.len()];
            t
        }
    };
    Intake {
        year: conversion.year,
        las: v.las,
        trusts: v.trusts,
        schools: v.schools,
        pupils: v.pupils,
        items: v.items,
        conversion,
        scripts,
        marks,
    }
}

/// One conversion table as read: per raw score, its conversion and row.
type TableRows = Vec<Option<(Conversion, u64)>>;

struct Loader<'r> {
    rep: &'r Reporter,
    /// False when the pupils file could not be read at all: rows elsewhere are then not
    /// checked against it, rather than each reported as an unknown pupil.
    pupils_known: bool,
    las: Vec<La>,
    la_index: HashMap<LaCode, u32>,
    trusts: Vec<Trust>,
    trust_index: HashMap<String, u32>,
    schools: Vec<School>,
    school_index: HashMap<Laestab, u32>,
    pupils: Vec<Pupil>,
    pupil_index: HashMap<Upn, u32>,
    items: Vec<Item>,
    item_index: HashMap<(Paper, String), u32>,
}

/// Checks for one row, gathering problems and reporting them all.
struct RowCheck<'a> {
    rep: &'a Reporter,
    file: &'a str,
    row: u64,
    columns: &'static [&'static str],
    cells: &'a [Cell<'a>],
    ok: bool,
}

impl<'a> RowCheck<'a> {
    /// An optional coded field: empty is `Some(None)`, a bad code is `None` (reported).
    fn optional<T>(
        &mut self,
        col: usize,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        if self.cells[col].text().trim().is_empty() {
            Some(None)
        } else {
            self.parse(col, f).map(Some)
        }
    }
    fn problem(&mut self, col: usize, reason: impl Into<String>) {
        self.ok = false;
        self.rep.push(Problem::cell(
            self.file,
            self.row,
            self.columns[col],
            &self.cells[col].text(),
            reason,
        ));
    }
    fn parse<T>(&mut self, col: usize, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let text = self.cells[col].text();
        match f(text.trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(col, e);
                None
            }
        }
    }
    fn text(&mut self, col: usize) -> Option<String> {
        let t = self.cells[col].text().trim().to_string();
        if t.is_empty() {
            self.problem(col, "must not be empty");
            None
        } else {
            Some(t)
        }
    }
    fn int(&mut self, col: usize, lo: i64, hi: i64) -> Option<i64> {
        match self.cells[col].int() {
            Ok(v) if (lo..=hi).contains(&v) => Some(v),
            Ok(_) => {
                self.problem(col, format!("must be between {lo} and {hi}"));
                None
            }
            Err(e) => {
                self.problem(col, e);
                None
            }
        }
    }
}

/// Remembers the first row of each key to report duplicates.
struct Seen<K>(HashMap<K, u64>);

impl<K: std::hash::Hash + Eq> Seen<K> {
    fn new() -> Self {
        Seen(HashMap::new())
    }
    /// `Some(first_row)` if `key` was seen before.
    fn first(&mut self, key: K, row: u64) -> Option<u64> {
        match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(row);
                None
            }
        }
    }
}

impl<'r> Loader<'r> {
    fn load_las(&mut self, tf: &TableFile) {
        let mut las = Vec::new();
        let mut seen = Seen::new();
        Loader::each_row_with(self.rep, tf, |c| {
            let code = c.parse(0, LaCode::parse);
            let name = c.text(1);
            if let Some(code) = code
                && let Some(first) = seen.first(code, c.row)
            {
                c.problem(0, format!("duplicate LA code (first at row {first})"));
            }
            if let (true, Some(code), Some(name)) = (c.ok, code, name) {
                las.push(La { code, name });
            }
        });
        for la in las {
            self.la_index.insert(la.code, self.las.len() as u32);
            self.las.push(la);
        }
    }

    fn load_schools(&mut self, tf: &TableFile) {
        let mut urns = Seen::new();
        let mut estabs = Seen::new();
        let mut trust_names: HashMap<String, (String, u64)> = HashMap::new();
        let mut schools = Vec::new();
        let mut trust_order = Vec::new();
        let la_index = &self.la_index;
        Loader::each_row_with(self.rep, tf, |c| {
            let urn = c.parse(0, |s| {
                if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(s.parse::<u32>().expect("digits"))
                } else {
                    Err("a URN is a 6-digit number".into())
                }
            });
            let laestab = c.parse(1, Laestab::parse);
            let name = c.text(2);
            let la = c.parse(3, LaCode::parse);
            let phase = c.parse(4, Phase::parse);
            let kind = c.parse(5, SchoolType::parse);
            let uid = c.cells[6].text().trim().to_string();
            let tname = c.cells[7].text().trim().to_string();
            if let Some(urn) = urn
                && let Some(first) = urns.first(urn, c.row)
            {
                c.problem(0, format!("duplicate URN (first at row {first})"));
            }
            if let Some(l) = laestab
                && let Some(first) = estabs.first(l, c.row)
            {
                c.problem(1, format!("duplicate laestab (first at row {first})"));
            }
            if let Some(la) = la {
                if !la_index.contains_key(&la) {
                    c.problem(3, "unknown LA: not in las");
                } else if let Some(l) = laestab
                    && l.la_code() != la
                {
                    c.problem(
                        1,
                        format!("laestab does not start with the school's LA code {la}"),
                    );
                }
            }
            match (uid.is_empty(), tname.is_empty()) {
                (true, true) => {}
                (false, true) => c.problem(7, "trust_name is required when trust_uid is given"),
                (true, false) => c.problem(6, "trust_uid is required when trust_name is given"),
                (false, false) => {
                    if !uid.bytes().all(|b| b.is_ascii_digit()) {
                        c.problem(6, "a trust UID is a number");
                    } else if let Some((n, first)) = trust_names.get(&uid) {
                        if *n != tname {
                            let msg = format!("trust {uid} is named {n:?} at row {first}");
                            c.problem(7, msg);
                        }
                    } else {
                        trust_names.insert(uid.clone(), (tname.clone(), c.row));
                        trust_order.push(uid.clone());
                    }
                }
            }
            if let (true, Some(urn), Some(laestab), Some(name), Some(la), Some(phase), Some(kind)) =
                (c.ok, urn, laestab, name, la, phase, kind)
            {
                schools.push((
                    School {
                        urn,
                        laestab,
                        name,
                        la,
                        phase,
                        kind,
                        trust: None,
                    },
                    uid,
                ));
            }
        });
        for uid in trust_order {
            let name = trust_names[&uid].0.clone();
            self.trust_index
                .insert(uid.clone(), self.trusts.len() as u32);
            self.trusts.push(Trust { uid, name });
        }
        for (mut s, uid) in schools {
            s.trust = self.trust_index.get(&uid).copied();
            self.school_index
                .insert(s.laestab, self.schools.len() as u32);
            self.schools.push(s);
        }
    }

    fn load_conversion(&mut self, tf: &TableFile, year: Option<i32>) -> Option<ConversionTables> {
        // (year, subject) -> raw -> (conversion, row)
        let mut tables: HashMap<(i32, Subject), TableRows> = HashMap::new();
        Loader::each_row_with(self.rep, tf, |c| {
            let y = c.int(0, 1990, 2100);
            let subject = c.parse(1, Subject::parse);
            let max = subject.map(|s| s.max_raw() as i64).unwrap_or(i64::MAX);
            let raw = c.int(2, 0, max);
            let conv = c.parse(3, Conversion::parse);
            if let (Some(y), Some(s), Some(raw), Some(conv)) = (y, subject, raw, conv) {
                let t = tables
                    .entry((y as i32, s))
                    .or_insert_with(|| vec![None; s.max_raw() as usize + 1]);
                if let Some((_, first)) = t[raw as usize] {
                    c.problem(
                        2,
                        format!("duplicate raw score for {s} {y} (first at row {first})"),
                    );
                } else {
                    t[raw as usize] = Some((conv, c.row));
                }
            }
        });
        let years: BTreeSet<i32> = tables.keys().map(|k| k.0).collect();
        let year = match year {
            Some(y) if years.contains(&y) => y,
            Some(y) => {
                self.rep.push(Problem {
                    file: tf.name.clone(),
                    row: None,
                    column: Some("year".into()),
                    value: Some(y.to_string()),
                    reason: format!("no conversion table for the cycle's year {y}"),
                });
                return None;
            }
            None if years.len() == 1 => *years.iter().next().expect("one"),
            None if years.is_empty() => {
                self.rep
                    .push(Problem::file(&tf.name, "no valid conversion rows"));
                return None;
            }
            None => {
                let list: Vec<String> = years.iter().map(|y| y.to_string()).collect();
                self.rep.push(Problem::file(
                    &tf.name,
                    format!(
                        "tables for several years ({}): give the cycle's year with --year",
                        list.join(", ")
                    ),
                ));
                return None;
            }
        };
        let mut out: [Vec<Conversion>; 3] = Default::default();
        for s in Subject::ALL {
            let Some(t) = tables.get(&(year, *s)) else {
                self.rep.push(Problem {
                    file: tf.name.clone(),
                    row: None,
                    column: Some("subject".into()),
                    value: Some(s.to_string()),
                    reason: format!("no conversion table for {s} {year}"),
                });
                continue;
            };
            let missing: Vec<String> = t
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_none())
                .map(|(i, _)| i.to_string())
                .collect();
            if !missing.is_empty() {
                self.rep.push(Problem { file: tf.name.clone(), row: None, column: Some("raw_score".into()), value: Some(missing.join(" ")), reason: format!("conversion table for {s} {year} lacks these raw scores; every raw score 0..{} needs a row", s.max_raw()) });
            }
            let mut prev: Option<(usize, Conversion)> = None;
            for (raw, v) in t.iter().enumerate() {
                let Some((conv, row)) = v else { continue };
                if let Some((praw, p)) = prev
                    && conv.rank() < p.rank()
                {
                    let show = |c: Conversion| match c {
                        Conversion::NotAwarded => "N".to_string(),
                        Conversion::Scaled(s) => s.get().to_string(),
                    };
                    self.rep.push(Problem::cell(&tf.name, *row, "scaled_score", &show(*conv), format!("decreases: raw {raw} converts lower than raw {praw} ({}) for {s} {year}", show(p))));
                }
                prev = Some((raw, *conv));
            }
            out[s.index()] = t
                .iter()
                .map(|v| v.map(|x| x.0).unwrap_or(Conversion::NotAwarded))
                .collect();
        }
        // Incomplete tables were reported above; the year is still known for other checks.
        Some(ConversionTables { year, scaled: out })
    }

    fn load_items(&mut self, tf: &TableFile) {
        let mut items = Vec::new();
        let mut seen = Seen::new();
        Loader::each_row_with(self.rep, tf, |c| {
            let paper = c.parse(0, Paper::parse);
            let label = c.text(1);
            let max = c.int(2, 1, 50);
            if let (Some(p), Some(l)) = (paper, &label)
                && let Some(first) = seen.first((p, l.clone()), c.row)
            {
                c.problem(1, format!("duplicate item for {p} (first at row {first})"));
            }
            if let (true, Some(paper), Some(label), Some(max)) = (c.ok, paper, label, max) {
                items.push(Item {
                    paper,
                    label,
                    max_mark: max as u8,
                });
            }
        });
        // Keep items grouped by paper, in file order within each paper.
        items.sort_by_key(|i| i.paper.index());
        for p in Paper::ALL {
            let total: u32 = items
                .iter()
                .filter(|i| i.paper == *p)
                .map(|i| u32::from(i.max_mark))
                .sum();
            if total != u32::from(p.max_raw()) {
                self.rep.push(Problem {
                    file: tf.name.clone(),
                    row: None,
                    column: Some("max_mark".into()),
                    value: Some(total.to_string()),
                    reason: format!(
                        "items for {p} add up to {total} marks; the paper's maximum is {}",
                        p.max_raw()
                    ),
                });
            }
        }
        for it in items {
            self.item_index
                .insert((it.paper, it.label.clone()), self.items.len() as u32);
            self.items.push(it);
        }
    }

    fn load_pupils(&mut self, tf: &TableFile, year: i32) {
        let school_index = &self.school_index;
        let schools = &self.schools;
        let mut seen: HashMap<Upn, (u64, Laestab)> = HashMap::new();
        let mut pupils = Vec::new();
        // A KS2 pupil is normally 10 or 11; allow pupils well out of their year group.
        let earliest = time::Date::from_calendar_date(year - 14, time::Month::September, 1).ok();
        let latest = time::Date::from_calendar_date(year - 8, time::Month::August, 31).ok();
        let read = Loader::each_row_with(self.rep, tf, |c| {
            let upn = c.parse(0, Upn::parse);
            let laestab = c.parse(1, Laestab::parse);
            let school = laestab.and_then(|l| match school_index.get(&l) {
                Some(i) => Some(*i),
                None => {
                    c.problem(1, "unknown school: not in schools");
                    None
                }
            });
            if let Some(s) = school
                && schools[s as usize].phase == Phase::Secondary
            {
                c.problem(1, "a KS2 pupil cannot be registered at a secondary school");
            }
            let surname = c.text(2);
            let forename = c.text(3);
            let dob = c.parse(4, parse_date);
            if let (Some(d), Some(lo), Some(hi)) = (dob, earliest, latest)
                && (d < lo || d > hi)
            {
                c.problem(4, format!("not a plausible date of birth for a KS2 pupil in {year} (expected {lo} to {hi})"));
            }
            let gender = c.parse(5, Gender::parse);
            let reading = c.parse(6, RegStatus::parse);
            let gps = c.parse(7, RegStatus::parse);
            let maths = c.parse(8, RegStatus::parse);
            if let (Some(u), Some(l)) = (upn, laestab) {
                match seen.get(&u) {
                    Some((first, other)) if *other != l => {
                        let msg = format!(
                            "pupil is already in school {other} (row {first}); each pupil must be in exactly one school"
                        );
                        c.problem(0, msg);
                    }
                    Some((first, _)) => {
                        c.problem(0, format!("duplicate pupil (first at row {first})"))
                    }
                    None => {
                        seen.insert(u, (c.row, l));
                    }
                }
            }
            if let (
                Some(upn),
                Some(school),
                Some(surname),
                Some(forename),
                Some(dob),
                Some(gender),
                Some(r),
                Some(g),
                Some(m),
            ) = (
                upn, school, surname, forename, dob, gender, reading, gps, maths,
            ) && c.ok
            {
                pupils.push(Pupil {
                    upn,
                    school,
                    surname,
                    forename,
                    dob,
                    gender,
                    reg: [r, g, m],
                    attendance: [None; 6],
                    annulment: [None; 3],
                    writing: None,
                    science: None,
                });
            }
        });
        self.pupils_known = read;
        // Pupils whose rows had problems are still known by UPN so that their other rows
        // do not each report "unknown pupil" as well.
        for (upn, _) in seen {
            self.pupil_index.entry(upn).or_insert(u32::MAX);
        }
        for p in pupils {
            self.pupil_index.insert(p.upn, self.pupils.len() as u32);
            self.pupils.push(p);
        }
    }

    /// Resolve a UPN cell to a pupil: `Err(())` after reporting, `Ok(None)` for a pupil
    /// whose own row was invalid (already reported).
    fn pupil(
        index: &HashMap<Upn, u32>,
        known: bool,
        c: &mut RowCheck<'_>,
        col: usize,
    ) -> Result<Option<u32>, ()> {
        let upn = c.parse(col, Upn::parse).ok_or(())?;
        match index.get(&upn) {
            None if !known => Ok(None),
            Some(&u32::MAX) => Ok(None),
            Some(&i) => Ok(Some(i)),
            None => {
                c.problem(col, "unknown pupil: not in pupils");
                Err(())
            }
        }
    }

    fn load_attendance(&mut self, tf: &TableFile) {
        let rep = self.rep;
        let known = self.pupils_known;
        let index = &self.pupil_index;
        let pupils = &mut self.pupils;
        let mut seen = Seen::new();
        Loader::each_row_with(rep, tf, |c| {
            let pupil = Self::pupil(index, known, c, 0);
            let paper = c.parse(1, Paper::parse);
            let code = c.parse(2, AttendanceCode::parse);
            if let (Ok(Some(p)), Some(paper)) = (pupil, paper)
                && let Some(first) = seen.first((p, paper), c.row)
            {
                c.problem(
                    1,
                    format!("duplicate attendance for this pupil and paper (first at row {first})"),
                );
            }
            if let (true, Ok(Some(p)), Some(paper), Some(code)) = (c.ok, pupil, paper, code) {
                pupils[p as usize].attendance[paper.index()] = Some(code);
            }
        });
    }

    fn load_annulments(&mut self, tf: &TableFile) {
        let rep = self.rep;
        let known = self.pupils_known;
        let index = &self.pupil_index;
        let pupils = &mut self.pupils;
        let mut seen = Seen::new();
        Loader::each_row_with(rep, tf, |c| {
            let pupil = Self::pupil(index, known, c, 0);
            let subject = c.parse(1, Subject::parse);
            let code = c.parse(2, AnnulmentCode::parse);
            if let (Ok(Some(p)), Some(s)) = (pupil, subject)
                && let Some(first) = seen.first((p, s), c.row)
            {
                c.problem(
                    1,
                    format!(
                        "duplicate annulment for this pupil and subject (first at row {first})"
                    ),
                );
            }
            if let (true, Ok(Some(p)), Some(s), Some(code)) = (c.ok, pupil, subject, code) {
                pupils[p as usize].annulment[s.index()] = Some(code);
            }
        });
    }

    fn load_ta(&mut self, tf: &TableFile) {
        let rep = self.rep;
        let known = self.pupils_known;
        let index = &self.pupil_index;
        let pupils = &mut self.pupils;
        let mut seen = Seen::new();
        Loader::each_row_with(rep, tf, |c| {
            let pupil = Self::pupil(index, known, c, 0);
            let writing = c.optional(1, WritingTa::parse);
            let science = c.optional(2, ScienceTa::parse);
            if let Ok(Some(p)) = pupil
                && let Some(first) = seen.first(p, c.row)
            {
                c.problem(
                    0,
                    format!("duplicate TA for this pupil (first at row {first})"),
                );
            }
            if let (true, Ok(Some(p)), Some(w), Some(s)) = (c.ok, pupil, writing, science) {
                pupils[p as usize].writing = w;
                pupils[p as usize].science = s;
            }
        });
    }

    fn load_scripts(&mut self, tf: &TableFile) -> Vec<ScriptPage> {
        let rep = self.rep;
        let known = self.pupils_known;
        let index = &self.pupil_index;
        let mut seen = Seen::new();
        let mut keys = Seen::new();
        let mut out = Vec::new();
        Loader::each_row_with(rep, tf, |c| {
            let pupil = Self::pupil(index, known, c, 0);
            let paper = c.parse(1, Paper::parse);
            let page = c.int(2, 1, 10_000);
            let key = c.text(3);
            let sha = c.parse(4, |s| {
                if s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    Ok(s.to_string())
                } else {
                    Err("a sha256 is 64 lowercase hexadecimal characters".into())
                }
            });
            if let (Ok(Some(p)), Some(paper), Some(page)) = (pupil, paper, page)
                && let Some(first) = seen.first((p, paper, page), c.row)
            {
                c.problem(
                    2,
                    format!("duplicate page for this pupil and paper (first at row {first})"),
                );
            }
            if let Some(k) = &key {
                if k.starts_with('/') || k.split('/').any(|s| s == ".." || s.is_empty()) {
                    c.problem(
                        3,
                        "an object key is a relative path without empty or '..' parts",
                    );
                } else if let Some(first) = keys.first(k.clone(), c.row) {
                    c.problem(3, format!("object key already used (first at row {first})"));
                }
            }
            if let (
                true,
                Ok(Some(pupil)),
                Some(paper),
                Some(page),
                Some(object_key),
                Some(sha256),
            ) = (c.ok, pupil, paper, page, key, sha)
            {
                out.push(ScriptPage {
                    row: c.row,
                    pupil,
                    paper,
                    page: page as u32,
                    object_key,
                    sha256,
                });
            }
        });
        out
    }

    /// Run `f` on every row; `false` when the file itself could not be read (reported).
    fn each_row_with(rep: &Reporter, tf: &TableFile, mut f: impl FnMut(&mut RowCheck<'_>)) -> bool {
        let res = intake::for_each_row(
            tf,
            |row, cells| {
                let mut c = RowCheck {
                    rep,
                    file: &tf.name,
                    row,
                    columns: tf.table.columns(),
                    cells,
                    ok: true,
                };
                f(&mut c);
            },
            &mut |p| rep.push(p),
        );
        match res {
            Ok(()) => true,
            Err(p) => {
                rep.push(p);
                false
            }
        }
    }

    fn load_marks(&self, tf: &TableFile, progress: Option<&ProgressBar>) -> MarkTotals {
        let n_items = self.items.len();
        let mut by_paper: [Vec<u32>; 6] = Default::default();
        for (i, it) in self.items.iter().enumerate() {
            by_paper[it.paper.index()].push(i as u32);
        }
        let ctx = MarkCtx {
            rep: self.rep,
            file: &tf.name,
            pupil_index: &self.pupil_index,
            pupils: &self.pupils,
            items: &self.items,
            item_index: &self.item_index,
            n_items,
            seen: (0..(self.pupils.len() * n_items).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            marks: (0..self.pupils.len() * n_items)
                .map(|_| AtomicU8::new(crate::model::NO_MARK))
                .collect(),
            schools: self.schools.len(),
            pupils_known: self.pupils_known,
        };
        let mut totals = match tf.format {
            Format::Csv => {
                let mut w = ctx.worker();
                let res = intake::for_each_row(
                    tf,
                    |row, cells| {
                        w.row(row, cells[0], cells[1], cells[2], cells[3], None);
                        if row % 65_536 == 0
                            && let Some(pb) = progress
                        {
                            pb.inc(65_536);
                        }
                    },
                    &mut |p| ctx.rep.push(p),
                );
                if let Err(p) = res {
                    ctx.rep.push(p);
                }
                w.totals
            }
            Format::Parquet => ctx.parquet(tf, progress),
        };
        totals.item_marks = ctx.marks.into_iter().map(AtomicU8::into_inner).collect();
        totals
    }
}

/// Shared, read-only context for the marks readers.
struct MarkCtx<'a> {
    rep: &'a Reporter,
    file: &'a str,
    pupil_index: &'a HashMap<Upn, u32>,
    pupils: &'a [Pupil],
    items: &'a [Item],
    item_index: &'a HashMap<(Paper, String), u32>,
    n_items: usize,
    /// One bit per pupil and item, set on first sight: a second sight is a duplicate.
    seen: Vec<AtomicU64>,
    /// Each pupil's mark per item (pupil * n_items + item), written once: duplicates are
    /// refused by `seen` first.
    marks: Vec<AtomicU8>,
    schools: usize,
    pupils_known: bool,
}

impl<'a> MarkCtx<'a> {
    fn worker(&self) -> MarkWorker<'_, 'a> {
        MarkWorker {
            ctx: self,
            totals: MarkTotals::new(self.pupils.len(), self.schools, self.n_items),
            last_upn: [0; 13],
            last_pupil: None,
            last_item: None,
        }
    }

    fn parquet(&self, tf: &TableFile, progress: Option<&ProgressBar>) -> MarkTotals {
        let groups = match intake::parquet_row_groups(tf) {
            Ok(g) => g,
            Err(p) => {
                self.rep.push(p);
                return self.worker().totals;
            }
        };
        let mut offsets = Vec::with_capacity(groups.len());
        let mut acc = 0u64;
        for g in &groups {
            offsets.push(acc);
            acc += g;
        }
        // One contiguous share of row groups per thread, each with its own partial totals:
        // totals are large (per pupil and per school-item), so never more than one a thread.
        let threads = rayon::current_num_threads().clamp(1, groups.len().max(1));
        let shares: Vec<Vec<usize>> = (0..threads)
            .map(|t| {
                (0..groups.len())
                    .filter(|g| g * threads / groups.len().max(1) == t)
                    .collect()
            })
            .collect();
        let partials: Vec<MarkTotals> = rayon::scope(|_| {
            use rayon::prelude::*;
            shares
                .into_par_iter()
                .map(|share| {
                    let mut w = self.worker();
                    for g in share {
                        if let Err(p) = w.row_group(tf, g, offsets[g], progress) {
                            self.rep.push(p);
                            break;
                        }
                    }
                    w.totals
                })
                .collect()
        });
        let mut it = partials.into_iter();
        let mut total = it.next().unwrap_or_else(|| self.worker().totals);
        for p in it {
            total.merge(&p);
        }
        total
    }
}

struct MarkWorker<'c, 'a> {
    ctx: &'c MarkCtx<'a>,
    totals: MarkTotals,
    last_upn: [u8; 13],
    last_pupil: Option<Option<u32>>,
    last_item: Option<u32>,
}

impl MarkWorker<'_, '_> {
    fn row_group(
        &mut self,
        tf: &TableFile,
        g: usize,
        offset: u64,
        progress: Option<&ProgressBar>,
    ) -> Result<(), Problem> {
        let (reader, cols) = intake::open_parquet(tf, Some(vec![g]))?;
        let mut row = offset;
        for batch in reader {
            let batch =
                batch.map_err(|e| Problem::file(&tf.name, format!("unreadable Parquet: {e}")))?;
            let columns = intake::StrColumns::new(&batch, &cols);
            // Within a batch, equal dictionary keys of the upn column mean the same pupil.
            let mut last_key = None;
            for i in 0..batch.num_rows() {
                row += 1;
                let key = columns.dict_key(0, i);
                let same = key.is_some() && key == last_key;
                last_key = key;
                self.row(
                    row,
                    columns.cell(0, i),
                    columns.cell(1, i),
                    columns.cell(2, i),
                    columns.cell(3, i),
                    Some(same),
                );
            }
            if let Some(pb) = progress {
                pb.inc(batch.num_rows() as u64);
            }
        }
        Ok(())
    }

    /// Check and aggregate one mark row. `same_pupil` is a hint that the upn equals the
    /// previous row's.
    #[inline]
    fn row(
        &mut self,
        row: u64,
        upn: Cell<'_>,
        paper: Cell<'_>,
        item: Cell<'_>,
        mark: Cell<'_>,
        same_pupil: Option<bool>,
    ) {
        let ctx = self.ctx;
        let bad = |col: &str, value: &Cell<'_>, reason: String| {
            ctx.rep
                .push(Problem::cell(ctx.file, row, col, &value.text(), reason));
        };
        // Pupil.
        let pupil = match (same_pupil, self.last_pupil) {
            (Some(true), Some(p)) => p,
            _ => {
                let text = upn.text();
                let b = text.trim().as_bytes();
                let p = if let Some(last) = self
                    .last_pupil
                    .filter(|_| b.len() == 13 && b == self.last_upn)
                {
                    last
                } else {
                    let found = Upn::parse(text.trim())
                        .ok()
                        .and_then(|u| ctx.pupil_index.get(&u).copied());
                    match found {
                        Some(u32::MAX) => None,
                        Some(i) => Some(i),
                        None if !ctx.pupils_known => None,
                        None => {
                            bad("upn", &upn, "unknown pupil: not in pupils".into());
                            return;
                        }
                    }
                };
                if b.len() == 13 {
                    self.last_upn.copy_from_slice(b);
                }
                self.last_pupil = Some(p);
                p
            }
        };
        // Paper.
        let paper_text = paper.text();
        let Ok(paper_v) = Paper::parse(paper_text.trim()) else {
            bad(
                "paper",
                &paper,
                "not a known paper; expected one of gps1, gps2, reading, maths1, maths2, maths3"
                    .into(),
            );
            return;
        };
        // Item: marks usually come in the items' order, so try the next item first.
        let item_text = item.text();
        let label = item_text.trim();
        let predicted = self.last_item.map(|i| i as usize + 1).filter(|&i| {
            i < ctx.items.len() && ctx.items[i].paper == paper_v && ctx.items[i].label == label
        });
        let item_i = match predicted {
            Some(i) => i as u32,
            None => match ctx.item_index.get(&(paper_v, label.to_string())) {
                Some(&i) => i,
                None => {
                    bad(
                        "item",
                        &item,
                        format!("unknown item: not in items for {paper_v}"),
                    );
                    return;
                }
            },
        };
        self.last_item = Some(item_i);
        let max = ctx.items[item_i as usize].max_mark;
        let m = match mark.int() {
            Ok(m) if (0..=i64::from(max)).contains(&m) => m as u16,
            Ok(_) => {
                bad(
                    "mark",
                    &mark,
                    format!("must be between 0 and {max}, the item's max_mark"),
                );
                return;
            }
            Err(e) => {
                bad("mark", &mark, e);
                return;
            }
        };
        let Some(p) = pupil else { return };
        let bit = p as usize * ctx.n_items + item_i as usize;
        let prev = ctx.seen[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        if prev & (1 << (bit % 64)) != 0 {
            bad(
                "item",
                &item,
                format!("duplicate mark for this pupil, paper {paper_v} and item"),
            );
            return;
        }
        let pupil = &ctx.pupils[p as usize];
        if let Some(code) = pupil.attendance[paper_v.index()] {
            bad(
                "paper",
                &paper,
                format!("marks recorded for a paper that attendance records as {code}"),
            );
            return;
        }
        ctx.marks[bit].store(m as u8, Ordering::Relaxed);
        let t = &mut self.totals;
        t.raw[p as usize * 6 + paper_v.index()] += m;
        t.has_marks[p as usize] |= 1 << paper_v.index();
        let si = pupil.school as usize * ctx.n_items + item_i as usize;
        t.item_sum[si] += u32::from(m);
        t.item_n[si] += 1;
        t.rows += 1;
    }
}
