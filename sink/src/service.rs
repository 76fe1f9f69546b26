//! The sink service: pull items, batch by size or time, one transaction a batch,
//! ack after commit. Two batches are written at once, so the next one is decoded and
//! sent while the database commits the last (rows are written in key order, so two
//! batches cannot deadlock on each other; a batch sharing an item with the one in
//! flight waits for it, so versions of an item are stored in publish order). A database outage holds the batches (and
//! so the pull) and retries; the ITEMS stream is the buffer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::consume::{self, ack, give_up, ConsumeOptions};
use jetcrawl_shared::message::Item;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::CompiledSpider;

use crate::error::SinkError;
use crate::store::Store;

/// Everything a sink process needs.
pub struct SinkConfig {
    /// The spider.
    pub spider: CompiledSpider,
    /// A connected NATS client.
    pub nats: async_nats::Client,
    /// Where items go.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
}

/// Run until `shutdown`, then write or hand back what is held, and return.
pub async fn run(cfg: SinkConfig, shutdown: CancellationToken) -> Result<(), SinkError> {
    let js = jetstream::new(cfg.nats.clone());
    topology::ensure_streams(&js, &cfg.spider.spider).await?;
    migrate_until_ready(&cfg.store, &shutdown).await?;
    let batch_size = cfg.spider.spider.sink.batch_size;
    let batch_timeout = Duration::from_millis(cfg.spider.spider.sink.batch_timeout_ms);
    let (tx, rx) = mpsc::channel::<jetstream::Message>(batch_size);
    let batcher = Batcher {
        store: cfg.store.clone(),
        js: js.clone(),
        names: Names::new(cfg.spider.name()),
        metrics: cfg.metrics.clone(),
        batch_size,
        batch_timeout,
        progress_every: cfg.spider.spider.streams.ack_wait() / 3,
        store_timeout: (cfg.spider.spider.streams.ack_wait() / 2).max(Duration::from_secs(10)),
        shutdown: shutdown.clone(),
    };
    let batching = tokio::spawn(Arc::new(batcher).run(rx));
    let opts = ConsumeOptions {
        role: Role::Sink,
        max_in_flight: batch_size,
        max_ack_pending: (batch_size as i64 * 8).max(1_000),
        // Held messages can be redelivered once or twice in a long database outage;
        // only a message that keeps coming back unacked is poison.
        poison_deliveries: 25,
        drain_deadline: Duration::from_secs(5),
        replay: None,
        partition: None,
    };
    consume::consume(
        js,
        Arc::new(cfg.spider.spider.clone()),
        opts,
        cfg.metrics.clone(),
        shutdown,
        move |msg| {
            let tx = tx.clone();
            async move {
                // Bounded: when the batcher is busy (or the database down), pulling waits.
                if let Err(mpsc::error::SendError(msg)) = tx.send(msg).await {
                    ack(&msg, AckKind::Nak(None)).await;
                }
            }
        },
    )
    .await;
    // The consumer loop has ended and dropped its sender: the batcher flushes and ends.
    let _ = batching.await;
    cfg.store.close().await;
    Ok(())
}

async fn migrate_until_ready(store: &Store, shutdown: &CancellationToken) -> Result<(), SinkError> {
    let mut delay = Duration::from_millis(500);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

struct Batcher {
    store: Store,
    js: jetstream::Context,
    names: Names,
    metrics: Metrics,
    batch_size: usize,
    batch_timeout: Duration,
    progress_every: Duration,
    /// Longest wait for one batch's transaction.
    store_timeout: Duration,
    shutdown: CancellationToken,
}

/// Batches being written at once: one committing while the next is sent is what
/// hides the round trips; more only queue on the same table.
const WRITERS: usize = 2;

/// A hash of an item's row key, for telling whether two batches share a row.
fn item_key(item: &Item) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(item.crawl.as_bytes());
    h.update(b"\0");
    h.update(item.item_id.as_bytes());
    h.digest()
}

/// Forget a finished write's keys; a writer that panicked is logged (its messages,
/// unacked, come back after ack_wait).
fn settled(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, HashSet<u64>>,
) {
    match done {
        Ok((id, ())) => {
            in_flight.remove(&id);
        }
        Err(e) => {
            tracing::error!(error = %e, "batch writer failed");
            in_flight.remove(&e.id());
        }
    }
}

