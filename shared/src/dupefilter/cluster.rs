//! The dupefilter's Redis Cluster client. It maps each key's hash slot to the master
//! serving it, sends one pipeline per master per batch, and reads the slot layout
//! again after a failure.
//!
//! Why not redis-rs' `cluster_async`: while it recovers from a failed master it stops
//! polling its in-flight requests, yet one of them may hold its connection-map lock.
//! A batch has one request per bucket (hundreds in flight), so the recovery then waited
//! for that lock forever: after one master was restarted, every request timed out
//! until the process was restarted (`tests/dupefilter.rs`,
//! `a_master_down_fails_requests_until_it_is_back`, against redis 0.32.7). Here each
//! master has a `ConnectionManager`, which reconnects by itself, the same as the
//! single-server path uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionManager;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

use super::connect_node;
use crate::error::Error;

/// Hash slots of every Redis Cluster.
const SLOTS: usize = 16_384;

/// Connections to a cluster's masters, and which master serves each slot.
#[derive(Clone)]
pub(super) struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// The nodes `REDIS_URL` names: asked for the layout when no known master answers.
    seeds: Vec<ConnectionInfo>,
    layout: RwLock<Arc<Layout>>,
    /// Set by a failed request: the next batch reads the layout first.
    stale: AtomicBool,
    /// Held while the layout is read: one refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// The slot layout the cluster last reported.
#[derive(Default)]
struct Layout {
    /// Bumped on each refresh, so a task that waited for another's refresh uses it.
    generation: u64,
    /// For each slot, the index in `masters` of the master serving it.
    slots: Vec<Option<u16>>,
    masters: Vec<Master>,
}

#[derive(Clone)]
struct Master {
    host: String,
    port: u16,
    /// `None`: not reachable when the layout was read (a request for its slots fails
    /// and the next batch tries to connect again).
    conn: Option<ConnectionManager>,
}

/// A command on one key, for [`Cluster::query`].
pub(super) struct KeyCmd {
    pub slot: u16,
    pub cmd: redis::Cmd,
    /// Whether its reply is part of the answer (else ignored).
    pub reply: bool,
}

