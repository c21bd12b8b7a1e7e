//! sidekey's integration tests, compiled into one binary (one link step,
//! shared helpers in `support`). Each module is one capability and starts
//! real servers on 127.0.0.1:0: token endpoints and TLS upstreams that record
//! what they received, with rcgen-made certificates, and the proxy itself.
//!
//! The whole suite runs in a few seconds, and stays there by three habits:
//!
//! - Anything about time (lifetimes, renewals, backoff, timeouts, idle
//!   periods) runs on tokio's paused clock (`#[tokio::test(start_paused =
//!   true)]`). The proxy, the token servers and the upstreams run on the
//!   test's runtime, so virtual time passes only while all of them wait on
//!   a timer, and exchanges on loopback take none. Tests with real sockets
//!   add `crate = "crate::support::paused"`: their clock moves only after
//!   the runtime has been quiet for half a millisecond of real time, so a
//!   busy machine that delivers loopback bytes late does not make it jump
//!   to a timeout ([`support::paused`]). The real clock is for what runs
//!   outside the runtime: child processes, the thread that folds repeated
//!   log lines.
//! - Wait for the event, not for a while: read until the close or the
//!   response, poll the recorded requests or the logs with a generous bound;
//!   show a connection is open by using it.
//! - Bodies only as large as the claim needs: streaming is proved by peak
//!   RSS against a body twice the allowed growth, not by volume.

mod support;

mod admin;
mod app_requests;
mod cache;
mod cli;
mod clientauth;
mod deploy;
mod docs;
mod fleet;
mod forward_clients;
mod grpc;
mod h2c;
mod h2c_abuse;
mod h2c_cancel;
mod h2c_frames;
mod hostile;
mod http2_faults;
mod http2_upstream_frames;
mod inbenta;
mod lifecycle;
mod limits;
mod listeners;
mod log_output;
mod mismatch;
mod name_lookups;
mod providers;
mod proxy;
mod renewal;
mod rotation;
mod route_links;
mod route_redirects;
mod shared_client;
mod stuck_readers;
mod support_selftest;
mod token_faults;
mod token_lifecycle;
mod token_values;
mod upstream_faults;
mod upstream_framing;
mod upstream_heads;
mod upstream_life;
mod upstream_oddities;
mod workers;
