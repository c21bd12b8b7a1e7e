//! The checks made once before anything binds — by `check`, by `run` and by
//! a reload: there is something to serve, every secret reference resolves
//! (variable set, file readable, value usable; a token sent in a header can
//! be sent as one token) and every TLS file loads and
//! fits its use, and the `[cache]` key is 32 bytes of base64. What those
//! files hold is kept in the [`Checked`] configuration (trust roots, each
//! route's listener and upstream TLS configuration); serving reads them again
//! only when they change ([`crate::rotating`]). Every failure is reported,
//! naming the file, line and key like a syntax error. [`inputs`] lists the
//! variables and files a configuration reads.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::cache::{CacheError, TokenCache};
use crate::config::{Config, ConfigError, ConfigErrors, Key};
use crate::credential::settings::CredentialKind;
use crate::credential::{bearer, client_auth};
use crate::rotating::{self, Reread, Trust};
use crate::secret::SecretRef;
use crate::tls::{self, UpstreamTls};

/// A configuration whose secrets resolve and whose TLS files load, with what
/// was read from those files.
#[derive(Debug)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// webpki + system roots + `[tls] ca_file`, as read now (`sidekey token`).
    pub roots: Arc<RootCertStore>,
    /// The same roots for the upstream and token endpoint clients, read
    /// again when `ca_file` changes.
    pub trust: Arc<Trust>,
    /// Every value read from TLS files that [`rotating::watch`] keeps current.
    pub rotating: Vec<Arc<dyn Reread>>,
    /// Per route (config order): the listener's TLS configuration
    /// (`tls = { cert, key }`) and the client configuration for its upstream
    /// (trust, and the client certificate of `upstream_tls`).
    pub routes: Vec<RouteTls>,
}

/// The TLS configurations of one route.
#[derive(Debug)]
pub struct RouteTls {
    /// HTTPS on the route's listener, when `tls` is set.
    pub listener: Option<Arc<ServerConfig>>,
    /// The client side towards the upstream.
    pub upstream: ClientConfig,
}

/// Resolve every secret reference once and read every TLS file; every
/// problem found is reported, by line.
pub fn preflight(config: Config) -> Result<Checked, ConfigErrors> {
    let mut errors = Vec::new();
    if config.routes.is_empty() && config.forward_proxy.is_none() {
        let message = "no [[routes]] and no [forward_proxy]: there is nothing to serve";
        errors.push(ConfigError::new(&config.path, None, "", message));
    }
    for (name, credential) in &config.credentials {
        let table = Key::new("credentials").then(name);
        if let CredentialKind::OAuth2(oauth2) = &credential.kind {
            for (field, message) in client_auth::check(oauth2, config.env.as_ref()) {
                errors.push(config.key_error(&table.then(field), message));
            }
        }
        for (field, secret) in credential.secret_refs() {
            // PEM keys span lines; client_auth::check reads them.
            if matches!(field, "private_key" | "client_key") {
                continue;
            }
            let key = table.then(field);
            let value = secret
                .resolve(config.env.as_ref())
                .map_err(|e| e.to_string());
            let usable = value.and_then(|value| sendable(&credential.kind, field, value.expose()));
            noted(&mut errors, &config, key, usable);
        }
    }
    if let Some(cache) = &config.cache
        && let Err(error) = TokenCache::open(cache, &*config.env, config.tls.ca_file.as_deref())
    {
        let field = match error {
            CacheError::Redis(_) | CacheError::RedisUrl(_) | CacheError::NotRedis(_) => {
                Some("redis_url")
            }
            CacheError::Secret(_) | CacheError::Key(_) => Some("encryption_key"),
            // `[tls] ca_file` has its own error below.
            CacheError::CaFile(_) => None,
        };
        if let Some(field) = field {
            let key = Key::new("cache").then(field);
            errors.push(config.key_error(&key, error));
        }
    }
    if let Some(clash) = cache_file_clash(&config) {
        errors.push(config.key_error(&Key::new("cache").then("file"), clash));
    }
    let ca_file = Key::new("tls").then("ca_file");
    let roots = noted(
        &mut errors,
        &config,
        ca_file.clone(),
        tls::root_store(&config.tls),
    );
    let roots = Arc::new(roots.unwrap_or_else(RootCertStore::empty));
    let trust = rotating::trust(&roots, &config.tls);
    let trust = noted(&mut errors, &config, ca_file, trust);
    let mut watched: Vec<Arc<dyn Reread>> = trust.iter().map(|t| t.clone() as _).collect();
    let mut routes = Vec::with_capacity(config.routes.len());
    for (index, route) in config.routes.iter().enumerate() {
        let key = |table: &str, field: &str| Key::new("routes").at(index).then(table).then(field);
        let mut listener = None;
        if let Some(listener_tls) = &route.tls {
            let cert = tls::load_certs(&listener_tls.cert);
            let cert = noted(&mut errors, &config, key("tls", "cert"), cert);
            let private_key = tls::load_private_key(&listener_tls.key);
            if noted(&mut errors, &config, key("tls", "key"), private_key)
                .and(cert)
                .is_some()
            {
                let server = rotating::server_config(listener_tls);
                if let Some((server, cert)) =
                    noted(&mut errors, &config, key("tls", "cert"), server)
                {
                    watched.push(cert);
                    listener = Some(server);
                }
            }
        }
        let found = errors.len();
        if let Some(upstream_tls) = &route.upstream_tls {
            if let Some(cert) = &upstream_tls.client_cert {
                let cert = tls::load_certs(cert);
                noted(
                    &mut errors,
                    &config,
                    key("upstream_tls", "client_cert"),
                    cert,
                );
            }
            if let Some(private_key) = &upstream_tls.client_key {
                let private_key = tls::load_private_key(private_key);
                noted(
                    &mut errors,
                    &config,
                    key("upstream_tls", "client_key"),
                    private_key,
                );
            }
        }
        if errors.len() == found
            && let Some(trust) = &trust
        {
            let client_cert = match &route.upstream_tls {
                Some(UpstreamTls {
                    client_cert: Some(cert),
                    client_key: Some(private_key),
                    ..
                }) => noted(
                    &mut errors,
                    &config,
                    key("upstream_tls", "client_cert"),
                    rotating::cert("upstream client certificate", cert, private_key),
                ),
                _ => None,
            };
            watched.extend(client_cert.iter().map(|cert| cert.clone() as _));
            let client = rotating::upstream_config(trust, client_cert);
            let upstream = noted(
                &mut errors,
                &config,
                key("upstream_tls", "client_cert"),
                client,
            );
            routes.extend(upstream.map(|upstream| RouteTls { listener, upstream }));
        }
    }
    let Some(trust) = trust.filter(|_| errors.is_empty()) else {
        errors.sort_by_key(|error| error.line.unwrap_or(usize::MAX));
        return Err(ConfigErrors(errors));
    };
    Ok(Checked {
        config,
        roots,
        trust,
        rotating: watched,
        routes,
    })
}

