//! The selectors the fast path matches itself: type, `*`, `#id`, `.class` and
//! attribute tests (`[a]`, `=`, `~=`, `|=`, `^=`, `$=`, `*=`), joined by descendant
//! and child combinators, in comma lists. Anything else (pseudo-classes, sibling
//! combinators, escapes, namespaces, case flags) does not parse, and the spider's pages
//! go through the DOM. Matching follows the `selectors` crate as scraper uses it: no
//! quirks mode (ids and classes case-sensitive), type names ASCII case-insensitive.

use std::borrow::Cow;

/// One open element, as much of it as selectors look at (borrowing from the page and
/// the plan where it can).
#[derive(Debug, Default)]
pub(crate) struct ElementInfo<'a> {
    pub name: Cow<'a, str>,
    pub id: Option<Cow<'a, str>>,
    /// The `class` attribute, decoded.
    pub class: Option<Cow<'a, str>>,
    /// The attributes some selector tests (`id` and `class` too, if tested), values
    /// decoded.
    pub attrs: Vec<(&'a str, Cow<'a, str>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    Equals,
    Includes,
    DashMatch,
    Prefix,
    Suffix,
    Substring,
}

#[derive(Debug, Clone, PartialEq)]
struct AttrTest {
    name: String,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Compound {
    /// `None` for `*` or no type.
    name: Option<String>,
    ids: Vec<String>,
    classes: Vec<String>,
    attrs: Vec<AttrTest>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Combinator {
    Descendant,
    Child,
}

/// A complex selector, rightmost compound first, each with the combinator to its left.
#[derive(Debug, Clone, PartialEq)]
struct Complex(Vec<(Compound, Option<Combinator>)>);

/// A selector list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SelectorList(Vec<Complex>);

/// Attributes whose values HTML selectors compare ASCII case-insensitively (the
/// `selectors` crate does): tests on them are left to the DOM.
const CASELESS_ATTRIBUTES: &[&str] = &[
    "accept",
    "accept-charset",
    "align",
    "alink",
    "axis",
    "bgcolor",
    "charset",
    "checked",
    "clear",
    "codetype",
    "color",
    "compact",
    "declare",
    "defer",
    "dir",
    "direction",
    "disabled",
    "enctype",
    "face",
    "frame",
    "hreflang",
    "http-equiv",
    "lang",
    "language",
    "link",
    "media",
    "method",
    "multiple",
    "nohref",
    "noresize",
    "noshade",
    "nowrap",
    "readonly",
    "rel",
    "rev",
    "rules",
    "scope",
    "scrolling",
    "selected",
    "shape",
    "target",
    "text",
    "type",
    "valign",
    "valuetype",
    "vlink",
];

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii()
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl Parser<'_> {
    fn ident(&mut self) -> Option<String> {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if !ident_char(c) {
                break;
            }
            out.push(c);
            self.chars.next();
        }
        // Identifiers starting with a digit, or `-` and a digit, are not identifiers.
        let mut lead = out.chars();
        let bad_start = match lead.next() {
            Some(c) if c.is_ascii_digit() => true,
            Some('-') => matches!(lead.next(), Some(c) if c.is_ascii_digit()) || out == "-",
            None => true,
            _ => false,
        };
        (!bad_start).then_some(out)
    }

    fn skip_spaces(&mut self) -> bool {
        let mut any = false;
        while matches!(self.chars.peek(), Some(' ' | '\t' | '\n' | '\r' | '\x0c')) {
            self.chars.next();
            any = true;
        }
        any
    }

    fn attr(&mut self) -> Option<AttrTest> {
        self.skip_spaces();
        let name = self.ident()?.to_ascii_lowercase();
        self.skip_spaces();
        let op = match self.chars.next()? {
            ']' => {
                return Some(AttrTest {
                    name,
                    op: Op::Exists,
                    value: String::new(),
                })
            }
            '=' => Op::Equals,
            c => {
                if self.chars.next()? != '=' {
                    return None;
                }
                match c {
                    '~' => Op::Includes,
                    '|' => Op::DashMatch,
                    '^' => Op::Prefix,
                    '$' => Op::Suffix,
                    '*' => Op::Substring,
                    _ => return None,
                }
            }
        };
        if CASELESS_ATTRIBUTES.contains(&name.as_str()) {
            return None;
        }
        self.skip_spaces();
        let value = match self.chars.peek()? {
            q @ ('"' | '\'') => {
                let q = *q;
                self.chars.next();
                let mut v = String::new();
                loop {
                    match self.chars.next()? {
                        c if c == q => break,
                        '\\' | '\n' => return None,
                        c => v.push(c),
                    }
                }
                v
            }
            _ => self.ident()?,
        };
        self.skip_spaces();
        (self.chars.next()? == ']').then_some(AttrTest { name, op, value })
    }

    fn compound(&mut self) -> Option<Compound> {
        let mut c = Compound::default();
        let mut any = false;
        match self.chars.peek() {
            Some('*') => {
                self.chars.next();
                any = true;
            }
            Some(&ch) if ident_char(ch) => {
                c.name = Some(self.ident()?.to_ascii_lowercase());
                any = true;
            }
            _ => {}
        }
        loop {
            match self.chars.peek() {
                Some('#') => {
                    self.chars.next();
                    c.ids.push(self.ident()?);
                }
                Some('.') => {
                    self.chars.next();
                    c.classes.push(self.ident()?);
                }
                Some('[') => {
                    self.chars.next();
                    c.attrs.push(self.attr()?);
                }
                _ => break,
            }
            any = true;
        }
        any.then_some(c)
    }

