//! Finding and starting Chromium: headless, in a fresh profile directory, with its
//! own networking switched off (every request it makes is answered by the renderer,
//! see `tab`), and tied to this process so that it never outlives it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cdp::Cdp;
use crate::error::RenderError;

/// Names tried on PATH when no browser is given.
const CANDIDATES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
];

/// How long a browser may take to open its DevTools endpoint.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser to run: `given` (from `--chromium` / `CHROMIUM`) if set, else the first
/// of the usual names found on PATH.
pub fn locate(given: Option<&Path>) -> Result<PathBuf, RenderError> {
    if let Some(path) = given {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        // A bare name: look it up on PATH like a shell would.
        if path.components().count() == 1 {
            if let Some(found) = on_path(&path.to_string_lossy()) {
                return Ok(found);
            }
        }
        return Err(RenderError::NoBrowser(format!(
            "{} does not exist",
            path.display()
        )));
    }
    CANDIDATES
        .iter()
        .find_map(|name| on_path(name))
        .ok_or_else(|| RenderError::NoBrowser(format!("none of {CANDIDATES:?} is on PATH")))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running browser and the connection to it. Dropping it kills the browser.
pub struct Browser {
    /// The DevTools connection.
    pub cdp: Cdp,
    child: std::sync::Mutex<Child>,
    /// The profile directory, removed on drop.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start `path` headless and connect to it.
    pub async fn launch(path: &Path) -> Result<Browser, RenderError> {
        let profile = tempfile::Builder::new()
            .prefix("jetcrawl-chromium-")
            .tempdir()
            .map_err(|e| RenderError::Browser(format!("profile directory: {e}")))?;
        let mut cmd = Command::new(path);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            // Without these the browser phones home, and on a closed network its own
            // connections are refused.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--mute-audio",
            // Every request a page makes is paused and answered by the renderer (the
            // Fetch domain). What could slip past that (WebSockets, WebRTC) meets a
            // proxy that does not exist, loopback included: the browser itself reaches
            // no address.
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        // The browser gets SIGKILL when this process dies (even by SIGKILL), so a
        // killed renderer leaves no browser behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| RenderError::Browser(format!("{}: {e}", path.display())))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RenderError::Browser("no stderr".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let ws_url = tokio::time::timeout(START_TIMEOUT, async {
            let mut last = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_string());
                }
                last = line;
            }
            Err(RenderError::Browser(format!(
                "exited before DevTools opened: {last}"
            )))
        })
        .await
        .map_err(|_| RenderError::Browser("DevTools did not open within 30 s".into()))??;
        // Keep reading its log: a full pipe would stop the browser.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::trace!(line, "chromium");
            }
        });
        let cdp = Cdp::connect(&ws_url).await?;
        tracing::info!(browser = %path.display(), pid = child.id().unwrap_or(0), "browser started");
        Ok(Browser {
            cdp,
            child: std::sync::Mutex::new(child),
            _profile: profile,
        })
    }

    /// The browser's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().and_then(|c| c.id())
    }

    /// Kill the browser now (it failed); pages still using it see the connection end.
    pub fn kill(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_browser_is_named_in_the_error() {
        let err = locate(Some(Path::new("/nonexistent/chromium"))).unwrap_err();
        assert!(matches!(err, RenderError::NoBrowser(_)));
        assert!(err.to_string().contains("/nonexistent/chromium"), "{err}");
        assert!(err.to_string().contains("--chromium"), "{err}");
    }
}
