//! Request rate, error rate and latency of each route over the last minute,
//! for the status page.
//!
//! The counters are the metric families' own (`sidekey_requests_total`,
//! `sidekey_request_duration_seconds`), read back from their exposition
//! text ([`RouteTotals::parse`]): the request path records nothing more
//! for the page. Each page load takes a sample; rates compare it with the
//! oldest sample of the last [`WINDOW`] (or, before one is that old, with
//! the start of the process, when every counter was zero). Without page
//! loads nothing is sampled, so the first load after a quiet spell averages
//! over that whole spell, and says so.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the rates look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Samples kept at most (page loads closer than a second apart share one).
const MAX_SAMPLES: usize = 128;

/// What one route's counters say at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTotals {
    /// Responses sent to the app.
    pub requests: u64,
    /// Of these, 5xx (sidekey's own 502/503/504 and the upstream's).
    pub errors: u64,
    /// Sum of the request durations, in seconds.
    pub duration_sum: f64,
    /// Cumulative duration buckets: (upper bound in seconds, count).
    pub buckets: Vec<(f64, u64)>,
}

impl RouteTotals {
    /// Every route's totals from Prometheus / OpenMetrics exposition text.
    pub fn parse(text: &str) -> BTreeMap<String, RouteTotals> {
        let mut routes: BTreeMap<String, RouteTotals> = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let Some(route) = label(&labels, "route") else {
                continue;
            };
            match name {
                "sidekey_requests_total" => {
                    let count = value as u64;
                    let totals = routes.entry(route.clone()).or_default();
                    totals.requests += count;
                    if label(&labels, "status").is_some_and(|s| s.starts_with('5')) {
                        totals.errors += count;
                    }
                }
                "sidekey_request_duration_seconds_sum" => {
                    routes.entry(route.clone()).or_default().duration_sum = value;
                }
                "sidekey_request_duration_seconds_bucket" => {
                    let le = match label(&labels, "le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    let totals = routes.entry(route.clone()).or_default();
                    totals.buckets.push((le, value as u64));
                }
                _ => {}
            }
        }
        for totals in routes.values_mut() {
            totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        routes
    }
}

/// One route's rates over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteRates {
    /// Responses per second.
    pub requests_per_s: f64,
    /// 5xx responses per second.
    pub errors_per_s: f64,
    /// Share of 5xx responses (`None` without requests).
    pub error_ratio: Option<f64>,
    /// Mean time to the response head, seconds (`None` without requests).
    pub mean_s: Option<f64>,
    /// Median, estimated from the histogram buckets.
    pub p50_s: Option<f64>,
    /// 95th percentile, estimated from the histogram buckets.
    pub p95_s: Option<f64>,
    /// Responses since the process started.
    pub requests_total: u64,
}

/// The samples behind the rates.
#[derive(Debug)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, BTreeMap<String, RouteTotals>)>>,
}

impl Rates {
    /// Rates from zero at `start` (when the counters were created).
    pub fn new(start: Instant) -> Self {
        Rates {
            samples: Mutex::new(VecDeque::from([(start, BTreeMap::new())])),
        }
    }

    /// Record `now`'s totals; the rates of every route since the oldest
    /// sample of the window, and how long that is.
    pub fn sample(
        &self,
        now: Instant,
        totals: BTreeMap<String, RouteTotals>,
    ) -> (Duration, BTreeMap<String, RouteRates>) {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Keep one sample older than the window: the base of the rates.
        while samples.len() > 1
            && samples
                .get(1)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
        {
            samples.pop_front();
        }
        let empty = BTreeMap::new();
        let (base_at, base) = samples
            .front()
            .map_or((now, &empty), |(at, totals)| (*at, totals));
        let span = now.saturating_duration_since(base_at);
        let rates = totals
            .iter()
            .map(|(route, now_totals)| {
                let before = base.get(route).cloned().unwrap_or_default();
                (route.clone(), rates(&before, now_totals, span))
            })
            .collect();
        let recent = samples
            .back()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < Duration::from_secs(1));
        if !recent {
            samples.push_back((now, totals));
            if samples.len() > MAX_SAMPLES {
                samples.pop_front();
            }
        }
        (span, rates)
    }
}

