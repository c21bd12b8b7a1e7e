//! sidekey's integration tests, compiled into one binary (one link step,
//! shared helpers in `support`). Each module is one capability and starts
//! real servers on 127.0.0.1:0: token endpoints and TLS upstreams that record
//! what they received, with rcgen-made certificates, and the proxy itself.

mod support;

mod cli;
mod deploy;
mod hostile;
mod inbenta;
mod lifecycle;
mod limits;
mod providers;
mod proxy;
mod renewal;
mod support_selftest;
mod token_faults;
mod token_lifecycle;
mod upstream_faults;
