//! The `jetcrawl` command line: flags, logging, connections; the stages do the work.

mod admin;
mod check;
mod demo;
mod embedded;
mod export;
mod ops;
mod replay;
mod services;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use jetcrawl_shared::{shutdown, telemetry};

/// mimalloc: every stage allocates per message and the parser per DOM node; glibc's
/// malloc spent ~10% of the parser's CPU in `_int_malloc`/`_int_free` (perf, see
/// docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Return freed memory to the OS soon: 10 ms after it is freed, not mimalloc's default
/// (which never purged pages freed by threads that then went idle, the blocking pool's
/// parse threads: the parser's RSS climbed from 50 to 95 MB over a 200,000-page crawl).
/// At 0 (at once) the parser spent ~7% of its CPU faulting the same pages back in; at
/// 10 ms, +6% pages/s in the distributed crawl and RSS as flat (docs/BENCHMARKS.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option; mimalloc reads it on each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

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
    /// NATS server, or a cluster's servers comma-separated (credentials and TLS go in
    /// the URLs: `nats://user:password@host`, `tls://host`).
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
    Fetcher(services::FetcherArgs),
    /// Parse pages into items and new requests (run any number).
    Parser(services::ParserArgs),
    /// Store items in the database (run any number).
    Sink(services::SinkArgs),
    /// Render `[render]` pages in headless Chromium (run any number, beside the fetchers).
    Renderer(services::RendererArgs),
    /// Re-parse stored pages with the current rules (beside running parsers).
    Replay(replay::ReplayArgs),
    /// Publish seeds (URLs, or `-` for stdin; none = the spider's start_urls).
    Seed {
        #[command(flatten)]
        common: Common,
        urls: Vec<String>,
    },
    /// Archive PAGES as WARC, or dump the crawl's items as JSON Lines or CSV.
    Export(export::ExportArgs),
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
        /// `[render]` pages rendering at once (browser tabs).
        #[arg(long, env = "JETCRAWL_TABS", default_value_t = 4)]
        tabs: usize,
        /// The browser for `[render]` pages (default: chromium, google-chrome, ... on PATH).
        #[arg(long, env = "CHROMIUM")]
        chromium: Option<PathBuf>,
    },
    /// Inspect dead letters (grouped reasons, in full), retry or purge them.
    Dead {
        #[command(subcommand)]
        command: ops::dead::DeadCommand,
    },
    /// Stop a stage's consumption everywhere (nothing is lost) until `resume`.
    Pause(ops::pause::PauseArgs),
    /// Restart a paused stage's consumption.
    Resume(ops::pause::ResumeArgs),
    /// Serve a local demo shop and crawl it in embedded mode (no internet needed).
    Demo(demo::DemoArgs),
    /// Exit 0 if a service's /healthz answers 200 (the container health check).
    Healthcheck(ops::health::HealthArgs),
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

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.command.worker_threads() {
        runtime.worker_threads(threads.max(1));
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

impl Command {
    /// The services' `--threads`; `None`: one runtime worker per core.
    ///
    /// Fetchers and sinks wait on sockets, not on the CPU: one worker each (fewer
    /// cross-thread wake-ups). Measured on 2 cores (docs/BENCHMARKS.md), 8 interleaved
    /// distributed crawls: +5.7% pages/s (median), fetcher CPU per page -11%.
    fn worker_threads(&self) -> Option<usize> {
        match self {
            Command::Fetcher(args) => Some(args.threads),
            Command::Parser(args) => args.threads,
            Command::Sink(args) => Some(args.threads),
            _ => None,
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init_tracing();
    jetcrawl_shared::failpoint::init();
    let stop = shutdown::on_signals();
    match cli.command {
        Command::Crawl {
            spider,
            out,
            concurrency,
            tabs,
            chromium,
        } => {
            let opts = embedded::CrawlOptions {
                spider,
                out,
                concurrency,
                tabs,
                chromium,
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
            let (spider, nats) = services::connect(&common, "init", &stop).await?;
            admin::init(&spider, nats, database_url).await?;
        }
        Command::Fetcher(args) => services::fetcher(args, stop).await?,
        Command::Parser(args) => services::parser(args, stop).await?,
        Command::Sink(args) => services::sink(args, stop).await?,
        Command::Renderer(args) => services::renderer(args, stop).await?,
        Command::Replay(args) => replay::run(args, stop).await?,
        Command::Export(args) => export::run(args, stop).await?,
        Command::Dead { command } => ops::dead::run(command, &stop).await?,
        Command::Pause(args) => ops::pause::run_pause(args, &stop).await?,
        Command::Resume(args) => ops::pause::run_resume(args, &stop).await?,
        Command::Demo(args) => demo::run(args, stop).await?,
        Command::Healthcheck(args) => ops::health::run(args).await?,
        Command::Seed { common, urls } => {
            let (spider, nats) = services::connect(&common, "seed", &stop).await?;
            admin::seed(&spider, nats, urls).await?;
        }
        Command::Status {
            common,
            json,
            watch,
        } => {
            let (spider, nats) = services::connect(&common, "status", &stop).await?;
            admin::status(&spider, nats, json, watch, &stop).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[test]
    fn allocator_purges_freed_pages_after_10_ms() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's setting wins; nothing of ours to check
        }
        super::tune_allocator();
        // SAFETY: reads a process-wide option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 10);
    }

    fn threads(args: &[&str]) -> Option<usize> {
        let argv = ["jetcrawl"]
            .iter()
            .chain(args)
            .chain(&["--spider", "s.toml"]);
        super::Cli::try_parse_from(argv)
            .expect("valid command line")
            .command
            .worker_threads()
    }

    #[test]
    fn fetchers_and_sinks_run_one_worker_parsers_one_per_core_unless_told() {
        if std::env::var_os("JETCRAWL_THREADS").is_some() {
            return; // the environment sets every service's threads
        }
        assert_eq!(threads(&["fetcher"]), Some(1));
        assert_eq!(threads(&["sink"]), Some(1));
        assert_eq!(threads(&["parser"]), None);
        assert_eq!(threads(&["parser", "--threads", "3"]), Some(3));
        assert_eq!(threads(&["fetcher", "--threads", "4"]), Some(4));
        assert_eq!(threads(&["seed"]), None);
    }
}
