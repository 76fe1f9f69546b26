//! The content of the test site: a book catalogue in the shape of books.toscrape.com.
//!
//! 200 product pages `/catalogue/<slug>/index.html`, reached from 10 listing pages, 10
//! category pages and "related" links between products, each link spelt in one of many
//! equivalent ways (relative, dot-segments, fragments, upper-case scheme,
//! scheme-relative, tracking parameters, `%7E` for `~`). Plus robots.txt (disallows
//! `/private/`, which is linked and would yield items), a 301 to a product linked from
//! nowhere else, a page that fails once with 500, a 404, off-site and non-http links,
//! and query parameters in two orders.
//!
//! Everything a test asserts (items, page keys) comes from the same [`Model`] that
//! renders the pages.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Products on the listing pages (and in the categories).
pub const LISTED: usize = 200;
const PER_PAGE: usize = 20;
const PAGES: usize = LISTED / PER_PAGE;
const CATEGORIES: &[&str] = &[
    "Travel",
    "Mystery",
    "Historical Fiction",
    "Sequential Art",
    "Classics",
    "Philosophy",
    "Romance",
    "Science & Nature",
    "Poetry",
    "Humor",
];
/// The product whose slug has a `~` (linked as `~`, `%7E` and `%7e`).
const TILDE: usize = 13;
/// The product that answers 500 to its first request.
const FLAKY: usize = 42;
/// Reached only through `/old-product` (301).
const MOVED: usize = LISTED;
/// Linked from nowhere: reached only when seeded explicitly.
const SEED_ONLY: usize = LISTED + 1;
/// `/private/catalogue/secret_<k>/index.html`, k in 1..=PRIVATE.
const PRIVATE: usize = 3;

/// One expected row of `jetcrawl_items`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedItem {
    pub item_type: String,
    pub url: String,
    pub data: Value,
}

/// What the site answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An HTML page with this status.
    Html(u16, String),
    /// A `text/plain` 200 (robots.txt).
    Text(String),
    /// A 301 to this location.
    Redirect(String),
}

#[derive(Debug, Clone)]
struct Product {
    idx: usize,
    slug: String,
    title: String,
    price: String,
    category: usize,
}

impl Product {
    fn new(idx: usize) -> Product {
        const ADJ: &[&str] = &[
            "Silent",
            "Crimson",
            "Hidden",
            "Golden",
            "Broken",
            "Wandering",
            "Quiet",
            "Bright",
            "Frozen",
            "Lost",
            "Secret",
            "Endless",
            "Painted",
            "Hollow",
            "Distant",
            "Northern",
            "Paper",
        ];
        const NOUN: &[&str] = &[
            "River", "Garden", "Lantern", "Harbor", "Mountain", "Letter", "Orchard", "Mirror",
            "Compass", "Island", "Winter", "Library", "Kingdom",
        ];
        let adj = ADJ[idx % ADJ.len()];
        let noun = NOUN[(idx * 7 + 3) % NOUN.len()];
        let title = if idx % 11 == 0 {
            format!("{adj} & {noun}, Volume {idx}")
        } else {
            format!("The {adj} {noun} {idx}")
        };
        let slug = if idx == TILDE {
            format!("tilde~edition_{idx}")
        } else {
            let words: Vec<String> = title
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            format!("{}_{idx}", words.join("-"))
        };
        Product {
            idx,
            slug,
            title,
            price: format!("£{}.{:02}", 10 + (idx * 37) % 50, (idx * 53 + 7) % 100),
            category: idx % CATEGORIES.len(),
        }
    }

    fn path(&self) -> String {
        format!("/catalogue/{}/index.html", self.slug)
    }

    /// The `src` of the cover image as written in the page.
    fn image_src(&self) -> String {
        if self.idx == MOVED {
            // Relative to the page's own directory: resolving it against the redirect's
            // source (`/old-product`) instead of the final URL gives a different URL.
            "cover.jpg".to_string()
        } else {
            format!(
                "../../media/cache/{:02x}/book_{}.jpg",
                self.idx % 251,
                self.idx
            )
        }
    }

