//! Subjects, streams and consumers of one crawl, created idempotently by whoever
//! starts first (`init` or any service).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::CreateStreamErrorKind,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    ErrorCode,
};

use crate::config::Spider;
use crate::error::Error;

/// Every subject, stream and consumer name of one crawl.
#[derive(Debug, Clone)]
pub struct Names {
    crawl: String,
}

/// The durable consumers, one per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Fetchers pull requests from `frontier.>`.
    Fetcher,
    /// Parsers pull seeds from `seeds`.
    Seeds,
    /// Parsers pull pages.
    Parser,
    /// Sinks pull items.
    Sink,
    /// Renderers pull render requests (`frontier.render.>`, one consumer per partition).
    Renderer,
}

impl Role {
    /// Durable consumer name.
    pub fn consumer_name(self) -> &'static str {
        match self {
            Role::Fetcher => "fetcher",
            Role::Seeds => "seeds",
            Role::Parser => "parser",
            Role::Sink => "sink",
            Role::Renderer => "renderer",
        }
    }
}

impl Names {
    /// Names for a crawl.
    pub fn new(crawl: &str) -> Self {
        Names {
            crawl: crawl.to_string(),
        }
    }
    /// The crawl name.
    pub fn crawl(&self) -> &str {
        &self.crawl
    }
    /// `jetcrawl.<crawl>.seeds`
    pub fn seeds_subject(&self) -> String {
        format!("jetcrawl.{}.seeds", self.crawl)
    }
    /// `jetcrawl.<crawl>.frontier.<p>`
    pub fn frontier_subject(&self, partition: u32) -> String {
        format!("jetcrawl.{}.frontier.{partition}", self.crawl)
    }
    /// `jetcrawl.<crawl>.frontier.>`
    pub fn frontier_wildcard(&self) -> String {
        format!("jetcrawl.{}.frontier.>", self.crawl)
    }
    /// `jetcrawl.<crawl>.recrawl`: subjects of the RECRAWL stream (`[recrawl]` only).
    pub fn recrawl_prefix(&self) -> String {
        format!("jetcrawl.{}.recrawl", self.crawl)
    }
    /// `jetcrawl.<crawl>.frontier.{{wildcard(1)}}`: a subject transform's destination.
    pub fn frontier_subject_template(&self) -> String {
        format!("jetcrawl.{}.frontier.{{{{wildcard(1)}}}}", self.crawl)
    }
    /// `JETCRAWL_<crawl>_RECRAWL`
    pub fn recrawl_stream(&self) -> String {
        format!("JETCRAWL_{}_RECRAWL", self.crawl)
    }
    /// `jetcrawl.<crawl>.pages`
    pub fn pages_subject(&self) -> String {
        format!("jetcrawl.{}.pages", self.crawl)
    }
    /// `jetcrawl.<crawl>.items`
    pub fn items_subject(&self) -> String {
        format!("jetcrawl.{}.items", self.crawl)
    }
    /// `jetcrawl.<crawl>.dead.<stage>`
    pub fn dead_subject(&self, stage: &str) -> String {
        format!("jetcrawl.{}.dead.{stage}", self.crawl)
    }
    /// Stream names.
    pub fn frontier_stream(&self) -> String {
        format!("JETCRAWL_{}_FRONTIER", self.crawl)
    }
    /// Stream names.
    pub fn pages_stream(&self) -> String {
        format!("JETCRAWL_{}_PAGES", self.crawl)
    }
    /// Stream names.
    pub fn items_stream(&self) -> String {
        format!("JETCRAWL_{}_ITEMS", self.crawl)
    }
    /// Stream names.
    pub fn dead_stream(&self) -> String {
        format!("JETCRAWL_{}_DEAD", self.crawl)
    }
    /// The stream a role's consumer lives on.
    pub fn stream_of(&self, role: Role) -> String {
        match role {
            Role::Fetcher | Role::Seeds | Role::Renderer => self.frontier_stream(),
            Role::Parser => self.pages_stream(),
            Role::Sink => self.items_stream(),
        }
    }
    /// All four streams.
    pub fn streams(&self) -> [String; 4] {
        [
            self.frontier_stream(),
            self.pages_stream(),
            self.items_stream(),
            self.dead_stream(),
        ]
    }
}

/// Connecting lives in [`crate::nats`]; kept here for the callers that knew it here.
pub use crate::nats::connect;

/// A consumer's state from the server, in one API request (the stream's own info is
/// not fetched); `None` while it does not exist or the server does not answer.
pub async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Option<jetstream::consumer::Info> {
    let stream = js.get_stream_no_info(stream).await.ok()?;
    stream.consumer_info(consumer).await.ok()
}

/// Room a dead letter keeps for its headers (the original's, the reason) beside the
/// payload.
const DEAD_HEADER_ROOM: usize = 64 * 1024;

