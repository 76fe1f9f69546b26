//! The consume loop's contract (`shared/src/consume.rs`), against a real nats-server:
//! it carries out each disposition a handler returns, keeps every message it holds in
//! progress however long it is held (a single message or a batch), and hands back
//! what it holds when it stops, so nothing waits out `ack_wait` after a clean stop.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetcrawl_shared::config::CompiledSpider;
use jetcrawl_shared::consume::{self, Batching, ConsumeOptions, Disposition};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Names, Role};
use jetcrawl_shared::Spider;

use common::servers::NatsServer;

/// Deliveries seen by a handler: payload → (delivery count, when) of each.
type Seen = Arc<Mutex<BTreeMap<String, Vec<(i64, Instant)>>>>;

struct Setup {
    _nats: NatsServer,
    js: jetstream::Context,
    spider: Arc<Spider>,
    names: Names,
}

/// A nats-server and a crawl's streams, with `ack_wait_secs`.
async fn setup(ack_wait_secs: u64) -> Setup {
    let nats = NatsServer::start().await;
    let toml = format!(
        "name = \"c{}\"\nstart_urls = [\"http://a.test/\"]\n[streams]\nack_wait_secs = {ack_wait_secs}\n",
        common::random_hex()
    );
    let spider = CompiledSpider::from_toml(&toml, Path::new("t.toml"))
        .expect("spider")
        .spider;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    topology::ensure_streams(&js, &spider)
        .await
        .expect("streams");
    let names = Names::new(&spider.name);
    Setup {
        _nats: nats,
        js,
        spider: Arc::new(spider),
        names,
    }
}

