//! The URL dupefilter: which request fingerprints have been scheduled already.
//!
//! Redis layout: a fingerprint's top 16 bits pick one of 65,536 set keys
//! (`jetcrawl:<crawl>:df:<bucket>`), its low 48 bits are the member, as an integer.
//! Small integer sets use Redis' `intset` encoding — 8 bytes a member plus the key's
//! share — instead of ~100 bytes for a hex string in one big hash-table set. The split
//! is exact: bucket and member together are the whole 64-bit fingerprint.
//! Redis 7.0 keeps a set as an intset up to `set-max-intset-entries` (512 by default);
//! the fullest buckets reach that near 27M fingerprints per crawl and then convert to
//! hash tables: raise the setting before crawling beyond ~25M URLs (docs/BENCHMARKS.md).
//!
//! **Depth.** A member also carries the depth the URL was scheduled at: `(low 48 bits
//! << 5) | depth` (depths from 31 on share the value 31), still one intset integer.
//! A URL counts as seen at depth `d` when it was scheduled at `d` or shallower
//! (`SMISMEMBER` over the members for depths `0..=d`, one command a URL). So a URL
//! first reached along a long path and found again along a shorter one is scheduled
//! again at the shorter depth, and what a depth-limited crawl reaches does not depend
//! on the order pages were parsed in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;

use crate::error::Error;

const BUCKET_BITS: u32 = 16;
const MEMBER_MASK: u64 = (1u64 << (64 - BUCKET_BITS)) - 1;
const DEPTH_BITS: u32 = 5;
/// Depths at and beyond this are stored as this.
pub const MAX_TRACKED_DEPTH: u32 = (1 << DEPTH_BITS) - 1;

/// A fingerprint and the depth it is (to be) scheduled at.
pub type Seen = (u64, u32);

/// The depth the dupefilter keeps for a URL scheduled at `depth` by a spider with
/// `max_depth`. Beyond [`MAX_TRACKED_DEPTH`] depths cannot be told apart, so a spider
/// whose `max_depth` is larger (a crawl not limited by depth) keeps none: every URL is
/// scheduled once, at the depth it was first found, and checked with one member.
pub fn tracked_depth(depth: u32, max_depth: u32) -> u32 {
    if max_depth > MAX_TRACKED_DEPTH {
        0
    } else {
        depth
    }
}

/// Check-then-add set of fingerprints, one per crawl.
#[derive(Clone)]
pub enum Dupefilter {
    /// Shared by every parser, in Redis.
    Redis(RedisDupefilter),
    /// In-process (embedded mode, tests).
    Memory(MemoryDupefilter),
}

impl Dupefilter {
    /// For each (fingerprint, depth), whether it was added at that depth or shallower.
    /// One round trip.
    pub async fn check(&self, fps: &[Seen]) -> Result<Vec<bool>, Error> {
        match self {
            Dupefilter::Redis(r) => r.check(fps).await,
            Dupefilter::Memory(m) => Ok(m.check(fps)),
        }
    }

    /// [`Dupefilter::add`], and count how many of the first `ask` were added before at
    /// a deeper depth only (up to `deepest`, the deepest anything is scheduled at):
    /// URLs scheduled again along a shorter path. One round trip.
    pub async fn add_counting_deeper(
        &self,
        fps: &[Seen],
        ask: usize,
        deepest: u32,
    ) -> Result<u64, Error> {
        match self {
            Dupefilter::Redis(r) => r.add_counting_deeper(fps, ask, deepest).await,
            Dupefilter::Memory(m) => {
                let deeper = m.deeper(&fps[..ask.min(fps.len())]);
                m.add(fps);
                Ok(deeper)
            }
        }
    }

    /// Record fingerprints as seen at their depths. One round trip.
    pub async fn add(&self, fps: &[Seen]) -> Result<(), Error> {
        match self {
            Dupefilter::Redis(r) => r.add(fps).await,
            Dupefilter::Memory(m) => {
                m.add(fps);
                Ok(())
            }
        }
    }
}

