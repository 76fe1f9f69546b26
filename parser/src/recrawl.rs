//! `[recrawl]`: each fetched page is scheduled to be fetched again after its
//! interval, conditionally (`If-None-Match` / `If-Modified-Since` from its response).
//!
//! The schedule is a JetStream message schedule (nats-server 2.12+, ADR-51) in the
//! RECRAWL stream (`shared/src/topology/recrawl.rs`): at its time the server publishes
//! the request, and FRONTIER sources it onto the URL's partition, where its fetcher
//! takes it like any other. Nothing waits in a process: schedules survive restarts
//! with the stream, and the server holds one schedule per URL (a newer schedule for the
//! same subject replaces the older). The parser schedules the
//! next fetch when it handles a page record with a response (200, 304, 404, …), under
//! a message id made of the fingerprint and the fetch time, so a redelivered page
//! schedules once.

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use async_nats::HeaderMap;
use bytes::Bytes;

use jetcrawl_shared::canon::fp_hex;
use jetcrawl_shared::message::Page;
use jetcrawl_shared::CompiledSpider;

use crate::error::ParseError;
use crate::schedule::Planner;

/// The schedule for the next fetch of `page`, if `[recrawl]` applies to it:
/// (subject, message id, headers, payload).
pub async fn next_fetch(
    spider: &CompiledSpider,
    planner: &Planner,
    page: &Page,
) -> Option<(String, String, HeaderMap, Bytes)> {
    let interval = spider.recrawl_interval(page.url.as_str())?;
    let due = page.fetched_at + chrono::Duration::from_std(interval).ok()?;
    let mut planned = planner
        .plan(std::slice::from_ref(&page.url), page.depth)
        .await
        .pop()?;
    let fp = fp_hex(planned.fp);
    let request = &mut planned.request;
    request.page_id = Some(format!("{fp}-r{}", due.timestamp_millis()));
    request.etag.clone_from(&page.etag);
    request.last_modified.clone_from(&page.last_modified);
    let payload = serde_json::to_vec(request).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Schedule",
        format!(
            "@at {}",
            due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
        .as_str(),
    );
    // `frontier.<p>` → `recrawl.due.<p>`: FRONTIER sources it back to `frontier.<p>`.
    let partition = planned.subject.rsplit('.').next().unwrap_or("0");
    let target = format!("{}.due.{partition}", planner.names.recrawl_prefix());
    headers.insert("Nats-Schedule-Target", target.as_str());
    // The due copy is in FRONTIER within moments (sourced); kept for the interval (at
    // least a minute, at most a day) in case FRONTIER is full for a while.
    let ttl = interval.as_secs().clamp(60, 86_400);
    headers.insert("Nats-Schedule-TTL", format!("{ttl}s").as_str());
    let subject = format!("{}.at.{fp}", planner.names.recrawl_prefix());
    let id = format!("{fp}-s{}", page.fetched_at.timestamp_millis());
    Some((subject, id, headers, Bytes::from(payload)))
}

/// Publish the next fetch of `page` (nothing without `[recrawl]`) and await its ack.
pub async fn schedule(
    js: &jetstream::Context,
    spider: &CompiledSpider,
    planner: &Planner,
    page: &Page,
) -> Result<bool, ParseError> {
    let Some((subject, id, headers, payload)) = next_fetch(spider, planner, page).await else {
        return Ok(false);
    };
    let publish = Publish::build()
        .payload(payload)
        .headers(headers)
        .message_id(id.as_str());
    let fail = |e: async_nats::jetstream::context::PublishError| ParseError::Publish {
        subject: subject.clone(),
        retryable: true,
        message: e.to_string(),
    };
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(fail)?
        .await
        .map_err(fail)?;
    Ok(true)
}
