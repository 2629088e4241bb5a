//! The cycle file: every activity of a test cycle, its audiences and its dates, declared in
//! configuration (`config/cycle-2025.toml`) and checked once at start. Pure apart from reading
//! the file: the rest of the engine works on the checked `Cycle`.

use std::collections::HashSet;

use jiff::civil::DateTime;
use nca_pipeline::domain::{Paper, SchoolType};
use serde::Deserialize;

use crate::auth::roles::{Action, OrgKind, Role, RoleSet, allows};

/// The cycle the server runs when `activities.cycle` is empty.
pub const EMBEDDED: &str = include_str!("../../config/cycle-2025.toml");

/// Which form an activity uses: the code behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Registration,
    Attendance,
    Hdf,
    Ta,
    /// Questions declared in the cycle file (orders, applications, notifications).
    Fields,
    /// Threaded messages with the operator.
    Messages,
    /// Files the operator uploads for the audience to download.
    Materials,
    /// A school's choice of LA for monitoring and moderation, approved by that LA.
    LaChoice,
}

impl Form {
    const ALL: &'static [(&'static str, Form)] = &[
        ("registration", Form::Registration),
        ("attendance", Form::Attendance),
        ("hdf", Form::Hdf),
        ("ta", Form::Ta),
        ("fields", Form::Fields),
        ("messages", Form::Messages),
        ("materials", Form::Materials),
        ("la-choice", Form::LaChoice),
    ];
    /// Forms that keep one set of records per cycle, so at most one activity may use each.
    fn single(self) -> bool {
        matches!(
            self,
            Form::Registration | Form::Attendance | Form::Hdf | Form::Ta | Form::LaChoice
        )
    }
}

/// The kinds of question a `fields` form can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Textarea,
    Number,
    Date,
    Radios,
    Checkboxes,
    /// A tick that must be given (a declaration).
    Confirm,
    /// Pupils chosen from the school's registration.
    Pupils,
    /// Schools chosen from the LA's (`min`: the least share of its maintained schools, in %).
    Schools,
    /// Numbers in a grid of rows by columns (test orders: tests by formats).
    Quantities,
    /// An uploaded file (evidence), kept in the object store.
    File,
    /// Files for each school chosen in the activity's `schools` question, each named from the
    /// school's DfE number (external moderation summaries).
    SchoolFiles,
    /// Date ranges, one a line: 2024-12-20 to 2025-01-06.
    Periods,
}

impl FieldKind {
    const ALL: &'static [(&'static str, FieldKind)] = &[
        ("text", FieldKind::Text),
        ("textarea", FieldKind::Textarea),
        ("number", FieldKind::Number),
        ("date", FieldKind::Date),
        ("radios", FieldKind::Radios),
        ("checkboxes", FieldKind::Checkboxes),
        ("confirm", FieldKind::Confirm),
        ("pupils", FieldKind::Pupils),
        ("schools", FieldKind::Schools),
        ("quantities", FieldKind::Quantities),
        ("file", FieldKind::File),
        ("school_files", FieldKind::SchoolFiles),
        ("periods", FieldKind::Periods),
    ];
}

/// One question of a `fields` form.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    pub label: String,
    pub hint: String,
    pub required: bool,
    /// (value, label) for radios and checkboxes; rows and columns for quantities.
    pub options: Vec<(String, String)>,
    pub rows: Vec<(String, String)>,
    pub columns: Vec<(String, String)>,
    /// Quantities: a column allowed only in these rows.
    pub only: Vec<(String, Vec<String>)>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// Asked only of these school types (empty: everyone in the audience).
    pub school_types: Vec<SchoolType>,
    /// For a scored exercise: the agreed answer, and the commentary shown after submitting.
    pub answer: Option<String>,
    pub commentary: String,
}

impl Field {
    pub fn asks(&self, school_type: Option<&str>) -> bool {
        self.school_types.is_empty()
            || school_type
                .and_then(|t| SchoolType::parse(t).ok())
                .is_some_and(|t| self.school_types.contains(&t))
    }
    /// Whether a quantities cell may be ordered.
    pub fn cell_allowed(&self, row: &str, column: &str) -> bool {
        self.only
            .iter()
            .find(|(c, _)| c == column)
            .is_none_or(|(_, rows)| rows.iter().any(|r| r == row))
    }
}

/// What makes an activity send email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailEvent {
    Submitted,
    Reopened,
    Chased,
    Decided,
}

