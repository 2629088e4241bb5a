//! The contract's result rules (section 2), as pure functions over one pupil's inputs.

use crate::domain::*;
use crate::model::{ConversionTables, Intake, Pupil};

/// A one-letter result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    L,
    F,
    P,
    B,
    H,
    Q,
    A,
    U,
    J,
    M,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::L => "L",
            Code::F => "F",
            Code::P => "P",
            Code::B => "B",
            Code::H => "H",
            Code::Q => "Q",
            Code::A => "A",
            Code::U => "U",
            Code::J => "J",
            Code::M => "M",
        }
    }
    /// `L`, `M`, `F`, `P` are counted neither as achieved nor as not achieved.
    pub fn uncounted(self) -> bool {
        matches!(self, Code::L | Code::M | Code::F | Code::P)
    }
    pub fn parse(s: &str) -> Option<Code> {
        Some(match s {
            "L" => Code::L,
            "F" => Code::F,
            "P" => Code::P,
            "B" => Code::B,
            "H" => Code::H,
            "Q" => Code::Q,
            "A" => Code::A,
            "U" => Code::U,
            "J" => Code::J,
            "M" => Code::M,
            _ => return None,
        })
    }
}

/// One pupil's result for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectResult {
    /// Not registered for this subject: every column empty.
    Empty,
    Code(Code),
    /// Rule 6: a raw score and its conversion (a scaled score or `N`).
    Scored {
        raw: u16,
        conversion: Conversion,
    },
}

impl SubjectResult {
    pub fn raw(self) -> Option<u16> {
        match self {
            SubjectResult::Scored { raw, .. } => Some(raw),
            _ => None,
        }
    }
    pub fn scaled(self) -> Option<ScaledScore> {
        match self {
            SubjectResult::Scored {
                conversion: Conversion::Scaled(s),
                ..
            } => Some(s),
            _ => None,
        }
    }
    /// The `<subject>_result` column.
    pub fn result_text(self) -> std::borrow::Cow<'static, str> {
        match self {
            SubjectResult::Empty => "".into(),
            SubjectResult::Code(c) => c.as_str().into(),
            SubjectResult::Scored {
                conversion: Conversion::NotAwarded,
                ..
            } => "N".into(),
            SubjectResult::Scored {
                conversion: Conversion::Scaled(s),
                ..
            } => s.get().to_string().into(),
        }
    }
    /// `Some(true)` for AS, `Some(false)` for NS, `None` when not counted.
    pub fn met(self) -> Option<bool> {
        match self {
            SubjectResult::Empty => None,
            SubjectResult::Code(c) if c.uncounted() => None,
            SubjectResult::Code(_) => Some(false),
            SubjectResult::Scored {
                conversion: Conversion::NotAwarded,
                ..
            } => Some(false),
            SubjectResult::Scored {
                conversion: Conversion::Scaled(s),
                ..
            } => Some(s.meets_expected()),
        }
    }
    /// `Some(true)` for a scaled score of 110 or more, `Some(false)` for any other scaled score.
    pub fn high(self) -> Option<bool> {
        self.scaled().map(ScaledScore::high)
    }
    fn blocks_rwm(self) -> bool {
        match self {
            SubjectResult::Empty => true,
            SubjectResult::Code(c) => c.uncounted(),
            SubjectResult::Scored { .. } => false,
        }
    }
}

/// What rules 2–6 need to know of one pupil's papers for one subject.
#[derive(Debug, Clone, Copy)]
pub struct PaperInput {
    pub attendance: Option<AttendanceCode>,
    pub has_marks: bool,
    pub raw: u16,
}

