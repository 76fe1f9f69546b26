//! Issue 8, test 5: which pages a depth-limited crawl reaches must not depend on
//! timing, fetcher count or crashes. A site where pages are reachable along paths of
//! different lengths, the short ones slow or failing once, so that a page is first
//! discovered along a long path (at `max_depth`, its links cut) and only later along a
//! short one. The items stored must be exactly those of a BFS from the seed over the
//! site's own links — in embedded mode and with 1, 2 and 3 fetchers, 3 runs each, and
//! with fetchers killed mid-crawl.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::common::hosts::{loopback_ips, HostSpec, HostsSite, Link, PageSpec};
use crate::common::{ExpectedItem, StoredItem};
use crate::politeness::support::{
    harness_for, seed, spawn_fetcher, start_pipeline, stop, Bind, Knobs, CRAWL,
};

const MAX_DEPTH: u32 = 6;
const KNOBS: Knobs = Knobs {
    delay_ms: 0,
    concurrency_per_host: 8,
    max_depth: MAX_DEPTH,
    partitions: 16,
};
const RUNS: usize = 3;
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn link(host: usize, path: impl Into<String>) -> Link {
    Link {
        host,
        path: path.into(),
    }
}

/// Three hosts, ~215 pages. From the seed A`/`:
/// - a fast chain A`/chain/1..8`; `/chain/5` (depth 5) links every section below
///   (so depth 6 along it) and A`/p/edge.html` (6); `/chain/6` links
///   A`/p/beyond.html` (7: never fetched);
/// - B`/hub/1..3` (1; 1.2 s to answer) → B`/sec/k/m` (2) → 10 products each (3);
/// - C`/flaky/1` (1; 503 the first time) → C`/fsec/j` (2) → 8 products each (3);
/// - C`/m/1` (1; 0.6 s) → `/m/2..4` (4) → C`/dsec/j` (5) → 8 products each (6).
fn depth_site() -> Vec<HostSpec> {
    let ips = loopback_ips(3);
    let (mut a, mut b, mut c) = (
        HostSpec::new(ips[0]),
        HostSpec::new(ips[1]),
        HostSpec::new(ips[2]),
    );
    let back = || vec![link(A, "/")];
    let mut home = vec![link(A, "/chain/1")];
    home.extend((1..=3).map(|k| link(B, format!("/hub/{k}"))));
    home.extend([link(C, "/flaky/1"), link(C, "/m/1")]);
    a.pages.insert("/".into(), PageSpec::listing(home));

    let mut shortcuts: Vec<Link> = Vec::new();
    for k in 1..=3 {
        let sections: Vec<Link> = (1..=4).map(|m| link(B, format!("/sec/{k}/{m}"))).collect();
        let mut hub = PageSpec::listing(sections.clone());
        hub.latency = Some(Duration::from_millis(1200));
        b.pages.insert(format!("/hub/{k}"), hub);
        for (m, section) in sections.iter().enumerate() {
            let products: Vec<Link> = (1..=10)
                .map(|n| link(B, format!("/p/s{k}-{}-{n}.html", m + 1)))
                .collect();
            for p in &products {
                b.pages.insert(p.path.clone(), PageSpec::product(back()));
            }
            b.pages
                .insert(section.path.clone(), PageSpec::listing(products));
        }
        shortcuts.extend(sections);
    }
    let fsecs: Vec<Link> = (1..=4).map(|j| link(C, format!("/fsec/{j}"))).collect();
    let mut flaky = PageSpec::listing(fsecs.clone());
    flaky.fail_first = 1;
    c.pages.insert("/flaky/1".into(), flaky);
    let dsecs: Vec<Link> = (1..=3).map(|j| link(C, format!("/dsec/{j}"))).collect();
    for (prefix, secs) in [("f", &fsecs), ("d", &dsecs)] {
        for (j, sec) in secs.iter().enumerate() {
            let products: Vec<Link> = (1..=8)
                .map(|n| link(C, format!("/p/{prefix}{}-{n}.html", j + 1)))
                .collect();
            for p in &products {
                c.pages.insert(p.path.clone(), PageSpec::product(back()));
            }
            c.pages
                .insert(sec.path.clone(), PageSpec::listing(products));
        }
    }
    for i in 1..=4 {
        let next = if i < 4 {
            vec![link(C, format!("/m/{}", i + 1))]
        } else {
            dsecs.clone()
        };
        let mut page = PageSpec::listing(next);
        if i == 1 {
            page.latency = Some(Duration::from_millis(600));
        }
        c.pages.insert(format!("/m/{i}"), page);
    }
    shortcuts.extend(fsecs);
    shortcuts.extend(dsecs);
    for i in 1..=8 {
        let mut links = Vec::new();
        if i < 8 {
            links.push(link(A, format!("/chain/{}", i + 1)));
        }
        if i == 5 {
            links.extend(shortcuts.iter().cloned());
            links.push(link(A, "/p/edge.html"));
        }
        if i == 6 {
            links.push(link(A, "/p/beyond.html"));
        }
        a.pages
            .insert(format!("/chain/{i}"), PageSpec::listing(links));
    }
    a.pages
        .insert("/p/edge.html".into(), PageSpec::product(back()));
    a.pages
        .insert("/p/beyond.html".into(), PageSpec::product(back()));
    vec![a, b, c]
}

