//! Issue 8, test 7: requests wait in the host's owner instead of being republished,
//! so a single-host crawl of thousands of URLs writes FRONTIER a few times per URL
//! (not thousands of busy-host hand-backs a second, each also an id in the duplicate
//! window).

use std::time::Instant;

use crate::common::hosts::{loopback_ips, HostSpec, HostsSite};
use crate::common::jetstream;
use crate::politeness::support::{
    assert_none, fetch_counts, harness_for, scheduled_depths, seed, start_pipeline, stop, Bind,
    Knobs, CRAWL,
};

/// FRONTIER messages stored per URL, at most. Each URL is published once (the seeds
/// once more); no page of this site fails, so anything beyond is a request handed
/// back and republished. A quarter more leaves room for a retry or redelivery now and
/// then; today's hand-backs come to ~1.7 per URL even at delay 0.
const WRITES_PER_URL: f64 = 1.25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_host_crawl_writes_frontier_a_few_times_per_url() {
    // 1 + 30 listings + 3,000 products.
    let site = HostsSite::start(vec![HostSpec::catalogue(0, loopback_ips(1)[0], 30, 100)]).await;
    let seeds = site.home_links();
    let knobs = Knobs {
        delay_ms: 0,
        concurrency_per_host: 4,
        ..Knobs::default()
    };
    let h = harness_for(&site, &seeds, &knobs).await;
    let (mut fetchers, mut parser, mut sink) = start_pipeline(&h, 1, Bind::Env).await;
    let started = Instant::now();
    seed(&h, &site, &seeds).await;
    h.wait_idle(CRAWL).await;
    let elapsed = started.elapsed();

    let js = jetstream::connect(&h.nats.url()).await;
    let mut frontier = js
        .get_stream(jetstream::stream_name(&h.crawl, "FRONTIER"))
        .await
        .expect("FRONTIER stream");
    let writes = frontier
        .info()
        .await
        .expect("FRONTIER info")
        .state
        .last_sequence;
    let expected = site.expected_pages(&seeds, knobs.max_depth);
    let urls = expected.len();
    let per_url = writes as f64 / urls as f64;
    eprintln!(
        "{urls} URLs crawled in {:.1} s; FRONTIER stored {writes} messages ({per_url:.2} per URL)",
        elapsed.as_secs_f64()
    );
    assert!(
        per_url <= WRITES_PER_URL,
        "a single-host crawl of {urls} URLs wrote {writes} messages to FRONTIER ({per_url:.1} \
         per URL; {} beyond one per URL, {:.0} a second): busy-host hand-backs republish \
         requests instead of holding them in the host's owner",
        writes.saturating_sub(urls as u64),
        writes.saturating_sub(urls as u64) as f64 / elapsed.as_secs_f64()
    );
    h.assert_items(&site.expected_items(&seeds, knobs.max_depth))
        .await;
    assert_none(
        "pages not fetched exactly once",
        &fetch_counts(&site, &expected, &scheduled_depths(&h).await, 0),
        "",
    );
    stop(&h, &mut fetchers, &mut parser, &mut sink).await;
}
