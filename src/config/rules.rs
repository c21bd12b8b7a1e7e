//! The rules between tables, applied once every table has been read: each
//! route against the credentials and the routes before it, `[forward_proxy]
//! hosts` against the credentials and each other, https unless
//! `allow_insecure_http`, loopback unless `allow_non_loopback`, and `[admin]`
//! and `[forward_proxy]` on addresses of their own.

use std::collections::BTreeMap;

use super::error::Key;
use super::route::Upstream;
use super::source::Source;
use super::top::Config;
use crate::credential::settings::CredentialKind;
use crate::host::ForwardHost;

/// Check `config` as read from `src`; resolve each route's upstream, name and
/// file paths. The loader keeps routes only when all could be read: their
/// rules name them by index.
pub(super) fn apply(config: &mut Config, src: &Source<'_>) {
    routes(config, src);
    forward_proxy(config, src);
    shared(config, src);
}

/// Each route against the credentials and the routes before it.
fn routes(config: &mut Config, src: &Source<'_>) {
    let (credentials, defined) = (&config.credentials, config.defined());
    // A credential that is written but could not be read has an error of its own.
    let named = src.keys(&Key::new("credentials"));
    for index in 0..config.routes.len() {
        let (earlier, rest) = config.routes.split_at_mut(index);
        let (route, base) = (&mut rest[0], Key::new("routes").at(index));
        if !named.contains(&route.credential) {
            let name = &route.credential;
            let message = format!("no credential named `{name}` (defined: {defined})");
            src.fail(&base.then("credential"), message);
        }
        let credential = credentials.get(&route.credential);
        let inbenta = credential.is_none_or(|c| matches!(c.kind, CredentialKind::Inbenta(_)));
        let unreadable = src.written(&base, "upstream") || src.written(&base, "inbenta_api");
        match (route.url.take(), route.inbenta_api.take()) {
            (Some(url), None) => route.upstream = Upstream::Url(url),
            (None, Some(api)) if inbenta => route.upstream = Upstream::InbentaApi(api),
            (None, Some(_)) => {
                let name = &route.credential;
                let message =
                    format!("`inbenta_api` needs a credential of type inbenta; `{name}` is not");
                src.fail(&base.then("inbenta_api"), message);
            }
            (Some(_), Some(_)) => {
                let message = "set `upstream` or `inbenta_api`, not both";
                src.fail(&base.then("inbenta_api"), message);
            }
            (None, None) if unreadable => {} // and said why
            (None, None) => {
                let message = "missing key `upstream` (or `inbenta_api`)";
                src.fail(&base.then("upstream"), message);
            }
        }
        if let Upstream::Url(url) = &route.upstream {
            src.https(&base, ("upstream", url), route.allow_insecure_http);
        }
        src.loopback(&base, route.listen, route.allow_non_loopback);
        if route.name.is_empty() {
            route.name = format!("{}{}", route.listen, route.path_prefix);
        }
        if let Some(tls) = &mut route.tls {
            (tls.cert, tls.key) = (src.file(&tls.cert), src.file(&tls.key));
        }
        if let Some(up) = &mut route.upstream_tls {
            if up.client_cert.is_some() != up.client_key.is_some() {
                let message = "set both `client_cert` and `client_key`, or neither";
                src.fail(&base.then("upstream_tls"), message);
            }
            up.client_cert = up.client_cert.as_deref().map(|f| src.file(f));
            up.client_key = up.client_key.as_deref().map(|f| src.file(f));
        }
        // A collision names `path_prefix` or `name` where written, else `listen`.
        let written = |field: &str| match base.then(field).find(&src.doc).1 {
            true => base.then(field),
            false => base.then("listen"),
        };
        let (listen, prefix) = (route.listen, &route.path_prefix);
        let mut same_listen = (earlier.iter().enumerate()).filter(|(_, o)| o.listen == listen);
        if let Some((index, _)) = same_listen.clone().find(|(_, o)| o.path_prefix == *prefix) {
            let message =
                format!("routes[{index}] already serves path_prefix `{prefix}` on {listen}");
            src.fail(&written("path_prefix"), message);
        // (a route repeating a listen address and prefix repeats their default name too)
        } else if let Some(index) = earlier.iter().position(|other| other.name == route.name) {
            let (name, line) = (&route.name, src.line(&Key::new("routes").at(index)));
            let message =
                format!("route name `{name}` is already used by routes[{index}] (line {line})");
            src.fail(&written("name"), message);
        }
        if let Some((index, _)) = same_listen.find(|(_, other)| other.tls != route.tls) {
            let message = format!(
                "routes sharing the listen address {listen} must use the same `tls`; this one \
                 differs from routes[{index}]"
            );
            src.fail(&base.then("tls"), message);
        }
    }
}

/// `[forward_proxy] hosts`: each names a credential that exists, and its own host and port.
fn forward_proxy(config: &Config, src: &Source<'_>) {
    let Some(proxy) = &config.forward_proxy else {
        return;
    };
    let table = Key::new("forward_proxy").then("hosts");
    let named = src.keys(&Key::new("credentials"));
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
            src.fail(&key, message);
        }
        if let Some(name) = proxy.hosts.get(&host).filter(|name| !named.contains(name)) {
            src.fail(&key, format!("no credential named `{name}`"));
        }
    }
}

/// `[admin]` and `[forward_proxy]`: loopback, and addresses of their own (port 0 never collides).
fn shared(config: &Config, src: &Source<'_>) {
    let routes = config.routes.iter().enumerate();
    let mut taken: Vec<_> = routes
        .map(|(i, r)| (r.listen, Key::new("routes").at(i)))
        .collect();
    let proxy =
        (config.forward_proxy.iter()).map(|p| ("forward_proxy", p.listen, p.allow_non_loopback));
    let admin = (config.admin.iter()).map(|a| ("admin", a.listen, a.allow_non_loopback));
    for (table, addr, allowed) in proxy.chain(admin) {
        let table = Key::new(table);
        src.loopback(&table, addr, allowed);
        let clash = taken
            .iter()
            .find(|(other, _)| *other == addr && addr.port() != 0);
        if let Some((_, owner)) = clash {
            let message = format!("{addr} is already the listen address of {owner}");
            src.fail(&table.then("listen"), message);
        }
        taken.push((addr, table));
    }
}
