//! Issue 8, test 6: a robots.txt that answers 503 a few times, then 200. RFC 9309:
//! assume disallow *while* it is unreachable — defer the host's URLs and try again,
//! never drop them. Every page is crawled once robots.txt answers, only what it
//! disallows is recorded as disallowed, and robots.txt retries keep the host's delay.

use crate::common::hosts::{loopback_ips, HostSpec, HostsSite, Link, PageSpec, Robots};
use crate::common::jetstream;
use crate::politeness::support::{
    assert_none, fetch_counts, harness_for, politeness, scheduled_depths, seed, start_pipeline,
    stop, Bind, Knobs, Promise, CRAWL,
};

const PRIVATE: &str = "/private/p/0-staff-pick.html";

/// One shop of 13 pages whose robots.txt answers 503 three times, then disallows
/// `/private/` (a product page its home links).
fn shop() -> HostSpec {
    let mut host = HostSpec::catalogue(0, loopback_ips(1)[0], 2, 5);
    host.robots = Some(Robots {
        disallow: vec!["/private/".into()],
        fail_first: 3,
        ..Robots::default()
    });
    host.pages.insert(PRIVATE.into(), PageSpec::product(vec![]));
    if let Some(home) = host.pages.get_mut("/") {
        home.links.push(Link {
            host: 0,
            path: PRIVATE.into(),
        });
    }
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_unreachable_at_first_defers_the_host_then_crawls_it() {
    let site = HostsSite::start(vec![shop()]).await;
    let seeds = site.home_links();
    let knobs = Knobs::default();
    let h = harness_for(&site, &seeds, &knobs).await;
    let (mut fetchers, mut parser, mut sink) = start_pipeline(&h, 1, Bind::Env).await;
    seed(&h, &site, &seeds).await;
    h.wait_idle(CRAWL).await;

    let robots = site
        .requests_to(0)
        .iter()
        .filter(|r| r.path == "/robots.txt")
        .count();
    let js = jetstream::connect(&h.nats.url()).await;
    let records = jetstream::page_records(&js, &h.crawl).await;
    let private_url = site.url(&Link {
        host: 0,
        path: PRIVATE.into(),
    });
    let mut problems = Vec::new();
    let mut private_recorded = false;
    for r in &records {
        let url = r.header("Jetcrawl-Url").unwrap_or_default();
        let error = r.header("Jetcrawl-Error").unwrap_or_default();
        if !error.to_ascii_lowercase().contains("disallowed") {
            continue;
        }
        if url == private_url {
            private_recorded = true;
        } else {
            problems.push(format!(
                "{url}: recorded as \"{error}\", though robots.txt only disallows /private/ \
                 (it answered 503 the first 3 times)"
            ));
        }
    }
    if !private_recorded {
        problems.push(format!(
            "{private_url}: the one page robots.txt disallows has no page record saying so"
        ));
    }
    eprintln!(
        "robots.txt requested {robots} time(s); {} page record(s)",
        records.len()
    );
    assert_none(
        "a robots.txt that failed for a moment dropped the host's pages for good",
        &problems,
        &format!("robots.txt was requested {robots} time(s)"),
    );
    h.assert_items(&site.expected_items(&seeds, knobs.max_depth))
        .await;
    let expected = site.expected_pages(&seeds, knobs.max_depth);
    assert_none(
        "pages not fetched exactly once",
        &fetch_counts(&site, &expected, &scheduled_depths(&h).await, 0),
        "",
    );
    let (summary, broken) = politeness(&site, Promise::of(&knobs));
    assert_none(
        "robots.txt retries broke the host's delay",
        &broken,
        &summary,
    );
    stop(&h, &mut fetchers, &mut parser, &mut sink).await;
}
