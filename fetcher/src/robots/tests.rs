use super::*;
use crate::http::tests::{local_config, serve};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A site whose /robots.txt answers `status` with `body`, counting requests.
async fn site(status: StatusCode, body: &'static str) -> (url::Url, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/robots.txt",
            get(move |State(hits): State<Arc<AtomicUsize>>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                // Slow enough that concurrent checks really overlap.
                tokio::time::sleep(Duration::from_millis(100)).await;
                (status, body).into_response()
            }),
        )
        .with_state(Arc::clone(&hits));
    let addr = serve(router).await;
    (url::Url::parse(&format!("http://{addr}/")).unwrap(), hits)
}

fn cache(ttl: Duration) -> RobotsCache {
    let client = HttpClient::new(local_config()).unwrap();
    RobotsCache::new(
        client,
        "jetcrawl/0.1 (+https://example.org/bot)".into(),
        100,
        ttl,
        None,
    )
}

const DAY: Duration = Duration::from_secs(86400);

#[tokio::test]
async fn disallowed_path() {
    let robots = "User-agent: *\nDisallow: /private/\n\nUser-agent: jetcrawl\nDisallow: /secret\nAllow: /secret/ok\n";
    let (base, _) = site(StatusCode::OK, robots).await;
    let cache = cache(DAY);
    let check = |path: &str| {
        let cache = cache.clone();
        let url = base.join(path).unwrap();
        async move { cache.check(&url, "k").await.allowed() }
    };
    assert!(!check("/secret/x").await);
    assert!(check("/secret/ok/1").await);
    // Our own group applies, not the '*' one.
    assert!(check("/private/x").await);
    assert!(check("/").await);
}

#[tokio::test]
async fn not_found_allows_everything() {
    let (base, _) = site(StatusCode::NOT_FOUND, "nope").await;
    let verdict = cache(DAY)
        .check(&base.join("/anything").unwrap(), "k")
        .await;
    assert_eq!(verdict, RobotsVerdict::Allowed { crawl_delay: None });
}

#[tokio::test]
async fn server_error_defers_for_a_while_and_says_so() {
    let (base, hits) = site(StatusCode::INTERNAL_SERVER_ERROR, "oops").await;
    let cache = cache(DAY);
    let url = base.join("/page").unwrap();
    for _ in 0..2 {
        match cache.check(&url, "k").await {
            RobotsVerdict::Unavailable {
                retry_in,
                reason,
                unreachable,
                ..
            } => {
                assert!(retry_in <= UNREACHABLE_RETRY);
                assert!(reason.contains("500"), "{reason}");
                assert!(!unreachable, "the server answered");
            }
            other => panic!("a 500 must defer the URL, not decide it: {other:?}"),
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "cached until the retry time"
    );
}

/// /robots.txt answers 503 `failing` times, then a real file.
async fn recovering_site(failing: usize) -> (url::Url, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/robots.txt",
            get(move |State(hits): State<Arc<AtomicUsize>>| async move {
                if hits.fetch_add(1, Ordering::SeqCst) < failing {
                    (StatusCode::SERVICE_UNAVAILABLE, "later").into_response()
                } else {
                    (StatusCode::OK, "User-agent: *\nDisallow: /no\n").into_response()
                }
            }),
        )
        .with_state(Arc::clone(&hits));
    (
        url::Url::parse(&format!("http://{}/", serve(router).await)).unwrap(),
        hits,
    )
}

