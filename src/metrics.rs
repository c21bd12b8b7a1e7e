//! Prometheus metrics: one registry, the families of DESIGN.md, and the
//! small recording methods the proxy and the credential engine call.
//!
//! Families (all prefixed `sidekey_`):
//! - `requests_total{route,status}` — responses sent to the app
//! - `request_duration_seconds{route}` — histogram, request start to response head
//! - `token_refresh_total{credential,outcome,reason}` — outcome `success` |
//!   `failure`; reason `startup` | `scheduled` | `rejected` | `reload` (see
//!   [`crate::credential::RenewalReason`])
//! - `token_expires_in_seconds{credential}` — refreshed on every scrape; absent
//!   for tokens that never expire
//! - `upstream_errors_total{route,kind}` — kind `connect` | `timeout` | `other`,
//!   and for failures the app does not see as a sidekey error: `body` (the
//!   response body broke), `body_timeout` (it stalled), `stale_connection`
//!   (a pooled connection the upstream had closed; the request was sent
//!   again), `refused_stream` (the upstream refused an HTTP/2 stream
//!   unprocessed; the request was sent again), `goaway` (the upstream said
//!   GOAWAY before answering a request that is harmless to repeat; it was
//!   sent again)
//! - `token_rejections_total{credential,action}` — upstream rejections of a
//!   token (`renew_on_status`), by what was done: `renewed` (a renewal was
//!   requested or already under way) | `ignored` (fresh tokens are rejected
//!   too; not renewing during a cool-down)
//! - `renewal_task_restarts_total{credential}` — renewal tasks restarted
//!   after a crash (panic)
//! - `reloads_total{outcome}` — configuration reloads, `success` | `failure`;
//!   `config_last_reload_successful` — 0 while the last one was refused (the
//!   previous configuration serving), else 1: what an alert watches
//!
//! Label values are route and credential names from the configuration, never
//! anything taken from a request or a token.
//!
//! A request records through its route's [`RouteMetrics`]: the route's
//! series, looked up in the families (label hashing under a lock) on first
//! use only, then kept. A series still appears only once it has been
//! recorded, as when every request looked it up.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `{route, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

/// Labels `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

/// Labels `{credential, outcome, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialOutcome {
    credential: Arc<str>,
    outcome: &'static str,
    reason: &'static str,
}

/// Labels `{credential}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabel {
    credential: Arc<str>,
}

/// Labels `{credential, action}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialAction {
    credential: Arc<str>,
    action: &'static str,
}

/// Labels `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Labels `{route, kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKind {
    route: Arc<str>,
    kind: &'static str,
}

/// Outcome of one token request, for `sidekey_token_refresh_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A token was obtained.
    Success,
    /// The attempt failed.
    Failure,
}

/// The `token_rejections_total` series of one credential, resolved once.
#[derive(Clone, Debug, Default)]
pub struct RejectionCounters {
    renewed: Counter,
    ignored: Counter,
}

impl RejectionCounters {
    /// Count one rejection that renewed (or joined a renewal of) the token.
    pub fn renewed(&self) {
        self.renewed.inc();
    }

    /// Count one rejection passed on without renewing.
    pub fn ignored(&self) {
        self.ignored.inc();
    }
}

