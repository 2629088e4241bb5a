//! Reading Common Transfer Files, the XML in which schools pass pupils' records on: one walk
//! over the document gives each `Pupil`'s own fields and its `StageAssessment`s, with entity
//! references resolved (`O&apos;Brien`). The KS3 lookup reads UPN, surname and date of birth
//! from it; the TA upload reads the teacher-assessment judgements. What a reader does with a
//! pupil's fields (which are required, how they are checked) is its own business.

use std::collections::HashMap;

/// One `Pupil` element of a CTF.
#[derive(Debug, Default)]
pub struct Pupil {
    /// Its place in the file, from 1, for messages that name it.
    pub n: usize,
    /// The text of its direct children (`UPN`, `Surname`, `DOB`, …), by tag as written.
    fields: HashMap<String, String>,
    /// Each `StageAssessment` anywhere under it: its children's text by upper-cased tag.
    pub assessments: Vec<HashMap<String, String>>,
}

impl Pupil {
    /// The text of a direct child, or "" when it has none.
    pub fn field(&self, tag: &str) -> &str {
        self.fields.get(tag).map_or("", String::as_str)
    }
}

/// Every pupil of the CTF `name`, in file order; or why the file cannot be read as one (an
/// XML error, with the byte where it is, or no pupils at all).
pub fn pupils(name: &str, bytes: &[u8]) -> Result<Vec<Pupil>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut pupil = Pupil::default();
    let mut assessment: HashMap<String, String> = HashMap::new();
    // An element's text arrives in pieces, split at entity references such as &amp;.
    let mut text = String::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match tag.as_str() {
                    "Pupil" => {
                        pupil = Pupil {
                            n: out.len() + 1,
                            ..Pupil::default()
                        };
                    }
                    "StageAssessment" => assessment.clear(),
                    _ => {}
                }
                path.push(tag);
                text.clear();
            }
            Ok(Event::End(_)) => {
                let tag = path.pop().unwrap_or_default();
                match (tag.as_str(), path.last().map(String::as_str)) {
                    ("Pupil", _) => out.push(std::mem::take(&mut pupil)),
                    ("StageAssessment", _) => {
                        pupil.assessments.push(std::mem::take(&mut assessment));
                    }
                    (_, Some("Pupil")) => {
                        pupil.fields.insert(tag, std::mem::take(&mut text));
                    }
                    (_, Some("StageAssessment")) => {
                        assessment.insert(tag.to_uppercase(), std::mem::take(&mut text));
                    }
                    _ => {}
                }
                text.clear();
            }
            Ok(Event::Text(t)) => text.push_str(&t.decode().unwrap_or_default()),
            Ok(Event::GeneralRef(r)) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    text.push(c);
                } else if let Some(s) =
                    quick_xml::escape::resolve_predefined_entity(&String::from_utf8_lossy(&r))
                {
                    text.push_str(s);
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "{name}: not a readable CTF (XML error at byte {}: {e})",
                    reader.buffer_position()
                ));
            }
        }
        buf.clear();
    }
    if out.is_empty() {
        return Err(format!("{name}: no pupils found: is this a CTF file?"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pupils_carry_their_own_fields_and_assessments_with_entities_resolved() {
        let doc = br#"<?xml version="1.0"?><CTfile><Header><UPN>NOT-A-PUPIL</UPN></Header>
            <CTFpupilData>
            <Pupil><UPN>A1</UPN><Surname>O&apos;Brien &amp; Co</Surname><DOB>2013-03-02</DOB>
              <StageAssessments><KeyStage><Stage>KS2</Stage>
                <StageAssessment><Subject>WRI</Subject><Method>TA</Method><Result>EXS</Result></StageAssessment>
                <StageAssessment><subject>SCI</subject><Method>TA</Method><Result>&#71;DS</Result></StageAssessment>
              </KeyStage></StageAssessments>
              <Contacts><Contact><Surname>Parent</Surname></Contact></Contacts>
            </Pupil>
            <Pupil><UPN>B2</UPN></Pupil>
            </CTFpupilData></CTfile>"#;
        let got = pupils("feeder.xml", doc).unwrap();
        assert_eq!(got.len(), 2);
        let a = &got[0];
        assert_eq!((a.n, a.field("UPN")), (1, "A1"));
        // A contact's surname is not the pupil's.
        assert_eq!(a.field("Surname"), "O'Brien & Co");
        assert_eq!(a.field("DOB"), "2013-03-02");
        assert_eq!(a.assessments.len(), 2);
        assert_eq!(a.assessments[0]["SUBJECT"], "WRI");
        assert_eq!(a.assessments[1]["SUBJECT"], "SCI");
        assert_eq!(a.assessments[1]["RESULT"], "GDS");
        let b = &got[1];
        assert_eq!((b.n, b.field("UPN"), b.field("DOB")), (2, "B2", ""));
        assert!(b.assessments.is_empty());
    }

    #[test]
    fn unreadable_files_say_which_and_where() {
        let err = pupils("broken.xml", b"<CTfile><Pupil><UPN>A1</Pupil>").unwrap_err();
        assert!(
            err.starts_with("broken.xml: not a readable CTF (XML error at byte"),
            "{err}"
        );
        let err = pupils("notes.txt", b"hello").unwrap_err();
        assert_eq!(err, "notes.txt: no pupils found: is this a CTF file?");
    }
}
