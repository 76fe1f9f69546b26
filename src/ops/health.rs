//! `jetcrawl healthcheck`: GET a service's `/healthz` (or `/readyz`) and exit 0 only on
//! 200. The container image has no shell and no curl, so its HEALTHCHECK runs this.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `jetcrawl healthcheck`'s flags.
#[derive(Args)]
pub struct HealthArgs {
    /// The service's `--metrics-addr` (`0.0.0.0` means this host).
    #[arg(long, env = "JETCRAWL_METRICS_ADDR", default_value = "127.0.0.1:9891")]
    pub addr: SocketAddr,
    /// `/healthz` (the process is alive) or `/readyz` (it is consuming).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

/// Exit 0 if the endpoint answers 200 in time, else an error (exit 1).
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let mut addr = args.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let status = tokio::time::timeout(
        Duration::from_secs(args.timeout_secs.max(1)),
        get_status(addr, &args.path),
    )
    .await
    .with_context(|| format!("no answer from {addr} in {} s", args.timeout_secs))??;
    if status != 200 {
        bail!("GET http://{addr}{} answered {status}", args.path);
    }
    println!("ok");
    Ok(())
}

/// The status code of `GET path` on `addr` (HTTP/1.0, so the server closes).
async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| {
            format!(
                "not an HTTP response from {addr}: {:?}",
                line.lines().next()
            )
        })?;
    Ok(status)
}
