//! The one-shot subcommands over a crawl's JetStream topology: `init`, `seed`, `status`.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::{status, CompiledSpider};

/// Create or upgrade the streams, consumers and (with a database URL) the items table.
pub async fn init(
    spider: &CompiledSpider,
    nats: async_nats::Client,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats);
    topology::ensure_streams(&js, &spider.spider).await?;
    for role in [Role::Seeds, Role::Parser, Role::Sink] {
        topology::ensure_consumer(&js, &spider.spider, role, 10_000).await?;
    }
    topology::retire_shared_fetcher_consumer(&js, &spider.spider).await;
    for p in 0..spider.spider.streams.partitions {
        topology::ensure_partition_consumer(&js, &spider.spider, p, 256).await?;
    }
    jetcrawl_shared::presence::bucket(&js, &spider.spider).await?;
    if let Some(url) = database_url {
        jetcrawl_sink::Store::connect_lazy(&url)?.migrate().await?;
    }
    println!("crawl {} ready", spider.name());
    Ok(())
}

/// Publish seeds: the URLs given, `-` for stdin, or else the spider's start_urls.
pub async fn seed(
    spider: &CompiledSpider,
    nats: async_nats::Client,
    urls: Vec<String>,
) -> anyhow::Result<()> {
    let urls = if urls.iter().any(|u| u == "-") {
        std::io::read_to_string(std::io::stdin()).context("reading seeds from stdin")?
    } else if urls.is_empty() {
        spider.spider.start_urls.join("\n")
    } else {
        urls.join("\n")
    };
    if urls.trim().is_empty() {
        bail!("no seeds: give URLs, `-` for stdin, or start_urls in the spider file");
    }
    let js = async_nats::jetstream::new(nats);
    topology::ensure_streams(&js, &spider.spider).await?;
    let subject = Names::new(spider.name()).seeds_subject();
    js.publish(subject.clone(), urls.clone().into())
        .await?
        .await?;
    println!(
        "published {} seed line(s) to {subject}",
        urls.lines().count()
    );
    Ok(())
}

/// Print stream depths and consumer lag, once or every two seconds until `stop`.
pub async fn status(
    spider: &CompiledSpider,
    nats: async_nats::Client,
    json: bool,
    watch: bool,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats);
    let mut previous: Option<(status::Status, std::time::Instant)> = None;
    loop {
        match status::collect(&js, &spider.spider).await {
            Ok(mut st) => {
                let now = std::time::Instant::now();
                if let Some((prev, at)) = &previous {
                    st = st.with_rates(prev, now.duration_since(*at).as_secs_f64());
                }
                if json {
                    println!("{}", serde_json::to_string(&st)?);
                } else {
                    println!("{st}");
                }
                if !watch {
                    return Ok(());
                }
                previous = Some((st, now));
            }
            // A leader election or a reconnect to another node: --watch carries on.
            Err(e) if watch => tracing::warn!(error = %e, "status not available now; retrying"),
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
