//! One benchmark run's world: its own nats-server and redis-server, a fresh PostgreSQL
//! database, the demo site, a spider file, and the `jetcrawl` processes started
//! against them — each a real process whose CPU and memory can be read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::servers::{free_port, nats_client, tail, NatsServer, RedisServer};
use crate::{procs, DEFAULT_PG};

/// The binaries a run starts: `jetcrawl` and `demo-site`, from the directory this
/// benchmark binary runs from (`target/release/`), or `$JETCRAWL_BIN`.
#[derive(Debug, Clone)]
pub struct Bins {
    pub jetcrawl: PathBuf,
    pub demo_site: PathBuf,
}

impl Bins {
    pub fn find() -> Result<Bins> {
        let here = std::env::current_exe().context("current exe")?;
        let dir = here.parent().context("exe dir")?.to_path_buf();
        let jetcrawl = std::env::var_os("JETCRAWL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("jetcrawl"));
        let demo_site = dir.join("demo-site");
        for bin in [&jetcrawl, &demo_site] {
            if !bin.is_file() {
                bail!(
                    "{} not built; run `cargo build --release -p jetcrawl -p jetcrawl-bench --bins` (scripts/bench.sh does)",
                    bin.display()
                );
            }
        }
        Ok(Bins {
            jetcrawl,
            demo_site,
        })
    }
}

/// A child process started by a run: logs to a file, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Waited for by `wait4`: std's `Child` does not know, so Drop must not touch it.
    reaped: bool,
    log: PathBuf,
    /// Where its `/metrics` listens (stages only).
    pub metrics: Option<SocketAddr>,
}

impl Proc {
    pub fn spawn(name: &str, bin: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).context("create log")?;
        // Stages log at their default level (info), as an operator runs them.
        let child = Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            reaped: false,
            log,
            metrics: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> Duration {
        procs::cpu_time(self.pid()).unwrap_or_default()
    }

    /// Peak resident set size so far, bytes.
    pub fn peak_rss(&self) -> u64 {
        procs::peak_rss(self.pid()).unwrap_or_default()
    }

