//! The results pages: a school's results (summary table, per-subject detail, comparison with
//! its LA and England, what changed in a late release, downloads), printable results letters,
//! and the school chooser for LAs, trusts and the operator. Every page checks the same rules
//! as the downloads (`results::opened`, `results::may_see_school`) and every view of pupil
//! data is recorded in the access log. Pages read the release's precomputed school CSV from
//! the same memory cache as the downloads; a school's results table is rendered once per
//! release (ahead of the opening time while its users wait) and kept in memory. Nothing here
//! touches the portal database except through the access log's background writer.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use nca_pipeline::outputs::{SubjectSummary, Summary};
use nca_pipeline::store::layout;

use crate::AppState;
use crate::auth::roles::{Action, OrgKind};
use crate::auth::session::{Signed, SignedIn};
use crate::error::AppError;
use crate::portal::{Page, Row, Section, render};
use crate::prerendered::Prerendered;
use crate::results::{AuditEvent, Refusal, Release, accepts_encoding, may_see_school, opened};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/results", get(results_home))
        .route("/results/school/{laestab}", get(school_page))
        .route("/results/school/{laestab}/letters", get(letters_page))
        .route("/results/school/{laestab}/{subject}", get(subject_page))
}

/// One pupil's row of a school's results CSV, by column name.
#[derive(Debug, Clone, Default)]
pub struct PupilRow {
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub dob: String,
    /// reading, gps, maths: (raw, result, met, high)
    pub tests: [TestResult; 3],
    pub writing_ta: String,
    pub science_ta: String,
    pub rwm: String,
}

#[derive(Debug, Clone, Default)]
pub struct TestResult {
    pub raw: String,
    pub result: String,
    pub met: String,
    pub high: String,
}

/// The three tested subjects, in the order of the CSV, with their names.
pub const TESTS: [(&str, &str); 3] = [
    ("reading", "English reading"),
    ("gps", "English grammar, punctuation and spelling"),
    ("maths", "Mathematics"),
];

/// What each result code means (data contract, section 2).
pub const CODES: [(&str, &str); 11] = [
    ("A", "Absent from the test"),
    ("B", "Working below the standard of the test"),
    ("F", "Will take the test in the future"),
    ("H", "Result annulled: pupil cheating"),
    ("J", "Just arrived: could not take the test"),
    ("L", "Left the school before the test"),
    ("M", "Missing result: the script has not been marked yet"),
    (
        "N",
        "Sat the test but did not score enough for a scaled score",
    ),
    ("P", "Took the test in a previous year"),
    ("Q", "Result annulled: maladministration"),
    ("U", "Unable to access the test"),
];

/// Read a school's results CSV into rows, by column name so a column's place cannot mislead.
pub fn parse_school_csv(bytes: &[u8]) -> anyhow::Result<Vec<PupilRow>> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(bytes);
    let header = rdr.headers()?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow::anyhow!("the results CSV has no {name} column"))
    };
    let [upn, surname, forename, dob, writing, science, rwm] = [
        col("upn")?,
        col("surname")?,
        col("forename")?,
        col("dob")?,
        col("writing_ta")?,
        col("science_ta")?,
        col("rwm_met")?,
    ];
    let mut tests = Vec::new();
    for (s, _) in TESTS {
        tests.push([
            col(&format!("{s}_raw"))?,
            col(&format!("{s}_result"))?,
            col(&format!("{s}_met"))?,
            col(&format!("{s}_high"))?,
        ]);
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec?;
        let g = |i: usize| rec.get(i).unwrap_or("").to_string();
        let t = |k: usize| TestResult {
            raw: g(tests[k][0]),
            result: g(tests[k][1]),
            met: g(tests[k][2]),
            high: g(tests[k][3]),
        };
        out.push(PupilRow {
            upn: g(upn),
            surname: g(surname),
            forename: g(forename),
            dob: g(dob),
            tests: [t(0), t(1), t(2)],
            writing_ta: g(writing),
            science_ta: g(science),
            rwm: g(rwm),
        });
    }
    Ok(out)
}

