//! Routes and the forward proxy: `[[routes]]` and `[forward_proxy]` into
//! [`RouteConfig`] and [`ForwardProxyConfig`]. Owns the per-route checks
//! (credential reference, upstream or `inbenta_api`, path prefix, listener
//! and upstream TLS, name), the conflicts between routes (same listener and
//! prefix, disagreeing `tls`, duplicate name), the forward proxy's host
//! table, and the connect/request/body timeout defaults both share.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Cx, Result, flag};
use crate::config::load::{key_segment, line_of};
use crate::config::raw::{RawForwardProxy, RawRoute};
use crate::config::{
    CredentialConfig, CredentialKind, ForwardHost, ForwardProxyConfig, ListenerTls, RouteConfig,
    Upstream, UpstreamTls,
};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause within a body. A live sender never goes silent this long
/// mid-body (servers that stream slowly send something, e.g. SSE comments,
/// well within it), while a peer that stalls is let go within a minute;
/// the same as nginx's `client_body_timeout` and `proxy_read_timeout`.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Spans of a route that later routes may be compared against.
pub(super) struct RouteSpans {
    pub(super) header: Range<usize>,
    pub(super) listen: Range<usize>,
    pub(super) path_prefix: Option<Range<usize>>,
    pub(super) tls: Option<Range<usize>>,
    pub(super) name: Option<Range<usize>>,
}

impl Cx<'_> {
    pub(super) fn route(
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
            body_timeout: self.positive_duration(
                &key("body_timeout"),
                &raw.body_timeout,
                DEFAULT_BODY_TIMEOUT,
            )?,
            tls,
            upstream_tls,
            allow_insecure_http,
            allow_non_loopback,
        })
    }

    /// A route against the routes before it: same listener and prefix, a
    /// listener whose `tls` disagrees, or a name already used.
    pub(super) fn route_conflicts(
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

    pub(super) fn forward_proxy(
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
            let name = ForwardHost::parse(host.get_ref()).map_err(|why| {
                self.error(&key, &host.span(), format!("`{}`: {why}", host.get_ref()))
            })?;
            if !credentials.contains_key(credential.get_ref()) {
                return Err(self.error(
                    &key,
                    &credential.span(),
                    format!("no credential named `{}`", credential.get_ref()),
                ));
            }
            if let Some(other) = hosts.keys().find(|other: &&ForwardHost| {
                other.host == name.host && other.request_port() == name.request_port()
            }) {
                return Err(self.error(
                    &key,
                    &host.span(),
                    format!(
                        "`{}` names the same host and port as `{other}` (host names ignore \
                         case; a key without a port means port 80)",
                        host.get_ref()
                    ),
                ));
            }
            hosts.insert(name, credential.get_ref().clone());
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
            body_timeout: self.positive_duration(
                "forward_proxy.body_timeout",
                &raw.body_timeout,
                DEFAULT_BODY_TIMEOUT,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::secret::MapEnv;
    use crate::config::{ForwardHost, parse};

    /// A config whose `[forward_proxy]` has `hosts` on line 9.
    fn with_hosts(hosts: &str) -> String {
        format!(
            "[credentials.a]\ntype = \"static\"\ntoken = \"t\"\n\n[credentials.b]\ntype = \"static\"\ntoken = \"u\"\n[forward_proxy]\nhosts = {{ {hosts} }}\nlisten = \"127.0.0.1:3128\"\n"
        )
    }

    fn parse_hosts(hosts: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        parse(
            &with_hosts(hosts),
            Path::new("fp.toml"),
            Arc::new(MapEnv::default()),
        )
    }

    #[test]
    fn hosts_keys_are_resolved_to_host_and_port() {
        let config = parse_hosts(
            r#""API.example.com" = "a", "api.example.com:8443" = "b", "[::1]:9000" = "a""#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let hosts = &config.forward_proxy.unwrap().hosts;
        let key = |text: &str| ForwardHost::parse(text).unwrap();
        assert_eq!(hosts[&key("api.example.com")], "a");
        assert_eq!(hosts[&key("api.example.com:8443")], "b");
        assert_eq!(hosts[&key("[0::1]:9000")], "a");
    }

    #[test]
    fn check_names_file_line_and_key_of_a_host_that_can_never_match() {
        for (hosts, key, part) in [
            (
                r#""*.example.com" = "a""#,
                r#"forward_proxy.hosts."*.example.com""#,
                "wildcards",
            ),
            (
                r#""[::1" = "a""#,
                r#"forward_proxy.hosts."[::1""#,
                "malformed IPv6",
            ),
            (r#""::1" = "a""#, r#"forward_proxy.hosts."::1""#, "brackets"),
            (
                r#""api.example:https" = "a""#,
                r#"forward_proxy.hosts."api.example:https""#,
                "not a port",
            ),
            (
                r#""api.example:0" = "a""#,
                r#"forward_proxy.hosts."api.example:0""#,
                "not a port",
            ),
            (
                r#""me@api.example" = "a""#,
                r#"forward_proxy.hosts."me@api.example""#,
                "user information",
            ),
            (
                r#""api.example/v1" = "a""#,
                r#"forward_proxy.hosts."api.example/v1""#,
                "remove the path",
            ),
            (
                r#""api.example" = "a", "API.example:80" = "b""#,
                r#"forward_proxy.hosts."api.example""#,
                "same host and port as `api.example:80`",
            ),
        ] {
            let e = parse_hosts(hosts).expect_err(hosts);
            assert_eq!(e.path, Path::new("fp.toml"));
            assert_eq!((e.line, e.key.as_str()), (Some(9), key), "{e}");
            assert!(e.message.contains(part), "{hosts}: {e}");
        }
    }
}
