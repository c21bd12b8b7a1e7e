//! Test configurations built from the shapes the tests share, so a test
//! states only what is particular to it and its whole configuration (and
//! the environment its secret references read) stays in one expression:
//!
//! ```ignore
//! let proxy = TestConfig::new()
//!     .trusting(&pki)
//!     .with(static_token("api", "API_TOKEN"))
//!     .with(route(&upstream.url(), "api").line(r#"request_timeout = "300ms""#))
//!     .env("API_TOKEN", "tok-123")
//!     .start()
//!     .await;
//! ```
//!
//! Every table takes more `key = value` lines ([`Table::line`]); a key the
//! shape already set is replaced where it stands. A table whose URL is plain
//! `http://` (the test servers without TLS) gets `allow_insecure_http = true`.
//! Tests *about* the TOML text (errors, line numbers) keep literal strings.

use std::fmt;
use std::path::Path;

use sidekey::config::{Config, ConfigErrors};
use sidekey::preflight::Checked;
use sidekey::secret::MapEnv;
use sidekey::server::Serving;

use super::proxy::{
    TestProxy, checked_config, parse_config, start_proxy, start_proxy_adjusted, start_proxy_serving,
};
use super::tls::TestPki;

/// Quote `s` as a TOML basic string (for paths and URLs in config text).
pub fn toml_str(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::to_string(s).expect("string")
}

/// Quote a path as a TOML basic string.
pub fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// One TOML table: its header (`[admin]`, `[[routes]]`; empty for the
/// top-level keys) and its `key = value` lines in order.
#[derive(Clone)]
pub struct Table {
    header: String,
    /// (key, whole line)
    lines: Vec<(String, String)>,
}

impl Table {
    /// An empty table under `header`.
    pub fn new(header: &str) -> Table {
        Table {
            header: header.to_owned(),
            lines: Vec::new(),
        }
    }

    /// Add `key = value` lines (one, or several separated by newlines); a
    /// key the table already has is replaced where it stands.
    pub fn line(mut self, lines: &str) -> Table {
        self.add(lines);
        self
    }

    /// The table without `key`.
    pub fn without(mut self, key: &str) -> Table {
        self.lines.retain(|(k, _)| k != key);
        self
    }

