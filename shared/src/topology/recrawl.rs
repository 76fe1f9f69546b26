//! The RECRAWL stream (`[recrawl]` only): pages' next fetches, as JetStream message
//! schedules (nats-server 2.12+).
//!
//! A schedule is a message on `jetcrawl.<crawl>.recrawl.at.<fingerprint>` (one per URL:
//! a newer one replaces it) with `Nats-Schedule: @at <time>` and
//! `Nats-Schedule-Target: jetcrawl.<crawl>.recrawl.due.<partition>`. At that time the
//! server publishes the request on the target, and FRONTIER sources RECRAWL's `due`
//! subjects, turning `recrawl.due.<p>` into `frontier.<p>`: the request reaches its
//! partition's fetcher with no process in between. A due message is kept for a while
//! after it fired (`Nats-Schedule-TTL`: the page's interval, at least a minute, at
//! most a day), long enough for the source to have copied it.
//!
//! The schedules cannot live in FRONTIER itself: the server refuses message schedules
//! on a stream with `discard: new`, which FRONTIER needs for backpressure.

use std::time::Duration;

use async_nats::jetstream::stream::{
    self, DiscardPolicy, RetentionPolicy, Source, StorageType, SubjectTransform,
};

use async_nats::jetstream;

use super::Names;
use crate::config::Spider;
use crate::error::Error;

pub(super) fn stream_config(spider: &Spider, names: &Names) -> stream::Config {
    stream::Config {
        name: names.recrawl_stream(),
        description: Some(format!(
            "jetcrawl {}: pages' next fetches ([recrawl] message schedules)",
            spider.name
        )),
        subjects: vec![format!("{}.>", names.recrawl_prefix())],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: spider.streams.replicas,
        duplicate_window: Duration::from_secs(spider.streams.duplicate_window_secs),
        allow_message_schedules: true,
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// FRONTIER's source: RECRAWL's due requests, onto their frontier partitions.
pub(super) fn frontier_source(names: &Names) -> Source {
    Source {
        name: names.recrawl_stream(),
        subject_transforms: vec![SubjectTransform {
            source: format!("{}.due.*", names.recrawl_prefix()),
            destination: names.frontier_subject_template(),
        }],
        ..Default::default()
    }
}

/// A server before 2.12 stores RECRAWL but ignores `allow_msg_schedules`: schedules
/// would never fire. Say so at start instead.
pub(super) async fn check_schedules(js: &jetstream::Context, names: &Names) -> Result<(), Error> {
    let mut stream = js
        .get_stream(names.recrawl_stream())
        .await
        .map_err(|e| Error::Topology(format!("{}: {e}", names.recrawl_stream())))?;
    let info = stream
        .info()
        .await
        .map_err(|e| Error::Topology(format!("{}: {e}", names.recrawl_stream())))?;
    if !info.config.allow_message_schedules {
        return Err(Error::Topology(format!(
            "[recrawl] needs JetStream message schedules (nats-server 2.12 or newer); \
             this server keeps {} without them",
            names.recrawl_stream()
        )));
    }
    Ok(())
}
