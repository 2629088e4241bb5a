//! Building a release's downloads as bytes: results CSVs (contract section 4), CTF,
//! summaries, question-level analysis, Parquet tables, and the precompressed variants.
//! Pure: no IO, so the server's bytes are exactly what these functions return.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::domain::*;
use crate::model::{Intake, Pupil, School};
use crate::rules::PupilResult;

/// The results file's header (contract section 4).
pub const HEADER: &str = "upn,surname,forename,dob,gender,reading_raw,reading_result,reading_met,reading_high,gps_raw,gps_result,gps_met,gps_high,maths_raw,maths_result,maths_met,maths_high,writing_ta,science_ta,rwm_met";

/// Line ending of every CSV download (RFC 4180).
pub const EOL: &str = "\r\n";

/// A pupil with a result row, ready for output.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub pupil: u32,
    pub result: PupilResult,
    /// The CSV line (without `laestab`), ending in CRLF.
    pub line: String,
}

fn yn(v: Option<bool>, yes: &'static str, no: &'static str) -> &'static str {
    match v {
        Some(true) => yes,
        Some(false) => no,
        None => "",
    }
}

/// The results CSV fields of one pupil, in header order.
pub fn fields(p: &Pupil, r: &PupilResult) -> Vec<String> {
    let mut f = Vec::with_capacity(20);
    f.push(p.upn.to_string());
    f.push(p.surname.clone());
    f.push(p.forename.clone());
    f.push(p.dob.to_string());
    f.push(p.gender.as_str().to_string());
    for s in Subject::FILE_ORDER {
        let sr = r.subjects[s.index()];
        f.push(sr.raw().map(|v| v.to_string()).unwrap_or_default());
        f.push(sr.result_text().into_owned());
        f.push(yn(sr.met(), "AS", "NS").to_string());
        f.push(yn(sr.high(), "Y", "N").to_string());
    }
    f.push(p.writing.map(|w| w.as_str()).unwrap_or("").to_string());
    f.push(p.science.map(|s| s.as_str()).unwrap_or("").to_string());
    f.push(yn(r.rwm, "Y", "N").to_string());
    f
}

/// Append one CSV field with RFC 4180 quoting (only when needed).
pub fn push_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// One pupil's CSV line, CRLF-terminated.
pub fn csv_line(p: &Pupil, r: &PupilResult) -> String {
    let mut line = String::with_capacity(128);
    for (i, f) in fields(p, r).iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_field(&mut line, f);
    }
    line.push_str(EOL);
    line
}

/// Contract order: surname, forename, upn.
pub fn sort_rows(rows: &mut [ResultRow], pupils: &[Pupil]) {
    rows.sort_by(|a, b| {
        let (pa, pb) = (&pupils[a.pupil as usize], &pupils[b.pupil as usize]);
        (&pa.surname, &pa.forename, &pa.upn).cmp(&(&pb.surname, &pb.forename, &pb.upn))
    });
}

/// A school's results CSV.
pub fn school_csv(rows: &[ResultRow]) -> Vec<u8> {
    let mut out =
        String::with_capacity(HEADER.len() + 2 + rows.iter().map(|r| r.line.len()).sum::<usize>());
    out.push_str(HEADER);
    out.push_str(EOL);
    for r in rows {
        out.push_str(&r.line);
    }
    out.into_bytes()
}

/// An LA's or trust's combined CSV: `laestab` first, schools in laestab order, each
/// school's rows in the contract's order.
pub fn combined_csv<'a>(schools: impl Iterator<Item = (Laestab, &'a [ResultRow])>) -> Vec<u8> {
    let mut out = String::new();
    out.push_str("laestab,");
    out.push_str(HEADER);
    out.push_str(EOL);
    for (laestab, rows) in schools {
        let l = laestab.to_string();
        for r in rows {
            out.push_str(&l);
            out.push(',');
            out.push_str(&r.line);
        }
    }
    out.into_bytes()
}

/// gzip at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::new(6),
    );
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// brotli at quality 4, with a window no bigger than the data needs.
///
/// Quality 4, not 5: measured on a national release's files (bench/national.sh and a
/// side-by-side run), the `brotli` crate at quality 5 spends about 3.5 ms per call clearing
/// its hash tables, which on 20,000 four-kilobyte school CSVs is 20x slower than quality 4
/// for a compressed size only 8% smaller.
pub fn brotli(data: &[u8]) -> Vec<u8> {
    let lgwin = (usize::BITS - data.len().max(1).leading_zeros()).clamp(16, 22);
    let mut out = Vec::with_capacity(data.len() / 4);
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 4, lgwin);
        w.write_all(data).expect("writing to memory");
    }
    out
}

