//! Reading a TOML file into [`Config`]: the types read themselves from the
//! parsed text (`serde_path_to_error` says at which key one failed), then
//! `rules` applies the rules between tables. Every error names the file, the
//! line and the key. Secrets and TLS files are read later, by `preflight`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::{ConfigError, ConfigErrors, Key};
use super::route::RouteConfig;
use super::source::Source;
use super::top::{Config, Text};
use super::value::{Dur, Timeout, bounded, secs, via, via_some};
use super::{cache, credential, rules};
use crate::limits::ConnLimits;
use crate::secret::EnvSource;
use crate::telemetry::settings::LogConfig;
use crate::tls::TlsConfig;

/// The top level as written: the connection limits are three keys here
/// (defaults: [`ConnLimits::PROXY`]); the tables read on their own are only
/// listed, so that one that cannot be read leaves the others readable.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    #[serde(default = "secs::<20>", deserialize_with = "via::<_, Dur, _>")]
    shutdown_grace: Duration,
    /// More than a sidecar's app opens; each costs memory and a descriptor.
    #[serde(deserialize_with = "bounded::<_, 1, 1_000_000>")]
    max_connections: Option<usize>,
    /// From a request line and a handful of headers to a size beyond which
    /// one connection alone could hold megabytes before a request is seen.
    #[serde(deserialize_with = "bounded::<_, 1024, 1_048_576>")]
    max_header_bytes: Option<usize>,
    #[serde(deserialize_with = "via_some::<_, Timeout, _>")]
    idle_timeout: Option<Duration>,
    /// Default: one serving thread per core the process may use.
    #[serde(deserialize_with = "bounded::<_, 1, 1024>")]
    workers: Option<usize>,
    log: LogConfig,
    tls: TlsConfig,
    admin: Option<IgnoredAny>,
    credentials: BTreeMap<String, IgnoredAny>,
    routes: Vec<IgnoredAny>,
    forward_proxy: Option<IgnoredAny>,
    cache: Option<IgnoredAny>,
}

/// Validate `text` as if read from `path`.
pub fn parse(text: &str, path: &Path, env: Arc<dyn EnvSource>) -> Result<Config, ConfigErrors> {
    valid(read_text(text, path, env))
}

/// A configuration as far as it could be read (`None` when the file could
/// not be read or parsed) and every error found in it, by line.
pub type Loaded = (Option<Config>, Vec<ConfigError>);

/// The file at `path` as far as it can be read, and every error in it.
pub fn read(path: &Path, env: Arc<dyn EnvSource>) -> Loaded {
    match crate::small_file::read_to_string(path) {
        Ok(text) => read_text(&text, path, env),
        Err(e) => {
            let message = format!("cannot read the configuration file: {e}");
            (None, vec![ConfigError::new(path, None, "", message)])
        }
    }
}

fn valid((config, errors): Loaded) -> Result<Config, ConfigErrors> {
    config
        .filter(|_| errors.is_empty())
        .ok_or(ConfigErrors(errors))
}

