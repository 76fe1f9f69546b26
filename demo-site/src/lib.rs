//! A deterministic e-commerce-like site: what `jetcrawl demo` crawls, and what the
//! benchmarks measure (`jetcrawl-bench` re-exports it as `demo_site`).
//!
//! `pages` product pages (`/product/{id}`, 15–25 KB each), spread round-robin over
//! `max(1, pages / 1000)` categories whose listings (`/category/{c}/page/{n}`, 20 products
//! a page) paginate to page 1, n±2, next and last, so every page is a few hops from `/`.
//! Related-product links spell one page several ways (absolute, `#reviews`,
//! `?utm_source=related`, `../product/{id}`); the server ignores the query, so every
//! spelling gets the same page. `/cart/add/{id}` is linked but disallowed by `/robots.txt`.
//!
//! Pages are generated per request from precomputed boilerplate, a splitmix64 hash of the
//! id and small word lists: same URL, same bytes; no locks, no templates, no regex.
//!
//! The site counts the requests each page gets (atomics, one per page); `GET
//! /_bench/hits` (linked from nowhere) reports them, so a benchmark can check that a
//! crawl fetched every page exactly once.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;

/// Products per category listing page.
const PER_PAGE: usize = 20;
/// Related-product links on a product page.
const RELATED: u64 = 10;
/// Products featured on the home page.
const FEATURED: usize = 8;
/// Links in the nav menu and the footer of every page.
const NAV_LINKS: usize = 30;
const FOOTER_LINKS: usize = 20;
/// Room left after the description for the related list and the footer.
const TAIL_RESERVE: usize = 1_400;

// Hash salts: one independent stream per property of a product.
const NAME: u64 = 1;
const PRICE: u64 = 2;
const STOCK: u64 = 3;
const SIZE: u64 = 4;
const TEXT: u64 = 5;
const FEATURE: u64 = 6;
const RATING: u64 = 7;
const RELATE: u64 = 100;

const ADJECTIVES: &[&str] = &[
    "Walnut", "Oak", "Brass", "Linen", "Copper", "Marble", "Velvet", "Ceramic", "Bamboo", "Slate",
    "Woollen", "Rattan", "Cedar", "Leather", "Glass", "Steel",
];
const NOUNS: &[&str] = &[
    "Lamp", "Armchair", "Table", "Bookcase", "Rug", "Clock", "Stool", "Planter", "Frame", "Tray",
    "Runner", "Cushion", "Mirror", "Vase", "Basket", "Bench",
];
const DEPARTMENTS: &[&str] = &[
    "Lighting", "Seating", "Tables", "Storage", "Rugs", "Clocks", "Kitchen", "Bedroom", "Bathroom",
    "Garden", "Office", "Textiles", "Decor", "Mirrors", "Plants", "Outdoor", "Kids", "Dining",
    "Candles", "Frames",
];
const FILLER: &[&str] = &[
    "oak", "finish", "crafted", "sturdy", "designed", "every", "room", "light", "natural",
    "texture", "handmade", "durable", "classic", "modern", "detail", "comfort", "warm", "tone",
    "easy", "clean", "assembly", "included", "home", "space", "style", "quality", "material",
    "fairly", "sourced", "soft", "edge", "gentle", "curve", "solid", "frame", "smooth", "surface",
    "bright", "elegant", "simple", "perfect", "gift", "daily", "use", "timeless", "shape",
    "colour", "by", "hand", "polished", "layer", "careful", "stitch", "matte", "woven", "fibre",
    "balanced", "weight", "compact", "generous", "with", "subtle", "grain", "pattern",
];
/// Classes the inline stylesheet styles (a few KB, like a real shop's critical CSS).
const COMPONENTS: &str = "site-header logo menu menu-item breadcrumb breadcrumb-category \
    product-main product-title price sku availability add-to-basket description related \
    product-card listing-title listing-count products pagination current next last featured \
    categories reviews rating footer-links legal newsletter badge";
const SCRIPT: &str = r#"<script>
(function () {
  var dataLayer = (window.dataLayer = window.dataLayer || []);
  function track(event, detail) {
    dataLayer.push({ event: event, detail: detail, at: Date.now() });
  }
  document.addEventListener('DOMContentLoaded', function () {
    track('page_view', { path: location.pathname, referrer: document.referrer });
    document.querySelectorAll('.related a, .add-to-basket').forEach(function (a, i) {
      a.addEventListener('click', function () { track('click', { position: i, href: a.href }); });
    });
  });
})();
</script>
"#;

