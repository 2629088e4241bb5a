//! A synthetic intake in the contract's format, deterministic for a seed: organisations in
//! national proportions, pupils whose outcomes are close to the national picture, item-level
//! marks as Parquet, TA, a script manifest with real page images, and a school of
//! deliberate cases that exercises every rule of the contract.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, DictionaryArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::domain::*;

/// The real 2024 reading and GPS tables (from the shared reference data).
const REFERENCE_TABLES: &str = include_str!("../data/conversion_2024_reading_gps.csv");

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub out: PathBuf,
    /// Number of KS2 (primary) schools; secondaries, LAs and trusts follow in proportion.
    pub schools: usize,
    pub seed: u64,
    pub year: i32,
    /// Pupils whose scripts get page images.
    pub script_pupils: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GenSummary {
    pub primaries: usize,
    pub secondaries: usize,
    pub las: usize,
    pub trusts: usize,
    pub pupils: usize,
    pub mark_rows: u64,
    pub script_pages: usize,
}

/// Calibrated offsets of subject ability over item difficulty, chosen so that about 74%
/// (reading), 72% (GPS) and 73% (maths) reach the expected standard (see `bench/`'s
/// national run for the figures these give).
const SUBJECT_OFFSET: [f64; 3] = [0.68, 0.80, 0.68];
/// How strongly subjects share one general ability (RWM about 61% nationally).
const GENERAL_LOADING: f64 = 0.93;

#[derive(Debug, Clone)]
struct GenItem {
    paper: Paper,
    label: String,
    max_mark: u8,
    difficulty: f64,
}

/// The six papers' items, the same for every seed so calibration holds.
fn items() -> Vec<GenItem> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x17E5);
    let mut out = Vec::new();
    for p in Paper::ALL {
        let mut left = p.max_raw();
        let mut q = 1;
        let mut part = 0u8;
        while left > 0 {
            // Mostly 1-mark items, some 2 and 3 marks (reasoning and reading more so).
            let m: u16 = match (p, rng.random_range(0..10)) {
                (Paper::Gps2 | Paper::Maths1, _) => 1,
                (_, 0) => 3,
                (_, 1..=2) => 2,
                _ => 1,
            };
            let m = m.min(left);
            // Some questions have parts a and b.
            let label = if part == 0 && rng.random_range(0..6) == 0 {
                part = 1;
                format!("{q}a")
            } else if part == 1 {
                part = 0;
                let l = format!("{q}b");
                q += 1;
                l
            } else {
                let l = q.to_string();
                q += 1;
                l
            };
            let d: f64 = StandardNormal.sample(&mut rng);
            out.push(GenItem {
                paper: *p,
                label,
                max_mark: m as u8,
                difficulty: d * 1.1,
            });
            left -= m;
        }
    }
    out
}

/// A plausible maths table: N below 3 marks, then piecewise linear through 100 at 54
/// and 110 at 95 (past thresholds), reaching 120 at full marks.
pub fn maths_table() -> Vec<Conversion> {
    let points = [(3.0, 80.0), (54.0, 100.0), (95.0, 110.0), (110.0, 120.0)];
    (0..=110u16)
        .map(|raw| {
            if raw < 3 {
                return Conversion::NotAwarded;
            }
            let r = f64::from(raw);
            let seg = points
                .windows(2)
                .find(|w| r <= w[1].0)
                .expect("raw within table");
            let (x0, y0) = seg[0];
            let (x1, y1) = seg[1];
            let v = (y0 + (r - x0) * (y1 - y0) / (x1 - x0)).floor() as u8;
            Conversion::Scaled(ScaledScore::new(v).expect("80..=120"))
        })
        .collect()
}

fn conversion_csv(year: i32) -> String {
    let mut out = String::from("year,subject,raw_score,scaled_score\n");
    for line in REFERENCE_TABLES.lines().skip(1) {
        let mut parts = line.splitn(2, ',');
        let _year = parts.next();
        if let Some(rest) = parts.next() {
            out.push_str(&format!("{year},{rest}\n"));
        }
    }
    for (raw, c) in maths_table().iter().enumerate() {
        let v = match c {
            Conversion::NotAwarded => "N".to_string(),
            Conversion::Scaled(s) => s.get().to_string(),
        };
        out.push_str(&format!("{year},maths,{raw},{v}\n"));
    }
    out
}

fn reference_table(subject: Subject) -> Vec<Conversion> {
    let mut t = vec![Conversion::NotAwarded; subject.max_raw() as usize + 1];
    for line in REFERENCE_TABLES.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() == 4 && f[1] == subject.as_str() {
            t[f[2].parse::<usize>().expect("reference raw")] =
                Conversion::parse(f[3]).expect("reference score");
        }
    }
    t
}

const SURNAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Ali",
    "Hussain",
    "Ahmed",
    "Nowak",
    "Kowalski",
    "O'Brien",
    "O'Connor",
    "Smith-Jones",
    "Da Silva",
    "Nguyen",
    "Okafor",
    "Adeyemi",
    "Mensah",
    "Novak",
    "Popescu",
    "Chen",
    "Wang",
    "Kaur",
    "Rahman",
];
const FORENAMES_F: &[&str] = &[
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Ivy",
    "Freya",
    "Lily",
    "Florence",
    "Mia",
    "Willow",
    "Rosie",
    "Sophia",
    "Isabella",
    "Grace",
    "Daisy",
    "Sienna",
    "Poppy",
    "Elsie",
    "Emily",
    "Ella",
    "Evelyn",
    "Phoebe",
    "Sofia",
    "Evie",
    "Charlotte",
    "Harper",
    "Millie",
    "Matilda",
    "Maya",
    "Sophie",
    "Alice",
    "Emilia",
    "Isabelle",
    "Ruby",
    "Zoë",
    "Aisha",
    "Fatima",
    "Amélie",
    "Maja",
    "Zara",
    "Hannah",
    "Chloé",
];
const FORENAMES_M: &[&str] = &[
    "Noah", "Oliver", "George", "Arthur", "Muhammad", "Leo", "Harry", "Oscar", "Archie", "Henry",
    "Theodore", "Freddie", "Jack", "Charlie", "Theo", "Alfie", "Jacob", "Thomas", "Finley", "Arlo",
    "William", "Lucas", "Roman", "Tommy", "Isaac", "Teddy", "Edward", "Adam", "Joshua", "Ethan",
    "Reuben", "James", "Logan", "Max", "Mohammed", "Yusuf", "Kacper", "Jakub", "Tomás", "Chidi",
    "Kwame", "Ravi", "Jean-Luc",
];
const PLACE_A: &[&str] = &[
    "Ash", "Oak", "Elm", "Brook", "Mill", "Green", "Stone", "Marsh", "Wood", "Kings", "Queens",
    "Church", "Bridge", "Castle", "Hill", "Lea", "Thorn", "Fair", "Red", "White", "Black", "North",
    "South", "East", "West", "Long", "Market", "Holly",
];
const PLACE_B: &[&str] = &[
    "ford", "field", "ham", "bury", "ton", "wick", "worth", "ley", "borough", "dale", "stead",
    "combe", "gate", "more", "well", "minster", "by", "thorpe",
];

fn place(i: usize) -> String {
    let a = PLACE_A[i % PLACE_A.len()];
    let b = PLACE_B[(i / PLACE_A.len()) % PLACE_B.len()];
    let n = i / (PLACE_A.len() * PLACE_B.len());
    if n == 0 {
        format!("{a}{b}")
    } else {
        format!(
            "{a}{b} {}",
            ["Upper", "Lower", "Great", "Little", "New", "Old"][(n - 1) % 6]
        )
    }
}

/// LA codes in the ranges England uses.
fn la_codes(n: usize) -> Vec<u16> {
    let pool: Vec<u16> = [
        (201, 213),
        (301, 320),
        (330, 344),
        (350, 359),
        (370, 396),
        (800, 896),
        (908, 938),
    ]
    .iter()
    .flat_map(|&(a, b)| a..=b)
    .collect();
    (0..n).map(|i| pool[i * pool.len() / n]).collect()
}

#[derive(Debug, Clone)]
struct GenSchool {
    urn: u32,
    laestab: Laestab,
    name: String,
    la: usize,
    phase: Phase,
    kind: SchoolType,
    trust: Option<usize>,
}

/// One generated pupil, with marks per paper (`None`: no mark rows for that paper).
#[derive(Debug, Clone)]
struct GenPupil {
    upn: Upn,
    surname: String,
    forename: String,
    dob: time::Date,
    gender: Gender,
    reg: [RegStatus; 3],
    attendance: [Option<AttendanceCode>; 6],
    annulment: [Option<AnnulmentCode>; 3],
    marks: [Option<Vec<u8>>; 6],
    writing: Option<WritingTa>,
    science: Option<ScienceTa>,
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

struct Model {
    items: Vec<GenItem>,
    /// Item indices per paper.
    by_paper: [Vec<usize>; 6],
    year: i32,
}

impl Model {
    fn marks_for(&self, rng: &mut ChaCha8Rng, paper: Paper, ability: f64) -> Vec<u8> {
        self.by_paper[paper.index()]
            .iter()
            .map(|&i| {
                let it = &self.items[i];
                let p = logistic(1.7 * (ability - it.difficulty));
                (0..it.max_mark).filter(|_| rng.random_bool(p)).count() as u8
            })
            .collect()
    }

    /// Marks for `paper` adding up to exactly `raw`.
    fn marks_totalling(&self, paper: Paper, raw: u16) -> Vec<u8> {
        let mut left = raw;
        self.by_paper[paper.index()]
            .iter()
            .map(|&i| {
                let m = u16::from(self.items[i].max_mark).min(left);
                left -= m;
                m as u8
            })
            .collect()
    }

