//! Day-2 operations over a running crawl.
//!
//! Layout: `dead` (`jetcrawl dead list|show`: read and group the DEAD stream) ·
//! `requeue` (`jetcrawl dead retry|purge`) · `pause` (`jetcrawl pause|resume`: the
//! JetStream consumer pause) · `health` (`jetcrawl healthcheck`, the container probe).

pub mod dead;
pub mod health;
pub mod pause;
pub mod requeue;

use clap::ValueEnum;

use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::Spider;

/// A stage as operators name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Fetchers (consumer `fetcher` on FRONTIER).
    Fetcher,
    /// Parsers: pages (consumer `parser` on PAGES) and seeds (consumer `seeds`).
    Parser,
    /// Only the parsers' seeds consumer.
    Seeds,
    /// Sinks (consumer `sink` on ITEMS).
    Sink,
}

impl Stage {
    /// The name in `jetcrawl.<crawl>.dead.<stage>` and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetcher => "fetcher",
            Stage::Parser => "parser",
            Stage::Seeds => "seeds",
            Stage::Sink => "sink",
        }
    }

    /// The durable consumers this stage pulls from: (stream, consumer). Fetchers have
    /// one per frontier partition (`fetcher-<p>`), pulled by the partition's owner.
    pub fn consumers(self, spider: &Spider) -> Vec<(String, String)> {
        let names = Names::new(&spider.name);
        let role = |r: Role| (names.stream_of(r), r.consumer_name().to_string());
        match self {
            Stage::Fetcher => (0..spider.streams.partitions)
                .map(|p| {
                    (
                        names.frontier_stream(),
                        topology::partition_consumer_name(p),
                    )
                })
                .collect(),
            Stage::Parser => vec![role(Role::Parser), role(Role::Seeds)],
            Stage::Seeds => vec![role(Role::Seeds)],
            Stage::Sink => vec![role(Role::Sink)],
        }
    }
}