/// A condition before an activity is reachable for a school.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// That activity completed by the school.
    Activity(String),
    /// Recorded by the operator for the school (with a reason).
    Operator(String),
}

impl Gate {
    pub fn label(&self, cycle: &Cycle) -> String {
        match self {
            Gate::Activity(id) => {
                let name = cycle.activity(id).map_or(id.as_str(), |a| a.name.as_str());
                format!("{name} completed")
            }
            Gate::Operator(name) => match name.as_str() {
                "test-order" => "a test order placed".into(),
                "la-agreement" => "a written agreement with a local authority reported".into(),
                "converted-after-cutoff" => "the school became an academy on or after the cut-off date, so its geographic local authority monitors it this year".into(),
                other => other.replace('-', " "),
            },
        }
    }
}

/// Who an activity is for, with this audience's own dates and rules.
#[derive(Debug, Clone)]
pub struct Audience {
    pub orgs: OrgKind,
    /// For schools: the types included (empty: all).
    pub school_types: Vec<SchoolType>,
    pub permission: Action,
    pub opens: i64,
    pub closes: i64,
    pub late_until: Option<i64>,
    pub mandatory: bool,
    pub requires: Vec<Gate>,
    /// Conditions that close the activity to a school when met (for example an academy that
    /// converted after the cut-off cannot choose another LA).
    pub unless: Vec<Gate>,
}

impl Audience {
    pub fn includes(&self, kind: OrgKind, school_type: Option<&str>) -> bool {
        if kind != self.orgs {
            return false;
        }
        if kind != OrgKind::Ks2School || self.school_types.is_empty() {
            return true;
        }
        school_type
            .and_then(|t| SchoolType::parse(t).ok())
            .is_some_and(|t| self.school_types.contains(&t))
    }
}

#[derive(Debug, Clone)]
pub struct Activity {
    pub id: String,
    pub name: String,
    pub description: String,
    pub form: Form,
    pub drafts: bool,
    pub decided: bool,
    pub emails: Vec<EmailEvent>,
    pub audiences: Vec<Audience>,
    /// The questions of a `fields` form, in order.
    pub fields: Vec<Field>,
    /// Each user completes their own (a standardisation exercise), not one per organisation.
    pub per_user: bool,
}

impl Activity {
    /// Whether the questions have agreed answers (a scored exercise).
    pub fn scored(&self) -> bool {
        self.fields.iter().any(|f| f.answer.is_some())
    }
}

impl Activity {
    /// The audience an organisation belongs to, if any (the first that includes it).
    pub fn audience(&self, kind: OrgKind, school_type: Option<&str>) -> Option<&Audience> {
        self.audiences
            .iter()
            .find(|a| a.includes(kind, school_type))
    }
    pub fn sends(&self, e: EmailEvent) -> bool {
        self.emails.contains(&e)
    }
}

/// A test day: its papers, and when their attendance register opens.
#[derive(Debug, Clone)]
pub struct TestDay {
    pub date: jiff::civil::Date,
    pub papers: Vec<Paper>,
    pub register_opens: i64,
}

#[derive(Debug, Clone)]
pub struct Cycle {
    pub year: i32,
    pub tests: Vec<TestDay>,
    pub activities: Vec<Activity>,
}

impl Cycle {
    pub fn activity(&self, id: &str) -> Option<&Activity> {
        self.activities.iter().find(|a| a.id == id)
    }
    pub fn with_form(&self, form: Form) -> Option<&Activity> {
        self.activities.iter().find(|a| a.form == form)
    }
}

// ---------- the file ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCycle {
    year: i32,
    #[serde(default)]
    tests: Vec<RawTest>,
    #[serde(default)]
    activity: Vec<RawActivity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    date: String,
    papers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivity {
    id: String,
    name: String,
    description: String,
    form: String,
    opens: String,
    closes: String,
    late_until: Option<String>,
    mandatory: bool,
    drafts: bool,
    decided: bool,
    emails: Vec<String>,
    #[serde(default)]
    audience: Vec<RawAudience>,
    #[serde(default)]
    field: Vec<RawField>,
    #[serde(default)]
    per_user: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    kind: String,
    label: String,
    #[serde(default)]
    hint: String,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    rows: Vec<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    only: Vec<String>,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(default)]
    school_types: Vec<String>,
    answer: Option<String>,
    #[serde(default)]
    commentary: String,
}

fn yes() -> bool {
    true
}

