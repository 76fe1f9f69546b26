//! The sink service: pull items in batches (by size or time), one transaction a
//! batch, ack after commit, all through the shared consume loop, which holds every
//! message (progress acks) until its batch is settled. Two batches are written at
//! once, so the next one is decoded and sent while the database commits the last (rows
//! are written in key order, so two batches cannot deadlock on each other; a batch
//! sharing an item with one in flight waits for it, so versions of an item are stored
//! in publish order). A database outage holds the batches (and so the pull) and
//! retries; the ITEMS stream is the buffer. A slow database gets longer each try.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::consume::{self, sleep_or_shutdown, Batching, ConsumeOptions, Disposition};
use jetcrawl_shared::failpoint;
use jetcrawl_shared::message::Item;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Role};
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

/// Batches being written at once: one committing while the next is sent is what
/// hides the round trips; more only queue on the same table.
const WRITERS: usize = 2;

/// The longest one try at a batch may take, however slow the database.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(600);

/// Run until `shutdown`, then write or hand back what is held, and return.
pub async fn run(cfg: SinkConfig, shutdown: CancellationToken) -> Result<(), SinkError> {
    let js = jetstream::new(cfg.nats.clone());
    topology::ensure_streams(&js, &cfg.spider.spider).await?;
    migrate_until_ready(&cfg.store, &shutdown).await?;
    let batch_size = cfg.spider.spider.sink.batch_size;
    let batching = Batching {
        size: batch_size,
        timeout: Duration::from_millis(cfg.spider.spider.sink.batch_timeout_ms),
    };
    let writer = Arc::new(Writer {
        store: cfg.store.clone(),
        metrics: cfg.metrics.clone(),
        writers: Semaphore::new(WRITERS),
        order: Arc::new(Order::default()),
        store_timeout: (cfg.spider.spider.streams.ack_wait() / 2).max(Duration::from_secs(10)),
        shutdown: shutdown.clone(),
    });
    let opts = ConsumeOptions {
        role: Role::Sink,
        // The batches being written, one waiting for a writer, one filling.
        max_in_flight: batch_size * (WRITERS + 2),
        max_ack_pending: (batch_size as i64 * 8).max(1_000),
        // Held messages can be redelivered once or twice in a long database outage;
        // only a message that keeps coming back unacked is poison.
        poison_deliveries: 25,
        drain_deadline: Duration::from_secs(5),
        replay: None,
        partition: None,
    };
    consume::consume_batches(
        js,
        Arc::new(cfg.spider.spider.clone()),
        opts,
        batching,
        cfg.metrics.clone(),
        shutdown,
        move |msgs| {
            // Here, in delivery order: decode, and take the batch's place among those
            // in flight before a later batch can take its own.
            let batch = Batch::decode(&msgs, &writer.order);
            let writer = writer.clone();
            async move { writer.write(batch).await }
        },
    )
    .await;
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
                if sleep_or_shutdown(shutdown, delay).await {
                    return Err(e);
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A hash of an item's row key, for telling whether two batches share a row.
fn item_key(item: &Item) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(item.crawl.as_bytes());
    h.update(b"\0");
    h.update(item.item_id.as_bytes());
    h.digest()
}

/// The row keys of each batch being written. A batch sharing a key with one in flight
/// waits for it: two versions of an item with the same fetch time (a replay) must be
/// committed in the order they arrived.
#[derive(Default)]
struct Order {
    in_flight: Mutex<HashMap<u64, (HashSet<u64>, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A batch's place in [`Order`]: the earlier batches it waits for; leaving it (drop)
/// lets later ones go.
struct Turn {
    order: Arc<Order>,
    id: u64,
    waits: Vec<CancellationToken>,
    done: CancellationToken,
}

impl Order {
    fn enter(self: &Arc<Self>, keys: HashSet<u64>) -> Turn {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = CancellationToken::new();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let waits = in_flight
            .values()
            .filter(|(k, _)| !k.is_disjoint(&keys))
            .map(|(_, t)| t.clone())
            .collect();
        in_flight.insert(id, (keys, done.clone()));
        Turn {
            order: self.clone(),
            id,
            waits,
            done,
        }
    }
}

impl Turn {
    async fn wait(&self) {
        for earlier in &self.waits {
            earlier.cancelled().await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut in_flight = self
            .order
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        in_flight.remove(&self.id);
        self.done.cancel();
    }
}

/// A batch decoded: its items with their places in the batch, and the disposition of
/// each message so far (what is not an item is already dead).
struct Batch {
    items: Vec<Item>,
    places: Vec<usize>,
    dispositions: Vec<Disposition>,
    turn: Turn,
}

impl Batch {
    fn decode(msgs: &[jetstream::Message], order: &Arc<Order>) -> Batch {
        let mut items = Vec::with_capacity(msgs.len());
        let mut places = Vec::with_capacity(msgs.len());
        let mut dispositions = vec![Disposition::Ack; msgs.len()];
        for (i, msg) in msgs.iter().enumerate() {
            match serde_json::from_slice::<Item>(&msg.payload) {
                Ok(item) => {
                    items.push(item);
                    places.push(i);
                }
                Err(e) => dispositions[i] = Disposition::Dead(format!("not an item: {e}")),
            }
        }
        let turn = order.enter(items.iter().map(item_key).collect());
        Batch {
            items,
            places,
            dispositions,
            turn,
        }
    }
}

struct Writer {
    store: Store,
    metrics: Metrics,
    writers: Semaphore,
    order: Arc<Order>,
    /// The first try's limit for one batch's transaction; it doubles after each try
    /// that ran out, so a database that needs longer gets it.
    store_timeout: Duration,
    shutdown: CancellationToken,
}

/// What one bounded store call came to.
enum Stored {
    Done(Result<(), SinkError>),
    TimedOut,
}

impl Writer {
    /// Write a batch: after the earlier batches it shares rows with, with one of the
    /// writers; retrying while the database is away.
    async fn write(&self, batch: Batch) -> Vec<Disposition> {
        if batch.items.is_empty() {
            return batch.dispositions;
        }
        batch.turn.wait().await;
        let Ok(_writer) = self.writers.acquire().await else {
            return vec![Disposition::Retry(None); batch.dispositions.len()];
        };
        let mut delay = Duration::from_millis(250);
        let mut limit = self.store_timeout;
        loop {
            let started = std::time::Instant::now();
            let error = match self.store_bounded(&batch.items, limit).await {
                Stored::Done(Ok(())) => {
                    failpoint::hit("sink.after-commit");
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.items_stored.inc_by(batch.items.len() as u64);
                    tracing::debug!(items = batch.items.len(), "batch committed");
                    return batch.dispositions;
                }
                Stored::Done(Err(e)) if e.is_data_error() => {
                    // Something in the batch can never be stored: find it item by item.
                    tracing::warn!(error = %e, "batch refused; storing items one by one");
                    return self.write_each(batch, limit).await;
                }
                Stored::Done(Err(e)) => e.to_string(),
                Stored::TimedOut => {
                    let error = format!("no answer within {limit:?}");
                    limit = (limit * 2).min(MAX_STORE_TIMEOUT);
                    error
                }
            };
            // The database's state, not the data's: hold the batch and retry.
            tracing::warn!(
                error,
                items = batch.items.len(),
                retry_in_ms = delay.as_millis() as u64,
                next_limit_s = limit.as_secs(),
                "batch not stored; holding it"
            );
            if sleep_or_shutdown(&self.shutdown, delay).await {
                return retry_all(batch);
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One store call, bounded: a statement stuck on a lock or a connection to a
    /// vanished host must not hang the sink. Shutdown does not cut a write short: the
    /// consume loop's drain deadline does, and hands the batch back.
    async fn store_bounded(&self, items: &[Item], limit: Duration) -> Stored {
        match tokio::time::timeout(limit, self.store.store(items)).await {
            Ok(r) => Stored::Done(r),
            Err(_) => Stored::TimedOut,
        }
    }

    async fn write_each(&self, mut batch: Batch, limit: Duration) -> Vec<Disposition> {
        for (item, &place) in batch.items.iter().zip(&batch.places) {
            batch.dispositions[place] =
                match self.store_bounded(std::slice::from_ref(item), limit).await {
                    Stored::Done(Ok(())) => {
                        self.metrics.items_stored.inc();
                        Disposition::Ack
                    }
                    Stored::Done(Err(e)) if e.is_data_error() => Disposition::Dead(e.to_string()),
                    Stored::Done(Err(_)) | Stored::TimedOut => {
                        Disposition::Retry(Some(Duration::from_secs(1)))
                    }
                };
        }
        failpoint::hit("sink.after-commit");
        batch.dispositions
    }
}

/// Every item of the batch back to the stream (what was dead stays dead).
fn retry_all(batch: Batch) -> Vec<Disposition> {
    let mut dispositions = batch.dispositions;
    for &place in &batch.places {
        dispositions[place] = Disposition::Retry(None);
    }
    dispositions
}
