//! The streaming fast path against the DOM: on every page, the two give the same items
//! and links, or the fast path declines. Generated pages (proptest) cover the HTML the
//! tree builder mends; the demo shop's pages must take the fast path (else the
//! benchmark figures would not be the fast path's).
//!
//! The end-to-end suite adds every test site: `scripts/test.sh` runs it with
//! `JETCRAWL_CHECK_FAST_PATH=1`, under which each streamed page is parsed both ways
//! and a difference panics (and so loses the test its items).

use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use url::Url;

use jetcrawl_parser::{Extracted, Rules};
use jetcrawl_shared::message::Page;
use jetcrawl_shared::CompiledSpider;

fn page(url: &str, depth: u32, html: String) -> Page {
    Page::html(Url::parse(url).expect("test URL"), depth, html)
}

fn rules(toml: &str) -> Rules {
    let spider = CompiledSpider::from_toml(toml, Path::new("t.toml")).expect("spider");
    Rules::new(&spider).expect("rules")
}

/// Items and links, the part of [`Extracted`] the two paths must agree on.
fn outcome(x: &Extracted) -> (String, Vec<String>, usize) {
    let items = serde_json::to_string(&x.items).expect("items to JSON");
    let links = x.links.iter().map(Url::to_string).collect();
    (items, links, x.links_capped)
}

/// Parses `p` both ways: asserts they agree, returns whether the fast path served.
fn agree(rules: &Rules, p: &Page) -> Result<bool, TestCaseError> {
    let fast = rules.parse(p);
    let dom = rules.parse_without_fast_path(p);
    prop_assert!(!dom.streamed);
    prop_assert_eq!(
        outcome(&fast),
        outcome(&dom),
        "page:\n{}",
        String::from_utf8_lossy(&p.body)
    );
    Ok(fast.streamed)
}

const SHOP: &str = r#"
name = "shop"
start_urls = ["http://127.0.0.1:8080/"]
allowed_domains = ["127.0.0.1"]
max_depth = 100
strip_query_params = ["utm_*"]
[follow]
allow = ['/product/\d+$', '/category/', '^https?://[^/]+/$']
[[items]]
type = "product"
match = '/product/\d+$'
[items.fields]
title = "h1.product-title"
price = "p.price"
sku = "span.sku"
availability = "p.availability"
category = "a.breadcrumb-category"
summary = "div.description p"
"#;

#[test]
fn the_demo_shop_takes_the_fast_path_and_agrees_with_the_dom() {
    let site = jetcrawl_demo_site::DemoSite::new(2_000);
    let rules = rules(SHOP);
    let mut paths = vec!["/".to_string()];
    paths.extend((0..2).flat_map(|c| (1..=3).map(move |n| format!("/category/{c}/page/{n}"))));
    paths.extend((0..2_000).step_by(97).map(|id| format!("/product/{id}")));
    for path in paths {
        let (status, body) = site.body(&path, "127.0.0.1:8080");
        assert_eq!(status, 200, "{path}");
        let p = page(&format!("http://127.0.0.1:8080{path}"), 1, body);
        let fast = rules.parse(&p);
        assert!(fast.streamed, "{path} did not take the fast path");
        assert_eq!(outcome(&fast), outcome(&rules.parse_without_fast_path(&p)));
        assert!(!fast.links.is_empty(), "{path} yielded no links");
        if path.starts_with("/product/") {
            assert_eq!(fast.items.len(), 1, "{path}");
            assert!(fast.items[0].data.values().all(|v| v.is_string()), "{path}");
        }
    }
}

#[test]
fn selectors_the_fast_path_cannot_match_alike_use_the_dom() {
    let html = "<html><body><h1>T</h1><p>a</p><p>b</p></body></html>".to_string();
    for css in ["h1 + p", "p:first-child", "body p", "p ~ p", "[type=text]"] {
        let rules = rules(&format!(
            "name = \"t\"\nstart_urls = [\"http://a.test/\"]\n[[items]]\ntype = \"t\"\n\
             match = '.'\n[items.fields]\nf = \"{css}\"\n"
        ));
        let p = page("http://a.test/x", 0, html.clone());
        assert!(!rules.parse(&p).streamed, "{css} took the fast path");
    }
}

