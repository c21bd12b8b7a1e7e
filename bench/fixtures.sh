# shellcheck shell=bash
# Pieces the bench scripts share: a throwaway PKI for loopback and the
# sidekey configuration they run (a static credential, routes to HTTPS
# upstream ports) and the upstream count.sh and pgo.sh run. Sourced by
# run.sh, count.sh and pgo.sh.
#
#   bench_pki DIR NAME     ca.pem/ca.key (CN "sidekey NAME CA") and leaf.pem/leaf.key
#                          for 127.0.0.1 and localhost, in DIR
#   bench_upstream_conf DIR H1_PORT H2_PORT TOKEN BODY [PLAIN_PORT]
#                          an nginx configuration (files under DIR/ngx): HTTPS with DIR's
#                          leaf, HTTP/1.1 on H1_PORT, ALPN h2 on H2_PORT, plain HTTP on
#                          PLAIN_PORT; any path answers 200 with BODY when the request
#                          carries "Bearer TOKEN", 401 otherwise
#   sidekey_common ADMIN_PORT CA_FILE TOKEN_ENV
#                          admin listener, warn logs, the CA, credential "bench"
#                          (static, its token from the environment variable TOKEN_ENV)
#   sidekey_route NAME LISTEN_PORT UPSTREAM_PORT [CREDENTIAL]
#                          one [[routes]] entry to https://127.0.0.1:UPSTREAM_PORT
#   sidekey_training_run DIR BIN SECONDS
#                          run BIN (a sidekey built to record a profile: PGO or BOLT)
#                          under the load a sidecar's day looks like, then stop it
#                          with SIGTERM so that it writes its profile; files in DIR

bench_pki() {
    # A CA and a leaf: a single self-signed CA:TRUE certificate cannot be
    # served as the leaf (rustls/webpki refuses a CA certificate as an
    # end-entity).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj "/CN=sidekey $2 CA" -keyout "$1/ca.key" -out "$1/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$1/leaf.key" -out "$1/leaf.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$1/leaf.ext"
    openssl x509 -req -in "$1/leaf.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" -CAcreateserial \
        -days 1 -extfile "$1/leaf.ext" -out "$1/leaf.pem" 2>/dev/null
}

bench_upstream_conf() {
    cat <<CONF
$([[ $EUID -eq 0 ]] && echo "user root;")
pid $1/ngx/upstream.pid;
error_log $1/ngx/error.log warn;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/ngx/body;
    proxy_temp_path $1/ngx/proxy;
    fastcgi_temp_path $1/ngx/fastcgi;
    uwsgi_temp_path $1/ngx/uwsgi;
    scgi_temp_path $1/ngx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    default_type application/json;
    server {
        listen 127.0.0.1:$2 ssl;
        listen 127.0.0.1:$3 ssl http2;
        ${6:+listen 127.0.0.1:$6;}
        ssl_certificate $1/leaf.pem;
        ssl_certificate_key $1/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            if (\$http_authorization != "Bearer $4") { return 401 '{"error":"unauthorized"}'; }
            return 200 '$5';
        }
    }
}
CONF
}

sidekey_common() {
    cat <<CONF
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$1"

[log]
level = "warn"

[tls]
ca_file = "$2"

[credentials.bench]
type = "static"
token = { env = "$3" }
CONF
}

sidekey_route() {
    cat <<CONF

[[routes]]
name = "$1"
listen = "127.0.0.1:$2"
upstream = "https://127.0.0.1:$3"
credential = "${4:-bench}"
CONF
}

sidekey_training_run() {
    local dir=$1 bin=$2 seconds=$3
    local procs=() port up_h1 up_h2 sk_h1 sk_h2 admin token body sk status=0
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 10000)); }
    up_h1=$(free_port) up_h2=$(free_port) sk_h1=$(free_port) sk_h2=$(free_port) admin=$(free_port)
    bench_pki "$dir" training
    token=$(openssl rand -hex 24)
    body=$(printf '{"ok":true,"pad":"%1000s"}' '' | tr ' ' x)
    head -c 262144 /dev/urandom >"$dir/upload.bin"
    mkdir -p "$dir/ngx"
    bench_upstream_conf "$dir" "$up_h1" "$up_h2" "$token" "$body" >"$dir/upstream.conf"
    nginx -p "$dir/ngx" -e "$dir/ngx/error.log" -c "$dir/upstream.conf" -g 'daemon off;' &
    procs+=($!)
    {
        sidekey_common "$admin" "$dir/ca.pem" SIDEKEY_TRAINING_TOKEN
        sidekey_route h1 "$sk_h1" "$up_h1"
        sidekey_route h2 "$sk_h2" "$up_h2"
    } >"$dir/sidekey.toml"
    SIDEKEY_TRAINING_TOKEN=$token "$bin" run --config "$dir/sidekey.toml" >"$dir/sidekey.log" 2>&1 &
    sk=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$admin/readyz" && break
        sleep 0.1
    done
    for port in "$sk_h1" "$sk_h2"; do
        [[ $(curl -sS --max-time 5 "http://127.0.0.1:$port/v1/ping") == "$body" ]] || {
            echo "training: a request through sidekey failed: $(tail -3 "$dir/sidekey.log")" >&2
            status=1
        }
    done
    if ((status == 0)); then
        for port in "$sk_h1" "$sk_h2"; do
            wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/v1/ping" >/dev/null
            wrk -t1 -c1 -d"$((seconds / 2 + 1))s" "http://127.0.0.1:$port/v1/ping" >/dev/null
            for _ in $(seq 20); do
                curl -sf -o /dev/null --max-time 5 -X POST -H 'content-type: application/octet-stream' \
                    --data-binary @"$dir/upload.bin" "http://127.0.0.1:$port/v1/upload" || status=1
            done
        done
        ((status == 0)) || echo "training: a POST through sidekey failed" >&2
    fi
    kill -TERM "$sk"
    wait "$sk" || {
        echo "training: sidekey did not exit cleanly: $(tail -3 "$dir/sidekey.log")" >&2
        status=1
    }
    kill -TERM "${procs[@]}" 2>/dev/null || true
    wait "${procs[@]}" 2>/dev/null || true
    return "$status"
}
