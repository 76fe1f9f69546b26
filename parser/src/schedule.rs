//! Scheduling: links to new requests through the dupefilter, in the order that loses
//! nothing when a parser dies at any point:
//! check → publish (with `Nats-Msg-Id`) → await every ack → add → (caller) ack input.
//! A redelivered page publishes again; JetStream's duplicate window absorbs the repeat.
//! [`Dedup`] is the dupefilter half, which the embedded mode shares.

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use bytes::Bytes;
use futures::future::try_join_all;
use url::Url;

use jetcrawl_shared::canon::{partition, url_fingerprint};
use jetcrawl_shared::config::{Budget, PolitenessPer};
use jetcrawl_shared::dupefilter::{tracked_depth, Ask, Dupefilter, Seen, Verdict};
use jetcrawl_shared::hostkey::HostKeys;
use jetcrawl_shared::message::{first_request_id, item_msg_id, request_id, CrawlRequest, Item};
use jetcrawl_shared::render::{render_subject, RenderMatch};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::Names;

use crate::error::ParseError;

/// A request ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Its fingerprint.
    pub fp: u64,
    /// Frontier subject (partitioned by host).
    pub subject: String,
    /// Message id (fingerprint, or a forced variant).
    pub msg_id: String,
    /// The payload.
    pub request: CrawlRequest,
}

/// What a page's links and sitemaps come to ([`Planner::plan_extracted`]).
#[derive(Debug, Default)]
pub struct PagePlan {
    /// Requests for the links the dupefilter may not have seen, and for sitemaps.
    pub requests: Vec<Planned>,
    /// Links left out: known to be scheduled already.
    pub known: usize,
}

/// Turns canonical URLs into requests on the frontier partition of their politeness
/// key (`[politeness] per`).
#[derive(Clone, Debug)]
pub struct Planner {
    /// The crawl's names.
    pub names: Names,
    /// Frontier partitions.
    pub partitions: u32,
    /// URL → politeness key.
    pub keys: HostKeys,
    /// The spider's `max_depth`.
    pub max_depth: u32,
    /// The spider's page budgets.
    pub budget: Budget,
    /// URLs that go to renderers (`[render] match`): planned onto the render subject
    /// of the same partition.
    pub render: RenderMatch,
}

impl Planner {
    /// A planner for this spider.
    pub fn new(spider: &jetcrawl_shared::Spider) -> Self {
        Planner {
            names: Names::new(&spider.name),
            partitions: spider.streams.partitions,
            keys: HostKeys::new(spider.politeness.per),
            max_depth: spider.max_depth,
            budget: spider.budget(),
            render: RenderMatch::of_valid(spider),
        }
    }

    /// The dupefilter half of scheduling for this planner's spider.
    pub fn dedup(&self, dupefilter: Dupefilter, metrics: Metrics) -> Dedup {
        Dedup {
            dupefilter,
            metrics,
            max_depth: self.max_depth,
            budget: self.budget,
        }
    }

    /// Plan what a page at `depth` yielded: its links at `depth + 1` (with their
    /// sitemap `lastmod`), and the sitemaps it named at their own depths. Links
    /// `dedup` already knows were scheduled at that depth or shallower are left out
    /// before any request is built for them (most of a page's links are the same
    /// navigation on every page); their number is returned beside the plan.
    pub async fn plan_extracted(
        &self,
        extracted: &crate::Extracted,
        depth: u32,
        dedup: &Dedup,
    ) -> PagePlan {
        let depth = depth.saturating_add(1);
        let mut plan = PagePlan::default();
        let fps: Vec<Seen> = extracted
            .links
            .iter()
            .map(|url| (url_fingerprint(url), depth))
            .collect();
        let known = dedup.knows(&fps);
        for (n, (url, &(fp, _))) in extracted.links.iter().zip(&fps).enumerate() {
            if known[n] {
                plan.known += 1;
                continue;
            }
            let mut p = self.plan_one(url, fp, depth).await;
            p.request.lastmod = extracted.lastmods.get(n).cloned().flatten();
            plan.requests.push(p);
        }
        for (url, depth) in &extracted.sitemaps {
            let mut p = self.plan_one(url, url_fingerprint(url), *depth).await;
            p.request.sitemap = true;
            plan.requests.push(p);
        }
        plan
    }

