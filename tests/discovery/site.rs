//! The discovery tests' site: a few hosts (127.0.0.2, 127.0.0.3, …), each serving
//! generated pages and whatever files a test puts on it, logging every request.
//!
//! Generated pages, on every host:
//! - `/`: links to `/p/1` … `/p/40`, then to every other host's `/`
//! - `/p/N`: item page (`<h1>`: `host H page N`), links to `/p/N+1` (an endless chain)
//! - `/cal?d=N`: links to `/cal?d=N+1` (a calendar: one parameter, endless values)
//! - `/loop/…`: links to `sub/` (a relative link that stacks path segments)
//! - `/grow/S`: links to `/grow/Sa` (a URL that grows with every click)
//! - `/stable/X`: never changes: `ETag: "stable-X"`, and `304 Not Modified` to an
//!   `If-None-Match` with that tag
//! - `/changing/X`: a new version at every request (`<h1>changing X vN</h1>`,
//!   `ETag: "vN"`), whatever the request says
//!
//! A file a test puts ([`DiscoverySite::put`]) overrides the generated page at its path
//! (query included), robots.txt included (default: allow all).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Router;
use tokio::task::JoinHandle;

/// Links from `/` to `/p/N`.
pub const HOME_LINKS: usize = 40;

/// A file served as is.
#[derive(Debug, Clone)]
pub struct File {
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
}

impl File {
    pub fn new(content_type: &'static str, body: impl Into<Vec<u8>>) -> File {
        File {
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// One request the site answered.
#[derive(Debug, Clone)]
pub struct Hit {
    pub host: usize,
    /// Path and query, as sent.
    pub target: String,
    pub headers: HeaderMap,
}

struct SiteState {
    ips: Vec<Ipv4Addr>,
    ports: Mutex<Vec<u16>>,
    log: Mutex<Vec<Hit>>,
    files: Mutex<HashMap<(usize, String), File>>,
}

impl SiteState {
    fn base(&self, host: usize) -> String {
        let port = self.ports.lock().expect("ports")[host];
        format!("http://{}:{port}", self.ips[host])
    }
}

#[derive(Clone)]
struct HostCtx {
    site: Arc<SiteState>,
    host: usize,
}

/// The running site.
pub struct DiscoverySite {
    state: Arc<SiteState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DiscoverySite {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DiscoverySite {
    /// `hosts` hosts, 127.0.0.2 on, a free port each.
    pub async fn start(hosts: usize) -> DiscoverySite {
        let ips: Vec<Ipv4Addr> = (0..hosts)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        let state = Arc::new(SiteState {
            ips: ips.clone(),
            ports: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            files: Mutex::new(HashMap::new()),
        });
        let mut listeners = Vec::new();
        for ip in &ips {
            let listener = tokio::net::TcpListener::bind((*ip, 0))
                .await
                .unwrap_or_else(|e| panic!("bind the test site on {ip}: {e}"));
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
        DiscoverySite { state, tasks }
    }

    /// `http://<ip>:<port>` of host `host`.
    pub fn base(&self, host: usize) -> String {
        self.state.base(host)
    }

    /// Serve `file` at `target` (path and query) of `host`.
    pub fn put(&self, host: usize, target: &str, file: File) {
        self.state
            .files
            .lock()
            .expect("files")
            .insert((host, target.to_string()), file);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Hit> {
        self.state.log.lock().expect("log").clone()
    }

    /// Requests to `host` other than robots.txt (path and query).
    pub fn pages_of(&self, host: usize) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|h| h.host == host && h.target != "/robots.txt")
            .map(|h| h.target)
            .collect()
    }

    /// Requests to `host` whose target starts with `prefix`.
    pub fn requests_under(&self, host: usize, prefix: &str) -> Vec<String> {
        self.pages_of(host)
            .into_iter()
            .filter(|t| t.starts_with(prefix))
            .collect()
    }
}

async fn handle(State(ctx): State<HostCtx>, req: Request) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    ctx.site.log.lock().expect("log").push(Hit {
        host: ctx.host,
        target: target.clone(),
        headers: req.headers().clone(),
    });
    let file = ctx
        .site
        .files
        .lock()
        .expect("files")
        .get(&(ctx.host, target.clone()))
        .cloned();
    if let Some(file) = file {
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, file.content_type);
        for (name, value) in &file.headers {
            resp = resp.header(*name, value.as_str());
        }
        return resp.body(Body::from(file.body)).expect("response");
    }
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    if let Some(name) = path.strip_prefix("/stable/") {
        let etag = format!("\"stable-{name}\"");
        let matches = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes());
        let resp = Response::builder().header(header::ETAG, etag.as_str());
        return if matches {
            resp.status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("response")
        } else {
            resp.header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(Body::from(page(&format!("stable {name}"), &[])))
                .expect("response")
        };
    }
    if let Some(name) = path.strip_prefix("/changing/") {
        let version = ctx
            .site
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|h| h.host == ctx.host && h.target == target)
            .count();
        return Response::builder()
            .header(header::ETAG, format!("\"v{version}\""))
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(page(
                &format!("changing {name} v{version}"),
                &[],
            )))
            .expect("response");
    }
    let body = match path {
        "/robots.txt" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("User-agent: *\nAllow: /\n"))
                .expect("response")
        }
        "/" => {
            let mut links: Vec<String> = (1..=HOME_LINKS).map(|n| format!("/p/{n}")).collect();
            for other in 0..ctx.site.ips.len() {
                if other != ctx.host {
                    links.push(format!("{}/", ctx.site.base(other)));
                }
            }
            page(&format!("host {} home", ctx.host), &links)
        }
        "/cal" => {
            let d: u64 = query
                .strip_prefix("d=")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            page("calendar", &[format!("/cal?d={}", d + 1)])
        }
        p if p.starts_with("/grow/") => page("grow", &[format!("{p}a")]),
        p if p.starts_with("/loop/") => page("loop", &["sub/".to_string()]),
        p => match p.strip_prefix("/p/").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => page(
                &format!("host {} page {n}", ctx.host),
                &[format!("/p/{}", n + 1)],
            ),
            None => {
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header(header::CONTENT_TYPE, "text/html")
                    .body(Body::from("<h1>not found</h1>"))
                    .expect("response")
            }
        },
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(body))
        .expect("response")
}

/// An HTML page with an `<h1>` and links.
pub fn page(title: &str, links: &[String]) -> String {
    let mut body = format!("<html><head><title>{title}</title></head><body><h1>{title}</h1>");
    for l in links {
        body.push_str(&format!("<a href=\"{l}\">{l}</a>\n"));
    }
    body.push_str("</body></html>");
    body
}
