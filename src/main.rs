//! The `jetcrawl` command line: flags, logging, connections; the stages do the work.

mod admin;
mod check;
mod embedded;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use jetcrawl_shared::dupefilter::{Dupefilter, RedisDupefilter};
use jetcrawl_shared::telemetry::{self, Metrics};
use jetcrawl_shared::topology;
use jetcrawl_shared::{shutdown, CompiledSpider};

#[derive(Parser)]
#[command(
    name = "jetcrawl",
    version,
    about = "A distributed web crawler over NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Spider file (TOML).
    #[arg(long, short = 's')]
    spider: PathBuf,
    /// NATS server (credentials and TLS go in the URL).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Where /metrics, /healthz and /readyz listen (default: a port per role).
    #[arg(long, env = "JETCRAWL_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the crawl's streams, consumers and table (idempotent).
    Init {
        #[command(flatten)]
        common: Common,
        /// Also create the items table here.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Fetch requests from the frontier (run any number).
    Fetcher {
        #[command(flatten)]
        common: Common,
        /// Requests in flight in this process.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Parse pages into items and new requests (run any number).
    Parser {
        #[command(flatten)]
        common: Common,
        /// Redis for the URL dupefilter.
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// Pages parsed at once in this process.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Store items in the database (run any number).
    Sink {
        #[command(flatten)]
        common: Common,
        /// postgres:// or sqlite:// URL.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
    },
    /// Publish seeds (URLs, or `-` for stdin; none = the spider's start_urls).
    Seed {
        #[command(flatten)]
        common: Common,
        urls: Vec<String>,
    },
    /// Stream depths, consumer lag and redeliveries.
    Status {
        #[command(flatten)]
        common: Common,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Refresh every two seconds.
        #[arg(long)]
        watch: bool,
    },
    /// Embedded mode: crawl in one process, no servers (items to SQLite by default).
    Crawl {
        /// Spider file (TOML).
        spider: PathBuf,
        /// `file.db` or `sqlite://...` (default `<crawl>.db`), `postgres://...`, or `file.jsonl`.
        #[arg(long)]
        out: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Validate a spider file; with --url, show what its rules extract from that page.
    Check {
        /// Spider file (TOML).
        spider: PathBuf,
        /// The page's URL (fetched unless --html is given).
        #[arg(long)]
        url: Option<String>,
        /// The page's HTML: a file, or a URL to fetch instead of --url.
        #[arg(long)]
        html: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let cli = Cli::parse();
    let stop = shutdown::on_signals();
    match cli.command {
        Command::Crawl {
            spider,
            out,
            concurrency,
        } => {
            let opts = embedded::CrawlOptions {
                spider,
                out,
                concurrency,
            };
            embedded::run(opts, stop).await?;
        }
        Command::Check { spider, url, html } => {
            check::run(check::CheckOptions { spider, url, html }).await?;
        }
        Command::Init {
            common,
            database_url,
        } => {
            let (spider, nats) = connect(&common, "init", &stop).await?;
            admin::init(&spider, nats, database_url).await?;
        }
        Command::Fetcher {
            common,
            concurrency,
        } => {
            let (spider, nats) = connect(&common, "fetcher", &stop).await?;
            let metrics = serve_metrics(&common, 9891, &stop).await;
            let cfg = jetcrawl_fetcher::FetcherConfig {
                spider,
                nats: nats.clone(),
                metrics,
                concurrency,
            };
            jetcrawl_fetcher::run(cfg, stop).await?;
            nats.drain().await.ok();
        }
        Command::Parser {
            common,
            redis_url,
            concurrency,
        } => {
            let (spider, nats) = connect(&common, "parser", &stop).await?;
            let dupefilter = Dupefilter::Redis(
                RedisDupefilter::connect_with_retry(&redis_url, spider.name(), &stop)
                    .await
                    .context("connecting to redis")?,
            );
            let metrics = serve_metrics(&common, 9892, &stop).await;
            let cfg = jetcrawl_parser::ParserConfig {
                spider,
                nats: nats.clone(),
                dupefilter,
                metrics,
                concurrency,
            };
            jetcrawl_parser::run(cfg, stop).await?;
            nats.drain().await.ok();
        }
        Command::Sink {
            common,
            database_url,
        } => {
            let (spider, nats) = connect(&common, "sink", &stop).await?;
            let store = jetcrawl_sink::Store::connect_lazy(&database_url)?;
            let metrics = serve_metrics(&common, 9893, &stop).await;
            let cfg = jetcrawl_sink::SinkConfig {
                spider,
                nats: nats.clone(),
                store,
                metrics,
            };
            jetcrawl_sink::run(cfg, stop).await?;
            nats.drain().await.ok();
        }
        Command::Seed { common, urls } => {
            let (spider, nats) = connect(&common, "seed", &stop).await?;
            admin::seed(&spider, nats, urls).await?;
        }
        Command::Status {
            common,
            json,
            watch,
        } => {
            let (spider, nats) = connect(&common, "status", &stop).await?;
            admin::status(&spider, nats, json, watch, &stop).await?;
        }
    }
    Ok(())
}

async fn connect(
    common: &Common,
    role: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(CompiledSpider, async_nats::Client)> {
    let spider = CompiledSpider::load(&common.spider)?;
    tracing::info!(crawl = spider.name(), role, spider = %common.spider.display(), "starting");
    let nats = topology::connect(&common.nats_url, &format!("jetcrawl-{role}"), stop)
        .await
        .context("connecting to nats")?;
    Ok((spider, nats))
}

/// Metrics are for operators; failing to bind their port is logged, not fatal.
async fn serve_metrics(
    common: &Common,
    default_port: u16,
    stop: &tokio_util::sync::CancellationToken,
) -> Metrics {
    let metrics = Metrics::new();
    let addr = common
        .metrics_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
    if let Err(e) = telemetry::serve_metrics(addr, metrics.clone(), stop.clone()).await {
        tracing::error!(addr = %addr, error = %e, "metrics endpoint not available");
    }
    metrics
}
