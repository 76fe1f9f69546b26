//! Partition ownership: each `frontier.<p>` is fetched by exactly one live fetcher.
//!
//! Every fetcher heartbeats in the crawl's KV bucket (`fetcher.<id>`) and assigns
//! partitions by rendezvous hashing over the live fetchers it sees, so a join or a
//! leave moves about P/n partitions. It takes a partition assigned to it by creating
//! `partition.<p>` (only if absent) and keeps it by compare-and-set renewals every
//! [`HEARTBEAT_EVERY`]; the entry vanishes [`LIVE_TTL`] after the last renewal, so a
//! dead owner's partitions are taken again within about that.
//!
//! **Fencing.** A fetcher that cannot renew (paused, cut off) must stop before its
//! entry can expire and another take over: a lease [`Lease::holds`] only until
//! `sent + LIVE_TTL - FENCE_MARGIN`, where `sent` is when its last successful renewal
//! left this process (the server stamps the entry later than that). Monotonic time
//! keeps running while a process is stopped, so a fetcher resumed after SIGSTOP sees
//! its leases ended and starts nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::presence::{self, partition_key, Instance, HEARTBEAT_EVERY, LIVE_TTL};
use jetcrawl_shared::telemetry::Metrics;

/// How long before its entry could expire a lease stops holding.
pub const FENCE_MARGIN: Duration = Duration::from_secs(3);

/// One owned partition.
#[derive(Debug)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// Cancelled when the partition is handed over, lost, or the process stops.
    pub revoked: CancellationToken,
    base: Instant,
    /// Milliseconds after `base` at which the lease stops holding.
    until_ms: AtomicU64,
    /// Revoked while still held (handed over, or the process stopping): what it holds
    /// may be handed back at once. A lease that was lost gives nothing back: the
    /// server may have delivered those messages to the new owner since, and a nak
    /// from here would make it deliver them again.
    graceful: std::sync::atomic::AtomicBool,
}

impl Lease {
    fn new(partition: u32, sent: Instant, parent: &CancellationToken) -> Self {
        let lease = Lease {
            partition,
            revoked: parent.child_token(),
            base: sent,
            until_ms: AtomicU64::new(0),
            graceful: std::sync::atomic::AtomicBool::new(false),
        };
        lease.extend(sent);
        lease
    }

    /// Whether a request to one of the partition's hosts may start now.
    pub fn holds(&self) -> bool {
        !self.revoked.is_cancelled()
            && (self.base.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }

    /// Whether what this lease's partition holds may be handed back (nak) now.
    pub fn may_hand_back(&self) -> bool {
        self.graceful.load(Ordering::Acquire)
    }

    /// End the lease while it still holds: a hand-over or a shutdown.
    fn hand_over(&self) {
        if self.holds() {
            self.graceful.store(true, Ordering::Release);
        }
        self.revoked.cancel();
    }

    /// A renewal sent at `sent` succeeded.
    fn extend(&self, sent: Instant) {
        let until = sent.saturating_duration_since(self.base) + LIVE_TTL - FENCE_MARGIN;
        self.until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }
}

/// Who owns each partition among `live` fetcher ids: rendezvous hashing with bounded
/// load. Pairs (partition, fetcher) are taken in order of their score, highest first,
/// and a fetcher takes no more than ceil(P / n) partitions, so every fetcher computes
/// the same answer, a join or a leave moves few partitions, and no fetcher is left with
/// none (plain rendezvous over 16 partitions can give one fetcher of three nothing).
pub fn assignment(partitions: u32, live: &[String]) -> Vec<Option<&str>> {
    let mut owners: Vec<Option<&str>> = vec![None; partitions as usize];
    if live.is_empty() {
        return owners;
    }
    let cap = (partitions as usize).div_ceil(live.len());
    let mut pairs: Vec<(u64, u32, &str)> = (0..partitions)
        .flat_map(|p| {
            live.iter()
                .map(move |id| (rendezvous(id, p), p, id.as_str()))
        })
        .collect();
    // Highest score first; ties (never in practice) broken by id, then partition.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)).then(a.1.cmp(&b.1)));
    let mut load: HashMap<&str, usize> = HashMap::new();
    for (_, p, id) in pairs {
        let slot = &mut owners[p as usize];
        let taken = load.entry(id).or_default();
        if slot.is_none() && *taken < cap {
            *slot = Some(id);
            *taken += 1;
        }
    }
    owners
}

fn rendezvous(id: &str, partition: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{id}/{partition}").as_bytes())
}

/// What runs a partition while it is owned: started on acquisition, it must return
/// once `lease.revoked` is cancelled and the partition's hosts are quiet.
pub trait PartitionRunner: Send + Sync + 'static {
    /// Fetch the partition until its lease is revoked.
    fn run(&self, lease: Arc<Lease>) -> impl std::future::Future<Output = ()> + Send;
}

