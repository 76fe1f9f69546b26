//! `jetcrawl pause|resume`: stop and restart a stage's consumption everywhere at once.
//!
//! A JetStream consumer pause (nats-server 2.11+): the server stops delivering the
//! stage's durable consumer to every process that pulls from it, until the deadline or a
//! resume. Nothing is lost: messages stay in their stream; what was already delivered is
//! finished and acked as usual. The stages keep running (and healthy); they simply get
//! no messages. A stage that (re)creates its consumer while it is paused keeps the
//! pause (`topology::ensure_consumer` carries the deadline over).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use clap::Args;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::topology::{self, Role};
use jetcrawl_shared::CompiledSpider;

use super::Stage;
use crate::Common;

/// Stands for "until `jetcrawl resume`": a pause needs a deadline.
const UNTIL_RESUMED: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `jetcrawl pause`'s flags.
#[derive(Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub common: Common,
    /// The stage to pause (`parser` pauses both its consumers, pages and seeds).
    #[arg(long, value_enum)]
    pub stage: Stage,
    /// Resume by itself after this long (30m, 6h, 2d); default: until `jetcrawl resume`.
    #[arg(long = "for")]
    pub for_: Option<String>,
}

/// `jetcrawl resume`'s flags.
#[derive(Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The stage to resume.
    #[arg(long, value_enum)]
    pub stage: Stage,
}

/// `jetcrawl pause`: connect and pause.
pub async fn run_pause(args: PauseArgs, stop: &CancellationToken) -> anyhow::Result<()> {
    let (spider, nats) = crate::services::connect(&args.common, "pause", stop).await?;
    pause(
        &jetstream::new(nats),
        &spider,
        args.stage,
        args.for_.as_deref(),
    )
    .await
}

/// `jetcrawl resume`: connect and resume.
pub async fn run_resume(args: ResumeArgs, stop: &CancellationToken) -> anyhow::Result<()> {
    let (spider, nats) = crate::services::connect(&args.common, "resume", stop).await?;
    resume(&jetstream::new(nats), &spider, args.stage).await
}

/// Pause `stage`'s consumers, creating them first if no stage has yet (so a stage
/// started later starts paused).
pub async fn pause(
    js: &jetstream::Context,
    spider: &CompiledSpider,
    stage: Stage,
    for_: Option<&str>,
) -> anyhow::Result<()> {
    let length = match for_ {
        Some(s) => crate::replay::parse_age(s)?
            .to_std()
            .context("--for must be positive")?,
        None => UNTIL_RESUMED,
    };
    let until = async_nats::datetime::add_std_duration(async_nats::datetime::now(), length)
        .map_err(|e| anyhow::anyhow!("pause deadline: {e}"))?;
    topology::ensure_streams(js, &spider.spider).await?;
    let consumers = stage.consumers(&spider.spider);
    for (stream_name, consumer) in &consumers {
        let stream = js.get_stream(stream_name).await.context("stream")?;
        if stream.consumer_info(consumer).await.is_err() {
            create(js, spider, stage, consumer).await?;
        }
        let paused = stream
            .pause_consumer(consumer, until)
            .await
            .with_context(|| {
                format!("pausing consumer {consumer} on {stream_name} (needs nats-server 2.11 or newer)")
            })?;
        anyhow::ensure!(
            paused.paused,
            "the server did not pause consumer {consumer} (nats-server 2.11 or newer needed)"
        );
    }
    let until = match for_ {
        Some(_) => format!("until {until}"),
        None => "until `jetcrawl resume`".to_string(),
    };
    println!(
        "paused {}: {} {until}",
        stage.as_str(),
        describe(&consumers)
    );
    Ok(())
}

/// Create a consumer no stage has created yet, with the settings `jetcrawl init` uses,
/// so a stage started later starts paused.
async fn create(
    js: &jetstream::Context,
    spider: &CompiledSpider,
    stage: Stage,
    consumer: &str,
) -> anyhow::Result<()> {
    let spider = &spider.spider;
    if stage == Stage::Fetcher {
        let p = (0..spider.streams.partitions)
            .find(|p| topology::partition_consumer_name(*p) == consumer)
            .context("not a partition consumer")?;
        topology::ensure_partition_consumer(js, spider, p, 256).await?;
        return Ok(());
    }
    let role = [Role::Parser, Role::Seeds, Role::Sink]
        .into_iter()
        .find(|r| r.consumer_name() == consumer)
        .context("not a stage consumer")?;
    topology::ensure_consumer(js, spider, role, 10_000).await?;
    Ok(())
}

/// `consumer parser on JETCRAWL_x_PAGES, ...`; partition consumers summed up.
fn describe(consumers: &[(String, String)]) -> String {
    match consumers {
        [(stream, one)] => format!("consumer {one} on {stream}"),
        [(stream, first), .., (_, last)] if first.starts_with("fetcher-") => {
            format!("{} consumers {first} … {last} on {stream}", consumers.len())
        }
        many => many
            .iter()
            .map(|(stream, c)| format!("consumer {c} on {stream}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Resume `stage`'s consumers.
pub async fn resume(
    js: &jetstream::Context,
    spider: &CompiledSpider,
    stage: Stage,
) -> anyhow::Result<()> {
    let consumers = stage.consumers(&spider.spider);
    let mut resumed = Vec::new();
    for (stream_name, consumer) in &consumers {
        let Ok(stream) = js.get_stream(stream_name).await else {
            continue;
        };
        if stream.consumer_info(consumer).await.is_err() {
            continue;
        }
        stream
            .resume_consumer(consumer)
            .await
            .with_context(|| format!("resuming consumer {consumer}"))?;
        resumed.push((stream_name.clone(), consumer.clone()));
    }
    if resumed.is_empty() {
        println!("{}: no consumer to resume yet", stage.as_str());
    } else {
        println!("resumed {}: {}", stage.as_str(), describe(&resumed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_consumers() {
        let one = [("S".to_string(), "sink".to_string())];
        assert_eq!(describe(&one), "consumer sink on S");
        let parts: Vec<_> = (0..16)
            .map(|p| ("F".to_string(), format!("fetcher-{p}")))
            .collect();
        assert_eq!(describe(&parts), "16 consumers fetcher-0 … fetcher-15 on F");
        let two = [
            ("P".to_string(), "parser".to_string()),
            ("F".to_string(), "seeds".to_string()),
        ];
        assert_eq!(describe(&two), "consumer parser on P, consumer seeds on F");
    }
}
