//! A shop that exists only in the browser: every `/app/` page is an empty shell that a
//! script fills from a JSON API, with links the script creates. Plus a page whose
//! script never yields, and a "secret" server on another loopback address that a
//! product script tries to reach (the private-address guard must refuse it).
//!
//! - `/` (static): links to `/app/list` and `/static/about.html`
//! - `/app/list`: a script reads `/api/list.json` and adds links to the first products
//!   and to `/app/hang`
//! - `/app/product/<n>`: a script reads `/api/product/<n>.json` (answered after a
//!   delay, so a crawl takes long enough to kill a renderer in it) and builds
//!   `div.product` with the name, the price, the probe's outcome, and a link to the
//!   next product: products after the first few are reachable only through links
//!   made by scripts on rendered pages
//! - `/app/hang`: `while (true) {}`
//! - `http://127.0.0.3:<port>/secret` (the secret server): counts its hits

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::common::ExpectedItem;

/// Products in the shop.
pub const PRODUCTS: u32 = 12;
/// Products the list page links to (the rest only through product pages).
const LISTED: u32 = 3;

struct State_ {
    base: String,
    secret: String,
    api_delay: Duration,
    log: Mutex<BTreeMap<String, u32>>,
    /// When each request arrived, in order.
    starts: Mutex<Vec<Instant>>,
    /// Each request's arrival and the end of its answer.
    spans: Mutex<Vec<(Instant, Instant)>>,
}

/// The running shop and its secret neighbour.
pub struct JsSite {
    state: Arc<State_>,
    secret_hits: Arc<AtomicU32>,
    tasks: Vec<JoinHandle<()>>,
}

