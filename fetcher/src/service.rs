//! The fetcher service: the frontier partitions this fetcher owns, pages to PAGES.
//! One pull loop per owned partition; requests wait for their host here (bounded by
//! the partition's window), not in the frontier. Publish the page, await its
//! JetStream ack, then ack the request.
//!
//! The loop is generic over its [`Source`] of pages: the fetcher's own HTTP, or a
//! renderer's browser (crate `jetcrawl-renderer`), which owns its render partitions
//! the same way (leases, fencing, hand-over, requeue, ack discipline).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use jetcrawl_shared::canon::{partition, url_fingerprint};
use jetcrawl_shared::consume::{self, retry_in_place, ConsumeOptions, Disposition};
use jetcrawl_shared::failpoint;
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::presence::{self, Instance};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::CompiledSpider;

use crate::error::FetchError;
use crate::fetch::{FetchOutcome, Fetcher, FetcherOptions};
use crate::lease::{self, Lease, PartitionRunner};
use crate::politeness::Politeness;

/// Where a partition's requests become pages: the fetcher, or a renderer.
pub trait Source: Send + Sync + 'static {
    /// One request to its outcome; nothing goes to the host unless `lease` holds.
    fn fetch(
        &self,
        req: &CrawlRequest,
        lease: &Lease,
    ) -> impl std::future::Future<Output = FetchOutcome> + Send;
    /// The per-host gatekeeper a hand-over waits on until the partition is quiet.
    fn politeness(&self) -> &Politeness;
}

impl Source for Fetcher {
    async fn fetch(&self, req: &CrawlRequest, lease: &Lease) -> FetchOutcome {
        Fetcher::fetch(self, req, Some(lease)).await
    }
    fn politeness(&self) -> &Politeness {
        Fetcher::politeness(self)
    }
}

/// A partition-owning stage, set up: which source, which consumers.
pub struct Service<S> {
    /// Turns requests into pages.
    pub source: S,
    /// `Role::Fetcher` (partitions `frontier.<p>`, consumers `fetcher-<p>`) or
    /// `Role::Renderer` (`frontier.render.<p>`, `renderer-<p>`).
    pub role: Role,
    /// The live bucket whose leases divide the partitions among this stage's processes.
    pub store: kv::Store,
    /// JetStream.
    pub js: jetstream::Context,
    /// The spider.
    pub spider: Arc<CompiledSpider>,
    /// Metrics.
    pub metrics: Metrics,
    /// Requests held per owned partition.
    pub window: usize,
}

/// Everything a fetcher process needs.
pub struct FetcherConfig {
    /// The spider.
    pub spider: CompiledSpider,
    /// A connected NATS client.
    pub nats: async_nats::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Requests in flight in this process (all hosts together).
    pub concurrency: usize,
    /// Requests held per owned partition (waiting for their host or in flight).
    pub window: usize,
    /// Source address for outgoing connections.
    pub local_address: Option<IpAddr>,
}

struct Ctx<S> {
    source: S,
    role: Role,
    js: jetstream::Context,
    spider: Arc<CompiledSpider>,
    names: Names,
    metrics: Metrics,
    window: usize,
}

/// Requests that would wait longer than this for their host (or their retry time)
/// go back to the frontier with a not-before time, freeing their place in the window.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The furthest a not-before time can legitimately be: Retry-After is honoured up to
/// an hour, backoffs up to ten minutes; anything later is not one of ours.
const MAX_NOT_BEFORE_MS: i64 = 75 * 60 * 1000;

/// Room left in a NATS message for headers, next to the body.
const HEADER_ROOM: usize = 64 * 1024;

