//! The admin endpoint (`[admin] listen`), plain HTTP/1.1, `GET` and `HEAD`:
//!
//! - `GET /` — the status page for people ([`status_page`]): process,
//!   credentials (state, token lifetime left, last and next renewal,
//!   failures), routes (request and 5xx rates, latency); reloads itself.
//! - `GET /healthz` — 200 `ok` while the process serves.
//! - `GET /readyz` — 200 when every credential holds a valid token, else
//!   503; lists every credential with its state and expiry ([`readyz`]).
//!   `GET /readyz?route=NAME` answers for that route's credential only.
//! - `GET /metrics` — the metric families ([`crate::metrics`]) as
//!   OpenMetrics when `Accept` prefers it, else Prometheus text 0.0.4
//!   ([`exposition`]); the token expiry gauge is refreshed at each scrape.
//!
//! Anything else is 404. Nothing here reveals a token or secret.
//!
//! A client that starts TLS here (a Kubernetes probe with `scheme: HTTPS`)
//! is closed at once, one that speaks HTTP/2 (a `grpc:` probe) is sent
//! GOAWAY `HTTP_1_1_REQUIRED`, and one that opens with a PROXY protocol
//! header gets a `400` naming it; each is logged at WARN with what to
//! change, at most once a minute ([`crate::mismatch`], as on the proxy
//! listeners).
//!
//! The listener is capped ([`crate::config::ConnLimits::ADMIN`]: 16
//! connections, 8 KiB request heads, 10 s idle timeout), so idle or slow
//! admin clients can neither exhaust file descriptors nor crowd out the
//! proxy; at the cap a new connection closes the oldest one
//! ([`listener::serve`]), so a probe is answered at once.

pub mod exposition;
pub mod listener;
pub mod rates;
pub mod readyz;
pub mod settings;
pub mod state;
pub mod status_page;

pub use listener::{respond, serve};
pub use state::AdminState;
