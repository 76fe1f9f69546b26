//! Pages that exist only after JavaScript runs: the spider's `[render]` section, which
//! canonical URLs it sends to renderers, and where those requests wait.
//!
//! A render request waits on `jetcrawl.<crawl>.frontier.render.<p>` (same FRONTIER
//! stream, same partition of its politeness key as a fetch request would use), pulled
//! through the durable consumer `renderer-<p>` by the renderer that owns partition `p`
//! in the crawl's render lease bucket. Fetchers' consumers filter `frontier.<p>`
//! exactly, so they never see a render request.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
};
use regex::RegexSet;
use serde::Deserialize;

use crate::config::Spider;
use crate::error::Error;

/// The `[render]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Render {
    /// Regexes on the canonical URL: a matching request goes through a renderer.
    #[serde(rename = "match")]
    pub url_match: Vec<String>,
    /// A page not settled after this long is an error outcome (the tab is recycled).
    #[serde(default = "default_render_timeout_ms")]
    pub timeout_ms: u64,
    /// A CSS selector the page must show before it counts as settled; without it, the
    /// page is settled once loaded and its network has been idle for 500 ms.
    #[serde(default)]
    pub wait_for: Option<String>,
}

fn default_render_timeout_ms() -> u64 {
    15_000
}

impl Render {
    /// How long a page may take to settle.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Which canonical URLs go to renderers (none when the spider has no `[render]`).
#[derive(Debug, Clone)]
pub struct RenderMatch(Option<RegexSet>);

impl RenderMatch {
    /// Compile the spider's `[render] match`.
    pub fn new(spider: &Spider) -> Result<Self, regex::Error> {
        match &spider.render {
            Some(r) if !r.url_match.is_empty() => Ok(RenderMatch(Some(RegexSet::new(
                r.url_match.iter().map(String::as_str),
            )?))),
            _ => Ok(RenderMatch(None)),
        }
    }

    /// For a spider that passed [`crate::CompiledSpider::from_toml`] (which compiled
    /// these regexes already).
    pub fn of_valid(spider: &Spider) -> Self {
        Self::new(spider).unwrap_or(RenderMatch(None))
    }

    /// Whether `url` (canonical) needs a browser.
    pub fn matches(&self, url: &str) -> bool {
        self.0.as_ref().is_some_and(|set| set.is_match(url))
    }

    /// Whether any URL does.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// `jetcrawl.<crawl>.frontier.render.<p>`
pub fn render_subject(crawl: &str, partition: u32) -> String {
    format!("jetcrawl.{crawl}.frontier.render.{partition}")
}

/// The durable consumer of render partition `p`.
pub fn render_consumer_name(partition: u32) -> String {
    format!("renderer-{partition}")
}

/// The crawl's render lease bucket: renderers' heartbeats and partition leases, kept
/// apart from the fetchers' so that the two stages divide the partitions each among
/// themselves.
pub fn render_bucket_name(crawl: &str) -> String {
    format!("JETCRAWL_{crawl}_RENDER")
}

/// Create or update the consumer of render partition `p`.
pub async fn ensure_render_consumer(
    js: &jetstream::Context,
    spider: &Spider,
    partition: u32,
    max_ack_pending: i64,
) -> Result<PullConsumer, Error> {
    let names = crate::topology::Names::new(&spider.name);
    let config = pull::Config {
        durable_name: Some(render_consumer_name(partition)),
        description: Some(format!(
            "jetcrawl {} render partition {partition}",
            spider.name
        )),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spider.streams.ack_wait(),
        max_deliver: -1,
        max_ack_pending,
        filter_subject: render_subject(&spider.name, partition),
        ..Default::default()
    };
    crate::topology::create_consumer(js, &names.frontier_stream(), config).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CompiledSpider;
    use std::path::Path;

    #[test]
    fn render_section_parses_and_matches() {
        let s = CompiledSpider::from_toml(
            "name = \"r\"\n[render]\nmatch = ['/app/']\nwait_for = \"div.product\"\n",
            Path::new("s.toml"),
        )
        .unwrap();
        let m = RenderMatch::of_valid(&s.spider);
        assert!(m.matches("http://a/app/1"));
        assert!(!m.matches("http://a/static/1"));
        let r = s.spider.render.as_ref().unwrap();
        assert_eq!(r.timeout_ms, 15_000);
        assert_eq!(r.wait_for.as_deref(), Some("div.product"));
        let none = CompiledSpider::from_toml("name = \"r\"\n", Path::new("s.toml")).unwrap();
        assert!(RenderMatch::of_valid(&none.spider).is_empty());
        assert!(!RenderMatch::of_valid(&none.spider).matches("http://a/app/1"));
    }

    #[test]
    fn bad_render_section_is_refused_by_name() {
        for (toml, key) in [
            ("[render]\nmatch = ['(']\n", "match"),
            ("[render]\nmatch = ['/a/']\ntimeout_ms = 0\n", "timeout_ms"),
            ("[render]\nmatch = ['/a/']\nwait_for = \"  \"\n", "wait_for"),
            ("[render]\nmatch = ['/a/']\nwiat_for = \"x\"\n", "wiat_for"),
        ] {
            let text = format!("name = \"r\"\n{toml}");
            let err = CompiledSpider::from_toml(&text, Path::new("s.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
