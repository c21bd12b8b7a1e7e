//! `sidekey demo`: everything on loopback, no network and no credentials.
//!
//! Starts an embedded OAuth 2.0 token server (client credentials, HTTP Basic
//! client authentication, 12-second tokens so rotation is visible), an echo
//! upstream that answers with the method, path and headers it received, and
//! the real proxy in front of both, configured through the same TOML parser
//! as `sidekey run`. Prints the `curl` line to try.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::info;

use crate::listeners::BindError;
use crate::secret::MapEnv;
use crate::server::{Handle, ServeError};
use crate::telemetry::settings::{LogConfig, LogFormat};

/// Lifetime of the demo's tokens, in seconds.
pub const DEMO_TOKEN_TTL_SECS: u64 = 12;
const DEMO_CLIENT_ID: &str = "demo-client";
const DEMO_CLIENT_SECRET: &str = "demo-secret:with/special chars";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A loopback listener could not be bound.
    #[error("cannot listen on {addr}: {source} (try `sidekey demo --listen 127.0.0.1:0`)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The generated configuration was refused (a bug).
    #[error("demo configuration")]
    Config(#[source] crate::config::ConfigErrors),
    /// The proxy could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The proxy.
    pub proxy: Handle,
    /// The embedded token server's address.
    pub token_server: SocketAddr,
    /// The echo upstream's address.
    pub upstream: SocketAddr,
    /// How many tokens the token server has issued.
    pub tokens_issued: Arc<AtomicU64>,
}

impl Demo {
    /// Where the app (curl) points.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .route_addr(0)
            .unwrap_or(([127, 0, 0, 1], 0).into())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })
}

/// Start the token server, the echo upstream and the proxy on `listen`.
pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let token_listener = bind(loopback).await?;
    let upstream_listener = bind(loopback).await?;
    let token_server = local(&token_listener, loopback)?;
    let upstream = local(&upstream_listener, loopback)?;
    let tokens_issued = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve_forever(token_listener, {
        let issued = tokens_issued.clone();
        move |request| token_endpoint(request, issued.clone())
    }));
    tokio::spawn(serve_forever(upstream_listener, echo));

    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[credentials.demo]
type = "oauth2"
token_url = "http://{token_server}/oauth/token"
client_id = {{ env = "DEMO_CLIENT_ID" }}
client_secret = {{ env = "DEMO_CLIENT_SECRET" }}
audience = "api.example.test"
allow_insecure_http = true          # loopback only: the demo has no certificates
headers = {{ "x-tenant" = "demo" }}

[[routes]]
listen = "{listen}"
upstream = "http://{upstream}/v1"
credential = "demo"
allow_insecure_http = true
headers = {{ "x-route" = "demo" }}
"#
    );
    let env = MapEnv(HashMap::from([
        ("DEMO_CLIENT_ID".to_owned(), DEMO_CLIENT_ID.to_owned()),
        (
            "DEMO_CLIENT_SECRET".to_owned(),
            DEMO_CLIENT_SECRET.to_owned(),
        ),
    ]));
    let config = crate::config::parse(&toml, Path::new("<demo>"), Arc::new(env))
        .and_then(crate::preflight::preflight)
        .map_err(DemoError::Config)?;
    // The proxy's own port is the one a user picks (and may find busy).
    let proxy = crate::server::serve(config)
        .await
        .map_err(|err| match err {
            ServeError::Bind(BindError { addr, source, .. }) => DemoError::Bind { addr, source },
            other => DemoError::Serve(other),
        })?;
    Ok(Demo {
        proxy,
        token_server,
        upstream,
        tokens_issued,
    })
}

fn local(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, DemoError> {
    listener
        .local_addr()
        .map_err(|source| DemoError::Bind { addr, source })
}

/// `sidekey demo`: start, print how to try it, run until Ctrl-C.
pub async fn run(listen: SocketAddr) -> Result<(), DemoError> {
    crate::telemetry::init(&LogConfig {
        level: "info".to_owned(),
        format: LogFormat::Text,
        access: false,
    });
    let demo = start(listen).await?;
    let proxy = demo.proxy_addr();
    let admin = demo
        .proxy
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!();
    println!(
        "sidekey demo is running (tokens live {DEMO_TOKEN_TTL_SECS}s and rotate before they expire)"
    );
    println!("  token server : http://{}/oauth/token", demo.token_server);
    println!("  echo upstream: http://{}/v1", demo.upstream);
    println!("  proxy        : http://{proxy}");
    println!();
    println!("Try (the app sends no credentials; the echo shows what the upstream received):");
    println!("  curl -s http://{proxy}/hello -H 'authorization: Bearer app-should-not-leak'");
    println!("Status page (reloads itself; watch the token rotate):");
    println!("  http://{admin}/");
    println!("Readiness and metrics:");
    println!(
        "  curl -s http://{admin}/readyz; curl -s http://{admin}/metrics | grep sidekey_token"
    );
    println!();
    println!("Ctrl-C stops.");
    let _ = tokio::signal::ctrl_c().await;
    info!("demo stopping");
    demo.proxy.shutdown().await;
    Ok(())
}

async fn serve_forever<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// RFC 6749 §4.4 token endpoint checking HTTP Basic client authentication.
async fn token_endpoint(
    request: Request<Incoming>,
    issued: Arc<AtomicU64>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/oauth/token" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        );
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(DEMO_CLIENT_ID),
            form_encode(DEMO_CLIENT_SECRET)
        ))
    );
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_request"}),
            );
        }
    };
    let grant_ok = form_urlencoded::parse(&body)
        .any(|(key, value)| key == "grant_type" && value == "client_credentials");
    if !authorized {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "invalid_client", "error_description": "Client authentication failed"}),
        );
    }
    if !grant_ok {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "unsupported_grant_type"}),
        );
    }
    let n = issued.fetch_add(1, Ordering::Relaxed) + 1;
    info!(token = n, "demo token server issued token #{n}");
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": format!("demo-token-{n}"),
            "token_type": "Bearer",
            "expires_in": DEMO_TOKEN_TTL_SECS,
        }),
    )
}

fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Echo upstream: the method, path, query and headers it received.
async fn echo(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            )
        })
        .collect();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body_len = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0);
    json(
        StatusCode::OK,
        serde_json::json!({
            "upstream": "sidekey demo echo",
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_len": body_len,
        }),
    )
}
