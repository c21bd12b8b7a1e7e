//! A route listener's answers that name one of its routes' upstream URLs
//! (`Location` and `Content-Location` of a redirect or a `201 Created`,
//! and the targets of `Link` fields on any answer, [`super::link`]) point
//! back at sidekey, as nginx's `proxy_redirect default` does: the app asked
//! for `/prefix/x`, sidekey sent `https://host/base/x`, and an upstream
//! answering `Location: https://host/base/y` (or `/base/y`) is passed on as
//! `/prefix/y`. A redirect-following app then comes back through the route
//! and gets its credential injected, instead of going to the upstream
//! directly without it (or resolving `/base/y` against sidekey's address).
//!
//! Matching, in [`to_app`]:
//! - a URL names an upstream when its scheme and host are the same (ASCII
//!   case-insensitively) and so is its port (a missing port is the scheme's
//!   default: `https://host` is `https://host:443`); a path-absolute
//!   reference (`/base/y`) or a network-path one (`//host/base/y`) is read
//!   against the answering route's upstream URL;
//! - its path must fall under the upstream's base path (and under the
//!   route's `path_prefix` too without `strip_prefix`) at a segment
//!   boundary: `/base` takes `/base` and `/base/…`, never `/basement`.
//!   Paths are compared as sent, never percent-decoded;
//! - of the listener's routes with the answering route's credential that
//!   own the URL, the longest upstream path wins (then the answering
//!   route), so a redirect to another such route's upstream comes back as
//!   that route's path; a path another route's longer `path_prefix` would
//!   take instead is not produced. Routes with another credential are
//!   never candidates: an upstream cannot steer a redirect-following app
//!   (a 307 POST, body and all) to where a credential it never had is
//!   injected;
//!
//! The answer is a path-absolute reference (`/prefix/y?q#f`, query and
//! fragment kept), which every client resolves against the URL it asked:
//! it works whatever `Host` the app used, on TLS listeners too. Asked for
//! it, the route sends exactly the URL the upstream named, with one
//! exception: a route at `/` cannot name its base path without the
//! trailing `/` (the app's `/` goes to `/base/`), so `/base` becomes `/`.
//! Everything else — other hosts, paths outside every base, `http://` URLs
//! of an `https://` upstream, user information, relative references,
//! values that are not text — passes unchanged.
//!
//! A `Link` target is matched the same way: a paginated API's
//! `<https://host/base/items?page=2>; rel="next"` reaches the app as
//! `</prefix/items?page=2>; rel="next"`, so an app following `rel="next"`
//! stays behind sidekey; its parameters pass as they are.
//!
//! The table ([`Listener`]) is built once per listener with its routes;
//! a redirect without `Location`, `Content-Location` and `Link` costs one
//! header lookup for each name, any other answer without `Link` one, and
//! neither allocates. An Inbenta route's upstream URL comes from its
//! token's `apis` map, read when an answer has one of them.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};

use super::link;
use crate::credential::{CredentialHandle, Published};

/// Where one route of a listener sends its requests.
#[derive(Debug)]
pub enum Upstream {
    /// `upstream = "https://…"`: its scheme, authority and base path
    /// (without trailing `/`).
    Fixed {
        /// Scheme.
        scheme: Scheme,
        /// Host and port.
        authority: Authority,
        /// Base path without trailing `/`; empty for the root.
        path: Box<str>,
    },
    /// `inbenta_api = "NAME"`: the base URL in the route's token's `apis` map.
    InbentaApi {
        /// The `apis` key.
        api: Box<str>,
    },
}

/// One route of a listener, as answers are matched against it.
#[derive(Debug)]
pub struct Entry {
    /// The normalised `path_prefix` (`/` or no trailing `/`).
    pub prefix: Box<str>,
    /// `strip_prefix`.
    pub strip_prefix: bool,
    /// Its upstream.
    pub upstream: Upstream,
    /// Its credential.
    pub credential: Arc<CredentialHandle>,
}

