//! Link-trap heuristics (`[traps]`): links of the shapes that endless generated
//! spaces take, refused before they reach the dupefilter.
//!
//! - `url_length`: a canonical URL longer than `max_url_length` (query strings that
//!   grow with every click, garbage).
//! - `path_repeat`: a path in which one segment occurs more than `max_path_repeats`
//!   times (`/a/b/a/b/a/b/a/b`, a relative link resolved again and again).
//! - `query_values`: a query parameter that has taken `max_query_values` distinct values
//!   on one host and path, and now shows another (calendars, session ids, filters). The
//!   values seen are kept in this process (a hash a value, at most
//!   [`QUERY_KEYS_CAPACITY`] parameters, forgotten all at once when full), so with
//!   several parsers a parameter may reach a few times the limit before every parser
//!   refuses it: a heuristic, not a budget (budgets are exact, `dupefilter/budget.rs`).
//!
//! Each refusal is counted in `jetcrawl_links_refused_total{reason}` and logged at
//! debug level with the URL ([`count_refusals`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use url::Url;

use jetcrawl_shared::config::Traps;
use jetcrawl_shared::telemetry::Metrics;

/// (host, path, parameter) keys whose values are remembered; all forgotten when full.
pub const QUERY_KEYS_CAPACITY: usize = 4096;

/// Why a link was taken for a trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// Longer than `max_url_length`.
    UrlLength,
    /// A path segment repeated more than `max_path_repeats` times.
    PathRepeat,
    /// A query parameter past `max_query_values` distinct values.
    QueryValues,
}

impl Trap {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Trap::UrlLength => "url_length",
            Trap::PathRepeat => "path_repeat",
            Trap::QueryValues => "query_values",
        }
    }
}

/// The heuristics, with the query values seen so far.
#[derive(Debug)]
pub struct TrapGuard {
    config: Traps,
    values: Mutex<HashMap<u64, HashSet<u64>>>,
}

impl TrapGuard {
    /// A guard with no values seen yet.
    pub fn new(config: Traps) -> Self {
        TrapGuard {
            config,
            values: Mutex::new(HashMap::new()),
        }
    }

    /// The longest URL let through.
    pub fn max_url_length(&self) -> usize {
        self.config.max_url_length
    }

    /// Whether a canonical URL looks like a trap; a URL let through has its query
    /// values counted.
    pub fn check(&self, url: &Url) -> Option<Trap> {
        if url.as_str().len() > self.config.max_url_length {
            return Some(Trap::UrlLength);
        }
        if self.path_repeats(url) {
            return Some(Trap::PathRepeat);
        }
        self.query_values(url)
    }

    fn path_repeats(&self, url: &Url) -> bool {
        // This runs for every link of every page, and paths are short: split once into
        // an array on the stack and compare each segment with the ones after it, which
        // costs less than a map (or splitting again per segment: 7% of a parser's CPU).
        let limit = self.config.max_path_repeats;
        let mut segments = [""; 32];
        let mut n = 0;
        for segment in url.path().split('/').filter(|s| !s.is_empty()) {
            let Some(slot) = segments.get_mut(n) else {
                return long_path_repeats(url.path(), limit);
            };
            *slot = segment;
            n += 1;
        }
        let segments = &segments[..n];
        n > limit
            && segments
                .iter()
                .enumerate()
                .any(|(i, segment)| segments[i..].iter().filter(|s| *s == segment).count() > limit)
    }

    fn query_values(&self, url: &Url) -> Option<Trap> {
        url.query()?;
        let host = url.host_str().unwrap_or_default();
        let params: Vec<(u64, u64)> = url
            .query_pairs()
            .map(|(name, value)| {
                let mut key = xxhash_rust::xxh3::Xxh3::new();
                for part in [host, "\0", url.path(), "\0", &name] {
                    key.update(part.as_bytes());
                }
                (key.digest(), xxhash_rust::xxh3::xxh3_64(value.as_bytes()))
            })
            .collect();
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let full = |key: &u64, value: &u64| {
            values.get(key).is_some_and(|seen| {
                seen.len() >= self.config.max_query_values && !seen.contains(value)
            })
        };
        if params.iter().any(|(key, value)| full(key, value)) {
            return Some(Trap::QueryValues);
        }
        if values.len() + params.len() > QUERY_KEYS_CAPACITY {
            values.clear();
        }
        for (key, value) in params {
            values.entry(key).or_default().insert(value);
        }
        None
    }
}

/// [`TrapGuard::path_repeats`] for a path of more than 32 segments: a count per segment.
fn long_path_repeats(path: &str, limit: usize) -> bool {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    path.split('/').filter(|s| !s.is_empty()).any(|segment| {
        let n = counts.entry(segment).or_default();
        *n += 1;
        *n > limit
    })
}

/// Count and log the links a page's parse refused.
pub fn count_refusals(metrics: &Metrics, refused: &[(Url, Trap)]) {
    for (url, trap) in refused {
        tracing::debug!(url = %url, reason = trap.label(), "link refused");
        metrics.refused(trap.label()).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> TrapGuard {
        TrapGuard::new(Traps {
            max_url_length: 64,
            max_path_repeats: 2,
            max_query_values: 3,
        })
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn long_urls_and_repeated_segments_are_traps() {
        let g = guard();
        assert_eq!(g.check(&url("http://a.test/a/b/a/b")), None);
        assert_eq!(
            g.check(&url("http://a.test/a/b/a/b/a/")),
            Some(Trap::PathRepeat)
        );
        assert_eq!(g.check(&url("http://a.test/x/x/x")), Some(Trap::PathRepeat));
        let long = format!("http://a.test/{}", "y".repeat(60));
        assert_eq!(g.check(&url(&long)), Some(Trap::UrlLength));
    }

    #[test]
    fn paths_of_more_than_32_segments_are_judged_the_same() {
        let g = TrapGuard::new(Traps {
            max_url_length: 4096,
            max_path_repeats: 2,
            max_query_values: 3,
        });
        let distinct: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let path = distinct.join("/");
        assert_eq!(g.check(&url(&format!("http://a.test/{path}"))), None);
        // The third `s5` comes after the 32nd segment.
        let repeated = format!("{path}/s5/s5");
        assert_eq!(
            g.check(&url(&format!("http://a.test/{repeated}"))),
            Some(Trap::PathRepeat)
        );
        let twice = format!("{path}/s5");
        assert_eq!(g.check(&url(&format!("http://a.test/{twice}"))), None);
    }

    #[test]
    fn a_parameter_past_its_distinct_values_is_refused_known_values_are_not() {
        let g = guard();
        for d in 1..=3 {
            assert_eq!(g.check(&url(&format!("http://a.test/cal?d={d}"))), None);
        }
        assert_eq!(
            g.check(&url("http://a.test/cal?d=4")),
            Some(Trap::QueryValues)
        );
        assert_eq!(g.check(&url("http://a.test/cal?d=2")), None, "seen value");
        // Another path, another host: counted apart.
        assert_eq!(g.check(&url("http://a.test/other?d=4")), None);
        assert_eq!(g.check(&url("http://b.test/cal?d=4")), None);
        // A refused link does not count its other parameters.
        assert_eq!(
            g.check(&url("http://a.test/cal?d=5&x=1")),
            Some(Trap::QueryValues)
        );
    }
}
