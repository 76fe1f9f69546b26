//! One crawler process (`jetcrawl fetcher|parser|sink`), started as a child process
//! with its output in a log file, killed when the value is dropped.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{oneshot, watch};

/// A pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Fetcher,
    Parser,
    Sink,
    /// `jetcrawl renderer` (tests/render.rs).
    Renderer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Fetcher => "fetcher",
            Role::Parser => "parser",
            Role::Sink => "sink",
            Role::Renderer => "renderer",
        }
    }
}

/// What the harness knows about a service, shared with the task that reaps it.
#[derive(Debug)]
pub struct ServiceState {
    pub name: String,
    pub log: PathBuf,
    exit: Mutex<Option<ExitStatus>>,
    /// Set by kill9/terminate: an exit from now on is the test's doing.
    stopping: AtomicBool,
}

impl ServiceState {
    /// The exit status if the process has ended.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.lock().expect("service state")
    }

    /// True if the process ended without the test asking it to.
    pub fn died_unexpectedly(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst) && self.exited().is_some()
    }
}

/// How to start one service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A running (or ended) crawler process.
pub struct Service {
    state: Arc<ServiceState>,
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    done: watch::Receiver<bool>,
}

impl Service {
    /// Spawns `jetcrawl <args>`; stdout and stderr go to `spec.log`.
    pub fn spawn(spec: ServiceSpec) -> Service {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", spec.log.display()));
        let err = file.try_clone().expect("clone log handle");
        // JETCRAWL_BIN runs another build (say, release) through the same tests.
        let bin = std::env::var("JETCRAWL_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
        let mut child = Command::new(bin)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn jetcrawl {:?}: {e}", spec.args));
        let pid = child.id().expect("child pid");
        let state = Arc::new(ServiceState {
            name: spec.name,
            log: spec.log,
            exit: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = watch::channel(false);
        let reaper_state = state.clone();
        tokio::spawn(async move {
            // A dropped sender (the Service went away) also means: kill.
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            if let Ok(status) = status {
                *reaper_state.exit.lock().expect("service state") = Some(status);
            }
            let _ = done_tx.send(true);
        });
        Service {
            state,
            pid,
            kill: Some(kill_tx),
            done: done_rx,
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn state(&self) -> Arc<ServiceState> {
        self.state.clone()
    }

    /// The exit status if the process has ended.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.state.exited()
    }

    /// Panics (with the log tail) if the process has ended.
    pub fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited with {status}; log tail:\n{}",
                self.state.name,
                super::servers::tail(&self.state.log, 40)
            );
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill9(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Waits for a process the test made crash (a fail point): its exit is expected,
    /// and must not have been a clean one.
    pub async fn wait_crash(&mut self, timeout: Duration) -> ExitStatus {
        self.state.stopping.store(true, Ordering::SeqCst);
        let status = self.wait_exit(timeout).await;
        assert!(
            !status.success(),
            "{} exited cleanly; it was to crash. Log tail:\n{}",
            self.state.name,
            super::servers::tail(&self.state.log, 40)
        );
        status
    }

    /// SIGTERM (the graceful stop every service must honour).
    pub fn terminate(&self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if self.exited().is_some() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGSTOP: the process stays, frozen (as a long GC pause or a suspended VM).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {} ({}) failed", self.pid, self.state.name);
    }

    /// Waits for the process to end; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let ended = tokio::time::timeout(timeout, self.done.wait_for(|done| *done))
            .await
            .is_ok();
        if !ended {
            panic!(
                "{} still running after {timeout:?}; log tail:\n{}",
                self.state.name,
                super::servers::tail(&self.state.log, 40)
            );
        }
        self.exited()
            .unwrap_or_else(|| panic!("{}: exit status unavailable", self.state.name))
    }
}

impl Service {
    /// The address its `/metrics`, `/healthz` and `/readyz` listen on, read from the
    /// `metrics listening` log line (services run with `--metrics-addr 127.0.0.1:0`).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        let log = std::fs::read_to_string(&self.state().log).ok()?;
        log.lines()
            .filter(|l| l.contains("metrics listening"))
            .find_map(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    }

    /// GET `path` from the service's metrics endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr().unwrap_or_else(|| {
            panic!(
                "no `metrics listening` line in {}",
                self.state().log.display()
            )
        });
        jetcrawl_bench::stack::http_get(addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
    }
}