/// The site: its size and the boilerplate every page shares, rendered once.
pub struct DemoSite {
    pages: usize,
    categories: usize,
    /// Category display names: "Lighting", …, "Lighting 2", ….
    names: Vec<String>,
    /// From the shared `<meta>` tags through the inline CSS, header and nav to `<main>`.
    top: String,
    /// From `</main>` through the footer links and the script to `</html>`.
    bottom: String,
    /// Requests per crawlable page: home, then products by id, then listings.
    hits: Vec<AtomicU32>,
    /// Where each category's listings start in `hits`.
    listing_offsets: Vec<usize>,
    /// Requests for anything else (robots.txt, sitemap, cart, 404s).
    other_hits: AtomicU64,
}

/// What `/_bench/hits` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hits {
    /// Crawlable pages requested at least once.
    pub pages: u64,
    /// Crawlable pages requested more than once.
    pub repeated: u64,
    /// Requests for crawlable pages, in all.
    pub requests: u64,
    /// Requests for anything else.
    pub other: u64,
}

impl Hits {
    /// Parses the `/_bench/hits` body (`key value` lines).
    pub fn parse(text: &str) -> Option<Hits> {
        let mut hits = Hits::default();
        for line in text.lines() {
            let (key, value) = line.split_once(' ')?;
            let value: u64 = value.trim().parse().ok()?;
            match key {
                "pages" => hits.pages = value,
                "repeated" => hits.repeated = value,
                "requests" => hits.requests = value,
                "other" => hits.other = value,
                _ => {}
            }
        }
        Some(hits)
    }
}

impl DemoSite {
    /// A site of `pages` product pages and `max(1, pages / 1000)` categories.
    pub fn new(pages: usize) -> DemoSite {
        let categories = (pages / 1000).max(1);
        let names = (0..categories).map(|c| match c / DEPARTMENTS.len() {
            0 => DEPARTMENTS[c].to_string(),
            round => format!("{} {}", DEPARTMENTS[c % DEPARTMENTS.len()], round + 1),
        });
        let mut site = DemoSite {
            pages,
            categories,
            names: names.collect(),
            top: String::new(),
            bottom: String::new(),
            hits: Vec::new(),
            listing_offsets: Vec::new(),
            other_hits: AtomicU64::new(0),
        };
        site.top = site.render_top();
        site.bottom = site.render_bottom();
        let mut offset = 1 + pages;
        for c in 0..categories {
            site.listing_offsets.push(offset);
            offset += site.listing_pages(c);
        }
        site.hits = (0..offset).map(|_| AtomicU32::new(0)).collect();
        site
    }

    /// Product pages: exactly the items a complete crawl extracts.
    pub fn products(&self) -> usize {
        self.pages
    }

    /// Distinct pages a complete crawl fetches: home, every listing page, every product
    /// (not `robots.txt`, the sitemap, or the disallowed `/cart/` pages).
    pub fn crawlable_pages(&self) -> usize {
        let listings: usize = (0..self.categories).map(|c| self.listing_pages(c)).sum();
        1 + listings + self.pages
    }

