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
trap 'rm -rf "$TMP"' EXIT

log "cargo build --profile dist, instrumented (target dir $TARGET_DIR/pgo-gen)"
# The same flags every time (the run's own directory is LLVM_PROFILE_FILE
# below), so that a second run rebuilds only what changed.
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$TARGET_DIR/pgo-gen/profraw" \
    cargo build --quiet --locked --profile dist --bin sidekey --target-dir "$TARGET_DIR/pgo-gen")
# Build scripts ran instrumented too: only sidekey's own run counts.
rm -rf "$TARGET_DIR/pgo-gen/profraw"

umask 077
log "training: GET on 64 and 1 connections, and POSTs, to each upstream (${SECONDS_EACH}s per run)"
export LLVM_PROFILE_FILE="$TMP/raw/sidekey-%p-%m.profraw"
sidekey_training_run "$TMP" "$TARGET_DIR/pgo-gen/dist/sidekey" "$SECONDS_EACH" || die "the training run failed"
unset LLVM_PROFILE_FILE
compgen -G "$TMP/raw/*.profraw" >/dev/null || die "the instrumented run wrote no profile"

mkdir -p "$(dirname "$OUT")"
"$PROFDATA" merge -o "$OUT" "$TMP"/raw/*.profraw
log "profile written: $OUT"
