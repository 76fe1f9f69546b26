//! A site of many hosts: one axum server per loopback address (127.0.0.2, 127.0.0.3,
//! …: distinct hosts on Linux, where all of 127/8 is local), each host with its own
//! pages, robots.txt and latency. Every request is logged with its host, path, the
//! peer's address (which fetcher sent it, when fetchers bind `--local-address`), and
//! when it started and ended, so politeness can be checked from the site's side.
//!
//! The link graph is data ([`HostSpec::pages`]), so the pages and robots.txt a correct
//! crawl fetches, and the items it stores, come from the same graph the server renders
//! ([`HostsSite::expected_pages`], a BFS from the seeds up to `max_depth`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::json;
use tokio::task::JoinHandle;

use super::catalogue::ExpectedItem;

/// A link from one page to a page of some host of the site.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Index of the host in the site.
    pub host: usize,
    /// Its path, e.g. `/p/3-1-4.html`.
    pub path: String,
}

/// One page of a host.
#[derive(Debug, Clone, Default)]
pub struct PageSpec {
    /// Links, in page order (rendered as absolute URLs).
    pub links: Vec<Link>,
    /// A product page (an item: `<h1>` title, `p.price` price); otherwise a listing.
    pub product: bool,
    /// Latency of this page instead of the host's.
    pub latency: Option<Duration>,
    /// The first this many requests of the page answer 503.
    pub fail_first: u32,
}

/// A host's robots.txt.
#[derive(Debug, Clone, Default)]
pub struct Robots {
    /// `Crawl-delay:` in seconds.
    pub crawl_delay_secs: Option<u32>,
    /// `Disallow:` path prefixes.
    pub disallow: Vec<String>,
    /// The first this many requests of robots.txt answer 503, the later ones 200.
    pub fail_first: u32,
}

impl Robots {
    fn body(&self) -> String {
        let mut b = String::from("User-agent: *\n");
        if let Some(secs) = self.crawl_delay_secs {
            let _ = writeln!(b, "Crawl-delay: {secs}");
        }
        for prefix in &self.disallow {
            let _ = writeln!(b, "Disallow: {prefix}");
        }
        b
    }
}

/// One host of the site.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Its address (and so its host name in URLs).
    pub ip: Ipv4Addr,
    /// Path -> page.
    pub pages: BTreeMap<String, PageSpec>,
    /// robots.txt; `None` answers 404 (everything allowed).
    pub robots: Option<Robots>,
    /// Added to every response of the host (pages and robots.txt).
    pub latency: Duration,
}

impl HostSpec {
    /// A host with no pages yet.
    pub fn new(ip: Ipv4Addr) -> HostSpec {
        HostSpec {
            ip,
            pages: BTreeMap::new(),
            robots: None,
            latency: Duration::ZERO,
        }
    }

    /// A small shop as host `index` of a site: `/` links `listings` listing pages
    /// `/list/<l>.html`, each linking `per_listing` product pages `/p/<index>-<l>-<j>.html`;
    /// every product links back to `/` and its listing.
    pub fn catalogue(index: usize, ip: Ipv4Addr, listings: usize, per_listing: usize) -> HostSpec {
        let mut host = HostSpec::new(ip);
        let link = |path: String| Link { host: index, path };
        let home: Vec<Link> = (1..=listings)
            .map(|l| link(format!("/list/{l}.html")))
            .collect();
        host.pages.insert("/".into(), PageSpec::listing(home));
        for l in 1..=listings {
            let listing = format!("/list/{l}.html");
            let products: Vec<String> = (1..=per_listing)
                .map(|j| format!("/p/{index}-{l}-{j}.html"))
                .collect();
            let mut links: Vec<Link> = products.iter().cloned().map(link).collect();
            links.push(link("/".into()));
            host.pages.insert(listing.clone(), PageSpec::listing(links));
            for p in products {
                let back = vec![link("/".into()), link(listing.clone())];
                host.pages.insert(p, PageSpec::product(back));
            }
        }
        host
    }

