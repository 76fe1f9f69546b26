//! Scheduling: links to new requests through the dupefilter, in the order that loses
//! nothing when a parser dies at any point:
//! check → publish (with `Nats-Msg-Id`) → await every ack → add → (caller) ack input.
//! A redelivered page publishes again; JetStream's duplicate window absorbs the repeat.
//! [`Dedup`] is the dupefilter half, which the embedded mode shares.

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use bytes::Bytes;
use futures::future::try_join_all;
use url::Url;

use jetcrawl_shared::canon::{fp_hex, partition, url_fingerprint};
use jetcrawl_shared::dupefilter::Dupefilter;
use jetcrawl_shared::message::{item_msg_id, CrawlRequest, Item};
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

/// Plan requests for canonical URLs at `depth`.
pub fn plan(names: &Names, partitions: u32, urls: &[Url], depth: u32) -> Vec<Planned> {
    urls.iter()
        .map(|url| {
            let fp = url_fingerprint(url);
            Planned {
                fp,
                subject: names
                    .frontier_subject(partition(url.host_str().unwrap_or(""), partitions)),
                msg_id: fp_hex(fp),
                request: CrawlRequest {
                    url: url.to_string(),
                    depth,
                    tries: 0,
                    not_before_ms: None,
                    page_id: None,
                    last_error: None,
                },
            }
        })
        .collect()
}

/// Publishes a page's results downstream.
#[derive(Clone)]
pub struct Scheduler {
    /// JetStream context.
    pub js: jetstream::Context,
    /// The crawl's names.
    pub names: Names,
    /// Frontier partitions.
    pub partitions: u32,
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
    /// Requests published regardless of the dupefilter (forced seeds).
    pub forced: Vec<Planned>,
    /// Items.
    pub items: Vec<Item>,
    /// Fingerprints to mark seen besides the new requests (a redirect's target).
    pub also_seen: Vec<u64>,
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
}

impl Dedup {
    /// The requests the dupefilter has not seen, in order (one round trip).
    pub async fn fresh(&self, requests: &[Planned]) -> Result<Vec<Planned>, ParseError> {
        let fps: Vec<u64> = requests.iter().map(|p| p.fp).collect();
        let seen = self.dupefilter.check(&fps).await?;
        Ok(requests
            .iter()
            .zip(&seen)
            .filter(|(_, seen)| !**seen)
            .map(|(p, _)| p.clone())
            .collect())
    }

    /// After `sent` went downstream: mark them (and `also_seen`) seen and count them
    /// against the `found` links they came from.
    pub async fn mark_sent(
        &self,
        sent: &[Planned],
        also_seen: &[u64],
        found: usize,
    ) -> Result<(), ParseError> {
        let mut add: Vec<u64> = sent.iter().map(|p| p.fp).collect();
        add.extend_from_slice(also_seen);
        self.dupefilter.add(&add).await?;
        self.metrics.links_found.inc_by(found as u64);
        self.metrics.links_new.inc_by(sent.len() as u64);
        Ok(())
    }
}

impl Scheduler {
    /// Check, publish, await acks, add. Returns how many requests were new.
    pub async fn emit(&self, emit: &Emit) -> Result<usize, ParseError> {
        let dedup = Dedup {
            dupefilter: self.dupefilter.clone(),
            metrics: self.metrics.clone(),
        };
        let mut fresh = dedup.fresh(&emit.requests).await?;
        fresh.extend(emit.forced.iter().cloned());

        // Send everything first, then await the acks together: one round trip of
        // latency per page, not one per message.
        let mut pending = Vec::with_capacity(fresh.len() + emit.items.len());
        for p in &fresh {
            let payload = serde_json::to_vec(&p.request).unwrap_or_default();
            let publish = Publish::build()
                .payload(Bytes::from(payload))
                .message_id(p.msg_id.as_str());
            pending.push(self.send(p.subject.clone(), publish).await?);
        }
        let items_subject = self.names.items_subject();
        for item in &emit.items {
            let payload = serde_json::to_vec(item).unwrap_or_default();
            let publish = Publish::build()
                .payload(Bytes::from(payload))
                .message_id(item_msg_id(item));
            pending.push(self.send(items_subject.clone(), publish).await?);
        }
        try_join_all(pending).await?;

        dedup
            .mark_sent(&fresh, &emit.also_seen, emit.requests.len())
            .await?;
        self.metrics.items_extracted.inc_by(emit.items.len() as u64);
        Ok(fresh.len())
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
            .map_err(|e| ParseError::Publish {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        Ok(async move {
            ack.await.map(|_| ()).map_err(|e| ParseError::Publish {
                subject,
                message: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_partitions_by_host_and_ids_by_fingerprint() {
        let names = Names::new("c");
        let urls = vec![
            Url::parse("http://a.test/1").unwrap(),
            Url::parse("http://a.test/2").unwrap(),
            Url::parse("http://b.test/1").unwrap(),
        ];
        let planned = plan(&names, 16, &urls, 3);
        assert_eq!(planned[0].subject, planned[1].subject);
        assert!(planned[0].subject.starts_with("jetcrawl.c.frontier."));
        assert_eq!(planned[0].msg_id, fp_hex(url_fingerprint(&urls[0])));
        assert_eq!(planned[2].request.depth, 3);
        assert_ne!(planned[0].fp, planned[1].fp);
    }
}
