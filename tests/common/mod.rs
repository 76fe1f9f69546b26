//! End-to-end test harness: real servers, a real local web site, real crawler
//! processes, each test in its own crawl namespace and temp dir.
//!
//! Layout: `servers` (NATS and Redis processes) · `db` (a PostgreSQL database per test,
//! stored items) · `catalogue` (the test site's pages and expected items) · `site` (the
//! axum server for it, request log) · `proxy` (a cuttable TCP forwarder) · `proxies`
//! (HTTP and SOCKS5 proxies that count what they forward) · `service`
//! (crawler child processes) · `jetstream` (stream/consumer state, idle detection, dead
//! letters, stored records) · `hostile` (the site's hostile pages under `/hostile/`,
//! reached only when seeded) · `hosts` (a site of many loopback hosts, every request
//! logged with its sender and timing) · this file (`Harness`, `wait_until`, item comparison, log
//! dumps on failure).
#![allow(dead_code, unused_imports)]

pub mod catalogue;
pub mod db;
pub mod hostile;
pub mod hosts;
pub mod jetstream;
pub mod proxies;
pub mod proxy;
pub mod servers;
pub mod service;
pub mod site;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use catalogue::ExpectedItem;
pub use db::{StoredItem, TestDb};
pub use proxy::TcpProxy;
pub use servers::{NatsCluster, NatsServer, RedisCluster, RedisServer};
pub use service::{Role, Service, ServiceSpec, ServiceState};
pub use site::{Site, SiteOptions};

/// Polls `cond` every 150 ms until it is true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_checked(timeout, what, &|| {}, cond).await;
}

/// [`wait_until`], running `check` (which may panic) before every poll.
pub async fn wait_until_checked<F, Fut>(
    timeout: Duration,
    what: &str,
    check: &dyn Fn(),
    mut cond: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        check();
        if cond().await {
            return;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// A short random hex string (crawl names, database names).
pub fn random_hex() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

// ------------------------------------------------------------------------------------
// logs

/// Prints the tail of every log it knows when dropped during a panic: the
/// services' (`*.log` in the test dir), then the servers'.
struct LogDump {
    service_dir: PathBuf,
    server_logs: Vec<PathBuf>,
}

impl LogDump {
    /// Lines per service log (`JETCRAWL_TEST_LOG_LINES`, default 60).
    fn lines() -> usize {
        std::env::var("JETCRAWL_TEST_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60)
    }

    fn service_logs(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.service_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    fn print(log: &Path, lines: usize) {
        let text = servers::tail(log, lines);
        let text = if text.is_empty() { "(empty)" } else { &text };
        eprintln!(
            "\n===== {} (last {lines} lines) =====\n{text}",
            log.display()
        );
    }
}

impl Drop for LogDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in self.service_logs() {
            Self::print(&log, Self::lines());
        }
        for log in &self.server_logs {
            Self::print(log, 15);
        }
        eprintln!(
            "\n(set JETCRAWL_TEST_KEEP=1 to keep {}, JETCRAWL_TEST_LOG_LINES=N for longer tails)",
            self.service_dir.display()
        );
    }
}

// ------------------------------------------------------------------------------------
// harness

/// Knobs for one test's crawl.
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    pub site: SiteOptions,
    /// `[politeness] delay_ms` of the spider.
    pub delay_ms: u64,
}

/// Spider settings a test adds to the harness's spider file. A separate type (not a
/// field of [`HarnessOptions`]), so existing `HarnessOptions { .. }` literals still build.
#[derive(Debug, Clone, Default)]
pub struct SpiderExtras {
    /// `key = value` lines added inside the `[http]` table, which the harness writes
    /// once (TOML forbids a second `[http]` header).
    pub http: String,
    /// Tables appended at the end of the file, e.g. more `[[items]]` rules.
    pub tables: String,
}

/// What the services' `NATS_URL` points at: one server, or a cluster.
pub trait Nats {
    /// The `NATS_URL` (a cluster's servers comma-separated).
    fn url(&self) -> String;
    /// The server logs, for the dump on failure.
    fn log_paths(&self) -> Vec<PathBuf>;
}

impl Nats for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }
    fn log_paths(&self) -> Vec<PathBuf> {
        vec![self.log_path()]
    }
}

impl Nats for NatsCluster {
    fn url(&self) -> String {
        NatsCluster::url(self)
    }
    fn log_paths(&self) -> Vec<PathBuf> {
        NatsCluster::log_paths(self)
    }
}