    fn image_abs(&self, base: &str) -> String {
        if self.idx == MOVED {
            format!("{base}/catalogue/{}/cover.jpg", self.slug)
        } else {
            format!(
                "{base}/media/cache/{:02x}/book_{}.jpg",
                self.idx % 251,
                self.idx
            )
        }
    }

    /// The `<h1>` content: whitespace runs and inline elements the extractor must
    /// flatten back to `title`.
    fn title_html(&self) -> String {
        let words: Vec<String> = self.title.split(' ').map(escape).collect();
        match self.idx % 5 {
            0 => format!("\n      {}\n    ", words.join("\n        ")),
            1 => {
                let (last, rest) = words.split_last().expect("title has words");
                format!("{} <span class=\"sub\">{last}</span>", rest.join("  "))
            }
            _ => words.join(" "),
        }
    }
}

/// The site's content, independent of any server.
#[derive(Debug, Clone)]
pub struct Model {
    port: u16,
    products: Vec<Product>,
}

impl Model {
    pub fn new(port: u16) -> Model {
        Model {
            port,
            products: (0..=SEED_ONLY).map(Product::new).collect(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn listed(&self) -> &[Product] {
        &self.products[..LISTED]
    }

    fn product_by_slug(&self, slug: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.slug == slug)
    }

    fn item(&self, p: &Product) -> ExpectedItem {
        ExpectedItem {
            item_type: "product".to_string(),
            url: format!("{}{}", self.base(), p.path()),
            data: json!({
                "title": p.title,
                "price": p.price,
                "image": p.image_abs(&self.base()),
                "tags": ["Home", "Books", CATEGORIES[p.category]],
            }),
        }
    }

    /// One of many spellings of a link to product `p`, from a page whose directory
    /// reaches `/catalogue/` through `prefix` (e.g. `""` from `/catalogue/page-1.html`,
    /// `"../"` from a product page).
    fn product_href(&self, p: &Product, prefix: &str, variant: usize) -> String {
        let port = self.port;
        let slug = match variant % 3 {
            0 => p.slug.clone(),
            1 => p.slug.replace('~', "%7E"),
            _ => p.slug.replace('~', "%7e"),
        };
        match variant % 12 {
            0 => format!("{prefix}{slug}/index.html"),
            1 => format!("{prefix}{slug}/index.html#main"),
            2 => format!("./{prefix}{slug}/index.html"),
            3 => format!("/catalogue/./{slug}/index.html"),
            4 => format!("HTTP://127.0.0.1:{port}/catalogue/{slug}/index.html"),
            5 => format!("{prefix}{slug}/index.html?utm_source=listing&utm_medium=web#top"),
            6 => format!("//127.0.0.1:{port}/catalogue/{slug}/index.html"),
            7 => format!("/catalogue/x/../{slug}/index.html"),
            8 => format!("/catalogue/{slug}/./index.html?utm_campaign=spring"),
            9 => format!("/catalogue/../catalogue/{slug}/index.html"),
            10 => format!("{prefix}{slug}/index.html?"),
            _ => format!("http://127.0.0.1:{port}/catalogue/{slug}//../index.html#reviews"),
        }
    }

    fn category_path(&self, c: usize) -> String {
        format!(
            "/catalogue/category/books/{}_{}/index.html",
            CATEGORIES[c]
                .split(|ch: char| !ch.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join("-"),
            c + 2
        )
    }

    fn private_path(k: usize) -> String {
        format!("/private/catalogue/secret_{k}/index.html")
    }

    /// Every page a correct crawl requests exactly once (normalised keys), apart from
    /// robots.txt and the flaky page.
    pub fn page_keys(&self) -> Vec<String> {
        let mut keys = vec![
            "/".to_string(),
            "/index.html".to_string(),
            "/catalogue/category/books_1/index.html".to_string(),
            "/search.html?page=1&q=books".to_string(),
            "/search.html?page=2&q=books".to_string(),
            "/old-product".to_string(),
            "/gone.html".to_string(),
        ];
        keys.extend((1..=PAGES).map(|n| format!("/catalogue/page-{n}.html")));
        keys.extend((0..CATEGORIES.len()).map(|c| self.category_path(c)));
        keys.extend(
            self.products[..=MOVED]
                .iter()
                .filter(|p| p.idx != FLAKY)
                .map(Product::path),
        );
        keys
    }

    // --------------------------------------------------------------------------------
    // rendering

    fn page(title: &str, body: &str) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{} | Test Books</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n",
            escape(title)
        )
    }

    fn home(&self) -> String {
        let mut b = String::from(
            "<div class=\"page_inner\">\n<h2>All products</h2>\n<ul class=\"pager\">\n",
        );
        for n in 1..=PAGES {
            let _ = writeln!(b, "<li><a href=\"catalogue/page-{n}.html\">{n}</a></li>");
        }
        b.push_str("</ul>\n<ul class=\"nav nav-list\">\n");
        b.push_str("<li><a href=\"catalogue/category/books_1/index.html\">Books</a></li>\n");
        for (c, name) in CATEGORIES.iter().enumerate() {
            let href = if c % 2 == 0 {
                self.category_path(c)
            } else {
                format!("./{}", &self.category_path(c)[1..])
            };
            let _ = writeln!(b, "<li><a href=\"{href}\">{}</a></li>", escape(name));
        }
        b.push_str("</ul>\n<h3>Featured</h3>\n<ol>\n");
        for (i, p) in self.listed().iter().take(12).enumerate() {
            let href = self.product_href(p, "catalogue/", i);
            let _ = writeln!(
                b,
                "<li><a href=\"{}\">{}</a></li>",
                escape(&href),
                escape(&p.title)
            );
        }
        b.push_str("</ol>\n");
        b.push_str("<p><a href=\"index.html\">Home</a> <a href=\"/#top\">Top</a></p>\n");
        b.push_str("<p><a href=\"/search.html?q=books&amp;page=1\">Search</a></p>\n");
        b.push_str("<p><a href=\"/old-product\">An old favourite</a></p>\n");
        b.push_str("<p><a href=\"gone.html\">Discontinued</a></p>\n");
        b.push_str("<p><a href=\"/private/catalogue/secret_1/index.html\">Staff picks</a>\n");
        b.push_str("<a href=\"private/catalogue/secret_2/index.html#x\">Staff only</a></p>\n");
        b.push_str(
            "<p><a href=\"mailto:shop@example.com\">Mail</a> \
                    <a href=\"javascript:void(0)\">Menu</a> \
                    <a href=\"http://example.com/elsewhere\">Elsewhere</a></p>\n",
        );
        b.push_str("</div>");
        Self::page("Home", &b)
    }

    fn listing(&self, n: usize) -> String {
        let mut b = format!("<h1>All products, page {n}</h1>\n<ol class=\"row\">\n");
        for p in &self.listed()[(n - 1) * PER_PAGE..n * PER_PAGE] {
            // Like books.toscrape.com: an image link and a title link per product.
            let img = self.product_href(p, "", p.idx);
            let txt = self.product_href(p, "", p.idx + 5);
            let _ = writeln!(
                b,
                "<li><article class=\"product_pod\"><a href=\"{}\"><img src=\"{}\" alt=\"\"></a>\n\
                 <h3><a href=\"{}\" title=\"{t}\">{t}</a></h3>\n<p class=\"price_color\">{}</p></article></li>",
                escape(&img),
                escape(&p.image_src()),
                escape(&txt),
                escape(&p.price),
                t = escape(&p.title),
            );
        }
        b.push_str("</ol>\n<ul class=\"pager\">\n");
        if n > 1 {
            let _ = writeln!(
                b,
                "<li class=\"previous\"><a href=\"page-{}.html\">previous</a></li>",
                n - 1
            );
        }
        if n < PAGES {
            let _ = writeln!(
                b,
                "<li class=\"next\"><a href=\"page-{}.html\">next</a></li>",
                n + 1
            );
        }
        b.push_str("</ul>\n");
        let search = match n {
            1 => "/search.html?page=1&amp;q=books",
            2 => "/search.html?q=books&amp;page=1&amp;utm_campaign=spring",
            3 => "/search.html?q=books&amp;page=2",
            4 => "/search.html?page=2&amp;utm_source=x&amp;q=books#results",
            _ => "../search.html?q=books&amp;page=1",
        };
        let _ = writeln!(
            b,
            "<p><a href=\"{search}\">Search</a> <a href=\"../\">Home</a></p>"
        );
        Self::page(&format!("Page {n}"), &b)
    }

    fn category(&self, c: usize) -> String {
        let mut b = format!("<h1>{}</h1>\n<ol class=\"row\">\n", escape(CATEGORIES[c]));
        for p in self.listed().iter().filter(|p| p.category == c) {
            let href = self.product_href(p, "../../../", p.idx + 3);
            let _ = writeln!(
                b,
                "<li><a href=\"{}\">{}</a></li>",
                escape(&href),
                escape(&p.title)
            );
        }
        b.push_str("</ol>\n<p><a href=\"../../../../index.html\">Home</a></p>\n");
        Self::page(CATEGORIES[c], &b)
    }

    fn all_categories(&self) -> String {
        let mut b = String::from("<h1>Books</h1>\n<ul>\n");
        for (c, name) in CATEGORIES.iter().enumerate() {
            let href = format!(
                "../{}",
                &self.category_path(c)["/catalogue/category/".len()..]
            );
            let _ = writeln!(b, "<li><a href=\"{href}\">{}</a></li>", escape(name));
        }
        b.push_str("</ul>\n<p><a href=\"../../page-1.html\">All products</a></p>\n");
        Self::page("Books", &b)
    }

    fn search(&self, page: &str) -> String {
        let b = format!(
            "<h1>Search results, page {}</h1>\n<p><a href=\"/catalogue/page-1.html\">Browse</a> \
             <a href=\"/\">Home</a></p>",
            escape(page)
        );
        Self::page("Search", &b)
    }

    fn product(&self, p: &Product) -> String {
        let mut b = String::new();
        let _ = write!(
            b,
            "<ul class=\"breadcrumb\">\n\
             <li><a href=\"../../index.html\">Home</a></li>\n\
             <li><a href=\"../category/books_1/index.html\">Books</a></li>\n\
             <li><a href=\"..{cat}\">{cat_name}</a></li>\n\
             <li class=\"active\">{title}</li>\n</ul>\n\
             <article class=\"product_page\">\n<div class=\"row\">\n\
             <div class=\"col-sm-6\"><div id=\"product_gallery\"><div class=\"item active\">\
             <img src=\"{img}\" alt=\"{title}\"></div></div></div>\n\
             <div class=\"col-sm-6 product_main\">\n<h1>{title_html}</h1>\n\
             <p class=\"price_color\">{price}</p>\n\
             <p class=\"instock availability\">In stock</p>\n</div>\n</div>\n\
             <div id=\"product_description\"><p>A fine book about {title}.</p></div>\n</article>\n",
            cat = &self.category_path(p.category)["/catalogue".len()..],
            cat_name = escape(CATEGORIES[p.category]),
            title = escape(&p.title),
            img = escape(&p.image_src()),
            title_html = p.title_html(),
            price = escape(&p.price),
        );
        b.push_str("<section class=\"related\"><h2>You may also like</h2>\n<ol>\n");
        for (k, step) in [1usize, 17].into_iter().enumerate() {
            let r = &self.products[(p.idx + step) % LISTED];
            let href = self.product_href(r, "../", p.idx + 7 * k + 1);
            let _ = writeln!(
                b,
                "<li><a href=\"{}\">{}</a></li>",
                escape(&href),
                escape(&r.title)
            );
        }
        b.push_str("</ol>\n</section>\n");
        if p.idx != MOVED {
            // No self-links on the moved page: nothing but the redirect leads to it, so
            // its item can only come from the redirected response (rules matched and
            // `image` resolved against the final URL), and it is fetched exactly once
            // (the dupefilter holds `/old-product`, not the final URL).
            b.push_str(
                "<p><a href=\"#top\">Top</a> <a href=\"index.html#reviews\">Reviews</a></p>\n",
            );
        }
        if p.idx % 25 == 0 {
            let k = 1 + (p.idx / 25) % PRIVATE;
            let href = if p.idx % 50 == 0 {
                format!("../..{}", Self::private_path(k))
            } else {
                format!("/catalogue/..{}", Self::private_path(k))
            };
            let _ = writeln!(b, "<p><a href=\"{href}\">Staff notes</a></p>");
        }
        Self::page(&p.title, &b)
    }

    fn private(&self, k: usize) -> String {
        let b = format!(
            "<ul class=\"breadcrumb\"><li><a href=\"/\">Home</a></li></ul>\n\
             <div class=\"item\"><img src=\"secret.jpg\" alt=\"\"></div>\n\
             <h1>Secret {k}</h1>\n<p class=\"price_color\">£0.00</p>"
        );
        Self::page("Private", &b)
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

impl Model {
    /// The answer to a request for `path` (percent-decoded) with `query`; `nth` counts
    /// the requests of this page so far, this one included.
    pub fn reply(&self, path: &str, query: Option<&str>, nth: u32) -> Reply {
        match path {
            "/robots.txt" => return Reply::Text("User-agent: *\nDisallow: /private/\n".into()),
            "/" | "/index.html" => return Reply::Html(200, self.home()),
            "/catalogue/category/books_1/index.html" => {
                return Reply::Html(200, self.all_categories())
            }
            "/search.html" => {
                let page = query
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("page=")))
                    .unwrap_or("1");
                return Reply::Html(200, self.search(page));
            }
            "/old-product" => return Reply::Redirect(self.products[MOVED].path()),
            _ => {}
        }
        if let Some(n) = path
            .strip_prefix("/catalogue/page-")
            .and_then(|r| r.strip_suffix(".html"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=PAGES).contains(n))
        {
            return Reply::Html(200, self.listing(n));
        }
        if let Some(c) = (0..CATEGORIES.len()).find(|&c| self.category_path(c) == path) {
            return Reply::Html(200, self.category(c));
        }
        if let Some(k) = (1..=PRIVATE).find(|&k| Model::private_path(k) == path) {
            return Reply::Html(200, self.private(k));
        }
        let product = path
            .strip_prefix("/catalogue/")
            .and_then(|r| r.strip_suffix("/index.html"))
            .and_then(|slug| self.product_by_slug(slug));
        match product {
            Some(p) if p.idx == FLAKY && nth == 1 => {
                Reply::Html(500, Model::page("Error", "<h1>Internal error</h1>"))
            }
            Some(p) => Reply::Html(200, self.product(p)),
            None => Reply::Html(404, Model::page("Not found", "<h1>Not found</h1>")),
        }
    }

    /// The items a correct crawl from the home page stores, and nothing else.
    pub fn expected_items(&self) -> Vec<ExpectedItem> {
        self.products[..=MOVED]
            .iter()
            .map(|p| self.item(p))
            .collect()
    }

    /// A product page no page links to (for seeding it directly).
    pub fn seed_only_url(&self) -> String {
        format!("{}{}", self.base(), self.products[SEED_ONLY].path())
    }

    /// The item of [`Model::seed_only_url`].
    pub fn seed_only_item(&self) -> ExpectedItem {
        self.item(&self.products[SEED_ONLY])
    }

    /// Request key of the seed-only page.
    pub fn seed_only_key(&self) -> String {
        self.products[SEED_ONLY].path()
    }

    /// Request key of the page that fails once with 500.
    pub fn flaky_key(&self) -> String {
        self.products[FLAKY].path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_consistent() {
        let m = Model::new(8080);
        let slugs: std::collections::HashSet<_> = m.products.iter().map(|p| &p.slug).collect();
        assert_eq!(slugs.len(), m.products.len(), "slugs are unique");
        let keys = m.page_keys();
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "page keys are unique");
        assert!(m.products[TILDE].slug.contains('~'));
        // Every listed product is on a listing page and a category page.
        for p in m.listed() {
            assert!(m.listing(p.idx / PER_PAGE + 1).contains(&escape(&p.title)));
            assert!(m.category(p.category).contains(&escape(&p.title)));
        }
        // Nothing links to the moved or the seed-only product.
        let pages: Vec<String> = (1..=PAGES)
            .map(|n| m.listing(n))
            .chain((0..CATEGORIES.len()).map(|c| m.category(c)))
            .chain(m.listed().iter().map(|p| m.product(p)))
            .chain([m.home(), m.all_categories()])
            .collect();
        for hidden in [MOVED, SEED_ONLY] {
            let p = &m.products[hidden];
            assert!(
                pages.iter().all(|page| !page.contains(&p.slug)),
                "{} is linked",
                p.slug
            );
        }
    }
}
