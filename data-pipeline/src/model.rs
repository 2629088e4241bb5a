//! The intake as loaded into memory: organisations, pupils and their per-paper mark totals.
//! Item-level marks are never held row by row; only their aggregates are.

use crate::domain::*;

#[derive(Debug, Clone)]
pub struct La {
    pub code: LaCode,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Trust {
    pub uid: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct School {
    pub urn: u32,
    pub laestab: Laestab,
    pub name: String,
    pub la: LaCode,
    pub phase: Phase,
    pub kind: SchoolType,
    /// Index into `Intake::trusts`.
    pub trust: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Pupil {
    pub upn: Upn,
    /// Index into `Intake::schools`.
    pub school: u32,
    pub surname: String,
    pub forename: String,
    pub dob: time::Date,
    pub gender: Gender,
    /// Registration per subject, indexed by `Subject::index`.
    pub reg: [RegStatus; 3],
    /// Attendance exception per paper, indexed by `Paper::index`.
    pub attendance: [Option<AttendanceCode>; 6],
    /// Annulment per subject.
    pub annulment: [Option<AnnulmentCode>; 3],
    pub writing: Option<WritingTa>,
    pub science: Option<ScienceTa>,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub paper: Paper,
    pub label: String,
    pub max_mark: u8,
}

/// One cycle's conversion tables: `scaled[subject][raw]`.
#[derive(Debug, Clone)]
pub struct ConversionTables {
    pub year: i32,
    pub scaled: [Vec<Conversion>; 3],
}

impl ConversionTables {
    pub fn convert(&self, subject: Subject, raw: u16) -> Conversion {
        self.scaled[subject.index()][raw as usize]
    }
}

#[derive(Debug, Clone)]
pub struct ScriptPage {
    /// Row in the scripts manifest, for problems found later (page checks).
    pub row: u64,
    pub pupil: u32,
    pub paper: Paper,
    pub page: u32,
    pub object_key: String,
    pub sha256: String,
}

/// Per-pupil and per-school aggregates of the item-level marks.
#[derive(Debug, Clone, Default)]
pub struct MarkTotals {
    /// Sum of marks per pupil and paper: `raw[pupil * 6 + paper]`.
    pub raw: Vec<u16>,
    /// Bit `p` set when the pupil has any mark for paper `p`.
    pub has_marks: Vec<u8>,
    /// Sum of marks per school and item: `item_sum[school * n_items + item]`.
    pub item_sum: Vec<u32>,
    /// Number of marks per school and item.
    pub item_n: Vec<u32>,
    /// Each pupil's mark per item: `item_marks[pupil * n_items + item]`, [`NO_MARK`] where
    /// none was recorded. Filled once after the parallel read, never merged.
    pub item_marks: Vec<u8>,
    pub rows: u64,
}

/// An item with no mark recorded in [`MarkTotals::item_marks`].
pub const NO_MARK: u8 = u8::MAX;

impl MarkTotals {
    pub fn new(pupils: usize, schools: usize, items: usize) -> MarkTotals {
        MarkTotals {
            raw: vec![0; pupils * 6],
            has_marks: vec![0; pupils],
            item_sum: vec![0; schools * items],
            item_n: vec![0; schools * items],
            item_marks: Vec::new(),
            rows: 0,
        }
    }

    /// Add another partial total (from another reader thread) into this one.
    pub fn merge(&mut self, other: &MarkTotals) {
        for (a, b) in self.raw.iter_mut().zip(&other.raw) {
            *a += b;
        }
        for (a, b) in self.has_marks.iter_mut().zip(&other.has_marks) {
            *a |= b;
        }
        for (a, b) in self.item_sum.iter_mut().zip(&other.item_sum) {
            *a += b;
        }
        for (a, b) in self.item_n.iter_mut().zip(&other.item_n) {
            *a += b;
        }
        self.rows += other.rows;
    }

    /// A pupil's mark for an item, if one was recorded.
    pub fn item_mark(&self, pupil: usize, item: usize, n_items: usize) -> Option<u8> {
        self.item_marks
            .get(pupil * n_items + item)
            .copied()
            .filter(|&m| m != NO_MARK)
    }
}

/// A loaded intake.
#[derive(Debug, Clone)]
pub struct Intake {
    pub year: i32,
    pub las: Vec<La>,
    pub trusts: Vec<Trust>,
    pub schools: Vec<School>,
    pub pupils: Vec<Pupil>,
    pub items: Vec<Item>,
    pub conversion: ConversionTables,
    pub scripts: Vec<ScriptPage>,
    pub marks: MarkTotals,
}
