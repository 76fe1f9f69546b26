//! JavaScript pages (`[render]`): a shop whose pages are empty shells filled by scripts
//! (tests/render/site.rs), crawled in embedded mode and by a fetcher, a renderer, a
//! parser and a sink, with the browser killed, then stopped, and the renderer killed
//! mid-crawl. Needs
//! Chromium (`scripts/deps.sh` installs it; `CHROMIUM` names another).

use crate::common;
mod site;

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use common::jetstream::{self as js_state, page_records};
use common::{assert_items_eq, Harness, HarnessOptions, Role, StoredItem};
use site::JsSite;

/// A whole crawl of the shop (a few seconds; the hanging page costs its timeout).
const CRAWL: Duration = Duration::from_secs(120);
/// `[render] timeout_ms` in these tests.
const RENDER_TIMEOUT_MS: u64 = 3000;

fn bin() -> String {
    std::env::var("JETCRAWL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string())
}

fn jetcrawl(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn jsonl_items(path: &std::path::Path) -> Vec<StoredItem> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
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

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pid of the last browser a renderer's log says it started.
fn browser_pid(log: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter(|l| l.contains("browser started"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .next()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn embedded_crawl_renders_script_pages_and_ends_past_a_hanging_one() {
    let site = JsSite::start(Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spider = dir.path().join("shop.toml");
    std::fs::write(&spider, site.spider("shop", RENDER_TIMEOUT_MS)).expect("write spider");
    let out = dir.path().join("items.jsonl");
    let args = [
        "crawl",
        spider.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--tabs",
        "2",
    ];
    let run = tokio::time::timeout(CRAWL, jetcrawl(&args, &[]).output())
        .await
        .expect("the crawl ends, the hanging page included")
        .expect("run jetcrawl crawl");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "crawl failed:\n{stderr}");
    assert_items_eq(&jsonl_items(&out), &site.expected_items());
    // The hanging page was rendered, and gave up on as an error, not waited for.
    assert_eq!(site.hits("/app/hang"), 1);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("/app/hang") && l.contains("page not settled after 3000 ms")),
        "no render timeout logged for /app/hang:\n{stderr}"
    );
    // Every product's script asked for the secret; the browser never reached it.
    assert_eq!(
        site.secret_hits(),
        0,
        "a page's script reached a private address"
    );
    // Every API call went through jetcrawl (and its politeness gate) exactly once.
    for n in 1..=site::PRODUCTS {
        assert_eq!(
            site.hits(&format!("/api/product/{n}.json")),
            1,
            "product {n}"
        );
    }
}

#[tokio::test]
async fn the_browsers_requests_keep_the_hosts_delay() {
    // Documents, scripts and API calls of two tabs: all through the one gate of the
    // shop's host, one at a time, 100 ms apart. The API answers in 100 ms, so two tabs
    // without the gate would overlap.
    let site = JsSite::start(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spider = dir.path().join("shop.toml");
    let toml = site.spider_with("polite", RENDER_TIMEOUT_MS, 100, 1);
    std::fs::write(&spider, toml).expect("write spider");
    let out = dir.path().join("items.jsonl");
    let args = [
        "crawl",
        spider.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--tabs",
        "2",
    ];
    let run = tokio::time::timeout(CRAWL, jetcrawl(&args, &[]).output())
        .await
        .expect("the crawl ends")
        .expect("run jetcrawl crawl");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_items_eq(&jsonl_items(&out), &site.expected_items());
    // Pages, scripts and API calls of every product, at least.
    assert!(
        site.requests() > 3 * site::PRODUCTS as usize,
        "{}",
        site.requests()
    );
    assert_eq!(site.max_in_flight(), 1, "concurrency_per_host = 1");
    // Arrivals, not starts: a request delayed on its way (a loaded machine) arrives
    // closer to the next one than the gate spaced them, hence the margin. Without the
    // gate they arrive a few milliseconds apart.
    let closest = site.min_spacing().expect("requests");
    assert!(
        closest >= Duration::from_millis(50),
        "two requests to the shop {closest:?} apart (delay_ms = 100)"
    );
}

#[tokio::test]
async fn no_browser_is_a_clear_error_at_start() {
    let site = JsSite::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let spider = dir.path().join("shop.toml");
    std::fs::write(&spider, site.spider("shop", RENDER_TIMEOUT_MS)).expect("write spider");
    let spider = spider.to_str().expect("utf-8 path");
    let missing = "/nonexistent/chromium";
    let runs = [
        // The renderer says so before it connects to anything (no NATS here).
        jetcrawl(
            &["renderer", "--spider", spider, "--chromium", missing],
            &[],
        ),
        jetcrawl(&["crawl", spider], &[("CHROMIUM", missing)]),
    ];
    for mut cmd in runs {
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("exits at once")
            .expect("run jetcrawl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ran without a browser:\n{stderr}");
        assert!(
            stderr.contains(missing) && stderr.contains("--chromium"),
            "unclear error:\n{stderr}"
        );
    }
    assert_eq!(site.hits("/"), 0, "nothing was fetched");
    // A spider without [render] gives a renderer nothing to do: it says so.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "name = \"plain\"\n").expect("write spider");
    let out = jetcrawl(
        &["renderer", "--spider", plain.to_str().expect("utf-8")],
        &[],
    )
    .output()
    .await
    .expect("run jetcrawl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no [render] section"), "{stderr}");
}

#[tokio::test]
async fn distributed_crawl_renders_through_a_browser_crash_a_hang_and_a_killed_renderer() {
    // The API answers slowly, so the crawl is still going when the kills come.
    let site = JsSite::start(Duration::from_millis(500)).await;
    let h = Harness::start(HarnessOptions::default()).await;
    h.write_spider(&site.spider(&h.crawl, RENDER_TIMEOUT_MS));
    let tabs = ["--tabs".to_string(), "2".to_string()];
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    let mut renderer = h.spawn_with(Role::Renderer, &tabs, &[]);
    let seed = format!("{}/", site.base());
    h.seed(&[&seed]).await;
    let expected = site.expected_items();

    // 1. The browser crashes under the renderer: restarted, its pages rendered again.
    h.wait_until(CRAWL, "3 items stored", || async {
        h.db.count(&h.crawl).await >= 3
    })
    .await;
    let mid_crawl = |stored: i64| stored < expected.len() as i64;
    assert!(
        mid_crawl(h.db.count(&h.crawl).await),
        "the crawl ended too soon"
    );
    let log = renderer.state().log.clone();
    let first = browser_pid(&log).expect("the renderer logged its browser");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status();
    h.wait_until(CRAWL, "a new browser", || {
        let log = log.clone();
        async move { browser_pid(&log).is_some_and(|p| p != first) }
    })
    .await;
    h.wait_until(CRAWL, "6 items stored", || async {
        h.db.count(&h.crawl).await >= 6
    })
    .await;
    let (_, metrics) = renderer.http_get("/metrics").await;
    assert!(
        metric(&metrics, "jetcrawl_browser_restarts_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "jetcrawl_browser_requests_refused_total{reason=\"private_address\"}"
        ) >= 1.0,
        "the secret probe was not refused by the guard:\n{metrics}"
    );

    // 1b. The browser hangs (SIGSTOP): its pages time out, their contexts cannot be
    //     disposed of, so the browser is killed and replaced, and they render again.
    let stuck = browser_pid(&log).expect("second browser");
    let stored_before = h.db.count(&h.crawl).await;
    assert!(mid_crawl(stored_before), "the crawl ended too soon");
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &stuck.to_string()])
        .status();
    h.wait_until(CRAWL, "the hung browser replaced", || {
        let log = log.clone();
        async move { browser_pid(&log).is_some_and(|p| p != stuck) }
    })
    .await;
    h.wait_until(CRAWL, "items stored again", || async {
        h.db.count(&h.crawl).await > stored_before
    })
    .await;

    // 2. The renderer itself is killed: its browser goes with it, and a new renderer
    //    takes its partitions; what it held comes back, nothing is lost.
    let second = browser_pid(&log).expect("second browser");
    assert!(
        mid_crawl(h.db.count(&h.crawl).await),
        "the crawl ended too soon"
    );
    renderer.kill9().await;
    h.wait_until(
        Duration::from_secs(10),
        "the killed renderer's browser gone",
        || async move { !alive(second) },
    )
    .await;
    let mut renderer2 = h.spawn_with(Role::Renderer, &tabs, &[]);
    h.wait_until(CRAWL, "every item stored", || async {
        h.db.count(&h.crawl).await >= expected.len() as i64
    })
    .await;
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;
    assert_eq!(
        site.secret_hits(),
        0,
        "a page's script reached a private address"
    );

    // Page records: rendered pages say so; the hanging page is an error record.
    let js = js_state::connect(&h.nats.url()).await;
    let pages = page_records(&js, &h.crawl).await;
    let record = |path: &str| {
        let url = format!("{}{path}", site.base());
        pages
            .iter()
            .rfind(|p| p.header("Jetcrawl-Url") == Some(url.as_str()))
            .unwrap_or_else(|| panic!("no page record for {url}"))
    };
    let hang = record("/app/hang");
    assert_eq!(hang.header("Jetcrawl-Rendered"), Some("true"));
    assert_eq!(hang.header("Jetcrawl-Error-Kind"), Some("render_timeout"));
    let product = record("/app/product/7");
    assert_eq!(product.header("Jetcrawl-Rendered"), Some("true"));
    assert!(String::from_utf8_lossy(&product.payload).contains("Product number 7"));
    assert_eq!(
        record("/static/about.html").header("Jetcrawl-Rendered"),
        None
    );
    // `jetcrawl status` shows the renderers' consumers and the live renderer.
    let status = h.status_json().await;
    let consumers = status["consumers"].as_array().expect("consumers");
    let render_row = consumers
        .iter()
        .find(|c| c["name"] == "renderer")
        .unwrap_or_else(|| panic!("no renderer row in status: {status}"));
    assert_eq!(render_row["live"], 1, "{render_row}");
    assert_eq!(render_row["pending"], 0, "{render_row}");
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink, &mut renderer2])
        .await;
}