/// The Redis dupefilter (see the module doc for the layout).
#[derive(Clone)]
pub struct RedisDupefilter {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisDupefilter {
    /// Connect (the connection manager reconnects by itself after failures).
    pub async fn connect(redis_url: &str, crawl: &str) -> Result<Self, Error> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(std::time::Duration::from_secs(5))
            .set_response_timeout(std::time::Duration::from_secs(10))
            .set_number_of_retries(2)
            // redis-rs' default backoff factor (100 on a 1 s base) makes the second
            // reconnect wait a minute or more: a short Redis blip would stall parsing.
            .set_factor(1)
            .set_max_delay(1_000);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisDupefilter {
            conn,
            prefix: format!("jetcrawl:{crawl}:df:"),
        })
    }

    /// Connect, retrying with backoff while Redis is unreachable (a parser may start
    /// before Redis does), until `shutdown`.
    pub async fn connect_with_retry(
        redis_url: &str,
        crawl: &str,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Self, Error> {
        let mut delay = std::time::Duration::from_millis(250);
        loop {
            match Self::connect(redis_url, crawl).await {
                Ok(df) => return Ok(df),
                // A malformed URL will not get better by waiting.
                Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                    return Err(Error::Redis(e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis not reachable");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    fn key(&self, fp: u64) -> String {
        let bucket = fp >> (64 - BUCKET_BITS);
        format!("{}{bucket:04x}", self.prefix)
    }

    async fn check(&self, fps: &[Seen]) -> Result<Vec<bool>, Error> {
        if fps.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &(fp, depth) in fps {
            let cmd = pipe.cmd("SMISMEMBER").arg(self.key(fp));
            for d in 0..=depth.min(MAX_TRACKED_DEPTH) {
                cmd.arg(member(fp, d));
            }
        }
        let mut conn = self.conn.clone();
        let found: Vec<Vec<bool>> = pipe.query_async(&mut conn).await?;
        Ok(found.iter().map(|at| at.iter().any(|&x| x)).collect())
    }

    async fn add_counting_deeper(
        &self,
        fps: &[Seen],
        ask: usize,
        deepest: u32,
    ) -> Result<u64, Error> {
        if fps.is_empty() {
            return Ok(0);
        }
        let deepest = deepest.min(MAX_TRACKED_DEPTH);
        let mut pipe = redis::pipe();
        let asked: Vec<&Seen> = fps[..ask.min(fps.len())]
            .iter()
            .filter(|(_, d)| *d < deepest)
            .collect();
        // Asked before the adds, so an URL's own new member does not count.
        for &&(fp, depth) in &asked {
            let cmd = pipe.cmd("SMISMEMBER").arg(self.key(fp));
            for d in depth + 1..=deepest {
                cmd.arg(member(fp, d));
            }
        }
        for &(fp, depth) in fps {
            pipe.cmd("SADD")
                .arg(self.key(fp))
                .arg(member(fp, depth))
                .ignore();
        }
        let mut conn = self.conn.clone();
        let found: Vec<Vec<bool>> = pipe.query_async(&mut conn).await?;
        Ok(found.iter().filter(|at| at.iter().any(|&x| x)).count() as u64)
    }

    async fn add(&self, fps: &[Seen]) -> Result<(), Error> {
        self.add_counting_deeper(fps, 0, 0).await.map(|_| ())
    }
}

/// The set member for a fingerprint's low bits at a depth.
fn member(fp: u64, depth: u32) -> i64 {
    (((fp & MEMBER_MASK) << DEPTH_BITS) | u64::from(depth.min(MAX_TRACKED_DEPTH))) as i64
}

/// An in-process dupefilter: each fingerprint with the shallowest depth it was added at.
#[derive(Clone, Default)]
pub struct MemoryDupefilter {
    seen: Arc<Mutex<HashMap<u64, u32>>>,
}

impl MemoryDupefilter {
    fn check(&self, fps: &[Seen]) -> Vec<bool> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        fps.iter()
            .map(|(fp, depth)| {
                seen.get(fp)
                    .is_some_and(|&at| at <= (*depth).min(MAX_TRACKED_DEPTH))
            })
            .collect()
    }

    fn deeper(&self, fps: &[Seen]) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        fps.iter()
            .filter(|(fp, depth)| {
                seen.get(fp)
                    .is_some_and(|&at| at > (*depth).min(MAX_TRACKED_DEPTH))
            })
            .count() as u64
    }

    fn add(&self, fps: &[Seen]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for &(fp, depth) in fps {
            let depth = depth.min(MAX_TRACKED_DEPTH);
            seen.entry(fp)
                .and_modify(|at| *at = (*at).min(depth))
                .or_insert(depth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_member_cover_the_whole_fingerprint() {
        let d = MEMBER_MASK;
        for fp in [
            0u64,
            1,
            u64::MAX,
            0xabcd_0000_0000_0001,
            0x1234_5678_9abc_def0,
        ] {
            let bucket = fp >> (64 - BUCKET_BITS);
            let member = fp & d;
            assert_eq!((bucket << (64 - BUCKET_BITS)) | member, fp);
            assert!(i64::try_from(member).is_ok());
            for depth in [0, 7, MAX_TRACKED_DEPTH, 1000] {
                let m = super::member(fp, depth);
                assert!(m >= 0, "members stay positive integers (intset)");
                assert_eq!((m as u64) >> DEPTH_BITS, fp & MEMBER_MASK);
                assert_eq!((m as u64) & 31, u64::from(depth.min(MAX_TRACKED_DEPTH)));
            }
        }
    }

    #[tokio::test]
    async fn memory_check_then_add() {
        let df = Dupefilter::Memory(MemoryDupefilter::default());
        assert_eq!(
            df.check(&[(1, 0), (2, 0)]).await.unwrap(),
            vec![false, false]
        );
        df.add(&[(2, 0)]).await.unwrap();
        assert_eq!(
            df.check(&[(1, 0), (2, 0)]).await.unwrap(),
            vec![false, true]
        );
    }

    #[tokio::test]
    async fn memory_a_shallower_depth_is_news_a_deeper_one_is_not() {
        let df = Dupefilter::Memory(MemoryDupefilter::default());
        df.add(&[(9, 4)]).await.unwrap();
        assert_eq!(
            df.check(&[(9, 5), (9, 4), (9, 3)]).await.unwrap(),
            vec![true, true, false]
        );
        assert_eq!(
            df.add_counting_deeper(&[(9, 3), (8, 1), (9, 2)], 2, 8)
                .await
                .unwrap(),
            1,
            "(9, 3) was added at 4 before; (8, 1) is new; (9, 2) is not asked"
        );
        assert_eq!(df.check(&[(9, 3), (9, 6)]).await.unwrap(), vec![true, true]);
    }
}
