//! From the file as written ([`RawConfig`]) to the typed [`Config`]: defaults,
//! and every rule that serde alone cannot express (one of two keys, keys
//! valid for one credential type only, https, loopback listeners, routes
//! that collide). Each refusal names the line and dotted key.

mod credential;
mod limits;
mod route;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use toml::Spanned;

use self::route::RouteSpans;
use super::duration::parse_duration;
use super::load::{ConfigError, key_segment, line_of};
use super::raw::{RawAdmin, RawConfig, RawLog, RawSecret, RawTls, Str, StrMap};
use super::{
    AdminConfig, Config, ConnLimits, EnvSource, LogConfig, LogFormat, RouteConfig, SecretRef,
    TlsConfig,
};

const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

type Result<T> = std::result::Result<T, ConfigError>;

/// Turn the file as written into a [`Config`], or name the first problem.
pub(crate) fn build(
    raw: RawConfig,
    text: &str,
    path: &Path,
    env: Arc<dyn EnvSource>,
) -> Result<Config> {
    let mut cx = Cx {
        text,
        path,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        key_lines: BTreeMap::new(),
    };
    let shutdown_grace = cx.duration(
        "shutdown_grace",
        &raw.shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE,
    )?;
    let limits = cx.limits(&raw)?;
    let admin = raw.admin.map(|admin| cx.admin(admin)).transpose()?;
    let log = cx.log(raw.log)?;
    let tls = cx.tls(raw.tls)?;
    let mut credentials = BTreeMap::new();
    for (name, credential) in raw.credentials {
        let name = name.into_inner();
        let config = cx.credential(&name, credential)?;
        credentials.insert(name, config);
    }
    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut route_spans = Vec::new();
    for (index, route) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{index}]");
        let header = route.span();
        let route = route.into_inner();
        let spans = RouteSpans {
            header: header.clone(),
            listen: route.listen.span(),
            path_prefix: route.path_prefix.as_ref().map(Spanned::span),
            tls: route.tls.as_ref().map(Spanned::span),
            name: route.name.as_ref().map(Spanned::span),
        };
        let config = cx.route(&key, header, route, &credentials)?;
        cx.route_conflicts(&key, &config, &spans, &routes, &route_spans)?;
        routes.push(config);
        route_spans.push(spans);
    }
    let forward_proxy = raw
        .forward_proxy
        .map(|proxy| cx.forward_proxy(proxy, &credentials))
        .transpose()?;
    let config = Config {
        path: path.to_path_buf(),
        shutdown_grace,
        limits,
        admin,
        log,
        tls,
        credentials,
        routes,
        forward_proxy,
        env,
        key_lines: Arc::new(cx.key_lines),
    };
    check_shared_addresses(&config)?;
    Ok(config)
}

/// The validation context: the text (for lines), the file and its directory
/// (for relative paths), and the lines of keys `check_secrets` reports on.
struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
    dir: PathBuf,
    key_lines: BTreeMap<String, usize>,
}

