//! Unit tests of `extract`: fields, links, scope, redirects, caps, traps, sitemaps.

use super::*;
use std::path::Path;

const SPIDER: &str = r#"
name = "t"
start_urls = ["http://shop.test/"]
allowed_domains = ["shop.test"]
max_depth = 2
[follow]
deny = ['/private/']
[[items]]
type = "product"
match = '/catalogue/[^/]+/index\.html$'
[items.fields]
title = "h1"
price = "p.price_color"
image = { css = "div.item img", attr = "src", absolute = true }
tags  = { css = "ul.breadcrumb li a", all = true }
missing = "span.nope"
"#;

fn rules() -> Rules {
    let spider = CompiledSpider::from_toml(SPIDER, Path::new("t.toml")).unwrap();
    Rules::new(&spider).unwrap()
}

fn page(url: &str, depth: u32, html: &str) -> Page {
    Page::html(Url::parse(url).unwrap(), depth, html.to_string())
}

fn rules_of(toml: &str) -> Rules {
    Rules::new(&CompiledSpider::from_toml(toml, Path::new("t.toml")).unwrap()).unwrap()
}

fn link_strings(extracted: &Extracted) -> Vec<String> {
    extracted.links.iter().map(|u| u.to_string()).collect()
}

#[test]
fn an_off_site_redirect_does_not_put_the_foreign_site_in_scope() {
    // No allowed_domains: the seeds' hosts are the scope.
    let rules = rules_of("name = \"t\"\nstart_urls = [\"http://a.test/\"]\n");
    let html = r#"<a href="/next">rel</a><a href="http://other.test/more">abs</a>
        <a href="http://a.test/back">back</a>"#;
    let mut redirected = page("http://a.test/go", 0, html);
    redirected.final_url = Url::parse("http://other.test/landing").unwrap();
    assert_eq!(
        link_strings(&rules.parse(&redirected)),
        ["http://a.test/back"],
        "links of the foreign site a page was redirected to are out of scope"
    );
    // Within one registrable domain a redirect's target is the page's own host.
    let mut to_www = page("http://a.test/", 0, html);
    to_www.final_url = Url::parse("http://www.a.test/").unwrap();
    assert_eq!(
        link_strings(&rules.parse(&to_www)),
        ["http://www.a.test/next", "http://a.test/back"]
    );
    // A page fetched from a host given as a seed at run time keeps its own links.
    let runtime_seed = page("http://c.test/", 0, r#"<a href="/x">x</a>"#);
    assert_eq!(
        link_strings(&rules.parse(&runtime_seed)),
        ["http://c.test/x"]
    );
}

#[test]
fn links_beyond_max_links_per_page_are_counted_and_dropped() {
    let rules = rules_of(
        "name = \"t\"\nstart_urls = [\"http://a.test/\"]\n[follow]\nmax_links_per_page = 2\n",
    );
    let html: String = (0..5)
        .map(|i| format!(r#"<a href="/p{i}">{i}</a>"#))
        .collect();
    let extracted = rules.parse(&page("http://a.test/", 0, &html));
    assert_eq!(
        link_strings(&extracted),
        ["http://a.test/p0", "http://a.test/p1"]
    );
    assert_eq!(extracted.links_capped, 3);
}

const PRODUCT: &str = r#"<html><head><title>x</title></head><body>
    <ul class="breadcrumb"><li><a href="/">Home</a></li><li><a href="/c/">  Books
    &amp; more </a></li></ul>
    <div class="item"><img src="../../media/a.jpg"></div>
    <h1>  A   Light in the
    Attic </h1><p class="price_color">£51.77</p>
    <a href="../other/index.html#x">other</a>
    <a href="HTTP://SHOP.TEST:80/catalogue/other/index.html?utm_source=x">same other</a>
    <a href="/private/secret.html">private</a>
    <a href="https://elsewhere.test/">offsite</a>
    <a href="mailto:x@y.z">mail</a><a href="javascript:void(0)">js</a><a>no href</a>
    </body></html>"#;

#[test]
fn remembered_links_resolve_against_each_page() {
    // No allowed_domains: scope is the seeds' hosts plus the page's own host, so
    // the memo must not carry one page's verdict to another host's page.
    let spider = CompiledSpider::from_toml(
        "name = \"t\"\nstart_urls = [\"http://a.test/\"]\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let rules = Rules::new(&spider).unwrap();
    let nav = r#"<a href="/shop/">shop</a><a href="http://a.test/about">a</a>
        <a href="HTTP://b.test/x#frag">b</a><a href="rel/page">rel</a>"#;
    // Three passes over the same page: the first computes, the others recall.
    let links = |url: &str| -> Vec<String> {
        let passes: Vec<Vec<String>> = (0..3)
            .map(|_| {
                let links = rules.parse(&page(url, 0, nav)).links;
                links.into_iter().map(String::from).collect()
            })
            .collect();
        assert!(passes.iter().all(|p| *p == passes[0]), "{passes:?}");
        passes[0].clone()
    };
    let a = links("http://a.test/dir/p1");
    let b = links("https://b.test/other/p2");
    assert_eq!(
        a,
        [
            "http://a.test/shop/",
            "http://a.test/about",
            "http://a.test/dir/rel/page"
        ]
    );
    assert_eq!(
        b,
        [
            "https://b.test/shop/",
            "http://a.test/about",
            "http://b.test/x",
            "https://b.test/other/rel/page"
        ]
    );
    assert_eq!(links("http://a.test/dir/p1"), a);
}

#[test]
fn extracts_fields_by_rule() {
    let got = rules().parse(&page(
        "http://shop.test/catalogue/a-light/index.html",
        0,
        PRODUCT,
    ));
    assert_eq!(got.items.len(), 1);
    let item = &got.items[0];
    assert_eq!(item.item_type, "product");
    assert_eq!(item.url, "http://shop.test/catalogue/a-light/index.html");
    assert_eq!(item.data["title"], "A Light in the Attic");
    assert_eq!(item.data["price"], "£51.77");
    assert_eq!(item.data["image"], "http://shop.test/media/a.jpg");
    assert_eq!(
        item.data["tags"],
        serde_json::json!(["Home", "Books & more"])
    );
    assert_eq!(item.data["missing"], Value::Null);
}

#[test]
fn links_are_canonical_scoped_denied_and_unique() {
    let got = rules().parse(&page(
        "http://shop.test/catalogue/a-light/index.html",
        0,
        PRODUCT,
    ));
    let links: Vec<&str> = got.links.iter().map(Url::as_str).collect();
    assert_eq!(
        links,
        vec![
            "http://shop.test/",
            "http://shop.test/c/",
            "http://shop.test/catalogue/other/index.html"
        ]
    );
}

#[test]
fn depth_limit_stops_links_not_items() {
    let got = rules().parse(&page(
        "http://shop.test/catalogue/a-light/index.html",
        2,
        PRODUCT,
    ));
    assert!(got.links.is_empty());
    assert_eq!(got.items.len(), 1);
}

#[test]
fn non_html_and_errors_yield_nothing() {
    let mut p = page("http://shop.test/catalogue/a-light/index.html", 0, PRODUCT);
    p.status = Some(404);
    assert_eq!(rules().parse(&p), Extracted::default());
    p.status = Some(200);
    p.content_type = Some("image/png".into());
    assert_eq!(rules().parse(&p), Extracted::default());
}

#[test]
fn base_href_is_honoured() {
    let html = r#"<html><head><base href="http://shop.test/catalogue/"></head><body><a href="x/index.html">x</a></body></html>"#;
    let got = rules().parse(&page("http://shop.test/index.html", 0, html));
    assert_eq!(
        got.links[0].as_str(),
        "http://shop.test/catalogue/x/index.html"
    );
}

#[test]
fn item_id_is_stable_across_url_spellings() {
    let r = rules();
    let a = r.parse(&page(
        "http://shop.test/catalogue/a-light/index.html",
        0,
        PRODUCT,
    ));
    let b = r.parse(&page(
        "HTTP://Shop.Test:80/catalogue/./a-light/index.html#top",
        0,
        PRODUCT,
    ));
    assert_eq!(a.items[0].item_id, b.items[0].item_id);
}

#[test]
fn nul_bytes_and_overlong_links_are_dropped() {
    let long = format!("/{}", "a".repeat(3000));
    let html = format!("<h1>A\u{0}B</h1><a href=\"{long}\">long</a><a href=\"/ok\">ok</a>");
    let got = rules().parse(&page("http://shop.test/catalogue/n/index.html", 0, &html));
    assert_eq!(got.items[0].data["title"], "AB");
    let links: Vec<&str> = got.links.iter().map(Url::as_str).collect();
    assert_eq!(links, vec!["http://shop.test/ok"]);
}

const QUOTES: &str = r#"
name = "q"
start_urls = ["http://quotes.test/"]
[[items]]
type = "quote"
match = '^http://quotes\.test/(page/\d+/)?$'
each = "div.quote"
key = "text"
[items.fields]
text = "span.text"
author = "small.author"
tags = { css = "a.tag", all = true }
[[items]]
type = "page"
match = '^http://quotes\.test/$'
[items.fields]
title = "h1"
"#;

const QUOTES_PAGE: &str = r#"<html><body><h1>Quotes</h1>
    <div class="quote"><span class="text">“One”</span><small class="author">A</small>
      <div class="tags"><a class="tag">x</a><a class="tag">y</a></div></div>
    <div class="quote"><span class="text">“Two”</span><small class="author">B</small>
      <div class="tags"></div></div>
    <div class="quote"><small class="author">C</small></div>
    <div class="quote"><small class="author">D</small></div>
    </body></html>"#;

fn quotes() -> Rules {
    let spider = CompiledSpider::from_toml(QUOTES, Path::new("q.toml")).unwrap();
    Rules::new(&spider).unwrap()
}

#[test]
fn each_yields_one_item_per_element_with_relative_fields() {
    let got = quotes().parse(&page("http://quotes.test/", 0, QUOTES_PAGE));
    let quotes: Vec<&Item> = got
        .items
        .iter()
        .filter(|i| i.item_type == "quote")
        .collect();
    assert_eq!(quotes.len(), 4);
    assert_eq!(quotes[0].data["text"], "“One”");
    assert_eq!(quotes[0].data["author"], "A");
    assert_eq!(quotes[0].data["tags"], serde_json::json!(["x", "y"]));
    // Fields are relative to their element: no tags leak from the first quote.
    assert_eq!(quotes[1].data["tags"], serde_json::json!([]));
    assert_eq!(quotes[2].data["text"], Value::Null);
    // Distinct ids: by key, or by position when the key is missing.
    let ids: std::collections::HashSet<&str> = quotes.iter().map(|q| q.item_id.as_str()).collect();
    assert_eq!(ids.len(), 4);
    // A rule without `each` still yields one item per page.
    let pages: Vec<&Item> = got.items.iter().filter(|i| i.item_type == "page").collect();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].data["title"], "Quotes");
}

#[test]
fn each_ids_follow_the_key_not_the_position() {
    let r = quotes();
    let a = r.parse(&page("http://quotes.test/page/2/", 0, QUOTES_PAGE));
    let swapped = QUOTES_PAGE
        .replacen("“One”", "“Tmp”", 1)
        .replacen("“Two”", "“One”", 1)
        .replacen("“Tmp”", "“Two”", 1);
    let b = r.parse(&page("http://quotes.test/page/2/", 0, &swapped));
    let id = |x: &Extracted, text: &str| {
        x.items
            .iter()
            .find(|i| i.data["text"] == text)
            .map(|i| i.item_id.clone())
    };
    assert_eq!(id(&a, "“One”"), id(&b, "“One”"));
    assert!(id(&a, "“One”").is_some());
    let none = r.parse(&page("http://quotes.test/page/2/", 0, "<p>no quotes</p>"));
    assert!(none.items.is_empty());
}

#[test]
fn bad_each_selector_is_named() {
    let bad = QUOTES.replace("each = \"div.quote\"", "each = \"div..[\"");
    let spider = CompiledSpider::from_toml(&bad, Path::new("q.toml")).unwrap();
    let err = Rules::new(&spider).unwrap_err().to_string();
    assert!(err.contains("quote.each"), "{err}");
}

#[test]
fn garbage_html_does_not_panic() {
    let r = rules();
    for body in [
        "",
        "<<<>>>",
        "<a href='\u{0}'>",
        "\u{feff}<html><a href=\"http://[::1\">x</a>",
    ] {
        let _ = r.parse(&page("http://shop.test/catalogue/z/index.html", 0, body));
    }
}

#[test]
fn bad_selector_names_the_field() {
    let bad = SPIDER.replace("p.price_color", "p..[");
    let spider = CompiledSpider::from_toml(&bad, Path::new("t.toml")).unwrap();
    let err = Rules::new(&spider).unwrap_err().to_string();
    assert!(err.contains("product.price"), "{err}");
}
