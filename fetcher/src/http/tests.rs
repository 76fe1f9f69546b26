//! Tests of the HTTP client against real local servers.

use std::net::SocketAddr;

use super::*;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;

/// Serves `router` on 127.0.0.1 on a free port for the rest of the test.
pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

pub(crate) fn local_config() -> HttpConfig {
    HttpConfig {
        allow_private_networks: true,
        ..HttpConfig::default()
    }
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn gzipped(body: impl IntoResponse) -> Response {
    ([(header::CONTENT_ENCODING, "gzip")], body).into_response()
}

fn streamed<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Body::from_stream(stream).into_response()
}

/// Sends a first chunk, then nothing, forever.
fn stalling() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::once(async { Ok(Bytes::from_static(b"start")) })
        .chain(futures::stream::pending())
}

/// Sends one byte every 50 ms, forever.
fn trickling() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((Ok(Bytes::from_static(b"x")), ()))
    })
}

/// 51 MB of zeros gzipped, built once (its CRC is slow in a debug build).
fn bomb() -> Bytes {
    static BOMB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| Bytes::from(gzip_zeros(200_000)))
        .clone()
}

fn site() -> Router {
    let html = [(header::CONTENT_TYPE, "text/html")];
    let chain = |Path(n): Path<u32>| async move {
        match n {
            0 => "end".into_response(),
            n => redirect(&format!("/chain/{}", n - 1)),
        }
    };
    let fat_headers = || async {
        let mut response = "x".into_response();
        for i in 0..16 {
            let name = header::HeaderName::try_from(format!("x-filler-{i}")).unwrap();
            let value = HeaderValue::try_from("v".repeat(1000)).unwrap();
            response.headers_mut().insert(name, value);
        }
        response
    };
    Router::new()
        .route("/ok", get(move || async move { (html, "hello") }))
        .route("/redirect", get(|| async { redirect("/ok") }))
        .route("/loop", get(|| async { redirect("/loop") }))
        .route("/ftp", get(|| async { redirect("ftp://example.com/x") }))
        .route("/out", get(|| async { redirect("/forbidden/x") }))
        .route("/chain/{n}", get(chain))
        .route("/big", get(|| async { vec![b'a'; 5 * 1024 * 1024] }))
        .route("/small-gzip", get(|| async { gzipped(gzip_zeros(4)) }))
        .route("/bomb", get(|| async { gzipped(bomb()) }))
        .route("/stall", get(|| async { streamed(stalling()) }))
        .route("/trickle", get(|| async { streamed(trickling()) }))
        .route("/headers", get(fat_headers))
        .route(
            "/busy",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "120")],
                )
            }),
        )
}

/// Starts the test site, then GETs each of `paths` with a client built from `cfg`.
async fn fetch(cfg: HttpConfig, paths: &[&str]) -> Vec<Result<HttpResponse, FetchError>> {
    let base = format!("http://{}", serve(site()).await);
    let client = HttpClient::new(cfg).unwrap();
    let mut results = Vec::new();
    for path in paths {
        let target = url::Url::parse(&path.replace("{base}", &base)).unwrap();
        results.push(client.get(&target).await);
    }
    results
}

async fn fetch_one(cfg: HttpConfig, path: &str) -> Result<HttpResponse, FetchError> {
    let mut results = fetch(cfg, &[&format!("{{base}}{path}")]).await;
    results.remove(0)
}

#[tokio::test]
async fn plain_get() {
    let response = fetch_one(local_config(), "/ok").await.unwrap();
    assert_eq!((response.status, &response.body[..]), (200, &b"hello"[..]));
    assert_eq!(response.content_type.as_deref(), Some("text/html"));
    assert!(!response.truncated);
    assert_eq!(response.redirects, 0);
}

#[tokio::test]
async fn redirect_is_followed() {
    let response = fetch_one(local_config(), "/redirect").await.unwrap();
    assert_eq!(response.final_url.path(), "/ok");
    assert_eq!((response.status, response.redirects), (200, 1));
    let response = fetch_one(local_config(), "/chain/3").await.unwrap();
    assert_eq!((&response.body[..], response.redirects), (&b"end"[..], 3));
    assert_eq!(response.final_url.path(), "/chain/0");
}

