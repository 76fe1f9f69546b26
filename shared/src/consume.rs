//! The pull loop every JetStream stage runs: pull with bounded in-flight work, survive
//! heartbeat and transient errors, dead-letter poison messages, drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::MessagesErrorKind, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Spider;
use crate::telemetry::Metrics;
use crate::topology::{self, Names, ReplayStart, Role};

/// How a stage consumes.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Which consumer.
    pub role: Role,
    /// Messages handled at once by this process.
    pub max_in_flight: usize,
    /// Server-side cap on unacked messages for the consumer (all processes together).
    pub max_ack_pending: i64,
    /// A message delivered more often than this without an ack is dead-lettered.
    pub poison_deliveries: i64,
    /// How long in-flight work may take to finish at shutdown.
    pub drain_deadline: Duration,
    /// Read from a replay consumer (name, start) instead of the role's own.
    pub replay: Option<(String, ReplayStart)>,
    /// Read one frontier partition's consumer (`fetcher-<p>`) instead of the role's
    /// own. The fetcher runs one such loop per partition it owns and reports its
    /// readiness and lag itself.
    pub partition: Option<u32>,
}

/// Pull messages and run `handler` on each, at most `max_in_flight` at once, until
/// `shutdown`; then finish in-flight work within the drain deadline.
pub async fn consume<F, Fut>(
    js: jetstream::Context,
    spider: Arc<Spider>,
    opts: ConsumeOptions,
    metrics: Metrics,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let names = Names::new(&spider.name);
    let stage = opts.role.consumer_name();
    // Counters start at 0 for this stage, so the first redelivery or dead letter is an
    // increase Prometheus sees (a series that first appears at 1 shows none).
    metrics
        .redeliveries
        .get_or_create(&stage_label(stage))
        .inc_by(0);
    metrics
        .dead_letters
        .get_or_create(&stage_label(stage))
        .inc_by(0);
    let permits = Arc::new(Semaphore::new(opts.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(250);
    let whole_stage = opts.partition.is_none();
    let lag = whole_stage.then(|| {
        tokio::spawn(report_lag(
            js.clone(),
            names.stream_of(opts.role),
            match &opts.replay {
                Some((name, _)) => name.clone(),
                None => opts.role.consumer_name().to_string(),
            },
            stage,
            metrics.clone(),
        ))
    });
    'connect: while !shutdown.is_cancelled() {
        let consumer = match (&opts.replay, opts.partition) {
            (Some((name, start)), _) => {
                topology::ensure_replay_consumer(&js, &spider, name, start, opts.max_ack_pending)
                    .await
            }
            (None, Some(p)) => {
                topology::ensure_partition_consumer(&js, &spider, p, opts.max_ack_pending).await
            }
            (None, None) => {
                topology::ensure_consumer(&js, &spider, opts.role, opts.max_ack_pending).await
            }
        };
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, stage, "consumer not available, retrying");
                if sleep_or_shutdown(&shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let stream = consumer
            .stream()
            // Small pulls: prefetched messages wait in the client with their ack_wait
            // running and no progress acks, so keep few of them there.
            .max_messages_per_batch((opts.max_in_flight / 4).clamp(1, 64))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match stream {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, stage, "pull failed, retrying");
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
            reap(&mut tasks, stage);
            // Take a slot before pulling, so nothing waits in memory unowned.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'connect },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    backoff = Duration::from_millis(250);
                    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                    if delivered > 1 {
                        metrics
                            .redeliveries
                            .get_or_create(&stage_label(stage))
                            .inc();
                    }
                    if delivered > opts.poison_deliveries {
                        let js = js.clone();
                        let names = names.clone();
                        let metrics = metrics.clone();
                        tasks.spawn(async move {
                            let reason =
                                format!("delivered {delivered} times without being acknowledged");
                            give_up(&js, &names, stage, &msg, &reason, &metrics).await;
                            drop(permit);
                        });
                        continue;
                    }
                    let handler = handler.clone();
                    let (js, names, metrics) = (js.clone(), names.clone(), metrics.clone());
                    tasks.spawn(async move {
                        // A handler that panics on a message would panic on it again:
                        // dead-letter it now instead of after many redeliveries.
                        let kept = msg.clone();
                        let run = std::panic::AssertUnwindSafe(handler(msg));
                        if let Err(panic) = futures::FutureExt::catch_unwind(run).await {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(stage, panic = %what, "message handler panicked");
                            let reason = format!("the {stage} panicked on this message: {what}");
                            give_up(&js, &names, stage, &kept, &reason, &metrics).await;
                        }
                        drop(permit);
                    });
                }
                Some(Err(e)) => match e.kind() {
                    // The server said nothing for a while; the stream re-pulls by itself.
                    MessagesErrorKind::MissingHeartbeat => {
                        tracing::debug!(stage, "missed heartbeat");
                    }
                    MessagesErrorKind::ConsumerDeleted
                    | MessagesErrorKind::NoResponders
                    | MessagesErrorKind::Pull
                    | MessagesErrorKind::PushBasedConsumer
                    | MessagesErrorKind::RequestLimitExceeded
                    | MessagesErrorKind::Other => {
                        tracing::warn!(error = %e, stage, "pull stream failed, re-subscribing");
                        if whole_stage {
                            metrics.set_ready(false);
                        }
                        if sleep_or_shutdown(&shutdown, backoff).await {
                            break 'connect;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue 'connect;
                    }
                },
                None => {
                    tracing::warn!(stage, "pull stream ended, re-subscribing");
                    continue 'connect;
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
    tracing::info!(stage, in_flight = tasks.len(), "draining");
    let drained = tokio::time::timeout(opts.drain_deadline, async {
        while let Some(res) = tasks.join_next().await {
            log_join(res, stage);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            stage,
            left = tasks.len(),
            "drain deadline passed; unfinished messages will be redelivered"
        );
        tasks.abort_all();
    }
}

/// Dead-letter a message and terminate it; if the dead letter cannot be stored, nak
/// it so nothing is lost.
pub async fn give_up(
    js: &jetstream::Context,
    names: &Names,
    stage: &str,
    msg: &jetstream::Message,
    reason: &str,
    metrics: &Metrics,
) {
    tracing::warn!(stage, subject = %msg.subject, reason, "dead-lettering message");
    match topology::dead_letter(js, names, stage, Some(msg), msg.payload.clone(), reason).await {
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

/// Run `work` while telling the server every `every` that `msg` is still in progress.
pub async fn with_progress<T>(
    msg: &jetstream::Message,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Run `attempt` until it succeeds or fails for good, keeping `msg` ours meanwhile
/// (progress acks). A dependency outage — Redis away, a stream full, NATS
/// reconnecting — holds the message, and with it a pull slot, so consumption pauses
/// instead of nak-ing messages round and round: naks count as deliveries, and enough
/// of them would look like poison. `None`: shutdown came first; hand the message back.
pub async fn retry_in_place<T, E, F, Fut>(
    msg: &jetstream::Message,
    progress_every: Duration,
    shutdown: &CancellationToken,
    is_retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let work = async {
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
    };
    with_progress(msg, progress_every, work).await
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
        let Ok(stream) = js.get_stream(&stream).await else {
            continue;
        };
        let Ok(mut c) = stream
            .get_consumer::<jetstream::consumer::pull::Config>(&consumer)
            .await
        else {
            continue;
        };
        if let Ok(info) = c.info().await {
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

async fn sleep_or_shutdown(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn reap(tasks: &mut JoinSet<()>, stage: &str) {
    while let Some(res) = tasks.try_join_next() {
        log_join(res, stage);
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>, stage: &str) {
    if let Err(e) = res {
        if e.is_panic() {
            // The message was not acked: it is redelivered and, if it keeps failing,
            // dead-lettered by the poison check.
            tracing::error!(stage, error = %e, "message handler panicked");
        }
    }
}
