//! A route at run time: which requests it takes (`path_prefix`), where they
//! go (a fixed upstream — for the forward proxy, the configured host and
//! port — or an Inbenta `apis` entry), how the upstream URI is joined
//! from the base path and the request path, and which rewriting the
//! upstream's `Location`, `Content-Location` and `Link` get on the way back.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use super::client::UpstreamClient;
use super::relocate;
use crate::credential::{CredentialHandle, Published};
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;

/// Scheme, authority and base path of an upstream.
#[derive(Clone, Debug)]
pub struct Base {
    scheme: Scheme,
    authority: Authority,
    /// Base path without trailing `/`; empty for the root.
    path: String,
}

impl Base {
    /// Split an absolute URI into scheme, authority and base path.
    pub fn from_uri(uri: &Uri) -> Option<Base> {
        let path = uri.path().trim_end_matches('/').to_owned();
        Some(Base {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            path,
        })
    }

    /// `scheme://authority`, for messages.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Where a route's requests go.
#[derive(Debug)]
pub enum Target {
    /// `upstream = "https://…"`.
    Fixed(Base),
    /// `inbenta_api = "NAME"`: the base URL from the token's `apis` map.
    InbentaApi(String),
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Label for metrics and logs.
    pub name: Arc<str>,
    prefix: String,
    strip_prefix: bool,
    target: Target,
    /// The credential whose headers every request carries.
    pub credential: Arc<CredentialHandle>,
    /// The route's static `headers`.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// Pooled HTTPS client to the upstream.
    pub client: UpstreamClient,
    /// Time allowed until the upstream's response head.
    pub request_timeout: Duration,
    /// Longest pause within the app's request body or the upstream's response body.
    pub body_timeout: Duration,
    /// The route's metric series.
    pub metrics: Arc<RouteMetrics>,
    /// `[log] access`: write an access line per request ([`super::access`]).
    pub access_log: bool,
    /// How the upstream's answers that name its URLs are rewritten.
    answers: Answers,
}

/// How a route's answers' `Location`, `Content-Location` and `Link` are rewritten.
#[derive(Debug)]
enum Answers {
    /// Passed as they are (a route not yet given its listener's table).
    AsTheyAre,
    /// Forward proxy: the upstream authorities of every `hosts` key, whose
    /// `https://` URLs point back at `http://` ([`super::redirect`]).
    Forward(Arc<[Box<str>]>),
    /// A route listener: URLs of its routes' upstreams become the app-side
    /// paths ([`relocate`]); `index` is this route's place in the table.
    Listener {
        table: Arc<relocate::Listener>,
        index: usize,
    },
}

/// The parts of a route that are not the path rules.
#[derive(Debug)]
pub struct RouteParts {
    /// Label for metrics and logs.
    pub name: Arc<str>,
    /// The credential.
    pub credential: Arc<CredentialHandle>,
    /// Static headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Pooled client.
    pub client: UpstreamClient,
    /// `request_timeout`.
    pub request_timeout: Duration,
    /// `body_timeout`.
    pub body_timeout: Duration,
    /// The route's metric series ([`crate::metrics::Metrics::route`]).
    pub metrics: Arc<RouteMetrics>,
    /// `[log] access`.
    pub access_log: bool,
}

impl Route {
    /// A route taking `prefix` (normalised: starts with `/`, no trailing `/`
    /// except the root) to `target`.
    pub fn new(prefix: &str, strip_prefix: bool, target: Target, parts: RouteParts) -> Self {
        let prefix = match prefix.trim_end_matches('/') {
            "" => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        Route {
            name: parts.name,
            prefix,
            strip_prefix,
            target,
            credential: parts.credential,
            headers: parts.headers.into_boxed_slice(),
            client: parts.client,
            request_timeout: parts.request_timeout,
            body_timeout: parts.body_timeout,
            metrics: parts.metrics,
            access_log: parts.access_log,
            answers: Answers::AsTheyAre,
        }
    }

    /// This route serves the forward proxy, whose keys' upstreams have
    /// `authorities`: their `https://` URLs in answers are rewritten to
    /// `http://` ([`super::redirect`]).
    pub fn serving_forward_proxy(mut self, authorities: Arc<[Box<str>]>) -> Self {
        self.answers = Answers::Forward(authorities);
        self
    }

    /// This route is number `index` (in dispatch order) of the listener
    /// whose routes `table` holds: answers naming those routes' upstream
    /// URLs point back at their paths ([`relocate`]).
    pub fn on_listener(mut self, table: Arc<relocate::Listener>, index: usize) -> Self {
        self.answers = Answers::Listener { table, index };
        self
    }

    /// This route as its listener's [`relocate`] table sees it.
    pub fn relocate_entry(&self) -> relocate::Entry {
        let upstream = match &self.target {
            Target::Fixed(base) => relocate::Upstream::Fixed {
                scheme: base.scheme.clone(),
                authority: base.authority.clone(),
                path: base.path.as_str().into(),
            },
            Target::InbentaApi(api) => relocate::Upstream::InbentaApi {
                api: api.as_str().into(),
            },
        };
        relocate::Entry {
            prefix: self.prefix.as_str().into(),
            strip_prefix: self.strip_prefix,
            upstream,
            credential: Arc::clone(&self.credential),
        }
    }

    /// Point the `Location` and `Content-Location` of a redirect (3xx) or a
    /// `201 Created`, and the `Link` targets of any answer, that name the
    /// upstream's own URLs back at sidekey (forward proxy:
    /// [`super::redirect`]; route listener: [`relocate`]). Other answers'
    /// `Content-Location` no client follows. An answer that is no redirect
    /// and has no `Link` costs one header lookup (~100 instructions) and no
    /// allocation.
    pub fn rewrite_answer(&self, status: StatusCode, headers: &mut HeaderMap) {
        let redirect = status.is_redirection() || status == StatusCode::CREATED;
        match &self.answers {
            Answers::AsTheyAre => {}
            Answers::Forward(authorities) => {
                super::redirect::rewrite(redirect, headers, authorities);
            }
            Answers::Listener { table, index } => table.rewrite(*index, redirect, headers),
        }
    }

    /// The normalised `path_prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `path` falls under this route's prefix (`/chatbot` takes
    /// `/chatbot` and `/chatbot/…`, not `/chatbots`).
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }

