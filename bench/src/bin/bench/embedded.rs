//! `jetcrawl crawl` (one process, SQLite) on the demo site.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::stack::{Bins, Proc, SiteProc};

use crate::{median, spider, CrawlArgs};

/// What one embedded crawl measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmbeddedRun {
    pub(crate) pages: f64,
    pub(crate) secs: f64,
    /// The crawl process's CPU seconds (user + system, from `wait4`).
    pub(crate) cpu: f64,
    /// The demo site's CPU seconds over the same time.
    pub(crate) site_cpu: f64,
    pub(crate) peak_mb: f64,
}

impl EmbeddedRun {
    pub(crate) fn pages_per_sec(&self) -> f64 {
        self.pages / self.secs
    }
    pub(crate) fn cpu_per_1000(&self) -> f64 {
        self.cpu * 1000.0 / self.pages
    }
}

pub(crate) async fn embedded(bins: &Bins, a: &CrawlArgs) -> Result<()> {
    println!(
        "\n## embedded: {} product pages, `jetcrawl crawl --concurrency {}` to SQLite",
        a.pages, a.concurrency
    );
    let mut rows = Vec::new();
    for i in 1..=a.runs {
        let run = embedded_once(bins, a).await?;
        println!(
            "run {i}: {:.0} pages in {:.2} s: {:.0} pages/s; \
             CPU-s/1000 pages: jetcrawl {:.3}, site {:.3}; peak RSS {:.1} MB",
            run.pages,
            run.secs,
            run.pages_per_sec(),
            run.cpu_per_1000(),
            run.site_cpu * 1000.0 / run.pages,
            run.peak_mb
        );
        rows.push(run);
    }
    let m = |f: fn(&EmbeddedRun) -> f64| median(rows.iter().map(f).collect());
    println!("| figure | median of {} |", rows.len());
    println!("|---|---|");
    println!("| pages/s | {:.0} |", m(EmbeddedRun::pages_per_sec));
    println!(
        "| CPU-s per 1,000 pages | {:.3} |",
        m(EmbeddedRun::cpu_per_1000)
    );
    println!("| peak RSS (MB) | {:.1} |", m(|r| r.peak_mb));
    Ok(())
}

/// One `jetcrawl crawl` of a fresh demo site; fails unless SQLite holds every product
/// and the site served every page exactly once.
pub(crate) async fn embedded_once(bins: &Bins, a: &CrawlArgs) -> Result<EmbeddedRun> {
    let site_model = DemoSite::new(a.pages);
    let pages = site_model.crawlable_pages() as f64;
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
    let (status, usage) = wait_or_kill(proc, a.timeout_secs).await?;
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
    let hits = site.hits().await?;
    let expect = pages as u64;
    if hits.pages != expect || hits.repeated != 0 || hits.requests != expect {
        bail!("the site has {expect} pages; the embedded crawl got {hits:?}");
    }
    site.proc.stop(Duration::from_secs(5)).await;
    Ok(EmbeddedRun {
        pages,
        secs,
        cpu: usage.cpu.as_secs_f64(),
        site_cpu,
        peak_mb: usage.peak_rss as f64 / 1e6,
    })
}

/// Waits for `proc` to exit (its exit status and `wait4` usage), killing it after
/// `timeout_secs`.
pub(crate) async fn wait_or_kill(
    proc: Proc,
    timeout_secs: u64,
) -> Result<(std::process::ExitStatus, jetcrawl_bench::stack::Usage)> {
    let pid = proc.pid();
    let name = proc.name.clone();
    let waited = tokio::time::timeout(
        Duration::from_secs(timeout_secs),
        tokio::task::spawn_blocking(move || proc.wait_with_usage()),
    )
    .await;
    let Ok(waited) = waited else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        bail!("{name} did not finish in {timeout_secs} s");
    };
    waited?
}

async fn sqlite_count(path: &std::path::Path) -> Result<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM jetcrawl_items")
        .fetch_one(&mut conn)
        .await?)
}
