//! A crawl on a 3-node NATS cluster: streams with `[streams] replicas = 3`, services
//! given every node in `NATS_URL`. Losing a node — the one that leads the frontier,
//! with services connected to it — loses no item, stores none twice, and stops no
//! service. Each test has its own cluster, database, site and crawl name.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::Context;

use common::jetstream::{self, stream_name};
use common::{Harness, HarnessOptions, Nats, NatsCluster, Role, SiteOptions, SpiderExtras};

/// Cluster, services, streams and consumers up.
const STARTUP: Duration = Duration::from_secs(60);
/// Generous bounds for the steps of a crawl of the test site (normally seconds): a
/// stream's new leader is elected within ~10 s of its old one's death.
const STEP: Duration = Duration::from_secs(60);
/// The streams whose replica counts the spider sets (the bucket is `KV_<bucket>`).
const KINDS: [&str; 4] = ["FRONTIER", "PAGES", "ITEMS", "DEAD"];

/// The harness's spider file with `[streams] replicas = n`.
fn spider_with_replicas<N: Nats>(h: &Harness<N>, delay_ms: u64, n: usize) -> String {
    let toml = common::spider_toml(&h.crawl, &h.site, delay_ms);
    let with = toml.replacen("[streams]\n", &format!("[streams]\nreplicas = {n}\n"), 1);
    assert_ne!(
        with, toml,
        "the harness's spider file has no [streams] table"
    );
    with
}

async fn start_cluster(options: HarnessOptions) -> Harness<NatsCluster> {
    Harness::start_on(options, SpiderExtras::default(), NatsCluster::start(3)).await
}

/// The live-instances bucket's stream.
fn bucket_stream(crawl: &str) -> String {
    format!("KV_{}", jetcrawl_shared::presence::bucket_name(crawl))
}

/// (configured replicas, peers besides the leader) of a stream; None while the
/// cluster does not answer (a group being resized elects a leader).
async fn stream_replicas(js: &Context, stream: &str) -> Option<(usize, usize)> {
    let info = js.get_stream(stream).await.ok()?.info().await.ok()?.clone();
    let followers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    Some((info.config.num_replicas, followers))
}

/// Peers besides the leader of a durable consumer; None while it does not answer.
async fn consumer_followers(js: &Context, stream: &str, consumer: &str) -> Option<usize> {
    let stream = js.get_stream(stream).await.ok()?;
    let info = stream.consumer_info(consumer).await.ok()?;
    Some(info.cluster.as_ref().map_or(0, |c| c.replicas.len()))
}

/// Asserts every stream, the bucket and the durable consumers keep `n` replicas
/// (followers are counted once the cluster has placed them all).
async fn assert_replicas(h: &Harness<NatsCluster>, n: usize) {
    let js = h.nats.jetstream();
    let mut streams: Vec<String> = KINDS.iter().map(|k| stream_name(&h.crawl, k)).collect();
    streams.push(bucket_stream(&h.crawl));
    for stream in &streams {
        let stream = stream.as_str();
        h.wait_until(STEP, &format!("{stream} has {n} replicas"), || async move {
            stream_replicas(js, stream).await == Some((n, n - 1))
        })
        .await;
    }
    let consumers = jetstream::CONSUMERS
        .iter()
        .map(|(kind, name)| (stream_name(&h.crawl, kind), name.to_string()))
        .chain([(stream_name(&h.crawl, "FRONTIER"), "fetcher-0".to_string())]);
    for (stream, consumer) in consumers {
        let (stream, consumer) = (stream.as_str(), consumer.as_str());
        // Consumers set no count of their own: they follow their stream's.
        h.wait_until(
            STEP,
            &format!("consumer {stream}/{consumer} has {n} replicas"),
            || async move { consumer_followers(js, stream, consumer).await == Some(n - 1) },
        )
        .await;
    }
}

/// `jetcrawl init` on a cluster makes every stream, the bucket and the consumers R3,
/// and a crawl created at R1 is scaled to R3 in place by the next `init`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_3_spider_keeps_3_replicas_of_everything() {
    let h = start_cluster(HarnessOptions::default()).await;
    h.write_spider(&spider_with_replicas(&h, 0, 1));
    h.run_command("init", &[]).await;
    let frontier = stream_name(&h.crawl, "FRONTIER");
    assert_eq!(
        stream_replicas(h.nats.jetstream(), &frontier).await,
        Some((1, 0))
    );

    h.write_spider(&spider_with_replicas(&h, 0, 3));
    h.run_command("init", &[]).await;
    assert_replicas(&h, 3).await;
}

