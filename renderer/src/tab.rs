//! Render one page in a fresh browser context: open a tab, answer its requests (the
//! document with the body the fetcher already fetched, the rest through `network`),
//! wait until it settles, read the DOM, and dispose of the context whatever happened.
//!
//! Settled: `[render] wait_for` matches an element; without it, the load event has
//! fired and no request of the page has been pending for [`NETWORK_IDLE`]. Past the
//! render timeout the page is an error ([`RenderError::Timeout`]); a script that never
//! yields holds only its own tab's renderer process, which the disposal ends.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use url::Url;

use crate::cdp::{Cdp, Event};
use crate::error::RenderError;
use crate::network::{Answer, Network, Paused};

/// Quiet time after which a loaded page counts as settled (no `wait_for`).
pub const NETWORK_IDLE: Duration = Duration::from_millis(500);
/// How long a browser may take over a command about contexts and tabs; longer means
/// it is hung (a page's own scripts cannot delay these).
const BROWSER_LIMIT: Duration = Duration::from_secs(10);
/// How often the settle condition is looked at.
const TICK: Duration = Duration::from_millis(50);

/// One page to render.
pub struct Job<'a> {
    /// Where the document came from (after redirects): the URL the tab navigates to.
    pub url: &'a Url,
    /// The document, as fetched (UTF-8).
    pub html: bytes::Bytes,
    /// The page's depth, the priority of its requests at their host's gate.
    pub depth: u32,
    /// `[render] timeout_ms`.
    pub timeout: Duration,
    /// `[render] wait_for`.
    pub wait_for: Option<&'a str>,
    /// Answers the page's other requests.
    pub network: Arc<Network>,
}

/// What became of a render, and whether the browser is still fit for the next one.
pub struct Rendered {
    /// The DOM, serialized, or why there is none.
    pub result: Result<String, RenderError>,
    /// False when the browser failed to clean up after the page: restart it.
    pub browser_ok: bool,
}

/// Render `job` in a context of its own; the context is always disposed of.
pub async fn render(cdp: &Cdp, job: Job<'_>) -> Rendered {
    let context = match cdp
        .call(
            "Target.createBrowserContext",
            json!({ "disposeOnDetach": true }),
            None,
            BROWSER_LIMIT,
        )
        .await
    {
        Ok(v) => match v.get("browserContextId").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => {
                return Rendered {
                    result: Err(RenderError::Protocol("no browserContextId".into())),
                    browser_ok: true,
                }
            }
        },
        Err(e) => {
            let browser_ok = !e.is_browser_failure();
            return Rendered {
                result: Err(e),
                browser_ok,
            };
        }
    };
    let mut session = None;
    let result = in_context(cdp, &context, &mut session, job).await;
    if let Some(s) = &session {
        cdp.forget(s);
    }
    let disposed = cdp
        .call(
            "Target.disposeBrowserContext",
            json!({ "browserContextId": context }),
            None,
            BROWSER_LIMIT,
        )
        .await;
    let browser_ok = match (&result, &disposed) {
        (Err(e), _) if e.is_browser_failure() => false,
        (_, Err(e)) => {
            tracing::warn!(error = %e, "browser context not disposed; restarting the browser");
            false
        }
        _ => true,
    };
    let result = match result {
        // A page that timed out in a browser that then could not clean up: the
        // browser hung (stopped, starved), not the page. Render it again elsewhere.
        Err(RenderError::Timeout(_)) if !browser_ok => Err(RenderError::BrowserHung(
            "Target.disposeBrowserContext".into(),
        )),
        other => other,
    };
    Rendered { result, browser_ok }
}

