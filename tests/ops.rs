//! Day-2 operations against real NATS, Redis and PostgreSQL, with a crawl running:
//! `jetcrawl pause|resume` (nothing lost, nothing processed while paused, a pause that
//! survives a stage restart) and `jetcrawl dead list|show|retry|purge`.

use crate::common;

use std::time::Duration;

use common::{Harness, HarnessOptions, Role, SiteOptions};

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(180);
/// How long a paused stage is watched for work it must not do.
const WATCH_PAUSED: Duration = Duration::from_secs(4);

/// A crawl of a few seconds (one host, 30 ms apart), so a pause lands in the middle.
async fn slow_harness() -> Harness {
    Harness::start(HarnessOptions {
        site: SiteOptions {
            latency: Duration::from_millis(5),
        },
        delay_ms: 30,
    })
    .await
}

/// The consumer `name` in `jetcrawl status --json`.
async fn consumer(h: &Harness, name: &str) -> serde_json::Value {
    let status = h.status_json().await;
    status["consumers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no consumer {name} in {status}"))
        .clone()
}

/// Messages in the crawl's stream `kind` (FRONTIER, PAGES, ITEMS, DEAD).
async fn stream_messages(h: &Harness, kind: &str) -> u64 {
    let status = h.status_json().await;
    status["streams"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with(kind)))
        })
        .and_then(|s| s["messages"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} stream in {status}"))
}

/// A metric's value in a `/metrics` text (summed over label sets), 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// No request in flight and none waiting for its host, in any of `fetchers`.
async fn holds_nothing(fetchers: &[&common::Service]) -> bool {
    for f in fetchers {
        let (_, text) = f.http_get("/metrics").await;
        if metric(&text, "jetcrawl_in_flight_messages") > 0.0
            || metric(&text, "jetcrawl_requests_queued") > 0.0
        {
            return false;
        }
    }
    true
}

