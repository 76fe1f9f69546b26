//! Who is alive, and who owns what: one JetStream KV bucket per crawl,
//! `JETCRAWL_<crawl>_LIVE`, whose entries vanish [`LIVE_TTL`] after their last write.
//!
//! - `<stage>.<id>`: every running instance's heartbeat ([`Instance`], JSON), written
//!   every [`HEARTBEAT_EVERY`]; a process that dies drops out within the TTL.
//! - `partition.<p>`: the id of the fetcher that owns frontier partition `p`, created
//!   only if absent and renewed with compare-and-set (see the fetcher's `lease`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Spider;
use crate::error::Error;

/// How long an entry outlives its last write.
pub const LIVE_TTL: Duration = Duration::from_secs(10);
/// How often instances write their heartbeat (and fetchers renew their leases).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The bucket name of a crawl.
pub fn bucket_name(crawl: &str) -> String {
    format!("JETCRAWL_{crawl}_LIVE")
}

/// The key of a partition's lease.
pub fn partition_key(partition: u32) -> String {
    format!("partition.{partition}")
}

/// One running process, as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique per process: `<host>-<pid>-<random>`.
    pub id: String,
    /// `fetcher`, `parser`, `sink`, `renderer`.
    pub stage: String,
    /// The machine (or pod) it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// jetcrawl's version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last wrote this record.
    pub heartbeat_at: DateTime<Utc>,
    /// Fetchers: the partitions it owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<u32>,
}

impl Instance {
    /// A record for this process.
    pub fn this_process(stage: &str) -> Self {
        let host = hostname();
        let pid = std::process::id();
        let now = Utc::now();
        Instance {
            id: format!("{host}-{pid}-{:04x}", rand::random::<u16>()),
            stage: stage.to_string(),
            host,
            pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            heartbeat_at: now,
            partitions: Vec::new(),
        }
    }

    /// Its key in the bucket.
    pub fn key(&self) -> String {
        format!("{}.{}", self.stage, self.id)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        // Keys allow letters, digits, '-', '_' and '.' separators only.
        .map(|h| {
            h.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Create the crawl's bucket, or open it; one made with another replica count is
/// brought to the spider's (kept as it is, with a warning, if the server refuses).
pub async fn bucket(js: &jetstream::Context, spider: &Spider) -> Result<kv::Store, Error> {
    bucket_named(js, spider, bucket_name(&spider.name)).await
}

/// [`bucket`] under another name: the renderers' leases
/// ([`crate::render::render_bucket_name`]) live apart from the fetchers'.
pub async fn bucket_named(
    js: &jetstream::Context,
    spider: &Spider,
    name: String,
) -> Result<kv::Store, Error> {
    let replicas = spider.streams.replicas;
    let config = kv::Config {
        bucket: name.clone(),
        description: format!(
            "jetcrawl {}: live instances and partition leases",
            spider.name
        ),
        history: 1,
        max_age: LIVE_TTL,
        // Leases must survive a server restart: an owner still inside its lease would
        // otherwise meet a second owner of the same partition.
        storage: jetstream::stream::StorageType::File,
        // On a cluster, leases must also survive the loss of a node.
        num_replicas: replicas,
        ..Default::default()
    };
    // Create-if-absent first: stages starting together then never race on updates
    // (concurrent updates of a stream being created can go unanswered on a cluster).
    let create_err = match js.create_key_value(config.clone()).await {
        Ok(store) => return Ok(store),
        Err(e) => e,
    };
    let store = js
        .get_key_value(&name)
        .await
        .map_err(|e| Error::js("key-value bucket", format!("{create_err}; open: {e}")))?;
    let has = store.status().await.map(|s| s.info.config.num_replicas);
    if has.as_ref().is_ok_and(|&n| n == replicas) {
        return Ok(store);
    }
    // A cluster busy scaling the crawl's streams may not answer at once (seen under
    // load: the update timed out and the bucket stayed R1): retry what is transient.
    let give_up_at = tokio::time::Instant::now() + crate::topology::SETUP_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match js.update_key_value(config.clone()).await {
            Ok(updated) => return Ok(updated),
            Err(e)
                if crate::topology::update_transient(&e, replicas)
                    && tokio::time::Instant::now() < give_up_at =>
            {
                tracing::warn!(bucket = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "live bucket not updated yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(bucket = %name, replicas, error = %e, "live bucket kept at its replica count");
                return Ok(store);
            }
        }
    }
}

/// Every live entry of the bucket, key → value.
pub async fn entries(store: &kv::Store) -> Result<BTreeMap<String, (Vec<u8>, u64)>, Error> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| Error::js("list live keys", e))?
        .try_collect()
        .await
        .map_err(|e| Error::js("list live keys", e))?;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(entry) = store
            .entry(key.as_str())
            .await
            .map_err(|e| Error::js("read live key", e))?
        {
            if entry.operation == kv::Operation::Put {
                out.insert(key, (entry.value.to_vec(), entry.revision));
            }
        }
    }
    Ok(out)
}

/// What the bucket says: live instances and partition owners.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Every instance with a heartbeat inside the TTL.
    pub instances: Vec<Instance>,
    /// Partition → owner id.
    pub owners: BTreeMap<u32, String>,
}

/// Read the bucket once.
pub async fn read(store: &kv::Store) -> Result<Live, Error> {
    let mut live = Live::default();
    for (key, (value, _)) in entries(store).await? {
        if let Some(p) = key.strip_prefix("partition.") {
            if let Ok(p) = p.parse() {
                live.owners
                    .insert(p, String::from_utf8_lossy(&value).into_owned());
            }
        } else if let Ok(instance) = serde_json::from_slice::<Instance>(&value) {
            live.instances.push(instance);
        }
    }
    Ok(live)
}

/// Write `instance`'s heartbeat now.
pub async fn beat(store: &kv::Store, instance: &mut Instance) -> Result<(), Error> {
    instance.heartbeat_at = Utc::now();
    let value = serde_json::to_vec(instance).unwrap_or_default();
    store
        .put(instance.key(), value.into())
        .await
        .map_err(|e| Error::js("heartbeat", e))?;
    Ok(())
}

/// Keep `instance`'s heartbeat until `shutdown`, then remove it. Failures are logged
/// and retried at the next beat: a stage keeps working when only its heartbeat fails.
pub async fn keep_alive(
    js: jetstream::Context,
    spider: Spider,
    mut instance: Instance,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut store = None;
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if store.is_none() {
            store = bucket(&js, &spider).await.ok();
        }
        if let Some(s) = &store {
            if let Err(e) = beat(s, &mut instance).await {
                tracing::debug!(error = %e, "heartbeat not written");
            }
        }
    }
    if let Some(s) = &store {
        let _ = s.delete(instance.key()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_are_valid_kv_keys() {
        let i = Instance::this_process("fetcher");
        let key = i.key();
        assert!(key.starts_with("fetcher."));
        assert!(key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        assert!(i.id.contains(&std::process::id().to_string()));
        assert_eq!(partition_key(7), "partition.7");
    }
}
