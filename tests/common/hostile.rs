//! Hostile pages of the test site, all under `/hostile/`, which nothing in the normal
//! catalogue links to: a test reaches them only by seeding [`seed_paths`] explicitly.
//!
//! Pages under `/hostile/item/` match the hostile item rule of [`ITEM_RULE`]
//! (`title` = text of the `<h1>`); [`expected_items`] lists what a correct crawl
//! stores from them. Everything else must yield no item: a stalled page that somehow
//! got through, say, would show up as an unexpected item.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::json;

use super::catalogue::ExpectedItem;

/// The item type of hostile pages.
pub const ITEM_TYPE: &str = "hostile";

/// An extraction rule for the pages under `/hostile/item/`, appended to a spider file.
pub const ITEM_RULE: &str = r#"
[[items]]
type = "hostile"
match = '/hostile/item/'
[items.fields]
title = "h1"
"#;

/// 20 MB of HTML, its `<h1>` and a link at the start, another link at the very end.
pub const HUGE: &str = "/hostile/item/huge.html";
const HUGE_BYTES: usize = 20 * 1024 * 1024;
/// Linked from the first kilobyte of [`HUGE`].
pub const NEAR_HUGE: &str = "/hostile/item/near-huge.html";
/// Linked from the last kilobyte of [`HUGE`]: past any sane body cap.
pub const PAST_THE_CAP: &str = "/hostile/item/past-the-cap.html";
/// `Content-Encoding: gzip`, ~325 KB on the wire, ~51 MB of zeros inflated.
pub const BOMB: &str = "/hostile/bomb.html";
/// Sends its first bytes, then nothing for [`SLOW_STALL`], then the rest (an item).
pub const SLOW: &str = "/hostile/item/slow.html";
/// How long [`SLOW`] goes silent mid-body.
pub const SLOW_STALL: Duration = Duration::from_secs(5);
/// `/hostile/loop/a` -> `/hostile/loop/b` -> `/hostile/loop/a` ...
pub const LOOP_A: &str = "/hostile/loop/a";
pub const LOOP_B: &str = "/hostile/loop/b";
/// `/hostile/trap/N` links to `/hostile/trap/N+1`, forever.
pub const TRAP_PREFIX: &str = "/hostile/trap/";
/// windows-1252 bytes, declared by `<meta charset>` only (no charset in Content-Type).
pub const CP1252: &str = "/hostile/item/cp1252.html";
pub const CP1252_TITLE: &str = "Café crème — “quoted” ½ price €";
/// Shift_JIS bytes, declared by `<meta http-equiv="Content-Type">` only.
pub const SJIS: &str = "/hostile/item/sjis.html";
/// `表` is 0x95 0x5C in Shift_JIS: its second byte is ASCII `\`.
pub const SJIS_TITLE: &str = "表示テスト：東京の古書店";
/// Links of every broken kind, a 100 KB href, a broken `<base>`, and one good link.
pub const LINKS: &str = "/hostile/links.html";
/// The good link of [`LINKS`].
pub const AFTER_GARBAGE: &str = "/hostile/item/after-garbage.html";
/// Where the 100 KB href of [`LINKS`] points (must never be requested).
pub const LONG_PREFIX: &str = "/hostile/long/";
/// Raw NUL bytes in `<title>` and `<h1>`.
pub const NUL: &str = "/hostile/item/nul.html";
/// windows-1252, every body byte 0x80 (`€`: three bytes in UTF-8), [`EURO_BYTES`] long.
pub const EURO: &str = "/hostile/item/euro.html";
pub const EURO_BYTES: usize = 3 * 1024 * 1024;

/// The hostile pages a test seeds (besides the normal start URL) for a full tour;
/// [`EURO`] is left out (it needs a body cap above a third of the NATS payload limit).
pub fn seed_paths() -> Vec<&'static str> {
    vec![
        HUGE,
        BOMB,
        SLOW,
        LOOP_A,
        "/hostile/trap/0",
        CP1252,
        SJIS,
        LINKS,
        NUL,
    ]
}

/// The items a correct crawl of [`seed_paths`] stores, with the site at `base`.
pub fn expected_items(base: &str) -> Vec<ExpectedItem> {
    [
        (HUGE, "Huge page"),
        (NEAR_HUGE, "Reached from the huge page"),
        (CP1252, CP1252_TITLE),
        (SJIS, SJIS_TITLE),
        (AFTER_GARBAGE, "Survived the garbage"),
        (NUL, "Null byte title"),
    ]
    .into_iter()
    .map(|(path, title)| item(base, path, title))
    .collect()
}

