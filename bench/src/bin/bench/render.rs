//! `[render]` pages through headless Chromium: `jetcrawl crawl` (one process, its
//! renderer in-process) on a shop whose product pages are empty shells a script fills
//! from a JSON API. Rendered pages/s; the CPU time and memory of jetcrawl with its
//! browser: every process of the tree, sampled every 100 ms. Memory is PSS (shared
//! pages split between the processes that map them): Chromium's processes share most
//! of their libraries, and summing their RSS would count those once per process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use jetcrawl_bench::procs;
use jetcrawl_bench::stack::{Bins, Proc};

use crate::median;

struct Shop {
    products: usize,
}

async fn serve(State(shop): State<Arc<Shop>>, uri: Uri) -> Response {
    let page = |body: &str| {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!DOCTYPE html><html><head><title>shop</title></head><body>{body}</body></html>"
            ),
        )
            .into_response()
    };
    let script = |body: &'static str| {
        ([(header::CONTENT_TYPE, "application/javascript")], body).into_response()
    };
    let json = |v: serde_json::Value| {
        ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
    };
    let path = uri.path();
    match path {
        "/robots.txt" => "User-agent: *\nDisallow:\n".into_response(),
        "/app/list" => page(r#"<div id="links"></div><script src="/static/list.js"></script>"#),
        "/static/list.js" => script(
            "fetch('/api/list.json').then(r => r.json()).then(l => { const b = document.getElementById('links'); \
             for (const h of l) { const a = document.createElement('a'); a.href = h; a.textContent = h; b.appendChild(a); } });",
        ),
        "/api/list.json" => json(serde_json::json!((1..=shop.products)
            .map(|n| format!("/app/product/{n}"))
            .collect::<Vec<_>>())),
        "/static/product.js" => script(
            "const n = location.pathname.split('/').pop(); fetch('/api/product/' + n + '.json').then(r => r.json()).then(p => { \
             const d = document.createElement('div'); d.className = 'product'; d.innerHTML = '<h1></h1><p class=\"price\"></p>'; \
             d.querySelector('h1').textContent = p.name; d.querySelector('p.price').textContent = p.price; document.body.appendChild(d); });",
        ),
        _ => {
            if path.starts_with("/app/product/") {
                return page(r#"<script src="/static/product.js"></script>"#);
            }
            if let Some(n) = path
                .strip_prefix("/api/product/")
                .and_then(|n| n.strip_suffix(".json"))
            {
                return json(serde_json::json!({ "name": format!("Product {n}"), "price": format!("£{n}.00") }));
            }
            (StatusCode::NOT_FOUND, "").into_response()
        }
    }
}

fn spider(base: &str, timeout_ms: u64) -> String {
    format!(
        r#"name = "bench_render"
start_urls = ["{base}/app/list"]
allowed_domains = ["127.0.0.1"]
user_agent = "jetcrawl-bench"
allow_private_networks = true

[politeness]
delay_ms = 0
concurrency_per_host = 256
autothrottle = false

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
"#
    )
}

/// Proportional set size of a process, bytes (its RSS where PSS is not available).
fn pss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
    let kib = text.as_deref().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("Pss:"))?;
        line["Pss:".len()..]
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    kib.map(|k| k * 1024).or_else(|| procs::rss(pid))
}

/// Memory (PSS) and CPU time (own and reaped children's) of `root` and every process
/// below it: (bytes, CPU).
fn tree_usage(root: u32) -> (u64, Duration) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, Duration::ZERO);
    };
    let mut parent: HashMap<u32, u32> = HashMap::new();
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    let in_tree = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    };
    let tree: Vec<u32> = parent.keys().copied().filter(|&pid| in_tree(pid)).collect();
    (
        tree.iter().filter_map(|&pid| pss(pid)).sum(),
        tree.iter().filter_map(|&pid| procs::cpu_time(pid)).sum(),
    )
}

pub(crate) async fn render(bins: &Bins, products: usize, tabs: usize, runs: usize) -> Result<()> {
    println!(
        "\n## render: {products} script-built product pages + 1 list page, \
         `jetcrawl crawl --tabs {tabs}` (in-process renderer, headless Chromium)"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .fallback(serve)
        .with_state(Arc::new(Shop { products }));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let pages = (products + 1) as f64;
    let mut rows = Vec::new();
    for i in 1..=runs {
        let tmp = tempfile::tempdir()?;
        let spider_path = tmp.path().join("spider.toml");
        std::fs::write(&spider_path, spider(&base, 15_000))?;
        let out = tmp.path().join("items.jsonl");
        let args = [
            "crawl".to_string(),
            spider_path.display().to_string(),
            "--out".to_string(),
            out.display().to_string(),
            "--tabs".to_string(),
            tabs.to_string(),
        ];
        let started = Instant::now();
        let mut proc = Proc::spawn("crawl", &bins.jetcrawl, &args, tmp.path())?;
        let pid = proc.pid();
        let (mut peak_tree, mut own, mut cpu) = (0u64, 0u64, Duration::ZERO);
        loop {
            let (mem, used) = tree_usage(pid);
            peak_tree = peak_tree.max(mem);
            cpu = cpu.max(used);
            own = own.max(proc.peak_rss());
            if proc.check_running().is_err() {
                break;
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the render crawl did not finish in 900 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let items = std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if items != products {
            bail!(
                "render crawl stored {items} items, expected {products}; log:\n{}",
                std::fs::read_to_string(proc.log()).unwrap_or_default()
            );
        }
        let cpu_per_page = cpu.as_secs_f64() / pages;
        println!(
            "run {i}: {pages:.0} pages rendered in {secs:.2} s: {:.1} pages/s, {:.3} CPU-s \
             per page (jetcrawl + browser); peak RSS jetcrawl {:.0} MB; peak PSS jetcrawl + \
             browser {:.0} MB",
            pages / secs,
            cpu_per_page,
            own as f64 / 1e6,
            peak_tree as f64 / 1e6
        );
        rows.push((
            pages / secs,
            own as f64 / 1e6,
            peak_tree as f64 / 1e6,
            cpu_per_page,
        ));
    }
    server.abort();
    println!("| figure | median of {} |", rows.len());
    println!("|---|---|");
    println!(
        "| rendered pages/s | {:.1} |",
        median(rows.iter().map(|r| r.0).collect())
    );
    println!(
        "| peak RSS, jetcrawl (MB) | {:.0} |",
        median(rows.iter().map(|r| r.1).collect())
    );
    println!(
        "| peak PSS, jetcrawl + browser processes (MB) | {:.0} |",
        median(rows.iter().map(|r| r.2).collect())
    );
    println!(
        "| CPU-s per rendered page, jetcrawl + browser | {:.3} |",
        median(rows.iter().map(|r| r.3).collect())
    );
    Ok(())
}
