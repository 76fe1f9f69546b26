//! `jetcrawl export` alone: pages/s from a pre-filled PAGES stream into a WARC file,
//! and rows/s from a pre-filled table into JSON Lines and CSV.

use std::time::Instant;

use anyhow::{bail, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use url::Url;

use jetcrawl_bench::stack::{Bins, Proc, Stack, Usage};
use jetcrawl_shared::message::{Page, ResponseHead};
use jetcrawl_shared::topology::Names;

use crate::{median, spider};

pub(crate) async fn export(bins: &Bins, pages: usize, items: usize, runs: usize) -> Result<()> {
    println!(
        "\n## export: {pages} pages (~20 KB) pre-published to PAGES → --warc; \
         {items} rows in PostgreSQL → --items .jsonl and .csv"
    );
    let (mut warc, mut jsonl, mut csv) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        let stack = Stack::start(bins, &spider("http://127.0.0.1:9/")).await?;
        stack.run("init", &[]).await?;
        prefill_pages(&stack, pages).await?;
        prefill_rows(&stack, items).await?;
        let file = stack.dir.path().join("bench.warc.gz");
        let (secs, usage) = timed(&stack, &["--warc", &file.display().to_string()]).await?;
        let bytes = std::fs::metadata(&file)?.len();
        println!(
            "run {i}: --warc: {pages} pages in {secs:.2} s: {:.0} pages/s, {:.1} MB written \
             ({:.1} MB/s), CPU-s/1000 pages {:.3}, peak RSS {:.1} MB",
            pages as f64 / secs,
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs,
            usage.cpu.as_secs_f64() * 1000.0 / pages as f64,
            usage.peak_rss as f64 / 1e6
        );
        warc.push(pages as f64 / secs);
        for (ext, rates) in [("jsonl", &mut jsonl), ("csv", &mut csv)] {
            let file = stack.dir.path().join(format!("items.{ext}"));
            let db = format!("--database-url={}", stack.db.url);
            let (secs, usage) =
                timed(&stack, &["--items", &file.display().to_string(), &db]).await?;
            println!(
                "run {i}: --items .{ext}: {items} rows in {secs:.2} s: {:.0} rows/s, \
                 {:.1} MB written, peak RSS {:.1} MB",
                items as f64 / secs,
                std::fs::metadata(&file)?.len() as f64 / 1e6,
                usage.peak_rss as f64 / 1e6
            );
            rates.push(items as f64 / secs);
        }
        stack.finish().await;
    }
    println!("| figure | median of {runs} |\n|---|---|");
    println!("| pages/s into WARC | {:.0} |", median(warc));
    println!("| rows/s into JSON Lines | {:.0} |", median(jsonl));
    println!("| rows/s into CSV | {:.0} |", median(csv));
    Ok(())
}

/// Runs `jetcrawl export` with `extra` to its end: seconds (process start included)
/// and its resource usage.
async fn timed(stack: &Stack, extra: &[&str]) -> Result<(f64, Usage)> {
    let mut args = vec![
        "export".to_string(),
        "--spider".to_string(),
        stack.spider.display().to_string(),
        "--nats-url".to_string(),
        stack.nats.url(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let started = Instant::now();
    let proc = Proc::spawn("export", &stack.bins.jetcrawl, &args, stack.dir.path())?;
    let log = proc.log().to_path_buf();
    let (status, usage) = tokio::task::spawn_blocking(move || proc.wait_with_usage()).await??;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "export {extra:?} exited with {status}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok((secs, usage))
}

/// Publishes `n` page records of ~20 KB the way fetchers do, pipelined.
async fn prefill_pages(stack: &Stack, n: usize) -> Result<()> {
    let js = stack.jetstream().await?;
    let subject = Names::new(&stack.crawl).pages_subject();
    let filler =
        "<p>A sturdy, well-made product for everyday use, in oak and brass.</p>\n".repeat(280);
    stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            let subject = subject.clone();
            let body = format!(
                "<html><head><title>Product {i}</title></head><body><h1>Product {i}</h1>\n{filler}</body></html>"
            );
            async move {
                let length = body.len().to_string();
                let url = Url::parse(&format!("http://127.0.0.1:8080/product/{i}"))?;
                let page = Page {
                    final_url: url.clone(),
                    fingerprint: i as u64,
                    url,
                    status: Some(200),
                    content_type: Some("text/html; charset=utf-8".into()),
                    depth: 1,
                    fetched_at: chrono::Utc::now(),
                    fetch_ms: 3,
                    tries: 1,
                    charset: Some("UTF-8".into()),
                    truncated: false,
                    error: None,
                    error_kind: None,
                    response: Some(ResponseHead::keep(
                        "HTTP/1.1",
                        [
                            ("content-type", &b"text/html; charset=utf-8"[..]),
                            ("date", b"Sun, 06 Dec 2026 03:00:00 GMT"),
                            ("etag", b"\"0123456789abcdef\""),
                            ("content-length", length.as_bytes()),
                        ],
                    )),
                    body: Bytes::from(body),
                    lastmod: None,
                    sitemaps: Vec::new(),
                    etag: None,
                    last_modified: None,
                    rendered: false,
                };
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(page.body.clone())
                    .headers(page.to_headers())
                    .message_id(format!("bench-page-{i}"));
                js.send_publish(subject, publish).await?.await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(256)
        .try_collect::<()>()
        .await
}

/// `n` product rows of six short fields, as the sink stores them.
async fn prefill_rows(stack: &Stack, n: usize) -> Result<()> {
    let pool = sqlx::PgPool::connect(&stack.db.url).await?;
    sqlx::query(
        "INSERT INTO jetcrawl_items (crawl, item_id, item_type, url, data, fetched_at, stored_at)
         SELECT $1, md5(i::text) || md5((i + 1)::text), 'product',
                'http://127.0.0.1:8080/product/' || i,
                jsonb_build_object('title', 'Product ' || i || ' — Walnut Desk Lamp',
                    'price', '£' || (5 + i % 200) || '.' || lpad((i % 100)::text, 2, '0'),
                    'sku', 'SKU-' || lpad(i::text, 6, '0'), 'availability', 'In stock (7 available)',
                    'category', 'Category ' || (i % 20),
                    'summary', 'A sturdy, well-made product for everyday use, in oak and brass.'),
                now(), now()
         FROM generate_series(1, $2) AS i",
    )
    .bind(&stack.crawl)
    .bind(n as i64)
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}
