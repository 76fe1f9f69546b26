//! Where an embedded crawl's items go, and the sink task that batches them there.
//!
//! SQLite (the default, `<crawl>.db`) and PostgreSQL go through [`jetcrawl_sink::Store`]:
//! the same `jetcrawl_items` table and idempotent upserts as the distributed sink.
//! JSON Lines (`*.jsonl`) appends one item per line, flushed per batch: a file has no
//! upsert, so a second run appends its items again (dedupe on `item_id` when reading).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::message::Item;
use jetcrawl_sink::Store;

use super::progress::Stats;

/// An open output.
pub enum Output {
    /// SQLite or PostgreSQL.
    Store {
        /// The pool.
        store: Store,
        /// The URL, password redacted.
        shown: String,
    },
    /// A JSON Lines file, appended to.
    JsonLines {
        /// Its path.
        path: PathBuf,
        /// The open file.
        file: tokio::io::BufWriter<tokio::fs::File>,
    },
}

impl Output {
    /// `postgres://` / `postgresql://` / `sqlite:` URLs, `*.jsonl` / `*.ndjson` files,
    /// any other path is a SQLite file.
    pub async fn open(out: &str) -> anyhow::Result<Output> {
        let lower = out.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            let path = PathBuf::from(out);
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            return Ok(Output::JsonLines {
                path,
                file: tokio::io::BufWriter::new(file),
            });
        }
        let url = if lower.starts_with("postgres://")
            || lower.starts_with("postgresql://")
            || lower.starts_with("sqlite:")
        {
            out.to_string()
        } else {
            format!("sqlite://{out}")
        };
        let store = Store::connect_lazy(&url)?;
        store.migrate().await.with_context(|| {
            format!(
                "creating the items table in {}",
                jetcrawl_sink::store::redact(&url)
            )
        })?;
        Ok(Output::Store {
            store,
            shown: jetcrawl_sink::store::redact(&url),
        })
    }

    /// Write one batch; an error here is after retries and means the output is unusable.
    async fn write(&mut self, items: &[Item], stats: &Stats) -> anyhow::Result<()> {
        match self {
            Output::JsonLines { path, file } => {
                let mut buf = Vec::with_capacity(items.len() * 512);
                for item in items {
                    serde_json::to_writer(&mut buf, item)?;
                    buf.push(b'\n');
                }
                file.write_all(&buf)
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                file.flush()
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                stats.stored(items.len());
                Ok(())
            }
            Output::Store { store, .. } => store_batch(store, items, stats).await,
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        match self {
            Output::JsonLines { path, mut file } => {
                file.shutdown()
                    .await
                    .with_context(|| format!("closing {}", path.display()))?;
            }
            Output::Store { store, .. } => store.close().await,
        }
        Ok(())
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Store { shown, .. } => f.write_str(shown),
            Output::JsonLines { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Store a batch: retry what may pass later (a busy database), find and skip (with an
/// error counted) single items that can never be stored.
async fn store_batch(store: &Store, items: &[Item], stats: &Stats) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match store.store(items).await {
            Ok(()) => {
                stats.stored(items.len());
                return Ok(());
            }
            Err(e) if e.is_retryable() && attempt < 8 => {
                tracing::warn!(error = %e, items = items.len(), retry_in_ms = delay.as_millis() as u64, "batch not stored; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) if e.is_retryable() => return Err(e).context("storing items"),
            Err(e) => {
                tracing::warn!(error = %e, "batch refused; storing items one by one");
                for item in items {
                    match store.store(std::slice::from_ref(item)).await {
                        Ok(()) => stats.stored(1),
                        Err(e) => {
                            tracing::error!(item_id = %item.item_id, url = %item.url, error = %e, "item not stored");
                            stats.error();
                        }
                    }
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Batch size and the longest a partial batch waits.
pub struct Batching {
    pub size: usize,
    pub timeout: Duration,
}

/// Write items in batches until the channel closes, then flush and close the output.
/// On a failure that retries do not cure, cancel `fail` (the crawl stops) and return it.
pub async fn sink(
    mut output: Output,
    mut items: mpsc::Receiver<Item>,
    batching: Batching,
    stats: Arc<Stats>,
    fail: CancellationToken,
) -> anyhow::Result<()> {
    let size = batching.size.max(1);
    while let Some(first) = items.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + batching.timeout;
        while batch.len() < size {
            tokio::select! {
                item = items.recv() => match item {
                    Some(item) => batch.push(item),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if let Err(e) = output.write(&batch, &stats).await {
            tracing::error!(error = %format!("{e:#}"), "output failed; stopping the crawl");
            fail.cancel();
            return Err(e);
        }
    }
    output.close().await
}
