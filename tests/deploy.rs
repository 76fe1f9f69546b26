//! deploy/ against the code it deploys: every metric the Grafana dashboard and the
//! Prometheus alerts use is one the running stages export; the container health check
//! (`jetcrawl healthcheck`) probes a real stage; the spiders and autoscalers agree on
//! names. (`scripts/check-deploy.sh` runs the file validators.)

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Harness, HarnessOptions};
use jetcrawl_shared::topology::{partition_consumer_name, Names, Role as ConsumerRole};
use jetcrawl_shared::CompiledSpider;

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(120);

/// Recorded by Prometheus itself for every target it scrapes; no stage can export it.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every PromQL query of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/jetcrawl.json")).expect("JSON");
    let panels = dash["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The `expr:` blocks of the alert rules (one per rule, continuation lines included).
fn alert_exprs() -> Vec<String> {
    let text = read("deploy/prometheus/alerts.yml");
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent || next.trim().is_empty();
            if !deeper {
                break;
            }
            expr.push('\n');
            expr.push_str(next);
            lines.next();
        }
        exprs.push(expr);
    }
    exprs
}

/// Metric names in PromQL: identifiers that are not functions (followed by `(`) or
/// aggregations, not in `by`/`on`/`without` label lists, not inside `{...}` matchers,
/// not keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut braces, mut label_list) = (0, 0usize, false);
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '(' if label_list => {}
            ')' => label_list = false,
            '"' => {
                // Skip a string literal.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
            }
            '[' => {
                // Skip a range like [10m].
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < bytes.len()
                    && ((bytes[i] as char).is_ascii_alphanumeric() || b"_:".contains(&bytes[i]))
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                if [
                    "by",
                    "on",
                    "without",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word)
                {
                    label_list = true;
                } else if braces == 0
                    && !label_list
                    && next != Some('(')
                    && !KEYWORDS.contains(&word)
                {
                    names.insert(word.to_string());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Sample names a `/metrics` exposition offers: its samples, and what its `# TYPE`
/// lines declare (a family with no labelled child yet still declares its name).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

#[test]
fn the_metric_name_scanner_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"sum by (stage) (rate(jetcrawl_a_total{status=~"error|5xx",stage="x"}[5m])) / on (stage) max(jetcrawl_b) > 0 unless up{job="sink"} == 0"#,
    );
    let want: BTreeSet<String> = ["jetcrawl_a_total", "jetcrawl_b", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
    let exported = exported_names(
        "# TYPE jetcrawl_x counter\n# TYPE jetcrawl_h histogram\njetcrawl_g{stage=\"a\"} 1\n",
    );
    for n in [
        "jetcrawl_x_total",
        "jetcrawl_h_bucket",
        "jetcrawl_h_count",
        "jetcrawl_g",
    ] {
        assert!(exported.contains(n), "{n} in {exported:?}");
    }
}

#[test]
fn alerts_and_dashboard_have_queries() {
    assert_eq!(alert_exprs().len(), 5, "one expr per alert rule");
    assert!(dashboard_queries().len() >= 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_metrics_the_stages_export() {
    let h = Harness::start(HarnessOptions::default()).await;
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    // The site, and a redirect loop: a fetch error, so the error counters have a
    // series to show.
    let looping = h.site.url(common::hostile::LOOP_A);
    h.seed(&[&h.site.start_url(), &looping]).await;
    h.wait_idle(CRAWL).await;

    // Each stage reports its consumer's lag every few seconds once it exists.
    let mut exported = BTreeSet::new();
    for s in [&fetcher, &parser, &sink] {
        h.wait_until(STARTUP, "the stage reports its consumer", || async {
            s.http_get("/metrics")
                .await
                .1
                .contains("jetcrawl_consumer_paused{")
        })
        .await;
        exported.extend(exported_names(&s.http_get("/metrics").await.1));
    }
    let mut used = BTreeSet::new();
    for q in dashboard_queries().iter().chain(alert_exprs().iter()) {
        used.extend(metric_names(q));
    }
    assert!(
        used.len() >= 12,
        "too few metrics found, the scanner is broken: {used:?}"
    );
    let missing: Vec<_> = used
        .iter()
        .filter(|n| !exported.contains(*n) && !PROMETHEUS_SERIES.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use metrics no stage exports: {missing:?}\nexported: {exported:?}"
    );

    // The container health check, as the image runs it: JETCRAWL_METRICS_ADDR says
    // 0.0.0.0:<port>, and the probe goes to loopback.
    let addr = parser.metrics_addr().expect("parser metrics address");
    let probe = |args: Vec<String>, env_addr: Option<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jetcrawl"));
        cmd.arg("healthcheck")
            .args(args)
            .env_remove("JETCRAWL_METRICS_ADDR");
        if let Some(a) = env_addr {
            cmd.env("JETCRAWL_METRICS_ADDR", a);
        }
        cmd.output().expect("run jetcrawl healthcheck")
    };
    let ok = probe(vec![], Some(format!("0.0.0.0:{}", addr.port())));
    assert!(ok.status.success(), "{ok:?}");
    let ready = probe(
        vec![
            "--addr".into(),
            addr.to_string(),
            "--path".into(),
            "/readyz".into(),
        ],
        None,
    );
    assert!(ready.status.success(), "{ready:?}");
    let missing = probe(
        vec![
            "--addr".into(),
            addr.to_string(),
            "--path".into(),
            "/nope".into(),
        ],
        None,
    );
    assert!(!missing.status.success(), "a 404 passed the health check");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let down = probe(vec!["--addr".into(), closed_addr.to_string()], None);
    assert!(
        !down.status.success(),
        "a closed port passed the health check"
    );

    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

#[test]
fn spiders_and_autoscalers_agree_on_stream_and_consumer_names() {
    for path in [
        "deploy/spider.toml",
        "deploy/k8s/spider.toml",
        "examples/demo.toml",
    ] {
        CompiledSpider::load(&repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let k8s = CompiledSpider::load(&repo("deploy/k8s/spider.toml")).expect("k8s spider");
    let names = Names::new(k8s.name());
    let keda = read("deploy/k8s/keda.yaml");
    // One trigger per frontier partition consumer, the sink's on ITEMS, nothing else.
    let partitions = k8s.spider.streams.partitions;
    let mut want: Vec<(String, String)> = (0..partitions)
        .map(|p| (names.frontier_stream(), partition_consumer_name(p)))
        .collect();
    want.push((
        names.items_stream(),
        ConsumerRole::Sink.consumer_name().to_string(),
    ));
    let streams = keda
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stream: "));
    let consumers = keda
        .lines()
        .filter_map(|l| l.trim().strip_prefix("consumer: "));
    let got: Vec<(String, String)> = streams
        .zip(consumers)
        .map(|(s, c)| (s.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want, "keda.yaml's triggers");
    assert!(
        keda.contains(&format!("maxReplicaCount: {partitions}\n")),
        "at most one fetcher per partition"
    );
    // The compose stack crawls its own shop service.
    let compose = CompiledSpider::load(&repo("deploy/spider.toml")).expect("compose spider");
    assert_eq!(compose.spider.start_urls, ["http://shop:8080/"]);
    assert!(read("deploy/compose.yaml").contains(r#"command: ["demo", "--serve", "0.0.0.0:8080""#));
}
