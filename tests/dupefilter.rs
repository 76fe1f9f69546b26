//! The dupefilter's depth rule, on both backends: Redis (a real redis-server the test
//! starts, or a 3-master Redis Cluster) and the in-memory one the embedded mode uses.

use std::time::{Duration, Instant};

use jetcrawl_bench::servers::{RedisCluster, RedisServer};
use jetcrawl_shared::dupefilter::{Dupefilter, MemoryDupefilter, RedisDupefilter, Verdict};

async fn suite(df: Dupefilter, backend: &str) {
    let (a, b, c) = (0x1234_5678_9abc_def0u64, 0xfedc_ba98_7654_3210u64, 7u64);
    assert_eq!(
        df.check(&[(a, 3), (b, 0)]).await.unwrap(),
        vec![false, false],
        "{backend}: nothing seen yet"
    );
    df.add(&[(a, 3)]).await.unwrap();
    assert_eq!(
        df.check(&[(a, 3), (a, 5), (a, 2), (a, 0)]).await.unwrap(),
        vec![true, true, false, false],
        "{backend}: seen at its depth and deeper, news at a shallower one"
    );
    assert_eq!(
        df.classify(&[(a, 3), (a, 2), (b, 1)], 31).await.unwrap(),
        vec![Verdict::Held, Verdict::Deeper, Verdict::New],
        "{backend}: held, held only deeper, never scheduled"
    );
    assert_eq!(df.shallowest(a, 5).await.unwrap(), Some(3), "{backend}");
    assert_eq!(df.shallowest(a, 2).await.unwrap(), None, "{backend}");
    assert_eq!(df.shallowest(b, 5).await.unwrap(), None, "{backend}");
    let deeper = df
        .add_counting_deeper(&[(a, 1), (b, 2), (c, 9)], 3, 31)
        .await
        .unwrap();
    assert_eq!(
        deeper, 1,
        "{backend}: only `a` was scheduled before, deeper"
    );
    assert_eq!(
        df.check(&[(a, 1), (a, 2), (b, 2), (c, 40)]).await.unwrap(),
        vec![true, true, true, true],
        "{backend}: the shallower depth is what counts now"
    );
    // Depths from 31 on share one value.
    let d = 0xdddd_0000_0000_0042u64;
    df.add(&[(d, 100)]).await.unwrap();
    assert_eq!(
        df.check(&[(d, 31), (d, 1000), (d, 30)]).await.unwrap(),
        vec![true, true, false],
        "{backend}"
    );
}

#[tokio::test]
async fn depth_rule_on_redis_and_in_memory() {
    let redis = RedisServer::start().await;
    let df = RedisDupefilter::connect(&redis.url(), "dftest")
        .await
        .unwrap();
    assert!(!df.is_cluster(), "a plain redis-server is one server");
    suite(Dupefilter::Redis(df), "redis").await;
    suite(Dupefilter::Memory(MemoryDupefilter::default()), "memory").await;
}

/// SMISMEMBER commands Redis has run so far.
async fn smismember_calls(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_smismember:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// A parser asks Redis about a link once: what it added, or was told is there, it
/// does not ask about again (most of a page's links are the same navigation), while a
/// second parser still learns from Redis what the first added, and a shallower depth
/// than the one known is still asked about.
#[tokio::test]
async fn a_parser_asks_redis_about_a_known_link_once() {
    let redis = RedisServer::start().await;
    let a = Dupefilter::Redis(
        RedisDupefilter::connect(&redis.url(), "known")
            .await
            .unwrap(),
    );
    let b = Dupefilter::Redis(
        RedisDupefilter::connect(&redis.url(), "known")
            .await
            .unwrap(),
    );
    let at = |depth: u32| -> Vec<(u64, u32)> {
        (0..200u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15), depth))
            .collect()
    };
    a.add(&at(2)).await.unwrap();
    let calls = smismember_calls(&redis).await;
    assert_eq!(
        b.check(&at(2)).await.unwrap(),
        vec![true; 200],
        "b learns from Redis"
    );
    assert_eq!(
        smismember_calls(&redis).await - calls,
        200,
        "b asked about each once"
    );
    let calls = smismember_calls(&redis).await;
    assert_eq!(b.check(&at(2)).await.unwrap(), vec![true; 200]);
    assert_eq!(b.check(&at(5)).await.unwrap(), vec![true; 200]);
    assert_eq!(a.check(&at(2)).await.unwrap(), vec![true; 200]);
    assert_eq!(
        smismember_calls(&redis).await,
        calls,
        "known links (at their depth or deeper) are not asked about again"
    );
    assert_eq!(
        a.check(&at(1)).await.unwrap(),
        vec![false; 200],
        "a shallower depth is news"
    );
    assert_eq!(
        smismember_calls(&redis).await - calls,
        200,
        "and was asked about"
    );
}