/// The metric families; cheap to clone (one shared handle).
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    durations: Family<RouteLabel, Histogram>,
    refreshes: Family<CredentialOutcome, Counter>,
    expires_in: Family<CredentialLabel, Gauge<f64, AtomicU64>>,
    upstream_errors: Family<RouteKind, Counter>,
    rejections: Family<CredentialAction, Counter>,
    restarts: Family<CredentialLabel, Counter>,
    /// Tokens taken from the `[cache]` instead of requested.
    adopted: Family<CredentialLabel, Counter>,
    /// 1 while the `[cache]`'s Redis answers, 0 while it does not; absent without one.
    redis_up: Family<Vec<(String, String)>, Gauge>,
    reloads: Family<OutcomeLabel, Counter>,
    /// 0 while the last reload was refused, else 1.
    last_reload_ok: Gauge,
    /// The series of requests no route took (`route="none"`).
    no_route: OnceLock<Arc<RouteMetrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidekey");
        let requests = Family::<RouteStatus, Counter>::default();
        let durations = Family::<RouteLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        let refreshes = Family::<CredentialOutcome, Counter>::default();
        let expires_in = Family::<CredentialLabel, Gauge<f64, AtomicU64>>::default();
        let upstream_errors = Family::<RouteKind, Counter>::default();
        let rejections = Family::<CredentialAction, Counter>::default();
        let restarts = Family::<CredentialLabel, Counter>::default();
        registry.register("requests", "Responses sent to the app", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request start to response head",
            durations.clone(),
        );
        registry.register(
            "token_refresh",
            "Token requests by outcome and reason",
            refreshes.clone(),
        );
        registry.register(
            "token_expires_in_seconds",
            "Seconds until the current token expires (0 when none is valid)",
            expires_in.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failures reaching the upstream",
            upstream_errors.clone(),
        );
        registry.register(
            "token_rejections",
            "Upstream rejections of a credential's token, by action: renewed or ignored",
            rejections.clone(),
        );
        registry.register(
            "renewal_task_restarts",
            "Renewal tasks restarted after a crash",
            restarts.clone(),
        );
        let adopted = Family::<CredentialLabel, Counter>::default();
        registry.register(
            "token_cache_adopted",
            "Tokens taken from the token cache (another replica's, or before a restart) instead of requested",
            adopted.clone(),
        );
        let redis_up = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "cache_redis_up",
            "1 while the token cache's Redis answers, 0 while each replica renews alone",
            redis_up.clone(),
        );
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads by outcome: success, or failure (the previous configuration keeps serving)",
            reloads.clone(),
        );
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "config_last_reload_successful",
            "0 while the last configuration reload was refused, else 1",
            last_reload_ok.clone(),
        );
        Metrics(Arc::new(Families {
            registry,
            requests,
            durations,
            refreshes,
            expires_in,
            upstream_errors,
            rejections,
            restarts,
            adopted,
            redis_up,
            reloads,
            last_reload_ok,
            no_route: OnceLock::new(),
        }))
    }

    /// The series of route `route`, for its requests to record through.
    pub fn route(&self, route: &Arc<str>) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics::new(route.clone(), &self.0))
    }

    /// The series of requests no route took (`route="none"`).
    pub fn no_route(&self) -> &Arc<RouteMetrics> {
        self.0
            .no_route
            .get_or_init(|| Arc::new(RouteMetrics::new(Arc::from("none"), &self.0)))
    }

    /// Count one configuration reload, taken or refused.
    pub fn record_reload(&self, taken: bool) {
        let outcome = if taken { "success" } else { "failure" };
        self.0
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.0.last_reload_ok.set(i64::from(taken));
    }

    /// Count one token request, made for `reason` (a
    /// [`crate::credential::RenewalReason`] label value).
    pub fn record_token_refresh(
        &self,
        credential: &Arc<str>,
        outcome: RefreshOutcome,
        reason: &'static str,
    ) {
        let outcome = match outcome {
            RefreshOutcome::Success => "success",
            RefreshOutcome::Failure => "failure",
        };
        self.0
            .refreshes
            .get_or_create(&CredentialOutcome {
                credential: credential.clone(),
                outcome,
                reason,
            })
            .inc();
    }

    /// The rejection counters of `credential` (resolved once, when its
    /// handle is built).
    pub fn rejection_counters(&self, credential: &Arc<str>) -> RejectionCounters {
        let counter = |action| {
            self.0
                .rejections
                .get_or_create(&CredentialAction {
                    credential: credential.clone(),
                    action,
                })
                .clone()
        };
        RejectionCounters {
            renewed: counter("renewed"),
            ignored: counter("ignored"),
        }
    }

    /// Count one restart of `credential`'s crashed renewal task.
    pub fn record_task_restart(&self, credential: &Arc<str>) {
        self.0
            .restarts
            .get_or_create(&CredentialLabel {
                credential: credential.clone(),
            })
            .inc();
    }

    /// Count one token of `credential` taken from the `[cache]`.
    pub fn record_token_adopted(&self, credential: &Arc<str>) {
        self.0
            .adopted
            .get_or_create(&CredentialLabel {
                credential: credential.clone(),
            })
            .inc();
    }

    /// Set the seconds left on a credential's token (called at scrape time);
    /// `None` (a token without expiry) removes the series.
    pub fn set_token_expires_in(&self, credential: &Arc<str>, seconds: Option<f64>) {
        let label = CredentialLabel {
            credential: credential.clone(),
        };
        match seconds {
            Some(seconds) => {
                self.0.expires_in.get_or_create(&label).set(seconds);
            }
            None => {
                self.0.expires_in.remove(&label);
            }
        }
    }

    /// Set whether the `[cache]`'s Redis answers (`store="redis"`) (called at scrape time);
    /// `None` (no Redis configured) removes the series.
    pub fn set_cache_redis_up(&self, up: Option<bool>) {
        match up {
            Some(up) => {
                self.0
                    .redis_up
                    .get_or_create(&redis_label())
                    .set(i64::from(up));
            }
            None => {
                self.0.redis_up.remove(&redis_label());
            }
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// Statuses whose series a [`RouteMetrics`] keeps: 100 to 599, every status
/// RFC 9110 defines a class for. Any other is looked up each time.
const KEPT_STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// The series of one route: resolved from the families on first use, then
/// kept, so recording a request is an atomic add and one histogram update.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    requests: Family<RouteStatus, Counter>,
    durations: Family<RouteLabel, Histogram>,
    upstream_errors: Family<RouteKind, Counter>,
    /// `requests_total{route, status}` by status, from [`KEPT_STATUSES`]' start.
    by_status: Box<[OnceLock<Counter>]>,
    duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    fn new(route: Arc<str>, families: &Families) -> Self {
        RouteMetrics {
            route,
            requests: families.requests.clone(),
            durations: families.durations.clone(),
            upstream_errors: families.upstream_errors.clone(),
            by_status: KEPT_STATUSES.map(|_| OnceLock::new()).collect(),
            duration: OnceLock::new(),
        }
    }

    /// The route's name, its `route` label.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Count one response to the app and observe its duration.
    pub fn record_request(&self, status: u16, seconds: f64) {
        let resolve = || {
            self.requests
                .get_or_create(&RouteStatus {
                    route: self.route.clone(),
                    status,
                })
                .clone()
        };
        match status
            .checked_sub(*KEPT_STATUSES.start())
            .and_then(|at| self.by_status.get(usize::from(at)))
        {
            Some(kept) => kept.get_or_init(resolve).inc(),
            None => resolve().inc(),
        };
        self.duration
            .get_or_init(|| {
                self.durations
                    .get_or_create(&RouteLabel {
                        route: self.route.clone(),
                    })
                    .clone()
            })
            .observe(seconds);
    }

    /// Count one failure reaching the upstream (`connect`, `timeout`,
    /// `other`, `body`, `body_timeout`, `stale_connection`,
    /// `refused_stream`, `goaway`): rare, so
    /// looked up each time.
    pub fn record_upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&RouteKind {
                route: self.route.clone(),
                kind,
            })
            .inc();
    }
}

