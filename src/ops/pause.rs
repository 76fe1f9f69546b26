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

use jetcrawl_shared::topology::{self, Names};
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
    resume(
        &jetstream::new(nats),
        &Names::new(spider.name()),
        args.stage,
    )
    .await
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
    let names = Names::new(spider.name());
    for &role in stage.roles() {
        let stream_name = names.stream_of(role);
        let stream = js.get_stream(&stream_name).await.context("stream")?;
        if stream.consumer_info(role.consumer_name()).await.is_err() {
            // The same settings `jetcrawl init` creates it with.
            topology::ensure_consumer(js, &spider.spider, role, 10_000).await?;
        }
        let paused = stream
            .pause_consumer(role.consumer_name(), until)
            .await
            .with_context(|| {
                format!(
                    "pausing consumer {} on {stream_name} (needs nats-server 2.11 or newer)",
                    role.consumer_name()
                )
            })?;
        anyhow::ensure!(
            paused.paused,
            "the server did not pause consumer {} (nats-server 2.11 or newer needed)",
            role.consumer_name()
        );
        let until = match for_ {
            Some(_) => format!("until {}", paused.pause_until),
            None => "until `jetcrawl resume`".to_string(),
        };
        println!(
            "paused {}: consumer {} on {stream_name} {until}",
            stage.as_str(),
            role.consumer_name()
        );
    }
    Ok(())
}

/// Resume `stage`'s consumers.
pub async fn resume(js: &jetstream::Context, names: &Names, stage: Stage) -> anyhow::Result<()> {
    for &role in stage.roles() {
        let stream_name = names.stream_of(role);
        let Ok(stream) = js.get_stream(&stream_name).await else {
            println!(
                "{}: stream {stream_name} does not exist yet",
                stage.as_str()
            );
            continue;
        };
        if stream.consumer_info(role.consumer_name()).await.is_err() {
            println!(
                "{}: consumer {} does not exist yet",
                stage.as_str(),
                role.consumer_name()
            );
            continue;
        }
        stream
            .resume_consumer(role.consumer_name())
            .await
            .with_context(|| format!("resuming consumer {}", role.consumer_name()))?;
        println!(
            "resumed {}: consumer {} on {stream_name}",
            stage.as_str(),
            role.consumer_name()
        );
    }
    Ok(())
}