/// A school's Common Transfer File with its pupils' KS2 results.
pub fn ctf(intake: &Intake, school: &School, rows: &[ResultRow], generated: &str) -> Vec<u8> {
    let laestab = school.laestab.to_string();
    let fields: Vec<Vec<String>> = rows
        .iter()
        .map(|r| fields(&intake.pupils[r.pupil as usize], &r.result))
        .collect();
    ctf_document(
        &CtfHeader {
            source_laestab: &laestab,
            source_urn: &school.urn.to_string(),
            source_name: &school.name,
            dest_laestab: &laestab,
            year: intake.year,
            generated,
        },
        &fields,
    )
}

/// Who a Common Transfer File is from and to, and when.
#[derive(Debug, Clone)]
pub struct CtfHeader<'a> {
    pub source_laestab: &'a str,
    pub source_urn: &'a str,
    pub source_name: &'a str,
    pub dest_laestab: &'a str,
    /// The cycle's year (the summer of the tests).
    pub year: i32,
    pub generated: &'a str,
}

/// A Common Transfer File of pupils' KS2 results, each pupil given as its results-CSV fields
/// in [`HEADER`] order (so the CSV and the CTF cannot disagree).
pub fn ctf_document(h: &CtfHeader, pupils: &[Vec<String>]) -> Vec<u8> {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesText, Event};
    // No indentation: CTFs are most of a release's bytes, and MIS imports ignore layout.
    let mut w = Writer::new(Vec::with_capacity(512 + pupils.len() * 2048));
    let io = "writing XML to memory";
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .expect(io);
    let text = |w: &mut Writer<Vec<u8>>, tag: &str, value: &str| {
        w.create_element(tag)
            .write_text_content(BytesText::new(value))
            .expect(io);
    };
    fn split(l: &str) -> (&str, &str) {
        (l.get(..3).unwrap_or(""), l.get(3..).unwrap_or(""))
    }
    let year = h.year.to_string();
    let result_date = format!("{}-07-01", h.year);
    fn field(f: &[String], i: usize) -> &str {
        f.get(i).map_or("", String::as_str)
    }
    w.create_element("CTfile")
        .write_inner_content(|w| {
            w.create_element("Header").write_inner_content(|w| {
                text(w, "DocumentName", "Common Transfer File");
                text(w, "CTFversion", "26.0");
                text(w, "DateTime", h.generated);
                text(w, "DocumentQualifier", "partial");
                text(w, "DataQualifier", "KS2 results");
                text(w, "SupplierID", "NCA");
                w.create_element("SourceSchool").write_inner_content(|w| {
                    let (lea, estab) = split(h.source_laestab);
                    text(w, "LEA", lea);
                    text(w, "Estab", estab);
                    text(w, "URN", h.source_urn);
                    text(w, "SchoolName", h.source_name);
                    text(w, "AcademicYear", &(h.year - 1).to_string());
                    Ok::<(), std::io::Error>(())
                })?;
                w.create_element("DestSchool").write_inner_content(|w| {
                    let (lea, estab) = split(h.dest_laestab);
                    text(w, "LEA", lea);
                    text(w, "Estab", estab);
                    Ok::<(), std::io::Error>(())
                })?;
                Ok::<(), std::io::Error>(())
            })?;
            w.create_element("CTFpupilData").write_inner_content(|w| {
                for f in pupils {
                    w.create_element("Pupil").write_inner_content(|w| {
                        text(w, "UPN", field(f, 0));
                        text(w, "Surname", field(f, 1));
                        text(w, "Forename", field(f, 2));
                        text(w, "DOB", field(f, 3));
                        text(w, "Gender", field(f, 4));
                        w.create_element("StageAssessments")
                            .write_inner_content(|w| {
                                w.create_element("KeyStage").write_inner_content(|w| {
                                    text(w, "Stage", "KS2");
                                    let assess =
                                        |w: &mut Writer<Vec<u8>>,
                                         subject: &str,
                                         method: &str,
                                         component: &str,
                                         result: &str| {
                                            if result.is_empty() {
                                                return Ok(());
                                            }
                                            w.create_element("StageAssessment")
                                                .write_inner_content(|w| {
                                                    text(w, "Locale", "ENG");
                                                    text(w, "Year", &year);
                                                    text(w, "Subject", subject);
                                                    text(w, "Method", method);
                                                    text(w, "Component", component);
                                                    text(w, "Result", result);
                                                    text(w, "ResultDate", &result_date);
                                                    Ok::<(), std::io::Error>(())
                                                })?;
                                            Ok::<(), std::io::Error>(())
                                        };
                                    // reading, gps, maths: raw, result, met from column 5 on.
                                    for (k, code) in ["REA", "GPS", "MAT"].into_iter().enumerate() {
                                        let c = 5 + 4 * k;
                                        assess(w, code, "TT", "RAW", field(f, c))?;
                                        assess(w, code, "TT", "SCALED", field(f, c + 1))?;
                                        assess(w, code, "TT", "EXP", field(f, c + 2))?;
                                    }
                                    assess(w, "WRI", "TA", "TA", field(f, 17))?;
                                    assess(w, "SCI", "TA", "TA", field(f, 18))?;
                                    Ok::<(), std::io::Error>(())
                                })?;
                                Ok::<(), std::io::Error>(())
                            })?;
                        Ok::<(), std::io::Error>(())
                    })?;
                }
                Ok::<(), std::io::Error>(())
            })?;
            Ok::<(), std::io::Error>(())
        })
        .expect(io);
    let mut out = w.into_inner();
    out.push(b'\n');
    out
}

