//! Held work: what turns arriving messages into tasks (one message, or a batch), the
//! tasks that hold their messages in progress until they are settled, and the settling.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::future::join_all;
use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ack, give_up, log_join, Batching, Disposition};
use crate::telemetry::Metrics;
use crate::topology::Names;

/// Turns arriving messages into held work.
pub(super) trait Dispatch: Send {
    /// A message arrived, with the slot it occupies.
    fn take(&mut self, msg: jetstream::Message, slot: OwnedSemaphorePermit, work: &mut Work);
    /// When [`Dispatch::flush`] is due by time, if ever.
    fn due(&self) -> Option<Instant>;
    /// Hand over whatever waits (a partial batch).
    fn flush(&mut self, work: &mut Work);
}

pub(super) struct One<F> {
    pub(super) handler: F,
}

impl<F, Fut> Dispatch for One<F>
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    fn take(&mut self, msg: jetstream::Message, slot: OwnedSemaphorePermit, work: &mut Work) {
        let handled = (self.handler)(msg.clone()).map(|d| vec![d]);
        work.spawn(vec![msg], vec![slot], handled);
    }

    fn due(&self) -> Option<Instant> {
        None
    }

    fn flush(&mut self, _: &mut Work) {}
}

/// A batch is also handed over once no message has come for this long: the end of a
/// burst (the last items of a crawl) is not held for the whole timeout. Under a steady
/// flow messages come far more often, and batches fill by size or time as before.
pub(super) const QUIET_FLUSH: Duration = Duration::from_millis(10);

pub(super) struct Batches<F> {
    pub(super) handler: F,
    pub(super) batching: Batching,
    pub(super) msgs: Vec<jetstream::Message>,
    pub(super) slots: Vec<OwnedSemaphorePermit>,
    /// When the batch is handed over by time: its timeout from the first message, or
    /// [`QUIET_FLUSH`] after the latest, whichever comes first.
    pub(super) due: Option<Instant>,
    /// Its first message's timeout.
    pub(super) deadline: Option<Instant>,
}

impl<F, Fut> Dispatch for Batches<F>
where
    F: Fn(Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    fn take(&mut self, msg: jetstream::Message, slot: OwnedSemaphorePermit, work: &mut Work) {
        let now = Instant::now();
        let deadline = *self
            .deadline
            .get_or_insert_with(|| now + self.batching.timeout);
        self.due = Some(deadline.min(now + QUIET_FLUSH));
        self.msgs.push(msg);
        self.slots.push(slot);
        if self.msgs.len() >= self.batching.size.max(1) {
            self.flush(work);
        }
    }

    fn due(&self) -> Option<Instant> {
        self.due
    }

    fn flush(&mut self, work: &mut Work) {
        self.due = None;
        self.deadline = None;
        if self.msgs.is_empty() {
            return;
        }
        let msgs = std::mem::take(&mut self.msgs);
        let handled = (self.handler)(msgs.clone());
        work.spawn(msgs, std::mem::take(&mut self.slots), handled);
    }
}

/// Work in flight: each task holds its messages until it has settled every one.
pub(super) struct Work {
    pub(super) tasks: JoinSet<()>,
    /// Cancelled when the drain deadline passes: tasks hand their messages back.
    pub(super) hard_stop: CancellationToken,
    /// A slot came free.
    pub(super) freed: Arc<Notify>,
    pub(super) settler: Settler,
    pub(super) progress_every: Duration,
}

