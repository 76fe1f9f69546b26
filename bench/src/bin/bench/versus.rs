//! jetcrawl against `spider` (crates.io), the most used Rust crawler, on the same demo
//! site in the same invocation: each run crawls a fresh site three times, once with
//! each contender, in an order that rotates from run to run, so the machine's drifting
//! load falls on all three alike. Every contender must fetch each page exactly once
//! (counted by the site) and yield every product item, or the run fails.
//!
//! The peer is `bench/peer-spider` (its own workspace, so the test command never builds
//! it): spider with robots.txt obeyed, `utm_*` stripped before its visited set sees a
//! link, the same six fields extracted with `scraper`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::stack::{Bins, Proc, SiteProc};

use crate::crawl::{crawl_once, stages_cpu_per_1000, CrawlRun, STAGES};
use crate::embedded::{embedded_once, wait_or_kill, EmbeddedRun};
use crate::{median, CrawlArgs};

/// What one peer crawl measured.
#[derive(Debug, Clone, Copy)]
struct PeerRun {
    pages: f64,
    secs: f64,
    cpu: f64,
    peak_mb: f64,
}

impl PeerRun {
    fn pages_per_sec(&self) -> f64 {
        self.pages / self.secs
    }
}

struct Round {
    peer: PeerRun,
    embedded: EmbeddedRun,
    distributed: CrawlRun,
}

pub(crate) async fn versus(bins: &Bins, a: &CrawlArgs) -> Result<()> {
    let peer_bin = peer_bin()?;
    println!(
        "\n## versus spider: {} product pages; spider 2.53 (in memory), jetcrawl crawl \
         (SQLite), jetcrawl distributed (1 fetcher, 1 parser, 1 sink); concurrency {}",
        a.pages, a.concurrency
    );
    let mut rounds = Vec::new();
    for i in 1..=a.runs {
        let (mut peer, mut embedded, mut distributed) = (None, None, None);
        // Rotate the order: run 1 peer first, run 2 embedded first, run 3 distributed first.
        for k in 0..3 {
            match (i - 1 + k) % 3 {
                0 => peer = Some(peer_once(bins, &peer_bin, a).await?),
                1 => embedded = Some(embedded_once(bins, a).await?),
                _ => distributed = Some(crawl_once(bins, a, 0).await?),
            }
        }
        let (Some(peer), Some(embedded), Some(distributed)) = (peer, embedded, distributed) else {
            bail!("a contender did not run");
        };
        let round = Round {
            peer,
            embedded,
            distributed,
        };
        println!("run {i}:");
        print_round(&round);
        rounds.push(round);
    }
    print_medians(&rounds);
    Ok(())
}