/// Rates between two samples `span` apart. A counter that went down (it
/// cannot, but a reload could rename a route) counts from zero.
fn rates(before: &RouteTotals, now: &RouteTotals, span: Duration) -> RouteRates {
    let before = if now.requests < before.requests {
        &RouteTotals::default()
    } else {
        before
    };
    let requests = now.requests - before.requests;
    let errors = now.errors.saturating_sub(before.errors);
    let seconds = span.as_secs_f64().max(0.001);
    let buckets: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, c)| *c);
            (le, count.saturating_sub(earlier))
        })
        .collect();
    let any = requests > 0;
    RouteRates {
        requests_per_s: requests as f64 / seconds,
        errors_per_s: errors as f64 / seconds,
        error_ratio: any.then(|| errors as f64 / requests as f64),
        mean_s: any.then(|| (now.duration_sum - before.duration_sum).max(0.0) / requests as f64),
        p50_s: quantile(&buckets, 0.5),
        p95_s: quantile(&buckets, 0.95),
        requests_total: now.requests,
    }
}

/// The `q` quantile of cumulative `buckets`, interpolated within its
/// bucket as Prometheus' `histogram_quantile` does; in the open last
/// bucket, that bucket's lower bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = (count - lower.1) as f64;
            let share = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// `name{labels} value` of one sample line (labels still escaped).
fn sample(line: &str) -> Option<(&str, String, f64)> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, String::new(), value.trim().parse().ok()?));
        }
    };
    // The labels end at the first `}` outside a quoted value.
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (at, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => {
                end = Some(at);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let labels = rest[1..end].to_owned();
    let value = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The unescaped value of label `key` in `labels` (`a="x",b="y"`).
fn label(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        let (name, after) = rest.split_once("=\"")?;
        let name = name.trim_start_matches(',').trim();
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (at, c) in after.char_indices() {
            match c {
                'n' if escaped => {
                    value.push('\n');
                    escaped = false;
                }
                _ if escaped => {
                    value.push(c);
                    escaped = false;
                }
                '\\' => escaped = true,
                '"' => {
                    close = Some(at);
                    break;
                }
                _ => value.push(c),
            }
        }
        let close = close?;
        if name == key {
            return Some(value);
        }
        rest = &after[close + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sidekey_requests Responses sent to the app.
# TYPE sidekey_requests counter
sidekey_requests_total{route="api",status="200"} 8
sidekey_requests_total{route="api",status="503"} 2
sidekey_requests_total{route="we\"ird\\}",status="200"} 1
sidekey_request_duration_seconds_sum{route="api"} 0.5
sidekey_request_duration_seconds_count{route="api"} 10
sidekey_request_duration_seconds_bucket{le="0.01",route="api"} 4
sidekey_request_duration_seconds_bucket{le="0.1",route="api"} 10
sidekey_request_duration_seconds_bucket{le="+Inf",route="api"} 10
sidekey_token_refresh_total{credential="api",outcome="success",reason="startup"} 1
# EOF
"#;

    #[test]
    fn totals_are_read_back_from_the_exposition() {
        let routes = RouteTotals::parse(TEXT);
        assert_eq!(routes.len(), 2, "{routes:?}");
        let api = &routes["api"];
        assert_eq!((api.requests, api.errors), (10, 2));
        assert_eq!(api.duration_sum, 0.5);
        assert_eq!(api.buckets, [(0.01, 4), (0.1, 10), (f64::INFINITY, 10)]);
        assert_eq!(routes["we\"ird\\}"].requests, 1, "escaped label values");
    }

    #[test]
    fn rates_cover_the_window_since_the_oldest_sample() {
        let start = Instant::now();
        let rates = Rates::new(start);
        let at = start + Duration::from_secs(10);
        let (span, routes) = rates.sample(at, RouteTotals::parse(TEXT));
        assert_eq!(span, Duration::from_secs(10));
        let api = &routes["api"];
        assert_eq!(api.requests_per_s, 1.0);
        assert_eq!(api.errors_per_s, 0.2);
        assert_eq!(api.error_ratio, Some(0.2));
        assert_eq!(api.mean_s, Some(0.05));
        // 5 of 10 at or below 0.01 + a sixth of the next bucket.
        let p50 = api.p50_s.unwrap();
        assert!((p50 - 0.025).abs() < 1e-9, "{p50}");
        assert!(api.p95_s.unwrap() <= 0.1);

        // Nothing new since: once a sample is a window old, it is the base
        // and the old traffic is forgotten.
        let later = at + Duration::from_secs(60);
        let _ = rates.sample(later, RouteTotals::parse(TEXT));
        let (span, routes) = rates.sample(later + Duration::from_secs(5), RouteTotals::parse(TEXT));
        assert_eq!(span, Duration::from_secs(65));
        assert_eq!(routes["api"].requests_per_s, 0.0);
        assert_eq!(routes["api"].mean_s, None);
        assert_eq!(routes["api"].requests_total, 10);
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        assert_eq!(quantile(&[(1.0, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[(1.0, 10), (f64::INFINITY, 10)], 0.5), Some(0.5));
        assert_eq!(quantile(&[(1.0, 0), (f64::INFINITY, 4)], 0.5), Some(1.0));
    }
}