    /// The upstream URI for a request to `uri`, with `published` supplying
    /// Inbenta's `apis` map.
    pub fn upstream_uri(&self, uri: &Uri, published: &Published) -> Result<Uri, ProxyError> {
        let owned_base;
        let base = match &self.target {
            Target::Fixed(base) => base,
            Target::InbentaApi(api) => {
                let api_uri = published
                    .apis
                    .as_ref()
                    .and_then(|apis| apis.get(api))
                    .ok_or_else(|| {
                        ProxyError::CredentialUnavailable(crate::credential::Unavailable {
                            credential: Arc::from(self.credential.name()),
                            reason: format!("the auth response has no `{api}` entry in `apis`"),
                        })
                    })?;
                owned_base = Base::from_uri(api_uri).ok_or_else(|| {
                    ProxyError::BadRequest(format!("`apis.{api}` is not an absolute URL"))
                })?;
                &owned_base
            }
        };
        let path_and_query = join_path(&base.path, &self.prefix, self.strip_prefix, uri)?;
        Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))
    }

    /// `scheme://authority` of a fixed upstream, or a description of the target.
    pub fn describe_target(&self) -> String {
        match &self.target {
            Target::Fixed(base) => base.origin(),
            Target::InbentaApi(api) => format!("inbenta api `{api}`"),
        }
    }
}

/// Whether `path` falls under the normalised `prefix` (`/chatbot` takes
/// `/chatbot` and `/chatbot/…`, not `/chatbots`; `/` takes everything).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The upstream path and query for a request to `uri` on a route with the
/// normalised `prefix`: `base_path` (no trailing `/`) + the request path
/// (minus the prefix when `strip_prefix`) + the query.
pub fn join_path(
    base_path: &str,
    prefix: &str,
    strip_prefix: bool,
    uri: &Uri,
) -> Result<PathAndQuery, ProxyError> {
    let path = uri.path();
    let rest = if strip_prefix && prefix != "/" {
        path.get(prefix.len()..).unwrap_or_default()
    } else {
        path
    };
    if base_path.is_empty() && rest.len() == path.len() {
        // Nothing to rewrite: reuse the request's own path and query.
        if let Some(pq) = uri.path_and_query() {
            return Ok(pq.clone());
        }
    }
    let mut joined = String::with_capacity(base_path.len() + rest.len() + 1);
    joined.push_str(base_path);
    joined.push_str(rest);
    if joined.is_empty() {
        joined.push('/');
    }
    if let Some(query) = uri.query() {
        joined.push('?');
        joined.push_str(query);
    }
    PathAndQuery::try_from(joined)
        .map_err(|e| ProxyError::BadRequest(format!("invalid request path: {e}")))
}
