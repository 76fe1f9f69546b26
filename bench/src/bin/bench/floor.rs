//! nats-server's share of a page with no crawler around it: the messages a distributed
//! crawl sends per page (a request into FRONTIER, the page into PAGES, an item into
//! ITEMS, each with its message id, publish ack, delivery and ack), on the streams and
//! consumers `jetcrawl init` and the stages create, driven by stand-ins that do no
//! other work. The server's CPU per page here is the floor for the distributed crawl's
//! `nats` figure under the stream contracts (DESIGN.md); `bench distributed` runs in the
//! same invocation, alternating, for the comparison.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use url::Url;

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_bench::stack::{Bins, Stack};
use jetcrawl_shared::message::{item_id, item_msg_id, request_id, CrawlRequest, Item, Page};
use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::CompiledSpider;

use crate::crawl::crawl_once;
use crate::{median, spider, CrawlArgs};

/// The host the stand-ins' URLs name (nothing listens there: nothing is fetched).
const HOST: &str = "127.0.0.1:9";

pub(crate) async fn floor(bins: &Bins, args: &CrawlArgs) -> Result<()> {
    let pages = args.pages;
    println!(
        "\n## nats floor: {pages} pages' messages through nats-server with stand-in stages \
         (no fetching, parsing or storing), alternating with distributed crawls"
    );
    let (mut floor_cpu, mut crawl_cpu, mut floor_rate) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=args.runs {
        let (cpu, rate) = floor_once(bins, pages).await?;
        println!(
            "run {i}: floor: nats-server {cpu:.3} CPU-ms/page, {rate:.0} pages/s through the \
             stand-ins"
        );
        floor_cpu.push(cpu);
        floor_rate.push(rate);
        let crawl = crawl_once(bins, args, 0).await?;
        let nats = crawl.cpu_per_1000("nats");
        println!("run {i}: distributed crawl: nats-server {nats:.3} CPU-ms/page");
        crawl_cpu.push(nats);
    }
    println!("| figure | median of {} |\n|---|---|", args.runs);
    println!(
        "| nats-server CPU-ms/page, stand-ins (the floor) | {:.3} |",
        median(floor_cpu)
    );
    println!(
        "| nats-server CPU-ms/page, distributed crawl | {:.3} |",
        median(crawl_cpu)
    );
    println!(
        "| pages/s through the stand-ins | {:.0} |",
        median(floor_rate)
    );
    Ok(())
}

/// One run: nats-server CPU-ms per page and pages/s.
async fn floor_once(bins: &Bins, pages: usize) -> Result<(f64, f64)> {
    let stack = Stack::start(bins, &spider(&format!("http://{HOST}/"))).await?;
    stack.run("init", &[]).await?;
    let compiled =
        CompiledSpider::from_toml(&std::fs::read_to_string(&stack.spider)?, &stack.spider)?;
    let spider = &compiled.spider;
    let js = stack.jetstream().await?;
    let names = Names::new(&spider.name);
    // The stages' consumers, with their windows (fetcher 64, parser and sink 1,000).
    let frontier = topology::ensure_partition_consumer(&js, spider, 0, 64).await?;
    let pages_in = topology::ensure_consumer(&js, spider, Role::Parser, 1_000).await?;
    let items_in = topology::ensure_consumer(&js, spider, Role::Sink, 1_000).await?;

    let before = stack.server_cpu().0;
    let started = Instant::now();
    let seeder = seed(&js, &names, pages);
    let fetcher = fetch_stand_in(&js, &names, frontier, pages);
    let parser = parse_stand_in(&js, &names, pages_in, &stack.crawl, pages);
    let sink = sink_stand_in(items_in, pages);
    let run = async { tokio::try_join!(seeder, fetcher, parser, sink) };
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .context("stand-ins did not finish in 600 s")??;
    let secs = started.elapsed().as_secs_f64();
    let cpu = (stack.server_cpu().0 - before).as_secs_f64() * 1000.0 / pages as f64;
    stack.finish().await;
    Ok((cpu, pages as f64 / secs))
}

