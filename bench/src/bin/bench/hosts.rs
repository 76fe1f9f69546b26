//! A broad crawl: many small sites on distinct loopback addresses (127.0.1.1, …), each
//! paced by the spider's politeness, crawled by 1 and by N fetchers in turn. Reports
//! pages/s, the stages' CPU, and what the sites saw: the closest two request starts
//! to any one host, the most requests in flight to one, and pages served twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Router;

use jetcrawl_bench::crawl_state::crawl_idle_now;
use jetcrawl_bench::stack::{Bins, Proc, Stack};

use crate::median;

/// One request as a site saw it.
#[derive(Debug, Clone)]
struct Hit {
    host: IpAddr,
    path: String,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Log {
    hits: Mutex<Vec<Hit>>,
}

/// `hosts` sites of `pages` products each, one listener per address.
struct Sites {
    log: Arc<Log>,
    port: u16,
    hosts: Vec<IpAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn host_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 250) as u8,
        1 + (i % 250) as u8,
    ))
}

impl Sites {
    async fn start(hosts: usize, pages: usize) -> Result<Sites> {
        let log = Arc::new(Log::default());
        let probe = tokio::net::TcpListener::bind((host_addr(0), 0)).await?;
        let port = probe.local_addr()?.port();
        drop(probe);
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..hosts {
            let addr = host_addr(i);
            let listener = tokio::net::TcpListener::bind((addr, port))
                .await
                .with_context(|| format!("bind {addr}:{port}"))?;
            let app = Router::new()
                .fallback(move |state, req| serve(state, req, pages))
                .with_state(log.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
            addrs.push(addr);
        }
        Ok(Sites {
            log,
            port,
            hosts: addrs,
            tasks,
        })
    }

    fn roots(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("http://{h}:{}/", self.port))
            .collect()
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(State(log): State<Arc<Log>>, req: Request, pages: usize) -> Response {
    let start = Instant::now();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':').map(|(a, _)| a.to_string()))
        .and_then(|a| a.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let path = req.uri().path().to_string();
    let response = if path == "/" {
        let links: String = (0..pages)
            .map(|j| format!("<li><a href=\"/p/{j}\">product {j}</a></li>"))
            .collect();
        Html(format!(
            "<html><body><h1>{host}</h1><ul>{links}</ul></body></html>"
        ))
        .into_response()
    } else if let Some(j) = path.strip_prefix("/p/") {
        Html(format!(
            "<html><body><h1>{host} product {j}</h1><p class=\"price\">{j}.00</p>\
             <a href=\"/\">home</a></body></html>"
        ))
        .into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    };
    let end = Instant::now();
    if let Ok(mut hits) = log.hits.lock() {
        hits.push(Hit {
            host,
            path,
            start,
            end,
        });
    }
    response
}

fn spider(roots: &[String], delay_ms: u64, concurrency: u32) -> String {
    let start_urls: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"name = "{{crawl}}"
start_urls = [{}]
max_depth = 2
user_agent = "jetcrawl-bench"
obey_robots = true
allow_private_networks = true

[politeness]
delay_ms = {delay_ms}
concurrency_per_host = {concurrency}
autothrottle = false

[[items]]
type = "product"
match = '/p/\d+$'
[items.fields]
title = "h1"
price = "p.price"
"#,
        start_urls.join(", ")
    )
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
struct HostsRun {
    fetchers: usize,
    pages_per_sec: f64,
    stage_cpu_ms_per_page: f64,
    /// The closest two request starts to one host, as a fraction of the delay.
    min_gap_ratio: f64,
    /// Starts closer than 0.9 × delay, over all hosts.
    short_gaps: usize,
    max_in_flight: usize,
    served_twice: usize,
}

/// `hosts` sites × `pages` products, alternating 1 and `fetchers` fetchers, `runs` each.
pub async fn hosts(
    bins: &Bins,
    hosts: usize,
    pages: usize,
    fetchers: usize,
    runs: usize,
) -> Result<()> {
    let (delay_ms, concurrency) = (200u64, 2u32);
    println!(
        "hosts: {hosts} sites x {pages} products (+ robots.txt, /), delay_ms {delay_ms}, \
         concurrency_per_host {concurrency}"
    );
    let mut all = Vec::new();
    for run in 0..runs {
        for n in [1, fetchers] {
            let r = hosts_once(bins, hosts, pages, n, delay_ms, concurrency).await?;
            println!(
                "  run {} fetchers {}: {:.0} pages/s, stages {:.3} CPU-ms/page, closest gap {:.2} x delay \
                 ({} under 0.9), max in flight {}, served twice {}",
                run + 1,
                r.fetchers,
                r.pages_per_sec,
                r.stage_cpu_ms_per_page,
                r.min_gap_ratio,
                r.short_gaps,
                r.max_in_flight,
                r.served_twice
            );
            all.push(r);
        }
    }
    for n in [1, fetchers] {
        let of: Vec<&HostsRun> = all.iter().filter(|r| r.fetchers == n).collect();
        println!(
            "  median, {n} fetcher(s): {:.0} pages/s, {:.3} CPU-ms/page",
            median(of.iter().map(|r| r.pages_per_sec).collect()),
            median(of.iter().map(|r| r.stage_cpu_ms_per_page).collect()),
        );
    }
    Ok(())
}

async fn hosts_once(
    bins: &Bins,
    hosts: usize,
    pages: usize,
    fetchers: usize,
    delay_ms: u64,
    concurrency: u32,
) -> Result<HostsRun> {
    let sites = Sites::start(hosts, pages).await?;
    let stack = Stack::start(bins, &spider(&sites.roots(), delay_ms, concurrency)).await?;
    stack.run("init", &[]).await?;
    let mut stages: Vec<Proc> = vec![
        stack.spawn_stage("sink", 1, &[]).await?,
        stack.spawn_stage("parser", 1, &[]).await?,
    ];
    for n in 1..=fetchers {
        stages.push(stack.spawn_stage("fetcher", n, &[]).await?);
    }
    // Let the fetchers agree on who owns what before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before: f64 = stages.iter().map(|p| p.cpu().as_secs_f64()).sum();
    let started = Instant::now();
    stack.run("seed", &[]).await?;
    let expect_items = (hosts * pages) as i64;
    let js = stack.jetstream().await?;
    loop {
        let stored = stack.db.count(&stack.crawl).await?;
        if stored >= expect_items && crawl_idle_now(&js, &stack.crawl).await.is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("broad crawl not done after 10 min: {stored} of {expect_items} items");
        }
        for p in &mut stages {
            p.check_running()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after: f64 = stages.iter().map(|p| p.cpu().as_secs_f64()).sum();
    let hits = sites.log.hits.lock().map(|h| h.clone()).unwrap_or_default();
    let pages_fetched = hits
        .iter()
        .filter(|h| h.path.starts_with("/p/") || h.path == "/")
        .count();
    let mut run = measure(&hits, Duration::from_millis(delay_ms));
    run.fetchers = fetchers;
    run.pages_per_sec = pages_fetched as f64 / secs;
    run.stage_cpu_ms_per_page = (cpu_after - cpu_before) * 1000.0 / pages_fetched as f64;
    for p in &mut stages {
        p.stop(Duration::from_secs(10)).await;
    }
    stack.finish().await;
    Ok(run)
}

/// Per host: the gap between consecutive request starts (the spider's delay is
/// between any two starts), the most requests overlapping, and paths served twice.
fn measure(hits: &[Hit], delay: Duration) -> HostsRun {
    let mut by_host: BTreeMap<IpAddr, Vec<&Hit>> = BTreeMap::new();
    for h in hits {
        by_host.entry(h.host).or_default().push(h);
    }
    let mut run = HostsRun {
        min_gap_ratio: f64::INFINITY,
        ..Default::default()
    };
    for list in by_host.values_mut() {
        list.sort_by_key(|h| h.start);
        for i in 1..list.len() {
            let gap = list[i].start - list[i - 1].start;
            let ratio = gap.as_secs_f64() / delay.as_secs_f64();
            run.min_gap_ratio = run.min_gap_ratio.min(ratio);
            if ratio < 0.9 {
                run.short_gaps += 1;
            }
        }
        for (i, h) in list.iter().enumerate() {
            let overlapping = list[..i].iter().filter(|o| o.end > h.start).count() + 1;
            run.max_in_flight = run.max_in_flight.max(overlapping);
        }
        let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
        for h in list.iter() {
            *paths.entry(h.path.as_str()).or_default() += 1;
        }
        run.served_twice += paths.values().filter(|&&n| n > 1).count();
    }
    run
}
