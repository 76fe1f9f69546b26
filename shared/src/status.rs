//! `jetcrawl status`: stream depths and consumer lag, read straight from JetStream.

use std::fmt;

use async_nats::jetstream;
use serde::Serialize;

use crate::error::Error;
use crate::topology::{Names, Role};

/// One crawl's state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Crawl name.
    pub crawl: String,
    /// The four streams.
    pub streams: Vec<StreamStatus>,
    /// The durable consumers.
    pub consumers: Vec<ConsumerStatus>,
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

/// Read the crawl's streams and consumers.
pub async fn collect(js: &jetstream::Context, names: &Names) -> Result<Status, Error> {
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
    for role in [Role::Seeds, Role::Fetcher, Role::Parser, Role::Sink] {
        let stream = names.stream_of(role);
        let name = role.consumer_name().to_string();
        let info = match js.get_stream(&stream).await {
            Ok(s) => match s
                .get_consumer::<jetstream::consumer::pull::Config>(&name)
                .await
            {
                Ok(mut c) => c.info().await.ok().cloned(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        consumers.push(match info {
            Some(i) => ConsumerStatus {
                stream,
                name,
                exists: true,
                pending: i.num_pending,
                ack_pending: i.num_ack_pending,
                redelivered: i.num_redelivered,
                waiting: i.num_waiting,
                acked: i.ack_floor.consumer_sequence,
                paused: i.paused,
                rate_per_sec: None,
            },
            None => ConsumerStatus {
                stream,
                name,
                exists: false,
                pending: 0,
                ack_pending: 0,
                redelivered: 0,
                waiting: 0,
                acked: 0,
                paused: false,
                rate_per_sec: None,
            },
        });
    }
    Ok(Status {
        crawl: names.crawl().to_string(),
        streams,
        consumers,
    })
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
            "{:<34} {:<8} {:>10} {:>11} {:>11} {:>8} {:>10}",
            "CONSUMER", "", "PENDING", "ACK_PENDING", "REDELIVERED", "WAITING", "ACKS/S"
        )?;
        for c in &self.consumers {
            if c.exists {
                let rate = c
                    .rate_per_sec
                    .map_or("-".to_string(), |r| format!("{r:.1}"));
                let paused = if c.paused { "  PAUSED" } else { "" };
                writeln!(
                    f,
                    "{:<34} {:<8} {:>10} {:>11} {:>11} {:>8} {:>10}{paused}",
                    c.stream, c.name, c.pending, c.ack_pending, c.redelivered, c.waiting, rate
                )?;
            } else {
                writeln!(f, "{:<34} {:<8} {:>10}", c.stream, c.name, "(missing)")?;
            }
        }
        Ok(())
    }
}
