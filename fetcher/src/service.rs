//! The fetcher service: requests from the frontier, pages to PAGES.
//! Publish the page, await its JetStream ack, then ack the request.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage, AckKind};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use jetcrawl_shared::canon::fp_hex;
use jetcrawl_shared::consume::{self, ack, give_up, retry_in_place, with_progress, ConsumeOptions};
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::CompiledSpider;

use crate::error::FetchError;
use crate::fetch::{FetchOutcome, Fetcher};

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
}

struct Ctx {
    fetcher: Fetcher,
    js: jetstream::Context,
    names: Names,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// How often a long fetch (or politeness wait) tells the server it is in progress.
    progress_every: Duration,
}

/// The furthest a not-before time can legitimately be: Retry-After is honoured up to
/// an hour, backoffs up to ten minutes; anything later is not one of ours.
const MAX_NOT_BEFORE_MS: i64 = 75 * 60 * 1000;

/// Room left in a NATS message for headers, next to the body.
const HEADER_ROOM: usize = 64 * 1024;

/// Run until `shutdown`; in-flight requests finish or go back to the stream.
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
    let ctx = Arc::new(Ctx {
        fetcher: Fetcher::new(spider.clone(), body_cap, cfg.metrics.clone())?,
        js: js.clone(),
        names: Names::new(cfg.spider.name()),
        metrics: cfg.metrics.clone(),
        shutdown: shutdown.clone(),
        progress_every: cfg.spider.spider.streams.ack_wait() / 3,
    });
    let opts = ConsumeOptions {
        role: Role::Fetcher,
        max_in_flight: cfg.concurrency,
        max_ack_pending: 10_000,
        // Busy hosts hand requests back with delayed naks, which count as deliveries.
        poison_deliveries: 200,
        drain_deadline: Duration::from_secs(20),
        replay: None,
    };
    consume::consume(
        js,
        Arc::new(cfg.spider.spider.clone()),
        opts,
        cfg.metrics.clone(),
        shutdown,
        move |msg| handle(ctx.clone(), msg),
    )
    .await;
    Ok(())
}

async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message) {
    let req: CrawlRequest = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("not a crawl request: {e}");
            give_up(&ctx.js, &ctx.names, "fetcher", &msg, &reason, &ctx.metrics).await;
            return;
        }
    };
    let span = tracing::info_span!("fetch", url = %req.url, tries = req.tries);
    async {
        if let Some(not_before) = req.not_before_ms {
            let wait_ms = not_before.saturating_sub(chrono::Utc::now().timestamp_millis());
            // Backoffs are capped at 10 minutes; a time far beyond that is not one of
            // ours, and waiting for it would stall the request forever.
            if wait_ms > 2_000 && wait_ms <= MAX_NOT_BEFORE_MS {
                ack(
                    &msg,
                    AckKind::Nak(Some(Duration::from_millis(wait_ms as u64))),
                )
                .await;
                return;
            }
            if wait_ms > 0 && wait_ms <= 2_000 {
                tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
            }
        }
        ctx.metrics.in_flight.inc();
        let outcome = tokio::select! {
            out = with_progress(&msg, ctx.progress_every, ctx.fetcher.fetch(&req)) => Some(out),
            // Shutting down: hand the request back now rather than hold the drain.
            _ = ctx.shutdown.cancelled() => None,
        };
        ctx.metrics.in_flight.dec();
        let Some(outcome) = outcome else {
            ack(&msg, AckKind::Nak(None)).await;
            return;
        };
        match outcome {
            FetchOutcome::Page(page) => {
                let id = req
                    .page_id
                    .clone()
                    .unwrap_or_else(|| fp_hex(page.fingerprint));
                let published =
                    publish_holding(&ctx, &msg, || publish_page(&ctx, &page, id.clone())).await;
                settle_publish(&ctx, &msg, published).await;
            }
            FetchOutcome::Retry { request, delay } => {
                tracing::info!(
                    error = request.last_error.as_deref().unwrap_or(""),
                    retry_in_ms = delay.as_millis() as u64,
                    "will retry"
                );
                let id = format!("t{}", request.tries);
                requeue(&ctx, &msg, &request, id, delay).await;
            }
            FetchOutcome::Busy(retry_after) => {
                // Handing back with a nak would count a delivery every time, and a host
                // with a long queue would make its requests look like poison. A copy
                // with a not-before time starts its own count.
                let mut request = req.clone();
                request.not_before_ms =
                    Some(chrono::Utc::now().timestamp_millis() + retry_after.as_millis() as i64);
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                requeue(&ctx, &msg, &request, format!("b{seq}"), retry_after).await;
            }
            FetchOutcome::Invalid(reason) => {
                give_up(&ctx.js, &ctx.names, "fetcher", &msg, &reason, &ctx.metrics).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn publish_page(ctx: &Ctx, page: &Page, id: String) -> Result<(), PublishError> {
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
async fn requeue(
    ctx: &Ctx,
    msg: &jetstream::Message,
    req: &CrawlRequest,
    suffix: String,
    delay: Duration,
) {
    let base = req.page_id.clone().unwrap_or_else(|| {
        url::Url::parse(&req.url)
            .map(|u| fp_hex(jetcrawl_shared::canon::url_fingerprint(&u)))
            .unwrap_or_default()
    });
    let publish = PublishMessage::build()
        .payload(Bytes::from(serde_json::to_vec(req).unwrap_or_default()))
        .message_id(format!("{base}-{suffix}"));
    let published = async {
        ctx.js
            .send_publish(msg.subject.to_string(), publish)
            .await?
            .await
    };
    match published.await {
        Ok(_) => ack(msg, AckKind::Ack).await,
        Err(e) => {
            tracing::warn!(error = %e, "frontier did not take the request back; nak instead");
            ack(msg, AckKind::Nak(Some(delay.max(Duration::from_secs(1))))).await;
        }
    }
}

/// Publish, retrying in place while NATS reconnects or PAGES is full: the request
/// stays ours (progress acks) and this fetch slot waits, so the pull pauses too.
async fn publish_holding<F, Fut>(
    ctx: &Ctx,
    msg: &jetstream::Message,
    attempt: F,
) -> Option<Result<(), PublishError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    // Only a message too large for the server will never go through.
    let retryable = |e: &PublishError| e.kind() != PublishErrorKind::MaxPayloadExceeded;
    retry_in_place(msg, ctx.progress_every, &ctx.shutdown, retryable, attempt).await
}

async fn settle_publish(
    ctx: &Ctx,
    msg: &jetstream::Message,
    published: Option<Result<(), PublishError>>,
) {
    match published {
        Some(Ok(())) => ack(msg, AckKind::Ack).await,
        Some(Err(e)) => {
            give_up(
                &ctx.js,
                &ctx.names,
                "fetcher",
                msg,
                &e.to_string(),
                &ctx.metrics,
            )
            .await
        }
        // Shutting down: another fetcher takes it from here.
        None => ack(msg, AckKind::Nak(None)).await,
    }
}