/// FRONTIER's metadata key for the partition count the crawl was created with.
const PARTITIONS_KEY: &str = "jetcrawl.partitions";

/// Create or update the crawl's four streams. Refuses a spider whose partition count
/// differs from the one the crawl was created with: requests already in the frontier
/// are partitioned by it, and owners would pace one host from two partitions.
pub async fn ensure_streams(js: &jetstream::Context, spider: &Spider) -> Result<(), Error> {
    let names = Names::new(&spider.name);
    let s = &spider.streams;
    if let Ok(mut frontier) = js.get_stream(names.frontier_stream()).await {
        if let Ok(info) = frontier.info().await {
            let created = info.config.metadata.get(PARTITIONS_KEY).cloned();
            if let Some(created) = created.filter(|c| *c != s.partitions.to_string()) {
                return Err(Error::Topology(format!(
                    "crawl {} was created with [streams] partitions = {created}; this spider says {}. \
                     The partition count of a crawl cannot change: set it back to {created}, \
                     or start a new crawl under another name",
                    spider.name, s.partitions
                )));
            }
        }
    }
    if spider.recrawl.is_some() {
        apply_stream(js, recrawl::stream_config(spider, &names)).await?;
        recrawl::check_schedules(js, &names).await?;
    }
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let configs = [
        stream::Config {
            name: names.frontier_stream(),
            description: Some(format!(
                "jetcrawl {}: seeds and requests to fetch",
                spider.name
            )),
            subjects: vec![names.frontier_wildcard(), names.seeds_subject()],
            // Recrawls come due in RECRAWL; the server moves them here.
            sources: spider
                .recrawl
                .as_ref()
                .map(|_| vec![recrawl::frontier_source(&names)]),
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            max_messages: s.frontier_max_msgs,
            storage: StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: Duration::from_secs(s.duplicate_window_secs),
            metadata: [(PARTITIONS_KEY.to_string(), s.partitions.to_string())].into(),
            ..Default::default()
        },
        stream::Config {
            name: names.pages_stream(),
            description: Some(format!("jetcrawl {}: fetched pages", spider.name)),
            subjects: vec![names.pages_subject()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            max_bytes: s.pages_max_bytes,
            max_age: hours(s.pages_max_age_hours),
            storage: StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: Duration::from_secs(s.duplicate_window_secs),
            ..Default::default()
        },
        stream::Config {
            name: names.items_stream(),
            description: Some(format!("jetcrawl {}: extracted items", spider.name)),
            subjects: vec![names.items_subject()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            max_bytes: s.items_max_bytes,
            max_age: hours(s.items_max_age_hours),
            storage: StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: Duration::from_secs(s.duplicate_window_secs),
            ..Default::default()
        },
        stream::Config {
            name: names.dead_stream(),
            description: Some(format!(
                "jetcrawl {}: messages a stage gave up on",
                spider.name
            )),
            subjects: vec![format!("jetcrawl.{}.dead.>", spider.name)],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_bytes: s.dead_max_bytes,
            max_age: hours(s.dead_max_age_hours),
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(s.duplicate_window_secs),
            num_replicas: s.replicas,
            ..Default::default()
        },
    ];
    for config in configs {
        apply_stream(js, config).await?;
    }
    Ok(())
}

mod recrawl;

/// How long stream setup keeps retrying what a cluster answers while it elects a
/// leader or waits for a restarting node.
pub(crate) const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Create a stream, or update it in place if it exists with another configuration
/// (new limits, or another replica count: the server scales a stream up or down by an
/// update). What a cluster says during a leader election is retried for a while.
async fn apply_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), Error> {
    let name = config.name.clone();
    let replicas = config.num_replicas;
    let give_up_at = tokio::time::Instant::now() + SETUP_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        let Err(create_err) = js.create_stream(config.clone()).await else {
            return Ok(());
        };
        let Err(update_err) = js.update_stream(&config).await else {
            return Ok(());
        };
        let (create, update) = (create_err.kind(), update_err.kind());
        let transient = |k: &CreateStreamErrorKind| setup_transient(k, replicas);
        if (transient(&create) || transient(&update)) && tokio::time::Instant::now() < give_up_at {
            tracing::warn!(stream = %name, error = %update_err, retry_in_ms = delay.as_millis() as u64, "stream not set up yet, retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        let refusal = [(&create, &create_err), (&update, &update_err)]
            .into_iter()
            .find(|(kind, _)| refuses_replicas(kind));
        if let Some((_, why)) = refusal.filter(|_| replicas > 1) {
            return Err(Error::Topology(format!(
                "[streams] replicas = {replicas}: the NATS server cannot keep {replicas} replicas of \
                 {name} ({why}). More than one replica needs a NATS cluster with at least \
                 {replicas} JetStream servers up; on a single server, set replicas = 1"
            )));
        }
        return Err(Error::JetStream {
            op: "create stream",
            message: format!("{name}: {create_err}; update: {update_err}"),
        });
    }
}

/// [`setup_transient`] for a key-value bucket's update, whose error wraps the stream
/// update's.
pub(crate) fn update_transient(
    e: &async_nats::jetstream::context::UpdateKeyValueError,
    replicas: usize,
) -> bool {
    use async_nats::jetstream::context::{CreateStreamError, UpdateKeyValueErrorKind};
    e.kind() == UpdateKeyValueErrorKind::JetStream
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<CreateStreamError>())
            .is_some_and(|s| setup_transient(&s.kind(), replicas))
}

fn js_code(kind: &CreateStreamErrorKind) -> Option<(usize, ErrorCode)> {
    match kind {
        CreateStreamErrorKind::JetStream(e) => Some((e.code(), e.error_code())),
        _ => None,
    }
}

/// Worth another try soon: no answer (a leader election, a reconnect), a cluster
/// without a leader, or replicas that cannot be placed while a node is away.
fn setup_transient(kind: &CreateStreamErrorKind, replicas: usize) -> bool {
    use CreateStreamErrorKind as K;
    match kind {
        K::TimedOut | K::JetStreamUnavailable | K::Response => true,
        K::JetStream(_) => js_code(kind).is_some_and(|(status, code)| {
            // 503: "JetStream system temporarily unavailable" (no meta leader).
            status == 503
                || [
                    ErrorCode::CLUSTER_NOT_AVAILABLE,
                    ErrorCode::CLUSTER_NOT_ACTIVE,
                    ErrorCode::CLUSTER_NOT_LEADER,
                ]
                .contains(&code)
                // No peers to place the replicas on: a node may be restarting.
                || (replicas > 1 && code == ErrorCode::INSUFFICIENT_RESOURCES)
        }),
        K::EmptyStreamName
        | K::InvalidStreamName
        | K::DomainAndExternalSet
        | K::NotFound
        | K::ResponseParse => false,
    }
}

/// Replicas above 1 on a server outside a cluster, too few servers for them, or a
/// server too old to change them.
fn refuses_replicas(kind: &CreateStreamErrorKind) -> bool {
    js_code(kind).is_some_and(|(_, code)| {
        [
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
            ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE,
            ErrorCode::INSUFFICIENT_RESOURCES,
        ]
        .contains(&code)
    })
}

/// Create or update a role's durable pull consumer and return it.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spider: &Spider,
    role: Role,
    max_ack_pending: i64,
) -> Result<PullConsumer, Error> {
    let names = Names::new(&spider.name);
    let filter_subject = match role {
        Role::Fetcher => names.frontier_wildcard(),
        Role::Seeds => names.seeds_subject(),
        Role::Parser => names.pages_subject(),
        Role::Sink => names.items_subject(),
        Role::Renderer => format!("jetcrawl.{}.frontier.render.>", spider.name),
    };
    let config = pull::Config {
        durable_name: Some(role.consumer_name().to_string()),
        description: Some(format!("jetcrawl {} {}", spider.name, role.consumer_name())),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spider.streams.ack_wait(),
        // Unlimited: stages count their own attempts and dead-letter poison messages
        // themselves, so the server never silently stops delivering one.
        max_deliver: -1,
        max_ack_pending,
        filter_subject,
        ..Default::default()
    };
    create_consumer(js, &names.stream_of(role), config).await
}