/// More replicas than the server can keep is refused at start with a message that
/// says what to do, not a raw JetStream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_3_on_a_single_server_is_a_clear_error() {
    let h = Harness::start(HarnessOptions::default()).await;
    h.write_spider(&spider_with_replicas(&h, 0, 3));
    let out = h.run_command_output("init", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init succeeded: {stderr}");
    assert!(
        stderr.contains("replicas = 3") && stderr.contains("cluster"),
        "the error should name the setting and what it needs: {stderr}"
    );
}

/// The node with the most crawler connections (`jetcrawl-<role>` clients).
async fn busiest_node(h: &Harness<NatsCluster>) -> usize {
    let mut best = (0, 0);
    for i in 0..h.nats.len() {
        let services = h
            .nats
            .client_names(i)
            .await
            .iter()
            .filter(|n| {
                ["jetcrawl-fetcher", "jetcrawl-parser", "jetcrawl-sink"].contains(&n.as_str())
            })
            .count();
        if services > best.1 {
            best = (i, services);
        }
    }
    assert!(best.1 > 0, "no crawler is connected to any node");
    best.0
}

/// Moves `stream`'s leadership to node `to` (step-downs naming it as preferred).
async fn move_leader(h: &Harness<NatsCluster>, stream: &str, to: usize) {
    let name = h.nats.node_name(to);
    h.wait_until(STEP, &format!("{name} leads {stream}"), || async move {
        match h.nats.stream_leader(stream).await {
            Some(leader) if leader == name => true,
            Some(_) => {
                // A refused step-down (an election under way) is simply asked again.
                let _ = h.nats.stream_step_down(stream, name).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
            None => false,
        }
    })
    .await;
}

/// The `jetcrawl-<role>` clients connected to the running nodes.
async fn connected_services(h: &Harness<NatsCluster>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for i in (0..h.nats.len()).filter(|&i| h.nats.is_running(i)) {
        names.extend(h.nats.client_names(i).await);
    }
    names
}

/// Mid-crawl, SIGKILL the node that leads FRONTIER and serves crawler connections;
/// restart it once the crawl has moved on without it. Every item is stored exactly
/// once, every service keeps running, and each exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_rides_out_the_loss_of_the_frontier_leader() {
    let options = HarnessOptions {
        site: SiteOptions {
            latency: Duration::from_millis(10),
        },
        // ~30 requests/s: a crawl of several seconds, long enough to interrupt.
        delay_ms: 30,
    };
    let mut h = start_cluster(options.clone()).await;
    h.write_spider(&spider_with_replicas(&h, options.delay_ms, 3));
    let expected = h.site.expected_items();
    let total = expected.len() as i64;
    let mut services = [
        h.spawn(Role::Fetcher),
        h.spawn(Role::Parser),
        h.spawn(Role::Sink),
    ];
    h.wait_topology(STARTUP).await;
    let frontier = stream_name(&h.crawl, "FRONTIER");
    h.wait_until(STARTUP, "every service is connected", || async {
        connected_services(&h).await.len() >= 3
    })
    .await;
    // The victim serves crawlers and leads the frontier: its death is both a lost
    // connection and a leader election.
    let victim = busiest_node(&h).await;
    move_leader(&h, &frontier, victim).await;
    let victim_name = h.nats.node_name(victim).to_string();

    h.seed(&[&h.site.start_url()]).await;
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(STEP, "a fifth of the items are stored", || async move {
        db.count(crawl).await * 5 >= total
    })
    .await;
    h.nats.kill(victim);
    let at_kill = h.db.count(&h.crawl).await;
    assert!(
        at_kill < total,
        "the crawl finished before the node was killed ({at_kill}/{total}): slow it down"
    );

    // Without the node: a new frontier leader, every service reconnected elsewhere,
    // and items still being stored.
    let (h_ref, frontier_ref, victim_ref) = (&h, frontier.as_str(), &victim_name);
    h.wait_until(STEP, "another node leads the frontier", || async move {
        h_ref.check_health();
        h_ref
            .nats
            .stream_leader(frontier_ref)
            .await
            .is_some_and(|l| l != *victim_ref)
    })
    .await;
    h.wait_until(
        STEP,
        "every service is connected to a live node",
        || async {
            let names = connected_services(&h).await;
            ["jetcrawl-fetcher", "jetcrawl-parser", "jetcrawl-sink"]
                .iter()
                .all(|s| names.contains(*s))
        },
    )
    .await;
    h.wait_until(STEP, "items are stored without the node", || async move {
        h_ref.check_health();
        db.count(crawl).await > at_kill
    })
    .await;

    h.nats.restart(victim).await;
    jetstream::wait_crawl_idle_checked(&h.nats.url(), &h.crawl, STEP, &|| h.check_health()).await;
    h.assert_items(&expected).await;
    h.check_health();
    for s in &services {
        s.assert_running();
    }
    let [a, b, c] = &mut services;
    h.stop_all(&mut [a, b, c]).await;
}
