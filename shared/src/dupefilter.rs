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

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;

use crate::error::Error;

const BUCKET_BITS: u32 = 16;
const MEMBER_MASK: u64 = (1u64 << (64 - BUCKET_BITS)) - 1;

/// Check-then-add set of fingerprints, one per crawl.
#[derive(Clone)]
pub enum Dupefilter {
    /// Shared by every parser, in Redis.
    Redis(RedisDupefilter),
    /// In-process (embedded mode, tests).
    Memory(MemoryDupefilter),
}

impl Dupefilter {
    /// For each fingerprint, whether it was added before. One round trip.
    pub async fn check(&self, fps: &[u64]) -> Result<Vec<bool>, Error> {
        match self {
            Dupefilter::Redis(r) => r.check(fps).await,
            Dupefilter::Memory(m) => Ok(m.check(fps)),
        }
    }

    /// Record fingerprints as seen. One round trip.
    pub async fn add(&self, fps: &[u64]) -> Result<(), Error> {
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

    fn key_member(&self, fp: u64) -> (String, i64) {
        let bucket = fp >> (64 - BUCKET_BITS);
        (
            format!("{}{bucket:04x}", self.prefix),
            (fp & MEMBER_MASK) as i64,
        )
    }

    async fn check(&self, fps: &[u64]) -> Result<Vec<bool>, Error> {
        if fps.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for &fp in fps {
            let (key, member) = self.key_member(fp);
            pipe.cmd("SISMEMBER").arg(key).arg(member);
        }
        let mut conn = self.conn.clone();
        let seen: Vec<bool> = pipe.query_async(&mut conn).await?;
        Ok(seen)
    }

    async fn add(&self, fps: &[u64]) -> Result<(), Error> {
        if fps.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &fp in fps {
            let (key, member) = self.key_member(fp);
            pipe.cmd("SADD").arg(key).arg(member).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// An in-process dupefilter.
#[derive(Clone, Default)]
pub struct MemoryDupefilter {
    seen: Arc<Mutex<HashSet<u64>>>,
}

impl MemoryDupefilter {
    fn check(&self, fps: &[u64]) -> Vec<bool> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        fps.iter().map(|fp| seen.contains(fp)).collect()
    }

    fn add(&self, fps: &[u64]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(fps.iter().copied());
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
        }
    }

    #[tokio::test]
    async fn memory_check_then_add() {
        let df = Dupefilter::Memory(MemoryDupefilter::default());
        assert_eq!(df.check(&[1, 2]).await.unwrap(), vec![false, false]);
        df.add(&[2]).await.unwrap();
        assert_eq!(df.check(&[1, 2]).await.unwrap(), vec![false, true]);
    }
}
