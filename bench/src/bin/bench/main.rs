//! The crawl benchmarks: distributed and embedded crawls of the demo site, the sink
//! alone, backpressure from a slow database, and memory over a long crawl. Every
//! figure comes from real processes on real servers this binary starts; each scenario
//! runs `--runs` times and prints its runs and their median.
//!
//! `cargo build --release --bins && target/release/bench all` (scripts/bench.sh).

mod crawl;
mod embedded;
mod export;
mod floor;
mod hosts;
mod parse;
mod render;
mod sink;
mod versus;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use jetcrawl_bench::stack::Bins;

use crate::crawl::{backpressure, distributed, memory};
use crate::embedded::embedded;
use crate::sink::sink;
use crate::versus::versus;

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
    /// The parser's page work alone: fast path against DOM on the demo shop's pages.
    Parse {
        #[arg(long, default_value_t = 2_000)]
        pages: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// nats-server's CPU for a page's messages with stand-in stages that do nothing
    /// else (the floor under the distributed crawl's figure), alternating with crawls.
    NatsFloor(CrawlArgs),
    /// spider (crates.io), jetcrawl embedded and jetcrawl distributed on the same site,
    /// interleaved run by run, with the ratios (the peer: bench/peer-spider).
    Versus(CrawlArgs),
    /// The sink alone: items/s into PostgreSQL from a pre-filled ITEMS stream.
    Sink {
        #[arg(long, default_value_t = 200_000)]
        items: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Distributed crawls, normal then with the database made slow, each run.
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
    /// A broad crawl: many small polite sites on distinct loopback addresses, with 1
    /// fetcher and with `--fetchers`, alternating.
    Hosts {
        #[arg(long, default_value_t = 500)]
        hosts: usize,
        /// Products per site.
        #[arg(long, default_value_t = 20)]
        pages: usize,
        #[arg(long, default_value_t = 3)]
        fetchers: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// `jetcrawl export` alone: a pre-filled PAGES stream into WARC, a pre-filled
    /// table into JSON Lines and CSV.
    Export {
        #[arg(long, default_value_t = 20_000)]
        pages: usize,
        #[arg(long, default_value_t = 200_000)]
        items: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// `[render]` pages: `jetcrawl crawl` rendering a script-built shop in headless
    /// Chromium (needs chromium; not part of `all`).
    Render {
        /// Product pages (each built by a script from a JSON API).
        #[arg(long, default_value_t = 200)]
        pages: usize,
        /// Browser tabs.
        #[arg(long, default_value_t = 4)]
        tabs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Every scenario with its defaults (memory with 200,000 pages, one run).
    All {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[derive(Args, Clone)]
pub(crate) struct CrawlArgs {
    /// Product pages of the demo site.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) pages: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) fetchers: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) parsers: usize,
    /// `--concurrency` of each fetcher (and of the embedded crawl).
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) timeout_secs: u64,
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
        Scenario::Versus(a) => versus(&bins, &a).await?,
        Scenario::NatsFloor(a) => floor::floor(&bins, &a).await?,
        Scenario::Parse { pages, rounds } => parse::parse(pages, rounds)?,
        Scenario::Sink { items, runs } => sink(&bins, items, runs).await?,
        Scenario::Backpressure {
            crawl,
            slow_us_per_row,
        } => backpressure(&bins, &crawl, slow_us_per_row).await?,
        Scenario::Memory { crawl } => memory(&bins, &crawl).await?,
        Scenario::Hosts {
            hosts,
            pages,
            fetchers,
            runs,
        } => hosts::hosts(&bins, hosts, pages, fetchers, runs).await?,
        Scenario::Export { pages, items, runs } => {
            export::export(&bins, pages, items, runs).await?
        }
        Scenario::Render { pages, tabs, runs } => render::render(&bins, pages, tabs, runs).await?,
        Scenario::All { runs } => {
            distributed(&bins, &CrawlArgs::with(20_000, runs)).await?;
            embedded(&bins, &CrawlArgs::with(20_000, runs)).await?;
            versus(&bins, &CrawlArgs::with(20_000, runs)).await?;
            parse::parse(2_000, 5)?;
            sink(&bins, 200_000, runs).await?;
            backpressure(&bins, &CrawlArgs::with(20_000, runs), 2000).await?;
            memory(&bins, &CrawlArgs::with(200_000, 1)).await?;
            hosts::hosts(&bins, 500, 20, 3, runs).await?;
            export::export(&bins, 20_000, 200_000, runs).await?;
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
pub(crate) fn spider(base: &str) -> String {
    format!(
        r#"name = "{{crawl}}"
start_urls = ["{base}"]
allowed_domains = ["127.0.0.1"]
max_depth = 100
user_agent = "jetcrawl-bench"
obey_robots = true
# The shop's sitemap lists the products its pages link to: the figures are for links.
sitemaps = false
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

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
