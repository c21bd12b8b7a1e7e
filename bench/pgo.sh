#!/usr/bin/env bash
# The profile for sidekey's profile-guided (PGO) build: what ships
# (deploy/Dockerfile) and what bench/run.sh measures. See bench/README.md
# ("Profile-guided build").
#
#   bash bench/pgo.sh [PROFDATA]      # default target/pgo/sidekey.profdata
#   RUSTFLAGS="-Cprofile-use=$PWD/target/pgo/sidekey.profdata" \
#       cargo build --profile dist --bin sidekey
#
# Builds sidekey instrumented (`-Cprofile-generate`, its own target dir
# target/pgo-gen), runs it as a sidecar's day looks: GET and POST requests
# through a static credential to an HTTPS upstream (nginx, one HTTP/1.1 port
# and one ALPN h2 port) on 1 and 64 keep-alive connections (wrk), then merges
# what it recorded with the toolchain's llvm-profdata (rustup component
# llvm-tools, added when missing). Needs nginx, wrk, openssl and curl.
# PGO_SECONDS (default 4) is the length of each load run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=fixtures.sh
source "$ROOT/bench/fixtures.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
OUT=${1:-$TARGET_DIR/pgo/sidekey.profdata}
[[ $OUT = /* ]] || OUT=$PWD/$OUT
SECONDS_EACH=${PGO_SECONDS:-4}

log() { printf '[pgo %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for tool in cargo rustc nginx wrk openssl curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    log "rustup component add llvm-tools (for llvm-profdata)"
    rustup component add llvm-tools >&2
fi
[[ -x $PROFDATA ]] || die "no llvm-profdata at $PROFDATA"

TMP=$(mktemp -d /tmp/sidekey-pgo.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

log "cargo build --profile dist, instrumented (target dir $TARGET_DIR/pgo-gen)"
# The same flags every time (the run's own directory is LLVM_PROFILE_FILE
# below), so that a second run rebuilds only what changed.
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$TARGET_DIR/pgo-gen/profraw" \
    cargo build --quiet --locked --profile dist --bin sidekey --target-dir "$TARGET_DIR/pgo-gen")
# Build scripts ran instrumented too: only sidekey's own run counts.
rm -rf "$TARGET_DIR/pgo-gen/profraw"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 10000)); }
UP_H1=$(free_port) UP_H2=$(free_port) SK_H1=$(free_port) SK_H2=$(free_port) ADMIN=$(free_port)

umask 077
bench_pki "$TMP" pgo
TOKEN=$(openssl rand -hex 24)
BODY=$(printf '{"ok":true,"pad":"%1000s"}' '' | tr ' ' x)
head -c 262144 /dev/urandom >"$TMP/upload.bin"

mkdir -p "$TMP/ngx"
bench_upstream_conf "$TMP" "$UP_H1" "$UP_H2" "$TOKEN" "$BODY" >"$TMP/upstream.conf"
nginx -p "$TMP/ngx" -e "$TMP/ngx/error.log" -c "$TMP/upstream.conf" -g 'daemon off;' &
PIDS+=($!)

{
    sidekey_common "$ADMIN" "$TMP/ca.pem" SIDEKEY_PGO_TOKEN
    sidekey_route h1 "$SK_H1" "$UP_H1"
    sidekey_route h2 "$SK_H2" "$UP_H2"
} >"$TMP/sidekey.toml"
LLVM_PROFILE_FILE="$TMP/raw/sidekey-%p-%m.profraw" SIDEKEY_PGO_TOKEN=$TOKEN \
    "$TARGET_DIR/pgo-gen/dist/sidekey" run --config "$TMP/sidekey.toml" >"$TMP/sidekey.log" 2>&1 &
SK=$!
PIDS+=("$SK")
for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz" && break
    sleep 0.1
done
for port in "$SK_H1" "$SK_H2"; do
    body=$(curl -sS --max-time 5 "http://127.0.0.1:$port/v1/ping") || die "request through sidekey failed: $(tail -3 "$TMP/sidekey.log")"
    [[ $body == "$BODY" ]] || die "unexpected answer through sidekey: $body"
done

log "training: GET on 64 and 1 connections, and POSTs, to each upstream (${SECONDS_EACH}s per run)"
for port in "$SK_H1" "$SK_H2"; do
    wrk -t1 -c64 -d"${SECONDS_EACH}s" "http://127.0.0.1:$port/v1/ping" >/dev/null
    wrk -t1 -c1 -d"$((SECONDS_EACH / 2 + 1))s" "http://127.0.0.1:$port/v1/ping" >/dev/null
    for _ in $(seq 20); do
        curl -sf -o /dev/null --max-time 5 -X POST -H 'content-type: application/octet-stream' \
            --data-binary @"$TMP/upload.bin" "http://127.0.0.1:$port/v1/upload" || die "POST through sidekey failed"
    done
done
kill -TERM "$SK"
wait "$SK" || die "instrumented sidekey did not exit cleanly: $(tail -3 "$TMP/sidekey.log")"
compgen -G "$TMP/raw/*.profraw" >/dev/null || die "the instrumented run wrote no profile"

mkdir -p "$(dirname "$OUT")"
"$PROFDATA" merge -o "$OUT" "$TMP"/raw/*.profraw
log "profile written: $OUT"
