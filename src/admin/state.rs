//! What the admin endpoint reads ([`AdminState`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::rates::Rates;
use crate::credential::Credentials;
use crate::metrics::Metrics;
use crate::status::ProcessStatus;

/// What the admin endpoint reads; cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The metric registry.
    pub metrics: Metrics,
    /// The credentials in service (a reload swaps them here).
    pub credentials: Arc<ArcSwap<Credentials>>,
    /// Version, uptime, configuration in force and its routes, last reload.
    pub status: Arc<ProcessStatus>,
    /// The status page's samples of the route counters.
    pub(super) rates: Arc<Rates>,
}

impl AdminState {
    /// The admin view of a process whose metrics were created just now.
    pub fn new(
        metrics: Metrics,
        credentials: Arc<ArcSwap<Credentials>>,
        status: Arc<ProcessStatus>,
    ) -> Self {
        AdminState {
            metrics,
            credentials,
            status,
            rates: Arc::new(Rates::new(Instant::now())),
        }
    }
}
