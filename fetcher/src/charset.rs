//! Turning fetched bytes into UTF-8 text: which encoding a page uses (BOM, header,
//! `<meta>`, XML declaration, then statistical sniffing) and whether a content type is
//! one the crawler parses at all.

use std::borrow::Cow;

use bytes::Bytes;
use chardetng::{EncodingDetector, Iso2022JpDetection, Utf8Detection};
use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};

/// How many leading bytes are searched for `<meta charset>`, as browsers do.
const PRESCAN_BYTES: usize = 1024;
/// How many leading bytes the statistical detector looks at; enough for a confident guess.
const SNIFF_BYTES: usize = 1 << 20;

/// Decode an HTML/text body to UTF-8. Order: BOM, Content-Type charset parameter,
/// `<meta charset>` / `<meta http-equiv content-type>` (or an XML declaration) in the
/// first 1024 bytes, then chardetng sniffing. Returns the text and the name of the
/// encoding used (e.g. "UTF-8", "windows-1252", "Shift_JIS"). Malformed bytes become
/// U+FFFD; unknown labels fall through to the next step.
pub fn decode_body(body: &[u8], content_type: Option<&str>) -> (String, &'static str) {
    let (text, name) = decode(body, content_type, None);
    (text.into_owned(), name)
}

/// [`decode_body`], with the page URL's top-level domain as a hint for sniffing
/// (a `.jp` page without a declared charset is more likely Shift_JIS than windows-1252).
pub fn decode_body_for_url(
    body: &[u8],
    content_type: Option<&str>,
    url: &url::Url,
) -> (String, &'static str) {
    let (text, name) = decode(body, content_type, tld_of(url));
    (text.into_owned(), name)
}

/// [`decode_body_for_url`] without a copy when the body already is what it decodes to
/// (UTF-8, or ASCII in an ASCII-compatible charset): a slice of the same buffer.
pub fn decode_bytes_for_url(
    body: &Bytes,
    content_type: Option<&str>,
    url: &url::Url,
) -> (Bytes, &'static str) {
    match decode(body, content_type, tld_of(url)) {
        (Cow::Borrowed(text), name) => (body.slice_ref(text.as_bytes()), name),
        (Cow::Owned(text), name) => (Bytes::from(text), name),
    }
}

fn decode<'a>(
    body: &'a [u8],
    content_type: Option<&str>,
    tld: Option<String>,
) -> (Cow<'a, str>, &'static str) {
    if let Some((encoding, bom_len)) = Encoding::for_bom(body) {
        return decode_with(encoding, &body[bom_len..]);
    }
    let declared = content_type
        .and_then(charset_param)
        .and_then(|label| Encoding::for_label_no_replacement(label.as_bytes()))
        .or_else(|| {
            let head = &body[..body.len().min(PRESCAN_BYTES)];
            prescan_xml_declaration(head).or_else(|| prescan_meta(head))
        });
    let encoding = match declared {
        Some(encoding) => encoding,
        None => sniff(body, tld),
    };
    decode_with(encoding, body)
}

/// Whether a Content-Type (or its absence) is one the crawler parses: text/html,
/// application/xhtml+xml, text/plain, application/xml, text/xml. Absent means "sniff".
pub fn is_textual(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "" | "text/html" | "application/xhtml+xml" | "text/plain" | "application/xml" | "text/xml"
    )
}

fn decode_with<'a>(encoding: &'static Encoding, bytes: &'a [u8]) -> (Cow<'a, str>, &'static str) {
    let (text, _had_errors) = encoding.decode_without_bom_handling(bytes);
    (text, encoding.name())
}

fn sniff(body: &[u8], tld: Option<String>) -> &'static Encoding {
    let mut detector = EncodingDetector::new(Iso2022JpDetection::Deny);
    let prefix = &body[..body.len().min(SNIFF_BYTES)];
    detector.feed(prefix, prefix.len() == body.len());
    // Unlike a browser, a crawler has no reason to refuse a UTF-8 guess.
    detector.guess(tld.as_deref().map(str::as_bytes), Utf8Detection::Allow)
}

/// The rightmost DNS label, in the form chardetng requires (lowercase ASCII, no dot).
fn tld_of(url: &url::Url) -> Option<String> {
    let url::Host::Domain(domain) = url.host()? else {
        return None;
    };
    let tld = domain.trim_end_matches('.').rsplit('.').next()?;
    let valid = !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then(|| tld.to_ascii_lowercase())
}

