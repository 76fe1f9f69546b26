//! Per-host politeness inside the fetcher that owns the host: a queue of waiting
//! requests per host (shallowest first), a ready-time heap of hosts, a minimum delay
//! between request starts, a cap on requests in flight per host and in all, Crawl-delay,
//! back-off after 429/503, and autothrottle from observed latency.
//!
//! One driver task hands out slots: when a host's next start time comes and it has a
//! free slot (and the process has one), its best waiter gets a [`HostPermit`]. A
//! request whose wait would be too long is refused with [`Backlog`], so the caller can
//! put it back in the frontier instead of holding it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Hosts idle this long (nothing waiting, nothing in flight) are forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// The longest delay between two starts, whatever Crawl-delay or latency say.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Politeness settings for every host.
#[derive(Debug, Clone)]
pub struct PolitenessConfig {
    /// Minimum delay between request starts to one host.
    pub delay: Duration,
    /// Requests in flight to one host at once.
    pub concurrency: u32,
    /// Follow observed latency: delay >= latency / concurrency.
    pub autothrottle: bool,
    /// Requests in flight to all hosts together.
    pub max_in_flight: usize,
    /// Requests that may wait for one host; more are refused with [`Backlog`].
    pub max_waiting: Option<u32>,
    /// A request whose expected wait is longer is refused with [`Backlog`].
    pub max_wait: Option<Duration>,
}

/// The host cannot take this request soon; try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// A guess of when a slot will be free.
    pub retry_after: Duration,
}

/// Gatekeeper for all hosts of one process. Cheap to clone.
#[derive(Clone)]
pub struct Politeness {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: PolitenessConfig,
    state: Mutex<State>,
    /// Wakes the driver: a waiter arrived, a slot was released.
    wake: Notify,
    driver: std::sync::Once,
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, Host>,
    /// Hosts with waiters, by the time they can start next. Entries whose time no
    /// longer matches the host's `scheduled` are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    in_flight: usize,
    seq: u64,
}

struct Host {
    next_start: Instant,
    in_flight: u32,
    latency: Option<Duration>,
    crawl_delay: Option<Duration>,
    waiters: BinaryHeap<Waiter>,
    scheduled: Option<Instant>,
    last_used: Instant,
}

struct Waiter {
    priority: u32,
    seq: u64,
    tx: oneshot::Sender<HostPermit>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.seq) == (other.priority, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// The heap's top is the lowest priority value (shallowest), then the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.priority, other.seq).cmp(&(self.priority, self.seq))
    }
}

/// A slot for one request to one host; frees itself on drop.
pub struct HostPermit {
    key: String,
    shared: Weak<Shared>,
    started: Instant,
    latency: Option<Duration>,
    back_off: Option<Duration>,
    crawl_delay: Option<Duration>,
}

impl HostPermit {
    /// Report the request's latency (autothrottle learns from it).
    pub fn finish(mut self, latency: Duration) {
        self.latency = Some(latency);
    }

    /// The host asked us to slow down (429, 503, Retry-After): start nothing there
    /// for this long.
    pub fn back_off(&mut self, pause: Duration) {
        self.back_off = Some(pause);
    }

    /// The request is about to go out now: the host's next start is counted from
    /// here, not from when the slot was granted, so a task that was slow to run after
    /// the grant does not bring the next request closer to this one.
    pub fn start(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = lock(&shared.state);
        let now = Instant::now();
        self.started = now;
        if let Some(host) = state.hosts.get_mut(&self.key) {
            let spacing = effective_delay(&shared.cfg, host);
            host.next_start = host.next_start.max(now + spacing);
        }
    }

