//! A throwaway NATS cluster: `n0`..`n<N-1>`, each a `nats-server` with JetStream on
//! free loopback ports (client, route, monitoring), routes to all the others, its own
//! store in a temp dir, the server's stock `max_payload`. Nodes can be killed (SIGKILL)
//! and restarted on the same ports and store; the cluster can say which node leads
//! JetStream (the meta leader) and any stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tempfile::TempDir;

use crate::servers::{free_port, kill_and_reap, nats_client, spawn_nats_server, tail};

/// How long the cluster (or a restarted node) gets to elect and catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One member of a [`NatsCluster`].
struct Node {
    /// `n<i>`: the server name JetStream reports leaders by.
    name: String,
    /// The cluster's name, unique per cluster: nodes of two test clusters that met
    /// through a reused port would refuse each other's routes.
    cluster: String,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn monitor(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    fn spawn(&mut self, routes: &[u16]) -> Result<(), String> {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        // The server stores under `<store_dir>/jetstream`.
        let text = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n}}\n\
             cluster {{\n  name: {cluster}\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
            name = self.name,
            cluster = self.cluster,
            client = self.client_port,
            http = self.http_port,
            route = self.route_port,
            store = self.dir.path().display(),
            routes = routes.join(", "),
        );
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
        self.child = Some(spawn_nats_server(&conf, &self.log_path())?);
        Ok(())
    }

    /// Err if the process has exited (with its log), Ok(running) otherwise.
    fn check_alive(&mut self) -> Result<bool, String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Err(format!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    tail(&self.log_path(), 30)
                ))
            }
            _ => Ok(true),
        }
    }

    /// `/jsz` of this node, parsed; None if it does not answer.
    async fn jsz(&self) -> Option<serde_json::Value> {
        let (status, body) = crate::stack::http_get(self.monitor(), "/jsz").await.ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// A NATS cluster of real `nats-server` processes, killed when dropped (each [`Node`]).
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// A client of every node (it fails over as nodes come and go).
    js: jetstream::Context,
}