#[tokio::test]
async fn redirect_loop_fails_fast() {
    let err = fetch_one(local_config(), "/loop").await.unwrap_err();
    assert!(matches!(err, FetchError::TooManyRedirects(_)), "{err}");
}

#[tokio::test]
async fn redirect_cap() {
    let cfg = HttpConfig {
        max_redirects: 3,
        ..local_config()
    };
    let results = fetch(cfg, &["{base}/chain/4", "{base}/chain/3"]).await;
    assert!(matches!(results[0], Err(FetchError::TooManyRedirects(3))));
    assert!(results[1].is_ok());
}

#[tokio::test]
async fn redirect_scheme_and_scope_are_checked() {
    let in_scope = |u: &url::Url| !u.path().starts_with("/forbidden");
    let cfg = HttpConfig {
        allowed_hosts: Some(Arc::new(in_scope)),
        ..local_config()
    };
    let results = fetch(cfg, &["{base}/ftp", "{base}/out"]).await;
    assert!(matches!(&results[0], Err(FetchError::UnsupportedScheme(s)) if s == "ftp"));
    assert!(
        matches!(&results[1], Err(FetchError::RedirectOutOfScope(u)) if u.ends_with("/forbidden/x"))
    );
}

#[tokio::test]
async fn private_addresses_refused_by_default() {
    let paths = [
        "{base}/ok",
        "http://localhost:{port}/ok",
        "http://[::ffff:169.254.169.254]/",
    ];
    let base = format!("http://{}", serve(site()).await);
    let port = url::Url::parse(&base).unwrap().port().unwrap().to_string();
    let paths = paths.map(|p| p.replace("{base}", &base).replace("{port}", &port));
    let results = fetch(HttpConfig::default(), &paths.each_ref().map(String::as_str)).await;
    assert!(matches!(&results[0], Err(FetchError::PrivateAddress(ip)) if ip == "127.0.0.1"));
    // A name is checked after resolution, by the resolver.
    assert!(matches!(&results[1], Err(FetchError::PrivateAddress(h)) if h == "localhost"));
    assert!(matches!(&results[2], Err(FetchError::PrivateAddress(_))));
}

#[tokio::test]
async fn private_addresses_allowed_when_configured() {
    let base = format!("http://{}", serve(site()).await);
    let by_name = base.replace("127.0.0.1", "localhost") + "/ok";
    let results = fetch(local_config(), &[&format!("{base}/ok"), &by_name]).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
}