/// The `charset` parameter of a Content-Type value, unquoted.
fn charset_param(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches(|c| c == '"' || c == '\''))
            .filter(|v| !v.is_empty())
    })
}

/// An encoding declared in `<meta>` turned into one usable for a byte stream, as the HTML
/// spec says: a UTF-16 declaration in ASCII-compatible bytes must be wrong, so UTF-8.
fn meta_encoding(label: &[u8]) -> Option<&'static Encoding> {
    let encoding = Encoding::for_label_no_replacement(trim_ascii(label))?;
    if encoding == encoding_rs::UTF_16BE || encoding == encoding_rs::UTF_16LE {
        return Some(UTF_8);
    }
    if encoding == encoding_rs::X_USER_DEFINED {
        return Some(WINDOWS_1252);
    }
    Some(encoding)
}

/// `<?xml version="1.0" encoding="...">` at the very start.
fn prescan_xml_declaration(head: &[u8]) -> Option<&'static Encoding> {
    let rest = head.strip_prefix(b"<?xml")?;
    let end = find(rest, b"?>")?;
    let decl = &rest[..end];
    let at = find_ignore_case(decl, b"encoding")?;
    let mut pos = at + b"encoding".len();
    pos = skip_whitespace(decl, pos);
    if decl.get(pos) != Some(&b'=') {
        return None;
    }
    pos = skip_whitespace(decl, pos + 1);
    let quote = *decl.get(pos).filter(|&&q| q == b'"' || q == b'\'')?;
    let value = &decl[pos + 1..];
    let len = value.iter().position(|&b| b == quote)?;
    meta_encoding(&value[..len])
}

/// A simplified version of the HTML "prescan a byte stream to determine its encoding"
/// algorithm: skips comments and other tags, reads `<meta>` attributes.
fn prescan_meta(head: &[u8]) -> Option<&'static Encoding> {
    let mut i = 0;
    while i < head.len() {
        let rest = &head[i..];
        if rest.starts_with(b"<!--") {
            i += 4 + find(&rest[4..], b"-->")? + 3;
            continue;
        }
        if rest.len() > 5
            && rest[..5].eq_ignore_ascii_case(b"<meta")
            && (rest[5].is_ascii_whitespace() || rest[5] == b'/')
        {
            let (found, next) = meta_tag(head, i + 5);
            if found.is_some() {
                return found;
            }
            i = next;
            continue;
        }
        if rest.starts_with(b"<") && rest.len() > 1 {
            // Any other tag, end tag, `<!DOCTYPE` or `<?...`: skip past its end.
            i += 1 + find(&rest[1..], b">")? + 1;
            continue;
        }
        i += 1;
    }
    None
}

/// Reads one `<meta>` tag's attributes starting at `pos`; returns the declared encoding
/// (if any) and the position after the tag.
fn meta_tag(head: &[u8], mut pos: usize) -> (Option<&'static Encoding>, usize) {
    let mut charset = None;
    let mut content_charset = None;
    let mut is_content_type_pragma = false;
    while let Some((name, value, next)) = attribute(head, pos) {
        pos = next;
        match name.as_slice() {
            b"charset" if charset.is_none() => charset = Some(value),
            b"http-equiv" => {
                is_content_type_pragma = trim_ascii(&value).eq_ignore_ascii_case(b"content-type")
            }
            b"content" if content_charset.is_none() => {
                content_charset = charset_from_content(&value).map(<[u8]>::to_vec)
            }
            _ => {}
        }
    }
    let label = charset.or(content_charset.filter(|_| is_content_type_pragma));
    (label.and_then(|label| meta_encoding(&label)), pos + 1)
}

