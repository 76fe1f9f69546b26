//! The pull loop every JetStream stage runs, and the one place that decides what is
//! done with a message. Handlers return a [`Disposition`]; the loop acks, naks,
//! dead-letters or leaves the message, tells the server every message it holds is in
//! progress (while it waits for a parse slot, a batch, a database writer or a host), and
//! hands back whatever it holds when it stops.
//!
//! The loop pulls by itself rather than through the client library's pull stream. Each
//! pull request asks for at most as many messages as there are free slots, so nothing
//! the server delivered waits in memory unowned, with its `ack_wait` running. And a pull
//! the server no longer serves is replaced at once: after a missed heartbeat or a
//! reconnect. async-nats' stream (0.51) does neither. It keeps counting a lost request
//! as outstanding and asks again only when its own timer runs out, 5 s after the
//! request's expiry (30 s here). A stage whose pull was lost sat idle for 35 s with
//! messages waiting: the stall issue 9 measured.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Spider;
use crate::telemetry::Metrics;
use crate::topology::{self, Names, ReplayStart, Role};

mod pull;
mod work;
use pull::{Pull, Received};
use work::{Batches, Dispatch, One, Settler, StopGate, Work};

/// What is to become of a message, as its handler decides; the loop carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done with: acknowledge it.
    Ack,
    /// Not now: hand it back, to be delivered again after the delay (`None`: at once).
    Retry(Option<Duration>),
    /// It can never be handled: store it in DEAD with the reason, then terminate it.
    Dead(String),
    /// Neither ack nor nak: the server delivers it again after `ack_wait`. For a
    /// fetcher that lost its partition, whose nak would hand a stale delivery back.
    Abandon,
}

/// How a stage consumes.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Which consumer.
    pub role: Role,
    /// Messages held at once by this process: being handled, or waiting in a batch.
    pub max_in_flight: usize,
    /// Server-side cap on unacked messages for the consumer (all processes together).
    pub max_ack_pending: i64,
    /// A message delivered more often than this without an ack is dead-lettered.
    pub poison_deliveries: i64,
    /// How long in-flight work may take to finish at shutdown; then it is handed back.
    pub drain_deadline: Duration,
    /// Read from a replay consumer (name, start) instead of the role's own.
    pub replay: Option<(String, ReplayStart)>,
    /// Read one frontier partition's consumer (`fetcher-<p>`) instead of the role's
    /// own. The fetcher runs one such loop per partition it owns and reports its
    /// readiness and lag itself.
    pub partition: Option<u32>,
}

/// How [`consume_batches`] groups messages.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Messages a batch holds at most.
    pub size: usize,
    /// A batch is handed over this long after its first message came, full or not
    /// (sooner once no message has come for 10 ms: the end of a burst is not held).
    pub timeout: Duration,
}

/// Pull messages and run `handler` on each, at most `max_in_flight` at once, until
/// `shutdown`; then let in-flight work finish within the drain deadline and hand back
/// the rest.
pub async fn consume<F, Fut>(
    js: jetstream::Context,
    spider: Arc<Spider>,
    opts: ConsumeOptions,
    metrics: Metrics,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let dispatch = One { handler };
    run(js, spider, opts, metrics, shutdown, dispatch).await
}

/// [`consume`] for a stage that works on batches: `handler` gets up to `batching.size`
/// messages at once and returns one disposition a message, in order. It is called in
/// delivery order, and the part of it before its future (the closure's own body) runs
/// in the loop, so it can note what the batch holds before a later batch starts.
pub async fn consume_batches<F, Fut>(
    js: jetstream::Context,
    spider: Arc<Spider>,
    opts: ConsumeOptions,
    batching: Batching,
    metrics: Metrics,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    let dispatch = Batches {
        handler,
        batching,
        msgs: Vec::new(),
        slots: Vec::new(),
        due: None,
        deadline: None,
    };
    run(js, spider, opts, metrics, shutdown, dispatch).await
}