    /// The site as an axum router (state included).
    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(Arc::new(self))
    }

    fn category_size(&self, c: usize) -> usize {
        self.pages.saturating_sub(c).div_ceil(self.categories)
    }

    /// Listing pages of category `c` (at least one, even when empty).
    fn listing_pages(&self, c: usize) -> usize {
        self.category_size(c).div_ceil(PER_PAGE).max(1)
    }

    /// The middle listing page of category `c`, linked from the home page: with page 1
    /// and the last page, it keeps every listing page a few `n+2` hops from home.
    fn middle_page(&self, c: usize) -> usize {
        self.listing_pages(c).div_ceil(2)
    }

    /// Request counts so far.
    pub fn hits(&self) -> Hits {
        let mut hits = Hits {
            other: self.other_hits.load(Ordering::Relaxed),
            ..Hits::default()
        };
        for n in &self.hits {
            let n = u64::from(n.load(Ordering::Relaxed));
            hits.pages += u64::from(n > 0);
            hits.repeated += u64::from(n > 1);
            hits.requests += n;
        }
        hits
    }

    fn count(&self, page: Option<usize>) {
        if let Some(n) = page.and_then(|i| self.hits.get(i)) {
            n.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The body served for `path` (query dropped) on `host`, and its status: what the
    /// parser's differential tests read without a server. Counts as a request.
    pub fn body(&self, path: &str, host: &str) -> (u16, String) {
        let (status, _, body) = self.respond(path, host);
        (status.as_u16(), body)
    }

    /// The reply to a GET of `path` (query already dropped); `host` spells absolute links.
    fn respond(&self, path: &str, host: &str) -> Reply {
        if path == "/_bench/hits" {
            let h = self.hits();
            let body = format!(
                "pages {}\nrepeated {}\nrequests {}\nother {}\n",
                h.pages, h.repeated, h.requests, h.other
            );
            return (StatusCode::OK, "text/plain; charset=utf-8", body);
        }
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let id = |prefix| number(path.strip_prefix(prefix)?).filter(|&id| id < self.pages);
        let listing = path
            .strip_prefix("/category/")
            .and_then(|rest| rest.split_once("/page/"))
            .and_then(|(c, n)| Some((number(c)?, number(n)?)))
            .filter(|&(c, n)| c < self.categories && (1..=self.listing_pages(c)).contains(&n));
        let page = if path == "/" {
            Some(0)
        } else if let Some(id) = id("/product/") {
            Some(1 + id)
        } else {
            listing.map(|(c, n)| self.listing_offsets[c] + n - 1)
        };
        self.count(page);
        let (content_type, body) = if path == "/" {
            (HTML, self.home())
        } else if let Some(id) = id("/product/") {
            (HTML, self.product(id, host))
        } else if let Some((c, n)) = listing {
            (HTML, self.listing(c, n))
        } else if let Some(id) = id("/cart/add/") {
            let basket = format!("<!DOCTYPE html>\n<p>Product {id} added to your basket.</p>\n");
            (HTML, basket)
        } else if path == "/robots.txt" {
            let robots =
                format!("User-agent: *\nDisallow: /cart/\nSitemap: http://{host}/sitemap.xml\n");
            ("text/plain; charset=utf-8", robots)
        } else if path == "/sitemap.xml" {
            ("application/xml", self.sitemap(host))
        } else {
            let body = "<!DOCTYPE html>\n<h1>404 Not Found</h1>\n".to_string();
            return (StatusCode::NOT_FOUND, HTML, body);
        };
        (StatusCode::OK, content_type, body)
    }

    fn render_top(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str(
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"robots\" content=\"index, follow\">\n\
             <meta property=\"og:site_name\" content=\"Jetcrawl Demo Shop\">\n<style>\n",
        );
        for (i, class) in COMPONENTS.split_whitespace().enumerate() {
            let [a, b, c, d, e, f, g, h] = hash(i, 0).to_le_bytes();
            let (margin, padding, size, radius) = (a % 24, b % 12, c % 10, d % 8);
            let _ = writeln!(
                out,
                ".{class} {{ margin: {margin}px; padding: {padding}px; font-size: 1.{size}rem; \
                 border-radius: {radius}px; color: #{e:02x}{f:02x}{g:02x}; }}\n\
                 .{class}:hover {{ background: #{h:02x}{g:02x}{f:02x}; \
                 text-decoration: underline; }}"
            );
        }
        out.push_str(
            "</style>\n</head>\n<body>\n<header class=\"site-header\">\
             <a class=\"logo\" href=\"/\">Jetcrawl Demo Shop</a></header>\n\
             <nav class=\"menu\"><ul>\n<li class=\"menu-item\"><a href=\"/\">Home</a></li>\n",
        );
        for k in 0..NAV_LINKS - 1 {
            let c = k % self.categories;
            let n = 1 + (k / self.categories) % self.listing_pages(c);
            let _ = writeln!(
                out,
                "<li class=\"menu-item\"><a href=\"/category/{c}/page/{n}\">{}</a></li>",
                self.names[c]
            );
        }
        out.push_str("</ul></nav>\n<main>\n");
        out
    }

    fn render_bottom(&self) -> String {
        let mut out = String::with_capacity(3 * 1024);
        out.push_str("</main>\n<footer><div class=\"footer-links\"><ul>\n");
        for k in 0..FOOTER_LINKS {
            // Each category's footer links land evenly across its listing pages.
            let c = k % self.categories;
            let (j, spread) = (
                k / self.categories,
                (FOOTER_LINKS - c).div_ceil(self.categories),
            );
            let n = 1 + (2 * j + 1) * (self.listing_pages(c) - 1) / (2 * spread);
            let _ = writeln!(
                out,
                "<li><a href=\"/category/{c}/page/{n}\">{}, page {n}</a></li>",
                self.names[c]
            );
        }
        out.push_str(
            "</ul></div>\n<p class=\"legal\">© 2024 Jetcrawl Demo Shop Ltd. Prices include VAT. \
             Free delivery on orders over £50.</p>\n</footer>\n",
        );
        out.push_str(SCRIPT);
        out.push_str("</body>\n</html>\n");
        out
    }

    /// Writes the `<head>` up to `<main>`: per-page title and canonical, then the shared top.
    fn open(&self, out: &mut String, title: fmt::Arguments<'_>, path: fmt::Arguments<'_>) {
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title} | Jetcrawl Demo Shop</title>\n\
             <meta property=\"og:title\" content=\"{title}\">\n\
             <link rel=\"canonical\" href=\"{path}\">\n"
        );
        out.push_str(&self.top);
    }

    fn home(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.open(&mut out, format_args!("Home"), format_args!("/"));
        out.push_str("<h1>Welcome to the Jetcrawl Demo Shop</h1>\n<ul class=\"categories\">\n");
        for (c, name) in self.names.iter().enumerate() {
            let _ = writeln!(
                out,
                "<li><a href=\"/category/{c}/page/1\">{name}</a> \
                 <a href=\"/category/{c}/page/{}\">more</a></li>",
                self.middle_page(c)
            );
        }
        out.push_str("</ul>\n<section class=\"featured\">\n");
        for k in (0..FEATURED).take_while(|_| self.pages > 0) {
            card(&mut out, (hash(k, FEATURE) % self.pages as u64) as usize);
        }
        out.push_str("</section>\n");
        out.push_str(&self.bottom);
        out
    }

    fn listing(&self, c: usize, n: usize) -> String {
        let (size, last) = (self.category_size(c), self.listing_pages(c));
        let mut out = String::with_capacity(16 * 1024);
        let title = format_args!("{} — page {n} of {last}", self.names[c]);
        self.open(&mut out, title, format_args!("/category/{c}/page/{n}"));
        let _ = write!(
            out,
            "<h1 class=\"listing-title\">{}</h1>\n<p class=\"listing-count\">{size} products</p>\n\
             <section class=\"products\">\n",
            self.names[c]
        );
        for pos in (n - 1) * PER_PAGE..(n * PER_PAGE).min(size) {
            card(&mut out, c + pos * self.categories);
        }
        out.push_str("</section>\n<nav class=\"pagination\"><ul>\n");
        let page = |out: &mut String, class: &str, m: usize, label: fmt::Arguments<'_>| {
            let _ = writeln!(
                out,
                "<li class=\"{class}\"><a href=\"/category/{c}/page/{m}\">{label}</a></li>"
            );
        };
        page(&mut out, "first", 1, format_args!("First"));
        for m in n.saturating_sub(2).max(1)..=(n + 2).min(last) {
            let class = if m == n { "current" } else { "near" };
            page(&mut out, class, m, format_args!("{m}"));
        }
        if n < last {
            page(&mut out, "next", n + 1, format_args!("Next"));
        }
        page(&mut out, "last", last, format_args!("Last"));
        out.push_str("</ul></nav>\n");
        out.push_str(&self.bottom);
        out
    }

    fn product(&self, id: usize, host: &str) -> String {
        let p = Product::new(id);
        let c = id % self.categories;
        // 16–23.5 KB before the last paragraph: the description fills up to the target.
        let target = 16_000 + (hash(id, SIZE) % 7_500) as usize;
        let mut out = String::with_capacity(target + 2 * 1024);
        self.open(&mut out, format_args!("{p}"), format_args!("/product/{id}"));
        let _ = write!(
            out,
            "<ul class=\"breadcrumb\"><li><a href=\"/\">Home</a></li><li>\
             <a class=\"breadcrumb-category\" href=\"/category/{c}/page/1\">{}</a></li></ul>\n\
             <div class=\"product-main\">\n<h1 class=\"product-title\">{p}</h1>\n\
             <p class=\"price\">{}</p>\n<span class=\"sku\">SKU-{id:06}</span>\n",
            self.names[c],
            Price(p.pence),
        );
        match hash(id, STOCK) % 40 {
            0..8 => out.push_str("<p class=\"availability\">Out of stock</p>\n"),
            n => {
                let _ = writeln!(
                    out,
                    "<p class=\"availability\">In stock ({n} available)</p>"
                );
            }
        }
        let _ = write!(
            out,
            "<a class=\"add-to-basket\" href=\"/cart/add/{id}\">Add to basket</a> \
             <a href=\"#reviews\">Reviews</a>\n</div>\n<div class=\"description\">\n"
        );
        let until = target.saturating_sub(self.bottom.len() + TAIL_RESERVE);
        describe(&mut out, id, until);
        let rating = hash(id, RATING) % 20;
        let _ = write!(
            out,
            "</div>\n<section id=\"reviews\" class=\"reviews\"><p class=\"rating\">Rated {}.{} \
             out of 5</p></section>\n<h2>Related products</h2>\n<ul class=\"related\">\n",
            3 + rating / 10,
            rating % 10
        );
        // One page, five spellings: a crawler must canonicalize them to one fetch.
        for k in 0..RELATED {
            let r = (hash(id, RELATE + k) % self.pages as u64) as usize;
            out.push_str("<li><a href=\"");
            let _ = match k % 5 {
                0 => write!(out, "/product/{r}"),
                1 => write!(out, "http://{host}/product/{r}"),
                2 => write!(out, "/product/{r}#reviews"),
                3 => write!(out, "/product/{r}?utm_source=related"),
                _ => write!(out, "../product/{r}"),
            };
            let _ = writeln!(out, "\">{}</a></li>", Product::new(r));
        }
        out.push_str("</ul>\n");
        out.push_str(&self.bottom);
        out
    }

    fn sitemap(&self, host: &str) -> String {
        let mut out = String::with_capacity(100 + self.pages * (50 + host.len()));
        out.push_str(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
        );
        for id in 0..self.pages {
            let _ = writeln!(out, "<url><loc>http://{host}/product/{id}</loc></url>");
        }
        out.push_str("</urlset>\n");
        out
    }
}

