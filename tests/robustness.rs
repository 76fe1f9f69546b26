//! End-to-end robustness: poison messages, servers restarted mid-crawl and hostile
//! pages must never crash a service, lose an item, or store one twice. Each test has
//! its own servers, database, site and crawl name, like `tests/pipeline.rs`.

use crate::common;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::json;

use common::jetstream::{self, DeadLetter, StoredMessage};
use common::{hostile, Harness, HarnessOptions, Role, Service, SiteOptions, SpiderExtras};

/// Services up and their streams, consumers and table created.
const STARTUP: Duration = Duration::from_secs(60);
/// A whole crawl of the test site (normally a few seconds).
const CRAWL: Duration = Duration::from_secs(120);
/// How long a killed server stays down.
const OUTAGE: Duration = Duration::from_secs(2);
/// How long the rest of the crawl may take once a killed server is back. Undisturbed,
/// the whole crawl takes ~5 s; redelivery after ack_wait (4 s) and the clients'
/// reconnect backoff add a few seconds more. A service that sits out the return of its
/// server for a minute before reconnecting fails this.
const RECOVERY: Duration = Duration::from_secs(45);
/// `max_depth` of the harness's spider file.
const MAX_DEPTH: u64 = 10;

/// One fetcher, one parser, one sink.
/// Seed `url`, wait until the crawl is done, and return DEAD's letters.
async fn crawl_seed(h: &Harness, url: &str) -> (async_nats::jetstream::Context, Vec<DeadLetter>) {
    h.seed(&[url]).await;
    wait_idle_healthy(h, CRAWL, "seeding").await;
    let js = jetstream::connect(&h.nats.url()).await;
    let dead = jetstream::dead_letters(&js, &h.crawl).await;
    (js, dead)
}

/// Each dead letter's subject and reason, for a failure message.
fn reasons(dead: &[DeadLetter]) -> Vec<(&str, Option<&str>)> {
    dead.iter()
        .map(|d| (d.subject.as_str(), d.header("Jetcrawl-Error")))
        .collect()
}

/// Asserts every service still runs, then stops them with SIGTERM (each must exit 0).
async fn assert_running_then_stop(h: &Harness, services: &mut [Service; 3]) {
    for s in services.iter() {
        s.assert_running();
    }
    let [a, b, c] = services;
    h.stop_all(&mut [a, b, c]).await;
}

