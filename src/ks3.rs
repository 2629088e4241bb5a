//! KS3 lookups: secondary schools find incoming pupils' KS2 results by UPN, surname and date
//! of birth, from a pasted list, a CSV file or CTF files sent by feeder primaries. A pupil is
//! found only where all three match (surnames whatever their case and spacing), and nothing
//! says which part failed, so UPNs cannot be probed one at a time. Every lookup is rate
//! limited like a download and recorded in the access log with what matched.

use askama::Template;
use axum::Router;
use axum::extract::{Extension, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use nca_pipeline::outputs::{CtfHeader, EOL, HEADER, ctf_document};

use crate::AppState;
use crate::auth::roles::Action;
use crate::auth::session::{Signed, SignedIn, check_csrf};
use crate::error::AppError;
use crate::http::ClientAddr;
use crate::portal::render;
use crate::results::{AuditEvent, Release, normalise_surname};

/// Most pupils one lookup may ask about (a large secondary's intake is about 300).
pub const MAX_PUPILS: usize = 1000;

/// One pupil asked about.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
pub struct Ks3Query {
    pub upn: String,
    pub surname: String,
    pub dob: String,
}

/// What a lookup found: per pupil asked, its results-CSV line if all three details matched.
#[derive(Debug)]
pub struct Found {
    pub lines: Vec<Option<String>>,
}

impl Found {
    pub fn matched(&self) -> usize {
        self.lines.iter().flatten().count()
    }
    /// The results CSV of the pupils found (each once), with the contract's header.
    pub fn csv(&self) -> String {
        let mut out = String::from(HEADER);
        out.push_str(EOL);
        for l in self.lines.iter().flatten() {
            out.push_str(l);
        }
        out
    }
}

/// Match each pupil asked about against the release (a pupil asked twice is found once).
pub fn lookup(release: &Release, asked: &[Ks3Query]) -> Found {
    let mut seen = std::collections::HashSet::new();
    let lines = asked
        .iter()
        .map(|q| {
            let upn = q.upn.trim().to_uppercase();
            let (surname, dob) = (normalise_surname(&q.surname), q.dob.trim());
            let e = release
                .pupils
                .get(&upn)?
                .iter()
                .find(|e| e.surname == surname && e.dob == dob)?;
            seen.insert(upn).then(|| e.line.clone())
        })
        .collect();
    Found { lines }
}

/// Record a lookup: how many were asked, how many matched, and which UPNs.
pub async fn record(
    state: &AppState,
    user: &SignedIn,
    release: &Release,
    asked: &[Ks3Query],
    found: &Found,
) {
    let upns: Vec<String> = asked
        .iter()
        .zip(&found.lines)
        .filter(|(_, l)| l.is_some())
        .map(|(q, _)| q.upn.trim().to_uppercase())
        .collect();
    let event = AuditEvent {
        action: "ks3-lookup",
        actor: user.email.as_str().into(),
        org_id: user.org.as_str().into(),
        target: format!(
            "{}/ks3-lookup: {} asked, {} matched: {}",
            release.id,
            asked.len(),
            upns.len(),
            upns.join(" ")
        )
        .into(),
        at: state.clock.now(),
    };
    if state.audit_tx.send(event).await.is_err() {
        tracing::error!("audit writer stopped: a lookup was not recorded");
    }
}

/// Why a lookup cannot run now, for both the API and the pages.
pub enum Closed {
    NoPermission,
    NoRelease,
    NotOpen(time::OffsetDateTime),
    RateLimited(u64),
}

/// Check a lookup may run: the permission, a release that is open to KS3 schools, and the
/// rate limits.
pub fn admit(
    state: &AppState,
    user: &SignedIn,
    ip: std::net::IpAddr,
) -> Result<std::sync::Arc<Release>, Closed> {
    if !user.may(Action::Ks3Lookup) {
        return Err(Closed::NoPermission);
    }
    let release = state.results.release().ok_or(Closed::NoRelease)?;
    if state.clock.now() < release.manifest.ks3_opens_at.unix_timestamp() {
        return Err(Closed::NotOpen(release.manifest.ks3_opens_at));
    }
    state
        .limits
        .check(&user.uid, &user.org, ip)
        .map_err(Closed::RateLimited)?;
    Ok(release)
}

// ---------- reading what the school gives us ----------

/// A date of birth as typed: `2013-09-01`, `01/09/2013` or `1/9/2013`, as `YYYY-MM-DD`.
pub fn parse_dob(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (y, m, d) = if let Some((d, rest)) = s.split_once('/') {
        let (m, y) = rest.split_once('/').ok_or("write dates as 01/09/2013")?;
        (y, m, d)
    } else {
        let mut p = s.splitn(3, '-');
        match (p.next(), p.next(), p.next()) {
            (Some(y), Some(m), Some(d)) => (y, m, d),
            _ => {
                return Err(format!(
                    "\u{201c}{s}\u{201d} is not a date: write 2013-09-01 or 01/09/2013"
                ));
            }
        }
    };
    let num = |v: &str| v.trim().parse::<u16>().ok();
    let date = match (num(y), num(m), num(d)) {
        (Some(y), Some(m), Some(d)) if y >= 1900 => time::Month::try_from(m as u8)
            .ok()
            .and_then(|m| time::Date::from_calendar_date(i32::from(y), m, d as u8).ok()),
        _ => None,
    };
    date.map(|d| d.to_string())
        .ok_or_else(|| format!("\u{201c}{s}\u{201d} is not a real date"))
}

/// Check one pupil's details; the error says what is wrong (never whether they exist).
fn pupil(upn: &str, surname: &str, dob: &str) -> Result<Ks3Query, String> {
    let upn = upn.trim().to_uppercase();
    nca_pipeline::domain::Upn::parse(&upn).map_err(|e| format!("UPN {upn}: {e}"))?;
    if surname.trim().is_empty() {
        return Err("the surname is empty".into());
    }
    Ok(Ks3Query {
        upn,
        surname: surname.trim().to_string(),
        dob: parse_dob(dob)?,
    })
}

/// A pasted list: one pupil a line, fields split by tabs or commas; a header line is skipped.
pub fn parse_pasted(text: &str) -> (Vec<Ks3Query>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let sep = if line.contains('\t') { '\t' } else { ',' };
        let f: Vec<&str> = line.split(sep).map(str::trim).collect();
        if i == 0 && f[0].eq_ignore_ascii_case("upn") {
            continue;
        }
        match f.as_slice() {
            [upn, surname, dob] => match pupil(upn, surname, dob) {
                Ok(q) => out.push(q),
                Err(e) => errors.push(format!("Pasted list, line {}: {e}", i + 1)),
            },
            _ => errors.push(format!(
                "Pasted list, line {}: expected a UPN, a surname and a date of birth, found {} values",
                i + 1,
                f.len()
            )),
        }
    }
    (out, errors)
}

