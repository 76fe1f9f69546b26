//! Fail points, for crash tests: `JETCRAWL_FAIL_AT=<point>[:<n>]` makes the process
//! abort (SIGABRT, no clean-up, as a crash would) the `n`-th time it reaches the named
//! point (the first time without `:<n>`). Unset — always, in production — nothing
//! happens: a point costs one load of an initialised cell.
//!
//! The points, each between two steps a crash must not make the crawl lose or repeat:
//! - `fetcher.after-fetch`: a page fetched, not yet published to PAGES
//! - `fetcher.after-publish`: a page published, its request not yet acked
//! - `parser.after-publish`: a page's requests and items published, not yet added to
//!   the dupefilter
//! - `parser.after-add`: added to the dupefilter, the page not yet acked
//! - `sink.after-commit`: a batch committed, its messages not yet acked

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that arms a fail point.
pub const ENV: &str = "JETCRAWL_FAIL_AT";

/// Every point a service may be stopped at.
pub const POINTS: &[&str] = &[
    "fetcher.after-fetch",
    "fetcher.after-publish",
    "parser.after-publish",
    "parser.after-add",
    "sink.after-commit",
];

struct Armed {
    point: String,
    left: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (point, n) = match spec.split_once(':') {
                Some((point, n)) => (point, n.parse().unwrap_or(1)),
                None => (spec.as_str(), 1),
            };
            if !POINTS.contains(&point) {
                tracing::error!(point, known = ?POINTS, "{ENV} names no fail point; ignored");
                return None;
            }
            tracing::warn!(
                point,
                after = n,
                "fail point armed: this process will abort there"
            );
            Some(Armed {
                point: point.to_string(),
                left: AtomicU64::new(n.max(1)),
            })
        })
        .as_ref()
}

/// Abort here if this is the armed point's `n`-th hit.
pub fn hit(point: &str) {
    let Some(armed) = armed() else { return };
    if armed.point == point && armed.left.fetch_sub(1, Ordering::SeqCst) == 1 {
        eprintln!("fail point {point} reached: aborting");
        std::process::abort();
    }
}

/// Read the switch now, so an armed point is logged at start-up, not at its first hit.
pub fn init() {
    let _ = armed();
}