struct Held {
    lease: Arc<Lease>,
    revision: u64,
    /// Handing over: the runner is winding down, the entry is deleted when it is done.
    releasing: bool,
}

/// Keep this fetcher's heartbeat and leases until `shutdown`; run `runner` on every
/// partition it owns. Returns once every partition is handed back.
pub async fn own_partitions<R: PartitionRunner>(
    store: kv::Store,
    mut me: Instance,
    partitions: u32,
    runner: Arc<R>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    let mut running = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u32>();
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let change = |what: &str| {
        metrics
            .lease_changes
            .get_or_create(&vec![("change".to_string(), what.to_string())])
            .inc();
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(p) = done_rx.recv() => {
                if let Some(h) = held.remove(&p) {
                    // Handed over: let the next owner in at once.
                    let _ = store
                        .delete_expect_revision(partition_key(p), Some(h.revision))
                        .await;
                    change("released");
                    tracing::info!(partition = p, "partition handed over");
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        while running.try_join_next().is_some() {}
        renew(&store, &me, &mut held, &change).await;
        me.partitions = held.keys().copied().collect();
        if let Err(e) = presence::beat(&store, &mut me).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
        let live = match presence::read(&store).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read live fetchers; keeping what is owned");
                continue;
            }
        };
        let mut fetchers: Vec<String> = live
            .instances
            .iter()
            // Fetchers divide the frontier among fetchers, renderers (in a bucket of
            // their own) the render partitions among renderers.
            .filter(|i| i.stage == me.stage)
            .map(|i| i.id.clone())
            .collect();
        if !fetchers.contains(&me.id) {
            fetchers.push(me.id.clone());
        }
        metrics.live_fetchers.set(fetchers.len() as i64);
        let owners = assignment(partitions, &fetchers);
        for p in 0..partitions {
            let mine = owners[p as usize] == Some(me.id.as_str());
            match held.get_mut(&p) {
                Some(h) if !mine && !h.releasing => {
                    h.releasing = true;
                    h.lease.hand_over();
                }
                Some(_) => {}
                None if mine && !live.owners.contains_key(&p) => {
                    let sent = Instant::now();
                    match store.create(partition_key(p), me.id.clone().into()).await {
                        Ok(revision) => {
                            let lease = Arc::new(Lease::new(p, sent, &shutdown));
                            held.insert(
                                p,
                                Held {
                                    lease: lease.clone(),
                                    revision,
                                    releasing: false,
                                },
                            );
                            change("acquired");
                            tracing::info!(partition = p, "partition acquired");
                            let (runner, done) = (runner.clone(), done_tx.clone());
                            running.spawn(async move {
                                runner.run(lease).await;
                                let _ = done.send(p);
                            });
                        }
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                        Err(e) => tracing::debug!(partition = p, error = %e, "lease not taken"),
                    }
                }
                None => {}
            }
        }
        metrics.partitions_owned.set(held.len() as i64);
    }
    // Shutdown: every lease is handed over (the shutdown token is their parent, so mark
    // them first); wait for the runners to wind down, then free the partitions so the
    // other fetchers take them at once.
    for h in held.values() {
        h.lease.hand_over();
    }
    while running.join_next().await.is_some() {}
    for (p, h) in held {
        let _ = store
            .delete_expect_revision(partition_key(p), Some(h.revision))
            .await;
    }
    metrics.partitions_owned.set(0);
    let _ = store.delete(me.key()).await;
}