    /// The host's robots.txt asks for this delay between requests (learnt by the
    /// request holding this permit): it applies from this request's start on.
    pub fn set_crawl_delay(&mut self, delay: Duration) {
        self.crawl_delay = Some(delay);
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut state = lock(&shared.state);
            state.in_flight = state.in_flight.saturating_sub(1);
            let now = Instant::now();
            let autothrottle = shared.cfg.autothrottle;
            if let Some(host) = state.hosts.get_mut(&self.key) {
                host.in_flight = host.in_flight.saturating_sub(1);
                host.last_used = now;
                if let (true, Some(latency)) = (autothrottle, self.latency) {
                    host.latency = Some(match host.latency {
                        // Exponential moving average, weight 1/4 on the new sample.
                        Some(old) => (old * 3 + latency) / 4,
                        None => latency,
                    });
                }
                if let Some(delay) = self.crawl_delay {
                    host.crawl_delay = Some(delay);
                    let spacing = effective_delay(&shared.cfg, host);
                    host.next_start = host.next_start.max(self.started + spacing);
                }
                if let Some(pause) = self.back_off {
                    host.next_start = host.next_start.max(now + pause.min(MAX_DELAY * 60));
                }
            }
            schedule(&mut state, &self.key, now);
        }
        shared.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Put `key` on the timer heap at its next start, if it has waiters and a free slot
/// and is not there already at that time.
fn schedule(state: &mut State, key: &str, now: Instant) {
    let Some(host) = state.hosts.get_mut(key) else {
        return;
    };
    if host.waiters.is_empty() {
        host.scheduled = None;
        return;
    }
    let at = host.next_start.max(now);
    if host.scheduled.is_some_and(|s| s <= at) {
        return;
    }
    host.scheduled = Some(at);
    state.timers.push(Reverse((at, key.to_string())));
}

impl Politeness {
    /// A gatekeeper with these settings.
    pub fn new(cfg: PolitenessConfig) -> Self {
        Politeness {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                driver: std::sync::Once::new(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PolitenessConfig {
        &self.shared.cfg
    }

    /// Wait for a slot for host `key`, honouring `crawl_delay` if the host asked for
    /// one. Waiters with a lower `priority` (depth) go first, then the earliest.
    pub async fn acquire(
        &self,
        key: &str,
        crawl_delay: Option<Duration>,
        priority: u32,
    ) -> Result<HostPermit, Backlog> {
        self.start_driver();
        let cfg = &self.shared.cfg;
        let rx = {
            let mut state = lock(&self.shared.state);
            let now = Instant::now();
            let global_free = state.in_flight < cfg.max_in_flight;
            let host = state.hosts.entry(key.to_string()).or_insert_with(|| Host {
                next_start: now,
                in_flight: 0,
                latency: None,
                crawl_delay: None,
                waiters: BinaryHeap::new(),
                scheduled: None,
                last_used: now,
            });
            if crawl_delay.is_some() {
                host.crawl_delay = crawl_delay;
            }
            if host.waiters.is_empty()
                && global_free
                && host.in_flight < cfg.concurrency
                && host.next_start <= now
            {
                return Ok(self.grant(&mut state, key, now));
            }
            if let Some(backlog) = self.refusal(host, now, priority) {
                return Err(backlog);
            }
            let (tx, rx) = oneshot::channel();
            state.seq += 1;
            let seq = state.seq;
            if let Some(host) = state.hosts.get_mut(key) {
                host.waiters.push(Waiter { priority, seq, tx });
                if host.in_flight < cfg.concurrency {
                    schedule(&mut state, key, now);
                }
            }
            rx
        };
        self.shared.wake.notify_one();
        // The driver sends the permit; if this future is dropped first, the permit
        // is dropped with the channel and frees its slot.
        rx.await.map_err(|_| Backlog {
            retry_after: Duration::from_secs(1),
        })
    }

    /// Whether a new waiter at `priority` would wait too long (or too many wait
    /// already). Only the waiters that go before it count.
    fn refusal(&self, host: &mut Host, now: Instant, priority: u32) -> Option<Backlog> {
        let cfg = &self.shared.cfg;
        if cfg.max_waiting.is_none() && cfg.max_wait.is_none() {
            return None;
        }
        host.waiters.retain(|w| !w.tx.is_closed());
        let per_start = effective_delay(cfg, host)
            .max(host.latency.unwrap_or_default() / cfg.concurrency.max(1));
        let ahead = host
            .waiters
            .iter()
            .filter(|w| w.priority <= priority)
            .count() as u32;
        let rounds = (ahead + host.in_flight) / cfg.concurrency.max(1);
        let expected = host.next_start.saturating_duration_since(now) + per_start * rounds;
        let too_many = cfg
            .max_waiting
            .is_some_and(|max| host.waiters.len() as u32 >= max);
        let too_long = cfg.max_wait.is_some_and(|max| expected > max);
        (too_many || too_long).then(|| Backlog {
            retry_after: expected.max(Duration::from_millis(500)),
        })
    }

    fn grant(&self, state: &mut State, key: &str, now: Instant) -> HostPermit {
        state.in_flight += 1;
        if let Some(host) = state.hosts.get_mut(key) {
            host.in_flight += 1;
            host.next_start = now + effective_delay(&self.shared.cfg, host);
            host.last_used = now;
        }
        HostPermit {
            key: key.to_string(),
            shared: Arc::downgrade(&self.shared),
            started: now,
            latency: None,
            back_off: None,
            crawl_delay: None,
        }
    }

    /// When every host that `matches` will be quiet (nothing waiting or in flight,
    /// and its delay since the last start passed); `None` while one is still busy.
    /// A fetcher handing a partition over waits for this, so the next owner's first
    /// request keeps the delay after this one's last.
    pub fn quiet_at(&self, matches: impl Fn(&str) -> bool) -> Option<Instant> {
        let state = lock(&self.shared.state);
        let mut at = Instant::now();
        for (key, host) in &state.hosts {
            if !matches(key) {
                continue;
            }
            if host.in_flight > 0 || host.waiters.iter().any(|w| !w.tx.is_closed()) {
                return None;
            }
            at = at.max(host.next_start.min(Instant::now() + MAX_DELAY));
        }
        Some(at)
    }

    /// Hosts with requests waiting, and the requests waiting, in this process.
    pub fn queued(&self) -> (usize, usize) {
        let state = lock(&self.shared.state);
        state
            .hosts
            .values()
            .filter(|h| !h.waiters.is_empty())
            .fold((0, 0), |(hosts, reqs), h| {
                (hosts + 1, reqs + h.waiters.len())
            })
    }

    fn start_driver(&self) {
        let weak = Arc::downgrade(&self.shared);
        self.shared.driver.call_once(|| {
            tokio::spawn(drive(weak));
        });
    }
}

fn effective_delay(cfg: &PolitenessConfig, host: &Host) -> Duration {
    let mut delay = cfg.delay.max(host.crawl_delay.unwrap_or_default());
    if cfg.autothrottle {
        if let Some(latency) = host.latency {
            delay = delay.max(latency / cfg.concurrency.max(1));
        }
    }
    delay.min(MAX_DELAY)
}

/// The driver: grants slots as hosts come due, until the gatekeeper is dropped.
async fn drive(shared: Weak<Shared>) {
    let mut last_prune = Instant::now();
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let mut undelivered = Vec::new();
        let next = {
            let mut state = lock(&strong.state);
            let now = Instant::now();
            if now.duration_since(last_prune) > Duration::from_secs(60) {
                last_prune = now;
                state.hosts.retain(|_, h| {
                    h.in_flight > 0
                        || !h.waiters.is_empty()
                        || now.duration_since(h.last_used) < IDLE_FORGET
                });
            }
            grant_due(&strong, &mut state, now, &mut undelivered)
        };
        // A permit whose waiter went away frees its slot here, outside the lock.
        drop(undelivered);
        let wake = strong.clone();
        drop(strong);
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(at),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = wake.wake.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Grant every slot that is due; returns when the next host comes due (`None`: none
/// is, or the process is at its in-flight cap and waits for a release).
fn grant_due(
    shared: &Arc<Shared>,
    state: &mut State,
    now: Instant,
    undelivered: &mut Vec<HostPermit>,
) -> Option<Instant> {
    let cfg = &shared.cfg;
    let gate = Politeness {
        shared: shared.clone(),
    };
    while let Some(Reverse((at, _))) = state.timers.peek() {
        if *at > now {
            return Some(*at);
        }
        if state.in_flight >= cfg.max_in_flight {
            return None;
        }
        let Some(Reverse((at, key))) = state.timers.pop() else {
            break;
        };
        let Some(host) = state.hosts.get_mut(&key) else {
            continue;
        };
        if host.scheduled != Some(at) {
            continue;
        }
        host.scheduled = None;
        if host.in_flight >= cfg.concurrency {
            // A release puts it back on the heap.
            continue;
        }
        if host.next_start > now {
            schedule(state, &key, now);
            continue;
        }
        // The best waiter still waiting gets the slot.
        let waiter = loop {
            match host.waiters.pop() {
                Some(w) if w.tx.is_closed() => continue,
                other => break other,
            }
        };
        if let Some(waiter) = waiter {
            let permit = gate.grant(state, &key, now);
            if let Err(permit) = waiter.tx.send(permit) {
                undelivered.push(permit);
            }
        }
        if state
            .hosts
            .get(&key)
            .is_some_and(|h| h.in_flight < cfg.concurrency)
        {
            schedule(state, &key, now);
        }
    }
    None
}

#[cfg(test)]
mod tests;