    fn upn(&self, laestab: Laestab, serial: usize, temporary: bool) -> Upn {
        let yy = (self.year - 7).rem_euclid(100);
        let tail = if temporary {
            format!(
                "{laestab}{yy:02}{:02}{}",
                serial % 100,
                ['A', 'B', 'C', 'D'][serial % 4]
            )
        } else {
            format!("{laestab}{yy:02}{:03}", serial % 1000)
        };
        Upn::with_check_letter(&tail).expect("generated UPN is well formed")
    }

    fn dob(&self, rng: &mut ChaCha8Rng) -> time::Date {
        let start = time::Date::from_calendar_date(self.year - 11, time::Month::September, 1)
            .expect("valid");
        let shift: i64 = match rng.random_range(0..200) {
            0 => -365, // a year older: kept back
            1 => 365,  // a year younger: moved up
            _ => 0,
        };
        start + time::Duration::days(rng.random_range(0..365) + shift)
    }

    fn names(&self, rng: &mut ChaCha8Rng) -> (String, String, Gender) {
        let gender = if rng.random_bool(0.5) {
            Gender::F
        } else {
            Gender::M
        };
        let list = if gender == Gender::F {
            FORENAMES_F
        } else {
            FORENAMES_M
        };
        (
            SURNAMES[rng.random_range(0..SURNAMES.len())].to_string(),
            list[rng.random_range(0..list.len())].to_string(),
            gender,
        )
    }

    /// An ordinary pupil of a school, drawn from the national model.
    fn pupil(&self, rng: &mut ChaCha8Rng, school: &GenSchool, serial: usize) -> GenPupil {
        let special = matches!(
            school.kind,
            SchoolType::Special | SchoolType::Pru | SchoolType::Secure
        );
        let (surname, forename, gender) = self.names(rng);
        let mut general: f64 = StandardNormal.sample(rng);
        let roll = rng.random_range(0..10_000);
        let all = |r| [r; 3];
        let reg = match roll {
            _ if special && rng.random_bool(0.45) => all(RegStatus::Below),
            0..=119 => all(RegStatus::Below),
            120..=149 => all(RegStatus::Left),
            150..=159 => all(RegStatus::Future),
            160..=169 => all(RegStatus::Previous),
            170..=184 => all(RegStatus::Unregistered),
            185..=194 => [
                RegStatus::Registered,
                RegStatus::Unregistered,
                RegStatus::Registered,
            ],
            _ => all(RegStatus::Registered),
        };
        if reg[0] == RegStatus::Below {
            general -= 2.0;
        }
        let mut attendance = [None; 6];
        let mut annulment = [None; 3];
        let mut marks: [Option<Vec<u8>>; 6] = Default::default();
        for s in Subject::ALL {
            if reg[s.index()] != RegStatus::Registered {
                continue;
            }
            let own: f64 = StandardNormal.sample(rng);
            let ability = GENERAL_LOADING * general
                + (1.0 - GENERAL_LOADING * GENERAL_LOADING).sqrt() * own
                + SUBJECT_OFFSET[s.index()];
            let code = match rng.random_range(0..10_000) {
                0..=99 => Some(AttendanceCode::A),
                100..=109 => Some(AttendanceCode::U),
                110..=119 => Some(AttendanceCode::J),
                _ => None,
            };
            for (k, p) in s.papers().iter().enumerate() {
                // Whole-subject codes, and now and then one paper missed.
                let missed_one = k > 0 && rng.random_range(0..1_000) < 6;
                attendance[p.index()] = if missed_one {
                    Some(AttendanceCode::A)
                } else {
                    code
                };
                if attendance[p.index()].is_none() {
                    // A script now and then is lost or not yet marked.
                    let lost = rng.random_range(0..10_000) < 3;
                    marks[p.index()] = (!lost).then(|| self.marks_for(rng, *p, ability));
                }
            }
            annulment[s.index()] = match rng.random_range(0..20_000) {
                0..=3 => Some(AnnulmentCode::H),
                4 => Some(AnnulmentCode::Q),
                _ => None,
            };
        }
        let own: f64 = StandardNormal.sample(rng);
        let w = 0.9 * general + 0.44 * own;
        let writing = match reg[0] {
            RegStatus::Unregistered => None,
            RegStatus::Left => Some(WritingTa::L),
            RegStatus::Future => Some(WritingTa::F),
            RegStatus::Previous => Some(WritingTa::P),
            RegStatus::Below => Some(
                [
                    WritingTa::Pk1,
                    WritingTa::Pk2,
                    WritingTa::Pk3,
                    WritingTa::Pk4,
                    WritingTa::Pk5,
                    WritingTa::Pk6,
                    WritingTa::Em,
                ][rng.random_range(0..7)],
            ),
            RegStatus::Registered if rng.random_range(0..1000) < 5 => None,
            RegStatus::Registered if w > 1.0 => Some(WritingTa::Gds),
            RegStatus::Registered if w > -0.62 => Some(WritingTa::Exs),
            RegStatus::Registered if w > -1.9 => Some(WritingTa::Wts),
            RegStatus::Registered => Some(WritingTa::Pk6),
        };
        let sci: f64 = StandardNormal.sample(rng);
        let science = match writing {
            None => None,
            Some(WritingTa::L) => Some(ScienceTa::L),
            Some(WritingTa::F) => Some(ScienceTa::F),
            Some(WritingTa::P) => Some(ScienceTa::P),
            Some(_) if 0.7 * general + 0.7 * sci > -0.9 => Some(ScienceTa::Exs),
            Some(_) => Some(ScienceTa::Hnm),
        };
        GenPupil {
            upn: self.upn(school.laestab, serial, rng.random_range(0..1000) < 2),
            surname,
            forename,
            dob: self.dob(rng),
            gender,
            reg,
            attendance,
            annulment,
            marks,
            writing,
            science,
        }
    }

