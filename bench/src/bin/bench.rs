//! The crawl benchmarks: distributed and embedded crawls of the demo site, the sink
//! alone, backpressure from a slow database, and memory over a long crawl. Every
//! figure comes from real processes on real servers this binary starts; each scenario
//! runs `--runs` times and prints its runs and their median.
//!
//! `cargo build --release --bins && target/release/bench all` (scripts/bench.sh).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::stream::{self, StreamExt, TryStreamExt};

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::procs;
use jetcrawl_bench::stack::{Bins, Proc, SiteProc, Stack};
use jetcrawl_shared::message::{item_id, item_msg_id, Item};
use jetcrawl_shared::topology::Names;

#[derive(Parser)]
#[command(about = "jetcrawl crawl benchmarks (see docs/BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fetcher(s) + parser + sink on NATS, Redis and PostgreSQL, end to end.
    Distributed(CrawlArgs),
    /// `jetcrawl crawl` (one process, SQLite) on the same site.
    Embedded(CrawlArgs),
    /// The sink alone: items/s into PostgreSQL from a pre-filled ITEMS stream.
    Sink {
        #[arg(long, default_value_t = 200_000)]
        items: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Distributed crawls with the database made slow vs normal, alternating.
    Backpressure {
        #[command(flatten)]
        crawl: CrawlArgs,
        /// Sleep per inserted row in the slow runs (a trigger), in microseconds.
        #[arg(long, default_value_t = 2000)]
        slow_us_per_row: u64,
    },
    /// RSS of each stage sampled over one long distributed crawl.
    Memory {
        #[command(flatten)]
        crawl: CrawlArgs,
    },
    /// Every scenario with its defaults (memory with 200,000 pages, one run).
    All {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[derive(Args, Clone)]
struct CrawlArgs {
    /// Product pages of the demo site.
    #[arg(long, default_value_t = 20_000)]
    pages: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    fetchers: usize,
    #[arg(long, default_value_t = 1)]
    parsers: usize,
    /// `--concurrency` of each fetcher (and of the embedded crawl).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

impl CrawlArgs {
    fn with(pages: usize, runs: usize) -> CrawlArgs {
        CrawlArgs {
            pages,
            runs,
            fetchers: 1,
            parsers: 1,
            concurrency: 64,
            timeout_secs: 900,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bins = Bins::find()?;
    println!("{}", machine());
    match cli.scenario {
        Scenario::Distributed(a) => {
            distributed(&bins, &a).await?;
        }
        Scenario::Embedded(a) => embedded(&bins, &a).await?,
        Scenario::Sink { items, runs } => sink(&bins, items, runs).await?,
        Scenario::Backpressure {
            crawl,
            slow_us_per_row,
        } => backpressure(&bins, &crawl, slow_us_per_row).await?,
        Scenario::Memory { crawl } => memory(&bins, &crawl).await?,
        Scenario::All { runs } => {
            distributed(&bins, &CrawlArgs::with(20_000, runs)).await?;
            embedded(&bins, &CrawlArgs::with(20_000, runs)).await?;
            sink(&bins, 200_000, runs).await?;
            backpressure(&bins, &CrawlArgs::with(20_000, runs), 2000).await?;
            memory(&bins, &CrawlArgs::with(200_000, 1)).await?;
        }
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("machine: {cpus} CPUs, {model}")
}

/// The spider the benchmarks crawl the demo site with (`{crawl}` filled in by [`Stack`]).
fn spider(base: &str) -> String {
    format!(
        r#"name = "{{crawl}}"
start_urls = ["{base}"]
allowed_domains = ["127.0.0.1"]
max_depth = 100
user_agent = "jetcrawl-bench"
obey_robots = true
allow_private_networks = true
strip_query_params = ["utm_*"]

[politeness]
# One host serves everything: lift the per-host limits, as an operator would for a
# site they own.
delay_ms = 0
concurrency_per_host = 256
autothrottle = false

[follow]
allow = ['/product/\d+$', '/category/', '^https?://[^/]+/$']

[[items]]
type = "product"
match = '/product/\d+$'
[items.fields]
title = "h1.product-title"
price = "p.price"
sku = "span.sku"
availability = "p.availability"
category = "a.breadcrumb-category"
summary = "div.description p"
"#
    )
}

// ------------------------------------------------------------------------------------
// distributed

/// What one distributed crawl measured.
#[derive(Debug, Clone, Default)]
struct CrawlRun {
    pages: f64,
    items: i64,
    /// Seed → every page fetched.
    fetch_secs: f64,
    /// Seed → every item in the database.
    secs: f64,
    /// CPU seconds during the crawl, by process kind.
    cpu: BTreeMap<&'static str, f64>,
    /// Peak RSS by stage, MB.
    peak_mb: BTreeMap<&'static str, f64>,
    /// (items stored, RSS MB by stage) sampled every second.
    samples: Vec<(i64, BTreeMap<&'static str, f64>)>,
}

impl CrawlRun {
    fn pages_per_sec(&self) -> f64 {
        self.pages / self.secs
    }
    fn fetch_rate(&self) -> f64 {
        self.pages / self.fetch_secs
    }
    fn cpu_per_1000(&self, kind: &str) -> f64 {
        self.cpu.get(kind).copied().unwrap_or_default() * 1000.0 / self.pages
    }
}

const STAGES: [&str; 3] = ["fetcher", "parser", "sink"];

/// Runs one distributed crawl of a `pages`-product demo site. `prepare` runs on the
/// database after `jetcrawl init` (the backpressure scenario slows it there).
async fn crawl_once(bins: &Bins, a: &CrawlArgs, slow_us_per_row: u64) -> Result<CrawlRun> {
    let site_model = DemoSite::new(a.pages);
    let expect_pages = site_model.crawlable_pages() as f64;
    let expect_items = site_model.products() as i64;
    let tmp = tempfile::tempdir()?;
    let mut site = SiteProc::start(bins, a.pages, tmp.path()).await?;
    let stack = Stack::start(bins, &spider(&site.base)).await?;
    stack.run("init", &[]).await?;
    if slow_us_per_row > 0 {
        slow_down(&stack, slow_us_per_row).await?;
    }
    let concurrency = a.concurrency.to_string();
    let mut stages: Vec<(&'static str, Proc)> = Vec::new();
    stages.push(("sink", stack.spawn_stage("sink", 1, &[]).await?));
    for n in 1..=a.parsers {
        stages.push(("parser", stack.spawn_stage("parser", n, &[]).await?));
    }
    for n in 1..=a.fetchers {
        let f = stack
            .spawn_stage("fetcher", n, &["--concurrency", &concurrency])
            .await?;
        stages.push(("fetcher", f));
    }

    let cpu_before = cpu_snapshot(&stack, &stages, &site.proc);
    let started = Instant::now();
    stack.run("seed", &[]).await?;
    let mut run = CrawlRun::default();
    let mut next_sample = Instant::now();
    let timeout = Duration::from_secs(a.timeout_secs);
    loop {
        let pages = fetched(&stages).await?;
        if run.fetch_secs == 0.0 && pages >= expect_pages {
            run.fetch_secs = started.elapsed().as_secs_f64();
        }
        let items = stack.db.count(&stack.crawl).await?;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            run.samples.push((items, rss_by_stage(&stages)));
        }
        if items >= expect_items && pages >= expect_pages {
            run.secs = started.elapsed().as_secs_f64();
            run.items = items;
            run.pages = pages;
            break;
        }
        if pages > expect_pages {
            bail!("{pages} pages fetched, the site has {expect_pages}: a page was fetched twice");
        }
        if started.elapsed() > timeout {
            bail!("crawl not done after {timeout:?}: {pages} pages fetched, {items} items");
        }
        for (_, p) in &mut stages {
            p.check_running()?;
        }
        site.proc.check_running()?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cpu_after = cpu_snapshot(&stack, &stages, &site.proc);
    // Every page exactly once: a late duplicate fetch would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = fetched(&stages).await?;
    if settled != expect_pages {
        bail!("{settled} pages fetched, the site has {expect_pages}");
    }
    for (kind, after) in &cpu_after {
        let before = cpu_before.get(kind).copied().unwrap_or_default();
        run.cpu.insert(kind, after - before);
    }
    for (kind, p) in &stages {
        let mb = p.peak_rss() as f64 / 1e6;
        let e = run.peak_mb.entry(kind).or_default();
        *e = e.max(mb);
    }
    for (_, p) in &mut stages {
        p.stop(Duration::from_secs(10)).await;
    }
    site.proc.stop(Duration::from_secs(5)).await;
    stack.finish().await;
    Ok(run)
}

/// Adds a trigger that sleeps `us` microseconds per inserted row.
async fn slow_down(stack: &Stack, us: u64) -> Result<()> {
    let secs = us as f64 / 1e6;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION jetcrawl_bench_slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep({secs}); RETURN NEW; END $$;
         CREATE TRIGGER jetcrawl_bench_slow BEFORE INSERT ON jetcrawl_items \
         FOR EACH ROW EXECUTE FUNCTION jetcrawl_bench_slow();"
    ))
    .execute(&stack.db.pool)
    .await
    .context("install the slow trigger")?;
    Ok(())
}

async fn fetched(stages: &[(&'static str, Proc)]) -> Result<f64> {
    let mut sum = 0.0;
    for (kind, p) in stages {
        if *kind == "fetcher" {
            sum += p.counter("jetcrawl_pages_fetched_total").await?;
        }
    }
    Ok(sum)
}

fn cpu_snapshot(
    stack: &Stack,
    stages: &[(&'static str, Proc)],
    site: &Proc,
) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (kind, p) in stages {
        *out.entry(kind).or_default() += p.cpu().as_secs_f64();
    }
    let (nats, redis) = stack.server_cpu();
    out.insert("nats", nats.as_secs_f64());
    out.insert("redis", redis.as_secs_f64());
    out.insert("postgres", procs::cpu_time_of_all("postgres").as_secs_f64());
    out.insert("site", site.cpu().as_secs_f64());
    out
}

fn rss_by_stage(stages: &[(&'static str, Proc)]) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (kind, p) in stages {
        let e = out.entry(kind).or_default();
        *e = e.max(p.rss() as f64 / 1e6);
    }
    out
}

async fn distributed(bins: &Bins, a: &CrawlArgs) -> Result<()> {
    println!(
        "\n## distributed: {} product pages, {} fetcher(s) x concurrency {}, {} parser(s), 1 sink",
        a.pages, a.fetchers, a.concurrency, a.parsers
    );
    let mut runs = Vec::new();
    for i in 1..=a.runs {
        let run = crawl_once(bins, a, 0).await?;
        println!("run {i}: {}", crawl_line(&run));
        runs.push(run);
    }
    print_crawl_medians(&runs);
    Ok(())
}

fn crawl_line(r: &CrawlRun) -> String {
    let mut s = format!(
        "{:.0} pages, {} items in {:.2} s (all fetched at {:.2} s): {:.0} pages/s, {:.0} items/s; \
         CPU-s/1000 pages:",
        r.pages,
        r.items,
        r.secs,
        r.fetch_secs,
        r.pages_per_sec(),
        r.items as f64 / r.secs
    );
    for kind in r.cpu.keys() {
        let _ = write!(s, " {kind} {:.3}", r.cpu_per_1000(kind));
    }
    let _ = write!(s, " (stages {:.3});", stages_cpu_per_1000(r));
    let _ = write!(s, " peak RSS MB:");
    for (kind, mb) in &r.peak_mb {
        let _ = write!(s, " {kind} {mb:.1}");
    }
    s
}

fn stages_cpu_per_1000(r: &CrawlRun) -> f64 {
    STAGES.iter().map(|k| r.cpu_per_1000(k)).sum()
}

fn print_crawl_medians(runs: &[CrawlRun]) {
    let m = |f: &dyn Fn(&CrawlRun) -> f64| median(runs.iter().map(f).collect());
    println!("| figure | median of {} |", runs.len());
    println!("|---|---|");
    println!(
        "| pages/s (seed → last item stored) | {:.0} |",
        m(&|r| r.pages_per_sec())
    );
    println!("| items/s | {:.0} |", m(&|r| r.items as f64 / r.secs));
    println!(
        "| fetch rate, pages/s (seed → last page fetched) | {:.0} |",
        m(&|r| r.fetch_rate())
    );
    println!(
        "| CPU-s per 1,000 pages, all jetcrawl stages | {:.3} |",
        m(&stages_cpu_per_1000)
    );
    let kinds: Vec<&str> = runs[0].cpu.keys().copied().collect();
    for kind in kinds {
        println!(
            "| CPU-s per 1,000 pages, {kind} | {:.3} |",
            m(&|r| r.cpu_per_1000(kind))
        );
    }
    for kind in STAGES {
        println!(
            "| peak RSS, {kind} (MB) | {:.1} |",
            m(&|r| r.peak_mb.get(kind).copied().unwrap_or_default())
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ------------------------------------------------------------------------------------
// embedded

async fn embedded(bins: &Bins, a: &CrawlArgs) -> Result<()> {
    println!(
        "\n## embedded: {} product pages, `jetcrawl crawl --concurrency {}` to SQLite",
        a.pages, a.concurrency
    );
    let site_model = DemoSite::new(a.pages);
    let pages = site_model.crawlable_pages() as f64;
    let mut rows = Vec::new();
    for i in 1..=a.runs {
        let tmp = tempfile::tempdir()?;
        let mut site = SiteProc::start(bins, a.pages, tmp.path()).await?;
        let spider_path = tmp.path().join("spider.toml");
        std::fs::write(
            &spider_path,
            spider(&site.base).replace("{crawl}", "bench_embedded"),
        )?;
        let out = tmp.path().join("items.db");
        let site_cpu = site.proc.cpu();
        let started = Instant::now();
        let args = [
            "crawl".to_string(),
            spider_path.display().to_string(),
            "--out".to_string(),
            out.display().to_string(),
            "--concurrency".to_string(),
            a.concurrency.to_string(),
        ];
        let proc = Proc::spawn("crawl", &bins.jetcrawl, &args, tmp.path())?;
        let log = proc.log().to_path_buf();
        let (status, usage) = tokio::task::spawn_blocking(move || proc.wait_with_usage()).await??;
        let secs = started.elapsed().as_secs_f64();
        let site_cpu = (site.proc.cpu() - site_cpu).as_secs_f64();
        if !status.success() {
            bail!(
                "jetcrawl crawl exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let items = sqlite_count(&out).await?;
        if items != site_model.products() as i64 {
            bail!(
                "embedded crawl stored {items} items, expected {}",
                site_model.products()
            );
        }
        let cpu = usage.cpu.as_secs_f64();
        println!(
            "run {i}: {pages:.0} pages, {items} items in {secs:.2} s: {:.0} pages/s; \
             CPU-s/1000 pages: jetcrawl {:.3}, site {:.3}; peak RSS {:.1} MB",
            pages / secs,
            cpu * 1000.0 / pages,
            site_cpu * 1000.0 / pages,
            usage.peak_rss as f64 / 1e6
        );
        rows.push((
            pages / secs,
            cpu * 1000.0 / pages,
            usage.peak_rss as f64 / 1e6,
        ));
        site.proc.stop(Duration::from_secs(5)).await;
    }
    println!("| figure | median of {} |", rows.len());
    println!("|---|---|");
    println!(
        "| pages/s | {:.0} |",
        median(rows.iter().map(|r| r.0).collect())
    );
    println!(
        "| CPU-s per 1,000 pages | {:.3} |",
        median(rows.iter().map(|r| r.1).collect())
    );
    println!(
        "| peak RSS (MB) | {:.1} |",
        median(rows.iter().map(|r| r.2).collect())
    );
    Ok(())
}

async fn sqlite_count(path: &std::path::Path) -> Result<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM jetcrawl_items")
        .fetch_one(&mut conn)
        .await?)
}

// ------------------------------------------------------------------------------------
// sink alone

async fn sink(bins: &Bins, items: usize, runs: usize) -> Result<()> {
    println!("\n## sink alone: {items} items pre-published to ITEMS, one sink into PostgreSQL");
    let mut rates = Vec::new();
    for i in 1..=runs {
        let stack = Stack::start(bins, &spider("http://127.0.0.1:9/")).await?;
        stack.run("init", &[]).await?;
        prefill_items(&stack, items).await?;
        let cpu_pg = procs::cpu_time_of_all("postgres");
        let (nats_cpu, _) = stack.server_cpu();
        let started = Instant::now();
        let mut sink = stack.spawn_stage("sink", 1, &[]).await?;
        let ready = started.elapsed();
        let cpu_sink = sink.cpu();
        let started = Instant::now();
        loop {
            let n = stack.db.count(&stack.crawl).await?;
            if n >= items as i64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("sink stored {n} of {items} in 600 s");
            }
            sink.check_running()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let per_1000 = |d: Duration| d.as_secs_f64() * 1000.0 / items as f64;
        let sink_cpu = per_1000(sink.cpu() - cpu_sink);
        let pg_cpu = per_1000(procs::cpu_time_of_all("postgres").saturating_sub(cpu_pg));
        let nats_cpu = per_1000(stack.server_cpu().0 - nats_cpu);
        println!(
            "run {i}: {items} items in {secs:.2} s (ready in {:.2} s): {:.0} items/s; \
             CPU-s/1000 items: sink {sink_cpu:.3}, postgres {pg_cpu:.3}, nats {nats_cpu:.3}; \
             peak RSS {:.1} MB",
            ready.as_secs_f64(),
            items as f64 / secs,
            sink.peak_rss() as f64 / 1e6
        );
        rates.push(items as f64 / secs);
        sink.stop(Duration::from_secs(10)).await;
        stack.finish().await;
    }
    println!("| figure | median of {runs} |\n|---|---|");
    println!("| items/s into PostgreSQL | {:.0} |", median(rates));
    Ok(())
}

/// Publishes `n` product items the way parsers do (message id, JSON), pipelined.
async fn prefill_items(stack: &Stack, n: usize) -> Result<()> {
    let client = async_nats::connect(stack.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let subject = Names::new(&stack.crawl).items_subject();
    let crawl = stack.crawl.clone();
    let now = chrono::Utc::now();
    stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            let subject = subject.clone();
            let url = format!("http://127.0.0.1:8080/product/{i}");
            let mut data = serde_json::Map::new();
            data.insert(
                "title".into(),
                format!("Product {i} — Walnut Desk Lamp").into(),
            );
            data.insert(
                "price".into(),
                format!("£{}.{:02}", 5 + i % 200, i % 100).into(),
            );
            data.insert("sku".into(), format!("SKU-{i:06}").into());
            data.insert("availability".into(), "In stock (7 available)".into());
            data.insert("category".into(), format!("Category {}", i % 20).into());
            data.insert(
                "summary".into(),
                "A sturdy, well-made product for everyday use, in oak and brass.".into(),
            );
            let item = Item {
                crawl: crawl.clone(),
                item_id: item_id(&url, "product", None),
                item_type: "product".into(),
                url,
                data,
                fetched_at: now,
            };
            async move {
                let payload = Bytes::from(serde_json::to_vec(&item)?);
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .message_id(item_msg_id(&item));
                let ack = js.send_publish(subject, publish).await?;
                ack.await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(512)
        .try_collect::<()>()
        .await
}

// ------------------------------------------------------------------------------------
// backpressure

async fn backpressure(bins: &Bins, a: &CrawlArgs, slow_us: u64) -> Result<()> {
    println!(
        "\n## backpressure: {} product pages; slow runs sleep {slow_us} µs per inserted row",
        a.pages
    );
    let mut ratios = Vec::new();
    let mut catch_up = Vec::new();
    for i in 1..=a.runs {
        let normal = crawl_once(bins, a, 0).await?;
        let slow = crawl_once(bins, a, slow_us).await?;
        let ratio = slow.fetch_rate() / normal.fetch_rate();
        println!(
            "run {i}: fetch rate normal {:.0} pages/s, slow DB {:.0} pages/s ({:.1}%); \
             last item stored {:.1} s (normal) vs {:.1} s (slow); sink caught up {:.1} s \
             after the last fetch",
            normal.fetch_rate(),
            slow.fetch_rate(),
            ratio * 100.0,
            normal.secs,
            slow.secs,
            slow.secs - slow.fetch_secs
        );
        ratios.push(ratio * 100.0);
        catch_up.push(slow.secs - slow.fetch_secs);
    }
    println!("| figure | median of {} |\n|---|---|", a.runs);
    println!(
        "| fetch rate with slow DB, % of normal | {:.1} |",
        median(ratios)
    );
    println!(
        "| sink catch-up after last fetch (s) | {:.1} |",
        median(catch_up)
    );
    Ok(())
}

// ------------------------------------------------------------------------------------
// memory

async fn memory(bins: &Bins, a: &CrawlArgs) -> Result<()> {
    println!(
        "\n## memory: RSS of each stage over a {}-product-page distributed crawl",
        a.pages
    );
    let run = crawl_once(
        bins,
        &CrawlArgs {
            runs: 1,
            ..a.clone()
        },
        0,
    )
    .await?;
    println!("{}", crawl_line(&run));
    println!("| items stored | fetcher MB | parser MB | sink MB |\n|---|---|---|---|");
    let total = run.items.max(1);
    let mut next_pct = 0;
    for (items, rss) in &run.samples {
        let pct = items * 100 / total;
        if pct >= next_pct {
            next_pct = pct - pct % 10 + 10;
            println!(
                "| {items} ({pct}%) | {:.1} | {:.1} | {:.1} |",
                rss.get("fetcher").copied().unwrap_or_default(),
                rss.get("parser").copied().unwrap_or_default(),
                rss.get("sink").copied().unwrap_or_default()
            );
        }
    }
    for kind in STAGES {
        println!(
            "peak RSS {kind}: {:.1} MB",
            run.peak_mb.get(kind).copied().unwrap_or_default()
        );
    }
    Ok(())
}