/// Rules whose every selector the fast path takes: text, attributes, `all`,
/// `absolute`, ids, classes, attribute tests, descendant and child combinators.
const GENERATED: &str = r##"
name = "gen"
start_urls = ["http://shop.test/"]
allowed_domains = ["shop.test"]
max_depth = 3
strip_query_params = ["utm_*"]
[follow]
deny = ['/private/']
max_links_per_page = 12
[[items]]
type = "product"
match = '/catalogue/'
[items.fields]
title = "h1"
price = "p.price"
first_span = "div span"
spans = { css = "span", all = true }
child = "div > p"
main = "#main"
classes = { css = ".x.y", all = true }
image = { css = "img", attr = "src", absolute = true }
links = { css = "a", attr = "href", all = true, absolute = true }
data = { css = "[data-k]", attr = "data-k" }
prefixed = "a[href^='/p']"
[[items]]
type = "other"
match = '/nowhere/'
[items.fields]
title = "h1"
"##;

const SAFE_TAGS: &[&str] = &[
    "div",
    "p",
    "span",
    "a",
    "h1",
    "h2",
    "li",
    "ul",
    "ol",
    "b",
    "i",
    "em",
    "section",
    "nav",
    "strong",
    "small",
    "dl",
    "dd",
    "dt",
    "pre",
    "textarea",
    "title",
    "script",
    "style",
    "button",
    "form",
    "main",
    "article",
    "header",
    "footer",
    "label",
    "q",
    "blockquote",
];
const RISKY_TAGS: &[&str] = &[
    "table",
    "tr",
    "td",
    "tbody",
    "select",
    "option",
    "noscript",
    "template",
    "svg",
    "iframe",
    "xmp",
    "nobr",
    "image",
    "head",
    "body",
    "html",
    "plaintext",
    "listing",
];
const VOID_TAGS: &[&str] = &["br", "img", "hr", "input", "meta", "link", "base", "wbr"];
const TEXTS: &[&str] = &[
    "Hello",
    " ",
    "\n",
    "  world  ",
    "&amp;",
    "&eacute",
    "&eacute;",
    "&#233;",
    "&#x80;",
    "&#0;",
    "&notit;",
    "&",
    "Fish & Chips",
    "\r\n",
    "£9.99",
    "x&y=1",
    "&#;",
    "<",
    ">",
    "&lt;b&gt;",
    "\t",
    "&nbsp;",
    "&#x1F600;",
    "&NotEqualTilde;",
    "a\u{a0}b",
    "</",
    "Price",
    "Title",
    "one two",
    "x",
];
const ATTRS: &[&str] = &[
    r#"class="x""#,
    r#"class="x y""#,
    r#"class="price""#,
    r#"class="X""#,
    r#"id="main""#,
    r#"href="/p/1""#,
    r#"href="/p?a=1&b=2""#,
    r#"href="/p?a=1&copy=2""#,
    r#"href="/p?x&amp;y""#,
    r#"href="http://shop.test/q?utm_source=z&k=v""#,
    r#"href="../p/2#frag""#,
    r#"href="  /private/x  ""#,
    r#"href="http://elsewhere.test/""#,
    r#"href="""#,
    r#"href='/p/3'"#,
    "href=/p/4",
    r#"src="/img/a.png""#,
    r#"src="&#x2F;img&sol;b.png""#,
    r#"data-k="v&quot;1""#,
    "data-k",
    r#"class="x" class="y""#,
    r#"href="/p/5" href="/p/6""#,
];

#[derive(Debug, Clone)]
enum Node {
    Text(&'static str),
    Comment(&'static str),
    Void(&'static str, Vec<&'static str>),
    Element {
        tag: &'static str,
        attrs: Vec<&'static str>,
        children: Vec<Node>,
        end: End,
    },
}

/// How an element's end is written.
#[derive(Debug, Clone, Copy)]
enum End {
    Proper,
    Omitted,
    Upper,
    SelfClosing,
    Stray(&'static str),
}

fn tag() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        30 => prop::sample::select(SAFE_TAGS),
        1 => prop::sample::select(RISKY_TAGS),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        80 => Just(End::Proper),
        1 => Just(End::Omitted),
        1 => Just(End::Upper),
        1 => Just(End::SelfClosing),
        1 => prop::sample::select(SAFE_TAGS).prop_map(End::Stray),
    ]
}

/// Up to three attributes, one of a name (the two duplicate entries of `ATTRS` aside).
fn attrs() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(ATTRS), 0..3).prop_map(|mut attrs| {
        let name = |a: &str| a.split('=').next().unwrap_or(a).to_string();
        let mut seen = Vec::new();
        attrs.retain(|a| {
            let n = name(a);
            let fresh = !seen.contains(&n);
            seen.push(n);
            fresh
        });
        attrs
    })
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        6 => prop::sample::select(TEXTS).prop_map(Node::Text),
        1 => prop::sample::select(&["<!-- c -->", "<!-- </div> -->", "<!---->"][..]).prop_map(Node::Comment),
        2 => (prop::sample::select(VOID_TAGS), attrs()).prop_map(|(t, a)| Node::Void(t, a)),
    ];
    leaf.prop_recursive(5, 80, 6, |inner| {
        (tag(), attrs(), prop::collection::vec(inner, 0..6), end()).prop_map(
            |(tag, attrs, children, end)| Node::Element {
                tag,
                attrs,
                children,
                end,
            },
        )
    })
}