/// Run until `shutdown`; in-flight requests finish, waiting ones go back to the stream,
/// and the partitions are freed for the other fetchers.
pub async fn run(cfg: FetcherConfig, shutdown: CancellationToken) -> Result<(), FetchError> {
    let js = jetstream::new(cfg.nats.clone());
    topology::ensure_streams(&js, &cfg.spider.spider).await?;
    let body_cap = cfg
        .nats
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
        .max(64 * 1024);
    let spider = Arc::new(cfg.spider.clone());
    let fetcher = Fetcher::new(
        spider.clone(),
        FetcherOptions {
            body_cap,
            max_in_flight: cfg.concurrency.max(1),
            max_waiting: None,
            max_wait: Some(HOLD_LIMIT),
            local_address: cfg.local_address,
        },
        cfg.metrics.clone(),
    )?;
    let Some(store) = open_bucket(|| presence::bucket(&js, &spider.spider), &shutdown).await else {
        return Ok(());
    };
    let service = Service {
        source: fetcher,
        role: Role::Fetcher,
        store,
        js,
        spider,
        metrics: cfg.metrics,
        window: cfg.window,
    };
    serve(service, shutdown).await;
    Ok(())
}

/// Open a live bucket, trying again every second until it opens (`None`: shut down).
pub async fn open_bucket<F, Fut>(mut open: F, shutdown: &CancellationToken) -> Option<kv::Store>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<kv::Store, jetcrawl_shared::Error>>,
{
    loop {
        match open().await {
            Ok(store) => return Some(store),
            Err(e) => {
                tracing::warn!(error = %e, "live bucket not available, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Own partitions (leases in `svc.store`) and turn their requests into pages until
/// `shutdown`; then hand everything back.
pub async fn serve<S: Source>(svc: Service<S>, shutdown: CancellationToken) {
    let partitions = svc.spider.spider.streams.partitions;
    let stage = svc.role.consumer_name();
    let ctx = Arc::new(Ctx {
        source: svc.source,
        role: svc.role,
        js: svc.js,
        names: Names::new(svc.spider.name()),
        spider: svc.spider,
        metrics: svc.metrics.clone(),
        window: svc.window.max(1),
    });
    let reporter = tokio::spawn(report(ctx.clone()));
    svc.metrics.set_ready(true);
    let me = Instance::this_process(stage);
    tracing::info!(id = %me.id, partitions, "{stage} joining");
    lease::own_partitions(
        svc.store,
        me,
        partitions,
        Arc::new(Runner { ctx }),
        svc.metrics.clone(),
        shutdown,
    )
    .await;
    svc.metrics.set_ready(false);
    reporter.abort();
}

struct Runner<S> {
    ctx: Arc<Ctx<S>>,
}

impl<S: Source> PartitionRunner for Runner<S> {
    async fn run(&self, lease: Arc<Lease>) {
        let ctx = self.ctx.clone();
        let p = lease.partition;
        let opts = ConsumeOptions {
            role: ctx.role,
            max_in_flight: ctx.window,
            max_ack_pending: ctx.window as i64,
            // Only a process that keeps dying on a request leaves it unacked this often.
            poison_deliveries: 200,
            drain_deadline: Duration::from_secs(20),
            replay: None,
            partition: Some(p),
        };
        let handler_ctx = ctx.clone();
        let handler_lease = lease.clone();
        consume::consume(
            ctx.js.clone(),
            Arc::new(ctx.spider.spider.clone()),
            opts,
            ctx.metrics.clone(),
            lease.revoked.clone(),
            move |msg| handle(handler_ctx.clone(), handler_lease.clone(), msg),
        )
        .await;
        // Hand over only once the partition's hosts are quiet: the next owner's first
        // request then keeps the delay after this one's last.
        let partitions = ctx.spider.spider.streams.partitions;
        let give_up_at = Instant::now() + Duration::from_secs(60);
        loop {
            let quiet = ctx
                .source
                .politeness()
                .quiet_at(|key| partition(key, partitions) == p);
            match quiet {
                Some(at) => {
                    tokio::time::sleep_until(at.min(give_up_at)).await;
                    break;
                }
                None if Instant::now() >= give_up_at => break,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Every few seconds: requests waiting here, and the frontier's lag over all
/// partitions (any fetcher sees the whole frontier).
async fn report<S: Source>(ctx: Arc<Ctx<S>>) {
    let labels = consume::stage_label(ctx.role.consumer_name());
    let partitions = ctx.spider.spider.streams.partitions;
    loop {
        let (hosts, requests) = ctx.source.politeness().queued();
        ctx.metrics.hosts_queued.set(hosts as i64);
        ctx.metrics.requests_queued.set(requests as i64);
        if let Ok(stream) = ctx.js.get_stream(ctx.names.frontier_stream()).await {
            let (mut pending, mut ack_pending) = (0u64, 0u64);
            // Progress (the ack floors summed) and pause (every partition paused), for
            // the alerts and `jetcrawl pause`.
            let (mut floor, mut paused, mut seen) = (0u64, true, false);
            for p in 0..partitions {
                let name = match ctx.role {
                    Role::Renderer => jetcrawl_shared::render::render_consumer_name(p),
                    _ => topology::partition_consumer_name(p),
                };
                if let Ok(info) = stream.consumer_info(&name).await {
                    pending += info.num_pending;
                    ack_pending += info.num_ack_pending as u64;
                    floor += info.ack_floor.consumer_sequence;
                    paused &= info.paused;
                    seen = true;
                }
            }
            ctx.metrics
                .consumer_ack_floor
                .get_or_create(&labels)
                .set(i64::try_from(floor).unwrap_or(i64::MAX));
            ctx.metrics
                .consumer_paused
                .get_or_create(&labels)
                .set(i64::from(seen && paused));
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            ctx.metrics
                .consumer_pending
                .get_or_create(&labels)
                .set(gauge(pending));
            ctx.metrics
                .consumer_ack_pending
                .get_or_create(&labels)
                .set(gauge(ack_pending));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn handle<S: Source>(
    ctx: Arc<Ctx<S>>,
    lease: Arc<Lease>,
    msg: jetstream::Message,
) -> Disposition {
    let req: CrawlRequest = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => return Disposition::Dead(format!("not a crawl request: {e}")),
    };
    let span = tracing::info_span!("fetch", url = %req.url, tries = req.tries);
    async {
        if let Some(not_before) = req.not_before_ms {
            let wait_ms = not_before.saturating_sub(chrono::Utc::now().timestamp_millis());
            // Backoffs are capped at 10 minutes; a time far beyond that is not one of
            // ours, and waiting for it would stall the request forever.
            if wait_ms > HOLD_LIMIT.as_millis() as i64 && wait_ms <= MAX_NOT_BEFORE_MS {
                return Disposition::Retry(Some(Duration::from_millis(wait_ms as u64)));
            }
            if wait_ms > 0 && !hold(&lease, Duration::from_millis(wait_ms as u64)).await {
                return hand_back(&lease);
            }
        }
        let mut handed_back = 0u32;
        loop {
            ctx.metrics.in_flight.inc();
            let outcome = ctx.source.fetch(&req, &lease).await;
            ctx.metrics.in_flight.dec();
            return match outcome {
                FetchOutcome::Page(page) => {
                    failpoint::hit("fetcher.after-fetch");
                    let id = req.page_msg_id(page.fingerprint);
                    let published = publish_holding(|| publish_page(&ctx, &page, id.clone())).await;
                    match published {
                        Some(Ok(())) => {
                            failpoint::hit("fetcher.after-publish");
                            Disposition::Ack
                        }
                        Some(Err(e)) => Disposition::Dead(e.to_string()),
                        None => Disposition::Retry(None),
                    }
                }
                FetchOutcome::Retry { request, delay } => {
                    tracing::info!(
                        error = request.last_error.as_deref().unwrap_or(""),
                        retry_in_ms = delay.as_millis() as u64,
                        "will retry"
                    );
                    let id = format!("t{}", request.tries);
                    requeue(&ctx, &msg, &request, id, delay).await
                }
                FetchOutcome::Later(wait) if wait <= HOLD_LIMIT => {
                    // Waits here: this fetcher owns the host, nobody else can serve it.
                    if hold(&lease, wait).await {
                        continue;
                    }
                    hand_back(&lease)
                }
                FetchOutcome::Later(wait) => {
                    // A long wait (a slow host's queue, robots.txt unreachable) would keep
                    // this place in the window from the partition's other hosts.
                    let mut request = req.clone();
                    request.not_before_ms =
                        Some(chrono::Utc::now().timestamp_millis() + wait.as_millis() as i64);
                    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    handed_back += 1;
                    ctx.metrics.handed_back.inc();
                    requeue(&ctx, &msg, &request, format!("l{seq}-{handed_back}"), wait).await
                }
                FetchOutcome::Revoked if !lease.revoked.is_cancelled() => {
                    // Fenced, not lost: renewals are failing just now. Handing the
                    // request back would bring it straight back here, each time a
                    // delivery; wait for the lease to hold again, or to end.
                    if wait_for_lease(&lease).await {
                        continue;
                    }
                    hand_back(&lease)
                }
                FetchOutcome::Revoked => hand_back(&lease),
                FetchOutcome::Invalid(reason) => Disposition::Dead(reason),
            };
        }
    }
    .instrument(span)
    .await
}

/// Give a request of an ended lease back: at once (nak) if the lease was handed over
/// while it held; otherwise leave it, and the server redelivers it after `ack_wait`.
/// A fetcher that lost its lease (paused, cut off) may hold stale deliveries of
/// requests the new owner has since received: each nak would deliver them again.
fn hand_back(lease: &Lease) -> Disposition {
    if lease.may_hand_back() {
        Disposition::Retry(None)
    } else {
        tracing::debug!("lease lost: request left to be redelivered");
        Disposition::Abandon
    }
}

/// Wait until the lease holds again (true) or ends (false).
async fn wait_for_lease(lease: &Lease) -> bool {
    while !lease.holds() {
        if !hold(lease, Duration::from_millis(250)).await {
            return false;
        }
    }
    true
}

/// Wait `wait` (the consume loop keeps the request in progress); false if the lease
/// ended first.
async fn hold(lease: &Lease, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = lease.revoked.cancelled() => false,
    }
}

async fn publish_page<S>(ctx: &Ctx<S>, page: &Page, id: String) -> Result<(), PublishError> {
    let publish = PublishMessage::build()
        .headers(page.to_headers())
        .payload(page.body.clone())
        .message_id(id);
    ctx.js
        .send_publish(ctx.names.pages_subject(), publish)
        .await?
        .await?;
    Ok(())
}

/// Put a request back in the frontier as a new message (the same request, with its
/// try count and not-before time, under the id `<page id>-<suffix>` so that a
/// redelivered original requeues idempotently), then ack the original. If the frontier
/// will not take it now (full, or NATS away), hand the original back with a delayed nak
/// rather than hold a fetch slot: held slots would wait on a frontier that only they
/// can drain.
async fn requeue<S>(
    ctx: &Ctx<S>,
    msg: &jetstream::Message,
    req: &CrawlRequest,
    suffix: String,
    delay: Duration,
) -> Disposition {
    let fp = url::Url::parse(&req.url)
        .map(|u| url_fingerprint(&u))
        .unwrap_or_default();
    let publish = PublishMessage::build()
        .payload(Bytes::from(serde_json::to_vec(req).unwrap_or_default()))
        .message_id(format!("{}-{suffix}", req.page_msg_id(fp)));
    let published = async {
        ctx.js
            .send_publish(msg.subject.to_string(), publish)
            .await?
            .await
    };
    match published.await {
        Ok(_) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "frontier did not take the request back; nak instead");
            Disposition::Retry(Some(delay.max(Duration::from_secs(1))))
        }
    }
}

/// Publish, retrying in place while NATS reconnects or PAGES is full: the request
/// stays ours and this fetch slot waits, so the pull pauses too.
async fn publish_holding<F, Fut>(attempt: F) -> Option<Result<(), PublishError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    // Only a message too large for the server will never go through. Shutdown stops
    // the retries only when the whole process stops (not when a lease ends: the page
    // was fetched, and publishing it is what keeps it from being fetched twice).
    let retryable = |e: &PublishError| e.kind() != PublishErrorKind::MaxPayloadExceeded;
    let never = CancellationToken::new();
    retry_in_place(&never, retryable, attempt).await
}