fn seeds() -> Vec<Link> {
    vec![link(A, "/")]
}

/// The site has the shape the test relies on (else it could pass for nothing).
fn check_design(site: &HostsSite) {
    let depth = site.expected_pages(&seeds(), MAX_DEPTH);
    let at = |l: Link| depth.get(&l).copied();
    assert_eq!(
        at(link(B, "/sec/2/3")),
        Some(2),
        "design: sections at depth 2"
    );
    assert_eq!(
        at(link(C, "/dsec/1")),
        Some(5),
        "design: deep sections at 5"
    );
    assert_eq!(
        at(link(C, "/p/d3-8.html")),
        Some(6),
        "design: products at max_depth"
    );
    assert_eq!(
        at(link(A, "/p/edge.html")),
        Some(6),
        "design: edge at max_depth"
    );
    assert_eq!(at(link(A, "/chain/7")), None, "design: chain cut at 6");
    assert_eq!(
        at(link(A, "/p/beyond.html")),
        None,
        "design: beyond max_depth"
    );
    assert!(site.expected_items(&seeds(), MAX_DEPTH).len() > 150);
}

/// What differs between `stored` and `expected`, in a line, with the BFS depth of
/// the missing pages; `None` if they are the same.
fn item_diff(site: &HostsSite, stored: &[StoredItem], expected: &[ExpectedItem]) -> Option<String> {
    let depth: BTreeMap<String, u32> = site
        .expected_pages(&seeds(), MAX_DEPTH)
        .into_iter()
        .map(|(l, d)| (site.url(&l), d))
        .collect();
    let got: BTreeMap<&str, &StoredItem> = stored.iter().map(|s| (s.url.as_str(), s)).collect();
    let want: BTreeMap<&str, &ExpectedItem> =
        expected.iter().map(|e| (e.url.as_str(), e)).collect();
    let missing: Vec<&str> = want
        .keys()
        .filter(|u| !got.contains_key(*u))
        .copied()
        .collect();
    let unexpected: Vec<&str> = got
        .keys()
        .filter(|u| !want.contains_key(*u))
        .copied()
        .collect();
    let differing = want
        .iter()
        .filter(|(u, e)| got.get(*u).is_some_and(|s| s.data != e.data))
        .count();
    let twice = stored.len() - got.len();
    if missing.is_empty() && unexpected.is_empty() && differing == 0 && twice == 0 {
        return None;
    }
    let mut by_depth: BTreeMap<u32, usize> = BTreeMap::new();
    for u in &missing {
        *by_depth
            .entry(depth.get(*u).copied().unwrap_or(0))
            .or_insert(0) += 1;
    }
    let by_depth: Vec<String> = by_depth
        .iter()
        .map(|(d, n)| format!("{n} at depth {d}"))
        .collect();
    Some(format!(
        "{} of {} items stored; missing {} ({}; e.g. {}), unexpected {} {:?}, data differs {}, \
         stored twice {}",
        got.len(),
        want.len(),
        missing.len(),
        by_depth.join(", "),
        missing.first().unwrap_or(&"-"),
        unexpected.len(),
        unexpected.iter().take(3).collect::<Vec<_>>(),
        differing,
        twice
    ))
}

/// Panics listing the runs whose items differ from the BFS's.
fn assert_runs(mode: &str, results: &[Option<String>]) {
    let bad: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| format!("run {}: {r}", i + 1)))
        .collect();
    assert!(
        bad.is_empty(),
        "{mode}, max_depth {MAX_DEPTH}: a depth-limited crawl lost pages within reach of the \
         seed ({} of {} runs):\n  {}",
        bad.len(),
        results.len(),
        bad.join("\n  ")
    );
}

