//! `jetcrawl status`: stream depths and consumer lag, read straight from JetStream.

use std::fmt;

use async_nats::jetstream;
use serde::Serialize;

use crate::error::Error;
use crate::presence;
use crate::topology::{self, Names, Role};

/// One crawl's state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Crawl name.
    pub crawl: String,
    /// The four streams.
    pub streams: Vec<StreamStatus>,
    /// The durable consumers (`fetcher`: all frontier partitions together).
    pub consumers: Vec<ConsumerStatus>,
    /// Live fetchers and what they own.
    pub fetchers: Vec<FetcherStatus>,
    /// Every live instance of every stage, from its heartbeat.
    pub instances: Vec<InstanceStatus>,
    /// Each frontier partition and its owner.
    pub partitions: Vec<PartitionStatus>,
}

/// A live fetcher, from its heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct FetcherStatus {
    /// Instance id (`<host>-<pid>-<random>`).
    pub id: String,
    /// Machine or pod.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// jetcrawl version.
    pub version: String,
    /// Partitions it owns.
    pub partitions: Vec<u32>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
}

/// A live instance of a stage, from its heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// `fetcher`, `parser`, `sink`.
    pub stage: String,
    /// Instance id (`<host>-<pid>-<random>`).
    pub id: String,
    /// Machine or pod.
    pub host: String,
    /// jetcrawl version.
    pub version: String,
    /// Its last heartbeat.
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    /// Milliseconds since then.
    pub heartbeat_age_ms: i64,
}

/// A frontier partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// Its number (`frontier.<p>`).
    pub partition: u32,
    /// The fetcher that owns it, if any does now.
    pub owner: Option<String>,
    /// Requests waiting in it.
    pub pending: u64,
    /// Requests its owner holds (waiting for their host or in flight).
    pub ack_pending: usize,
}

/// A stream's size.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Whether it exists yet.
    pub exists: bool,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// A consumer's lag.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// Stream it reads.
    pub stream: String,
    /// Durable name.
    pub name: String,
    /// Whether it exists yet.
    pub exists: bool,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    /// Delivered more than once, not yet acknowledged.
    pub redelivered: usize,
    /// Pull requests waiting (roughly: idle workers).
    pub waiting: usize,
    /// Messages acknowledged so far (the consumer's ack floor).
    pub acked: u64,
    /// Paused by `jetcrawl pause`: the server delivers nothing until resumed.
    pub paused: bool,
    /// Live instances of the stage that pulls from it (parsers for `seeds`).
    pub live: usize,
    /// Work waits here and no live instance pulls it (and it is not paused).
    pub unattended: bool,
    /// Acks per second since the previous reading (`--watch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
}

impl Status {
    /// Fill in ack rates from an earlier reading taken `secs` before this one.
    pub fn with_rates(mut self, prev: &Status, secs: f64) -> Self {
        if secs > 0.0 {
            for c in &mut self.consumers {
                if let Some(p) = prev.consumers.iter().find(|p| p.name == c.name && p.exists) {
                    c.rate_per_sec = Some(c.acked.saturating_sub(p.acked) as f64 / secs);
                }
            }
        }
        self
    }

    /// True when nothing is queued or in flight anywhere.
    pub fn is_idle(&self) -> bool {
        self.streams
            .iter()
            .filter(|s| s.name.ends_with("_FRONTIER"))
            .all(|s| s.messages == 0)
            && self
                .consumers
                .iter()
                .all(|c| c.pending == 0 && c.ack_pending == 0)
    }
}

