//! The activity engine through the whole app on a paused clock: My Activity's sections, every
//! window rule (opening, deadline, late additions, the 5pm HDF deadline, the operator's
//! reopening), permissions and audiences (school types, gates, LAs acting for schools), pupil
//! registration (add, edit, CSV upload with an error report, submit), the attendance register,
//! the HDF, TA uploads with a validation report and an LA submitting for a school, the audit
//! trail (copies, emails, search), the operator's pages, and the export round trip through the
//! pipeline's validator.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use nca_portal::accounts::{self, Actor};
use nca_portal::auth::Clock;
use nca_portal::auth::roles::{Role, RoleSet};
use nca_portal::config::{Overrides, Settings};
use nca_portal::{AppState, orgs};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data-pipeline/tests/fixtures/rules"
);
const SCHOOL: &str = "9992001";
const ACADEMY: &str = "9992002";

/// A local time in London as Unix seconds.
fn at(s: &str) -> i64 {
    let dt: jiff::civil::DateTime = s.parse().unwrap();
    dt.to_zoned(jiff::tz::TimeZone::get("Europe/London").unwrap())
        .unwrap()
        .timestamp()
        .as_second()
}

struct World {
    state: AppState,
    app: nca_portal::App,
    dir: tempfile::TempDir,
}

async fn world(start: &str, tweak: impl FnOnce(&mut Settings, &std::path::Path)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(
        std::path::Path::new("/nonexistent-config"),
        &Overrides {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    settings.auth.password_expiry_days = 0;
    tweak(&mut settings, dir.path());
    let state = AppState::open(settings, Clock::paused_at(at(start)))
        .await
        .unwrap();
    orgs::import(&state.db, std::path::Path::new(FIXTURE), 0)
        .await
        .unwrap();
    let users: &[(&str, &str, &[Role])] = &[
        (
            "head@rules.sch.uk",
            SCHOOL,
            &[Role::AccountManager, Role::GeneralUser],
        ),
        ("am@rules.sch.uk", SCHOOL, &[Role::AccountManager]),
        ("aa@rules.sch.uk", SCHOOL, &[Role::AccessArrangements]),
        (
            "head@anne.sch.uk",
            ACADEMY,
            &[Role::AccountManager, Role::GeneralUser],
        ),
        ("la@testshire.gov.uk", "999", &[Role::LaGeneralUser]),
        ("lam@testshire.gov.uk", "999", &[Role::LaAccountManager]),
        ("senior@testshire.gov.uk", "999", &[Role::LaSeniorManager]),
        ("mod1@testshire.gov.uk", "999", &[Role::Moderator]),
        ("mod2@testshire.gov.uk", "999", &[Role::Moderator]),
        ("modman@testshire.gov.uk", "999", &[Role::ModerationManager]),
        ("ks3@high.sch.uk", "9994001", &[Role::Ks3User]),
        ("mat@trust.org.uk", "12345", &[Role::MatUser]),
        ("operator@sta.gov.uk", "operator", &[Role::Operator]),
    ];
    for (email, org, roles) in users {
        accounts::create_user(
            &state,
            &Actor::cli(),
            org,
            email,
            email,
            RoleSet::of(roles),
            Some(PW),
        )
        .await
        .unwrap();
    }
    let app = nca_portal::app(state.clone());
    World { state, app, dir }
}

impl World {
    /// Move the paused clock to a London time (never backwards).
    fn to(&self, s: &str) {
        let t = at(s);
        let now = self.state.clock.now();
        assert!(t >= now, "the clock only moves on");
        self.state.clock.advance(t - now);
    }
    async fn page(&self, path: &str, cookie: &str) -> (StatusCode, String) {
        let (status, _, body) = send(&self.app, get(path, cookie)).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
    /// POST a form with the session's CSRF token (read from any signed-in page).
    async fn post(
        &self,
        path: &str,
        cookie: &str,
        pairs: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let (_, home) = self.page("/activities", cookie).await;
        let csrf = meta_csrf(&home);
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(pairs);
        let (status, headers, body) = send(&self.app, form_post(path, cookie, &all)).await;
        let location = headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            status,
            String::from_utf8_lossy(&body).into_owned(),
            location,
        )
    }
    async fn upload(
        &self,
        path: &str,
        cookie: &str,
        file: &str,
        bytes: &str,
    ) -> (StatusCode, String) {
        self.upload_as(path, cookie, "file", file, bytes).await
    }
    async fn upload_as(
        &self,
        path: &str,
        cookie: &str,
        field: &str,
        file: &str,
        bytes: &str,
    ) -> (StatusCode, String) {
        let (_, home) = self.page("/activities", cookie).await;
        let csrf = meta_csrf(&home);
        let boundary = "XnCaBoUnDaRy";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: text/csv\r\n\r\n{bytes}\r\n--{boundary}--\r\n"
        );
        let req = Request::post(path)
            .header(header::COOKIE, cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .unwrap();
        let (status, _, body) = send(&self.app, req).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
    async fn status(&self, act: &str, org: &str) -> Option<String> {
        nca_portal::activities::status(&self.state.db, 2025, act, org)
            .await
            .unwrap()
            .map(|s| s.status)
    }
    async fn audits(&self, action: &str) -> i64 {
        use sqlx::Row as _;
        sqlx::query("SELECT COUNT(*) AS n FROM audit WHERE action = $1")
            .bind(action)
            .fetch_one(&self.state.db)
            .await
            .unwrap()
            .get("n")
    }
    async fn census(&self) {
        // The fixture's pupils, with the one whose recorded names are not legal names fixed.
        let text = std::fs::read_to_string(format!("{FIXTURE}/pupils.csv"))
            .unwrap()
            .replace("\"O'Neil, Jr\",\"Ann \"\"Annie\"\"\"", "O'Neil,Ann");
        let path = self.dir.path().join("census.csv");
        std::fs::write(&path, text).unwrap();
        let r = nca_portal::activities::export::census(&self.state.db, 2025, &path, 0)
            .await
            .unwrap();
        assert_eq!(r, Ok(13));
    }
}

fn meta_csrf(html: &str) -> String {
    let at = html.find("name=\"nca-csrf\" content=\"").unwrap() + 25;
    html[at..].split('"').next().unwrap().to_string()
}

/// The part of My Activity under a heading, up to the next heading.
fn section<'a>(html: &'a str, heading: &str) -> &'a str {
    let start = html
        .find(&format!(">{heading}</h2>"))
        .unwrap_or_else(|| panic!("no {heading}: {html}"));
    let rest = &html[start..];
    let end = rest[5..].find("<h2").map_or(rest.len(), |e| e + 5);
    &rest[..end]
}

/// The subjects of every email sent to `to`.
fn subjects(w: &World, to: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(w.state.settings.outbox())
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        if head
            .lines()
            .any(|l| l.starts_with("To: ") && l.contains(to))
        {
            out.extend(
                head.lines()
                    .filter_map(|l| l.strip_prefix("Subject: "))
                    .map(String::from),
            );
        }
    }
    out
}

/// The address of the document whose link text starts with `kind`, in a part of a page.
fn doc_link(html: &str, kind: &str) -> String {
    let i = html
        .find(&format!("\">{kind}"))
        .unwrap_or_else(|| panic!("no {kind} link: {html}"));
    let start = html[..i].rfind("/activities/documents/").unwrap();
    html[start..i].to_string()
}

