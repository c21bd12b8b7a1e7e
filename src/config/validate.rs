//! From the file as written ([`RawConfig`]) to the typed [`Config`]: defaults,
//! and every rule that serde alone cannot express (one of two keys, keys
//! valid for one credential type only, https, loopback listeners, routes
//! that collide). Each refusal names the line and dotted key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use toml::Spanned;

use super::duration::parse_duration;
use super::load::{ConfigError, key_segment, line_of};
use super::raw::{
    RawAdmin, RawConfig, RawCredential, RawForwardProxy, RawLog, RawRoute, RawSecret, RawTls, Str,
    StrMap,
};
use super::{
    AdminConfig, BodyFormat, ClientAuth, Config, CredentialConfig, CredentialKind, EnvSource,
    ForwardProxyConfig, InbentaConfig, InbentaKey, ListenerTls, LogConfig, LogFormat, OAuth2Config,
    RouteConfig, SecretRef, StaticConfig, TlsConfig, Upstream, UpstreamTls,
};

const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_INBENTA_AUTH_URL: &str = "https://api.inbenta.io/v1";

const INBENTA_KEYS: &[&str] = &[
    "api_key",
    "secret",
    "domain_key",
    "origin",
    "oauth_token",
    "auth_url",
];
const OAUTH2_KEYS: &[&str] = &[
    "token_url",
    "client_id",
    "client_secret",
    "audience",
    "scope",
    "client_auth",
    "body",
    "default_ttl",
];
const STATIC_KEYS: &[&str] = &["token", "header", "scheme"];

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

/// What the per-type credential checks share.
struct Typed<'a> {
    /// `credentials.NAME`.
    base: &'a str,
    /// Span of the credential's table header, for missing keys.
    table: Range<usize>,
    allow_insecure_http: bool,
}

impl Typed<'_> {
    fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.base)
    }

    /// `allow_insecure_http` and where to set it, for [`Cx::url`].
    fn insecure(&self) -> (bool, String) {
        (self.allow_insecure_http, format!("[{}]", self.base))
    }
}

/// The keys a credential type cannot do without.
fn required(kind: &str) -> &'static [&'static str] {
    match kind {
        "inbenta" => &["api_key"],
        "oauth2" => &["token_url", "client_id", "client_secret"],
        _ => &["token"],
    }
}

/// Spans of a route that later routes may be compared against.
struct RouteSpans {
    header: Range<usize>,
    listen: Range<usize>,
    path_prefix: Option<Range<usize>>,
    tls: Option<Range<usize>>,
    name: Option<Range<usize>>,
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