/// Every row of an embedded crawl's SQLite file.
async fn sqlite_items(db: &Path) -> Vec<StoredItem> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let rows = sqlx::query_as::<_, (String, String, String, String)>(
        "SELECT item_id, item_type, url, data FROM jetcrawl_items",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("read {}: {e}", db.display()));
    let _ = conn.close().await;
    rows.into_iter()
        .map(|(item_id, item_type, url, data)| StoredItem {
            data: serde_json::from_str(&data).expect("data is JSON"),
            item_id,
            item_type,
            url,
            has_timestamps: true,
        })
        .collect()
}

/// One `jetcrawl crawl` of a fresh site.
async fn embedded_run() -> Option<String> {
    let site = HostsSite::start(depth_site()).await;
    check_design(&site);
    let dir = tempfile::tempdir().expect("temp dir");
    let spider = dir.path().join("spider.toml");
    let db = dir.path().join("items.db");
    let toml = crate::politeness::support::spider_toml("depth_embedded", &site, &seeds(), &KNOBS);
    std::fs::write(&spider, toml).expect("write spider");
    let bin = std::env::var("JETCRAWL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["crawl", &spider.display().to_string(), "--out"])
        .arg(&db)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CRAWL, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("jetcrawl crawl did not end within {CRAWL:?}"))
        .expect("run jetcrawl crawl");
    assert!(
        out.status.success(),
        "jetcrawl crawl exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = site.expected_items(&seeds(), MAX_DEPTH);
    item_diff(&site, &sqlite_items(&db).await, &expected)
}

/// One distributed crawl of a fresh site with `n` fetchers; with `kills`, fetchers 1
/// and 2 are SIGKILLed mid-crawl (early on, then as the slow hubs answer) and
/// replaced.
async fn distributed_run(n: usize, kills: bool) -> Option<String> {
    let site = HostsSite::start(depth_site()).await;
    check_design(&site);
    let h = harness_for(&site, &seeds(), &KNOBS).await;
    let (mut fetchers, mut parser, mut sink) = start_pipeline(&h, n, Bind::Env).await;
    let started = Instant::now();
    seed(&h, &site, &seeds()).await;
    if kills {
        h.wait_until(CRAWL, "the site has had 10 requests", || async {
            site.log().len() >= 10
        })
        .await;
        fetchers[0].kill9().await;
        fetchers.push(spawn_fetcher(&h, n + 1, Bind::Env));
        h.wait_until(CRAWL, "a slow hub has answered", || async {
            site.log()
                .iter()
                .any(|r| r.host == B && r.path.starts_with("/hub/") && r.end.is_some())
        })
        .await;
        fetchers[1].kill9().await;
        fetchers.push(spawn_fetcher(&h, n + 2, Bind::Env));
    }
    h.wait_idle(CRAWL).await;
    eprintln!(
        "{n} fetcher(s){}: crawl finished in {:.1} s, {} requests",
        if kills { ", two killed" } else { "" },
        started.elapsed().as_secs_f64(),
        site.log().len()
    );
    let expected = site.expected_items(&seeds(), MAX_DEPTH);
    let diff = item_diff(&site, &h.db.items(&h.crawl).await, &expected);
    stop(&h, &mut fetchers, &mut parser, &mut sink).await;
    diff
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limited_crawl_is_exact_embedded() {
    let mut results = Vec::new();
    for _ in 0..RUNS {
        results.push(embedded_run().await);
    }
    assert_runs("embedded mode (`jetcrawl crawl`)", &results);
}

async fn distributed_runs(n: usize) {
    let mut results = Vec::new();
    for _ in 0..RUNS {
        results.push(distributed_run(n, false).await);
    }
    assert_runs(&format!("distributed, {n} fetcher(s)"), &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limited_crawl_is_exact_with_one_fetcher() {
    distributed_runs(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limited_crawl_is_exact_with_two_fetchers() {
    distributed_runs(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limited_crawl_is_exact_with_three_fetchers() {
    distributed_runs(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limited_crawl_is_exact_while_fetchers_are_killed() {
    let result = distributed_run(2, true).await;
    assert_runs(
        "distributed, 2 fetchers, both SIGKILLed mid-crawl",
        &[result],
    );
}
