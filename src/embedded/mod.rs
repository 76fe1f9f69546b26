//! Embedded mode (`jetcrawl crawl`): the fetcher, parser and sink stage logic in one
//! process, joined by bounded tokio channels, with an in-memory dupefilter and SQLite,
//! PostgreSQL or JSON Lines output. No NATS, Redis or PostgreSQL needed.
//!
//! ```text
//!            ┌──────────── events (bounded) ◀──────────────┬──────────────┐
//!            ▼                                             │              │
//!   scheduler task ── spawn ≤ concurrency ──▶ fetch tasks ─┘ pages ──▶ parser tasks ── items ──▶ sink task
//!   frontier VecDeque                          Fetcher::fetch (bounded)  Rules::parse  (bounded)  Store::store
//!   retry heap, Dedup                                                                             / JSON Lines
//! ```
//!
//! Layout: `frontier` (the scheduler task) · `output` (the sink task: SQLite, PostgreSQL,
//! JSON Lines) · `progress` (counters, progress bar or log lines, the summary) · this
//! file (wiring, fetch and parse tasks).
//!
//! # Why this cannot deadlock
//! The one cycle in the graph is scheduler → fetch → pages → parse → events → scheduler.
//! Every channel is bounded and every sender waits when its channel is full — nothing is
//! dropped. The cycle is broken at the scheduler: it owns the frontier as a `VecDeque`
//! and *always* accepts events (its `select!` polls the events channel whatever else is
//! blocked), so a parser waits on the events channel only for as long as one loop turn.
//! Fetches are started only when a permit of the fetch semaphore is free, and a fetch
//! task keeps its permit until its page is in the pages channel: a slow parser or a slow
//! database therefore stops new fetches (backpressure), never the scheduler.
//! The frontier itself is unbounded in principle, but holds each URL at most once (it
//! only ever receives requests the dupefilter had not seen), so it is bounded by the
//! crawl's distinct in-scope URLs — the same bound as the dupefilter's own memory, and
//! what the FRONTIER stream holds in the distributed mode.
//!
//! # Identical behaviour
//! Robots, politeness, HTTP limits, retries, canonicalization, scope and depth are the
//! stage crates' own code: [`jetcrawl_fetcher::Fetcher::fetch`],
//! [`jetcrawl_parser::Rules::parse`], [`jetcrawl_parser::schedule::Planner`] and
//! [`jetcrawl_parser::schedule::Dedup`] (check → send → add, as the JetStream parser),
//! [`jetcrawl_sink::Store::store`]. A `Retry` or `Busy` outcome waits in the scheduler's
//! retry heap for its delay, instead of a delayed nak.
//!
//! # Ending
//! The crawl is over when the frontier and the retry heap are empty and no request is in
//! flight (a request stays in flight until its page is parsed and its links are in the
//! frontier). On the first SIGINT/SIGTERM the scheduler stops starting fetches, drops the
//! frontier and cancels fetches under way; pages already fetched are parsed, and every
//! extracted item is written before the process exits 0. The in-memory dupefilter dies
//! with the process: a second run starts over, and SQLite/PostgreSQL upserts make it
//! complete the set without duplicates.

mod frontier;
mod output;
mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use jetcrawl_fetcher::{FetchOutcome, Fetcher, FetcherOptions};
use jetcrawl_parser::schedule::{Dedup, Planner};
use jetcrawl_parser::Rules;
use jetcrawl_shared::dupefilter::{Dupefilter, MemoryDupefilter, Seen};
use jetcrawl_shared::message::{CrawlRequest, Item, Page};
use jetcrawl_shared::render::RenderMatch;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

use frontier::{Event, Frontier};
pub use output::Output;
use progress::{Progress, Stats};

/// What `jetcrawl crawl` was asked to do.
pub struct CrawlOptions {
    /// The spider file.
    pub spider: PathBuf,
    /// `path.db` or `sqlite://...` (default `<name>.db`), `postgres://...`, `path.jsonl`.
    pub out: Option<String>,
    /// Requests in flight at once (all hosts together).
    pub concurrency: usize,
    /// `[render]` pages rendering at once (browser tabs); no browser without `[render]`.
    pub tabs: usize,
    /// The browser for `[render]` pages (`None`: the usual names on PATH).
    pub chromium: Option<PathBuf>,
}

