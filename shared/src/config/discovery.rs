//! Spider-file sections for what a crawl discovers and how far it goes: budgets
//! (`max_pages`, `max_pages_per_host`, top-level keys) and link-trap heuristics
//! (`[traps]`).

use serde::Deserialize;

/// How many pages a crawl (and each host) may have: each request scheduled under a
/// budget becomes exactly one page record (a fetched page or a failure), so these are
/// the crawl's page counts. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// `max_pages`: requests scheduled for the whole crawl.
    pub max_pages: Option<u64>,
    /// `max_pages_per_host`: requests scheduled for one host name.
    pub max_pages_per_host: Option<u64>,
}

impl Budget {
    /// Whether any limit is set (a crawl without one keeps no budget state).
    pub fn is_limited(&self) -> bool {
        self.max_pages.is_some() || self.max_pages_per_host.is_some()
    }
}

/// Heuristics that refuse links of the shapes link traps take. Each refusal is counted
/// in `jetcrawl_links_refused_total{reason}` and logged at debug level with its URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traps {
    /// Canonical URLs longer than this are refused (`reason="url_length"`).
    #[serde(default = "default_max_url_length")]
    pub max_url_length: usize,
    /// A path in which one segment occurs more than this many times is refused
    /// (`reason="path_repeat"`): `/a/b/a/b/a/b/a/b/`, relative links that stack up.
    #[serde(default = "default_max_path_repeats")]
    pub max_path_repeats: usize,
    /// A query parameter of one host and path may take this many distinct values;
    /// links with further values are refused (`reason="query_values"`): calendars,
    /// session ids, endless filters. Counted by each parser process on its own.
    #[serde(default = "default_max_query_values")]
    pub max_query_values: usize,
}

impl Default for Traps {
    fn default() -> Self {
        Traps {
            max_url_length: default_max_url_length(),
            max_path_repeats: default_max_path_repeats(),
            max_query_values: default_max_query_values(),
        }
    }
}

fn default_max_url_length() -> usize {
    2048
}
fn default_max_path_repeats() -> usize {
    3
}
fn default_max_query_values() -> usize {
    1000
}

/// Checks of this module's settings: `(key, message)` of the first that is wrong.
pub(super) fn validate(traps: &Traps, budget: &Budget) -> Result<(), (&'static str, String)> {
    if traps.max_url_length < 16 {
        return Err(("max_url_length", "expected at least 16".to_string()));
    }
    if traps.max_path_repeats == 0 {
        return Err(("max_path_repeats", "expected at least 1".to_string()));
    }
    if traps.max_query_values == 0 {
        return Err(("max_query_values", "expected at least 1".to_string()));
    }
    if budget.max_pages == Some(0) {
        return Err((
            "max_pages",
            "expected at least 1 (leave it out for no limit)".to_string(),
        ));
    }
    if budget.max_pages_per_host == Some(0) {
        return Err((
            "max_pages_per_host",
            "expected at least 1 (leave it out for no limit)".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::CompiledSpider;
    use std::path::Path;

    fn load(extra: &str) -> Result<CompiledSpider, String> {
        let text = format!("name = \"t\"\n{extra}");
        CompiledSpider::from_toml(&text, Path::new("s.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn budgets_and_traps_parse_with_defaults() {
        let s = load("max_pages = 10\nmax_pages_per_host = 3\n[traps]\nmax_query_values = 7\n")
            .unwrap();
        assert_eq!(s.spider.budget().max_pages, Some(10));
        assert_eq!(s.spider.budget().max_pages_per_host, Some(3));
        assert_eq!(s.spider.traps.max_query_values, 7);
        assert_eq!(s.spider.traps.max_url_length, 2048);
        let none = load("").unwrap();
        assert!(!none.spider.budget().is_limited());
    }

    #[test]
    fn bad_budgets_and_traps_name_key_and_line() {
        for (toml, key) in [
            ("max_pages = 0\n", "max_pages"),
            ("max_pages_per_host = 0\n", "max_pages_per_host"),
            ("max_pages = -5\n", "max_pages"),
            ("[traps]\nmax_path_repeats = 0\n", "max_path_repeats"),
            ("[traps]\nmax_url_length = 3\n", "max_url_length"),
            ("[traps]\nmax_urls = 3\n", "max_urls"),
        ] {
            let err = load(toml).unwrap_err();
            assert!(err.contains(key), "{toml:?}: {err}");
            assert!(err.contains("s.toml:"), "{toml:?}: {err}");
        }
    }
}
