//! `[http] proxies` (issue 13), end to end: a crawl of several loopback hosts through an
//! HTTP proxy and a SOCKS5 proxy (both with a login, started by the test, each leaving
//! from its own source address) and a third proxy that is down. Every request reaches
//! the site through a proxy, each host sees one address, the dead proxy's hosts are
//! served through the next proxy in their order, nothing is lost, the metrics count it,
//! and no log holds a proxy's password. A private target is refused before any proxy
//! sees it.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::hosts::{loopback_ips, HostSpec, HostsSite, Link};
use common::proxies::{Login, TestProxy};
use common::{jetstream, Harness, HarnessOptions, Role};

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(120);

/// Source addresses of the proxies (what the site sees).
const HTTP_OUT: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
const SOCKS_OUT: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 2);
const REFUSING_OUT: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 3);

fn login(user: &str, password: &str) -> Login {
    Login {
        user: user.into(),
        password: password.into(),
    }
}

/// Hosts whose first proxy (of `n`) covers each proxy twice, so some hosts stick to
/// each failing one and must be moved.
fn hosts_covering_every_proxy(n: usize) -> Vec<Ipv4Addr> {
    let mut picked = Vec::new();
    let mut per = vec![0; n];
    for ip in loopback_ips(200) {
        let first = jetcrawl_fetcher::http::proxy_order(&ip.to_string(), n)[0];
        if per[first] < 2 {
            per[first] += 1;
            picked.push(ip);
        }
        if per.iter().all(|&c| c == 2) {
            return picked;
        }
    }
    panic!("no host set covers every proxy: {per:?}");
}