/// A CSV file with a header naming `upn`, `surname` and `dob` (or `date_of_birth`).
pub fn parse_csv(name: &str, bytes: &[u8]) -> (Vec<Ks3Query>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let header = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return (out, vec![format!("{name}: not a CSV file ({e})")]),
    };
    let col = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
    };
    let (Some(u), Some(s), Some(d)) = (
        col(&["upn"]),
        col(&["surname"]),
        col(&["dob", "date_of_birth"]),
    ) else {
        return (
            out,
            vec![format!(
                "{name}: the header row must name the columns upn, surname and dob"
            )],
        );
    };
    for (i, rec) in rdr.records().enumerate() {
        let row = i + 2;
        match rec {
            Ok(r) => match pupil(
                r.get(u).unwrap_or(""),
                r.get(s).unwrap_or(""),
                r.get(d).unwrap_or(""),
            ) {
                Ok(q) => out.push(q),
                Err(e) => errors.push(format!("{name}, row {row}: {e}")),
            },
            Err(e) => errors.push(format!("{name}, row {row}: {e}")),
        }
    }
    (out, errors)
}

/// A Common Transfer File: each `<Pupil>`'s `UPN`, `Surname` and `DOB`.
pub fn parse_ctf(name: &str, bytes: &[u8]) -> (Vec<Ks3Query>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    match crate::ctf::pupils(name, bytes) {
        Ok(pupils) => {
            for p in pupils {
                match pupil(p.field("UPN"), p.field("Surname"), p.field("DOB")) {
                    Ok(q) => out.push(q),
                    Err(e) => errors.push(format!("{name}, pupil {}: {e}", p.n)),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    (out, errors)
}

// ---------- pages ----------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/results/ks3", get(form_page).post(lookup_page))
        .route("/results/ks3/download", post(download))
}

#[derive(Template, Default)]
#[template(path = "ks3.html")]
struct Ks3Page {
    title: String,
    errors: Vec<(String, String)>,
    notice: Option<String>,
    user: Option<SignedIn>,
    csrf: String,
    idle_seconds: i64,
    warning_seconds: i64,
    refresh: Option<i64>,
    pasted: String,
    found: Option<FoundView>,
}

impl Ks3Page {
    fn has_error(&self, field: &str) -> bool {
        self.errors.iter().any(|(f, _)| f == field)
    }
}

struct FoundView {
    summary: String,
    rows: Vec<Vec<String>>,
    missing: Vec<String>,
    /// The found pupils, one `upn<TAB>surname<TAB>dob` a line, for the download form.
    pupils: String,
}

fn page(state: &AppState, s: &Signed) -> Ks3Page {
    Ks3Page {
        title: "Look up incoming pupils' KS2 results".into(),
        user: Some(s.user.clone()),
        csrf: s.csrf.clone(),
        idle_seconds: state.settings.auth.idle_minutes * 60,
        warning_seconds: state.settings.auth.warning_minutes * 60,
        ..Default::default()
    }
}

/// The page to show when a lookup cannot run.
fn closed_page(state: &AppState, s: &Signed, c: Closed) -> Response {
    let mut p = page(state, s);
    match c {
        Closed::NoPermission => return AppError::Forbidden.into_response(),
        Closed::NoRelease => {
            p.title = "No results have been published yet".into();
            p.notice = Some("Come back when results are released.".into());
        }
        Closed::NotOpen(at) => {
            let left = (at.unix_timestamp() - state.clock.now()).max(0);
            let when = jiff::Timestamp::from_second(at.unix_timestamp())
                .map(|t| {
                    t.to_zoned(state.tz.clone())
                        .strftime("%-H:%M on %A %-d %B %Y")
                        .to_string()
                })
                .unwrap_or_default();
            p.title = "Lookups are not open yet".into();
            p.notice = Some(format!(
                "Secondary schools can look up incoming pupils from {when}. This page opens by itself then."
            ));
            p.refresh = Some(left.clamp(1, crate::results_pages::COUNTDOWN_RELOAD_SECS));
        }
        Closed::RateLimited(wait) => {
            p.errors.push((
                "pasted".into(),
                format!("You have made many lookups in a short time. Wait {wait} seconds, then try again."),
            ));
            let mut r = render(StatusCode::TOO_MANY_REQUESTS, &p);
            r.headers_mut().insert(header::RETRY_AFTER, wait.into());
            return r;
        }
    }
    render(StatusCode::OK, &p)
}

async fn form_page(State(state): State<AppState>, s: Signed) -> Result<Response, AppError> {
    s.require(Action::Ks3Lookup)?;
    match state.results.release() {
        None => Ok(closed_page(&state, &s, Closed::NoRelease)),
        Some(r) if state.clock.now() < r.manifest.ks3_opens_at.unix_timestamp() => Ok(closed_page(
            &state,
            &s,
            Closed::NotOpen(r.manifest.ks3_opens_at),
        )),
        Some(_) => Ok(render(StatusCode::OK, &page(&state, &s))),
    }
}

/// Every pupil in the form (pasted, CSV, CTFs), or the problems found, naming the source.
async fn read_form(
    s: &Signed,
    mut form: Multipart,
) -> Result<(Vec<Ks3Query>, Vec<(String, String)>, String), AppError> {
    let (mut asked, mut errors, mut pasted, mut csrf) =
        (Vec::new(), Vec::new(), String::new(), String::new());
    let mut add = |field: &str, (q, e): (Vec<Ks3Query>, Vec<String>)| {
        asked.extend(q);
        errors.extend(e.into_iter().map(|e| (field.to_string(), e)));
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                add(
                    "pasted",
                    (vec![], vec![format!("The upload could not be read: {e}")]),
                );
                break;
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().unwrap_or("").to_string();
        let bytes: Bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                add(
                    &name,
                    (vec![], vec![format!("{file}: could not be read: {e}")]),
                );
                continue;
            }
        };
        match name.as_str() {
            "csrf" => csrf = String::from_utf8_lossy(&bytes).into_owned(),
            "pasted" => {
                pasted = String::from_utf8_lossy(&bytes).into_owned();
                add("pasted", parse_pasted(&pasted));
            }
            "csv_file" if !file.is_empty() => add("csv_file", parse_csv(&file, &bytes)),
            "ctf_files" if !file.is_empty() => add("ctf_files", parse_ctf(&file, &bytes)),
            _ => {}
        }
    }
    check_csrf(&s.csrf, &csrf)?;
    if asked.len() > MAX_PUPILS {
        errors.push((
            "pasted".into(),
            format!(
                "You asked about {} pupils: look up at most {MAX_PUPILS} at a time",
                asked.len()
            ),
        ));
    }
    if asked.is_empty() && errors.is_empty() {
        errors.push((
            "pasted".into(),
            "Paste a list of pupils, or choose a CSV or CTF file".into(),
        ));
    }
    Ok((asked, errors, pasted))
}

async fn lookup_page(
    State(state): State<AppState>,
    s: Signed,
    addr: Option<Extension<ClientAddr>>,
    form: Multipart,
) -> Result<Response, AppError> {
    s.require(Action::Ks3Lookup)?;
    let (asked, errors, pasted) = read_form(&s, form).await?;
    if !errors.is_empty() {
        let mut p = page(&state, &s);
        p.errors = errors;
        p.pasted = pasted;
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &p));
    }
    let release = match admit(&state, &s.user, ClientAddr::ip_of(addr)) {
        Ok(r) => r,
        Err(c) => return Ok(closed_page(&state, &s, c)),
    };
    let found = lookup(&release, &asked);
    record(&state, &s.user, &release, &asked, &found).await;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut pupils = String::new();
    for (q, line) in asked.iter().zip(&found.lines) {
        let Some(line) = line else {
            missing.push(format!("{}, {}, born {}", q.upn, q.surname, q.dob));
            continue;
        };
        let rec =
            crate::results_pages::parse_school_csv(format!("{HEADER}{EOL}{line}").as_bytes())?;
        if let Some(r) = rec.first() {
            rows.push(vec![
                format!("{} {}", r.forename, r.surname),
                r.upn.clone(),
                r.dob.clone(),
                r.tests[0].result.clone(),
                r.tests[1].result.clone(),
                r.tests[2].result.clone(),
                r.writing_ta.clone(),
                r.science_ta.clone(),
            ]);
        }
        pupils.push_str(&format!("{}\t{}\t{}\n", q.upn, q.surname, q.dob));
    }
    let mut p = page(&state, &s);
    p.title = "Incoming pupils' KS2 results".into();
    p.found = Some(FoundView {
        summary: format!(
            "Found {} of the {} pupils you asked about.",
            found.matched(),
            asked.len()
        ),
        rows,
        missing,
        pupils,
    });
    Ok(render(StatusCode::OK, &p))
}

