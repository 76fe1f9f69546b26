//! `jetcrawl demo`: serve the demo shop on a loopback port and crawl it in embedded mode,
//! so the first command a new user runs works on any machine, online or not.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use jetcrawl_demo_site::DemoSite;

use crate::embedded;

/// The demo spider; `jetcrawl demo` swaps this start URL for the shop's real address.
pub const SPIDER: &str = include_str!("../examples/demo.toml");
const SPIDER_START: &str = "http://127.0.0.1:8080/";

/// `jetcrawl demo`'s flags.
#[derive(Args)]
pub struct DemoArgs {
    /// Product pages in the shop (plus one listing page per 20 and the home page).
    #[arg(long, default_value_t = 1000)]
    pages: usize,
    /// Where the items go: `file.db` (SQLite), `file.jsonl` or `postgres://...`.
    #[arg(long, default_value = "demo.db")]
    out: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Only serve the shop on this address until Ctrl-C (e.g. `0.0.0.0:8080` for the
    /// compose stack's `shop`), instead of crawling it.
    #[arg(long)]
    serve: Option<SocketAddr>,
}

/// Serve the shop; crawl it unless `--serve` was given.
pub async fn run(args: DemoArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let site = DemoSite::new(args.pages);
    let (products, pages) = (site.products(), site.crawlable_pages());
    if let Some(addr) = args.serve {
        let bound = jetcrawl_demo_site::serve_on(site, addr)
            .await
            .context("serving the demo shop")?;
        tracing::info!(addr = %bound, products, pages, "demo shop listening");
        println!("http://{bound}/");
        stop.cancelled().await;
        return Ok(());
    }
    let bound = jetcrawl_demo_site::serve(site, 0)
        .await
        .context("serving the demo shop")?;
    let base = format!("http://{bound}/");
    eprintln!("demo shop: {products} products, {pages} pages at {base}");

    let dir = tempfile_dir()?;
    let spider = dir.join("demo.toml");
    std::fs::write(&spider, spider_for(&base))
        .with_context(|| format!("writing {}", spider.display()))?;
    let opts = embedded::CrawlOptions {
        spider,
        out: Some(args.out.clone()),
        concurrency: args.concurrency,
        tabs: 1,
        chromium: None,
    };
    let crawled = embedded::run(opts, stop).await;
    let _ = std::fs::remove_dir_all(&dir);
    crawled?;
    println!("\n{}", query_hint(&args.out));
    Ok(())
}

/// The demo spider with `base` as its start URL.
pub fn spider_for(base: &str) -> String {
    SPIDER.replacen(SPIDER_START, base, 1)
}

/// How to look at what the crawl stored in `out`.
fn query_hint(out: &str) -> String {
    if out.ends_with(".jsonl") {
        return format!("items are in {out}, one JSON object a line:\n  head -3 {out}");
    }
    if out.starts_with("postgres://") || out.starts_with("postgresql://") {
        return format!(
            "items are in table jetcrawl_items (crawl 'demo'):\n  psql {out} -c \
             \"select data->>'title', data->>'price' from jetcrawl_items where crawl = 'demo' limit 5\""
        );
    }
    let file = out.strip_prefix("sqlite://").unwrap_or(out);
    format!(
        "items are in {file} (SQLite), table jetcrawl_items:\n  sqlite3 {file} \
         \"select json_extract(data, '$.title'), json_extract(data, '$.price') from jetcrawl_items limit 5\"\n\
         next: the same spider format on a real site, `jetcrawl crawl examples/books.toml`"
    )
}

/// A fresh private directory for the generated spider file.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "jetcrawl-demo-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_spider_is_valid_and_starts_at_the_shop() {
        let text = spider_for("http://127.0.0.1:4321/");
        assert!(text.contains(r#"start_urls = ["http://127.0.0.1:4321/"]"#));
        let dir = tempfile_dir().unwrap();
        let path = dir.join("demo.toml");
        std::fs::write(&path, &text).unwrap();
        let spider = jetcrawl_shared::CompiledSpider::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        let spider = spider.unwrap();
        assert_eq!(spider.name(), "demo");
        assert!(spider.spider.allow_private_networks);
    }

    #[test]
    fn hints_name_the_right_tool() {
        assert!(query_hint("demo.db").contains("sqlite3 demo.db"));
        assert!(query_hint("sqlite://x.db").contains("sqlite3 x.db"));
        assert!(query_hint("out.jsonl").contains("head -3 out.jsonl"));
        assert!(query_hint("postgres://u@h/db").contains("psql postgres://u@h/db"));
    }
}