/// Everything one test needs: the servers, the site, the spider file, and the
/// processes started through it (which it watches for unexpected exits). `N` is the
/// NATS the services use: one server unless a test starts a cluster.
pub struct Harness<N: Nats = NatsServer> {
    // Dropped first, so the logs are printed while they still exist.
    logs: LogDump,
    services: Mutex<Vec<Arc<ServiceState>>>,
    spawned: AtomicUsize,
    /// The crawl name (spider `name`): `t_<hex>`.
    pub crawl: String,
    pub spider: PathBuf,
    pub site: Site,
    pub nats: N,
    pub redis: RedisServer,
    /// When set ([`Harness::start_on_redis_cluster`]), the services' dupefilter is on
    /// this cluster instead of on `redis`.
    pub redis_cluster: Option<RedisCluster>,
    pub db: TestDb,
    dir: TempDir,
}

impl Harness {
    /// Starts the site, NATS, Redis and a database, and writes the spider file.
    pub async fn start(options: HarnessOptions) -> Harness {
        Harness::start_with(options, SpiderExtras::default()).await
    }

    /// [`Harness::start`], with the services' dupefilter on a 3-master Redis Cluster.
    pub async fn start_on_redis_cluster(options: HarnessOptions) -> Harness {
        let (mut h, cluster) = tokio::join!(Harness::start(options), RedisCluster::start());
        h.logs.server_logs.extend(cluster.log_paths());
        h.redis_cluster = Some(cluster);
        h
    }

    /// [`Harness::start`], with `extras` in the spider file.
    pub async fn start_with(options: HarnessOptions, extras: SpiderExtras) -> Harness {
        Harness::start_on(options, extras, NatsServer::start()).await
    }
}

impl<N: Nats> Harness<N> {
    /// The `REDIS_URL` the services get: the cluster's nodes, if there is one.
    pub fn redis_url(&self) -> String {
        match &self.redis_cluster {
            Some(cluster) => cluster.url(),
            None => self.redis.url(),
        }
    }