/// The same rule on a Redis Cluster, reached through every node listed or through any
/// one node (found to be a cluster node by `INFO cluster`).
#[tokio::test]
async fn depth_rule_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let listed = RedisDupefilter::connect(&cluster.url(), "dftest")
        .await
        .unwrap();
    assert!(listed.is_cluster());
    suite(Dupefilter::Redis(listed), "redis cluster, all nodes listed").await;
    let one = RedisDupefilter::connect(&cluster.node_urls()[2], "dftest2")
        .await
        .unwrap();
    assert!(one.is_cluster(), "one node's URL is detected as a cluster");
    suite(Dupefilter::Redis(one), "redis cluster, one node's URL").await;
}

/// On a cluster the buckets spread over every master, and each check or add, whose
/// fingerprints fall in buckets on all of them, still answers exactly.
#[tokio::test]
async fn buckets_spread_over_every_master() {
    let cluster = RedisCluster::start().await;
    let df = Dupefilter::Redis(
        RedisDupefilter::connect(&cluster.url(), "spread")
            .await
            .unwrap(),
    );
    let fps: Vec<u64> = (0..20_000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    for batch in fps.chunks(50) {
        let batch: Vec<(u64, u32)> = batch.iter().map(|&fp| (fp, (fp % 5) as u32)).collect();
        assert!(df.check(&batch).await.unwrap().iter().all(|&seen| !seen));
        df.add(&batch).await.unwrap();
    }
    for batch in fps.chunks(500) {
        let batch: Vec<(u64, u32)> = batch.iter().map(|&fp| (fp, 4)).collect();
        assert!(
            df.check(&batch).await.unwrap().iter().all(|&seen| seen),
            "an added fingerprint checked as new"
        );
    }
    let buckets: std::collections::BTreeSet<u64> = fps.iter().map(|fp| fp >> 48).collect();
    let keys = cluster.count_keys("jetcrawl:spread:df:*").await;
    assert_eq!(
        keys.iter().sum::<u64>(),
        buckets.len() as u64,
        "one key per bucket, over the masters {keys:?}"
    );
    for (i, &n) in keys.iter().enumerate() {
        let share = n as f64 / buckets.len() as f64;
        assert!(
            (0.28..0.39).contains(&share),
            "master {i} holds {n} of {} bucket keys (per master: {keys:?})",
            buckets.len()
        );
    }
}

/// With a master down, requests fail soon (the parser holds its page and asks again)
/// rather than hang, and a parser can still connect; once the master is back, empty,
/// both connections answer again: what the other masters hold is still seen, what the
/// restarted one held is news.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_fails_requests_until_it_is_back() {
    let mut cluster = RedisCluster::start().await;
    let connect = || async {
        Dupefilter::Redis(
            RedisDupefilter::connect(&cluster.url(), "down")
                .await
                .unwrap(),
        )
    };
    // One parser adds; another, which knows nothing yet, asks.
    let writer = connect().await;
    let df = connect().await;
    let fps: Vec<(u64, u32)> = (0..300u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 0))
        .collect();
    writer.add(&fps).await.unwrap();

    cluster.kill(1);
    assert_eq!(
        writer.check(&fps).await.unwrap(),
        vec![true; fps.len()],
        "what a parser added itself it knows without asking"
    );
    let started = Instant::now();
    let down = df.check(&fps).await;
    assert!(down.is_err(), "a check answered with a master down");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a check took {:?} to fail",
        started.elapsed()
    );
    let started_while_down = tokio::time::timeout(
        Duration::from_secs(30),
        RedisDupefilter::connect(&cluster.url(), "down"),
    )
    .await
    .expect("connecting hung with a master down")
    .expect("a parser connects while one master is down");
    let started_while_down = Dupefilter::Redis(started_while_down);
    assert!(started_while_down.check(&fps).await.is_err());

    cluster.restart(1).await;
    for (df, which) in [
        (&df, "connected before"),
        (&started_while_down, "connected while down"),
    ] {
        let started = Instant::now();
        let seen = loop {
            match df.check(&fps).await {
                Ok(seen) => break seen,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("{which}: not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{which}: still failing 30 s after the restart: {e}"),
            }
        };
        let n = seen.iter().filter(|&&s| s).count();
        assert!(
            (fps.len() / 2..fps.len() * 5 / 6).contains(&n),
            "{which}: {n} of {} seen; the other two masters' share (about 2/3) should be",
            fps.len()
        );
    }
}