/// "value:Label" pairs.
fn pairs(list: &[String]) -> Result<Vec<(String, String)>, String> {
    list.iter()
        .map(|o| match o.split_once(':') {
            Some((v, l)) if !v.is_empty() && !l.trim().is_empty() => {
                Ok((v.to_string(), l.trim().to_string()))
            }
            _ => Err(format!("\"{o}\" must be written value:Label")),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    orgs: String,
    #[serde(default)]
    school_types: Vec<String>,
    permission: String,
    opens: Option<String>,
    closes: Option<String>,
    late_until: Option<String>,
    mandatory: Option<bool>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    unless: Vec<String>,
}

const PERMISSIONS: &[(&str, Action)] = &[
    ("school-tasks", Action::SchoolTasks),
    ("access-arrangements", Action::AccessArrangements),
    ("manage-ta", Action::ManageTa),
    ("la-activities", Action::LaActivities),
    ("standardisation", Action::Standardisation),
    ("moderation", Action::Moderation),
    ("view-results", Action::ViewResults),
];

/// The cycle the settings name (the embedded 2025 cycle when `activities.cycle` is empty).
pub fn load(
    settings: &crate::config::ActivitiesSettings,
    tz: &jiff::tz::TimeZone,
) -> anyhow::Result<Cycle> {
    let (name, text) = if settings.cycle.trim().is_empty() {
        (
            "config/cycle-2025.toml (embedded)".to_string(),
            EMBEDDED.to_string(),
        )
    } else {
        let path = settings.cycle.trim();
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("reading the cycle file {path} (activities.cycle): {e}")
        })?;
        (path.to_string(), text)
    };
    parse(&name, &text, tz, settings.shift_days).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Read and check a cycle file. `shift_days` moves every date by whole days (local times kept):
/// 0 in production; the demo and browser tests move a past calendar to today.
pub fn parse(
    name: &str,
    text: &str,
    tz: &jiff::tz::TimeZone,
    shift_days: i64,
) -> Result<Cycle, String> {
    let raw: RawCycle = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
    let time = |at: &str, field: &str, v: &str| -> Result<i64, String> {
        let dt: DateTime = v.parse().map_err(|_| {
            format!("{name}: {at}: field `{field}`: \"{v}\" is not a date and time written YYYY-MM-DDTHH:MM")
        })?;
        let dt = dt
            .checked_add(jiff::Span::new().days(shift_days))
            .map_err(|e| format!("{name}: {at}: field `{field}`: {e}"))?;
        dt.to_zoned(tz.clone())
            .map(|z| z.timestamp().as_second())
            .map_err(|e| format!("{name}: {at}: field `{field}`: {e}"))
    };
    if !(2000..=2100).contains(&raw.year) {
        return Err(format!(
            "{name}: field `year`: {} is not a plausible cycle year",
            raw.year
        ));
    }
    let mut tests = Vec::new();
    let mut seen_papers = HashSet::new();
    for (i, t) in raw.tests.iter().enumerate() {
        let at = format!("tests[{}]", i + 1);
        let opens = time(&at, "date", &format!("{}T09:00", t.date))?;
        let date = jiff::Timestamp::from_second(opens)
            .map_err(|e| e.to_string())?
            .to_zoned(tz.clone())
            .date();
        let mut papers = Vec::new();
        for p in &t.papers {
            let paper =
                Paper::parse(p).map_err(|e| format!("{name}: {at}: field `papers`: {e}"))?;
            if !seen_papers.insert(paper) {
                return Err(format!(
                    "{name}: {at}: field `papers`: {p} is already on another day"
                ));
            }
            papers.push(paper);
        }
        tests.push(TestDay {
            date,
            papers,
            register_opens: opens,
        });
    }
    let mut activities: Vec<Activity> = Vec::new();
    let mut gates = Vec::new();
    for (i, a) in raw.activity.iter().enumerate() {
        let at = format!("activity[{}] (\"{}\")", i + 1, a.id);
        if a.id.is_empty()
            || !a
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "{name}: {at}: field `id`: use lower-case letters, digits and hyphens"
            ));
        }
        if activities.iter().any(|b| b.id == a.id) {
            return Err(format!(
                "{name}: {at}: field `id`: \"{}\" is declared twice",
                a.id
            ));
        }
        if a.name.trim().is_empty() {
            return Err(format!("{name}: {at}: field `name`: must not be empty"));
        }
        let form = Form::ALL
            .iter()
            .find(|(n, _)| *n == a.form)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!(
                    "{name}: {at}: field `form`: \"{}\" is not a form; expected one of {}",
                    a.form,
                    Form::ALL
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        if form == Form::Attendance && tests.is_empty() {
            return Err(format!(
                "{name}: {at}: field `form`: an attendance register needs the [[tests]] timetable"
            ));
        }
        let opens = time(&at, "opens", &a.opens)?;
        let closes = time(&at, "closes", &a.closes)?;
        if closes <= opens {
            return Err(format!(
                "{name}: {at}: field `closes`: must be after `opens`"
            ));
        }
        let late_until = a
            .late_until
            .as_deref()
            .map(|v| time(&at, "late_until", v))
            .transpose()?;
        if late_until.is_some_and(|l| l <= closes) {
            return Err(format!(
                "{name}: {at}: field `late_until`: must be after `closes`"
            ));
        }
        let mut emails = Vec::new();
        for e in &a.emails {
            let ev = match e.as_str() {
                "submitted" => EmailEvent::Submitted,
                "reopened" => EmailEvent::Reopened,
                "chased" => EmailEvent::Chased,
                "decided" => EmailEvent::Decided,
                other => {
                    return Err(format!(
                        "{name}: {at}: field `emails`: \"{other}\" is not an email; expected submitted, reopened, chased or decided"
                    ));
                }
            };
            if ev == EmailEvent::Decided && !a.decided {
                return Err(format!(
                    "{name}: {at}: field `emails`: \"decided\" needs `decided = true`"
                ));
            }
            emails.push(ev);
        }
        if a.audience.is_empty() {
            return Err(format!(
                "{name}: {at}: field `audience`: an activity needs at least one [[activity.audience]]"
            ));
        }
        let mut audiences = Vec::new();
        for (j, r) in a.audience.iter().enumerate() {
            let at = format!("{at}, audience[{}]", j + 1);
            let orgs = match r.orgs.as_str() {
                "schools" => OrgKind::Ks2School,
                "las" => OrgKind::La,
                "mats" => OrgKind::Mat,
                other => {
                    return Err(format!(
                        "{name}: {at}: field `orgs`: \"{other}\" is not an audience; expected schools, las or mats"
                    ));
                }
            };
            if orgs != OrgKind::Ks2School && !r.school_types.is_empty() {
                return Err(format!(
                    "{name}: {at}: field `school_types`: only for orgs = \"schools\""
                ));
            }
            let school_types = r
                .school_types
                .iter()
                .map(|t| {
                    SchoolType::parse(t)
                        .map_err(|e| format!("{name}: {at}: field `school_types`: {t}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let permission = PERMISSIONS
                .iter()
                .find(|(n, _)| *n == r.permission)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    format!(
                        "{name}: {at}: field `permission`: \"{}\" is not a permission; expected one of {}",
                        r.permission,
                        PERMISSIONS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            if !Role::for_kind(orgs).any(|role| allows(RoleSet::of(&[role]), permission)) {
                return Err(format!(
                    "{name}: {at}: field `permission`: no {} role has \"{}\"",
                    orgs.label().to_lowercase(),
                    r.permission
                ));
            }
            let a_opens = r
                .opens
                .as_deref()
                .map(|v| time(&at, "opens", v))
                .transpose()?
                .unwrap_or(opens);
            let a_closes = r
                .closes
                .as_deref()
                .map(|v| time(&at, "closes", v))
                .transpose()?
                .unwrap_or(closes);
            if a_closes <= a_opens {
                return Err(format!(
                    "{name}: {at}: field `closes`: must be after `opens`"
                ));
            }
            let a_late = match r.late_until.as_deref() {
                Some(v) => Some(time(&at, "late_until", v)?),
                None => late_until,
            };
            if a_late.is_some_and(|l| l <= a_closes) {
                return Err(format!(
                    "{name}: {at}: field `late_until`: must be after `closes`"
                ));
            }
            let mut requires = Vec::new();
            for g in &r.requires {
                let gate = match g.split_once(':') {
                    Some(("activity", id)) => {
                        gates.push((at.clone(), id.to_string()));
                        Gate::Activity(id.to_string())
                    }
                    Some(("operator", n)) if !n.is_empty() => Gate::Operator(n.to_string()),
                    _ => {
                        return Err(format!(
                            "{name}: {at}: field `requires`: \"{g}\" must be activity:<id> or operator:<name>"
                        ));
                    }
                };
                if orgs != OrgKind::Ks2School {
                    return Err(format!(
                        "{name}: {at}: field `requires`: gates apply to schools only"
                    ));
                }
                requires.push(gate);
            }
            let mut unless = Vec::new();
            for g in &r.unless {
                match g.split_once(':') {
                    Some(("operator", n)) if !n.is_empty() && orgs == OrgKind::Ks2School => {
                        unless.push(Gate::Operator(n.to_string()))
                    }
                    _ => {
                        return Err(format!(
                            "{name}: {at}: field `unless`: \"{g}\" must be operator:<name>, for schools"
                        ));
                    }
                }
            }
            audiences.push(Audience {
                unless,
                orgs,
                school_types,
                permission,
                opens: a_opens,
                closes: a_closes,
                late_until: a_late,
                mandatory: r.mandatory.unwrap_or(a.mandatory),
                requires,
            });
        }
        let mut fields: Vec<Field> = Vec::new();
        if form != Form::Fields && !a.field.is_empty() {
            return Err(format!(
                "{name}: {at}: field `field`: questions are only for form = \"fields\""
            ));
        }
        if form == Form::Fields && a.field.is_empty() {
            return Err(format!(
                "{name}: {at}: field `field`: a fields form needs at least one [[activity.field]]"
            ));
        }
        for (k, f) in a.field.iter().enumerate() {
            let at = format!("{at}, field[{}] (\"{}\")", k + 1, f.name);
            let bad = |key: &str, why: String| format!("{name}: {at}: field `{key}`: {why}");
            if f.name.is_empty()
                || !f
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || f.name.starts_with('_')
            {
                return Err(bad(
                    "name",
                    "use lower-case letters, digits and underscores".into(),
                ));
            }
            if fields.iter().any(|x| x.name == f.name) {
                return Err(bad("name", format!("\"{}\" is used twice", f.name)));
            }
            let kind = FieldKind::ALL
                .iter()
                .find(|(n, _)| *n == f.kind)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    bad(
                        "kind",
                        format!(
                            "\"{}\" is not a kind; expected one of {}",
                            f.kind,
                            FieldKind::ALL
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            let options = pairs(&f.options).map_err(|e| bad("options", e))?;
            if matches!(kind, FieldKind::Radios | FieldKind::Checkboxes) && options.is_empty() {
                return Err(bad("options", "radios and checkboxes need options".into()));
            }
            let rows = pairs(&f.rows).map_err(|e| bad("rows", e))?;
            let columns = pairs(&f.columns).map_err(|e| bad("columns", e))?;
            if kind == FieldKind::Quantities && (rows.is_empty() || columns.is_empty()) {
                return Err(bad("rows", "quantities need rows and columns".into()));
            }
            let mut only = Vec::new();
            for o in &f.only {
                let (c, rs) = o
                    .split_once(':')
                    .ok_or_else(|| bad("only", format!("\"{o}\" must be column:row|row")))?;
                if !columns.iter().any(|(v, _)| v == c) {
                    return Err(bad("only", format!("{c} is not one of the columns")));
                }
                let rs: Vec<String> = rs.split('|').map(String::from).collect();
                if let Some(r) = rs.iter().find(|r| !rows.iter().any(|(v, _)| v == *r)) {
                    return Err(bad("only", format!("{r} is not one of the rows")));
                }
                only.push((c.to_string(), rs));
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max)
                && lo > hi
            {
                return Err(bad("max", "must be at least `min`".into()));
            }
            let school_types = f
                .school_types
                .iter()
                .map(|t| SchoolType::parse(t).map_err(|e| bad("school_types", format!("{t}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(ans) = &f.answer
                && (kind != FieldKind::Radios || !options.iter().any(|(v, _)| v == ans))
            {
                return Err(bad(
                    "answer",
                    format!("\"{ans}\" must be one of a radios question's options"),
                ));
            }
            fields.push(Field {
                answer: f.answer.clone(),
                commentary: f.commentary.clone(),
                name: f.name.clone(),
                kind,
                label: f.label.clone(),
                hint: f.hint.clone(),
                required: f.required,
                options,
                rows,
                columns,
                only,
                min: f.min,
                max: f.max,
                school_types,
            });
        }
        if a.per_user && form != Form::Fields {
            return Err(format!(
                "{name}: {at}: field `per_user`: only for form = \"fields\""
            ));
        }
        activities.push(Activity {
            per_user: a.per_user,
            fields,
            id: a.id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            form,
            drafts: a.drafts,
            decided: a.decided,
            emails,
            audiences,
        });
    }
    for (at, id) in gates {
        if !activities.iter().any(|a| a.id == id) {
            return Err(format!(
                "{name}: {at}: field `requires`: activity \"{id}\" is not declared in this file"
            ));
        }
    }
    for (_, form) in Form::ALL.iter().filter(|(_, f)| f.single()) {
        if activities.iter().filter(|a| a.form == *form).count() > 1 {
            return Err(format!(
                "{name}: field `form`: more than one activity uses the same form; each form keeps one set of records per cycle"
            ));
        }
    }
    Ok(Cycle {
        year: raw.year,
        tests,
        activities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Europe/London").unwrap()
    }

    #[test]
    fn the_2025_cycle_reads_with_the_ara_dates() {
        let c = parse("cycle-2025.toml", EMBEDDED, &tz(), 0).unwrap();
        assert_eq!(c.year, 2025);
        let hdf = c.activity("hdf").unwrap();
        let a = hdf.audience(OrgKind::Ks2School, Some("academy")).unwrap();
        // 5pm on Friday 30 May 2025 is 16:00 UTC (British Summer Time).
        assert_eq!(a.closes, 1_748_620_800);
        let reg = c.activity("pupil-registration").unwrap();
        let ind = reg
            .audience(OrgKind::Ks2School, Some("independent"))
            .unwrap();
        assert_eq!(ind.requires.len(), 2);
        assert!(!ind.mandatory);
        assert!(reg.audience(OrgKind::Ks2School, Some("pru")).is_none());
        let ta = c.activity("ta").unwrap();
        assert!(ta.audience(OrgKind::La, None).is_some());
        assert!(ta.audience(OrgKind::Mat, None).is_none());
        assert_eq!(c.tests.len(), 4);
        // Shifting keeps local times: a year later the deadline is still 17:00 London time.
        let later = parse("x", EMBEDDED, &tz(), 365).unwrap();
        let a2 = later
            .activity("hdf")
            .unwrap()
            .audience(OrgKind::Ks2School, Some("academy"))
            .unwrap()
            .closes;
        assert_eq!(a2 - a.closes, 365 * 86_400);
    }

    fn refused(text: &str) -> String {
        parse("t.toml", text, &tz(), 0).unwrap_err()
    }

    const ONE: &str = r#"
year = 2025
[[activity]]
id = "hdf"
name = "HDF"
description = "d"
form = "hdf"
opens = "2025-05-15T08:00"
closes = "2025-05-30T17:00"
mandatory = true
drafts = true
decided = false
emails = ["submitted"]
[[activity.audience]]
orgs = "schools"
permission = "school-tasks"
"#;

    #[test]
    fn a_malformed_file_is_refused_naming_the_entry_and_field() {
        assert!(parse("t.toml", ONE, &tz(), 0).is_ok());
        let cases: &[(&str, &str, &str)] = &[
            (
                "opens = \"2025-05-15T08:00\"",
                "opens = \"15/05/2025\"",
                "activity[1] (\"hdf\"): field `opens`",
            ),
            (
                "closes = \"2025-05-30T17:00\"",
                "closes = \"2025-05-01T17:00\"",
                "field `closes`: must be after `opens`",
            ),
            (
                "form = \"hdf\"",
                "form = \"orders\"",
                "field `form`: \"orders\" is not a form",
            ),
            (
                "permission = \"school-tasks\"",
                "permission = \"manage-ta\"",
                "audience[1]: field `permission`: no primary school role",
            ),
            ("orgs = \"schools\"", "orgs = \"parents\"", "field `orgs`"),
            (
                "emails = [\"submitted\"]",
                "emails = [\"decided\"]",
                "needs `decided = true`",
            ),
            (
                "permission = \"school-tasks\"",
                "permission = \"school-tasks\"\nrequires = [\"activity:orders\"]",
                "activity \"orders\" is not declared",
            ),
            (
                "permission = \"school-tasks\"",
                "permission = \"school-tasks\"\nschool_types = [\"grammar\"]",
                "field `school_types`: grammar",
            ),
            (
                "drafts = true",
                "drafts = true\ncolour = \"red\"",
                "unknown field `colour`",
            ),
            ("id = \"hdf\"", "id = \"HDF form\"", "field `id`"),
        ];
        for (from, to, want) in cases {
            let text = ONE.replacen(from, to, 1);
            let e = refused(&text);
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("t.toml"), "{e}");
        }
        let twice = format!("{ONE}{}", &ONE[ONE.find("[[activity]]").unwrap()..]);
        assert!(refused(&twice).contains("declared twice"));
        assert!(
            refused("year = 2025\n[[tests]]\ndate = \"2025-05-12\"\npapers = [\"gps9\"]")
                .contains("tests[1]: field `papers`")
        );
    }
}
