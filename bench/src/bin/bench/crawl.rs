//! Distributed crawls of the demo site: throughput and CPU, backpressure from a slow
//! database, memory over a long crawl.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use jetcrawl_bench::crawl_state::crawl_idle_now;
use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::procs;
use jetcrawl_bench::stack::{Bins, Proc, SiteProc, Stack};

use crate::{median, spider, CrawlArgs};

/// What one distributed crawl measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrawlRun {
    pub(crate) pages: f64,
    pub(crate) items: i64,
    /// Seed → every page fetched.
    fetch_secs: f64,
    /// Seed → every item in the database.
    pub(crate) secs: f64,
    /// CPU seconds during the crawl, by process kind.
    pub(crate) cpu: BTreeMap<&'static str, f64>,
    /// Peak RSS by stage, MB.
    pub(crate) peak_mb: BTreeMap<&'static str, f64>,
    /// (items stored, RSS MB by stage) sampled every second.
    samples: Vec<(i64, BTreeMap<&'static str, f64>)>,
    /// URLs scheduled again at a shallower depth (and so fetched twice, on purpose).
    replanned: u64,
    /// Requests the site served beyond one per page.
    extra_fetches: u64,
}

impl CrawlRun {
    pub(crate) fn pages_per_sec(&self) -> f64 {
        self.pages / self.secs
    }
    fn fetch_rate(&self) -> f64 {
        self.pages / self.fetch_secs
    }
    pub(crate) fn cpu_per_1000(&self, kind: &str) -> f64 {
        self.cpu.get(kind).copied().unwrap_or_default() * 1000.0 / self.pages
    }
}

pub(crate) const STAGES: [&str; 3] = ["fetcher", "parser", "sink"];

/// Runs one distributed crawl of a `pages`-product demo site. `prepare` runs on the
/// database after `jetcrawl init` (the backpressure scenario slows it there).
pub(crate) async fn crawl_once(
    bins: &Bins,
    a: &CrawlArgs,
    slow_us_per_row: u64,
) -> Result<CrawlRun> {
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
    // (seconds, pages fetched, pages parsed, items stored) every 250 ms: written to timeline.csv in
    // the run dir when JETCRAWL_BENCH_KEEP is set, to see where a slow run waited.
    let mut timeline = String::from("secs,pages_fetched,pages_parsed,items_stored\n");
    let mut next_mark = Instant::now();
    let timeout = Duration::from_secs(a.timeout_secs);
    loop {
        let pages = fetched(&stages).await?;
        if run.fetch_secs == 0.0 && pages >= expect_pages {
            run.fetch_secs = started.elapsed().as_secs_f64();
        }
        // Progress from the sink's own counter: polling count(*) in PostgreSQL every
        // few milliseconds would add its own load to the database being measured.
        // The table is counted only to confirm the end.
        let stored = counter_sum(&stages, "sink", "jetcrawl_items_stored_total").await? as i64;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            run.samples.push((stored, rss_by_stage(&stages)));
        }
        if Instant::now() >= next_mark {
            next_mark += Duration::from_millis(250);
            let secs = started.elapsed().as_secs_f64();
            let parsed = counter_sum(&stages, "parser", "jetcrawl_pages_parsed_total").await?;
            let _ = writeln!(timeline, "{secs:.2},{pages},{parsed},{stored}");
        }
        let items = if stored >= expect_items && pages >= expect_pages {
            stack.db.count(&stack.crawl).await?
        } else {
            stored.min(expect_items - 1)
        };
        if items >= expect_items && pages >= expect_pages {
            run.secs = started.elapsed().as_secs_f64();
            run.items = items;
            run.pages = pages;
            break;
        }
        let replanned = counter_sum(&stages, "parser", "jetcrawl_links_replanned_total").await?;
        if pages > expect_pages + replanned.max(expect_pages / 100.0) {
            bail!(
                "{pages} pages fetched, the site has {expect_pages} and {replanned} were \
                 scheduled again at a shallower depth: a page was fetched twice"
            );
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
    if std::env::var_os("JETCRAWL_BENCH_KEEP").is_some() {
        std::fs::write(stack.dir.path().join("timeline.csv"), &timeline)?;
    }
    // Every page exactly once, counted by the site itself, once the crawl is idle
    // (nothing left in FRONTIER, nothing pending or unacked on any consumer).
    let js = stack.jetstream().await?;
    let idle_by = Instant::now() + Duration::from_secs(30);
    while let Err(busy) = crawl_idle_now(&js, &stack.crawl).await {
        if Instant::now() > idle_by {
            bail!("crawl not idle 30 s after its last item: {busy}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = site.hits().await?;
    let expect = expect_pages as u64;
    // A URL found again along a shorter path is fetched again on purpose (the parsers
    // count it). Two pages that find one new URL at the same moment at two depths both
    // schedule it (the depth rule must not depend on which is first), uncounted: a few
    // in 20,000. More than 1% extra fetches is a bug, not that.
    let replanned = counter_sum(&stages, "parser", "jetcrawl_links_replanned_total").await? as u64;
    run.replanned = replanned;
    run.extra_fetches = hits.requests.saturating_sub(expect);
    if hits.pages != expect || run.extra_fetches > replanned.max(expect / 100) {
        bail!("the site has {expect} pages; it served {hits:?}, {replanned} re-planned");
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
    counter_sum(stages, "fetcher", "jetcrawl_pages_fetched_total").await
}

/// A counter summed over every process of one kind.
async fn counter_sum(stages: &[(&'static str, Proc)], kind: &str, counter: &str) -> Result<f64> {
    let mut sum = 0.0;
    for (k, p) in stages {
        if *k == kind {
            sum += p.counter(counter).await?;
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

pub(crate) async fn distributed(bins: &Bins, a: &CrawlArgs) -> Result<()> {
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
        "{:.0} pages ({} fetched again, {} re-planned), {} items in {:.2} s (all fetched at {:.2} s): \
         {:.0} pages/s, {:.0} items/s; CPU-s/1000 pages:",
        r.pages,
        r.extra_fetches,
        r.replanned,
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

pub(crate) fn stages_cpu_per_1000(r: &CrawlRun) -> f64 {
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

// ------------------------------------------------------------------------------------
// backpressure

pub(crate) async fn backpressure(bins: &Bins, a: &CrawlArgs, slow_us: u64) -> Result<()> {
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

pub(crate) async fn memory(bins: &Bins, a: &CrawlArgs) -> Result<()> {
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