/// The durable consumer of one frontier partition.
pub fn partition_consumer_name(partition: u32) -> String {
    format!("fetcher-{partition}")
}

/// Create or update the consumer of frontier partition `partition`: only the fetcher
/// that owns the partition pulls from it.
pub async fn ensure_partition_consumer(
    js: &jetstream::Context,
    spider: &Spider,
    partition: u32,
    max_ack_pending: i64,
) -> Result<PullConsumer, Error> {
    let names = Names::new(&spider.name);
    let config = pull::Config {
        durable_name: Some(partition_consumer_name(partition)),
        description: Some(format!(
            "jetcrawl {} frontier partition {partition}",
            spider.name
        )),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spider.streams.ack_wait(),
        max_deliver: -1,
        max_ack_pending,
        filter_subject: names.frontier_subject(partition),
        ..Default::default()
    };
    match create_consumer(js, &names.frontier_stream(), config.clone()).await {
        Ok(c) => Ok(c),
        Err(first) => {
            // A crawl started by an older jetcrawl has one consumer over all
            // partitions, which a work queue does not let overlap with these.
            if retire_shared_fetcher_consumer(js, spider).await {
                create_consumer(js, &names.frontier_stream(), config).await
            } else {
                Err(first)
            }
        }
    }
}

/// Delete the single `fetcher` consumer of older versions, if there is one; its
/// unacknowledged requests return to the partitions' consumers.
pub async fn retire_shared_fetcher_consumer(js: &jetstream::Context, spider: &Spider) -> bool {
    let names = Names::new(&spider.name);
    match js.get_stream(names.frontier_stream()).await {
        Ok(stream) => stream
            .delete_consumer(Role::Fetcher.consumer_name())
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Where a replay of PAGES starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// Every stored page.
    All,
    /// Pages stored at or after this instant.
    Since(chrono::DateTime<chrono::Utc>),
    /// Pages from this stream sequence on.
    FromSeq(u64),
}

impl ReplayStart {
    /// Where a consumer of PAGES starts delivering (replays, `jetcrawl export`).
    pub fn deliver_policy(&self) -> Result<DeliverPolicy, Error> {
        Ok(match self {
            ReplayStart::All => DeliverPolicy::All,
            ReplayStart::FromSeq(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: (*seq).max(1),
            },
            ReplayStart::Since(t) => DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::parse_rfc3339(&t.to_rfc3339())
                    .map_err(|e| Error::js("replay start time", e))?,
            },
        })
    }
}

