//! The parser service: two JetStream loops, pages and seeds.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use jetcrawl_shared::canon::fp_hex;
use jetcrawl_shared::consume::{self, retry_in_place, ConsumeOptions, Disposition};
use jetcrawl_shared::dupefilter::Dupefilter;
use jetcrawl_shared::message::{parse_seeds, Page, SeedLine};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Names, ReplayStart, Role};
use jetcrawl_shared::CompiledSpider;

use crate::error::ParseError;
use crate::extract::Rules;
use crate::schedule::{Dedup, Emit, EmitProgress, Planner, Scheduler};

/// Everything a parser process needs.
pub struct ParserConfig {
    /// The spider.
    pub spider: CompiledSpider,
    /// A connected NATS client.
    pub nats: async_nats::Client,
    /// The dupefilter.
    pub dupefilter: Dupefilter,
    /// Metrics.
    pub metrics: Metrics,
    /// Pages parsed at once by this process.
    pub concurrency: usize,
}

struct Ctx {
    rules: Arc<Rules>,
    scheduler: Scheduler,
    /// The scheduler's dupefilter half, asked before links are planned.
    dedup: Dedup,
    js: jetstream::Context,
    names: Names,
    metrics: Metrics,
    /// Stops retries in place at shutdown.
    shutdown: CancellationToken,
    /// Schedule each page's next fetch (`[recrawl]`; never in a replay, whose pages'
    /// next fetches were scheduled when they were first parsed).
    recrawl: bool,
}

impl Ctx {
    /// `recrawl`: whether pages parsed here schedule their next fetch (`[recrawl]`).
    async fn new(
        cfg: &ParserConfig,
        shutdown: &CancellationToken,
        recrawl: bool,
    ) -> Result<Arc<Self>, ParseError> {
        let rules = Arc::new(Rules::new(&cfg.spider)?);
        let js = jetstream::new(cfg.nats.clone());
        topology::ensure_streams(&js, &cfg.spider.spider).await?;
        let names = Names::new(cfg.spider.name());
        let planner = Planner::new(&cfg.spider.spider);
        Ok(Arc::new(Ctx {
            rules,
            dedup: planner.dedup(cfg.dupefilter.clone(), cfg.metrics.clone()),
            scheduler: Scheduler {
                js: js.clone(),
                names: names.clone(),
                planner,
                dupefilter: cfg.dupefilter.clone(),
                metrics: cfg.metrics.clone(),
            },
            js,
            names,
            metrics: cfg.metrics.clone(),
            shutdown: shutdown.clone(),
            recrawl: recrawl && cfg.spider.spider.recrawl.is_some(),
        }))
    }

    fn options(&self, cfg: &ParserConfig, role: Role) -> ConsumeOptions {
        ConsumeOptions {
            role,
            max_in_flight: cfg.concurrency,
            max_ack_pending: 1_000,
            poison_deliveries: 10,
            drain_deadline: Duration::from_secs(20),
            replay: None,
            partition: None,
        }
    }
}

/// Run until `shutdown`, then finish in-flight pages and return.
pub async fn run(cfg: ParserConfig, shutdown: CancellationToken) -> Result<(), ParseError> {
    let ctx = Ctx::new(&cfg, &shutdown, true).await?;
    let spider = Arc::new(cfg.spider.spider.clone());
    let pages_ctx = ctx.clone();
    let pages = consume::consume(
        ctx.js.clone(),
        spider.clone(),
        ctx.options(&cfg, Role::Parser),
        cfg.metrics.clone(),
        shutdown.clone(),
        move |msg| handle_page(pages_ctx.clone(), msg),
    );
    let seeds_ctx = ctx.clone();
    let seeds = consume::consume(
        ctx.js.clone(),
        spider,
        ctx.options(&cfg, Role::Seeds),
        cfg.metrics.clone(),
        shutdown,
        move |msg| handle_seeds(seeds_ctx.clone(), msg),
    );
    tokio::join!(pages, seeds);
    Ok(())
}