/// Every route of one listener, in dispatch order (longest `path_prefix`
/// first, as [`super::Dispatch::find`] tries them).
#[derive(Debug)]
pub struct Listener {
    entries: Box<[Entry]>,
}

impl Listener {
    /// The table of a listener whose routes, in dispatch order, are `entries`.
    pub fn new(entries: Vec<Entry>) -> Self {
        Listener {
            entries: entries.into_boxed_slice(),
        }
    }

    /// Point an answer to a request that route `answering` (its index in
    /// dispatch order) sent back at the listener: its `Location` and
    /// `Content-Location` when it is a `redirect` (a 3xx or a `201`), and
    /// the targets of its `Link` fields whatever its status
    /// ([`super::link`]). An answer with none of them costs a header
    /// lookup for each name it is checked for, and no allocation.
    pub fn rewrite(&self, answering: usize, redirect: bool, headers: &mut HeaderMap) {
        if !link::names_urls(headers, redirect) {
            return;
        }
        // Inbenta routes' tokens, held while their `apis` URLs are borrowed.
        let published: Vec<Option<Arc<Published>>> = self
            .entries
            .iter()
            .map(|entry| match &entry.upstream {
                Upstream::InbentaApi { .. } => entry.credential.current().ok(),
                Upstream::Fixed { .. } => None,
            })
            .collect();
        let routes: Vec<Mapping<'_>> = self
            .entries
            .iter()
            .zip(&published)
            .map(|(entry, published)| Mapping {
                upstream: entry.upstream_url(published.as_deref()),
                prefix: &entry.prefix,
                strip_prefix: entry.strip_prefix,
                credential: entry.credential.name(),
            })
            .collect();
        link::rewrite_answer_urls(headers, redirect, |url| to_app(url, answering, &routes));
    }
}

impl Entry {
    fn upstream_url<'a>(&'a self, published: Option<&'a Published>) -> Option<UpstreamUrl<'a>> {
        match &self.upstream {
            Upstream::Fixed {
                scheme,
                authority,
                path,
            } => Some(UpstreamUrl::new(scheme.as_str(), authority, path)),
            Upstream::InbentaApi { api, .. } => {
                let uri: &Uri = published?.apis.as_ref()?.get(&**api)?;
                let path = uri.path().trim_end_matches('/');
                Some(UpstreamUrl::new(uri.scheme_str()?, uri.authority()?, path))
            }
        }
    }
}

/// A route's upstream URL, in the parts answers are compared by.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamUrl<'a> {
    scheme: &'a str,
    host: &'a str,
    /// The port, the scheme's default when the URL has none.
    port: Option<u16>,
    /// Base path without trailing `/`.
    path: &'a str,
}

impl<'a> UpstreamUrl<'a> {
    /// `scheme://authority` + `path` (without trailing `/`).
    pub fn new(scheme: &'a str, authority: &'a Authority, path: &'a str) -> Self {
        UpstreamUrl {
            scheme,
            host: authority.host(),
            port: authority.port_u16().or_else(|| default_port(scheme)),
            path,
        }
    }
}

/// One route of a listener for [`to_app`]: its upstream URL (`None` when
/// unknown: an Inbenta route without a token) and path rules.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<'a> {
    /// The route's upstream URL.
    pub upstream: Option<UpstreamUrl<'a>>,
    /// The normalised `path_prefix`.
    pub prefix: &'a str,
    /// `strip_prefix`.
    pub strip_prefix: bool,
    /// The route's credential's name.
    pub credential: &'a str,
}