impl NatsCluster {
    /// Starts `size` routed nodes and waits until they have elected a JetStream meta
    /// leader that every node follows.
    pub async fn start(size: usize) -> NatsCluster {
        let mut last_err = String::new();
        // A freed port can be taken by a parallel test before a node binds it.
        for _ in 0..3 {
            let cluster = format!("jetcrawl-test-{:08x}", rand::random::<u32>());
            let mut nodes: Vec<Node> = (0..size)
                .map(|i| Node {
                    name: format!("n{i}"),
                    cluster: cluster.clone(),
                    client_port: free_port(),
                    route_port: free_port(),
                    http_port: free_port(),
                    dir: tempfile::Builder::new()
                        .prefix(&format!("jetcrawl-nats-n{i}-"))
                        .tempdir()
                        .expect("temp dir"),
                    child: None,
                })
                .collect();
            let routes: Vec<u16> = nodes.iter().map(|n| n.route_port).collect();
            let started = nodes.iter_mut().try_for_each(|n| n.spawn(&routes));
            if let Err(e) = started {
                last_err = e;
                continue;
            }
            if let Err(e) = wait_ready(&mut nodes).await {
                last_err = e;
                continue;
            }
            let urls: Vec<String> = nodes.iter().map(Node::url).collect();
            match nats_client(&urls.join(",")).await {
                Ok(client) => {
                    let js = jetstream::new(client);
                    return NatsCluster { nodes, js };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("nats cluster did not start: {last_err}");
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma-separated (a `NATS_URL` for the whole cluster).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        urls.join(",")
    }

    /// Node `i`'s client URL alone.
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`'s server name (`n<i>`), as JetStream names leaders.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i`'s process runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Every node's log file (appended to across restarts).
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(Node::log_path).collect()
    }

    /// SIGKILL node `i`: no flush, no goodbye.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Kills node `i` if it runs, starts it again on the same ports and store, and
    /// waits until it follows the cluster's meta leader again.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let routes: Vec<u16> = self.nodes.iter().map(|n| n.route_port).collect();
        let ready = match self.nodes[i].spawn(&routes) {
            Ok(()) => wait_ready(&mut self.nodes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            panic!("{} did not rejoin the cluster: {e}", self.nodes[i].name);
        }
    }

    /// The JetStream meta leader as the running nodes see it (see [`meta_leader`]).
    pub async fn meta_leader(&self) -> Option<String> {
        meta_leader(&self.nodes).await
    }

    /// A JetStream context on the cluster (its client fails over between the nodes).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The server name of `stream`'s leader, if it has one now.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let mut s = self.js.get_stream(stream).await.ok()?;
        let info = s.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// Asks `stream`'s leader to step down (`$JS.API.STREAM.LEADER.STEPDOWN`), naming
    /// the node it would prefer next (servers before 2.11 pick one at random).
    pub async fn stream_step_down(&self, stream: &str, preferred: &str) -> Result<(), String> {
        let body = serde_json::json!({ "placement": { "preferred": preferred } });
        let answer: serde_json::Value = self
            .js
            .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &body)
            .await
            .map_err(|e| format!("step down {stream}: {e}"))?;
        match answer.get("error") {
            Some(e) => Err(format!("step down {stream}: {e}")),
            None => Ok(()),
        }
    }

    /// The names of the clients connected to node `i` (`/connz`), e.g.
    /// `jetcrawl-fetcher`; empty if it does not answer.
    pub async fn client_names(&self, i: usize) -> Vec<String> {
        let Ok((200, body)) = crate::stack::http_get(self.nodes[i].monitor(), "/connz").await
        else {
            return Vec::new();
        };
        let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        connz
            .get("connections")
            .and_then(|c| c.as_array())
            .map(|conns| {
                conns
                    .iter()
                    .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The JetStream meta leader as the running nodes see it: Some only when they all
/// name the same one and every running node is a current member of its group.
async fn meta_leader(nodes: &[Node]) -> Option<String> {
    let mut leader: Option<String> = None;
    // A leader named but not running is one the others have not yet replaced.
    let mut leader_runs = false;
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        let jsz = node.jsz().await?;
        let meta = jsz.get("meta_cluster")?;
        let this = meta.get("leader")?.as_str().filter(|l| !l.is_empty())?;
        if leader.as_deref().is_some_and(|l| l != this) {
            return None;
        }
        if this == node.name {
            // The leader lists the others; every running one must be caught up.
            let replicas = meta.get("replicas")?.as_array()?;
            let current = |name: &str| {
                replicas.iter().any(|r| {
                    r.get("name").and_then(|n| n.as_str()) == Some(name)
                        && r.get("current").and_then(|c| c.as_bool()) == Some(true)
                })
            };
            let behind = nodes
                .iter()
                .filter(|n| n.child.is_some() && n.name != node.name)
                .any(|n| !current(&n.name));
            if behind {
                return None;
            }
            leader_runs = true;
        }
        leader = Some(this.to_string());
    }
    leader.filter(|_| leader_runs)
}

/// Waits until the running nodes follow one meta leader and each answers JetStream
/// requests; Err (with their logs) if a node exits or that takes too long.
async fn wait_ready(nodes: &mut [Node]) -> Result<(), String> {
    let started = Instant::now();
    loop {
        for node in nodes.iter_mut() {
            node.check_alive()?;
        }
        if meta_leader(nodes).await.is_some() && jetstream_answers(nodes).await {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {}:\n{}", n.name, tail(&n.log_path(), 15)))
                .collect();
            return Err(format!(
                "no meta leader followed by every node in {READY_TIMEOUT:?}; logs:\n{}",
                logs.join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn jetstream_answers(nodes: &[Node]) -> bool {
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        let Ok(client) = async_nats::connect(node.url()).await else {
            return false;
        };
        if jetstream::new(client).query_account().await.is_err() {
            return false;
        }
    }
    true
}

/// A node is killed when dropped: also the nodes of an attempt [`NatsCluster::start`]
/// gives up on (a port taken by a parallel test), which once outlived their test.
impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