/// Apply rules 1–6 to one subject.
pub fn subject_result(
    subject: Subject,
    reg: RegStatus,
    annulment: Option<AnnulmentCode>,
    papers: &[PaperInput],
    table: &ConversionTables,
) -> SubjectResult {
    // Rules 1 and 2: registration.
    match reg {
        RegStatus::Unregistered => return SubjectResult::Empty,
        RegStatus::Left => return SubjectResult::Code(Code::L),
        RegStatus::Future => return SubjectResult::Code(Code::F),
        RegStatus::Previous => return SubjectResult::Code(Code::P),
        RegStatus::Below => return SubjectResult::Code(Code::B),
        RegStatus::Registered => {}
    }
    // Rule 3: annulment.
    if let Some(a) = annulment {
        return SubjectResult::Code(match a {
            AnnulmentCode::H => Code::H,
            AnnulmentCode::Q => Code::Q,
        });
    }
    // Rule 4: a code for every paper; the first paper's code when they disagree.
    if papers.iter().all(|p| p.attendance.is_some()) {
        return SubjectResult::Code(match papers[0].attendance.expect("all have codes") {
            AttendanceCode::A => Code::A,
            AttendanceCode::U => Code::U,
            AttendanceCode::J => Code::J,
        });
    }
    // Rule 5: some paper sat but never marked.
    if papers
        .iter()
        .any(|p| p.attendance.is_none() && !p.has_marks)
    {
        return SubjectResult::Code(Code::M);
    }
    // Rule 6: raw score over papers sat; a missed paper counts 0.
    let raw: u16 = papers
        .iter()
        .filter(|p| p.attendance.is_none())
        .map(|p| p.raw)
        .sum();
    SubjectResult::Scored {
        raw,
        conversion: table.convert(subject, raw.min(subject.max_raw())),
    }
}

/// One pupil's whole result row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PupilResult {
    /// Indexed by `Subject::index`.
    pub subjects: [SubjectResult; 3],
    pub rwm: Option<bool>,
}

/// RWM: reading and maths each 100 or more and writing TA `EXS` or `GDS`; empty when
/// reading or maths is `L`, `M`, `F` or `P` (or not registered).
pub fn rwm(
    reading: SubjectResult,
    maths: SubjectResult,
    writing: Option<WritingTa>,
) -> Option<bool> {
    if reading.blocks_rwm() || maths.blocks_rwm() {
        return None;
    }
    let ok = |r: SubjectResult| r.scaled().is_some_and(ScaledScore::meets_expected);
    Some(ok(reading) && ok(maths) && writing.is_some_and(WritingTa::meets_expected))
}

