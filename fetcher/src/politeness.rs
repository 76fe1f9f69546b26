//! Per-host politeness inside one fetcher: a minimum delay between request starts,
//! a cap on concurrent requests, Crawl-delay, and autothrottle from observed latency.
//! A host with a long queue refuses more waiters, so the caller hands the request back
//! to the stream (delayed nak) instead of holding it in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Hosts remembered before idle ones are pruned.
const PRUNE_FLOOR: usize = 10_000;

/// Politeness settings for every host.
#[derive(Debug, Clone)]
pub struct PolitenessConfig {
    /// Minimum delay between request starts to one host.
    pub delay: Duration,
    /// Requests in flight to one host at once.
    pub concurrency: u32,
    /// Follow observed latency: delay >= latency / concurrency.
    pub autothrottle: bool,
    /// Requests that may wait for one host; more are refused with [`Backlog`].
    pub max_waiting: u32,
}

/// Gatekeeper for all hosts of one process.
#[derive(Clone)]
pub struct Politeness {
    cfg: PolitenessConfig,
    hosts: Arc<Mutex<HashMap<String, HostState>>>,
    /// Host count at which idle hosts are next pruned (doubles when pruning frees
    /// little, so a broad crawl does not rescan the map on every request).
    prune_at: Arc<std::sync::atomic::AtomicUsize>,
}

struct HostState {
    next_start: Instant,
    in_flight: u32,
    waiting: u32,
    latency: Option<Duration>,
    released: Arc<Notify>,
    last_used: Instant,
}

/// The host has more waiters than allowed; try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// A guess of when a slot will be free.
    pub retry_after: Duration,
}

/// A slot for one request to one host; frees itself on drop.
pub struct HostPermit {
    host: String,
    hosts: Arc<Mutex<HashMap<String, HostState>>>,
    autothrottle: bool,
    started: Instant,
}

impl HostPermit {
    /// Report the request's latency (autothrottle learns from it).
    pub fn finish(self, latency: Duration) {
        if self.autothrottle {
            let mut hosts = lock(&self.hosts);
            if let Some(st) = hosts.get_mut(&self.host) {
                st.latency = Some(match st.latency {
                    // Exponential moving average, weight 1/4 on the new sample.
                    Some(old) => (old * 3 + latency) / 4,
                    None => latency,
                });
            }
        }
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        let mut hosts = lock(&self.hosts);
        if let Some(st) = hosts.get_mut(&self.host) {
            st.in_flight = st.in_flight.saturating_sub(1);
            st.last_used = Instant::now().max(self.started);
            st.released.notify_one();
        }
    }
}

