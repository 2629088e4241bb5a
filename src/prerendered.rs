//! A part of a page rendered ahead of time, kept with its deflate stream made at the same
//! time, so that the page around it can be sent gzip-compressed with no compression at
//! request time.
//!
//! A gzip body is a header, one deflate stream and a trailer (the CRC-32 and length of what
//! it inflates to, RFC 1952). A deflate stream is a run of blocks (RFC 1951): a block may be
//! stored (its bytes as they are) and every block but the last says it is not the last. So
//! the page's own parts (title, the signed-in user, the CSRF token, the links) go in stored
//! blocks, and between them goes the part's deflate, made once with a sync flush (which ends
//! it on a byte boundary and does not mark it last). The CRC-32 of the whole comes from the
//! part's, computed once, combined with the page's own parts' (`crc32fast::Hasher::combine`).
//!
//! Only the part (a school's results, rendered from the release) is compressed. What the
//! request brings (the user, the CSRF token, anything echoed back) is never compressed with
//! anything, so the body's length tells an onlooker nothing about a secret (BREACH).

use std::io::Write;
use std::sync::Arc;

/// HTML rendered ahead, and the same compressed.
pub struct Prerendered {
    pub html: Arc<str>,
    /// Raw deflate of `html`, sync-flushed: blocks none of which is the last.
    deflate: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl std::fmt::Debug for Prerendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prerendered")
            .field("html_bytes", &self.html.len())
            .field("deflate_bytes", &self.deflate.len())
            .finish()
    }
}

/// The most a stored block holds (its length is 16 bits).
const STORED_MAX: usize = u16::MAX as usize;

/// A gzip member's header: deflate, no name or time, operating system unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl Prerendered {
    /// Compress `html` once (zlib level 6, as a server's gzip would).
    pub fn new(html: String) -> Prerendered {
        let mut z = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(html.len() / 4 + 64),
            Default::default(),
        );
        // Writing to a Vec cannot fail; `flush` is deflate's sync flush.
        z.write_all(html.as_bytes())
            .and_then(|()| z.flush())
            .expect("deflating into memory");
        // Taken before `finish`, which would add a last block.
        let deflate = std::mem::take(z.get_mut());
        let mut crc = crc32fast::Hasher::new();
        crc.update(html.as_bytes());
        Prerendered {
            html: html.into(),
            deflate,
            crc,
        }
    }

    /// Memory held, for the cache's weight.
    pub fn bytes(&self) -> usize {
        self.html.len() + self.deflate.len()
    }

    /// A gzip body that inflates to `head`, then `html`, then `tail`.
    pub fn gzip_around(&self, head: &[u8], tail: &[u8]) -> Vec<u8> {
        let stored = |n: usize| n + 5 * n.div_ceil(STORED_MAX).max(1);
        let mut out = Vec::with_capacity(
            GZIP_HEADER.len() + stored(head.len()) + self.deflate.len() + stored(tail.len()) + 8,
        );
        out.extend_from_slice(&GZIP_HEADER);
        stored_blocks(&mut out, head, false);
        out.extend_from_slice(&self.deflate);
        stored_blocks(&mut out, tail, true);
        let mut crc = crc32fast::Hasher::new();
        crc.update(head);
        crc.combine(&self.crc);
        crc.update(tail);
        let len = head.len() + self.html.len() + tail.len();
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out
    }
}

/// `bytes` as stored deflate blocks, the last of them marked last when `last` (an empty
/// block when there are no bytes, so the stream still ends). Each starts on a byte boundary,
/// where the blocks before it left off.
fn stored_blocks(out: &mut Vec<u8>, bytes: &[u8], last: bool) {
    let mut chunks = bytes.chunks(STORED_MAX).peekable();
    if chunks.peek().is_none() {
        if last {
            stored_block(out, &[], true);
        }
        return;
    }
    while let Some(chunk) = chunks.next() {
        stored_block(out, chunk, last && chunks.peek().is_none());
    }
}

fn stored_block(out: &mut Vec<u8>, chunk: &[u8], last: bool) {
    let len = u16::try_from(chunk.len()).expect("a stored block holds at most 65,535 bytes");
    // BFINAL, then BTYPE 00 (stored), then padding to the byte's end.
    out.push(u8::from(last));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// What a gzip body inflates to; the decoder checks the trailer's CRC-32 and length.
    fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(body);
        d.read_to_end(&mut out)?;
        // One member, nothing after it.
        let mut rest = Vec::new();
        d.into_inner().read_to_end(&mut rest)?;
        assert!(
            rest.is_empty(),
            "{} bytes after the gzip member",
            rest.len()
        );
        Ok(out)
    }

    fn table(rows: usize) -> String {
        (0..rows)
            .map(|i| {
                format!(
                    "<tr class=\"govuk-table__row\"><td>Pupil £{i}</td><td>{}</td></tr>\n",
                    80 + i % 41
                )
            })
            .collect()
    }

    #[test]
    fn inflates_to_the_page_with_the_part_in_its_place() {
        let part = Prerendered::new(table(400));
        let big_head = "<h1>é</h1>".repeat(9_000); // over one stored block
        for (head, tail) in [
            ("<html><head><title>t</title>", "</body></html>"),
            ("", ""),
            ("", "</html>"),
            ("<p>", ""),
            (big_head.as_str(), big_head.as_str()),
        ] {
            let body = part.gzip_around(head.as_bytes(), tail.as_bytes());
            let want = format!("{head}{}{tail}", part.html);
            assert_eq!(gunzip(&body).expect("a valid gzip body"), want.as_bytes());
        }
    }

    #[test]
    fn only_the_part_is_compressed() {
        let part = Prerendered::new(table(400));
        let (head, tail) = ("<input name=\"csrf\" value=\"secret-secret-secret\">", "");
        let body = part.gzip_around(head.as_bytes(), tail.as_bytes());
        // The part shrinks well; the page's own parts are carried as they are.
        assert!(
            body.len() * 5 < part.html.len(),
            "{} of {}",
            body.len(),
            part.html.len()
        );
        assert!(body.windows(head.len()).any(|w| w == head.as_bytes()));
        assert!(part.bytes() > part.html.len());
    }

    #[test]
    fn a_part_made_empty_still_makes_a_valid_body() {
        let part = Prerendered::new(String::new());
        let body = part.gzip_around(b"<p>a</p>", b"<p>b</p>");
        assert_eq!(gunzip(&body).unwrap(), b"<p>a</p><p>b</p>");
    }

    #[test]
    fn a_damaged_body_is_caught_by_its_trailer() {
        // The test's own decoder must be able to fail, or the tests above prove nothing.
        let part = Prerendered::new(table(10));
        let mut body = part.gzip_around(b"<p>head</p>", b"<p>tail</p>");
        body[GZIP_HEADER.len() + 6] ^= b' '; // a letter of the stored head, case flipped
        assert!(gunzip(&body).is_err());
    }
}