impl TestResult {
    /// "104 (raw 38), expected standard" or the code and its meaning.
    fn describe(&self) -> String {
        if self.result.is_empty() {
            return "No result".into();
        }
        if self.raw.is_empty() && self.result.parse::<u32>().is_err() {
            return match CODES.iter().find(|(c, _)| *c == self.result) {
                Some((c, meaning)) => format!("{c}: {meaning}"),
                None => self.result.clone(),
            };
        }
        let standard = match (self.met.as_str(), self.high.as_str()) {
            ("AS", "Y") => ", high score",
            ("AS", _) => ", expected standard",
            ("NS", _) => ", not met",
            _ => "",
        };
        if self.raw.is_empty() {
            format!("{}{standard}", self.result)
        } else {
            format!("{} (raw {}){standard}", self.result, self.raw)
        }
    }
    fn met_label(&self) -> &'static str {
        match self.met.as_str() {
            "AS" => "Yes",
            "NS" => "No",
            _ => "Not counted",
        }
    }
}

impl PupilRow {
    fn name(&self) -> String {
        format!("{} {}", self.forename, self.surname)
    }
}

/// The release a user may read on a page, or the page to show instead: a countdown before
/// the opening time, "nothing published yet", or a refusal.
fn open_for_page(state: &AppState, s: &Signed) -> Result<Arc<Release>, Box<Response>> {
    let page = match opened(state, &s.user) {
        Ok(r) => return Ok(r),
        Err(Refusal::NotOpen(at)) => countdown(state, s, at),
        Err(Refusal::Error(StatusCode::NOT_FOUND, _)) => {
            let mut p = Page::new(state, s, "KS2 test results");
            p.paragraphs = vec!["No results have been published yet.".into()];
            render(StatusCode::OK, &p)
        }
        Err(_) => AppError::Forbidden.into_response(),
    };
    Err(Box::new(page))
}

/// The countdown pages (results, and KS3 lookups) reload at least this often (seconds): they
/// keep the session alive while the user waits (and the connection too, where
/// `server.keep_alive_secs` is longer).
pub const COUNTDOWN_RELOAD_SECS: i64 = 60;

/// Before the opening time: when results open and how long is left, reloading itself at the
/// time (and at least every `COUNTDOWN_RELOAD_SECS`).
fn countdown(state: &AppState, s: &Signed, at: time::OffsetDateTime) -> Response {
    let opens = at.unix_timestamp();
    let left = (opens - state.clock.now()).max(0);
    let when = jiff::Timestamp::from_second(opens)
        .map(|t| {
            t.to_zoned(state.tz.clone())
                .strftime("%-H:%M on %A %-d %B %Y")
                .to_string()
        })
        .unwrap_or_default();
    let mut p = Page::new(state, s, "Your results are not available yet");
    p.paragraphs = vec![
        format!("Results open at {when}."),
        format!(
            "Time remaining: {} hours {} minutes {} seconds. This page updates itself and opens your results at that time: you do not need to sign in again.",
            left / 3600,
            left % 3600 / 60,
            left % 60
        ),
    ];
    p.refresh = Some(left.clamp(1, COUNTDOWN_RELOAD_SECS));
    if s.user.kind == OrgKind::Ks2School {
        render_ahead(state, &s.user.org);
    }
    render(StatusCode::OK, &p)
}

/// While a school's users wait for the opening time, render its results page's
/// `SchoolResults` in the background (once: later reloads find it in memory).
fn render_ahead(state: &AppState, laestab: &str) {
    let Some(release) = state.results.release() else {
        return;
    };
    if state
        .results
        .is_rendered(&release, &school_results_key(laestab))
    {
        return;
    }
    let (state, laestab) = (state.clone(), laestab.to_string());
    tokio::spawn(async move {
        if let Err(e) = school_results(&state, &release, &laestab).await {
            tracing::warn!(school = %laestab, error = %e, "results page not rendered ahead of opening");
        }
    });
}

/// The school's rows, or a page saying why there are none.
async fn school_rows(
    state: &AppState,
    release: &Release,
    laestab: &str,
) -> Result<Vec<PupilRow>, AppError> {
    let csv = state
        .results
        .object(release, &layout::school_csv(laestab))
        .await?;
    match csv {
        Some(b) => Ok(parse_school_csv(&b)?),
        None => Ok(Vec::new()),
    }
}

/// Record a view of a school's pupil data in the access log (batched, off the request path
/// unless the writer is a whole queue behind).
async fn record_view(state: &AppState, user: &SignedIn, release: &Release, what: String) {
    let event = AuditEvent {
        action: "results-viewed",
        actor: user.email.as_str().into(),
        org_id: user.org.as_str().into(),
        target: format!("{}/{what}", release.id).into(),
        at: state.clock.now(),
    };
    if state.audit_tx.send(event).await.is_err() {
        tracing::error!("audit writer stopped: a page view was not recorded");
    }
}

