//! `jetcrawl dead list|show`: read the DEAD stream, group the reasons, show letters.
//! (`retry` and `purge` are in `requeue`.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::message::header;
use jetcrawl_shared::topology::Names;

use super::Stage;
use crate::Common;

/// `jetcrawl dead`'s subcommands.
#[derive(Subcommand)]
pub enum DeadCommand {
    /// Dead letters grouped by stage and reason, with counts.
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        select: Select,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters in full: headers, reason, the start of the payload.
    Show {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        select: Select,
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Republish dead letters to the stage's input (requests straight to the frontier,
    /// past the dupefilter), then remove them from DEAD.
    Retry(super::requeue::RetryArgs),
    /// Remove dead letters without retrying them.
    Purge(super::requeue::PurgeArgs),
}

/// Connect and run one `jetcrawl dead` subcommand.
pub async fn run(command: DeadCommand, stop: &CancellationToken) -> anyhow::Result<()> {
    let common = match &command {
        DeadCommand::List { common, .. } | DeadCommand::Show { common, .. } => common,
        DeadCommand::Retry(args) => &args.common,
        DeadCommand::Purge(args) => &args.common,
    };
    let (spider, nats) = crate::services::connect(common, "dead", stop).await?;
    let js = jetstream::new(nats);
    let names = Names::new(spider.name());
    match &command {
        DeadCommand::List { select, json, .. } => list(&js, &names, select, *json).await,
        DeadCommand::Show { select, limit, .. } => show(&js, &names, select, *limit).await,
        DeadCommand::Retry(args) => super::requeue::retry(&js, &names, &args.select).await,
        DeadCommand::Purge(args) => super::requeue::purge(&js, &names, args).await,
    }
}

/// Which dead letters a subcommand works on.
#[derive(Args, Clone, Default)]
pub struct Select {
    /// Only this stage's (`jetcrawl.<crawl>.dead.<stage>`); default: every stage.
    #[arg(long, value_enum)]
    pub stage: Option<Stage>,
    /// Only these DEAD stream sequences (repeatable).
    #[arg(long = "seq")]
    pub seqs: Vec<u64>,
    /// Only letters whose reason contains this text.
    #[arg(long)]
    pub reason: Option<String>,
}

impl Select {
    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        (self.seqs.is_empty() || self.seqs.contains(&letter.seq))
            && self
                .reason
                .as_ref()
                .is_none_or(|r| letter.reason.contains(r.as_str()))
    }
}

/// One message of the DEAD stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Sequence in the DEAD stream.
    pub seq: u64,
    /// The stage that gave up (the last token of the subject).
    pub stage: String,
    /// Why (`Jetcrawl-Error`).
    pub reason: String,
    /// Where the message came from (`Jetcrawl-Source-Subject`), if known.
    pub source_subject: Option<String>,
    /// When it was dead-lettered (unix milliseconds).
    pub at_ms: i64,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
}

impl DeadLetter {
    fn from_message(msg: jetstream::Message, seq: u64, at_ms: i64) -> DeadLetter {
        let headers = msg.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        DeadLetter {
            seq,
            stage: msg
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            reason: get(header::ERROR).unwrap_or_else(|| "(no reason given)".to_string()),
            source_subject: get(header::SOURCE_SUBJECT),
            at_ms,
            headers,
            payload: msg.payload.clone(),
        }
    }
}

/// Reads the DEAD stream in order, through an ordered (ephemeral, ackless) consumer, so
/// reading leaves no trace and never takes a letter from anyone.
pub struct DeadReader {
    messages: Option<pull::Ordered>,
    remaining: u64,
    /// The stream's last sequence at `open`: letters written later (a retry that fails
    /// again, say) are not read, so a retry cannot chase its own new letters.
    last_seq: u64,
}