/// One attribute (lowercased name, raw value) from `pos`, and the position after it;
/// `None` at the end of the tag or of the input.
fn attribute(head: &[u8], mut pos: usize) -> Option<(Vec<u8>, Vec<u8>, usize)> {
    while pos < head.len() && (head[pos].is_ascii_whitespace() || head[pos] == b'/') {
        pos += 1;
    }
    if pos >= head.len() || head[pos] == b'>' {
        return None;
    }
    let start = pos;
    while pos < head.len()
        && !matches!(head[pos], b'=' | b'/' | b'>')
        && !head[pos].is_ascii_whitespace()
    {
        pos += 1;
    }
    let name = head[start..pos].to_ascii_lowercase();
    pos = skip_whitespace(head, pos);
    if head.get(pos) != Some(&b'=') {
        return Some((name, Vec::new(), pos));
    }
    pos = skip_whitespace(head, pos + 1);
    match head.get(pos) {
        Some(&quote) if quote == b'"' || quote == b'\'' => {
            let value_start = pos + 1;
            let len = head[value_start..].iter().position(|&b| b == quote)?;
            Some((
                name,
                head[value_start..value_start + len].to_vec(),
                value_start + len + 1,
            ))
        }
        Some(_) => {
            let value_start = pos;
            while pos < head.len() && head[pos] != b'>' && !head[pos].is_ascii_whitespace() {
                pos += 1;
            }
            Some((name, head[value_start..pos].to_vec(), pos))
        }
        None => None,
    }
}

