//! The renderer's error type, classified so a page can tell "the browser failed"
//! (restart it, render the page again) from "this page failed" (an error record).

/// Why a render (or the renderer) failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No Chromium at the given path, on PATH, or in `CHROMIUM`.
    #[error("no browser found: {0} (install chromium, or pass --chromium / set CHROMIUM)")]
    NoBrowser(String),
    /// The browser would not start, or its DevTools endpoint could not be reached.
    #[error("browser did not start: {0}")]
    Browser(String),
    /// The connection to the browser ended (it exited or crashed).
    #[error("browser connection lost")]
    BrowserGone,
    /// The browser did not answer a command in time.
    #[error("browser did not answer {0} in time")]
    BrowserHung(String),
    /// The browser refused a command.
    #[error("devtools error: {0}")]
    Protocol(String),
    /// The tab's renderer process crashed, or its event channel overflowed.
    #[error("tab failed: {0}")]
    Tab(String),
    /// The page did not settle within `[render] timeout_ms`.
    #[error("page not settled after {0} ms")]
    Timeout(u64),
    /// Setting up the fetcher half (HTTP client, politeness).
    #[error(transparent)]
    Fetch(#[from] jetcrawl_fetcher::FetchError),
    /// NATS plumbing of the service (streams, consumers, leases).
    #[error(transparent)]
    Shared(#[from] jetcrawl_shared::Error),
}

impl RenderError {
    /// The browser itself failed: restart it and render the page again.
    pub fn is_browser_failure(&self) -> bool {
        matches!(
            self,
            RenderError::BrowserGone | RenderError::BrowserHung(_) | RenderError::Browser(_)
        )
    }

    /// A low-cardinality label for metrics and page records.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::NoBrowser(_) | RenderError::Browser(_) => "browser",
            RenderError::BrowserGone => "browser_gone",
            RenderError::BrowserHung(_) => "browser_hung",
            RenderError::Protocol(_) => "devtools",
            RenderError::Tab(_) => "render_failed",
            RenderError::Timeout(_) => "render_timeout",
            RenderError::Fetch(_) => "fetch",
            RenderError::Shared(_) => "nats",
        }
    }
}
