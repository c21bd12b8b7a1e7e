//! The rules between tables, applied once every table has been read: each
//! route against the credentials and the routes before it, `[forward_proxy]
//! hosts` against the credentials and each other, https unless
//! `allow_insecure_http`, loopback unless `allow_non_loopback`, and `[admin]`
//! and `[forward_proxy]` on addresses of their own.

use std::collections::BTreeMap;

use super::credential::CredentialKind;
use super::error::{ConfigError, Key};
use super::route::Upstream;
use super::source::Source;
use super::top::Config;
use crate::host::ForwardHost;

/// Check `config` as read from `src`; resolve each route's upstream, name and file paths.
pub(super) fn apply(config: &mut Config, src: &Source<'_>) -> Result<(), ConfigError> {
    routes(config, src)?;
    forward_proxy(config, src)?;
    shared(config, src)
}

/// Each route against the credentials and the routes before it.
fn routes(config: &mut Config, src: &Source<'_>) -> Result<(), ConfigError> {
    let (credentials, defined) = (&config.credentials, config.defined());
    for index in 0..config.routes.len() {
        let (earlier, rest) = config.routes.split_at_mut(index);
        let (route, base) = (&mut rest[0], Key::new("routes").at(index));
        let Some(credential) = credentials.get(&route.credential) else {
            let (name, known) = (&route.credential, &defined);
            let message = format!("no credential named `{name}` (defined: {known})");
            return Err(src.error(&base.then("credential"), message));
        };
        let inbenta = matches!(credential.kind, CredentialKind::Inbenta(_));
        route.upstream = match (route.url.take(), route.inbenta_api.take()) {
            (Some(url), None) => Upstream::Url(url),
            (None, Some(api)) if inbenta => Upstream::InbentaApi(api),
            (None, Some(_)) => {
                let name = &credential.name;
                let message =
                    format!("`inbenta_api` needs a credential of type inbenta; `{name}` is not");
                return Err(src.error(&base.then("inbenta_api"), message));
            }
            (Some(_), Some(_)) => {
                let message = "set `upstream` or `inbenta_api`, not both";
                return Err(src.error(&base.then("inbenta_api"), message));
            }
            (None, None) => {
                let message = "missing key `upstream` (or `inbenta_api`)";
                return Err(src.error(&base.then("upstream"), message));
            }
        };
        if let Upstream::Url(url) = &route.upstream {
            src.https(&base, ("upstream", url), route.allow_insecure_http)?;
        }
        src.loopback(&base, route.listen, route.allow_non_loopback)?;
        if route.name.is_empty() {
            route.name = format!("{}{}", route.listen, route.path_prefix);
        }
        if let Some(tls) = &mut route.tls {
            (tls.cert, tls.key) = (src.file(&tls.cert), src.file(&tls.key));
        }
        if let Some(up) = &mut route.upstream_tls {
            if up.client_cert.is_some() != up.client_key.is_some() {
                let message = "set both `client_cert` and `client_key`, or neither";
                return Err(src.error(&base.then("upstream_tls"), message));
            }
            up.client_cert = up.client_cert.as_deref().map(|f| src.file(f));
            up.client_key = up.client_key.as_deref().map(|f| src.file(f));
        }
        // A collision names `path_prefix` or `name` where written, else `listen`.
        let written = |field: &str| match base.then(field).find(&src.doc).1 {
            true => base.then(field),
            false => base.then("listen"),
        };
        for (index, other) in earlier.iter().enumerate() {
            let (listen, prefix) = (route.listen, &route.path_prefix);
            if other.listen == listen && other.path_prefix == *prefix {
                let message =
                    format!("routes[{index}] already serves path_prefix `{prefix}` on {listen}");
                return Err(src.error(&written("path_prefix"), message));
            }
            if other.listen == listen && other.tls != route.tls {
                let message = format!(
                    "routes sharing the listen address {listen} must use the same `tls`; this one \
                     differs from routes[{index}]"
                );
                return Err(src.error(&base.then("tls"), message));
            }
        }
        if let Some(index) = earlier.iter().position(|other| other.name == route.name) {
            let (name, line) = (&route.name, src.line(&Key::new("routes").at(index)));
            let message =
                format!("route name `{name}` is already used by routes[{index}] (line {line})");
            return Err(src.error(&written("name"), message));
        }
    }
    Ok(())
}

/// `[forward_proxy] hosts`: each names a credential that exists, and its own host and port.
fn forward_proxy(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    let Some(proxy) = &config.forward_proxy else {
        return Ok(());
    };
    let table = Key::new("forward_proxy").then("hosts");
    let mut seen = BTreeMap::new();
    for written in src.keys(&table) {
        let Ok(host) = ForwardHost::parse(&written) else {
            continue;
        };
        let (key, port) = (table.then(&written), host.request_port());
        if let Some(other) = seen.insert((host.host.clone(), port), host.clone()) {
            let message = format!(
                "`{written}` names the same host and port as `{other}` (host names ignore \
                 case; a key without a port means port 80)"
            );
            return Err(src.error(&key, message));
        }
        let credential = proxy.hosts.get(&host);
        if let Some(name) = credential.filter(|name| !config.credentials.contains_key(*name)) {
            return Err(src.error(&key, format!("no credential named `{name}`")));
        }
    }
    Ok(())
}

/// `[admin]` and `[forward_proxy]`: loopback, and addresses of their own (port 0 never collides).
fn shared(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    let routes = config.routes.iter().enumerate();
    let mut taken: Vec<_> = routes
        .map(|(i, r)| (r.listen, Key::new("routes").at(i)))
        .collect();
    let proxy =
        (config.forward_proxy.iter()).map(|p| ("forward_proxy", p.listen, p.allow_non_loopback));
    let admin = (config.admin.iter()).map(|a| ("admin", a.listen, a.allow_non_loopback));
    for (table, addr, allowed) in proxy.chain(admin) {
        let table = Key::new(table);
        src.loopback(&table, addr, allowed)?;
        let clash = taken
            .iter()
            .find(|(other, _)| *other == addr && addr.port() != 0);
        if let Some((_, owner)) = clash {
            let message = format!("{addr} is already the listen address of {owner}");
            return Err(src.error(&table.then("listen"), message));
        }
        taken.push((addr, table));
    }
    Ok(())
}
