//! Go's `http.DetectContentType`, which picks the `Content-Type` of a probe answer:
//! KubeElasti v0.1.30's resolver sets none itself, so Go's server sniffs the body's first
//! 512 bytes (the WHATWG MIME sniffing algorithm, in Go's order).

/// Bytes Go looks at.
const SNIFF_LEN: usize = 512;

/// What Go's server would send as `Content-Type` for `body`, which must not be empty.
pub(super) fn content_type(body: &[u8]) -> &'static str {
    let data = &body[..body.len().min(SNIFF_LEN)];
    let first_non_ws = data.iter().take_while(|b| is_ws(**b)).count();
    SIGNATURES
        .iter()
        .find_map(|sig| sig.matches(data, first_non_ws))
        .unwrap_or("application/octet-stream")
}

/// Whitespace per the WHATWG spec (0xWS).
fn is_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

enum Sig {
    /// A case-insensitive tag after leading whitespace, then a space or `>`.
    Html(&'static [u8]),
    Exact(&'static [u8], &'static str),
    Masked {
        mask: &'static [u8],
        pat: &'static [u8],
        skip_ws: bool,
        ct: &'static str,
    },
    Mp4,
    Text,
}

const fn masked(mask: &'static [u8], pat: &'static [u8], ct: &'static str) -> Sig {
    Sig::Masked {
        mask,
        pat,
        skip_ws: false,
        ct,
    }
}

/// Go's `sniffSignatures`, in its order.
const SIGNATURES: &[Sig] = &[
    Sig::Html(b"<!DOCTYPE HTML"),
    Sig::Html(b"<HTML"),
    Sig::Html(b"<HEAD"),
    Sig::Html(b"<SCRIPT"),
    Sig::Html(b"<IFRAME"),
    Sig::Html(b"<H1"),
    Sig::Html(b"<DIV"),
    Sig::Html(b"<FONT"),
    Sig::Html(b"<TABLE"),
    Sig::Html(b"<A"),
    Sig::Html(b"<STYLE"),
    Sig::Html(b"<TITLE"),
    Sig::Html(b"<B"),
    Sig::Html(b"<BODY"),
    Sig::Html(b"<BR"),
    Sig::Html(b"<P"),
    Sig::Html(b"<!--"),
    Sig::Masked {
        mask: b"\xFF\xFF\xFF\xFF\xFF",
        pat: b"<?xml",
        skip_ws: true,
        ct: "text/xml; charset=utf-8",
    },
    Sig::Exact(b"%PDF-", "application/pdf"),
    Sig::Exact(b"%!PS-Adobe-", "application/postscript"),
    masked(
        b"\xFF\xFF\x00\x00",
        b"\xFE\xFF\x00\x00",
        "text/plain; charset=utf-16be",
    ),
    masked(
        b"\xFF\xFF\x00\x00",
        b"\xFF\xFE\x00\x00",
        "text/plain; charset=utf-16le",
    ),
    masked(
        b"\xFF\xFF\xFF\x00",
        b"\xEF\xBB\xBF\x00",
        "text/plain; charset=utf-8",
    ),
    Sig::Exact(b"\x00\x00\x01\x00", "image/x-icon"),
    Sig::Exact(b"\x00\x00\x02\x00", "image/x-icon"),
    Sig::Exact(b"BM", "image/bmp"),
    Sig::Exact(b"GIF87a", "image/gif"),
    Sig::Exact(b"GIF89a", "image/gif"),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00WEBPVP",
        "image/webp",
    ),
    Sig::Exact(b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
    Sig::Exact(b"\xFF\xD8\xFF", "image/jpeg"),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"FORM\x00\x00\x00\x00AIFF",
        "audio/aiff",
    ),
    masked(b"\xFF\xFF\xFF", b"ID3", "audio/mpeg"),
    masked(b"\xFF\xFF\xFF\xFF\xFF", b"OggS\x00", "application/ogg"),
    masked(
        b"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF",
        b"MThd\x00\x00\x00\x06",
        "audio/midi",
    ),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00AVI ",
        "video/avi",
    ),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00WAVE",
        "audio/wave",
    ),
    Sig::Mp4,
    Sig::Exact(b"\x1A\x45\xDF\xA3", "video/webm"),
    masked(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xFF\xFF",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00LP",
        "application/vnd.ms-fontobject",
    ),
    Sig::Exact(b"\x00\x01\x00\x00", "font/ttf"),
    Sig::Exact(b"OTTO", "font/otf"),
    Sig::Exact(b"ttcf", "font/collection"),
    Sig::Exact(b"wOFF", "font/woff"),
    Sig::Exact(b"wOF2", "font/woff2"),
    Sig::Exact(b"\x1F\x8B\x08", "application/x-gzip"),
    Sig::Exact(b"PK\x03\x04", "application/zip"),
    Sig::Exact(b"Rar!\x1A\x07\x00", "application/x-rar-compressed"),
    Sig::Exact(b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
    Sig::Exact(b"\x00\x61\x73\x6D", "application/wasm"),
    Sig::Text,
];