fn url(i: usize) -> String {
    format!("http://{HOST}/product/{i}")
}

/// The requests, as parsers publish them (JSON, message id = fingerprint and depth).
async fn seed(js: &jetstream::Context, names: &Names, pages: usize) -> Result<()> {
    let subject = names.frontier_subject(0);
    futures::stream::iter(0..pages)
        .map(|i| {
            let request = CrawlRequest::new(url(i), 3);
            let publish = PublishMessage::build()
                .payload(Bytes::from(
                    serde_json::to_vec(&request).unwrap_or_default(),
                ))
                .message_id(request_id(i as u64, 3));
            publish_acked(js, subject.clone(), publish)
        })
        .buffer_unordered(512)
        .try_collect()
        .await
}

/// For each request: the demo page as the fetcher publishes it (body, metadata headers,
/// message id), publish ack awaited, then the request acked. 64 at a time.
async fn fetch_stand_in(
    js: &jetstream::Context,
    names: &Names,
    consumer: PullConsumer,
    pages: usize,
) -> Result<()> {
    let site = DemoSite::new(pages);
    let subject = names.pages_subject();
    let (site, subject) = (&site, &subject);
    consumer
        .messages()
        .await?
        .take(pages)
        .map_err(anyhow::Error::from)
        .try_for_each_concurrent(64, |msg| async move {
            let request: CrawlRequest = serde_json::from_slice(&msg.payload)?;
            let url = Url::parse(&request.url)?;
            let (_, body) = site.body(url.path(), HOST);
            let page = Page::html(url, request.depth, body);
            let publish = PublishMessage::build()
                .payload(page.body.clone())
                .headers(page.to_headers())
                .message_id(request.page_msg_id(page.fingerprint));
            publish_acked(js, subject.clone(), publish).await?;
            msg.ack().await.map_err(anyhow::Error::msg)
        })
        .await
}

/// For each page: its item published (message id = item id), then the page acked.
async fn parse_stand_in(
    js: &jetstream::Context,
    names: &Names,
    consumer: PullConsumer,
    crawl: &str,
    pages: usize,
) -> Result<()> {
    let subject = names.items_subject();
    let subject = &subject;
    consumer
        .messages()
        .await?
        .take(pages)
        .map_err(anyhow::Error::from)
        .try_for_each_concurrent(256, |msg| async move {
            let page = Page::from_message(msg.headers.as_ref(), msg.payload.clone())?;
            let mut data = serde_json::Map::new();
            data.insert("title".into(), format!("Product at {}", page.url).into());
            data.insert("price".into(), "£12.34".into());
            data.insert(
                "sku".into(),
                format!("SKU-{:016x}", page.fingerprint).into(),
            );
            let item = Item {
                crawl: crawl.to_string(),
                item_id: item_id(page.url.as_str(), "product", None),
                item_type: "product".into(),
                url: page.url.to_string(),
                data,
                fetched_at: page.fetched_at,
            };
            let publish = PublishMessage::build()
                .payload(Bytes::from(serde_json::to_vec(&item)?))
                .message_id(item_msg_id(&item));
            publish_acked(js, subject.clone(), publish).await?;
            msg.ack().await.map_err(anyhow::Error::msg)
        })
        .await
}

/// Every item acked, as the sink acks a stored batch.
async fn sink_stand_in(consumer: PullConsumer, pages: usize) -> Result<()> {
    let mut messages = consumer.messages().await?.take(pages);
    let mut n = 0;
    while let Some(msg) = messages.next().await {
        msg.map_err(anyhow::Error::msg)?
            .ack()
            .await
            .map_err(anyhow::Error::msg)?;
        n += 1;
    }
    if n < pages {
        bail!("the sink stand-in got {n} of {pages} items");
    }
    Ok(())
}

async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    publish: PublishMessage,
) -> Result<()> {
    js.send_publish(subject, publish).await?.await?;
    Ok(())
}