async fn run<D: Dispatch>(
    js: jetstream::Context,
    spider: Arc<Spider>,
    opts: ConsumeOptions,
    metrics: Metrics,
    shutdown: CancellationToken,
    mut dispatch: D,
) {
    let names = Names::new(&spider.name);
    let stage = opts.role.consumer_name();
    // Counters start at 0 for this stage, so the first redelivery or dead letter is an
    // increase Prometheus sees (a series that first appears at 1 shows none).
    let labels = stage_label(stage);
    metrics.redeliveries.get_or_create(&labels).inc_by(0);
    metrics.dead_letters.get_or_create(&labels).inc_by(0);
    metrics.pulls_renewed.get_or_create(&labels).inc_by(0);
    let slots = Arc::new(Semaphore::new(opts.max_in_flight.max(1)));
    let mut work = Work {
        tasks: JoinSet::new(),
        hard_stop: CancellationToken::new(),
        freed: Arc::new(Notify::new()),
        settler: Settler {
            js: js.clone(),
            names: names.clone(),
            stage,
            metrics: metrics.clone(),
            stop_gate: StopGate {
                stopping: shutdown.clone(),
                closed: CancellationToken::new(),
            },
        },
        progress_every: spider.streams.ack_wait() / 3,
    };
    let mut backoff = Duration::from_millis(250);
    let whole_stage = opts.partition.is_none();
    let consumer_name = match &opts.replay {
        Some((name, _)) => name.clone(),
        None => match opts.partition {
            Some(p) if opts.role == Role::Renderer => crate::render::render_consumer_name(p),
            Some(p) => topology::partition_consumer_name(p),
            None => stage.to_string(),
        },
    };
    let lag = whole_stage.then(|| {
        tokio::spawn(report_lag(
            js.clone(),
            names.stream_of(opts.role),
            consumer_name.clone(),
            stage,
            metrics.clone(),
        ))
    });
    // Requests ask for at least this many (unless nothing is outstanding), so a busy
    // stage does not send one request per freed slot.
    let min_request = (opts.max_in_flight / 4).clamp(1, 64);
    let mut pull: Option<Pull> = None;
    'connect: while !shutdown.is_cancelled() {
        if let Some(old) = pull.take() {
            old.close(&work.settler).await;
        }
        let consumer = match (&opts.replay, opts.partition) {
            (Some((name, start)), _) => {
                topology::ensure_replay_consumer(&js, &spider, name, start, opts.max_ack_pending)
                    .await
            }
            (None, Some(p)) if opts.role == Role::Renderer => {
                crate::render::ensure_render_consumer(&js, &spider, p, opts.max_ack_pending).await
            }
            (None, Some(p)) => {
                topology::ensure_partition_consumer(&js, &spider, p, opts.max_ack_pending).await
            }
            (None, None) => {
                topology::ensure_consumer(&js, &spider, opts.role, opts.max_ack_pending).await
            }
        };
        let opened = match consumer {
            Ok(consumer) => Pull::open(&js, consumer).await,
            Err(e) => Err(e.to_string()),
        };
        let p = match opened {
            Ok(p) => pull.insert(p),
            Err(e) => {
                tracing::warn!(error = %e, stage, "consumer not available, retrying");
                if sleep_or_shutdown(&shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if whole_stage {
            metrics.set_ready(true);
        }
        loop {
            work.reap();
            if dispatch.due().is_some_and(|due| due <= Instant::now()) {
                dispatch.flush(&mut work);
            }
            let room = slots.available_permits();
            let want = room.saturating_sub(p.outstanding);
            if want > 0 && (want >= min_request || p.outstanding == 0) {
                if let Err(e) = p.request(want.min(256)).await {
                    tracing::warn!(error = %e, stage, "pull request not sent, re-subscribing");
                    if sleep_or_shutdown(&shutdown, backoff).await {
                        break 'connect;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'connect;
                }
            }
            let tick = dispatch
                .due()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
                .min(Instant::now() + Duration::from_secs(1));
            let freed = work.freed.clone();
            tokio::select! {
                // A message already here comes before any timer: the timers judge
                // silence, and a message waiting unread is not silence.
                biased;
                _ = shutdown.cancelled() => break 'connect,
                next = p.sub.next() => {
                    let Some(message) = next else {
                        tracing::warn!(stage, "pull subscription ended, re-subscribing");
                        continue 'connect;
                    };
                    match p.receive(message, stage) {
                        Received::Message(msg) => {
                            backoff = Duration::from_millis(250);
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                // More than was asked for (a pull replaced while the
                                // old one still delivered): not ours to hold.
                                ack(&msg, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                                continue;
                            };
                            take(&mut dispatch, &mut work, &opts, *msg, slot);
                        }
                        Received::Status => {}
                        Received::Gone(why) => {
                            tracing::warn!(stage, why, "pull consumer gone, re-subscribing");
                            if whole_stage {
                                metrics.set_ready(false);
                            }
                            if sleep_or_shutdown(&shutdown, backoff).await {
                                break 'connect;
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue 'connect;
                        }
                    }
                }
                _ = freed.notified() => {}
                _ = tokio::time::sleep_until(tick) => {
                    if p.lost() {
                        metrics.pulls_renewed.get_or_create(&labels).inc();
                        p.outstanding = 0;
                    } else if room > 0 {
                        p.warn_if_quiet(stage).await;
                    }
                }
            }
        }
    }
    if let Some(lag) = lag {
        lag.abort();
    }
    if whole_stage {
        metrics.set_ready(false);
    }
    // What waits in a partial batch goes to work now; what the server still sends for
    // the outstanding pull requests is handed back.
    dispatch.flush(&mut work);
    if let Some(p) = pull.take() {
        p.close(&work.settler).await;
    }
    // Hand-backs held at the stop may go now: no pull request of ours waits.
    work.settler.stop_gate.closed.cancel();
    tracing::info!(stage, in_flight = work.tasks.len(), "draining");
    let drained = tokio::time::timeout(opts.drain_deadline, async {
        while let Some(res) = work.tasks.join_next().await {
            log_join(res, stage);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            stage,
            left = work.tasks.len(),
            "drain deadline passed; handing unfinished messages back"
        );
        work.hard_stop.cancel();
        while let Some(res) = work.tasks.join_next().await {
            log_join(res, stage);
        }
    }
}

/// Count a delivery, dead-letter a poison message, or hand the message to the stage.
fn take<D: Dispatch>(
    dispatch: &mut D,
    work: &mut Work,
    opts: &ConsumeOptions,
    msg: jetstream::Message,
    slot: OwnedSemaphorePermit,
) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if delivered > 1 {
        let labels = stage_label(work.settler.stage);
        work.settler
            .metrics
            .redeliveries
            .get_or_create(&labels)
            .inc();
    }
    if delivered > opts.poison_deliveries {
        let reason = format!("delivered {delivered} times without being acknowledged");
        let dead = futures::future::ready(vec![Disposition::Dead(reason)]);
        work.spawn(vec![msg], vec![slot], dead);
        return;
    }
    dispatch.take(msg, slot, work);
}

/// Dead-letter a message and terminate it; if the dead letter cannot be stored, nak
/// it so nothing is lost. The dead letter's id is the message's stream position, so a
/// redelivered poison message is stored in DEAD once.
pub async fn give_up(
    js: &jetstream::Context,
    names: &Names,
    stage: &str,
    msg: &jetstream::Message,
    reason: &str,
    metrics: &Metrics,
) {
    tracing::warn!(stage, subject = %msg.subject, reason, "dead-lettering message");
    let id = msg
        .info()
        .ok()
        .map(|i| format!("{stage}-{}-{}", i.stream, i.stream_sequence));
    let stored = topology::dead_letter(
        js,
        names,
        stage,
        Some(msg),
        msg.payload.clone(),
        reason,
        id.as_deref(),
    )
    .await;
    match stored {
        Ok(()) => {
            metrics
                .dead_letters
                .get_or_create(&stage_label(stage))
                .inc();
            ack(msg, AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, stage, "dead letter not stored; will retry");
            ack(msg, AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

/// Send an ack of any kind; a failed ack only means a redelivery later, so log it.
pub async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::debug!(error = %e, "ack not delivered; message will be redelivered");
    }
}

/// Run `attempt` until it succeeds or fails for good. A dependency outage — Redis
/// away, a stream full, NATS reconnecting — holds the message (the loop keeps it in
/// progress), and with it a slot, so consumption pauses instead of nak-ing messages
/// round and round: naks count as deliveries, and enough of them would look like
/// poison. `None`: shutdown came first; hand the message back.
pub async fn retry_in_place<T, E, F, Fut>(
    shutdown: &CancellationToken,
    is_retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(250);
    loop {
        match attempt().await {
            Err(e) if is_retryable(&e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "not possible now; holding the message and retrying");
                if sleep_or_shutdown(shutdown, delay).await {
                    return None;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return Some(other),
        }
    }
}

/// `stage` as a metric label set.
pub fn stage_label(stage: &str) -> Vec<(String, String)> {
    vec![("stage".to_string(), stage.to_string())]
}

/// Every few seconds, copy the consumer's lag from the server into the metrics.
async fn report_lag(
    js: jetstream::Context,
    stream: String,
    consumer: String,
    stage: &'static str,
    metrics: Metrics,
) {
    let labels = stage_label(stage);
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        // Until the consumer exists (the pull loop creates it), look again soon.
        wait = Duration::from_secs(1);
        if let Some(info) = topology::consumer_info(&js, &stream, &consumer).await {
            wait = Duration::from_secs(5);
            let pending = i64::try_from(info.num_pending).unwrap_or(i64::MAX);
            metrics.consumer_pending.get_or_create(&labels).set(pending);
            let ack_pending = i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX);
            metrics
                .consumer_ack_pending
                .get_or_create(&labels)
                .set(ack_pending);
            let floor = i64::try_from(info.ack_floor.consumer_sequence).unwrap_or(i64::MAX);
            metrics.consumer_ack_floor.get_or_create(&labels).set(floor);
            let paused = i64::from(info.paused);
            metrics.consumer_paused.get_or_create(&labels).set(paused);
        }
    }
}

/// Sleep `d`; true if shutdown came first.
pub async fn sleep_or_shutdown(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>, stage: &str) {
    if let Err(e) = res {
        // The handler's own panics are caught in the task; this is the settling.
        tracing::error!(stage, error = %e, "message task failed");
    }
}
