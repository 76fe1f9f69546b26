//! The streaming fast path: a page's field values, `<base href>` and link hrefs in one
//! pass over its bytes, without building a DOM (html5ever's tokenizer and tree builder
//! were most of the parser's CPU).
//!
//! It serves only where it gives exactly what the DOM path gives, and says `None`
//! otherwise, so the caller parses the page into a DOM instead:
//! - **Selectors** (`selector.rs`): type, class, id and attribute tests with descendant
//!   and child combinators. No pseudo-classes, no sibling combinators, no `html`,
//!   `head` or `body` (html5ever adds those elements where a page leaves them out), no
//!   attributes whose values HTML compares case-insensitively, no `each` rules.
//! - **Pages** ([`StreamPlan::scan`]): the tree html5ever builds must be the page as
//!   written. The scan keeps the stack of open elements and gives up at the first thing
//!   the HTML tree builder would mend or move: an end tag that does not close the
//!   element on top, a start tag that closes an open `<p>`, `<li>`, `<dt>`, `<dd>`,
//!   heading or `<a>` implicitly, an element left open, tables, `<select>`,
//!   `<template>`, SVG and MathML, `<noscript>` and the other elements html5ever
//!   parses differently, `<html>`/`<head>`/`<body>` inside other elements, content
//!   after `</body>`, duplicate attributes, NUL bytes, and whatever the tokenizer
//!   (`tokenizer.rs`) is not sure of.
//!
//! Character references are decoded by `charref` with html5ever's rules and table. The
//! differential tests (`parser/tests/fastpath.rs`, and the whole suite under
//! `JETCRAWL_CHECK_FAST_PATH=1`) hold the two paths to the same output.

mod selector;
mod tokenizer;

use crate::charref::{decode, Context};
use selector::{ElementInfo, SelectorList};
use tokenizer::{Tag, Token, Tokenizer};

/// Elements the scan gives up on: html5ever builds them differently from how they are
/// written (tables foster-parent and add `<tbody>`, `<select>` and the ruby elements
/// close each other, raw-text and foreign elements change how their content parses,
/// `<image>` becomes `<img>`), or they bound the scopes the implied-end-tag rules
/// look through (`applet`, `marquee`, `object`).
fn give_up(name: &str) -> bool {
    matches!(
        name,
        "table"
            | "caption"
            | "colgroup"
            | "col"
            | "tbody"
            | "thead"
            | "tfoot"
            | "tr"
            | "td"
            | "th"
            | "select"
            | "option"
            | "optgroup"
            | "datalist"
            | "template"
            | "svg"
            | "math"
            | "frameset"
            | "frame"
            | "iframe"
            | "xmp"
            | "noembed"
            | "noframes"
            | "noscript"
            | "plaintext"
            | "image"
            | "isindex"
            | "keygen"
            | "applet"
            | "marquee"
            | "object"
            | "nobr"
            | "rb"
            | "rp"
            | "rt"
            | "rtc"
            | "menuitem"
            | "listing"
    )
}

/// Start tags that close an open `<p>` (HTML's "in body" insertion mode).
fn closes_p(name: &str) -> bool {
    matches!(
        name,
        "address"
            | "article"
            | "aside"
            | "blockquote"
            | "center"
            | "details"
            | "dialog"
            | "dir"
            | "div"
            | "dl"
            | "fieldset"
            | "figcaption"
            | "figure"
            | "footer"
            | "header"
            | "hgroup"
            | "main"
            | "menu"
            | "nav"
            | "ol"
            | "p"
            | "search"
            | "section"
            | "summary"
            | "ul"
            | "pre"
            | "listing"
            | "form"
            | "li"
            | "dd"
            | "dt"
            | "plaintext"
            | "table"
            | "hr"
            | "xmp"
    ) || heading(name)
}

fn heading(name: &str) -> bool {
    matches!(name, "h1" | "h2" | "h3" | "h4" | "h5" | "h6")
}

/// What may stand inside `<head>` without html5ever closing it.
fn head_content(name: &str) -> bool {
    matches!(
        name,
        "base"
            | "basefont"
            | "bgsound"
            | "link"
            | "meta"
            | "title"
            | "noscript"
            | "noframes"
            | "style"
            | "script"
            | "template"
    )
}

/// Elements with no content and no end tag.
fn void(name: &str) -> bool {
    matches!(
        name,
        "area"
            | "base"
            | "basefont"
            | "bgsound"
            | "br"
            | "col"
            | "embed"
            | "frame"
            | "hr"
            | "img"
            | "input"
            | "keygen"
            | "link"
            | "meta"
            | "param"
            | "source"
            | "track"
            | "wbr"
    )
}

/// One field of one item rule, as the scan sees it.
#[derive(Debug)]
struct FieldPlan {
    selector: SelectorList,
    attr: Option<String>,
    all: bool,
}

/// Item rules' fields compiled for the scan, if every one of them qualifies.
#[derive(Debug)]
pub(crate) struct StreamPlan {
    /// Per item rule, per field (the order of `Rules::items` and their fields).
    rules: Vec<Vec<FieldPlan>>,
    /// Attributes besides the usual ones that some selector tests.
    tested_attrs: Vec<String>,
}

