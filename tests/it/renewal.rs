//! The renewal engine: first token, renewal before expiry, backoff,
//! Retry-After, outages, renewal on rejection (and the cool-down when fresh
//! tokens are rejected too), static file rotation, and faults: absurd
//! lifetimes, a panicking task, server-chosen delays, short tokens under
//! random failures.
//!
//! Timing tests run on tokio's paused clock with a scripted in-process
//! [`Provider`], so "an hour later" takes no real time and every delay the
//! engine chose can be read off the recorded call instants. End-to-end tests
//! use a real OAuth 2.0 token server on loopback with short lifetimes; those
//! about rotations over seconds run on the paused clock too (the token
//! server, the upstream and the proxy all live on the test's runtime, so
//! virtual time passes only while every one of them waits on a timer).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::{Instant, sleep, sleep_until};

use sidekey::credential::settings::StaticConfig;
use sidekey::credential::static_token::StaticProvider;
use sidekey::credential::{
    CredentialHandle, CredentialStatus, Credentials, EngineSettings, FetchError, Provider,
    Published, Rejection, Token, obtain_once,
};
use sidekey::metrics::Metrics;
use sidekey::secret::{MapEnv, Secret, SecretRef};

use crate::support::config::{TestConfig, oauth_route_proxy, oauth2, static_token};
use crate::support::metrics::sum as metric_sum;
use crate::support::timing::{assert_between, gaps};
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Reply, Upstream, UpstreamOpts};

// ---------------------------------------------------------------------------
// A scripted provider
// ---------------------------------------------------------------------------

/// One call the engine made.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    /// The token value the engine offered (`current`), if any.
    offered: Option<String>,
}

type Respond = Box<dyn FnMut(usize) -> Result<Token, FetchError> + Send>;

struct Script {
    calls: Mutex<Vec<Call>>,
    respond: Mutex<Respond>,
    /// How long each fetch takes.
    latency: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A provider whose answers come from a closure of the call index.
#[derive(Clone)]
struct Scripted(Arc<Script>);

impl Scripted {
    fn new(respond: impl FnMut(usize) -> Result<Token, FetchError> + Send + 'static) -> Self {
        Self::with_latency(Duration::ZERO, respond)
    }

    fn with_latency(
        latency: Duration,
        respond: impl FnMut(usize) -> Result<Token, FetchError> + Send + 'static,
    ) -> Self {
        Scripted(Arc::new(Script {
            calls: Mutex::new(Vec::new()),
            respond: Mutex::new(Box::new(respond)),
            latency,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }))
    }

    fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.calls.lock().unwrap().len()
    }

    /// Seconds between consecutive calls.
    fn gaps(&self) -> Vec<f64> {
        gaps(&self.calls().iter().map(|call| call.at).collect::<Vec<_>>())
    }

