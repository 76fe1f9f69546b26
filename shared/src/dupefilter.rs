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
//!
//! **Redis Cluster.** Every command touches one bucket key, so the buckets need no hash
//! tag: each key's whole name is hashed to a slot, and the 65,536 buckets spread evenly
//! over the 16,384 slots and so over every master. A batch is one pipeline on a
//! single server; on a cluster it is one pipeline per master (holding the commands on
//! the keys of its slots), all sent at once, so a batch is still one round trip. Key
//! names and bytes per URL are the same on both ([`cluster`] has the client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;

use crate::error::Error;

mod budget;
mod cluster;

pub use budget::{Admission, Ask};

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

/// What the dupefilter holds of a URL about to be scheduled at a depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Scheduled at that depth or shallower: not to be scheduled again.
    Held,
    /// Scheduled before, only deeper: to be scheduled again at the shorter depth.
    Deeper,
    /// Never scheduled.
    New,
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
        let verdicts = self.classify(fps, 0).await?;
        Ok(verdicts.iter().map(|v| *v == Verdict::Held).collect())
    }

    /// The shallowest depth `fp` is held at, if it is held at `upto` or shallower. One
    /// round trip (none when this process knows it is held at depth 0).
    pub async fn shallowest(&self, fp: u64, upto: u32) -> Result<Option<u32>, Error> {
        let upto = upto.min(MAX_TRACKED_DEPTH);
        match self {
            Dupefilter::Redis(r) => {
                if r.known().holds((fp, 0)) {
                    return Ok(Some(0));
                }
                Ok(r.first_held(&[(fp, upto)]).await?.pop().flatten())
            }
            Dupefilter::Memory(m) => {
                let seen = m.seen.lock().unwrap_or_else(|p| p.into_inner());
                Ok(seen.get(&fp).copied().filter(|&at| at <= upto))
            }
        }
    }

    /// For each (fingerprint, depth): held at that depth or shallower, held only at a
    /// deeper depth (up to `deepest`, the deepest anything is scheduled at), or new.
    /// One round trip.
    pub async fn classify(&self, fps: &[Seen], deepest: u32) -> Result<Vec<Verdict>, Error> {
        match self {
            Dupefilter::Redis(r) => r.classify(fps, deepest).await,
            Dupefilter::Memory(m) => Ok(m.classify(fps)),
        }
    }

    /// For each (fingerprint, depth), whether it is known without a round trip to have
    /// been added at that depth or shallower: by this process, or as Redis told it.
    /// `false` means "ask". One lock for the lot.
    pub fn knows(&self, fps: &[Seen]) -> Vec<bool> {
        match self {
            Dupefilter::Redis(r) => {
                let known = r.known();
                fps.iter().map(|&seen| known.holds(seen)).collect()
            }
            Dupefilter::Memory(m) => m
                .classify(fps)
                .into_iter()
                .map(|v| v == Verdict::Held)
                .collect(),
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
    conn: Conn,
    /// What this process already knows Redis holds (see [`KnownSeen`]).
    known: Arc<Mutex<KnownSeen>>,
    prefix: String,
    /// The crawl name (budget keys are named by it).
    crawl: String,
}

/// How the dupefilter reaches Redis.
#[derive(Clone)]
enum Conn {
    /// One server (the connection manager reconnects by itself after failures).
    Node(ConnectionManager),
    /// A Redis Cluster: requests go to the master of each key's slot; the slot layout
    /// is read again after a failure.
    Cluster(cluster::Cluster),
}

impl RedisDupefilter {
    /// Connect to `redis_url`: one `redis://` URL, or several comma-separated (nodes of
    /// one Redis Cluster, tried in turn for its layout). A single URL naming a node of a
    /// cluster (`cluster_enabled:1` in `INFO cluster`) is used as the cluster's entry
    /// point.
    pub async fn connect(redis_url: &str, crawl: &str) -> Result<Self, Error> {
        let urls: Vec<&str> = redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let conn = match urls.as_slice() {
            [] => {
                return Err(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no Redis URL given",
                ))))
            }
            [url] => {
                let node = connect_node(*url).await?;
                if is_cluster_node(&node).await? {
                    Conn::Cluster(cluster::Cluster::connect(&urls).await?)
                } else {
                    Conn::Node(node)
                }
            }
            _ => Conn::Cluster(cluster::Cluster::connect(&urls).await?),
        };
        Ok(RedisDupefilter {
            conn,
            known: Arc::default(),
            prefix: format!("jetcrawl:{crawl}:df:"),
            crawl: crawl.to_string(),
        })
    }

    /// Whether this dupefilter talks to a Redis Cluster (rather than one server).
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
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
        format!("{}{:04x}", self.prefix, bucket(fp))
    }

    async fn classify(&self, fps: &[Seen], deepest: u32) -> Result<Vec<Verdict>, Error> {
        let mut verdicts = vec![Verdict::Held; fps.len()];
        // Only what this process does not already know to be in Redis is asked: most
        // links on a page (navigation, footer) were seen thousands of pages ago.
        let ask: Vec<usize> = {
            let known = self.known();
            (0..fps.len()).filter(|&i| !known.holds(fps[i])).collect()
        };
        if ask.is_empty() {
            return Ok(verdicts);
        }
        let asks: Vec<Seen> = ask
            .iter()
            .map(|&i| (fps[i].0, fps[i].1.max(deepest)))
            .collect();
        let held = self.first_held(&asks).await?;
        for (&i, at) in ask.iter().zip(held) {
            verdicts[i] = match at {
                Some(d) if d <= fps[i].1 => Verdict::Held,
                Some(_) => Verdict::Deeper,
                None => Verdict::New,
            };
        }
        Ok(verdicts)
    }

    /// For each (fingerprint, up to a depth): the shallowest depth it is held at, if
    /// any up to that depth (one `SMISMEMBER` each, all in one round trip); what is
    /// found is noted in [`KnownSeen`].
    async fn first_held(&self, asks: &[Seen]) -> Result<Vec<Option<u32>>, Error> {
        let mut batch = Batch::new(&self.conn);
        for &(fp, upto) in asks {
            let key = self.key(fp);
            let mut cmd = redis::cmd("SMISMEMBER");
            cmd.arg(&key);
            for d in 0..=upto.min(MAX_TRACKED_DEPTH) {
                cmd.arg(member(fp, d));
            }
            batch.add(&key, cmd, true);
        }
        let found = batch.query().await?;
        let mut known = self.known();
        Ok(asks
            .iter()
            .zip(&found)
            .map(|(&(fp, _), at)| {
                // `at[d]`: held at depth d.
                let d = at.iter().position(|&x| x)? as u32;
                known.note((fp, d));
                Some(d)
            })
            .collect())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownSeen> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut batch = Batch::new(&self.conn);
        let asked: Vec<&Seen> = fps[..ask.min(fps.len())]
            .iter()
            .filter(|(_, d)| *d < deepest)
            .collect();
        // Asked before the adds (also in each master's pipeline on a cluster), so an
        // URL's own new member does not count.
        for &&(fp, depth) in &asked {
            let key = self.key(fp);
            let mut cmd = redis::cmd("SMISMEMBER");
            cmd.arg(&key);
            for d in depth + 1..=deepest {
                cmd.arg(member(fp, d));
            }
            batch.add(&key, cmd, true);
        }
        for &(fp, depth) in fps {
            let key = self.key(fp);
            let mut cmd = redis::cmd("SADD");
            cmd.arg(&key).arg(member(fp, depth));
            batch.add(&key, cmd, false);
        }
        let found = batch.query().await?;
        let mut known = self.known();
        for &seen in fps {
            known.note(seen);
        }
        Ok(found.iter().filter(|at| at.iter().any(|&x| x)).count() as u64)
    }

    async fn add(&self, fps: &[Seen]) -> Result<(), Error> {
        self.add_counting_deeper(fps, 0, 0).await.map(|_| ())
    }
}