impl DeadReader {
    /// Open a reader over `stage`'s letters (every stage's if `None`).
    pub async fn open(
        js: &jetstream::Context,
        names: &Names,
        stage: Option<Stage>,
    ) -> anyhow::Result<DeadReader> {
        let Ok(stream) = js.get_stream(names.dead_stream()).await else {
            // No stage has started yet: nothing was ever dead-lettered.
            return Ok(DeadReader {
                messages: None,
                remaining: 0,
                last_seq: 0,
            });
        };
        let last_seq = stream.cached_info().state.last_sequence;
        let filter_subject = match stage {
            Some(s) => names.dead_subject(s.as_str()),
            None => names.dead_subject(">"),
        };
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("reading the DEAD stream")?;
        let remaining = consumer.info().await.context("DEAD reader")?.num_pending;
        let messages = if remaining > 0 {
            Some(
                consumer
                    .messages()
                    .await
                    .context("reading the DEAD stream")?,
            )
        } else {
            None
        };
        Ok(DeadReader {
            messages,
            remaining,
            last_seq,
        })
    }

    /// The next letter, or `None` once every letter present at `open` has been read.
    pub async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        if self.remaining == 0 {
            return Ok(None);
        }
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("the DEAD stream sent nothing for 10 s")?;
        let Some(msg) = next else {
            return Ok(None);
        };
        let msg = msg.map_err(|e| anyhow::anyhow!("reading the DEAD stream: {e}"))?;
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("dead letter without stream info: {e}"))?;
        let (seq, at, pending) = (
            info.stream_sequence,
            i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            info.pending,
        );
        self.remaining = pending;
        if seq > self.last_seq {
            self.remaining = 0;
            return Ok(None);
        }
        Ok(Some(DeadLetter::from_message(msg, seq, at)))
    }
}

impl DeadReader {
    /// The next letter `select` picks, or `None` at the end.
    pub async fn next_selected(&mut self, select: &Select) -> anyhow::Result<Option<DeadLetter>> {
        while let Some(letter) = self.next().await? {
            if select.matches(&letter) {
                return Ok(Some(letter));
            }
        }
        Ok(None)
    }
}

/// Letters of one stage that failed for one reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Group {
    pub stage: String,
    /// The reason with URLs and numbers masked, so one cause is one group.
    pub reason: String,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// What `dead list --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub crawl: String,
    pub total: u64,
    pub groups: Vec<Group>,
}

/// Group letters by (stage, masked reason), largest groups first.
pub fn group(letters: &[DeadLetter]) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for l in letters {
        let reason = mask(&l.reason);
        let g = groups
            .entry((l.stage.clone(), reason.clone()))
            .or_insert_with(|| Group {
                stage: l.stage.clone(),
                reason,
                count: 0,
                first_seq: l.seq,
                last_seq: l.seq,
            });
        g.count += 1;
        g.first_seq = g.first_seq.min(l.seq);
        g.last_seq = g.last_seq.max(l.seq);
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_seq.cmp(&b.first_seq)));
    out
}

/// `delivered 12 times at http://x/y` → `delivered N times at <url>`.
fn mask(reason: &str) -> String {
    let words = reason.split(' ').map(|w| {
        if w.contains("://") {
            return "<url>".to_string();
        }
        let mut out = String::with_capacity(w.len());
        let mut in_digits = false;
        for c in w.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push('N');
                }
                in_digits = true;
            } else {
                out.push(c);
                in_digits = false;
            }
        }
        out
    });
    words.collect::<Vec<_>>().join(" ")
}

/// `jetcrawl dead list`.
pub async fn list(
    js: &jetstream::Context,
    names: &Names,
    select: &Select,
    json: bool,
) -> anyhow::Result<()> {
    // Grouping needs only stage, reason and sequence: drop the payloads as we go, so
    // listing a large DEAD stream takes little memory.
    let mut reader = DeadReader::open(js, names, select.stage).await?;
    let mut letters = Vec::new();
    while let Some(mut letter) = reader.next_selected(select).await? {
        letter.payload = Bytes::new();
        letter.headers = async_nats::HeaderMap::new();
        letters.push(letter);
    }
    let listing = Listing {
        crawl: names.crawl().to_string(),
        total: letters.len() as u64,
        groups: group(&letters),
    };
    if json {
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(());
    }
    println!("crawl {}: {} dead letter(s)", listing.crawl, listing.total);
    if listing.groups.is_empty() {
        return Ok(());
    }
    println!(
        "{:<8} {:>7} {:>10} {:>10}  REASON",
        "STAGE", "COUNT", "FIRST_SEQ", "LAST_SEQ"
    );
    for g in &listing.groups {
        println!(
            "{:<8} {:>7} {:>10} {:>10}  {}",
            g.stage, g.count, g.first_seq, g.last_seq, g.reason
        );
    }
    println!("\nin full: jetcrawl dead show --spider S --seq N; re-run: jetcrawl dead retry --spider S --stage X");
    Ok(())
}