impl Cluster {
    /// Reads the layout from the first of `urls` that answers, and connects to every
    /// master.
    pub async fn connect(urls: &[&str]) -> Result<Cluster, Error> {
        let seeds = urls
            .iter()
            .map(|u| u.into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(ConnectionAddr::Unix(_)) = seeds.first().map(|s| &s.addr) {
            return Err(invalid(
                "a Redis Cluster is reached over TCP, not a unix socket",
            ));
        }
        let cluster = Cluster {
            inner: Arc::new(Inner {
                seeds,
                layout: RwLock::new(Arc::new(Layout::default())),
                stale: AtomicBool::new(true),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        };
        let layout = cluster.layout().await?;
        tracing::info!(
            masters = layout.masters.len(),
            "redis dupefilter on a redis cluster"
        );
        Ok(cluster)
    }

    /// Sends `cmds`, one pipeline per master, all at once; returns the replies wanted,
    /// in the order of `cmds`. Any failure marks the layout stale; a `MOVED` reply
    /// (slots moved to another master) is retried once on the new layout.
    pub async fn query(&self, cmds: &[KeyCmd]) -> Result<Vec<Vec<bool>>, Error> {
        match self.query_once(cmds).await {
            Err(Error::Redis(e)) if e.kind() == redis::ErrorKind::Moved => {
                self.query_once(cmds).await
            }
            answer => answer,
        }
    }

    async fn query_once(&self, cmds: &[KeyCmd]) -> Result<Vec<Vec<bool>>, Error> {
        let answer = self.send(cmds).await;
        if answer.is_err() {
            self.inner.stale.store(true, Ordering::Release);
        }
        answer
    }

    async fn send(&self, cmds: &[KeyCmd]) -> Result<Vec<Vec<bool>>, Error> {
        let layout = self.layout().await?;
        // Per master: its pipeline and where its commands' replies go in the answer.
        let mut pipes: HashMap<u16, (redis::Pipeline, Vec<usize>)> = HashMap::new();
        let mut replies = 0;
        for c in cmds {
            let master = layout.slots[usize::from(c.slot)]
                .ok_or_else(|| unavailable(format!("hash slot {} is not served", c.slot)))?;
            let (pipe, at) = pipes.entry(master).or_default();
            pipe.add_command(c.cmd.clone());
            if c.reply {
                at.push(replies);
                replies += 1;
            } else {
                pipe.ignore();
            }
        }
        let sent = pipes.into_iter().map(|(master, (pipe, at))| {
            let master = &layout.masters[usize::from(master)];
            async move {
                let Some(mut conn) = master.conn.clone() else {
                    return Err(unavailable(format!(
                        "master {}:{} unreachable",
                        master.host, master.port
                    )));
                };
                let found: Vec<Vec<bool>> = pipe.query_async(&mut conn).await?;
                Ok((at, found))
            }
        });
        let mut answer = vec![Vec::new(); replies];
        for (at, found) in futures::future::try_join_all(sent).await? {
            for (i, reply) in at.into_iter().zip(found) {
                answer[i] = reply;
            }
        }
        Ok(answer)
    }

    /// The layout, read again first if a request failed since it was read.
    async fn layout(&self) -> Result<Arc<Layout>, Error> {
        let current = self.current();
        if !self.inner.stale.load(Ordering::Acquire) {
            return Ok(current);
        }
        let _refreshing = self.inner.refreshing.lock().await;
        let latest = self.current();
        if latest.generation != current.generation {
            return Ok(latest);
        }
        let fresh = Arc::new(self.read_layout(&latest).await?);
        *self.inner.layout.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        self.inner.stale.store(false, Ordering::Release);
        Ok(fresh)
    }

    fn current(&self) -> Arc<Layout> {
        self.inner
            .layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `CLUSTER SLOTS` from the first known master, else seed, that answers; then a
    /// connection to every master (kept from `old` where the master is the same).
    async fn read_layout(&self, old: &Layout) -> Result<Layout, Error> {
        let mut last_err = None;
        let mut ranges = None;
        let known = old.masters.iter().filter_map(|m| {
            m.conn
                .clone()
                .map(|c| (Some(c), self.node_info(&m.host, m.port)))
        });
        let seeds = self.inner.seeds.iter().map(|s| (None, s.clone()));
        for (conn, info) in known.chain(seeds).collect::<Vec<_>>() {
            let asked = match conn {
                Some(conn) => Ok(conn),
                None => connect_node(info.clone()).await,
            };
            let reply = match asked {
                Ok(mut conn) => redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(e),
            };
            match reply.and_then(|v| parse_slots(v, host_of(&info))) {
                Ok(r) => {
                    ranges = Some(r);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(ranges) = ranges else {
            return Err(last_err.unwrap_or_else(|| invalid("no Redis Cluster node given")));
        };
        let mut layout = Layout {
            generation: old.generation + 1,
            slots: vec![None; SLOTS],
            masters: Vec::new(),
        };
        for (first, last, host, port) in ranges {
            let index = match layout
                .masters
                .iter()
                .position(|m| m.host == host && m.port == port)
            {
                Some(i) => i,
                None => {
                    let kept = old
                        .masters
                        .iter()
                        .find(|m| m.host == host && m.port == port)
                        .and_then(|m| m.conn.clone());
                    let conn = match kept {
                        Some(conn) => Some(conn),
                        None => match connect_node(self.node_info(&host, port)).await {
                            Ok(conn) => Some(conn),
                            Err(e) => {
                                tracing::warn!(error = %e, %host, port, "redis cluster master unreachable");
                                None
                            }
                        },
                    };
                    layout.masters.push(Master { host, port, conn });
                    layout.masters.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| invalid("more masters than slots"))?;
            for slot in first..=last.min(SLOTS as u16 - 1) {
                layout.slots[usize::from(slot)] = Some(index);
            }
        }
        Ok(layout)
    }

    /// How to reach a master: the first seed's credentials and TLS, its address.
    fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
        let mut info = self.inner.seeds[0].clone();
        info.addr = match info.addr {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        info
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (the part
/// between the first `{` and the next `}`, if not empty), mod 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn host_of(info: &ConnectionInfo) -> &str {
    match &info.addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host,
        ConnectionAddr::Unix(_) => "",
    }
}

/// `CLUSTER SLOTS`: `[[first, last, [host, port, ...], replicas...], ...]`, as
/// (first, last, master host, master port). A master without a known address (`""`
/// or `"?"`) is the node that was asked.
fn parse_slots(reply: Value, asked: &str) -> Result<Vec<(u16, u16, String, u16)>, Error> {
    let bad = || unavailable("malformed CLUSTER SLOTS reply".to_string());
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let [Value::Int(first), Value::Int(last), Value::Array(master), ..] = fields.as_slice()
        else {
            return Err(bad());
        };
        let (host, port) = match master.as_slice() {
            [host, Value::Int(port), ..] => (
                redis::from_redis_value::<String>(host).map_err(|_| bad())?,
                *port,
            ),
            _ => return Err(bad()),
        };
        let host = if host.is_empty() || host == "?" {
            asked.to_string()
        } else {
            host
        };
        let as_u16 = |n: i64| u16::try_from(n).map_err(|_| bad());
        out.push((as_u16(*first)?, as_u16(*last)?, host, as_u16(port)?));
    }
    Ok(out)
}

fn invalid(why: &'static str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        why,
    )))
}

/// A retryable failure (the parser holds its page and asks again).
fn unavailable(detail: String) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::ClusterDown,
        "redis cluster",
        detail,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag is no tag");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn cluster_slots_reply_parses() {
        let master = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                master("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                master("", 7001),
                master("10.0.0.9", 7009),
            ]),
        ]);
        assert_eq!(
            parse_slots(reply, "10.0.0.2").unwrap(),
            vec![
                (0, 5460, "10.0.0.1".to_string(), 7000),
                (5461, 16383, "10.0.0.2".to_string(), 7001)
            ]
        );
        assert!(parse_slots(Value::Int(1), "h").is_err());
    }
}
