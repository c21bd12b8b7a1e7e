//! Steady traffic against a proxy while something changes under it (a
//! reload, a certificate rotation): requests in a loop, counted, never
//! panicking, so a test can assert that none failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Method;
use tokio::task::JoinSet;

use super::proxy::{TestClient, body_empty, request};

/// What the loops saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests answered 200.
    pub ok: AtomicUsize,
    /// Requests that failed or were answered otherwise, with the first few reasons.
    pub failed: AtomicUsize,
    /// The first failures, as text.
    pub reasons: std::sync::Mutex<Vec<String>>,
}

/// Request loops running until [`Traffic::stop`].
pub struct Traffic {
    counts: Arc<Counts>,
    running: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Traffic {
    /// `GET url` in a loop on a kept-alive connection, and in another loop
    /// on a new connection each time, until stopped.
    pub fn start(url: &str) -> Traffic {
        let counts = Arc::new(Counts::default());
        let running = Arc::new(AtomicBool::new(true));
        let mut tasks = JoinSet::new();
        for fresh in [false, true] {
            let (counts, running, url) = (counts.clone(), running.clone(), url.to_owned());
            tasks.spawn(async move {
                let pooled = TestClient::new();
                let mut n = 0u64;
                while running.load(Ordering::SeqCst) {
                    let client = if fresh {
                        TestClient::new()
                    } else {
                        pooled.clone()
                    };
                    let req = request(Method::GET, &format!("{url}/traffic/{n}"), body_empty());
                    n += 1;
                    let outcome = match client.send_head(req).await {
                        Ok(response) if response.status() == 200 => {
                            let body = http_body_util::BodyExt::collect(response.into_body()).await;
                            body.map(|_| ()).map_err(|e| format!("body: {e}"))
                        }
                        Ok(response) => Err(format!("status {}", response.status())),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    match outcome {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::SeqCst),
                        Err(reason) => {
                            counts.reasons.lock().expect("reasons").push(reason);
                            counts.failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            });
        }
        Traffic {
            counts,
            running,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.counts.ok.load(Ordering::SeqCst)
    }

    /// Wait until `n` more requests than now were answered.
    pub async fn wait_for_more(&self, n: usize) {
        let target = self.ok() + n;
        while self.ok() < target {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Stop the loops; (answered 200, failed, first failure reasons).
    pub async fn stop(mut self) -> (usize, usize, Vec<String>) {
        self.running.store(false, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
        let reasons = self.counts.reasons.lock().expect("reasons").clone();
        (
            self.ok(),
            self.counts.failed.load(Ordering::SeqCst),
            reasons,
        )
    }
}