/// Re-parse stored pages from `start` with the current rules: changed items are
/// published again (the sink updates their rows), links the old rules did not follow
/// go through the dupefilter to the frontier. Runs beside the normal parsers, on a
/// consumer of its own, until it has caught up with the end of PAGES (or `shutdown`);
/// returns the number of pages parsed.
pub async fn replay(
    cfg: ParserConfig,
    start: ReplayStart,
    shutdown: CancellationToken,
) -> Result<u64, ParseError> {
    let ctx = Ctx::new(&cfg, &shutdown, false).await?;
    let name = format!("replay-{}", chrono::Utc::now().timestamp_millis());
    let caught_up = shutdown.child_token();
    let watcher = tokio::spawn(watch_caught_up(
        ctx.js.clone(),
        ctx.names.pages_stream(),
        name.clone(),
        caught_up.clone(),
    ));
    let mut options = ctx.options(&cfg, Role::Parser);
    options.replay = Some((name.clone(), start));
    let handler_ctx = ctx.clone();
    consume::consume(
        ctx.js.clone(),
        Arc::new(cfg.spider.spider.clone()),
        options,
        cfg.metrics.clone(),
        caught_up,
        move |msg| handle_page(handler_ctx.clone(), msg),
    )
    .await;
    watcher.abort();
    if let Ok(stream) = ctx.js.get_stream(ctx.names.pages_stream()).await {
        let _ = stream.delete_consumer(&name).await;
    }
    Ok(cfg.metrics.pages_parsed.get())
}

/// Cancel `done` once the replay consumer has nothing left to deliver or to be acked.
async fn watch_caught_up(
    js: jetstream::Context,
    stream: String,
    name: String,
    done: CancellationToken,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(info) = topology::consumer_info(&js, &stream, &name).await {
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                done.cancel();
                return;
            }
        }
    }
}

async fn handle_page(ctx: Arc<Ctx>, msg: jetstream::Message) -> Disposition {
    let mut page = match Page::from_message(msg.headers.as_ref(), msg.payload.clone()) {
        Ok(page) => page,
        Err(e) => return Disposition::Dead(e.to_string()),
    };
    page.depth = ctx.dedup.page_depth(page.fingerprint, page.depth).await;
    let span = tracing::info_span!("page", url = %page.url, status = ?page.status);
    async {
        let depth = page.depth;
        let page_url = page.url.clone();
        if page.status == Some(304) {
            ctx.metrics.pages_not_modified.inc();
        }
        // Only the metadata is needed to schedule the next fetch, not the body.
        let recrawl_of = ctx.recrawl.then(|| Page {
            body: Bytes::new(),
            ..page.clone()
        });
        let redirect_target = ctx.rules.redirect_target(&page);
        // Parsing is CPU work: keep it off the async workers.
        let extracted = match ctx.rules.parse_off_runtime(page).await {
            Ok(x) => x,
            Err(e) => return Disposition::Dead(format!("parser failed on this page: {e}")),
        };
        crate::traps::count_refusals(&ctx.metrics, &extracted.refused);
        crate::sitemap::report(&ctx.metrics, &page_url, &extracted);
        if extracted.links_capped > 0 {
            tracing::warn!(
                followed = extracted.links.len(),
                dropped = extracted.links_capped,
                "page has more links than [follow] max_links_per_page"
            );
            ctx.metrics
                .links_capped
                .inc_by(extracted.links_capped as u64);
        }
        let plan = ctx
            .scheduler
            .planner
            .plan_extracted(&extracted, depth, &ctx.dedup)
            .await;
        let emit = Emit {
            requests: plan.requests,
            known: plan.known,
            forced: Vec::new(),
            items: extracted.items,
            also_seen: redirect_target.map(|fp| (fp, depth)).into_iter().collect(),
        };
        let source = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let emitted = match emit_holding(&ctx, &emit, source).await {
            Some(Ok(new)) => match &recrawl_of {
                Some(page) => schedule_holding(&ctx, page).await.map(|r| r.map(|_| new)),
                None => Some(Ok(new)),
            },
            other => other,
        };
        match emitted {
            Some(Ok(new)) => {
                jetcrawl_shared::failpoint::hit("parser.after-add");
                ctx.metrics.pages_parsed.inc();
                tracing::debug!(new_links = new, "page parsed");
                Disposition::Ack
            }
            Some(Err(e)) => Disposition::Dead(e.to_string()),
            None => Disposition::Retry(None),
        }
    }
    .instrument(span)
    .await
}