impl JsSite {
    /// The shop on 127.0.0.2, the secret server on 127.0.0.3.
    pub async fn start(api_delay: Duration) -> JsSite {
        let secret_listener = tokio::net::TcpListener::bind("127.0.0.3:0")
            .await
            .expect("bind secret");
        let secret_addr = secret_listener.local_addr().expect("secret addr");
        let secret_hits = Arc::new(AtomicU32::new(0));
        let hits = secret_hits.clone();
        let secret_app = Router::new().fallback(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], "the secret")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind shop");
        let addr = listener.local_addr().expect("shop addr");
        let state = Arc::new(State_ {
            base: format!("http://{addr}"),
            secret: format!("http://{secret_addr}/secret"),
            api_delay,
            log: Mutex::new(BTreeMap::new()),
            starts: Mutex::new(Vec::new()),
            spans: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(secret_listener, secret_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        ];
        JsSite {
            state,
            secret_hits,
            tasks,
        }
    }

    /// `http://127.0.0.2:<port>`
    pub fn base(&self) -> &str {
        &self.state.base
    }

    /// Requests the secret server received.
    pub fn secret_hits(&self) -> u32 {
        self.secret_hits.load(Ordering::SeqCst)
    }

    /// Requests per path.
    pub fn hits(&self, path: &str) -> u32 {
        let log = self.state.log.lock().expect("log");
        log.get(path).copied().unwrap_or(0)
    }

    /// The shortest time between two requests' arrivals at the shop.
    pub fn min_spacing(&self) -> Option<Duration> {
        let starts = self.state.starts.lock().expect("starts");
        starts.windows(2).map(|w| w[1] - w[0]).min()
    }

    /// The most requests the shop was answering at once.
    pub fn max_in_flight(&self) -> usize {
        let spans = self.state.spans.lock().expect("spans");
        spans
            .iter()
            .map(|(start, _)| {
                spans
                    .iter()
                    .filter(|(s, e)| s <= start && start < e)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Requests the shop received.
    pub fn requests(&self) -> usize {
        self.state.starts.lock().expect("starts").len()
    }

    /// The spider for the shop: `/app/` through renderers, the rest through fetchers.
    pub fn spider(&self, crawl: &str, timeout_ms: u64) -> String {
        self.spider_with(crawl, timeout_ms, 0, 8)
    }

    /// [`JsSite::spider`] with its politeness.
    pub fn spider_with(
        &self,
        crawl: &str,
        timeout_ms: u64,
        delay_ms: u64,
        concurrency: u32,
    ) -> String {
        format!(
            r#"name = "{crawl}"
start_urls = ["{base}/"]
allowed_domains = ["127.0.0.2"]
max_depth = 30
user_agent = "jetcrawl-test"
allow_private_networks = true

[politeness]
delay_ms = {delay_ms}
concurrency_per_host = {concurrency}
autothrottle = false

[http]
retry_backoff_ms = 200

[streams]
ack_wait_secs = 4

[render]
match = ['/app/']
timeout_ms = {timeout_ms}
wait_for = "div.product, #links a"

[[items]]
type = "product"
match = '/app/product/\d+$'
[items.fields]
name = "div.product h1"
price = "div.product p.price"
probe = "div.product span.probe"

[[items]]
type = "about"
match = '/static/about\.html$'
[items.fields]
title = "h1"
"#,
            base = self.base(),
        )
    }

    /// Every item a complete crawl stores.
    pub fn expected_items(&self) -> Vec<ExpectedItem> {
        let mut items: Vec<ExpectedItem> = (1..=PRODUCTS)
            .map(|n| ExpectedItem {
                item_type: "product".into(),
                url: format!("{}/app/product/{n}", self.base()),
                data: json!({
                    "name": product_name(n),
                    "price": product_price(n),
                    "probe": "refused",
                }),
            })
            .collect();
        items.push(ExpectedItem {
            item_type: "about".into(),
            url: format!("{}/static/about.html", self.base()),
            data: json!({ "title": "About this shop" }),
        });
        items
    }
}

impl Drop for JsSite {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn product_name(n: u32) -> String {
    format!("Product number {n}")
}

fn product_price(n: u32) -> String {
    format!("£{}.{:02}", 10 + n, n * 7 % 100)
}

async fn handle(State(state): State<Arc<State_>>, uri: Uri) -> Response {
    let started = Instant::now();
    state.starts.lock().expect("starts").push(started);
    let response = respond(&state, uri).await;
    let span = (started, Instant::now());
    state.spans.lock().expect("spans").push(span);
    response
}

async fn respond(state: &State_, uri: Uri) -> Response {
    let path = uri.path().to_string();
    *state
        .log
        .lock()
        .expect("log")
        .entry(path.clone())
        .or_default() += 1;
    let html = |body: String| {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!DOCTYPE html><html><head><title>shop</title></head><body>{body}</body></html>"
            ),
        )
            .into_response()
    };
    let js =
        |body: String| ([(header::CONTENT_TYPE, "application/javascript")], body).into_response();
    let json_reply = |v: serde_json::Value| {
        ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
    };
    match path.as_str() {
        "/robots.txt" => "User-agent: *\nDisallow:\n".into_response(),
        "/" => html(
            r#"<h1>Shop</h1><a href="/app/list">products</a> <a href="/static/about.html">about</a>"#
                .into(),
        ),
        "/static/about.html" => html("<h1>About this shop</h1>".into()),
        "/app/list" => html(r#"<div id="links"></div><script src="/static/list.js"></script>"#.into()),
        "/static/list.js" => js(r#"
fetch('/api/list.json').then(r => r.json()).then(list => {
  const box = document.getElementById('links');
  for (const href of list.links) {
    const a = document.createElement('a');
    a.href = href;
    a.textContent = href;
    box.appendChild(a);
  }
});
"#
        .into()),
        "/api/list.json" => {
            let mut links: Vec<String> = (1..=LISTED).map(|n| format!("/app/product/{n}")).collect();
            links.push("/app/hang".into());
            json_reply(json!({ "links": links }))
        }
        "/app/hang" => html("<p>spinning</p><script>while (true) {}</script>".into()),
        "/static/product.js" => js(format!(
            r#"
const n = location.pathname.split('/').pop();
const probe = fetch('{secret}').then(() => 'leaked', () => 'refused');
const data = fetch('/api/product/' + n + '.json').then(r => r.json());
Promise.all([data, probe]).then(([p, outcome]) => {{
  const div = document.createElement('div');
  div.className = 'product';
  div.innerHTML = '<h1></h1><p class="price"></p><span class="probe"></span><a class="next"></a>';
  div.querySelector('h1').textContent = p.name;
  div.querySelector('p.price').textContent = p.price;
  div.querySelector('span.probe').textContent = outcome;
  div.querySelector('a.next').href = '/app/product/' + p.next;
  document.getElementById('root').appendChild(div);
}});
"#,
            secret = state.secret
        )),
        _ => {
            if path
                .strip_prefix("/app/product/")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=PRODUCTS).contains(&n))
            {
                return html(
                    r#"<div id="root"></div><script src="/static/product.js"></script>"#.into(),
                );
            }
            if let Some(n) = path
                .strip_prefix("/api/product/")
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=PRODUCTS).contains(n))
            {
                tokio::time::sleep(state.api_delay).await;
                return json_reply(json!({
                    "name": product_name(n),
                    "price": product_price(n),
                    "next": n % PRODUCTS + 1,
                }));
            }
            (StatusCode::NOT_FOUND, "not here").into_response()
        }
    }
}
