//! The test site's server: axum on 127.0.0.1:0, serving [`catalogue::Model`] and
//! counting every request by [`request_key`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use tokio::task::JoinHandle;

use super::catalogue::{ExpectedItem, Model, Reply};
use super::hostile;

/// Options for one site.
#[derive(Debug, Clone, Default)]
pub struct SiteOptions {
    /// Added to every response (to make a crawl last long enough to disturb).
    pub latency: Duration,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the site files a request: decoded path, plus the query's parameters decoded,
/// without `utm_*`, sorted. Two spellings of one canonical URL get one key, so a
/// count above one means the page was really fetched twice.
pub fn request_key(uri: &Uri) -> String {
    let mut key = percent_decode(uri.path());
    if let Some(q) = uri.query() {
        let mut params: Vec<String> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(percent_decode)
            .filter(|p| !p.starts_with("utm_"))
            .collect();
        params.sort();
        if !params.is_empty() {
            key.push('?');
            key.push_str(&params.join("&"));
        }
    }
    key
}

struct SiteState {
    model: Model,
    options: SiteOptions,
    log: Mutex<BTreeMap<String, u32>>,
}

/// The running site.
pub struct Site {
    addr: SocketAddr,
    state: Arc<SiteState>,
    task: JoinHandle<()>,
}

impl Site {
    /// Serves the site on a free loopback port.
    pub async fn start(options: SiteOptions) -> Site {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind site");
        let addr = listener.local_addr().expect("site addr");
        let state = Arc::new(SiteState {
            model: Model::new(addr.port()),
            options,
            log: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Site { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.state.model.base()
    }

    /// The start URL: `http://127.0.0.1:PORT/`.
    pub fn start_url(&self) -> String {
        format!("{}/", self.base_url())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far: [`request_key`] -> count.
    pub fn request_log(&self) -> BTreeMap<String, u32> {
        self.state.log.lock().expect("site log").clone()
    }

    /// The items a correct crawl from [`Site::start_url`] stores, and nothing else.
    pub fn expected_items(&self) -> Vec<ExpectedItem> {
        self.state.model.expected_items()
    }

    /// A product page no page links to (for seeding it directly).
    pub fn seed_only_url(&self) -> String {
        self.state.model.seed_only_url()
    }

    /// The item of [`Site::seed_only_url`].
    pub fn seed_only_item(&self) -> ExpectedItem {
        self.state.model.seed_only_item()
    }

    /// Request key of the page that fails once with 500.
    pub fn flaky_key(&self) -> String {
        self.state.model.flaky_key()
    }

    /// Request keys of every page a correct crawl fetches exactly once (not robots.txt,
    /// not the flaky page).
    pub fn page_keys(&self) -> Vec<String> {
        self.state.model.page_keys()
    }

    /// Request key of the seed-only page.
    pub fn seed_only_key(&self) -> String {
        self.state.model.seed_only_key()
    }

    /// `http://127.0.0.1:PORT<path>`, e.g. for a [`hostile`] page.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Requests so far of one [`request_key`].
    pub fn requests_of(&self, key: &str) -> u32 {
        self.request_log().get(key).copied().unwrap_or(0)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(st): State<Arc<SiteState>>, req: Request) -> Response {
    let nth = {
        let mut log = st.log.lock().expect("site log");
        let count = log.entry(request_key(req.uri())).or_insert(0);
        *count += 1;
        *count
    };
    if !st.options.latency.is_zero() {
        tokio::time::sleep(st.options.latency).await;
    }
    let path = percent_decode(req.uri().path());
    if let Some(response) = hostile::reply(&path).await {
        return response;
    }
    let response = match st.model.reply(&path, req.uri().query(), nth) {
        Reply::Html(status, body) => Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(body)),
        Reply::Text(body) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(body)),
        Reply::Redirect(location) => Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, location)
            .body(Body::empty()),
    };
    response.expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_normalise_spellings() {
        let k = |s: &str| request_key(&s.parse::<Uri>().unwrap());
        assert_eq!(
            k("/catalogue/tilde%7Eedition_13/index.html"),
            "/catalogue/tilde~edition_13/index.html"
        );
        assert_eq!(
            k("/catalogue/tilde%7eedition_13/index.html"),
            "/catalogue/tilde~edition_13/index.html"
        );
        assert_eq!(
            k("/search.html?q=books&page=1"),
            "/search.html?page=1&q=books"
        );
        assert_eq!(
            k("/search.html?utm_source=x&page=1&q=books"),
            "/search.html?page=1&q=books"
        );
        assert_eq!(k("/a?"), "/a");
    }
}