#[test]
fn refused_ranges() {
    let refused = "127.0.0.1 10.1.2.3 172.16.0.1 192.168.1.1 169.254.169.254 0.0.0.0 \
        100.64.0.1 224.0.0.1 255.255.255.255 192.0.2.1 198.51.100.1 203.0.113.1 240.0.0.1 \
        ::1 :: fc00::1 fd12::1 fe80::1 ff02::1 2001:db8::1 ::ffff:10.0.0.1 \
        ::ffff:127.0.0.1 64:ff9b::a9fe:a9fe 2002:c0a8:0101::1";
    for ip in refused.split_whitespace() {
        assert!(
            is_refused_address(ip.parse().unwrap()),
            "{ip} should be refused"
        );
    }
    let allowed = "93.184.216.34 8.8.8.8 100.128.0.1 2606:4700::1111 ::ffff:8.8.8.8";
    for ip in allowed.split_whitespace() {
        assert!(
            !is_refused_address(ip.parse().unwrap()),
            "{ip} should be allowed"
        );
    }
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let err = fetch(local_config(), &[&target])
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn huge_body_is_truncated() {
    let cfg = HttpConfig {
        max_body_bytes: 64 * 1024,
        ..local_config()
    };
    let response = fetch_one(cfg, "/big").await.unwrap();
    assert_eq!(response.body.len(), 64 * 1024);
    assert!(response.truncated);
}

#[tokio::test]
async fn gzip_is_decoded() {
    let response = fetch_one(local_config(), "/small-gzip").await.unwrap();
    assert_eq!(response.body.len(), 1 + 258 * 4);
    assert!(response.body.iter().all(|&b| b == 0));
    assert!(!response.truncated);
}

#[tokio::test]
async fn gzip_bomb_stops_at_cap() {
    let cfg = HttpConfig {
        max_body_bytes: 1024 * 1024,
        ..local_config()
    };
    bomb(); // build it before the measured fetch
            // ~325 KB on the wire, 51 MB inflated; we inflate and keep exactly the cap.
    let response = fetch_one(cfg, "/bomb").await.unwrap();
    assert_eq!(response.body.len(), 1024 * 1024);
    assert!(response.truncated);
    assert!(
        response.elapsed < Duration::from_secs(2),
        "{:?}",
        response.elapsed
    );
}

#[tokio::test]
async fn stalled_body_times_out() {
    let cfg = HttpConfig {
        read_timeout: Duration::from_millis(300),
        ..local_config()
    };
    let started = std::time::Instant::now();
    let err = fetch_one(cfg, "/stall").await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn trickling_body_hits_total_timeout() {
    let cfg = HttpConfig {
        read_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_millis(500),
        ..local_config()
    };
    let started = std::time::Instant::now();
    let err = fetch_one(cfg, "/trickle").await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn oversized_headers_fail() {
    let cfg = HttpConfig {
        max_header_bytes: 4096,
        ..local_config()
    };
    let results = fetch(cfg, &["{base}/headers", "{base}/ok"]).await;
    assert!(matches!(results[0], Err(FetchError::HeadersTooLarge(4096))));
    assert!(results[1].is_ok());
}

#[tokio::test]
async fn retry_after_is_reported() {
    let response = fetch_one(local_config(), "/busy").await.unwrap();
    assert_eq!(response.status, 429);
    assert_eq!(response.retry_after, Some(Duration::from_secs(120)));
}

#[test]
fn retry_after_parsing() {
    let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
        .unwrap()
        .to_utc();
    let cases = [
        ("120", Some(120)),
        (" 0 ", Some(0)),
        ("86400", Some(3600)),
        ("Wed, 21 Oct 2015 07:29:00 GMT", Some(60)),
        ("Wednesday, 21-Oct-15 07:30:00 GMT", Some(120)),
        ("Wed Oct 21 07:28:30 2015", Some(30)),
        ("Tue, 20 Oct 2015 07:28:00 GMT", Some(0)),
        ("Fri, 21 Oct 2016 07:28:00 GMT", Some(3600)),
        ("soon", None),
        ("-5", None),
    ];
    for (value, seconds) in cases {
        let expected = seconds.map(Duration::from_secs);
        assert_eq!(parse_retry_after(value, now), expected, "{value}");
    }
}

/// A gzip stream of `1 + 258 * runs` zero bytes: one literal, then back-references
/// of length 258 at distance 1, in one fixed-Huffman deflate block (~1600:1).
fn gzip_zeros(runs: usize) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.put(0b011, 3); // BFINAL = 1, BTYPE = 01 (fixed Huffman)
    bits.code(0x30, 8); // literal 0
    for _ in 0..runs {
        bits.code(0xc5, 8); // length code 285: 258 bytes
        bits.code(0, 5); // distance code 0: distance 1
    }
    bits.code(0, 7); // end of block
    let len = 1 + 258 * runs;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(bits.out);
    out.extend(
        bits.acc
            .to_le_bytes()
            .into_iter()
            .take(bits.len.div_ceil(8) as usize),
    );
    // Trailer: CRC-32 of the zeros (table-driven, reflected), then their length.
    let table: Vec<u32> = (0..256u32)
        .map(|n| (0..8).fold(n, |c, _| (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())))
        .collect();
    let crc = (0..len).fold(!0u32, |crc, _| table[(crc & 0xff) as usize] ^ (crc >> 8));
    out.extend((!crc).to_le_bytes());
    out.extend((len as u32).to_le_bytes());
    out
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    len: u32,
}

impl BitWriter {
    /// Appends `count` bits of `value`, least significant first (deflate's bit order).
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += count;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    /// Appends a Huffman code, which deflate stores most significant bit first.
    fn code(&mut self, code: u32, count: u32) {
        self.put(code.reverse_bits() >> (32 - count), count);
    }
}
