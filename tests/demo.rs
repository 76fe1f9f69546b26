//! `jetcrawl demo`, the README's first command: it serves the demo shop on loopback,
//! crawls all of it in embedded mode, and says how to query what it stored. Nothing here
//! leaves the machine.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Runs `jetcrawl <args>` in `dir` to its end and returns (success, stdout, stderr).
async fn jetcrawl(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jetcrawl"))
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("jetcrawl demo finished in 120 s")
    .expect("run jetcrawl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn demo_crawls_the_whole_shop_and_says_how_to_query_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, stdout, stderr) = jetcrawl(dir.path(), &["demo", "--pages", "250"]).await;
    assert!(ok, "jetcrawl demo failed:\n{stdout}\n{stderr}");

    // 250 products, 13 listing pages (20 a page), the home page: every one fetched once.
    assert!(stdout.contains("pages fetched: 264 (2xx 264)"), "{stdout}");
    assert!(stdout.contains("items stored:  250"), "{stdout}");
    assert!(stdout.contains("errors:        0"), "{stdout}");
    assert!(
        stdout.contains("sqlite3 demo.db \"select json_extract(data, '$.title')"),
        "{stdout}"
    );

    let db = dir.path().join("demo.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true)
        .connect()
        .await
        .expect("demo.db is a SQLite database");
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT crawl, url, data FROM jetcrawl_items ORDER BY url")
            .fetch_all(&mut conn)
            .await
            .expect("query jetcrawl_items");
    conn.close().await.ok();
    assert_eq!(rows.len(), 250);
    let mut ids = BTreeSet::new();
    for (crawl, url, data) in &rows {
        assert_eq!(crawl, "demo");
        let id: usize = url
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a product URL: {url}"));
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let data: serde_json::Value = serde_json::from_str(data).expect("item JSON");
        let title = data["title"].as_str().unwrap_or_default();
        assert!(
            title.starts_with(&format!("Product {id} — ")),
            "{url}: {data}"
        );
        assert!(
            data["price"].as_str().unwrap_or_default().starts_with('£'),
            "{data}"
        );
        assert_eq!(data["sku"], format!("SKU-{id:06}"), "{data}");
        ids.insert(id);
    }
    assert_eq!(ids, (0..250).collect(), "every product exactly once");
}

#[tokio::test]
async fn demo_serve_only_serves_the_shop() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetcrawl"))
        .args(["demo", "--serve", "127.0.0.1:0", "--pages", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn jetcrawl demo --serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let base = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the shop's address within 30 s")
        .expect("read stdout")
        .expect("a line");
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{base}: {e}"));
    let (status, body) = jetcrawl_bench::stack::http_get(addr, "/product/7")
        .await
        .expect("GET /product/7");
    assert_eq!(status, 200);
    assert!(body.contains("SKU-000007"), "{body}");
    let (status, robots) = jetcrawl_bench::stack::http_get(addr, "/robots.txt")
        .await
        .expect("GET /robots.txt");
    assert_eq!(status, 200);
    assert!(robots.contains("Disallow: /cart/"), "{robots}");
    child.kill().await.ok();
}
