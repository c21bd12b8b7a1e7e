#!/usr/bin/env bash
# sidekey benchmark: direct vs. sidekey vs. nginx as an auth-injecting reverse
# proxy in front of an HTTPS upstream (nginx), all on loopback; or, with the
# `allocators` argument, sidekey built with each global allocator.
# See bench/README.md.
#
#   bash bench/run.sh               # the comparison table and a PNG plot
#   bash bench/run.sh allocators    # system vs. mimalloc vs. jemalloc
#
# Tunables (environment): BENCH_DURATION (default 8s), BENCH_WARMUP (1s),
# BENCH_ROUNDS (2), BENCH_CONNS (64), BENCH_THREADS (1), BENCH_TRANSFER_MB
# (100), BENCH_TOKEN_TTL (2, seconds), BENCH_PLOT (bench/latest.png),
# BENCH_SKIP_BUILD=1 (use an existing target/optimized/sidekey, else
# target/dist/sidekey; with `allocators` it stands in for all three: a dry
# run of the mechanics), BENCH_SPIKE_N (5000) and BENCH_BUILD_TIMES (1) for
# `allocators`, BENCH_PGO=0 (compare: a plain dist build instead of the
# optimized one that ships; `allocators` always builds plain), BENCH_BOLT=0
# (compare: profile-guided, not laid out by BOLT), BENCH_WORKERS (unset: the
# defaults, sidekey's one worker per core and nginx's `worker_processes` =
# CPUs; N sets both to N, to compare the serving-thread count).
set -euo pipefail

# The exact command, for the report (before the script sets anything).
COMMAND=""
for var in $(compgen -e | grep '^BENCH_' | sort); do COMMAND+="$var=${!var} "; done
COMMAND+="bash bench/run.sh${*:+ $*}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=nginx_peer.sh
source "$ROOT/bench/nginx_peer.sh"
# shellcheck source=fixtures.sh
source "$ROOT/bench/fixtures.sh"
MODE=${1:-compare}
case $MODE in
compare | allocators) ;;
-h | --help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    echo "usage: bash bench/run.sh [allocators]" >&2
    exit 2
    ;;