    fn complex(&mut self) -> Option<Complex> {
        let mut parts = vec![(self.compound()?, None)];
        loop {
            let spaced = self.skip_spaces();
            let combinator = match self.chars.peek() {
                None | Some(',') => break,
                Some('>') => {
                    self.chars.next();
                    self.skip_spaces();
                    Combinator::Child
                }
                Some(_) if spaced => Combinator::Descendant,
                Some(_) => return None,
            };
            parts.push((self.compound()?, Some(combinator)));
        }
        // Rightmost first, each with the combinator to its left (to the next one).
        parts.reverse();
        let out = parts;
        Some(Complex(out))
    }
}

impl SelectorList {
    /// Parses `css`, or `None` if it uses anything beyond the supported subset.
    pub(crate) fn parse(css: &str) -> Option<SelectorList> {
        let mut p = Parser {
            chars: css.chars().peekable(),
        };
        let mut list = Vec::new();
        loop {
            p.skip_spaces();
            list.push(p.complex()?);
            match p.chars.next() {
                None => break,
                Some(',') => continue,
                Some(_) => return None,
            }
        }
        Some(SelectorList(list))
    }

    /// Whether any selector names `html`, `head` or `body`: html5ever adds those
    /// elements where a page leaves them out, so matches on them are left to the DOM.
    pub(crate) fn names_document_elements(&self) -> bool {
        self.0
            .iter()
            .flat_map(|c| &c.0)
            .any(|(compound, _)| matches!(compound.name.as_deref(), Some("html" | "head" | "body")))
    }

    /// Attribute names the selectors test (besides `id` and `class`).
    pub(crate) fn attr_names(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|c| &c.0)
            .flat_map(|(compound, _)| &compound.attrs)
            .map(|a| a.name.as_str())
    }

    /// Whether the element on top of `stack` matches (its ancestors below it).
    pub(crate) fn matches(&self, stack: &[ElementInfo<'_>]) -> bool {
        self.0.iter().any(|c| matches_complex(&c.0, stack))
    }
}

fn matches_complex(parts: &[(Compound, Option<Combinator>)], stack: &[ElementInfo]) -> bool {
    let Some(((compound, link), rest)) = parts.split_first() else {
        return true;
    };
    let Some((el, ancestors)) = stack.split_last() else {
        return false;
    };
    if !matches_compound(compound, el) {
        return false;
    }
    match link {
        None => true,
        Some(Combinator::Child) => matches_complex(rest, ancestors),
        Some(Combinator::Descendant) => (1..=ancestors.len())
            .rev()
            .any(|n| matches_complex(rest, &ancestors[..n])),
    }
}

fn matches_compound(c: &Compound, el: &ElementInfo) -> bool {
    c.name.as_ref().is_none_or(|n| *n == el.name)
        && c.ids.iter().all(|id| el.id.as_deref() == Some(id.as_str()))
        && c.classes.iter().all(|class| {
            el.class
                .as_deref()
                .is_some_and(|list| list.split(HTML_SPACE).any(|c| c == class))
        })
        && c.attrs.iter().all(|t| matches_attr(t, el))
}

/// HTML's whitespace, which separates class names.
const HTML_SPACE: [char; 5] = [' ', '\t', '\n', '\r', '\x0c'];

fn matches_attr(t: &AttrTest, el: &ElementInfo) -> bool {
    let value = el
        .attrs
        .iter()
        .find(|(n, _)| *n == t.name)
        .map(|(_, v)| v.as_ref());
    let Some(v) = value else {
        return false;
    };
    let want = t.value.as_str();
    match t.op {
        Op::Exists => true,
        Op::Equals => v == want,
        Op::Includes => {
            !want.is_empty() && !want.contains(HTML_SPACE) && v.split(HTML_SPACE).any(|w| w == want)
        }
        Op::DashMatch => v == want || (v.starts_with(want) && v[want.len()..].starts_with('-')),
        Op::Prefix => !want.is_empty() && v.starts_with(want),
        Op::Suffix => !want.is_empty() && v.ends_with(want),
        Op::Substring => !want.is_empty() && v.contains(want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supported_subset_parses_and_the_rest_does_not() {
        for ok in [
            "h1",
            "p.price",
            "div.item img",
            "ul > li a",
            "#main",
            "*",
            "a[href^='/p']",
            "[data-k]",
            "a, b",
            ".x.y",
            "span[title=\"a b\"]",
            "div>p",
        ] {
            assert!(SelectorList::parse(ok).is_some(), "{ok}");
        }
        for no in [
            "h1 + p",
            "p:first-child",
            "p ~ p",
            "[type=text]",
            "a\\.b",
            "ns|a",
            "",
            "[x=y i]",
            "p,",
            "1a",
            ".1x",
            "a >",
            "::before",
        ] {
            assert!(SelectorList::parse(no).is_none(), "{no}");
        }
    }
}