/// Renew every held lease (compare-and-set on its revision, all at once). A lease
/// whose entry changed hands or expired is lost: its runner is told to stop.
async fn renew(
    store: &kv::Store,
    me: &Instance,
    held: &mut BTreeMap<u32, Held>,
    change: &impl Fn(&str),
) {
    let sent = Instant::now();
    let renewals = held.iter().map(|(&p, h)| {
        let store = store.clone();
        let id = me.id.clone();
        let revision = h.revision;
        async move { (p, store.update(partition_key(p), id.into(), revision).await) }
    });
    let results: HashMap<u32, _> = futures::future::join_all(renewals)
        .await
        .into_iter()
        .collect();
    for (p, result) in results {
        let Some(h) = held.get_mut(&p) else { continue };
        match result {
            Ok(revision) => {
                h.revision = revision;
                h.lease.extend(sent);
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                if let Some(revision) = own_newer_revision(store, p, &me.id, h.revision).await {
                    // An earlier renewal was stored but its answer lost (a leader
                    // election): the entry is still ours. Not extended: when it was
                    // written is unknown; the next renewal extends it.
                    tracing::info!(partition = p, "partition lease renewed unseen; resuming");
                    h.revision = revision;
                    continue;
                }
                tracing::warn!(partition = p, "partition lease lost to another fetcher");
                h.lease.revoked.cancel();
                if !h.releasing {
                    change("lost");
                }
                // The runner still winds down and reports; nothing is deleted then,
                // the revision no longer matches.
                h.releasing = true;
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "partition lease not renewed");
            }
        }
    }
}

/// The revision of partition `p`'s entry if it still names `id` at a revision after
/// `known`: a renewal of ours that went through without its answer reaching us.
async fn own_newer_revision(store: &kv::Store, p: u32, id: &str, known: u64) -> Option<u64> {
    let entry = store.entry(partition_key(p)).await.ok()??;
    (entry.operation == kv::Operation::Put
        && entry.value == id.as_bytes()
        && entry.revision > known)
        .then_some(entry.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}-abcd")).collect()
    }

    #[test]
    fn a_join_moves_few_partitions_and_every_fetcher_gets_its_share() {
        for p in [16u32, 64] {
            for n in 1..=5usize {
                let (fewer, more) = (ids(n), ids(n + 1));
                let before = assignment(p, &fewer);
                let after = assignment(p, &more);
                assert!(before.iter().all(Option::is_some));
                let moved = (0..p as usize).filter(|&x| before[x] != after[x]).count();
                // Ideal is P/(n+1); bounded load costs a little more.
                let ideal = p as usize / (n + 1);
                assert!(
                    moved <= 2 * ideal + 2,
                    "P={p} n={n}: {moved} moved, ideal {ideal}"
                );
                for id in &more {
                    let owned = after.iter().filter(|o| **o == Some(id.as_str())).count();
                    let hi = (p as usize).div_ceil(n + 1);
                    assert!(
                        owned >= 1 && owned <= hi,
                        "P={p} n={}: {id} owns {owned}",
                        n + 1
                    );
                }
            }
        }
    }

    #[test]
    fn every_fetcher_computes_the_same_owner() {
        let mut a = ids(5);
        let b = a.clone();
        a.reverse();
        assert_eq!(assignment(32, &a), assignment(32, &b));
        assert_eq!(assignment(4, &[]), vec![None; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_stops_holding_before_its_entry_can_expire() {
        let root = CancellationToken::new();
        let sent = Instant::now();
        let lease = Lease::new(3, sent, &root);
        assert!(lease.holds());
        tokio::time::advance(LIVE_TTL - FENCE_MARGIN - Duration::from_millis(10)).await;
        assert!(lease.holds());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!lease.holds(), "fenced {FENCE_MARGIN:?} before the TTL");
        lease.extend(Instant::now());
        assert!(lease.holds(), "a renewal extends it");
        lease.revoked.cancel();
        assert!(!lease.holds());
    }
}
