#!/usr/bin/env bash
# sidekey against a real OAuth 2.0 server: panva/oidc-provider (package.json
# pins it) issues client-credentials tokens to `sidekey token` for each way
# of authenticating without a client secret that it implements:
# private_key_jwt with an EC P-256 key in SEC1 form (ES256), an RSA key
# (RS256 and, by signing_alg, PS256) and an Ed25519 key (EdDSA), and RFC
# 8705 tls_client_auth. A key the server does not know must be refused.
#
# Needs node >= 20 with npm (npm ci installs into node_modules here),
# openssl and cargo. Run from anywhere: bash interop/oidc-provider/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
(cd "$here" && npm ci --no-audit --no-fund --silent)
(cd "$repo" && cargo build --quiet)
sidekey=$repo/target/debug/sidekey

dir=$(mktemp -d)
provider=
cleanup() {
  if [ -n "$provider" ]; then kill "$provider" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

# A CA, the server's certificate for 127.0.0.1, sidekey's client certificate.
quiet() { "$@" >/dev/null 2>&1; }
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.pem -subj /CN=interop-ca -days 1
issue() { # name subject extensions
  quiet openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "$2"
  quiet openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out "$1.pem" -days 1 -extfile <(printf '%s\n' "$3")
}
issue server /CN=127.0.0.1 "subjectAltName=IP:127.0.0.1"
issue client /CN=sidekey-client "extendedKeyUsage=clientAuth"
# The clients' keys, in the forms openssl writes by default.
quiet openssl ecparam -name prime256v1 -genkey -noout -out ec.pem
quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem
quiet openssl genpkey -algorithm ed25519 -out ed.pem
quiet openssl ecparam -name prime256v1 -genkey -noout -out stranger.pem

DIR=$dir node "$here/provider.mjs" >port 2>provider.log &
provider=$!
for _ in $(seq 50); do [ -s port ] && break; sleep 0.1; done
port=$(head -n1 port)
token_url="https://127.0.0.1:$port/token"

credential() { # name client_id lines…; the client id is read from CLIENT_ID_<name>
  local name=$1 id=$2
  shift 2
  export "CLIENT_ID_$name=$id"
  printf '\n[credentials.%s]\ntype = "oauth2"\ntoken_url = "%s"\nclient_id = { env = "CLIENT_ID_%s" }\n' \
    "$name" "$token_url" "$name"
  printf '%s\n' "$@"
}
{
  printf '[tls]\nca_file = "%s/ca.pem"\n' "$dir"
  credential es256 jwt-es256 'client_auth = "private_key_jwt"' "private_key = { file = \"$dir/ec.pem\" }" 'key_id = "k1"'
  credential rs256 jwt-rs256 'client_auth = "private_key_jwt"' "private_key = { file = \"$dir/rsa.pem\" }"
  credential ps256 jwt-ps256 'client_auth = "private_key_jwt"' "private_key = { file = \"$dir/rsa.pem\" }" 'signing_alg = "PS256"'
  credential eddsa jwt-eddsa 'client_auth = "private_key_jwt"' "private_key = { file = \"$dir/ed.pem\" }"
  credential mtls mtls 'client_auth = "tls_client_auth"' "client_cert = \"$dir/client.pem\"" "client_key = { file = \"$dir/client.key\" }"
  credential stranger jwt-es256 'client_auth = "private_key_jwt"' "private_key = { file = \"$dir/stranger.pem\" }"
  printf '\n[[routes]]\nlisten = "127.0.0.1:0"\nupstream = "https://api.example.com"\ncredential = "es256"\n'
} >sidekey.toml # a group, not a subshell: the exports stay

"$sidekey" check --config sidekey.toml >/dev/null 2>&1 || "$sidekey" check --config sidekey.toml
failed=0
for name in es256 rs256 ps256 eddsa mtls; do
  if out=$("$sidekey" token --config sidekey.toml "$name" 2>>sidekey.log) \
    && [[ $out == *"type oauth2, expires in"* ]]; then
    echo "ok   $name: $out"
  else
    echo "FAIL $name: $out"; failed=1
  fi
done
if out=$("$sidekey" token --config sidekey.toml stranger 2>&1 >/dev/null); then
  echo "FAIL stranger: a key the server does not know got a token"; failed=1
elif [[ $out == *invalid_client* ]]; then
  echo "ok   stranger refused: ${out##*: }"
else
  echo "FAIL stranger: $out"; failed=1
fi
if [ "$failed" != 0 ]; then
  echo "--- sidekey log"; cat sidekey.log
  echo "--- oidc-provider log"; cat provider.log
fi
exit "$failed"