async fn in_context(
    cdp: &Cdp,
    context: &str,
    session_out: &mut Option<String>,
    job: Job<'_>,
) -> Result<String, RenderError> {
    let deadline = Instant::now() + job.timeout;
    let target = cdp
        .call(
            "Target.createTarget",
            json!({ "url": "about:blank", "browserContextId": context }),
            None,
            BROWSER_LIMIT,
        )
        .await?;
    let target = str_field(&target, "targetId")?;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
            None,
            BROWSER_LIMIT,
        )
        .await?;
    let session = str_field(&attached, "sessionId")?;
    *session_out = Some(session.clone());
    let mut events = cdp.subscribe(&session);
    let s = Some(session.as_str());
    let patterns = json!({ "patterns": [{ "urlPattern": "*", "requestStage": "Request" }] });
    cdp.call("Fetch.enable", patterns, s, BROWSER_LIMIT).await?;
    cdp.call("Page.enable", json!({}), s, BROWSER_LIMIT).await?;

    let mut page = PageState {
        cdp: cdp.clone(),
        session: session.clone(),
        html: Some(job.html.clone()),
        answering: JoinSet::new(),
        last_activity: Instant::now(),
        loaded: false,
    };
    let nav_cdp = cdp.clone();
    let nav_session = session.clone();
    let nav_url = job.url.to_string();
    let nav_limit = job.timeout;
    let mut navigate: JoinHandle<Result<Value, RenderError>> = tokio::spawn(async move {
        let params = json!({ "url": nav_url });
        nav_cdp
            .call("Page.navigate", params, Some(&nav_session), nav_limit)
            .await
    });
    let mut navigated = false;
    let mut probe: Option<JoinHandle<Result<Value, RenderError>>> = None;
    let mut tick = tokio::time::interval(TICK);
    let timeout_ms = job.timeout.as_millis() as u64;
    let result = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break Err(RenderError::Timeout(timeout_ms)),
            _ = cdp.closed() => break Err(RenderError::BrowserGone),
            nav = &mut navigate, if !navigated => {
                navigated = true;
                let nav = nav.map_err(|e| RenderError::Tab(e.to_string())).and_then(|r| r);
                match nav {
                    Ok(v) => {
                        if let Some(err) = v.get("errorText").and_then(Value::as_str) {
                            break Err(RenderError::Tab(format!("navigation failed: {err}")));
                        }
                    }
                    // The page's own slowness, not the browser's.
                    Err(RenderError::BrowserHung(_)) => break Err(RenderError::Timeout(timeout_ms)),
                    Err(e) => break Err(e),
                }
            }
            event = events.recv() => match event {
                Some(event) => {
                    if let Err(e) = page.on_event(event, &job).await {
                        break Err(e);
                    }
                }
                None => break Err(if cdp.is_closed() {
                    RenderError::BrowserGone
                } else {
                    RenderError::Tab("too many browser events".into())
                }),
            },
            Some(_) = page.answering.join_next() => page.last_activity = Instant::now(),
            done = async {
                match probe.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if probe.is_some() => {
                probe = None;
                match done {
                    Ok(Ok(v)) if v.pointer("/result/value") == Some(&Value::Bool(true)) => break Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(RenderError::BrowserHung(_))) => break Err(RenderError::Timeout(timeout_ms)),
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(RenderError::Tab(e.to_string())),
                }
            }
            _ = tick.tick() => {
                if !navigated {
                    continue;
                }
                match job.wait_for {
                    Some(selector) if probe.is_none() => {
                        let expr = format!("!!document.querySelector({})", json!(selector));
                        probe = Some(evaluate(cdp, &session, expr, deadline));
                    }
                    Some(_) => {}
                    None => {
                        if page.loaded
                            && page.answering.is_empty()
                            && page.last_activity.elapsed() >= NETWORK_IDLE
                        {
                            break Ok(());
                        }
                    }
                }
            }
        }
    };
    navigate.abort();
    if let Some(p) = probe.take() {
        p.abort();
    }
    result?;
    let expr = "document.documentElement ? document.documentElement.outerHTML : ''".to_string();
    // A little grace past the deadline: the page has settled, only reading is left.
    let read = evaluate(
        cdp,
        &session,
        expr,
        deadline.max(Instant::now()) + Duration::from_secs(2),
    );
    let value = match read.await {
        Ok(Ok(v)) => v,
        Ok(Err(RenderError::BrowserHung(_))) => return Err(RenderError::Timeout(timeout_ms)),
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(RenderError::Tab(e.to_string())),
    };
    if let Some(exception) = value.get("exceptionDetails") {
        return Err(RenderError::Tab(format!("reading the DOM: {exception}")));
    }
    match value.pointer("/result/value").and_then(Value::as_str) {
        Some(html) => Ok(format!("<!DOCTYPE html>\n{html}")),
        None => Err(RenderError::Tab("the DOM could not be read".into())),
    }
}