    /// Pages of the host (robots.txt aside).
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }
}

impl PageSpec {
    /// A listing page with these links.
    pub fn listing(links: Vec<Link>) -> PageSpec {
        PageSpec {
            links,
            ..PageSpec::default()
        }
    }

    /// A product page (an item) with these links.
    pub fn product(links: Vec<Link>) -> PageSpec {
        PageSpec {
            links,
            product: true,
            ..PageSpec::default()
        }
    }
}

/// `127.0.0.<2 + i>` for `i in 0..n`: `n` distinct loopback hosts.
pub fn loopback_ips(n: usize) -> Vec<Ipv4Addr> {
    assert!(n <= 250, "at most 250 loopback hosts");
    (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect()
}

/// One request the site received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Index of the host it was sent to.
    pub host: usize,
    /// Its `Host` header.
    pub host_header: String,
    /// Its path (without the query).
    pub path: String,
    /// The address it came from: `127.0.1.k` is fetcher k when fetchers bind
    /// `--local-address`.
    pub peer: IpAddr,
    /// When the site began to handle it.
    pub start: Instant,
    /// When the response was produced (or the client went away); `None` while in flight.
    pub end: Option<Instant>,
}

impl Hit {
    /// The fetcher that sent it: k for a peer address `127.0.1.k`.
    pub fn fetcher(&self) -> Option<usize> {
        match self.peer {
            IpAddr::V4(ip) if ip.octets()[..3] == [127, 0, 1] => Some(ip.octets()[3] as usize),
            _ => None,
        }
    }

    /// Who sent it, for messages: `fetcher k` or the address.
    pub fn sender(&self) -> String {
        match self.fetcher() {
            Some(k) => format!("fetcher {k}"),
            None => self.peer.to_string(),
        }
    }
}

struct SiteState {
    hosts: Vec<HostSpec>,
    ports: Mutex<Vec<u16>>,
    log: Mutex<Vec<Hit>>,
    /// (host, path) -> requests so far (for `fail_first`).
    counts: Mutex<BTreeMap<(usize, String), u32>>,
}

impl SiteState {
    fn base(&self, host: usize) -> String {
        let port = self.ports.lock().expect("ports")[host];
        format!("http://{}:{port}", self.hosts[host].ip)
    }
}

#[derive(Clone)]
struct HostCtx {
    site: Arc<SiteState>,
    host: usize,
}

/// The running site.
pub struct HostsSite {
    state: Arc<SiteState>,
    tasks: Vec<JoinHandle<()>>,
}

