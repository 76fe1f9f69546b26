//! Character references (`&amp;`, `&#233;`, `&eacute`) decoded the way html5ever's
//! tokenizer decodes them, for the streaming path, which sees text and attribute
//! values as written. The named table is html5ever's own (`NAMED_ENTITIES`), and the
//! rules follow the HTML tokenizer: the longest name in the table wins, a name without
//! its `;` still counts in text, and in an attribute value it counts only when no `=`
//! or alphanumeric follows (so `?a=1&copy=2` stays as written). The differential tests
//! in `stream.rs` hold this against html5ever itself.

use std::borrow::Cow;

use html5ever::data::{C1_REPLACEMENTS, NAMED_ENTITIES};

/// Where the reference stands: attribute values keep some references that text decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Text,
    Attribute,
}

/// The longest entity name in the table: `&CounterClockwiseContourIntegral;`.
const LONGEST_NAME: usize = 32;

/// `raw` with its character references decoded.
pub(crate) fn decode(raw: &str, context: Context) -> Cow<'_, str> {
    let Some(first) = raw.find('&') else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut rest = &raw[first..];
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (decoded, used) = match after.as_bytes().first() {
            Some(b'#') => numeric(after),
            Some(b) if b.is_ascii_alphanumeric() => named(after, context),
            _ => (None, 0),
        };
        match decoded {
            Some(chars) => {
                out.extend(chars.into_iter().flatten());
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `#123;`, `#x1F;` (the `;` optional): the character(s) and the bytes used, or `None`
/// when no digit follows (the `&` stays as written).
fn numeric(after: &str) -> (Option<[Option<char>; 2]>, usize) {
    let b = after.as_bytes();
    let (radix, start) = match b.get(1) {
        Some(b'x' | b'X') => (16, 2),
        _ => (10, 1),
    };
    let digits = b[start..]
        .iter()
        .take_while(|c| (**c as char).is_digit(radix))
        .count();
    if digits == 0 {
        return (None, 0);
    }
    let mut value: u32 = 0;
    for &d in &b[start..start + digits] {
        let d = (d as char).to_digit(radix).unwrap_or(0);
        // Saturate: any value past 0x10FFFF becomes U+FFFD all the same.
        value = value.saturating_mul(radix).saturating_add(d).min(0x11_0000);
    }
    let mut used = start + digits;
    if b.get(used) == Some(&b';') {
        used += 1;
    }
    let c = match value {
        0 | 0xD800..=0xDFFF | 0x11_0000.. => '\u{FFFD}',
        0x80..=0x9F => C1_REPLACEMENTS[(value - 0x80) as usize]
            .unwrap_or_else(|| char::from_u32(value).unwrap_or('\u{FFFD}')),
        _ => char::from_u32(value).unwrap_or('\u{FFFD}'),
    };
    (Some([Some(c), None]), used)
}

/// A named reference at the start of `after` (just past the `&`).
fn named(after: &str, context: Context) -> (Option<[Option<char>; 2]>, usize) {
    let b = after.as_bytes();
    let run = b
        .iter()
        .take(LONGEST_NAME)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let with_semicolon = usize::from(b.get(run) == Some(&b';'));
    // The longest key of the table that `after` starts with; prefixes of names are in
    // the table too, with no characters (0, 0).
    let found = (1..=run + with_semicolon).rev().find_map(|len| {
        NAMED_ENTITIES
            .get(&after[..len])
            .filter(|(first, _)| *first != 0)
            .map(|&(first, second)| (len, first, second))
    });
    let Some((len, first, second)) = found else {
        return (None, 0);
    };
    let terminated = b[len - 1] == b';';
    if context == Context::Attribute && !terminated {
        if let Some(next) = b.get(len) {
            if *next == b'=' || next.is_ascii_alphanumeric() {
                return (None, 0);
            }
        }
    }
    let chars = [
        char::from_u32(first),
        (second != 0).then(|| char::from_u32(second)).flatten(),
    ];
    (Some(chars), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_decode_as_the_html_tokenizer_does() {
        let t = |s| decode(s, Context::Text).into_owned();
        let a = |s| decode(s, Context::Attribute).into_owned();
        assert_eq!(t("Fish &amp; Chips"), "Fish & Chips");
        assert_eq!(t("Fish & Chips"), "Fish & Chips");
        assert_eq!(t("&eacute;t&eacute"), "été");
        assert_eq!(t("&#233;&#xE9;&#XE9&#0;&#x80;"), "ééé\u{FFFD}€");
        assert_eq!(t("&#;&#x;&nosuch;"), "&#;&#x;&nosuch;");
        assert_eq!(t("&notit;"), "¬it;", "the longest name in the table wins");
        assert_eq!(t("&NotEqualTilde;"), "\u{2242}\u{338}");
        assert_eq!(a("/p?a=1&copy=2&amp;b"), "/p?a=1&copy=2&b");
        assert_eq!(a("/p?x&copy;"), "/p?x©");
        assert_eq!(a("&copy "), "© ");
    }
}
