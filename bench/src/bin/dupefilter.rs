//! Redis dupefilter benchmark: memory per URL, check+add throughput, exactness.
//!
//! For each size N: a fresh `redis-server`, N random 64-bit fingerprints sent the way a
//! parser sends a page's links (check a batch, then add the unseen ones), from several
//! concurrent tasks sharing one pipelined connection. Then bytes per URL from
//! `INFO memory` (`used_memory` after − before, / N), `MEMORY USAGE` and
//! `OBJECT ENCODING` of sampled keys, and an exactness check: a sample of the inserted
//! fingerprints must all check as seen, fresh ones as unseen.
//!
//! With `--cluster`, the same against a 3-master Redis Cluster (memory, keys and the
//! key sample summed over the masters).
//!
//! `cargo run --release -p jetcrawl-bench --bin dupefilter -- --sizes 1000000,10000000`

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

use jetcrawl_bench::servers::{RedisCluster, RedisServer};
use jetcrawl_shared::dupefilter::{Dupefilter, RedisDupefilter};

/// Buckets of the Redis layout (top 16 bits of a fingerprint; see the dupefilter module).
const BUCKETS: usize = 1 << 16;

#[derive(Debug, Parser)]
#[command(about = "Memory per URL, throughput and exactness of the Redis dupefilter")]
struct Args {
    /// Fingerprint counts to measure, each against a fresh redis-server.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    sizes: Vec<usize>,
    /// Fingerprints per check and per add call (the links of one page).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Concurrent tasks (pages in flight), pipelined on one connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Inserted fingerprints checked again afterwards (spread over the whole run).
    #[arg(long, default_value_t = 1_000_000)]
    verify_sample: usize,
    /// Never-inserted fingerprints checked afterwards (each seen one is a false positive).
    #[arg(long, default_value_t = 100_000)]
    fresh: usize,
    /// Keys sampled (RANDOMKEY) for MEMORY USAGE, SCARD and OBJECT ENCODING.
    #[arg(long, default_value_t = 1_000)]
    key_sample: usize,
    /// Seed of the fingerprint generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Against a Redis Cluster of 3 masters instead of one redis-server.
    #[arg(long)]
    cluster: bool,
}

/// The servers of one size's run: dropped (killed, temp dirs removed) after it.
enum Servers {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Servers {
    async fn start(cluster: bool) -> Servers {
        if cluster {
            Servers::Cluster(RedisCluster::start().await)
        } else {
            Servers::One(RedisServer::start().await)
        }
    }

    /// What the dupefilter connects to.
    fn url(&self) -> String {
        match self {
            Servers::One(s) => s.url(),
            Servers::Cluster(c) => c.url(),
        }
    }

    /// One connection per server (per master), for INFO and key sampling.
    async fn connections(&self) -> Result<Vec<MultiplexedConnection>> {
        let urls = match self {
            Servers::One(s) => vec![s.url()],
            Servers::Cluster(c) => c.node_urls(),
        };
        let mut conns = Vec::new();
        for url in urls {
            conns.push(
                redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await
                    .context("connect to redis-server")?,
            );
        }
        Ok(conns)
    }
}

/// What one size measured.
struct Report {
    n: usize,
    used_before: u64,
    used_after: u64,
    keys: u64,
    max_bucket: usize,
    insert: Duration,
    seen_at_insert: u64,
    sample: KeySample,
    verified: usize,
    missed: u64,
    fresh: usize,
    false_positives: u64,
}

impl Report {
    fn bytes_per_url(&self) -> f64 {
        self.used_after.saturating_sub(self.used_before) as f64 / self.n as f64
    }

    fn fps_per_sec(&self) -> f64 {
        self.n as f64 / self.insert.as_secs_f64()
    }
}

/// `MEMORY USAGE`, `SCARD` and `OBJECT ENCODING` over sampled keys.
#[derive(Default)]
struct KeySample {
    keys: usize,
    bytes: u64,
    members: u64,
    encodings: BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.concurrency == 0 || args.sizes.contains(&0) {
        bail!("--batch, --concurrency and every --sizes value must be positive");
    }
    let mut reports = Vec::new();
    let mut server_info = String::new();
    for &n in &args.sizes {
        eprintln!("n = {n}: starting redis-server");
        let redis = Servers::start(args.cluster).await;
        let mut conns = redis.connections().await?;
        if server_info.is_empty() {
            server_info = describe_server(&mut conns[0]).await?;
            if args.cluster {
                server_info = format!("a cluster of {} masters, {server_info}", conns.len());
            }
        }
        reports.push(run_one(&args, n, &redis.url(), &mut conns).await?);
        // `redis` drops here: the servers are killed and their temp dirs removed.
    }
    print_table(&args, &server_info, &reports);
    Ok(())
}

async fn describe_server(conn: &mut MultiplexedConnection) -> Result<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let version = info_field(&info, "redis_version")
        .unwrap_or("?")
        .to_string();
    let intset: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("set-max-intset-entries")
        .query_async(conn)
        .await?;
    let intset = intset.get(1).cloned().unwrap_or_else(|| "?".to_string());
    Ok(format!("redis {version}, set-max-intset-entries {intset}"))
}