async fn connect_node(url: impl IntoConnectionInfo) -> Result<ConnectionManager, Error> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECTION_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(2)
        // redis-rs' default backoff factor (100 on a 1 s base) makes the second
        // reconnect wait a minute or more: a short Redis blip would stall parsing.
        .set_factor(1)
        .set_max_delay(1_000);
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// Whether the server is a node of a Redis Cluster. A server that does not answer
/// `INFO cluster` (a proxy, a user without the permission) is taken as a single one.
async fn is_cluster_node(node: &ConnectionManager) -> Result<bool, Error> {
    let mut node = node.clone();
    match redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(&mut node)
        .await
    {
        Ok(info) => Ok(info.lines().any(|l| l.trim_end() == "cluster_enabled:1")),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e.into()),
        Err(e) => {
            tracing::info!(error = %e, "no answer to INFO cluster: taking redis as a single server");
            Ok(false)
        }
    }
}

const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Commands on bucket keys, sent together in one round trip: one pipeline on a single
/// server; on a cluster one pipeline per master, all in flight at once.
enum Batch {
    Node(ConnectionManager, redis::Pipeline),
    Cluster(cluster::Cluster, Vec<cluster::KeyCmd>),
}

impl Batch {
    fn new(conn: &Conn) -> Batch {
        match conn {
            Conn::Node(conn) => Batch::Node(conn.clone(), redis::pipe()),
            Conn::Cluster(cluster) => Batch::Cluster(cluster.clone(), Vec::new()),
        }
    }