    fn admin(&mut self, admin: Spanned<RawAdmin>) -> Result<AdminConfig> {
        let admin = admin.into_inner();
        let allow_non_loopback = flag(&admin.allow_non_loopback);
        self.remember("admin.listen", &admin.listen.span());
        Ok(AdminConfig {
            listen: self.listen("admin.listen", &admin.listen, allow_non_loopback, "[admin]")?,
            allow_non_loopback,
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

    fn credential(&mut self, name: &str, raw: Spanned<RawCredential>) -> Result<CredentialConfig> {
        let table = raw.span();
        let raw = raw.into_inner();
        let base = format!("credentials.{}", key_segment(name));
        let key = |field: &str| format!("{base}.{field}");
        let kind = raw.kind.get_ref().as_str();
        let allowed = match kind {
            "inbenta" => INBENTA_KEYS,
            "oauth2" => OAUTH2_KEYS,
            "static" => STATIC_KEYS,
            other => {
                return Err(self.error(
                    &key("type"),
                    &raw.kind.span(),
                    format!(
                        "unknown credential type `{other}` (use \"inbenta\", \"oauth2\" or \"static\")"
                    ),
                ));
            }
        };
        let typed_keys = raw.typed_keys();
        if let Some((field, span)) = typed_keys.iter().find(|(f, _)| !allowed.contains(f)) {
            return Err(self.error(
                &key(field),
                span,
                format!("key `{field}` is not valid for type {kind}"),
            ));
        }
        let present: Vec<&str> = typed_keys.iter().map(|(field, _)| *field).collect();
        if let Some(field) = required(kind).iter().find(|f| !present.contains(f)) {
            return Err(self.error(
                &key(field),
                &table,
                format!("missing key `{field}` (required for type {kind})"),
            ));
        }
        let typed = Typed {
            base: &base,
            table,
            allow_insecure_http: flag(&raw.allow_insecure_http),
        };
        let (kind, default_statuses) = match kind {
            "inbenta" => (
                CredentialKind::Inbenta(self.inbenta(&typed, &raw)?),
                &[StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN][..],
            ),
            "oauth2" => (
                CredentialKind::OAuth2(self.oauth2(&typed, &raw)?),
                &[StatusCode::UNAUTHORIZED][..],
            ),
            _ => (
                CredentialKind::Static(self.static_token(&typed, &raw)?),
                &[StatusCode::UNAUTHORIZED][..],
            ),
        };
        let renew_on_status = match &raw.renew_on_status {
            Some(list) => list
                .get_ref()
                .iter()
                .map(|status| self.status(&key("renew_on_status"), status))
                .collect::<Result<Vec<_>>>()?,
            None => default_statuses.to_vec(),
        };
        Ok(CredentialConfig {
            name: name.to_owned(),
            kind,
            refresh_before: self.opt_duration(&key("refresh_before"), &raw.refresh_before)?,
            headers: self.headers(&key("headers"), &raw.headers)?,
            renew_on_status,
            allow_insecure_http: typed.allow_insecure_http,
            timeout: self.positive_duration(
                &key("timeout"),
                &raw.timeout,
                DEFAULT_TOKEN_TIMEOUT,
            )?,
        })
    }

    /// `type = "inbenta"`; `api_key` is known to be present.
    fn inbenta(&mut self, typed: &Typed<'_>, raw: &RawCredential) -> Result<InbentaConfig> {
        let (flow, value) = match (&raw.secret, &raw.domain_key) {
            (Some(secret), None) => ("secret", secret),
            (None, Some(domain_key)) => ("domain_key", domain_key),
            (Some(_), Some(domain_key)) => {
                return Err(self.error(
                    &typed.key("domain_key"),
                    &domain_key.span(),
                    "set `secret` (API Secret flow) or `domain_key` (Domain Key flow), not both",
                ));
            }
            (None, None) => {
                return Err(self.error(
                    &typed.key("secret"),
                    &typed.table,
                    "missing key `secret` or `domain_key` (one is required for type inbenta)",
                ));
            }
        };
        let flow_ref = self.secret(&typed.key(flow), value)?;
        let key = match flow {
            "secret" => InbentaKey::Secret(flow_ref),
            _ => InbentaKey::DomainKey(flow_ref),
        };
        let origin = match &raw.origin {
            Some(origin) => {
                if flow == "secret" {
                    tracing::warn!(
                        key = %typed.key("origin"),
                        "`origin` is only sent with `domain_key`; it is ignored with `secret`"
                    );
                }
                let value = HeaderValue::from_str(origin.get_ref()).map_err(|_| {
                    self.error(
                        &typed.key("origin"),
                        &origin.span(),
                        "not a valid header value",
                    )
                })?;
                Some(value)
            }
            None => None,
        };
        let auth_url = match &raw.auth_url {
            Some(url) => self.url(&typed.key("auth_url"), url, typed.insecure(), true)?,
            None => Uri::from_static(DEFAULT_INBENTA_AUTH_URL),
        };
        let oauth_token = match &raw.oauth_token {
            Some(token) => Some(self.secret(&typed.key("oauth_token"), token)?),
            None => None,
        };
        Ok(InbentaConfig {
            api_key: self.required_secret(typed, "api_key", &raw.api_key)?,
            key,
            origin,
            oauth_token,
            auth_url,
        })
    }

    /// `type = "oauth2"`; `token_url`, `client_id` and `client_secret` are known to be present.
    fn oauth2(&mut self, typed: &Typed<'_>, raw: &RawCredential) -> Result<OAuth2Config> {
        let token_url = match &raw.token_url {
            Some(url) => self.url(&typed.key("token_url"), url, typed.insecure(), false)?,
            None => {
                return Err(self.error(
                    &typed.key("token_url"),
                    &typed.table,
                    "missing key `token_url`",
                ));
            }
        };
        Ok(OAuth2Config {
            token_url,
            client_id: self.required_secret(typed, "client_id", &raw.client_id)?,
            client_secret: self.required_secret(typed, "client_secret", &raw.client_secret)?,
            audience: raw.audience.as_ref().map(|v| v.get_ref().clone()),
            scope: raw.scope.as_ref().map(|v| v.get_ref().clone()),
            client_auth: self.choice(
                &typed.key("client_auth"),
                &raw.client_auth,
                &[("basic", ClientAuth::Basic), ("post", ClientAuth::Post)],
                ClientAuth::Basic,
            )?,
            body: self.choice(
                &typed.key("body"),
                &raw.body,
                &[("form", BodyFormat::Form), ("json", BodyFormat::Json)],
                BodyFormat::Form,
            )?,
            default_ttl: self.positive_duration(
                &typed.key("default_ttl"),
                &raw.default_ttl,
                DEFAULT_TTL,
            )?,
        })
    }

    /// `type = "static"`; `token` is known to be present.
    fn static_token(&mut self, typed: &Typed<'_>, raw: &RawCredential) -> Result<StaticConfig> {
        let header = match &raw.header {
            Some(header) => HeaderName::from_str(header.get_ref()).map_err(|_| {
                self.error(
                    &typed.key("header"),
                    &header.span(),
                    format!("`{}` is not a valid header name", header.get_ref()),
                )
            })?,
            None => http::header::AUTHORIZATION,
        };
        let scheme = match &raw.scheme {
            Some(scheme) => {
                let text = scheme.get_ref();
                if text
                    .chars()
                    .any(|c| c.is_whitespace() || !c.is_ascii_graphic())
                {
                    return Err(self.error(
                        &typed.key("scheme"),
                        &scheme.span(),
                        format!(
                            "`{text}` is not a valid authorization scheme \
                             (one word such as \"Bearer\", or \"\" for the raw value)"
                        ),
                    ));
                }
                text.clone()
            }
            None => "Bearer".to_owned(),
        };
        Ok(StaticConfig {
            token: self.required_secret(typed, "token", &raw.token)?,
            header,
            scheme,
        })
    }

    fn required_secret(
        &mut self,
        typed: &Typed<'_>,
        field: &str,
        value: &Option<Spanned<RawSecret>>,
    ) -> Result<SecretRef> {
        match value {
            Some(value) => self.secret(&typed.key(field), value),
            None => Err(self.error(
                &typed.key(field),
                &typed.table,
                format!("missing key `{field}`"),
            )),
        }
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

    fn route(
        &mut self,
        base: &str,
        header: Range<usize>,
        raw: RawRoute,
        credentials: &BTreeMap<String, CredentialConfig>,
    ) -> Result<RouteConfig> {
        let key = |field: &str| format!("{base}.{field}");
        let table = format!("this route ({base})");
        let allow_non_loopback = flag(&raw.allow_non_loopback);
        let allow_insecure_http = flag(&raw.allow_insecure_http);
        let listen = self.listen(&key("listen"), &raw.listen, allow_non_loopback, &table)?;
        let credential = credentials.get(raw.credential.get_ref()).ok_or_else(|| {
            let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
            self.error(
                &key("credential"),
                &raw.credential.span(),
                format!(
                    "no credential named `{}` (defined: {})",
                    raw.credential.get_ref(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?;
        let upstream = match (&raw.upstream, &raw.inbenta_api) {
            (Some(url), None) => Upstream::Url(self.url(
                &key("upstream"),
                url,
                (allow_insecure_http, table.clone()),
                true,
            )?),
            (None, Some(api)) => {
                if !matches!(credential.kind, CredentialKind::Inbenta(_)) {
                    return Err(self.error(
                        &key("inbenta_api"),
                        &api.span(),
                        format!(
                            "`inbenta_api` needs a credential of type inbenta; `{}` is not",
                            credential.name
                        ),
                    ));
                }
                if api.get_ref().is_empty() {
                    return Err(self.error(
                        &key("inbenta_api"),
                        &api.span(),
                        "names no API (e.g. \"chatbot\")",
                    ));
                }
                Upstream::InbentaApi(api.get_ref().clone())
            }
            (Some(_), Some(api)) => {
                return Err(self.error(
                    &key("inbenta_api"),
                    &api.span(),
                    "set `upstream` or `inbenta_api`, not both",
                ));
            }
            (None, None) => {
                return Err(self.error(
                    &key("upstream"),
                    &header,
                    "missing key `upstream` (or `inbenta_api`)",
                ));
            }
        };
        let path_prefix = match &raw.path_prefix {
            Some(prefix) => {
                let text = prefix.get_ref();
                if !text.starts_with('/') {
                    return Err(self.error(
                        &key("path_prefix"),
                        &prefix.span(),
                        format!("`{text}` must start with `/`"),
                    ));
                }
                if text.contains(['?', '#'])
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(self.error(
                        &key("path_prefix"),
                        &prefix.span(),
                        format!("`{text}` is not a URL path"),
                    ));
                }
                match text.trim_end_matches('/') {
                    "" => "/".to_owned(),
                    trimmed => trimmed.to_owned(),
                }
            }
            None => "/".to_owned(),
        };
        let tls = match &raw.tls {
            Some(tls) => Some(ListenerTls {
                cert: self.file(&key("tls.cert"), &tls.get_ref().cert)?,
                key: self.file(&key("tls.key"), &tls.get_ref().key)?,
            }),
            None => None,
        };
        let upstream_tls = match &raw.upstream_tls {
            Some(spanned) => {
                let up = spanned.get_ref();
                if up.client_cert.is_some() != up.client_key.is_some() {
                    return Err(self.error(
                        &key("upstream_tls"),
                        &spanned.span(),
                        "set both `client_cert` and `client_key`, or neither",
                    ));
                }
                if let Some(name) = &up.server_name
                    && rustls_pki_types::ServerName::try_from(name.get_ref().as_str()).is_err()
                {
                    return Err(self.error(
                        &key("upstream_tls.server_name"),
                        &name.span(),
                        format!("`{}` is not a DNS name or IP address", name.get_ref()),
                    ));
                }
                Some(UpstreamTls {
                    client_cert: up
                        .client_cert
                        .as_ref()
                        .map(|f| self.file(&key("upstream_tls.client_cert"), f))
                        .transpose()?,
                    client_key: up
                        .client_key
                        .as_ref()
                        .map(|f| self.file(&key("upstream_tls.client_key"), f))
                        .transpose()?,
                    server_name: up.server_name.as_ref().map(|n| n.get_ref().clone()),
                })
            }
            None => None,
        };
        let name = match raw.name {
            Some(name) if name.get_ref().is_empty() => {
                return Err(self.error(&key("name"), &name.span(), "the name is empty"));
            }
            Some(name) => name.into_inner(),
            None => format!("{listen}{path_prefix}"),
        };
        Ok(RouteConfig {
            name,
            listen,
            upstream,
            credential: raw.credential.into_inner(),
            path_prefix,
            strip_prefix: flag(&raw.strip_prefix),
            headers: self.headers(&key("headers"), &raw.headers)?,
            connect_timeout: self.positive_duration(
                &key("connect_timeout"),
                &raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            request_timeout: self.positive_duration(
                &key("request_timeout"),
                &raw.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            tls,
            upstream_tls,
            allow_insecure_http,
            allow_non_loopback,
        })
    }

    /// A route against the routes before it: same listener and prefix, a
    /// listener whose `tls` disagrees, or a name already used.
    fn route_conflicts(
        &self,
        base: &str,
        route: &RouteConfig,
        spans: &RouteSpans,
        earlier: &[RouteConfig],
        earlier_spans: &[RouteSpans],
    ) -> Result<()> {
        for (index, other) in earlier.iter().enumerate() {
            if other.listen != route.listen {
                continue;
            }
            if other.path_prefix == route.path_prefix {
                let (key, span) = match &spans.path_prefix {
                    Some(span) => (format!("{base}.path_prefix"), span.clone()),
                    None => (format!("{base}.listen"), spans.listen.clone()),
                };
                return Err(self.error(
                    &key,
                    &span,
                    format!(
                        "routes[{index}] already serves path_prefix `{}` on {}",
                        route.path_prefix, route.listen
                    ),
                ));
            }
            let same_tls = match (&other.tls, &route.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.cert == b.cert && a.key == b.key,
                _ => false,
            };
            if !same_tls {
                let span = spans.tls.clone().unwrap_or_else(|| spans.header.clone());
                return Err(self.error(
                    &format!("{base}.tls"),
                    &span,
                    format!(
                        "routes sharing the listen address {} must use the same `tls`; \
                         this one differs from routes[{index}]",
                        route.listen
                    ),
                ));
            }
        }
        for (index, (other, other_spans)) in earlier.iter().zip(earlier_spans).enumerate() {
            if other.name == route.name {
                let span = spans.name.clone().unwrap_or_else(|| spans.listen.clone());
                return Err(self.error(
                    &format!("{base}.name"),
                    &span,
                    format!(
                        "route name `{}` is already used by routes[{index}] (line {})",
                        route.name,
                        line_of(self.text, other_spans.header.start)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn forward_proxy(
        &mut self,
        raw: Spanned<RawForwardProxy>,
        credentials: &BTreeMap<String, CredentialConfig>,
    ) -> Result<ForwardProxyConfig> {
        let raw = raw.into_inner();
        let allow_non_loopback = flag(&raw.allow_non_loopback);
        self.remember("forward_proxy.listen", &raw.listen.span());
        let listen = self.listen(
            "forward_proxy.listen",
            &raw.listen,
            allow_non_loopback,
            "[forward_proxy]",
        )?;
        let mut hosts = BTreeMap::new();
        for (host, credential) in &raw.hosts {
            let key = format!("forward_proxy.hosts.{}", key_segment(host.get_ref()));
            let name = host.get_ref().to_ascii_lowercase();
            if name.is_empty()
                || name.contains(['/', '@', '?', '#'])
                || name.chars().any(char::is_whitespace)
            {
                return Err(self.error(
                    &key,
                    &host.span(),
                    format!(
                        "`{}` is not a host name such as \"api.example.com\"",
                        host.get_ref()
                    ),
                ));
            }
            if !credentials.contains_key(credential.get_ref()) {
                return Err(self.error(
                    &key,
                    &credential.span(),
                    format!("no credential named `{}`", credential.get_ref()),
                ));
            }
            if hosts.insert(name, credential.get_ref().clone()).is_some() {
                return Err(self.error(
                    &key,
                    &host.span(),
                    "this host is listed twice (host names ignore case)",
                ));
            }
        }
        Ok(ForwardProxyConfig {
            listen,
            hosts,
            allow_non_loopback,
            connect_timeout: self.positive_duration(
                "forward_proxy.connect_timeout",
                &raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            request_timeout: self.positive_duration(
                "forward_proxy.request_timeout",
                &raw.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
        })
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