fn total_requests(h: &Harness) -> u64 {
    h.site.request_log().values().map(|n| u64::from(*n)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_fetchers_fetch_nothing_anywhere_and_resume_loses_nothing() {
    // A pause stops deliveries; what a fetcher already holds (up to its window per
    // owned partition, 256 by default: this whole site) is still fetched. A small
    // window keeps most of the frontier in the stream, where the pause holds it.
    // (The fetchers inherit it; nextest runs each test in a process of its own.)
    std::env::set_var("JETCRAWL_WINDOW", "32");
    let h = slow_harness().await;
    let expected = h.site.expected_items();
    let total = expected.len() as i64;
    let mut fetcher1 = h.spawn(Role::Fetcher);
    let mut fetcher2 = h.spawn(Role::Fetcher);
    let mut parser = h.spawn(Role::Parser);
    let mut sink = h.spawn(Role::Sink);
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(CRAWL, "a tenth of the items are stored", || async move {
        db.count(crawl).await * 10 >= total
    })
    .await;

    let out = h.run_command("pause", &["--stage", "fetcher"]).await;
    assert!(out.contains("paused fetcher"), "{out}");
    // What the two fetchers held when the pause came is fetched (or handed back with a
    // nak, which the pause keeps from being redelivered)...
    let fetchers = [&fetcher1, &fetcher2];
    h.wait_until(CRAWL, "the fetchers hold nothing", || async {
        holds_nothing(&fetchers).await
    })
    .await;
    // The queue gauge is refreshed every 5 s: look again once it surely is.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(
        holds_nothing(&fetchers).await,
        "a paused fetcher took more work"
    );
    // ...and from then on neither fetches anything, though the frontier has work.
    let requests = total_requests(&h);
    let stored = db.count(crawl).await;
    tokio::time::sleep(WATCH_PAUSED).await;
    assert_eq!(
        total_requests(&h),
        requests,
        "requests reached the site while the fetchers were paused"
    );
    let c = consumer(&h, "fetcher").await;
    assert_eq!(c["paused"], true, "status does not show the pause: {c}");
    assert!(
        c["pending"].as_u64().unwrap_or(0) > 0,
        "the frontier should still hold requests: {c}"
    );
    assert!(stored < total, "the crawl finished before the pause");
    let text = h.run_command("status", &[]).await;
    assert!(
        text.lines()
            .any(|l| l.contains(" fetcher ") && l.contains("PAUSED")),
        "{text}"
    );
    fetcher1.assert_running();
    fetcher2.assert_running();

    // A fetcher that joins takes partitions over and re-creates their consumers: they
    // stay paused.
    let mut fetcher3 = h.spawn(Role::Fetcher);
    h.wait_until(CRAWL, "three fetchers share the partitions", || async {
        let status = h.status_json().await;
        let fetchers = status["fetchers"].as_array().cloned().unwrap_or_default();
        fetchers.len() == 3
            && fetchers
                .iter()
                .all(|f| f["partitions"].as_array().is_some_and(|p| !p.is_empty()))
    })
    .await;
    tokio::time::sleep(WATCH_PAUSED).await;
    assert_eq!(
        total_requests(&h),
        requests,
        "requests reached the site after a fetcher joined the paused stage"
    );
    assert_eq!(consumer(&h, "fetcher").await["paused"], true);

    let out = h.run_command("resume", &["--stage", "fetcher"]).await;
    assert!(out.contains("resumed fetcher"), "{out}");
    h.wait_until(CRAWL, "every item is stored", || async move {
        db.count(crawl).await >= total
    })
    .await;
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;
    let log = h.site.request_log();
    let twice: Vec<_> = log
        .iter()
        .filter(|(k, n)| **n > 1 && *k != "/robots.txt" && **k != h.site.flaky_key())
        .collect();
    assert!(twice.is_empty(), "fetched more than once: {twice:?}");
    assert_eq!(consumer(&h, "fetcher").await["paused"], false);
    h.stop_all(&mut [
        &mut fetcher1,
        &mut fetcher2,
        &mut fetcher3,
        &mut parser,
        &mut sink,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sink_stays_paused_across_its_restart() {
    let h = slow_harness().await;
    let expected = h.site.expected_items();
    let total = expected.len() as i64;
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;
    let (db, crawl) = (&h.db, h.crawl.as_str());
    h.wait_until(CRAWL, "some items are stored", || async move {
        db.count(crawl).await > 0
    })
    .await;

    h.run_command("pause", &["--stage", "sink"]).await;
    h.wait_until(CRAWL, "the sink finished its batch in flight", || async {
        consumer(&h, "sink").await["ack_pending"] == 0
    })
    .await;
    let stored = db.count(crawl).await;
    assert!(stored < total, "the crawl finished before the pause");

    // A restarted sink re-creates its consumer at start, and one redeployed with a
    // changed setting (here ack_wait) updates it: the pause must hold through both.
    h.stop_all(&mut [&mut sink]).await;
    let spider = std::fs::read_to_string(&h.spider).expect("spider");
    let changed = spider.replacen("ack_wait_secs = 4", "ack_wait_secs = 5", 1);
    assert_ne!(spider, changed, "the harness spider changed shape");
    std::fs::write(&h.spider, changed).expect("write spider");
    let mut sink2 = h.spawn(Role::Sink);
    let sink2_ref = &sink2;
    h.wait_until(STARTUP, "the new sink is ready", || async move {
        sink2_ref.metrics_addr().is_some() && sink2_ref.http_get("/readyz").await.0 == 200
    })
    .await;
    // The rest of the crawl reaches ITEMS meanwhile; none of it reaches the database.
    h.wait_until(CRAWL, "every item is in ITEMS", || async {
        stream_messages(&h, "_ITEMS").await >= total as u64
    })
    .await;
    tokio::time::sleep(WATCH_PAUSED).await;
    assert_eq!(
        db.count(crawl).await,
        stored,
        "items were stored while the sink was paused"
    );
    let c = consumer(&h, "sink").await;
    assert_eq!(c["paused"], true, "the restart resumed the sink: {c}");
    assert_eq!(c["pending"], (total - stored) as u64, "{c}");

    h.run_command("resume", &["--stage", "sink"]).await;
    h.wait_until(CRAWL, "every item is stored", || async move {
        db.count(crawl).await >= total
    })
    .await;
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink2])
        .await;
}

/// `jetcrawl dead <args> --spider S --nats-url U` to its end; asserts it succeeded and
/// returns its stdout.
async fn dead(h: &Harness, args: &[&str]) -> String {
    let bin = std::env::var("JETCRAWL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .arg("dead")
            .args(args)
            .arg("--spider")
            .arg(&h.spider)
            .args(["--nats-url", &h.nats.url()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("jetcrawl dead finished in time")
    .expect("run jetcrawl dead");
    assert!(
        out.status.success(),
        "jetcrawl dead {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dead list --json`, parsed.
async fn dead_list(h: &Harness, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(extra);
    let out = dead(h, &args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("dead list printed no JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_grouped_retried_after_a_fix_and_purged() {
    let h = Harness::start(HarnessOptions::default()).await;
    // The bug: a spider whose allowed_domains misses the site's host.
    let spider = std::fs::read_to_string(&h.spider).expect("spider");
    let allowed = r#"allowed_domains = ["127.0.0.1"]"#;
    assert!(spider.contains(allowed), "the harness spider changed shape");
    let buggy = spider.replacen(allowed, r#"allowed_domains = ["shop.example"]"#, 1);
    std::fs::write(&h.spider, buggy).expect("write spider");
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    let (db, crawl) = (&h.db, h.crawl.as_str());

    // Three seeds the parser rejects as out of scope, and an item no database takes.
    let expected = h.site.expected_items();
    let seeds: Vec<&str> = expected.iter().take(3).map(|e| e.url.as_str()).collect();
    h.seed(&seeds).await;
    let js = common::jetstream::connect(&h.nats.url()).await;
    js.publish(format!("jetcrawl.{crawl}.items"), "not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    h.wait_until(CRAWL, "four dead letters", || async {
        dead_list(&h, &[]).await["total"] == 4
    })
    .await;
    let listing = dead_list(&h, &[]).await;
    let groups = listing["groups"].as_array().expect("groups").clone();
    assert_eq!(groups.len(), 2, "{listing}");
    assert_eq!(groups[0]["stage"], "parser", "{listing}");
    assert_eq!(groups[0]["count"], 3, "{listing}");
    assert!(
        groups[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("allowed_domains"),
        "{listing}"
    );
    assert_eq!(groups[1]["stage"], "sink", "{listing}");
    assert_eq!(groups[1]["count"], 1, "{listing}");
    assert_eq!(dead_list(&h, &["--stage", "sink"]).await["total"], 1);
    let sink_seq = groups[1]["first_seq"].as_u64().expect("seq").to_string();
    let shown = dead(&h, &["show", "--seq", &sink_seq]).await;
    assert!(shown.contains("payload (8 bytes): not json"), "{shown}");
    assert!(
        shown.contains(&format!("#{sink_seq} stage sink")),
        "{shown}"
    );
    assert_eq!(db.count(crawl).await, 0);

    // Retried before the fix, they fail again: three new letters, and the retry ends
    // (it does not chase the letters its own retries produce).
    let out = dead(&h, &["retry", "--stage", "parser"]).await;
    assert!(out.contains("retried 3 dead letter(s)"), "{out}");
    h.wait_until(CRAWL, "the seeds are dead-lettered again", || async {
        dead_list(&h, &["--stage", "parser"]).await["total"] == 3
    })
    .await;
    assert_eq!(dead_list(&h, &[]).await["total"], 4);

    // The fix: restore allowed_domains, restart the stages that read the scope
    // (parsers and fetchers), and re-run what the parsers gave up on.
    std::fs::write(&h.spider, &spider).expect("write spider");
    h.stop_all(&mut [&mut parser, &mut fetcher]).await;
    let mut parser2 = h.spawn(Role::Parser);
    let mut fetcher2 = h.spawn(Role::Fetcher);
    let out = dead(&h, &["retry", "--stage", "parser"]).await;
    assert!(out.contains("retried 3 dead letter(s)"), "{out}");
    // The seeds' pages link to the rest of the site: the crawl now runs in full.
    let total = expected.len() as i64;
    h.wait_until(CRAWL, "every item is stored", || async move {
        db.count(crawl).await >= total
    })
    .await;
    h.wait_idle(CRAWL).await;
    for seed in &seeds {
        let key = seed.trim_start_matches(&h.site.base_url()).to_string();
        assert_eq!(h.site.requests_of(&key), 1, "{key}");
    }
    assert_eq!(
        dead_list(&h, &[]).await["total"],
        1,
        "only the sink's is left"
    );

    // A request retried from DEAD is fetched again, past the dupefilter (which has
    // seen it), and only it: no recrawl.
    let url = &expected[5].url;
    let key = url.trim_start_matches(&h.site.base_url()).to_string();
    assert_eq!(h.site.requests_of(&key), 1, "{key}");
    let names = jetcrawl_shared::topology::Names::new(crawl);
    let request = format!(r#"{{"url":"{url}","depth":1,"tries":3}}"#);
    // The partition its host's requests live on, as the parser would have chosen.
    let partition = jetcrawl_shared::canon::partition("127.0.0.1", 16);
    publish_dead_request(&js, &names, &names.frontier_subject(partition), &request).await;
    let requests = total_requests(&h);
    let out = dead(&h, &["retry", "--stage", "fetcher"]).await;
    assert!(out.contains("retried 1 dead letter(s)"), "{out}");
    let site = &h.site;
    h.wait_until(CRAWL, "the retried request is fetched", || async {
        site.requests_of(&key) == 2
    })
    .await;
    h.wait_idle(CRAWL).await;
    assert_eq!(
        total_requests(&h),
        requests + 1,
        "a retry re-ran more than its request"
    );
    h.assert_items(&expected).await;

    // Purge: by age (nothing is an hour old; everything is older than 0 s), by stage.
    publish_dead_request(&js, &names, &names.frontier_subject(partition), &request).await;
    assert_eq!(dead_list(&h, &[]).await["total"], 2);
    let out = dead(&h, &["purge", "--older-than", "1h"]).await;
    assert!(out.contains("purged 0"), "{out}");
    let out = dead(&h, &["purge", "--stage", "sink"]).await;
    assert!(out.contains("purged 1"), "{out}");
    assert_eq!(dead_list(&h, &["--stage", "fetcher"]).await["total"], 1);
    let out = dead(&h, &["purge", "--older-than", "0s"]).await;
    assert!(out.contains("purged 1"), "{out}");
    assert_eq!(dead_list(&h, &[]).await["total"], 0);
    h.stop_all(&mut [&mut fetcher2, &mut parser2, &mut sink])
        .await;
}

/// A dead letter of the fetcher, as `topology::dead_letter` writes it when the fetcher
/// gives up on a request from `subject`.
async fn publish_dead_request(
    js: &async_nats::jetstream::Context,
    names: &jetcrawl_shared::topology::Names,
    subject: &str,
    request: &str,
) {
    use jetcrawl_shared::message::header;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(header::ERROR, "page too large to publish");
    headers.insert(header::STAGE, "fetcher");
    headers.insert(header::SOURCE_SUBJECT, subject);
    js.publish_with_headers(
        names.dead_subject("fetcher"),
        headers,
        request.to_string().into(),
    )
    .await
    .expect("publish dead letter")
    .await
    .expect("dead letter stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_live_instances_and_flags_work_nobody_pulls() {
    let h = Harness::start(HarnessOptions::default()).await;
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.wait_until(STARTUP, "one live instance of each stage", || async {
        let status = h.status_json().await;
        let stages: Vec<String> = status["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["stage"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        stages == ["fetcher", "parser", "sink"]
    })
    .await;
    let status = h.status_json().await;
    for i in status["instances"].as_array().expect("instances") {
        assert!(!i["host"].as_str().unwrap_or("").is_empty(), "{i}");
        assert_eq!(i["version"], env!("CARGO_PKG_VERSION"), "{i}");
        assert!(
            i["heartbeat_age_ms"].as_i64().unwrap_or(i64::MAX) < 10_000,
            "{i}"
        );
        assert!(i["heartbeat_at"].as_str().is_some(), "{i}");
    }
    for name in ["seeds", "fetcher", "parser", "sink"] {
        let c = consumer(&h, name).await;
        assert_eq!(c["live"], 1, "{c}");
        assert_eq!(c["unattended"], false, "{c}");
    }
    let text = h.run_command("status", &[]).await;
    assert!(!text.contains("WARNING"), "{text}");
    for stage in ["fetcher ", "parser ", "sink "] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(stage) && l.contains(env!("CARGO_PKG_VERSION"))),
            "no live {stage}in:\n{text}"
        );
    }

    // A parser stopped cleanly leaves at once; it had no work, so nothing is flagged.
    h.stop_all(&mut [&mut parser]).await;
    h.wait_until(STARTUP, "the stopped parser is gone", || async {
        consumer(&h, "parser").await["live"] == 0
    })
    .await;
    assert_eq!(consumer(&h, "parser").await["unattended"], false);

    // A sink killed with work waiting: its heartbeat expires, and status says so.
    sink.kill9().await;
    let js = common::jetstream::connect(&h.nats.url()).await;
    for n in 0..5 {
        js.publish(
            format!("jetcrawl.{}.items", h.crawl),
            format!(r#"{{"n":{n}}}"#).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
    h.wait_until(
        STARTUP,
        "status flags the sink's unattended work",
        || async {
            let c = consumer(&h, "sink").await;
            c["live"] == 0 && c["unattended"] == true && c["pending"] == 5
        },
    )
    .await;
    let text = h.run_command("status", &[]).await;
    assert!(
        text.contains("WARNING: sink has work waiting (5 pending, 0 unacked) and no live sink"),
        "{text}"
    );
    h.stop_all(&mut [&mut fetcher]).await;
}