/// Create a consumer that reads PAGES from `start` for a replay. It is durable (so
/// several replay processes can share it) but removed by the server after an hour
/// unused, so an abandoned replay leaves nothing behind.
pub async fn ensure_replay_consumer(
    js: &jetstream::Context,
    spider: &Spider,
    name: &str,
    start: &ReplayStart,
    max_ack_pending: i64,
) -> Result<PullConsumer, Error> {
    let names = Names::new(&spider.name);
    let deliver_policy = start.deliver_policy()?;
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("jetcrawl {} replay", spider.name)),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spider.streams.ack_wait(),
        max_deliver: -1,
        max_ack_pending,
        filter_subject: names.pages_subject(),
        inactive_threshold: Duration::from_secs(3600),
        ..Default::default()
    };
    create_consumer(js, &names.pages_stream(), config).await
}

/// Create or update a pull consumer on `stream`.
pub(crate) async fn create_consumer(
    js: &jetstream::Context,
    stream: &str,
    mut config: pull::Config,
) -> Result<PullConsumer, Error> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| Error::js("get stream", e))?;
    keep_pause(&stream, &mut config).await;
    stream
        .create_consumer(config)
        .await
        .map_err(|e| Error::js("create consumer", e))
}

/// A consumer paused by `jetcrawl pause` stays paused when a stage (re)creates it.
/// nats-server 2.15 already keeps a pause through an update without a deadline
/// (`tests/ops.rs` restarts a paused sink with a changed consumer setting); carrying
/// the deadline over here keeps that true whatever the server version does.
async fn keep_pause(stream: &stream::Stream, config: &mut pull::Config) {
    let Some(name) = config.durable_name.clone() else {
        return;
    };
    if let Ok(info) = stream.consumer_info(&name).await {
        if info.paused {
            config.pause_until = info.config.pause_until;
        }
    }
}

/// Publish a message a stage gave up on to `dead.<stage>`, with the reason, and wait
/// for the stream to store it.
pub async fn dead_letter(
    js: &jetstream::Context,
    names: &Names,
    stage: &str,
    source: Option<&jetstream::Message>,
    payload: bytes::Bytes,
    reason: &str,
    id: Option<&str>,
) -> Result<(), Error> {
    use crate::message::{header, sanitize_header};
    // Keep the original headers (page metadata) but never its message id: a dead
    // letter must not be deduplicated against the original.
    let mut headers = async_nats::HeaderMap::new();
    if let Some(original) = source.and_then(|m| m.headers.as_ref()) {
        for (name, values) in original.iter() {
            if AsRef::<str>::as_ref(name).eq_ignore_ascii_case("Nats-Msg-Id") {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    headers.insert(header::ERROR, sanitize_header(reason).as_str());
    headers.insert(header::STAGE, stage);
    if let Some(m) = source {
        headers.insert(header::SOURCE_SUBJECT, m.subject.as_str());
        if let Ok(info) = m.info() {
            headers.insert(
                header::SOURCE_SEQ,
                info.stream_sequence.to_string().as_str(),
            );
        }
    }
    // Whatever it was, a dead letter must fit in a message: keep its start.
    let room = js
        .client()
        .server_info()
        .max_payload
        .saturating_sub(DEAD_HEADER_ROOM)
        .max(1024);
    let payload = if payload.len() > room {
        headers.insert(header::ORIGINAL_BYTES, payload.len().to_string().as_str());
        payload.slice(..room)
    } else {
        payload
    };
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(names.dead_subject(stage), headers, payload)
        .await
        .map_err(|e| Error::js("publish dead letter", e))?
        .await
        .map_err(|e| Error::js("publish dead letter", e))?;
    Ok(())
}
