//! The consume loop's contract (`shared/src/consume/`), against a real nats-server:
//! it carries out each disposition a handler returns, keeps every message it holds in
//! progress however long it is held (a single message or a batch), and hands back
//! what it holds when it stops, so nothing waits out `ack_wait` after a clean stop.

use crate::common;

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
use tokio_util::sync::CancellationToken;

use common::servers::NatsServer;

/// Deliveries seen by a handler: payload → (delivery count, when) of each.
type Deliveries = BTreeMap<String, Vec<(i64, Instant)>>;
type Seen = Arc<Mutex<Deliveries>>;

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

/// A consume loop running in the background; every delivery it sees is recorded.
struct Loop {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    seen: Seen,
}

impl Loop {
    /// Messages seen at least once.
    fn taken(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn deliveries(&self, payload: &str) -> usize {
        self.seen.lock().unwrap().get(payload).map_or(0, Vec::len)
    }

    /// Stop it, wait for it to end, and return what it saw.
    async fn stop(self) -> Deliveries {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loop ends soon after its stop")
            .expect("consume ends");
        self.seen.lock().unwrap().clone()
    }
}

impl Setup {
    /// [`consume::consume`] with `max_in_flight` slots; `decide(payload, delivery,
    /// stop)` gives each message's disposition.
    fn consume<Fut>(
        &self,
        max_in_flight: usize,
        decide: impl Fn(String, i64, CancellationToken) -> Fut + Send + Sync + 'static,
    ) -> Loop
    where
        Fut: std::future::Future<Output = Disposition> + Send + 'static,
    {
        self.consume_with(self.options(max_in_flight), decide)
    }

    /// [`Setup::consume`] with options of its own.
    fn consume_with<Fut>(
        &self,
        options: ConsumeOptions,
        decide: impl Fn(String, i64, CancellationToken) -> Fut + Send + Sync + 'static,
    ) -> Loop
    where
        Fut: std::future::Future<Output = Disposition> + Send + 'static,
    {
        let (stop, seen) = (CancellationToken::new(), Seen::default());
        let (handler_stop, handler_seen) = (stop.clone(), seen.clone());
        let task = tokio::spawn(consume::consume(
            self.js.clone(),
            self.spider.clone(),
            options,
            Metrics::new(),
            stop.clone(),
            move |msg| {
                let (payload, delivered) = record(&handler_seen, &msg);
                decide(payload, delivered, handler_stop.clone())
            },
        ));
        Loop { stop, task, seen }
    }

    /// [`consume::consume_batches`] with `max_in_flight` slots; `decide(n)` gives the
    /// dispositions of a batch of `n` (each message recorded as seen).
    fn consume_batches<Fut>(
        &self,
        max_in_flight: usize,
        batching: Batching,
        decide: impl Fn(usize) -> Fut + Send + Sync + 'static,
    ) -> Loop
    where
        Fut: std::future::Future<Output = Vec<Disposition>> + Send + 'static,
    {
        let (stop, seen) = (CancellationToken::new(), Seen::default());
        let handler_seen = seen.clone();
        let task = tokio::spawn(consume::consume_batches(
            self.js.clone(),
            self.spider.clone(),
            self.options(max_in_flight),
            batching,
            Metrics::new(),
            stop.clone(),
            move |msgs| {
                for m in &msgs {
                    record(&handler_seen, m);
                }
                decide(msgs.len())
            },
        ));
        Loop { stop, task, seen }
    }

