//! The long-running stages (`fetcher`, `parser`, `sink`): their flags, and one startup for
//! all three; plus the connection every subcommand over a crawl's topology shares.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::dupefilter::{Dupefilter, RedisDupefilter};
use jetcrawl_shared::telemetry::{self, Metrics};
use jetcrawl_shared::{presence, topology, CompiledSpider};

use crate::Common;

/// `jetcrawl fetcher`'s flags.
#[derive(Args)]
pub struct FetcherArgs {
    #[command(flatten)]
    common: Common,
    /// Requests in flight in this process (all hosts together).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests held per owned frontier partition, waiting for their host or in flight;
    /// beyond it the fetcher stops pulling that partition.
    #[arg(long, env = "JETCRAWL_WINDOW", default_value_t = 256)]
    window: usize,
    /// Source address for outgoing HTTP connections (a host with several addresses).
    #[arg(long, env = "JETCRAWL_LOCAL_ADDRESS")]
    local_address: Option<std::net::IpAddr>,
    /// Runtime worker threads. One keeps a fetcher's sockets and timers on one core
    /// (~10,000 plain pages/s); more fetchers scale it out.
    #[arg(long, env = "JETCRAWL_THREADS", default_value_t = 1)]
    pub threads: usize,
}

/// `jetcrawl parser`'s flags.
#[derive(Args)]
pub struct ParserArgs {
    #[command(flatten)]
    common: Common,
    /// Redis for the URL dupefilter. A Redis Cluster: its nodes comma-separated
    /// (`redis://a:7000,redis://b:7000`), or any one node's URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Pages in hand at once in this process: parsing, or waiting on Redis and on
    /// publish acks. Most of a page's time here is those round trips, so a parser
    /// needs many at once to keep a core busy; each holds its body (at most one NATS
    /// message: the server's `max_payload`, 1 MB by default).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runtime worker threads (default: one per core; parsing is CPU work).
    #[arg(long, env = "JETCRAWL_THREADS")]
    pub threads: Option<usize>,
}

/// `jetcrawl sink`'s flags.
#[derive(Args)]
pub struct SinkArgs {
    #[command(flatten)]
    common: Common,
    /// postgres:// or sqlite:// URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Runtime worker threads. A sink's work is the database's; one is plenty.
    #[arg(long, env = "JETCRAWL_THREADS", default_value_t = 1)]
    pub threads: usize,
}

/// Fetch requests from the frontier until `stop`, then drain the NATS connection.
pub async fn fetcher(args: FetcherArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let stage = Stage {
        role: "fetcher",
        metrics_port: 9891,
    };
    let deps = async |_: &CompiledSpider, _: &CancellationToken| Ok(());
    let config = |s: Started<()>| jetcrawl_fetcher::FetcherConfig {
        spider: s.spider,
        nats: s.nats,
        metrics: s.metrics,
        concurrency: args.concurrency,
        window: args.window,
        local_address: args.local_address,
    };
    run_stage(
        &args.common,
        stage,
        stop,
        deps,
        config,
        jetcrawl_fetcher::run,
    )
    .await
}

/// Parse pages into items and new requests until `stop`, then drain the NATS connection.
pub async fn parser(args: ParserArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let stage = Stage {
        role: "parser",
        metrics_port: 9892,
    };
    let redis_url = &args.redis_url;
    let deps = async |spider: &CompiledSpider, stop: &CancellationToken| {
        let redis = RedisDupefilter::connect_with_retry(redis_url, spider.name(), stop)
            .await
            .context("connecting to redis")?;
        Ok(Dupefilter::Redis(redis))
    };
    let config = |s: Started<Dupefilter>| jetcrawl_parser::ParserConfig {
        spider: s.spider,
        nats: s.nats,
        dupefilter: s.deps,
        metrics: s.metrics,
        concurrency: args.concurrency,
    };
    run_stage(
        &args.common,
        stage,
        stop,
        deps,
        config,
        jetcrawl_parser::run,
    )
    .await
}

/// Store items in the database until `stop`, then drain the NATS connection.
pub async fn sink(args: SinkArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let stage = Stage {
        role: "sink",
        metrics_port: 9893,
    };
    let database_url = &args.database_url;
    let deps = async |_: &CompiledSpider, _: &CancellationToken| {
        Ok(jetcrawl_sink::Store::connect_lazy(database_url)?)
    };
    let config = |s: Started<jetcrawl_sink::Store>| jetcrawl_sink::SinkConfig {
        spider: s.spider,
        nats: s.nats,
        store: s.deps,
        metrics: s.metrics,
    };
    run_stage(&args.common, stage, stop, deps, config, jetcrawl_sink::run).await
}