    fn max_in_flight(&self) -> usize {
        self.0.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Provider for Scripted {
    async fn fetch(&self, current: Option<&Token>) -> Result<Token, FetchError> {
        let n = self.0.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let result = {
            let mut calls = self.0.calls.lock().unwrap();
            let index = calls.len();
            calls.push(Call {
                at: Instant::now(),
                offered: current.map(|t| t.value.expose().to_owned()),
            });
            drop(calls);
            // A script may panic on purpose (a provider bug); the next call still runs.
            (self
                .0
                .respond
                .lock()
                .unwrap_or_else(PoisonError::into_inner))(index)
        };
        if !self.0.latency.is_zero() {
            sleep(self.0.latency).await;
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn header_names(&self) -> Vec<HeaderName> {
        vec![http::header::AUTHORIZATION]
    }
}

fn token(value: &str, lifetime: Option<Duration>) -> Token {
    let mut header = HeaderValue::try_from(format!("Bearer {value}")).unwrap();
    header.set_sensitive(true);
    Token {
        value: Secret::new(value),
        lifetime,
        headers: vec![(http::header::AUTHORIZATION, header)],
        apis: None,
    }
}

fn ok(value: impl Into<String>, lifetime_secs: u64) -> Result<Token, FetchError> {
    Ok(token(
        &value.into(),
        Some(Duration::from_secs(lifetime_secs)),
    ))
}

fn transient(message: &str) -> Result<Token, FetchError> {
    Err(FetchError::Transient {
        message: message.to_owned(),
        retry_after: None,
    })
}

fn start(
    provider: impl Provider,
    settings: EngineSettings,
) -> (Credentials, Arc<CredentialHandle>, Metrics) {
    let metrics = Metrics::new();
    let mut credentials = Credentials::default();
    let handle = credentials.spawn("api", provider, settings, &metrics);
    (credentials, handle, metrics)
}

fn authorization(published: &Published) -> String {
    published
        .headers
        .iter()
        .find(|(name, _)| name == http::header::AUTHORIZATION)
        .map(|(_, value)| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Wait (on the paused clock) for the first token.
async fn first_token(handle: &CredentialHandle) -> Arc<Published> {
    handle
        .wait_for_newer(0, Duration::from_secs(3600))
        .await
        .expect("first token")
}

/// Report `generation` rejected, expect a renewal to start, and wait for
/// its outcome (at most 10 s on the paused clock).
async fn reject_and_wait(handle: &CredentialHandle, generation: u64) -> Arc<Published> {
    assert_eq!(handle.report_rejected(generation), Rejection::Renewing);
    handle
        .wait_for_renewal(generation, Duration::from_secs(10))
        .await
        .expect("the renewal's outcome")
}

// ---------------------------------------------------------------------------
// Timing on the paused clock
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn first_token_is_fetched_at_once_and_only_then_served() {
    let provider = Scripted::with_latency(Duration::from_secs(2), |n| ok(format!("t{n}"), 3600));
    let settings = EngineSettings {
        headers: vec![(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("acme"),
        )],
        ..EngineSettings::default()
    };
    let t0 = Instant::now();
    let (_credentials, handle, _metrics) = start(provider.clone(), settings);

    assert_eq!(handle.name(), "api");
    assert_eq!(
        handle.strip_names(),
        &[
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-tenant")
        ]
    );
    assert!(handle.renews_on(StatusCode::UNAUTHORIZED));
    assert!(!handle.renews_on(StatusCode::FORBIDDEN));
    let unavailable = handle.current().unwrap_err();
    assert_eq!(&*unavailable.credential, "api");
    assert_eq!(
        unavailable.reason,
        "never obtained: first token request in progress"
    );
    assert!(matches!(
        handle.status(),
        CredentialStatus::Unavailable { .. }
    ));

    let published = first_token(&handle).await;
    assert_eq!(provider.calls()[0].at, t0, "first fetch starts at once");
    assert_eq!(published.generation, 1);
    assert_eq!(authorization(&published), "Bearer t0");
    assert!(published.headers[0].1.is_sensitive());
    assert_eq!(published.headers[1].0, "x-tenant");
    assert_eq!(published.headers[1].1, "acme");
    // The lifetime counts from when the request was sent, and the token is
    // handed out until 5 s (the safety margin) before it ends.
    assert_eq!(
        published.expires_at,
        Some(t0 + Duration::from_secs(3600 - 5)),
        "expiry counts from the request"
    );
    assert_eq!(handle.current().unwrap().generation, 1);
    assert_eq!(
        handle.status(),
        CredentialStatus::Ready {
            expires_in: Some(Duration::from_secs(3600 - 5 - 2))
        }
    );
    assert_eq!(provider.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn renews_before_expiry_without_a_gap_across_rotations() {
    let provider = Scripted::new(|n| ok(format!("t{n}"), 100));
    let (_credentials, handle, metrics) = start(provider.clone(), EngineSettings::default());
    first_token(&handle).await;

    // Watch the credential every 100 ms for 7 lifetimes.
    let end = Instant::now() + Duration::from_secs(700);
    let mut last_generation = 1;
    while Instant::now() < end {
        let published = handle.current().expect("a token is always valid");
        assert!(published.generation >= last_generation);
        assert_eq!(
            authorization(&published),
            format!("Bearer t{}", published.generation - 1)
        );
        last_generation = published.generation;
        sleep(Duration::from_millis(100)).await;
    }
    assert!(last_generation >= 8, "rotations: {last_generation}");

    // Default refresh_before for 100 s is 30 s (tokens under 2 minutes renew
    // at half their life, at most 30 s before); the jitter takes up to 5 s more.
    for gap in provider.gaps() {
        assert_between(gap, 65.0, 70.0, "renewal after");
    }
    // Each renewal is offered the still-valid token it replaces.
    let calls = provider.calls();
    assert_eq!(calls[0].offered, None);
    for (n, call) in calls.iter().enumerate().skip(1) {
        assert_eq!(call.offered.as_deref(), Some(&*format!("t{}", n - 1)));
    }
    assert_eq!(provider.max_in_flight(), 1);
    // The first token at start-up, every other one a scheduled renewal.
    let text = metrics.encode();
    let refreshes = |reason| {
        let labels = [
            ("credential", "api"),
            ("outcome", "success"),
            ("reason", reason),
        ];
        metric_sum(&text, "sidekey_token_refresh_total", &labels)
    };
    assert_eq!(refreshes("startup"), 1.0, "{text}");
    assert_eq!(refreshes("scheduled"), (calls.len() - 1) as f64, "{text}");
}

#[tokio::test(start_paused = true)]
async fn configured_refresh_before_sets_the_renewal_time() {
    let provider = Scripted::new(|n| ok(format!("t{n}"), 100));
    let settings = EngineSettings {
        refresh_before: Some(Duration::from_secs(40)),
        ..EngineSettings::default()
    };
    let (_credentials, handle, _metrics) = start(provider.clone(), settings);
    let mut generation = first_token(&handle).await.generation;
    for _ in 0..5 {
        generation = handle
            .wait_for_newer(generation, Duration::from_secs(1000))
            .await
            .unwrap()
            .generation;
    }
    assert_eq!(generation, 6);
    for gap in provider.gaps() {
        assert_between(gap, 55.0, 60.0, "renewal after");
    }
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_back_off_exponentially_to_30s_then_reset() {
    // A token, 7 failed renewals, a token, then one failed renewal.
    let provider = Scripted::new(|n| match n {
        0 => ok("t0", 3600),
        1..8 => transient("token endpoint answered 500"),
        8 => ok("t1", 3600),
        9 => transient("token endpoint answered 502"),
        _ => ok("t2", 3600),
    });
    let (_credentials, handle, metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    let second = handle
        .wait_for_newer(first.generation, Duration::from_secs(4000))
        .await
        .unwrap();
    handle
        .wait_for_newer(second.generation, Duration::from_secs(4000))
        .await
        .unwrap();

    let gaps = provider.gaps();
    assert_eq!(gaps.len(), 10, "{gaps:?}");
    // 3600 - 300 - [0, 30]
    assert_between(gaps[0], 3270.0, 3300.0, "renewal");
    let bounds = [
        (1.0, 1.2),
        (1.6, 2.4),
        (3.2, 4.8),
        (6.4, 9.6),
        (12.8, 19.2),
        (24.0, 30.0),
        (24.0, 30.0),
    ];
    for (i, (gap, (low, high))) in gaps[1..8].iter().zip(bounds).enumerate() {
        assert_between(*gap, low, high, &format!("retry {}", i + 1));
    }
    // Scheduled renewal, then the backoff starts over at ~1 s.
    assert_between(gaps[8], 3270.0, 3300.0, "renewal");
    assert_between(gaps[9], 1.0, 1.2, "first retry after a success");

    let text = metrics.encode();
    let refreshes = |outcome| {
        let labels = [("credential", "api"), ("outcome", outcome)];
        metric_sum(&text, "sidekey_token_refresh_total", &labels)
    };
    assert_eq!(refreshes("failure"), 8.0, "{text}");
    assert_eq!(refreshes("success"), 3.0, "{text}");
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_back_off_exponentially_even_without_a_token() {
    let provider = Scripted::new(|n| match n {
        0..6 => Err(FetchError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid_client".into(),
        }),
        _ => ok("t", 3600),
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    first_token(&handle).await;
    let gaps = provider.gaps();
    let bounds = [
        (1.0, 1.2),
        (1.6, 2.4),
        (3.2, 4.8),
        (6.4, 9.6),
        (12.8, 19.2),
        (24.0, 30.0),
    ];
    assert_eq!(gaps.len(), bounds.len());
    for (i, (gap, (low, high))) in gaps.iter().zip(bounds).enumerate() {
        assert_between(*gap, low, high, &format!("retry {}", i + 1));
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped() {
    let provider = Scripted::new(|n| match n {
        0 => Err(FetchError::Transient {
            message: "429 Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(42)),
        }),
        1 => Err(FetchError::Transient {
            message: "503 Service Unavailable".into(),
            retry_after: Some(Duration::from_secs(86_400)),
        }),
        2 => Err(FetchError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid_client".into(),
        }),
        _ => ok("t", 3600),
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    first_token(&handle).await;
    let gaps = provider.gaps();
    assert_eq!(gaps[0], 42.0);
    assert_eq!(gaps[1], 300.0, "Retry-After capped at 5 minutes");
    assert_between(gaps[2], 3.2, 4.8, "backoff of refused credentials");
}

/// A provider of 20 s tokens `t0`, `t1`, … that fails ("connection
/// refused") while the switch is on, and the switch.
fn with_outage_switch() -> (Scripted, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let provider = Scripted::new({
        let failing = failing.clone();
        move |n| {
            if failing.load(Ordering::SeqCst) {
                transient("connection refused")
            } else {
                ok(format!("t{n}"), 20)
            }
        }
    });
    (provider, failing)
}

#[tokio::test(start_paused = true)]
async fn old_token_serves_through_an_outage_until_it_expires_then_recovers() {
    let (provider, failing) = with_outage_switch();
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    failing.store(true, Ordering::SeqCst);
    let expires_at = first.expires_at.unwrap();

    // Renewals start at 9–10 s and fail; the 20 s token is handed out until
    // 18 s (a 2 s safety margin).
    sleep_until(expires_at - Duration::from_millis(1)).await;
    assert_eq!(handle.current().unwrap().generation, 1);
    assert!(provider.count() >= 3, "renewals were attempted");
    assert!(matches!(
        handle.status(),
        CredentialStatus::Ready { expires_in: Some(d) } if d == Duration::from_millis(1)
    ));

    sleep_until(expires_at).await;
    let unavailable = handle.current().unwrap_err();
    assert!(
        unavailable.reason.starts_with("expired at ")
            && unavailable
                .reason
                .ends_with("; last renewal failed: connection refused"),
        "{}",
        unavailable.reason
    );
    assert!(
        unavailable
            .to_string()
            .starts_with("credential api has no valid token: expired at"),
        "{unavailable}"
    );
    match handle.status() {
        CredentialStatus::Unavailable { reason } => assert_eq!(reason, unavailable.reason),
        ready => panic!("{ready:?}"),
    }

    // While valid the token was offered for renewal; once expired, not.
    sleep(Duration::from_secs(40)).await;
    for call in provider.calls().iter().skip(1) {
        let expected = (call.at < expires_at).then_some("t0");
        assert_eq!(
            call.offered.as_deref(),
            expected,
            "at {:?}",
            call.at - expires_at
        );
    }

    failing.store(false, Ordering::SeqCst);
    let recovered = handle
        .wait_for_newer(1, Duration::from_secs(60))
        .await
        .expect("recovers");
    assert_eq!(recovered.generation, 2);
    assert!(handle.current().is_ok());
}

#[tokio::test(start_paused = true)]
async fn never_obtained_reports_the_last_error() {
    let provider = Scripted::new(|_| {
        Err(FetchError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid_client: bad secret".into(),
        })
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    sleep(Duration::from_millis(10)).await;
    let unavailable = handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        unavailable.reason,
        "never obtained: token endpoint refused the credentials (401 Unauthorized): invalid_client: bad secret"
    );
}

#[tokio::test(start_paused = true)]
async fn first_attempt_wait_ends_with_the_first_request_success_or_failure() {
    // A slow first success: the waiter gets the token when it arrives.
    let slow = Scripted::with_latency(Duration::from_secs(2), |n| ok(format!("t{n}"), 3600));
    let (_credentials, handle, _metrics) = start(slow, EngineSettings::default());
    let started = Instant::now();
    let published = handle
        .wait_for_token(Duration::from_secs(3600))
        .await
        .expect("the first token");
    assert_eq!(authorization(&published), "Bearer t0");
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    // A failing first request: the waiter is released by the failure, not the timeout.
    let failing =
        Scripted::with_latency(Duration::from_secs(1), |_| transient("connection refused"));
    let (_credentials, handle, _metrics) = start(failing.clone(), EngineSettings::default());
    let started = Instant::now();
    let unavailable = handle
        .wait_for_token(Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(
        unavailable.reason.contains("connection refused"),
        "{}",
        unavailable.reason
    );
    // Later callers do not wait at all while the endpoint keeps failing.
    let again = Instant::now();
    assert!(
        handle
            .wait_for_token(Duration::from_secs(3600))
            .await
            .is_err()
    );
    assert_eq!(again.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn many_rejections_of_one_token_cause_one_renewal() {
    let provider =
        Scripted::with_latency(Duration::from_millis(200), |n| ok(format!("t{n}"), 3600));
    let (_credentials, handle, metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let handle = handle.clone();
        let generation = first.generation;
        tasks.push(tokio::spawn(async move {
            handle.report_rejected(generation);
            handle
                .wait_for_newer(generation, Duration::from_secs(10))
                .await
        }));
    }
    for task in tasks {
        let published = task.await.unwrap().expect("renewed");
        assert_eq!(published.generation, 2);
    }
    assert_eq!(provider.count(), 2);
    // The rejected token is not offered for renewal.
    assert_eq!(provider.calls()[1].offered, None);

    // Late reports about the replaced token, or a generation that does not
    // exist, do nothing.
    handle.report_rejected(1);
    handle.report_rejected(99);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.count(), 2);
    assert_eq!(handle.current().unwrap().generation, 2);

    // Token 2 came from that renewal: its rejection too shows the rejections
    // are not about the token. They are ignored for a minute…
    assert_eq!(handle.report_rejected(2), Rejection::Ignored);
    assert_eq!(handle.report_rejected(2), Rejection::Ignored);
    sleep(Duration::from_secs(59)).await;
    assert_eq!(handle.report_rejected(2), Rejection::Ignored);
    assert_eq!(provider.count(), 2);
    // … then one rejection renews again (a probe), shared by the others.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.report_rejected(2), Rejection::Renewing);
    assert_eq!(handle.report_rejected(2), Rejection::Renewing);
    let third = handle
        .wait_for_renewal(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(third.generation, 3);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.count(), 3);
    assert_eq!(provider.max_in_flight(), 1);
    let text = metrics.encode();
    assert!(
        text.contains("sidekey_token_rejections_total{credential=\"api\",action=\"ignored\"} 3"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejection_renewal_that_brings_no_new_token_releases_the_waiters_at_once() {
    // A static token: re-reading it on rejection yields the same value.
    let provider = Scripted::new(|_| Ok(token("fixed", None)));
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    let started = Instant::now();
    let after = reject_and_wait(&handle, first.generation).await;
    assert_eq!(
        after.generation, first.generation,
        "nothing new to retry with"
    );
    assert_eq!(
        Instant::now(),
        started,
        "released by the attempt, not the timeout"
    );
    assert_eq!(provider.count(), 2, "one re-read");
    // Further rejections of that token wait for nothing and read nothing.
    reject_and_wait(&handle, first.generation).await;
    assert_eq!(Instant::now(), started);
    assert_eq!(provider.count(), 2);

    // A failed rejection renewal releases them too.
    let provider = Scripted::new(|n| match n {
        0 => ok("t0", 3600),
        _ => transient("connection refused"),
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    let started = Instant::now();
    let after = reject_and_wait(&handle, first.generation).await;
    assert_eq!(after.generation, first.generation);
    assert_eq!(Instant::now(), started);
}

#[tokio::test(start_paused = true)]
async fn rejection_during_a_renewal_does_not_renew_twice() {
    let provider = Scripted::with_latency(Duration::from_secs(1), |n| ok(format!("t{n}"), 100));
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    // Wait until the scheduled renewal is in flight, then reject the old token.
    while provider.count() < 2 {
        sleep(Duration::from_millis(10)).await;
    }
    handle.report_rejected(first.generation);
    let second = handle
        .wait_for_newer(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(second.generation, 2);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(provider.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_for_newer_wakes_on_publish_or_times_out() {
    let provider = Scripted::new(|n| ok(format!("t{n}"), 100));
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;

    // Already newer: at once.
    let t = Instant::now();
    assert_eq!(
        handle
            .wait_for_newer(0, Duration::from_secs(10))
            .await
            .unwrap()
            .generation,
        1
    );
    assert_eq!(Instant::now(), t);

    // Times out with the current token.
    let timed_out = handle
        .wait_for_newer(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(timed_out.generation, 1);
    assert_eq!(Instant::now() - t, Duration::from_secs(5));

    // Wakes at the renewal, long before its timeout.
    let newer = handle
        .wait_for_newer(1, Duration::from_secs(10_000))
        .await
        .unwrap();
    assert_eq!(newer.generation, 2);
    let received = first.expires_at.unwrap() - Duration::from_secs(100);
    let waited = (Instant::now() - received).as_secs_f64();
    assert_between(waited, 70.0, 75.0, "woke after");
}

#[tokio::test(start_paused = true)]
async fn dropping_credentials_stops_the_engine() {
    let provider = Scripted::new(|n| ok(format!("t{n}"), 10));
    let (credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    first_token(&handle).await;
    drop(credentials);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.count(), 1);
    assert!(handle.current().is_err(), "the last token expired");
}

#[tokio::test(start_paused = true)]
async fn debug_output_never_shows_a_token() {
    let secret = "sEcReT-t0ken-value";
    let provider = Scripted::new(move |_| ok(secret, 3600));
    let (credentials, handle, _metrics) = start(provider, EngineSettings::default());
    let published = first_token(&handle).await;
    for text in [
        format!("{handle:?}"),
        format!("{credentials:?}"),
        format!("{published:?}"),
        format!("{:?}", handle.status()),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(format!("{credentials:?}").contains("api"));
}

// ---------------------------------------------------------------------------
// Static tokens from files
// ---------------------------------------------------------------------------

/// A directory laid out like a Kubernetes secret volume:
/// `token -> ..data/token`, `..data -> ..<version>/`.
struct SecretVolume {
    dir: PathBuf,
    versions: usize,
}

impl SecretVolume {
    fn new(test: &str, value: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sidekey-renewal-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = SecretVolume { dir, versions: 0 };
        volume.publish(value);
        std::os::unix::fs::symlink("..data/token", volume.dir.join("token")).unwrap();
        volume
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Write a new version and swap `..data` to it atomically, as the kubelet does.
    fn publish(&mut self, value: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("token"), format!("{value}\n")).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn remove_data(&self) {
        std::fs::remove_file(self.dir.join("..data")).unwrap();
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn static_provider(path: &Path) -> StaticProvider {
    let config = StaticConfig {
        token: SecretRef::File(path.to_owned()),
        header: HeaderName::from_static("authorization"),
        scheme: "Bearer".into(),
    };
    StaticProvider::new(&config, Arc::new(MapEnv::default()))
}

#[tokio::test(start_paused = true)]
async fn static_file_rotation_by_symlink_swap_publishes_a_new_generation() {
    let mut volume = SecretVolume::new("rotation", "one");
    let (_credentials, handle, metrics) = start(
        static_provider(&volume.token_path()),
        EngineSettings::default(),
    );
    let first = first_token(&handle).await;
    assert_eq!(authorization(&first), "Bearer one");
    assert_eq!(first.expires_at, None);
    assert_eq!(
        handle.status(),
        CredentialStatus::Ready { expires_in: None }
    );

    // Re-read every second, but unchanged: no new generation.
    sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.current().unwrap().generation, 1);

    volume.publish("two");
    let second = handle
        .wait_for_newer(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.generation, 2);
    assert_eq!(authorization(&second), "Bearer two");

    // The secret disappears: the old value keeps serving, forever.
    volume.remove_data();
    sleep(Duration::from_secs(3600)).await;
    let still = handle.current().unwrap();
    assert_eq!(
        (still.generation, authorization(&still)),
        (2, "Bearer two".into())
    );

    // It comes back with the same value: nothing new; then a new value.
    std::os::unix::fs::symlink("..v2", volume.dir.join("..data")).unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(handle.current().unwrap().generation, 2);
    volume.publish("three");
    let third = handle
        .wait_for_newer(2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(authorization(&third), "Bearer three");
    assert_eq!(third.generation, 3);
    let labels = [("credential", "api"), ("outcome", "success")];
    let text = metrics.encode();
    assert_eq!(
        metric_sum(&text, "sidekey_token_refresh_total", &labels),
        3.0,
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn static_file_missing_at_start_is_unavailable_until_it_appears() {
    let dir = std::env::temp_dir().join(format!("sidekey-renewal-late-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    let (_credentials, handle, _metrics) = start(static_provider(&path), EngineSettings::default());
    sleep(Duration::from_millis(1)).await;
    let unavailable = handle.current().unwrap_err();
    assert!(
        unavailable.reason.starts_with(&format!(
            "never obtained: cannot read secret file {}",
            path.display()
        )),
        "{}",
        unavailable.reason
    );
    std::fs::write(&path, "late\n").unwrap();
    let published = handle
        .wait_for_newer(0, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(authorization(&published), "Bearer late");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// End to end with a real OAuth 2.0 token server on loopback
// ---------------------------------------------------------------------------

/// A client-credentials token endpoint issuing `oauth-token-1`, `-2`, …
/// that live `expires_in` seconds, answering each after 20 ms so that
/// overlapping requests show.
async fn token_server(expires_in: u64) -> OAuthServer {
    OAuthServer::start(OAuthBehaviour {
        client_id: "client".into(),
        client_secret: "s3cr3t".into(),
        expires_in: Some(serde_json::json!(expires_in)),
        delay: Some(Duration::from_millis(20)),
        ..OAuthBehaviour::default()
    })
    .await
}

/// `pliant` (OAuth 2.0 against `token_url`) and `legacy` (a static
/// `x-api-key`), with the secrets they read.
fn credentials_config(token_url: &str) -> TestConfig {
    TestConfig::new()
        .with(oauth2("pliant", token_url))
        .with(
            static_token("legacy", "LEGACY")
                .line(r#"header = "x-api-key""#)
                .line(r#"scheme = """#),
        )
        .env("CLIENT_ID", "client")
        .env("CLIENT_SECRET", "s3cr3t")
        .env("LEGACY", "fixed")
}

fn no_roots() -> rustls::RootCertStore {
    rustls::RootCertStore::empty()
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn credentials_start_rotates_real_tokens_without_a_failed_read() {
    let server = token_server(1).await;
    let config = credentials_config(&server.url())
        .line("[credentials.pliant]", r#"refresh_before = "500ms""#)
        .parse();
    let metrics = Metrics::new();
    let credentials = Credentials::start(&config, &no_roots(), &metrics).unwrap();
    assert_eq!(
        credentials.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        ["legacy", "pliant"]
    );
    let pliant = credentials.get("pliant").unwrap().clone();
    let legacy = credentials.get("legacy").unwrap().clone();
    assert!(credentials.get("nope").is_none());

    let first = pliant
        .wait_for_newer(0, Duration::from_secs(10))
        .await
        .expect("first token");
    assert_eq!(authorization(&first), "Bearer oauth-token-1");
    let fixed = legacy
        .wait_for_newer(0, Duration::from_secs(10))
        .await
        .expect("static token");
    assert_eq!(fixed.headers[0].0, "x-api-key");
    assert_eq!(fixed.headers[0].1, "fixed");
    assert_eq!(
        legacy.strip_names(),
        &[HeaderName::from_static("x-api-key")]
    );

    // A 1 s lifetime renewed with 500 ms left: read continuously through 6 rotations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = first.generation;
    while seen < 7 {
        let published = pliant.current().expect("never without a valid token");
        assert_eq!(
            authorization(&published),
            format!("Bearer oauth-token-{}", published.generation)
        );
        seen = published.generation;
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} rotations"
        );
        sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.max_in_flight(), 1);
    assert!(server.calls() <= 8);
    drop(credentials);
    let issued = server.calls();
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.calls(), issued, "engines stop with Credentials");
}

#[tokio::test]
async fn obtain_once_returns_token_and_type() {
    let server = token_server(3600).await;
    let config = credentials_config(&server.url()).parse();
    let (token, kind) = obtain_once(&config, "pliant", &no_roots()).await.unwrap();
    assert_eq!(kind, "oauth2");
    assert_eq!(token.lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(token.value.expose(), "oauth-token-1");

    let (token, kind) = obtain_once(&config, "legacy", &no_roots()).await.unwrap();
    assert_eq!(kind, "static");
    assert_eq!(token.lifetime, None);

    let unknown = obtain_once(&config, "nope", &no_roots()).await.unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "no credential named `nope` in the configuration (defined: legacy, pliant)"
    );

    drop(server);
    let config = credentials_config("http://127.0.0.1:9/oauth/token").parse();
    let failed = obtain_once(&config, "pliant", &no_roots())
        .await
        .unwrap_err()
        .to_string();
    assert!(failed.starts_with("credential pliant: "), "{failed}");
    assert!(!failed.contains("s3cr3t"), "{failed}");
}

// ---------------------------------------------------------------------------
// End to end through the proxy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rejected_token_is_renewed_once_and_the_request_retried() {
    let server = token_server(3600).await;
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    revoked
        .lock()
        .unwrap()
        .insert("Bearer oauth-token-1".into());
    let upstream = Upstream::start(UpstreamOpts::plain().respond({
        let revoked = revoked.clone();
        move |request| {
            let authorization = request.header("authorization").unwrap_or_default();
            if revoked.lock().unwrap().contains(authorization) {
                Reply::status(401)
            } else {
                Reply::echo()
            }
        }
    }))
    .await;
    let proxy = oauth_route_proxy(&server.url(), &upstream.url()).await;

    let response = proxy.get("/v1/cards").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, ["Bearer oauth-token-1", "Bearer oauth-token-2"]);
    assert_eq!(server.calls(), 2);

    // The token that renewal brought is rejected too: that is not about the
    // token. 20 concurrent requests get the 401 at once and cost no renewal.
    revoked
        .lock()
        .unwrap()
        .insert("Bearer oauth-token-2".into());
    let mut requests = Vec::new();
    for i in 0..20 {
        let client = proxy.client.clone();
        let url = format!("{}/v1/cards/{i}", proxy.route_url(0));
        requests.push(tokio::spawn(async move { client.get(&url).await }));
    }
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        server.calls(),
        2,
        "no renewal for rejections of a fresh token"
    );
    assert_eq!(upstream.request_count(), 22, "nothing was retried");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn continuous_traffic_across_rotations_never_fails() {
    // 1 s tokens renew every half second; 4 virtual seconds of traffic
    // span 6 or more rotations. Requests take no virtual time, so the
    // upstream's validator rejects any token used past its issued life.
    let server = token_server(1).await;
    let valid = server.validator(Duration::from_secs(1));
    let upstream = Upstream::start(UpstreamOpts::plain().respond(move |request| {
        if valid(request.header("authorization")) {
            Reply::echo()
        } else {
            // An expired or unknown token would be a bug: make it visible.
            Reply::status(418)
        }
    }))
    .await;
    let proxy = oauth_route_proxy(&server.url(), &upstream.url()).await;

    // Four workers, each sending every 20 ms and 5 ms apart from the next:
    // a request every 5 ms all along.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = proxy.client.clone();
        let url = format!("{}/work/{worker}", proxy.route_url(0));
        workers.push(tokio::spawn(async move {
            sleep(Duration::from_millis(5) * worker).await;
            let mut sent = 0;
            while Instant::now() < deadline {
                let response = client.get(&url).await;
                assert_eq!(response.status, StatusCode::OK, "{}", response.text());
                sent += 1;
                sleep(Duration::from_millis(20)).await;
            }
            sent
        }));
    }
    let mut sent = 0;
    for worker in workers {
        sent += worker.await.unwrap();
    }
    let tokens: HashSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(upstream.request_count(), sent, "no request was retried");
    assert!(tokens.len() >= 6, "only {} tokens used", tokens.len());
    assert_eq!(server.max_in_flight(), 1);
}

// ---------------------------------------------------------------------------
// Faults: absurd lifetimes, a crashing task, server-chosen delays, short tokens
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_lifetime_beyond_the_clock_is_clamped_to_a_year() {
    let provider = Scripted::new(|_| Ok(token("forever", Some(Duration::MAX))));
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let published = handle
        .wait_for_newer(0, Duration::from_secs(10))
        .await
        .expect("a token, not a dead task");
    assert_eq!(authorization(&published), "Bearer forever");
    match handle.status() {
        CredentialStatus::Ready {
            expires_in: Some(left),
        } => assert!(left <= Duration::from_secs(365 * 86_400), "{left:?}"),
        other => panic!("{other:?}"),
    }
    // The renewal comes (a year minus the margin later), not a panic now.
    sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_renewal_task_is_restarted_and_reported() {
    // The first request panics: the reason says so while the restart is pending.
    let provider = Scripted::new(|n| match n {
        0 => panic!("provider bug"),
        _ => ok(format!("t{n}"), 100),
    });
    let (_credentials, handle, metrics) = start(provider.clone(), EngineSettings::default());
    sleep(Duration::from_millis(10)).await;
    let reason = handle.current().unwrap_err().reason;
    assert!(reason.contains("renewal task crashed"), "{reason}");
    let published = handle
        .wait_for_newer(0, Duration::from_secs(60))
        .await
        .expect("restarted engine obtains a token");
    assert_eq!(authorization(&published), "Bearer t1");
    assert!(
        metrics
            .encode()
            .contains("sidekey_renewal_task_restarts_total{credential=\"api\"} 1"),
        "{}",
        metrics.encode()
    );

    // A panic during a renewal keeps the published token serving, and the
    // restarted task renews it.
    let provider = Scripted::new(|n| match n {
        1 => panic!("provider bug during renewal"),
        _ => ok(format!("t{n}"), 100),
    });
    let (_credentials, handle, metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    while provider.count() < 2 {
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.current().unwrap().generation, first.generation);
    let renewed = handle
        .wait_for_newer(first.generation, Duration::from_secs(60))
        .await
        .expect("renewed after the restart");
    assert_eq!(authorization(&renewed), "Bearer t2");
    assert!(Instant::now() < first.expires_at.unwrap());
    assert!(
        metrics
            .encode()
            .contains("sidekey_renewal_task_restarts_total{credential=\"api\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_zero_or_in_the_past_is_floored_at_one_second() {
    // 20 answers that say "retry now", then a token.
    let provider = Scripted::new(|n| match n {
        0..20 => Err(FetchError::Transient {
            message: "token endpoint answered 429 Too Many Requests".into(),
            retry_after: Some(Duration::ZERO),
        }),
        _ => ok("t", 3600),
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    handle
        .wait_for_newer(0, Duration::from_secs(600))
        .await
        .expect("a token in the end");
    let gaps = provider.gaps();
    assert_eq!(gaps.len(), 20);
    for gap in gaps {
        assert!(gap >= 1.0, "retried after {gap} s");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_tokens_life_does_not_delay_past_expiry() {
    let provider = Scripted::new(|n| match n {
        0 => ok("t0", 100),
        1 => Err(FetchError::Transient {
            message: "token endpoint answered 503 Service Unavailable".into(),
            retry_after: Some(Duration::from_secs(3600)),
        }),
        _ => ok(format!("t{n}"), 100),
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    let renewed = handle
        .wait_for_newer(first.generation, Duration::from_secs(600))
        .await
        .expect("renewed");
    let calls = provider.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls[2].at < first.expires_at.unwrap(),
        "the retry came {:?} after the token stopped serving",
        calls[2].at - first.expires_at.unwrap()
    );
    assert_eq!(authorization(&renewed), "Bearer t2");
}

#[tokio::test(start_paused = true)]
async fn expiry_counts_from_when_the_request_was_sent() {
    // The token endpoint takes 2 s to answer a 10 s token.
    let provider = Scripted::with_latency(Duration::from_secs(2), |n| ok(format!("t{n}"), 10));
    let sent = Instant::now();
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let published = first_token(&handle).await;
    let expires_at = published.expires_at.expect("expiry");
    assert!(
        expires_at <= sent + Duration::from_secs(10),
        "served until {:?} after the request was sent",
        expires_at - sent
    );
}

/// xorshift64*: a fixed pseudo-random sequence without a dependency.
fn pseudo_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[tokio::test(start_paused = true)]
async fn short_tokens_survive_random_renewal_failures() {
    // 3 s tokens; a fixed pseudo-random 25 % of token requests fail (each
    // takes 50 ms); a request every 10 ms for 3 virtual minutes.
    const LIFETIME: Duration = Duration::from_secs(3);
    let issued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let provider = Scripted::with_latency(Duration::from_millis(50), {
        let issued = issued.clone();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        move |n| {
            if pseudo_random(&mut seed) % 100 < 25 {
                return transient("token endpoint answered 500 Internal Server Error");
            }
            let value = format!("t{n}");
            // The issuer's clock starts when the request is sent, at the latest.
            issued.lock().unwrap().insert(value.clone(), Instant::now());
            ok(value, LIFETIME.as_secs())
        }
    });
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    first_token(&handle).await;

    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut requests: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
        std::collections::VecDeque::new();
    let end = Instant::now() + Duration::from_secs(180);
    while Instant::now() < end {
        // Join finished requests as we go: 18000 task cells add up.
        while requests.len() > 1000 {
            requests.pop_front().unwrap().await.unwrap();
        }
        let handle = handle.clone();
        let issued = issued.clone();
        let problems = problems.clone();
        requests.push_back(tokio::spawn(async move {
            let started = Instant::now();
            let published = match handle.current() {
                Ok(published) => Ok(published),
                Err(_) => handle.wait_for_token(Duration::from_secs(5)).await,
            };
            let now = Instant::now();
            match published {
                Err(unavailable) => problems.lock().unwrap().push(format!(
                    "{:?}: unavailable after waiting {:?}: {}",
                    started.elapsed(),
                    now - started,
                    unavailable.reason
                )),
                Ok(published) => {
                    let value = authorization(&published)
                        .trim_start_matches("Bearer ")
                        .to_owned();
                    let issued_at = issued.lock().unwrap()[&value];
                    // The request still has to reach the upstream: 100 ms in flight.
                    if issued_at + LIFETIME < now + Duration::from_millis(100) {
                        problems.lock().unwrap().push(format!(
                            "{value} handed out {:?} before its expiry",
                            issued_at + LIFETIME - now
                        ));
                    }
                }
            }
        }));
        sleep(Duration::from_millis(10)).await;
    }
    for request in requests {
        request.await.unwrap();
    }
    let problems = problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "{} of 18000 requests failed, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    let failures = provider.count() - issued.lock().unwrap().len();
    assert!(failures > 20, "the script failed only {failures} requests");
}

#[tokio::test(start_paused = true)]
async fn without_a_valid_token_attempts_are_a_second_apart_and_recovery_is_prompt() {
    let (provider, failing) = with_outage_switch();
    let (_credentials, handle, _metrics) = start(provider.clone(), EngineSettings::default());
    let first = first_token(&handle).await;
    failing.store(true, Ordering::SeqCst);
    let expired = first.expires_at.unwrap();
    // A 60 s outage after the token expired.
    sleep_until(expired + Duration::from_secs(60)).await;
    let after_expiry: Vec<Instant> = provider
        .calls()
        .iter()
        .map(|call| call.at)
        .filter(|at| *at >= expired)
        .collect();
    for pair in after_expiry.windows(2) {
        let gap = (pair[1] - pair[0]).as_secs_f64();
        assert_between(gap, 1.0, 1.25, "attempt spacing without a valid token");
    }
    assert!(after_expiry.len() >= 45, "{} attempts", after_expiry.len());

    // The endpoint recovers: a token within about a second.
    failing.store(false, Ordering::SeqCst);
    let recovered_at = Instant::now();
    handle
        .wait_for_newer(first.generation, Duration::from_secs(60))
        .await
        .expect("recovers");
    let took = (Instant::now() - recovered_at).as_secs_f64();
    assert!(took <= 1.25, "recovery took {took} s");
}