impl Work {
    pub(super) fn spawn<Fut>(
        &mut self,
        msgs: Vec<jetstream::Message>,
        slots: Vec<OwnedSemaphorePermit>,
        handled: Fut,
    ) where
        Fut: Future<Output = Vec<Disposition>> + Send + 'static,
    {
        let hard_stop = self.hard_stop.clone();
        let freed = self.freed.clone();
        let settler = self.settler.clone();
        let every = self.progress_every;
        // A handler's future is large (an HTTP client's, a parse's state): boxed once
        // here, the task is moved into place as a pointer, not copied whole (memmove
        // was 3% of a fetcher's CPU).
        let handled = Box::pin(handled);
        self.tasks.spawn(async move {
            let guarded = std::panic::AssertUnwindSafe(handled).catch_unwind();
            let outcome = tokio::select! {
                out = in_progress(&msgs, every, guarded) => Some(out),
                _ = hard_stop.cancelled() => None,
            };
            let dispositions = match outcome {
                Some(Ok(d)) if d.len() == msgs.len() => d,
                Some(Ok(d)) => {
                    tracing::error!(stage = settler.stage, messages = msgs.len(), dispositions = d.len(), "handler settled the wrong number of messages; handing them back");
                    vec![Disposition::Retry(Some(Duration::from_secs(1))); msgs.len()]
                }
                Some(Err(panic)) => {
                    let what = panic_text(&panic);
                    tracing::error!(stage = settler.stage, panic = %what, messages = msgs.len(), "message handler panicked");
                    if msgs.len() == 1 {
                        // It would panic on the message again: dead-letter it now
                        // rather than after many redeliveries.
                        let reason = format!("the {} panicked on this message: {what}", settler.stage);
                        vec![Disposition::Dead(reason)]
                    } else {
                        // Which message of a batch did it is unknown: each is retried
                        // alone counts towards the poison limit.
                        vec![Disposition::Retry(Some(Duration::from_secs(5))); msgs.len()]
                    }
                }
                None => {
                    tracing::info!(stage = settler.stage, messages = msgs.len(), "drain deadline passed; handing back");
                    vec![Disposition::Retry(None); msgs.len()]
                }
            };
            join_all(
                msgs.iter()
                    .zip(dispositions)
                    .map(|(msg, d)| settler.settle(msg, d)),
            )
            .await;
            drop(slots);
            freed.notify_one();
        });
    }

    pub(super) fn reap(&mut self) {
        while let Some(res) = self.tasks.try_join_next() {
            log_join(res, self.settler.stage);
        }
    }
}

/// Carries dispositions out.
#[derive(Clone)]
pub(super) struct Settler {
    pub(super) js: jetstream::Context,
    pub(super) names: Names,
    pub(super) stage: &'static str,
    pub(super) metrics: Metrics,
    pub(super) stop_gate: StopGate,
}

/// Holds back what handlers hand back at a stop until the loop has withdrawn its
/// pull requests. Handlers see the stop when the loop does; a message handed back
/// (nak) while the loop's pull requests still wait on the server is delivered
/// straight back to one of them, handed back again, and reaches the next consumer a
/// delivery later each time, on its way to looking like poison.
#[derive(Clone)]
pub(super) struct StopGate {
    /// The loop's stop.
    pub(super) stopping: CancellationToken,
    /// Cancelled once the loop's pull requests are withdrawn (or it has none).
    pub(super) closed: CancellationToken,
}

impl StopGate {
    /// Longest a hand-back waits for the pull requests to be withdrawn.
    const PATIENCE: Duration = Duration::from_secs(2);

    async fn before_hand_back(&self) {
        if self.stopping.is_cancelled() && !self.closed.is_cancelled() {
            let _ = tokio::time::timeout(Self::PATIENCE, self.closed.cancelled()).await;
        }
    }
}

impl Settler {
    pub(super) async fn settle(&self, msg: &jetstream::Message, disposition: Disposition) {
        match disposition {
            Disposition::Ack => ack(msg, AckKind::Ack).await,
            Disposition::Retry(delay) => {
                self.stop_gate.before_hand_back().await;
                ack(msg, AckKind::Nak(delay)).await
            }
            Disposition::Dead(reason) => {
                give_up(
                    &self.js,
                    &self.names,
                    self.stage,
                    msg,
                    &reason,
                    &self.metrics,
                )
                .await
            }
            Disposition::Abandon => {
                tracing::debug!(stage = self.stage, "message left to be redelivered")
            }
        }
    }
}

/// Run `work`, telling the server every `every` that each of `msgs` is in progress.
async fn in_progress<T>(
    msgs: &[jetstream::Message],
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                join_all(msgs.iter().map(|m| ack(m, AckKind::Progress))).await;
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
