//! `jetcrawl replay`: re-parse stored pages with the spider's current rules.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::dupefilter::{Dupefilter, RedisDupefilter};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::ReplayStart;

use crate::{services, Common};

/// `jetcrawl replay`'s flags.
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Redis for the URL dupefilter (links the new rules find go through it). A Redis
    /// Cluster: its nodes comma-separated (`redis://a:7000,redis://b:7000`), or any
    /// one node's URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Pages stored since: an RFC 3339 time, or an age such as 90s, 30m, 6h, 7d.
    #[arg(long, conflicts_with = "from_seq")]
    since: Option<String>,
    /// Pages from this PAGES stream sequence on.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Pages in hand at once (as `jetcrawl parser --concurrency`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// Replay until PAGES is caught up (or `stop`), then say how many pages were parsed.
pub async fn run(args: ReplayArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let start = match (&args.since, args.from_seq) {
        (Some(since), _) => ReplayStart::Since(parse_since(since, Utc::now())?),
        (None, Some(seq)) => ReplayStart::FromSeq(seq),
        (None, None) => ReplayStart::All,
    };
    let (spider, nats) = services::connect(&args.common, "replay", &stop).await?;
    let redis = RedisDupefilter::connect_with_retry(&args.redis_url, spider.name(), &stop)
        .await
        .context("connecting to redis")?;
    let cfg = jetcrawl_parser::ParserConfig {
        spider,
        nats: nats.clone(),
        dupefilter: Dupefilter::Redis(redis),
        metrics: Metrics::new(),
        concurrency: args.concurrency,
    };
    let pages = jetcrawl_parser::replay(cfg, start, stop).await?;
    nats.drain().await.ok();
    println!("replayed {pages} page(s)");
    Ok(())
}

/// An RFC 3339 time, or an age (`90s`, `30m`, `6h`, `7d`) before `now`.
pub(crate) fn parse_since(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    Ok(now - parse_age(s)?)
}

/// An age or a length of time: `90s`, `30m`, `6h`, `7d`.
pub(crate) fn parse_age(s: &str) -> anyhow::Result<chrono::Duration> {
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = match digits.parse() {
        Ok(n) if n >= 0 => n,
        _ => bail!("{s:?}: expected an RFC 3339 time or an age like 30m, 6h, 7d"),
    };
    Ok(match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => bail!("{s:?}: the unit must be s, m, h or d"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_ages() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).unwrap().to_rfc3339();
        assert_eq!(at("2026-01-01T12:00:00Z"), "2026-01-01T12:00:00+00:00");
        assert_eq!(at("30m"), "2026-01-01T23:30:00+00:00");
        assert_eq!(at("1d"), "2026-01-01T00:00:00+00:00");
        for bad in ["", "h", "-3h", "3w", "yesterday"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
