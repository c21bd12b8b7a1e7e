//! The checks made once before anything binds — by `check`, by `run` and by
//! a reload: every secret reference resolves (variable set, file readable,
//! value usable) and every TLS file loads and fits its use. What those files
//! hold is kept in the [`Checked`] configuration (trust roots, each route's
//! listener and upstream TLS configuration); serving reads them again only
//! when they change ([`crate::rotating`]). Every failure names the file,
//! line and key, like a syntax error.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, ConfigError, Key};
use crate::rotating::{self, Reread, Trust};
use crate::tls;

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

/// Resolve every secret reference once and read every TLS file.
pub fn preflight(config: Config) -> Result<Checked, ConfigError> {
    for (name, credential) in &config.credentials {
        for (field, secret) in credential.secret_refs() {
            secret
                .resolve(config.env.as_ref())
                .map_err(|e| config.key_error(&credential_key(name, field), e))?;
        }
    }
    let ca_key = Key::new("tls").then("ca_file");
    let roots = Arc::new(tls::root_store(&config.tls).map_err(|e| config.key_error(&ca_key, e))?);
    let trust = rotating::trust(&roots, &config.tls).map_err(|e| config.key_error(&ca_key, e))?;
    let mut watched: Vec<Arc<dyn Reread>> = vec![trust.clone()];
    let mut routes = Vec::with_capacity(config.routes.len());
    for (index, route) in config.routes.iter().enumerate() {
        let key = |table: &str, field: &str| Key::new("routes").at(index).then(table).then(field);
        let listener = match &route.tls {
            Some(listener_tls) => {
                tls::load_certs(&listener_tls.cert)
                    .map_err(|e| config.key_error(&key("tls", "cert"), e))?;
                tls::load_private_key(&listener_tls.key)
                    .map_err(|e| config.key_error(&key("tls", "key"), e))?;
                let (server, cert) = rotating::server_config(listener_tls)
                    .map_err(|e| config.key_error(&key("tls", "cert"), e))?;
                watched.push(cert);
                Some(server)
            }
            None => None,
        };
        let mut client_cert = None;
        if let Some(upstream_tls) = &route.upstream_tls {
            if let Some(cert) = &upstream_tls.client_cert {
                tls::load_certs(cert)
                    .map_err(|e| config.key_error(&key("upstream_tls", "client_cert"), e))?;
            }
            if let Some(private_key) = &upstream_tls.client_key {
                tls::load_private_key(private_key)
                    .map_err(|e| config.key_error(&key("upstream_tls", "client_key"), e))?;
            }
            if let (Some(cert), Some(private_key)) =
                (&upstream_tls.client_cert, &upstream_tls.client_key)
            {
                let cert = rotating::cert("upstream client certificate", cert, private_key)
                    .map_err(|e| config.key_error(&key("upstream_tls", "client_cert"), e))?;
                watched.push(cert.clone());
                client_cert = Some(cert);
            }
        }
        let upstream = rotating::upstream_config(&trust, client_cert)
            .map_err(|e| config.key_error(&key("upstream_tls", "client_cert"), e))?;
        routes.push(RouteTls { listener, upstream });
    }
    Ok(Checked {
        config,
        roots,
        trust,
        rotating: watched,
        routes,
    })
}

/// `credentials.NAME.FIELD`.
fn credential_key(name: &str, field: &str) -> Key {
    Key::new("credentials").then(name).then(field)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::fixture::{BASE, FILE, env, ok};
    use crate::config::parse;
    use crate::secret::MapEnv;

    fn temp_dir(name: &str) -> PathBuf {
        crate::config::fixture::temp_dir("preflight", name)
    }

    #[test]
    fn example_file_check_names_the_missing_secret_file() {
        let text = include_str!("../config.example.toml");
        let env = Arc::new(MapEnv::from([
            ("INBENTA_API_KEY", "k"),
            ("PLIANT_CLIENT_ID", "id"),
            ("PLIANT_CLIENT_SECRET", "s"),
        ]));
        let config = parse(text, Path::new("config.example.toml"), env).unwrap();
        let e = preflight(config).unwrap_err();
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
        let e = preflight(ok(&text)).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "credentials.a.token"));
        assert_eq!(e.message, "environment variable MISSING_TOKEN is not set");
        assert_eq!(
            e.to_string(),
            format!("{FILE}:3: credentials.a.token: environment variable MISSING_TOKEN is not set")
        );

        let dir = temp_dir("check");
        let config_path = dir.join("sidekey.toml");
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"token\" }");
        let config = parse(&text, &config_path, env()).unwrap();
        preflight(config).unwrap();

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "{ file = \"nope\" }");
        let e = preflight(parse(&text, &config_path, env()).unwrap()).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "credentials.a.token"));
        assert!(e.message.contains("nope"), "{e}");

        let text = format!("{BASE}tls = {{ cert = \"missing.crt\", key = \"missing.key\" }}\n");
        let e = preflight(parse(&text, &config_path, env()).unwrap()).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(9), "routes[0].tls.cert"));

        let text = format!("[tls]\nca_file = \"missing-ca.pem\"\n{BASE}");
        let e = preflight(parse(&text, &config_path, env()).unwrap()).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "tls.ca_file"));

        let text = BASE.replace("{ env = \"A_TOKEN\" }", "\"t0k3n\"");
        let e = parse(
            &text.replace("8080", "0"),
            &config_path,
            Arc::new(MapEnv::default()),
        );
        assert!(preflight(e.unwrap()).is_ok());
    }
}