#[tokio::test]
async fn my_activity_sorts_activities_into_its_sections_through_the_cycle() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, html) = w.page("/activities", &head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(section(&html, "Outstanding activity").contains("Pupil registration"));
    assert!(
        section(&html, "Outstanding activity").contains("Due by 11:59pm on Friday 7 March 2025")
    );
    assert!(
        section(&html, "Coming up").contains(
            "KS2 headteacher&#39;s declaration form: Opens at 8:00am on Thursday 15 May 2025"
        ),
        "{}",
        section(&html, "Coming up")
    );
    assert!(section(&html, "Completed activity").contains("None."));
    // Submitting moves it to completed, with the copy and the receipt email as documents.
    let (status, _, loc) = w
        .post("/activities/pupil-registration/check", &head, &[])
        .await;
    assert_eq!(
        (status, loc.as_str()),
        (
            StatusCode::SEE_OTHER,
            "/activities/pupil-registration/submitted"
        )
    );
    let (_, html) = w.page("/activities", &head).await;
    let done = section(&html, "Completed activity");
    assert!(
        done.contains("Pupil registration")
            && done.contains("Copy of the form")
            && done.contains("Email"),
        "{done}"
    );
    assert!(!section(&html, "Outstanding activity").contains("Pupil registration"));
    // Search by pupil name and by UPN finds the copy; a name that is not there finds nothing.
    for q in ["hart", "N999200113008"] {
        let (_, html) = w.page(&format!("/activities?q={q}"), &head).await;
        assert!(
            section(&html, &format!("Documents matching \u{201c}{q}\u{201d}"))
                .contains("Pupil registration: submitted by"),
            "{q}"
        );
    }
    let (_, html) = w.page("/activities?q=nobody-at-all", &head).await;
    assert!(section(&html, "Documents matching \u{201c}nobody-at-all\u{201d}").contains("None."));
    // A user without the school-tasks permission sees none of the school's tasks.
    let am = sign_in(&w.state, &w.app, "am@rules.sch.uk").await;
    let (_, html) = w.page("/activities", &am).await;
    assert!(
        !html.contains("Pupil registration"),
        "an account manager alone has no tasks"
    );
    let (status, _) = w.page("/activities/pupil-registration", &am).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_activity_the_operator_decides_is_in_progress_until_decided() {
    // A cycle of one decided, optional activity: next year's rules are a new file, not code.
    let w = world("2025-05-20T10:00", |s, dir| {
        let text = nca_portal::activities::cycle::EMBEDDED
            .replace("decided = false\nemails = [\"submitted\", \"reopened\", \"chased\"]\n\n[[activity.audience]]\norgs = \"schools\"\nschool_types = [\"maintained\", \"academy\", \"free\", \"special\", \"mod\", \"independent\", \"nmss\"]\npermission = \"school-tasks\"\n\n# ARA 2.2, 3.1 and 3.2",
                     "decided = true\nemails = [\"submitted\", \"decided\"]\n\n[[activity.audience]]\norgs = \"schools\"\nmandatory = false\npermission = \"school-tasks\"\n\n# ARA 2.2, 3.1 and 3.2");
        assert!(text.contains("decided = true"));
        let path = dir.join("cycle-test.toml");
        std::fs::write(&path, text).unwrap();
        s.activities.cycle = path.display().to_string();
    })
    .await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (_, html) = w.page("/activities", &head).await;
    assert!(
        section(&html, "Available activity").contains("KS2 headteacher"),
        "optional: available"
    );
    for (path, pairs) in [
        (
            "/activities/hdf/who",
            vec![("name", "Hana Head"), ("is_head", "yes")],
        ),
        (
            "/activities/hdf/confirm",
            vec![("administration", "guidance")],
        ),
        ("/activities/hdf/check", vec![]),
    ] {
        let (status, _, _) = w.post(path, &head, &pairs).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
    }
    let (_, html) = w.page("/activities", &head).await;
    assert!(section(&html, "In progress activity").contains("awaiting a decision"));
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (status, html, _) = w
        .post(
            &format!("/operator/activities/hdf/orgs/{SCHOOL}/decide"),
            &op,
            &[("decision", "accepted")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter the reason for the decision"));
    let (status, _, _) = w
        .post(
            &format!("/operator/activities/hdf/orgs/{SCHOOL}/decide"),
            &op,
            &[
                ("decision", "accepted"),
                ("reason", "Complete and in time."),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = w.page("/activities", &head).await;
    let done = section(&html, "Completed activity");
    assert!(
        done.contains("KS2 headteacher") && done.contains("Letter"),
        "{done}"
    );
    assert_eq!(w.audits("activity-decided").await, 1);
    let got = subjects(&w, "head@rules.sch.uk");
    assert!(
        got.iter()
            .any(|s| s == "KS2 headteacher's declaration form submitted"),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|s| s == "KS2 headteacher's declaration form: accepted"),
        "{got:?}"
    );
}

#[tokio::test]
async fn registration_windows_late_additions_and_reopening_are_enforced_on_the_server() {
    let w = world("2025-02-09T12:00", |_, _| {}).await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let pupil = [
        ("upn", "H801200001001"),
        ("forename", "Ann"),
        ("surname", "Able"),
        ("dob", "2014-03-27"),
        ("gender", "F"),
        ("reading_reg", "registered"),
        ("gps_reg", "registered"),
        ("maths_reg", "registered"),
    ];
    // Before it opens: refused, saying when it opens.
    let (status, html, _) = w
        .post("/activities/pupil-registration/pupils/new", &head, &pupil)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("opens at 8:00am on Monday 10 February 2025"),
        "{html}"
    );
    // Open: added.
    w.to("2025-02-10T08:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _, loc) = w
        .post("/activities/pupil-registration/pupils/new", &head, &pupil)
        .await;
    assert_eq!(
        (status, loc.as_str()),
        (
            StatusCode::SEE_OTHER,
            "/activities/pupil-registration?added=H801200001001"
        )
    );
    // The last second before the deadline is inside it; a second after, only additions.
    w.to("2025-03-07T23:59");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let mut changed = pupil;
    changed[5] = ("reading_reg", "below");
    let (status, _, _) = w
        .post(
            "/activities/pupil-registration/pupils/H801200001001",
            &head,
            &changed,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    w.to("2025-03-08T00:00");
    let (status, html, _) = w
        .post(
            "/activities/pupil-registration/pupils/H801200001001",
            &head,
            &changed,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("The deadline for Pupil registration has passed. You can still add pupils who arrived after it"), "{html}");
    let late = [
        ("upn", "G80120000101A"),
        ("forename", "Ben"),
        ("surname", "Late"),
        ("dob", "2014-05-01"),
        ("gender", "M"),
        ("reading_reg", "registered"),
        ("gps_reg", "registered"),
        ("maths_reg", "registered"),
    ];
    let (status, _, _) = w
        .post("/activities/pupil-registration/pupils/new", &head, &late)
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a pupil who arrived after the deadline is still added"
    );
    let (status, _, _) = w
        .post("/activities/pupil-registration/check", &head, &[])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "and submitted");
    // After late additions close: read-only, and the page says so.
    w.to("2025-05-16T00:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _, _) = w
        .post("/activities/pupil-registration/pupils/new", &head, &late)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, html) = w.page("/activities/pupil-registration", &head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("The form is now read-only") && !html.contains("Add a pupil"));
    // The operator reopens it for this school only, with a reason; audited and emailed.
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (status, html, _) = w
        .post(
            &format!("/operator/activities/pupil-registration/orgs/{SCHOOL}/reopen"),
            &op,
            &[("reason", ""), ("days", "3")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter the reason for reopening"));
    let (status, _, _) = w
        .post(
            &format!("/operator/activities/pupil-registration/orgs/{SCHOOL}/reopen"),
            &op,
            &[
                ("reason", "Helpline call 12345: pupil missed."),
                ("days", "3"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(w.audits("activity-reopened").await, 1);
    let (status, _, _) = w
        .post(
            "/activities/pupil-registration/pupils/H801200001001",
            &head,
            &changed,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "reopened: changes are taken again"
    );
    assert_eq!(
        w.status("pupil-registration", SCHOOL).await.as_deref(),
        Some("draft"),
        "a change after submitting needs a new submission"
    );
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    let (status, _, _) = w
        .post("/activities/pupil-registration/pupils/new", &anne, &late)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "other schools stay closed");
    w.to("2025-05-19T00:01");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _, _) = w
        .post(
            "/activities/pupil-registration/pupils/H801200001001",
            &head,
            &changed,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the reopening ends when it says"
    );
}

#[tokio::test]
async fn the_hdf_deadline_is_5pm_and_its_steps_check_each_answer() {
    let w = world("2025-05-15T07:59", |_, _| {}).await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _) = w.page("/activities/hdf/who", &head).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not before 8am on 15 May");
    w.to("2025-05-15T08:00");
    let (status, html, _) = w
        .post(
            "/activities/hdf/who",
            &head,
            &[("name", ""), ("is_head", "")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("Enter your full name")
            && html.contains("Select whether you are the headteacher")
    );
    let (_, _, loc) = w
        .post(
            "/activities/hdf/who",
            &head,
            &[("name", "Dee Puty"), ("is_head", "no")],
        )
        .await;
    assert_eq!(loc, "/activities/hdf/role");
    // The draft is kept as the user types (the page's script), and comes back after a time-out.
    let (_, home) = w.page("/activities", &head).await;
    let req = Request::post("/activities/hdf/draft")
        .header(header::COOKIE, &head)
        .header("x-csrf-token", meta_csrf(&home))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("role=Deputy+head+with+delegated+authority"))
        .unwrap();
    assert_eq!(send(&w.app, req).await.0, StatusCode::NO_CONTENT);
    w.state.clock.advance(31 * 60);
    let (status, _) = w.page("/activities/hdf/role", &head).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "timed out: to sign in");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (_, html) = w.page("/activities/hdf/role", &head).await;
    assert!(
        html.contains("value=\"Deputy head with delegated authority\""),
        "the draft came back"
    );
    let (_, _, loc) = w
        .post(
            "/activities/hdf/role",
            &head,
            &[("role", "Deputy head with delegated authority")],
        )
        .await;
    assert_eq!(loc, "/activities/hdf/confirm");
    let (status, html, _) = w
        .post(
            "/activities/hdf/confirm",
            &head,
            &[("administration", "issues"), ("details", "")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Say what the issues were"));
    let (_, _, loc) = w
        .post(
            "/activities/hdf/confirm",
            &head,
            &[
                ("administration", "issues"),
                (
                    "details",
                    "A fire alarm during maths paper 2; reported on 14 May.",
                ),
            ],
        )
        .await;
    assert_eq!(loc, "/activities/hdf/check");
    let (_, html) = w.page("/activities/hdf/check", &head).await;
    for text in [
        "Dee Puty",
        "Deputy head with delegated authority",
        "A fire alarm during maths paper 2",
        "Accept and submit",
    ] {
        assert!(html.contains(text), "check your answers shows {text}");
    }
    // 4:59:59pm on 30 May is inside the deadline; 5:00:01pm is not.
    w.to("2025-05-30T16:59");
    w.state.clock.advance(59);
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _, _) = w
        .post(
            "/activities/hdf/confirm",
            &head,
            &[
                ("administration", "issues"),
                (
                    "details",
                    "A fire alarm during maths paper 2; reported on 14 May.",
                ),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    w.state.clock.advance(2);
    let (status, html, _) = w.post("/activities/hdf/check", &head, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("The deadline for KS2 headteacher&#39;s declaration form was 5:00pm on Friday 30 May 2025"), "{html}");
    assert_eq!(w.status("hdf", SCHOOL).await.as_deref(), Some("draft"));
}

#[tokio::test]
async fn pupils_are_added_checked_and_uploaded_and_a_bad_upload_changes_nothing() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (_, html) = w.page("/activities/pupil-registration", &head).await;
    assert!(
        html.contains("12 pupils on your list"),
        "the census pre-filled the list"
    );
    let bad = [
        ("upn", "Z801200001001"),
        ("forename", "R2D2"),
        ("surname", "Able"),
        ("dob", "2001-01-01"),
        ("gender", ""),
        ("reading_reg", "registered"),
        ("gps_reg", "registered"),
        ("maths_reg", "registered"),
    ];
    let (status, html, _) = w
        .post("/activities/pupil-registration/pupils/new", &head, &bad)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for e in [
        "href=\"#upn\"",
        "href=\"#forename\"",
        "href=\"#dob\"",
        "href=\"#gender\"",
        "between 2010-09-01 and 2017-08-31",
    ] {
        assert!(html.contains(e), "{e}");
    }
    let csv_bad = "upn,surname,forename,dob,gender,reading_reg,gps_reg,maths_reg\nH801200001001,New,Nia,2014-01-01,F,registered,registered,registered\nZ801200001001,Bad,Bob,2014-01-01,F,registered,sideways,registered\n";
    let (status, html) = w
        .upload(
            "/activities/pupil-registration/upload",
            &head,
            "pupils.csv",
            csv_bad,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("pupils.csv, row 3, column upn") && html.contains("row 3, column gps_reg"),
        "{html}"
    );
    assert_eq!(
        nca_portal::activities::registration::pupils(&w.state.db, 2025, SCHOOL)
            .await
            .unwrap()
            .len(),
        12,
        "nothing changed"
    );
    let link = html
        .split("href=\"/activities/reports/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, report) = w.page(&format!("/activities/reports/{link}"), &head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        report.starts_with("row,column,value,problem") && report.contains("3,gps_reg,sideways"),
        "{report}"
    );
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    assert_eq!(
        w.page(&format!("/activities/reports/{link}"), &anne)
            .await
            .0,
        StatusCode::NOT_FOUND,
        "another school cannot read the report"
    );
    let good = csv_bad.replace(
        "Z801200001001,Bad,Bob,2014-01-01,F,registered,sideways",
        "G80120000101A,Good,Bob,2014-01-01,M,registered,below",
    );
    let (status, _) = w
        .upload(
            "/activities/pupil-registration/upload",
            &head,
            "pupils.csv",
            &good,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let list = nca_portal::activities::registration::pupils(&w.state.db, 2025, SCHOOL)
        .await
        .unwrap();
    assert_eq!(list.len(), 14);
    assert_eq!(
        list.iter().find(|p| p.upn == "G80120000101A").unwrap().reg[1],
        "below"
    );
    // Submitting emails the account managers and keeps a printable copy naming every pupil.
    let (status, _, _) = w
        .post("/activities/pupil-registration/check", &head, &[])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.status("pupil-registration", SCHOOL).await.as_deref(),
        Some("submitted")
    );
    assert!(
        subjects(&w, "am@rules.sch.uk").contains(&"Pupil registration submitted".to_string()),
        "the account manager has the receipt"
    );
    let (_, html) = w.page("/activities", &head).await;
    let doc = doc_link(section(&html, "Completed activity"), "Copy of the form");
    let (status, copy) = w.page(&doc, &head).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        copy.contains("G80120000101A") && copy.contains("Nia New") && copy.contains("data-print")
    );
    assert_eq!(w.page(&doc, &anne).await.0, StatusCode::NOT_FOUND);
    let la = sign_in(&w.state, &w.app, "la@testshire.gov.uk").await;
    assert_eq!(w.page(&doc, &la).await.0, StatusCode::OK, "the school's LA");
    let (_, html) = w.page(&format!("/activities?q={SCHOOL}"), &la).await;
    assert!(
        html.contains("Rules Primary School (9992001)"),
        "an LA searches by DfE number"
    );
}

#[tokio::test]
async fn audiences_permissions_and_gates_decide_who_reaches_an_activity() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    for (email, path, want) in [
        (
            "ks3@high.sch.uk",
            "/activities/pupil-registration",
            StatusCode::FORBIDDEN,
        ),
        (
            "la@testshire.gov.uk",
            "/activities/pupil-registration",
            StatusCode::FORBIDDEN,
        ),
        (
            "mat@trust.org.uk",
            "/activities/pupil-registration",
            StatusCode::FORBIDDEN,
        ),
        (
            "aa@rules.sch.uk",
            "/activities/pupil-registration",
            StatusCode::FORBIDDEN,
        ),
        (
            "head@rules.sch.uk",
            "/activities/pupil-registration",
            StatusCode::OK,
        ),
        (
            "head@rules.sch.uk",
            "/activities/nonsense",
            StatusCode::NOT_FOUND,
        ),
        (
            "head@rules.sch.uk",
            "/operator/activities",
            StatusCode::FORBIDDEN,
        ),
        (
            "la@testshire.gov.uk",
            "/operator/export/pupils.csv",
            StatusCode::FORBIDDEN,
        ),
        ("mat@trust.org.uk", "/activities", StatusCode::OK),
    ] {
        let c = sign_in(&w.state, &w.app, email).await;
        assert_eq!(w.page(path, &c).await.0, want, "{email} {path}");
    }
    // An independent school reaches registration only after its standard test order and an
    // approved choice of LA (the gates of the cycle file; the whole path is in the part 2 test).
    sqlx::query("UPDATE orgs SET school_type = 'independent' WHERE id = $1")
        .bind(ACADEMY)
        .execute(&w.state.db)
        .await
        .unwrap();
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    let (status, html) = w.page("/activities/pupil-registration", &anne).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("once it has Standard test order completed and Local authority for monitoring and moderation completed"), "{html}");
    let (_, html) = w.page("/activities", &anne).await;
    assert!(
        section(&html, "Available activity")
            .contains("Not yet available: needs Standard test order completed"),
        "optional for independents, gated"
    );
}

#[tokio::test]
async fn the_attendance_register_opens_each_test_day_and_takes_only_the_contract_codes() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    assert_eq!(
        w.page("/activities/attendance-register", &head).await.0,
        StatusCode::FORBIDDEN,
        "gated on registration"
    );
    w.post("/activities/pupil-registration/check", &head, &[])
        .await;
    w.to("2025-05-12T08:59");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    assert_eq!(
        w.page("/activities/attendance-register/day/2025-05-12", &head)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "not before the day's tests"
    );
    w.to("2025-05-12T09:00");
    let (status, html) = w
        .page("/activities/attendance-register/day/2025-05-12", &head)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("P999200113001:gps1") && !html.contains("W999200113005:gps1"),
        "registered pupils only (not those who left)"
    );
    let (status, html, _) = w
        .post(
            "/activities/attendance-register/day/2025-05-12",
            &head,
            &[
                ("date", "2025-05-12"),
                ("P999200113001:gps1", "X"),
                ("next", "check"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Choose present, absent, unable to access or just arrived for Ann Able"));
    let (status, html, _) = w
        .post(
            "/activities/attendance-register/day/2025-05-12",
            &head,
            &[
                ("date", "2025-05-12"),
                ("G999200113004:gps1", "A"),
                ("next", "check"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("is not registered for GPS paper 1"));
    let (_, _, loc) = w
        .post(
            "/activities/attendance-register/day/2025-05-12",
            &head,
            &[
                ("date", "2025-05-12"),
                ("P999200113001:gps1", "A"),
                ("P999200113001:gps2", "J"),
                ("next", "check"),
            ],
        )
        .await;
    assert_eq!(loc, "/activities/attendance-register/day/2025-05-12/check");
    let (_, html) = w.page(&loc, &head).await;
    assert!(html.contains("A: Absent") && html.contains("J: Just arrived"));
    let (_, _, loc) = w
        .post(
            "/activities/attendance-register/day/2025-05-12/check",
            &head,
            &[],
        )
        .await;
    assert_eq!(loc, "/activities/attendance-register?day=2025-05-12");
    assert_eq!(
        w.status("attendance-register", SCHOOL).await.as_deref(),
        Some("draft"),
        "one day of four"
    );
    w.to("2025-05-15T09:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    for day in ["2025-05-13", "2025-05-14", "2025-05-15"] {
        let (status, _, _) = w
            .post(
                &format!("/activities/attendance-register/day/{day}/check"),
                &head,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{day}");
    }
    assert_eq!(
        w.status("attendance-register", SCHOOL).await.as_deref(),
        Some("submitted"),
        "every day is in"
    );
    let codes = nca_portal::activities::attendance::codes(&w.state.db, 2025, SCHOOL)
        .await
        .unwrap();
    assert_eq!(codes.len(), 2);
    w.to("2025-05-23T17:01");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, _, _) = w
        .post(
            "/activities/attendance-register/day/2025-05-12",
            &head,
            &[("date", "2025-05-12"), ("next", "check")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "closed after the deadline");
}

#[tokio::test]
async fn ta_uploads_are_judged_per_pupil_and_an_la_submits_for_a_school_that_arranged_it() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    w.to("2025-05-20T10:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let ta_bad = "upn,writing,science\nP999200113001,EXS,EXS\nD999200113002,GDS,GDS\nH801200001001,EXS,EXS\n";
    let (status, html) = w
        .upload("/activities/ta/upload", &head, "ta.csv", ta_bad)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("2 pupils are red, so nothing was saved"),
        "{html}"
    );
    assert!(
        html.contains("not a science TA code")
            && html.contains("not on the school&#39;s pupil registration")
    );
    assert!(
        nca_portal::activities::ta::codes(&w.state.db, 2025, SCHOOL)
            .await
            .unwrap()
            .is_empty()
    );
    let ta_good =
        "upn,writing,science\nP999200113001,EXS,EXS\nD999200113002,GDS,EXS\nW999200113005,EXS,L\n";
    let (status, html) = w
        .upload("/activities/ta/upload", &head, "ta.csv", ta_good)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("3 pupils saved (2 green, 1 amber, 0 red)"),
        "{html}"
    );
    assert!(html.contains("the pupil is registered as left, but writing is EXS rather than L"));
    // Incomplete TA cannot be submitted.
    let (status, _, _) = w.post("/activities/ta/check", &head, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The school arranges for its LA to submit; the LA enters the rest and submits.
    let la = sign_in(&w.state, &w.app, "la@testshire.gov.uk").await;
    assert_eq!(
        w.page(&format!("/activities/ta/for/{SCHOOL}"), &la).await.0,
        StatusCode::FORBIDDEN,
        "not arranged yet"
    );
    let (status, _, _) = w
        .post("/activities/ta/arrangement", &head, &[("who", "la")])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, html) = w.page("/activities/ta", &la).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Rules Primary School") && !html.contains("St Anne"),
        "only schools that arranged it"
    );
    let mut rows = String::from("laestab,upn,writing,science\n");
    for (upn, reg) in [
        ("P999200113001", "EXS"),
        ("D999200113002", "GDS"),
        ("G999200113004", "WTS"),
        ("W999200113005", "L"),
        ("K999200113006", "PK4"),
        ("Z999200113007", "EXS"),
        ("N999200113008", "A"),
        ("C999200113009", "EXS"),
        ("N999200113010", "EXS"),
        ("C999200113011", "EXS"),
        ("R999200113012", "F"),
    ] {
        let sci = if reg == "L" || reg == "F" || reg == "A" {
            reg
        } else if reg == "PK4" {
            "HNM"
        } else {
            "EXS"
        };
        rows.push_str(&format!("{SCHOOL},{upn},{reg},{sci}\n"));
    }
    let (status, html) = w
        .upload(
            "/activities/ta/upload",
            &la,
            "schools.csv",
            &format!("{rows}{ACADEMY},Y999200213001,EXS,EXS\n"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "St Anne's has not arranged it"
    );
    assert!(html.contains("school 9992002 is not one you can submit TA for"));
    let (status, html) = w
        .upload("/activities/ta/upload", &la, "schools.csv", &rows)
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (status, _, loc) = w
        .post("/activities/ta/check", &la, &[("school", SCHOOL)])
        .await;
    assert_eq!(
        (status, loc.as_str()),
        (StatusCode::SEE_OTHER, "/activities/ta?submitted=1")
    );
    let st = nca_portal::activities::status(&w.state.db, 2025, "ta", SCHOOL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (st.status.as_str(), st.submitted_org.as_deref()),
        ("submitted", Some("999"))
    );
    let other_la = sign_in(&w.state, &w.app, "lam@testshire.gov.uk").await;
    assert_eq!(
        w.page("/activities/ta", &other_la).await.0,
        StatusCode::FORBIDDEN,
        "an LA account manager alone has no TA permission"
    );
}

#[tokio::test]
async fn the_operator_sees_every_status_chases_the_outstanding_and_exports_what_the_pipeline_validates()
 {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    w.post("/activities/pupil-registration/check", &head, &[])
        .await;
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (status, html) = w.page("/operator/activities/pupil-registration", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("2 organisations in the audience; 1 mandatory and not yet submitted"),
        "{html}"
    );
    let (_, _, loc) = w
        .post("/operator/activities/pupil-registration/chase", &op, &[])
        .await;
    assert_eq!(loc, "/operator/activities/pupil-registration?chased=1");
    assert!(
        subjects(&w, "head@anne.sch.uk").contains(&"Reminder: Pupil registration".to_string()),
        "St Anne's account manager is chased"
    );
    assert!(
        !subjects(&w, "am@rules.sch.uk")
            .iter()
            .any(|s| s.starts_with("Reminder")),
        "not the school that submitted"
    );
    assert_eq!(w.audits("activity-chased").await, 1);
    // Attendance and TA, then the export, put beside the fixture's marks, validate clean.
    w.to("2025-05-20T10:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    w.post(
        "/activities/attendance-register/day/2025-05-13",
        &head,
        &[
            ("date", "2025-05-13"),
            ("N999200113008:reading", "A"),
            ("next", "save"),
        ],
    )
    .await;
    w.upload(
        "/activities/ta/upload",
        &head,
        "ta.csv",
        "upn,writing,science\nP999200113001,EXS,EXS\nD999200113002,GDS,EXS\n",
    )
    .await;
    let intake = w.dir.path().join("intake");
    std::fs::create_dir_all(&intake).unwrap();
    for f in [
        "schools.csv",
        "las.csv",
        "items.csv",
        "marks.csv",
        "conversion.csv",
    ] {
        std::fs::copy(format!("{FIXTURE}/{f}"), intake.join(f)).unwrap();
    }
    let counts = nca_portal::activities::export::write_all(&w.state.db, 2025, &intake)
        .await
        .unwrap();
    assert_eq!(counts, [13, 1, 2]);
    let rep = nca_pipeline::report::Reporter::in_memory();
    let loaded = nca_pipeline::validate::load(&intake, None, &rep, None);
    assert_eq!(rep.count(), 0, "{:?}", rep.problems());
    assert_eq!(loaded.pupils.len(), 13);
    // The operator's download is the same file.
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (status, body) = w.page("/operator/export/pupils.csv", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        std::fs::read_to_string(intake.join("pupils.csv")).unwrap()
    );
}

#[tokio::test]
async fn a_bad_census_file_names_each_row_and_imports_nothing() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    let path = w.dir.path().join("census.csv");
    std::fs::write(&path, "upn,laestab,surname,forename,dob,gender,reading_reg,gps_reg,maths_reg\nP999200113001,9992001,Able,Ann,2013-03-02,F,,,\nP999200113002,9992001,Able,Ann,2013-03-02,F,,,\nD999200113002,9999999,Bright,Ben,2013-03-03,M,,,\n").unwrap();
    let errors = nca_portal::activities::export::census(&w.state.db, 2025, &path, 0)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("row 3, column upn")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("row 4, column laestab: 9999999 is not an imported KS2 school")),
        "{errors:?}"
    );
    assert!(
        nca_portal::activities::registration::pupils(&w.state.db, 2025, SCHOOL)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_malformed_cycle_file_stops_the_server_naming_the_entry_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cycle-2026.toml");
    std::fs::write(
        &path,
        nca_portal::activities::cycle::EMBEDDED.replace(
            "closes = \"2025-05-30T17:00\"",
            "closes = \"30 May 2025 5pm\"",
        ),
    )
    .unwrap();
    let mut settings = Settings::load(
        std::path::Path::new("/nonexistent-config"),
        &Overrides {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    settings.activities.cycle = path.display().to_string();
    let e = AppState::open(settings, Clock::paused_at(0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cycle-2026.toml: activity[3] (\"hdf\"): field `closes`"),
        "{e}"
    );
}

// ---------- part 2 ----------

#[tokio::test]
async fn an_independent_school_orders_tests_chooses_an_la_and_then_reaches_registration() {
    let w = world("2024-11-01T10:00", |_, _| {}).await;
    sqlx::query("UPDATE orgs SET school_type = 'independent' WHERE id = $1")
        .bind(ACADEMY)
        .execute(&w.state.db)
        .await
        .unwrap();
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    let (_, html) = w.page("/activities", &anne).await;
    let due = section(&html, "Outstanding activity");
    assert!(
        due.contains("Standard test order")
            && due.contains("Local authority for monitoring and moderation"),
        "{due}"
    );
    // A maintained school is not asked for a standard order.
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    assert_eq!(
        w.page("/activities/standard-test-order", &head).await.0,
        StatusCode::FORBIDDEN
    );
    // The order: numbers checked, then the independent school's two confirmations.
    let (status, html, _) = w
        .post(
            "/activities/standard-test-order/q/1",
            &anne,
            &[("q:reading:standard", "thirty")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("English reading, Standard: enter a whole number from 0 to 500"),
        "{html}"
    );
    let (_, _, loc) = w
        .post(
            "/activities/standard-test-order/q/1",
            &anne,
            &[("q:reading:standard", "30"), ("q:maths1:standard", "30")],
        )
        .await;
    assert_eq!(loc, "/activities/standard-test-order/q/2");
    let (status, html, _) = w
        .post("/activities/standard-test-order/q/2", &anne, &[])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Confirm: A privacy notice"));
    w.post(
        "/activities/standard-test-order/q/2",
        &anne,
        &[("value", "yes")],
    )
    .await;
    let (_, _, loc) = w
        .post(
            "/activities/standard-test-order/q/3",
            &anne,
            &[("value", "yes")],
        )
        .await;
    assert_eq!(loc, "/activities/standard-test-order/check");
    let (_, html) = w.page("/activities/standard-test-order/check", &anne).await;
    assert!(
        html.contains("English reading, Standard: 30") && html.contains("Confirmed"),
        "{html}"
    );
    let (_, _, loc) = w
        .post("/activities/standard-test-order/check", &anne, &[])
        .await;
    assert_eq!(loc, "/activities/standard-test-order/submitted");
    // A modified order: braille uncontracted only for reading; no drafts, so a new session starts afresh.
    let (status, html, _) = w
        .post(
            "/activities/modified-test-order/q/1",
            &head,
            &[("q:maths1:braille_unc", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("Braille uncontracted is not available for Mathematics Paper 1: arithmetic"),
        "{html}"
    );
    let (_, _, loc) = w
        .post(
            "/activities/modified-test-order/q/1",
            &head,
            &[("q:reading:braille_unc", "1"), ("q:gps1:ep", "2")],
        )
        .await;
    assert_eq!(loc, "/activities/modified-test-order/q/2");
    let (_, html) = w.page("/activities/modified-test-order", &head).await;
    assert!(
        html.contains("Enlarged print: 2"),
        "answers kept within the session"
    );
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (_, html) = w.page("/activities/modified-test-order", &head).await;
    assert!(
        html.contains("Start now") && !html.contains("Enlarged print: 2"),
        "a new session starts the order again"
    );
    // The choice of LA: the agreement must be confirmed; the chosen LA decides.
    let (status, html, _) = w
        .post("/activities/la-choice/choose", &anne, &[("la", "999")])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Confirm that you have a written agreement"));
    w.post(
        "/activities/la-choice/choose",
        &anne,
        &[("la", "999"), ("agreement", "yes")],
    )
    .await;
    let (_, _, loc) = w.post("/activities/la-choice/check", &anne, &[]).await;
    assert_eq!(loc, "/activities/la-choice/submitted");
    let la = sign_in(&w.state, &w.app, "la@testshire.gov.uk").await;
    assert_eq!(
        w.page(&format!("/activities/la-choice/requests/{ACADEMY}"), &la)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "a general user does not decide"
    );
    let senior = sign_in(&w.state, &w.app, "senior@testshire.gov.uk").await;
    let (_, html) = w.page("/activities/la-choice", &senior).await;
    assert!(html.contains("awaiting your decision"), "{html}");
    let (status, html, _) = w
        .post(
            &format!("/activities/la-choice/requests/{ACADEMY}"),
            &senior,
            &[("decision", "rejected")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter the reason for rejecting"));
    let (status, _, _) = w
        .post(
            &format!("/activities/la-choice/requests/{ACADEMY}"),
            &senior,
            &[
                ("decision", "accepted"),
                ("reason", "Agreement signed 20 October."),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.status("la-choice", ACADEMY).await.as_deref(),
        Some("accepted")
    );
    assert!(
        subjects(&w, "head@anne.sch.uk")
            .contains(&"Local authority for monitoring and moderation: approved".to_string())
    );
    let (_, html) = w.page("/activities", &anne).await;
    assert!(section(&html, "Completed activity").contains("Letter"));
    // With both done, registration opens to the school when its window does.
    w.to("2025-02-20T10:00");
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    assert_eq!(
        w.page("/activities/pupil-registration", &anne).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_academy_that_converted_after_the_cutoff_keeps_its_geographic_la() {
    let w = world("2024-11-01T10:00", |_, _| {}).await;
    let anne = sign_in(&w.state, &w.app, "head@anne.sch.uk").await;
    let (status, html) = w.page("/activities/la-choice", &anne).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Monitored and moderated by: LA 999 (geographic)"));
    let (status, html, _) = w
        .post(
            "/activities/la-choice/choose",
            &anne,
            &[("la", "999"), ("agreement", "yes")],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an academy need not choose its own LA"
    );
    assert!(html.contains("That is your geographic local authority"));
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (status, _, _) = w
        .post(
            &format!("/operator/activities/la-choice/orgs/{ACADEMY}/gate/converted-after-cutoff"),
            &op,
            &[("reason", "Converted 1 October 2024.")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, html) = w.page("/activities/la-choice", &anne).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("became an academy on or after the cut-off date"),
        "{html}"
    );
}

#[tokio::test]
async fn access_arrangements_are_only_for_that_permission_and_the_operator_decides_them() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    w.census().await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    assert_eq!(
        w.page("/activities/additional-time", &head).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, html) = w.page("/activities", &head).await;
    assert!(
        !html.contains("Additional time application"),
        "not even listed without the permission"
    );
    let aa = sign_in(&w.state, &w.app, "aa@rules.sch.uk").await;
    let (status, html, _) = w
        .post(
            "/activities/additional-time/q/1",
            &aa,
            &[("value", "H801200001001")],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "only the school's own pupils"
    );
    assert!(html.contains("is not one of the choices"));
    let (_, _, loc) = w
        .post(
            "/activities/additional-time/q/1",
            &aa,
            &[("value", "P999200113001")],
        )
        .await;
    assert_eq!(loc, "/activities/additional-time/q/2");
    w.post(
        "/activities/additional-time/q/2",
        &aa,
        &[(
            "value",
            "Processing speed in the 2nd percentile; 50% extra time in class.",
        )],
    )
    .await;
    let (status, _) = w
        .upload_as("/activities/additional-time/q/3/file", &aa, "value", "", "")
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the evidence is required"
    );
    let (status, _) = w
        .upload_as(
            "/activities/additional-time/q/3/file",
            &aa,
            "value",
            "ehcp.txt",
            "EHCP section F: extra time.",
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = w.page("/activities/additional-time/check", &aa).await;
    assert!(
        html.contains("Ann Able (P999200113001)") && html.contains("ehcp.txt"),
        "{html}"
    );
    let (_, _, loc) = w.post("/activities/additional-time/check", &aa, &[]).await;
    assert_eq!(loc, "/activities/additional-time/submitted");
    let (_, html) = w.page("/activities", &aa).await;
    assert!(section(&html, "In progress activity").contains("Additional time application"));
    // The evidence: the school's AA users and the operator; not the head without the permission.
    let (_, html) = w.page("/activities/additional-time", &aa).await;
    let link = html
        .split("href=\"/activities/additional-time/files/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let path = format!("/activities/additional-time/files/{link}");
    let (status, body) = w.page(&path, &aa).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "EHCP section F: extra time.")
    );
    assert_eq!(w.page(&path, &head).await.0, StatusCode::NOT_FOUND);
    let senior = sign_in(&w.state, &w.app, "senior@testshire.gov.uk").await;
    assert_eq!(
        w.page(&path, &senior).await.0,
        StatusCode::NOT_FOUND,
        "the LA sees counts, not the evidence"
    );
    let (_, html) = w.page("/activities", &head).await;
    assert!(
        !html.contains("Additional time application"),
        "nor its copy in the trail"
    );
    // The LA's report counts the school's applications and pupils.
    let (status, csv) = w
        .page("/activities/access-arrangements?format=csv", &senior)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        csv.contains("Rules Primary School,9992001,Additional time application,submitted,")
            && csv.trim_end().ends_with(",1"),
        "{csv}"
    );
    assert!(!csv.contains("P999200113001"));
    // The operator decides; the school is emailed and keeps the letter.
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    assert_eq!(w.page(&path, &op).await.0, StatusCode::OK);
    w.post(
        &format!("/operator/activities/additional-time/orgs/{SCHOOL}/decide"),
        &op,
        &[("decision", "accepted"), ("reason", "Meets the criteria.")],
    )
    .await;
    assert!(
        subjects(&w, "aa@rules.sch.uk")
            .contains(&"Additional time application: accepted".to_string())
    );
    let (status, csv) = w
        .page("/operator/activities/additional-time/submissions.csv", &op)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        csv.contains("9992001,Rules Primary School,accepted")
            && csv.contains("Ann Able (P999200113001)"),
        "{csv}"
    );
}

#[tokio::test]
async fn message_us_threads_run_between_a_school_and_the_operator() {
    let w = world("2025-02-20T10:00", |_, _| {}).await;
    let aa = sign_in(&w.state, &w.app, "aa@rules.sch.uk").await;
    let (status, html, _) = w
        .post(
            "/activities/message-us-aa/threads/new",
            &aa,
            &[("subject", ""), ("body", "")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter a subject") && html.contains("Enter your message"));
    let (_, _, loc) = w
        .post(
            "/activities/message-us-aa/threads/new",
            &aa,
            &[
                ("subject", "Reader for a pupil"),
                ("body", "Can a pupil have a reader in the maths tests?"),
            ],
        )
        .await;
    assert!(
        loc.starts_with("/activities/message-us-aa/threads/"),
        "{loc}"
    );
    let tid = loc.rsplit('/').next().unwrap().to_string();
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    assert_eq!(w.page(&loc, &head).await.0, StatusCode::FORBIDDEN);
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (_, html) = w.page("/operator/messages/message-us-aa", &op).await;
    assert!(html.contains("Reader for a pupil") && html.contains("a reply since"));
    w.post(
        &format!("/operator/messages/message-us-aa/{tid}"),
        &op,
        &[(
            "body",
            "Yes: see section 5 of the access arrangements guidance.",
        )],
    )
    .await;
    assert!(subjects(&w, "aa@rules.sch.uk").contains(&"Reply: Reader for a pupil".to_string()));
    let (_, html) = w.page(&loc, &aa).await;
    assert!(html.contains("Standards and Testing Agency at") && html.contains("see section 5"));
    assert_eq!(w.audits("message-replied").await, 1);
}

#[tokio::test]
async fn materials_are_published_by_the_operator_and_downloaded_from_their_date() {
    let w = world("2025-04-20T10:00", |_, _| {}).await;
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (_, page) = w.page("/activities", &op).await;
    let csrf = meta_csrf(&page);
    let boundary = "XnCaBoUnDaRy";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nPhonics screening check 2025\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"phonics-2025.pdf\"\r\n\r\n%PDF-1.4 phonics\r\n--{boundary}--\r\n"
    );
    let req = Request::post("/operator/activities/ks1-materials/materials")
        .header(header::COOKIE, &op)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&w.app, req).await.0, StatusCode::SEE_OTHER);
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (_, html) = w.page("/activities/ks1-materials", &head).await;
    assert!(
        html.contains("available to download from 8:00am on Thursday 1 May 2025"),
        "{html}"
    );
    let (_, html) = w
        .page("/operator/activities/ks1-materials/materials", &op)
        .await;
    let mid = html
        .split("/activities/ks1-materials/materials/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let path = format!("/activities/ks1-materials/materials/{mid}");
    assert_eq!(w.page(&path, &head).await.0, StatusCode::FORBIDDEN);
    w.to("2025-05-01T08:00");
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let (status, body) = w.page(&path, &head).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "%PDF-1.4 phonics")
    );
    let ks3 = sign_in(&w.state, &w.app, "ks3@high.sch.uk").await;
    assert_eq!(
        w.page(&path, &ks3).await.0,
        StatusCode::FORBIDDEN,
        "not for KS3 schools"
    );
}

#[tokio::test]
async fn an_la_records_monitoring_visits_to_a_tenth_of_its_maintained_schools() {
    let w = world("2025-05-10T10:00", |_, _| {}).await;
    let senior = sign_in(&w.state, &w.app, "senior@testshire.gov.uk").await;
    let (_, html) = w.page("/activities", &senior).await;
    assert!(section(&html, "Outstanding activity").contains("Monitoring visits"));
    let (status, html, _) = w
        .post(
            "/activities/monitoring-visits/q/1",
            &senior,
            &[("value", ACADEMY)],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("Choose at least 10% of your maintained schools: 1 of 1, not 0"),
        "{html}"
    );
    let (_, _, loc) = w
        .post(
            "/activities/monitoring-visits/q/1",
            &senior,
            &[("value", SCHOOL), ("value", ACADEMY)],
        )
        .await;
    assert_eq!(loc, "/activities/monitoring-visits/q/2");
    w.post(
        "/activities/monitoring-visits/q/2",
        &senior,
        &[(
            "value",
            "Both visits found the tests stored and administered correctly.",
        )],
    )
    .await;
    w.post(
        "/activities/monitoring-visits/q/3",
        &senior,
        &[("value", "no")],
    )
    .await;
    let (_, _, loc) = w
        .post(
            "/activities/monitoring-visits/q/4",
            &senior,
            &[("value", "")],
        )
        .await;
    assert_eq!(loc, "/activities/monitoring-visits/check");
    let (_, _, loc) = w
        .post("/activities/monitoring-visits/check", &senior, &[])
        .await;
    assert_eq!(loc, "/activities/monitoring-visits/submitted");
    // The trust sees each academy's status, without access arrangements.
    let mat = sign_in(&w.state, &w.app, "mat@trust.org.uk").await;
    let (status, html) = w.page("/activities/schools", &mat).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("St Anne")
            && html.contains("Pupil registration")
            && !html.contains("Additional time application")
            && !html.contains("Rules Primary"),
        "{html}"
    );
}

#[tokio::test]
async fn each_moderator_takes_the_standardisation_exercise_and_managers_review_the_results() {
    let w = world("2024-12-02T10:00", |_, _| {}).await;
    let m1 = sign_in(&w.state, &w.app, "mod1@testshire.gov.uk").await;
    let (_, html) = w.page("/activities", &m1).await;
    assert!(
        section(&html, "Outstanding activity").contains("English writing standardisation exercise")
    );
    let (status, html, _) = w
        .post("/activities/standardisation-exercise/q/1", &m1, &[])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Select pupil a"), "{html}");
    for (n, v) in [(1, "EXS"), (2, "WTS"), (3, "EXS")] {
        let (status, _, _) = w
            .post(
                &format!("/activities/standardisation-exercise/q/{n}"),
                &m1,
                &[("value", v)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
    }
    let (_, _, loc) = w
        .post("/activities/standardisation-exercise/check", &m1, &[])
        .await;
    assert_eq!(loc, "/activities/standardisation-exercise/submitted");
    let (_, html) = w.page("/activities/standardisation-exercise", &m1).await;
    assert!(
        html.contains("Your score: 2 of 3 judgements agree with the standard"),
        "{html}"
    );
    assert!(
        html.contains("draws on reading to shape effective, original writing"),
        "the commentary is shown"
    );
    // Each moderator has their own: the second has not started.
    let m2 = sign_in(&w.state, &w.app, "mod2@testshire.gov.uk").await;
    let (_, html) = w.page("/activities", &m2).await;
    assert!(
        section(&html, "Outstanding activity").contains("Not started"),
        "{}",
        section(&html, "Outstanding activity")
    );
    assert_eq!(
        w.page("/activities/standardisation-exercise/results", &m1)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "moderators do not see each other's results"
    );
    let man = sign_in(&w.state, &w.app, "modman@testshire.gov.uk").await;
    let (status, html) = w
        .page("/activities/standardisation-exercise/results", &man)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("mod1@testshire.gov.uk")
            && html.contains("2 of 3")
            && !html.contains("mod2@"),
        "{html}"
    );
    let link = html
        .split("href=\"/activities/standardisation-exercise/results/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let (_, html) = w
        .page(
            &format!("/activities/standardisation-exercise/results/{link}"),
            &man,
        )
        .await;
    assert!(
        html.contains("Working towards the expected standard")
            && html.contains("Spelling of words from the year 3 and 4 list")
    );
    // The operator sees the LA as submitted once one of its moderators has.
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (_, html) = w
        .page("/operator/activities/standardisation-exercise?q=999", &op)
        .await;
    assert!(html.contains("<td class=\"govuk-table__cell\">Testshire</td><td class=\"govuk-table__cell\">999</td><td class=\"govuk-table__cell\">submitted</td>"), "{html}");
}

#[tokio::test]
async fn the_operator_moves_a_deadline_without_a_restart() {
    let w = world("2025-05-31T10:00", |_, _| {}).await;
    let head = sign_in(&w.state, &w.app, "head@rules.sch.uk").await;
    let who = [("name", "Hana Head"), ("is_head", "yes")];
    assert_eq!(
        w.post("/activities/hdf/who", &head, &who).await.0,
        StatusCode::FORBIDDEN,
        "closed at 5pm yesterday"
    );
    let op = sign_in(&w.state, &w.app, "operator@sta.gov.uk").await;
    let (_, html) = w.page("/operator/activities/hdf", &op).await;
    assert!(html.contains("Change the window for maintained, academy, free, special, mod, independent, nmss schools: 8:00am on Thursday 15 May 2025 to 5:00pm on Friday 30 May 2025"), "{html}");
    let (status, html, _) = w
        .post(
            "/operator/activities/hdf/windows/0",
            &op,
            &[
                ("opens", "2025-05-15T08:00"),
                ("closes", "2025-05-01T17:00"),
                ("late_until", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("The deadline must be after the opening time"));
    let (status, html, _) = w
        .post(
            "/operator/activities/hdf/windows/0",
            &op,
            &[
                ("opens", "2025-05-15T08:00"),
                ("closes", "6 June"),
                ("late_until", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter the deadline, as"));
    let (status, _, _) = w
        .post(
            "/operator/activities/hdf/windows/0",
            &op,
            &[
                ("opens", "2025-05-15T08:00"),
                ("closes", "2025-06-06T17:00"),
                ("late_until", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(w.audits("activity-window-changed").await, 1);
    let (status, _, _) = w.post("/activities/hdf/who", &head, &who).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "open again, with no restart");
    let (_, html) = w.page("/activities", &head).await;
    assert!(section(&html, "Outstanding activity").contains("Due by 5:00pm on Friday 6 June 2025"));
}

#[tokio::test]
async fn moderation_summaries_are_uploaded_for_each_school_moderated() {
    let w = world("2025-06-03T10:00", |_, _| {}).await;
    let man = sign_in(&w.state, &w.app, "modman@testshire.gov.uk").await;
    let (_, _, loc) = w
        .post(
            "/activities/moderation-summaries/q/1",
            &man,
            &[("value", SCHOOL), ("value", ACADEMY)],
        )
        .await;
    assert_eq!(loc, "/activities/moderation-summaries/q/2");
    let path = "/activities/moderation-summaries/q/2/file";
    let (status, html) = w
        .upload_as(path, &man, "value", "notes.pdf", "summary")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("notes.pdf: start each file&#39;s name with the DfE number"),
        "{html}"
    );
    let (status, html) = w
        .upload_as(
            path,
            &man,
            "value",
            "9992001-summary.pdf",
            "Rules: judgements confirmed.",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("none yet for 9992002"), "{html}");
    let (status, _) = w
        .upload_as(
            path,
            &man,
            "value",
            "9992002-summary.pdf",
            "St Anne's: two judgements changed.",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "every school now has its summary"
    );
    let (_, html) = w.page("/activities/moderation-summaries/check", &man).await;
    assert!(
        html.contains("Rules Primary School (9992001): 9992001-summary.pdf")
            && html.contains("(9992002): 9992002-summary.pdf"),
        "{html}"
    );
    let (_, _, loc) = w
        .post("/activities/moderation-summaries/check", &man, &[])
        .await;
    assert_eq!(loc, "/activities/moderation-summaries/submitted");
    let m1 = sign_in(&w.state, &w.app, "mod1@testshire.gov.uk").await;
    assert_eq!(
        w.page("/activities/moderation-summaries", &m1).await.0,
        StatusCode::FORBIDDEN,
        "moderators do not manage moderation records"
    );
}
