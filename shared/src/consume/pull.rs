//! The consume loop's own pull requests: asked for as slots come free, counted until
//! the server delivers or ends them, replaced when the server stops serving them.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tokio::time::Instant;

use super::{ack, Settler};

/// How long a pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a waiting pull request is still there.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// A stage that got nothing for this long while its consumer has messages pending
/// says so, with the consumer's state.
const QUIET_WARNING: Duration = Duration::from_secs(10);

/// One pull subscription: its inbox, and what it has asked for and not yet received.
pub(super) struct Pull {
    consumer: PullConsumer,
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    inbox: String,
    pub(super) sub: Subscriber,
    /// Messages requested and neither delivered nor expired.
    pub(super) outstanding: usize,
    /// When the server last sent anything on the inbox.
    heard: Instant,
    /// When a message last came.
    last_message: Instant,
    /// When the consumer's state may next be asked for (at most every 10 s while
    /// quiet, 30 s after a warning: an idle crawl must not poll the server).
    next_check: Instant,
    /// The client's connect count when the requests were made.
    connects: u64,
}

pub(super) enum Received {
    Message(Box<jetstream::Message>),
    Status,
    Gone(String),
}

impl Pull {
    pub(super) async fn open(
        js: &jetstream::Context,
        consumer: PullConsumer,
    ) -> Result<Pull, String> {
        let client = js.client();
        let info = consumer.cached_info();
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        );
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        let connects = connects(&client);
        Ok(Pull {
            consumer,
            client,
            js: js.clone(),
            subject,
            inbox,
            sub,
            outstanding: 0,
            heard: Instant::now(),
            last_message: Instant::now(),
            next_check: Instant::now(),
            connects,
        })
    }

    pub(super) async fn request(&mut self, batch: usize) -> Result<(), String> {
        let body = serde_json::json!({
            "batch": batch,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
        });
        if self.outstanding == 0 {
            // Heartbeats are owed from now on, not from whenever the last one came.
            self.heard = Instant::now();
        }
        self.client
            .publish_with_reply(
                self.subject.clone(),
                self.inbox.clone(),
                body.to_string().into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.outstanding += batch;
        Ok(())
    }

    /// Whether the requests counted as outstanding are gone: the server sent no
    /// heartbeat for two intervals, or the connection was re-established (a server
    /// forgets a connection's pull requests with it).
    pub(super) fn lost(&mut self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        let now_connects = connects(&self.client);
        if now_connects != self.connects {
            self.connects = now_connects;
            tracing::info!(
                consumer = %self.consumer.cached_info().name,
                "reconnected; pulling again"
            );
            return true;
        }
        if self.heard.elapsed() > PULL_HEARTBEAT * 2 {
            tracing::warn!(
                consumer = %self.consumer.cached_info().name,
                silent_ms = self.heard.elapsed().as_millis() as u64,
                "pull request lost (no heartbeat); pulling again"
            );
            self.heard = Instant::now();
            return true;
        }
        false
    }

    pub(super) fn receive(&mut self, message: async_nats::Message, stage: &str) -> Received {
        self.heard = Instant::now();
        let status = message.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.last_message = Instant::now();
            return Received::Message(Box::new(jetstream::Message {
                message,
                context: self.js.clone(),
            }));
        }
        if status == StatusCode::IDLE_HEARTBEAT {
            return Received::Status;
        }
        let description = message.description.clone().unwrap_or_default();
        if status == StatusCode::NO_RESPONDERS {
            // JetStream did not answer (no leader just now): the request went nowhere.
            self.outstanding = 0;
            return Received::Gone("no responders".to_string());
        }
        if description.contains("Consumer Deleted") || description.contains("push based") {
            return Received::Gone(description);
        }
        // An ended request (expired, or refused: 408, 409) says how many of its
        // messages it did not deliver.
        let left = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse::<usize>().ok());
        match left {
            Some(n) => self.outstanding = self.outstanding.saturating_sub(n),
            None => self.outstanding = 0,
        }
        if status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND {
            tracing::debug!(stage, status = %status, description, "pull request ended");
        }
        Received::Status
    }

    /// Say so when the consumer has messages pending and delivers none to a stage
    /// with room: a dead worker's unacked messages filling `max_ack_pending`, say.
    pub(super) async fn warn_if_quiet(&mut self, stage: &str) {
        if self.last_message.elapsed() < QUIET_WARNING || Instant::now() < self.next_check {
            return;
        }
        self.next_check = Instant::now() + QUIET_WARNING;
        if let Ok(info) = self.consumer.info().await {
            if info.num_pending > 0 {
                self.next_check = Instant::now() + QUIET_WARNING * 3;
                tracing::warn!(
                    stage,
                    consumer = %info.name,
                    pending = info.num_pending,
                    ack_pending = info.num_ack_pending,
                    max_ack_pending = info.config.max_ack_pending,
                    waiting_pulls = info.num_waiting,
                    quiet_s = self.last_message.elapsed().as_secs(),
                    "nothing delivered although messages are pending"
                );
            }
        }
    }

    /// Stop: unsubscribe, then hand back what had already arrived. Interest goes
    /// first: with the inbox gone the server drops this loop's waiting pull requests,
    /// so a message handed back is not delivered straight back to one of them (a nak
    /// while they wait bounces the message between the server and this loop, one
    /// delivery each time, until it looks like poison).
    pub(super) async fn close(mut self, settler: &Settler) {
        let _ = self.sub.unsubscribe().await;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), self.sub.next()).await;
            let Ok(Some(message)) = next else { break };
            if let Received::Message(msg) = self.receive(message, settler.stage) {
                ack(&msg, AckKind::Nak(None)).await;
            }
        }
    }
}

fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