/// Whether the value of `field` can be sent as the one token it is sent
/// as: a static `token`, Inbenta's `api_key` and `oauth_token`
/// ([`bearer::token_text`]); the other secrets go in bodies or are keys.
fn sendable(kind: &CredentialKind, field: &str, value: &str) -> Result<(), String> {
    let raw = match (kind, field) {
        (CredentialKind::Static(fixed), "token") => fixed.scheme.is_empty(),
        (CredentialKind::Inbenta(_), "api_key" | "oauth_token") => false,
        _ => return Ok(()),
    };
    match bearer::token_text(value, "the value", raw) {
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// `result`'s value, or `None` with its error noted against `key`.
fn noted<T>(
    errors: &mut Vec<ConfigError>,
    config: &Config,
    key: Key,
    result: Result<T, impl Display>,
) -> Option<T> {
    result
        .map_err(|e| errors.push(config.key_error(&key, e)))
        .ok()
}

/// Why `[cache] file` must not be where it is: the configuration file
/// itself or a file sidekey reads (a secret, certificate or key), which the
/// first token stored would overwrite. Compared as files (device and
/// inode), so links do not hide it.
fn cache_file_clash(config: &Config) -> Option<String> {
    let cache = config.cache.as_ref()?.file.as_deref()?;
    let same = |other: &Path| match (std::fs::metadata(cache), std::fs::metadata(other)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => cache == other,
    };
    if same(&config.path) {
        return Some("is the configuration file: the token cache would overwrite it".to_owned());
    }
    let (_, files) = inputs(config);
    let read = files.into_iter().find(|file| same(file))?;
    Some(format!(
        "is {}, which sidekey reads (a secret, certificate or key): the token cache would \
         overwrite it",
        read.display()
    ))
}

/// What `config` reads besides its own file, never their values: the
/// environment variables and the files (secrets, certificates, keys).
pub fn inputs(config: &Config) -> (BTreeSet<&str>, BTreeSet<&Path>) {
    let (mut env, mut files) = (BTreeSet::new(), BTreeSet::new());
    let secrets = config.credentials.values().flat_map(|c| c.secret_refs());
    let cache = config.cache.iter();
    let cache_key = cache.flat_map(|cache| cache.encryption_key.iter().chain(&cache.redis_url));
    for secret in secrets.map(|(_, secret)| secret).chain(cache_key) {
        match secret {
            SecretRef::Env(name) => env.insert(name.as_str()),
            SecretRef::File(path) => files.insert(path.as_path()),
            SecretRef::Literal(_) => false,
        };
    }
    files.extend(config.tls.ca_file.as_deref());
    for credential in config.credentials.values() {
        if let CredentialKind::OAuth2(oauth2) = &credential.kind {
            files.extend(oauth2.client_cert.as_deref());
        }
    }
    for route in &config.routes {
        let listener = route.tls.iter().flat_map(|tls| [&tls.cert, &tls.key]);
        let client = route.upstream_tls.iter();
        let client = client.flat_map(|up| up.client_cert.iter().chain(&up.client_key));
        files.extend(listener.chain(client).map(PathBuf::as_path));
    }
    (env, files)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::fixture::{BASE, FILE, env, ok};
    use crate::config::parse;
    use crate::secret::MapEnv;

    #[test]
    fn example_file_check_names_the_missing_secret_file() {
        let text = include_str!("../config.example.toml");
        let env = Arc::new(MapEnv::from([
            ("INBENTA_API_KEY", "k"),
            ("PLIANT_CLIENT_ID", "id"),
            ("PLIANT_CLIENT_SECRET", "s"),
        ]));
        let config = parse(text, Path::new("config.example.toml"), env).unwrap();
        let e = preflight(config).unwrap_err().0.remove(0);
        let line = text
            .lines()
            .position(|l| l.starts_with("secret  ="))
            .unwrap()
            + 1;
        assert_eq!(e.key, "credentials.inbenta.secret");
        assert_eq!(e.line, Some(line));
        assert!(e.message.contains("/var/run/secrets/inbenta/secret"), "{e}");
    }

    #[test]
    fn every_secret_and_tls_file_is_checked_by_file_line_and_key() {
        let text = BASE.replace("A_TOKEN", "MISSING_TOKEN");
        let e = preflight(ok(&text)).unwrap_err().0.remove(0);
        assert_eq!((e.line, e.key.as_str()), (Some(3), "credentials.a.token"));
        assert_eq!(e.message, "environment variable MISSING_TOKEN is not set");
        assert_eq!(
            e.to_string(),
            format!("{FILE}:3: credentials.a.token: environment variable MISSING_TOKEN is not set")
        );

        let dir = crate::config::fixture::temp_dir();
        let dir = dir.path();
        let config_path = dir.join("sidekey.toml");
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"token\" }");
        let config = parse(&text, &config_path, env()).unwrap();
        preflight(config).unwrap();

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"nope\" }");
        let e = preflight(parse(&text, &config_path, env()).unwrap())
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!((e.line, e.key.as_str()), (Some(3), "credentials.a.token"));
        assert!(e.message.contains("nope"), "{e}");

        let text = format!("{BASE}tls = {{ cert = \"missing.crt\", key = \"missing.key\" }}\n");
        let e = preflight(parse(&text, &config_path, env()).unwrap())
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!((e.line, e.key.as_str()), (Some(9), "routes[0].tls.cert"));

        let text = format!("[tls]\nca_file = \"missing-ca.pem\"\n{BASE}");
        let e = preflight(parse(&text, &config_path, env()).unwrap())
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!((e.line, e.key.as_str()), (Some(2), "tls.ca_file"));

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "\"t0k3n\"");
        let e = parse(
            &text.replace("8080", "0"),
            &config_path,
            Arc::new(MapEnv::default()),
        );
        assert!(preflight(e.unwrap()).is_ok());
    }

    #[test]
    fn every_secret_and_tls_file_problem_is_reported_at_once() {
        let dir = crate::config::fixture::temp_dir();
        let dir = dir.path();
        let text = format!(
            "[tls]\nca_file = \"missing-ca.pem\"\n{}tls = {{ cert = \"no.crt\", key = \"no.key\" }}\n",
            BASE.replace("A_TOKEN", "MISSING_TOKEN")
        );
        let config = parse(&text, &dir.join("sidekey.toml"), env()).unwrap();
        let errors = preflight(config).unwrap_err().0;
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (Some(2), "tls.ca_file"),
                (Some(5), "credentials.a.token"),
                (Some(11), "routes[0].tls.cert"),
                (Some(11), "routes[0].tls.key"),
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn inputs_name_every_variable_and_file_but_no_value() {
        let text = format!(
            "[tls]\nca_file = \"ca.pem\"\n{BASE}upstream_tls = {{ client_cert = \"c.pem\", client_key = \"k.pem\" }}\n\
             [credentials.b]\ntype = \"static\"\ntoken = {{ file = \"/run/b\" }}\n\
             [credentials.c]\ntype = \"static\"\ntoken = \"literal-value\"\n"
        );
        let config = ok(&text);
        let (env, files) = inputs(&config);
        assert_eq!(env.into_iter().collect::<Vec<_>>(), ["A_TOKEN"]);
        let files: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/etc/sidekey/c.pem",
                "/etc/sidekey/ca.pem",
                "/etc/sidekey/k.pem",
                "/run/b"
            ]
        );
    }

    #[test]
    fn a_configuration_that_serves_nothing_is_refused() {
        let text = "[credentials.a]\ntype = \"static\"\ntoken = \"t\"\n";
        let e = preflight(ok(text)).unwrap_err().0.remove(0);
        assert_eq!((e.line, e.key.as_str()), (None, ""), "{e}");
        assert!(e.message.contains("nothing to serve"), "{e}");
        let proxy = "[forward_proxy]\nlisten = \"127.0.0.1:3128\"\n";
        assert!(preflight(ok(proxy)).is_ok());
    }
}
