//! A crawl's JetStream state read directly, as `jetcrawl status` would: whether the
//! crawl is finished (the tests and the benchmarks ask the same question).

use async_nats::jetstream::Context;

/// `JETCRAWL_<crawl>_<KIND>` (KIND: FRONTIER, PAGES, ITEMS, DEAD).
pub fn stream_name(crawl: &str, kind: &str) -> String {
    format!("JETCRAWL_{crawl}_{kind}")
}

/// The durable consumers whose lag decides whether a crawl is finished:
/// (stream kind, consumer name). The fetchers' partition consumers need no look: FRONTIER
/// is a work queue, so an empty FRONTIER means none of them has anything left.
pub const CONSUMERS: &[(&str, &str)] = &[
    ("FRONTIER", "seeds"),
    ("PAGES", "parser"),
    ("ITEMS", "sink"),
];

/// Messages in a stream, or None if it does not exist (yet).
pub async fn stream_messages(js: &Context, stream: &str) -> Option<u64> {
    let s = js.get_stream(stream).await.ok()?;
    Some(s.cached_info().state.messages)
}

/// One look at the crawl: Ok if finished right now, Err(what is still going on).
pub async fn crawl_idle_now(js: &Context, crawl: &str) -> Result<(), String> {
    let frontier = stream_name(crawl, "FRONTIER");
    let mut busy = Vec::new();
    match stream_messages(js, &frontier).await {
        Some(0) => {}
        Some(n) => busy.push(format!("{frontier} holds {n} messages")),
        None => busy.push(format!("{frontier} does not exist")),
    }
    for (kind, consumer) in CONSUMERS {
        let stream = stream_name(crawl, kind);
        let info = match js.get_stream(&stream).await {
            Ok(s) => s.consumer_info(consumer).await,
            Err(e) => {
                busy.push(format!("{stream}: {e}"));
                continue;
            }
        };
        match info {
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {}
            Ok(i) => busy.push(format!(
                "{stream}/{consumer}: pending {} ack_pending {} redelivered {}",
                i.num_pending, i.num_ack_pending, i.num_redelivered
            )),
            Err(e) => busy.push(format!("{stream}/{consumer}: {e}")),
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(busy.join("; "))
    }
}