#[tokio::test]
async fn two_renderers_divide_the_render_partitions_and_crawl_the_shop() {
    let site = JsSite::start(Duration::ZERO).await;
    let h = Harness::start(HarnessOptions::default()).await;
    h.write_spider(&site.spider(&h.crawl, RENDER_TIMEOUT_MS));
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    let mut renderers = [h.spawn(Role::Renderer), h.spawn(Role::Renderer)];
    // 16 render partitions, 8 each: the fetchers' lease scheme, in a bucket of their own
    // (the fetcher keeps all 16 frontier partitions to itself).
    for r in &renderers {
        h.wait_until(CRAWL, "render partitions divided", || async {
            if r.metrics_addr().is_none() {
                return false; // not serving metrics yet
            }
            let (_, m) = r.http_get("/metrics").await;
            metric(&m, "jetcrawl_partitions_owned ") == 8.0
                && metric(&m, "jetcrawl_live_fetchers ") == 2.0
        })
        .await;
    }
    let (_, m) = fetcher.http_get("/metrics").await;
    assert_eq!(metric(&m, "jetcrawl_partitions_owned "), 16.0, "{m}");
    let seed = format!("{}/", site.base());
    h.seed(&[&seed]).await;
    let expected = site.expected_items();
    h.wait_until(CRAWL, "every item stored", || async {
        h.db.count(&h.crawl).await >= expected.len() as i64
    })
    .await;
    h.wait_idle(CRAWL).await;
    h.assert_items(&expected).await;
    let [a, b] = &mut renderers;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink, a, b])
        .await;
}