/// Run a crawl to its end (or until `stop`), print the summary, and return.
pub async fn run(opts: CrawlOptions, stop: CancellationToken) -> anyhow::Result<()> {
    let spider = CompiledSpider::load(&opts.spider)?;
    if spider.spider.recrawl.is_some() {
        tracing::warn!("[recrawl] schedules fetches in JetStream: the embedded mode crawls once");
    }
    let rules = Arc::new(Rules::new(&spider)?);
    let metrics = Metrics::new();
    let spider = Arc::new(spider);
    let options = FetcherOptions::bounded_by_caller(
        usize::MAX,
        spider.spider.politeness.concurrency_per_host,
    );
    let fetcher =
        Fetcher::new(spider.clone(), options, metrics.clone()).context("setting up the fetcher")?;
    // [render] pages go through a browser in this process; it shares the fetcher's
    // politeness gate, so a host's budget holds for both.
    let renderer = match &spider.spider.render {
        Some(_) => {
            let chromium = jetcrawl_renderer::browser::locate(opts.chromium.as_deref())?;
            let renderer = jetcrawl_renderer::Renderer::new(
                fetcher.clone(),
                &spider,
                jetcrawl_renderer::RendererOptions {
                    chromium,
                    tabs: opts.tabs.max(1),
                },
                metrics.clone(),
            )?;
            renderer.start().await.context("starting the browser")?;
            Some(renderer)
        }
        None => None,
    };
    let render_match = RenderMatch::of_valid(&spider.spider);
    let stats = Arc::new(Stats::default());
    let planner = Planner::new(&spider.spider);
    let dedup = planner.dedup(
        Dupefilter::Memory(MemoryDupefilter::default()),
        metrics.clone(),
    );

    let mut frontier = Frontier::new(dedup.clone(), stats.clone());
    let mut seeds = Vec::new();
    for raw in &spider.spider.start_urls {
        match rules.seed(raw) {
            Ok(url) => seeds.push(url),
            Err(e) => tracing::warn!(seed = %raw, reason = %e, "seed rejected"),
        }
    }
    frontier
        .add(planner.plan(&seeds, 0).await, 0, Vec::new())
        .await?;
    anyhow::ensure!(
        !frontier.is_idle(),
        "no seeds to crawl: start_urls in {} is empty or out of scope",
        opts.spider.display()
    );

    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| format!("{}.db", spider.name()));
    let output = Output::open(&out).await?;
    tracing::info!(crawl = spider.name(), spider = %opts.spider.display(), out = %output, "starting embedded crawl");

    let concurrency = opts.concurrency.max(1);
    let (events_tx, events_rx) = mpsc::channel::<Event>(concurrency * 2);
    let (pages_tx, pages_rx) = mpsc::channel::<Box<Page>>(concurrency);
    let batch_size = spider.spider.sink.batch_size;
    let (items_tx, items_rx) = mpsc::channel::<Item>(batch_size * 2);

    let started = Instant::now();
    let done = CancellationToken::new();
    let progress = Progress::start(
        stats.clone(),
        metrics.clone(),
        std::io::stderr().is_terminal(),
        done.clone(),
    );
    // Cancelled by a signal, or by a sink that cannot write (nothing more would be stored).
    let halt = stop.child_token();
    let sink = tokio::spawn(output::sink(
        output,
        items_rx,
        output::Batching {
            size: batch_size,
            timeout: Duration::from_millis(spider.spider.sink.batch_timeout_ms),
        },
        stats.clone(),
        halt.clone(),
    ));
    let parsing = tokio::spawn(parse_pages(ParseStage {
        rules: rules.clone(),
        planner,
        dedup,
        pages: pages_rx,
        items: items_tx,
        events: events_tx.clone(),
        metrics: metrics.clone(),
        stats: stats.clone(),
    }));
    let fetch = FetchStage {
        fetcher,
        renderer,
        render_match,
        pages: pages_tx,
        events: events_tx,
        permits: Arc::new(Semaphore::new(concurrency)),
        stats: stats.clone(),
        stop: halt.clone(),
    };
    frontier.run(events_rx, fetch, halt.clone()).await?;
    // The scheduler returned with nothing in flight; the pages channel is closed, so the
    // parser ends, closes the items channel, and the sink flushes and ends.
    parsing.await.context("parser stage")?;
    let stored = sink.await.context("sink stage")?;
    done.cancel();
    progress.finish().await;
    let summary = progress::Summary::new(&stats, &metrics, started.elapsed(), halt.is_cancelled());
    println!("{summary}");
    stored
}

