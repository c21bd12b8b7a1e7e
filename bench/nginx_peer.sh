# The peer sidekey is compared with: nginx as a reverse proxy doing the same
# job (keep-alive upstream pool, the token set with proxy_set_header, TLS
# verified, nothing buffered). Sourced by run.sh (timed) and count.sh
# (counted under callgrind), so that both measure the same configuration.
#
#   nginx_peer_http UPSTREAM_PORT LISTEN_PORT TOKEN CA_FILE
# prints the `upstream` and `server` blocks for inside `http { }`.
nginx_peer_http() {
    cat <<EOF
    upstream api {
        server 127.0.0.1:$1;
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
            proxy_set_header Host 127.0.0.1:$1;
            proxy_set_header Authorization "Bearer $3";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $4;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
EOF
}
