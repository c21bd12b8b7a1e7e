#!/usr/bin/env bash
# Instructions and allocations per proxied request, counted by callgrind:
# deterministic enough to compare two builds on a busy machine, where wrk's
# requests/s is noise. See bench/README.md ("Counting instructions").
#
#   cargo build --profile profiling
#   bash bench/count.sh [h1|h2|both] [requests] [connections]
#
# An nginx upstream (HTTPS, 1 KiB answer, HTTP/1.1 port and ALPN h2 port) and
# sidekey under callgrind, one route to the chosen port; a small client keeps
# `connections` app connections and sends requests on them, one at a time on
# each. After a warm-up (connections open, upstream pool full) the counters
# are zeroed, `requests` requests are sent, and the counters are dumped:
# Ir/request is every instruction sidekey's threads ran, divided by the
# requests; allocs/request counts calls into jemalloc's malloc, calloc,
# mallocx and realloc.
set -euo pipefail

MODE=${1:-both}
N=${2:-20000}
C=${3:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=nginx_peer.sh
source "$ROOT/bench/nginx_peer.sh"
# shellcheck source=fixtures.sh
source "$ROOT/bench/fixtures.sh"
SIDEKEY=${SIDEKEY:-$ROOT/target/profiling/sidekey}
[[ -x $SIDEKEY ]] || { echo "no $SIDEKEY: cargo build --profile profiling" >&2; exit 1; }
for tool in valgrind callgrind_control nginx openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_H1=$(free_port) UP_H2=$(free_port) UP_PLAIN=$(free_port)

bench_pki "$TMP" count
TOKEN=$(openssl rand -hex 24)

BODY='{"ok":true,"pad":"'
BODY+=$(printf '%*s' $((1024 - ${#BODY} - 2)) '' | tr ' ' x)
BODY+='"}'
mkdir -p "$TMP/ngx"
bench_upstream_conf "$TMP" "$UP_H1" "$UP_H2" "$TOKEN" "$BODY" "$UP_PLAIN" >"$TMP/upstream.conf"
nginx -p "$TMP/ngx" -e "$TMP/ngx/error.log" -c "$TMP/upstream.conf" -g 'daemon off;' &
PIDS+=($!)

wait_http() { # url
    for _ in $(seq 1 600); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2
    return 1
}
wait_http "http://127.0.0.1:$UP_PLAIN/"

cat >"$TMP/client.py" <<'EOF'
# Keep C connections, send requests one at a time on each; zero callgrind's
# counters after the warm-up and dump them after N requests.
import asyncio, subprocess, sys
port, pid, n, c = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
REQ = b"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: count\r\nAccept: */*\r\n\r\n"

async def one(reader, writer):
    writer.write(REQ)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status == b"200"

async def run(conns, count):
    async def worker(reader, writer, k):
        bad = 0
        for _ in range(k):
            bad += not await one(reader, writer)
        return bad
    share = [count // c + (i < count % c) for i in range(c)]
    bad = await asyncio.gather(*(worker(r, w, k) for (r, w), k in zip(conns, share)))
    return sum(bad)

async def main():
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(c)]
    bad = await run(conns, max(200, 10 * c))
    if pid != "-":
        subprocess.run(["callgrind_control", "-z", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bad += await run(conns, n)
    if pid != "-":
        subprocess.run(["callgrind_control", "-d", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if bad:
        sys.exit(f"{bad} requests did not get 200")

asyncio.run(main())
EOF

cat >"$TMP/parse.py" <<'EOF'
# Total Ir and calls into the allocator from a callgrind dump.
import re, sys
path, n = sys.argv[1], int(sys.argv[2])
ALLOC = {"_rjem_malloc", "_rjem_calloc", "_rjem_mallocx", "_rjem_realloc", "_rjem_rallocx",
         "malloc", "calloc", "realloc", "mi_malloc", "mi_calloc", "mi_realloc"}
names, total, allocs, target = {}, 0, 0, None
for line in open(path, errors="replace"):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = max(total, int(line.split()[1]))
    elif line.startswith("fn=") and line[3:4] == "(":
        m = re.match(r"fn=\((\d+)\)\s*(.*)", line.rstrip("\n"))
        if m.group(2):
            names[m.group(1)] = m.group(2)
    elif line.startswith("cfn="):
        m = re.match(r"cfn=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
        ident, name = m.group(1), m.group(2)
        if ident and name:
            names[ident] = name
        target = names.get(ident, name) if ident else name
    elif line.startswith("calls="):
        if target in ALLOC:
            allocs += int(line.split("=")[1].split()[0])
        target = None
print(f"Ir/request {total / n:,.0f}   allocs/request {allocs / n:.2f}")
EOF

measure() { # label upstream-port
    local label=$1 up=$2 listen admin pid dump
    listen=$(free_port) admin=$(free_port)
    { sidekey_common "$admin" "$TMP/ca.pem" SIDEKEY_COUNT_TOKEN; sidekey_route "$label" "$listen" "$up"; } \
        >"$TMP/sidekey-$label.toml"
    if [[ -n ${COUNT_SYSCALLS:-} ]]; then
        SIDEKEY_COUNT_TOKEN=$TOKEN strace -f -c -o "$TMP/strace-$label" "$SIDEKEY" run \
            --config "$TMP/sidekey-$label.toml" >"$TMP/sidekey-$label.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_http "http://127.0.0.1:$admin/readyz"
        python3 "$TMP/client.py" "$listen" - "$N" "$C"
        # strace stops with its tracee, not on a signal of its own.
        kill "$(cat "/proc/$pid/task/$pid/children")"
        wait "$pid" 2>/dev/null || true
        # Warm-up and start-up included: a few hundred of the calls.
        awk -v n="$N" -v w="$((C * 10 > 200 ? C * 10 : 200))" -v label="$label" '
            $NF == "total" { total = $(NF-2) }
            $1 ~ /^[0-9.]+$/ && $NF != "total" { calls[$NF] = ($5 ~ /^[0-9]+$/ && NF == 6) ? $4 : $4 }
            END {
                printf "%s upstream: syscalls/request %.2f:", label, total / (n + w)
                for (c in calls) if (calls[c] / (n + w) >= 0.05) printf " %s %.2f", c, calls[c] / (n + w)
                printf "\n"
            }' "$TMP/strace-$label"
        return
    fi
    SIDEKEY_COUNT_TOKEN=$TOKEN valgrind --tool=callgrind --dump-instr=no --collect-jumps=no \
        --callgrind-out-file="$TMP/cg-$label.%p" "$SIDEKEY" run --config "$TMP/sidekey-$label.toml" \
        >"$TMP/sidekey-$label.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$admin/readyz"
    python3 "$TMP/client.py" "$listen" "$pid" "$N" "$C"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    # The first dump is the one after the measured requests (`.1`); the
    # one without a number is written at exit.
    dump=$(ls "$TMP"/cg-"$label".*.1)
    printf '%s upstream, %d requests on %d connections: %s\n' "$label" "$N" "$C" \
        "$(python3 "$TMP/parse.py" "$dump" "$N")"
    [[ -n ${KEEP_DUMP:-} ]] && cp "$dump" "$KEEP_DUMP-$label"
    true
}

# The peer of run.sh's comparison, counted the same way: nginx proxying to
# the HTTP/1.1 port with the token set (run.sh's proxy settings), one worker
# process without a master (`master_process off`) so that callgrind sees it.
measure_nginx() {
    local listen pid dump
    listen=$(free_port)
    mkdir -p "$TMP/ngx-px"
    cat >"$TMP/nginx-proxy.conf" <<EOF
$([[ $EUID -eq 0 ]] && echo "user root;")
pid $TMP/ngx-px/nginx.pid;
error_log $TMP/ngx-px/error.log warn;
master_process off;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/ngx-px/body;
    proxy_temp_path $TMP/ngx-px/proxy;
    fastcgi_temp_path $TMP/ngx-px/fastcgi;
    uwsgi_temp_path $TMP/ngx-px/uwsgi;
    scgi_temp_path $TMP/ngx-px/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_peer_http "$UP_H1" "$listen" "$TOKEN" "$TMP/ca.pem")
}
EOF
    valgrind --tool=callgrind --dump-instr=no --collect-jumps=no \
        --callgrind-out-file="$TMP/cg-nginx.%p" nginx -p "$TMP/ngx-px" -e "$TMP/ngx-px/error.log" \
        -c "$TMP/nginx-proxy.conf" -g 'daemon off;' >"$TMP/nginx-proxy.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$listen/"
    python3 "$TMP/client.py" "$listen" "$pid" "$N" "$C"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    dump=$(ls "$TMP"/cg-nginx.*.1)
    printf 'nginx (HTTP/1.1 upstream), %d requests on %d connections: %s\n' "$N" "$C" \
        "$(python3 "$TMP/parse.py" "$dump" "$N")"
    [[ -n ${KEEP_DUMP:-} ]] && cp "$dump" "$KEEP_DUMP-nginx"
    true
}

case $MODE in
h1) measure h1 "$UP_H1" ;;
h2) measure h2 "$UP_H2" ;;
both) measure h1 "$UP_H1" && measure h2 "$UP_H2" ;;
nginx) measure_nginx ;;
all) measure h1 "$UP_H1" && measure h2 "$UP_H2" && measure_nginx ;;
*) echo "usage: $0 [h1|h2|both|nginx|all] [requests] [connections]" >&2; exit 2 ;;
esac
