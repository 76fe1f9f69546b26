//! Embedded mode (`jetcrawl crawl`, `jetcrawl check`): one process, no servers, against
//! local sites — the test catalogue (the same spider and items as the distributed
//! tests) and local copies of the example spiders' real sites.

use crate::common;
mod sites;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::process::Command;

use common::{assert_items_eq, spider_toml, ExpectedItem, Site, SiteOptions, StoredItem};
use sites::{ExampleSite, Shape};

/// A whole crawl of a local site (normally a second or two).
const CRAWL: Duration = Duration::from_secs(120);

fn bin() -> String {
    std::env::var("JETCRAWL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string())
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `jetcrawl <args>` to its end.
async fn jetcrawl(args: &[&str]) -> Output {
    let out = tokio::time::timeout(CRAWL, command(args).output())
        .await
        .unwrap_or_else(|_| panic!("jetcrawl {args:?} did not end within {CRAWL:?}"))
        .expect("run jetcrawl");
    out
}

/// Runs `jetcrawl <args>` and asserts it exits 0; returns stdout.
async fn jetcrawl_ok(args: &[&str]) -> String {
    let out = jetcrawl(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "jetcrawl {args:?} exited with {}\nstdout:\n{stdout}\nstderr (tail):\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    stdout
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A temp dir holding the test spider for `site`, named `crawl`.
fn spider_dir(crawl: &str, site: &Site, delay_ms: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spider = dir.path().join("spider.toml");
    std::fs::write(&spider, spider_toml(crawl, site, delay_ms)).expect("write spider");
    (dir, spider)
}

/// Every row of the SQLite file (any crawl).
async fn sqlite_items(db: &Path) -> Vec<StoredItem> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let rows = sqlx::query_as::<_, (String, String, String, String, bool)>(
        "SELECT item_id, item_type, url, data, \
                (fetched_at IS NOT NULL AND stored_at IS NOT NULL) FROM jetcrawl_items",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("read {}: {e}", db.display()));
    let _ = conn.close().await;
    rows.into_iter()
        .map(
            |(item_id, item_type, url, data, has_timestamps)| StoredItem {
                data: serde_json::from_str(&data).expect("data is JSON"),
                item_id,
                item_type,
                url,
                has_timestamps,
            },
        )
        .collect()
}

/// Rows stored so far; 0 while the file or table does not exist yet.
async fn sqlite_count(db: &Path) -> usize {
    if !db.exists() {
        return 0;
    }
    let Ok(mut conn) = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
    else {
        return 0;
    };
    let n = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jetcrawl_items")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
    let _ = conn.close().await;
    n as usize
}

fn jsonl_items(path: &Path) -> Vec<StoredItem> {
    let text = std::fs::read_to_string(path).expect("read jsonl");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let s = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {line}"))
                    .to_string()
            };
            StoredItem {
                item_id: s("item_id"),
                item_type: s("item_type"),
                url: s("url"),
                data: v["data"].clone(),
                has_timestamps: v["fetched_at"].is_string(),
            }
        })
        .collect()
}