/// What a fetch task needs; cloned into each.
#[derive(Clone)]
pub(crate) struct FetchStage {
    fetcher: Fetcher,
    /// Present when the spider has `[render]`: its matching requests go here.
    renderer: Option<jetcrawl_renderer::Renderer>,
    render_match: RenderMatch,
    pages: mpsc::Sender<Box<Page>>,
    events: mpsc::Sender<Event>,
    /// Fetches in flight; a permit is held until the page is handed to the parser.
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl FetchStage {
    /// Fetch one request and settle it: a page to the parser, a retry or a drop to the
    /// scheduler. Shutdown cancels the fetch (the request dies with the in-memory frontier).
    async fn fetch(self, req: CrawlRequest, permit: OwnedSemaphorePermit) {
        let render = self
            .renderer
            .as_ref()
            .filter(|_| self.render_match.matches(&req.url));
        let fetched = async {
            match render {
                Some(renderer) => renderer.render(&req, None).await,
                None => self.fetcher.fetch(&req, None).await,
            }
        };
        let outcome = tokio::select! {
            out = fetched => out,
            _ = self.stop.cancelled() => {
                let _ = self.events.send(Event::Dropped).await;
                return;
            }
        };
        let event = match outcome {
            FetchOutcome::Page(page) => {
                self.stats.page_fetched(&page);
                match (&page.error, page.error_kind.as_deref()) {
                    (Some(_), Some("robots")) => {
                        tracing::debug!(url = %page.url, "disallowed by robots.txt")
                    }
                    (Some(error), _) => {
                        tracing::warn!(url = %page.url, error = %error, "fetch failed")
                    }
                    _ => {}
                }
                match self.pages.send(page).await {
                    Ok(()) => return,
                    Err(_) => Event::Dropped,
                }
            }
            FetchOutcome::Retry { request, delay } => {
                tracing::info!(url = %request.url, error = request.last_error.as_deref().unwrap_or(""), retry_in_ms = delay.as_millis() as u64, "will retry");
                Event::Later { request, delay }
            }
            FetchOutcome::Later(delay) => Event::Later {
                request: req,
                delay,
            },
            // No leases in one process.
            FetchOutcome::Revoked => Event::Later {
                request: req,
                delay: Duration::ZERO,
            },
            FetchOutcome::Invalid(reason) => {
                tracing::warn!(url = %req.url, reason = %reason, "request dropped");
                self.stats.error();
                Event::Dropped
            }
        };
        drop(permit);
        let _ = self.events.send(event).await;
    }
}

async fn settle_parse_task(done: Result<(), tokio::task::JoinError>, events: &mpsc::Sender<Event>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "parse task panicked; page dropped");
            let _ = events.send(Event::Dropped).await;
        }
    }
}

struct ParseStage {
    rules: Arc<Rules>,
    planner: Planner,
    /// The frontier's dupefilter, asked before links are planned.
    dedup: Dedup,
    pages: mpsc::Receiver<Box<Page>>,
    items: mpsc::Sender<Item>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    stats: Arc<Stats>,
}

/// Parse pages (CPU work, on the blocking pool, a few at once), send the items to the
/// sink and the links to the scheduler. Ends when the pages channel closes.
async fn parse_pages(mut stage: ParseStage) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let permits = Arc::new(Semaphore::new(workers));
    let mut tasks = JoinSet::new();
    while let Some(page) = stage.pages.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let rules = stage.rules.clone();
        let (planner, dedup) = (stage.planner.clone(), stage.dedup.clone());
        let (items, events) = (stage.items.clone(), stage.events.clone());
        let (metrics, stats) = (stage.metrics.clone(), stage.stats.clone());
        tasks.spawn(async move {
            let depth = page.depth;
            let url = page.url.clone();
            let also_seen: Vec<Seen> = rules
                .redirect_target(&page)
                .map(|fp| (fp, depth))
                .into_iter()
                .collect();
            let extracted = match rules.parse_off_runtime(page).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(url = %url, error = %e, "parser failed on this page");
                    stats.error();
                    drop(permit);
                    let _ = events.send(Event::Dropped).await;
                    return;
                }
            };
            drop(permit);
            metrics.pages_parsed.inc();
            metrics.items_extracted.inc_by(extracted.items.len() as u64);
            metrics.links_capped.inc_by(extracted.links_capped as u64);
            jetcrawl_parser::traps::count_refusals(&metrics, &extracted.refused);
            jetcrawl_parser::sitemap::report(&metrics, &url, &extracted);
            let plan = planner.plan_extracted(&extracted, depth, &dedup).await;
            for item in extracted.items {
                if items.send(item).await.is_err() {
                    break; // the sink failed; the crawl is stopping
                }
            }
            let _ = events
                .send(Event::Parsed {
                    requests: plan.requests,
                    known: plan.known,
                    also_seen,
                })
                .await;
        });
        // Reap finished tasks as we go, so the set stays small. A task that panicked
        // sent no event: settle its request, or the crawl would wait for it forever.
        while let Some(done) = tasks.try_join_next() {
            settle_parse_task(done, &stage.events).await;
        }
    }
    while let Some(done) = tasks.join_next().await {
        settle_parse_task(done, &stage.events).await;
    }
}