/// Start tags that would close a `<p>` they stand in.
const BLOCKS: &[&str] = &[
    "div",
    "p",
    "h1",
    "h2",
    "li",
    "ul",
    "ol",
    "section",
    "nav",
    "dl",
    "dd",
    "dt",
    "pre",
    "form",
    "main",
    "article",
    "header",
    "footer",
    "blockquote",
];

/// Writes `node`; a block directly inside a `<p>` is written as a `<span>` (deeper
/// ones stay, so the fast path still meets `<p>`s that html5ever closes).
fn write(node: &Node, out: &mut String) {
    write_in(node, out, false);
}

fn write_in(node: &Node, out: &mut String, in_p: bool) {
    match node {
        Node::Text(t) | Node::Comment(t) => out.push_str(t),
        Node::Void(tag, attrs) => {
            let _ = write!(out, "<{tag}");
            for a in attrs {
                let _ = write!(out, " {a}");
            }
            out.push('>');
        }
        Node::Element {
            tag,
            attrs,
            children,
            end,
        } => {
            let tag = if in_p && BLOCKS.contains(tag) {
                &"span"
            } else {
                tag
            };
            let _ = write!(out, "<{tag}");
            for a in attrs {
                let _ = write!(out, " {a}");
            }
            out.push_str(if matches!(end, End::SelfClosing) {
                "/>"
            } else {
                ">"
            });
            for child in children {
                write_in(child, out, *tag == "p");
            }
            match end {
                End::Proper | End::SelfClosing => {
                    let _ = write!(out, "</{tag}>");
                }
                End::Upper => {
                    let _ = write!(out, "</{}>", tag.to_ascii_uppercase());
                }
                End::Stray(other) => {
                    let _ = write!(out, "</{other}></{tag}>");
                }
                End::Omitted => {}
            }
        }
    }
}

/// A page: a full document (doctype, head, body) most of the time, else a fragment.
fn document() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(node(), 1..8),
        prop::collection::vec(node(), 0..3),
        any::<u8>(),
    )
        .prop_map(|(body, head, shape)| {
            let mut out = String::new();
            if shape % 4 == 0 {
                for n in &body {
                    write(n, &mut out);
                }
                return out;
            }
            out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">");
            if shape % 8 != 2 {
                // Head content only: anything else in <head> is moved by html5ever.
                out.push_str("<title>T &amp; t</title><base href=\"/catalogue/base/\">");
            } else {
                for n in &head {
                    write(n, &mut out);
                }
            }
            out.push_str("</head>\n<body>\n");
            for n in &body {
                write(n, &mut out);
            }
            out.push_str("</body>\n</html>\n");
            out
        })
}

#[test]
fn generated_pages_give_the_dom_s_items_and_links_or_take_the_dom() {
    let rules = rules(GENERATED);
    let mut runner = TestRunner::new(Config {
        cases: 3_000,
        ..Config::default()
    });
    let streamed = std::cell::Cell::new(0u32);
    let result = runner.run(&(document(), 0u32..4), |(html, depth)| {
        let p = page("http://shop.test/catalogue/a/index.html", depth, html);
        if agree(&rules, &p)? {
            streamed.set(streamed.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{} of 3000 generated pages took the fast path",
        streamed.get()
    );
    // Not a vacuous comparison: a good share of the pages took the fast path.
    assert!(
        streamed.get() > 300,
        "only {} of 3000 generated pages took the fast path",
        streamed.get()
    );
}