/// Two pages raced on a new link and the deeper request was the one JetStream kept
/// (one message id for a new URL): its page reaches the parser at depth 6 while the
/// dupefilter holds its URL at depth 2. The parser plans the page's links from depth
/// 2, as if the shorter path's request had been kept, so a depth-limited crawl loses
/// nothing to the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_counts_at_the_shallowest_depth_its_url_is_held_at() {
    use crate::common::jetstream::{self, stored_messages, stream_name};
    use crate::common::{Harness, HarnessOptions, Role};
    use async_nats::jetstream::message::PublishMessage;
    use jetcrawl_shared::canon::url_fingerprint;
    use jetcrawl_shared::message::{CrawlRequest, Page};
    use jetcrawl_shared::topology::Names;

    let h = Harness::start(HarnessOptions::default()).await;
    let parser = h.spawn(Role::Parser);
    let js = jetstream::connect(&h.nats.url()).await;
    let ready = Instant::now();
    // The parser's consumer on PAGES (and so the stream) exists.
    while js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "parser",
            stream_name(&h.crawl, "PAGES"),
        )
        .await
        .is_err()
    {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the parser's consumer never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raced = url::Url::parse(&h.site.url("/catalogue/raced_7/index.html")).unwrap();
    let link = h.site.url("/catalogue/found-past-the-race_8/index.html");
    let df = RedisDupefilter::connect(&h.redis.url(), &h.crawl)
        .await
        .expect("redis");
    Dupefilter::Redis(df)
        .add(&[(url_fingerprint(&raced), 2)])
        .await
        .unwrap();
    let body = format!("<html><body><h1>Raced</h1><a href=\"{link}\">on</a></body></html>");
    let page = Page::html(raced, 6, body);
    let names = Names::new(&h.crawl);
    let publish = PublishMessage::build()
        .payload(page.body.clone())
        .headers(page.to_headers());
    js.send_publish(names.pages_subject(), publish)
        .await
        .unwrap()
        .await
        .unwrap();
    let partitions = jetcrawl_shared::CompiledSpider::load(&h.spider)
        .expect("spider")
        .spider
        .streams
        .partitions;
    let started = Instant::now();
    let request = loop {
        let frontier = stream_name(&h.crawl, "FRONTIER");
        let mut found = None;
        for p in 0..partitions {
            for m in stored_messages(&js, &frontier, &names.frontier_subject(p)).await {
                let r: CrawlRequest = serde_json::from_slice(&m.payload).unwrap();
                if r.url == link {
                    found = Some(r);
                }
            }
        }
        if let Some(r) = found {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the parser scheduled no request for the page's link"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        request.depth, 3,
        "the link is planned from the depth the dupefilter holds (2), not the page's (6)"
    );
    parser.assert_running();
}
