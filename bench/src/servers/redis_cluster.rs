//! A Redis Cluster on loopback: three masters, no replicas, no persistence.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{free_port, RedisServer};

/// Masters in a [`RedisCluster`].
const MASTERS: usize = 3;
/// Hash slots of every Redis Cluster.
const SLOTS: u32 = 16_384;
/// `cluster-node-timeout`: a killed master is marked failed after this, and cleared
/// again twice this after it is back (the default, 15 s, would make tests slow).
const NODE_TIMEOUT_MS: u64 = 2_000;
/// How long the masters get to agree that the cluster is whole.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Three redis-server masters joined in one Redis Cluster, each on a free loopback
/// port and in its own temp dir, slots split evenly; killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the masters, assigns each a third of the slots, joins them, and waits
    /// until every master reports `cluster_state:ok` with every slot served.
    pub async fn start() -> RedisCluster {
        let nodes = futures::future::join_all((0..MASTERS).map(|_| {
            RedisServer::start_with(|dir| {
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    // Explicit: the default (port + 10000) may be taken, or past 65535.
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                ]
                .into_iter()
                .map(OsString::from)
                .chain([dir.join("nodes.conf").into_os_string()])
                .collect()
            })
        }))
        .await;
        let cluster = RedisCluster { nodes };
        if let Err(e) = cluster.join().await {
            panic!("redis cluster did not form: {e}");
        }
        cluster
    }

    /// Every node's URL, comma-separated: what `REDIS_URL` takes for a cluster.
    pub fn url(&self) -> String {
        self.node_urls().join(",")
    }

    /// Each master's `redis://127.0.0.1:PORT`, in the order of [`RedisCluster::kill`]'s
    /// indices.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The masters' log files.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(RedisServer::log_path).collect()
    }

    /// The master processes' ids while they run (for CPU and memory readings).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.nodes.iter().map(RedisServer::pid).collect()
    }

    /// SIGKILL master `node`: its slots are unserved (no replica takes over) and, after
    /// `cluster-node-timeout`, the other masters refuse requests too (full coverage).
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts master `node` again, empty, on its port and with its cluster config (so
    /// its node id and slots), and waits until the cluster is whole again.
    pub async fn restart(&mut self, node: usize) {
        self.nodes[node].restart().await;
        if let Err(e) = self.wait_whole(Instant::now() + JOIN_TIMEOUT).await {
            panic!("redis cluster did not recover after a restart: {e}");
        }
    }

    /// How many keys matching `pattern` (a `SCAN MATCH` glob) each master holds, in
    /// node order.
    pub async fn count_keys(&self, pattern: &str) -> Vec<u64> {
        let mut counts = Vec::new();
        for url in self.node_urls() {
            let mut conn = connect(&url).await.unwrap_or_else(|e| panic!("{e}"));
            let (mut cursor, mut n) = (0u64, 0u64);
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("SCAN {url}: {e}"));
                n += keys.len() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            counts.push(n);
        }
        counts
    }

    async fn join(&self) -> Result<(), String> {
        let mut conns = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut conn = connect(&node.url()).await?;
            let (first, last) = slot_range(i);
            // Distinct epochs up front, so the masters need not settle collisions.
            query::<()>(
                &mut conn,
                &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()],
            )
            .await?;
            query::<()>(
                &mut conn,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )
            .await?;
            conns.push(conn);
        }
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let port = node.port.to_string();
            let bus: Vec<String> = query(&mut conns[i], &["CONFIG", "GET", "cluster-port"]).await?;
            let bus = bus.get(1).ok_or("CONFIG GET cluster-port: no value")?;
            query::<()>(&mut conns[0], &["CLUSTER", "MEET", "127.0.0.1", &port, bus]).await?;
        }
        self.wait_whole(Instant::now() + JOIN_TIMEOUT).await
    }

    /// Waits until every master knows all the others and sees every slot served.
    async fn wait_whole(&self, deadline: Instant) -> Result<(), String> {
        let want = [
            "cluster_state:ok".to_string(),
            format!("cluster_slots_ok:{SLOTS}"),
            format!("cluster_known_nodes:{MASTERS}"),
        ];
        for node in &self.nodes {
            loop {
                let info = match connect(&node.url()).await {
                    Ok(mut conn) => query::<String>(&mut conn, &["CLUSTER", "INFO"]).await,
                    Err(e) => Err(e),
                };
                let info = match info {
                    Ok(info) if want.iter().all(|w| info.lines().any(|l| l.trim() == w)) => break,
                    Ok(info) => info,
                    Err(e) => e,
                };
                if Instant::now() > deadline {
                    return Err(format!("{}: {info}", node.url()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// The slots master `i` serves: an even share, the last one taking the remainder.
fn slot_range(i: usize) -> (u32, u32) {
    let share = SLOTS / MASTERS as u32;
    let first = share * i as u32;
    let last = if i + 1 == MASTERS {
        SLOTS - 1
    } else {
        first + share - 1
    };
    (first, last)
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> Result<T, String> {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(conn)
        .await
        .map_err(|e| format!("{}: {e}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        let mut next = 0;
        for i in 0..MASTERS {
            let (first, last) = slot_range(i);
            assert_eq!(first, next);
            assert!(last >= first);
            next = last + 1;
        }
        assert_eq!(next, SLOTS);
    }
}