    /// Current resident set size, bytes.
    pub fn rss(&self) -> u64 {
        procs::rss(self.pid()).unwrap_or_default()
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// The sum of every sample of a Prometheus counter on its `/metrics` (all labels).
    pub async fn counter(&self, name: &str) -> Result<f64> {
        let addr = self.metrics.context("no metrics address")?;
        let (status, body) = http_get(addr, "/metrics").await?;
        if status != 200 {
            bail!("{}: /metrics answered {status}", self.name);
        }
        Ok(body
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let addr = self.metrics.context("no metrics address")?;
        let started = Instant::now();
        loop {
            self.check_running()?;
            if matches!(http_get(addr, "/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (SIGKILL after `grace`). Returns the exit status's success.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if started.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit by itself; its resource usage (exact CPU and
    /// peak RSS from the kernel's accounting) comes with it.
    pub fn wait_with_usage(mut self) -> Result<(std::process::ExitStatus, Usage)> {
        let pid = self.child.id() as libc::pid_t;
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid value to pass for the kernel to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for
        // writes. Reaping it here leaves `self.child` with a pid std no longer waits on.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc != pid {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        self.reaped = true;
        use std::os::unix::process::ExitStatusExt;
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Ok((
            std::process::ExitStatus::from_raw(status),
            Usage {
                cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
                peak_rss: usage.ru_maxrss as u64 * 1024,
            },
        ))
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A reaped pid may already belong to another process: leave it alone.
        if self.reaped {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time and peak memory of an exited child.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss: u64,
}

/// GET `path` over HTTP/1.0: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A fresh database on the machine's PostgreSQL (`$JETCRAWL_BENCH_PG`, else
/// `$JETCRAWL_TEST_PG`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`), dropped by [`Database::drop_now`].
pub struct Database {
    admin_url: String,
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl Database {
    pub async fn create() -> Result<Database> {
        let admin_url = std::env::var("JETCRAWL_BENCH_PG")
            .or_else(|_| std::env::var("JETCRAWL_TEST_PG"))
            .unwrap_or_else(|_| DEFAULT_PG.to_string());
        let name = format!("jetcrawl_bench_{:012x}", rand::random::<u64>() >> 16);
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connect to PostgreSQL at {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        Ok(Database {
            admin_url,
            name,
            url,
            pool,
        })
    }

    /// Items stored for `crawl`.
    pub async fn count(&self, crawl: &str) -> Result<i64> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('jetcrawl_items') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(0);
        }
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM jetcrawl_items WHERE crawl = $1")
                .bind(crawl)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// The servers and files of one run.
pub struct Stack {
    pub bins: Bins,
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub db: Database,
    pub crawl: String,
    pub spider: PathBuf,
}

impl Stack {
    /// Starts NATS, Redis and a database; writes `spider` (a spider file's text with
    /// `{crawl}` standing for the crawl's name).
    pub async fn start(bins: &Bins, spider: &str) -> Result<Stack> {
        // JETCRAWL_BENCH_KEEP=1 keeps the spider file and every process's log.
        let keep = std::env::var_os("JETCRAWL_BENCH_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("jetcrawl-bench-")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            eprintln!("run dir (kept): {}", dir.path().display());
        }
        let (nats, redis, db) = tokio::join!(
            NatsServer::start(),
            RedisServer::start(),
            Database::create()
        );
        let crawl = format!("bench_{:08x}", rand::random::<u32>());
        let path = dir.path().join("spider.toml");
        std::fs::write(&path, spider.replace("{crawl}", &crawl))?;
        Ok(Stack {
            bins: bins.clone(),
            dir,
            nats,
            redis,
            db: db?,
            crawl,
            spider: path,
        })
    }

    fn common_args(&self, subcommand: &str) -> Vec<String> {
        vec![
            subcommand.to_string(),
            "--spider".to_string(),
            self.spider.display().to_string(),
            "--nats-url".to_string(),
            self.nats.url(),
        ]
    }

    /// Starts a stage (`fetcher`, `parser`, `sink`) with `extra` flags; waits until ready.
    pub async fn spawn_stage(&self, role: &str, n: usize, extra: &[&str]) -> Result<Proc> {
        let mut args = self.common_args(role);
        match role {
            "parser" => args.extend(["--redis-url".to_string(), self.redis.url()]),
            "sink" => args.extend(["--database-url".to_string(), self.db.url.clone()]),
            _ => {}
        }
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        args.extend(["--metrics-addr".to_string(), metrics.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let name = format!("{role}-{n}");
        let mut proc = Proc::spawn(&name, &self.bins.jetcrawl, &args, self.dir.path())?;
        proc.metrics = Some(metrics);
        proc.wait_ready(Duration::from_secs(30)).await?;
        Ok(proc)
    }

    /// Runs a `jetcrawl` subcommand to completion.
    pub async fn run(&self, subcommand: &str, extra: &[&str]) -> Result<()> {
        let mut args = self.common_args(subcommand);
        if subcommand == "init" {
            args.extend(["--database-url".to_string(), self.db.url.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = tokio::process::Command::new(&self.bins.jetcrawl)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "jetcrawl {subcommand} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A JetStream context on the run's NATS, connected as the stages connect.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        let client = nats_client(&self.nats.url())
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(async_nats::jetstream::new(client))
    }

    /// NATS's and Redis's CPU time so far.
    pub fn server_cpu(&self) -> (Duration, Duration) {
        let of = |pid: Option<u32>| pid.and_then(procs::cpu_time).unwrap_or_default();
        (of(self.nats.pid()), of(self.redis.pid()))
    }

    pub async fn finish(self) {
        self.db.drop_now().await;
    }
}

/// The demo site as a child process; its base URL from its first line of output.
pub struct SiteProc {
    pub proc: Proc,
    pub base: String,
}

impl SiteProc {
    /// The site's request counts (`/_bench/hits`).
    pub async fn hits(&self) -> Result<crate::demo_site::Hits> {
        let addr: SocketAddr = self
            .base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .context("demo site address")?;
        let (status, body) = http_get(addr, "/_bench/hits").await?;
        if status != 200 {
            bail!("demo site /_bench/hits answered {status}");
        }
        crate::demo_site::Hits::parse(&body).context("demo site hits: unreadable")
    }

    pub async fn start(bins: &Bins, pages: usize, dir: &Path) -> Result<SiteProc> {
        let args = vec![
            "--pages".to_string(),
            pages.to_string(),
            "--port".to_string(),
            "0".to_string(),
        ];
        let proc = Proc::spawn("demo-site", &bins.demo_site, &args, dir)?;
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(proc.log()).unwrap_or_default();
            if let Some(base) = text.lines().find(|l| l.starts_with("http://")) {
                let base = base.trim().to_string();
                return Ok(SiteProc { proc, base });
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("demo-site printed no URL; log:\n{}", tail(proc.log(), 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
