#!/usr/bin/env bash
# sidekey under connection floods: what connections cost in memory, and
# whether it is given back. Not part of `cargo test`. See bench/README.md.
#
#   bash bench/flood.sh
#
# Builds the dist profile (what ships), starts sidekey on loopback, then, in three phases, opens
#   1. FLOOD_N idle keep-alive connections (each sends one request first),
#   2. FLOOD_N connections that send a 60 KiB request head and never end it
#      (just under the 64 KiB limit: the most one connection may hold),
#   3. FLOOD_BIG_N connections that each send a 400 KB request head (over
#      the limit: answered 431 and closed),
# and prints sidekey's RSS before, at the peak, and at several points after
# the connections closed, up to FLOOD_SETTLE seconds.
#
# Why the settle times: untrimmed glibc malloc keeps freed memory in its
# per-thread arenas indefinitely, so a short settle would hide nothing; an
# allocator that returns memory does so within its period (sidekey's glibc
# trimming: 5 s; jemalloc: 10 s,
# mimalloc: ~10 ms after the next allocator call). The +1 s, +10 s and
# +FLOOD_SETTLE (default 30 s) figures show which of these happened.
#
# Tunables (environment): FLOOD_N (2000), FLOOD_BIG_N (1000), FLOOD_SETTLE
# (30), FLOOD_MAX_CONNECTIONS (FLOOD_N + 100: every connection is served;
# set 512 to see the default cap at work), FLOOD_CARGO_FLAGS (extra flags
# for `cargo build --profile dist`, e.g. `--features jemalloc`),
# FLOOD_SIDEKEY (a prebuilt binary instead of building), FLOOD_ENV (extra
# environment for sidekey, e.g. `MALLOC_ARENA_MAX=2`), FLOOD_PHASES (which of
# the three phases to run: "1 2 3").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${FLOOD_N:-2000}
BIG_N=${FLOOD_BIG_N:-1000}
SETTLE=${FLOOD_SETTLE:-30}
PHASES=${FLOOD_PHASES:-1 2 3}
MAX_CONNECTIONS=${FLOOD_MAX_CONNECTIONS:-$((N + 100))}

log() { printf '[flood %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is required for the client side"

# ---------------------------------------------------------------- build ----
if [[ -n ${FLOOD_SIDEKEY:-} ]]; then
    SIDEKEY=$FLOOD_SIDEKEY
else
    log "cargo build --profile dist ${FLOOD_CARGO_FLAGS:-}"
    # shellcheck disable=SC2086
    (cd "$ROOT" && cargo build --profile dist --quiet --bin sidekey ${FLOOD_CARGO_FLAGS:-})
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
    SIDEKEY=$TARGET_DIR/dist/sidekey
fi
[[ -x $SIDEKEY ]] || die "$SIDEKEY not found"

# The client needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) > N + BIG_N + 100 )) || die "open-file limit $(ulimit -n) is too low for FLOOD_N=$N"

# ------------------------------------------------------------- cleanup ----
TMP=$(mktemp -d /tmp/sidekey-flood.XXXXXX)
PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$PID" 2>/dev/null || break; sleep 0.3; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------- config ----
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the ephemeral range: a port there may be in use as the source port of
# an outgoing connection, which a connect test does not see.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_BASE=10000 PORT_SPAN=$((EPHEMERAL_LOW - 10000))
((PORT_SPAN >= 1000)) || PORT_BASE=20000 PORT_SPAN=30000
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((PORT_BASE + RANDOM % PORT_SPAN))
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    die "no free port"
}
PORT=$(pick_port)
# The route's upstream is never reached: every request is answered by
# sidekey itself (404 no_route outside /api), so no upstream is needed.
cat >"$TMP/base.toml" <<TOML
[log]
level = "warn"

[credentials.flood]
type = "static"
token = { env = "FLOOD_TOKEN" }

[[routes]]
listen = "127.0.0.1:$PORT"
path_prefix = "/api"
upstream = "https://127.0.0.1:9"
credential = "flood"
TOML
{ echo "max_connections = $MAX_CONNECTIONS"; cat "$TMP/base.toml"; } >"$TMP/sidekey.toml"
export FLOOD_TOKEN=flood-token-not-secret
if ! "$SIDEKEY" check --config "$TMP/sidekey.toml" >/dev/null 2>&1; then
    # A build from before max_connections existed.
    log "this sidekey has no max_connections key; running without it"
    cp "$TMP/base.toml" "$TMP/sidekey.toml"
fi

log "starting $SIDEKEY on 127.0.0.1:$PORT"
# shellcheck disable=SC2086
env ${FLOOD_ENV:-} "$SIDEKEY" run --config "$TMP/sidekey.toml" 2>"$TMP/sidekey.log" &
PID=$!
for _ in $(seq 100); do port_in_use "$PORT" && break; sleep 0.1; done
port_in_use "$PORT" || { cat "$TMP/sidekey.log" >&2; die "sidekey did not start"; }

# --------------------------------------------------------------- client ----
python3 - "$PID" "$PORT" "$N" "$BIG_N" "$SETTLE" "$PHASES" <<'PY'
import socket, sys, time

