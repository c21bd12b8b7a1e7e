//! Serving workers: `workers` threads, each running its own current-thread
//! runtime with its own socket on every proxy listen address and its own
//! upstream connections, so that a request is accepted, proxied and
//! answered on one thread with no hand-over between threads.
//!
//! - [`bind`]: the sockets of one listen address, one per worker, bound at
//!   start (or by the reload that adds the address) with `SO_REUSEPORT` (when there is more than one) on the same
//!   address; Linux spreads incoming connections over them by a hash of the
//!   connection's addresses and ports.
//! - [`Workers::start`]: one thread per worker; each serves the sockets
//!   handed to it ([`Workers::add`], at start and on a reload that adds a
//!   listener) until they stop, and stops after [`Workers::close`]. Everything workers
//!   share (dispatch tables, credentials, metrics, the connection cap) is
//!   behind `Arc`/`ArcSwap` and runtime-independent; what belongs to a
//!   runtime (sockets, timers, hyper connections) lives and dies in its
//!   worker.
//! - [`id`]: which worker the current thread is; per-worker state (a
//!   route's upstream connections, [`crate::proxy::client`]) is an array
//!   indexed by it. Threads that are not serving workers (the main runtime,
//!   tests serving on their own runtime) are worker 0.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::warn;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The current thread's worker index (0 outside the serving workers).
pub fn id() -> usize {
    WORKER.with(Cell::get)
}

/// The kernel's accept queue per socket (tokio's default too).
const BACKLOG: i32 = 1024;

/// Bind `count` sockets on `addr` (port 0: the port the first one got),
/// sharing it with `SO_REUSEPORT` when more than one; the sockets and the
/// bound address.
///
/// `SO_REUSEPORT` would also let these sockets join another process's
/// group on the address (a second sidekey of the same user, an old one
/// still running) and split its connections silently. So the address is
/// first bound once without it: anyone listening there makes that fail
/// with "address in use", as a single socket would.
pub fn bind(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    if count > 1 && addr.port() != 0 {
        drop(bind_one(addr, false)?);
    }
    let first = bind_one(addr, count > 1)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_one(local, true)?);
    }
    Ok((sockets, local))
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restart can bind while old
    // connections sit in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One listener's serving, on the runtime it was made in.
pub type Listening = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What one worker is handed to serve: a future per socket, made inside the
/// worker's runtime (where its sockets register).
pub type Serve = Box<dyn FnOnce() -> std::io::Result<Vec<Listening>> + Send>;

/// The running serving threads.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// What each worker is to serve next; closed: serve what you have, then stop.
    adds: Vec<mpsc::UnboundedSender<Serve>>,
    /// Every worker holds a sender; all dropped: every worker has stopped.
    running: mpsc::Receiver<()>,
    abort: watch::Sender<bool>,
}

impl Workers {
    /// Start `count` threads, each with its own current-thread runtime,
    /// serving what [`Workers::add`] hands it until [`Workers::close`] (then
    /// until those futures end: after shutdown, once their connections are
    /// done) or [`Workers::abort`]. An error starting one stops the workers
    /// started so far.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (alive, running) = mpsc::channel(1);
        let (abort, aborted) = watch::channel(false);
        let mut threads = Vec::with_capacity(count);
        let mut adds = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (add, added) = mpsc::unbounded_channel();
            let (alive, aborted) = (alive.clone(), aborted.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sidekey-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(index));
                    runtime.block_on(serve_worker(added, aborted));
                    // Dropping the runtime ends whatever connection is left.
                    drop(runtime);
                    drop(alive);
                })?;
            threads.push(thread);
            adds.push(add);
        }
        Ok(Workers {
            threads,
            adds,
            running,
            abort,
        })
    }

    /// Have worker `index` serve what `serve` makes (inside the worker's
    /// runtime, where its sockets register).
    pub fn add(&self, index: usize, serve: Serve) {
        if let Some(add) = self.adds.get(index) {
            // A worker that is gone has stopped serving anyway.
            let _ = add.send(serve);
        }
    }

    /// Nothing more to serve: each worker stops once what it serves has ended.
    pub fn close(&mut self) {
        self.adds.clear();
    }

    /// How many workers run.
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Return once every worker has stopped. Cancel-safe.
    pub async fn stopped(&mut self) {
        while self.running.recv().await.is_some() {}
    }

    /// End every worker now, with whatever connection it still has.
    pub async fn abort(&mut self) {
        let _ = self.abort.send(true);
        self.stopped().await;
    }
}

/// One worker's life: serve each listener handed over, until the hand-over
/// closes and they have all ended, or until aborted.
async fn serve_worker(
    mut added: mpsc::UnboundedReceiver<Serve>,
    mut aborted: watch::Receiver<bool>,
) {
    let mut listeners = JoinSet::new();
    let mut open = true;
    while open || !listeners.is_empty() {
        tokio::select! {
            serve = added.recv(), if open => match serve.map(|serve| serve()) {
                Some(Ok(listening)) => {
                    for listener in listening {
                        listeners.spawn(listener);
                    }
                }
                Some(Err(err)) => warn!(error = %err, "a serving worker cannot serve a listener"),
                None => open = false,
            },
            Some(_) = listeners.join_next(), if !listeners.is_empty() => {}
            _ = aborted.wait_for(|aborted| *aborted) => return,
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.abort.send(true);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("a serving worker panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_another_group_listens_on_is_refused() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let (sockets, addr) = bind(loopback, 2).expect("a free port");
        assert_eq!(sockets.len(), 2);
        for count in [1, 2] {
            let err = bind(addr, count).expect_err("the port is taken");
            assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{count}: {err}");
        }
        drop(sockets);
        let (again, _) = bind(addr, 2).expect("free again once closed");
        assert_eq!(again.len(), 2);
    }
}
