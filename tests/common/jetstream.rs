//! Reading a crawl's JetStream state directly, as `jetcrawl status` would.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};

pub use jetcrawl_bench::crawl_state::{crawl_idle_now, stream_messages, stream_name, CONSUMERS};

/// A JetStream context on `nats_url` (one server, or a cluster's list).
pub async fn connect(nats_url: &str) -> Context {
    let client = super::servers::nats_client(nats_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {nats_url}: {e}"));
    jetstream::new(client)
}

/// How long a crawl must look finished before it counts as finished.
pub const IDLE_FOR: Duration = Duration::from_secs(2);

/// Waits until the crawl is finished: FRONTIER empty, every consumer in [`CONSUMERS`]
/// with nothing pending or unacknowledged, and that for [`IDLE_FOR`] on end.
/// `check` runs on every poll (e.g. to fail fast when a service died).
pub async fn wait_crawl_idle_checked(
    nats_url: &str,
    crawl: &str,
    timeout: Duration,
    check: &dyn Fn(),
) {
    let js = connect(nats_url).await;
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        check();
        match crawl_idle_now(&js, crawl).await {
            Ok(()) => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= IDLE_FOR {
                    return;
                }
            }
            Err(busy) => {
                idle_since = None;
                if started.elapsed() > timeout {
                    panic!("crawl {crawl} not finished after {timeout:?}: {busy}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`wait_crawl_idle_checked`] without a check.
pub async fn wait_crawl_idle(nats_url: &str, crawl: &str, timeout: Duration) {
    wait_crawl_idle_checked(nats_url, crawl, timeout, &|| {}).await;
}

/// A message of the DEAD stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub subject: String,
    /// (name, value), names as sent.
    pub headers: Vec<(String, String)>,
    pub payload: String,
}

impl DeadLetter {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every message in `JETCRAWL_<crawl>_DEAD` (empty if the stream does not exist).
pub async fn dead_letters(js: &Context, crawl: &str) -> Vec<DeadLetter> {
    let Ok(stream) = js.get_stream(stream_name(crawl, "DEAD")).await else {
        return Vec::new();
    };
    let state = &stream.cached_info().state;
    if state.messages == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        // Deleted sequences (gaps) answer with an error: skip them.
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let mut headers = Vec::new();
        for (name, values) in msg.headers.iter() {
            for v in values {
                headers.push((name.to_string(), v.as_str().to_string()));
            }
        }
        out.push(DeadLetter {
            subject: msg.subject.to_string(),
            headers,
            payload: String::from_utf8_lossy(&msg.payload).into_owned(),
        });
    }
    out
}

/// A message stored in a stream (a page record, say), payload as bytes.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub subject: String,
    pub seq: u64,
    /// (name, value), names as sent.
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
}

impl StoredMessage {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every message of stream `stream` whose subject is `subject`, in order (empty if
/// the stream does not exist).
pub async fn stored_messages(js: &Context, stream: &str, subject: &str) -> Vec<StoredMessage> {
    let Ok(stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let state = &stream.cached_info().state;
    if state.messages == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() != subject {
            continue;
        }
        let mut headers = Vec::new();
        for (name, values) in msg.headers.iter() {
            for v in values {
                headers.push((name.to_string(), v.as_str().to_string()));
            }
        }
        out.push(StoredMessage {
            subject: msg.subject.to_string(),
            seq,
            headers,
            payload: msg.payload,
        });
    }
    out
}

/// The page records of a crawl (`jetcrawl.<crawl>.pages` in its PAGES stream).
pub async fn page_records(js: &Context, crawl: &str) -> Vec<StoredMessage> {
    stored_messages(
        js,
        &stream_name(crawl, "PAGES"),
        &format!("jetcrawl.{crawl}.pages"),
    )
    .await
}

/// How many distinct depths each URL was scheduled at, from its page records in PAGES:
/// a URL found again along a shorter path is scheduled (and fetched) again at that
/// depth on purpose, so a depth-limited crawl reaches the same pages in any order.
pub async fn scheduled_depths(
    js: &Context,
    crawl: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut depths: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for record in page_records(js, crawl).await {
        if let (Some(url), Some(depth)) = (
            record.header("Jetcrawl-Url"),
            record.header("Jetcrawl-Depth"),
        ) {
            depths
                .entry(url.to_string())
                .or_default()
                .insert(depth.to_string());
        }
    }
    depths.into_iter().map(|(url, d)| (url, d.len())).collect()
}