/// The school's name as "Name (DfE number)".
pub(crate) fn school_label(release: &Release, laestab: &str) -> String {
    match release.names.get(laestab) {
        Some(n) => format!("{n} ({laestab})"),
        None => laestab.to_string(),
    }
}

#[derive(Debug, serde::Deserialize, Default)]
struct Search {
    #[serde(default)]
    q: String,
}

/// `/results`: a school's own results; for an LA, a trust or the operator, the combined
/// download and a list of schools to choose from (searchable by name or DfE number).
async fn results_home(
    State(state): State<AppState>,
    s: Signed,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Result<Response, AppError> {
    if s.user.kind == OrgKind::Ks3School {
        return Ok(Redirect::to("/results/ks3").into_response());
    }
    s.require(Action::ViewResults)?;
    let release = match open_for_page(&state, &s) {
        Ok(r) => r,
        Err(page) => return Ok(*page),
    };
    if s.user.kind == OrgKind::Ks2School {
        return school_view(&state, &s, &headers, &release, &s.user.org.clone()).await;
    }
    let mine = |la: &str, trust: &Option<String>| match s.user.kind {
        OrgKind::La => la == s.user.org,
        OrgKind::Mat => trust.as_deref() == Some(s.user.org.as_str()),
        _ => true,
    };
    let q = search.q.trim().to_lowercase();
    let mut schools: Vec<(&String, &str)> = release
        .schools
        .iter()
        .filter(|(_, (la, trust))| mine(la, trust))
        .map(|(l, _)| (l, release.names.get(l).map_or("", String::as_str)))
        .collect();
    let total = schools.len();
    if !q.is_empty() {
        schools.retain(|(l, n)| l.contains(&q) || n.to_lowercase().contains(&q));
    }
    schools.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    const SHOWN: usize = 500;
    let mut p = Page::new(&state, &s, "KS2 test results");
    let whose = match s.user.kind {
        OrgKind::La => "your local authority's",
        OrgKind::Mat => "your trust's",
        _ => "all",
    };
    p.paragraphs = vec![format!(
        "Results for {whose} {total} schools. Download them all in one file, or choose a school to see its results."
    )];
    p.links = match s.user.kind {
        OrgKind::La => vec![(
            format!("/api/v1/results/la/{}.csv", s.user.org),
            "Download all your schools' results (CSV)".into(),
        )],
        OrgKind::Mat => vec![(
            format!("/api/v1/results/trust/{}.csv", s.user.org),
            "Download all your academies' results (CSV)".into(),
        )],
        _ => vec![],
    };
    let mut section = Section {
        heading: "Choose a school".into(),
        head: vec![
            "School".into(),
            "DfE number".into(),
            "Pupils".into(),
            "Results".into(),
        ],
        ..Default::default()
    };
    if !q.is_empty() {
        section.paragraphs.push(format!(
            "{} schools match \u{201c}{}\u{201d}.",
            schools.len(),
            search.q.trim()
        ));
    }
    if schools.len() > SHOWN {
        section.paragraphs.push(format!(
            "Showing the first {SHOWN}: search by name or DfE number to find a school."
        ));
    }
    section.rows = schools
        .iter()
        .take(SHOWN)
        .map(|(l, n)| Row {
            cells: vec![
                n.to_string(),
                l.to_string(),
                release
                    .summaries
                    .schools
                    .get(*l)
                    .map_or(0, |s| s.pupils)
                    .to_string(),
            ],
            links: vec![(
                format!("/results/school/{l}"),
                format!("View results for {n}"),
            )],
        })
        .collect();
    p.sections.push(section);
    p.search = Some(search.q.trim().to_string());
    Ok(render(StatusCode::OK, &p))
}

/// A school's results page, for the school itself or anyone who may see it.
async fn school_page(
    State(state): State<AppState>,
    s: Signed,
    headers: HeaderMap,
    Path(laestab): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::ViewResults)?;
    let release = match open_for_page(&state, &s) {
        Ok(r) => r,
        Err(page) => return Ok(*page),
    };
    if !may_see_school(&s.user, &release, &laestab) {
        return Err(AppError::Forbidden);
    }
    school_view(&state, &s, &headers, &release, &laestab).await
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "–".into())
}

