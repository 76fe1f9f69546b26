//! Discovery tests: recrawls (conditional fetches on a schedule) (see `tests/discovery.rs` for the helpers).

use super::*;

/// Every 2 s each page is fetched again with the validators of its last response: the
/// stable pages answer 304 (recorded, nothing parsed, their items left as they are),
/// the changing one a new version (its item updated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recrawl_fetches_conditionally_and_updates_only_what_changed() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(1).await;
    let base = site.base(0);
    let seeds: Vec<String> = ["/stable/a", "/stable/b", "/changing/c"]
        .iter()
        .map(|p| format!("{base}{p}"))
        .collect();
    let toml = spider(
        &h.crawl,
        &site,
        1,
        "max_depth = 1",
        "[recrawl]\ninterval = \"1h\"\nrules = [{ match = '/(stable|changing)/', interval = \"2s\" }]\n\n\
         [[items]]\ntype = \"doc\"\nmatch = '/(stable|changing)/'\n[items.fields]\ntitle = \"h1\"\n",
    );
    h.write_spider(&toml);
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&seeds.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // Two recrawl rounds: three fetches of each page.
    h.wait_until(CRAWL, "every page fetched three times", || async {
        ["/stable/a", "/stable/b", "/changing/c"]
            .iter()
            .all(|p| site.requests_under(0, p).len() >= 3)
    })
    .await;
    h.wait_until(CRAWL, "the changing page's item updated", || async {
        h.db.items(&h.crawl).await.iter().any(|i| {
            i.url.ends_with("/changing/c")
                && i.data["title"]
                    .as_str()
                    .is_some_and(|t| t != "changing c v1" && t != "changing c v0")
        })
    })
    .await;

    // Conditional requests: after the first fetch, each stable request carried the tag.
    let log = site.log();
    for name in ["a", "b"] {
        let target = format!("/stable/{name}");
        let sent: Vec<Option<&[u8]>> = log
            .iter()
            .filter(|hit| hit.target == target)
            .map(|hit| hit.headers.get("if-none-match").map(|v| v.as_bytes()))
            .collect();
        let tag = format!("\"stable-{name}\"");
        assert_eq!(sent[0], None, "{target}: the first fetch is unconditional");
        assert!(
            sent[1..].iter().all(|s| *s == Some(tag.as_bytes())),
            "{target}: every recrawl sends If-None-Match {tag}: {sent:?}"
        );
    }
    // 304s recorded in PAGES.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let records = common::jetstream::page_records(&js, &h.crawl).await;
    for p in ["/stable/a", "/stable/b"] {
        let url = format!("{base}{p}");
        let statuses: Vec<&str> = records
            .iter()
            .filter(|r| r.header("Jetcrawl-Url") == Some(url.as_str()))
            .filter_map(|r| r.header("Jetcrawl-Status"))
            .collect();
        assert_eq!(statuses.first(), Some(&"200"), "{p}: {statuses:?}");
        assert!(
            statuses.len() >= 3 && statuses[1..].iter().all(|s| *s == "304"),
            "{p}: a 200, then 304s: {statuses:?}"
        );
    }
    // Nothing re-parsed for a 304: one item message per stable page; one per version
    // of the changing one.
    let items = common::jetstream::stored_messages(
        &js,
        &common::jetstream::stream_name(&h.crawl, "ITEMS"),
        &format!("jetcrawl.{}.items", h.crawl),
    )
    .await;
    let titles: Vec<String> = items
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| v["data"]["title"].as_str().map(str::to_string))
        .collect();
    for stable in ["stable a", "stable b"] {
        assert_eq!(
            titles.iter().filter(|t| *t == stable).count(),
            1,
            "{stable}: one item, never re-extracted: {titles:?}"
        );
    }
    assert!(
        titles
            .iter()
            .filter(|t| t.starts_with("changing c"))
            .count()
            >= 2,
        "the changing page's item is extracted again: {titles:?}"
    );
    let stored = h.db.items(&h.crawl).await;
    for stable in ["stable a", "stable b"] {
        assert!(
            stored.iter().any(|i| i.data["title"] == stable),
            "{stable} stored as it was: {stored:?}"
        );
    }
    let (_, metrics) = parser.http_get("/metrics").await;
    let not_modified = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jetcrawl_pages_not_modified_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(not_modified >= 4, "304s counted: {not_modified}");
    // What the schedules cost: RECRAWL holds each URL's pending schedule and the due
    // copies of the last minute (the TTL of a 2 s interval's copies).
    let mut recrawl = js
        .get_stream(common::jetstream::stream_name(&h.crawl, "RECRAWL"))
        .await
        .expect("the RECRAWL stream");
    let state = recrawl.info().await.expect("RECRAWL info").state.clone();
    eprintln!(
        "RECRAWL after {} fetches of 3 URLs: {} messages, {} bytes",
        site.pages_of(0).len(),
        state.messages,
        state.bytes
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

/// The schedules are stream messages: with every service stopped when pages come due,
/// the recrawls wait in JetStream and happen once services are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recrawl_schedules_survive_a_restart_of_every_service() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(1).await;
    let url = format!("{}/stable/a", site.base(0));
    let toml = spider(
        &h.crawl,
        &site,
        1,
        "max_depth = 1",
        "[recrawl]\ninterval = \"3s\"\n",
    );
    h.write_spider(&toml);
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&url]).await;
    h.wait_until(
        CRAWL,
        "the page fetched and its next fetch scheduled",
        || async {
            let (_, metrics) = parser.http_get("/metrics").await;
            metrics
                .lines()
                .any(|l| l == "jetcrawl_recrawls_scheduled_total 1")
        },
    )
    .await;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
    assert_eq!(site.requests_under(0, "/stable/a").len(), 1);
    // Down past the due time: the request waits in FRONTIER, moved there by the server.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let frontier = common::jetstream::stream_name(&h.crawl, "FRONTIER");
    h.wait_until(CRAWL, "the recrawl came due into FRONTIER", || async {
        common::jetstream::stream_messages(&js, &frontier)
            .await
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(
        site.requests_under(0, "/stable/a").len(),
        1,
        "nothing fetches while every service is down"
    );
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_until(
        CRAWL,
        "the page fetched again after the restart",
        || async { site.requests_under(0, "/stable/a").len() >= 2 },
    )
    .await;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}
