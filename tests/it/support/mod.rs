//! Shared test support: servers on 127.0.0.1:0 that record what they
//! received, an rcgen CA, configurations built from the shapes tests share,
//! the proxy started in-process or as a child process, and clients (a pooled
//! HTTP one, and one that writes raw bytes).

pub mod config;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod timing;
pub mod tls;
pub mod token_servers;
pub mod upstream;
