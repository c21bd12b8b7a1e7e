#!/usr/bin/env bash
# Check the admin status page (GET /) in a real headless browser while
# traffic flows and a token rotates, and take a screenshot of it.
#
#   bash bench/status_page.sh [SCREENSHOT.png]     # default: docs/status-page.png
#
# It starts `sidekey demo` (embedded token server with short-lived tokens,
# echo upstream, the proxy, an admin listener; all on 127.0.0.1), sends a
# steady trickle of requests through the proxy, then loads the status page
# twice in headless Chromium, far enough apart for a token renewal, and
# checks:
#   - both loads render the page (the browser's DOM, not just the bytes);
#   - the credential, its type, state and route are on it;
#   - what changes between loads changes: the token generation's renewal
#     (startup -> scheduled), the request count;
#   - no token appears in the DOM (the demo's tokens are `demo-token-N`).
# Then it saves a screenshot.
#
# Needs: chromium (`apt-get install -y chromium`), curl, a cargo toolchain
# (it runs `cargo build`; SIDEKEY_BIN=path skips that). Every process it
# starts is stopped at exit; the temporary directory is removed.
set -euo pipefail

cd "$(dirname "$0")/.."
out=${1:-docs/status-page.png}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$browser" ] || { echo "chromium not found (apt-get install -y chromium)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

if [ -z "${SIDEKEY_BIN:-}" ]; then
  cargo build --quiet
  SIDEKEY_BIN=${CARGO_TARGET_DIR:-target}/debug/sidekey
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$SIDEKEY_BIN" demo --listen 127.0.0.1:0 >"$work/demo.out" 2>"$work/demo.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q 'Ctrl-C stops' "$work/demo.out" 2>/dev/null && break
  sleep 0.1
done
proxy=$(sed -n 's/^  proxy *: \(http:[^ ]*\)$/\1/p' "$work/demo.out")
status=$(sed -n 's/^  \(http:.*\/\)$/\1/p' "$work/demo.out")
[ -n "$proxy" ] && [ -n "$status" ] || { echo "demo did not start:" >&2; cat "$work/demo.out" "$work/demo.log" >&2; exit 1; }
echo "demo: proxy $proxy, status page $status" >&2

# Traffic: a dozen requests a second (one curl each), carrying an app
# Authorization header that sidekey replaces.
(
  n=0
  while :; do
    curl -s -o /dev/null "$proxy/v1/items/$n" -H 'authorization: Bearer app-should-not-leak' || true
    n=$((n + 1))
    sleep 0.05
  done
) &
pids+=($!)

sandbox=()
[ "$(id -u)" = 0 ] && sandbox=(--no-sandbox)
chrome() {
  "$browser" --headless=new "${sandbox[@]}" --disable-gpu --hide-scrollbars \
    --user-data-dir="$work/profile" "$@" 2>>"$work/browser.log"
}

fail() { echo "FAIL: $*" >&2; exit 1; }

check_page() {
  local dom=$1
  grep -q '<h1>sidekey' "$dom" || fail "$dom: not the status page"
  grep -q '>demo<' "$dom" || fail "$dom: credential demo missing"
  grep -q 'oauth2' "$dom" || fail "$dom: credential type missing"
  grep -Eq 'class="s (ready|renewing)"' "$dom" || fail "$dom: credential not ready"
  grep -q '127.0.0.1:.*/</code>' "$dom" || fail "$dom: route missing"
  if grep -q 'demo-token-' "$dom"; then fail "$dom: a token is on the page"; fi
  if grep -q 'app-should-not-leak' "$dom"; then fail "$dom: a request header is on the page"; fi
}

sleep 3
chrome --dump-dom "$status" >"$work/first.html"
check_page "$work/first.html"
# The demo's tokens live 12 s and are renewed at about half their life.
sleep 8
chrome --dump-dom "$status" >"$work/second.html"
check_page "$work/second.html"

grep -q 'startup' "$work/first.html" || fail "first load: the first token's reason (startup) missing"
grep -q 'scheduled' "$work/second.html" || fail "second load: no scheduled renewal shown"
requests() { grep -o '<td class="n">[0-9]*</td></tr>' "$1" | head -1 | grep -o '[0-9]*'; }
first=$(requests "$work/first.html")
second=$(requests "$work/second.html")
[ -n "$first" ] && [ -n "$second" ] && [ "$second" -gt "$first" ] ||
  fail "request count did not grow between loads ($first -> $second)"
cmp -s "$work/first.html" "$work/second.html" && fail "the two loads are identical"
echo "ok: page renders, content changes between loads (requests $first -> $second, startup -> scheduled), no token on it" >&2

mkdir -p "$(dirname "$out")"
chrome --screenshot="$work/shot.png" --window-size=1360,480 "$status" >/dev/null
if command -v optipng >/dev/null; then optipng -quiet -o2 "$work/shot.png"; fi
cp "$work/shot.png" "$out"
echo "screenshot: $out ($(stat -c %s "$out") bytes)" >&2