esac
DURATION=${BENCH_DURATION:-8s}
WARMUP=${BENCH_WARMUP:-1s}
ROUNDS=${BENCH_ROUNDS:-2}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-1}
TRANSFER_MB=${BENCH_TRANSFER_MB:-100}
TOKEN_TTL=${BENCH_TOKEN_TTL:-2}
PLOT=${BENCH_PLOT:-$ROOT/bench/latest.png}
SPIKE_N=${BENCH_SPIKE_N:-5000}
BUILD_TIMES=${BENCH_BUILD_TIMES:-1}
NCPU=$(nproc)
# Serving threads (sidekey) and worker processes (nginx proxy): the same
# count for both. Unset, sidekey keeps its default (the cores it may use).
NWORKERS=${BENCH_WORKERS:-$NCPU}
[[ $NWORKERS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_WORKERS must be a positive integer" >&2; exit 2; }
sidekey_workers() { # the `workers` line of a sidekey configuration, when BENCH_WORKERS sets one
    if [[ -n ${BENCH_WORKERS:-} ]]; then echo "workers = $NWORKERS"; fi
}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools ----
need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
[[ $MODE == compare ]] && ! command -v gnuplot >/dev/null 2>&1 && need_pkgs+=(gnuplot-nox)
# bench/optimize.sh lays the shipped build out with BOLT.
if [[ $MODE != allocators && ${BENCH_SKIP_BUILD:-0} != 1 && ${BENCH_PGO:-1} != 0 && ${BENCH_BOLT:-1} != 0 ]] &&
    ! compgen -c llvm-bolt | grep -qE '^llvm-bolt(-[0-9]+)?$'; then
    need_pkgs+=(bolt-19)
fi
if ((${#need_pkgs[@]})); then
    [[ $EUID -eq 0 ]] || die "missing ${need_pkgs[*]}; run as root or install them"
    log "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (a Rust toolchain is required)"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
SIDEKEY=$TARGET_DIR/dist/sidekey
[[ ${BENCH_SKIP_BUILD:-0} == 1 && $MODE != allocators && -x $TARGET_DIR/optimized/sidekey ]] &&
    SIDEKEY=$TARGET_DIR/optimized/sidekey

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

# ---------------------------------------------------------------- build ----
# allocators: the three variants one after another into the same target/,
# each final binary copied aside (a target dir per variant would cost GBs).
declare -A ALLOC_FLAGS=([system]="" [mimalloc]="--features mimalloc" [jemalloc]="--features jemalloc")
declare -A ALLOC_SYS=([system]="" [mimalloc]="libmimalloc-sys" [jemalloc]="tikv-jemalloc-sys")
declare -A ALLOC_BUILD_S=()
ALLOCATORS=(jemalloc mimalloc system) # system (the default) last: target/ is left as a plain build leaves it
timed_build() { # flags... -> seconds on stdout
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$ROOT" && cargo build --profile dist --quiet --bin sidekey "$@") >&2
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}'
}
if [[ $MODE == allocators && ${BENCH_SKIP_BUILD:-0} == 1 ]]; then
    # A dry run of the mechanics: the existing binary under all three names.
    [[ -x $SIDEKEY ]] || die "$SIDEKEY not found"
    log "BENCH_SKIP_BUILD=1: measuring $SIDEKEY under all three names (a dry run, not a comparison)"
    for v in "${ALLOCATORS[@]}"; do
        cp "$SIDEKEY" "$TMP/sidekey-$v"
        ALLOC_BUILD_S[$v]="-"
    done
elif [[ $MODE == allocators ]]; then
    for v in "${ALLOCATORS[@]}"; do
        read -r -a flags <<<"${ALLOC_FLAGS[$v]}"
        ALLOC_BUILD_S[$v]="-"
        # The allocator crate's own cost: this build, after `cargo clean -p`
        # of its -sys crate, minus one that recompiles just as much of sidekey
        # (lib and bin both depend on the allocator crates, so both rebuild).
        if [[ $BUILD_TIMES == 1 && -n ${ALLOC_SYS[$v]} ]]; then
            (cd "$ROOT" && cargo clean --profile dist --quiet -p "${ALLOC_SYS[$v]}")
        fi
        log "cargo build --profile dist ${flags[*]} ($v)"
        with_sys=$(timed_build "${flags[@]}")
        cp "$SIDEKEY" "$TMP/sidekey-$v"
        [[ $BUILD_TIMES == 1 ]] || continue
        if [[ -z ${ALLOC_SYS[$v]} ]]; then
            ALLOC_BUILD_S[$v]=0
            continue
        fi
        touch "$ROOT/src/lib.rs" "$ROOT/src/main.rs"
        log "timing: build after touching src/lib.rs and src/main.rs"
        without_sys=$(timed_build "${flags[@]}")
        ALLOC_BUILD_S[$v]=$(awk -v a="$with_sys" -v b="$without_sys" 'BEGIN{printf "%.0f", a-b}')
        log "$v: ${with_sys}s with ${ALLOC_SYS[$v]} rebuilt, ${without_sys}s without"
    done
elif [[ ${BENCH_SKIP_BUILD:-0} != 1 && ${BENCH_PGO:-1} == 0 ]]; then
    log "cargo build --profile dist (BENCH_PGO=0: without the profile)"
    (cd "$ROOT" && cargo build --profile dist --quiet --bin sidekey)
elif [[ ${BENCH_SKIP_BUILD:-0} != 1 && ${BENCH_BOLT:-1} == 0 ]]; then
    # The dist profile guided by the profile bench/pgo.sh records, without BOLT.
    bash "$ROOT/bench/pgo.sh" "$TARGET_DIR/pgo/sidekey.profdata"
    log "cargo build --profile dist, profile-guided (BENCH_BOLT=0: not laid out by BOLT)"
    (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$TARGET_DIR/pgo/sidekey.profdata" \
        cargo build --profile dist --quiet --bin sidekey)
elif [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    # What ships (deploy/Dockerfile): bench/optimize.sh, profile-guided and
    # laid out by BOLT.
    bash "$ROOT/bench/optimize.sh" "$TARGET_DIR/optimized/sidekey"
    SIDEKEY=$TARGET_DIR/optimized/sidekey
fi
BUILD_KIND="profile-guided dist build laid out by BOLT (bench/optimize.sh)"
[[ ${BENCH_BOLT:-1} == 0 ]] && BUILD_KIND="profile-guided dist build (bench/pgo.sh), without BOLT"
[[ $MODE == allocators || ${BENCH_PGO:-1} == 0 ]] && BUILD_KIND="dist build without a profile"
[[ ${BENCH_SKIP_BUILD:-0} == 1 ]] && BUILD_KIND="existing $SIDEKEY (BENCH_SKIP_BUILD=1)"
[[ -x $SIDEKEY ]] || die "$SIDEKEY not found"

# --------------------------------------------------------------- ports ----
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the ephemeral range: a port there may be in use as the source port of
# an outgoing connection, which a connect test does not see.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_BASE=10000 PORT_SPAN=$((EPHEMERAL_LOW - 10000))
((PORT_SPAN >= 1000)) || PORT_BASE=20000 PORT_SPAN=30000
USED_PORTS=" "
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((PORT_BASE + RANDOM % PORT_SPAN))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        echo "$p"
        return 0
    done
    die "no free port found"
}
UP_H1=$(pick_port)    # upstream HTTPS, HTTP/1.1 only
UP_H2=$(pick_port)    # upstream HTTPS, ALPN h2
UP_PLAIN=$(pick_port) # upstream plain HTTP (only to check that it refuses a request without a token)

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
TOKEN=$(openssl rand -hex 24) # throwaway; never printed
log "temp dir $TMP; upstream ports h1=$UP_H1 h2=$UP_H2"

bench_pki "$TMP" bench
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$TMP/auth.header" # for curl -H @file: not in argv

mkdir -p "$TMP/www" "$TMP/ngx"
# The answer: 1 KiB of JSON.
BODY='{"ok":true,"pad":"'
BODY+=$(printf '%*s' $((1024 - ${#BODY} - 2)) '' | tr ' ' x)
BODY+='"}'
((${#BODY} == 1024)) || die "answer body is ${#BODY} bytes, not 1024"
printf '%s' "$BODY" >"$TMP/www/answer.json"
cp "$TMP/www/answer.json" "$TMP/www/upload"
TRANSFER_BYTES=$((TRANSFER_MB * 1024 * 1024))
[[ $MODE == compare ]] && head -c "$TRANSFER_BYTES" /dev/urandom >"$TMP/www/big.bin"

NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;" # workers must read the 0700 temp dir

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
# Answers 1 KiB of JSON for any path, 401 unless a right bearer token came
# along (so a proxy that forgets to inject shows up as non-2xx): the static
# token, or any token of the rotation row's token endpoint (rot-N-<hex>).
# Accepts POST bodies of any size at /upload, serves $TRANSFER_MB MB at /big.bin.
cat >"$TMP/upstream.conf" <<EOF
$(ngx_common upstream)
worker_processes 1;
events { worker_connections 4096; }
http {
$(ngx_http_common upstream)
    default_type application/json;
    map_hash_bucket_size 128;
    map \$http_authorization \$bench_auth_ok {
        "Bearer $TOKEN" 1;
        "~^Bearer rot-[0-9]+-[0-9a-f]{32}\$" 1;
        default 0;
    }
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
            return 200 '$BODY';
        }
        # Reads the whole body (in memory) before answering: mirror with
        # mirror_request_body waits for it; the static handler then refuses
        # the POST to the file www/upload (405), which error_page turns into
        # 200. A plain "return 200" would answer before the body arrived (and
        # an HTTP/2 client may then stop sending it).
        location = /upload {
            if (\$bench_auth_ok = 0) { return 401 '{"error":"unauthorized"}'; }
            client_body_buffer_size 256m;
            mirror /sink;
            mirror_request_body on;
            error_page 405 =200 /answer.json;
        }
        location = /sink { internal; return 204; }
        location = /answer.json { }
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
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$UP_PLAIN/v1/ping")
[[ $code == 401 ]] || die "upstream should refuse a request without a token, got $code"
body=$(curl -sS --max-time 5 --cacert "$TMP/ca.pem" -H @"$TMP/auth.header" "https://127.0.0.1:$UP_H1/v1/ping") \
    || die "direct request to the upstream failed"
[[ $body == "$BODY" ]] || die "unexpected answer from the upstream"

# ------------------------------------------------------------- helpers ----
CLK_TCK=$(getconf CLK_TCK)
proc_tree() { # master pid -> itself and its children
    local kids
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null || pgrep -P "$1" || true)
    echo "$1" "$(xargs <<<"$kids")"
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
status_kib() { # field pids... -> the field of /proc/PID/status summed over the pids, in KiB
    local field=$1 p
    shift
    for p in "$@"; do awk -v f="$field:" '$1==f{print $2}' "/proc/$p/status" 2>/dev/null || true; done |
        awk '{s+=$1} END{print s+0}'
}
reset_peak() { # pids... : VmHWM starts again from VmRSS (needs root or the same user)
    local p
    for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}
pss_kib() { # pids... -> proportional set size summed (shared pages split between processes)
    local p
    for p in "$@"; do awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true; done |
        awk '{s+=$1} END{print s+0}'
}
mib() { awk -v k="$1" 'BEGIN{ if (k == "" || k == "-") print "-"; else printf "%.1f", k/1024}'; }
# Upstream TCP connections the given processes hold to 127.0.0.1:PORT.
upstream_conns() { # "pid pid…" port
    command -v ss >/dev/null 2>&1 || { echo "?"; return; }
    local pat
    pat=$(sed -E 's/ +$//; s/ +/|/g' <<<"$1")
    ss -Htnp state established "( dport = :$2 )" 2>/dev/null | grep -cE "pid=($pat)," || true
}

start_sidekey() { # name binary config admin-port [VAR=value…] -> SK_STARTED (pid)
    local name=$1 bin=$2 config=$3 admin=$4
    shift 4
    env "$@" "$bin" check --config "$config" >"$TMP/$name-check.log" 2>&1 \
        || die "sidekey check ($name) failed: $(cat "$TMP/$name-check.log")"
    env "$@" "$bin" run --config "$config" >"$TMP/$name.log" 2>&1 &
    SK_STARTED=$!
    PIDS+=("$SK_STARTED")
    wait_http "http://127.0.0.1:$admin/readyz" || die "sidekey $name not ready: $(tail -5 "$TMP/$name.log")"
}
cat >"$TMP/report.lua" <<'EOF'
-- The direct rows send the token themselves.
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# measure URL CONNS PIDS-FOR-CPU-AND-RSS (space separated, may be empty) [UPSTREAM-PORT]
# One warm-up run (discarded), then the measured run. Sets LAST_* (latencies
# in µs, RSS peak in KiB, CPU in µs per request; "-" where not measured).
measure() {
    local url=$1 c=$2 pids=$3 upstream_port=${4:-} out res c0 c1 x0 x1
    local -a p
    read -r -a p <<<"$pids"
    if ((${#p[@]})); then reset_peak "${p[@]}"; fi
    timeout 60 wrk -t"$THREADS" -c"$c" -d"$WARMUP" --timeout 5s -s "$TMP/report.lua" "$url" >/dev/null 2>&1 || true
    c0=$(cpu_ticks "${p[@]}")
    x0=$(ctx_switches "${p[@]}")
    out=$(timeout 120 wrk -t"$THREADS" -c"$c" -d"$DURATION" --timeout 5s -s "$TMP/report.lua" "$url" 2>&1) || true
    c1=$(cpu_ticks "${p[@]}")
    x1=$(ctx_switches "${p[@]}")
    res=$(grep '^RESULT' <<<"$out") || die "no wrk result for $url: $out"
    local requests duration u0 s0 u1 s1
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$res")
    duration=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$res")
    LAST_P50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$res")
    LAST_P99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$res")
    LAST_P999=$(sed -E 's/.*p999_us=([0-9]+).*/\1/' <<<"$res")
    LAST_ERR=$(($(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$res") + $(sed -E 's/.*sockerr=([0-9]+).*/\1/' <<<"$res")))
    LAST_REQUESTS=$requests
    LAST_RPS=$(awk -v n="$requests" -v us="$duration" 'BEGIN{printf "%.0f", n/(us/1e6)}')
    LAST_CPU="-" LAST_USR="-" LAST_CS="-" LAST_PEAK="-" LAST_CONNS="-"
    if ((${#p[@]})); then
        read -r u0 s0 <<<"$c0"
        read -r u1 s1 <<<"$c1"
        local du=$((u1 - u0)) ds=$((s1 - s0))
        LAST_CPU=$(awk -v d="$((du + ds))" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN{ if (n>0) printf "%.1f", 1e6*d/hz/n; else print "-"}')
        LAST_USR=$(awk -v u="$du" -v d="$((du + ds))" 'BEGIN{ if (d>0) printf "%.0f%%", 100*u/d; else print "-"}')
        LAST_CS=$(awk -v d="$((x1 - x0))" -v n="$requests" 'BEGIN{ if (n>0) printf "%.2f", d/n; else print "-"}')
        LAST_PEAK=$(status_kib VmHWM "${p[@]}")
        if [[ -n $upstream_port ]]; then LAST_CONNS=$(upstream_conns "$pids" "$upstream_port"); fi
    fi
}

# Best-of-rounds bookkeeping, by KEY (target/conns).
declare -A B_RPS=() B_P50=() B_P99=() B_P999=() B_CPU=() B_USR=() B_CS=() B_PEAK=() B_CONNS=() ERRSUM=() REQSUM=()
keep_best() { # key
    local k=$1
    ERRSUM[$k]=$((${ERRSUM[$k]:-0} + LAST_ERR))
    REQSUM[$k]=$((${REQSUM[$k]:-0} + LAST_REQUESTS))
    if [[ -z ${B_RPS[$k]:-} ]] || ((LAST_RPS > B_RPS[$k])); then
        B_RPS[$k]=$LAST_RPS B_P50[$k]=$LAST_P50 B_P99[$k]=$LAST_P99 B_P999[$k]=$LAST_P999
        B_CPU[$k]=$LAST_CPU B_USR[$k]=$LAST_USR B_CS[$k]=$LAST_CS B_CONNS[$k]=$LAST_CONNS
    fi
    # The peak is the highest of the rounds, not the best round's.
    if [[ $LAST_PEAK != - ]] && { [[ -z ${B_PEAK[$k]:-} || ${B_PEAK[$k]} == - ]] || ((LAST_PEAK > B_PEAK[$k])); }; then
        B_PEAK[$k]=$LAST_PEAK
    elif [[ -z ${B_PEAK[$k]:-} ]]; then
        B_PEAK[$k]=-
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "-" || b == "-" || b+0 == 0) print "-"; else printf "%.2f", a/b}'; }
ms() { awk -v u="$1" 'BEGIN{ if (u == "-") print "-"; else printf "%.3f", u/1000}'; }

# Runs every (target, conns) of RUNS (entries "target conns") for $ROUNDS
# rounds, even rounds in reverse order so that drift on the machine does not
# favour whoever runs first; keeps each one's best round by req/s (on a
# shared VM, noise only ever makes a run slower). T_URL/T_PIDS/T_UP/T_AUTH
# describe the targets; a T_BEFORE/T_AFTER hook may wrap a run.
run_rounds() {
    local round i j swap target c n=${#RUNS[@]}
    local -a order
    for ((round = 1; round <= ROUNDS; round++)); do
        order=("${RUNS[@]}")
        if ((round % 2 == 0)); then
            for ((i = 0, j = n - 1; i < j; i++, j--)); do
                swap=${order[i]}
                order[i]=${order[j]}
                order[j]=$swap
            done
        fi
        for entry in "${order[@]}"; do
            read -r target c <<<"$entry"
            if [[ -n ${T_AUTH[$target]:-} ]]; then export WRK_AUTH=${T_AUTH[$target]}; fi
            if [[ -n ${T_BEFORE[$target]:-} ]]; then "${T_BEFORE[$target]}"; fi
            measure "${T_URL[$target]}" "$c" "${T_PIDS[$target]:-}" "${T_UP[$target]:-}"
            if [[ -n ${T_AFTER[$target]:-} ]]; then "${T_AFTER[$target]}"; fi
            unset WRK_AUTH
            keep_best "$target/$c"
            log "round $round/$ROUNDS: $target -c$c: $LAST_RPS req/s, p50 $(ms "$LAST_P50") ms, errors $LAST_ERR"
        done
    done
}
declare -A T_URL=() T_PIDS=() T_UP=() T_AUTH=() T_BEFORE=() T_AFTER=()

machine_line() {
    echo "$NCPU CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal:/{printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
}
git_rev() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
    git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || rev+=" (+uncommitted changes)"
    echo "$rev"
}

# ========================================================== allocators ====
if [[ $MODE == allocators ]]; then
    declare -A ALLOC_PID=() ALLOC_IDLE=() ALLOC_BIN=()
    export SIDEKEY_BENCH_TOKEN=$TOKEN
    for v in "${ALLOCATORS[@]}"; do
        port=$(pick_port) admin=$(pick_port)
        { sidekey_common "$admin" "$TMP/ca.pem" SIDEKEY_BENCH_TOKEN; sidekey_route h1 "$port" "$UP_H1"; } >"$TMP/sidekey-$v.toml"
        start_sidekey "sidekey-$v" "$TMP/sidekey-$v" "$TMP/sidekey-$v.toml" "$admin"
        ALLOC_PID[$v]=$SK_STARTED
        sleep 1
        ALLOC_IDLE[$v]=$(status_kib VmRSS "$SK_STARTED")
        ALLOC_BIN[$v]=$(stat -c %s "$TMP/sidekey-$v")
        body=$(curl -sS --max-time 5 "http://127.0.0.1:$port/v1/ping") || die "request via sidekey-$v failed"
        [[ $body == "$BODY" ]] || die "unexpected answer via sidekey-$v"
        T_URL[$v]="http://127.0.0.1:$port/v1/ping" T_PIDS[$v]=$SK_STARTED
    done
    unset SIDEKEY_BENCH_TOKEN
    RUNS=()
    for v in "${ALLOCATORS[@]}"; do RUNS+=("$v $CONNS"); done
    log "$ROUNDS round(s) of wrk -t$THREADS -c$CONNS -d$DURATION per allocator (warm-up $WARMUP)"
    run_rounds
    for v in "${ALLOCATORS[@]}"; do kill -TERM "${ALLOC_PID[$v]}" 2>/dev/null || true; done

    # The spike: bench/flood.sh against each binary (its own instance, no
    # upstream needed): SPIKE_N idle keep-alive connections, then SPIKE_N
    # unterminated 60 KiB request heads; RSS at the peak and 10 s after close.
    declare -A SPIKE=()
    for v in "${ALLOCATORS[@]}"; do
        log "flood: $SPIKE_N connections against sidekey-$v"
        out=$(FLOOD_SIDEKEY="$TMP/sidekey-$v" FLOOD_N=$SPIKE_N FLOOD_PHASES="1 2" FLOOD_SETTLE=10 \
            bash "$ROOT/bench/flood.sh" 2>"$TMP/flood-$v.log") || die "flood.sh failed for $v: $(tail -5 "$TMP/flood-$v.log")"
        printf '%s\n' "$out" >"$TMP/flood-$v.out"
        # "<label> before B peak P after close: +1s A +10s T (MiB)"
        SPIKE[$v/idle]=$(awk '/idle keep-alive +before/{for(i=1;i<=NF;i++){if($i=="peak")p=$(i+1); if($i=="+10s")t=$(i+1)} print p" "t; exit}' <<<"$out")
        SPIKE[$v/heads]=$(awk '/slow heads +before/{for(i=1;i<=NF;i++){if($i=="peak")p=$(i+1); if($i=="+10s")t=$(i+1)} print p" "t; exit}' <<<"$out")
        SPIKE[$v/conns]=$(awk '/idle keep-alive connections open/{print $1; exit}' <<<"$out")
    done

    cat <<EOF

========================== sidekey allocators ===========================
machine   : $(machine_line)
command   : $COMMAND
sidekey   : $("$SIDEKEY" --version 2>/dev/null) @ $(git_rev); load avg now $(cut -d' ' -f1-3 /proc/loadavg)
load      : wrk -t$THREADS -c$CONNS -d$DURATION (warm-up $WARMUP), GET /v1/ping via sidekey -> HTTPS HTTP/1.1
            upstream (1 KiB answer), best of $ROUNDS rounds (alternating order); RSS in MiB
spike     : bench/flood.sh, its own instance per binary: ${SPIKE_N} idle keep-alive connections (one
            request each), then ${SPIKE_N} unterminated 60 KiB request heads; peak and 10 s after close
build     : seconds the allocator crate adds to a dist build (after cargo clean -p <its -sys
            crate>, minus a build that recompiles the same sidekey crates)$(
        [[ ${ALLOC_BUILD_S[jemalloc]} == - ]] && printf '%s' ": not measured" || printf '%s' ";
            noisy while other builds share the machine")

allocator  build s  binary   req/s  CPU/req  RSS idle  RSS peak   keep-alive spike     60 KiB heads spike
                                                      (load)    peak -> +10 s        peak -> +10 s
EOF
    for v in "${ALLOCATORS[@]}"; do
        read -r ip it <<<"${SPIKE[$v/idle]:-- -}"
        read -r hp ht <<<"${SPIKE[$v/heads]:-- -}"
        printf '%-10s %7s %6s %7s %8s %9s %9s   %7s -> %-7s   %7s -> %-7s\n' "$v" "${ALLOC_BUILD_S[$v]}" \
            "$(mib "$((ALLOC_BIN[$v] / 1024))")" "${B_RPS[$v/$CONNS]}" "${B_CPU[$v/$CONNS]}" \
            "$(mib "${ALLOC_IDLE[$v]}")" "$(mib "${B_PEAK[$v/$CONNS]}")" "$ip" "$it" "$hp" "$ht"
    done
    errs=0
    for v in "${ALLOCATORS[@]}"; do errs=$((errs + ${ERRSUM[$v/$CONNS]})); done
    echo "errors (non-2xx + socket errors, all rounds): $errs; keep-alive connections served in the spike: $(for v in "${ALLOCATORS[@]}"; do printf '%s %s  ' "$v" "${SPIKE[$v/conns]:-?}"; done)"
    echo "========================================================================="
    exit 0
fi

# ============================================================ compare ====
NGX_PX=$(pick_port)
SK_H1=$(pick_port)
SK_H2=$(pick_port)
SK_ADMIN=$(pick_port)
SK2_ADMIN=$(pick_port)
ROT_PORT=$(pick_port)
ROT_ADMIN=$(pick_port)
TOKEN_PORT=$(pick_port)

# --------------------------------------------------------- nginx proxy ----
NGINX_PROXY_SETTINGS="worker_processes $NWORKERS; upstream keepalive 64 (keepalive_requests 1000000); proxy_http_version 1.1;
            proxy_set_header Connection \"\"; proxy_set_header Authorization \"Bearer …\"; proxy_ssl_verify on
            + proxy_ssl_trusted_certificate (bench CA), proxy_ssl_name localhost, proxy_ssl_session_reuse on;
            proxy_request_buffering off; proxy_buffering off (streams both ways, like sidekey); access_log off"
cat >"$TMP/nginx-proxy.conf" <<EOF
$(ngx_common nginx-proxy)
worker_processes $NWORKERS;
events { worker_connections 4096; }
http {
$(ngx_http_common nginx-proxy)
$(nginx_peer_http "$UP_H1" "$NGX_PX" "$TOKEN" "$TMP/ca.pem")
}
EOF
start_nginx nginx-proxy
wait_http "http://127.0.0.1:$NGX_PX/" || die "nginx proxy not answering 200"
NGX_TREE=$(proc_tree "$(cat "$TMP/nginx-proxy.master")")
read -r -a ngx_pids <<<"$NGX_TREE"
((${#ngx_pids[@]} == NWORKERS + 1)) || log "warning: nginx proxy has ${#ngx_pids[@]} processes, expected $((NWORKERS + 1))"

# ------------------------------------------------------- token endpoint ----
# OAuth 2.0 client credentials over HTTPS (the bench leaf): HTTP Basic client
# authentication, grant_type=client_credentials, tokens rot-N-<32 hex> that
# live BENCH_TOKEN_TTL seconds. It counts what it issued in a file.
cat >"$TMP/token_server.py" <<'EOF'
import base64, http.server, json, os, secrets, ssl, sys, threading, urllib.parse

port, cert, key, ttl, count_file = sys.argv[1:]
expected = "Basic " + base64.b64encode(
    f"{os.environ['ROT_CLIENT_ID']}:{os.environ['ROT_CLIENT_SECRET']}".encode()).decode()
lock = threading.Lock()
issued = 0

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(404, {"error": "not_found"})

    def do_POST(self):
        global issued
        form = urllib.parse.parse_qs(
            self.rfile.read(int(self.headers.get("content-length") or 0)).decode(errors="replace"))
        if self.path != "/oauth/token" or self.headers.get("authorization") != expected:
            return self.reply(401, {"error": "invalid_client"})
        if form.get("grant_type") != ["client_credentials"]:
            return self.reply(400, {"error": "unsupported_grant_type"})
        with lock:
            issued += 1
            n = issued
            with open(count_file, "w") as f:
                f.write(str(n))
        self.reply(200, {"access_token": f"rot-{n}-{secrets.token_hex(16)}",
                         "token_type": "Bearer", "expires_in": int(ttl)})

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF
ROT_CLIENT_ID=bench-$(openssl rand -hex 4)
ROT_CLIENT_SECRET=$(openssl rand -hex 16) # never printed
echo 0 >"$TMP/tokens-issued"
ROT_CLIENT_ID=$ROT_CLIENT_ID ROT_CLIENT_SECRET=$ROT_CLIENT_SECRET \
    python3 "$TMP/token_server.py" "$TOKEN_PORT" "$TMP/leaf.pem" "$TMP/leaf.key" "$TOKEN_TTL" "$TMP/tokens-issued" \
    2>"$TMP/token_server.log" &
PIDS+=($!)
for _ in $(seq 100); do port_in_use "$TOKEN_PORT" && break; sleep 0.1; done
port_in_use "$TOKEN_PORT" || die "token endpoint did not start: $(tail -5 "$TMP/token_server.log")"

# ------------------------------------------------------------- sidekey ----
# One instance per upstream port, default settings, a static token; the
# rotation instance has the same shape, so "steady" compares like with like.
{ sidekey_workers; sidekey_common "$SK_ADMIN" "$TMP/ca.pem" SIDEKEY_BENCH_TOKEN; sidekey_route h1 "$SK_H1" "$UP_H1"; } >"$TMP/sidekey.toml"
{ sidekey_workers; sidekey_common "$SK2_ADMIN" "$TMP/ca.pem" SIDEKEY_BENCH_TOKEN; sidekey_route h2 "$SK_H2" "$UP_H2"; } >"$TMP/sidekey-h2.toml"
# The rotation instance: default settings, an oauth2 credential with short-lived tokens.
{
    sidekey_workers
    cat <<EOF
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$ROT_ADMIN"

[log]
level = "warn"

[tls]
ca_file = "$TMP/ca.pem"

[credentials.rotating]
type = "oauth2"
token_url = "https://127.0.0.1:$TOKEN_PORT/oauth/token"
client_id = { env = "SIDEKEY_BENCH_CLIENT_ID" }
client_secret = { env = "SIDEKEY_BENCH_CLIENT_SECRET" }
EOF
    sidekey_route h1 "$ROT_PORT" "$UP_H1" rotating
} >"$TMP/sidekey-rot.toml"
start_sidekey sidekey "$SIDEKEY" "$TMP/sidekey.toml" "$SK_ADMIN" SIDEKEY_BENCH_TOKEN="$TOKEN"
SK_PID=$SK_STARTED
start_sidekey sidekey-h2 "$SIDEKEY" "$TMP/sidekey-h2.toml" "$SK2_ADMIN" SIDEKEY_BENCH_TOKEN="$TOKEN"
SK2_PID=$SK_STARTED
start_sidekey sidekey-rot "$SIDEKEY" "$TMP/sidekey-rot.toml" "$ROT_ADMIN" \
    SIDEKEY_BENCH_CLIENT_ID="$ROT_CLIENT_ID" SIDEKEY_BENCH_CLIENT_SECRET="$ROT_CLIENT_SECRET"
ROT_PID=$SK_STARTED

# Idle memory: after start, before any request.
sleep 1
SK_IDLE=$(status_kib VmRSS "$SK_PID")
SK2_IDLE=$(status_kib VmRSS "$SK2_PID")
SK_THREADS=$(awk '/^Threads:/{print $2}' "/proc/$SK_PID/status")
NGX_IDLE=$(status_kib VmRSS "${ngx_pids[@]}")
NGX_IDLE_PSS=$(pss_kib "${ngx_pids[@]}")
SK_IDLE_PSS=$(pss_kib "$SK_PID")

# Sanity: every path through a proxy answers the upstream's 1 KiB (the upstream checks the token).
for url in "http://127.0.0.1:$SK_H1/v1/ping" "http://127.0.0.1:$SK_H2/v1/ping" \
    "http://127.0.0.1:$ROT_PORT/v1/ping" "http://127.0.0.1:$NGX_PX/v1/ping"; do
    body=$(curl -sS --max-time 5 "$url") || die "request to $url failed"
    [[ $body == "$BODY" ]] || die "unexpected answer from $url: ${body:0:80}"
done

# ---------------------------------------------------------------- runs ----
T_URL=([direct]="https://127.0.0.1:$UP_H1/v1/ping" [sk_h1]="http://127.0.0.1:$SK_H1/v1/ping"
    [sk_h2]="http://127.0.0.1:$SK_H2/v1/ping" [nginx]="http://127.0.0.1:$NGX_PX/v1/ping"
    [rot]="http://127.0.0.1:$ROT_PORT/v1/ping")
T_PIDS=([sk_h1]=$SK_PID [sk_h2]=$SK2_PID [nginx]=$NGX_TREE [rot]=$ROT_PID)
T_UP=([sk_h1]=$UP_H1 [sk_h2]=$UP_H2 [nginx]=$UP_H1 [rot]=$UP_H1)
T_AUTH=([direct]="Bearer $TOKEN")
ROT_TOKENS=0 ROT_SECONDS=0
rot_before() { ROT_T0=$(date +%s.%N) ROT_N0=$(cat "$TMP/tokens-issued"); }
rot_after() {
    ROT_TOKENS=$((ROT_TOKENS + $(cat "$TMP/tokens-issued") - ROT_N0))
    ROT_SECONDS=$(awk -v s="$ROT_SECONDS" -v a="$ROT_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", s+b-a}')
}
T_BEFORE=([rot]=rot_before)
T_AFTER=([rot]=rot_after)
RUNS=("direct 1" "direct $CONNS" "sk_h1 1" "sk_h1 $CONNS" "sk_h2 1" "sk_h2 $CONNS" "nginx 1" "nginx $CONNS" "rot $CONNS")

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STAT_START=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat)
log "$ROUNDS round(s) of wrk -t$THREADS -c1 and -c$CONNS, -d$DURATION per target (warm-up $WARMUP each)"
run_rounds
STEAL=$(awk -v start="$STAT_START" '/^cpu /{split(start, a, " "); t=$2+$3+$4+$5+$6+$7+$8+$9-a[1]; s=$9-a[2];
    if (t>0) printf "%.1f%%", 100*s/t; else print "?"}' /proc/stat)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------- transfers ----
declare -A XFER=()
transfer() { # key direction url [curl args…]
    local key=$1 dir=$2 url=$3 out code size speed
    shift 3
    if [[ $dir == up ]]; then
        out=$(curl -sS --max-time 120 -o /dev/null -H 'Expect:' -H 'Content-Type: application/octet-stream' "$@" \
            --data-binary "@$TMP/www/big.bin" -w '%{http_code} %{size_upload} %{speed_upload}' "$url") \
            || die "upload via $key failed"
    else
        out=$(curl -sS --max-time 120 -o /dev/null "$@" -w '%{http_code} %{size_download} %{speed_download}' "$url") \
            || die "download via $key failed"
    fi
    read -r code size speed <<<"$out"
    [[ $code == 200 && $size == "$TRANSFER_BYTES" ]] || die "$dir via $key: status $code, $size bytes"
    XFER[$key/$dir]=$(awk -v s="$speed" 'BEGIN{printf "%.0f", s/1e6}')
    log "transfer $key $dir: ${XFER[$key/$dir]} MB/s"
}
log "transfers: ${TRANSFER_MB} MB up and down"
reset_peak "$SK_PID" "$SK2_PID"
reset_peak "${ngx_pids[@]}"
for dir in up down; do
    path=/upload
    [[ $dir == down ]] && path=/big.bin
    transfer direct "$dir" "https://127.0.0.1:$UP_H1$path" --http1.1 --cacert "$TMP/ca.pem" -H @"$TMP/auth.header"
    transfer sk_h1 "$dir" "http://127.0.0.1:$SK_H1$path"
    transfer sk_h2 "$dir" "http://127.0.0.1:$SK_H2$path"
    transfer nginx "$dir" "http://127.0.0.1:$NGX_PX$path"
done
SK_XFER_PEAK=$(status_kib VmHWM "$SK_PID")
SK2_XFER_PEAK=$(status_kib VmHWM "$SK2_PID")
NGX_XFER_PEAK=$(status_kib VmHWM "${ngx_pids[@]}")

kill -0 "$SK_PID" 2>/dev/null || die "sidekey exited during the run"
kill -0 "$SK2_PID" 2>/dev/null || die "sidekey (HTTP/2) exited during the run"
kill -0 "$ROT_PID" 2>/dev/null || die "sidekey (rotation) exited during the run"
SK_LOG_LINES=$(cat "$TMP/sidekey.log" "$TMP/sidekey-h2.log" "$TMP/sidekey-rot.log" | grep -c . || true)
SK_RSS_END=$(status_kib VmRSS "$SK_PID")

# -------------------------------------------------------------- report ----
HDR=$(printf '%-8s %-24s %5s %8s %8s %8s %8s %5s %7s %4s %6s %6s %6s' \
    upstream target conns "req/s" "p50" "p99" "p99.9" errs "CPU/req" usr cs/req idle peak)
row() { # upstream-label target-label key idle-kib
    local k=$3
    printf '%-8s %-24s %5s %8s %8s %8s %8s %5s %7s %4s %6s %6s %6s\n' "$1" "$2" "${k#*/}" "${B_RPS[$k]}" \
        "$(ms "${B_P50[$k]}")" "$(ms "${B_P99[$k]}")" "$(ms "${B_P999[$k]}")" "${ERRSUM[$k]}" \
        "${B_CPU[$k]}" "${B_USR[$k]}" "${B_CS[$k]}" "$(mib "$4")" "$(mib "${B_PEAK[$k]}")"
}
ratio_row() { # upstream-label sidekey-key nginx-key sidekey-idle-kib
    local s=$2 n=$3
    printf '%-8s %-24s %5s %8s %8s %8s %8s %5s %7s %4s %6s %6s %6s\n' "$1" "  sidekey/nginx" "" \
        "$(ratio "${B_RPS[$s]}" "${B_RPS[$n]}")" "$(ratio "${B_P50[$s]}" "${B_P50[$n]}")" \
        "$(ratio "${B_P99[$s]}" "${B_P99[$n]}")" "$(ratio "${B_P999[$s]}" "${B_P999[$n]}")" "" \
        "$(ratio "${B_CPU[$s]}" "${B_CPU[$n]}")" "" "" "$(ratio "$4" "$NGX_IDLE")" \
        "$(ratio "${B_PEAK[$s]}" "${B_PEAK[$n]}")"
}
added() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%+d µs", a-b}'; }
xfer_row() { # label key
    printf '%-28s %8s %9s\n' "$1" "${XFER[$2/up]}" "${XFER[$2/down]}"
}
C=$CONNS
REPORT=$(
    cat <<EOF

=============================== sidekey bench ===============================
machine   : $(machine_line)
command   : $COMMAND
load avg  : $LOAD_START at the start of the wrk runs, $LOAD_END at the end; CPU steal during them: $STEAL
sidekey   : $("$SIDEKEY" --version 2>/dev/null) @ $(git_rev), $BUILD_KIND, ${BENCH_WORKERS:+workers = $NWORKERS, otherwise }default settings ($SK_THREADS threads at idle),
            one process per upstream port
tools     : $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}'), $(openssl version | cut -d' ' -f1-2)
upstream  : nginx, 1 worker, HTTPS (TLS 1.3, ECDSA P-256) on loopback; GET answers 200 with 1 KiB of JSON,
            401 without a right bearer token; HTTP/1.1 port, and an ALPN h2 port for "HTTP/2"
nginx px  : $NGINX_PROXY_SETTINGS
load      : wrk -t$THREADS -c1 and -t$THREADS -c$C, warm-up $WARMUP then $DURATION per run, GET /v1/ping; all on
            loopback, same CPUs; $ROUNDS round(s) (alternating order), each row its best round by req/s
columns   : latencies in ms (wrk, client side); errs = non-2xx + socket errors, all rounds;
            CPU/req = proxy CPU µs per request (utime+stime from /proc, nginx: master + $NWORKERS workers);
            usr = user-space share of it; cs/req = context switches per request;
            idle / peak = VmRSS before any request / VmHWM during the run, MiB (nginx: summed over its processes)

$HDR
$(row HTTP/1.1 "direct (wrk -> upstream)" "direct/1" -)
$(row HTTP/1.1 "sidekey" "sk_h1/1" "$SK_IDLE")
$(row HTTP/1.1 "nginx" "nginx/1" "$NGX_IDLE")
$(ratio_row HTTP/1.1 "sk_h1/1" "nginx/1" "$SK_IDLE")
$(row HTTP/1.1 "direct (wrk -> upstream)" "direct/$C" -)
$(row HTTP/1.1 "sidekey" "sk_h1/$C" "$SK_IDLE")
$(row HTTP/1.1 "nginx" "nginx/$C" "$NGX_IDLE")
$(ratio_row HTTP/1.1 "sk_h1/$C" "nginx/$C" "$SK_IDLE")
$(row HTTP/2 "direct* (HTTP/1.1)" "direct/1" -)
$(row HTTP/2 "sidekey" "sk_h2/1" "$SK2_IDLE")
$(row HTTP/2 "nginx* (HTTP/1.1 up)" "nginx/1" "$NGX_IDLE")
$(ratio_row HTTP/2 "sk_h2/1" "nginx/1" "$SK2_IDLE")
$(row HTTP/2 "direct* (HTTP/1.1)" "direct/$C" -)
$(row HTTP/2 "sidekey" "sk_h2/$C" "$SK2_IDLE")
$(row HTTP/2 "nginx* (HTTP/1.1 up)" "nginx/$C" "$NGX_IDLE")
$(ratio_row HTTP/2 "sk_h2/$C" "nginx/$C" "$SK2_IDLE")
  * the same runs as in the HTTP/1.1 rows: wrk speaks only HTTP/1.1, and nginx proxies only HTTP/1.1
    to an upstream (no h2 in proxy_pass), so its answer to an HTTP/2 upstream is HTTP/1.1.

p50 added over direct at 1 connection: sidekey -> HTTP/1.1 $(added "${B_P50[sk_h1/1]}" "${B_P50[direct/1]}"), sidekey -> HTTP/2 $(added "${B_P50[sk_h2/1]}" "${B_P50[direct/1]}"), nginx $(added "${B_P50[nginx/1]}" "${B_P50[direct/1]}")

token rotation: sidekey with an oauth2 credential whose tokens live ${TOKEN_TTL} s (HTTPS token endpoint on loopback),
HTTP/1.1 upstream, -c$C; "steady" is the static-token row above
$HDR
$(row HTTP/1.1 "sidekey, ${TOKEN_TTL} s tokens" "rot/$C" -)
$(row HTTP/1.1 "sidekey, steady" "sk_h1/$C" "$SK_IDLE")
  $ROT_TOKENS tokens issued in ${ROT_SECONDS} s of load (one per $(awk -v t="$ROT_TOKENS" -v s="$ROT_SECONDS" 'BEGIN{ if (t>0) printf "%.1f", s/t; else print "-"}') s); failed requests (non-2xx + socket errors) over ${REQSUM[rot/$C]} requests: ${ERRSUM[rot/$C]} (expected 0)
  p99.9 during rotation / steady: $(ms "${B_P999[rot/$C]}") / $(ms "${B_P999[sk_h1/$C]}") ms = $(ratio "${B_P999[rot/$C]}" "${B_P999[sk_h1/$C]}")

streaming: ${TRANSFER_MB} MB in one request each way (curl, POST /upload, GET /big.bin), MB/s
target                         upload  download
$(xfer_row "direct (HTTPS HTTP/1.1)" direct)
$(xfer_row "sidekey -> HTTP/1.1" sk_h1)
$(xfer_row "sidekey -> HTTP/2" sk_h2)
$(xfer_row "nginx -> HTTP/1.1" nginx)
$(printf '%-28s %8s %9s' "  sidekey/nginx (HTTP/1.1)" "$(ratio "${XFER[sk_h1/up]}" "${XFER[nginx/up]}")" "$(ratio "${XFER[sk_h1/down]}" "${XFER[nginx/down]}")")
  peak RSS during the transfers: sidekey -> HTTP/1.1 $(mib "$SK_XFER_PEAK") MiB, -> HTTP/2 $(mib "$SK2_XFER_PEAK") MiB, nginx $(mib "$NGX_XFER_PEAK") MiB (bodies stream, not buffered)

memory    : idle PSS (shared pages split between processes): sidekey $(mib "$SK_IDLE_PSS") MiB, nginx $(mib "$NGX_IDLE_PSS") MiB;
            sidekey -> HTTP/1.1 VmRSS at the end $(mib "$SK_RSS_END") MiB
upstream TLS connections held right after the best -c$C run: sidekey -> HTTP/1.1 ${B_CONNS[sk_h1/$C]}, -> HTTP/2 ${B_CONNS[sk_h2/$C]}, nginx ${B_CONNS[nginx/$C]}
sidekey binary: $(mib "$(($(stat -c %s "$SIDEKEY") / 1024))") MiB; sidekey log: $SK_LOG_LINES line(s) at level warn or above
EOF
)

# ---------------------------------------------------------------- plot ----
PLOT_LINE="plot: not drawn (gnuplot missing)"
if command -v gnuplot >/dev/null 2>&1; then
    val() { [[ -z $1 || $1 == - ]] && echo NaN || echo "$1"; }
    {
        echo "# cluster direct sidekey nginx"
        for up in h1 h2; do
            for c in 1 "$C"; do
                label="HTTP/1.1"
                [[ $up == h2 ]] && label="HTTP/2"
                echo "\"$label c$c\" ${B_RPS[direct/$c]} ${B_RPS[sk_$up/$c]} ${B_RPS[nginx/$c]}"
            done
        done
    } >"$TMP/plot-rps.dat"
    {
        echo "# cluster direct sidekey nginx"
        for up in h1 h2; do
            for pct in P50 P99 P999; do
                declare -n arr="B_$pct"
                name=${pct/P999/p99.9}
                name=${name/P/p}
                label="h1"
                [[ $up == h2 ]] && label="h2"
                echo "\"$label $name\" $(ms "${arr[direct/$C]}") $(ms "${arr[sk_$up/$C]}") $(ms "${arr[nginx/$C]}")"
                unset -n arr
            done
        done
    } >"$TMP/plot-lat.dat"
    {
        echo "# cluster sidekey nginx"
        for up in h1 h2; do
            for c in 1 "$C"; do
                label="HTTP/1.1"
                [[ $up == h2 ]] && label="HTTP/2"
                echo "\"$label c$c\" $(val "${B_CPU[sk_$up/$c]}") $(val "${B_CPU[nginx/$c]}")"
            done
        done
    } >"$TMP/plot-cpu.dat"
    {
        echo "# cluster direct sidekey-h1 sidekey-h2 nginx"
        echo "upload ${XFER[direct/up]} ${XFER[sk_h1/up]} ${XFER[sk_h2/up]} ${XFER[nginx/up]}"
        echo "download ${XFER[direct/down]} ${XFER[sk_h1/down]} ${XFER[sk_h2/down]} ${XFER[nginx/down]}"
    } >"$TMP/plot-xfer.dat"
    cat >"$TMP/plot.gp" <<EOF
set terminal pngcairo size 1400,1000 font ",10"
set output "$TMP/plot.png"
set multiplot layout 2,2 title "sidekey bench: $(machine_line | sed 's/"//g'), $(date -u +%Y-%m-%d) @ $(git_rev)\\nwrk -t$THREADS, best of $ROUNDS round(s) of $DURATION; nginx (HTTP/1.1 to the upstream) is the same run in both upstream groups"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left
set grid ytics
set yrange [0:*]
set datafile missing "NaN"
set title "requests/s (higher is better)"
plot "$TMP/plot-rps.dat" using 2:xtic(1) title "direct" lc rgb "#999999", "" using 3 title "sidekey" lc rgb "#1f77b4", "" using 4 title "nginx" lc rgb "#2ca02c"
set title "latency at $C connections, ms, log scale (lower is better); h1 / h2 = HTTP/1.1 / HTTP/2 upstream"
set logscale y
set yrange [0.01:*]
plot "$TMP/plot-lat.dat" using 2:xtic(1) title "direct" lc rgb "#999999", "" using 3 title "sidekey" lc rgb "#1f77b4", "" using 4 title "nginx" lc rgb "#2ca02c"
unset logscale y
set yrange [0:*]
set title "proxy CPU µs per request (lower is better)"
plot "$TMP/plot-cpu.dat" using 2:xtic(1) title "sidekey" lc rgb "#1f77b4", "" using 3 title "nginx" lc rgb "#2ca02c"
set title "${TRANSFER_MB} MB streaming, MB/s (higher is better)"
plot "$TMP/plot-xfer.dat" using 2:xtic(1) title "direct" lc rgb "#999999", "" using 3 title "sidekey -> HTTP/1.1" lc rgb "#1f77b4", "" using 4 title "sidekey -> HTTP/2" lc rgb "#17becf", "" using 5 title "nginx" lc rgb "#2ca02c"
unset multiplot
EOF
    if gnuplot "$TMP/plot.gp" 2>"$TMP/plot.log"; then
        mkdir -p "$(dirname "$PLOT")"
        cp "$TMP/plot.png" "$PLOT"
        PLOT_LINE="plot: $PLOT"
    else
        PLOT_LINE="plot: gnuplot failed: $(head -3 "$TMP/plot.log")"
    fi
fi
printf '%s\n%s\n' "$REPORT" "$PLOT_LINE"
echo "============================================================================="