    /// Pupils that exercise every rule of the contract, for the first school.
    fn deliberate_cases(&self, school: &GenSchool, first_serial: usize) -> Vec<GenPupil> {
        use AttendanceCode as At;
        use RegStatus as R;
        let full = |m: &Model, raws: [u16; 6]| -> [Option<Vec<u8>>; 6] {
            std::array::from_fn(|i| Some(m.marks_totalling(Paper::ALL[i], raws[i])))
        };
        let base = |serial: usize, surname: &str, forename: &str| GenPupil {
            upn: self.upn(school.laestab, serial, false),
            surname: surname.into(),
            forename: forename.into(),
            dob: time::Date::from_calendar_date(self.year - 11, time::Month::November, 5)
                .expect("valid"),
            gender: Gender::F,
            reg: [R::Registered; 3],
            attendance: [None; 6],
            annulment: [None; 3],
            // gps1 40 + gps2 15 = 55, reading 35, maths 35+25+25 = 85: all above 100.
            marks: full(self, [40, 15, 35, 35, 25, 25]),
            writing: Some(WritingTa::Exs),
            science: Some(ScienceTa::Exs),
        };
        let mut out = Vec::new();
        let mut serial = first_serial;
        let mut add = |f: &dyn Fn(&mut GenPupil), surname: &str, forename: &str| {
            let mut p = base(serial, surname, forename);
            f(&mut p);
            for (i, paper) in Paper::ALL.iter().enumerate() {
                let s = paper.subject().index();
                if p.reg[s] != R::Registered || p.attendance[i].is_some() {
                    p.marks[i] = None;
                }
            }
            out.push(p);
            serial += 1;
        };
        add(&|p| p.reg = [R::Unregistered; 3], "Rule-One", "Nobody"); // rule 1: no row
        add(
            &|p| p.reg[Subject::Gps.index()] = R::Unregistered,
            "Rule-One",
            "Partial",
        ); // rule 1: empty gps
        add(
            &|p| {
                p.reg = [R::Left; 3];
                p.writing = Some(WritingTa::L);
                p.science = Some(ScienceTa::L);
            },
            "Rule-Two",
            "Left",
        );
        add(
            &|p| {
                p.reg = [R::Future; 3];
                p.writing = Some(WritingTa::F);
                p.science = Some(ScienceTa::F);
            },
            "Rule-Two",
            "Future",
        );
        add(
            &|p| {
                p.reg = [R::Previous; 3];
                p.writing = Some(WritingTa::P);
                p.science = Some(ScienceTa::P);
            },
            "Rule-Two",
            "Previous",
        );
        add(
            &|p| {
                p.reg = [R::Below; 3];
                p.writing = Some(WritingTa::Pk4);
                p.science = Some(ScienceTa::Hnm);
            },
            "Rule-Two",
            "Below",
        );
        add(
            &|p| p.annulment[Subject::Maths.index()] = Some(AnnulmentCode::H),
            "Rule-Three",
            "Cheating",
        );
        add(
            &|p| {
                p.annulment[Subject::Reading.index()] = Some(AnnulmentCode::Q);
                p.attendance[Paper::Reading.index()] = Some(At::A);
            },
            "Rule-Three",
            "Maladministration",
        );
        add(
            &|p| p.attendance[Paper::Reading.index()] = Some(At::A),
            "Rule-Four",
            "Absent",
        );
        add(
            &|p| {
                p.attendance[Paper::Gps1.index()] = Some(At::J);
                p.attendance[Paper::Gps2.index()] = Some(At::J);
            },
            "Rule-Four",
            "Arrived",
        );
        add(
            &|p| {
                p.attendance[Paper::Maths1.index()] = Some(At::U);
                p.attendance[Paper::Maths2.index()] = Some(At::A);
                p.attendance[Paper::Maths3.index()] = Some(At::J);
            },
            "Rule-Four",
            "Disagreeing",
        );
        add(
            &|p| {
                p.marks[Paper::Reading.index()] = None;
                p.writing = Some(WritingTa::Gds);
            },
            "Rule-Five",
            "Lost Reading",
        );
        add(
            &|p| p.marks[Paper::Maths2.index()] = None,
            "Rule-Five",
            "Lost Maths2",
        );
        add(
            &|p| {
                p.attendance[Paper::Maths1.index()] = Some(At::A);
            },
            "Rule-Six",
            "Missed Maths1",
        );
        add(
            &|p| p.marks[Paper::Reading.index()] = Some(self.marks_totalling(Paper::Reading, 2)),
            "Rule-Six",
            "Scored N",
        );
        add(
            &|p| p.marks[Paper::Reading.index()] = Some(self.marks_totalling(Paper::Reading, 27)),
            "Rule-Six",
            "Exactly 100",
        );
        add(
            &|p| p.marks[Paper::Reading.index()] = Some(self.marks_totalling(Paper::Reading, 26)),
            "Rule-Six",
            "Just Below 100",
        );
        add(
            &|p| p.marks[Paper::Reading.index()] = Some(self.marks_totalling(Paper::Reading, 40)),
            "Rule-Six",
            "Exactly 110",
        );
        add(
            &|p| p.marks = full(self, [50, 20, 50, 40, 35, 35]),
            "Rule-Six",
            "Full Marks",
        );
        add(
            &|p| p.marks = full(self, [0, 0, 0, 0, 0, 0]),
            "Rule-Six",
            "All Zero",
        );
        add(
            &|p| p.writing = Some(WritingTa::Wts),
            "Rwm",
            "Writing Below",
        );
        add(&|p| p.writing = None, "Rwm", "No TA");
        add(&|_| {}, "O'Brien, Smith", "Zoë \"Zee\"");
        out.push({
            let mut p = base(serial, "Temporary", "Upn");
            p.upn = self.upn(school.laestab, serial, true);
            p
        });
        out
    }
}

/// Cohort size of a primary school: from tiny rural schools to three-form entry.
fn cohort(rng: &mut ChaCha8Rng, kind: SchoolType) -> usize {
    if matches!(
        kind,
        SchoolType::Special | SchoolType::Pru | SchoolType::Secure
    ) {
        return rng.random_range(3..16);
    }
    match rng.random_range(0..100) {
        0..=11 => rng.random_range(5..16),
        12..=51 => rng.random_range(22..33),
        52..=81 => rng.random_range(45..61),
        82..=95 => rng.random_range(70..91),
        _ => rng.random_range(90..121),
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(T, u32)]) -> T {
    let total: u32 = weighted.iter().map(|w| w.1).sum();
    let mut r = rng.random_range(0..total);
    for (v, w) in weighted {
        if r < *w {
            return *v;
        }
        r -= w;
    }
    weighted[0].0
}

fn schools(
    rng: &mut ChaCha8Rng,
    primaries: usize,
    secondaries: usize,
    las: &[u16],
    trusts: usize,
) -> Vec<GenSchool> {
    let mut next_estab = vec![[2000u32, 4000, 6000, 7000, 1100]; las.len()];
    let mut out = Vec::new();
    for i in 0..primaries + secondaries {
        let secondary = i >= primaries;
        // The first school is always a maintained primary in the first LA: the deliberate cases live there.
        let la = if i == 0 {
            0
        } else {
            rng.random_range(0..las.len())
        };
        let kind = if i == 0 {
            SchoolType::Maintained
        } else if secondary {
            pick(
                rng,
                &[
                    (SchoolType::Academy, 72),
                    (SchoolType::Maintained, 18),
                    (SchoolType::Free, 5),
                    (SchoolType::Independent, 3),
                    (SchoolType::Special, 2),
                ],
            )
        } else {
            pick(
                rng,
                &[
                    (SchoolType::Maintained, 560),
                    (SchoolType::Academy, 330),
                    (SchoolType::Free, 15),
                    (SchoolType::Special, 50),
                    (SchoolType::Independent, 25),
                    (SchoolType::Pru, 8),
                    (SchoolType::Secure, 2),
                    (SchoolType::Mod, 6),
                    (SchoolType::Nmss, 4),
                ],
            )
        };
        let phase = if secondary {
            Phase::Secondary
        } else if i == 0 {
            Phase::Primary
        } else {
            pick(
                rng,
                &[
                    (Phase::Primary, 96),
                    (Phase::Middle, 3),
                    (Phase::AllThrough, 1),
                ],
            )
        };
        let range = match (secondary, kind) {
            (_, SchoolType::Independent) => 2,
            (_, SchoolType::Special | SchoolType::Nmss) => 3,
            (_, SchoolType::Pru | SchoolType::Secure) => 4,
            (true, _) => 1,
            (false, _) => 0,
        };
        let estab = next_estab[la][range];
        next_estab[la][range] += 1;
        let trust = (trusts > 0
            && matches!(kind, SchoolType::Academy | SchoolType::Free)
            && rng.random_range(0..100) < 88)
            .then(|| rng.random_range(0..trusts));
        let town = place(rng.random_range(0..PLACE_A.len() * PLACE_B.len() * 4));
        let name = if secondary {
            format!(
                "{town} {}",
                ["High School", "Academy", "School", "Community College"][rng.random_range(0..4)]
            )
        } else {
            match kind {
                SchoolType::Special => format!("{town} Special School"),
                SchoolType::Independent => format!("{town} Preparatory School"),
                SchoolType::Pru => format!("{town} Pupil Referral Unit"),
                _ => format!(
                    "{town} {}",
                    [
                        "Primary School",
                        "Church of England Primary School",
                        "St Mary's Catholic Primary School",
                        "Junior School",
                        "Primary Academy",
                        "Community Primary School"
                    ][rng.random_range(0..6)]
                ),
            }
        };
        out.push(GenSchool {
            urn: 100_000 + i as u32,
            laestab: Laestab(u32::from(las[la]) * 10_000 + estab),
            name,
            la,
            phase,
            kind,
            trust,
        });
    }
    out
}

fn csv_writer(
    dir: &Path,
    name: &str,
    header: &[&str],
) -> anyhow::Result<csv::Writer<BufWriter<File>>> {
    let path = dir.join(name);
    let mut w = csv::Writer::from_writer(BufWriter::with_capacity(
        1 << 20,
        File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    ));
    w.write_record(header)?;
    Ok(w)
}

/// Write a synthetic intake to `opts.out`.
pub fn generate(opts: &GenOptions) -> anyhow::Result<GenSummary> {
    let dir = &opts.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let n = opts.schools.max(1);
    let n_las = ((n as f64 / 110.0).round() as usize).clamp(1, 153);
    let n_sec = (n as f64 * 3400.0 / 16800.0).round() as usize;
    let n_trusts = ((n as f64 * 1300.0 / 16800.0).round() as usize).max(1);
    let las = la_codes(n_las);
    let schools = schools(&mut rng, n, n_sec, &las, n_trusts);
    let items = items();
    let mut by_paper: [Vec<usize>; 6] = Default::default();
    for (i, it) in items.iter().enumerate() {
        by_paper[it.paper.index()].push(i);
    }
    let model = Model {
        items,
        by_paper,
        year: opts.year,
    };

    // Fixed tables.
    let mut w = csv_writer(dir, "las.csv", &["la_code", "name"])?;
    for (i, code) in las.iter().enumerate() {
        w.write_record([
            format!("{code:03}"),
            format!("{} Council", place(i * 7 + 3)),
        ])?;
    }
    w.flush()?;
    let mut w = csv_writer(dir, "schools.csv", crate::intake::Table::Schools.columns())?;
    for s in &schools {
        let (uid, tname) = match s.trust {
            Some(t) => (
                (16_000 + t).to_string(),
                format!("{} Learning Trust", place(t * 13 + 5)),
            ),
            None => (String::new(), String::new()),
        };
        w.write_record([
            s.urn.to_string(),
            s.laestab.to_string(),
            s.name.clone(),
            format!("{:03}", las[s.la]),
            s.phase.to_string(),
            s.kind.to_string(),
            uid,
            tname,
        ])?;
    }
    w.flush()?;
    let mut w = csv_writer(dir, "items.csv", &["paper", "item", "max_mark"])?;
    for it in &model.items {
        w.write_record([it.paper.as_str(), &it.label, &it.max_mark.to_string()])?;
    }
    w.flush()?;
    std::fs::write(dir.join("conversion.csv"), conversion_csv(opts.year))?;

    // Pupils, school by school, in parallel chunks; marks streamed to Parquet.
    let mut pupils_w = csv_writer(dir, "pupils.csv", crate::intake::Table::Pupils.columns())?;
    let mut att_w = csv_writer(dir, "attendance.csv", &["upn", "paper", "code"])?;
    let mut ann_w = csv_writer(dir, "annulments.csv", &["upn", "subject", "code"])?;
    let mut ta_w = csv_writer(dir, "ta.csv", &["upn", "writing", "science"])?;
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("upn", dict.clone(), false),
        Field::new("paper", dict.clone(), false),
        Field::new("item", dict, false),
        Field::new("mark", DataType::Int32, false),
    ]));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let marks_file = File::create(dir.join("marks.parquet"))?;
    let mut marks_w = ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 22, marks_file),
        schema.clone(),
        Some(props),
    )?;
    let paper_values = Arc::new(StringArray::from_iter_values(
        Paper::ALL.iter().map(|p| p.as_str()),
    ));
    let item_values = Arc::new(StringArray::from_iter_values(
        model.items.iter().map(|i| i.label.as_str()),
    ));

    let primaries: Vec<usize> = (0..n).collect();
    let pb = if opts.progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::hidden())
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:20} [{bar:30}] {human_pos}/{human_len} schools {elapsed_precise}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message("generate pupils");
    let mut summary = GenSummary {
        primaries: n,
        secondaries: n_sec,
        las: n_las,
        trusts: n_trusts,
        ..Default::default()
    };
    let mut scripts: Vec<(Upn, Laestab, usize)> = Vec::new(); // (upn, school, papers-with-marks bitmask)
    for chunk in primaries.chunks(512) {
        let generated: Vec<Vec<GenPupil>> = chunk
            .par_iter()
            .map(|&si| {
                let s = &schools[si];
                let mut rng = ChaCha8Rng::seed_from_u64(
                    opts.seed ^ (si as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let size = cohort(&mut rng, s.kind);
                let mut pupils: Vec<GenPupil> =
                    (0..size).map(|k| model.pupil(&mut rng, s, k + 1)).collect();
                if si == 0 {
                    pupils.extend(model.deliberate_cases(s, size + 1));
                }
                pupils
            })
            .collect();
        // Marks columns for the whole chunk.
        let mut upn_values: Vec<String> = Vec::new();
        let (mut upn_keys, mut paper_keys, mut item_keys, mut marks) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, pupils) in generated.iter().enumerate() {
            let s = &schools[chunk[k]];
            for p in pupils {
                pupils_w.write_record([
                    p.upn.as_str(),
                    &s.laestab.to_string(),
                    &p.surname,
                    &p.forename,
                    &p.dob.to_string(),
                    p.gender.as_str(),
                    p.reg[0].as_str(),
                    p.reg[1].as_str(),
                    p.reg[2].as_str(),
                ])?;
                for paper in Paper::ALL {
                    if let Some(c) = p.attendance[paper.index()] {
                        att_w.write_record([p.upn.as_str(), paper.as_str(), c.as_str()])?;
                    }
                }
                for sub in Subject::ALL {
                    if let Some(c) = p.annulment[sub.index()] {
                        ann_w.write_record([p.upn.as_str(), sub.as_str(), c.as_str()])?;
                    }
                }
                if p.writing.is_some() || p.science.is_some() {
                    ta_w.write_record([
                        p.upn.as_str(),
                        p.writing.map(|w| w.as_str()).unwrap_or(""),
                        p.science.map(|w| w.as_str()).unwrap_or(""),
                    ])?;
                }
                let key = upn_values.len() as i32;
                upn_values.push(p.upn.to_string());
                let mut mask = 0usize;
                for paper in Paper::ALL {
                    if let Some(m) = &p.marks[paper.index()] {
                        mask |= 1 << paper.index();
                        for (j, &item) in model.by_paper[paper.index()].iter().enumerate() {
                            upn_keys.push(key);
                            paper_keys.push(paper.index() as i32);
                            item_keys.push(item as i32);
                            marks.push(i32::from(m[j]));
                        }
                    }
                }
                summary.pupils += 1;
                if mask != 0
                    && scripts.len() < opts.script_pupils
                    && (chunk[k] == 0
                        || scripts.len() * 7 < opts.script_pupils * 3
                        || p.upn.as_str().ends_with('3'))
                {
                    scripts.push((p.upn, s.laestab, mask));
                }
            }
        }
        summary.mark_rows += marks.len() as u64;
        let upn_values = Arc::new(StringArray::from(upn_values));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(upn_keys),
                upn_values,
            )?),
            Arc::new(DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(paper_keys),
                paper_values.clone(),
            )?),
            Arc::new(DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(item_keys),
                item_values.clone(),
            )?),
            Arc::new(Int32Array::from(marks)),
        ];
        marks_w.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        pb.inc(chunk.len() as u64);
    }
    marks_w.close()?;
    pupils_w.flush()?;
    att_w.flush()?;
    ann_w.flush()?;
    ta_w.flush()?;
    pb.finish();

    summary.script_pages = write_scripts(dir, opts.year, &scripts)?;
    Ok(summary)
}