/// `jetcrawl dead show`.
pub async fn show(
    js: &jetstream::Context,
    names: &Names,
    select: &Select,
    limit: usize,
) -> anyhow::Result<()> {
    let mut reader = DeadReader::open(js, names, select.stage).await?;
    let (mut shown_letters, mut more) = (0usize, 0usize);
    while let Some(l) = reader.next_selected(select).await? {
        if shown_letters == limit {
            more += 1;
            continue;
        }
        shown_letters += 1;
        let at = chrono::DateTime::from_timestamp_millis(l.at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!("#{} stage {} at {at}", l.seq, l.stage);
        println!("  reason: {}", l.reason);
        if let Some(src) = &l.source_subject {
            println!("  from:   {src}");
        }
        for (name, values) in l.headers.iter() {
            let name: &str = name.as_ref();
            if name == header::ERROR || name == header::SOURCE_SUBJECT {
                continue;
            }
            for v in values {
                println!("  {name}: {}", v.as_str());
            }
        }
        let text = String::from_utf8_lossy(&l.payload);
        let shown: String = text.chars().take(600).collect();
        let more = if shown.len() < text.len() { " …" } else { "" };
        println!("  payload ({} bytes): {shown}{more}\n", l.payload.len());
    }
    if more > 0 {
        println!("({more} more; --limit N shows more)");
    }
    if shown_letters == 0 {
        println!("no dead letters selected");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seq: u64, stage: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            seq,
            stage: stage.to_string(),
            reason: reason.to_string(),
            source_subject: None,
            at_ms: 0,
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn one_cause_is_one_group_whatever_its_numbers_and_urls() {
        let letters = [
            letter(
                1,
                "fetcher",
                "delivered 12 times without being acknowledged",
            ),
            letter(2, "parser", "out of scope: http://a.example/x"),
            letter(
                5,
                "fetcher",
                "delivered 13 times without being acknowledged",
            ),
            letter(7, "parser", "out of scope: https://b.example/y?z=1"),
            letter(9, "parser", "not a page: missing header Jetcrawl-Url"),
            letter(
                11,
                "fetcher",
                "delivered 200 times without being acknowledged",
            ),
        ];
        let groups = group(&letters);
        assert_eq!(
            groups,
            vec![
                Group {
                    stage: "fetcher".into(),
                    reason: "delivered N times without being acknowledged".into(),
                    count: 3,
                    first_seq: 1,
                    last_seq: 11,
                },
                Group {
                    stage: "parser".into(),
                    reason: "out of scope: <url>".into(),
                    count: 2,
                    first_seq: 2,
                    last_seq: 7,
                },
                Group {
                    stage: "parser".into(),
                    reason: "not a page: missing header Jetcrawl-Url".into(),
                    count: 1,
                    first_seq: 9,
                    last_seq: 9,
                },
            ]
        );
    }

    #[test]
    fn selection_by_sequence_and_reason() {
        let l = letter(4, "sink", "item is not JSON");
        assert!(Select::default().matches(&l));
        let by_seq = Select {
            seqs: vec![3, 4],
            ..Select::default()
        };
        assert!(by_seq.matches(&l));
        let other_seq = Select {
            seqs: vec![5],
            ..Select::default()
        };
        assert!(!other_seq.matches(&l));
        let by_reason = Select {
            reason: Some("not JSON".into()),
            ..Select::default()
        };
        assert!(by_reason.matches(&l));
        let other_reason = Select {
            reason: Some("too large".into()),
            ..Select::default()
        };
        assert!(!other_reason.matches(&l));
    }
}
