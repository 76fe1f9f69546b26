//! A minimal Chrome DevTools Protocol client: one websocket to the browser, commands
//! matched to their replies by id, events routed to the session (tab) they belong to
//! ("flattened" sessions: every tab speaks over the browser's one connection).
//!
//! Why our own and not `chromiumoxide`: the renderer needs a dozen commands and three
//! events; chromiumoxide generates types for the whole protocol (hundreds of thousands
//! of lines), minutes of compile time on a small machine, and drives its own event
//! loop. Here a command is `call(method, params)` over `serde_json::Value`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::error::RenderError;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Reply = oneshot::Sender<Result<Value, RenderError>>;

/// Events a session may have waiting before its tab reads them; a page that makes
/// the browser send more at once fails instead of growing memory.
pub const SESSION_EVENTS: usize = 4096;

/// One event of a session: its method and params.
#[derive(Debug, Clone)]
pub struct Event {
    /// e.g. `Fetch.requestPaused`.
    pub method: String,
    /// Its parameters.
    pub params: Value,
}

/// A connection to one browser; cheap to clone.
#[derive(Clone)]
pub struct Cdp {
    inner: Arc<Inner>,
}

struct Inner {
    sink: tokio::sync::Mutex<Sink>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Reply>>,
    sessions: Mutex<HashMap<String, mpsc::Sender<Event>>>,
    /// Cancelled when the connection ends (the browser exited or crashed).
    closed: CancellationToken,
}

impl Cdp {
    /// Connect to the browser's DevTools websocket.
    pub async fn connect(ws_url: &str) -> Result<Self, RenderError> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .map_err(|e| RenderError::Browser(format!("devtools connect: {e}")))?;
        let (sink, mut stream) = ws.split();
        let inner = Arc::new(Inner {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
        });
        let reader = inner.clone();
        tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let text = match frame {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                reader.dispatch(text.as_str());
            }
            reader.close();
        });
        Ok(Cdp { inner })
    }

    /// Send a command (to a tab's `session`, or to the browser) and wait for its reply,
    /// at most `limit`: a browser that does not answer in time is hung.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
        limit: Duration,
    ) -> Result<Value, RenderError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_string());
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(id, tx);
        let sent = {
            let mut sink = self.inner.sink.lock().await;
            sink.send(Message::text(msg.to_string())).await
        };
        if sent.is_err() {
            lock(&self.inner.pending).remove(&id);
            return Err(RenderError::BrowserGone);
        }
        let reply = tokio::select! {
            r = rx => r.unwrap_or(Err(RenderError::BrowserGone)),
            _ = tokio::time::sleep(limit) => {
                lock(&self.inner.pending).remove(&id);
                Err(RenderError::BrowserHung(method.to_string()))
            }
        };
        reply
    }

    /// Send a command without waiting for its reply (answers to paused requests: a
    /// tab being torn down may never answer them).
    pub async fn send(&self, method: &str, params: Value, session: &str) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = json!({ "id": id, "method": method, "params": params, "sessionId": session });
        let mut sink = self.inner.sink.lock().await;
        let _ = sink.send(Message::text(msg.to_string())).await;
    }

    /// Route a session's events to a bounded channel, until [`Cdp::forget`].
    pub fn subscribe(&self, session: &str) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(SESSION_EVENTS);
        lock(&self.inner.sessions).insert(session.to_string(), tx);
        rx
    }

    /// Stop routing a session's events.
    pub fn forget(&self, session: &str) {
        lock(&self.inner.sessions).remove(session);
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }
}

impl Inner {
    fn dispatch(&self, text: &str) {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            tracing::debug!("devtools sent a frame that is not JSON");
            return;
        };
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let Some(reply) = lock(&self.pending).remove(&id) else {
                return;
            };
            let result = match msg.get("error") {
                Some(err) => Err(RenderError::Protocol(
                    err.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                )),
                None => Ok(msg
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null)),
            };
            let _ = reply.send(result);
            return;
        }
        let (Some(method), Some(session)) = (
            msg.get("method")
                .and_then(Value::as_str)
                .map(str::to_string),
            msg.get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_string),
        ) else {
            return; // browser-level events: nothing listens
        };
        let event = Event {
            method,
            params: msg
                .get_mut("params")
                .map(Value::take)
                .unwrap_or(Value::Null),
        };
        let mut sessions = lock(&self.sessions);
        if let Some(tx) = sessions.get(&session) {
            if tx.try_send(event).is_err() {
                // Full (the tab cannot keep up) or gone: the tab sees its channel
                // close and fails the page; nothing grows without bound.
                sessions.remove(&session);
            }
        }
    }

    fn close(&self) {
        self.closed.cancel();
        for (_, reply) in lock(&self.pending).drain() {
            let _ = reply.send(Err(RenderError::BrowserGone));
        }
        lock(&self.sessions).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