/// Binds 127.0.0.1:`port` (0 = a free port), serves `site` on a task of the current
/// runtime (HTTP/1.1, keep-alive, `TCP_NODELAY`) and returns the bound address.
pub async fn serve(site: DemoSite, port: u16) -> std::io::Result<SocketAddr> {
    serve_on(site, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

/// [`serve`] on any address (`0.0.0.0:8080` to serve other containers).
pub async fn serve_on(site: DemoSite, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        // Best effort: a response is one write anyway.
        let _ = tcp.set_nodelay(true);
    });
    let app = site.router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("demo site stopped: {e}");
        }
    });
    Ok(bound)
}

async fn handle(State(site): State<Arc<DemoSite>>, uri: Uri, headers: HeaderMap) -> Response {
    // The Host header spells absolute links; anything odd in it falls back to loopback.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    let (status, content_type, body) = site.respond(uri.path(), host);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

const HTML: &str = "text/html; charset=utf-8";

/// Status, content type and body: a response before it meets HTTP.
type Reply = (StatusCode, &'static str, String);

/// A decimal id (digits only: no sign, no spaces).
fn number(s: &str) -> Option<usize> {
    let digits = !s.is_empty() && s.len() < 19 && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}

/// A product's name and price, derived from its id.
struct Product {
    id: usize,
    adjective: &'static str,
    noun: &'static str,
    pence: u64,
}

impl Product {
    fn new(id: usize) -> Product {
        let h = hash(id, NAME);
        Product {
            id,
            adjective: ADJECTIVES[h as usize % ADJECTIVES.len()],
            noun: NOUNS[(h >> 32) as usize % NOUNS.len()],
            pence: 199 + hash(id, PRICE) % 50_000,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Product {} — {} {}", self.id, self.adjective, self.noun)
    }
}

/// "£12.34".
struct Price(u64);

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "£{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// A listing card.
fn card(out: &mut String, id: usize) {
    let p = Product::new(id);
    let _ = writeln!(
        out,
        "<article class=\"product-card\"><a href=\"/product/{id}\">{p}</a> \
         <span class=\"price\">{}</span></article>",
        Price(p.pence)
    );
}

/// Paragraphs of filler sentences, chosen by `id`, until `out` is `until` bytes long.
fn describe(out: &mut String, id: usize, until: usize) {
    let mut rng = SplitMix(hash(id, TEXT));
    while out.len() < until {
        out.push_str("<p>");
        for _ in 0..3 + rng.next() % 4 {
            for w in 0..8 + rng.next() % 9 {
                let word = FILLER[(rng.next() % FILLER.len() as u64) as usize];
                if w == 0 {
                    out.push(word.as_bytes()[0].to_ascii_uppercase() as char);
                    out.push_str(&word[1..]);
                } else {
                    out.push(' ');
                    out.push_str(word);
                }
            }
            out.push_str(". ");
        }
        out.push_str("</p>\n");
    }
}

/// splitmix64: cheap, well mixed, deterministic.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One well-mixed value per (id, salt).
fn hash(id: usize, salt: u64) -> u64 {
    SplitMix((id as u64) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03)).next()
}

#[cfg(test)]
mod tests;
