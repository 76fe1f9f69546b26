//! The site the export tests crawl: a few pages whose headers and bytes the test knows,
//! so what the WARC file holds can be compared with what the site served.

use std::io::Write as _;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use tokio::task::JoinHandle;

/// One page as the site serves it.
#[derive(Debug, Clone)]
pub struct Served {
    pub path: &'static str,
    pub status: u16,
    /// Headers sent (besides what axum adds: content-length, date).
    pub headers: Vec<(&'static str, &'static str)>,
    /// Bytes on the wire.
    pub wire: Vec<u8>,
    /// The body a crawl stores: decompressed, as UTF-8 for textual types, nothing for others.
    pub stored: Vec<u8>,
}

/// `Wed, 01 Jan 2025 00:00:00 GMT` etc. are fixed so the test can compare them.
pub fn pages(down_url: &str) -> Vec<Served> {
    let home = format!(
        "<html><body><h1>Archive home</h1>\
         <a href=\"/cp1252.html\">a</a> <a href=\"/gzip.html\">b</a> \
         <a href=\"/binary.bin\">c</a> <a href=\"/junk.html\">d</a> \
         <a href=\"/missing.html\">e</a> <a href=\"{down_url}\">f</a></body></html>"
    );
    let gz_html = b"<html><body><h1>Gzipped page</h1></body></html>".to_vec();
    let junk = b"<html><body><h1>Junk bytes</h1><p>\x00\xff\xfe\x80 end</p></body></html>".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    vec![
        Served {
            path: "/",
            status: 200,
            headers: vec![
                ("content-type", "text/html; charset=utf-8"),
                ("etag", "\"home-1\""),
                ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT"),
                ("x-archive-test", "home"),
                ("set-cookie", "session=do-not-archive"),
            ],
            wire: home.clone().into_bytes(),
            stored: home.into_bytes(),
        },
        Served {
            path: "/cp1252.html",
            status: 200,
            headers: vec![
                ("content-type", "text/html; charset=windows-1252"),
                ("x-archive-test", "cp1252"),
            ],
            wire: b"<html><body><h1>Caf\xe9 cr\xe8me</h1></body></html>".to_vec(),
            stored: "<html><body><h1>Café crème</h1></body></html>"
                .as_bytes()
                .to_vec(),
        },
        Served {
            path: "/gzip.html",
            status: 200,
            headers: vec![
                ("content-type", "text/html; charset=utf-8"),
                ("content-encoding", "gzip"),
                ("x-archive-test", "gzip"),
            ],
            wire: gzip(&gz_html),
            stored: gz_html,
        },
        Served {
            path: "/binary.bin",
            status: 200,
            headers: vec![
                ("content-type", "application/octet-stream"),
                ("x-archive-test", "binary"),
            ],
            wire: binary,
            stored: Vec::new(),
        },
        Served {
            path: "/junk.html",
            status: 200,
            headers: vec![
                ("content-type", "text/html; charset=utf-8"),
                ("x-archive-test", "junk"),
            ],
            stored: String::from_utf8_lossy(&junk).into_owned().into_bytes(),
            wire: junk,
        },
        Served {
            path: "/missing.html",
            status: 404,
            headers: vec![
                ("content-type", "text/html; charset=utf-8"),
                ("x-archive-test", "missing"),
            ],
            wire: b"<h1>Not here</h1>".to_vec(),
            stored: b"<h1>Not here</h1>".to_vec(),
        },
    ]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

/// The running site.
pub struct ArchiveSite {
    pub addr: SocketAddr,
    /// A URL on this host whose port nothing listens on.
    pub down_url: String,
    task: JoinHandle<()>,
}

impl ArchiveSite {
    pub async fn start() -> ArchiveSite {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to close");
        let down_url = format!(
            "http://127.0.0.1:{}/down.html",
            closed.local_addr().expect("addr").port()
        );
        drop(closed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind site");
        let addr = listener.local_addr().expect("site addr");
        let served = pages(&down_url);
        let app = Router::new().fallback(move |req: Request| {
            let served = served.clone();
            async move { reply(&served, req.uri().path()) }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ArchiveSite {
            addr,
            down_url,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pages(&self) -> Vec<Served> {
        pages(&self.down_url)
    }
}

impl Drop for ArchiveSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(served: &[Served], path: &str) -> Response {
    let Some(page) = served.iter().find(|p| p.path == path) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::empty())
            .expect("404");
    };
    let mut builder = Response::builder().status(page.status);
    for (name, value) in &page.headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Body::from(page.wire.clone()))
        .expect("valid response")
}
