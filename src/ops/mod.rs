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

use jetcrawl_shared::topology::Role;

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

    /// The durable consumers this stage pulls from.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Stage::Fetcher => &[Role::Fetcher],
            Stage::Parser => &[Role::Parser, Role::Seeds],
            Stage::Seeds => &[Role::Seeds],
            Stage::Sink => &[Role::Sink],
        }
    }
}
