//! Counters of an embedded crawl, shown live (a progress bar on a terminal, a log line
//! every few seconds otherwise) and as the summary at the end.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::message::Page;
use jetcrawl_shared::telemetry::Metrics;

/// Status classes, in display order ("robots": refused by robots.txt, not fetched).
const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "robots", "error"];

/// Live counters, shared by the stages.
#[derive(Default)]
pub struct Stats {
    /// Final page records by [`CLASSES`] index.
    pages: [AtomicU64; 7],
    items_stored: AtomicU64,
    errors: AtomicU64,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Stats {
    /// A final page record: a response, or the error after the last try.
    pub fn page_fetched(&self, page: &Page) {
        let class = match (page.status, page.error_kind.as_deref()) {
            (_, Some("robots")) => 5,
            (Some(s @ 100..=599), None) => usize::from(s / 100) - 1,
            _ => 6,
        };
        self.pages[class].fetch_add(1, Relaxed);
        if class == 6 {
            self.error();
        }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    pub fn stored(&self, n: usize) {
        self.items_stored.fetch_add(n as u64, Relaxed);
    }

    pub fn set_queue(&self, queued: usize, in_flight: usize) {
        self.queued.store(queued, Relaxed);
        self.in_flight.store(in_flight, Relaxed);
    }

    fn pages_total(&self) -> u64 {
        self.pages.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn items_stored(&self) -> u64 {
        self.items_stored.load(Relaxed)
    }
}

/// The live display; ends when `done` is cancelled.
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    pub fn start(
        stats: Arc<Stats>,
        metrics: Metrics,
        terminal: bool,
        done: CancellationToken,
    ) -> Progress {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let bar = terminal.then(|| {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:20}] {pos}/{len} pages · {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar
            });
            let every = if terminal {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let pages = stats.pages_total();
                let queued = stats.queued.load(Relaxed) as u64;
                let in_flight = stats.in_flight.load(Relaxed) as u64;
                let items = stats.items_stored();
                let errors = stats.errors.load(Relaxed);
                let rate = pages as f64 / started.elapsed().as_secs_f64().max(0.001);
                match &bar {
                    Some(bar) => {
                        bar.set_length(pages + queued + in_flight);
                        bar.set_position(pages);
                        bar.set_message(format!("{items} items · {rate:.1}/s · {errors} errors"));
                    }
                    None => tracing::info!(
                        pages,
                        queued,
                        in_flight,
                        items,
                        errors,
                        bytes = metrics.fetched_bytes.get(),
                        pages_per_sec = format!("{rate:.1}"),
                        "progress"
                    ),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Progress { task }
    }

    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// What `jetcrawl crawl` prints at the end.
pub struct Summary {
    pages: Vec<(&'static str, u64)>,
    pages_total: u64,
    items: u64,
    bytes: u64,
    errors: u64,
    retries: u64,
    elapsed: Duration,
    interrupted: bool,
}

impl Summary {
    pub fn new(stats: &Stats, metrics: &Metrics, elapsed: Duration, interrupted: bool) -> Self {
        Summary {
            pages: CLASSES
                .iter()
                .zip(&stats.pages)
                .map(|(class, n)| (*class, n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            pages_total: stats.pages_total(),
            items: stats.items_stored(),
            bytes: metrics.fetched_bytes.get(),
            errors: stats.errors.load(Relaxed),
            retries: metrics.retries.get(),
            elapsed,
            interrupted,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let by_class: Vec<String> = self.pages.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(
            f,
            "crawl {} in {secs:.1}s",
            if self.interrupted {
                "interrupted"
            } else {
                "finished"
            }
        )?;
        writeln!(
            f,
            "  pages fetched: {} ({})",
            self.pages_total,
            if by_class.is_empty() {
                "none".to_string()
            } else {
                by_class.join(", ")
            }
        )?;
        writeln!(f, "  items stored:  {}", self.items)?;
        writeln!(
            f,
            "  bytes:         {:.2} MB",
            self.bytes as f64 / 1_000_000.0
        )?;
        writeln!(
            f,
            "  errors:        {} ({} retries)",
            self.errors, self.retries
        )?;
        write!(
            f,
            "  rate:          {:.1} pages/s",
            self.pages_total as f64 / secs.max(0.001)
        )?;
        let count = |class: &str| {
            self.pages
                .iter()
                .find(|(c, _)| *c == class)
                .map_or(0, |(_, n)| *n)
        };
        if count("2xx") == 0 && count("robots") > 0 {
            // The fetcher refuses a site whose robots.txt cannot be read (down, no
            // network): say so, or "robots" alone reads like a ban.
            write!(
                f,
                "\n  note: nothing fetched; robots.txt refused every request (a robots.txt \
                 that cannot be fetched — site down, no network — refuses its whole site)"
            )?;
        }
        Ok(())
    }
}