/// Compute a pupil's results; `None` when rule 1 leaves them with no row at all.
pub fn pupil_result(intake: &Intake, index: usize, pupil: &Pupil) -> Option<PupilResult> {
    if pupil.reg.iter().all(|r| *r == RegStatus::Unregistered) {
        return None;
    }
    let marks = &intake.marks;
    let subjects: [SubjectResult; 3] = std::array::from_fn(|i| {
        let s = Subject::ALL[i];
        let papers: Vec<PaperInput> = s
            .papers()
            .iter()
            .map(|p| PaperInput {
                attendance: pupil.attendance[p.index()],
                has_marks: marks.has_marks[index] & (1 << p.index()) != 0,
                raw: marks.raw[index * 6 + p.index()],
            })
            .collect();
        subject_result(
            s,
            pupil.reg[s.index()],
            pupil.annulment[s.index()],
            &papers,
            &intake.conversion,
        )
    });
    let rwm = rwm(
        subjects[Subject::Reading.index()],
        subjects[Subject::Maths.index()],
        pupil.writing,
    );
    Some(PupilResult { subjects, rwm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> ConversionTables {
        // A simple monotone table: N below 3, then 80 + raw*40/max.
        let mk = |s: Subject| {
            (0..=s.max_raw())
                .map(|r| {
                    if r < 3 {
                        Conversion::NotAwarded
                    } else {
                        Conversion::Scaled(
                            ScaledScore::new(
                                80 + (u32::from(r) * 40 / u32::from(s.max_raw())) as u8,
                            )
                            .unwrap(),
                        )
                    }
                })
                .collect()
        };
        ConversionTables {
            year: 2025,
            scaled: [mk(Subject::Reading), mk(Subject::Gps), mk(Subject::Maths)],
        }
    }

    fn sat(raw: u16) -> PaperInput {
        PaperInput {
            attendance: None,
            has_marks: true,
            raw,
        }
    }
    fn code(c: AttendanceCode) -> PaperInput {
        PaperInput {
            attendance: Some(c),
            has_marks: false,
            raw: 0,
        }
    }
    fn unmarked() -> PaperInput {
        PaperInput {
            attendance: None,
            has_marks: false,
            raw: 0,
        }
    }

    #[test]
    fn rule_1_unregistered_is_empty() {
        let r = subject_result(
            Subject::Reading,
            RegStatus::Unregistered,
            None,
            &[sat(40)],
            &table(),
        );
        assert_eq!(r, SubjectResult::Empty);
        assert_eq!(r.result_text(), "");
        assert_eq!(r.met(), None);
    }

    #[test]
    fn rule_2_registration_codes_win_over_everything_later() {
        for (reg, c) in [
            (RegStatus::Left, Code::L),
            (RegStatus::Future, Code::F),
            (RegStatus::Previous, Code::P),
            (RegStatus::Below, Code::B),
        ] {
            let r = subject_result(
                Subject::Maths,
                reg,
                Some(AnnulmentCode::H),
                &[code(AttendanceCode::A); 3],
                &table(),
            );
            assert_eq!(r, SubjectResult::Code(c));
        }
        assert_eq!(SubjectResult::Code(Code::B).met(), Some(false));
        assert_eq!(SubjectResult::Code(Code::L).met(), None);
    }

    #[test]
    fn rule_3_annulment_beats_attendance() {
        let r = subject_result(
            Subject::Gps,
            RegStatus::Registered,
            Some(AnnulmentCode::Q),
            &[code(AttendanceCode::A); 2],
            &table(),
        );
        assert_eq!(r, SubjectResult::Code(Code::Q));
        assert_eq!(r.met(), Some(false));
    }

    #[test]
    fn rule_4_first_papers_code_when_they_disagree() {
        let papers = [
            code(AttendanceCode::U),
            code(AttendanceCode::A),
            code(AttendanceCode::J),
        ];
        assert_eq!(
            subject_result(
                Subject::Maths,
                RegStatus::Registered,
                None,
                &papers,
                &table()
            ),
            SubjectResult::Code(Code::U)
        );
    }

    #[test]
    fn rule_5_sat_but_unmarked_is_missing() {
        let papers = [sat(30), unmarked(), sat(20)];
        let r = subject_result(
            Subject::Maths,
            RegStatus::Registered,
            None,
            &papers,
            &table(),
        );
        assert_eq!(r, SubjectResult::Code(Code::M));
        assert_eq!(r.met(), None);
        assert_eq!(r.raw(), None);
    }

    #[test]
    fn rule_6_missed_paper_counts_zero() {
        let papers = [sat(30), code(AttendanceCode::A), sat(20)];
        let r = subject_result(
            Subject::Maths,
            RegStatus::Registered,
            None,
            &papers,
            &table(),
        );
        assert_eq!(r.raw(), Some(50));
        assert_eq!(r.scaled().unwrap().get(), 80 + (50 * 40 / 110) as u8);
    }

    #[test]
    fn n_is_not_achieved_and_has_no_high() {
        let r = subject_result(
            Subject::Reading,
            RegStatus::Registered,
            None,
            &[sat(1)],
            &table(),
        );
        assert_eq!(r.result_text(), "N");
        assert_eq!(r.met(), Some(false));
        assert_eq!(r.high(), None);
        assert_eq!(r.raw(), Some(1));
    }

    #[test]
    fn thresholds_100_and_110() {
        let s = |v| SubjectResult::Scored {
            raw: 1,
            conversion: Conversion::Scaled(ScaledScore::new(v).unwrap()),
        };
        assert_eq!(s(99).met(), Some(false));
        assert_eq!(s(100).met(), Some(true));
        assert_eq!(s(109).high(), Some(false));
        assert_eq!(s(110).high(), Some(true));
    }

    #[test]
    fn rwm_rules() {
        let s = |v| SubjectResult::Scored {
            raw: 1,
            conversion: Conversion::Scaled(ScaledScore::new(v).unwrap()),
        };
        assert_eq!(rwm(s(100), s(100), Some(WritingTa::Exs)), Some(true));
        assert_eq!(rwm(s(100), s(100), Some(WritingTa::Gds)), Some(true));
        assert_eq!(rwm(s(100), s(100), Some(WritingTa::Wts)), Some(false));
        assert_eq!(rwm(s(100), s(100), None), Some(false));
        assert_eq!(rwm(s(99), s(120), Some(WritingTa::Gds)), Some(false));
        assert_eq!(
            rwm(SubjectResult::Code(Code::A), s(120), Some(WritingTa::Gds)),
            Some(false)
        );
        assert_eq!(
            rwm(SubjectResult::Code(Code::M), s(120), Some(WritingTa::Gds)),
            None
        );
        assert_eq!(
            rwm(s(120), SubjectResult::Code(Code::L), Some(WritingTa::Gds)),
            None
        );
    }

    fn attendance() -> impl Strategy<Value = Option<AttendanceCode>> {
        prop_oneof![
            Just(None),
            Just(None),
            Just(Some(AttendanceCode::A)),
            Just(Some(AttendanceCode::U)),
            Just(Some(AttendanceCode::J))
        ]
    }

    proptest! {
        #[test]
        fn registered_results_are_consistent(
            att in proptest::collection::vec(attendance(), 3),
            marked in proptest::collection::vec(any::<bool>(), 3),
            raws in proptest::collection::vec(0u16..=35, 3),
        ) {
            let papers: Vec<PaperInput> = (0..3).map(|i| PaperInput { attendance: att[i], has_marks: marked[i], raw: if marked[i] { raws[i] } else { 0 } }).collect();
            let r = subject_result(Subject::Maths, RegStatus::Registered, None, &papers, &table());
            let all_coded = att.iter().all(Option::is_some);
            let any_unmarked_sat = (0..3).any(|i| att[i].is_none() && !marked[i]);
            match r {
                SubjectResult::Code(Code::M) => prop_assert!(!all_coded && any_unmarked_sat),
                SubjectResult::Code(c) => { prop_assert!(all_coded); prop_assert_eq!(c.as_str(), att[0].unwrap().as_str()); }
                SubjectResult::Scored { raw, .. } => {
                    prop_assert!(!all_coded && !any_unmarked_sat);
                    let expect: u16 = (0..3).filter(|&i| att[i].is_none()).map(|i| papers[i].raw).sum();
                    prop_assert_eq!(raw, expect);
                    // met and high agree with the scaled score.
                    if let Some(s) = r.scaled() { prop_assert_eq!(r.met(), Some(s.get() >= 100)); }
                }
                SubjectResult::Empty => prop_assert!(false, "registered pupils are never empty"),
            }
        }

        #[test]
        fn more_raw_never_lowers_the_result(a in 0u16..=50, b in 0u16..=50) {
            let t = table();
            let ra = subject_result(Subject::Reading, RegStatus::Registered, None, &[sat(a)], &t);
            let rb = subject_result(Subject::Reading, RegStatus::Registered, None, &[sat(b)], &t);
            let rank = |r: SubjectResult| match r { SubjectResult::Scored { conversion, .. } => conversion.rank(), _ => 0 };
            if a <= b { prop_assert!(rank(ra) <= rank(rb)); }
        }
    }
}