/// The item of the page at `path`, with this title.
pub fn item(base: &str, path: &str, title: &str) -> ExpectedItem {
    ExpectedItem {
        item_type: ITEM_TYPE.to_string(),
        url: format!("{base}{path}"),
        data: json!({ "title": title }),
    }
}

/// Builds the pages that take a while to build (the 20 MB page, the bomb's CRC in a
/// debug build), so that their first request is answered at once: a fetcher with a
/// short read timeout would otherwise time out on the site's own slowness.
pub async fn warm_up() {
    tokio::task::spawn_blocking(|| {
        huge();
        gzip_bomb();
    })
    .await
    .expect("hostile pages built");
}

/// The answer for a `/hostile/` path (percent-decoded), or None for other paths.
pub async fn reply(path: &str) -> Option<Response> {
    if !path.starts_with("/hostile/") {
        return None;
    }
    let response = match path {
        NEAR_HUGE => html(simple("Reached from the huge page")),
        PAST_THE_CAP => html(simple("Past the cap")),
        // Built once, off the async workers (its CRC takes a while in a debug build).
        BOMB => tokio::task::spawn_blocking(gzip_bomb)
            .await
            .expect("bomb built"),
        HUGE => tokio::task::spawn_blocking(|| html(huge()))
            .await
            .expect("huge page built"),
        SLOW => slow(),
        LOOP_A => redirect(LOOP_B),
        LOOP_B => redirect(LOOP_A),
        CP1252 => html(cp1252()),
        SJIS => html(sjis()),
        LINKS => html(links()),
        AFTER_GARBAGE => html(simple("Survived the garbage")),
        NUL => html(Bytes::from_static(
            b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Nul\0title</title></head>\n\
              <body><h1>Null\0 byte\0 title</h1></body></html>\n",
        )),
        EURO => html(euro()),
        _ => match path.strip_prefix(TRAP_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => html(trap(n)),
            None => not_found(),
        },
    };
    Some(response)
}

fn simple(title: &str) -> Bytes {
    Bytes::from(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1></body></html>\n"
    ))
}

/// `text/html` with no charset parameter: the page's own declaration decides.
fn html(body: Bytes) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from(body))
        .expect("valid response")
}

fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, to)
        .body(Body::empty())
        .expect("valid response")
}

fn not_found() -> Response {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from("<h1>Not found</h1>"))
        .expect("valid response")
}

fn huge() -> Bytes {
    static HUGE_PAGE: OnceLock<Bytes> = OnceLock::new();
    HUGE_PAGE
        .get_or_init(|| {
            let head = format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Huge</title></head>\n\
                 <body><h1>Huge page</h1>\n<p><a href=\"{NEAR_HUGE}\">near</a></p>\n"
            );
            let tail = format!("<p><a href=\"{PAST_THE_CAP}\">past</a></p>\n</body></html>\n");
            let filler = "<p>All work and no play makes a crawler a dull crawler.</p>\n";
            let mut page = String::with_capacity(HUGE_BYTES + filler.len());
            page.push_str(&head);
            while page.len() + tail.len() < HUGE_BYTES {
                page.push_str(filler);
            }
            page.push_str(&tail);
            Bytes::from(page)
        })
        .clone()
}

fn gzip_bomb() -> Response {
    static BOMB_BODY: OnceLock<Bytes> = OnceLock::new();
    let body = BOMB_BODY
        .get_or_init(|| Bytes::from(gzip_zeros(200_000)))
        .clone();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(body))
        .expect("valid response")
}