/// The tab's side of a render: its pending answers and what it has seen.
struct PageState {
    cdp: Cdp,
    session: String,
    /// The document, until the browser asks for it.
    html: Option<bytes::Bytes>,
    answering: JoinSet<()>,
    last_activity: Instant,
    loaded: bool,
}

impl PageState {
    async fn on_event(&mut self, event: Event, job: &Job<'_>) -> Result<(), RenderError> {
        self.last_activity = Instant::now();
        match event.method.as_str() {
            "Fetch.requestPaused" => self.on_request(event.params, job).await,
            "Page.loadEventFired" => self.loaded = true,
            "Page.javascriptDialogOpening" => {
                // alert()/confirm() would stop the page until someone answers.
                let params = json!({ "accept": false });
                let session = self.session.clone();
                self.cdp
                    .send("Page.handleJavaScriptDialog", params, &session)
                    .await;
            }
            "Inspector.targetCrashed" => {
                return Err(RenderError::Tab(
                    "the tab's renderer process crashed".into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_request(&mut self, params: Value, job: &Job<'_>) {
        let Some(id) = params.get("requestId").and_then(Value::as_str) else {
            return;
        };
        let id = id.to_string();
        let field = |path: &str| params.pointer(path).and_then(Value::as_str);
        let paused = Paused {
            url: field("/request/url").unwrap_or_default().to_string(),
            method: field("/request/method").unwrap_or("GET").to_string(),
            resource_type: field("/resourceType").unwrap_or("Other").to_string(),
            origin: field("/request/headers/Origin").map(str::to_string),
        };
        // The first document the tab asks for is the page itself, already fetched
        // (robots, politeness, redirects and all) by the fetcher half.
        if paused.resource_type == "Document" {
            if let Some(html) = self.html.take() {
                let answer = Answer::Respond {
                    status: 200,
                    content_type: Some("text/html; charset=utf-8".into()),
                    body: html,
                    allow_origin: None,
                };
                reply(&self.cdp, &self.session, &id, answer).await;
                return;
            }
        }
        let (cdp, session, network, depth) = (
            self.cdp.clone(),
            self.session.clone(),
            job.network.clone(),
            job.depth,
        );
        self.answering.spawn(async move {
            let answer = network.answer(&paused, depth).await;
            reply(&cdp, &session, &id, answer).await;
        });
    }
}

async fn reply(cdp: &Cdp, session: &str, id: &str, answer: Answer) {
    match answer {
        Answer::Respond {
            status,
            content_type,
            body,
            allow_origin,
        } => {
            let mut headers = Vec::new();
            if let Some(ct) = content_type {
                headers.push(json!({ "name": "Content-Type", "value": ct }));
            }
            if let Some(origin) = allow_origin {
                headers.push(json!({ "name": "Access-Control-Allow-Origin", "value": origin }));
                headers
                    .push(json!({ "name": "Access-Control-Allow-Credentials", "value": "true" }));
            }
            let params = json!({
                "requestId": id,
                "responseCode": status,
                "responseHeaders": headers,
                "body": base64::engine::general_purpose::STANDARD.encode(&body),
            });
            cdp.send("Fetch.fulfillRequest", params, session).await;
        }
        Answer::Fail { reason, .. } => {
            let params = json!({ "requestId": id, "errorReason": reason });
            cdp.send("Fetch.failRequest", params, session).await;
        }
    }
}

/// Evaluate `expr` in the page (by value), answered by `deadline` at the latest.
fn evaluate(
    cdp: &Cdp,
    session: &str,
    expr: String,
    deadline: Instant,
) -> JoinHandle<Result<Value, RenderError>> {
    let (cdp, session) = (cdp.clone(), session.to_string());
    tokio::spawn(async move {
        let limit = deadline.saturating_duration_since(Instant::now());
        let params = json!({ "expression": expr, "returnByValue": true });
        cdp.call("Runtime.evaluate", params, Some(&session), limit)
            .await
    })
}

fn str_field(v: &Value, name: &str) -> Result<String, RenderError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| RenderError::Protocol(format!("reply without {name}")))
}