/// The charset in a `content="text/html; charset=..."` value.
fn charset_from_content(value: &[u8]) -> Option<&[u8]> {
    let at = find_ignore_case(value, b"charset")?;
    let mut pos = skip_whitespace(value, at + b"charset".len());
    if value.get(pos) != Some(&b'=') {
        return None;
    }
    pos = skip_whitespace(value, pos + 1);
    let rest = &value[pos..];
    match rest.first() {
        Some(&quote) if quote == b'"' || quote == b'\'' => {
            let len = rest[1..].iter().position(|&b| b == quote)?;
            Some(&rest[1..1 + len])
        }
        Some(_) => {
            let len = rest
                .iter()
                .position(|&b| b == b';' || b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            Some(&rest[..len])
        }
        None => None,
    }
}

fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_wins_over_everything() {
        let mut body = vec![0xEF, 0xBB, 0xBF];
        body.extend_from_slice("héllo".as_bytes());
        let (text, name) = decode_body(&body, Some("text/html; charset=iso-8859-1"));
        assert_eq!((text.as_str(), name), ("héllo", "UTF-8"));

        let utf16: Vec<u8> = [0xFF, 0xFE, b'h', 0, b'i', 0].to_vec();
        assert_eq!(decode_body(&utf16, None), ("hi".to_string(), "UTF-16LE"));
    }

    #[test]
    fn header_charset_is_used() {
        let body = b"caf\xe9";
        let (text, name) = decode_body(body, Some("text/html; Charset=\"ISO-8859-1\""));
        assert_eq!(text, "café");
        assert_eq!(name, "windows-1252"); // the WHATWG label mapping
    }

    #[test]
    fn header_charset_beats_meta() {
        let body = b"<meta charset=\"shift_jis\">caf\xe9";
        let (_, name) = decode_body(body, Some("text/html;charset=windows-1252"));
        assert_eq!(name, "windows-1252");
    }

    #[test]
    fn meta_charset_is_used() {
        let body = b"<!DOCTYPE html><html><head><meta charset=windows-1251><title>\xcf\xf0\xe8\xe2\xe5\xf2</title>";
        let (text, name) = decode_body(body, Some("text/html"));
        assert_eq!(name, "windows-1251");
        assert!(text.contains("Привет"));
    }

    #[test]
    fn meta_http_equiv_is_used() {
        let body = b"<html><head><!-- <meta charset=utf-8> -->\n<META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html; charset=ISO-8859-2\"></head>\xb1";
        let (text, name) = decode_body(body, None);
        assert_eq!(name, "ISO-8859-2");
        assert!(text.ends_with('ą'));
    }

    #[test]
    fn meta_content_without_pragma_is_ignored() {
        let body = b"<meta content=\"text/html; charset=koi8-r\"><p>plain ascii</p>";
        let (_, name) = decode_body(body, None);
        assert_ne!(name, "KOI8-R");
    }

    #[test]
    fn meta_utf16_means_utf8() {
        let (_, name) = decode_body(b"<meta charset=utf-16><p>x</p>", None);
        assert_eq!(name, "UTF-8");
    }

    #[test]
    fn meta_after_first_kilobyte_is_ignored() {
        let mut body = b"<html><head><title>".to_vec();
        body.extend(std::iter::repeat_n(b'a', 1100));
        body.extend_from_slice(b"</title><meta charset=koi8-r>");
        let (_, name) = decode_body(&body, None);
        assert_ne!(name, "KOI8-R");
    }

    #[test]
    fn shift_jis_meta() {
        // "日本語" in Shift_JIS.
        let body = b"<html><head><meta http-equiv=\"content-type\" content=\"text/html;charset=Shift_JIS\"></head><body>\x93\xfa\x96\x7b\x8c\xea</body>";
        let (text, name) = decode_body(body, None);
        assert_eq!(name, "Shift_JIS");
        assert!(text.contains("日本語"));
    }

    #[test]
    fn windows_1252_is_sniffed() {
        let body = "<p>Les élèves étaient très contents de la journée à la plage, où ils ont mangé des crêpes et bu du café.</p>";
        let (latin1, _, _) = WINDOWS_1252.encode(body);
        let (text, name) = decode_body(&latin1, Some("text/html"));
        assert_eq!(name, "windows-1252");
        assert_eq!(text, body);
    }

    #[test]
    fn utf8_is_sniffed_without_declaration() {
        let body = "<p>naïve café — 日本語</p>";
        assert_eq!(
            decode_body(body.as_bytes(), None),
            (body.to_string(), "UTF-8")
        );
    }

    #[test]
    fn tld_hint_helps_sniffing() {
        let url = url::Url::parse("http://example.jp/").unwrap();
        let (sjis, _, _) =
            encoding_rs::SHIFT_JIS.encode("これは日本語のテキストです。東京都の天気は晴れです。");
        let (_, name) = decode_body_for_url(&sjis, None, &url);
        assert_eq!(name, "Shift_JIS");
        assert_eq!(tld_of(&url::Url::parse("http://127.0.0.1/").unwrap()), None);
    }

    #[test]
    fn xml_declaration_is_used() {
        let body = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r>\xe9</r>";
        let (text, name) = decode_body(body, Some("application/xml"));
        assert_eq!(name, "windows-1252");
        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r>é</r>"
        );
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        let (text, name) = decode_body(b"ok \xff\xfe\xfd end", Some("text/plain; charset=utf-8"));
        assert_eq!(name, "UTF-8");
        assert_eq!(text, "ok \u{FFFD}\u{FFFD}\u{FFFD} end");
    }

    #[test]
    fn unknown_label_falls_back_to_sniffing() {
        let (text, name) = decode_body(b"plain", Some("text/html; charset=no-such-thing"));
        assert_eq!(text, "plain");
        assert!(!name.is_empty());
        // "replacement"-mapped labels would turn the page into one U+FFFD; sniff instead.
        let (text, _) = decode_body(b"plain", Some("text/html; charset=iso-2022-kr"));
        assert_eq!(text, "plain");
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"<",
            b"<meta",
            b"<meta ",
            b"<meta charset=\"",
            b"<!--",
            b"<?xml encoding=",
            b"<meta http-equiv=content-type content='charset=",
        ];
        for input in inputs {
            let _ = decode_body(input, Some("text/html; charset"));
            let _ = decode_body(input, Some(";;=;"));
        }
    }

    #[test]
    fn textual_types() {
        assert!(is_textual(None));
        assert!(is_textual(Some("text/html; charset=utf-8")));
        assert!(is_textual(Some("Application/XHTML+XML")));
        assert!(is_textual(Some("text/plain")));
        assert!(is_textual(Some("application/xml")));
        assert!(is_textual(Some("text/xml;charset=utf-8")));
        assert!(!is_textual(Some("image/png")));
        assert!(!is_textual(Some("application/pdf")));
        assert!(!is_textual(Some("application/json")));
    }

    #[test]
    fn a_utf8_body_is_published_from_the_buffer_it_came_in() {
        let url = url::Url::parse("https://example.com/").unwrap();
        let body = Bytes::from("<meta charset=utf-8><p>héllo</p>".as_bytes().to_vec());
        let (text, name) = decode_bytes_for_url(&body, Some("text/html"), &url);
        assert_eq!((&text[..], name), (&body[..], "UTF-8"));
        assert_eq!(text.as_ptr(), body.as_ptr(), "no copy");
        let bom = Bytes::from(b"\xEF\xBB\xBFhi".to_vec());
        let (text, _) = decode_bytes_for_url(&bom, None, &url);
        assert_eq!(&text[..], b"hi", "the BOM is left out");
        let latin1 = Bytes::from(b"caf\xe9".to_vec());
        let (text, name) =
            decode_bytes_for_url(&latin1, Some("text/html; charset=iso-8859-1"), &url);
        assert_eq!((&text[..], name), ("café".as_bytes(), "windows-1252"));
    }
}