/// Counts for one subject, from which percentages follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectSummary {
    /// Pupils counted: results `AS` or `NS`.
    pub counted: u32,
    pub met: u32,
    pub high: u32,
    pub scaled_n: u32,
    pub scaled_sum: u64,
    pub pct_met: Option<f64>,
    pub pct_high: Option<f64>,
    pub average_scaled: Option<f64>,
}

/// One organisation's (or the nation's) summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub pupils: u32,
    pub reading: SubjectSummary,
    pub gps: SubjectSummary,
    pub maths: SubjectSummary,
    pub rwm: SubjectSummary,
}

fn pct(n: u32, d: u32) -> Option<f64> {
    (d > 0).then(|| (f64::from(n) * 1000.0 / f64::from(d)).round() / 10.0)
}

impl Summary {
    pub fn add(&mut self, r: &PupilResult) {
        self.pupils += 1;
        for s in Subject::ALL {
            let sr = r.subjects[s.index()];
            let t = self.subject_mut(*s);
            if let Some(m) = sr.met() {
                t.counted += 1;
                t.met += u32::from(m);
                t.high += u32::from(sr.high() == Some(true));
            }
            if let Some(sc) = sr.scaled() {
                t.scaled_n += 1;
                t.scaled_sum += u64::from(sc.get());
            }
        }
        if let Some(m) = r.rwm {
            self.rwm.counted += 1;
            self.rwm.met += u32::from(m);
        }
    }
    pub fn merge(&mut self, o: &Summary) {
        self.pupils += o.pupils;
        for (a, b) in [
            (&mut self.reading, &o.reading),
            (&mut self.gps, &o.gps),
            (&mut self.maths, &o.maths),
            (&mut self.rwm, &o.rwm),
        ] {
            a.counted += b.counted;
            a.met += b.met;
            a.high += b.high;
            a.scaled_n += b.scaled_n;
            a.scaled_sum += b.scaled_sum;
        }
    }
    /// Fill in the percentages and averages from the counts.
    pub fn finish(mut self) -> Summary {
        for t in [
            &mut self.reading,
            &mut self.gps,
            &mut self.maths,
            &mut self.rwm,
        ] {
            t.pct_met = pct(t.met, t.counted);
            t.pct_high = pct(t.high, t.counted);
            t.average_scaled = (t.scaled_n > 0)
                .then(|| (t.scaled_sum as f64 * 10.0 / f64::from(t.scaled_n)).round() / 10.0);
        }
        self.rwm.pct_high = None;
        self
    }
    pub fn subject_mut(&mut self, s: Subject) -> &mut SubjectSummary {
        match s {
            Subject::Reading => &mut self.reading,
            Subject::Gps => &mut self.gps,
            Subject::Maths => &mut self.maths,
        }
    }
}

/// All summaries of a release.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summaries {
    pub national: Summary,
    pub las: BTreeMap<String, Summary>,
    pub trusts: BTreeMap<String, Summary>,
    pub schools: BTreeMap<String, Summary>,
}