    /// Adds `cmd`, on `key`; `reply`: its reply is part of the answer (else ignored).
    fn add(&mut self, key: &str, cmd: redis::Cmd, reply: bool) {
        match self {
            Batch::Node(_, pipe) => {
                pipe.add_command(cmd);
                if !reply {
                    pipe.ignore();
                }
            }
            Batch::Cluster(_, cmds) => cmds.push(cluster::KeyCmd {
                slot: cluster::slot(key.as_bytes()),
                cmd,
                reply,
            }),
        }
    }

    /// Sends the batch: the replies wanted, in the order their commands were added.
    async fn query(self) -> Result<Vec<Vec<bool>>, Error> {
        match self {
            Batch::Node(mut conn, pipe) => Ok(pipe.query_async(&mut conn).await?),
            Batch::Cluster(cluster, cmds) => cluster.query(&cmds).await,
        }
    }
}

/// A fingerprint's bucket: its top 16 bits.
fn bucket(fp: u64) -> u64 {
    fp >> (64 - BUCKET_BITS)
}

/// The set member for a fingerprint's low bits at a depth.
fn member(fp: u64, depth: u32) -> i64 {
    (((fp & MEMBER_MASK) << DEPTH_BITS) | u64::from(depth.min(MAX_TRACKED_DEPTH))) as i64
}

/// Fingerprints keyed by themselves: they are xxh3 hashes already, so hashing them
/// again (std's SipHash) only costs time.
pub type FpMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<FpHasher>>;

/// The hasher of [`FpMap`]: one multiplication by a per-process random odd number and a
/// rotation. The keys are xxh3 hashes of URLs a site chooses, and xxh3 has no secret: a
/// hostile page could pick links whose hashes share their low bits (a table's bucket
/// index) and make every lookup walk one long chain. The random factor puts bits from
/// the whole key, scrambled in a way no page can predict, where the index is taken.
#[derive(Default, Clone, Copy)]
pub struct FpHasher(u64);

impl FpHasher {
    fn mix(n: u64) -> u64 {
        static FACTOR: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let factor = *FACTOR.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x9e37_79b9_7f4a_7c15u64) | 1
        });
        n.wrapping_mul(factor).rotate_left(32)
    }
}

impl std::hash::Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 and u128 keys are hashed; anything else is folded in.
        for &b in bytes {
            self.0 = Self::mix(self.0.rotate_left(8) ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = Self::mix(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = Self::mix((n as u64) ^ ((n >> 64) as u64));
    }
}

/// A set of fingerprints (or other hashes) keyed by themselves, as [`FpMap`].
pub type FpSet = std::collections::HashSet<u64, std::hash::BuildHasherDefault<FpHasher>>;

/// What a parser knows the Redis dupefilter holds: fingerprints it added itself or was
/// told are there, each at the shallowest depth known. Redis only ever gains members,
/// so "held at depth d" stays true and such a URL is not asked about again: most of a
/// page's links are navigation seen on every page, and asking about them cost Redis
/// and the parser a command each. Two generations of [`KnownSeen::GENERATION`]
/// entries bound the memory (~3 MB): when the newer fills, the older is dropped and
/// what was still in use is noted again as it is met. Forgetting only costs a question.
/// (A dupefilter emptied by hand while parsers run is not noticed by them: restart
/// them after deleting a crawl's keys.)
#[derive(Default)]
struct KnownSeen {
    current: FpMap<u32>,
    previous: FpMap<u32>,
}

impl KnownSeen {
    const GENERATION: usize = 1 << 16;

    fn depth(&self, fp: u64) -> Option<u32> {
        self.current
            .get(&fp)
            .or_else(|| self.previous.get(&fp))
            .copied()
    }

    /// Whether `fp` is known to be held at `depth` or shallower.
    fn holds(&self, (fp, depth): Seen) -> bool {
        self.depth(fp)
            .is_some_and(|at| at <= depth.min(MAX_TRACKED_DEPTH))
    }

    /// Redis holds `fp` at `depth` or shallower.
    fn note(&mut self, (fp, depth): Seen) {
        let depth = depth.min(MAX_TRACKED_DEPTH);
        let depth = self.depth(fp).map_or(depth, |at| at.min(depth));
        if self.current.len() >= Self::GENERATION && !self.current.contains_key(&fp) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(fp, depth);
    }
}

/// An in-process dupefilter: each fingerprint with the shallowest depth it was added at.
#[derive(Clone, Default)]
pub struct MemoryDupefilter {
    seen: Arc<Mutex<FpMap<u32>>>,
    budget: Arc<Mutex<budget::MemoryBudget>>,
}

impl MemoryDupefilter {
    fn classify(&self, fps: &[Seen]) -> Vec<Verdict> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        fps.iter()
            .map(|(fp, depth)| match seen.get(fp) {
                Some(&at) if at <= (*depth).min(MAX_TRACKED_DEPTH) => Verdict::Held,
                Some(_) => Verdict::Deeper,
                None => Verdict::New,
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
mod tests;