fn average(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

/// The school's, LA's, trust's and England's summaries with their labels.
fn comparisons<'a>(release: &'a Release, laestab: &str) -> Vec<(String, &'a Summary)> {
    let sums = &release.summaries;
    let mut out = Vec::new();
    if let Some(sum) = sums.schools.get(laestab) {
        out.push(("This school".to_string(), sum));
    }
    if let Some((la, trust)) = release.schools.get(laestab) {
        if let Some(sum) = sums.las.get(la) {
            let name = release.names.get(la).map_or(la.as_str(), String::as_str);
            out.push((format!("{name} (local authority)"), sum));
        }
        if let Some(t) = trust
            && let Some(sum) = sums.trusts.get(t)
        {
            let name = release.names.get(t).map_or(t.as_str(), String::as_str);
            out.push((format!("{name} (trust)"), sum));
        }
    }
    out.push(("England".to_string(), &sums.national));
    out
}

fn subject_of<'a>(sum: &'a Summary, subject: &str) -> &'a SubjectSummary {
    match subject {
        "reading" => &sum.reading,
        "gps" => &sum.gps,
        "maths" => &sum.maths,
        _ => &sum.rwm,
    }
}

/// The part of a school's results page that depends only on the release and the school:
/// how many pupils, what changed in a late release, every pupil's results, the comparison
/// with the LA and England, and the links to each subject.
#[derive(Template)]
#[template(path = "school_results.html")]
struct SchoolResults {
    paragraphs: Vec<String>,
    sections: Vec<Section>,
}

/// `SchoolResults` for one school of a release, rendered once (however many ask at once) and
/// then served from memory; empty where the release has no results for the school. The
/// countdown page asks for it while the school's users wait, so that at the opening time the
/// page costs a copy (or, gzip-compressed, a splice), not a parse, a render and a compression.
async fn school_results(
    state: &AppState,
    release: &Release,
    laestab: &str,
) -> Result<Arc<Prerendered>, AppError> {
    let make = async {
        let rows = school_rows(state, release, laestab).await?;
        if rows.is_empty() {
            return Ok(String::new());
        }
        let part = SchoolResults {
            paragraphs: vec![format!(
                "{} pupils. Test results are scaled scores from 80 to 120: 100 or more meets the expected standard and 110 or more is a high score. A letter such as A (absent) is shown where no score was awarded; what each letter means is below.",
                rows.len()
            )],
            sections: school_sections(release, laestab, &rows),
        };
        Ok(part.render()?)
    };
    Ok(state
        .results
        .rendered(release, &school_results_key(laestab), make)
        .await?)
}

/// What a school's `SchoolResults` is kept under, within its release.
pub fn school_results_key(laestab: &str) -> String {
    format!("school/{laestab}")
}