/// Pages per paper in a script.
fn pages(paper: Paper) -> u32 {
    match paper {
        Paper::Gps1 | Paper::Reading => 12,
        Paper::Gps2 => 4,
        Paper::Maths1 | Paper::Maths2 | Paper::Maths3 => 10,
    }
}

/// Render page images for the sampled pupils into `pages/` and write the manifest.
fn write_scripts(dir: &Path, year: i32, sample: &[(Upn, Laestab, usize)]) -> anyhow::Result<usize> {
    let mut jobs = Vec::new();
    for (upn, laestab, mask) in sample {
        for paper in Paper::ALL {
            if mask & (1 << paper.index()) != 0 {
                for page in 1..=pages(*paper) {
                    jobs.push((*upn, *laestab, *paper, page));
                }
            }
        }
    }
    let rows: Vec<anyhow::Result<[String; 5]>> = jobs
        .par_iter()
        .map(|(upn, laestab, paper, page)| {
            let key = format!("scripts/{year}/{laestab}/{upn}/{paper}/{page:02}.png");
            let png = page_image(upn.as_str(), *paper, *page);
            let path = dir.join("pages").join(&key);
            std::fs::create_dir_all(path.parent().expect("has parent"))?;
            std::fs::write(&path, &png)?;
            Ok([
                upn.to_string(),
                paper.to_string(),
                page.to_string(),
                key,
                hex::encode(Sha256::digest(&png)),
            ])
        })
        .collect();
    let mut w = csv_writer(dir, "scripts.csv", crate::intake::Table::Scripts.columns())?;
    for r in rows {
        w.write_record(r?)?;
    }
    w.flush()?;
    Ok(jobs.len())
}