fn spider(
    crawl: &str,
    site: &HostsSite,
    proxies: &[String],
    allow_private: bool,
    http_extra: &str,
) -> String {
    let quote = |s: &str| format!("\"{s}\"");
    let seeds: Vec<String> = site.home_urls().iter().map(|u| quote(u)).collect();
    let hosts: Vec<String> = (0..site.hosts())
        .map(|h| quote(&site.host_name(h)))
        .collect();
    let proxies: Vec<String> = proxies.iter().map(|p| quote(p)).collect();
    format!(
        r#"name = "{crawl}"
start_urls = [{seeds}]
allowed_domains = [{hosts}, "localhost"]
max_depth = 5
user_agent = "jetcrawl-test"
obey_robots = true
allow_private_networks = {allow_private}

[politeness]
delay_ms = 0
concurrency_per_host = 2
autothrottle = false

[http]
retry_backoff_ms = 200
connect_timeout_ms = 2000
proxies = [{proxies}]
{http_extra}

[streams]
ack_wait_secs = 4

[[items]]
type = "product"
match = '/p/[^/]+\.html$'
[items.fields]
title = "h1"
price = "p.price"
"#,
        seeds = seeds.join(", "),
        hosts = hosts.join(", "),
        proxies = proxies.join(", "),
    )
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Lines of `name{labels} value` in a metrics text whose labels contain all of `want`.
fn metric(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_goes_through_the_proxies_sticky_per_host_around_failing_ones() {
    let h = Harness::start(HarnessOptions::default()).await;
    // 0: HTTP, 1: SOCKS5, 2: down (connection refused), 3: refuses the login (407).
    let failing = [2, 3];
    let ips = hosts_covering_every_proxy(4);
    let specs: Vec<HostSpec> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HostSpec::catalogue(i, *ip, 2, 3))
        .collect();
    let site = HostsSite::start(specs).await;
    let http = TestProxy::http(IpAddr::V4(HTTP_OUT), Some(login("alice", "s3cret-http"))).await;
    let socks = TestProxy::socks5(IpAddr::V4(SOCKS_OUT), Some(login("bob", "s3cret-socks"))).await;
    let refusing = TestProxy::http(
        IpAddr::V4(REFUSING_OUT),
        Some(login("dave", "the-right-one")),
    )
    .await;
    let proxies = vec![
        format!("http://alice:s3cret-http@{}", http.addr()),
        format!("socks5://bob:s3cret-socks@{}", socks.addr()),
        format!("http://carol:s3cret-dead@127.0.0.1:{}", closed_port()),
        format!("http://dave:s3cret-wrong@{}", refusing.addr()),
    ];
    h.write_spider(&spider(&h.crawl, &site, &proxies, true, ""));
    // Debug logs too: the lines about failing proxies must not hold a password either.
    let debug = [("RUST_LOG".to_string(), "debug".to_string())];
    let mut fetcher = h.spawn_with(Role::Fetcher, &[], &debug);
    let mut parser = h.spawn(Role::Parser);
    let mut sink = h.spawn(Role::Sink);
    h.wait_topology(STARTUP).await;
    let seeds: Vec<String> = site.home_urls();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    h.seed(&seeds).await;
    h.wait_idle(CRAWL).await;

    // Nothing lost: every product of every host is stored.
    let home_links: Vec<Link> = site.home_links();
    h.assert_items(&site.expected_items(&home_links, 5)).await;

    // Every request came through a working proxy, and each host saw one address: the
    // first working proxy in its order.
    let log = site.log();
    assert!(!log.is_empty());
    let mut seen: BTreeMap<usize, BTreeSet<IpAddr>> = BTreeMap::new();
    for hit in &log {
        seen.entry(hit.host).or_default().insert(hit.peer);
    }
    let mut moved = 0;
    for (host, ip) in ips.iter().enumerate() {
        let order = jetcrawl_fetcher::http::proxy_order(&ip.to_string(), 4);
        let expected = order
            .iter()
            .copied()
            .find(|p| !failing.contains(p))
            .unwrap_or(0);
        moved += usize::from(failing.contains(&order[0]));
        let want = IpAddr::V4(if expected == 0 { HTTP_OUT } else { SOCKS_OUT });
        assert_eq!(
            seen.get(&host),
            Some(&BTreeSet::from([want])),
            "host {ip} (proxy order {order:?}) saw these addresses"
        );
    }
    assert_eq!(moved, 4, "two hosts stick to each failing proxy first");
    // The HTTP proxy forwards one request per connection: its count is the site's.
    let through_http = log
        .iter()
        .filter(|hit| hit.peer == IpAddr::V4(HTTP_OUT))
        .count();
    assert_eq!(
        http.forwarded(),
        through_http,
        "requests the HTTP proxy forwarded"
    );
    assert!(socks.forwarded() >= 1, "the SOCKS5 proxy forwarded nothing");
    assert_eq!(http.refused() + socks.refused(), 0, "a login was refused");
    assert!(
        refusing.refused() >= 1,
        "the proxy with the wrong login was never asked"
    );
    assert_eq!(refusing.forwarded(), 0);

    // Metrics: requests per proxy, the dead one set aside.
    let (_, metrics) = fetcher.http_get("/metrics").await;
    for (index, label) in [(0, "proxy=\"0\""), (1, "proxy=\"1\"")] {
        assert!(
            metric(
                &metrics,
                "jetcrawl_proxy_requests_total",
                &[label, "outcome=\"ok\""]
            ) > 0.0,
            "no ok requests counted for proxy {index}:\n{metrics}"
        );
    }
    assert!(
        metric(
            &metrics,
            "jetcrawl_proxies_set_aside_total",
            &["proxy=\"2\""]
        ) >= 1.0,
        "the dead proxy was not counted as set aside:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "jetcrawl_proxies_set_aside_total",
            &["proxy=\"0\""]
        ) + metric(
            &metrics,
            "jetcrawl_proxies_set_aside_total",
            &["proxy=\"1\""]
        ),
        0.0,
        "a working proxy was set aside:\n{metrics}"
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;

    // No password anywhere a person looks: logs, page records, dead letters.
    let mut logs = String::new();
    for entry in std::fs::read_dir(h.dir()).expect("test dir").flatten() {
        if entry.path().extension().is_some_and(|x| x == "log") {
            logs.push_str(&String::from_utf8_lossy(
                &std::fs::read(entry.path()).unwrap_or_default(),
            ));
        }
    }
    assert!(
        logs.contains("proxy set aside"),
        "the fetcher did not log the dead proxy"
    );
    let js = jetstream::connect(&h.nats.url()).await;
    let mut records = String::new();
    for m in jetstream::page_records(&js, &h.crawl).await {
        records.push_str(&format!("{:?}", m.headers));
    }
    for d in jetstream::dead_letters(&js, &h.crawl).await {
        records.push_str(&format!("{d:?}"));
    }
    for secret in ["s3cret-http", "s3cret-socks", "s3cret-dead", "s3cret-wrong"] {
        assert!(!logs.contains(secret), "a log holds the password {secret}");
        assert!(
            !records.contains(secret),
            "a record holds the password {secret}"
        );
        assert!(
            !metrics.contains(secret),
            "the metrics hold the password {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_target_is_refused_even_through_a_proxy() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = HostsSite::start(vec![HostSpec::catalogue(
        0,
        Ipv4Addr::new(127, 0, 0, 2),
        1,
        1,
    )])
    .await;
    let http = TestProxy::http(IpAddr::V4(HTTP_OUT), None).await;
    let socks = TestProxy::socks5(IpAddr::V4(SOCKS_OUT), None).await;
    // socks5h: the proxy resolves names, as an HTTP proxy does; only jetcrawl's own
    // check stands between a name and the proxy.
    let proxies = vec![
        format!("http://{}", http.addr()),
        format!("socks5h://{}", socks.addr()),
    ];
    h.write_spider(&spider(&h.crawl, &site, &proxies, false, ""));
    let port = site.base(0).rsplit(':').next().unwrap_or("80").to_string();
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    // A name that resolves to loopback, and a loopback address itself.
    let by_name = format!("http://localhost:{port}/");
    let by_ip = site.base(0) + "/";
    h.seed(&[&by_name, &by_ip]).await;
    h.wait_idle(CRAWL).await;
    let js = jetstream::connect(&h.nats.url()).await;
    let records = jetstream::page_records(&js, &h.crawl).await;
    assert_eq!(records.len(), 2, "one record per seed: {records:#?}");
    for r in &records {
        assert_eq!(
            r.header("Jetcrawl-Error-Kind"),
            Some("private_address"),
            "{r:#?}"
        );
    }
    assert_eq!(
        http.asked() + socks.asked(),
        0,
        "a proxy was asked for a private target"
    );
    assert!(
        site.log().is_empty(),
        "the site was reached: {:?}",
        site.log()
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_hangs_is_set_aside_and_its_hosts_move() {
    let h = Harness::start(HarnessOptions::default()).await;
    let ips = hosts_covering_every_proxy(2);
    let specs: Vec<HostSpec> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HostSpec::catalogue(i, *ip, 1, 3))
        .collect();
    let site = HostsSite::start(specs).await;
    let http = TestProxy::http(IpAddr::V4(HTTP_OUT), None).await;
    let hanging = TestProxy::hanging().await;
    let proxies = vec![
        format!("http://{}", http.addr()),
        format!("http://{}", hanging.addr()),
    ];
    // A request through the hung proxy times out after 2 s; tries to spare for the
    // requests that meet it before it is set aside.
    let extra = "timeout_ms = 2000\nmax_tries = 6";
    h.write_spider(&spider(&h.crawl, &site, &proxies, true, extra));
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    let seeds: Vec<String> = site.home_urls();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    h.seed(&seeds).await;
    h.wait_idle(CRAWL).await;
    h.assert_items(&site.expected_items(&site.home_links(), 5))
        .await;
    assert!(hanging.asked() >= 1, "the hung proxy was never tried");
    for (host, ip) in ips.iter().enumerate() {
        let peers: BTreeSet<IpAddr> = site.requests_to(host).iter().map(|r| r.peer).collect();
        assert_eq!(
            peers,
            BTreeSet::from([IpAddr::V4(HTTP_OUT)]),
            "host {ip} saw these addresses"
        );
    }
    let (_, metrics) = fetcher.http_get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "jetcrawl_proxies_set_aside_total",
            &["proxy=\"1\""]
        ) >= 1.0,
        "the hung proxy was not set aside:\n{metrics}"
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}