/// Read the crawl's streams, consumers, fetchers and partitions.
pub async fn collect(js: &jetstream::Context, spider: &crate::Spider) -> Result<Status, Error> {
    let names = &Names::new(&spider.name);
    let mut streams = Vec::new();
    for name in names.streams() {
        let status = match js.get_stream(&name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| Error::js("stream info", e))?;
                StreamStatus {
                    name,
                    exists: true,
                    messages: info.state.messages,
                    bytes: info.state.bytes,
                }
            }
            Err(_) => StreamStatus {
                name,
                exists: false,
                messages: 0,
                bytes: 0,
            },
        };
        streams.push(status);
    }
    let mut consumers = Vec::new();
    for role in [Role::Seeds, Role::Parser, Role::Sink] {
        let stream = names.stream_of(role);
        let name = role.consumer_name().to_string();
        let info = consumer_info(js, &stream, &name).await;
        consumers.push(ConsumerStatus::from_info(stream, name, info.as_ref()));
    }
    // Read only: looking at a crawl creates nothing.
    let live = match js.get_key_value(presence::bucket_name(&spider.name)).await {
        Ok(store) => presence::read(&store).await.unwrap_or_default(),
        Err(_) => presence::Live::default(),
    };
    let frontier = names.frontier_stream();
    let mut fetcher = ConsumerStatus::from_info(frontier.clone(), "fetcher".into(), None);
    let mut partitions = Vec::new();
    // Paused when every partition consumer is (`jetcrawl pause --stage fetcher`).
    fetcher.paused = true;
    for p in 0..spider.streams.partitions {
        let info = consumer_info(js, &frontier, &topology::partition_consumer_name(p)).await;
        if let Some(i) = &info {
            fetcher.paused &= i.paused;
            fetcher.exists = true;
            fetcher.pending += i.num_pending;
            fetcher.ack_pending += i.num_ack_pending;
            fetcher.redelivered += i.num_redelivered;
            fetcher.waiting += i.num_waiting;
            fetcher.acked += i.ack_floor.consumer_sequence;
        }
        partitions.push(PartitionStatus {
            partition: p,
            owner: live.owners.get(&p).cloned(),
            pending: info.as_ref().map_or(0, |i| i.num_pending),
            ack_pending: info.as_ref().map_or(0, |i| i.num_ack_pending),
        });
    }
    fetcher.paused &= fetcher.exists;
    consumers.insert(1, fetcher);
    if spider.render.is_some() {
        // Render partitions (`renderer-<p>`), all together, once a renderer made them.
        let mut renderer = ConsumerStatus::from_info(frontier.clone(), "renderer".into(), None);
        renderer.paused = true;
        for p in 0..spider.streams.partitions {
            let name = crate::render::render_consumer_name(p);
            if let Some(i) = consumer_info(js, &frontier, &name).await {
                renderer.paused &= i.paused;
                renderer.exists = true;
                renderer.pending += i.num_pending;
                renderer.ack_pending += i.num_ack_pending;
                renderer.redelivered += i.num_redelivered;
                renderer.waiting += i.num_waiting;
                renderer.acked += i.ack_floor.consumer_sequence;
            }
        }
        if renderer.exists {
            consumers.insert(2, renderer);
        }
    }
    let now = chrono::Utc::now();
    let mut instances: Vec<InstanceStatus> = live
        .instances
        .iter()
        .map(|i| InstanceStatus {
            stage: i.stage.clone(),
            id: i.id.clone(),
            host: i.host.clone(),
            version: i.version.clone(),
            heartbeat_at: i.heartbeat_at,
            heartbeat_age_ms: (now - i.heartbeat_at).num_milliseconds().max(0),
        })
        .collect();
    instances.sort_by(|a, b| (&a.stage, &a.id).cmp(&(&b.stage, &b.id)));
    for c in &mut consumers {
        let stage = stage_of(&c.name);
        c.live = instances.iter().filter(|i| i.stage == stage).count();
        // A consumer not created yet would start with what its stream holds.
        let work = if c.exists {
            c.pending + c.ack_pending as u64
        } else {
            streams
                .iter()
                .find(|s| s.name == c.stream)
                .map_or(0, |s| s.messages)
        };
        c.unattended = work > 0 && c.live == 0 && !c.paused;
    }
    let fetchers = live
        .instances
        .into_iter()
        .filter(|i| i.stage == "fetcher")
        .map(|i| FetcherStatus {
            heartbeat_age_ms: (now - i.heartbeat_at).num_milliseconds().max(0),
            id: i.id,
            host: i.host,
            pid: i.pid,
            version: i.version,
            partitions: i.partitions,
        })
        .collect();
    Ok(Status {
        crawl: names.crawl().to_string(),
        streams,
        consumers,
        fetchers,
        instances,
        partitions,
    })
}

