//! The sink alone: items/s into PostgreSQL from a pre-filled ITEMS stream.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use jetcrawl_bench::procs;
use jetcrawl_bench::stack::{Bins, Stack};
use jetcrawl_shared::message::{item_id, item_msg_id, Item};
use jetcrawl_shared::topology::Names;

use crate::{median, spider};

pub(crate) async fn sink(bins: &Bins, items: usize, runs: usize) -> Result<()> {
    println!("\n## sink alone: {items} items pre-published to ITEMS, one sink into PostgreSQL");
    let mut rates = Vec::new();
    for i in 1..=runs {
        let stack = Stack::start(bins, &spider("http://127.0.0.1:9/")).await?;
        stack.run("init", &[]).await?;
        prefill_items(&stack, items).await?;
        let cpu_pg = procs::cpu_time_of_all("postgres");
        let (nats_cpu, _) = stack.server_cpu();
        // Timed from before the process starts: it consumes as soon as it is up.
        let started = Instant::now();
        let mut sink = stack.spawn_stage("sink", 1, &[]).await?;
        let ready = started.elapsed();
        let cpu_sink = Duration::ZERO;
        loop {
            // The sink's counter first; the table is counted only to confirm.
            let stored = sink.counter("jetcrawl_items_stored_total").await? as i64;
            let n = if stored >= items as i64 {
                stack.db.count(&stack.crawl).await?
            } else {
                stored
            };
            if n >= items as i64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("sink stored {n} of {items} in 600 s");
            }
            sink.check_running()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let per_1000 = |d: Duration| d.as_secs_f64() * 1000.0 / items as f64;
        let sink_cpu = per_1000(sink.cpu() - cpu_sink);
        let pg_cpu = per_1000(procs::cpu_time_of_all("postgres").saturating_sub(cpu_pg));
        let nats_cpu = per_1000(stack.server_cpu().0 - nats_cpu);
        println!(
            "run {i}: {items} items in {secs:.2} s (start-up included, ready at {:.2} s): {:.0} items/s; \
             CPU-s/1000 items: sink {sink_cpu:.3}, postgres {pg_cpu:.3}, nats {nats_cpu:.3}; \
             peak RSS {:.1} MB",
            ready.as_secs_f64(),
            items as f64 / secs,
            sink.peak_rss() as f64 / 1e6
        );
        rates.push(items as f64 / secs);
        sink.stop(Duration::from_secs(10)).await;
        stack.finish().await;
    }
    println!("| figure | median of {runs} |\n|---|---|");
    println!("| items/s into PostgreSQL | {:.0} |", median(rates));
    Ok(())
}

/// Publishes `n` product items the way parsers do (message id, JSON), pipelined.
async fn prefill_items(stack: &Stack, n: usize) -> Result<()> {
    let js = stack.jetstream().await?;
    let subject = Names::new(&stack.crawl).items_subject();
    let crawl = stack.crawl.clone();
    let now = chrono::Utc::now();
    stream::iter(0..n)
        .map(|i| {
            let js = js.clone();
            let subject = subject.clone();
            let url = format!("http://127.0.0.1:8080/product/{i}");
            let mut data = serde_json::Map::new();
            data.insert(
                "title".into(),
                format!("Product {i} — Walnut Desk Lamp").into(),
            );
            data.insert(
                "price".into(),
                format!("£{}.{:02}", 5 + i % 200, i % 100).into(),
            );
            data.insert("sku".into(), format!("SKU-{i:06}").into());
            data.insert("availability".into(), "In stock (7 available)".into());
            data.insert("category".into(), format!("Category {}", i % 20).into());
            data.insert(
                "summary".into(),
                "A sturdy, well-made product for everyday use, in oak and brass.".into(),
            );
            let item = Item {
                crawl: crawl.clone(),
                item_id: item_id(&url, "product", None),
                item_type: "product".into(),
                url,
                data,
                fetched_at: now,
            };
            async move {
                let payload = Bytes::from(serde_json::to_vec(&item)?);
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .message_id(item_msg_id(&item));
                let ack = js.send_publish(subject, publish).await?;
                ack.await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(512)
        .try_collect::<()>()
        .await
}