#[tokio::test]
async fn unavailable_robots_backs_off_then_applies_once_it_answers() {
    let (base, hits) = recovering_site(2).await;
    let cache = cache(DAY);
    let url = base.join("/page").unwrap();
    let mut waits = Vec::new();
    let verdict = loop {
        match cache.check(&url, "k").await {
            RobotsVerdict::Unavailable { retry_in, .. } => {
                waits.push(retry_in);
                tokio::time::sleep(retry_in + Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert!(verdict.allowed());
    assert!(!cache.check(&base.join("/no").unwrap(), "k").await.allowed());
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(
        waits[1] > waits[0] + Duration::from_millis(500),
        "back-off doubles: {waits:?}"
    );
}

#[tokio::test]
async fn unreachable_host_defers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = url::Url::parse(&format!("http://{addr}/page")).unwrap();
    assert!(matches!(
        cache(DAY).check(&url, "k").await,
        RobotsVerdict::Unavailable {
            unreachable: true,
            ..
        }
    ));
}

#[tokio::test]
async fn robots_fetch_takes_its_turn_at_the_host() {
    let (base, _) = site(StatusCode::NOT_FOUND, "").await;
    let gate = Politeness::new(crate::politeness::PolitenessConfig {
        delay: Duration::from_millis(400),
        concurrency: 1,
        autothrottle: false,
        max_in_flight: usize::MAX,
        max_waiting: None,
        max_wait: None,
    });
    let client = HttpClient::new(local_config()).unwrap();
    let cache = RobotsCache::new(client, "jetcrawl".into(), 10, DAY, Some(gate.clone()));
    assert!(cache.check(&base.join("/a").unwrap(), "h").await.allowed());
    let t = Instant::now();
    drop(gate.acquire("h", None, 1).await.unwrap());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "the page waits the delay after robots.txt: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn crawl_delay_is_reported() {
    let (base, _) = site(
        StatusCode::OK,
        "User-agent: *\nCrawl-delay: 2.5\nDisallow: /x\n",
    )
    .await;
    let verdict = cache(DAY).check(&base.join("/page").unwrap(), "k").await;
    assert_eq!(
        verdict,
        RobotsVerdict::Allowed {
            crawl_delay: Some(Duration::from_millis(2500))
        }
    );
}

#[tokio::test]
async fn concurrent_checks_share_one_fetch() {
    let (base, hits) = site(StatusCode::OK, "User-agent: *\nDisallow: /no\n").await;
    let cache = cache(DAY);
    let checks = (0..20).map(|i| {
        let cache = cache.clone();
        let url = base.join(&format!("/page/{i}")).unwrap();
        tokio::spawn(async move { cache.check(&url, "k").await })
    });
    for verdict in futures::future::join_all(checks).await {
        assert!(verdict.unwrap().allowed());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn entries_expire_after_ttl() {
    let (base, hits) = site(StatusCode::OK, "User-agent: *\nDisallow: /no\n").await;
    let cache = cache(Duration::from_millis(200));
    let url = base.join("/page").unwrap();
    cache.check(&url, "k").await;
    cache.check(&url, "k").await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    cache.check(&url, "k").await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn capacity_is_bounded() {
    let (base, _) = site(StatusCode::NOT_FOUND, "").await;
    let client = HttpClient::new(local_config()).unwrap();
    let cache = RobotsCache::new(client, "jetcrawl".into(), 2, DAY, None);
    let port = base.port().unwrap();
    for host in ["127.0.0.1", "localhost", "127.0.0.1"] {
        let url = url::Url::parse(&format!("http://{host}:{port}/")).unwrap();
        cache.check(&url, "k").await;
    }
    // Different ports are different origins.
    cache
        .check(&url::Url::parse("http://127.0.0.1:1/").unwrap(), "k")
        .await;
    let entries = cache.inner.entries.lock().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.contains_key(&format!("http://127.0.0.1:{port}")));
}

#[test]
fn helpers() {
    assert_eq!(product_token("jetcrawl/0.1 (+https://x)"), "jetcrawl");
    assert_eq!(product_token("jetcrawl (+https://x)"), "jetcrawl");
    assert_eq!(product_token("Bot"), "Bot");
    let url = url::Url::parse("https://Example.COM/a?b").unwrap();
    assert_eq!(origin_of(&url).as_deref(), Some("https://example.com:443"));
    assert_eq!(origin_of(&url::Url::parse("ftp://x/").unwrap()), None);
    assert_eq!(truncate_at_line(b"a\nbb\nccc", 6), b"a\nbb\n");
    assert_eq!(truncate_at_line(b"abc", 6), b"abc");
}

#[test]
fn oversized_robots_is_cut() {
    let mut body = b"User-agent: *\nDisallow: /early\n".to_vec();
    body.extend(std::iter::repeat_n(b'#', MAX_ROBOTS_BYTES));
    body.extend_from_slice(b"\nDisallow: /late\n");
    let robot = Robot::new("jetcrawl", truncate_at_line(&body, MAX_ROBOTS_BYTES)).unwrap();
    assert!(!robot.allowed("/early"));
    assert!(robot.allowed("/late"));
}
