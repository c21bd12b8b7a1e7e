//! A TCP relay in front of a server that can fall silent: after
//! [`Relay::black_hole`], the connections open at that moment stay open
//! but carry nothing more in either direction (no answer, no PING
//! acknowledgement, no close), as behind a dead NAT entry or a peer that
//! hangs; connections opened later are relayed again. It counts the bytes
//! it carried from the server ([`Relay::bytes_from_server`]): what the
//! client has taken of the server's answers. [`Relay::retarget`] sends the
//! connections opened later to another server, as when an upstream's name
//! starts to resolve to another address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running relay; dropping it closes every connection.
pub struct Relay {
    addr: SocketAddr,
    /// How many black holes were made: a connection opened before the
    /// latest one is silent.
    holes: watch::Sender<usize>,
    /// Where connections accepted from now on are relayed.
    target: watch::Sender<SocketAddr>,
    connections: Arc<AtomicUsize>,
    /// Connections relayed now (both sides still open).
    open: Arc<AtomicUsize>,
    from_server: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listen on `127.0.0.1:0` and relay every connection to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("local addr");
        let holes = watch::Sender::new(0);
        let target = watch::Sender::new(target);
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let from_server = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target.subscribe(),
            holes.clone(),
            connections.clone(),
            open.clone(),
            from_server.clone(),
        ));
        Relay {
            addr,
            holes,
            target,
            connections,
            open,
            from_server,
            task,
        }
    }

    /// `https://127.0.0.1:PORT` (the target's certificate names 127.0.0.1).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections being relayed now: accepted, and not yet closed by
    /// both sides (a silenced one counts as open).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Bytes carried from the server to the client so far, all connections.
    pub fn bytes_from_server(&self) -> usize {
        self.from_server.load(Ordering::SeqCst)
    }

    /// Relay the connections accepted from now on to `target`; those open
    /// now stay with the server they reached.
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Silence every connection open now.
    pub fn black_hole(&self) {
        self.holes.send_modify(|holes| *holes += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<SocketAddr>,
    holes: watch::Sender<usize>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    from_server: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let still_open = OpenGuard(open.clone());
                let mut hole = holes.subscribe();
                hole.mark_unchanged();
                let from_server = from_server.clone();
                let target = *target.borrow();
                conns.spawn(async move {
                    let _open = still_open;
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let relay = async {
                        tokio::join!(
                            copy(&mut client_read, &mut server_write, None),
                            copy(&mut server_read, &mut client_write, Some(&from_server)),
                        )
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = hole.changed() => {
                            // Both sockets kept, never read or written again.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Counts a relayed connection open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copy until the reader ends, then close the writer's side; each write
/// is added to `count` once done.
async fn copy(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    count: Option<&AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(count) = count {
            count.fetch_add(n, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown().await;
}