/// `SchoolResults`' sections.
fn school_sections(release: &Release, laestab: &str, rows: &[PupilRow]) -> Vec<Section> {
    let mut sections = Vec::new();
    if let Some(changes) = release.changes.get(laestab) {
        sections.push(Section {
            heading: "What changed in this release".into(),
            head: vec!["Pupil".into(), "UPN".into(), "Change".into()],
            rows: changes
                .iter()
                .map(|c| Row {
                    cells: vec![
                        format!("{} {}", c.forename, c.surname),
                        c.upn.clone(),
                        match c.kind.as_str() {
                            "added" => "Added: results now available".to_string(),
                            "removed" => "Removed from the school's results".to_string(),
                            _ => c
                                .fields
                                .iter()
                                .map(|f| {
                                    let before = if f.before.is_empty() {
                                        "none"
                                    } else {
                                        &f.before
                                    };
                                    let after = if f.after.is_empty() { "none" } else { &f.after };
                                    format!("{}: {before} to {after}", f.column)
                                })
                                .collect::<Vec<_>>()
                                .join("; "),
                        },
                    ],
                    links: vec![],
                })
                .collect(),
            ..Default::default()
        });
    }
    let mut table = Section {
        heading: "Results by pupil".into(),
        head: [
            "Pupil",
            "UPN",
            "Reading",
            "Grammar, punctuation and spelling",
            "Maths",
            "Writing TA",
            "Science TA",
            "Reading, writing and maths",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    for r in rows {
        let rwm = match r.rwm.as_str() {
            "Y" => "Met",
            "N" => "Not met",
            _ => "Not counted",
        };
        table.rows.push(Row {
            cells: vec![
                r.name(),
                r.upn.clone(),
                r.tests[0].describe(),
                r.tests[1].describe(),
                r.tests[2].describe(),
                r.writing_ta.clone(),
                r.science_ta.clone(),
                rwm.into(),
            ],
            links: vec![],
        });
    }
    sections.push(table);
    let mut compare = Section {
        heading: "Compared with the local authority and England".into(),
        paragraphs: vec!["Percentage of pupils meeting the expected standard.".into()],
        head: vec![
            "Group".into(),
            "Reading".into(),
            "Grammar, punctuation and spelling".into(),
            "Maths".into(),
            "Reading, writing and maths".into(),
        ],
        ..Default::default()
    };
    for (name, sum) in comparisons(release, laestab) {
        compare.rows.push(Row {
            cells: vec![
                name,
                pct(sum.reading.pct_met),
                pct(sum.gps.pct_met),
                pct(sum.maths.pct_met),
                pct(sum.rwm.pct_met),
            ],
            links: vec![],
        });
    }
    sections.push(compare);
    let base = format!("/results/school/{laestab}");
    let mut detail = Section {
        heading: "Results by subject".into(),
        ..Default::default()
    };
    for (code, name) in TESTS {
        detail.links.push((
            format!("{base}/{code}"),
            format!("{name}: results by pupil"),
        ));
    }
    detail.links.push((
        format!("{base}/writing"),
        "Writing teacher assessment".into(),
    ));
    detail.links.push((
        format!("{base}/science"),
        "Science teacher assessment".into(),
    ));
    sections.push(detail);
    sections
}

async fn school_view(
    state: &AppState,
    s: &Signed,
    headers: &HeaderMap,
    release: &Release,
    laestab: &str,
) -> Result<Response, AppError> {
    let part = school_results(state, release, laestab).await?;
    let label = school_label(release, laestab);
    let mut p = Page::new(state, s, &format!("KS2 test results: {label}"));
    if part.html.is_empty() {
        p.paragraphs = vec!["There are no results for this school in this release.".into()];
        return Ok(render(StatusCode::OK, &p));
    }
    record_view(state, &s.user, release, format!("school/{laestab}")).await;
    if let Some(changes) = release.changes.get(laestab) {
        p.notice = Some(format!(
            "These results were updated in the latest release: {} pupils' results changed. What changed is listed below.",
            changes.len()
        ));
    }
    let base = format!("/results/school/{laestab}");
    if crate::scripts::may_see_scripts(&s.user, release, laestab) {
        let mut scripts = Section {
            heading: "Marked test scripts".into(),
            links: vec![(
                format!("/scripts/{laestab}"),
                "See each pupil's marked test scripts".into(),
            )],
            ..Default::default()
        };
        if s.user.kind == OrgKind::Ks2School && s.user.may(Action::SchoolTasks) {
            scripts
                .links
                .push(("/reviews".into(), "Reviews of marking".into()));
        }
        p.sections.push(scripts);
    }
    let api = format!("/api/v1/results/school/{laestab}");
    let mut downloads = Section {
        heading: "Downloads".into(),
        links: vec![
            (format!("{api}.csv"), "All results (CSV)".into()),
            (
                format!("{api}.csv?ta=no"),
                "Test results without teacher assessment (CSV)".into(),
            ),
        ],
        ..Default::default()
    };
    for (code, name) in TESTS {
        downloads.links.push((
            format!("{api}.csv?subject={code}"),
            format!("{name} only (CSV)"),
        ));
    }
    downloads.links.extend([
        (
            format!("{api}.ctf"),
            "Common transfer file (CTF) for your management information system".into(),
        ),
        (
            format!("{base}/letters"),
            "Results letters for parents, one page per pupil (print)".into(),
        ),
        (
            format!("{api}-summary.csv"),
            "School summary with local authority and national figures (CSV)".into(),
        ),
        (
            format!("{api}-qla.csv"),
            "Question-level analysis (CSV)".into(),
        ),
    ]);
    p.sections.push(downloads);
    p.sections.push(Section {
        heading: "What the result codes mean".into(),
        head: vec!["Code".into(), "Meaning".into()],
        rows: CODES
            .iter()
            .map(|(c, m)| Row {
                cells: vec![c.to_string(), m.to_string()],
                links: vec![],
            })
            .collect(),
        ..Default::default()
    });
    Ok(page_with_part(p, &part, headers))
}

/// Where a part rendered ahead goes when its page is cut around it: a comment, which nothing
/// else on the page can contain (the template escapes every `<` of what it is given).
const PART_MARK: &str = "<!--nca:prerendered-->";

/// The page with `part` in its place: gzip-compressed when the browser accepts it (the page's
/// own bytes stored around the part's deflate, made when the part was rendered), as it is
/// otherwise. Either way the page is rendered once, with the mark, and cut there.
fn page_with_part(mut p: Page, part: &Prerendered, headers: &HeaderMap) -> Response {
    p.prerendered = Some(PART_MARK.into());
    let html = match p.render() {
        Ok(html) => html,
        Err(e) => return AppError::Unexpected(e.into()).into_response(),
    };
    let Some((head, tail)) = html.split_once(PART_MARK) else {
        return AppError::Unexpected(anyhow::anyhow!("the results page lost its part's mark"))
            .into_response();
    };
    let mut r = if accepts_encoding(headers, "gzip") {
        let mut r = Response::new(Body::from(
            part.gzip_around(head.as_bytes(), tail.as_bytes()),
        ));
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Response::new(Body::from([head, &part.html, tail].concat()))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    r
}

/// One subject in detail: every pupil's raw score, scaled score and outcome, and the
/// school's figures beside its LA's and England's; for writing and science, the TA codes.
async fn subject_page(
    State(state): State<AppState>,
    s: Signed,
    Path((laestab, subject)): Path<(String, String)>,
) -> Result<Response, AppError> {
    s.require(Action::ViewResults)?;
    let release = match open_for_page(&state, &s) {
        Ok(r) => r,
        Err(page) => return Ok(*page),
    };
    if !may_see_school(&s.user, &release, &laestab) {
        return Err(AppError::Forbidden);
    }
    let test = TESTS.iter().position(|(c, _)| *c == subject);
    let name = match (test, subject.as_str()) {
        (Some(i), _) => TESTS[i].1,
        (None, "writing") => "Writing teacher assessment",
        (None, "science") => "Science teacher assessment",
        _ => return Err(AppError::NotFound),
    };
    let rows = school_rows(&state, &release, &laestab).await?;
    record_view(
        &state,
        &s.user,
        &release,
        format!("school/{laestab}/{subject}"),
    )
    .await;
    let label = school_label(&release, &laestab);
    let mut p = Page::new(&state, &s, &format!("{name}: {label}"));
    p.links = vec![(
        format!("/results/school/{laestab}"),
        "Back to all results".into(),
    )];
    if let Some(i) = test {
        p.paragraphs = vec![format!(
            "{} pupils. The raw score is the marks awarded; the scaled score (80 to 120) comes from the raw score by the published conversion table.",
            rows.len()
        )];
        let mut summary = Section {
            heading: "Compared with the local authority and England".into(),
            head: vec![
                "Group".into(),
                "Pupils counted".into(),
                "Met the expected standard".into(),
                "High score".into(),
                "Average scaled score".into(),
            ],
            ..Default::default()
        };
        for (group, sum) in comparisons(&release, &laestab) {
            let t = subject_of(sum, &subject);
            summary.rows.push(Row {
                cells: vec![
                    group,
                    t.counted.to_string(),
                    pct(t.pct_met),
                    pct(t.pct_high),
                    average(t.average_scaled),
                ],
                links: vec![],
            });
        }
        p.sections.push(summary);
        let mut table = Section {
            heading: "Results by pupil".into(),
            head: [
                "Pupil",
                "UPN",
                "Raw score",
                "Scaled score or code",
                "Met the expected standard",
                "High score",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        };
        for r in &rows {
            let t = &r.tests[i];
            table.rows.push(Row {
                cells: vec![
                    r.name(),
                    r.upn.clone(),
                    if t.raw.is_empty() {
                        "–".into()
                    } else {
                        t.raw.clone()
                    },
                    t.describe_result(),
                    t.met_label().into(),
                    match t.high.as_str() {
                        "Y" => "Yes".into(),
                        "N" => "No".into(),
                        _ => "–".into(),
                    },
                ],
                links: vec![],
            });
        }
        p.sections.push(table);
        p.links.push((
            format!("/api/v1/results/school/{laestab}.csv?subject={subject}"),
            format!("Download {name} results (CSV)"),
        ));
    } else {
        let code = |r: &PupilRow| {
            if subject == "writing" {
                r.writing_ta.clone()
            } else {
                r.science_ta.clone()
            }
        };
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for r in &rows {
            *counts.entry(code(r)).or_default() += 1;
        }
        p.paragraphs = vec![format!(
            "{} pupils. Teacher assessment codes as the school submitted them; none means no code was submitted.",
            rows.len()
        )];
        p.sections.push(Section {
            heading: "Pupils by code".into(),
            head: vec!["Code".into(), "Pupils".into()],
            rows: counts
                .into_iter()
                .map(|(c, n)| Row {
                    cells: vec![if c.is_empty() { "none".into() } else { c }, n.to_string()],
                    links: vec![],
                })
                .collect(),
            ..Default::default()
        });
        p.sections.push(Section {
            heading: "Results by pupil".into(),
            head: vec!["Pupil".into(), "UPN".into(), "Code".into()],
            rows: rows
                .iter()
                .map(|r| Row {
                    cells: vec![r.name(), r.upn.clone(), code(r)],
                    links: vec![],
                })
                .collect(),
            ..Default::default()
        });
    }
    Ok(render(StatusCode::OK, &p))
}

impl TestResult {
    /// The scaled score, or the code with its meaning.
    fn describe_result(&self) -> String {
        match CODES.iter().find(|(c, _)| *c == self.result) {
            Some((c, meaning)) => format!("{c}: {meaning}"),
            None if self.result.is_empty() => "–".into(),
            None => self.result.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "letters.html")]
struct Letters {
    title: String,
    errors: Vec<(String, String)>,
    notice: Option<String>,
    user: Option<SignedIn>,
    csrf: String,
    idle_seconds: i64,
    warning_seconds: i64,
    refresh: Option<i64>,
    school: String,
    year: i32,
    back: String,
    letters: Vec<Letter>,
}

struct Letter {
    name: String,
    dob: String,
    upn: String,
    /// (subject, result, met)
    rows: Vec<(String, String, String)>,
}

/// Results letters for parents and carers: one printable page per pupil.
async fn letters_page(
    State(state): State<AppState>,
    s: Signed,
    Path(laestab): Path<String>,
) -> Result<Response, AppError> {
    s.require(Action::ViewResults)?;
    let release = match open_for_page(&state, &s) {
        Ok(r) => r,
        Err(page) => return Ok(*page),
    };
    if !may_see_school(&s.user, &release, &laestab) {
        return Err(AppError::Forbidden);
    }
    let rows = school_rows(&state, &release, &laestab).await?;
    record_view(
        &state,
        &s.user,
        &release,
        format!("school/{laestab}/letters"),
    )
    .await;
    let ta = |code: &str| {
        if code.is_empty() {
            "Not submitted".to_string()
        } else {
            code.to_string()
        }
    };
    let letters = rows
        .iter()
        .map(|r| {
            let mut lines: Vec<(String, String, String)> = TESTS
                .iter()
                .zip(&r.tests)
                .map(|((_, name), t)| (name.to_string(), t.describe_result(), t.met_label().into()))
                .collect();
            let ta_met = |c: &str| match c {
                "GDS" | "EXS" => "Yes",
                "" => "Not counted",
                _ => "No",
            };
            lines.push((
                "Writing (teacher assessment)".into(),
                ta(&r.writing_ta),
                ta_met(&r.writing_ta).into(),
            ));
            lines.push((
                "Science (teacher assessment)".into(),
                ta(&r.science_ta),
                ta_met(&r.science_ta).into(),
            ));
            Letter {
                name: r.name(),
                dob: r.dob.clone(),
                upn: r.upn.clone(),
                rows: lines,
            }
        })
        .collect();
    let school = school_label(&release, &laestab);
    let t = Letters {
        title: format!("Results letters: {school}"),
        errors: vec![],
        notice: None,
        user: Some(s.user.clone()),
        csrf: s.csrf.clone(),
        idle_seconds: state.settings.auth.idle_minutes * 60,
        warning_seconds: state.settings.auth.warning_minutes * 60,
        refresh: None,
        school,
        year: release.manifest.cycle_year,
        back: format!("/results/school/{laestab}"),
        letters,
    };
    Ok(render(StatusCode::OK, &t))
}