impl Cx<'_> {
    fn error(&self, key: &str, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line_of(self.text, span.start)),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn remember(&mut self, key: &str, span: &Range<usize>) {
        self.key_lines
            .insert(key.to_owned(), line_of(self.text, span.start));
    }

    fn duration(&self, key: &str, value: &Option<Str>, default: Duration) -> Result<Duration> {
        Ok(self.opt_duration(key, value)?.unwrap_or(default))
    }

    fn opt_duration(&self, key: &str, value: &Option<Str>) -> Result<Option<Duration>> {
        value
            .as_ref()
            .map(|value| {
                parse_duration(value.get_ref()).map_err(|e| self.error(key, &value.span(), e))
            })
            .transpose()
    }

    /// A duration that must be longer than zero (timeouts, TTLs).
    fn positive_duration(
        &self,
        key: &str,
        value: &Option<Str>,
        default: Duration,
    ) -> Result<Duration> {
        let duration = self.duration(key, value, default)?;
        match value {
            Some(value) if duration.is_zero() => {
                Err(self.error(key, &value.span(), "must be longer than zero"))
            }
            _ => Ok(duration),
        }
    }

    fn listen(
        &self,
        key: &str,
        value: &Str,
        allow_non_loopback: bool,
        table: &str,
    ) -> Result<SocketAddr> {
        let addr = SocketAddr::from_str(value.get_ref()).map_err(|_| {
            self.error(
                key,
                &value.span(),
                format!(
                    "`{}` is not an IP:PORT address such as \"127.0.0.1:8080\"",
                    value.get_ref()
                ),
            )
        })?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(self.error(
                key,
                &value.span(),
                if table == "[admin]" {
                    format!(
                        "{addr} is not a loopback address and would expose readiness and \
                         metrics beyond this host; set `allow_non_loopback = true` in {table} \
                         to permit it"
                    )
                } else {
                    format!(
                        "{addr} is not a loopback address and anyone who can reach it can \
                         spend the credential; set `allow_non_loopback = true` in {table} to \
                         permit it"
                    )
                },
            ));
        }
        Ok(addr)
    }

    /// A file path; relative paths resolve against the config file's directory.
    fn file(&mut self, key: &str, value: &Str) -> Result<PathBuf> {
        if value.get_ref().is_empty() {
            return Err(self.error(key, &value.span(), "the path is empty"));
        }
        self.remember(key, &value.span());
        Ok(self.dir.join(value.get_ref()))
    }

    fn secret(&mut self, key: &str, value: &Spanned<RawSecret>) -> Result<SecretRef> {
        let span = value.span();
        let secret = match value.get_ref() {
            RawSecret::Literal(text) => {
                if text.is_empty() {
                    return Err(self.error(key, &span, "the secret is empty"));
                }
                tracing::warn!(
                    file = %self.path.display(),
                    line = line_of(self.text, span.start),
                    key,
                    "secret written literally in the configuration; prefer \
                     {{ env = \"NAME\" }} or {{ file = \"PATH\" }}"
                );
                SecretRef::Literal(super::Secret::new(text.as_str()))
            }
            RawSecret::Table(table) => match (&table.env, &table.file) {
                (Some(name), None) if name.is_empty() => {
                    return Err(self.error(key, &span, "`env` names no variable"));
                }
                (Some(name), None) => SecretRef::Env(name.clone()),
                (None, Some(file)) if file.is_empty() => {
                    return Err(self.error(key, &span, "`file` names no file"));
                }
                (None, Some(file)) => SecretRef::File(self.dir.join(file)),
                _ => {
                    return Err(self.error(
                        key,
                        &span,
                        r#"a secret is { env = "NAME" } or { file = "PATH" }: set exactly one of `env` and `file`"#,
                    ));
                }
            },
        };
        self.remember(key, &span);
        Ok(secret)
    }

    fn headers(
        &self,
        key: &str,
        value: &Option<Spanned<StrMap>>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let mut headers = Vec::new();
        for (name, value) in value.iter().flat_map(|map| map.get_ref()) {
            let key = format!("{key}.{}", key_segment(name.get_ref()));
            let header = HeaderName::from_str(name.get_ref()).map_err(|_| {
                self.error(
                    &key,
                    &name.span(),
                    format!("`{}` is not a valid header name", name.get_ref()),
                )
            })?;
            let header_value = HeaderValue::from_str(value.get_ref()).map_err(|_| {
                self.error(
                    &key,
                    &value.span(),
                    "the value contains characters not allowed in a header",
                )
            })?;
            headers.push((header, header_value));
        }
        Ok(headers)
    }

    /// An absolute `https://` URL (or `http://` when allowed). For a `base`
    /// URL the query is refused and a trailing `/` removed from the path.
    fn url(
        &self,
        key: &str,
        value: &Str,
        (allow_insecure_http, table): (bool, String),
        base: bool,
    ) -> Result<Uri> {
        let text = value.get_ref();
        let fail = |message: String| self.error(key, &value.span(), message);
        let uri =
            Uri::from_str(text).map_err(|e| fail(format!("`{text}` is not a valid URL: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(fail(format!(
                "`{text}` is not an absolute URL such as \"https://api.example.com\""
            )));
        };
        if authority.host().is_empty() {
            return Err(fail(format!("`{text}` has no host")));
        }
        if authority.as_str().contains('@') {
            return Err(fail(
                "user information in the URL is not supported".to_owned(),
            ));
        }
        if text.contains('#') {
            return Err(fail("a fragment (`#…`) is not allowed here".to_owned()));
        }
        match scheme {
            "https" => {}
            "http" if allow_insecure_http => {}
            "http" => {
                return Err(fail(format!(
                    "`http://` sends credentials in clear text; use https:// or set \
                     `allow_insecure_http = true` in {table}"
                )));
            }
            other => return Err(fail(format!("unsupported scheme `{other}` (use https)"))),
        }
        if !base {
            return Ok(uri);
        }
        if uri.query().is_some() {
            return Err(fail(
                "a query (`?…`) is not allowed in a base URL".to_owned(),
            ));
        }
        let path = uri.path().trim_end_matches('/');
        Uri::from_str(&format!("{scheme}://{authority}{path}"))
            .map_err(|e| fail(format!("`{text}` is not a valid URL: {e}")))
    }

    /// One of a fixed set of words, or `default` when the key is absent.
    fn choice<T: Copy>(
        &self,
        key: &str,
        value: &Option<Str>,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T> {
        let Some(value) = value else {
            return Ok(default);
        };
        let found = options.iter().find(|(word, _)| word == value.get_ref());
        found.map(|(_, v)| *v).ok_or_else(|| {
            let words: Vec<String> = options.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            self.error(
                key,
                &value.span(),
                format!(
                    "unknown value `{}` (use {})",
                    value.get_ref(),
                    words.join(" or ")
                ),
            )
        })
    }

    fn status(&self, key: &str, status: &Spanned<i64>) -> Result<StatusCode> {
        u16::try_from(*status.get_ref())
            .ok()
            .filter(|code| (100..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| {
                self.error(
                    key,
                    &status.span(),
                    format!("{} is not an HTTP status code (100-599)", status.get_ref()),
                )
            })
    }

    fn admin(&mut self, admin: Spanned<RawAdmin>) -> Result<AdminConfig> {
        let admin = admin.into_inner();
        let allow_non_loopback = flag(&admin.allow_non_loopback);
        self.remember("admin.listen", &admin.listen.span());
        Ok(AdminConfig {
            listen: self.listen("admin.listen", &admin.listen, allow_non_loopback, "[admin]")?,
            allow_non_loopback,
            limits: ConnLimits::ADMIN,
        })
    }

    fn log(&self, log: Option<Spanned<RawLog>>) -> Result<LogConfig> {
        let log = log.map(Spanned::into_inner);
        let (level, format) = log.map(|l| (l.level, l.format)).unwrap_or_default();
        let level = match level {
            Some(level) => {
                tracing_subscriber::EnvFilter::try_new(level.get_ref()).map_err(|e| {
                    self.error("log.level", &level.span(), format!("not a log filter: {e}"))
                })?;
                level.into_inner()
            }
            None => "info".to_owned(),
        };
        let format = self.choice(
            "log.format",
            &format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        )?;
        Ok(LogConfig { level, format })
    }

    fn tls(&mut self, tls: Option<Spanned<RawTls>>) -> Result<TlsConfig> {
        let ca_file = match tls.and_then(|tls| tls.into_inner().ca_file) {
            Some(file) => Some(self.file("tls.ca_file", &file)?),
            None => None,
        };
        Ok(TlsConfig { ca_file })
    }
}

/// `[admin]` and `[forward_proxy]` need listeners of their own: refuse an
/// address a route (or the other one) already uses. Port 0 never collides.
fn check_shared_addresses(config: &Config) -> Result<()> {
    let mut taken: Vec<(SocketAddr, String)> = config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| (route.listen, format!("routes[{index}]")))
        .collect();
    let own = [
        config
            .forward_proxy
            .as_ref()
            .map(|p| (p.listen, "forward_proxy.listen")),
        config.admin.as_ref().map(|a| (a.listen, "admin.listen")),
    ];
    for (addr, key) in own.into_iter().flatten() {
        if addr.port() != 0
            && let Some((_, owner)) = taken.iter().find(|(other, _)| *other == addr)
        {
            return Err(ConfigError {
                path: config.path.clone(),
                line: config.key_lines.get(key).copied(),
                key: key.to_owned(),
                message: format!("{addr} is already the listen address of {owner}"),
            });
        }
        taken.push((addr, key.trim_end_matches(".listen").to_owned()));
    }
    Ok(())
}

fn flag(value: &Option<Spanned<bool>>) -> bool {
    value.as_ref().is_some_and(|v| *v.get_ref())
}