async fn run_one(
    args: &Args,
    n: usize,
    redis_url: &str,
    conns: &mut [MultiplexedConnection],
) -> Result<Report> {
    let crawl = format!("bench{n}");
    let df = Dupefilter::Redis(
        RedisDupefilter::connect(redis_url, &crawl)
            .await
            .context("connect the dupefilter")?,
    );
    let mut rng = StdRng::seed_from_u64(args.seed ^ n as u64);
    let fps: Arc<Vec<u64>> = Arc::new((0..n).map(|_| rng.random::<u64>()).collect());
    let max_bucket = max_bucket(&fps);

    let used_before = used_memory(conns).await?;
    eprintln!("n = {n}: check+add in batches of {}", args.batch);
    let started = Instant::now();
    let seen_at_insert = check_then_add(&df, &fps, args).await?;
    let insert = started.elapsed();
    let used_after = used_memory(conns).await?;
    let mut keys = 0u64;
    let mut sample = KeySample::default();
    let per_server = args.key_sample.div_ceil(conns.len());
    for conn in conns.iter_mut() {
        keys += redis::cmd("DBSIZE").query_async::<u64>(conn).await?;
        sample_keys(conn, per_server, &mut sample).await?;
    }

    eprintln!("n = {n}: verifying");
    let step = (n / args.verify_sample.max(1)).max(1);
    let inserted: Vec<u64> = fps.iter().step_by(step).copied().collect();
    let missed = count_seen(&df, &inserted, args, false).await?;
    let mut sorted = fps.to_vec();
    sorted.sort_unstable();
    let mut fresh_rng = StdRng::seed_from_u64(!(args.seed ^ n as u64));
    let mut fresh = Vec::with_capacity(args.fresh);
    while fresh.len() < args.fresh {
        let fp = fresh_rng.random::<u64>();
        if sorted.binary_search(&fp).is_err() {
            fresh.push(fp);
        }
    }
    let false_positives = count_seen(&df, &fresh, args, true).await?;

    Ok(Report {
        n,
        used_before,
        used_after,
        keys,
        max_bucket,
        insert,
        seen_at_insert,
        sample,
        verified: inserted.len(),
        missed,
        fresh: fresh.len(),
        false_positives,
    })
}

