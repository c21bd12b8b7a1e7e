//! `[[routes]]`: where the app's requests go. Owns their type and defaults
//! (name, `path_prefix`, the connect/request/body timeouts) and the
//! upstream as written (`upstream` or `inbenta_api`), which `rules`
//! resolves against the credentials. A route's `tls` and `upstream_tls`
//! tables are [`crate::tls`]'s, `[forward_proxy]` is
//! [`crate::proxy::settings`]'.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::value::{BaseUrl, Headers, Listen, NonEmpty, Prefix, Timeout};
use super::value::{secs, via, via_some};
use crate::tls::{ListenerTls, UpstreamTls};

/// `[[routes]]`: where the app's requests go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RouteConfig {
    /// `name`: label for metrics and logs (default `LISTEN` + `PATH_PREFIX`).
    #[serde(default, deserialize_with = "via::<_, NonEmpty, _>")]
    pub name: String,
    /// `listen`.
    #[serde(deserialize_with = "via::<_, Listen, _>")]
    pub listen: SocketAddr,
    /// `upstream` or `inbenta_api`.
    #[serde(skip, default = "no_upstream")]
    pub upstream: Upstream,
    /// `upstream` as written, moved into [`Self::upstream`] by the loader.
    #[serde(
        rename = "upstream",
        default,
        deserialize_with = "via_some::<_, BaseUrl, _>"
    )]
    pub(super) url: Option<Uri>,
    /// `inbenta_api` as written, moved into [`Self::upstream`] by the loader.
    #[serde(default, deserialize_with = "via_some::<_, NonEmpty, _>")]
    pub(super) inbenta_api: Option<String>,
    /// `credential`: the name of a `[credentials.NAME]` table.
    pub credential: String,
    /// `path_prefix` (default `/`), always starting with `/`.
    #[serde(default = "root", deserialize_with = "via::<_, Prefix, _>")]
    pub path_prefix: String,
    /// `strip_prefix` (default false).
    #[serde(default)]
    pub strip_prefix: bool,
    /// `headers`: static headers for this route.
    #[serde(default, deserialize_with = "via::<_, Headers, _>")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `connect_timeout` (default 5s).
    #[serde(default = "secs::<5>", deserialize_with = "via::<_, Timeout, _>")]
    pub connect_timeout: Duration,
    /// `request_timeout` (default 60s): until the upstream's response head arrives.
    #[serde(default = "secs::<60>", deserialize_with = "via::<_, Timeout, _>")]
    pub request_timeout: Duration,
    /// `body_timeout` (default 60s): longest pause between two pieces of the app's request
    /// body or the upstream's response body (nginx's `client_body_timeout`, `proxy_read_timeout`).
    #[serde(default = "secs::<60>", deserialize_with = "via::<_, Timeout, _>")]
    pub body_timeout: Duration,
    /// `tls`: serve HTTPS on this listener.
    pub tls: Option<ListenerTls>,
    /// `upstream_tls`: client certificate / server name for the upstream.
    pub upstream_tls: Option<UpstreamTls>,
    /// `allow_insecure_http`: permit an `http://` upstream.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// `allow_non_loopback`: permit a listen address outside loopback.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// Where a route forwards to.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// `upstream = "https://host[:port][/base]"`.
    Url(Uri),
    /// `inbenta_api = "chatbot"`: base URL from the credential's latest `apis` map.
    InbentaApi(String),
}

fn no_upstream() -> Upstream {
    Upstream::InbentaApi(String::new())
}

fn root() -> String {
    "/".to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::parse;
    use crate::host::ForwardHost;
    use crate::secret::MapEnv;

    /// A config whose `[forward_proxy]` has `hosts` on line 9.
    fn with_hosts(hosts: &str) -> String {
        format!(
            "[credentials.a]\ntype = \"static\"\ntoken = \"t\"\n\n[credentials.b]\ntype = \"static\"\ntoken = \"u\"\n[forward_proxy]\nhosts = {{ {hosts} }}\nlisten = \"127.0.0.1:3128\"\n"
        )
    }

    fn parse_hosts(hosts: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let env = Arc::new(MapEnv::default());
        parse(&with_hosts(hosts), Path::new("fp.toml"), env).map_err(|mut e| e.0.remove(0))
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