/// The app-side path-absolute reference for `location`, from an answer to
/// route `answering` of `routes` (a listener's routes in dispatch order),
/// or `None` when it names no route's upstream URL (see the module doc).
pub fn to_app(location: &str, answering: usize, routes: &[Mapping<'_>]) -> Option<String> {
    let answered = routes.get(answering)?;
    let (origin, rest) = split_origin(location, answered.upstream.as_ref()?)?;
    let (path, suffix) = rest.split_at(rest.find(['?', '#']).unwrap_or(rest.len()));
    // (route, length of the upstream path it owns, the app-side path)
    let mut best: Option<(usize, usize, String)> = None;
    for (index, route) in routes.iter().enumerate() {
        // Never into another credential's route: an upstream must not be
        // able to steer a redirect-following app (a 307 POST with its
        // body) to where a credential it never had is injected.
        if route.credential != answered.credential {
            continue;
        }
        let Some(upstream) = route.upstream.as_ref().filter(|up| origin.names(up)) else {
            continue;
        };
        let Some(under_base) = under(path, upstream.path) else {
            continue;
        };
        let app_prefix = if route.prefix == "/" {
            ""
        } else {
            route.prefix
        };
        let (remainder, owned) = if route.strip_prefix {
            (under_base, upstream.path.len())
        } else {
            // The app's `/prefix/x` went to `/base/prefix/x`.
            let Some(remainder) = under(under_base, app_prefix) else {
                continue;
            };
            (remainder, upstream.path.len() + app_prefix.len())
        };
        let better = match &best {
            None => true,
            Some((other, other_owned, _)) => {
                owned > *other_owned
                    || (owned == *other_owned && index == answering && *other != answering)
            }
        };
        if !better {
            continue;
        }
        let mut app = String::with_capacity(app_prefix.len() + remainder.len() + suffix.len() + 1);
        app.push_str(app_prefix);
        app.push_str(remainder);
        if app.is_empty() {
            app.push('/');
        }
        // Only a path that this route would take back.
        let taken_by = routes
            .iter()
            .position(|other| other.prefix == "/" || under(&app, other.prefix).is_some());
        if taken_by == Some(index) {
            best = Some((index, owned, app));
        }
    }
    let (_, _, mut app) = best?;
    app.push_str(suffix);
    Some(app)
}

/// The scheme, host and port a location names, and the rest of it (path,
/// query, fragment).
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl Origin<'_> {
    fn names(&self, upstream: &UpstreamUrl<'_>) -> bool {
        self.scheme.eq_ignore_ascii_case(upstream.scheme)
            && self.host.eq_ignore_ascii_case(upstream.host)
            && self.port == upstream.port
    }
}

/// Split `location` into the origin it names and the rest; path-absolute
/// and network-path references are read against `answering`'s URL.
fn split_origin<'a>(
    location: &'a str,
    answering: &UpstreamUrl<'a>,
) -> Option<(Origin<'a>, &'a str)> {
    let (scheme, after_scheme) = if let Some(rest) = location.strip_prefix("//") {
        (answering.scheme, rest)
    } else if location.starts_with('/') {
        let origin = Origin {
            scheme: answering.scheme,
            host: answering.host,
            port: answering.port,
        };
        return Some((origin, location));
    } else {
        let (scheme, rest) = location.split_once("://")?;
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid {
            return None;
        }
        (scheme, rest)
    };
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    let (host, port) = split_authority(authority)?;
    let port = match port {
        Some(port) if !port.is_empty() => Some(port.parse().ok()?),
        _ => default_port(scheme),
    };
    Some((Origin { scheme, host, port }, rest))
}

