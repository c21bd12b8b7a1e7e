//! Shared test support: servers on 127.0.0.1:0 that record what they
//! received, an rcgen CA, configurations built from the shapes tests share,
//! the proxy started in-process or as a child process, and clients (a pooled
//! HTTP one, an HTTP/2 one with prior knowledge,
//! and one that writes raw bytes).

pub mod config;
pub mod grpc;
pub mod h2_app;
pub mod h2_goaway;
pub mod h2_script;
pub mod h2_settings;
pub mod h2_wire;
pub mod h2c;
pub mod jose;
pub mod logs;
pub mod metrics;
pub mod paused;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod timing;
pub mod tls;
pub mod token_servers;
pub mod traffic;
pub mod upstream;
pub mod volume;