    /// [`Harness::start_with`] on the NATS `nats` starts (e.g. [`NatsCluster::start`]).
    pub async fn start_on(
        options: HarnessOptions,
        extras: SpiderExtras,
        nats: impl Future<Output = N>,
    ) -> Harness<N> {
        let (site, nats, redis, db) = tokio::join!(
            Site::start(options.site.clone()),
            nats,
            RedisServer::start(),
            TestDb::create(),
        );
        let keep = std::env::var_os("JETCRAWL_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("jetcrawl-test-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temp dir");
        if keep {
            eprintln!("test dir (kept): {}", dir.path().display());
        }
        let crawl = format!("t_{}", random_hex());
        let spider = dir.path().join("spider.toml");
        std::fs::write(
            &spider,
            spider_toml_with(&crawl, &site, options.delay_ms, &extras),
        )
        .expect("write spider");
        let logs = LogDump {
            service_dir: dir.path().to_path_buf(),
            server_logs: [nats.log_paths(), vec![redis.log_path()]].concat(),
        };
        Harness {
            logs,
            services: Mutex::new(Vec::new()),
            spawned: AtomicUsize::new(0),
            crawl,
            spider,
            site,
            nats,
            redis,
            redis_cluster: None,
            db,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn next_log(&self, name: &str) -> (String, PathBuf) {
        let n = self.spawned.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("{name}-{n}");
        let log = self.dir.path().join(format!("{name}.log"));
        (name, log)
    }

    /// `<subcommand> --spider S --nats-url U`, plus `--redis-url` for the parser and
    /// `--database-url` for the sink (the CLI takes each flag only where it is used);
    /// all three URLs are also in the environment, which every subcommand reads.
    fn command(
        &self,
        subcommand: &str,
        database_url: &str,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let mut args = vec![
            subcommand.to_string(),
            "--spider".to_string(),
            self.spider.display().to_string(),
            "--nats-url".to_string(),
            self.nats.url(),
        ];
        match subcommand {
            "parser" | "replay" => args.extend(["--redis-url".to_string(), self.redis_url()]),
            "sink" | "init" => {
                args.extend(["--database-url".to_string(), database_url.to_string()])
            }
            _ => {}
        }
        let env = vec![
            ("NATS_URL".to_string(), self.nats.url()),
            ("REDIS_URL".to_string(), self.redis_url()),
            ("DATABASE_URL".to_string(), database_url.to_string()),
            (
                "RUST_LOG".to_string(),
                std::env::var("JETCRAWL_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            ),
            ("NO_COLOR".to_string(), "1".to_string()),
        ];
        (args, env)
    }

    /// A fetcher, a parser and a sink, started in that order.
    pub fn spawn_pipeline(&self) -> [Service; 3] {
        [
            self.spawn(Role::Fetcher),
            self.spawn(Role::Parser),
            self.spawn(Role::Sink),
        ]
    }

    /// Starts a service against this harness's servers.
    pub fn spawn(&self, role: Role) -> Service {
        self.spawn_with_database_url(role, &self.db.url())
    }

    /// Replaces the spider file, for a test crawling another site than [`Site`]
    /// (its `name` must be [`Harness::crawl`]). Call it before starting services.
    pub fn write_spider(&self, toml: &str) {
        std::fs::write(&self.spider, toml).expect("write spider");
    }

    /// Starts a service with `extra_args` after the usual flags and `extra_env` in its
    /// environment (e.g. `--local-address` for a fetcher).
    pub fn spawn_with(
        &self,
        role: Role,
        extra_args: &[String],
        extra_env: &[(String, String)],
    ) -> Service {
        self.spawn_service(role, &self.db.url(), extra_args, extra_env)
    }

    /// Starts a service whose database URL is `database_url` (e.g. through a proxy).
    pub fn spawn_with_database_url(&self, role: Role, database_url: &str) -> Service {
        self.spawn_service(role, database_url, &[], &[])
    }

    fn spawn_service(
        &self,
        role: Role,
        database_url: &str,
        extra_args: &[String],
        extra_env: &[(String, String)],
    ) -> Service {
        let (name, log) = self.next_log(role.as_str());
        let (mut args, mut env) = self.command(role.as_str(), database_url);
        args.extend(["--metrics-addr".to_string(), "127.0.0.1:0".to_string()]);
        args.extend(extra_args.iter().cloned());
        env.extend(extra_env.iter().cloned());
        let service = Service::spawn(ServiceSpec {
            name,
            args,
            env,
            log,
        });
        self.services
            .lock()
            .expect("services")
            .push(service.state());
        service
    }

    /// Runs `jetcrawl seed --spider S URL...` to completion; panics unless it exits 0.
    pub async fn seed(&self, urls: &[&str]) {
        let (name, log) = self.next_log("seed");
        let (mut args, env) = self.command("seed", &self.db.url());
        args.extend(urls.iter().map(|u| u.to_string()));
        let mut seed = Service::spawn(ServiceSpec {
            name: name.clone(),
            args,
            env,
            log: log.clone(),
        });
        let status = seed.wait_exit(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "{name} exited with {status}; log:\n{}",
            servers::tail(&log, 40)
        );
    }

    /// Runs a one-shot subcommand (`status`, `replay`, ...) for the crawl to its end,
    /// asserts it succeeded, and returns what it printed on stdout.
    pub async fn run_command(&self, subcommand: &str, extra: &[&str]) -> String {
        let out = self.run_command_output(subcommand, extra).await;
        assert!(
            out.status.success(),
            "jetcrawl {subcommand} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a one-shot subcommand to its end, however it ends.
    pub async fn run_command_output(
        &self,
        subcommand: &str,
        extra: &[&str],
    ) -> std::process::Output {
        let (mut args, env) = self.command(subcommand, &self.db.url());
        args.extend(extra.iter().map(|a| a.to_string()));
        let bin = std::env::var("JETCRAWL_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
        tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(bin)
                .args(&args)
                .envs(env)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("jetcrawl {subcommand} did not finish in 120 s"))
        .unwrap_or_else(|e| panic!("run jetcrawl {subcommand}: {e}"))
    }

    /// What `jetcrawl status --json` prints for the crawl, parsed.
    pub async fn status_json(&self) -> serde_json::Value {
        let out = self.run_command("status", &["--json"]).await;
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("jetcrawl status --json printed no JSON ({e}): {out}"))
    }

    /// Panics if a service this harness started has exited without being asked to.
    pub fn check_services(&self) {
        for s in self.services.lock().expect("services").iter() {
            if s.died_unexpectedly() {
                panic!(
                    "{} exited unexpectedly with {:?}; log tail:\n{}",
                    s.name,
                    s.exited(),
                    servers::tail(&s.log, 40)
                );
            }
        }
    }

    /// Lines of the services' logs that report a panic (a handler's, caught or not): a
    /// service that survives a panic still failed the message it was working on.
    pub fn panics_in_logs(&self) -> Vec<String> {
        let mut found = Vec::new();
        for path in self.logs.service_logs() {
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.contains("panicked") {
                    // The panic message is on the line after "thread ... panicked at ...".
                    let message = lines.get(i + 1).copied().unwrap_or_default();
                    found.push(format!("{name}: {line} {message}"));
                }
            }
        }
        found
    }

    /// Fails if a service died or logged a panic.
    pub fn check_health(&self) {
        self.check_services();
        let panics = self.panics_in_logs();
        assert!(
            panics.is_empty(),
            "a service panicked:\n  {}",
            panics.join("\n  ")
        );
    }

    /// [`wait_until`], failing fast if a service dies meanwhile.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until_checked(timeout, what, &|| self.check_services(), cond).await;
    }

    /// Waits until the crawl is finished (see [`jetstream::wait_crawl_idle`]), failing
    /// fast if a service dies meanwhile.
    pub async fn wait_idle(&self, timeout: Duration) {
        jetstream::wait_crawl_idle_checked(&self.nats.url(), &self.crawl, timeout, &|| {
            self.check_services()
        })
        .await;
    }

    /// Waits until the services have created what they create at start: the four
    /// streams, the durable consumers of [`jetstream::CONSUMERS`], and the items table.
    pub async fn wait_topology(&self, timeout: Duration) {
        let js = jetstream::connect(&self.nats.url()).await;
        let js = &js;
        self.wait_until(
            timeout,
            "the streams, consumers and items table exist",
            || async move {
                for kind in ["FRONTIER", "PAGES", "ITEMS", "DEAD"] {
                    if js
                        .get_stream(jetstream::stream_name(&self.crawl, kind))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                for (kind, consumer) in jetstream::CONSUMERS {
                    let Ok(stream) = js
                        .get_stream(jetstream::stream_name(&self.crawl, kind))
                        .await
                    else {
                        return false;
                    };
                    if stream.consumer_info(consumer).await.is_err() {
                        return false;
                    }
                }
                self.db.table_exists().await
            },
        )
        .await;
    }

    /// Asserts the database holds exactly `expected` for this crawl.
    pub async fn assert_items(&self, expected: &[ExpectedItem]) {
        let stored = self.db.items(&self.crawl).await;
        assert_items_eq(&stored, expected);
    }

    /// Sends SIGTERM to every service given and asserts each exits 0 in time.
    pub async fn stop_all(&self, services: &mut [&mut Service]) {
        for s in services.iter() {
            s.terminate();
        }
        for s in services.iter_mut() {
            let status = s.wait_exit(Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "{} exited with {status} after SIGTERM (expected 0); log tail:\n{}",
                s.name(),
                servers::tail(&s.state().log, 40)
            );
        }
    }
}

/// The spider file of a test crawl of `site`.
pub fn spider_toml(crawl: &str, site: &Site, delay_ms: u64) -> String {
    spider_toml_with(crawl, site, delay_ms, &SpiderExtras::default())
}

/// [`spider_toml`] with `extras` added.
pub fn spider_toml_with(crawl: &str, site: &Site, delay_ms: u64, extras: &SpiderExtras) -> String {
    format!(
        r#"name = "{crawl}"
start_urls = ["{start}"]
allowed_domains = ["127.0.0.1"]
max_depth = 10
user_agent = "jetcrawl-test"
obey_robots = true
allow_private_networks = true

[politeness]
delay_ms = {delay_ms}
concurrency_per_host = 8
autothrottle = false

[http]
retry_backoff_ms = 200
{http}

[streams]
# Work held by a killed process comes back after this; short, so tests recover fast.
ack_wait_secs = 4

[follow]
allow = []
deny = []

[[items]]
type = "product"
match = '/catalogue/[^/]+/index\.html$'
[items.fields]
title = "h1"
price = "p.price_color"
image = {{ css = "div.item img", attr = "src", absolute = true }}
tags  = {{ css = "ul.breadcrumb li a", all = true }}
{tables}
"#,
        start = site.start_url(),
        http = extras.http,
        tables = extras.tables,
    )
}

/// Asserts `stored` rows are exactly `expected`: same (type, url) set, no pair twice,
/// same data for each, timestamps set. Lists what differs.
pub fn assert_items_eq(stored: &[StoredItem], expected: &[ExpectedItem]) {
    let mut problems = Vec::new();
    let mut actual: BTreeMap<(String, String), &StoredItem> = BTreeMap::new();
    for row in stored {
        let key = (row.item_type.clone(), row.url.clone());
        if let Some(prev) = actual.insert(key.clone(), row) {
            problems.push(format!(
                "stored twice: {key:?} (item ids {} and {})",
                prev.item_id, row.item_id
            ));
        }
        if !row.has_timestamps {
            problems.push(format!("row {key:?} lacks fetched_at/stored_at"));
        }
    }
    let wanted: BTreeMap<(String, String), &ExpectedItem> = expected
        .iter()
        .map(|e| ((e.item_type.clone(), e.url.clone()), e))
        .collect();
    for (key, e) in &wanted {
        match actual.get(key) {
            None => problems.push(format!("missing: {key:?}")),
            Some(row) if row.data != e.data => problems.push(format!(
                "data differs for {key:?}:\n    stored:   {}\n    expected: {}",
                row.data, e.data
            )),
            Some(_) => {}
        }
    }
    for key in actual.keys() {
        if !wanted.contains_key(key) {
            problems.push(format!("unexpected: {key:?}"));
        }
    }
    if stored.len() != expected.len() {
        problems.push(format!(
            "{} rows stored, {} expected",
            stored.len(),
            expected.len()
        ));
    }
    if !problems.is_empty() {
        let total = problems.len();
        problems.truncate(25);
        panic!(
            "stored items differ from the expected ones ({total} problems, first {}):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
}
