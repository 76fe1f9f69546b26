//! `[recrawl]`: fetch pages again after an interval, conditionally.

use std::time::Duration;

use serde::Deserialize;

/// When fetched pages are due again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recrawl {
    /// A fetched page is due again this long after its fetch: `"30s"`, `"15m"`,
    /// `"6h"`, `"1d"`.
    pub interval: String,
    /// Overrides for pages whose canonical URL matches, tried in order.
    #[serde(default)]
    pub rules: Vec<RecrawlRule>,
}

/// An interval for the pages whose URL matches `match`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecrawlRule {
    /// Regex on the canonical URL.
    #[serde(rename = "match")]
    pub url_match: String,
    /// Like `[recrawl] interval`.
    pub interval: String,
}

/// `"90s"`, `"15m"`, `"6h"`, `"1d"` (a whole number and one unit), at least a second.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    let (n, unit) = text.split_at(unit_at);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("{text:?}: expected at least 1s"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_bad_ones_say_why() {
        assert_eq!(parse_interval("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_interval(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("6h"), Ok(Duration::from_secs(21_600)));
        for bad in ["", "d", "1w", "0s", "1.5h", "-1d", "10"] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_override_the_interval_and_bad_ones_name_key_and_line() {
        use crate::config::CompiledSpider;
        use std::path::Path;
        let load = |extra: &str| {
            CompiledSpider::from_toml(&format!("name = \"t\"\n{extra}"), Path::new("s.toml"))
                .map_err(|e| e.to_string())
        };
        let s = load(
            "[recrawl]\ninterval = \"1d\"\nrules = [{ match = '/news/', interval = \"1h\" }]\n",
        )
        .unwrap();
        assert_eq!(
            s.recrawl_interval("http://a.test/news/1"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            s.recrawl_interval("http://a.test/x"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(load("").unwrap().recrawl_interval("http://a.test/x"), None);
        for (toml, key) in [
            ("[recrawl]\ninterval = \"soon\"\n", "interval"),
            (
                "[recrawl]\ninterval = \"1d\"\nrules = [{ match = '(', interval = \"1h\" }]\n",
                "match",
            ),
            (
                "[recrawl]\ninterval = \"1d\"\nrules = [{ match = 'x', interval = \"0s\" }]\n",
                "interval",
            ),
            ("[recrawl]\nevery = \"1d\"\n", "every"),
        ] {
            let err = load(toml).unwrap_err();
            assert!(
                err.contains(key) && err.contains("s.toml:"),
                "{toml:?}: {err}"
            );
        }
    }
}
