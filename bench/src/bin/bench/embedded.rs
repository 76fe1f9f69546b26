//! `jetcrawl crawl` (one process, SQLite) on the demo site.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::stack::{Bins, Proc, SiteProc};

use crate::{median, spider, CrawlArgs};

pub(crate) async fn embedded(bins: &Bins, a: &CrawlArgs) -> Result<()> {
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
        let pid = proc.pid();
        let waited = tokio::time::timeout(
            Duration::from_secs(a.timeout_secs),
            tokio::task::spawn_blocking(move || proc.wait_with_usage()),
        )
        .await;
        let Ok(waited) = waited else {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("jetcrawl crawl did not finish in {} s", a.timeout_secs);
        };
        let (status, usage) = waited??;
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