fn slow() -> Response {
    let head = Bytes::from_static(
        b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Slow</title></head><body><h1>Sl",
    );
    let rest = Bytes::from_static(b"ow page</h1></body></html>\n");
    let chunks = futures::stream::iter([0u8, 1]).then(move |i| {
        let (head, rest) = (head.clone(), rest.clone());
        async move {
            if i == 0 {
                Ok::<Bytes, std::io::Error>(head)
            } else {
                tokio::time::sleep(SLOW_STALL).await;
                Ok(rest)
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from_stream(chunks))
        .expect("valid response")
}

fn cp1252() -> Bytes {
    let mut page = b"<!DOCTYPE html><html><head><meta charset=\"windows-1252\"><title>cp1252</title></head>\n<body><h1>".to_vec();
    page.extend_from_slice(b"Caf\xe9 cr\xe8me \x97 \x93quoted\x94 \xbd price \x80");
    page.extend_from_slice(b"</h1></body></html>\n");
    Bytes::from(page)
}

fn sjis() -> Bytes {
    let mut page = b"<!DOCTYPE html><html><head>\
        <meta http-equiv=\"Content-Type\" content=\"text/html; charset=Shift_JIS\">\
        <title>sjis</title></head>\n<body><h1>"
        .to_vec();
    // 表示テスト：東京の古書店
    page.extend_from_slice(&[
        0x95, 0x5c, 0x8e, 0xa6, 0x83, 0x65, 0x83, 0x58, 0x83, 0x67, 0x81, 0x46, 0x93, 0x8c, 0x8b,
        0x9e, 0x82, 0xcc, 0x8c, 0xc3, 0x8f, 0x91, 0x93, 0x58,
    ]);
    page.extend_from_slice(b"</h1></body></html>\n");
    Bytes::from(page)
}

fn links() -> Bytes {
    let mut b = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <base href=\"http://%zz/\"><title>Garbage links</title></head>\n<body>\n",
    );
    let long = format!("{LONG_PREFIX}{}", "a".repeat(100 * 1024));
    let hrefs = [
        long.as_str(),
        "http://[::1",
        "http://[::1]:99999/",
        "http://%zz/",
        "http://127.0.0.1:99999/",
        "http://",
        "//",
        "http:///hostile/x",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(2)",
        "data:text/html,<h1>x</h1>",
        "mailto:someone@example.com",
        "ftp://127.0.0.1/file",
        "file:///etc/passwd",
        "",
        "   ",
        "#",
        "?",
        "http://user:pass@/",
        "\u{0}",
        "%",
        "%%%",
        "/hostile/%zz%/x",
        "http://127.0.0.1:0/",
        "http://256.256.256.256/",
        "http://exa mple.com/",
        "\\\\server\\share",
    ];
    for href in hrefs {
        let _ = writeln!(b, "<a href=\"{}\">x</a>", escape_attr(href));
    }
    // Relative: resolved against the page, since the <base> above is unusable.
    b.push_str("<p><a href=\"item/after-garbage.html\">the one good link</a></p>\n");
    b.push_str("</body></html>\n");
    Bytes::from(b)
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

fn trap(n: u64) -> Bytes {
    Bytes::from(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Trap {n}</title></head>\n\
         <body><p>Page {n} of infinitely many.</p>\n\
         <a href=\"{next}\">next</a> <a href=\"0\">first</a> <a href=\"{n}\">self</a>\n\
         </body></html>\n",
        next = n + 1
    ))
}

fn euro() -> Bytes {
    let mut page = b"<!DOCTYPE html><html><head><meta charset=\"windows-1252\"><title>Euro</title></head>\n<body><h1>Euro prices</h1>\n<p>".to_vec();
    page.resize(page.len() + EURO_BYTES, 0x80);
    page.extend_from_slice(b"</p></body></html>\n");
    Bytes::from(page)
}

/// A gzip stream of `1 + 258 * runs` zero bytes: one literal, then back-references of
/// length 258 at distance 1, in one fixed-Huffman deflate block (~1600:1).
fn gzip_zeros(runs: usize) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.put(0b011, 3); // BFINAL = 1, BTYPE = 01 (fixed Huffman)
    bits.code(0x30, 8); // literal 0
    for _ in 0..runs {
        bits.code(0xc5, 8); // length code 285: 258 bytes
        bits.code(0, 5); // distance code 0: distance 1
    }
    bits.code(0, 7); // end of block
    let len = 1 + 258 * runs;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(bits.out);
    out.extend(
        bits.acc
            .to_le_bytes()
            .into_iter()
            .take(bits.len.div_ceil(8) as usize),
    );
    // Trailer: CRC-32 of the zeros (table-driven, reflected), then their length.
    let table: Vec<u32> = (0..256u32)
        .map(|n| (0..8).fold(n, |c, _| (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())))
        .collect();
    let crc = (0..len).fold(!0u32, |crc, _| table[(crc & 0xff) as usize] ^ (crc >> 8));
    out.extend((!crc).to_le_bytes());
    out.extend((len as u32).to_le_bytes());
    out
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    len: u32,
}

impl BitWriter {
    /// Appends `count` bits of `value`, least significant first (deflate's bit order).
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += count;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    /// Appends a Huffman code, which deflate stores most significant bit first.
    fn code(&mut self, code: u32, count: u32) {
        self.put(code.reverse_bits() >> (32 - count), count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_pages_are_what_they_claim() {
        assert!(huge().len() >= HUGE_BYTES);
        let page = String::from_utf8(huge().to_vec()).unwrap();
        assert!(page[..1024].contains(NEAR_HUGE));
        assert!(page[page.len() - 1024..].contains(PAST_THE_CAP));
        // Small enough to check quickly: the format, not the size.
        let small = gzip_zeros(2);
        assert_eq!(&small[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(&small[small.len() - 4..], &517u32.to_le_bytes());
        assert!(links().len() > 100 * 1024);
    }
}
