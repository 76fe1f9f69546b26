//! Outgoing proxies the proxy tests put between the fetcher and the site: an HTTP proxy
//! (absolute-URI forwarding for `http://` targets, `CONNECT` tunnels for the rest) and a
//! SOCKS5 proxy, each with an optional login, each connecting to targets from a source
//! address of its own (so the site's log shows which proxy a request came through), and
//! each counting what it forwarded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A login a proxy requires.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password: String,
}

struct Shared {
    /// Source address of connections to targets.
    source: IpAddr,
    login: Option<Login>,
    /// Requests (HTTP) or CONNECT commands (SOCKS5) received, forwarded or not.
    asked: AtomicUsize,
    /// HTTP: requests forwarded and tunnels opened; SOCKS5: connections opened.
    forwarded: AtomicUsize,
    /// Clients turned away for a missing or wrong login.
    refused: AtomicUsize,
}

/// A running test proxy.
pub struct TestProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TestProxy {
    /// An HTTP proxy on 127.0.0.1:<free port>, connecting out from `source`.
    pub async fn http(source: IpAddr, login: Option<Login>) -> TestProxy {
        TestProxy::start(source, login, Kind::Http).await
    }

    /// A proxy that accepts connections and never answers (a hung proxy).
    pub async fn hanging() -> TestProxy {
        TestProxy::start(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), None, Kind::Hang).await
    }

    /// A SOCKS5 proxy on 127.0.0.1:<free port>, connecting out from `source`.
    pub async fn socks5(source: IpAddr, login: Option<Login>) -> TestProxy {
        TestProxy::start(source, login, Kind::Socks5).await
    }

    async fn start(source: IpAddr, login: Option<Login>, kind: Kind) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            source,
            login,
            asked: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Http => serve_http(client, &state).await,
                        Kind::Socks5 => serve_socks5(client, &state).await,
                        Kind::Hang => {
                            state.asked.fetch_add(1, Ordering::SeqCst);
                            // Hold the connection, say nothing, until the client leaves.
                            let mut client = client;
                            let mut sink = Vec::new();
                            client
                                .read_to_end(&mut sink)
                                .await
                                .map(|_| ())
                                .map_err(Into::into)
                        }
                    };
                });
            }
        });
        TestProxy { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests (HTTP) or connections (SOCKS5) forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Requests (HTTP) or connection commands (SOCKS5) received, whatever became of them.
    pub fn asked(&self) -> usize {
        self.shared.asked.load(Ordering::SeqCst)
    }

    /// Clients turned away for their login.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Http,
    Socks5,
    Hang,
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn connect_from(source: IpAddr, target: &str) -> Res<TcpStream> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or("no address of the right family")?;
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket.connect(addr).await?)
}

/// Reads up to the end of a request head (`\r\n\r\n`); what follows stays unread.
async fn read_head(stream: &mut TcpStream) -> Res<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err("client closed".into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err("head too large".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn basic(login: &Login) -> String {
    let pair = format!("{}:{}", login.user, login.password);
    format!("Basic {}", base64_encode(pair.as_bytes()))
}

/// Plain base64 (standard alphabet, padded): enough for a Basic login.
fn base64_encode(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One client connection: one forwarded request (then close) or one tunnel.
async fn serve_http(mut client: TcpStream, state: &Shared) -> Res<()> {
    let head = read_head(&mut client).await?;
    state.asked.fetch_add(1, Ordering::SeqCst);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if let Some(login) = &state.login {
        let given = headers
            .iter()
            .find(|(n, _)| n == "proxy-authorization")
            .map(|(_, v)| v.as_str());
        if given != Some(basic(login).as_str()) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            client
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\
                      connection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "CONNECT" {
        let Ok(mut upstream) = connect_from(state.source, target).await else {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        };
        state.forwarded.fetch_add(1, Ordering::SeqCst);
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    let url = url::Url::parse(target)?;
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let Ok(mut upstream) = connect_from(state.source, &format!("{host}:{port}")).await else {
        client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    state.forwarded.fetch_add(1, Ordering::SeqCst);
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
        ) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    // The response runs to the upstream's close; then this connection closes too.
    tokio::io::copy(&mut upstream, &mut client).await?;
    client.shutdown().await?;
    Ok(())
}

/// RFC 1928 (CONNECT only) with RFC 1929 username/password when a login is set.
async fn serve_socks5(mut client: TcpStream, state: &Shared) -> Res<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods).await?;
    let wanted = if state.login.is_some() { 2 } else { 0 };
    if greeting[0] != 5 || !methods.contains(&wanted) {
        client.write_all(&[5, 0xff]).await?;
        return Ok(());
    }
    client.write_all(&[5, wanted]).await?;
    if let Some(login) = &state.login {
        let mut ver_len = [0u8; 2];
        client.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; ver_len[1] as usize];
        client.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        client.read_exact(&mut plen).await?;
        let mut password = vec![0u8; plen[0] as usize];
        client.read_exact(&mut password).await?;
        if user != login.user.as_bytes() || password != login.password.as_bytes() {
            state.refused.fetch_add(1, Ordering::SeqCst);
            client.write_all(&[1, 1]).await?;
            return Ok(());
        }
        client.write_all(&[1, 0]).await?;
    }
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    state.asked.fetch_add(1, Ordering::SeqCst);
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return Err("address type".into()),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    if req[1] != 1 {
        client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(());
    }
    let Ok(mut upstream) = connect_from(state.source, &format!("{host}:{port}")).await else {
        client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(());
    };
    state.forwarded.fetch_add(1, Ordering::SeqCst);
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(super::base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(super::base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(
            super::base64_encode(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
