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

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::{StatusCode, Subscriber};
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Spider;
use crate::telemetry::Metrics;
use crate::topology::{self, Names, ReplayStart, Role};

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
    /// A batch is handed over this long after its first message came, full or not.
    pub timeout: Duration,
}

/// How long a pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a waiting pull request is still there.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// A stage that got nothing for this long while its consumer has messages pending
/// says so, with the consumer's state.
const QUIET_WARNING: Duration = Duration::from_secs(10);

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
    };
    run(js, spider, opts, metrics, shutdown, dispatch).await
}

/// Turns arriving messages into held work.
trait Dispatch: Send {
    /// A message arrived, with the slot it occupies.
    fn take(&mut self, msg: jetstream::Message, slot: OwnedSemaphorePermit, work: &mut Work);
    /// When [`Dispatch::flush`] is due by time, if ever.
    fn due(&self) -> Option<Instant>;
    /// Hand over whatever waits (a partial batch).
    fn flush(&mut self, work: &mut Work);
}

struct One<F> {
    handler: F,
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

struct Batches<F> {
    handler: F,
    batching: Batching,
    msgs: Vec<jetstream::Message>,
    slots: Vec<OwnedSemaphorePermit>,
    due: Option<Instant>,
}

impl<F, Fut> Dispatch for Batches<F>
where
    F: Fn(Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    fn take(&mut self, msg: jetstream::Message, slot: OwnedSemaphorePermit, work: &mut Work) {
        self.due
            .get_or_insert_with(|| Instant::now() + self.batching.timeout);
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
        if self.msgs.is_empty() {
            return;
        }
        let msgs = std::mem::take(&mut self.msgs);
        let handled = (self.handler)(msgs.clone());
        work.spawn(msgs, std::mem::take(&mut self.slots), handled);
    }
}

/// Work in flight: each task holds its messages until it has settled every one.
struct Work {
    tasks: JoinSet<()>,
    /// Cancelled when the drain deadline passes: tasks hand their messages back.
    hard_stop: CancellationToken,
    /// A slot came free.
    freed: Arc<Notify>,
    settler: Settler,
    progress_every: Duration,
}

impl Work {
    fn spawn<Fut>(
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

    fn reap(&mut self) {
        while let Some(res) = self.tasks.try_join_next() {
            log_join(res, self.settler.stage);
        }
    }
}

/// Carries dispositions out.
#[derive(Clone)]
struct Settler {
    js: jetstream::Context,
    names: Names,
    stage: &'static str,
    metrics: Metrics,
}

impl Settler {
    async fn settle(&self, msg: &jetstream::Message, disposition: Disposition) {
        match disposition {
            Disposition::Ack => ack(msg, AckKind::Ack).await,
            Disposition::Retry(delay) => ack(msg, AckKind::Nak(delay)).await,
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
        },
        progress_every: spider.streams.ack_wait() / 3,
    };
    let mut backoff = Duration::from_millis(250);
    let whole_stage = opts.partition.is_none();
    let consumer_name = match &opts.replay {
        Some((name, _)) => name.clone(),
        None => match opts.partition {
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

/// One pull subscription: its inbox, and what it has asked for and not yet received.
struct Pull {
    consumer: PullConsumer,
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    inbox: String,
    sub: Subscriber,
    /// Messages requested and neither delivered nor expired.
    outstanding: usize,
    /// When the server last sent anything on the inbox.
    heard: Instant,
    /// When a message last came.
    last_message: Instant,
    /// When the consumer's state may next be asked for (at most every 10 s while
    /// quiet, 30 s after a warning: an idle crawl must not poll the server).
    next_check: Instant,
    /// The client's connect count when the requests were made.
    connects: u64,
}

enum Received {
    Message(Box<jetstream::Message>),
    Status,
    Gone(String),
}

impl Pull {
    async fn open(js: &jetstream::Context, consumer: PullConsumer) -> Result<Pull, String> {
        let client = js.client();
        let info = consumer.cached_info();
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        );
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        let connects = connects(&client);
        Ok(Pull {
            consumer,
            client,
            js: js.clone(),
            subject,
            inbox,
            sub,
            outstanding: 0,
            heard: Instant::now(),
            last_message: Instant::now(),
            next_check: Instant::now(),
            connects,
        })
    }

    async fn request(&mut self, batch: usize) -> Result<(), String> {
        let body = serde_json::json!({
            "batch": batch,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
        });
        if self.outstanding == 0 {
            // Heartbeats are owed from now on, not from whenever the last one came.
            self.heard = Instant::now();
        }
        self.client
            .publish_with_reply(
                self.subject.clone(),
                self.inbox.clone(),
                body.to_string().into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.outstanding += batch;
        Ok(())
    }

    /// Whether the requests counted as outstanding are gone: the server sent no
    /// heartbeat for two intervals, or the connection was re-established (a server
    /// forgets a connection's pull requests with it).
    fn lost(&mut self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        let now_connects = connects(&self.client);
        if now_connects != self.connects {
            self.connects = now_connects;
            tracing::info!(
                consumer = %self.consumer.cached_info().name,
                "reconnected; pulling again"
            );
            return true;
        }
        if self.heard.elapsed() > PULL_HEARTBEAT * 2 {
            tracing::warn!(
                consumer = %self.consumer.cached_info().name,
                silent_ms = self.heard.elapsed().as_millis() as u64,
                "pull request lost (no heartbeat); pulling again"
            );
            self.heard = Instant::now();
            return true;
        }
        false
    }

    fn receive(&mut self, message: async_nats::Message, stage: &str) -> Received {
        self.heard = Instant::now();
        let status = message.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.last_message = Instant::now();
            return Received::Message(Box::new(jetstream::Message {
                message,
                context: self.js.clone(),
            }));
        }
        if status == StatusCode::IDLE_HEARTBEAT {
            return Received::Status;
        }
        let description = message.description.clone().unwrap_or_default();
        if status == StatusCode::NO_RESPONDERS {
            // JetStream did not answer (no leader just now): the request went nowhere.
            self.outstanding = 0;
            return Received::Gone("no responders".to_string());
        }
        if description.contains("Consumer Deleted") || description.contains("push based") {
            return Received::Gone(description);
        }
        // An ended request (expired, or refused: 408, 409) says how many of its
        // messages it did not deliver.
        let left = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse::<usize>().ok());
        match left {
            Some(n) => self.outstanding = self.outstanding.saturating_sub(n),
            None => self.outstanding = 0,
        }
        if status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND {
            tracing::debug!(stage, status = %status, description, "pull request ended");
        }
        Received::Status
    }

    /// Say so when the consumer has messages pending and delivers none to a stage
    /// with room: a dead worker's unacked messages filling `max_ack_pending`, say.
    async fn warn_if_quiet(&mut self, stage: &str) {
        if self.last_message.elapsed() < QUIET_WARNING || Instant::now() < self.next_check {
            return;
        }
        self.next_check = Instant::now() + QUIET_WARNING;
        if let Ok(info) = self.consumer.info().await {
            if info.num_pending > 0 {
                self.next_check = Instant::now() + QUIET_WARNING * 3;
                tracing::warn!(
                    stage,
                    consumer = %info.name,
                    pending = info.num_pending,
                    ack_pending = info.num_ack_pending,
                    max_ack_pending = info.config.max_ack_pending,
                    waiting_pulls = info.num_waiting,
                    quiet_s = self.last_message.elapsed().as_secs(),
                    "nothing delivered although messages are pending"
                );
            }
        }
    }

    /// Stop: unsubscribe, then hand back what had already arrived. Interest goes
    /// first: with the inbox gone the server drops this loop's waiting pull requests,
    /// so a message handed back is not delivered straight back to one of them (a nak
    /// while they wait bounces the message between the server and this loop, one
    /// delivery each time, until it looks like poison).
    async fn close(mut self, settler: &Settler) {
        let _ = self.sub.unsubscribe().await;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), self.sub.next()).await;
            let Ok(Some(message)) = next else { break };
            if let Received::Message(msg) = self.receive(message, settler.stage) {
                ack(&msg, AckKind::Nak(None)).await;
            }
        }
    }
}

fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
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