fn read_text(text: &str, path: &Path, env: Arc<dyn EnvSource>) -> Loaded {
    let src = match Source::parse(path, text) {
        Ok(src) => src,
        Err(error) => return (None, vec![error]),
    };
    let Some(file) = src.read::<File>(&Key::default()) else {
        return (None, src.errors.take());
    };
    let names = file.credentials.keys();
    let read = names.filter_map(|name| Some((name.clone(), credential::read(name, &src)?)));
    let credentials = read.collect();
    // Every route is read (each reports its errors); they are kept only when all could be
    // (the rules name routes by index).
    let routes = (0..file.routes.len()).map(|index| src.read(&Key::new("routes").at(index)));
    let routes: Option<Vec<RouteConfig>> = routes.collect::<Vec<_>>().into_iter().collect();
    let forward_proxy = file
        .forward_proxy
        .and_then(|_| src.read(&Key::new("forward_proxy")));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let proxy = ConnLimits::PROXY;
    let mut config = Config {
        path: path.to_path_buf(),
        shutdown_grace: file.shutdown_grace,
        workers: file.workers.unwrap_or(cores),
        limits: ConnLimits {
            max_connections: file.max_connections.unwrap_or(proxy.max_connections),
            max_header_bytes: file.max_header_bytes.unwrap_or(proxy.max_header_bytes),
            idle_timeout: file.idle_timeout.unwrap_or(proxy.idle_timeout),
        },
        admin: file.admin.and_then(|_| src.read(&Key::new("admin"))),
        log: file.log,
        tls: TlsConfig {
            ca_file: file.tls.ca_file.map(|file| src.file(&file)),
        },
        credentials,
        routes: routes.unwrap_or_default(),
        forward_proxy,
        cache: file.cache.and_then(|_| cache::read(&src)),
        env,
        text: Text(text.into()),
        warnings: Vec::new(),
    };
    rules::apply(&mut config, &src);
    config.warnings = src.warnings.take();
    let mut errors = src.errors.take();
    errors.sort_by_key(|error| error.line.unwrap_or(usize::MAX));
    (Some(config), errors)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::config::value::parse_duration;
    use crate::config::{Key, Upstream};
    use crate::credential::settings::{BodyFormat, ClientAuth, CredentialKind, InbentaKey};
    use crate::secret::{MapEnv, SecretRef};
    use crate::telemetry::settings::LogFormat;

    use crate::config::fixture::{BASE, FILE, env, err, errs, ok};

    /// Assert the error's line and key, and that its message contains `part`.
    #[track_caller]
    fn assert_err(text: &str, line: usize, key: &str, part: &str) {
        let e = err(text);
        assert_eq!((e.line, e.key.as_str()), (Some(line), key), "{e}");
        assert!(e.message.contains(part), "`{}` lacks `{part}`", e.message);
        assert_eq!(e.path, Path::new(FILE));
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../config.example.toml");
        let env = Arc::new(MapEnv::from([
            ("INBENTA_API_KEY", "k"),
            ("PLIANT_CLIENT_ID", "id"),
            ("PLIANT_CLIENT_SECRET", "s"),
        ]));
        let config = parse(text, Path::new("config.example.toml"), env).unwrap();
        assert_eq!(config.credentials.len(), 3);
        assert_eq!(config.routes.len(), 3);
        assert_eq!(config.admin.unwrap().listen.to_string(), "127.0.0.1:9901");
        let inbenta = &config.credentials["inbenta"];
        assert_eq!(
            inbenta.renew_on_status,
            [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]
        );
        let CredentialKind::OAuth2(pliant) = &config.credentials["pliant"].kind else {
            panic!("pliant is oauth2");
        };
        assert_eq!(
            pliant.audience.as_deref(),
            Some("api.getpliant.com/api/integration")
        );
        assert_eq!(config.routes[0].name, "127.0.0.1:8080/");
        assert!(config.forward_proxy.is_none());
    }

    #[test]
    fn defaults() {
        let text = format!(
            r#"{BASE}
[credentials.i]
type = "inbenta"
api_key = {{ env = "K" }}
secret = {{ env = "S" }}

[credentials.o]
type = "oauth2"
token_url = "https://auth.example.com/oauth/token"
client_id = {{ env = "ID" }}
client_secret = {{ env = "SECRET" }}
"#
        );
        let config = ok(&text);
        assert_eq!(config.path, Path::new(FILE));
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert!(config.admin.is_none());
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(config.tls.ca_file.is_none());
        assert!(config.forward_proxy.is_none());

        let route = &config.routes[0];
        assert_eq!(route.name, "127.0.0.1:8080/");
        assert_eq!(route.path_prefix, "/");
        assert!(!route.strip_prefix);
        assert!(route.headers.is_empty());
        assert_eq!(route.connect_timeout, Duration::from_secs(5));
        assert_eq!(route.request_timeout, Duration::from_secs(60));
        assert_eq!(route.body_timeout, Duration::from_secs(60));
        assert!(route.tls.is_none() && route.upstream_tls.is_none());
        assert!(!route.allow_insecure_http && !route.allow_non_loopback);
        let Upstream::Url(url) = &route.upstream else {
            panic!("url upstream")
        };
        assert_eq!(url.to_string(), "https://api.example.com/");

        let a = &config.credentials["a"];
        assert_eq!(a.name, "a");
        assert_eq!(a.renew_on_status, [StatusCode::UNAUTHORIZED]);
        assert_eq!(a.timeout, Duration::from_secs(10));
        assert_eq!(a.refresh_before, None);
        assert!(!a.allow_insecure_http);
        let CredentialKind::Static(s) = &a.kind else {
            panic!("static")
        };
        assert_eq!(s.header, http::header::AUTHORIZATION);
        assert_eq!(s.scheme, "Bearer");
        assert_eq!(s.token, SecretRef::Env("A_TOKEN".into()));

        let i = &config.credentials["i"];
        assert_eq!(
            i.renew_on_status,
            [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]
        );
        let CredentialKind::Inbenta(inbenta) = &i.kind else {
            panic!("inbenta")
        };
        assert_eq!(inbenta.auth_url.to_string(), "https://api.inbenta.io/v1");
        assert!(matches!(&inbenta.key, InbentaKey::Secret(SecretRef::Env(n)) if n == "S"));
        assert!(inbenta.origin.is_none() && inbenta.oauth_token.is_none());

        let o = &config.credentials["o"];
        assert_eq!(o.renew_on_status, [StatusCode::UNAUTHORIZED]);
        let CredentialKind::OAuth2(oauth2) = &o.kind else {
            panic!("oauth2")
        };
        assert_eq!(oauth2.client_auth, ClientAuth::Basic);
        assert_eq!(oauth2.body, BodyFormat::Form);
        assert_eq!(oauth2.default_ttl, Duration::from_secs(3600));
        assert_eq!(oauth2.audience, None);
        assert_eq!(oauth2.scope, None);
        assert_eq!(
            oauth2.token_url.to_string(),
            "https://auth.example.com/oauth/token"
        );
    }

    #[test]
    fn every_key_is_read() {
        let text = r#"shutdown_grace = "3s"
[admin]
listen = "0.0.0.0:9901"
allow_non_loopback = true
[log]
level = "sidekey=debug"
format = "json"
[tls]
ca_file = "ca.pem"

[credentials.o]
type = "oauth2"
token_url = "http://127.0.0.1:1/token?x=1"
client_id = { env = "ID" }
client_secret = { file = "secrets/client" }
audience = "aud"
scope = "a b"
client_auth = "post"
body = "json"
default_ttl = "90s"
refresh_before = "30s"
headers = { "X-Tenant" = "acme" }
renew_on_status = [401, 419]
allow_insecure_http = true
timeout = "750ms"

[credentials.i]
type = "inbenta"
api_key = { env = "K" }
domain_key = { env = "D" }
origin = "https://www.example.com"
oauth_token = { file = "/run/oauth" }
auth_url = "https://auth.example.com/v2/"

[credentials.s]
type = "static"
token = { env = "T" }
header = "X-Api-Key"
scheme = ""

[[routes]]
name = "chat"
listen = "[::1]:8080"
inbenta_api = "chatbot"
credential = "i"
path_prefix = "/chatbot/"
strip_prefix = true
headers = { "x-extra" = "1" }
connect_timeout = "1s"
request_timeout = "2m"
tls = { cert = "tls/server.crt", key = "/abs/server.key" }
upstream_tls = { client_cert = "c.pem", client_key = "k.pem", server_name = "api.example.com" }
body_timeout = "90s"

[[routes]]
listen = "10.0.0.1:0"
allow_non_loopback = true
upstream = "http://127.0.0.1:9000/base/"
allow_insecure_http = true
credential = "o"

[forward_proxy]
listen = "127.0.0.1:3128"
hosts = { "API.inbenta.io" = "i" }
connect_timeout = "4s"
request_timeout = "5s"
body_timeout = "7s"
"#;
        let config = ok(text);
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        let admin = config.admin.as_ref().unwrap();
        assert!(admin.allow_non_loopback);
        assert_eq!(config.log.level, "sidekey=debug");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.tls.ca_file.as_deref(),
            Some(Path::new("/etc/sidekey/ca.pem"))
        );

        let o = &config.credentials["o"];
        let CredentialKind::OAuth2(oauth2) = &o.kind else {
            panic!("oauth2")
        };
        assert_eq!(oauth2.token_url.to_string(), "http://127.0.0.1:1/token?x=1");
        assert_eq!(
            oauth2.client_secret,
            Some(SecretRef::File("/etc/sidekey/secrets/client".into()))
        );
        assert_eq!(oauth2.audience.as_deref(), Some("aud"));
        assert_eq!(oauth2.scope.as_deref(), Some("a b"));
        assert_eq!(oauth2.client_auth, ClientAuth::Post);
        assert_eq!(oauth2.body, BodyFormat::Json);
        assert_eq!(oauth2.default_ttl, Duration::from_secs(90));
        assert_eq!(o.refresh_before, Some(Duration::from_secs(30)));
        assert_eq!(o.headers[0].0.as_str(), "x-tenant");
        assert_eq!(o.headers[0].1, "acme");
        assert_eq!(o.renew_on_status[1].as_u16(), 419);
        assert!(o.allow_insecure_http);
        assert_eq!(o.timeout, Duration::from_millis(750));

        let CredentialKind::Inbenta(inbenta) = &config.credentials["i"].kind else {
            panic!("inbenta")
        };
        assert!(matches!(&inbenta.key, InbentaKey::DomainKey(SecretRef::Env(n)) if n == "D"));
        assert_eq!(inbenta.origin.as_ref().unwrap(), "https://www.example.com");
        assert_eq!(
            inbenta.oauth_token,
            Some(SecretRef::File("/run/oauth".into()))
        );
        assert_eq!(inbenta.auth_url.to_string(), "https://auth.example.com/v2");

        let CredentialKind::Static(s) = &config.credentials["s"].kind else {
            panic!("static")
        };
        assert_eq!(s.header.as_str(), "x-api-key");
        assert_eq!(s.scheme, "");

        let chat = &config.routes[0];
        assert_eq!(chat.name, "chat");
        assert_eq!(chat.listen.to_string(), "[::1]:8080");
        assert!(matches!(&chat.upstream, Upstream::InbentaApi(api) if api == "chatbot"));
        assert_eq!(chat.path_prefix, "/chatbot");
        assert!(chat.strip_prefix);
        assert_eq!(chat.headers[0].0.as_str(), "x-extra");
        assert_eq!(chat.connect_timeout, Duration::from_secs(1));
        assert_eq!(chat.request_timeout, Duration::from_secs(120));
        assert_eq!(chat.body_timeout, Duration::from_secs(90));
        let tls = chat.tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/sidekey/tls/server.crt"));
        assert_eq!(tls.key, Path::new("/abs/server.key"));
        let up = chat.upstream_tls.as_ref().unwrap();
        assert_eq!(
            up.client_cert.as_deref(),
            Some(Path::new("/etc/sidekey/c.pem"))
        );
        assert_eq!(
            up.client_key.as_deref(),
            Some(Path::new("/etc/sidekey/k.pem"))
        );
        assert_eq!(up.server_name.as_deref(), Some("api.example.com"));

        let plain = &config.routes[1];
        assert_eq!(plain.name, "10.0.0.1:0/");
        let Upstream::Url(url) = &plain.upstream else {
            panic!("url")
        };
        assert_eq!(url.to_string(), "http://127.0.0.1:9000/base");

        let proxy = config.forward_proxy.as_ref().unwrap();
        let inbenta = crate::host::ForwardHost::parse("api.inbenta.io").unwrap();
        assert_eq!(proxy.hosts[&inbenta], "i");
        assert_eq!(proxy.connect_timeout, Duration::from_secs(4));
        assert_eq!(proxy.request_timeout, Duration::from_secs(5));
        assert_eq!(proxy.body_timeout, Duration::from_secs(7));

        let line = |key: Key| config.key_error(&key, "x").line;
        let secret = Key::new("credentials").then("o").then("client_secret");
        assert_eq!(line(secret), Some(15));
        let cert = Key::new("routes").at(0).then("tls").then("cert");
        assert_eq!(line(cert), Some(51));
        assert_eq!(line(Key::new("tls").then("ca_file")), Some(9));
    }

    #[test]
    fn unknown_keys_name_line_and_key() {
        assert_err("[[route]]\nx = 1\n", 1, "route", "unknown key `route`");
        assert_err(
            "shutdown = \"1s\"\n",
            1,
            "shutdown",
            "unknown key `shutdown`",
        );
        assert_err(
            &format!("{BASE}bogus = 1\n"),
            9,
            "routes[0].bogus",
            "unknown key `bogus`",
        );
        let in_credential = BASE.replace("type = \"static\"", "type = \"static\"\nsecrte = 1");
        assert_err(
            &in_credential,
            3,
            "credentials.a.secrte",
            "unknown key `secrte`",
        );
        assert_err(
            &format!("{BASE}tls = {{ cert = \"c\", key = \"k\", ca = \"x\" }}\n"),
            9,
            "routes[0].tls.ca",
            "unknown key `ca`",
        );
        assert_err(
            &format!("{BASE}[admin]\nlisten = \"127.0.0.1:1\"\nport = 2\n"),
            11,
            "admin.port",
            "unknown key `port`",
        );
        let secret = BASE.replace("{ env = \"A_TOKEN\" }", "{ env = \"A\", vault = \"x\" }");
        assert_err(
            &secret,
            3,
            "credentials.a.token.vault",
            "unknown key `vault`",
        );
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_key() {
        let e = err(&format!("{BASE}connect_timeout = \n"));
        assert_eq!(e.line, Some(9), "{e}");
        assert_err(
            &BASE.replace("\"127.0.0.1:8080\"", "8080"),
            6,
            "routes[0].listen",
            "invalid type",
        );
        assert_err(
            &format!("{BASE}strip_prefix = \"yes\"\n"),
            9,
            "routes[0].strip_prefix",
            "expected a boolean",
        );
        assert_err(
            &format!("{BASE}[[routes]]\nlisten = \"127.0.0.1:8081\"\nupstream = \"https://x\"\n"),
            9,
            "routes[1].credential",
            "missing key `credential`",
        );
        assert_err(
            &format!("{BASE}tls = 5\n"),
            9,
            "routes[0].tls",
            "expected a table",
        );
        let e = err("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn log_levels_are_a_level_or_target_directives() {
        for level in ["warn", "sidekey=debug", "sidekey=debug,hyper=warn,info"] {
            let config = ok(&format!("[log]\nlevel = \"{level}\"\n{BASE}"));
            assert_eq!(config.log.level, level);
        }
        for level in ["sidekey=loud", "sidekey[span]=debug", "info,x=verbose"] {
            let text = format!("[log]\nlevel = \"{level}\"\n{BASE}");
            assert_err(&text, 2, "log.level", "not a log filter");
        }
    }

    #[test]
    fn keys_of_another_type_are_refused() {
        let text = r#"[credentials.p]
type = "oauth2"
token_url = "https://a.example.com/token"
client_id = { env = "ID" }
client_secret = { env = "S" }
secret = { env = "X" }
"#;
        assert_err(
            text,
            6,
            "credentials.p.secret",
            "key `secret` is not valid for type oauth2",
        );
        let text = BASE.replace(
            "type = \"static\"",
            "type = \"static\"\ntoken_url = \"https://x\"",
        );
        assert_err(
            &text,
            3,
            "credentials.a.token_url",
            "not valid for type static",
        );
        let text = BASE.replace("type = \"static\"", "type = \"jwt\"");
        assert_err(
            &text,
            2,
            "credentials.a.type",
            "unknown value `jwt`, expected one of `inbenta`, `oauth2`, `static`",
        );
        let text = BASE.replace("token = { env = \"A_TOKEN\" }\n", "");
        assert_err(&text, 1, "credentials.a.token", "missing key `token`");
    }

    #[test]
    fn inbenta_needs_exactly_one_of_secret_and_domain_key() {
        let both = r#"[credentials.i]
type = "inbenta"
api_key = { env = "K" }
secret = { env = "S" }
domain_key = { env = "D" }
"#;
        assert_err(both, 5, "credentials.i.domain_key", "not both");
        let neither = "[credentials.i]\ntype = \"inbenta\"\napi_key = { env = \"K\" }\n";
        assert_err(
            neither,
            1,
            "credentials.i.secret",
            "`secret` or `domain_key`",
        );
        let no_key = "[credentials.i]\ntype = \"inbenta\"\nsecret = { env = \"S\" }\n";
        assert_err(no_key, 1, "credentials.i.api_key", "missing key `api_key`");
    }

    #[test]
    fn secret_forms() {
        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"tokens/a\" }");
        let CredentialKind::Static(s) = &ok(&text).credentials["a"].kind else {
            panic!()
        };
        assert_eq!(s.token, SecretRef::File("/etc/sidekey/tokens/a".into()));

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"/run/a\" }");
        let CredentialKind::Static(s) = &ok(&text).credentials["a"].kind else {
            panic!()
        };
        assert_eq!(s.token, SecretRef::File("/run/a".into()));

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "\"hunter2\"");
        let config = ok(&text);
        let CredentialKind::Static(s) = &config.credentials["a"].kind else {
            panic!()
        };
        assert_eq!(
            s.token.resolve(&MapEnv::default()).unwrap().expose(),
            "hunter2"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        let [warning] = &config.warnings[..] else {
            panic!("one warning: {:?}", config.warnings)
        };
        assert_eq!(
            (warning.line, warning.key.as_str()),
            (Some(3), "credentials.a.token")
        );
        assert!(warning.message.contains("written literally"), "{warning}");
        assert!(!warning.to_string().contains("hunter2"));
        assert!(ok(BASE).warnings.is_empty());

        let both = BASE.replace("{ env = \"A_TOKEN\" }", "{ env = \"A\", file = \"/a\" }");
        assert_err(
            &both,
            3,
            "credentials.a.token",
            "exactly one of `env` and `file`",
        );
        let empty = BASE.replace("{ env = \"A_TOKEN\" }", "{}");
        assert_err(
            &empty,
            3,
            "credentials.a.token",
            "exactly one of `env` and `file`",
        );
        let number = BASE.replace("{ env = \"A_TOKEN\" }", "1234567");
        let e = err(&number);
        assert_eq!((e.line, e.key.as_str()), (Some(3), "credentials.a.token"));
        assert!(!e.to_string().contains("1234567"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = format!("{BASE}tls = {{ cert = \"server.crt\", key = \"../k.pem\" }}\n");
        let config = parse(&text, Path::new("conf/sidekey.toml"), env()).unwrap();
        let tls = config.routes[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("conf/server.crt"));
        assert_eq!(tls.key, Path::new("conf/../k.pem"));
        let config = parse(&text, Path::new("sidekey.toml"), env()).unwrap();
        assert_eq!(
            config.routes[0].tls.as_ref().unwrap().cert,
            Path::new("server.crt")
        );
    }

    #[test]
    fn workers_default_to_the_available_cores_and_stay_in_range() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(ok(BASE).workers, cores);
        assert_eq!(ok(&format!("workers = 3\n{BASE}")).workers, 3);
        assert_err(
            &format!("shutdown_grace = \"1s\"\nworkers = 0\n{BASE}"),
            2,
            "workers",
            "0 is out of range (use 1 to 1024)",
        );
        assert_err("workers = \"two\"\n", 1, "workers", "invalid type");
    }

    #[test]
    fn durations() {
        let text = format!("shutdown_grace = \"750ms\"\n{BASE}request_timeout = \"5m\"\n");
        let config = ok(&text);
        assert_eq!(config.shutdown_grace, Duration::from_millis(750));
        assert_eq!(config.routes[0].request_timeout, Duration::from_secs(300));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_err(
            &format!("{BASE}connect_timeout = \"5\"\n"),
            9,
            "routes[0].connect_timeout",
            "no unit",
        );
        assert_err(
            &format!("{BASE}connect_timeout = \"0s\"\n"),
            9,
            "routes[0].connect_timeout",
            "longer than zero",
        );
        // Less than a millisecond would end every request at once.
        assert_err(
            &format!("{BASE}request_timeout = \"0.0001ms\"\n"),
            9,
            "routes[0].request_timeout",
            "must be at least 1ms",
        );
        assert_err(
            "shutdown_grace = \"3w\"\n",
            1,
            "shutdown_grace",
            "unknown unit",
        );
        assert_err(
            &format!("{BASE}connect_timeout = 5\n"),
            9,
            "routes[0].connect_timeout",
            "invalid type",
        );
        let text = BASE.replace(
            "type = \"static\"",
            "type = \"static\"\nrefresh_before = \"soon\"",
        );
        assert_err(&text, 3, "credentials.a.refresh_before", "not a duration");
    }

    #[test]
    fn non_loopback_listeners_are_refused_unless_allowed() {
        let open = BASE.replace("127.0.0.1:8080", "0.0.0.0:8080");
        assert_err(&open, 6, "routes[0].listen", "allow_non_loopback = true");
        let allowed = format!("{open}allow_non_loopback = true\n");
        assert!(ok(&allowed).routes[0].allow_non_loopback);
        assert_err(
            &format!("{BASE}[admin]\nlisten = \"192.168.1.2:9901\"\n"),
            10,
            "admin.listen",
            "[admin]",
        );
        assert_err(
            &format!("{BASE}[forward_proxy]\nlisten = \"[::]:3128\"\n"),
            10,
            "forward_proxy.listen",
            "[forward_proxy]",
        );
        assert_err(
            &BASE.replace("127.0.0.1:8080", "localhost:8080"),
            6,
            "routes[0].listen",
            "IP:PORT",
        );
        // Port 0 (tests) is fine.
        assert_eq!(ok(&BASE.replace(":8080", ":0")).routes[0].listen.port(), 0);
    }

    #[test]
    fn http_is_refused_unless_allowed() {
        let http = BASE.replace("https://api.example.com", "http://127.0.0.1:9000");
        assert_err(&http, 7, "routes[0].upstream", "allow_insecure_http = true");
        assert!(ok(&format!("{http}allow_insecure_http = true\n")).routes[0].allow_insecure_http);

        let oauth2 = |extra: &str| {
            format!(
                "[credentials.o]\ntype = \"oauth2\"\ntoken_url = \"http://127.0.0.1:1/t\"\n\
                 client_id = \"i\"\nclient_secret = {{ env = \"S\" }}\n{extra}"
            )
        };
        assert_err(
            &oauth2(""),
            3,
            "credentials.o.token_url",
            "allow_insecure_http",
        );
        ok(&oauth2("allow_insecure_http = true\n"));

        let inbenta = "[credentials.i]\ntype = \"inbenta\"\napi_key = \"k\"\nsecret = \"s\"\n\
                       auth_url = \"http://127.0.0.1:1/v1\"\n";
        assert_err(inbenta, 5, "credentials.i.auth_url", "allow_insecure_http");
        let ftp = BASE.replace("https://api.example.com", "ftp://api.example.com");
        assert_err(&ftp, 7, "routes[0].upstream", "unsupported scheme");
    }

    #[test]
    fn upstream_urls() {
        let with = |url: &str| BASE.replace("https://api.example.com", url);
        let config = ok(&with("https://api.example.com:8443/v1/"));
        let Upstream::Url(url) = &config.routes[0].upstream else {
            panic!()
        };
        assert_eq!(url.to_string(), "https://api.example.com:8443/v1");
        assert_err(
            &with("https://api.example.com/v1?x=1"),
            7,
            "routes[0].upstream",
            "query",
        );
        assert_err(
            &with("https://api.example.com/v1#top"),
            7,
            "routes[0].upstream",
            "fragment",
        );
        assert_err(
            &with("api.example.com"),
            7,
            "routes[0].upstream",
            "absolute URL",
        );
        assert_err(&with("/v1"), 7, "routes[0].upstream", "absolute URL");
        assert_err(
            &with("https://user:pw@api.example.com"),
            7,
            "routes[0].upstream",
            "user information",
        );
        // `http` reads a port it cannot parse as none: it would connect to 443.
        for port in ["70000", "0", "-1", "44x"] {
            let bad = with(&format!("https://api.example.com:{port}/v1"));
            assert_errs(
                &bad,
                &[(7, "routes[0].upstream", "is not a port (1-65535)")],
            );
        }
        let config = ok(&with("https://[::1]:8443"));
        let Upstream::Url(url) = &config.routes[0].upstream else {
            panic!()
        };
        assert_eq!(url.port_u16(), Some(8443));
    }

    #[test]
    fn upstream_xor_inbenta_api() {
        let inbenta = format!(
            "{}[credentials.i]\ntype = \"inbenta\"\napi_key = \"k\"\nsecret = \"s\"\n",
            BASE.replace("credential = \"a\"", "credential = \"i\"")
        );
        let both = inbenta.replace(
            "upstream = \"https://api.example.com\"",
            "upstream = \"https://x\"\ninbenta_api = \"chatbot\"",
        );
        assert_err(&both, 8, "routes[0].inbenta_api", "not both");
        let neither = inbenta.replace("upstream = \"https://api.example.com\"\n", "");
        assert_err(&neither, 5, "routes[0].upstream", "missing key `upstream`");
        let api = BASE.replace(
            "upstream = \"https://api.example.com\"",
            "inbenta_api = \"chatbot\"",
        );
        assert_err(&api, 7, "routes[0].inbenta_api", "type inbenta");
    }

    #[test]
    fn path_prefixes() {
        let prefix = |p: &str| format!("{BASE}path_prefix = \"{p}\"\n");
        assert_eq!(ok(&prefix("/a/b/")).routes[0].path_prefix, "/a/b");
        assert_eq!(ok(&prefix("/a/b/")).routes[0].name, "127.0.0.1:8080/a/b");
        assert_eq!(ok(&prefix("/")).routes[0].path_prefix, "/");
        assert_eq!(ok(&prefix("//")).routes[0].path_prefix, "/");
        assert_err(
            &prefix("chatbot"),
            9,
            "routes[0].path_prefix",
            "must start with `/`",
        );
        assert_err(
            &prefix("/a?b"),
            9,
            "routes[0].path_prefix",
            "not a URL path",
        );
    }

    #[test]
    fn routes_sharing_a_listener() {
        let second = |extra: &str| {
            format!(
                "{BASE}path_prefix = \"/a\"\n\n[[routes]]\nlisten = \"127.0.0.1:8080\"\n\
                 upstream = \"https://b.example.com\"\ncredential = \"a\"\n{extra}"
            )
        };
        let config = ok(&second("path_prefix = \"/b\"\n"));
        assert_eq!(config.routes[1].name, "127.0.0.1:8080/b");
        assert_err(
            &second("path_prefix = \"/a/\"\n"),
            15,
            "routes[1].path_prefix",
            "routes[0] already serves",
        );
        // with an explicit path_prefix the error points there; default `/` points at listen
        let dup = format!(
            "{BASE}\n[[routes]]\nlisten = \"127.0.0.1:8080\"\nupstream = \"https://b\"\ncredential = \"a\"\n"
        );
        assert_err(
            &dup,
            11,
            "routes[1].listen",
            "already serves path_prefix `/`",
        );
        let tls = second("path_prefix = \"/b\"\ntls = { cert = \"c\", key = \"k\" }\n");
        assert_err(&tls, 16, "routes[1].tls", "differs from routes[0]");
        let named = second("path_prefix = \"/b\"\nname = \"127.0.0.1:8080/a\"\n");
        assert_err(&named, 16, "routes[1].name", "already used by routes[0]");
    }

    #[test]
    fn references_must_exist() {
        assert_err(
            &BASE.replace("credential = \"a\"", "credential = \"b\""),
            8,
            "routes[0].credential",
            "no credential named `b` (defined: a)",
        );
        let proxy = format!(
            "{BASE}[forward_proxy]\nlisten = \"127.0.0.1:3128\"\nhosts = {{ \"api.example.com\" = \"zz\" }}\n"
        );
        assert_err(
            &proxy,
            11,
            "forward_proxy.hosts.\"api.example.com\"",
            "no credential named `zz`",
        );
        let clash = format!("{BASE}[admin]\nlisten = \"127.0.0.1:8080\"\n");
        assert_err(&clash, 10, "admin.listen", "routes[0]");
    }

    #[test]
    fn headers_and_statuses() {
        let header = format!("{BASE}headers = {{ \"bad header\" = \"x\" }}\n");
        assert_err(
            &header,
            9,
            "routes[0].headers.\"bad header\"",
            "not a valid header name",
        );
        let value = format!("{BASE}headers = {{ \"x-a\" = \"line\\nbreak\" }}\n");
        assert_err(
            &value,
            9,
            "routes[0].headers.x-a",
            "not allowed in a header",
        );
        let status = BASE.replace(
            "type = \"static\"",
            "type = \"static\"\nrenew_on_status = [401, 700]",
        );
        assert_err(
            &status,
            3,
            "credentials.a.renew_on_status",
            "700 is not an HTTP status code",
        );
        let scheme = BASE.replace(
            "type = \"static\"",
            "type = \"static\"\nscheme = \"Bearer x\"",
        );
        assert_err(
            &scheme,
            3,
            "credentials.a.scheme",
            "not a valid authorization scheme",
        );
        let upstream_tls = format!("{BASE}upstream_tls = {{ client_cert = \"c.pem\" }}\n");
        assert_err(
            &upstream_tls,
            9,
            "routes[0].upstream_tls",
            "both `client_cert` and `client_key`",
        );
        assert_err(
            "[log]\nformat = \"xml\"\n",
            2,
            "log.format",
            "unknown value `xml`, expected `text` or `json`",
        );
        let body = "[credentials.o]\ntype = \"oauth2\"\ntoken_url = \"https://a/t\"\nclient_id = \"i\"\n\
                    client_secret = \"s\"\nbody = \"xml\"\n";
        assert_err(body, 6, "credentials.o.body", "unknown value `xml`");
    }

    #[test]
    fn load_reads_the_file_or_names_it() {
        let dir = crate::config::fixture::temp_dir();
        let dir = dir.path();
        let path = dir.join("sidekey.toml");
        std::fs::write(&path, BASE).unwrap();
        let config = valid(read(&path, env())).unwrap();
        assert_eq!(config.path, path);
        let missing = dir.join("absent.toml");
        let e = valid(read(&missing, env())).unwrap_err().0.remove(0);
        assert_eq!(e.path, missing);
        assert_eq!(e.line, None);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );
    }

    /// `(line, key)` of each error, and whether each message contains its `part`.
    #[track_caller]
    fn assert_errs(text: &str, expected: &[(usize, &str, &str)]) {
        let errors = errs(text);
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        let wanted: Vec<_> = expected.iter().map(|(l, k, _)| (Some(*l), *k)).collect();
        assert_eq!(found, wanted, "{errors:#?}");
        for (e, (_, _, part)) in errors.iter().zip(expected) {
            assert!(e.message.contains(part), "`{}` lacks `{part}`", e.message);
        }
    }

    #[test]
    fn every_error_is_reported_in_one_read() {
        let text = r#"shutdown_grace = "soon"
workers = 0
[admin]
listen = "127.0.0.1:8080"
[credentials.a]
type = "static"
token = { env = "A_TOKEN" }
scheme = "Bearer x"
timeout = "0s"
[credentials.b]
type = "static"
[[routes]]
listen = "127.0.0.1:8080"
upstream = "https://api.example.com"
credential = "a"
bogus = 1
connect_timeout = 5
[[routes]]
listen = "127.0.0.1:8081"
upstream = "https://api.example.com"
credential = "b"
[[routes]]
listen = "127.0.0.1:8082"
upstream = "https://api.example.com"
credential = "c"
"#;
        assert_errs(
            text,
            &[
                (1, "shutdown_grace", "not a duration"),
                (2, "workers", "out of range"),
                (4, "admin.listen", "already the listen address of routes[0]"),
                (8, "credentials.a.scheme", "authorization scheme"),
                (9, "credentials.a.timeout", "longer than zero"),
                (10, "credentials.b.token", "missing key `token`"),
                (16, "routes[0].bogus", "unknown key `bogus`"),
                (17, "routes[0].connect_timeout", "a duration such as"),
                (
                    25,
                    "routes[2].credential",
                    "no credential named `c` (defined: a)",
                ),
            ],
        );
    }

    #[test]
    fn a_table_that_cannot_be_read_leaves_the_others_checked() {
        // routes[0] lacks `credential`: the rules between routes wait for it,
        // the other tables are still read and checked.
        let text = format!(
            "{BASE}[[routes]]\nlisten = \"127.0.0.1:9\"\n[forward_proxy]\nlisten = \"0.0.0.0:1\"\n"
        );
        assert_errs(
            &text,
            &[
                (9, "routes[1].credential", "missing key `credential`"),
                (12, "forward_proxy.listen", "allow_non_loopback"),
            ],
        );
    }

    #[test]
    fn unknown_keys_suggest_the_closest_of_their_table() {
        // (`token` is then missing too, and said so)
        let text = BASE.replace("token = ", "tokn = ");
        let e = errs(&text).remove(1);
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(3), "credentials.a.tokn"),
            "{e}"
        );
        assert!(
            e.message
                .starts_with("unknown key `tokn`, did you mean `token`?"),
            "{e}"
        );
        assert!(
            e.message.contains("`scheme`") && !e.message.contains("`api_key`"),
            "{e}"
        );
        let e = err(&format!("{BASE}conect_timeout = \"5s\"\n"));
        assert!(e.message.contains("did you mean `connect_timeout`?"), "{e}");
        let e = err(&format!("{BASE}[log]\nformat = \"jsn\"\n"));
        assert!(
            e.message
                .contains("unknown value `jsn`, did you mean `json`?"),
            "{e}"
        );
        let e = err(&format!("{BASE}flux = 1\n"));
        assert!(!e.message.contains("did you mean"), "{e}");
    }

    #[test]
    fn values_of_the_wrong_type_say_what_is_wanted() {
        assert_err(
            &format!("shutdown_grace = 5\n{BASE}"),
            1,
            "shutdown_grace",
            r#"expected a duration such as "5s""#,
        );
        let listen = BASE.replace("\"127.0.0.1:8080\"", "8080");
        assert_err(
            &listen,
            6,
            "routes[0].listen",
            r#"expected an address such as "127.0.0.1:8080""#,
        );
    }
}
