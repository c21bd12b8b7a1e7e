//! Shared test support: servers on 127.0.0.1:0 that record what they received,
//! an rcgen CA, and the proxy started in-process.
#![allow(dead_code)]

pub mod logs;
pub mod proxy;
pub mod tls;
pub mod token_servers;
pub mod upstream;
