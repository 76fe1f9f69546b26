//! `jetcrawl export` (issue 13): a real crawl of a site whose bytes and headers the test
//! knows, archived as WARC and read back with an independent reader (PyPI `warcio`,
//! `tests/export/read_warc.py`); items dumped as JSON Lines and CSV (read back with
//! Python's `csv`) and compared with the database row for row, PostgreSQL and SQLite;
//! and the hostile cases: an empty crawl, a binary body, `--since` in the future, bad
//! flags (an error, and no file).
//!
//! Layout: `site` (the archive site) · this file (the tests, running the readers).

use crate::common;
mod site;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::{Harness, HarnessOptions};
use site::ArchiveSite;

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(120);

fn spider(crawl: &str, site: &ArchiveSite) -> String {
    format!(
        r#"name = "{crawl}"
start_urls = ["{start}"]
max_depth = 2
user_agent = "jetcrawl-export-test"
obey_robots = false
allow_private_networks = true

[politeness]
delay_ms = 0
concurrency_per_host = 4
autothrottle = false

[http]
max_tries = 1

[streams]
ack_wait_secs = 4

[[items]]
type = "page"
match = '(\.html|/)$'
[items.fields]
title = "h1"

[[items]]
type = "home"
match = '/$'
[items.fields]
heading = "h1"
links = {{ css = "a", attr = "href", all = true }}
"#,
        start = site.url("/"),
    )
}

/// Runs `python3 args...` and returns its stdout; panics with its stderr otherwise.
fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The WARC file's records as warcio reads them (digests checked).
fn read_warc(path: &Path) -> (Vec<Value>, u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/export/read_warc.py");
    let out = python(&[script, &path.display().to_string()]);
    let v: Value = serde_json::from_str(&out).expect("read_warc.py prints JSON");
    let records = v["records"].as_array().cloned().unwrap_or_default();
    (records, v["gzip_members"].as_u64().unwrap_or(0))
}

/// A CSV file's rows as Python's csv module reads them.
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let out = python(&[
        "-c",
        "import csv, json, sys; print(json.dumps(list(csv.reader(open(sys.argv[1], newline='', encoding='utf-8')))))",
        &path.display().to_string(),
    ]);
    serde_json::from_str(&out).expect("csv rows as JSON")
}

fn header<'a>(record: &'a Value, name: &str) -> Vec<&'a str> {
    record["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A row of `jetcrawl_items` with everything the export writes.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    item_id: String,
    item_type: String,
    url: String,
    data: Value,
    fetched_at: chrono::DateTime<chrono::Utc>,
    stored_at: chrono::DateTime<chrono::Utc>,
}

async fn pg_rows(url: &str, crawl: &str) -> Vec<Row> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    type R = (
        String,
        String,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<R> = sqlx::query_as(
        "SELECT item_id, item_type, url, data::text, fetched_at, stored_at \
         FROM jetcrawl_items WHERE crawl = $1 ORDER BY item_id",
    )
    .bind(crawl)
    .fetch_all(&pool)
    .await
    .expect("read rows");
    pool.close().await;
    rows.into_iter()
        .map(|(item_id, item_type, url, data, f, s)| Row {
            item_id,
            item_type,
            url,
            data: serde_json::from_str(&data).expect("data is JSON"),
            fetched_at: f,
            stored_at: s,
        })
        .collect()
}

async fn sqlite_rows(url: &str, crawl: &str) -> Vec<Row> {
    let pool = sqlx::SqlitePool::connect(url)
        .await
        .expect("connect sqlite");
    let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT item_id, item_type, url, data, fetched_at, stored_at \
         FROM jetcrawl_items WHERE crawl = ?1 ORDER BY item_id",
    )
    .bind(crawl)
    .fetch_all(&pool)
    .await
    .expect("read sqlite rows");
    pool.close().await;
    let time = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("rfc 3339 in sqlite")
            .with_timezone(&chrono::Utc)
    };
    rows.into_iter()
        .map(|(item_id, item_type, url, data, f, s)| Row {
            item_id,
            item_type,
            url,
            data: serde_json::from_str(&data).expect("data is JSON"),
            fetched_at: time(&f),
            stored_at: time(&s),
        })
        .collect()
}

