//! Serves the deterministic demo shop (`jetcrawl_bench::demo_site`) on 127.0.0.1 until
//! ctrl-c. The first stdout line is the base URL, so a parent process can read it.
//!
//! `cargo run --release -p jetcrawl-bench --bin demo-site -- --pages 20000 --port 8080`

use std::io::Write as _;

use anyhow::{Context, Result};
use clap::Parser;

use jetcrawl_bench::demo_site::{self, DemoSite};

#[derive(Debug, Parser)]
#[command(about = "Serve a deterministic e-commerce site for crawl benchmarks")]
struct Args {
    /// Product pages (one category per 1,000 products, at least one).
    #[arg(long, default_value_t = 20_000)]
    pages: usize,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Worker threads of the tokio runtime; one leaves the other cores to the crawler.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("build the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let site = DemoSite::new(args.pages);
    let (products, pages) = (site.products(), site.crawlable_pages());
    let addr = demo_site::serve(site, args.port).await?;
    println!("http://{addr}/");
    std::io::stdout().flush().context("flush stdout")?;
    eprintln!(
        "demo site: {products} products, {pages} crawlable pages, {} worker thread(s)",
        args.threads.max(1)
    );
    tokio::signal::ctrl_c().await.context("wait for ctrl-c")?;
    Ok(())
}
