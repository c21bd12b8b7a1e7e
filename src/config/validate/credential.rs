//! Credentials: `[credentials.NAME]` tables into [`CredentialConfig`]. Owns
//! the keys each credential type accepts and requires, the checks specific
//! to `inbenta`, `oauth2` and `static`, their defaults (token timeout, TTL,
//! Inbenta auth URL) and the `renew_on_status` list.

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use toml::Spanned;

use super::{Cx, Result, flag};
use crate::config::load::key_segment;
use crate::config::raw::{RawCredential, RawSecret};
use crate::config::{
    BodyFormat, ClientAuth, CredentialConfig, CredentialKind, InbentaConfig, InbentaKey,
    OAuth2Config, SecretRef, StaticConfig,
};

const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
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

impl Cx<'_> {
    pub(super) fn credential(
        &mut self,
        name: &str,
        raw: Spanned<RawCredential>,
    ) -> Result<CredentialConfig> {
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
}