/// `PEER_SPIDER_BIN`, or where scripts/bench.sh builds it.
fn peer_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PEER_SPIDER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("current exe")?;
    let target = exe
        .parent()
        .and_then(|release| release.parent())
        .context("target dir")?;
    let bin = target.join("peer-spider/release/peer-spider");
    if !bin.is_file() {
        bail!(
            "{} not built; run `cargo build --release --manifest-path bench/peer-spider/Cargo.toml \
             --target-dir target/peer-spider` (scripts/bench.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

async fn peer_once(bins: &Bins, peer_bin: &std::path::Path, a: &CrawlArgs) -> Result<PeerRun> {
    let site_model = DemoSite::new(a.pages);
    let expect = site_model.crawlable_pages() as u64;
    let tmp = tempfile::tempdir()?;
    let mut site = SiteProc::start(bins, a.pages, tmp.path()).await?;
    let args = [site.base.clone(), a.concurrency.to_string()];
    let started = Instant::now();
    let proc = Proc::spawn("peer-spider", peer_bin, &args, tmp.path())?;
    let log = proc.log().to_path_buf();
    let (status, usage) = wait_or_kill(proc, a.timeout_secs).await?;
    let secs = started.elapsed().as_secs_f64();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("peer-spider exited with {status}:\n{out}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("pages "))
        .with_context(|| format!("peer-spider printed no result:\n{out}"))?;
    let field = |name: &str| -> Option<f64> {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == name {
                return words.next()?.parse().ok();
            }
        }
        None
    };
    let (Some(items), Some(lagged)) = (field("items"), field("lagged")) else {
        bail!("peer-spider result unreadable: {line}");
    };
    if lagged > 0.0 || items as usize != site_model.products() {
        bail!(
            "peer-spider extracted {items} items ({lagged} pages lost to a lagging \
             subscriber), expected {}",
            site_model.products()
        );
    }
    let hits = site.hits().await?;
    if hits.pages != expect || hits.repeated != 0 || hits.requests != expect {
        bail!("the site has {expect} pages; peer-spider got {hits:?}");
    }
    site.proc.stop(std::time::Duration::from_secs(5)).await;
    Ok(PeerRun {
        pages: expect as f64,
        secs,
        cpu: usage.cpu.as_secs_f64(),
        peak_mb: usage.peak_rss as f64 / 1e6,
    })
}

fn print_round(r: &Round) {
    let d = &r.distributed;
    println!(
        "  spider      {:>6.0} pages/s  CPU {:.3} ms/page  peak RSS {:.0} MB",
        r.peer.pages_per_sec(),
        r.peer.cpu * 1000.0 / r.peer.pages,
        r.peer.peak_mb
    );
    println!(
        "  embedded    {:>6.0} pages/s  CPU {:.3} ms/page  peak RSS {:.0} MB  ({:.2}x spider)",
        r.embedded.pages_per_sec(),
        r.embedded.cpu_per_1000(),
        r.embedded.peak_mb,
        r.embedded.pages_per_sec() / r.peer.pages_per_sec()
    );
    let rss: Vec<String> = STAGES
        .iter()
        .map(|k| format!("{:.0}", d.peak_mb.get(k).copied().unwrap_or_default()))
        .collect();
    let per_stage: Vec<String> = STAGES
        .iter()
        .map(|k| format!("{k} {:.3}", d.cpu_per_1000(k)))
        .collect();
    println!(
        "  distributed {:>6.0} pages/s  CPU {:.3} ms/page (stages: {}), nats-server {:.3}, \
         redis {:.3}  peak RSS {} MB  ({:.2}x spider)",
        d.pages_per_sec(),
        stages_cpu_per_1000(d),
        per_stage.join(", "),
        d.cpu_per_1000("nats"),
        d.cpu_per_1000("redis"),
        rss.join(" / "),
        d.pages_per_sec() / r.peer.pages_per_sec()
    );
}

fn print_medians(rounds: &[Round]) {
    let m = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let n = rounds.len();
    println!("\n| contender (median of {n}) | pages/s | CPU ms/page | peak RSS MB |");
    println!("|---|---|---|---|");
    println!(
        "| spider 2.53, in memory | {:.0} | {:.3} | {:.0} |",
        m(&|r| r.peer.pages_per_sec()),
        m(&|r| r.peer.cpu * 1000.0 / r.peer.pages),
        m(&|r| r.peer.peak_mb)
    );
    println!(
        "| jetcrawl embedded (SQLite) | {:.0} | {:.3} | {:.0} |",
        m(&|r| r.embedded.pages_per_sec()),
        m(&|r| r.embedded.cpu_per_1000()),
        m(&|r| r.embedded.peak_mb)
    );
    let stage_rss =
        |k: &'static str| m(&move |r| r.distributed.peak_mb.get(k).copied().unwrap_or_default());
    println!(
        "| jetcrawl distributed (stages' CPU) | {:.0} | {:.3} | {:.0} / {:.0} / {:.0} |",
        m(&|r| r.distributed.pages_per_sec()),
        m(&|r| stages_cpu_per_1000(&r.distributed)),
        stage_rss("fetcher"),
        stage_rss("parser"),
        stage_rss("sink")
    );
    println!("\n| ratio, per run then median | median |");
    println!("|---|---|");
    println!(
        "| embedded pages/s ÷ spider's | {:.2} |",
        m(&|r| r.embedded.pages_per_sec() / r.peer.pages_per_sec())
    );
    println!(
        "| distributed pages/s ÷ spider's | {:.2} |",
        m(&|r| r.distributed.pages_per_sec() / r.peer.pages_per_sec())
    );
    println!(
        "| nats-server CPU ms/page, distributed | {:.3} |",
        m(&|r| r.distributed.cpu_per_1000("nats"))
    );
}