struct Waiter {
    host: String,
    hosts: Arc<Mutex<HashMap<String, HostState>>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(st) = lock(&self.hosts).get_mut(&self.host) {
            st.waiting = st.waiting.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Politeness {
    /// A gatekeeper with these settings.
    pub fn new(cfg: PolitenessConfig) -> Self {
        Politeness {
            cfg,
            hosts: Arc::new(Mutex::new(HashMap::new())),
            prune_at: Arc::new(std::sync::atomic::AtomicUsize::new(PRUNE_FLOOR)),
        }
    }

    /// Wait for a slot for `host`, honouring `crawl_delay` if the host asked for one.
    pub async fn acquire(
        &self,
        host: &str,
        crawl_delay: Option<Duration>,
    ) -> Result<HostPermit, Backlog> {
        // Counts this call among the host's waiters until it gets a slot or is dropped.
        let mut waiter: Option<Waiter> = None;
        loop {
            let (wait, released) = {
                let mut hosts = lock(&self.hosts);
                let now = Instant::now();
                let prune_at = self.prune_at.load(std::sync::atomic::Ordering::Relaxed);
                if hosts.len() > prune_at {
                    // Forget hosts idle for ten minutes, so memory follows the active set.
                    hosts.retain(|_, st| {
                        st.in_flight > 0
                            || st.waiting > 0
                            || now.duration_since(st.last_used) < Duration::from_secs(600)
                    });
                    self.prune_at.store(
                        (hosts.len() * 2).max(PRUNE_FLOOR),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                let st = hosts.entry(host.to_string()).or_insert_with(|| HostState {
                    next_start: now,
                    in_flight: 0,
                    waiting: 0,
                    latency: None,
                    released: Arc::new(Notify::new()),
                    last_used: now,
                });
                let delay = self.effective_delay(st, crawl_delay);
                if st.in_flight < self.cfg.concurrency && now >= st.next_start {
                    st.in_flight += 1;
                    st.next_start = now + delay;
                    st.last_used = now;
                    drop(hosts);
                    drop(waiter);
                    return Ok(HostPermit {
                        host: host.to_string(),
                        hosts: self.hosts.clone(),
                        autothrottle: self.cfg.autothrottle,
                        started: now,
                    });
                }
                if waiter.is_none() {
                    if st.waiting >= self.cfg.max_waiting {
                        let per_slot =
                            delay.max(st.latency.unwrap_or_default() / self.cfg.concurrency.max(1));
                        let ahead = st.waiting + st.in_flight;
                        let retry_after = (per_slot * ahead).max(Duration::from_millis(500));
                        return Err(Backlog { retry_after });
                    }
                    st.waiting += 1;
                    waiter = Some(Waiter {
                        host: host.to_string(),
                        hosts: self.hosts.clone(),
                    });
                }
                let wait = if st.in_flight >= self.cfg.concurrency {
                    // Woken by a release; the timeout only guards against a lost wakeup.
                    Duration::from_secs(1)
                } else {
                    st.next_start.saturating_duration_since(now)
                };
                (wait, st.released.clone())
            };
            tokio::select! {
                _ = released.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn effective_delay(&self, st: &HostState, crawl_delay: Option<Duration>) -> Duration {
        let mut delay = self.cfg.delay.max(crawl_delay.unwrap_or_default());
        if self.cfg.autothrottle {
            if let Some(latency) = st.latency {
                delay = delay.max(latency / self.cfg.concurrency.max(1));
            }
        }
        delay.min(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(delay_ms: u64, concurrency: u32, max_waiting: u32) -> Politeness {
        Politeness::new(PolitenessConfig {
            delay: Duration::from_millis(delay_ms),
            concurrency,
            autothrottle: false,
            max_waiting,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn delay_spaces_request_starts_per_host() {
        let p = gate(250, 4, 100);
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            let permit = p.acquire("a.test", None).await.unwrap();
            starts.push(t0.elapsed());
            drop(permit);
        }
        assert_eq!(
            starts,
            vec![
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_millis(500),
                Duration::from_millis(750)
            ]
        );
        // Another host is not held back by the first one's delay.
        let before = Instant::now();
        let _b = p.acquire("b.test", None).await.unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn crawl_delay_wins_when_longer() {
        let p = gate(100, 1, 100);
        drop(
            p.acquire("a.test", Some(Duration::from_secs(2)))
                .await
                .unwrap(),
        );
        let t = Instant::now();
        drop(
            p.acquire("a.test", Some(Duration::from_secs(2)))
                .await
                .unwrap(),
        );
        assert_eq!(t.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_caps_in_flight_and_release_wakes_waiter() {
        let p = gate(0, 2, 100);
        let a = p.acquire("h", None).await.unwrap();
        let _b = p.acquire("h", None).await.unwrap();
        let p2 = p.clone();
        let waiter =
            tokio::spawn(async move { p2.acquire("h", None).await.map(|_| Instant::now()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "third request must wait for a slot");
        let released_at = Instant::now();
        drop(a);
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got, released_at);
    }

    #[tokio::test(start_paused = true)]
    async fn long_backlog_is_refused_not_queued() {
        let p = gate(1_000, 1, 2);
        let _first = p.acquire("h", None).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let p = p.clone();
            waiters.push(tokio::spawn(
                async move { p.acquire("h", None).await.is_ok() },
            ));
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let refused = p
            .acquire("h", None)
            .await
            .err()
            .expect("third waiter is refused");
        assert!(refused.retry_after >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn autothrottle_follows_latency() {
        let p = Politeness::new(PolitenessConfig {
            delay: Duration::from_millis(10),
            concurrency: 1,
            autothrottle: true,
            max_waiting: 10,
        });
        p.acquire("h", None)
            .await
            .unwrap()
            .finish(Duration::from_secs(3));
        let t = Instant::now();
        drop(p.acquire("h", None).await.unwrap());
        // The previous start scheduled the next at +10ms (no latency known yet).
        assert!(t.elapsed() <= Duration::from_millis(10));
        let t = Instant::now();
        drop(p.acquire("h", None).await.unwrap());
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }
}