/// Sends every fingerprint as a parser would: `check` a batch, `add` the unseen ones,
/// from `--concurrency` tasks. Returns how many checked as already seen.
async fn check_then_add(df: &Dupefilter, fps: &Arc<Vec<u64>>, args: &Args) -> Result<u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (df, fps, next, seen) = (df.clone(), fps.clone(), next.clone(), seen.clone());
        let batch = args.batch;
        tasks.spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= fps.len() {
                    return Ok::<(), anyhow::Error>(());
                }
                let chunk = with_depths(&fps[start..(start + batch).min(fps.len())]);
                let checked = df.check(&chunk).await.context("dupefilter check")?;
                let new: Vec<(u64, u32)> = chunk
                    .iter()
                    .zip(&checked)
                    .filter(|(_, &was_seen)| !was_seen)
                    .map(|(&fp, _)| fp)
                    .collect();
                seen.fetch_add((chunk.len() - new.len()) as u64, Ordering::Relaxed);
                df.add(&new).await.context("dupefilter add")?;
            }
        });
    }
    let total = fps.len();
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result.context("insert task panicked")??,
                None => break,
            },
            _ = progress.tick() => {
                let done = next.load(Ordering::Relaxed).min(total);
                eprintln!(
                    "  {done}/{total} ({:.0} fps/s)",
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(seen.load(Ordering::Relaxed))
}

/// Each fingerprint at a depth of 0 to 11, as a crawl's links would be (a depth is
/// part of the stored member, and a check asks for every depth up to its own).
fn with_depths(fps: &[u64]) -> Vec<(u64, u32)> {
    fps.iter().map(|&fp| (fp, (fp % 12) as u32)).collect()
}

/// Checks `fps` (no add) and counts those whose answer is `seen`.
async fn count_seen(df: &Dupefilter, fps: &[u64], args: &Args, seen: bool) -> Result<u64> {
    let fps = Arc::new(fps.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (df, fps, next) = (df.clone(), fps.clone(), next.clone());
        let batch = args.batch;
        tasks.spawn(async move {
            let mut count = 0u64;
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= fps.len() {
                    return Ok::<u64, anyhow::Error>(count);
                }
                let chunk = with_depths(&fps[start..(start + batch).min(fps.len())]);
                let checked = df.check(&chunk).await.context("dupefilter check")?;
                count += checked.iter().filter(|&&s| s == seen).count() as u64;
            }
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result.context("check task panicked")??;
    }
    Ok(total)
}

/// The fullest bucket: a bucket past `set-max-intset-entries` stops being an intset.
fn max_bucket(fps: &[u64]) -> usize {
    let mut counts = vec![0usize; BUCKETS];
    for &fp in fps {
        counts[(fp >> 48) as usize] += 1;
    }
    counts.into_iter().max().unwrap_or(0)
}

/// `used_memory` summed over the servers.
async fn used_memory(conns: &mut [MultiplexedConnection]) -> Result<u64> {
    let mut total = 0;
    for conn in conns {
        let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
        total += info_field(&info, "used_memory")
            .and_then(|v| v.parse::<u64>().ok())
            .context("INFO memory has no used_memory")?;
    }
    Ok(total)
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Up to `want` distinct keys of one server by RANDOMKEY, each measured into `sample`.
async fn sample_keys(
    conn: &mut MultiplexedConnection,
    want: usize,
    sample: &mut KeySample,
) -> Result<()> {
    let mut keys = BTreeSet::new();
    for _ in 0..want.saturating_mul(3) {
        if keys.len() >= want {
            break;
        }
        let key: Option<String> = redis::cmd("RANDOMKEY").query_async(conn).await?;
        match key {
            Some(key) => keys.insert(key),
            None => break,
        };
    }
    for key in &keys {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await?;
        let members: u64 = redis::cmd("SCARD").arg(key).query_async(conn).await?;
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(conn)
            .await?;
        sample.keys += 1;
        sample.bytes += bytes;
        sample.members += members;
        *sample.encodings.entry(encoding).or_default() += 1;
    }
    Ok(())
}

fn print_table(args: &Args, server: &str, reports: &[Report]) {
    println!(
        "\njetcrawl Redis dupefilter: {server}; {} buckets; batches of {}, {} concurrent tasks",
        BUCKETS, args.batch, args.concurrency
    );
    println!(
        "{:>10} {:>10} {:>11} {:>10} {:>7} {:>8} {:>14} {:>12} {:>9} {:>15} {:>13}",
        "N",
        "bytes/URL",
        "key bytes/",
        "members/",
        "max",
        "keys",
        "encoding",
        "check+add",
        "time",
        "inserted seen",
        "false pos."
    );
    println!(
        "{:>10} {:>10} {:>11} {:>10} {:>7} {:>8} {:>14} {:>12} {:>9} {:>15} {:>13}",
        "",
        "(INFO Δ/N)",
        "member",
        "key",
        "bucket",
        "",
        "(sampled)",
        "fps/s",
        "s",
        "(sample)",
        "(fresh)"
    );
    for r in reports {
        let s = &r.sample;
        let encoding = s
            .encodings
            .iter()
            .map(|(e, c)| format!("{e}×{c}"))
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:>10} {:>10.2} {:>11.2} {:>10.1} {:>7} {:>8} {:>14} {:>12.0} {:>9.1} {:>15} {:>13}",
            r.n,
            r.bytes_per_url(),
            s.bytes as f64 / s.members.max(1) as f64,
            s.members as f64 / s.keys.max(1) as f64,
            r.max_bucket,
            r.keys,
            encoding,
            r.fps_per_sec(),
            r.insert.as_secs_f64(),
            format!("{}/{}", r.verified as u64 - r.missed, r.verified),
            format!("{}/{}", r.false_positives, r.fresh),
        );
    }
    println!();
    for r in reports {
        println!(
            "N={}: used_memory {} -> {} bytes; {} of N already seen at insert (random collisions); {} inserted fps missed",
            r.n, r.used_before, r.used_after, r.seen_at_insert, r.missed
        );
        let not_intset: usize = r
            .sample
            .encodings
            .iter()
            .filter(|(e, _)| e.as_str() != "intset")
            .map(|(_, c)| c)
            .sum();
        if not_intset > 0 {
            println!(
                "  WARNING: {not_intset} of {} sampled keys are not intsets: a bucket past \
                 set-max-intset-entries becomes a hash table (fullest bucket: {} members)",
                r.sample.keys, r.max_bucket
            );
        }
    }
}