/// Host and port text of an authority without user information.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// The rest of `path` after `base` when `path` is `base` or under it
/// (`/base` takes `/base`, `/base/…`, never `/basement`); the empty base
/// takes everything.
fn under<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(base)?;
    (base.is_empty() || rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::{Mapping, UpstreamUrl, to_app};
    use crate::proxy::route::join_path;
    use http::uri::Authority;

    fn authority(text: &'static str) -> &'static Authority {
        Box::leak(Box::new(Authority::from_static(text)))
    }

    fn mapping(
        url: (&'static str, &'static str, &'static str),
        prefix: &'static str,
        strip_prefix: bool,
    ) -> Mapping<'static> {
        let (scheme, host, path) = url;
        Mapping {
            upstream: Some(UpstreamUrl::new(scheme, authority(host), path)),
            prefix,
            strip_prefix,
            credential: "c",
        }
    }

    #[test]
    fn urls_of_the_upstream_under_its_base_become_the_routes_path() {
        let routes = [mapping(("https", "api.example", "/v1"), "/api", true)];
        for (location, expected) in [
            ("https://api.example/v1/y", Some("/api/y")),
            ("https://api.example:443/v1/y?q=1#f", Some("/api/y?q=1#f")),
            ("HTTPS://API.Example/v1/y", Some("/api/y")),
            ("https://api.example:/v1/y", Some("/api/y")),
            ("//api.example/v1/y", Some("/api/y")),
            ("/v1/y", Some("/api/y")),
            ("/v1", Some("/api")),
            ("/v1/", Some("/api/")),
            ("/v1?q", Some("/api?q")),
            ("https://api.example/v1#f", Some("/api#f")),
            ("/v1/a%2Fb", Some("/api/a%2Fb")),
            // Not this upstream's, or not under its base.
            ("https://api.example:8443/v1/y", None),
            ("http://api.example/v1/y", None),
            ("https://api.example.evil/v1/y", None),
            ("https://user@api.example/v1/y", None),
            ("https://api.example/v1beta/y", None),
            ("https://api.example/V1/y", None),
            ("/v1beta", None),
            ("/v2/y", None),
            ("/%761/y", None),
            ("https://api.example", None),
            ("https://api.example:x/v1", None),
            ("https:/v1/y", None),
            ("y", None),
            ("?q", None),
            ("", None),
        ] {
            assert_eq!(
                to_app(location, 0, &routes).as_deref(),
                expected,
                "{location}"
            );
        }
    }

    #[test]
    fn the_root_and_prefix_rules_are_joined_as_requests_are() {
        // Root base, root prefix: the path passes as it is.
        let root = [mapping(("https", "h", ""), "/", true)];
        assert_eq!(to_app("https://h/a?b", 0, &root).as_deref(), Some("/a?b"));
        assert_eq!(to_app("https://h", 0, &root).as_deref(), Some("/"));
        // Root base under a prefix.
        let prefixed = [mapping(("https", "h", ""), "/p", true)];
        assert_eq!(to_app("/a", 0, &prefixed).as_deref(), Some("/p/a"));
        assert_eq!(to_app("https://h?x", 0, &prefixed).as_deref(), Some("/p?x"));
        // Without strip_prefix the upstream path carries the prefix.
        let kept = [mapping(("https", "h", "/base"), "/p", false)];
        assert_eq!(to_app("/base/p/a", 0, &kept).as_deref(), Some("/p/a"));
        assert_eq!(to_app("/base/p", 0, &kept).as_deref(), Some("/p"));
        assert_eq!(to_app("/base/pp", 0, &kept), None);
        assert_eq!(to_app("/base/a", 0, &kept), None);
        // IPv6 hosts and explicit ports.
        let v6 = [mapping(("https", "[::1]:8443", "/v1"), "/", true)];
        assert_eq!(
            to_app("https://[::1]:8443/v1/a", 0, &v6).as_deref(),
            Some("/a")
        );
        assert_eq!(to_app("https://[::1]/v1/a", 0, &v6), None);
    }

    #[test]
    fn the_route_owning_the_longest_upstream_path_wins() {
        // Dispatch order: longest prefix first.
        let routes = [
            mapping(("https", "h", "/v1/deep"), "/deep", true),
            mapping(("https", "h", "/v1"), "/a", true),
            mapping(("https", "h", "/v2"), "/b", true),
            mapping(("https", "other", "/v1"), "/o", true),
        ];
        assert_eq!(to_app("/v2/x", 1, &routes).as_deref(), Some("/b/x"));
        assert_eq!(to_app("/v1/deep/x", 1, &routes).as_deref(), Some("/deep/x"));
        assert_eq!(
            to_app("/v1/deeper", 1, &routes).as_deref(),
            Some("/a/deeper")
        );
        assert_eq!(
            to_app("https://other/v1/x", 1, &routes).as_deref(),
            Some("/o/x")
        );
        // A path-absolute reference is the answering upstream's.
        assert_eq!(to_app("/v1/x", 3, &routes).as_deref(), Some("/o/x"));

        // Two routes to the same base: the answering one keeps it.
        let twins = [
            mapping(("https", "h", "/v1"), "/one", true),
            mapping(("https", "h", "/v1"), "/two", true),
        ];
        assert_eq!(to_app("/v1/x", 1, &twins).as_deref(), Some("/two/x"));
        assert_eq!(to_app("/v1/x", 0, &twins).as_deref(), Some("/one/x"));
    }

    #[test]
    fn a_route_with_another_credential_is_never_a_candidate() {
        let other = |mapping: Mapping<'static>| Mapping {
            credential: "other",
            ..mapping
        };
        let routes = [
            other(mapping(("https", "h", "/v1/deep"), "/deep", true)),
            mapping(("https", "h", "/v1"), "/a", true),
            other(mapping(("https", "h", "/v2"), "/b", true)),
        ];
        // The deeper base is another credential's: the answering route's own
        // path takes it, as it would send it.
        assert_eq!(
            to_app("/v1/deep/x", 1, &routes).as_deref(),
            Some("/a/deep/x")
        );
        // Only another credential's route owns it: unchanged.
        assert_eq!(to_app("/v2/x", 1, &routes), None);
        assert_eq!(to_app("https://h/v2/x", 1, &routes), None);
    }

    #[test]
    fn a_rewritten_path_is_sent_back_to_the_url_the_upstream_named() {
        // Whatever the base, prefix and strip_prefix, the app's request for
        // the rewritten path goes to the upstream URL of the answer. The one
        // exception: a route at `/` cannot name its base without a trailing
        // `/` (the app's `/` goes to `/v1/`), so `/v1` becomes `/`, the
        // nearest path (`/v1` itself would go to `/v1/v1`).
        let paths = [
            "/",
            "/v1",
            "/v1/",
            "/v1/a",
            "/v1/a/",
            "/v1beta",
            "/p",
            "/p/a",
            "/v1/p",
            "/v1/p/a",
            "/v1/pp",
            "/a%2Fb",
            "/v1/p?q=1",
        ];
        let mut rewritten = 0;
        for base in ["", "/v1"] {
            for prefix in ["/", "/p", "/x/y"] {
                for strip_prefix in [false, true] {
                    let routes = [mapping(("https", "h", base), prefix, strip_prefix)];
                    for path in paths {
                        let Some(app) = to_app(path, 0, &routes) else {
                            continue;
                        };
                        rewritten += 1;
                        let sent =
                            join_path(base, prefix, strip_prefix, &app.parse().unwrap()).unwrap();
                        let expected = match (prefix, path == base) {
                            ("/", true) => format!("{base}/"),
                            _ => path.to_owned(),
                        };
                        assert_eq!(
                            sent.as_str(),
                            expected,
                            "{base} {prefix} {strip_prefix} {app}"
                        );
                    }
                }
            }
        }
        assert!(rewritten > 30, "{rewritten}");
    }

    #[test]
    fn a_path_another_route_would_take_is_not_produced() {
        // `/a/b/x` would go to the `/a/b` route, another upstream.
        let routes = [
            mapping(("https", "other", ""), "/a/b", true),
            mapping(("https", "h", "/v1"), "/a", true),
        ];
        assert_eq!(to_app("/v1/b/x", 1, &routes), None);
        assert_eq!(to_app("/v1/c", 1, &routes).as_deref(), Some("/a/c"));
        // An Inbenta route without a token has no upstream URL to match.
        let unknown = [Mapping {
            upstream: None,
            prefix: "/",
            strip_prefix: false,
            credential: "c",
        }];
        assert_eq!(to_app("/v1/x", 0, &unknown), None);
    }
}
