#!/usr/bin/env bash
# sidekey benchmark: sidekey vs. nginx as an auth-injecting reverse proxy in
# front of an HTTPS upstream (nginx), all on loopback. See bench/README.md.
#
#   bash bench/run.sh
#
# Tunables (environment): BENCH_DURATION (default 6s), BENCH_WARMUP (1s),
# BENCH_ROUNDS (2), BENCH_CONNS (32), BENCH_THREADS (2), BENCH_TRANSFER_MB
# (100), BENCH_SKIP_BUILD=1 (use an existing target/release/sidekey).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-6s}
WARMUP=${BENCH_WARMUP:-1s}
ROUNDS=${BENCH_ROUNDS:-2}
CONNS=${BENCH_CONNS:-32}
THREADS=${BENCH_THREADS:-2}
TRANSFER_MB=${BENCH_TRANSFER_MB:-100}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools ----
need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if ((${#need_pkgs[@]})); then
    [[ $EUID -eq 0 ]] || die "missing ${need_pkgs[*]}; run as root or install them"
    log "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (a Rust toolchain is required)"

# ---------------------------------------------------------------- build ----
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
SIDEKEY=$TARGET_DIR/release/sidekey
[[ -x $SIDEKEY ]] || die "$SIDEKEY not found"

# ------------------------------------------------------------- cleanup ----
TMP=$(mktemp -d /tmp/sidekey-bench.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.3
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------- ports ----
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED_PORTS=" "
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        echo "$p"
        return 0
    done
    die "no free port found"
}
UP_H1=$(pick_port)   # upstream HTTPS, HTTP/1.1 only
UP_H2=$(pick_port)   # upstream HTTPS, ALPN h2
UP_PLAIN=$(pick_port) # upstream plain HTTP (reference row only)
NGX_PX1=$(pick_port) # nginx proxy, 1 worker
NGX_PX2=$(pick_port) # nginx proxy, 2 workers
SK_H1=$(pick_port)   # sidekey route -> UP_H1
SK_H2=$(pick_port)   # sidekey route -> UP_H2
SK_ADMIN=$(pick_port)
SK1_H1=$(pick_port)  # second sidekey, TOKIO_WORKER_THREADS=1, route -> UP_H1
SK1_ADMIN=$(pick_port)

wait_http() { # url [expected-status] : poll up to 10 s
    local code
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)
        [[ $code == "${2:-200}" ]] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------- material ----
umask 077
TOKEN=$(openssl rand -hex 24)   # throwaway; never printed
log "temp dir $TMP; ports upstream h1=$UP_H1 h2=$UP_H2 plain=$UP_PLAIN, nginx proxy=$NGX_PX1/$NGX_PX2, sidekey=$SK_H1/$SK_H2 admin=$SK_ADMIN, sidekey 1 thread=$SK1_H1 admin=$SK1_ADMIN"

# A throwaway CA and a leaf for 127.0.0.1/localhost. (A single self-signed
# CA:TRUE certificate cannot be served as the leaf: rustls/webpki refuses a CA
# certificate as an end-entity.)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=sidekey bench CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$TMP/leaf.key" -out "$TMP/leaf.csr" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$TMP/leaf.ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -extfile "$TMP/leaf.ext" -out "$TMP/leaf.pem" 2>/dev/null

mkdir -p "$TMP/www" "$TMP/ngx"
printf '{"ok":true}' >"$TMP/www/small.json"
cp "$TMP/www/small.json" "$TMP/www/upload"
TRANSFER_BYTES=$((TRANSFER_MB * 1024 * 1024))
head -c "$TRANSFER_BYTES" /dev/urandom >"$TMP/www/big.bin"

NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;"   # workers must read the 0700 temp dir

ngx_common() { # name
    cat <<EOF
$NGINX_USER
pid $TMP/ngx/$1.pid;
error_log $TMP/ngx/$1.error.log warn;
EOF
}
ngx_http_common() { # name
    cat <<EOF
    access_log off;
    client_body_temp_path $TMP/ngx/$1-body;
    proxy_temp_path $TMP/ngx/$1-proxy;
    fastcgi_temp_path $TMP/ngx/$1-fastcgi;
    uwsgi_temp_path $TMP/ngx/$1-uwsgi;
    scgi_temp_path $TMP/ngx/$1-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
EOF
}

# ------------------------------------------------------------ upstream ----
# Answers {"ok":true} for any path, 401 unless the right bearer token came
# along (so a proxy that forgets to inject shows up as non-2xx), accepts POST
# bodies of any size at /upload, and serves $TRANSFER_MB MB at /big.bin.
cat >"$TMP/upstream.conf" <<EOF
$(ngx_common upstream)
worker_processes 1;
events { worker_connections 4096; }
http {
$(ngx_http_common upstream)
    default_type application/json;
    map_hash_bucket_size 128;
    map \$http_authorization \$bench_auth_ok { "Bearer $TOKEN" 1; default 0; }
    server {
        listen 127.0.0.1:$UP_H1 ssl;
        listen 127.0.0.1:$UP_H2 ssl http2;
        listen 127.0.0.1:$UP_PLAIN;
        ssl_certificate $TMP/leaf.pem;
        ssl_certificate_key $TMP/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $TMP/www;
        location / {
            if (\$bench_auth_ok = 0) { return 401 '{"error":"unauthorized"}'; }
            return 200 '{"ok":true}';
        }
        # Reads the whole body (in memory) before answering: mirror with
        # mirror_request_body waits for it; the static handler then refuses
        # the POST to the file www/upload (405), which error_page turns into
        # 200 {"ok":true}. A plain "return 200" would answer before the body
        # arrived (and an HTTP/2 client may then stop sending it).
        location = /upload {
            if (\$bench_auth_ok = 0) { return 401 '{"error":"unauthorized"}'; }
            client_body_buffer_size 256m;
            mirror /sink;
            mirror_request_body on;
            error_page 405 =200 /small.json;
        }
        location = /sink { internal; return 204; }
        location = /small.json { }
        location = /big.bin {
            if (\$bench_auth_ok = 0) { return 401 '{"error":"unauthorized"}'; }
            default_type application/octet-stream;
        }
    }
}
EOF

start_nginx() { # name
    nginx -t -q -p "$TMP/ngx" -e "$TMP/ngx/$1.error.log" -c "$TMP/$1.conf" \
        || die "nginx config $1 invalid: $(cat "$TMP/ngx/$1.error.log" 2>/dev/null)"
    nginx -p "$TMP/ngx" -e "$TMP/ngx/$1.error.log" -c "$TMP/$1.conf" -g 'daemon off;' &
    PIDS+=($!)
    echo $! >"$TMP/$1.master"
}
start_nginx upstream
wait_http "http://127.0.0.1:$UP_PLAIN/" 401 || die "upstream nginx did not start"

# --------------------------------------------------------- nginx proxy ----
NGINX_PROXY_SETTINGS="proxy_http_version 1.1; proxy_set_header Connection \"\"; upstream keepalive 64 (keepalive_requests 1000000); \
proxy_ssl_verify on + proxy_ssl_trusted_certificate (bench CA), proxy_ssl_name localhost, proxy_ssl_session_reuse on; \
proxy_request_buffering off; proxy_buffering off (stream both ways, like sidekey); access_log off; keepalive_requests 1000000"
write_nginx_proxy() { # name port workers
    cat >"$TMP/$1.conf" <<EOF
$(ngx_common "$1")
worker_processes $3;
events { worker_connections 4096; }
http {
$(ngx_http_common "$1")
    upstream api {
        server 127.0.0.1:$UP_H1;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$UP_H1;
            proxy_set_header Authorization "Bearer $TOKEN";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $TMP/ca.pem;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
EOF
}
write_nginx_proxy nginx-proxy-1w "$NGX_PX1" 1
write_nginx_proxy nginx-proxy-2w "$NGX_PX2" 2
start_nginx nginx-proxy-1w
start_nginx nginx-proxy-2w
wait_http "http://127.0.0.1:$NGX_PX1/" || die "nginx proxy (1 worker) not answering 200"
wait_http "http://127.0.0.1:$NGX_PX2/" || die "nginx proxy (2 workers) not answering 200"

# ------------------------------------------------------------- sidekey ----
sidekey_common() { # admin-port
    cat <<EOF
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$1"

[log]
level = "warn"

[tls]
ca_file = "$TMP/ca.pem"

[credentials.bench]
type = "static"
token = { env = "BENCH_TOKEN" }
EOF
}
# The main instance: default runtime (one worker thread per CPU), two routes.
cat >"$TMP/sidekey.toml" <<EOF
$(sidekey_common "$SK_ADMIN")

[[routes]]
name = "h1"
listen = "127.0.0.1:$SK_H1"
upstream = "https://127.0.0.1:$UP_H1"
credential = "bench"

[[routes]]
name = "h2"
listen = "127.0.0.1:$SK_H2"
upstream = "https://127.0.0.1:$UP_H2"
credential = "bench"
EOF
# A second instance limited to one runtime worker thread, to compare with one nginx worker.
cat >"$TMP/sidekey-1t.toml" <<EOF
$(sidekey_common "$SK1_ADMIN")

[[routes]]
name = "h1"
listen = "127.0.0.1:$SK1_H1"
upstream = "https://127.0.0.1:$UP_H1"
credential = "bench"
EOF
export BENCH_TOKEN=$TOKEN
"$SIDEKEY" check --config "$TMP/sidekey.toml" >"$TMP/sidekey-check.log" 2>&1 \
    || die "sidekey check failed: $(cat "$TMP/sidekey-check.log")"
"$SIDEKEY" run --config "$TMP/sidekey.toml" >"$TMP/sidekey.log" 2>&1 &
SK_PID=$!
PIDS+=("$SK_PID")
wait_http "http://127.0.0.1:$SK_ADMIN/readyz" || die "sidekey not ready: $(tail -5 "$TMP/sidekey.log")"
TOKIO_WORKER_THREADS=1 "$SIDEKEY" run --config "$TMP/sidekey-1t.toml" >"$TMP/sidekey-1t.log" 2>&1 &
SK1_PID=$!
PIDS+=("$SK1_PID")
wait_http "http://127.0.0.1:$SK1_ADMIN/readyz" || die "sidekey (1 thread) not ready: $(tail -5 "$TMP/sidekey-1t.log")"
unset BENCH_TOKEN

rss() { awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{printf "%.1f MiB (peak %.1f MiB)", r/1024, h/1024}' "/proc/$1/status"; }
RSS_IDLE=$(rss "$SK_PID")
THREADS_IDLE=$(awk '/^Threads:/{print $2}' "/proc/$SK_PID/status")

# Sanity: every path through a proxy must answer 200 (the upstream checks the token).
for url in "http://127.0.0.1:$SK_H1/v1/ping" "http://127.0.0.1:$SK_H2/v1/ping" "http://127.0.0.1:$SK1_H1/v1/ping" \
    "http://127.0.0.1:$NGX_PX1/v1/ping" "http://127.0.0.1:$NGX_PX2/v1/ping"; do
    body=$(curl -sS --max-time 5 "$url") || die "request to $url failed"
    [[ $body == '{"ok":true}' ]] || die "unexpected answer from $url: $body"
done
# The upstream really does refuse a request without the token.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$UP_PLAIN/v1/ping")
[[ $code == 401 ]] || die "upstream should refuse a request without a token, got $code"

# ---------------------------------------------------------------- wrk ----
cat >"$TMP/report.lua" <<'EOF'
-- Optional header for the reference row (direct to the upstream).
local auth = os.getenv("BENCH_DIRECT_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

CLK_TCK=$(getconf CLK_TCK)
proc_tree() { # master pid -> itself and its children
    local kids
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null || pgrep -P "$1" || true)
    echo "$1 $kids"
}
ctx_switches() { # pids... -> voluntary + involuntary context switches of all their threads
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null || true; done |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/{s+=$2} END{print s+0}'
}
cpu_ticks() { # pids... -> "utime stime" summed, in clock ticks
    local p
    for p in "$@"; do
        # fields after the ")" of comm: utime is the 12th, stime the 13th
        if [[ -r /proc/$p/stat ]]; then sed 's/^.*) //' "/proc/$p/stat"; fi
    done | awk '{u+=$12; s+=$13} END{print u+0, s+0}'
}
# Upstream TCP connections the given processes hold to 127.0.0.1:PORT.
upstream_conns() { # "pid pid…" port
    command -v ss >/dev/null 2>&1 || { echo "?"; return; }
    local pat
    pat=$(sed -E 's/ +$//; s/ +/|/g' <<<"$1")
    ss -Htnp state established "( dport = :$2 )" 2>/dev/null | grep -cE "pid=($pat)," || true
}

# measure LABEL URL THREADS CONNS PIDS-FOR-CPU(space separated, may be empty) [UPSTREAM-PORT]
# Sets LAST_RPS, LAST_ROW (a formatted table row) and LAST_CONNS.
measure() {
    local label=$1 url=$2 t=$3 c=$4 pids=$5 upstream_port=${6:-} out res c0 c1 x0 x1
    timeout 30 wrk -t"$t" -c"$c" -d"$WARMUP" --timeout 5s -s "$TMP/report.lua" "$url" >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    # shellcheck disable=SC2086
    x0=$(ctx_switches $pids)
    out=$(timeout 60 wrk -t"$t" -c"$c" -d"$DURATION" --timeout 5s -s "$TMP/report.lua" "$url" 2>&1) \
        || die "wrk failed for $label: $out"
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    # shellcheck disable=SC2086
    x1=$(ctx_switches $pids)
    res=$(grep '^RESULT' <<<"$out") || die "no wrk result for $label: $out"
    local requests duration p50 p90 p99 max non2xx sockerr
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$res")
    duration=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$res")
    p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$res")
    p90=$(sed -E 's/.*p90_us=([0-9]+).*/\1/' <<<"$res")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$res")
    max=$(sed -E 's/.*max_us=([0-9]+).*/\1/' <<<"$res")
    non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$res")
    sockerr=$(sed -E 's/.*sockerr=([0-9]+).*/\1/' <<<"$res")
    local cpu_col="-" cpu_req="-" usr_col="-" cs_req="-" u0 s0 u1 s1
    if [[ -n $pids ]]; then
        read -r u0 s0 <<<"$c0"
        read -r u1 s1 <<<"$c1"
        local du=$((u1 - u0)) ds=$((s1 - s0))
        cpu_col=$(awk -v d="$((du + ds))" -v hz="$CLK_TCK" -v us="$duration" 'BEGIN{printf "%.0f%%", 100*d/hz/(us/1e6)}')
        cpu_req=$(awk -v d="$((du + ds))" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN{ if (n>0) printf "%.0f", 1e6*d/hz/n; else print "-"}')
        usr_col=$(awk -v u="$du" -v d="$((du + ds))" 'BEGIN{ if (d>0) printf "%.0f%%", 100*u/d; else print "-"}')
        cs_req=$(awk -v d="$((x1 - x0))" -v n="$requests" 'BEGIN{ if (n>0) printf "%.2f", d/n; else print "-"}')
    fi
    LAST_CONNS=""
    [[ -n $upstream_port ]] && LAST_CONNS=$(upstream_conns "$pids" "$upstream_port")
    LAST_RPS=$(awk -v n="$requests" -v us="$duration" 'BEGIN{printf "%.0f", n/(us/1e6)}')
    LAST_ROW=$(awk -v l="$label" -v n="$requests" -v us="$duration" -v p50="$p50" -v p90="$p90" -v p99="$p99" \
        -v max="$max" -v e="$((non2xx + sockerr))" -v cpu="$cpu_col" -v cpr="$cpu_req" -v usr="$usr_col" -v cs="$cs_req" \
        'BEGIN{printf "%-30s %7.0f %6.3f %6.3f %6.3f %6.2f %5d %6s %7s %5s %6s", l, n/(us/1e6), p50/1000, p90/1000, p99/1000, max/1000, e, cpu, cpr, usr, cs}')
    log "done: $label c=$c: $LAST_RPS req/s"
}

SK_TREE="$SK_PID"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STAT_START=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat)
NGX1_TREE=$(proc_tree "$(cat "$TMP/nginx-proxy-1w.master")")
NGX2_TREE=$(proc_tree "$(cat "$TMP/nginx-proxy-2w.master")")

TARGETS=(
    "upstream direct, plain (ceil.)|http://127.0.0.1:$UP_PLAIN/v1/ping||"
    "sidekey -> h1 upstream|http://127.0.0.1:$SK_H1/v1/ping|$SK_TREE|$UP_H1"
    "sidekey -> h2 upstream|http://127.0.0.1:$SK_H2/v1/ping|$SK_TREE|$UP_H2"
    "sidekey, 1 thread -> h1|http://127.0.0.1:$SK1_H1/v1/ping|$SK1_PID|$UP_H1"
    "nginx proxy, 1 worker -> h1|http://127.0.0.1:$NGX_PX1/v1/ping|$NGX1_TREE|$UP_H1"
    "nginx proxy, 2 workers -> h1|http://127.0.0.1:$NGX_PX2/v1/ping|$NGX2_TREE|$UP_H1"
)
# Each round runs every target (-c$CONNS, then -c1); even rounds in reverse order,
# so that drift on the machine does not favour whoever runs first. For each
# target and setting the round with the most requests/s is reported: on a
# shared VM, noise only ever makes a run slower.
declare -A BEST_RPS=() BEST_ROW=() BEST_CONNS=()
log "$ROUNDS round(s): -t$THREADS -c$CONNS -d$DURATION and -t1 -c1 -d$DURATION per target, warm-up $WARMUP each"
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${!TARGETS[@]}")
    if ((round % 2 == 0)); then
        for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
            swap=${order[i]}
            order[i]=${order[j]}
            order[j]=$swap
        done
    fi
    for idx in "${order[@]}"; do
        IFS='|' read -r label url pids upstream_port <<<"${TARGETS[idx]}"
        if [[ $label == upstream* ]]; then export BENCH_DIRECT_AUTH="Bearer $TOKEN"; else unset BENCH_DIRECT_AUTH; fi
        for setting in "$THREADS $CONNS" "1 1"; do
            read -r t c <<<"$setting"
            measure "$label" "$url" "$t" "$c" "$pids" "$upstream_port"
            key="$idx/$c"
            if [[ -z ${BEST_RPS[$key]:-} ]] || ((LAST_RPS > BEST_RPS[$key])); then
                BEST_RPS[$key]=$LAST_RPS
                BEST_ROW[$key]=$LAST_ROW
                BEST_CONNS[$key]=$LAST_CONNS
            fi
        done
    done
done
unset BENCH_DIRECT_AUTH
TP_ROWS=() LAT_ROWS=() CONN_NOTES=()
for idx in "${!TARGETS[@]}"; do
    TP_ROWS+=("${BEST_ROW[$idx/$CONNS]}")
    LAT_ROWS+=("${BEST_ROW[$idx/1]}")
    [[ -n ${BEST_CONNS[$idx/$CONNS]} ]] && CONN_NOTES+=("${TARGETS[idx]%%|*}: ${BEST_CONNS[$idx/$CONNS]}")
done
STEAL=$(awk -v start="$STAT_START" '/^cpu /{split(start, a, " "); t=$2+$3+$4+$5+$6+$7+$8+$9-a[1]; s=$9-a[2];
    if (t>0) printf "%.1f%%", 100*s/t; else print "?"}' /proc/stat)
RSS_LOAD=$(rss "$SK_PID")
RSS1_LOAD=$(rss "$SK1_PID")
THREADS1=$(awk '/^Threads:/{print $2}' "/proc/$SK1_PID/status")
NGX1_RSS=$(for p in $NGX1_TREE; do awk '/^VmRSS:/{print $2}' "/proc/$p/status"; done | awk '{s+=$1} END{printf "%.1f MiB", s/1024}')

# ----------------------------------------------------------- transfers ----
XFER=()
transfer() { # label direction url
    local label=$1 dir=$2 url=$3 out code size speed secs
    if [[ $dir == up ]]; then
        out=$(curl -sS --max-time 60 -o /dev/null -H 'Expect:' -H 'Content-Type: application/octet-stream' \
            --data-binary "@$TMP/www/big.bin" -w '%{http_code} %{size_upload} %{speed_upload} %{time_total}' "$url") \
            || die "upload via $label failed"
    else
        out=$(curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{size_download} %{speed_download} %{time_total}' "$url") \
            || die "download via $label failed"
    fi
    read -r code size speed secs <<<"$out"
    [[ $code == 200 && $size == "$TRANSFER_BYTES" ]] || die "$dir via $label: status $code, $size bytes"
    XFER+=("$(awk -v l="$label" -v d="$dir" -v s="$speed" -v t="$secs" \
        'BEGIN{printf "%-24s %-8s %9.0f MB/s %7.2f s", l, (d=="up"?"upload":"download"), s/1e6, t}')")
}
log "transfers: ${TRANSFER_MB} MB up and down"
transfer "sidekey -> h1" up "http://127.0.0.1:$SK_H1/upload"
transfer "sidekey -> h1" down "http://127.0.0.1:$SK_H1/big.bin"
transfer "sidekey -> h2" up "http://127.0.0.1:$SK_H2/upload"
transfer "sidekey -> h2" down "http://127.0.0.1:$SK_H2/big.bin"
RSS_XFER=$(rss "$SK_PID")
transfer "nginx proxy 1w -> h1" up "http://127.0.0.1:$NGX_PX1/upload"
transfer "nginx proxy 1w -> h1" down "http://127.0.0.1:$NGX_PX1/big.bin"

THREADS_END=$(awk '/^Threads:/{print $2}' "/proc/$SK_PID/status")
kill -0 "$SK_PID" 2>/dev/null || die "sidekey exited during the run"
SK_WARN=$(cat "$TMP/sidekey.log" "$TMP/sidekey-1t.log" | grep -c . || true)

# -------------------------------------------------------------- report ----
BIN_SIZE=$(stat -c %s "$SIDEKEY")
STRIPPED=$( (strip -o "$TMP/sidekey.stripped" "$SIDEKEY" 2>/dev/null && stat -c %s "$TMP/sidekey.stripped") || echo "")
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || GIT_REV+=" (+uncommitted changes)"

cat <<EOF

=============================== sidekey bench ===============================
machine   : $(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r)
load avg  : $LOAD_START at the start of the measurements, $(cut -d' ' -f1-3 /proc/loadavg) at the end;
            CPU steal (hypervisor) during the wrk runs: $STEAL
sidekey   : $("$SIDEKEY" --version 2>/dev/null) @ $GIT_REV, tokio multi-thread runtime (default: one worker per CPU)
tools     : $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}'), $(openssl version | cut -d' ' -f1-2)
upstream  : nginx, 1 worker, HTTPS (TLS 1.3, ECDSA P-256) on loopback, returns 200 {"ok":true}
            and 401 without the right bearer token; h1 = HTTP/1.1-only port, h2 = ALPN h2 port
nginx px  : $NGINX_PROXY_SETTINGS
load      : wrk, warm-up $WARMUP then $DURATION per run; GET /v1/ping; all on loopback, same CPUs;
            $ROUNDS rounds (alternating order), each row is the target's best round by req/s
            proxy = CPU time of the proxy process(es) / wall time (200% = both cores busy);
            CPU/req = proxy CPU microseconds per request (lower is better);
            usr = share of that CPU time spent in user space (the rest is kernel: syscalls, TCP);
            cs/req = context switches of the proxy's threads per request

latencies in ms; errors = non-2xx answers + socket errors (the upstream answers 401 without the token)

throughput: wrk -t$THREADS -c$CONNS -d$DURATION
target                           req/s    p50    p90    p99    max  errs  proxy CPU/req   usr cs/req
$(printf '%s\n' "${TP_ROWS[@]}")

latency: wrk -t1 -c1 -d$DURATION (one connection, one request at a time)
target                           req/s    p50    p90    p99    max  errs  proxy CPU/req   usr cs/req
$(printf '%s\n' "${LAT_ROWS[@]}")

transfers (${TRANSFER_MB} MB, curl, one request each):
$(printf '%s\n' "${XFER[@]}")

sidekey memory (VmRSS; peak = VmHWM), main instance (both routes):
  idle after start                  : $RSS_IDLE, $THREADS_IDLE threads
  after the wrk runs                : $RSS_LOAD
  after ${TRANSFER_MB} MB up + down (h1 and h2) : $RSS_XFER, $THREADS_END threads
  1-thread instance, after the load : $RSS1_LOAD, $THREADS1 threads
  nginx proxy 1 worker, after load  : $NGX1_RSS (master + worker), for comparison
upstream TLS connections open right after the reported -c$CONNS run (nginx keeps <= 64 idle per worker):
$(printf '  %s\n' "${CONN_NOTES[@]}")
sidekey binary : $(mib "$BIN_SIZE")${STRIPPED:+ ($(mib "$STRIPPED") stripped)}
sidekey log    : $SK_WARN line(s) at level warn during the run
=============================================================================
EOF