impl Batcher {
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<jetstream::Message>) {
        let writers = Arc::new(tokio::sync::Semaphore::new(WRITERS));
        let mut writing = tokio::task::JoinSet::new();
        // The item keys of each batch being written. A batch sharing a key with one in
        // flight waits for it: two versions of an item with the same fetch time (a
        // replay) must be committed in the order they arrived.
        let mut in_flight: HashMap<tokio::task::Id, HashSet<u64>> = HashMap::new();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.batch_timeout;
            while batch.len() < self.batch_size {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => batch.push(m),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let (msgs, items) = self.decode(batch).await;
            if items.is_empty() {
                continue;
            }
            let keys: HashSet<u64> = items.iter().map(item_key).collect();
            while let Some(done) = writing.try_join_next_with_id() {
                settled(done, &mut in_flight);
            }
            if in_flight.values().any(|k| !k.is_disjoint(&keys)) {
                while let Some(done) = writing.join_next_with_id().await {
                    settled(done, &mut in_flight);
                }
            }
            let Ok(permit) = writers.clone().acquire_owned().await else {
                break; // never closed
            };
            let this = Arc::clone(&self);
            let task = writing.spawn(async move {
                this.write(msgs, items).await;
                drop(permit);
            });
            in_flight.insert(task.id(), keys);
        }
        while let Some(done) = writing.join_next_with_id().await {
            settled(done, &mut in_flight);
        }
    }

    /// Decode a batch; what is not an item is dead-lettered here.
    async fn decode(&self, batch: Vec<jetstream::Message>) -> (Vec<jetstream::Message>, Vec<Item>) {
        let mut msgs = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for msg in batch {
            match serde_json::from_slice::<Item>(&msg.payload) {
                Ok(item) => {
                    items.push(item);
                    msgs.push(msg);
                }
                Err(e) => {
                    let reason = format!("not an item: {e}");
                    give_up(&self.js, &self.names, "sink", &msg, &reason, &self.metrics).await;
                }
            }
        }
        (msgs, items)
    }

    /// One store call, bounded and interruptible: a statement stuck on a lock or a
    /// connection to a vanished host must neither hang the sink nor its shutdown.
    /// `None` when shutdown came first.
    async fn store_bounded(&self, items: &[Item]) -> Option<Result<(), SinkError>> {
        tokio::select! {
            r = tokio::time::timeout(self.store_timeout, self.store.store(items)) => Some(match r {
                Ok(r) => r,
                Err(_) => Err(SinkError::Database {
                    code: None,
                    message: format!("no answer within {:?}", self.store_timeout),
                    retryable: true,
                }),
            }),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Store (retrying while the database is away), then ack every message.
    async fn write(&self, msgs: Vec<jetstream::Message>, items: Vec<Item>) {
        let mut delay = Duration::from_millis(250);
        let mut last_progress = Instant::now();
        loop {
            let started = Instant::now();
            let Some(stored) = self.store_bounded(&items).await else {
                futures::future::join_all(msgs.iter().map(|m| ack(m, AckKind::Nak(None)))).await;
                return;
            };
            match stored {
                Ok(()) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.items_stored.inc_by(items.len() as u64);
                    futures::future::join_all(msgs.iter().map(|m| ack(m, AckKind::Ack))).await;
                    tracing::debug!(items = items.len(), "batch committed");
                    return;
                }
                Err(e) if e.is_data_error() => {
                    // Something in the batch can never be stored: find it item by item.
                    tracing::warn!(error = %e, "batch refused; storing items one by one");
                    self.write_each(msgs, items).await;
                    return;
                }
                Err(e) => {
                    // The database's state, not the data's: hold the batch and retry.
                    tracing::warn!(error = %e, items = items.len(), retry_in_ms = delay.as_millis() as u64, "batch not stored; holding it");
                    if last_progress.elapsed() >= self.progress_every {
                        futures::future::join_all(msgs.iter().map(|m| ack(m, AckKind::Progress)))
                            .await;
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => {
                            futures::future::join_all(msgs.iter().map(|m| ack(m, AckKind::Nak(None)))).await;
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn write_each(&self, msgs: Vec<jetstream::Message>, items: Vec<Item>) {
        let mut rest = msgs.into_iter().zip(items);
        while let Some((msg, item)) = rest.next() {
            let Some(stored) = self.store_bounded(std::slice::from_ref(&item)).await else {
                // Shutdown: this and every item after it go back to the stream.
                ack(&msg, AckKind::Nak(None)).await;
                futures::future::join_all(rest.map(|(m, _)| async move {
                    ack(&m, AckKind::Nak(None)).await;
                }))
                .await;
                return;
            };
            match stored {
                Ok(()) => {
                    self.metrics.items_stored.inc();
                    ack(&msg, AckKind::Ack).await;
                }
                Err(e) if !e.is_data_error() => {
                    ack(&msg, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                Err(e) => {
                    give_up(
                        &self.js,
                        &self.names,
                        "sink",
                        &msg,
                        &e.to_string(),
                        &self.metrics,
                    )
                    .await;
                }
            }
        }
    }
}