    /// Plan requests for canonical URLs at `depth`. The message id carries the depth,
    /// so a URL planned again at a shallower depth is not taken for a duplicate.
    pub async fn plan(&self, urls: &[Url], depth: u32) -> Vec<Planned> {
        let mut planned = Vec::with_capacity(urls.len());
        for url in urls {
            planned.push(self.plan_one(url, url_fingerprint(url), depth).await);
        }
        planned
    }

    async fn plan_one(&self, url: &Url, fp: u64, depth: u32) -> Planned {
        let key = match self.keys.key_now(url) {
            Some(key) => key,
            None => self.keys.key(url).await,
        };
        Planned {
            fp,
            subject: if self.render.matches(url.as_str()) {
                render_subject(self.names.crawl(), partition(&key, self.partitions))
            } else {
                self.names
                    .frontier_subject(partition(&key, self.partitions))
            },
            msg_id: request_id(fp, tracked_depth(depth, self.max_depth)),
            request: CrawlRequest {
                // Only an address needs carrying: host and domain keys are derived
                // from the URL the same way everywhere.
                key: (self.keys.per() == PolitenessPer::Ip).then_some(key),
                ..CrawlRequest::new(url.to_string(), depth)
            },
        }
    }
}

/// Publishes a page's results downstream.
#[derive(Clone)]
pub struct Scheduler {
    /// JetStream context.
    pub js: jetstream::Context,
    /// The crawl's names.
    pub names: Names,
    /// Plans requests onto frontier partitions.
    pub planner: Planner,
    /// The dupefilter.
    pub dupefilter: Dupefilter,
    /// Metrics.
    pub metrics: Metrics,
}

/// What one page (or seed message) sends downstream.
#[derive(Debug, Default)]
pub struct Emit {
    /// Requests subject to the dupefilter.
    pub requests: Vec<Planned>,
    /// Links found but left out of `requests`, known to be scheduled already (they
    /// count as found, not as new).
    pub known: usize,
    /// Requests published regardless of the dupefilter (forced seeds).
    pub forced: Vec<Planned>,
    /// Items.
    pub items: Vec<Item>,
    /// Fingerprints to mark seen (at a depth) besides the new requests: a redirect's
    /// target.
    pub also_seen: Vec<Seen>,
}

/// The dupefilter half of scheduling, shared by the JetStream parser and the embedded
/// mode: [`Dedup::fresh`] checks, the caller sends what it returns on (publish and await
/// the acks, or push onto an in-memory frontier), then [`Dedup::mark_sent`] adds.
/// Adding only after sending is what loses no URL when the sender dies in between.
#[derive(Clone)]
pub struct Dedup {
    /// The dupefilter.
    pub dupefilter: Dupefilter,
    /// Metrics (links found / new).
    pub metrics: Metrics,
    /// The spider's `max_depth`: nothing is scheduled deeper, so no depth beyond it
    /// is asked about.
    pub max_depth: u32,
    /// Page budgets: a fresh request is sent only if admitted.
    pub budget: Budget,
}

impl Dedup {
    /// What the dupefilter keeps of a planned request.
    fn seen(&self, p: &Planned) -> Seen {
        (p.fp, tracked_depth(p.request.depth, self.max_depth))
    }

    /// The depth a fetched page counts at: its request's, or the shallowest depth the
    /// dupefilter holds its URL at, if shallower. Pages in hand at once that find one
    /// new URL at different depths publish one request ([`Dedup::fresh`]), which may be
    /// the deeper one; the dupefilter notes the shallower, and the page's links are
    /// planned from there, so what a depth-limited crawl reaches does not depend on
    /// which publish came first. Redis unavailable: the request's depth.
    pub async fn page_depth(&self, fp: u64, depth: u32) -> u32 {
        if depth == 0 || tracked_depth(depth, self.max_depth) == 0 {
            return depth;
        }
        match self.dupefilter.shallowest(fp, depth - 1).await {
            Ok(Some(shallower)) => shallower,
            Ok(None) => depth,
            Err(e) => {
                tracing::debug!(error = %e, "page depth not checked; the request's depth counts");
                depth
            }
        }
    }

