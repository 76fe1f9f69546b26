//! `jetcrawl check`: validate a spider file and, given a page, show what its rules
//! extract and which links they follow — with the parser's own code.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use url::Url;

use jetcrawl_fetcher::{FetchOutcome, Fetcher, FetcherOptions};
use jetcrawl_parser::Rules;
use jetcrawl_shared::canon;
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

/// What `jetcrawl check` was asked.
pub struct CheckOptions {
    /// The spider file.
    pub spider: PathBuf,
    /// The page's URL (its rules match on it, its links resolve against it).
    pub url: Option<String>,
    /// An HTML file, or a URL to fetch; default: fetch `url`.
    pub html: Option<String>,
}

/// Validate, then (with a URL) parse one page and print the result.
pub async fn run(opts: CheckOptions) -> anyhow::Result<()> {
    let spider = CompiledSpider::load(&opts.spider)?;
    let rules = Rules::new(&spider).with_context(|| format!("{}", opts.spider.display()))?;
    let fields: usize = spider.spider.items.iter().map(|r| r.fields.len()).sum();
    println!(
        "{}: ok (crawl {:?}, {} item rule(s), {fields} field(s))",
        opts.spider.display(),
        spider.name(),
        spider.spider.items.len()
    );
    let Some(raw_url) = opts
        .url
        .as_deref()
        .or(opts.html.as_deref().filter(|h| is_url(h)))
    else {
        if opts.html.is_some() {
            bail!("--html FILE needs --url: the page's address decides which rules apply");
        }
        return Ok(());
    };
    let url = canon::canonicalize_str(raw_url, None, &spider.query_filter)
        .with_context(|| format!("--url {raw_url}"))?;
    let page = match opts.html.as_deref() {
        Some(file) if !is_url(file) => {
            let body = std::fs::read(file).with_context(|| format!("reading --html {file}"))?;
            let (text, charset) = jetcrawl_fetcher::charset::decode_body_for_url(&body, None, &url);
            Page {
                charset: Some(charset.to_string()),
                ..Page::html(url.clone(), 0, text)
            }
        }
        fetch_from => {
            let target = match fetch_from {
                Some(other) => canon::canonicalize_str(other, None, &spider.query_filter)
                    .with_context(|| format!("--html {other}"))?,
                None => url.clone(),
            };
            let mut page = fetch(&spider, &target).await?;
            // The rules see the page under --url, as the crawl would have named it.
            if fetch_from.is_some() {
                page.url = url.clone();
                page.final_url = url.clone();
            }
            page
        }
    };
    let extracted = rules.parse(&page);
    println!("\npage {} (status {})", page.final_url, status_text(&page));
    if !page.is_parseable_html() {
        println!("  not a 2xx HTML page: nothing is extracted");
    }
    println!("\nitems ({}):", extracted.items.len());
    for item in &extracted.items {
        let shown = serde_json::json!({
            "type": item.item_type,
            "item_id": item.item_id,
            "url": item.url,
            "data": item.data,
        });
        println!("{}", serde_json::to_string_pretty(&shown)?);
    }
    println!(
        "\nlinks followed ({}, at depth 1 of max_depth {}):",
        extracted.links.len(),
        spider.spider.max_depth
    );
    for link in &extracted.links {
        println!("  {link}");
    }
    Ok(())
}

fn is_url(s: &str) -> bool {
    Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

fn status_text(page: &Page) -> String {
    match (&page.status, &page.error) {
        (_, Some(e)) => format!("error: {e}"),
        (Some(s), None) => s.to_string(),
        (None, None) => "none".to_string(),
    }
}

/// One GET with the fetcher's own client, robots and caps (no retries).
async fn fetch(spider: &CompiledSpider, url: &Url) -> anyhow::Result<Page> {
    let mut spider = spider.clone();
    spider.spider.http.max_tries = 1;
    let options = FetcherOptions::bounded_by_caller(
        usize::MAX,
        spider.spider.politeness.concurrency_per_host,
    );
    let fetcher = Fetcher::new(Arc::new(spider), options, Metrics::new())?;
    let req = CrawlRequest::new(url.to_string(), 0);
    match fetcher.fetch(&req, None).await {
        FetchOutcome::Page(page) => Ok(*page),
        FetchOutcome::Retry { request, .. } => {
            bail!("fetching {url}: {}", request.last_error.unwrap_or_default())
        }
        FetchOutcome::Later(_) | FetchOutcome::Revoked => {
            bail!("fetching {url}: the host or its robots.txt cannot be reached now")
        }
        FetchOutcome::Invalid(reason) => bail!("fetching {url}: {reason}"),
    }
}
