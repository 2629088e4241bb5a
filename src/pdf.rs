//! A pupil's paper as one PDF: each scanned page on its own A4 sheet, scaled to fit. PNG pages
//! are decoded (the `png` crate) and re-deflated as image XObjects; JPEG pages are embedded
//! as they are (DCTDecode), so nothing is re-encoded lossily. Built with `pdf-writer`.

use std::io::Write;

use anyhow::{Context, bail};
use bytes::Bytes;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, TextStr};

/// A4 in points.
const A4: (f32, f32) = (595.0, 842.0);
/// Margin around each page image, points.
const MARGIN: f32 = 18.0;

/// One page image ready to embed.
struct Image {
    width: u32,
    height: u32,
    /// DeviceGray (1) or DeviceRGB (3); JPEG may also be CMYK (4).
    components: u8,
    filter: Filter,
    data: Vec<u8>,
}

fn png_image(bytes: &[u8]) -> anyhow::Result<Image> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    let (components, pixels): (u8, Vec<u8>) = match info.color_type {
        png::ColorType::Grayscale => (1, buf),
        png::ColorType::Rgb => (3, buf),
        // Scans carry no transparency worth keeping: drop the alpha channel.
        png::ColorType::GrayscaleAlpha => (1, buf.chunks_exact(2).map(|c| c[0]).collect()),
        png::ColorType::Rgba => (
            3,
            buf.chunks_exact(4)
                .flat_map(|c| [c[0], c[1], c[2]])
                .collect(),
        ),
        png::ColorType::Indexed => bail!("indexed PNG was not expanded"),
    };
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&pixels)?;
    Ok(Image {
        width: info.width,
        height: info.height,
        components,
        filter: Filter::FlateDecode,
        data: z.finish()?,
    })
}

/// A JPEG's size and components from its start-of-frame marker.
fn jpeg_image(bytes: &[u8]) -> anyhow::Result<Image> {
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            bail!("not a JPEG marker at byte {i}");
        }
        let marker = bytes[i + 1];
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let height = u32::from(u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]));
            let width = u32::from(u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]));
            return Ok(Image {
                width,
                height,
                components: bytes[i + 9],
                filter: Filter::DctDecode,
                data: bytes.to_vec(),
            });
        }
        i += 2 + len;
    }
    bail!("no JPEG frame header found")
}

fn image(key: &str, bytes: &[u8]) -> anyhow::Result<Image> {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        png_image(bytes).with_context(|| format!("page {key}"))
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_image(bytes).with_context(|| format!("page {key}"))
    } else {
        bail!("page {key} is neither PNG nor JPEG")
    }
}

/// The pages (object key, bytes), in order, as one PDF.
pub fn paper_pdf(title: &str, pages: &[(String, Bytes)]) -> anyhow::Result<Vec<u8>> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let info = Ref::new(3);
    let first = 4;
    let page_ref = |i: usize| Ref::new(first + 3 * i as i32);
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages.len()).map(page_ref))
        .count(pages.len() as i32);
    pdf.document_info(info).title(TextStr(title));
    for (i, (key, bytes)) in pages.iter().enumerate() {
        let img = image(key, bytes)?;
        let (page_id, image_id, content_id) =
            (page_ref(i), page_ref(i).next(), page_ref(i).next().next());
        let name = Name(b"Im1");
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, A4.0, A4.1));
        page.parent(tree);
        page.contents(content_id);
        page.resources().x_objects().pair(name, image_id);
        page.finish();

        let mut x = pdf.image_xobject(image_id, &img.data);
        x.filter(img.filter);
        x.width(img.width as i32);
        x.height(img.height as i32);
        match img.components {
            1 => x.color_space().device_gray(),
            4 => x.color_space().device_cmyk(),
            _ => x.color_space().device_rgb(),
        };
        x.bits_per_component(8);
        x.finish();

        // Fit inside the margins, keeping the aspect ratio, centred.
        let (bw, bh) = (A4.0 - 2.0 * MARGIN, A4.1 - 2.0 * MARGIN);
        let scale = (bw / img.width as f32).min(bh / img.height as f32);
        let (w, h) = (img.width as f32 * scale, img.height as f32 * scale);
        let mut c = Content::new();
        c.save_state();
        c.transform([w, 0.0, 0.0, h, (A4.0 - w) / 2.0, (A4.1 - h) / 2.0]);
        c.x_object(name);
        c.restore_state();
        pdf.stream(content_id, &c.finish());
    }
    Ok(pdf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paper_becomes_one_pdf_page_per_scan() {
        let pages: Vec<(String, Bytes)> = (1..=3)
            .map(|p| {
                (
                    format!("p{p}.png"),
                    Bytes::from(nca_pipeline::generate::page_image(
                        "H801200001001",
                        nca_pipeline::domain::Paper::Reading,
                        p,
                    )),
                )
            })
            .collect();
        let pdf = paper_pdf("H801200001001 reading", &pages).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&pdf);
        let pages = text.matches("/Type /Page").count() - text.matches("/Type /Pages").count();
        assert_eq!(pages, 3, "one PDF page per scan");
        assert_eq!(text.matches("/Subtype /Image").count(), 3);
        assert!(text.contains("/DeviceGray"));
    }

    #[test]
    fn a_page_that_is_not_an_image_is_an_error_naming_it() {
        let e = paper_pdf("x", &[("bad.png".into(), Bytes::from_static(b"hello"))]).unwrap_err();
        assert!(format!("{e:#}").contains("bad.png"), "{e:#}");
    }
}