    /// For each (fingerprint, depth), whether the dupefilter is known, without asking
    /// anyone, to have it at that depth or shallower ([`Dupefilter::knows`]).
    pub fn knows(&self, fps: &[Seen]) -> Vec<bool> {
        let tracked: Vec<Seen> = fps
            .iter()
            .map(|&(fp, depth)| (fp, tracked_depth(depth, self.max_depth)))
            .collect();
        self.dupefilter.knows(&tracked)
    }

    /// The requests the dupefilter has not seen and the budget admits, in order (one
    /// round trip, two with a budget).
    ///
    /// A URL never scheduled gets a message id without its depth (the fingerprint
    /// alone): pages in hand at once in any parser that find the same new URL at
    /// different depths publish it under one id, and JetStream's duplicate window
    /// keeps one request, so it is fetched once. A URL scheduled before only deeper
    /// keeps the id with its depth, so the window does not swallow the new, shorter
    /// path. (Under that race the request kept may be the deeper one; the dupefilter
    /// notes the shallowest depth found, and [`Dedup::page_depth`] plans the page's
    /// links from there.)
    pub async fn fresh(&self, requests: &[Planned]) -> Result<Vec<Planned>, ParseError> {
        let fps: Vec<Seen> = requests.iter().map(|p| self.seen(p)).collect();
        let deepest = tracked_depth(self.max_depth, self.max_depth);
        let verdicts = self.dupefilter.classify(&fps, deepest).await?;
        let fresh: Vec<Planned> = requests
            .iter()
            .zip(&verdicts)
            .filter_map(|(p, verdict)| match verdict {
                Verdict::Held => None,
                // A sitemap named by robots.txt keeps its own id: a page may also link
                // to it, and that request (a page, one level deeper) must not be the
                // one the duplicate window keeps.
                Verdict::Deeper => Some(p.clone()),
                Verdict::New if p.request.sitemap => Some(p.clone()),
                Verdict::New => Some(Planned {
                    msg_id: first_request_id(p.fp),
                    ..p.clone()
                }),
            })
            .collect();
        self.admit(fresh).await
    }

    /// The requests the page budgets admit (all, with no budget). Admission is by
    /// message id and idempotent, so a page handled twice is counted once. A refusal
    /// is counted in `jetcrawl_links_refused_total{reason}` and logged at debug level.
    pub async fn admit(&self, planned: Vec<Planned>) -> Result<Vec<Planned>, ParseError> {
        if !self.budget.is_limited() || planned.is_empty() {
            return Ok(planned);
        }
        let asks: Vec<Ask> = planned
            .iter()
            .map(|p| Ask {
                member: p.msg_id.clone(),
                host: Url::parse(&p.request.url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default(),
            })
            .collect();
        let answers = self.dupefilter.admit(&self.budget, &asks).await?;
        let mut admitted = Vec::with_capacity(planned.len());
        for (p, answer) in planned.into_iter().zip(answers) {
            match answer.refusal() {
                None => admitted.push(p),
                Some(reason) => {
                    tracing::debug!(url = %p.request.url, reason, "link refused");
                    self.metrics.refused(reason).inc();
                }
            }
        }
        Ok(admitted)
    }

    /// After `sent` went downstream: mark them (and `also_seen`) seen and count them
    /// against the `found` links they came from.
    pub async fn mark_sent(
        &self,
        sent: &[Planned],
        also_seen: &[Seen],
        found: usize,
    ) -> Result<(), ParseError> {
        let mut add: Vec<Seen> = sent.iter().map(|p| self.seen(p)).collect();
        let sent_now = add.len();
        add.extend(
            also_seen
                .iter()
                .map(|&(fp, depth)| (fp, tracked_depth(depth, self.max_depth))),
        );
        // Of the URLs sent, those scheduled before at a deeper depth (fetched again, so
        // that their links are followed to `max_depth` from the shorter path): asked in
        // the same round trip as the add.
        let deeper = self
            .dupefilter
            .add_counting_deeper(
                &add,
                sent_now,
                tracked_depth(self.max_depth, self.max_depth),
            )
            .await?;
        self.metrics.links_replanned.inc_by(deeper);
        self.metrics.links_found.inc_by(found as u64);
        self.metrics.links_new.inc_by(sent.len() as u64);
        Ok(())
    }
}

/// How far one [`Scheduler::emit`] got, so that its retry does not redo what went
/// through: once every publish is acknowledged, only the dupefilter add is left.
#[derive(Debug, Default)]
pub struct EmitProgress {
    sent: std::sync::Mutex<Option<Vec<Planned>>>,
}

impl Scheduler {
    /// Check, publish, await acks, add. Returns how many requests were new. `source`
    /// (the input's stream sequence) names the dead letters of what cannot be sent.
    pub async fn emit(
        &self,
        emit: &Emit,
        source: u64,
        progress: &EmitProgress,
    ) -> Result<usize, ParseError> {
        let dedup = self
            .planner
            .dedup(self.dupefilter.clone(), self.metrics.clone());
        let sent = progress.sent.lock().map(|s| s.clone()).unwrap_or_default();
        let fresh = match sent {
            Some(fresh) => fresh,
            None => {
                let mut fresh = dedup.fresh(&emit.requests).await?;
                fresh.extend(dedup.admit(emit.forced.clone()).await?);
                self.publish(&fresh, &emit.items, source).await?;
                jetcrawl_shared::failpoint::hit("parser.after-publish");
                if let Ok(mut sent) = progress.sent.lock() {
                    *sent = Some(fresh.clone());
                }
                fresh
            }
        };
        dedup
            .mark_sent(&fresh, &emit.also_seen, emit.requests.len() + emit.known)
            .await?;
        self.metrics.items_extracted.inc_by(emit.items.len() as u64);
        Ok(fresh.len())
    }