/// A greyscale A4 page at 150 dpi that looks like a marked scan: ruled answer lines,
/// handwriting-like strokes, a page barcode, marker ticks and scanner noise.
pub fn page_image(upn: &str, paper: Paper, page: u32) -> Vec<u8> {
    const W: usize = 1240;
    const H: usize = 1754;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&Sha256::digest(format!("{upn}/{paper}/{page}")));
    let mut rng = ChaCha8Rng::from_seed(seed);
    let mut px = vec![250u8; W * H];
    let dot = |px: &mut Vec<u8>, x: usize, y: usize, v: u8| {
        if x < W && y < H {
            px[y * W + x] = v;
        }
    };
    // Barcode: the page's identity as bars across the top.
    for (i, b) in seed.iter().take(16).enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                let x0 = 80 + (i * 8 + bit) * 6;
                for y in 60..110 {
                    for x in x0..x0 + 4 {
                        dot(&mut px, x, y, 20);
                    }
                }
            }
        }
    }
    // Ruled answer lines, with handwriting-like random walks above some of them.
    let mut y = 200;
    while y < H - 120 {
        for x in 100..W - 100 {
            px[y * W + x] = 190;
        }
        if rng.random_bool(0.7) {
            let (mut cx, mut cy) = (rng.random_range(120..400) as f64, (y - 18) as f64);
            let len = rng.random_range(200..1400);
            for _ in 0..len {
                cx += rng.random_range(0.2..1.4);
                cy += rng.random_range(-1.5..1.5);
                cy = cy.clamp((y - 34) as f64, (y - 4) as f64);
                for d in 0..2 {
                    dot(&mut px, cx as usize + d, cy as usize, 40);
                    dot(&mut px, cx as usize, cy as usize + d, 40);
                }
            }
            // A marker's tick or cross in the margin.
            let mx = W - 80;
            for t in 0..18 {
                dot(&mut px, mx + t, y - 10 - t.abs_diff(6), 60);
            }
        }
        y += 56;
    }
    // Scanner noise.
    for _ in 0..W * H / 60 {
        let i = rng.random_range(0..W * H);
        px[i] = px[i].saturating_sub(rng.random_range(10..60));
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, W as u32, H as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().expect("writing PNG to memory");
        w.write_image_data(&px).expect("writing PNG to memory");
    }
    out
}