/// The JSON Lines file's items, as rows.
fn jsonl_rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).expect("read jsonl");
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time string"))
            .expect("rfc 3339")
            .with_timezone(&chrono::Utc)
    };
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("each line is JSON");
            Row {
                item_id: v["item_id"].as_str().expect("item_id").to_string(),
                item_type: v["item_type"].as_str().expect("item_type").to_string(),
                url: v["url"].as_str().expect("url").to_string(),
                data: v["data"].clone(),
                fetched_at: time(&v["fetched_at"]),
                stored_at: time(&v["stored_at"]),
            }
        })
        .collect()
}

/// Asserts the CSV holds exactly `rows`: a column per field (the union over types).
fn assert_csv_matches(path: &Path, rows: &[Row]) {
    let csv = read_csv(path);
    let header = &csv[0];
    let mut fields: Vec<String> = rows
        .iter()
        .flat_map(|r| r.data.as_object().expect("object").keys().cloned())
        .collect();
    fields.sort();
    fields.dedup();
    let mut want_header: Vec<String> = ["item_id", "item_type", "url", "fetched_at", "stored_at"]
        .map(String::from)
        .to_vec();
    want_header.extend(fields.iter().cloned());
    assert_eq!(header, &want_header, "CSV columns");
    assert_eq!(csv.len() - 1, rows.len(), "CSV rows: {csv:?}");
    for (line, row) in csv[1..].iter().zip(rows) {
        assert_eq!(line[0], row.item_id);
        assert_eq!(line[1], row.item_type);
        assert_eq!(line[2], row.url);
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("rfc 3339 in csv")
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(at(&line[3]), row.fetched_at);
        assert_eq!(at(&line[4]), row.stored_at);
        for (i, field) in fields.iter().enumerate() {
            let want = match row.data.get(field) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            assert_eq!(line[5 + i], want, "{} field {field}", row.url);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_archives_a_crawl_as_warc_and_its_items_as_jsonl_and_csv() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = ArchiveSite::start().await;
    h.write_spider(&spider(&h.crawl, &site));
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&site.url("/")]).await;
    h.wait_idle(CRAWL).await;
    let served = site.pages();
    let (db, crawl) = (&h.db, h.crawl.as_str());
    // Items of "/", cp1252, gzip and junk (type page) and of "/" (type home).
    h.wait_until(CRAWL, "the items are stored", || async move {
        db.count(crawl).await == 5
    })
    .await;

    // --- WARC ---
    let warc = h.dir().join("crawl.warc.gz");
    let warc_arg = warc.display().to_string();
    let out = h.run_command("export", &["--warc", &warc_arg]).await;
    let fetched = served.len() + 1; // the site's pages and the unreachable one
    assert!(
        out.contains(&format!("wrote {fetched} page(s)")),
        "export printed: {out}"
    );
    let (records, members) = read_warc(&warc);
    assert_eq!(
        members as usize,
        records.len(),
        "one gzip member per record"
    );
    assert_eq!(records[0]["type"], "warcinfo", "{:#?}", records[0]);
    let by = |kind: &str, uri: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["target_uri"] == uri)
            .collect()
    };
    for page in &served {
        let uri = site.url(page.path);
        let responses = by("response", &uri);
        assert_eq!(responses.len(), 1, "one response for {uri}: {records:#?}");
        let resp = responses[0];
        assert_eq!(resp["status"], page.status.to_string(), "{uri}");
        assert_eq!(
            resp["payload_hex"].as_str(),
            Some(hex(&page.stored).as_str()),
            "payload of {uri}"
        );
        assert_eq!(
            header(resp, "x-archive-test"),
            vec![page
                .headers
                .iter()
                .find(|h| h.0 == "x-archive-test")
                .map(|h| h.1)
                .unwrap_or_default()],
            "{uri}"
        );
        assert!(
            header(resp, "set-cookie").is_empty(),
            "a cookie was archived: {resp:#?}"
        );
        assert!(
            header(resp, "content-encoding").is_empty(),
            "the payload is decompressed, yet content-encoding is there: {resp:#?}"
        );
        assert_eq!(
            header(resp, "content-length"),
            vec![page.stored.len().to_string()],
            "{uri}"
        );
        let not_kept = page.stored.is_empty() && !page.wire.is_empty();
        assert_eq!(
            resp["truncated"].as_str(),
            not_kept.then_some("length"),
            "WARC-Truncated of {uri}"
        );
        let requests = by("request", &uri);
        assert_eq!(requests.len(), 1, "one request for {uri}");
        assert_eq!(requests[0]["concurrent_to"], resp["id"], "{uri}");
        let request = requests[0];
        assert_eq!(
            request["status_line"].as_str(),
            Some(format!("GET {} HTTP/1.1", page.path).as_str()),
            "request record of {uri}: {request:#?}"
        );
        assert_eq!(header(request, "user-agent"), vec!["jetcrawl-export-test"]);
        assert_eq!(header(request, "host"), vec![site.addr.to_string()]);
    }
    let home = by("response", &site.url("/"))[0];
    assert_eq!(header(home, "etag"), vec!["\"home-1\""]);
    assert_eq!(
        header(home, "last-modified"),
        vec!["Wed, 01 Jan 2025 00:00:00 GMT"]
    );
    let cp1252 = by("response", &site.url("/cp1252.html"))[0];
    assert_eq!(
        header(cp1252, "content-type"),
        vec!["text/html; charset=utf-8"],
        "the payload is UTF-8 and says so"
    );
    assert_eq!(
        header(cp1252, "x-jetcrawl-original-content-type"),
        vec!["text/html; charset=windows-1252"]
    );
    let failed = by("metadata", &site.down_url);
    assert_eq!(failed.len(), 1, "the unreachable page: {records:#?}");
    assert!(by("response", &site.down_url).is_empty());
    assert_eq!(
        records.len(),
        1 + 2 * served.len() + 1,
        "warcinfo, request + response per page, metadata for the failure"
    );

    // --since: an age takes everything, the future nothing.
    let recent = h.dir().join("recent.warc.gz");
    let out = h
        .run_command(
            "export",
            &["--warc", &recent.display().to_string(), "--since", "1h"],
        )
        .await;
    assert!(out.contains(&format!("wrote {fetched} page(s)")), "{out}");
    let future = h.dir().join("future.warc.gz");
    let out = h
        .run_command(
            "export",
            &[
                "--warc",
                &future.display().to_string(),
                "--since",
                "2099-01-01T00:00:00Z",
            ],
        )
        .await;
    assert!(out.contains("wrote 0 page(s)"), "{out}");
    let (records, _) = read_warc(&future);
    assert_eq!(records.len(), 1, "only the warcinfo record: {records:#?}");

    // --- items, PostgreSQL ---
    let rows = pg_rows(&h.db.url(), &h.crawl).await;
    assert_eq!(rows.len(), 5);
    let jsonl = h.dir().join("items.jsonl");
    let out = h
        .run_command(
            "export",
            &[
                "--items",
                &jsonl.display().to_string(),
                "--database-url",
                &h.db.url(),
            ],
        )
        .await;
    assert!(out.contains("wrote 5 item(s)"), "{out}");
    assert_eq!(jsonl_rows(&jsonl), rows, "JSON Lines against the table");
    let csv = h.dir().join("items.csv");
    h.run_command(
        "export",
        &[
            "--items",
            &csv.display().to_string(),
            "--database-url",
            &h.db.url(),
        ],
    )
    .await;
    assert_csv_matches(&csv, &rows);
    // One type at a time: its rows, its columns.
    let homes = h.dir().join("homes.csv");
    h.run_command(
        "export",
        &["--items", &homes.display().to_string(), "--type", "home"],
    )
    .await;
    let home_rows: Vec<Row> = rows
        .iter()
        .filter(|r| r.item_type == "home")
        .cloned()
        .collect();
    assert_csv_matches(&homes, &home_rows);

    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;

    // --- items, SQLite: the same site crawled in embedded mode ---
    let db_file = h.dir().join("embedded.db");
    let sqlite_url = format!("sqlite://{}", db_file.display());
    let bin = std::env::var("JETCRAWL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
    let crawl_out = tokio::process::Command::new(&bin)
        .args([
            "crawl",
            &h.spider.display().to_string(),
            "--out",
            &sqlite_url,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run jetcrawl crawl");
    assert!(
        crawl_out.status.success(),
        "embedded crawl: {}",
        String::from_utf8_lossy(&crawl_out.stderr)
    );
    let lite = sqlite_rows(&sqlite_url, &h.crawl).await;
    assert_eq!(lite.len(), 5, "the embedded crawl stores the same items");
    let lite_jsonl = h.dir().join("lite.jsonl");
    h.run_command(
        "export",
        &[
            "--items",
            &lite_jsonl.display().to_string(),
            "--database-url",
            &sqlite_url,
        ],
    )
    .await;
    assert_eq!(
        jsonl_rows(&lite_jsonl),
        lite,
        "SQLite JSON Lines against the table"
    );
    let lite_csv = h.dir().join("lite.csv");
    h.run_command(
        "export",
        &[
            "--items",
            &lite_csv.display().to_string(),
            "--database-url",
            &sqlite_url,
        ],
    )
    .await;
    assert_csv_matches(&lite_csv, &lite);
    let same: BTreeMap<_, _> = rows.iter().map(|r| (&r.item_id, &r.data)).collect();
    let lite_same: BTreeMap<_, _> = lite.iter().map(|r| (&r.item_id, &r.data)).collect();
    assert_eq!(same, lite_same, "both modes, same items");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_an_empty_crawl_and_bad_flags() {
    let h = Harness::start(HarnessOptions::default()).await;
    let dir = h.dir().to_path_buf();
    let path = |name: &str| dir.join(name).display().to_string();

    // No crawl on this NATS yet: a clear error, no file.
    let out = h
        .run_command_output("export", &["--warc", &path("none.warc.gz")])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no PAGES stream"), "{err}");
    assert!(!dir.join("none.warc.gz").exists());

    // Created but empty: a WARC with its warcinfo record only, no items.
    h.run_command("init", &[]).await;
    let out = h
        .run_command("export", &["--warc", &path("empty.warc.gz")])
        .await;
    assert!(out.contains("wrote 0 page(s)"), "{out}");
    let (records, members) = read_warc(&dir.join("empty.warc.gz"));
    assert_eq!(records.len(), 1);
    assert_eq!(members, 1);
    assert_eq!(records[0]["type"], "warcinfo");
    let out = h
        .run_command("export", &["--items", &path("empty.jsonl")])
        .await;
    assert!(out.contains("wrote 0 item(s)"), "{out}");
    assert_eq!(std::fs::read(dir.join("empty.jsonl")).expect("jsonl"), b"");
    h.run_command("export", &["--items", &path("empty.csv")])
        .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("empty.csv")).expect("csv"),
        "item_id,item_type,url,fetched_at,stored_at\r\n"
    );

    // Bad flags: an error naming what is wrong, and no file.
    let cases: [(&[&str], &str); 6] = [
        (&["--warc", "x.warc"], ".warc.gz"),
        (&["--items", "x.json"], ".jsonl or .csv"),
        (&["--warc", "y.warc.gz", "--since", "yesterday"], "--since"),
        (&["--warc", "y.warc.gz", "--since=-3h"], "--since"),
        (&["--items", "y.jsonl", "--since", "1h"], "--warc"),
        (&[], "--warc"),
    ];
    for (args, says) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("--") {
                    a.to_string()
                } else if a.contains('.') {
                    path(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h.run_command_output("export", &args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('x') || n.starts_with('y') || n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "files left by failed exports: {left:?}");
}
