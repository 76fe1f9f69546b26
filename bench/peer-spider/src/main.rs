//! `peer-spider URL CONCURRENCY`: crawls the demo site at URL with `spider` under the
//! rules the benchmark's jetcrawl spider has (robots.txt obeyed, `utm_*` parameters
//! stripped before dedup, fragments dropped, every page fetched once, the visited set in
//! memory), extracts the same six product fields with `scraper`, and prints one line:
//! `pages P items I secs S lagged L`. The benchmark checks P and I against the site, and
//! the site's own hit counts for pages fetched twice.
//!
//! spider cannot strip query parameters itself (its link callback runs after its visited
//! set has taken the link as found), so links with `utm_*` parameters are blacklisted
//! (never fetched) and the callback queues their stripped spelling instead, which
//! spider's visited set then dedups like any link.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Instant;

use scraper::{Html, Selector};
use spider::tokio::sync::broadcast::error::RecvError;
use spider::website::Website;

/// Field selectors: the benchmark spider's `[items.fields]`.
const FIELDS: [&str; 6] = [
    "h1.product-title",
    "p.price",
    "span.sku",
    "p.availability",
    "a.breadcrumb-category",
    "div.description p",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(concurrency)) = (args.next(), args.next()) else {
        eprintln!("usage: peer-spider URL CONCURRENCY");
        std::process::exit(2);
    };
    let Ok(concurrency) = concurrency.parse::<usize>() else {
        eprintln!("CONCURRENCY: a number");
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(crawl(url, concurrency));
}

async fn crawl(url: String, concurrency: usize) {
    let mut website = Website::new(&url);
    website
        .with_respect_robots_txt(true)
        .with_concurrency_limit(Some(concurrency))
        .with_user_agent(Some("peer-spider-bench"))
        .with_blacklist_url(Some(vec![r"[?&]utm_".into()]));
    let Some(queue) = website.queue(1 << 16) else {
        eprintln!("spider built without its `sync` feature");
        std::process::exit(1);
    };
    let debug = std::env::var_os("PEER_DEBUG").is_some();
    website.set_on_link_find(move |link, html| {
        if link.as_ref().contains("utm_") {
            let stripped = strip_tracking(link.as_ref());
            if debug {
                eprintln!("requeue {} -> {stripped}", link.as_ref());
            }
            let _ = queue.send(stripped);
        }
        (link, html)
    });
    // Pages go to extraction threads, one per core, as jetcrawl parses on every core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Unbounded, so the subscriber never waits and never lags behind spider's channel:
    // pages waiting for extraction count in this process's memory.
    let (page_tx, page_rx) = mpsc::channel::<(String, Vec<u8>)>();
    let page_rx = std::sync::Arc::new(std::sync::Mutex::new(page_rx));
    let (item_tx, item_rx) = mpsc::channel::<String>();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let rx = page_rx.clone();
            let tx = item_tx.clone();
            std::thread::spawn(move || extract_loop(&rx, &tx))
        })
        .collect();
    drop(item_tx);

    // spider's page channel is a broadcast channel: a subscriber that falls behind by
    // more than its capacity loses pages (counted as `lagged`; the run then fails).
    let mut rx = website.subscribe(16_384);
    let started = Instant::now();
    let collector = tokio::spawn(async move {
        let (mut pages, mut lagged) = (0u64, 0u64);
        loop {
            match rx.recv().await {
                Ok(page) => {
                    pages += 1;
                    if debug {
                        eprintln!("page {}", page.get_url());
                    }
                    let body = page.get_html_bytes_u8().to_vec();
                    let _ = page_tx.send((page.get_url().to_string(), body));
                }
                Err(RecvError::Lagged(n)) => lagged += n,
                Err(RecvError::Closed) => break,
            }
        }
        (pages, lagged)
    });
    website.crawl().await;
    website.unsubscribe();
    let (pages, lagged) = collector.await.unwrap_or((0, 0));
    for w in workers {
        let _ = w.join();
    }
    let items: HashSet<String> = item_rx.iter().collect();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "pages {pages} items {} secs {secs:.3} lagged {lagged}",
        items.len()
    );
}

/// Extracts a product item from each product page; sends its URL when every field is there.
fn extract_loop(
    rx: &std::sync::Mutex<mpsc::Receiver<(String, Vec<u8>)>>,
    tx: &mpsc::Sender<String>,
) {
    let selectors: Vec<Selector> = FIELDS.iter().filter_map(|s| Selector::parse(s).ok()).collect();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((url, body)) = next else { return };
        if !is_product(&url) {
            continue;
        }
        let doc = Html::parse_document(&String::from_utf8_lossy(&body));
        let fields: Vec<String> = selectors
            .iter()
            .filter_map(|s| doc.select(s).next())
            .map(|e| e.text().collect::<String>().trim().to_string())
            .collect();
        if fields.len() == FIELDS.len() && fields.iter().all(|f| !f.is_empty()) {
            let _ = tx.send(url);
        }
    }
}

/// `/product/<digits>` at the end of the path (the spider's `[[items]] match`).
fn is_product(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit_once("/product/")
        .is_some_and(|(_, id)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// The link with `utm_*` query parameters and the fragment removed.
fn strip_tracking(link: &str) -> String {
    let link = link.split('#').next().unwrap_or(link);
    let Some((base, query)) = link.split_once('?') else {
        return link.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("utm_"))
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}