/// The generator's conversion table for a subject (reference for reading and GPS).
pub fn table(subject: Subject) -> Vec<Conversion> {
    match subject {
        Subject::Maths => maths_table(),
        s => reference_table(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_add_up_to_each_papers_maximum() {
        let items = items();
        for p in Paper::ALL {
            let total: u16 = items
                .iter()
                .filter(|i| i.paper == *p)
                .map(|i| u16::from(i.max_mark))
                .sum();
            assert_eq!(total, p.max_raw(), "{p}");
        }
        assert!(
            (180..=200).contains(&items.len()),
            "about 190 items, got {}",
            items.len()
        );
    }

    #[test]
    fn maths_table_is_complete_and_never_decreasing() {
        let t = maths_table();
        assert_eq!(t.len(), 111);
        assert!(t.windows(2).all(|w| w[0].rank() <= w[1].rank()));
        assert_eq!(t[54], Conversion::Scaled(ScaledScore::new(100).unwrap()));
        assert_eq!(t[110], Conversion::Scaled(ScaledScore::new(120).unwrap()));
    }

    #[test]
    fn reference_tables_match_the_contract_thresholds() {
        // 2024: reading 100 at raw 27, GPS 100 at raw 35 (shared/reference/past_thresholds.csv).
        let r = table(Subject::Reading);
        assert_eq!(r[27], Conversion::Scaled(ScaledScore::new(100).unwrap()));
        assert_eq!(r[26].rank(), 99);
        let g = table(Subject::Gps);
        assert_eq!(g[35], Conversion::Scaled(ScaledScore::new(100).unwrap()));
    }

    #[test]
    fn page_images_are_real_pngs_of_scan_size() {
        let png = page_image("H801200001001", Paper::Reading, 1);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (1240, 1754));
        assert!(png.len() > 50_000, "scan-sized, got {} bytes", png.len());
        assert_ne!(png, page_image("H801200001001", Paper::Reading, 2));
    }
}