/// Every page of the test site exactly once (the flaky one twice: a 500, a retry),
/// robots.txt obeyed: what the distributed tests demand too.
fn assert_polite_and_once(site: &Site) {
    let log = site.request_log();
    let mut problems = Vec::new();
    for key in site.page_keys() {
        let n = log.get(&key).copied().unwrap_or(0);
        if n != 1 {
            problems.push(format!("{key}: {n} requests, expected 1"));
        }
    }
    for (key, n) in &log {
        if key.starts_with("/private/") {
            problems.push(format!("{key}: disallowed by robots.txt, yet requested"));
        }
        if *n > 1 && key != "/robots.txt" && *key != site.flaky_key() {
            problems.push(format!("{key}: {n} requests"));
        }
    }
    let flaky = log.get(&site.flaky_key()).copied().unwrap_or(0);
    if flaky != 2 {
        problems.push(format!(
            "{}: {flaky} requests, expected 2",
            site.flaky_key()
        ));
    }
    assert!(
        problems.is_empty(),
        "wrong requests:\n  {}",
        problems.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_to_sqlite_stores_the_distributed_item_set() {
    let site = Site::start(SiteOptions::default()).await;
    let (dir, spider) = spider_dir("embedded_sqlite", &site, 0);
    let db = dir.path().join("items.db");
    let started = Instant::now();
    let stdout = jetcrawl_ok(&["crawl", path_str(&spider), "--out", path_str(&db)]).await;
    let elapsed = started.elapsed();
    let expected = site.expected_items();
    assert_items_eq(&sqlite_items(&db).await, &expected);
    assert_polite_and_once(&site);
    assert!(stdout.contains("crawl finished"), "summary: {stdout}");
    assert!(
        stdout.contains(&format!("items stored:  {}", expected.len())),
        "summary: {stdout}"
    );
    assert!(stdout.contains("pages/s"), "summary: {stdout}");
    let requests: u32 = site.request_log().values().sum();
    eprintln!("{stdout}");
    eprintln!(
        "embedded crawl: {requests} requests in {:.2} s = {:.0} requests/s",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_queues_neither_deadlock_nor_drop() {
    // Every channel at its smallest: one fetch in flight, one page, batches of one item.
    let site = Site::start(SiteOptions::default()).await;
    let (dir, spider) = spider_dir("embedded_tiny", &site, 0);
    let mut text = std::fs::read_to_string(&spider).expect("read spider");
    text.push_str("\n[sink]\nbatch_size = 1\nbatch_timeout_ms = 1\n");
    std::fs::write(&spider, text).expect("write spider");
    let db = dir.path().join("items.db");
    jetcrawl_ok(&[
        "crawl",
        path_str(&spider),
        "--out",
        path_str(&db),
        "--concurrency",
        "1",
    ])
    .await;
    assert_items_eq(&sqlite_items(&db).await, &site.expected_items());
    assert_polite_and_once(&site);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_to_json_lines_writes_one_item_per_line() {
    let site = Site::start(SiteOptions::default()).await;
    let (dir, spider) = spider_dir("embedded_jsonl", &site, 0);
    let out = dir.path().join("items.jsonl");
    jetcrawl_ok(&["crawl", path_str(&spider), "--out", path_str(&out)]).await;
    let items = jsonl_items(&out);
    assert_items_eq(&items, &site.expected_items());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_to_postgres_uses_the_sinks_table() {
    let (site, db) = tokio::join!(
        Site::start(SiteOptions::default()),
        common::TestDb::create()
    );
    let crawl = format!("t_{}", common::random_hex());
    let (_dir, spider) = spider_dir(&crawl, &site, 0);
    jetcrawl_ok(&["crawl", path_str(&spider), "--out", &db.url()]).await;
    assert_items_eq(&db.items(&crawl).await, &site.expected_items());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stores_what_was_extracted_and_a_second_run_completes() {
    // Slow enough that the signal lands mid-crawl.
    let site = Site::start(SiteOptions {
        latency: Duration::from_millis(20),
    })
    .await;
    let (dir, spider) = spider_dir("embedded_sigint", &site, 10);
    let db = dir.path().join("items.db");
    let expected = site.expected_items();
    let by_url: BTreeMap<&str, &ExpectedItem> =
        expected.iter().map(|e| (e.url.as_str(), e)).collect();

    let child = command(&["crawl", path_str(&spider), "--out", path_str(&db)])
        .spawn()
        .expect("spawn crawl");
    let pid = child.id().expect("pid");
    common::wait_until(CRAWL, "20 items are stored", || {
        let db = db.clone();
        async move { sqlite_count(&db).await >= 20 }
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exit within 30 s of SIGINT")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {} after SIGINT; stderr:\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 30)
    );
    assert!(stdout.contains("crawl interrupted"), "summary: {stdout}");

    // Consistent: complete rows, each an expected item, none twice.
    let stored = sqlite_items(&db).await;
    assert!(
        stored.len() < expected.len(),
        "the crawl finished before the signal: slow the site down"
    );
    let mut seen = std::collections::HashSet::new();
    for row in &stored {
        assert!(seen.insert(&row.url), "stored twice: {}", row.url);
        assert!(row.has_timestamps, "row {} lacks timestamps", row.url);
        let want = by_url
            .get(row.url.as_str())
            .unwrap_or_else(|| panic!("unexpected row {}", row.url));
        assert_eq!(row.data, want.data, "row {} differs", row.url);
    }
    // Every item counted as stored in the summary is in the database.
    let summary_count: usize = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("items stored:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no item count in: {stdout}"));
    assert_eq!(summary_count, stored.len());

    // A second run starts over and completes the set, without duplicates.
    jetcrawl_ok(&["crawl", path_str(&spider), "--out", path_str(&db)]).await;
    assert_items_eq(&sqlite_items(&db).await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_what_a_known_page_yields() {
    let site = Site::start(SiteOptions::default()).await;
    let (dir, spider) = spider_dir("embedded_check", &site, 0);
    let item = site
        .expected_items()
        .into_iter()
        .find(|i| i.url.ends_with("_1/index.html"))
        .expect("product 1");

    // Fetched with the fetcher's client.
    let stdout = jetcrawl_ok(&["check", path_str(&spider), "--url", &item.url]).await;
    assert!(
        stdout.contains(": ok (crawl \"embedded_check\", 1 item rule(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("items (1):"), "{stdout}");
    let title = format!("\"title\": {}", item.data["title"]);
    assert!(stdout.contains(&title), "no {title} in:\n{stdout}");
    assert!(stdout.contains("\"type\": \"product\""), "{stdout}");
    let base = site.base_url();
    assert!(
        stdout.contains(&format!("  {base}/index.html\n")),
        "{stdout}"
    );
    assert!(!stdout.contains("/private/"), "{stdout}");

    // From a file, under the URL given.
    let html = reqwest_get(&item.url).await;
    let file = dir.path().join("page.html");
    std::fs::write(&file, html).expect("write html");
    let from_file = jetcrawl_ok(&[
        "check",
        path_str(&spider),
        "--url",
        &item.url,
        "--html",
        path_str(&file),
    ])
    .await;
    assert!(from_file.contains(&title), "{from_file}");
    let listing = jetcrawl_ok(&[
        "check",
        path_str(&spider),
        "--url",
        &format!("{base}/catalogue/page-1.html"),
        "--html",
        path_str(&file),
    ])
    .await;
    assert!(
        listing.contains("items (0):"),
        "rules match on --url: {listing}"
    );

    // A broken spider reads like a compiler error: file, line, key.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&spider)
        .expect("read spider")
        .replace("delay_ms = 0", "delay_msec = 0");
    std::fs::write(&bad, text).expect("write bad spider");
    let out = jetcrawl(&["check", path_str(&bad)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.toml:10:") && stderr.contains("delay_msec"),
        "{stderr}"
    );
    let bad_css = dir.path().join("bad_css.toml");
    let text = std::fs::read_to_string(&spider)
        .expect("read spider")
        .replace("price = \"p.price_color\"", "price = \"p..[\"");
    std::fs::write(&bad_css, text).expect("write bad spider");
    let out = jetcrawl(&["check", path_str(&bad_css)]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("product.price"), "{stderr}");
}

/// A page's HTML, as the site serves it.
async fn reqwest_get(url: &str) -> String {
    let uri: axum::http::Uri = url.parse().expect("uri");
    let addr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n",
        uri.path(),
        uri.host().expect("host")
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .expect("a body")
}

/// An example spider pointed at a local copy of its site.
fn local_example(example: &str, base: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(example))
        .expect("read example");
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "start_urls" => out.push_str(&format!("start_urls = [\"{base}/\"]")),
            "allowed_domains" => out.push_str("allowed_domains = [\"127.0.0.1\"]"),
            "delay_ms" => out.push_str("delay_ms = 0"),
            _ => out.push_str(line),
        }
        out.push('\n');
        if key == "name" && !out.contains("allow_private_networks") {
            out.push_str("allow_private_networks = true\n");
        }
    }
    let path = dir.join(Path::new(example).file_name().expect("file name"));
    std::fs::write(&path, out).expect("write example");
    path
}

/// Items keyed by (type, url, quote text) with their data, for exact comparison.
fn keyed(items: impl IntoIterator<Item = (String, String, serde_json::Value)>) -> Vec<String> {
    let mut out: Vec<String> = items
        .into_iter()
        .map(|(t, url, data)| {
            let (t, key) = sites::quote_key(&t, &url, &data);
            format!("{t} {key} {data}")
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_spiders_extract_their_sites() {
    for (example, shape) in [
        ("examples/books.toml", Shape::Books),
        ("examples/quotes.toml", Shape::Quotes),
    ] {
        let site = ExampleSite::start(shape).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let spider = local_example(example, &site.base, dir.path());
        let db = dir.path().join("out.db");
        jetcrawl_ok(&["check", path_str(&spider)]).await;
        jetcrawl_ok(&["crawl", path_str(&spider), "--out", path_str(&db)]).await;
        let stored = sqlite_items(&db).await;
        let ids: std::collections::HashSet<&str> =
            stored.iter().map(|s| s.item_id.as_str()).collect();
        assert_eq!(ids.len(), stored.len(), "{example}: duplicate ids");
        let got = keyed(
            stored
                .iter()
                .map(|s| (s.item_type.clone(), s.url.clone(), s.data.clone())),
        );
        let want = keyed(
            site.expected_items()
                .into_iter()
                .map(|e| (e.item_type, e.url, e.data)),
        );
        assert_eq!(got, want, "{example}: items differ");
    }
}
