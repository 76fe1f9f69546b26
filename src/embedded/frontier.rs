//! The scheduler task: owns the frontier (a `VecDeque`), the retry heap and the
//! in-flight count; starts fetches as permits free up; never blocks on a stage
//! (see the module doc of `embedded` for why that rules out deadlock).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use jetcrawl_parser::schedule::{Dedup, Planned};
use jetcrawl_shared::dupefilter::Seen;
use jetcrawl_shared::message::CrawlRequest;

use super::progress::Stats;
use super::FetchStage;

/// What settles one in-flight request.
#[derive(Debug)]
pub enum Event {
    /// Its page was parsed: the links it yielded, planned at depth + 1, and the
    /// redirect target to mark seen.
    Parsed {
        /// Requests for the links (not yet checked against the dupefilter).
        requests: Vec<Planned>,
        /// Links left out, known to be scheduled already.
        known: usize,
        /// Fingerprints to mark seen besides (a redirect's target).
        also_seen: Vec<Seen>,
    },
    /// Fetch again after `delay` (a retryable failure, or a host too busy to wait on).
    Later {
        /// The request, tries counted.
        request: CrawlRequest,
        /// How long to wait.
        delay: Duration,
    },
    /// Nothing more comes of it (invalid, cancelled, parser failure).
    Dropped,
}

/// A request waiting for its retry time; ordered by time, then arrival.
struct Delayed {
    at: Instant,
    seq: u64,
    request: CrawlRequest,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The frontier and its accounting.
pub struct Frontier {
    queue: VecDeque<CrawlRequest>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    /// Requests handed to a fetch task and not yet settled by an [`Event`].
    in_flight: usize,
    dedup: Dedup,
    stats: Arc<Stats>,
}

impl Frontier {
    pub fn new(dedup: Dedup, stats: Arc<Stats>) -> Self {
        Frontier {
            queue: VecDeque::new(),
            delayed: BinaryHeap::new(),
            seq: 0,
            in_flight: 0,
            dedup,
            stats,
        }
    }

    /// Nothing queued, waiting or in flight: the crawl is over.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.delayed.is_empty() && self.in_flight == 0
    }

    /// Check → queue → add: the same order as the JetStream parser's publish.
    pub async fn add(
        &mut self,
        requests: Vec<Planned>,
        known: usize,
        also_seen: Vec<Seen>,
    ) -> Result<(), jetcrawl_parser::ParseError> {
        let fresh = self.dedup.fresh(&requests).await?;
        self.queue.extend(fresh.iter().map(|p| p.request.clone()));
        self.dedup
            .mark_sent(&fresh, &also_seen, requests.len() + known)
            .await?;
        self.publish_counts();
        Ok(())
    }

    fn publish_counts(&self) {
        self.stats
            .set_queue(self.queue.len() + self.delayed.len(), self.in_flight);
    }

    /// Run until idle, or until `stop` and then until nothing is in flight.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        fetch: FetchStage,
        stop: CancellationToken,
    ) -> Result<(), jetcrawl_parser::ParseError> {
        let mut fetches = JoinSet::new();
        let mut stopping = false;
        loop {
            if stop.is_cancelled() && !stopping {
                stopping = true;
                self.queue.clear();
                self.delayed.clear();
            }
            self.publish_counts();
            if self.is_idle() {
                break;
            }
            let next_retry = self.delayed.peek().map(|Reverse(d)| d.at);
            tokio::select! {
                // Events first: a turn of this loop is the longest a stage waits on us.
                biased;
                event = events.recv() => {
                    // We hold a sender (inside `fetch`), so the channel never closes.
                    let Some(event) = event else { break };
                    self.in_flight -= 1;
                    match event {
                        Event::Parsed {
                            requests,
                            known,
                            also_seen,
                        } if !stopping => {
                            self.add(requests, known, also_seen).await?;
                        }
                        Event::Later { request, delay } if !stopping => {
                            self.seq += 1;
                            self.delayed.push(Reverse(Delayed {
                                at: Instant::now() + delay,
                                seq: self.seq,
                                request,
                            }));
                        }
                        _ => {}
                    }
                }
                _ = stop.cancelled(), if !stopping => {}
                permit = fetch.permits.clone().acquire_owned(), if !stopping && !self.queue.is_empty() => {
                    let Ok(permit) = permit else { break };
                    if let Some(req) = self.queue.pop_front() {
                        self.in_flight += 1;
                        fetches.spawn(fetch.clone().fetch(req, permit));
                    }
                }
                // A fetch task that panicked sent no event: settle it here, or the
                // crawl would wait for it forever.
                Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(error = %e, "fetch task panicked; request dropped");
                            self.stats.error();
                            self.in_flight -= 1;
                        }
                    }
                }
                _ = sleep_until(next_retry), if next_retry.is_some() && !stopping => {
                    let now = Instant::now();
                    while self.delayed.peek().is_some_and(|Reverse(d)| d.at <= now) {
                        if let Some(Reverse(d)) = self.delayed.pop() {
                            self.queue.push_back(d.request);
                        }
                    }
                }
            }
        }
        while fetches.join_next().await.is_some() {}
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