/// What one scan found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Scan {
    /// Per item rule asked for, per field: values in match order (for a field that is
    /// not `all`, at most the first). Text is whitespace-collapsed; attributes trimmed.
    pub values: Vec<Vec<Vec<String>>>,
    /// The first `<base href>`, decoded, untrimmed.
    pub base: Option<String>,
    /// Every `a[href]` and `area[href]`, decoded, in page order.
    pub hrefs: Vec<String>,
}

impl StreamPlan {
    /// A plan for these rules (whether each has `each`, and its fields' selector,
    /// attribute and `all`), or `None` if a selector is one the scan does not match
    /// exactly like the DOM, or a rule has `each`.
    pub(crate) fn new(
        rules: impl IntoIterator<Item = (bool, Vec<(String, Option<String>, bool)>)>,
    ) -> Option<StreamPlan> {
        let mut compiled = Vec::new();
        let mut tested_attrs: Vec<String> = Vec::new();
        for (has_each, fields) in rules {
            if has_each {
                return None;
            }
            let mut plans = Vec::new();
            for (css, attr, all) in fields {
                let selector = SelectorList::parse(&css)?;
                if selector.names_document_elements() {
                    return None;
                }
                for name in selector.attr_names() {
                    if !tested_attrs.iter().any(|t| t == name) {
                        tested_attrs.push(name.to_string());
                    }
                }
                plans.push(FieldPlan {
                    selector,
                    attr: attr.map(|a| a.to_ascii_lowercase()),
                    all,
                });
            }
            compiled.push(plans);
        }
        Some(StreamPlan {
            rules: compiled,
            tested_attrs,
        })
    }

    /// Scans `html` for the fields of the rules `wanted` says (by index), the base and
    /// the links (if `links`); `None` if the page is not one whose DOM is exactly what
    /// it says (see the module doc).
    pub(crate) fn scan(&self, html: &str, wanted: &[bool], links: bool) -> Option<Scan> {
        if html.contains('\0') {
            return None;
        }
        // html5ever reads CR and CRLF as LF before anything else.
        let normalized;
        let html = if html.contains('\r') {
            normalized = html.replace("\r\n", "\n").replace('\r', "\n");
            normalized.as_str()
        } else {
            html
        };
        // (slot among the wanted rules, field index, field), flat.
        let fields: Vec<(usize, usize, &FieldPlan)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(r, _)| wanted.get(*r).copied().unwrap_or(false))
            .enumerate()
            .flat_map(|(slot, (_, rule))| rule.iter().enumerate().map(move |(f, p)| (slot, f, p)))
            .collect();
        let mut s: State<'_> = State {
            values: self
                .rules
                .iter()
                .enumerate()
                .filter(|(r, _)| wanted.get(*r).copied().unwrap_or(false))
                .map(|(_, rule)| vec![Vec::new(); rule.len()])
                .collect(),
            ..State::default()
        };
        let mut tokens = Tokenizer::new(html);
        while let Some(token) = tokens.next_token() {
            match token {
                Token::Text(text, raw) => {
                    if !s.captures.is_empty() {
                        s.text.push_str(text);
                        s.text_raw = raw;
                    }
                    if !text.trim_start_matches(is_html_space).is_empty() {
                        s.started = true;
                        match s.stack.last().map(|e| e.name.as_ref()) {
                            // html5ever moves text out of <head> into the body.
                            Some("head") => return None,
                            None | Some("html") => s.body_content = true,
                            _ => {}
                        }
                    }
                    continue;
                }
                Token::Unsure => return None,
                _ => s.flush_text(),
            }
            let fine = match token {
                Token::Start(tag) => s.start(tag, self, &fields, links),
                Token::End(name) => s.end(&name),
                // html5ever drops a doctype after the start, and joins the text around
                // it into one node.
                Token::Doctype => !s.started,
                _ => true,
            };
            if !fine {
                return None;
            }
        }
        // Elements still open at the end hold what follows them in html5ever's tree
        // too: nothing to check.
        s.flush_text();
        Some(Scan {
            values: s.values,
            base: s.base,
            hrefs: s.hrefs,
        })
    }
}

/// The scan's state.
#[derive(Default)]
struct State<'a> {
    /// Open elements, as written.
    stack: Vec<ElementInfo<'a>>,
    /// Anything but leading whitespace, comments and a doctype has been seen.
    started: bool,
    /// Something html5ever puts in the body has been seen: a later `<body>` would
    /// be merged into the body it made up, not start one.
    body_content: bool,
    /// Some element has been seen.
    any_element: bool,
    /// `</body>` or `</html>` has been seen.
    after_body: bool,
    /// The text node being read, while a field captures text, and whether it is raw.
    text: String,
    text_raw: bool,
    values: Vec<Vec<Vec<String>>>,
    /// Text fields being read: `values[slot][field][index]` of an element at `depth`.
    captures: Vec<Capture>,
    base: Option<String>,
    hrefs: Vec<String>,
}