/// The stage whose processes pull from consumer `name`.
fn stage_of(consumer: &str) -> &str {
    match consumer {
        "seeds" => "parser",
        other => other,
    }
}

async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> Option<jetstream::consumer::Info> {
    let s = js.get_stream(stream).await.ok()?;
    let mut c = s
        .get_consumer::<jetstream::consumer::pull::Config>(name)
        .await
        .ok()?;
    c.info().await.ok().cloned()
}

impl ConsumerStatus {
    fn from_info(stream: String, name: String, info: Option<&jetstream::consumer::Info>) -> Self {
        ConsumerStatus {
            stream,
            name,
            exists: info.is_some(),
            pending: info.map_or(0, |i| i.num_pending),
            ack_pending: info.map_or(0, |i| i.num_ack_pending),
            redelivered: info.map_or(0, |i| i.num_redelivered),
            waiting: info.map_or(0, |i| i.num_waiting),
            acked: info.map_or(0, |i| i.ack_floor.consumer_sequence),
            paused: info.is_some_and(|i| i.paused),
            live: 0,
            unattended: false,
            rate_per_sec: None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "crawl {}", self.crawl)?;
        writeln!(f, "{:<34} {:>12} {:>14}", "STREAM", "MESSAGES", "BYTES")?;
        for s in &self.streams {
            if s.exists {
                writeln!(f, "{:<34} {:>12} {:>14}", s.name, s.messages, s.bytes)?;
            } else {
                writeln!(f, "{:<34} {:>12} {:>14}", s.name, "-", "(missing)")?;
            }
        }
        writeln!(
            f,
            "{:<34} {:<8} {:>10} {:>11} {:>11} {:>8} {:>10} {:>5}",
            "CONSUMER", "", "PENDING", "ACK_PENDING", "REDELIVERED", "WAITING", "ACKS/S", "LIVE"
        )?;
        for c in &self.consumers {
            if c.exists {
                let rate = c
                    .rate_per_sec
                    .map_or("-".to_string(), |r| format!("{r:.1}"));
                let paused = if c.paused { "  PAUSED" } else { "" };
                writeln!(
                    f,
                    "{:<34} {:<8} {:>10} {:>11} {:>11} {:>8} {:>10} {:>5}{paused}",
                    c.stream,
                    c.name,
                    c.pending,
                    c.ack_pending,
                    c.redelivered,
                    c.waiting,
                    rate,
                    c.live
                )?;
            } else {
                writeln!(f, "{:<34} {:<8} {:>10}", c.stream, c.name, "(missing)")?;
            }
        }
        for c in self.consumers.iter().filter(|c| c.unattended) {
            writeln!(
                f,
                "WARNING: {} has work waiting ({} pending, {} unacked) and no live {}",
                c.name,
                c.pending,
                c.ack_pending,
                stage_of(&c.name)
            )?;
        }
        writeln!(
            f,
            "{:<8} {:<40} {:<24} {:<8} {:>10} {:>9}",
            "STAGE", "INSTANCE", "HOST", "VERSION", "PARTITIONS", "HEARTBEAT"
        )?;
        if self.instances.is_empty() {
            writeln!(f, "(no live instance)")?;
        }
        for i in &self.instances {
            let partitions = self
                .fetchers
                .iter()
                .find(|x| x.id == i.id)
                .map_or("-".to_string(), |x| x.partitions.len().to_string());
            writeln!(
                f,
                "{:<8} {:<40} {:<24} {:<8} {:>10} {:>7}ms",
                i.stage, i.id, i.host, i.version, partitions, i.heartbeat_age_ms
            )?;
        }
        let unowned: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| p.owner.is_none())
            .map(|p| p.partition.to_string())
            .collect();
        if !unowned.is_empty() {
            writeln!(f, "partitions without an owner: {}", unowned.join(", "))?;
        }
        Ok(())
    }
}
