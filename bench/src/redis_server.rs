//! A throwaway `redis-server`: found on PATH, listening on a free loopback port, no
//! persistence, working in a temp dir, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Child,
    port: u16,
    log: PathBuf,
    // Removed after the child is killed (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (looked up on PATH) and waits until it answers PING.
    pub async fn start() -> Result<RedisServer> {
        let binary = find_on_path("redis-server")
            .context("redis-server not found on PATH (apt-get install redis-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("jetcrawl-bench-redis-")
            .tempdir()
            .context("create temp dir")?;
        let port = free_port()?;
        let log = dir.path().join("redis.log");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut server = RedisServer {
            child,
            port,
            log,
            _dir: dir,
        };
        server.wait_ready(Duration::from_secs(10)).await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = redis::Client::open(self.url())?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server exited with {status} at start; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                bail!("redis-server did not answer PING within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `name` in a PATH directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