    fn add(&mut self, lines: &str) {
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let key = line.split_once('=').map_or(line, |(key, _)| key).trim();
            match self.lines.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1 = line.to_owned(),
                None => self.lines.push((key.to_owned(), line.to_owned())),
            }
        }
    }

    /// `key = "url"`, and `allow_insecure_http = true` for a plain `http://` URL.
    fn url(self, key: &str, url: &str) -> Table {
        let table = self.line(&format!("{key} = {}", toml_str(url)));
        if url.starts_with("http://") {
            table.line("allow_insecure_http = true")
        } else {
            table
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.header.is_empty() {
            writeln!(f, "{}", self.header)?;
        }
        for (_, line) in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// `[credentials.NAME]` with `type = KIND`.
fn credential(name: &str, kind: &str) -> Table {
    Table::new(&format!("[credentials.{name}]")).line(&format!("type = {}", toml_str(kind)))
}

/// `[credentials.NAME]`, type `static`, the token read from `env_var`.
pub fn static_token(name: &str, env_var: &str) -> Table {
    credential(name, "static").line(&format!("token = {{ env = {} }}", toml_str(env_var)))
}

/// `[credentials.NAME]`, type `oauth2` against `token_url`, client id and
/// secret read from `CLIENT_ID` and `CLIENT_SECRET`.
pub fn oauth2(name: &str, token_url: &str) -> Table {
    credential(name, "oauth2")
        .url("token_url", token_url)
        .line(r#"client_id = { env = "CLIENT_ID" }"#)
        .line(r#"client_secret = { env = "CLIENT_SECRET" }"#)
}

/// `[credentials.NAME]`, type `inbenta` against `auth_url`, API key and
/// secret read from `INBENTA_API_KEY` and `INBENTA_SECRET`.
/// Credential `api`, a static token (`tok-123`), and one route with it to
/// `upstream`, started.
pub async fn static_route_proxy(upstream: &str) -> TestProxy {
    static_route(upstream).start().await
}

/// Credential `api`, a static token (`tok-123`), and one route with it to
/// `upstream`: add to it (`.trusting(&pki)`, lines), then start it.
pub fn static_route(upstream: &str) -> TestConfig {
    TestConfig::new()
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api"))
        .env("API_TOKEN", "tok-123")
}

/// Credential `api` of type oauth2 against `token_url` (client `client`,
/// secret `s3cr3t`) and one route with it to `upstream`, started; it has
/// its first token (the proxy answers 503 until then).
pub async fn oauth_route_proxy(token_url: &str, upstream: &str) -> TestProxy {
    let proxy = TestConfig::new()
        .with(oauth2("api", token_url))
        .with(route(upstream, "api"))
        .env("CLIENT_ID", "client")
        .env("CLIENT_SECRET", "s3cr3t")
        .start()
        .await;
    proxy.wait_for_tokens().await;
    proxy
}

pub fn inbenta(name: &str, auth_url: &str) -> Table {
    credential(name, "inbenta")
        .url("auth_url", auth_url)
        .line(r#"api_key = { env = "INBENTA_API_KEY" }"#)
        .line(r#"secret = { env = "INBENTA_SECRET" }"#)
}

/// `[[routes]]` on 127.0.0.1:0 to `upstream` with `credential`.
pub fn route(upstream: &str, credential: &str) -> Table {
    Table::new("[[routes]]")
        .line(r#"listen = "127.0.0.1:0""#)
        .url("upstream", upstream)
        .line(&format!("credential = {}", toml_str(credential)))
}

/// [`route`] serving the app-side `prefix` (`path_prefix`), which is taken
/// off before the request goes to `upstream` (`strip_prefix = true`).
pub fn stripped_route(upstream: &str, credential: &str, prefix: &str) -> Table {
    route(upstream, credential)
        .line(&format!("path_prefix = {}", toml_str(prefix)))
        .line("strip_prefix = true")
}

/// `[[routes]]` on 127.0.0.1:0 to the Inbenta product API `api` (found in
/// the credential's `apis` map) with `credential`.
pub fn inbenta_route(api: &str, credential: &str) -> Table {
    Table::new("[[routes]]")
        .line(r#"listen = "127.0.0.1:0""#)
        .line(&format!("inbenta_api = {}", toml_str(api)))
        .line(&format!("credential = {}", toml_str(credential)))
}

/// `[forward_proxy]` on 127.0.0.1:0 with `hosts` (host → credential).
pub fn forward_proxy(hosts: &[(&str, &str)]) -> Table {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|(host, credential)| format!("{} = {}", toml_str(host), toml_str(credential)))
        .collect();
    Table::new("[forward_proxy]")
        .line(r#"listen = "127.0.0.1:0""#)
        .line(&format!("hosts = {{ {} }}", hosts.join(", ")))
}

/// A route's `tls = { cert, key }` line: it listens with HTTPS, presenting
/// `pki`'s server certificate.
pub fn listen_tls(pki: &TestPki) -> String {
    format!(
        "tls = {{ cert = {}, key = {} }}",
        toml_path(pki.server_cert_path()),
        toml_path(pki.server_key_path())
    )
}

/// A whole configuration and the environment its secret references read.
#[derive(Clone)]
pub struct TestConfig {
    top: Table,
    tables: Vec<Table>,
    env: Vec<(String, String)>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// Nothing yet.
    pub fn new() -> TestConfig {
        TestConfig {
            top: Table::new(""),
            tables: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Top-level keys (`max_connections = 2`).
    pub fn top(mut self, lines: &str) -> TestConfig {
        self.top.add(lines);
        self
    }

    /// `[admin]` on 127.0.0.1:0.
    pub fn admin(self) -> TestConfig {
        self.line("[admin]", r#"listen = "127.0.0.1:0""#)
    }

    /// `[tls] ca_file`: upstreams and token endpoints signed by `pki` are trusted.
    pub fn trusting(self, pki: &TestPki) -> TestConfig {
        self.line(
            "[tls]",
            &format!("ca_file = {}", toml_path(pki.ca_pem_path())),
        )
    }

    /// `[log] format = "json"` (for `sidekey run` as a child process).
    pub fn json_log(self) -> TestConfig {
        self.line("[log]", r#"format = "json""#)
    }

    /// Add a table (after those added before: routes keep their order).
    pub fn with(mut self, table: Table) -> TestConfig {
        self.tables.push(table);
        self
    }

    /// Add lines to the last table under `header` (`"[[routes]]"`,
    /// `"[credentials.api]"`), or to a new one at the end.
    pub fn line(mut self, header: &str, lines: &str) -> TestConfig {
        match self.tables.iter_mut().rev().find(|t| t.header == header) {
            Some(table) => table.add(lines),
            None => self.tables.push(Table::new(header).line(lines)),
        }
        self
    }

    /// Set an environment variable for the secret references (replacing one
    /// set before).
    pub fn env(mut self, name: &str, value: &str) -> TestConfig {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        self.to_string()
    }

    /// The environment as sidekey reads it.
    pub fn map_env(&self) -> MapEnv {
        MapEnv(self.env.iter().cloned().collect())
    }

    /// Parse it (panics with the error and the text when refused).
    pub fn parse(&self) -> Config {
        parse_config(&self.text(), self.map_env())
            .unwrap_or_else(|e| panic!("config refused: {e}\n---\n{self}"))
    }

    /// Parse it and run the preflight checks, as `run` and a reload do.
    pub fn checked(&self) -> Result<Checked, ConfigErrors> {
        checked_config(&self.text(), self.map_env())
    }

    /// Start sidekey in-process with it (panics when refused).
    pub async fn start(&self) -> TestProxy {
        start_proxy(&self.text(), self.map_env()).await
    }

    /// [`TestConfig::start`] with the proxy listeners served on `workers`
    /// threads of their own (as `sidekey run` does) instead of the test's runtime.
    pub async fn start_on_workers(&self) -> TestProxy {
        start_proxy_serving(&self.text(), self.map_env(), |_| {}, Serving::Workers).await
    }

    /// [`TestConfig::start`], after `adjust` changed what the file cannot.
    pub async fn start_adjusted(&self, adjust: impl FnOnce(&mut Config)) -> TestProxy {
        start_proxy_adjusted(&self.text(), self.map_env(), adjust).await
    }
}

impl fmt::Display for TestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.top)?;
        for table in &self.tables {
            write!(f, "\n{table}")?;
        }
        Ok(())
    }
}
