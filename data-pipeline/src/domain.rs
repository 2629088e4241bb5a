//! The contract's vocabulary as types that validate once: UPNs, papers, subjects, codes.
//! Pure: no IO. After `parse`, the value is the proof that the text was valid.

use std::fmt;

/// The 23 check letters of the UPN check-digit scheme (no I, O or S).
const CHECK_LETTERS: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

/// A unique pupil number whose check letter and structure have been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upn([u8; 13]);

impl Upn {
    /// Parse a UPN, explaining what is wrong when it is not valid.
    pub fn parse(s: &str) -> Result<Upn, String> {
        let b = s.as_bytes();
        if b.len() != 13 {
            return Err(format!(
                "a UPN has 13 characters, this has {}",
                s.chars().count()
            ));
        }
        if !b[1..12].iter().all(u8::is_ascii_digit) {
            return Err("characters 2 to 12 of a UPN must be digits".into());
        }
        let last = b[12];
        if !(last.is_ascii_digit() || CHECK_LETTERS.contains(&last)) {
            return Err(
                "the last character must be a digit or a letter other than I, O or S".into(),
            );
        }
        let expected = check_letter(&b[1..13]).expect("structure checked above");
        if b[0] != expected {
            return Err(format!("check letter should be {}", expected as char));
        }
        let mut out = [0u8; 13];
        out.copy_from_slice(b);
        Ok(Upn(out))
    }

    /// Build a UPN from its 12 trailing characters, computing the check letter.
    pub fn with_check_letter(tail: &str) -> Option<Upn> {
        let b = tail.as_bytes();
        if b.len() != 12 {
            return None;
        }
        let letter = check_letter(b)?;
        let mut out = [0u8; 13];
        out[0] = letter;
        out[1..].copy_from_slice(b);
        Upn::parse(std::str::from_utf8(&out).ok()?).ok()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }

    /// A temporary UPN ends in a letter rather than a digit.
    pub fn is_temporary(&self) -> bool {
        self.0[12].is_ascii_uppercase()
    }
}

impl fmt::Display for Upn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The check letter for characters 2..13 of a UPN (`tail`, 12 bytes), or `None` if a
/// character cannot appear there.
pub fn check_letter(tail: &[u8]) -> Option<u8> {
    if tail.len() != 12 {
        return None;
    }
    let mut sum: u32 = 0;
    for (i, &c) in tail.iter().enumerate() {
        let weight = i as u32 + 2;
        let value = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else if i == 11 {
            CHECK_LETTERS.iter().position(|&l| l == c)? as u32
        } else {
            return None;
        };
        sum += value * weight;
    }
    Some(CHECK_LETTERS[(sum % 23) as usize])
}

/// A 7-digit DfE number: 3-digit LA code and 4-digit establishment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Laestab(pub u32);

impl Laestab {
    pub fn parse(s: &str) -> Result<Laestab, String> {
        if s.len() == 7 && s.bytes().all(|c| c.is_ascii_digit()) {
            Ok(Laestab(s.parse().expect("digits")))
        } else {
            Err("a DfE number (laestab) is exactly 7 digits".into())
        }
    }
    pub fn la_code(self) -> LaCode {
        LaCode((self.0 / 10_000) as u16)
    }
}

impl fmt::Display for Laestab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:07}", self.0)
    }
}

/// A 3-digit local authority code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaCode(pub u16);

impl LaCode {
    pub fn parse(s: &str) -> Result<LaCode, String> {
        if s.len() == 3 && s.bytes().all(|c| c.is_ascii_digit()) {
            Ok(LaCode(s.parse().expect("digits")))
        } else {
            Err("an LA code is exactly 3 digits".into())
        }
    }
}

impl fmt::Display for LaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn parse(s: &str) -> Result<$name, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(concat!("not a known ", $what, "; expected one of {}"),
                        [$($text),+].join(", "))),
                }
            }
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

code_enum!(
    /// A subject with a test.
    Subject, "subject" { Reading => "reading", Gps => "gps", Maths => "maths" }
);
code_enum!(
    /// One of the six test papers.
    Paper, "paper" {
        Gps1 => "gps1", Gps2 => "gps2", Reading => "reading",
        Maths1 => "maths1", Maths2 => "maths2", Maths3 => "maths3",
    }
);
code_enum!(
    /// Registration status for one subject.
    RegStatus, "registration status" {
        Registered => "registered", Below => "below", Future => "future",
        Previous => "previous", Left => "left", Unregistered => "unregistered",
    }
);
code_enum!(
    /// Why a pupil did not sit a paper normally.
    AttendanceCode, "attendance code" { A => "A", U => "U", J => "J" }
);
code_enum!(
    /// Why a subject's result was annulled.
    AnnulmentCode, "annulment code" { H => "H", Q => "Q" }
);
code_enum!(
    /// Phase of education of an establishment.
    Phase, "phase" { Primary => "primary", Middle => "middle", Secondary => "secondary", AllThrough => "all_through" }
);
code_enum!(
    /// Establishment type.
    SchoolType, "school type" {
        Maintained => "maintained", Academy => "academy", Free => "free", Special => "special",
        Independent => "independent", Pru => "pru", Secure => "secure", Mod => "mod", Nmss => "nmss",
    }
);
code_enum!(
    /// Pupil gender as recorded at registration.
    Gender, "gender" { F => "F", M => "M" }
);
code_enum!(
    /// Writing teacher assessment outcome.
    WritingTa, "writing TA code" {
        Gds => "GDS", Exs => "EXS", Wts => "WTS", Pk1 => "PK1", Pk2 => "PK2", Pk3 => "PK3",
        Pk4 => "PK4", Pk5 => "PK5", Pk6 => "PK6", Em => "EM", A => "A", L => "L", F => "F", P => "P",
    }
);
code_enum!(
    /// Science teacher assessment outcome.
    ScienceTa, "science TA code" {
        Exs => "EXS", Hnm => "HNM", A => "A", L => "L", F => "F", P => "P",
    }
);