async fn handle_seeds(ctx: Arc<Ctx>, msg: jetstream::Message) -> Disposition {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut emit = Emit::default();
    let mut rejected = Vec::new();
    for (n, line) in parse_seeds(&msg.payload).into_iter().enumerate() {
        let seed = match line {
            SeedLine::Seed(seed) => seed,
            SeedLine::Invalid { line, reason } => {
                rejected.push((n, line, reason));
                continue;
            }
        };
        let url = match ctx.rules.seed(&seed.url) {
            Ok(url) => url,
            Err(e) => {
                rejected.push((n, seed.url, e.to_string()));
                continue;
            }
        };
        let mut planned = ctx
            .scheduler
            .planner
            .plan(std::slice::from_ref(&url), 0)
            .await;
        if seed.force {
            // A forced refetch needs ids of its own, or the duplicate windows would
            // swallow it; the seed's sequence keeps a redelivery idempotent.
            for p in &mut planned {
                let id = format!("{}-f{seq}", fp_hex(p.fp));
                p.msg_id = id.clone();
                p.request.page_id = Some(id);
            }
            emit.forced.extend(planned);
        } else {
            emit.requests.extend(planned);
        }
    }
    for (n, line, reason) in &rejected {
        tracing::warn!(line = %line, reason = %reason, "seed rejected");
        // The id is the line's place in the stream: a redelivered seed message
        // dead-letters each of its bad lines once.
        let id = format!("seeds-{seq}-{n}");
        if let Err(e) = topology::dead_letter(
            &ctx.js,
            &ctx.names,
            "parser",
            Some(&msg),
            Bytes::from(line.clone()),
            reason,
            Some(&id),
        )
        .await
        {
            // Nothing published yet: let the stream hand the seeds out again later.
            tracing::warn!(error = %e, "dead letter not stored; seeds handed back");
            return Disposition::Retry(Some(Duration::from_secs(5)));
        }
        ctx.metrics
            .dead_letters
            .get_or_create(&consume::stage_label("parser"))
            .inc();
    }
    match emit_holding(&ctx, &emit, seq).await {
        Some(Ok(new)) => {
            tracing::info!(new, rejected = rejected.len(), "seeds scheduled");
            Disposition::Ack
        }
        Some(Err(e)) => Disposition::Dead(e.to_string()),
        None => Disposition::Retry(None),
    }
}

/// Schedule the page's next fetch (`[recrawl]`), retrying in place while the stream
/// is unavailable. `None` at shutdown.
async fn schedule_holding(ctx: &Ctx, page: &Page) -> Option<Result<(), ParseError>> {
    let scheduled = retry_in_place(&ctx.shutdown, ParseError::is_retryable, || {
        crate::recrawl::schedule(&ctx.js, ctx.rules.spider(), &ctx.scheduler.planner, page)
    })
    .await;
    if let Some(Ok(true)) = scheduled {
        ctx.metrics.recrawls_scheduled.inc();
    }
    scheduled.map(|r| r.map(|_| ()))
}

/// Emit, retrying in place while Redis or a stream is unavailable. What was published
/// is not published again when only the dupefilter add failed: a repeat held past the
/// duplicate window would be a second copy. `None` at shutdown.
async fn emit_holding(ctx: &Ctx, emit: &Emit, source: u64) -> Option<Result<usize, ParseError>> {
    let progress = EmitProgress::default();
    retry_in_place(&ctx.shutdown, ParseError::is_retryable, || {
        ctx.scheduler.emit(emit, source, &progress)
    })
    .await
}
