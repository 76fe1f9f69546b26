//! Crash tests: each stage is made to abort at each of its fail points
//! (`JETCRAWL_FAIL_AT`, see `shared/src/failpoint.rs`) in the middle of a crawl, and
//! is restarted. The crawl must end with the exact item set, every item once in ITEMS,
//! every page once (per depth it was scheduled at) in PAGES, and — where the crash
//! came after the fetch had been published — no page fetched twice.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::jetstream::{self, stream_name};
use common::{Harness, HarnessOptions, Role, SiteOptions};

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(180);

/// Crash `role` at the `nth` time it reaches `point`, restart it, and check the crawl.
async fn crash_and_restart(role: Role, point: &str, nth: u32) {
    // Slow enough that the crash lands mid-crawl.
    let h = Harness::start(HarnessOptions {
        site: SiteOptions {
            latency: Duration::from_millis(5),
        },
        delay_ms: 10,
    })
    .await;
    let expected = h.site.expected_items();
    let armed_env = [("JETCRAWL_FAIL_AT".to_string(), format!("{point}:{nth}"))];
    let mut others = Vec::new();
    let mut armed = None;
    for r in [Role::Fetcher, Role::Parser, Role::Sink] {
        if r == role {
            armed = Some(h.spawn_with(r, &[], &armed_env));
        } else {
            others.push(h.spawn(r));
        }
    }
    let mut armed = armed.expect("the role under test is a stage");
    h.wait_topology(STARTUP).await;
    h.seed(&[&h.site.start_url()]).await;

    armed.wait_crash(CRAWL).await;
    let log = std::fs::read_to_string(&armed.state().log).unwrap_or_default();
    assert!(
        log.contains(&format!("fail point {point} reached")),
        "{} crashed, but not at {point}:\n{}",
        armed.name(),
        common::servers::tail(&armed.state().log, 30)
    );
    let stored_at_crash = h.db.count(&h.crawl).await;
    assert!(
        (stored_at_crash as usize) < expected.len(),
        "the crawl was over before the crash at {point} ({stored_at_crash} stored)"
    );
    let mut replacement = h.spawn(role);
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;

    let js = jetstream::connect(&h.nats.url()).await;
    // Every item once in ITEMS: a repeat publish after the crash had the same id.
    let items = jetstream::stored_messages(
        &js,
        &stream_name(&h.crawl, "ITEMS"),
        &format!("jetcrawl.{}.items", h.crawl),
    )
    .await;
    let mut per_item: BTreeMap<String, u32> = BTreeMap::new();
    for m in &items {
        let item: serde_json::Value =
            serde_json::from_slice(&m.payload).expect("an item message is JSON");
        let id = item["item_id"].as_str().unwrap_or_default().to_string();
        *per_item.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = per_item.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "after a crash at {point}, items published more than once: {twice:?}"
    );
    assert_eq!(
        per_item.len(),
        expected.len(),
        "ITEMS should hold each expected item"
    );

    // Every page once per depth it was scheduled at, in PAGES and, unless the crash
    // lost a fetch, at the site.
    let depths = jetstream::scheduled_depths(&js, &h.crawl).await;
    let pages = jetstream::page_records(&js, &h.crawl).await;
    let mut per_page: BTreeMap<String, u32> = BTreeMap::new();
    for p in &pages {
        let url = p.header("Jetcrawl-Url").unwrap_or_default().to_string();
        *per_page.entry(url).or_default() += 1;
    }
    let mut problems = Vec::new();
    for (url, &n) in &per_page {
        let scheduled = depths.get(url).map_or(1, |&d| d.max(1)) as u32;
        if n > scheduled {
            problems.push(format!(
                "{url}: {n} page records, scheduled at {scheduled} depth(s)"
            ));
        }
    }
    let fetch_lost = point.starts_with("fetcher.");
    if !fetch_lost {
        let flaky = h.site.flaky_key();
        for key in h.site.page_keys() {
            let got = h.site.requests_of(&key);
            let scheduled = depths.get(&h.site.url(&key)).map_or(1, |&d| d.max(1)) as u32;
            // The page that fails once with a 500 is fetched once more.
            let want = scheduled + u32::from(key == flaky);
            if got > want {
                problems.push(format!("{key}: fetched {got} times, expected {want}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "after a crash at {point}:\n  {}",
        problems.join("\n  ")
    );
    let mut all: Vec<&mut common::Service> = others.iter_mut().collect();
    all.push(&mut replacement);
    h.stop_all(&mut all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher_crashes_after_fetch_before_publish() {
    crash_and_restart(Role::Fetcher, "fetcher.after-fetch", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher_crashes_after_publish_before_ack() {
    crash_and_restart(Role::Fetcher, "fetcher.after-publish", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_crashes_after_publish_before_dupefilter_add() {
    crash_and_restart(Role::Parser, "parser.after-publish", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_crashes_after_dupefilter_add_before_ack() {
    crash_and_restart(Role::Parser, "parser.after-add", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_crashes_after_commit_before_acks() {
    crash_and_restart(Role::Sink, "sink.after-commit", 2).await;
}