impl Subject {
    /// The subject's papers, in the order rule 4 reads them.
    pub fn papers(self) -> &'static [Paper] {
        match self {
            Subject::Reading => &[Paper::Reading],
            Subject::Gps => &[Paper::Gps1, Paper::Gps2],
            Subject::Maths => &[Paper::Maths1, Paper::Maths2, Paper::Maths3],
        }
    }
    pub fn max_raw(self) -> u16 {
        self.papers().iter().map(|p| p.max_raw()).sum()
    }
    /// Position in `Subject::ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
    /// Subjects in the order the results file lists them.
    pub const FILE_ORDER: [Subject; 3] = [Subject::Reading, Subject::Gps, Subject::Maths];
}

impl Paper {
    pub fn subject(self) -> Subject {
        match self {
            Paper::Gps1 | Paper::Gps2 => Subject::Gps,
            Paper::Reading => Subject::Reading,
            Paper::Maths1 | Paper::Maths2 | Paper::Maths3 => Subject::Maths,
        }
    }
    pub fn max_raw(self) -> u16 {
        match self {
            Paper::Gps1 => 50,
            Paper::Gps2 => 20,
            Paper::Reading => 50,
            Paper::Maths1 => 40,
            Paper::Maths2 | Paper::Maths3 => 35,
        }
    }
    /// Position in `Paper::ALL`, used as an array index.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl WritingTa {
    /// Writing at the expected standard or above, for RWM.
    pub fn meets_expected(self) -> bool {
        matches!(self, WritingTa::Gds | WritingTa::Exs)
    }
}

/// A scaled score, 80..=120.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScaledScore(u8);

impl ScaledScore {
    pub fn new(v: u8) -> Option<ScaledScore> {
        (80..=120).contains(&v).then_some(ScaledScore(v))
    }
    pub fn get(self) -> u8 {
        self.0
    }
    pub fn meets_expected(self) -> bool {
        self.0 >= 100
    }
    pub fn high(self) -> bool {
        self.0 >= 110
    }
}

/// A row of a conversion table: a scaled score or `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    Scaled(ScaledScore),
    NotAwarded,
}

impl Conversion {
    pub fn parse(s: &str) -> Result<Conversion, String> {
        if s == "N" {
            return Ok(Conversion::NotAwarded);
        }
        s.parse::<u8>()
            .ok()
            .and_then(ScaledScore::new)
            .map(Conversion::Scaled)
            .ok_or_else(|| "a scaled score is 80 to 120, or N".to_string())
    }
    /// Ordering key for the never-decreasing check: `N` sits below every score.
    pub fn rank(self) -> u8 {
        match self {
            Conversion::NotAwarded => 0,
            Conversion::Scaled(s) => s.get(),
        }
    }
}

/// Parse a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Result<time::Date, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if s.len() != 10 {
        return Err("a date is written YYYY-MM-DD".into());
    }
    time::Date::parse(s, &fmt).map_err(|_| "not a real date in the form YYYY-MM-DD".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_examples() {
        assert!(Upn::parse("H801200001001").is_ok());
        assert!(Upn::parse("G80120000101A").is_ok());
        assert_eq!(
            Upn::parse("Z801200001001").unwrap_err(),
            "check letter should be H"
        );
        assert!(Upn::parse("G80120000101S").is_err());
        assert!(Upn::parse("H80120000100").is_err());
        assert!(Upn::parse("H80120000A001").is_err());
    }

    #[test]
    fn temporary_upn_is_recognised() {
        assert!(Upn::parse("G80120000101A").unwrap().is_temporary());
        assert!(!Upn::parse("H801200001001").unwrap().is_temporary());
    }

    #[test]
    fn subjects_and_papers_match_the_contract() {
        assert_eq!(Subject::Gps.max_raw(), 70);
        assert_eq!(Subject::Reading.max_raw(), 50);
        assert_eq!(Subject::Maths.max_raw(), 110);
        for p in Paper::ALL {
            assert!(p.subject().papers().contains(p));
            assert_eq!(Paper::ALL[p.index()], *p);
        }
    }

    #[test]
    fn conversion_values() {
        assert_eq!(Conversion::parse("N"), Ok(Conversion::NotAwarded));
        assert!(Conversion::parse("79").is_err());
        assert!(Conversion::parse("121").is_err());
        assert_eq!(Conversion::parse("100").unwrap().rank(), 100);
    }

    #[test]
    fn dates() {
        assert!(parse_date("2014-02-28").is_ok());
        assert!(parse_date("2014-02-30").is_err());
        assert!(parse_date("14-02-28").is_err());
        assert!(parse_date("2014-2-28").is_err());
    }

    proptest! {
        #[test]
        fn every_generated_upn_parses_and_any_other_letter_fails(
            la in 100u32..1000, estab in 0u32..10000, yy in 0u32..100, serial in 0u32..1000,
            wrong in 0usize..23,
        ) {
            let tail = format!("{la:03}{estab:04}{yy:02}{serial:03}");
            let upn = Upn::with_check_letter(&tail).unwrap();
            prop_assert_eq!(&upn.as_str()[1..], tail.as_str());
            let bad_letter = CHECK_LETTERS[wrong];
            if bad_letter != upn.as_str().as_bytes()[0] {
                let bad = format!("{}{}", bad_letter as char, tail);
                prop_assert!(Upn::parse(&bad).is_err());
            }
        }

        #[test]
        fn upn_parse_never_panics(s in "\\PC{0,20}") {
            let _ = Upn::parse(&s);
        }
    }
}