struct Capture {
    depth: usize,
    slot: usize,
    field: usize,
    index: usize,
}

impl<'a> State<'a> {
    /// Ends the text node being read: its words go to every open capture.
    fn flush_text(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let node = std::mem::take(&mut self.text);
        let decoded = if self.text_raw {
            std::borrow::Cow::Borrowed(node.as_str())
        } else {
            decode(&node, Context::Text)
        };
        for c in &self.captures {
            let Some(value) = self
                .values
                .get_mut(c.slot)
                .and_then(|v| v.get_mut(c.field))
                .and_then(|v| v.get_mut(c.index))
            else {
                continue;
            };
            for word in decoded.split_whitespace() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(word);
            }
        }
    }

    /// A start tag; `false` if html5ever would build something else from it.
    fn start(
        &mut self,
        tag: Tag<'a>,
        plan: &'a StreamPlan,
        fields: &[(usize, usize, &FieldPlan)],
        links: bool,
    ) -> bool {
        if self.mends(&tag.name) || has_duplicates(&tag.attrs) {
            return false;
        }
        self.started = true;
        let in_head = self.stack.last().is_some_and(|e| e.name == "head");
        let document_level = matches!(tag.name.as_ref(), "html" | "head" | "body")
            || (in_head && head_content(&tag.name));
        if !document_level {
            self.body_content = true;
        }
        self.any_element = true;
        let void = void(&tag.name);
        if tag.self_closing && !void {
            // `<div/>` opens a div in HTML; better not to reason about it.
            return false;
        }
        let attr = |name: &str| {
            tag.attrs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| decode(v, Context::Attribute))
        };
        let info = ElementInfo {
            id: attr("id"),
            class: attr("class"),
            attrs: plan
                .tested_attrs
                .iter()
                .filter_map(|n| Some((n.as_str(), attr(n)?)))
                .collect(),
            name: tag.name,
        };
        match info.name.as_ref() {
            "a" | "area" if links => {
                if let Some(href) = attr("href") {
                    self.hrefs.push(href.into_owned());
                }
            }
            "base" if self.base.is_none() => self.base = attr("href").map(|v| v.into_owned()),
            _ => {}
        }
        let depth = self.stack.len();
        self.stack.push(info);
        for &(slot, field_index, field) in fields {
            if !field.selector.matches(&self.stack) {
                continue;
            }
            let Some(out) = self
                .values
                .get_mut(slot)
                .and_then(|v| v.get_mut(field_index))
            else {
                continue;
            };
            if !field.all && !out.is_empty() {
                continue;
            }
            match &field.attr {
                Some(name) => {
                    if let Some(v) = attr(name) {
                        out.push(v.trim().to_string());
                    }
                }
                None => {
                    out.push(String::new());
                    if !void {
                        let index = out.len() - 1;
                        self.captures.push(Capture {
                            depth,
                            slot,
                            field: field_index,
                            index,
                        });
                    }
                }
            }
        }
        if void {
            self.stack.pop();
        }
        true
    }

    /// An end tag; `false` unless it closes the element on top.
    fn end(&mut self, name: &str) -> bool {
        if self.stack.last().is_none_or(|top| top.name != name) {
            return false;
        }
        self.stack.pop();
        let depth = self.stack.len();
        self.captures.retain(|c| c.depth != depth);
        if matches!(name, "body" | "html") {
            self.after_body = true;
        }
        true
    }

    /// Whether html5ever would close, move or merge something at this start tag.
    fn mends(&self, name: &str) -> bool {
        let open = |n: &str| self.stack.iter().any(|o| o.name == n);
        let top = self.stack.last().map(|o| o.name.as_ref());
        let nearest = |of: &[&str]| {
            self.stack
                .iter()
                .rev()
                .map(|o| o.name.as_ref())
                .find(|n| of.contains(n))
        };
        self.after_body
            || give_up(name)
            || (closes_p(name) && open("p"))
            || (heading(name) && top.is_some_and(heading))
            || (name == "li" && nearest(&["li", "ul", "ol", "menu"]) == Some("li"))
            || (matches!(name, "dd" | "dt")
                && matches!(nearest(&["dd", "dt", "dl"]), Some("dd" | "dt")))
            || (matches!(name, "a" | "form" | "button") && open(name))
            // html5ever merges these into the ones it has (or made up); outside the
            // document's outermost elements they would add a level the DOM lacks.
            || (matches!(name, "head" | "body")
                && (self.body_content || !self.stack.iter().all(|o| o.name == "html")))
            || (name == "head" && self.stack.is_empty() && self.any_element)
            || (name == "html" && self.any_element)
            // Anything but head content closes <head> in html5ever.
            || (top == Some("head") && !head_content(name))
    }
}

/// HTML's whitespace.
fn is_html_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r')
}

fn has_duplicates(attrs: &[(std::borrow::Cow<'_, str>, &str)]) -> bool {
    attrs.len() > 1
        && attrs
            .iter()
            .enumerate()
            .any(|(i, (a, _))| attrs[..i].iter().any(|(b, _)| b == a))
}
