#!/usr/bin/env bash
# The optimized build of sidekey: what ships (deploy/Dockerfile) and what
# bench/run.sh measures. See bench/README.md ("Optimized build").
#
#   bash bench/optimize.sh [OUT]      # default target/optimized/sidekey
#
# 1. bench/pgo.sh records a profile from an instrumented build under load;
# 2. the dist build uses it (-Cprofile-use), linked with --emit-relocs and
#    left unstripped: BOLT needs the relocations and the symbols;
# 3. llvm-bolt instruments that binary, the same load runs through it, and
#    llvm-bolt lays its code out from what it recorded: the code a request
#    runs packed together, cold code and rarely taken branches apart;
# 4. the result is stripped to OUT.
# Needs what bench/pgo.sh needs, plus llvm-bolt and merge-fdata (Debian:
# bolt-19; LLVM_BOLT and MERGE_FDATA name others). BOLT_SECONDS (default 4)
# is the length of each load run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=fixtures.sh
source "$ROOT/bench/fixtures.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR = /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
OUT=${1:-$TARGET_DIR/optimized/sidekey}
[[ $OUT = /* ]] || OUT=$PWD/$OUT
SECONDS_EACH=${BOLT_SECONDS:-4}

log() { printf '[optimize %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# The newest of llvm-bolt / llvm-bolt-NN on PATH (Debian names them by version).
newest() { compgen -c "$1" | grep -E "^$1(-[0-9]+)?\$" | sort -t- -k"$2" -n | tail -1; }
LLVM_BOLT=${LLVM_BOLT:-$(newest llvm-bolt 3)}
MERGE_FDATA=${MERGE_FDATA:-$(newest merge-fdata 3)}
for tool in cargo strip "$LLVM_BOLT" "$MERGE_FDATA"; do
    if [[ -z $tool ]] || ! command -v "$tool" >/dev/null 2>&1; then
        die "${tool:-llvm-bolt or merge-fdata} not found (Debian: apt-get install bolt-19)"
    fi
done
# Called through Debian's /usr/bin/llvm-bolt-NN link, llvm-bolt looks for its
# instrumentation runtime beside the link instead of in its own lib directory.
LLVM_BOLT=$(readlink -f "$(command -v "$LLVM_BOLT")")

# BOLT needs the symbols: the dist profile is built unstripped (the output is
# stripped at the end). The instrumented build of bench/pgo.sh too: a
# profile's settings are part of every symbol's name, by which a PGO profile
# is matched to the code, so a profile recorded from a stripped build would
# match nothing here (measured: the build then runs as many instructions per
# request as one without a profile).
export CARGO_PROFILE_DIST_STRIP=false

TMP=$(mktemp -d /tmp/sidekey-optimize.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

PROFILE=$TARGET_DIR/pgo/sidekey.profdata
bash "$ROOT/bench/pgo.sh" "$PROFILE"

log "cargo build --profile dist, profile-guided, with relocations for BOLT"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE -Clink-arg=-Wl,--emit-relocs" \
    cargo build --quiet --locked --profile dist --bin sidekey)
cp "$TARGET_DIR/dist/sidekey" "$TMP/sidekey.pgo"

log "$LLVM_BOLT: instrumenting"
"$LLVM_BOLT" "$TMP/sidekey.pgo" -instrument -o "$TMP/sidekey.instrumented" \
    --instrumentation-file="$TMP/bolt/sidekey.fdata" --instrumentation-file-append-pid \
    >"$TMP/bolt-instrument.log" 2>&1 || die "llvm-bolt -instrument failed: $(tail -3 "$TMP/bolt-instrument.log")"
mkdir -p "$TMP/bolt" "$TMP/run"
log "training: GET on 64 and 1 connections, and POSTs, to each upstream (${SECONDS_EACH}s per run)"
(umask 077 && sidekey_training_run "$TMP/run" "$TMP/sidekey.instrumented" "$SECONDS_EACH") ||
    die "the training run failed"
compgen -G "$TMP/bolt/*.fdata" >/dev/null || die "the instrumented run wrote no profile"
"$MERGE_FDATA" "$TMP"/bolt/*.fdata >"$TMP/sidekey.fdata" 2>"$TMP/merge.log" ||
    die "merge-fdata failed: $(tail -3 "$TMP/merge.log")"

log "$LLVM_BOLT: laying the code out"
"$LLVM_BOLT" "$TMP/sidekey.pgo" -o "$TMP/sidekey.bolt" -data="$TMP/sidekey.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -icf=1 -use-gnu-stack >"$TMP/bolt.log" 2>&1 || die "llvm-bolt failed: $(tail -3 "$TMP/bolt.log")"
strip "$TMP/sidekey.bolt"
install -D -m 0755 "$TMP/sidekey.bolt" "$OUT"
log "optimized binary written: $OUT"