    /// A loop that acks everything.
    fn acking(&self) -> Loop {
        self.consume(8, |_, _, _| async { Disposition::Ack })
    }
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

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_disposition_is_carried_out() {
    let s = setup(2).await;
    s.publish(&["ack", "retry", "dead", "abandon"]).await;
    let run = s.consume(8, |payload, delivered, _| async move {
        match (payload.as_str(), delivered) {
            ("retry", 1) => Disposition::Retry(Some(Duration::from_millis(200))),
            ("abandon", 1) => Disposition::Abandon,
            ("dead", _) => Disposition::Dead("a test reason".to_string()),
            _ => Disposition::Ack,
        }
    });
    wait_for(
        "retry and abandon delivered twice",
        Duration::from_secs(15),
        || run.deliveries("retry") == 2 && run.deliveries("abandon") == 2,
    )
    .await;
    // Settled: nothing left unacknowledged on the server.
    let until = Instant::now() + Duration::from_secs(5);
    while s.ack_pending().await > 0 {
        assert!(Instant::now() < until, "messages left unacknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = run.stop().await;

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
    let hold = Duration::from_secs(5);
    for batched in [false, true] {
        let s = setup(2).await;
        let payloads = numbered(6);
        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
        s.publish(&refs).await;
        let run = if batched {
            let batching = Batching {
                size: 3,
                timeout: Duration::from_millis(100),
            };
            s.consume_batches(12, batching, move |n| async move {
                tokio::time::sleep(hold).await;
                vec![Disposition::Ack; n]
            })
        } else {
            s.consume(12, move |_, _, _| async move {
                tokio::time::sleep(hold).await;
                Disposition::Ack
            })
        };
        wait_for("all six taken", Duration::from_secs(10), || {
            run.taken() == 6
        })
        .await;
        tokio::time::sleep(hold + Duration::from_secs(2)).await;
        let seen = run.stop().await;
        let again: Vec<_> = seen.iter().filter(|(_, d)| d.len() > 1).collect();
        assert!(
            again.is_empty(),
            "held messages were delivered again (batched: {batched}): {again:?}"
        );
        assert_eq!(s.ack_pending().await, 0, "each held message was acked");
    }
}

/// The end of a burst is not held for the batch timeout: three messages, batches of up
/// to 100 that time out after 30 s, and all three are handed over (and acked) at once,
/// as the last items of a crawl are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_is_handed_over_once_messages_stop_coming() {
    let s = setup(60).await;
    let payloads = numbered(3);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let started = Instant::now();
    let batching = Batching {
        size: 100,
        timeout: Duration::from_secs(30),
    };
    let run = s.consume_batches(200, batching, |n| async move { vec![Disposition::Ack; n] });
    s.publish(&refs).await;
    wait_for(
        "all three handed over, long before the 30 s timeout",
        Duration::from_secs(10),
        || run.taken() == 3,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let ack_pending = async {
        for _ in 0..50 {
            if s.ack_pending().await == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(ack_pending.await, "the partial batch was acked");
    run.stop().await;
}

/// A stop with work in flight: the drain deadline passes, and every held message is
/// handed back at once; another consumer gets all of them well before `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_hands_back_what_it_holds() {
    let s = setup(30).await;
    let payloads = numbered(20);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    s.publish(&refs).await;
    // Never finishes.
    let stuck = s.consume(4, |_, _, _| std::future::pending::<Disposition>());
    wait_for("four taken", Duration::from_secs(10), || stuck.taken() == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stuck.taken(), 4, "the loop took more than it has slots for");
    let taken = stuck.stop().await;

    let next = s.acking();
    wait_for(
        "all twenty handled by the next consumer, well before ack_wait (30 s)",
        Duration::from_secs(10),
        || next.taken() == 20,
    )
    .await;
    let seen = next.stop().await;
    for p in taken.keys() {
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
    // Room for 8: after taking 3, requests for 5 more wait on the server.
    let stopping = s.consume(8, |_, _, stop| async move {
        stop.cancelled().await;
        Disposition::Retry(None)
    });
    wait_for("three taken", Duration::from_secs(10), || {
        stopping.taken() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = stopping.stop().await;
    let bounced: Vec<_> = taken.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        bounced.is_empty(),
        "handed back to the stopping loop itself: {bounced:?}"
    );

    let next = s.acking();
    wait_for("all three handled", Duration::from_secs(10), || {
        next.taken() == 3
    })
    .await;
    for (p, deliveries) in next.stop().await {
        assert_eq!(
            deliveries[0].0, 2,
            "{p}: handed back once, it is on its second delivery"
        );
    }
}

/// Log lines written by this test process (each test runs in a process of its own).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A consumer whose unacked limit is filled by another process's held messages
/// delivers nothing to a stage with room: the stage says so, with the consumer's state,
/// instead of sitting idle in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_starved_by_max_ack_pending_says_so() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let s = setup(30).await;
    let payloads = numbered(8);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    s.publish(&refs).await;
    let limited = ConsumeOptions {
        max_ack_pending: 4,
        ..s.options(4)
    };
    // Holds four forever: the consumer's limit is reached.
    let holder = s.consume_with(limited.clone(), |_, _, _| {
        std::future::pending::<Disposition>()
    });
    wait_for("four held", Duration::from_secs(10), || holder.taken() == 4).await;
    let starved = s.consume_with(limited, |_, _, _| async { Disposition::Ack });
    let warned = || {
        String::from_utf8_lossy(&captured.0.lock().unwrap())
            .lines()
            .any(|l| {
                l.contains("nothing delivered although messages are pending")
                    && l.contains("pending=4")
            })
    };
    wait_for("the starved stage warns", Duration::from_secs(20), warned).await;
    assert_eq!(starved.taken(), 0, "the limit let nothing through");
    starved.stop().await;
    holder.stop().await;
}
