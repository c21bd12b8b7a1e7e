//! sidekey: a sidecar proxy that injects authentication into outbound API calls.
//!
//! The app sends plain requests to a sidekey listener; sidekey attaches the
//! credential's headers (`Authorization: Bearer …`, `x-inbenta-key`, …) and
//! forwards them over HTTPS. One background task per credential keeps a valid
//! token published, so requests never wait for or carry an expired token.
//!
//! Map of the crate, in the order a configuration travels:
//! - [`cli`]: the command line (`run`, `check`, `token`, `demo`)
//! - [`config`]: reading and checking the configuration file (the settings
//!   types of a subsystem are its own: `credential::settings`, `tls`, …)
//! - [`secret`]: secret references, the environment they read, redacted values
//!   ([`small_file`]: reading the files an operator points sidekey at)
//! - [`host`]: forward-proxy host keys and request hosts in one canonical form
//! - [`preflight`]: secrets resolve and TLS files load, checked once
//! - [`credential`]: token providers and the renewal engine ([`cache`]: tokens
//!   kept encrypted across restarts)
//! - [`proxy`]: building routes, route matching, strip-then-inject, forwarding
//! - [`server`]: lifecycle: start, graceful shutdown, reload ([`server::serve`])
//! - [`listeners`]: the proxy listen addresses, bound once, served here or on the workers
//! - [`conn`]: one app connection: caps, limits ([`limits`]), TLS, the framing tap ([`idle`]: its idle deadline;
//!   [`preface`]: HTTP/2 or HTTP/1.1 by its first bytes; [`http2`]: serving HTTP/2 apps, h2c and gRPC;
//!   [`send_timeout`], [`stream_stall`]: ending what an app stopped reading)
//! - [`error`]: errors sidekey answers itself, as JSON ([`error_chain`]
//!   renders any error with its causes on one line)
//! - [`workers`]: serving threads, each with its runtime, sockets and upstream connections
//! - [`admin`]: status page, health, readiness and metrics ([`status`]: what
//!   the process runs, for them)
//! - [`resolve`]: upstream and token-endpoint name lookups, shared while in flight;
//!   [`deadline`]: deadlines from configured durations, and their timer
//! - [`tls`], [`metrics`], [`telemetry`], [`demo`], [`suggest`]

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod cache;
pub mod cancels;
pub mod cert_errors;
pub mod cli;
pub mod config;
pub mod conn;
pub mod credential;
pub mod deadline;
pub mod demo;
pub mod error;
pub mod error_chain;
pub mod host;
pub mod http2;
pub mod idle;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod mismatch;
pub mod preface;
pub mod preflight;
pub mod proxy;
pub mod resolve;
pub mod rotating;
pub mod secret;
pub mod send_timeout;
pub mod server;
mod signals;
pub mod small_file;
pub mod status;
pub mod stop;
pub mod stream_stall;
pub mod suggest;
pub mod telemetry;
pub mod tls;
pub mod workers;
mod write_through;