impl Sig {
    fn matches(&self, data: &[u8], first_non_ws: usize) -> Option<&'static str> {
        match self {
            Self::Html(tag) => {
                let data = &data[first_non_ws..];
                let (head, next) = (data.get(..tag.len())?, *data.get(tag.len())?);
                let same = tag.iter().zip(head).all(|(t, d)| {
                    let d = if t.is_ascii_uppercase() { d & 0xDF } else { *d };
                    *t == d
                });
                (same && matches!(next, b' ' | b'>')).then_some("text/html; charset=utf-8")
            }
            Self::Exact(sig, ct) => data.starts_with(sig).then_some(*ct),
            Self::Masked {
                mask,
                pat,
                skip_ws,
                ct,
            } => {
                let data = if *skip_ws {
                    &data[first_non_ws..]
                } else {
                    data
                };
                let head = data.get(..pat.len())?;
                let same = head
                    .iter()
                    .zip(mask.iter().zip(pat.iter()))
                    .all(|(d, (m, p))| d & m == *p);
                same.then_some(*ct)
            }
            Self::Mp4 => {
                let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
                if data.len() < 12
                    || data.len() < size
                    || !size.is_multiple_of(4)
                    || &data[4..8] != b"ftyp"
                {
                    return None;
                }
                // Bytes 12..16 are the major brand's version, not a brand.
                (8..size)
                    .step_by(4)
                    .filter(|at| *at != 12)
                    .any(|at| &data[at..at + 3] == b"mp4")
                    .then_some("video/mp4")
            }
            Self::Text => data[first_non_ws..]
                .iter()
                .all(|b| !matches!(b, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F))
                .then_some("text/plain; charset=utf-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::content_type;

    /// Go's answers, from its `sniff_test.go` and by hand.
    #[test]
    fn sniffs_as_go_does() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"ok":true}"#, "text/plain; charset=utf-8"),
            (b"[1,2]", "text/plain; charset=utf-8"),
            (b"pong", "text/plain; charset=utf-8"),
            (
                b"  <html><body>up</body></html>",
                "text/html; charset=utf-8",
            ),
            (b"<HtMl>", "text/html; charset=utf-8"),
            (b"<html", "text/plain; charset=utf-8"), // no terminating byte
            (b"<!-- x -->", "text/html; charset=utf-8"),
            (b"\n<?xml version=\"1.0\"?><ok/>", "text/xml; charset=utf-8"),
            (b"%PDF-1.7", "application/pdf"),
            (b"\xEF\xBB\xBFok", "text/plain; charset=utf-8"),
            (b"\xEF\xBB\xBF\x01", "text/plain; charset=utf-8"), // the BOM, before the binary check
            (b"\xFE\xFF\x00\x01", "text/plain; charset=utf-16be"),
            (b"BM fine", "image/bmp"),
            (b"GIF89a", "image/gif"),
            (b"ok\x00", "application/octet-stream"),
            (b"\x1F\x8B\x08\x00", "application/x-gzip"),
            (
                b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
                "video/mp4",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                content_type(body),
                *want,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