pid, port, n, big_n, settle = (int(a) for a in sys.argv[1:6])
phases = set(sys.argv[6].split())

def status(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return float("nan")

def rss():
    return status("VmRSS")

def reset_peak():
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM
    except OSError:
        pass

def say(*parts):
    print(*parts, flush=True)

def settle_and_report(label, peak, before):
    closed = time.monotonic()
    marks = sorted({1, 10, settle})
    figures = []
    for mark in marks:
        wait = closed + mark - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        figures.append(f"+{mark}s {rss():6.1f}")
    say(f"{label:<28} before {before:6.1f}  peak {peak:6.1f}  after close: " + "  ".join(figures) + "  (MiB)")

def connect():
    # Past the connection cap, connections wait in the listen backlog; once
    # that is full too the kernel drops SYNs and connect() stalls.
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def open_many(count, first_bytes, what):
    conns = []
    for i in range(count):
        try:
            s = connect()
            s.sendall(first_bytes)
        except OSError as e:
            say(f"{what}: connection {i} stalled ({type(e).__name__}): the cap and the listen backlog are full")
            break
        conns.append(s)
    return conns

def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

# Warm up: a few requests, so the runtime's threads and buffers exist.
for _ in range(20):
    s = connect()
    s.sendall(b"GET /warm HTTP/1.1\r\nhost: sidekey\r\n\r\n")
    read_head(s)
    s.close()
time.sleep(1)
baseline = rss()
say(f"sidekey pid {pid}; RSS at rest after warm-up: {baseline:.1f} MiB")

# 1. idle keep-alive connections
def idle_keep_alive():
    reset_peak()
    before = rss()
    conns = []
    for i in range(n):
        s = connect()
        s.settimeout(5)
        s.sendall(b"GET /idle HTTP/1.1\r\nhost: sidekey\r\nuser-agent: flood\r\naccept: */*\r\n\r\n")
        try:
            head = read_head(s)
        except socket.timeout:
            say(f"connection {i} not served within 5 s: the connection cap is reached")
            s.close()
            break
        if not head.startswith(b"HTTP/1.1 404"):
            say(f"unexpected answer on connection {i}: {head[:40]!r}")
            break
        conns.append(s)
    time.sleep(1)
    peak = max(rss(), status("VmHWM"))
    say(f"{len(conns)} idle keep-alive connections open: RSS {rss():.1f} MiB, "
        f"{(rss() - before) * 1024 / max(len(conns), 1):.1f} KiB per connection")
    opened = len(conns)
    for s in conns:
        s.close()
    settle_and_report(f"{opened} idle keep-alive", peak, before)

# 2. unterminated 60 KiB heads
def slow_heads():
    reset_peak()
    before = rss()
    head = b"GET /slow HTTP/1.1\r\nhost: sidekey\r\nx-fill: " + b"a" * (60 * 1024)
    conns = open_many(n, head, "slow heads")
    time.sleep(2)
    peak = max(rss(), status("VmHWM"))
    say(f"{len(conns)} unterminated 60 KiB heads held: RSS {rss():.1f} MiB, "
        f"{(rss() - before) * 1024 / len(conns):.1f} KiB per connection")
    for s in conns:
        s.close()
    settle_and_report(f"{len(conns)} x 60 KiB slow heads", peak, before)

# 3. 400 KB heads, all connections opened first
def big_heads():
    reset_peak()
    before = rss()
    head = b"GET /big HTTP/1.1\r\nhost: sidekey\r\nx-fill: " + b"a" * (400 * 1000)
    conns = []
    answers = {}
    for s in open_many(big_n, b"", "400 KB heads"):
        s.setblocking(False)
        conns.append([s, 0])
    deadline = time.monotonic() + 60
    while any(sent < len(head) for _, sent in conns) and time.monotonic() < deadline:
        progressed = False
        for c in conns:
            s, sent = c
            if sent >= len(head):
                continue
            try:
                k = s.send(head[sent:sent + 65536])
                c[1] += k
                progressed = progressed or k > 0
            except BlockingIOError:
                pass
            except OSError:
                c[1] = len(head)  # closed by the server (431): done
        if not progressed:
            time.sleep(0.01)
    time.sleep(1)
    peak = max(rss(), status("VmHWM"))
    import select
    pending = {s.fileno(): s for s, _ in conns}
    replies = {}
    deadline = time.monotonic() + 3
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending.values())[:1000], [], [], 0.2)
        for s in ready:
            try:
                data = s.recv(64)
            except OSError as e:
                data = type(e).__name__.encode()
            replies[s.fileno()] = data
            del pending[s.fileno()]
    for fd, data in replies.items():
        key = data.split(b"\r\n")[0].decode(errors="replace")[:12] or "closed"
        answers[key] = answers.get(key, 0) + 1
    if pending:
        answers["no answer"] = len(pending)
    say(f"{len(conns)} x 400 KB heads: answers {answers}")
    for s, _ in conns:
        s.close()
    settle_and_report(f"{len(conns)} x 400 KB heads", peak, before)

for phase, run in (("1", idle_keep_alive), ("2", slow_heads), ("3", big_heads)):
    if phase in phases:
        run()
PY
log "done"
