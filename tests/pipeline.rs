//! End-to-end: fetcher, parser and sink processes against real NATS JetStream, Redis
//! and PostgreSQL, crawling a local site. Each test has its own servers, database,
//! site and crawl name.

use crate::common;

use std::time::{Duration, Instant};

use common::jetstream::{self, stream_messages, stream_name};
use common::{Harness, HarnessOptions, Role, Site, SiteOptions, TcpProxy};

/// Services up and their streams, consumers and table created.
const STARTUP: Duration = Duration::from_secs(60);
/// A whole crawl of the test site (normally a few seconds).
const CRAWL: Duration = Duration::from_secs(120);
/// A crawl with processes killed on the way (ack_wait and lease expiry add up).
const CRAWL_WITH_KILLS: Duration = Duration::from_secs(240);

/// What the request log must show for any correct crawl of the site.
fn assert_polite_requests(site: &Site) {
    let log = site.request_log();
    let private: Vec<_> = log.keys().filter(|k| k.starts_with("/private/")).collect();
    assert!(
        private.is_empty(),
        "robots.txt disallows /private/, yet these were requested: {private:?}"
    );
    assert!(
        log.get("/robots.txt").copied().unwrap_or(0) >= 1,
        "robots.txt was never requested"
    );
    assert!(
        !log.contains_key(&site.seed_only_key()),
        "a page nothing links to was requested"
    );
    let flaky = log.get(&site.flaky_key()).copied().unwrap_or(0);
    assert!(
        flaky >= 2,
        "the page that fails once with 500 was requested {flaky} times (a retry makes 2)"
    );
}

/// For an undisturbed crawl: every page exactly once (the dupefilter sees through
/// every spelling of a link), the flaky page exactly twice.
fn assert_each_page_fetched_once(site: &Site) {
    let log = site.request_log();
    let mut problems = Vec::new();
    for key in site.page_keys() {
        match log.get(&key).copied().unwrap_or(0) {
            1 => {}
            n => problems.push(format!("{key}: {n} requests, expected 1")),
        }
    }
    for (key, n) in &log {
        if *n > 1 && key != "/robots.txt" && *key != site.flaky_key() {
            problems.push(format!("{key}: {n} requests"));
        }
    }
    let flaky = log.get(&site.flaky_key()).copied().unwrap_or(0);
    if flaky != 2 {
        problems.push(format!(
            "{}: {flaky} requests, expected 2 (one 500, one retry)",
            site.flaky_key()
        ));
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "pages fetched a wrong number of times:\n  {}",
        problems.join("\n  ")
    );
}

/// `jetcrawl status --json` after a finished crawl: empty frontier, every item in
/// ITEMS, every consumer caught up.
fn assert_status_shows_finished_crawl(status: &serde_json::Value, items: u64) {
    let stream = |suffix: &str| {
        status["streams"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
            })
            .unwrap_or_else(|| panic!("no {suffix} stream in {status}"))
            .clone()
    };
    assert_eq!(stream("_FRONTIER")["messages"], 0, "{status}");
    assert_eq!(stream("_ITEMS")["messages"], items, "{status}");
    let consumers = status["consumers"].as_array().expect("consumers");
    assert_eq!(consumers.len(), 4, "{status}");
    for c in consumers {
        assert_eq!(c["exists"], true, "{status}");
        assert_eq!(c["pending"], 0, "{status}");
        assert_eq!(c["ack_pending"], 0, "{status}");
    }
    let sink = consumers
        .iter()
        .find(|c| c["name"] == "sink")
        .expect("sink consumer");
    assert_eq!(sink["acked"], items, "{status}");
}