/// The found pupils again, as CSV or CTF (looked up and recorded afresh).
async fn download(
    State(state): State<AppState>,
    s: Signed,
    addr: Option<Extension<ClientAddr>>,
    axum::Form(f): axum::Form<std::collections::HashMap<String, String>>,
) -> Result<Response, AppError> {
    s.require(Action::Ks3Lookup)?;
    check_csrf(&s.csrf, f.get("csrf").map_or("", String::as_str))?;
    let (asked, errors) = parse_pasted(f.get("pupils").map_or("", String::as_str));
    if !errors.is_empty() || asked.len() > MAX_PUPILS {
        return Err(AppError::NotFound);
    }
    let release = match admit(&state, &s.user, ClientAddr::ip_of(addr)) {
        Ok(r) => r,
        Err(c) => return Ok(closed_page(&state, &s, c)),
    };
    let found = lookup(&release, &asked);
    record(&state, &s.user, &release, &asked, &found).await;
    let ctf = f.get("format").is_some_and(|v| v == "ctf");
    let (body, content_type, name) = if ctf {
        let csv = found.csv();
        let mut rdr = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
        let fields: Vec<Vec<String>> = rdr
            .records()
            .flatten()
            .map(|r| r.iter().map(str::to_string).collect())
            .collect();
        let generated = time::OffsetDateTime::from_unix_timestamp(state.clock.now())
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let doc = ctf_document(
            &CtfHeader {
                source_laestab: "",
                source_urn: "",
                source_name: "Standards and Testing Agency",
                dest_laestab: &s.user.org,
                year: release.manifest.cycle_year,
                generated: &generated,
            },
            &fields,
        );
        (doc, "application/xml", "ks2-results-incoming.xml")
    } else {
        (
            found.csv().into_bytes(),
            "text/csv; charset=utf-8",
            "ks2-results-incoming.csv",
        )
    };
    let mut r = Response::new(axum::body::Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")).expect("ascii name"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_birth_are_read_as_typed_and_checked() {
        assert_eq!(parse_dob("2013-09-01").unwrap(), "2013-09-01");
        assert_eq!(parse_dob(" 01/09/2013 ").unwrap(), "2013-09-01");
        assert_eq!(parse_dob("1/9/2013").unwrap(), "2013-09-01");
        assert!(
            parse_dob("31/02/2013")
                .unwrap_err()
                .contains("not a real date")
        );
        assert!(parse_dob("2013").is_err());
        assert!(
            parse_dob("01/09/13").is_err(),
            "two-digit years are ambiguous"
        );
    }

    #[test]
    fn a_pasted_list_takes_tabs_or_commas_and_names_each_bad_line() {
        let (ok, errors) = parse_pasted(
            "UPN\tSurname\tDOB\nP999200113001\tAble\t02/03/2013\n\nd999200113002, Bright ,2013-03-03\nX1,Cole,2013-03-04\nP999200113001,Able\n",
        );
        assert_eq!(
            ok,
            vec![
                Ks3Query {
                    upn: "P999200113001".into(),
                    surname: "Able".into(),
                    dob: "2013-03-02".into()
                },
                Ks3Query {
                    upn: "D999200113002".into(),
                    surname: "Bright".into(),
                    dob: "2013-03-03".into()
                },
            ]
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("Pasted list, line 5: UPN X1"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("Pasted list, line 6: expected"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_csv_needs_its_columns_and_errors_name_the_file_and_row() {
        let (ok, errors) = parse_csv(
            "intake.csv",
            b"surname,DOB,upn,form\nAble,2013-03-02,P999200113001,7A\nBright,2013-13-01,D999200113002,7B\n",
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(
            errors,
            vec!["intake.csv, row 3: \u{201c}2013-13-01\u{201d} is not a real date"]
        );
        let (ok, errors) = parse_csv("x.csv", b"name,born\nAble,2013-03-02\n");
        assert!(ok.is_empty());
        assert!(
            errors[0].contains("x.csv: the header row must name"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_ctf_gives_each_pupils_upn_surname_and_date_of_birth() {
        let doc = ctf_document(
            &CtfHeader {
                source_laestab: "9992001",
                source_urn: "100001",
                source_name: "Rules Primary",
                dest_laestab: "9994001",
                year: 2024,
                generated: "2024-07-09T07:30:00Z",
            },
            &[
                ["P999200113001", "Able", "Ann", "2013-03-02", "F"]
                    .map(String::from)
                    .to_vec(),
                ["D999200113002", "O'Brien & Co", "Ben", "2013-03-03", "M"]
                    .map(String::from)
                    .to_vec(),
            ],
        );
        let (ok, errors) = parse_ctf("feeder.xml", &doc);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].surname, "O'Brien & Co");
        assert_eq!(ok[1].dob, "2013-03-03");
        let (_, errors) = parse_ctf("broken.xml", b"<CTfile><Pupil><UPN>P99</UPN></Pupil>");
        assert!(
            errors[0].starts_with("broken.xml, pupil 1: UPN P99"),
            "{errors:?}"
        );
        let (_, errors) = parse_ctf("notes.txt", b"hello");
        assert!(errors[0].contains("no pupils found"), "{errors:?}");
    }
}