/// `jetcrawl renderer`'s flags.
#[derive(Args)]
pub struct RendererArgs {
    #[command(flatten)]
    common: Common,
    /// Pages rendering at once (browser tabs, each page in a fresh context).
    #[arg(long, env = "JETCRAWL_TABS", default_value_t = 4)]
    tabs: usize,
    /// Requests held per owned render partition, waiting for a tab or their host.
    #[arg(long, env = "JETCRAWL_WINDOW", default_value_t = 64)]
    window: usize,
    /// The browser: a path, or a name on PATH (default: chromium, google-chrome, ...).
    #[arg(long, env = "CHROMIUM")]
    chromium: Option<std::path::PathBuf>,
    /// Source address for the renderer's HTTP connections.
    #[arg(long, env = "JETCRAWL_LOCAL_ADDRESS")]
    local_address: Option<std::net::IpAddr>,
}

/// Render `[render]` requests in headless Chromium until `stop`, then drain.
pub async fn renderer(args: RendererArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let stage = Stage {
        role: "renderer",
        metrics_port: 9895,
    };
    // A spider without [render] or a machine without a browser: say so before connecting.
    let spider = CompiledSpider::load(&args.common.spider)?;
    anyhow::ensure!(
        spider.spider.render.is_some(),
        "{} has no [render] section: nothing for a renderer to do",
        args.common.spider.display()
    );
    jetcrawl_renderer::browser::locate(args.chromium.as_deref())?;
    let deps = async |_: &CompiledSpider, _: &CancellationToken| Ok(());
    let config = |s: Started<()>| jetcrawl_renderer::RendererConfig {
        spider: s.spider,
        nats: s.nats,
        metrics: s.metrics,
        chromium: args.chromium.clone(),
        tabs: args.tabs,
        window: args.window,
        local_address: args.local_address,
    };
    run_stage(
        &args.common,
        stage,
        stop,
        deps,
        config,
        jetcrawl_renderer::run,
    )
    .await
}

/// What tells the stages apart at startup, besides their config type and run function.
struct Stage {
    /// Logged, and names the NATS connection `jetcrawl-<role>`.
    role: &'static str,
    /// Where metrics listen when `--metrics-addr` is not given.
    metrics_port: u16,
}

/// What a stage's config is built from.
struct Started<D> {
    spider: CompiledSpider,
    nats: async_nats::Client,
    /// The stage's own dependencies (dupefilter, store), set up before metrics are served.
    deps: D,
    metrics: Metrics,
}

/// Load the spider, connect, set up the stage's dependencies, serve metrics, run the stage
/// until `stop`, then drain the NATS connection.
async fn run_stage<D, C, R, E>(
    common: &Common,
    stage: Stage,
    stop: CancellationToken,
    deps: impl AsyncFnOnce(&CompiledSpider, &CancellationToken) -> anyhow::Result<D>,
    config: impl FnOnce(Started<D>) -> C,
    run: impl FnOnce(C, CancellationToken) -> R,
) -> anyhow::Result<()>
where
    R: Future<Output = Result<(), E>>,
    anyhow::Error: From<E>,
{
    let (spider, nats) = connect(common, stage.role, &stop).await?;
    let deps = deps(&spider, &stop).await?;
    let metrics = serve_metrics(common, stage.metrics_port, &stop).await;
    // Fetchers heartbeat with their partition leases; the other stages announce
    // themselves here, so `jetcrawl status` lists every live instance.
    let heartbeat = (stage.role != "fetcher").then(|| {
        tokio::spawn(presence::keep_alive(
            async_nats::jetstream::new(nats.clone()),
            spider.spider.clone(),
            presence::Instance::this_process(stage.role),
            stop.clone(),
        ))
    });
    let cfg = config(Started {
        spider,
        nats: nats.clone(),
        deps,
        metrics,
    });
    run(cfg, stop).await?;
    if let Some(heartbeat) = heartbeat {
        // It removes its entry on the way out; do not wait on an unreachable NATS.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), heartbeat).await;
    }
    nats.drain().await.ok();
    Ok(())
}

/// Load the spider file and connect to NATS as `jetcrawl-<role>`.
pub async fn connect(
    common: &Common,
    role: &str,
    stop: &CancellationToken,
) -> anyhow::Result<(CompiledSpider, async_nats::Client)> {
    let spider = CompiledSpider::load(&common.spider)?;
    tracing::info!(crawl = spider.name(), role, spider = %common.spider.display(), "starting");
    let nats = topology::connect(&common.nats_url, &format!("jetcrawl-{role}"), stop)
        .await
        .context("connecting to nats")?;
    Ok((spider, nats))
}

/// Metrics are for operators; failing to bind their port is logged, not fatal.
async fn serve_metrics(common: &Common, default_port: u16, stop: &CancellationToken) -> Metrics {
    let metrics = Metrics::new();
    let addr = common
        .metrics_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
    if let Err(e) = telemetry::serve_metrics(addr, metrics.clone(), stop.clone()).await {
        tracing::error!(addr = %addr, error = %e, "metrics endpoint not available");
    }
    metrics
}