impl HostsSite {
    /// Serves each host on its own address (a free port each).
    pub async fn start(hosts: Vec<HostSpec>) -> HostsSite {
        let state = Arc::new(SiteState {
            hosts,
            ports: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
        });
        let mut listeners = Vec::new();
        for spec in &state.hosts {
            let listener = tokio::net::TcpListener::bind((spec.ip, 0))
                .await
                .unwrap_or_else(|e| panic!("bind the test site on {}: {e}", spec.ip));
            let port = listener.local_addr().expect("site addr").port();
            state.ports.lock().expect("ports").push(port);
            listeners.push(listener);
        }
        let mut tasks = Vec::new();
        for (host, listener) in listeners.into_iter().enumerate() {
            let ctx = HostCtx {
                site: state.clone(),
                host,
            };
            let app = Router::new().fallback(handle).with_state(ctx);
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await;
            }));
        }
        HostsSite { state, tasks }
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.state.hosts.len()
    }

    /// The spec of host `host`.
    pub fn spec(&self, host: usize) -> &HostSpec {
        &self.state.hosts[host]
    }

    /// Host `host`'s name as in its URLs (the address; what partitioning hashes).
    pub fn host_name(&self, host: usize) -> String {
        self.state.hosts[host].ip.to_string()
    }

    /// `http://<ip>:<port>` of host `host`.
    pub fn base(&self, host: usize) -> String {
        self.state.base(host)
    }

    /// The URL of a page.
    pub fn url(&self, link: &Link) -> String {
        format!("{}{}", self.base(link.host), link.path)
    }

    /// `http://<ip>:<port>/` of every host.
    pub fn home_urls(&self) -> Vec<String> {
        (0..self.hosts())
            .map(|h| format!("{}/", self.base(h)))
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Hit> {
        self.state.log.lock().expect("site log").clone()
    }

    /// Requests so far to `host`, by start.
    pub fn requests_to(&self, host: usize) -> Vec<Hit> {
        let mut reqs: Vec<Hit> = self.log().into_iter().filter(|r| r.host == host).collect();
        reqs.sort_by_key(|r| r.start);
        reqs
    }

    /// Distinct pages of `host` requested so far (robots.txt aside).
    pub fn pages_fetched(&self, host: usize) -> usize {
        self.requests_to(host)
            .iter()
            .filter(|r| r.path != "/robots.txt")
            .map(|r| r.path.clone())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Requests per page (`/robots.txt` included), as (host, path) -> count.
    pub fn counts_by_page(&self) -> BTreeMap<(usize, String), usize> {
        let mut counts = BTreeMap::new();
        for r in self.log() {
            *counts.entry((r.host, r.path)).or_insert(0) += 1;
        }
        counts
    }

    /// Whether a page is disallowed by its host's robots.txt.
    pub fn disallowed(&self, link: &Link) -> bool {
        self.state.hosts[link.host]
            .robots
            .as_ref()
            .is_some_and(|r| r.disallow.iter().any(|p| link.path.starts_with(p)))
    }

    /// The pages a correct crawl from `seeds` fetches, with their depth: a BFS over the
    /// link graph, pages disallowed by robots.txt neither fetched nor followed, links
    /// of pages at `max_depth` not followed.
    pub fn expected_pages(&self, seeds: &[Link], max_depth: u32) -> BTreeMap<Link, u32> {
        let mut depth: BTreeMap<Link, u32> = BTreeMap::new();
        let mut queue = VecDeque::new();
        for s in seeds {
            if !self.disallowed(s) && !depth.contains_key(s) {
                depth.insert(s.clone(), 0);
                queue.push_back(s.clone());
            }
        }
        while let Some(page) = queue.pop_front() {
            let d = depth[&page];
            if d >= max_depth {
                continue;
            }
            let Some(spec) = self.state.hosts[page.host].pages.get(&page.path) else {
                continue;
            };
            for link in &spec.links {
                if !self.disallowed(link) && !depth.contains_key(link) {
                    depth.insert(link.clone(), d + 1);
                    queue.push_back(link.clone());
                }
            }
        }
        depth
    }

    /// The items a correct crawl from `seeds` stores: the product pages among
    /// [`HostsSite::expected_pages`].
    pub fn expected_items(&self, seeds: &[Link], max_depth: u32) -> Vec<ExpectedItem> {
        self.expected_pages(seeds, max_depth)
            .keys()
            .filter(|l| self.page(l).is_some_and(|p| p.product))
            .map(|l| ExpectedItem {
                item_type: "product".to_string(),
                url: self.url(l),
                data: json!({ "title": self.title(l), "price": price(l) }),
            })
            .collect()
    }

    /// Every host's `/`, as seeds.
    pub fn home_links(&self) -> Vec<Link> {
        (0..self.hosts())
            .map(|host| Link {
                host,
                path: "/".into(),
            })
            .collect()
    }

    fn page(&self, link: &Link) -> Option<&PageSpec> {
        self.state.hosts[link.host].pages.get(&link.path)
    }

    fn title(&self, link: &Link) -> String {
        format!("Product {} on {}", link.path, self.host_name(link.host))
    }
}

impl Drop for HostsSite {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The price shown on a product page: derived from its path, so it is checked too.
fn price(link: &Link) -> String {
    let h = link.path.bytes().fold(link.host as u32, |a, b| {
        a.wrapping_mul(31).wrapping_add(b.into())
    });
    format!("£{}.{:02}", 5 + h % 90, h % 100)
}

/// Sets a request's end when dropped: on the response, or when the client went away
/// mid-response (a killed fetcher).
struct EndOnDrop {
    site: Arc<SiteState>,
    index: usize,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(r) = self.site.log.lock().expect("site log").get_mut(self.index) {
            r.end = Some(Instant::now());
        }
    }
}

async fn handle(
    State(ctx): State<HostCtx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let start = Instant::now();
    let site = ctx.site.clone();
    let path = req.uri().path().to_string();
    let index = {
        let mut log = site.log.lock().expect("site log");
        log.push(Hit {
            host: ctx.host,
            host_header: req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            path: path.clone(),
            peer: peer.ip(),
            start,
            end: None,
        });
        log.len() - 1
    };
    let _end = EndOnDrop {
        site: site.clone(),
        index,
    };
    let nth = {
        let mut counts = site.counts.lock().expect("site counts");
        let n = counts.entry((ctx.host, path.clone())).or_insert(0);
        *n += 1;
        *n
    };
    let spec = &site.hosts[ctx.host];
    let page = spec.pages.get(&path);
    let latency = page.and_then(|p| p.latency).unwrap_or(spec.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (status, content_type, body) = if path == "/robots.txt" {
        match &spec.robots {
            None => (404, "text/plain", "not found".to_string()),
            Some(r) if nth <= r.fail_first => (503, "text/plain", "try later".to_string()),
            Some(r) => (200, "text/plain", r.body()),
        }
    } else {
        match page {
            None => (404, "text/html", html("Not found", "<h1>Not found</h1>")),
            Some(p) if nth <= p.fail_first => {
                (503, "text/html", html("Busy", "<h1>Try again</h1>"))
            }
            Some(p) => (200, "text/html", render(&site, ctx.host, &path, p)),
        }
    };
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header(
            header::CONTENT_TYPE,
            format!("{content_type}; charset=utf-8"),
        )
        .body(Body::from(body))
        .expect("valid response")
}

fn html(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         \n<body>\n{body}\n</body></html>\n"
    )
}

fn render(site: &SiteState, host: usize, path: &str, page: &PageSpec) -> String {
    let link = Link {
        host,
        path: path.to_string(),
    };
    let mut body = String::new();
    if page.product {
        let title = format!("Product {path} on {}", site.hosts[host].ip);
        let _ = writeln!(
            body,
            "<h1>{title}</h1>\n<p class=\"price\">{}</p>",
            price(&link)
        );
    } else {
        let _ = writeln!(body, "<h2>Listing {path}</h2>");
    }
    body.push_str("<ul>\n");
    for l in &page.links {
        let _ = writeln!(
            body,
            "<li><a href=\"{}{}\">{}</a></li>",
            site.base(l.host),
            l.path,
            l.path
        );
    }
    body.push_str("</ul>");
    html(path, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pages_are_a_bfs_within_max_depth_obeying_robots() {
        let mut host = HostSpec::catalogue(0, Ipv4Addr::new(127, 0, 0, 2), 2, 3);
        host.robots = Some(Robots {
            disallow: vec!["/list/2".into()],
            ..Robots::default()
        });
        let state = SiteState {
            hosts: vec![host],
            ports: Mutex::new(vec![8000]),
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
        };
        let site = HostsSite {
            state: Arc::new(state),
            tasks: Vec::new(),
        };
        let seeds = site.home_links();
        let all = site.expected_pages(&seeds, 10);
        // `/`, `/list/1.html` and its 3 products; `/list/2.html` is disallowed.
        assert_eq!(all.len(), 5);
        assert_eq!(site.expected_pages(&seeds, 1).len(), 2);
        assert_eq!(site.expected_items(&seeds, 10).len(), 3);
    }
}