    /// Send every request and item, then await the acks together: one round trip of
    /// latency per page, not one per message. What can never fit in a message (the
    /// server's `max_payload`) goes to DEAD instead, with the reason.
    async fn publish(
        &self,
        requests: &[Planned],
        items: &[Item],
        source: u64,
    ) -> Result<(), ParseError> {
        let limit = self
            .js
            .client()
            .server_info()
            .max_payload
            .saturating_sub(MESSAGE_HEADER_ROOM);
        let items_subject = self.names.items_subject();
        let outgoing = requests
            .iter()
            .map(|p| {
                (
                    p.subject.clone(),
                    p.msg_id.clone(),
                    serde_json::to_vec(&p.request),
                )
            })
            .chain(items.iter().map(|item| {
                (
                    items_subject.clone(),
                    item_msg_id(item),
                    serde_json::to_vec(item),
                )
            }));
        let mut pending = Vec::with_capacity(requests.len() + items.len());
        for (subject, id, payload) in outgoing {
            let payload = Bytes::from(payload.unwrap_or_default());
            if payload.len() > limit {
                self.dead_letter_oversized(&subject, &id, payload, limit, source)
                    .await?;
                continue;
            }
            let publish = Publish::build().payload(payload).message_id(id.as_str());
            pending.push(self.send(subject, publish).await?);
        }
        try_join_all(pending).await?;
        Ok(())
    }

    async fn dead_letter_oversized(
        &self,
        subject: &str,
        id: &str,
        payload: Bytes,
        limit: usize,
        source: u64,
    ) -> Result<(), ParseError> {
        let reason = format!(
            "{} bytes for {subject} is more than a message may carry ({limit} bytes: the \
             server's max_payload less room for headers)",
            payload.len()
        );
        tracing::warn!(id, reason, "too large to publish; dead-lettering it");
        let dead_id = format!("oversized-{source}-{id}");
        jetcrawl_shared::topology::dead_letter(
            &self.js,
            &self.names,
            "parser",
            None,
            payload,
            &reason,
            Some(&dead_id),
        )
        .await?;
        self.metrics.oversized.inc();
        self.metrics
            .dead_letters
            .get_or_create(&jetcrawl_shared::consume::stage_label("parser"))
            .inc();
        Ok(())
    }

    async fn send(
        &self,
        subject: String,
        publish: Publish,
    ) -> Result<impl std::future::Future<Output = Result<(), ParseError>>, ParseError> {
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| publish_error(&subject, e))?;
        Ok(async move {
            ack.await
                .map(|_| ())
                .map_err(|e| publish_error(&subject, e))
        })
    }
}

/// Room a published message keeps for its headers (the message id) beside the payload.
const MESSAGE_HEADER_ROOM: usize = 1024;

fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> ParseError {
    use async_nats::jetstream::context::PublishErrorKind;
    ParseError::Publish {
        subject: subject.to_string(),
        retryable: e.kind() != PublishErrorKind::MaxPayloadExceeded,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