/// Lets `outage` pass with a server down, failing at once if a service exits or
/// panics meanwhile (a service must ride out an outage, not die of it).
async fn ride_out(h: &Harness, outage: Duration) {
    let started = Instant::now();
    while started.elapsed() < outage {
        h.check_health();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.check_health();
}

/// Waits until the crawl is finished (as [`Harness::wait_idle`] does: FRONTIER empty,
/// every consumer caught up, for [`jetstream::IDLE_FOR`]) within `timeout`, failing
/// fast if a service dies or panics meanwhile. `since` names the moment the timeout
/// counts from, for the failure message.
async fn wait_idle_healthy(h: &Harness, timeout: Duration, since: &str) {
    let js = jetstream::connect(&h.nats.url()).await;
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        h.check_health();
        match jetstream::crawl_idle_now(&js, &h.crawl).await {
            Ok(()) => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= jetstream::IDLE_FOR {
                    h.check_health();
                    return;
                }
            }
            Err(busy) => {
                idle_since = None;
                if started.elapsed() > timeout {
                    panic!(
                        "the crawl did not finish within {timeout:?} of {since}; still busy: {busy}"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------------------------
// poison messages

/// A message no stage can use, and the stage that must dead-letter it.
struct Poison {
    stage: &'static str,
    subject: String,
    headers: Option<HeaderMap>,
    payload: String,
    what: &'static str,
}

fn poison_messages(h: &Harness) -> Vec<Poison> {
    let crawl = &h.crawl;
    let frontier = format!("jetcrawl.{crawl}.frontier.0");
    let pages = format!("jetcrawl.{crawl}.pages");
    let items = format!("jetcrawl.{crawl}.items");
    let page_url = h.site.url("/catalogue/page-1.html");
    let headers = |pairs: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, *value);
        }
        Some(map)
    };
    // Well-formed items the database refuses for good: a NUL in a TEXT column, and an
    // id past PostgreSQL's btree entry limit (~2.7 KB; random, so it cannot compress).
    let nul_item = json!({
        "crawl": crawl,
        "item_id": "poison-nul",
        "item_type": "poison",
        "url": h.site.url("/poison\u{0}nul"),
        "data": { "title": "nul in the url" },
        "fetched_at": "2026-01-01T00:00:00Z",
    });
    let long_id: String = (0..16 * 1024)
        .map(|_| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rand::random_range(0..36)]))
        .collect();
    let long_id_item = json!({
        "crawl": crawl,
        "item_id": long_id,
        "item_type": "poison",
        "url": h.site.url("/poison-long-id"),
        "data": { "title": "an id too long to index" },
        "fetched_at": "2026-01-01T00:00:00Z",
    });
    let seeds = format!("jetcrawl.{crawl}.seeds");
    vec![
        Poison {
            stage: "parser",
            subject: seeds,
            headers: None,
            payload: "not a url, just words".into(),
            what: "seed line that is not a URL",
        },
        Poison {
            stage: "fetcher",
            subject: frontier.clone(),
            headers: None,
            payload: "this is not a crawl request {".into(),
            what: "frontier message that is not JSON",
        },
        Poison {
            stage: "fetcher",
            subject: frontier.clone(),
            headers: None,
            payload: r#"{"url": 42, "depth": "deep"}"#.into(),
            what: "frontier JSON that is not a request",
        },
        Poison {
            stage: "fetcher",
            subject: frontier.clone(),
            headers: None,
            payload: r#"{"url":"http://[::1","depth":0}"#.into(),
            what: "request whose URL does not parse (unclosed IPv6 bracket)",
        },
        Poison {
            stage: "fetcher",
            subject: frontier,
            headers: None,
            payload: r#"{"url":"http://%zz/","depth":0}"#.into(),
            what: "request whose URL does not parse (bad percent-encoding in the host)",
        },
        Poison {
            stage: "parser",
            subject: pages.clone(),
            headers: None,
            payload: "a page without any headers".into(),
            what: "page without headers",
        },
        Poison {
            stage: "parser",
            subject: pages.clone(),
            headers: headers(&[("X-Unrelated", "1")]),
            payload: "a page with only unrelated headers".into(),
            what: "page without metadata headers",
        },
        Poison {
            stage: "parser",
            subject: pages.clone(),
            headers: headers(&[
                ("Jetcrawl-Url", "::not a url"),
                ("Jetcrawl-Fingerprint", "0123456789abcdef"),
            ]),
            payload: "<h1>a page whose url header is garbage</h1>".into(),
            what: "page whose Jetcrawl-Url does not parse",
        },
        Poison {
            stage: "parser",
            subject: pages.clone(),
            headers: headers(&[("Jetcrawl-Url", &page_url)]),
            payload: "<h1>a page without a fingerprint</h1>".into(),
            what: "page without Jetcrawl-Fingerprint",
        },
        Poison {
            stage: "parser",
            subject: pages,
            headers: headers(&[
                ("Jetcrawl-Url", &page_url),
                ("Jetcrawl-Fingerprint", "not hex at all!"),
            ]),
            payload: "<h1>a page with a garbage fingerprint</h1>".into(),
            what: "page whose Jetcrawl-Fingerprint is not hex",
        },
        Poison {
            stage: "sink",
            subject: items.clone(),
            headers: None,
            payload: "this is not an item {".into(),
            what: "item that is not JSON",
        },
        Poison {
            stage: "sink",
            subject: items.clone(),
            headers: None,
            payload: r#"{"hello": "world"}"#.into(),
            what: "JSON object that is not an item",
        },
        Poison {
            stage: "sink",
            subject: items.clone(),
            headers: None,
            payload: "[1, 2, 3]".into(),
            what: "JSON array",
        },
        Poison {
            stage: "sink",
            subject: items.clone(),
            headers: None,
            payload: nul_item.to_string(),
            what: "item the database can never store (NUL in its url)",
        },
        Poison {
            stage: "sink",
            subject: items,
            headers: None,
            payload: long_id_item.to_string(),
            what: "item the database can never store (16 KB item id)",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_crawl_continues() {
    let h = Harness::start(HarnessOptions::default()).await;
    let crawl = h.crawl.as_str();
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;

    let js = jetstream::connect(&h.nats.url()).await;
    let poisons = poison_messages(&h);
    for p in &poisons {
        let ack = match &p.headers {
            Some(headers) => {
                js.publish_with_headers(
                    p.subject.clone(),
                    headers.clone(),
                    p.payload.clone().into(),
                )
                .await
            }
            None => {
                js.publish(p.subject.clone(), p.payload.clone().into())
                    .await
            }
        };
        ack.expect("publish poison")
            .await
            .unwrap_or_else(|e| panic!("poison ({}) not stored: {e}", p.what));
    }
    h.seed(&[&h.site.start_url()]).await;
    wait_idle_healthy(&h, CRAWL, "seeding").await;

    h.assert_items(&h.site.expected_items()).await;

    let dead = jetstream::dead_letters(&js, crawl).await;
    let mut problems = Vec::new();
    for p in &poisons {
        let subject = format!("jetcrawl.{crawl}.dead.{}", p.stage);
        let letters: Vec<&DeadLetter> = dead.iter().filter(|d| d.payload == p.payload).collect();
        match letters.as_slice() {
            [] => problems.push(format!("{}: no dead letter", p.what)),
            [letter] if letter.subject != subject => problems.push(format!(
                "{}: dead-lettered on {}, expected {subject}",
                p.what, letter.subject
            )),
            [letter] => {
                let reason = letter.header("Jetcrawl-Error").unwrap_or_default();
                if reason.trim().is_empty() {
                    problems.push(format!("{}: dead letter without a Jetcrawl-Error", p.what));
                }
                // A redelivered poison message must not be dead-lettered twice.
                if letter.header("Nats-Msg-Id").is_none_or(str::is_empty) {
                    problems.push(format!("{}: dead letter without a message id", p.what));
                }
            }
            many => problems.push(format!("{}: dead-lettered {} times", p.what, many.len())),
        }
    }
    for d in &dead {
        if !poisons.iter().any(|p| p.payload == d.payload) {
            problems.push(format!(
                "unexpected dead letter on {} ({:?}): {:.200}",
                d.subject,
                d.header("Jetcrawl-Error"),
                d.payload
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "poison messages were not dead-lettered as expected:\n  {}\nDEAD holds: {dead:#?}",
        problems.join("\n  ")
    );
    assert_running_then_stop(&h, &mut services).await;
}

/// Requests that parse, but carry numbers no fetcher or parser produced: a depth and a
/// try count at their type's maximum, a not-before time at the start of time. Each must
/// be fetched once (all are at or past max_depth, so no link is followed), without a
/// panic (an overflow in a debug build) or a nak that never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_absurd_numbers_are_fetched_once() {
    let h = Harness::start(HarnessOptions::default()).await;
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;

    let js = jetstream::connect(&h.nats.url()).await;
    let subject = format!("jetcrawl.{}.frontier.0", h.crawl);
    let requests = [
        ("/hostile/trap/1000", json!({ "depth": u32::MAX })),
        (
            "/hostile/trap/2000",
            json!({ "depth": MAX_DEPTH, "tries": u32::MAX }),
        ),
        (
            "/hostile/trap/3000",
            json!({ "depth": MAX_DEPTH, "not_before_ms": i64::MIN }),
        ),
    ];
    for (path, fields) in &requests {
        let mut request = fields.clone();
        request["url"] = json!(h.site.url(path));
        js.publish(subject.clone(), request.to_string().into())
            .await
            .expect("publish request")
            .await
            .expect("request stored");
    }
    wait_idle_healthy(&h, CRAWL, "publishing the requests").await;

    let dead = jetstream::dead_letters(&js, &h.crawl).await;
    assert!(
        dead.is_empty(),
        "requests were dead-lettered: {:#?}",
        dead.iter()
            .map(|d| (&d.subject, d.header("Jetcrawl-Error"), &d.payload))
            .collect::<Vec<_>>()
    );
    let mut problems = Vec::new();
    for (path, fields) in &requests {
        let got = h.site.requests_of(path);
        if got != 1 {
            problems.push(format!("{path} ({fields}): {got} requests, expected 1"));
        }
    }
    let followed: Vec<String> = h
        .site
        .request_log()
        .into_keys()
        .filter(|k| k.starts_with(hostile::TRAP_PREFIX))
        .filter(|k| !requests.iter().any(|(path, _)| k == path))
        .collect();
    if !followed.is_empty() {
        problems.push(format!("links past max_depth were followed: {followed:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    h.assert_items(&[]).await;
    assert_running_then_stop(&h, &mut services).await;
}

// ------------------------------------------------------------------------------------
// servers restarted mid-crawl

/// A crawl slow enough to interrupt: ~50 requests/s at most (as in crawl_survives_sigkill).
fn slow_crawl() -> HarnessOptions {
    HarnessOptions {
        site: SiteOptions {
            latency: Duration::from_millis(10),
        },
        delay_ms: 20,
    }
}

/// Waits until a fifth of the `total` items are stored.
async fn wait_for_a_fifth(h: &Harness, total: i64) {
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(CRAWL, "20% of the items are stored", || async move {
        db.count(crawl).await * 5 >= total
    })
    .await;
}

/// A server the crawl depends on, for the restart tests.
#[derive(Clone, Copy, Debug)]
enum Server {
    Nats,
    Redis,
    /// The second of three masters of a Redis Cluster holding the dupefilter.
    RedisClusterMaster,
}

/// The harness's Redis Cluster.
fn cluster(h: &mut Harness) -> &mut common::RedisCluster {
    h.redis_cluster
        .as_mut()
        .expect("a harness on a redis cluster")
}

/// Kill `server` at a fifth of the crawl, keep it down for [`OUTAGE`], restart it on
/// the same port (NATS keeps its store; Redis, with no persistence, comes back with an
/// empty dupefilter, so pages may be fetched again): the services reconnect on their
/// own and every item is still stored exactly once.
async fn restart_mid_crawl(server: Server) {
    let mut h = match server {
        Server::RedisClusterMaster => Harness::start_on_redis_cluster(slow_crawl()).await,
        Server::Nats | Server::Redis => Harness::start(slow_crawl()).await,
    };
    // A cluster master down for longer than cluster-node-timeout (2 s in the harness):
    // the other masters mark it failed and refuse every request (no replica took over
    // its slots), so the whole dupefilter is away, then back.
    let outage = match server {
        Server::RedisClusterMaster => OUTAGE * 3,
        Server::Nats | Server::Redis => OUTAGE,
    };
    let expected = h.site.expected_items();
    let total = expected.len() as i64;
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;

    wait_for_a_fifth(&h, total).await;
    match server {
        Server::Nats => h.nats.kill(),
        Server::Redis => h.redis.kill(),
        Server::RedisClusterMaster => cluster(&mut h).kill(1),
    }
    let at_kill = h.db.count(&h.crawl).await;
    assert!(
        at_kill < total,
        "the crawl finished before {server:?} was killed ({at_kill}/{total} stored): slow the site down"
    );
    ride_out(&h, outage).await;
    match server {
        Server::Nats => h.nats.restart().await,
        Server::Redis => h.redis.restart().await,
        Server::RedisClusterMaster => cluster(&mut h).restart(1).await,
    }

    wait_idle_healthy(&h, RECOVERY, &format!("{server:?} coming back")).await;
    h.assert_items(&expected).await;
    assert_running_then_stop(&h, &mut services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_crawl() {
    restart_mid_crawl(Server::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_crawl() {
    restart_mid_crawl(Server::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_master_restart_mid_crawl() {
    restart_mid_crawl(Server::RedisClusterMaster).await;
}

/// Services may start in any order, before the servers they need: they wait for NATS
/// and Redis instead of exiting, then crawl as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_their_servers_wait_for_them() {
    let mut h = Harness::start(HarnessOptions::default()).await;
    h.nats.kill();
    h.redis.kill();
    let mut services = h.spawn_pipeline();
    // Down for a while: nothing may exit or panic meanwhile.
    ride_out(&h, Duration::from_secs(3)).await;
    h.nats.restart().await;
    ride_out(&h, Duration::from_secs(1)).await;
    h.redis.restart().await;
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    wait_idle_healthy(&h, RECOVERY, "NATS and Redis coming up").await;
    h.assert_items(&h.site.expected_items()).await;
    assert_running_then_stop(&h, &mut services).await;
}

// ------------------------------------------------------------------------------------
// hostile pages

/// The page record of `url` (its `Jetcrawl-Url`); panics naming `what` if there is none
/// or more than one.
fn record_of<'a>(pages: &'a [StoredMessage], url: &str, what: &str) -> &'a StoredMessage {
    let found: Vec<&StoredMessage> = pages
        .iter()
        .filter(|p| p.header("Jetcrawl-Url") == Some(url))
        .collect();
    match found.as_slice() {
        [one] => one,
        [] => panic!("no page record for the {what} ({url}) on the PAGES stream"),
        many => panic!(
            "{} page records for the {what} ({url}): {:#?}",
            many.len(),
            many.iter().map(|m| &m.headers).collect::<Vec<_>>()
        ),
    }
}

/// Asserts the record is a failed fetch of kind `kind`, with a reason.
fn assert_failed(record: &StoredMessage, kind: &str, what: &str) {
    let error = record.header("Jetcrawl-Error").unwrap_or_default();
    assert!(
        !error.trim().is_empty(),
        "the {what} was recorded without a Jetcrawl-Error: {:#?}",
        record.headers
    );
    assert_eq!(
        record.header("Jetcrawl-Error-Kind"),
        Some(kind),
        "the {what} failed for another reason ({error}): {:#?}",
        record.headers
    );
}

/// Asserts the record is a 200 whose body was cut at `cap` bytes and flagged.
fn assert_truncated(record: &StoredMessage, cap: usize, what: &str) {
    assert_eq!(
        record.header("Jetcrawl-Status"),
        Some("200"),
        "{what}: {:#?}",
        record.headers
    );
    assert_eq!(
        record.header("Jetcrawl-Truncated"),
        Some("true"),
        "the {what} was not flagged as truncated: {:#?}",
        record.headers
    );
    assert!(
        record.payload.len() <= cap,
        "the {what} was recorded with {} bytes, over the {cap}-byte cap",
        record.payload.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_do_not_hurt_the_crawl() {
    const BODY_CAP: usize = 1024 * 1024;
    const MAX_TRIES: u32 = 3;
    let h = Harness::start_with(
        HarnessOptions::default(),
        SpiderExtras {
            http: format!(
                "max_body_bytes = {BODY_CAP}\nread_timeout_ms = 1000\nmax_tries = {MAX_TRIES}\n"
            ),
            tables: hostile::ITEM_RULE.to_string(),
        },
    )
    .await;
    let site = &h.site;
    hostile::warm_up().await;
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;

    let mut seeds = vec![site.start_url()];
    seeds.extend(hostile::seed_paths().into_iter().map(|p| site.url(p)));
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    h.seed(&seeds).await;
    wait_idle_healthy(&h, CRAWL, "seeding").await;

    // Items: the normal ones, the hostile pages' ones (non-ASCII titles decoded from
    // their declared charsets, NULs gone), nothing from the slow page.
    let mut expected = site.expected_items();
    expected.extend(hostile::expected_items(&site.base_url()));
    h.assert_items(&expected).await;

    // Failed and cut fetches are in the crawl log.
    let js = jetstream::connect(&h.nats.url()).await;
    let pages = jetstream::page_records(&js, &h.crawl).await;
    let looped = record_of(&pages, &site.url(hostile::LOOP_A), "redirect loop");
    assert_failed(looped, "redirects", "redirect loop");
    let slow = record_of(&pages, &site.url(hostile::SLOW), "stalling page");
    assert_failed(slow, "timeout", "stalling page");
    let huge = record_of(&pages, &site.url(hostile::HUGE), "20 MB page");
    assert_truncated(huge, BODY_CAP, "20 MB page");
    let bomb = record_of(&pages, &site.url(hostile::BOMB), "gzip bomb");
    assert_truncated(bomb, BODY_CAP, "gzip bomb");

    // What reached the site.
    let log = site.request_log();
    let mut trap: Vec<u64> = log
        .keys()
        .filter_map(|k| k.strip_prefix(hostile::TRAP_PREFIX))
        .filter_map(|n| n.parse().ok())
        .collect();
    trap.sort_unstable();
    assert_eq!(
        trap,
        (0..=MAX_DEPTH).collect::<Vec<_>>(),
        "the link trap should be followed to max_depth ({MAX_DEPTH}) and no further"
    );
    // A trap page reached again along a shorter path is scheduled (and fetched) again
    // at that depth: once per depth its page records carry.
    let depths = jetstream::scheduled_depths(&js, &h.crawl).await;
    let mut problems = Vec::new();
    for (key, n) in &log {
        let scheduled = depths.get(&site.url(key)).map_or(1, |&d| d.max(1)) as u32;
        if key.starts_with(hostile::TRAP_PREFIX) && *n != scheduled {
            problems.push(format!(
                "{key}: {n} requests, expected {scheduled} (once per depth it was scheduled at)"
            ));
        }
        if key.starts_with(hostile::LONG_PREFIX) {
            problems.push(format!(
                "the 100 KB link was requested ({} bytes)",
                key.len()
            ));
        }
    }
    let exactly = [
        (hostile::SLOW, MAX_TRIES, "the stalling page, once per try"),
        (hostile::LOOP_A, 1, "a redirect loop is not retried"),
        (hostile::LOOP_B, 1, "a redirect loop is not retried"),
        (hostile::HUGE, 1, "a truncated page is not retried"),
        (hostile::BOMB, 1, "a gzip bomb is not retried"),
        (hostile::PAST_THE_CAP, 0, "linked only past the body cap"),
        (hostile::AFTER_GARBAGE, 1, "the good link among garbage"),
    ];
    for (path, want, why) in exactly {
        let got = site.requests_of(path);
        if got != want {
            problems.push(format!("{path}: {got} requests, expected {want} ({why})"));
        }
    }
    assert!(
        problems.is_empty(),
        "hostile pages were requested a wrong number of times:\n  {}",
        problems.join("\n  ")
    );
    assert_running_then_stop(&h, &mut services).await;
}

/// A windows-1252 page of 3 MB whose every byte is 0x80 (`€`, three bytes in UTF-8):
/// under the raw body cap (4 MB by default), but 9 MB once decoded, over the NATS
/// server's 1 MB max_payload (its default). The spider file promises bodies "also capped by the
/// NATS server's max_payload", truncated and flagged; the page must be recorded and
/// its item stored, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_that_grows_when_decoded_is_recorded_not_lost() {
    let h = Harness::start_with(
        HarnessOptions::default(),
        SpiderExtras {
            http: String::new(),
            tables: hostile::ITEM_RULE.to_string(),
        },
    )
    .await;
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;

    let url = h.site.url(hostile::EURO);
    let (js, dead) = crawl_seed(&h, &url).await;
    assert!(
        dead.is_empty(),
        "the page was dead-lettered instead of recorded: {:#?}",
        reasons(&dead)
    );
    let pages = jetstream::page_records(&js, &h.crawl).await;
    let record = record_of(&pages, &url, "page that grows when decoded");
    assert_eq!(
        record.header("Jetcrawl-Truncated"),
        Some("true"),
        "cut to fit a NATS message, the body must be flagged: {:#?}",
        record.headers
    );
    h.assert_items(&[hostile::item(
        &h.site.base_url(),
        hostile::EURO,
        "Euro prices",
    )])
    .await;
    assert_running_then_stop(&h, &mut services).await;
}

/// A host with more requests queued in a fetcher than its politeness gate holds gets
/// the extra ones handed back to the frontier (as new messages with a not-before time).
/// Handing back must lose nothing, fetch nothing twice, and never look like poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_host_hands_requests_back_without_losing_any() {
    let h = Harness::start(slow_crawl()).await;
    // One fetcher with 64 slots against one host whose gate holds 8 + 32 waiting.
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    wait_idle_healthy(&h, CRAWL, "seeding").await;

    let expected = h.site.expected_items();
    h.assert_items(&expected).await;
    let js = jetstream::connect(&h.nats.url()).await;
    let dead = jetstream::dead_letters(&js, &h.crawl).await;
    assert!(dead.is_empty(), "hand-backs were dead-lettered: {dead:#?}");
    let log = h.site.request_log();
    for key in h.site.page_keys() {
        let n = log.get(&key).copied().unwrap_or(0);
        assert!(
            n == 1 || key == h.site.flaky_key(),
            "{key}: fetched {n} times"
        );
    }
    // Every request reached the frontier once (plus the seed and the flaky page's
    // retry); more stored messages than that are hand-backs: the path was exercised.
    let requests: u32 = log
        .iter()
        .filter(|(k, _)| k.as_str() != "/robots.txt")
        .map(|(_, n)| *n)
        .sum();
    let stored = js
        .get_stream(jetstream::stream_name(&h.crawl, "FRONTIER"))
        .await
        .expect("FRONTIER")
        .cached_info()
        .state
        .last_sequence;
    assert!(
        stored > u64::from(requests) + 1,
        "no request was handed back ({stored} frontier messages for {requests} requests): \
         the test no longer overflows the host's gate"
    );
    assert_running_then_stop(&h, &mut services).await;
}

/// An item larger than the NATS server's `max_payload` (1 MB, the default) can never
/// be published: it goes to DEAD with the reason (its start kept), and the page is
/// acked with everything else it yields. The parser does not hold the page forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_too_large_for_nats_is_dead_lettered_and_the_page_acked() {
    // Twice the page's ~1 MB of text in one item.
    let big_rule = r#"
[[items]]
type = "big"
match = '/hostile/item/euro'
[items.fields]
text = "p"
again = "p"
"#;
    let h = Harness::start_with(
        HarnessOptions::default(),
        SpiderExtras {
            http: String::new(),
            tables: format!("{}{big_rule}", hostile::ITEM_RULE),
        },
    )
    .await;
    let mut services = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    let (_, dead) = crawl_seed(&h, &h.site.url(hostile::EURO)).await;
    // The page's other item is stored; the big one is not.
    h.assert_items(&[hostile::item(
        &h.site.base_url(),
        hostile::EURO,
        "Euro prices",
    )])
    .await;
    assert_eq!(
        dead.len(),
        1,
        "one dead letter, the big item: {:#?}",
        reasons(&dead)
    );
    let letter = &dead[0];
    let error = letter.header("Jetcrawl-Error").unwrap_or_default();
    assert!(
        error.contains("max_payload") && error.contains(".items"),
        "the reason names the limit and where it was going: {error}"
    );
    let original: usize = letter
        .header("Jetcrawl-Original-Bytes")
        .and_then(|n| n.parse().ok())
        .expect("the dead letter says how large the item was");
    assert!(original > 1024 * 1024, "{original} bytes");
    assert!(
        letter.payload.starts_with('{') && letter.payload.contains("\"item_type\":\"big\""),
        "the dead letter keeps the item's start: {:?}",
        &letter.payload[..letter.payload.len().min(200)]
    );
    assert_running_then_stop(&h, &mut services).await;
}

/// A database that needs longer for a batch than the sink's first time limit (10 s
/// here) gets a longer one on the next try, and the crawl completes: a fixed limit
/// would abort the same batch forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_slower_than_the_batch_time_limit_still_gets_the_items() {
    let h = Harness::start(HarnessOptions::default()).await;
    let mut sink = h.spawn(Role::Sink);
    h.wait_until(STARTUP, "the items table exists", || h.db.table_exists())
        .await;
    // Until one insert has committed, each takes 11 s (a try cut short rolls back
    // its mark, so the next try is as slow).
    h.db.execute(
        "CREATE TABLE slow_once (done int);
         CREATE FUNCTION slow_first() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NOT EXISTS (SELECT 1 FROM slow_once) THEN
                 PERFORM pg_sleep(11);
                 INSERT INTO slow_once VALUES (1);
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER slow_first BEFORE INSERT ON jetcrawl_items
             FOR EACH STATEMENT EXECUTE FUNCTION slow_first();",
    )
    .await;
    let mut fetcher = h.spawn(Role::Fetcher);
    let mut parser = h.spawn(Role::Parser);
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    wait_idle_healthy(&h, CRAWL, "seeding").await;
    h.assert_items(&h.site.expected_items()).await;
    let js = jetstream::connect(&h.nats.url()).await;
    assert!(jetstream::dead_letters(&js, &h.crawl).await.is_empty());
    let log = std::fs::read_to_string(&sink.state().log).unwrap_or_default();
    assert!(
        log.contains("no answer within 10s"),
        "the first try was to run out of time:\n{}",
        common::servers::tail(&sink.state().log, 20)
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}