/// A school's question-level analysis: each item's mean mark against the national mean.
pub fn qla_csv(intake: &Intake, school: usize, national: &[(u64, u64)]) -> Vec<u8> {
    let n_items = intake.items.len();
    let mut out = String::from("paper,item,max_mark,school_pupils,school_mean,national_mean");
    out.push_str(EOL);
    for (i, it) in intake.items.iter().enumerate() {
        let sum = intake.marks.item_sum[school * n_items + i];
        let n = intake.marks.item_n[school * n_items + i];
        let mean = |s: f64, n: f64| {
            if n > 0.0 {
                format!("{:.2}", s / n)
            } else {
                String::new()
            }
        };
        out.push_str(&format!(
            "{},{},{},{},{},{}{EOL}",
            it.paper,
            csv_safe(&it.label),
            it.max_mark,
            n,
            mean(f64::from(sum), f64::from(n)),
            mean(national[i].0 as f64, national[i].1 as f64)
        ));
    }
    out.into_bytes()
}

fn csv_safe(s: &str) -> String {
    let mut o = String::new();
    push_field(&mut o, s);
    o
}

/// A school's item-level marks, one row per pupil in the results file's order: `upn`, then
/// one column per item named `<paper>:<item>` in the items table's order, empty where no
/// mark was recorded. The script viewer shows these beside the pages, and reviews of marking
/// start from them.
pub fn item_marks_csv(intake: &Intake, rows: &[ResultRow]) -> Vec<u8> {
    let n_items = intake.items.len();
    let mut out = String::from("upn");
    for it in &intake.items {
        out.push(',');
        push_field(&mut out, &format!("{}:{}", it.paper, it.label));
    }
    out.push_str(EOL);
    for r in rows {
        let p = r.pupil as usize;
        out.push_str(&intake.pupils[p].upn.to_string());
        for i in 0..n_items {
            out.push(',');
            if let Some(m) = intake.marks.item_mark(p, i, n_items) {
                out.push_str(&m.to_string());
            }
        }
        out.push_str(EOL);
    }
    out.into_bytes()
}

/// The cycle's mark scheme and conversion tables, for the raw-to-scaled calculator and the
/// script viewer: items with their maximum marks, and per subject the scaled score of every
/// raw score (`null` where no scaled score is awarded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cycle {
    pub year: i32,
    pub items: Vec<CycleItem>,
    /// Subject -> scaled score by raw score.
    pub conversion: BTreeMap<String, Vec<Option<u8>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleItem {
    pub paper: String,
    pub item: String,
    pub max_mark: u8,
}

pub fn cycle(intake: &Intake) -> Cycle {
    Cycle {
        year: intake.year,
        items: intake
            .items
            .iter()
            .map(|it| CycleItem {
                paper: it.paper.to_string(),
                item: it.label.clone(),
                max_mark: it.max_mark,
            })
            .collect(),
        conversion: Subject::ALL
            .iter()
            .map(|&s| {
                let table = intake.conversion.scaled[s.index()]
                    .iter()
                    .map(|c| match c {
                        Conversion::Scaled(v) => Some(v.get()),
                        Conversion::NotAwarded => None,
                    })
                    .collect();
                (s.to_string(), table)
            })
            .collect(),
    }
}

/// Per item, the national (sum, count) of marks.
pub fn national_item_totals(intake: &Intake) -> Vec<(u64, u64)> {
    let n_items = intake.items.len();
    let mut out = vec![(0u64, 0u64); n_items];
    for s in 0..intake.schools.len() {
        for (i, o) in out.iter_mut().enumerate() {
            o.0 += u64::from(intake.marks.item_sum[s * n_items + i]);
            o.1 += u64::from(intake.marks.item_n[s * n_items + i]);
        }
    }
    out
}

fn parquet_bytes(batch: RecordBatch) -> Vec<u8> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).expect("valid schema");
    w.write(&batch).expect("writing to memory");
    w.close().expect("writing to memory");
    out
}

/// Column names of `results.parquet`: where the pupil is, then the CSV's columns.
pub fn results_columns() -> Vec<&'static str> {
    let mut c = vec!["laestab", "la_code", "trust_uid"];
    c.extend(HEADER.split(','));
    c
}