/// A metric's value in Prometheus text (summed over label sets), 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What an operator's Prometheus and probes see after a finished crawl.
async fn assert_service_endpoints(
    fetchers: &[&common::Service],
    parser: &common::Service,
    sink: &common::Service,
    items: u64,
) {
    let mut fetched = 0.0;
    for s in fetchers.iter().copied().chain([parser, sink]) {
        assert_eq!(s.http_get("/healthz").await.0, 200, "/healthz");
        assert_eq!(
            s.http_get("/readyz").await.0,
            200,
            "/readyz of a consuming service"
        );
    }
    for f in fetchers {
        let (code, text) = f.http_get("/metrics").await;
        assert_eq!(code, 200);
        fetched += metric(&text, "jetcrawl_pages_fetched_total");
    }
    assert!(
        fetched >= items as f64,
        "fetchers report {fetched} pages fetched"
    );
    let (_, parser_metrics) = parser.http_get("/metrics").await;
    assert_eq!(
        metric(&parser_metrics, "jetcrawl_items_extracted_total"),
        items as f64
    );
    assert!(metric(&parser_metrics, "jetcrawl_links_new_total") > 0.0);
    let (_, sink_metrics) = sink.http_get("/metrics").await;
    assert_eq!(
        metric(&sink_metrics, "jetcrawl_items_stored_total"),
        items as f64
    );
    // Lag gauges are read from the server every few seconds; after the crawl: 0.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = sink.http_get("/metrics").await;
        if text.contains("jetcrawl_consumer_pending_messages{") {
            assert_eq!(
                metric(&text, "jetcrawl_consumer_pending_messages"),
                0.0,
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no consumer lag gauge in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_crawl_two_fetchers() {
    full_crawl(&Harness::start(HarnessOptions::default()).await).await;
}

/// The same crawl with the dupefilter on a 3-master Redis Cluster: the same items, each
/// page fetched once, and the crawl's dupefilter buckets on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_crawl_on_a_redis_cluster() {
    let h = Harness::start_on_redis_cluster(HarnessOptions::default()).await;
    full_crawl(&h).await;
    let cluster = h.redis_cluster.as_ref().expect("a cluster");
    let keys = cluster
        .count_keys(&format!("jetcrawl:{}:df:*", h.crawl))
        .await;
    assert!(
        keys.iter().all(|&n| n > 0),
        "dupefilter keys per master: {keys:?}"
    );
}

/// Two fetchers, a parser and a sink crawl the whole site: every item, each page once,
/// `status`, metrics and probes as an operator sees them after the crawl.
async fn full_crawl(h: &Harness) {
    let mut fetcher1 = h.spawn(Role::Fetcher);
    let mut fetcher2 = h.spawn(Role::Fetcher);
    let mut parser = h.spawn(Role::Parser);
    let mut sink = h.spawn(Role::Sink);
    h.wait_topology(STARTUP).await;

    let started = Instant::now();
    h.seed(&[&h.site.start_url()]).await;
    let total = h.site.expected_items().len() as i64;
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(CRAWL, "every item is stored", || async move {
        db.count(crawl).await >= total
    })
    .await;
    // A figure for the curious (`--no-capture`), not a target: see docs/BENCHMARKS.md.
    let elapsed = started.elapsed();
    let pages: u64 = h.site.request_log().values().map(|n| *n as u64).sum();
    eprintln!(
        "crawl: {pages} requests, {total} items in {:.2} s = {:.0} requests/s",
        elapsed.as_secs_f64(),
        pages as f64 / elapsed.as_secs_f64()
    );
    h.wait_idle(CRAWL).await;

    h.assert_items(&h.site.expected_items()).await;
    assert_polite_requests(&h.site);
    assert_each_page_fetched_once(&h.site);
    assert_status_shows_finished_crawl(&h.status_json().await, total as u64);
    assert_service_endpoints(&[&fetcher1, &fetcher2], &parser, &sink, total as u64).await;
    h.stop_all(&mut [&mut fetcher1, &mut fetcher2, &mut parser, &mut sink])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_survives_sigkill() {
    // Slow enough that the kills land mid-crawl: ~50 requests/s at most.
    let h = Harness::start(HarnessOptions {
        site: SiteOptions {
            latency: Duration::from_millis(10),
        },
        delay_ms: 20,
    })
    .await;
    let expected = h.site.expected_items();
    let total = expected.len() as i64;
    let (db, crawl) = (&h.db, h.crawl.as_str());

    let mut fetcher1 = h.spawn(Role::Fetcher);
    let mut fetcher2 = h.spawn(Role::Fetcher);
    let mut parser = h.spawn(Role::Parser);
    let mut sink = h.spawn(Role::Sink);
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;

    h.wait_until(CRAWL, "20% of the items are stored", || async move {
        db.count(crawl).await * 5 >= total
    })
    .await;
    parser.kill9().await;
    sink.kill9().await;
    fetcher1.kill9().await;
    let at_kill = db.count(crawl).await;
    assert!(
        at_kill < total,
        "the crawl finished before the kills ({at_kill}/{total} stored): slow the site down"
    );
    // Down for a while, as after a crash, then replaced.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut parser2 = h.spawn(Role::Parser);
    let mut sink2 = h.spawn(Role::Sink);
    let mut fetcher3 = h.spawn(Role::Fetcher);

    h.wait_until(
        CRAWL_WITH_KILLS,
        "60% of the items are stored",
        || async move { db.count(crawl).await * 5 >= total * 3 },
    )
    .await;
    parser2.kill9().await;
    let mut parser3 = h.spawn(Role::Parser);

    h.wait_idle(CRAWL_WITH_KILLS).await;
    h.assert_items(&expected).await;
    assert_polite_requests(&h.site);
    h.stop_all(&mut [&mut fetcher2, &mut fetcher3, &mut parser3, &mut sink2])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_waits_out_database_outage() {
    let h = Harness::start(HarnessOptions::default()).await;
    let expected = h.site.expected_items();
    let total = expected.len() as u64;
    let (db, crawl) = (&h.db, h.crawl.as_str());
    let proxy = TcpProxy::start(&db.server_addr()).await;
    let sink_db_url = db.url_via(&proxy.addr().to_string());

    let mut fetcher = h.spawn(Role::Fetcher);
    let mut parser = h.spawn(Role::Parser);
    let mut sink = h.spawn_with_database_url(Role::Sink, &sink_db_url);
    h.wait_topology(STARTUP).await;

    proxy.cut();
    h.seed(&[&h.site.start_url()]).await;

    // Fetching and parsing go on without the database: ITEMS is the buffer.
    let js = jetstream::connect(&h.nats.url()).await;
    let (js, items) = (&js, stream_name(crawl, "ITEMS"));
    let items = items.as_str();
    h.wait_until(CRAWL, "ITEMS holds every item", || async move {
        assert_eq!(
            db.count(crawl).await,
            0,
            "rows stored while the database was cut off"
        );
        stream_messages(js, items).await.unwrap_or(0) >= total
    })
    .await;
    // The sink keeps waiting: nothing stored, nothing crashed.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        h.check_services();
        assert_eq!(
            db.count(crawl).await,
            0,
            "rows stored while the database was cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    proxy.restore();
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;
    sink.assert_running();
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_from_plain_nats_publish() {
    let h = Harness::start(HarnessOptions::default()).await;
    let crawl = h.crawl.as_str();
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;

    // Exactly what `nats pub jetcrawl.<crawl>.seeds ...` sends: a core NATS message,
    // no JetStream headers, no ack.
    let client = async_nats::connect(h.nats.url()).await.expect("connect");
    let subject = format!("jetcrawl.{crawl}.seeds");
    client
        .publish(subject.clone(), format!("{}\n", h.site.start_url()).into())
        .await
        .expect("publish");
    client
        .publish(
            subject,
            format!("not a url\n{}\n", h.site.seed_only_url()).into(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let js = jetstream::connect(&h.nats.url()).await;
    let (js_ref, frontier) = (&js, stream_name(crawl, "FRONTIER"));
    let frontier = frontier.as_str();
    h.wait_until(
        STARTUP,
        "FRONTIER has stored both seed messages",
        || async move {
            match js_ref.get_stream(frontier).await {
                Ok(s) => s.cached_info().state.last_sequence >= 2,
                Err(_) => false,
            }
        },
    )
    .await;

    h.wait_idle(CRAWL).await;
    let mut expected = h.site.expected_items();
    expected.push(h.site.seed_only_item());
    h.assert_items(&expected).await;
    assert_polite_requests_with_seed_only(&h.site);

    let dead = jetstream::dead_letters(&js, crawl).await;
    let accepted = [
        format!("jetcrawl.{crawl}.dead.parser"),
        format!("jetcrawl.{crawl}.dead.seeds"),
    ];
    let found = dead.iter().find(|d| {
        accepted.contains(&d.subject)
            && (d.payload.contains("not a url")
                || d.headers.iter().any(|(_, v)| v.contains("not a url")))
    });
    let Some(letter) = found else {
        panic!("no dead letter for the line `not a url` on {accepted:?}; DEAD holds: {dead:#?}");
    };
    let reason = letter.header("Jetcrawl-Error").unwrap_or_default();
    assert!(
        !reason.trim().is_empty(),
        "the dead letter has no Jetcrawl-Error reason: {letter:#?}"
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

/// [`assert_polite_requests`] for a crawl that also seeded the seed-only page.
fn assert_polite_requests_with_seed_only(site: &Site) {
    let log = site.request_log();
    assert_eq!(
        log.get(&site.seed_only_key()).copied(),
        Some(1),
        "the seeded page next to the garbage line was not fetched exactly once"
    );
    let private: Vec<_> = log.keys().filter(|k| k.starts_with("/private/")).collect();
    assert!(
        private.is_empty(),
        "disallowed pages requested: {private:?}"
    );
    assert!(
        log.get("/robots.txt").copied().unwrap_or(0) >= 1,
        "robots.txt was never requested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reparses_stored_pages_with_new_rules() {
    let h = Harness::start(HarnessOptions::default()).await;
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    h.wait_idle(CRAWL).await;
    let expected = h.site.expected_items();
    h.assert_items(&expected).await;
    let requests_before: u32 = h.site.request_log().values().sum();

    // The operator adds a field to the rules and replays what was already fetched.
    let toml = std::fs::read_to_string(&h.spider).expect("read spider");
    let changed = toml.replacen("title = \"h1\"", "title = \"h1\"\nheading = \"h1\"", 1);
    assert_ne!(toml, changed, "the spider file has a title field to copy");
    std::fs::write(&h.spider, changed).expect("write spider");
    let js = jetstream::connect(&h.nats.url()).await;
    let pages = stream_messages(&js, &stream_name(&h.crawl, "PAGES"))
        .await
        .expect("PAGES stream");
    let out = h.run_command("replay", &[]).await;
    assert_eq!(
        out.trim(),
        format!("replayed {pages} page(s)"),
        "replay output"
    );
    // The README's other ways to choose where a replay starts.
    let from = (pages - 4).to_string();
    let out = h.run_command("replay", &["--from-seq", &from]).await;
    assert_eq!(out.trim(), "replayed 5 page(s)", "replay --from-seq {from}");
    let out = h.run_command("replay", &["--since", "1h"]).await;
    assert_eq!(
        out.trim(),
        format!("replayed {pages} page(s)"),
        "replay --since 1h"
    );
    let out = h
        .run_command("replay", &["--since", "2000-01-01T00:00:00Z"])
        .await;
    assert_eq!(
        out.trim(),
        format!("replayed {pages} page(s)"),
        "replay --since a time"
    );

    // Every row gets the new field through the running sink; none is added.
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(CRAWL, "every row has the replayed field", || async move {
        let rows = db.items(crawl).await;
        !rows.is_empty() && rows.iter().all(|r| r.data.get("heading").is_some())
    })
    .await;
    let rows = db.items(crawl).await;
    assert_eq!(rows.len(), expected.len(), "replay added or lost rows");
    for row in &rows {
        assert_eq!(row.data["heading"], row.data["title"], "{}", row.url);
    }
    let requests_after: u32 = h.site.request_log().values().sum();
    assert_eq!(
        requests_before, requests_after,
        "replay must not fetch anything"
    );
    let mut pages_stream = js
        .get_stream(stream_name(crawl, "PAGES"))
        .await
        .expect("PAGES stream");
    let consumers = pages_stream
        .info()
        .await
        .expect("PAGES info")
        .state
        .consumer_count;
    assert_eq!(
        consumers, 1,
        "the replay consumer is removed when done (only `parser` stays)"
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

/// `jetcrawl init` alone sets up everything a crawl needs, so that a plain `nats pub`
/// is stored before any service runs; `status --watch` then shows it and keeps
/// refreshing, with rates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_plain_publish_then_status_watch() {
    let h = Harness::start(HarnessOptions::default()).await;
    let out = h.run_command("init", &[]).await;
    assert!(
        out.contains(&format!("crawl {} ready", h.crawl)),
        "init said: {out}"
    );
    assert!(
        h.db.table_exists().await,
        "init --database-url creates the items table"
    );
    let js = jetstream::connect(&h.nats.url()).await;
    for kind in ["FRONTIER", "PAGES", "ITEMS", "DEAD"] {
        assert!(
            js.get_stream(stream_name(&h.crawl, kind)).await.is_ok(),
            "{kind} stream"
        );
    }

    // What `nats pub jetcrawl.<crawl>.seeds URL` does, with no service running yet.
    let client = async_nats::connect(h.nats.url()).await.expect("nats");
    let subject = format!("jetcrawl.{}.seeds", h.crawl);
    client
        .publish(subject, h.site.start_url().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let status = h.status_json().await;
    let seeds = status["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "seeds").cloned())
        .expect("seeds consumer");
    assert_eq!(
        seeds["pending"], 1,
        "the seed waits in the stream: {status}"
    );

    // --watch prints a fresh table every two seconds until stopped.
    let args = [
        "status".to_string(),
        "--spider".to_string(),
        h.spider.display().to_string(),
        "--nats-url".to_string(),
        h.nats.url(),
        "--watch".to_string(),
    ];
    let bin = std::env::var("JETCRAWL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
    let child = tokio::process::Command::new(bin)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("status --watch");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let pid = child.id().expect("pid").to_string();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    let out = child
        .wait_with_output()
        .await
        .expect("status --watch output");
    assert!(
        out.status.success(),
        "status --watch exits 0 on Ctrl-C: {:?}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let tables = text.matches(&format!("crawl {}", h.crawl)).count();
    assert!(tables >= 2, "--watch refreshed {tables} time(s):\n{text}");
    assert!(text.contains("ACKS/S"), "{text}");

    // Services started afterwards pick the seed up.
    let mut services = [
        h.spawn(Role::Fetcher),
        h.spawn(Role::Parser),
        h.spawn(Role::Sink),
    ];
    h.wait_idle(CRAWL).await;
    h.assert_items(&h.site.expected_items()).await;
    let [a, b, c] = &mut services;
    h.stop_all(&mut [a, b, c]).await;
}

/// Two versions of one item with the same fetch time (a replay with new rules publishes
/// exactly that) must be stored in the order they were published, even though the sink
/// writes two batches at once: with one item a batch, each pair lands in two batches
/// written back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_stores_versions_of_an_item_in_publish_order() {
    use jetcrawl_shared::message::{item_id, item_msg_id, Item};
    use jetcrawl_shared::topology::Names;

    const ITEMS: usize = 300;
    let extras = common::SpiderExtras {
        tables: "[sink]\nbatch_size = 1\nbatch_timeout_ms = 1\n".to_string(),
        ..Default::default()
    };
    let h = Harness::start_with(HarnessOptions::default(), extras).await;
    h.run_command("init", &[]).await;
    let js = jetstream::connect(&h.nats.url()).await;
    let subject = Names::new(&h.crawl).items_subject();
    let fetched_at = chrono::Utc::now();
    let mut acks = Vec::new();
    for i in 0..ITEMS {
        let url = format!("http://shop.test/product/{i}");
        for version in [1, 2] {
            let mut data = serde_json::Map::new();
            data.insert("version".into(), version.into());
            let item = Item {
                crawl: h.crawl.clone(),
                item_id: item_id(&url, "product", None),
                item_type: "product".into(),
                url: url.clone(),
                data,
                fetched_at,
            };
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&item).expect("json").into())
                .message_id(item_msg_id(&item));
            acks.push(
                js.send_publish(subject.clone(), publish)
                    .await
                    .expect("publish"),
            );
        }
    }
    for ack in acks {
        ack.await.expect("stored in ITEMS");
    }

    let _sink = h.spawn(Role::Sink);
    let (js, items) = (&js, stream_name(&h.crawl, "ITEMS"));
    let items = items.as_str();
    h.wait_until(CRAWL, "the sink has acked every item message", || async move {
        let Ok(stream) = js.get_stream(items).await else {
            return false;
        };
        matches!(
            stream.consumer_info("sink").await,
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence >= 2 * ITEMS as u64
        )
    })
    .await;
    let stored = h.db.items(&h.crawl).await;
    assert_eq!(stored.len(), ITEMS);
    let stale: Vec<&str> = stored
        .iter()
        .filter(|s| s.data["version"] != 2)
        .map(|s| s.url.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "{} of {ITEMS} items kept the older version: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}