impl Setup {
    /// Publish `payloads` on the items subject (the sink's consumer reads it).
    async fn publish(&self, payloads: &[&str]) {
        for p in payloads {
            self.js
                .publish(self.names.items_subject(), p.to_string().into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    }

    fn options(&self, max_in_flight: usize) -> ConsumeOptions {
        ConsumeOptions {
            role: Role::Sink,
            max_in_flight,
            max_ack_pending: 1_000,
            poison_deliveries: 100,
            drain_deadline: Duration::from_millis(500),
            replay: None,
            partition: None,
        }
    }

    /// The sink consumer's unacked count, from the server.
    async fn ack_pending(&self) -> usize {
        let stream = self
            .js
            .get_stream(self.names.items_stream())
            .await
            .expect("stream");
        stream
            .consumer_info(Role::Sink.consumer_name())
            .await
            .expect("consumer")
            .num_ack_pending
    }
}

fn record(seen: &Seen, msg: &jetstream::Message) -> (String, i64) {
    let payload = String::from_utf8_lossy(&msg.payload).into_owned();
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(0);
    seen.lock()
        .unwrap()
        .entry(payload.clone())
        .or_default()
        .push((delivered, Instant::now()));
    (payload, delivered)
}

async fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < until,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_disposition_is_carried_out() {
    let s = setup(2).await;
    s.publish(&["ack", "retry", "dead", "abandon"]).await;
    let seen: Seen = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let handler_seen = seen.clone();
    let run = tokio::spawn(consume::consume(
        s.js.clone(),
        s.spider.clone(),
        s.options(8),
        Metrics::new(),
        stop.clone(),
        move |msg| {
            let (payload, delivered) = record(&handler_seen, &msg);
            async move {
                match (payload.as_str(), delivered) {
                    ("retry", 1) => Disposition::Retry(Some(Duration::from_millis(200))),
                    ("abandon", 1) => Disposition::Abandon,
                    ("dead", _) => Disposition::Dead("a test reason".to_string()),
                    _ => Disposition::Ack,
                }
            }
        },
    ));
    let deliveries = |p: &str| seen.lock().unwrap().get(p).map_or(0, Vec::len);
    wait_for(
        "retry and abandon delivered twice",
        Duration::from_secs(15),
        || deliveries("retry") == 2 && deliveries("abandon") == 2,
    )
    .await;
    // Settled: nothing left unacknowledged on the server.
    let until = Instant::now() + Duration::from_secs(5);
    while s.ack_pending().await > 0 {
        assert!(Instant::now() < until, "messages left unacknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    run.await.expect("consume ends");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen["ack"].len(), 1, "an acked message is not redelivered");
    assert_eq!(seen["dead"].len(), 1, "a dead message is not redelivered");
    let gap = |p: &str| seen[p][1].1 - seen[p][0].1;
    assert!(
        gap("retry") < Duration::from_millis(1500),
        "a retry comes back after its delay, not after ack_wait: {:?}",
        gap("retry")
    );
    assert!(
        gap("abandon") >= Duration::from_millis(1800),
        "an abandoned message comes back only after ack_wait (2 s): {:?}",
        gap("abandon")
    );
    let dead = common::jetstream::dead_letters(&s.js, &s.spider.name).await;
    assert_eq!(dead.len(), 1, "one dead letter: {dead:#?}");
    assert_eq!(dead[0].payload, "dead");
    assert_eq!(dead[0].header("Jetcrawl-Error"), Some("a test reason"));
    assert_eq!(dead[0].header("Jetcrawl-Stage"), Some("sink"));
    // DEAD is bounded (the oldest go first) and deduplicates by message id.
    let mut stream = s.js.get_stream(s.names.dead_stream()).await.expect("DEAD");
    let config = &stream.info().await.expect("DEAD info").config;
    assert_eq!(config.max_bytes, 1 << 30);
    assert_eq!(config.max_age, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        config.discard,
        async_nats::jetstream::stream::DiscardPolicy::Old
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(300));
}

/// Held for 5 s with `ack_wait` at 2 s, singly or in batches: no message is delivered
/// again meanwhile, though the loop has room for more and pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_stay_in_progress() {
    for batched in [false, true] {
        let s = setup(2).await;
        let payloads: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
        s.publish(&refs).await;
        let seen: Seen = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let handler_seen = seen.clone();
        let hold = Duration::from_secs(5);
        let run = if batched {
            tokio::spawn(consume::consume_batches(
                s.js.clone(),
                s.spider.clone(),
                s.options(12),
                Batching {
                    size: 3,
                    timeout: Duration::from_millis(100),
                },
                Metrics::new(),
                stop.clone(),
                move |msgs| {
                    for m in &msgs {
                        record(&handler_seen, m);
                    }
                    async move {
                        tokio::time::sleep(hold).await;
                        vec![Disposition::Ack; msgs.len()]
                    }
                },
            ))
        } else {
            tokio::spawn(consume::consume(
                s.js.clone(),
                s.spider.clone(),
                s.options(12),
                Metrics::new(),
                stop.clone(),
                move |msg| {
                    record(&handler_seen, &msg);
                    async move {
                        tokio::time::sleep(hold).await;
                        Disposition::Ack
                    }
                },
            ))
        };
        let all = || seen.lock().unwrap().len() == 6;
        wait_for("all six taken", Duration::from_secs(10), all).await;
        tokio::time::sleep(hold + Duration::from_secs(2)).await;
        stop.cancel();
        run.await.expect("consume ends");
        let seen = seen.lock().unwrap().clone();
        let again: Vec<_> = seen.iter().filter(|(_, d)| d.len() > 1).collect();
        assert!(
            again.is_empty(),
            "held messages were delivered again (batched: {batched}): {again:?}"
        );
        assert_eq!(s.ack_pending().await, 0, "each held message was acked");
    }
}

/// A stop with work in flight: the drain deadline passes, and every held message is
/// handed back at once; another consumer gets all of them well before `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_hands_back_what_it_holds() {
    let s = setup(30).await;
    let payloads: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    s.publish(&refs).await;
    let taken: Seen = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let handler_taken = taken.clone();
    let stuck = tokio::spawn(consume::consume(
        s.js.clone(),
        s.spider.clone(),
        s.options(4),
        Metrics::new(),
        stop.clone(),
        move |msg| {
            record(&handler_taken, &msg);
            // Never finishes.
            std::future::pending::<Disposition>()
        },
    ));
    wait_for("four taken", Duration::from_secs(10), || {
        taken.lock().unwrap().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        taken.lock().unwrap().len(),
        4,
        "the loop took more than it has slots for"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the loop ends soon after its drain deadline")
        .expect("consume ends");

    let seen: Seen = Arc::default();
    let handler_seen = seen.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(consume::consume(
        s.js.clone(),
        s.spider.clone(),
        s.options(8),
        Metrics::new(),
        stop.clone(),
        move |msg| {
            record(&handler_seen, &msg);
            async { Disposition::Ack }
        },
    ));
    wait_for(
        "all twenty handled by the next consumer",
        Duration::from_secs(10),
        || seen.lock().unwrap().len() == 20,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the held messages waited out ack_wait (30 s)"
    );
    stop.cancel();
    run.await.expect("consume ends");
    let seen = seen.lock().unwrap().clone();
    for p in taken.lock().unwrap().keys() {
        assert_eq!(
            seen[p][0].0, 2,
            "{p} was held by the stopped loop: handed back, it is on its second delivery"
        );
    }
}

/// Handlers that hand their messages back the moment the stop comes (as a fetcher does
/// when its partition is taken away), while the loop still has pull requests waiting
/// on the server: each message comes back to the next consumer on its second
/// delivery, not bounced between the server and the stopping loop until it looks like
/// poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_handed_back_at_a_stop_do_not_bounce_back_to_it() {
    let s = setup(30).await;
    s.publish(&["a", "b", "c"]).await;
    let taken: Seen = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let (handler_taken, handler_stop) = (taken.clone(), stop.clone());
    // Room for 8: after taking 3, requests for 5 more wait on the server.
    let run = tokio::spawn(consume::consume(
        s.js.clone(),
        s.spider.clone(),
        s.options(8),
        Metrics::new(),
        stop.clone(),
        move |msg| {
            record(&handler_taken, &msg);
            let stop = handler_stop.clone();
            async move {
                stop.cancelled().await;
                Disposition::Retry(None)
            }
        },
    ));
    wait_for("three taken", Duration::from_secs(10), || {
        taken.lock().unwrap().len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    run.await.expect("consume ends");
    let bounced: Vec<_> = taken
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(p, d)| (p.clone(), d.len()))
        .collect();
    assert!(
        bounced.is_empty(),
        "handed back to the stopping loop itself: {bounced:?}"
    );

    let seen: Seen = Arc::default();
    let handler_seen = seen.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(consume::consume(
        s.js.clone(),
        s.spider.clone(),
        s.options(8),
        Metrics::new(),
        stop.clone(),
        move |msg| {
            record(&handler_seen, &msg);
            async { Disposition::Ack }
        },
    ));
    wait_for("all three handled", Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    stop.cancel();
    run.await.expect("consume ends");
    for (p, deliveries) in seen.lock().unwrap().iter() {
        assert_eq!(
            deliveries[0].0, 2,
            "{p}: handed back once, it is on its second delivery"
        );
    }
}