/// Every pupil's results as Parquet: all text columns, exactly the CSV's values, plus
/// where the pupil is on roll.
pub fn results_parquet(intake: &Intake, rows: &[&ResultRow]) -> Vec<u8> {
    let names = results_columns();
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); names.len()];
    for r in rows {
        let p = &intake.pupils[r.pupil as usize];
        let s = &intake.schools[p.school as usize];
        cols[0].push(Some(s.laestab.to_string()));
        cols[1].push(Some(s.la.to_string()));
        cols[2].push(s.trust.map(|t| intake.trusts[t as usize].uid.clone()));
        for (i, f) in fields(p, &r.result).into_iter().enumerate() {
            cols[3 + i].push(if f.is_empty() { None } else { Some(f) });
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = cols
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    parquet_bytes(RecordBatch::try_new(schema, arrays).expect("consistent columns"))
}

/// KS3 lookup index, sorted by UPN: identity to match on, and the CSV line to return.
pub fn upn_index(intake: &Intake, rows: &[&ResultRow]) -> Vec<u8> {
    let mut sorted: Vec<&&ResultRow> = rows.iter().collect();
    sorted.sort_by_key(|r| intake.pupils[r.pupil as usize].upn);
    let pupils = || sorted.iter().map(|r| &intake.pupils[r.pupil as usize]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("upn", DataType::Utf8, false),
        Field::new("surname", DataType::Utf8, false),
        Field::new("dob", DataType::Utf8, false),
        Field::new("laestab", DataType::Utf8, false),
        Field::new("csv_line", DataType::Utf8, false),
    ]));
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            pupils().map(|p| p.upn.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            pupils().map(|p| p.surname.clone()),
        )),
        Arc::new(StringArray::from_iter_values(
            pupils().map(|p| p.dob.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            pupils().map(|p| intake.schools[p.school as usize].laestab.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            sorted.iter().map(|r| r.line.clone()),
        )),
    ];
    parquet_bytes(RecordBatch::try_new(schema, arrays).expect("consistent columns"))
}

/// Script pages by pupil and paper, in page order.
pub fn scripts_index(intake: &Intake) -> Vec<u8> {
    let mut pages: Vec<_> = intake.scripts.iter().collect();
    pages.sort_by(|a, b| {
        let (pa, pb) = (
            &intake.pupils[a.pupil as usize],
            &intake.pupils[b.pupil as usize],
        );
        (pa.upn, a.paper, a.page).cmp(&(pb.upn, b.paper, b.page))
    });
    let schema = Arc::new(Schema::new(vec![
        Field::new("upn", DataType::Utf8, false),
        Field::new("laestab", DataType::Utf8, false),
        Field::new("paper", DataType::Utf8, false),
        Field::new("page", DataType::UInt32, false),
        Field::new("object_key", DataType::Utf8, false),
        Field::new("sha256", DataType::Utf8, false),
    ]));
    let pupil = |s: &crate::model::ScriptPage| &intake.pupils[s.pupil as usize];
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            pages.iter().map(|s| pupil(s).upn.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(pages.iter().map(|s| {
            intake.schools[pupil(s).school as usize].laestab.to_string()
        }))),
        Arc::new(StringArray::from_iter_values(
            pages.iter().map(|s| s.paper.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(pages.iter().map(|s| s.page))),
        Arc::new(StringArray::from_iter_values(
            pages.iter().map(|s| s.object_key.clone()),
        )),
        Arc::new(StringArray::from_iter_values(
            pages.iter().map(|s| s.sha256.clone()),
        )),
    ];
    parquet_bytes(RecordBatch::try_new(schema, arrays).expect("consistent columns"))
}

/// One school's script pages (`upn,paper,page,object_key,sha256`), by pupil, paper and page:
/// what the server needs to find and check a page, fetched only when the school's scripts
/// are viewed.
pub fn school_scripts_csv(intake: &Intake, pages: &[&crate::model::ScriptPage]) -> Vec<u8> {
    let mut pages = pages.to_vec();
    pages.sort_by(|a, b| {
        let (pa, pb) = (
            &intake.pupils[a.pupil as usize],
            &intake.pupils[b.pupil as usize],
        );
        (pa.upn, a.paper, a.page).cmp(&(pb.upn, b.paper, b.page))
    });
    let mut out = String::from("upn,paper,page,object_key,sha256");
    out.push_str(EOL);
    for s in pages {
        out.push_str(&intake.pupils[s.pupil as usize].upn.to_string());
        out.push(',');
        out.push_str(s.paper.as_str());
        out.push(',');
        out.push_str(&s.page.to_string());
        out.push(',');
        push_field(&mut out, &s.object_key);
        out.push(',');
        out.push_str(&s.sha256);
        out.push_str(EOL);
    }
    out.into_bytes()
}

/// Organisations in the release, for the server's lists and lookups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organisations {
    pub las: Vec<OrgLa>,
    pub trusts: Vec<OrgTrust>,
    pub schools: Vec<OrgSchool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgLa {
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgTrust {
    pub uid: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgSchool {
    pub laestab: String,
    pub urn: u32,
    pub name: String,
    pub la_code: String,
    pub phase: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub trust_uid: Option<String>,
    /// Pupils with a result row.
    pub pupils: u32,
}
