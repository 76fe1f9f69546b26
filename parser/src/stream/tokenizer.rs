//! A small HTML tokenizer for the fast path: the states of the WHATWG tokenizer that
//! ordinary pages use, done with `memchr`-style scans over bytes instead of one
//! character at a time. Where a page needs a state it does not implement (script
//! escapes, CDATA, EOF inside a tag), it says so ([`Token::Unsure`]) and the caller
//! falls back to html5ever.

use std::borrow::Cow;

/// What the tokenizer hands out, borrowing from the page.
#[derive(Debug, PartialEq)]
pub(crate) enum Token<'a> {
    /// Text as written (character references not decoded), and whether it is raw
    /// (script or style content: references are not decoded there).
    Text(&'a str, bool),
    Start(Tag<'a>),
    /// An end tag's name, lowercased.
    End(Cow<'a, str>),
    /// A comment or bogus comment: a node that separates text nodes.
    Other,
    /// A doctype.
    Doctype,
    /// A construct this tokenizer does not handle exactly.
    Unsure,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Tag<'a> {
    /// Lowercased.
    pub name: Cow<'a, str>,
    /// Names lowercased, values as written (references not decoded).
    pub attrs: Vec<(Cow<'a, str>, &'a str)>,
    pub self_closing: bool,
}

pub(crate) struct Tokenizer<'a> {
    html: &'a str,
    pos: usize,
    /// Set after a start tag whose content is raw text or RCDATA: (its name, raw?).
    raw_until: Option<(String, bool)>,
    /// Set once `Unsure` has been returned: nothing more follows.
    done: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c')
}

impl<'a> Tokenizer<'a> {
    pub(crate) fn new(html: &'a str) -> Self {
        let html = html.strip_prefix('\u{feff}').unwrap_or(html);
        Tokenizer {
            html,
            pos: 0,
            raw_until: None,
            done: false,
        }
    }

    fn unsure(&mut self) -> Option<Token<'a>> {
        self.done = true;
        Some(Token::Unsure)
    }

    pub(crate) fn next_token(&mut self) -> Option<Token<'a>> {
        if self.done {
            return None;
        }
        let bytes = self.html.as_bytes();
        if let Some((name, decoded)) = self.raw_until.take() {
            return self.raw_text(&name, decoded);
        }
        if self.pos >= bytes.len() {
            return None;
        }
        if bytes[self.pos] != b'<' {
            let end = memchr(b'<', &bytes[self.pos..]).map_or(bytes.len(), |i| self.pos + i);
            let text = &self.html[self.pos..end];
            self.pos = end;
            return Some(Token::Text(text, false));
        }
        match bytes.get(self.pos + 1) {
            Some(b) if b.is_ascii_alphabetic() => self.tag(false),
            Some(b'/') => match bytes.get(self.pos + 2) {
                Some(b) if b.is_ascii_alphabetic() => self.tag(true),
                // `</>` is dropped; `</` at the end, `</ x>` and friends are rare.
                _ => self.unsure(),
            },
            Some(b'!') => self.declaration(),
            Some(b'?') => self.bogus_comment(self.pos + 1),
            None => self.unsure(),
            // A `<` that starts no tag is text; the text runs to the next `<`.
            Some(_) => {
                let end =
                    memchr(b'<', &bytes[self.pos + 1..]).map_or(bytes.len(), |i| self.pos + 1 + i);
                let text = &self.html[self.pos..end];
                self.pos = end;
                Some(Token::Text(text, false))
            }
        }
    }

    /// `<!...`: comments and doctypes; anything else (CDATA outside foreign content,
    /// `<!x>`) is a bogus comment.
    fn declaration(&mut self) -> Option<Token<'a>> {
        let rest = &self.html.as_bytes()[self.pos + 2..];
        if rest.starts_with(b"--") {
            let body = self.pos + 4;
            let bytes = &self.html.as_bytes()[body..];
            // `<!-->`, `<!--->`: abrupt ends; `--!>` ends a comment too. Keep to the
            // plain form: the first `-->`, with no `--!` before it.
            if bytes.starts_with(b">") || bytes.starts_with(b"->") {
                return self.unsure();
            }
            let Some(end) = find(bytes, b"-->") else {
                return self.unsure();
            };
            if find(&bytes[..end + 2], b"--!").is_some() {
                return self.unsure();
            }
            self.pos = body + end + 3;
            return Some(Token::Other);
        }
        if rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"doctype") {
            return self.bogus_comment(self.pos + 2).map(|t| match t {
                Token::Other => Token::Doctype,
                t => t,
            });
        }
        if rest.starts_with(b"[CDATA[") {
            return self.unsure();
        }
        self.bogus_comment(self.pos + 2)
    }

    /// Up to and including the next `>` (an unterminated one is unsure).
    fn bogus_comment(&mut self, from: usize) -> Option<Token<'a>> {
        match memchr(b'>', &self.html.as_bytes()[from..]) {
            Some(i) => {
                self.pos = from + i + 1;
                Some(Token::Other)
            }
            None => self.unsure(),
        }
    }

    /// A start or end tag at `self.pos`.
    fn tag(&mut self, end: bool) -> Option<Token<'a>> {
        let bytes = self.html.as_bytes();
        let mut i = self.pos + if end { 2 } else { 1 };
        let name_start = i;
        while i < bytes.len() && !is_space(bytes[i]) && bytes[i] != b'/' && bytes[i] != b'>' {
            i += 1;
        }
        let name = lowercase(&self.html[name_start..i]);
        let mut attrs = Vec::new();
        let mut self_closing = false;
        loop {
            while i < bytes.len() && is_space(bytes[i]) {
                i += 1;
            }
            match bytes.get(i) {
                None => return self.unsure(),
                Some(b'>') => {
                    i += 1;
                    break;
                }
                Some(b'/') => {
                    if bytes.get(i + 1) == Some(&b'>') {
                        self_closing = true;
                        i += 2;
                        break;
                    }
                    i += 1;
                    continue;
                }
                Some(_) => {}
            }
            // An attribute name: its first character may even be `=`.
            let start = i;
            i += 1;
            while i < bytes.len() && !is_space(bytes[i]) && !matches!(bytes[i], b'/' | b'>' | b'=')
            {
                i += 1;
            }
            let attr = lowercase(&self.html[start..i]);
            while i < bytes.len() && is_space(bytes[i]) {
                i += 1;
            }
            if bytes.get(i) != Some(&b'=') {
                attrs.push((attr, ""));
                continue;
            }
            i += 1;
            while i < bytes.len() && is_space(bytes[i]) {
                i += 1;
            }
            let value = match bytes.get(i) {
                None => return self.unsure(),
                Some(q @ (b'"' | b'\'')) => {
                    let Some(len) = memchr(*q, &bytes[i + 1..]) else {
                        return self.unsure();
                    };
                    let value = &self.html[i + 1..i + 1 + len];
                    i += len + 2;
                    value
                }
                // `<a href=>`: an empty value, and the tag ends.
                Some(b'>') => "",
                Some(_) => {
                    let start = i;
                    while i < bytes.len() && !is_space(bytes[i]) && bytes[i] != b'>' {
                        i += 1;
                    }
                    &self.html[start..i]
                }
            };
            attrs.push((attr, value));
        }
        self.pos = i;
        if end {
            return Some(Token::End(name));
        }
        match name.as_ref() {
            "script" | "style" => self.raw_until = Some((name.to_string(), false)),
            "title" | "textarea" => self.raw_until = Some((name.to_string(), true)),
            _ => {}
        }
        Some(Token::Start(Tag {
            name,
            attrs,
            self_closing,
        }))
    }

    /// The content of a script, style, title or textarea, up to its end tag (which is
    /// returned next). `decoded`: RCDATA (title, textarea), where references count.
    fn raw_text(&mut self, name: &str, decoded: bool) -> Option<Token<'a>> {
        let bytes = self.html.as_bytes();
        let from = self.pos;
        let mut at = from;
        let end = loop {
            let Some(i) = find(&bytes[at..], b"</") else {
                return self.unsure();
            };
            let start = at + i;
            let tag = start + 2;
            let after = tag + name.len();
            if bytes.len() >= after && bytes[tag..after].eq_ignore_ascii_case(name.as_bytes()) {
                match bytes.get(after) {
                    Some(b'>') => break start,
                    // `</script >`, `</script/>`: rare, and tokenized with attributes.
                    Some(b) if is_space(*b) || *b == b'/' => return self.unsure(),
                    _ => {}
                }
            }
            at = tag;
        };
        let text = &self.html[from..end];
        // Script escapes (`<!--` … `<script>`) change where a script ends.
        if name == "script" && text.contains("<!--") {
            return self.unsure();
        }
        self.pos = end;
        Some(Token::Text(text, !decoded))
    }
}

/// `s` in ASCII lowercase, borrowed when it already is.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
