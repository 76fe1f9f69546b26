//! Issue 8, test 1: at 1, 2 and 3 fetchers, no two requests to a host start closer
//! than 0.9 × the delay, never more are in flight to a host than the spider allows, a
//! host's robots.txt Crawl-delay is honoured, the exact item set is stored and every
//! page is fetched once.

use std::time::{Duration, Instant};

use crate::common::hosts::{loopback_ips, HostSpec, HostsSite, Link, PageSpec, Robots};
use crate::politeness::support::{
    assert_none, fetch_counts, harness_for, politeness, scheduled_depths, seed, start_pipeline,
    stop, Bind, Knobs, Promise, CRAWL,
};

/// Four small shops (15 pages each; the second with a robots.txt that disallows
/// `/private/`, which its home links) and a fifth of 5 pages whose robots.txt asks
/// for `Crawl-delay: 1`. Every response takes `latency`.
fn shops(latency: Duration) -> Vec<HostSpec> {
    let ips = loopback_ips(5);
    let mut hosts: Vec<HostSpec> = (0..4)
        .map(|i| HostSpec::catalogue(i, ips[i], 2, 6))
        .collect();
    let private = "/private/p/1-staff-pick.html".to_string();
    hosts[1].robots = Some(Robots {
        disallow: vec!["/private/".into()],
        ..Robots::default()
    });
    hosts[1]
        .pages
        .insert(private.clone(), PageSpec::product(vec![]));
    if let Some(home) = hosts[1].pages.get_mut("/") {
        home.links.push(Link {
            host: 1,
            path: private,
        });
    }
    let mut slow = HostSpec::catalogue(4, ips[4], 1, 3);
    slow.robots = Some(Robots {
        crawl_delay_secs: Some(1),
        ..Robots::default()
    });
    hosts.push(slow);
    for h in &mut hosts {
        h.latency = latency;
    }
    hosts
}

/// Crawls [`shops`] with `fetchers` fetchers at `delay_ms = 100` and
/// `concurrency_per_host = concurrency`, and checks what the site saw.
async fn polite_at(fetchers: usize, concurrency: u32, latency: Duration) {
    let site = HostsSite::start(shops(latency)).await;
    let seeds = site.home_links();
    let knobs = Knobs {
        delay_ms: 100,
        concurrency_per_host: concurrency,
        ..Knobs::default()
    };
    let h = harness_for(&site, &seeds, &knobs).await;
    // The site tells fetchers apart in its messages when they bind their address; a
    // fetcher that does not know the setting ignores it and the checks still hold.
    let (mut fleet, mut parser, mut sink) = start_pipeline(&h, fetchers, Bind::Env).await;
    let started = Instant::now();
    seed(&h, &site, &seeds).await;
    h.wait_idle(CRAWL).await;
    let elapsed = started.elapsed();

    let (summary, problems) = politeness(&site, Promise::of(&knobs));
    eprintln!(
        "{fetchers} fetcher(s), delay 100 ms, concurrency {concurrency}, latency {} ms: \
         crawl finished in {:.1} s\n{summary}",
        latency.as_millis(),
        elapsed.as_secs_f64()
    );
    assert_none(
        &format!("with {fetchers} fetcher(s) the site was hit harder than the spider allows"),
        &problems,
        &format!("what the site saw:\n{summary}"),
    );
    h.assert_items(&site.expected_items(&seeds, knobs.max_depth))
        .await;
    let expected = site.expected_pages(&seeds, knobs.max_depth);
    assert_none(
        "pages not fetched exactly once",
        &fetch_counts(&site, &expected, &scheduled_depths(&h).await, 0),
        "",
    );
    stop(&h, &mut fleet, &mut parser, &mut sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetcher_keeps_delay_and_crawl_delay() {
    polite_at(1, 1, Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetchers_keep_delay_and_crawl_delay() {
    polite_at(2, 1, Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_fetchers_keep_delay_and_crawl_delay() {
    polite_at(3, 1, Duration::from_millis(20)).await;
}

/// Two slots per host, responses slower than the delay (so both slots are busy):
/// never more than two in flight, each slot waiting the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_fetchers_keep_two_slots_per_host() {
    polite_at(3, 2, Duration::from_millis(250)).await;
}