/// The label of `sidekey_cache_redis_up`'s one series.
fn redis_label() -> Vec<(String, String)> {
    vec![("store".to_owned(), "redis".to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(metrics: &Metrics, prefix: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn route_series_appear_once_recorded_and_encode_as_family_lookups_did() {
        let metrics = Metrics::new();
        let api = metrics.route(&Arc::from("api"));
        let none = metrics.no_route();
        assert!(
            lines(&metrics, "sidekey_request").is_empty(),
            "no series before the first request"
        );
        api.record_request(200, 0.001);
        api.record_request(200, 0.002);
        api.record_request(503, 0.001);
        api.record_request(999, 0.001);
        none.record_request(404, 0.0);
        // A second handle for the same route (a reload) adds to the same series.
        metrics.route(&Arc::from("api")).record_request(200, 0.001);
        api.record_upstream_error("timeout");

        let requests = lines(&metrics, "sidekey_requests_total");
        for expected in [
            r#"sidekey_requests_total{route="api",status="200"} 3"#,
            r#"sidekey_requests_total{route="api",status="503"} 1"#,
            r#"sidekey_requests_total{route="api",status="999"} 1"#,
            r#"sidekey_requests_total{route="none",status="404"} 1"#,
        ] {
            assert!(
                requests.iter().any(|l| l == expected),
                "{expected} in {requests:?}"
            );
        }
        assert_eq!(requests.len(), 4, "{requests:?}");
        let counts = lines(&metrics, "sidekey_request_duration_seconds_count");
        assert!(
            counts.contains(&r#"sidekey_request_duration_seconds_count{route="api"} 5"#.to_owned())
        );
        assert!(
            counts
                .contains(&r#"sidekey_request_duration_seconds_count{route="none"} 1"#.to_owned())
        );
        assert_eq!(
            lines(&metrics, "sidekey_upstream_errors_total"),
            [r#"sidekey_upstream_errors_total{route="api",kind="timeout"} 1"#]
        );
        let buckets = lines(
            &metrics,
            r#"sidekey_request_duration_seconds_bucket{le="0.001",route="api"}"#,
        );
        assert_eq!(
            buckets,
            [r#"sidekey_request_duration_seconds_bucket{le="0.001",route="api"} 4"#]
        );
    }
}
