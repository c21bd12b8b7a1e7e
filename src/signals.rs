//! The process signals sidekey obeys: SIGTERM/SIGINT stop (a second one
//! ends the drain at once), SIGHUP reloads.
//! Handlers are installed once, before the first wait, so no signal between
//! two waits is lost (each stream keeps a pending delivery until it is read):
//! SIGHUP's first of all (its default action would end the process), the
//! stop signals' once the configuration is read (until then their default
//! action ends a start that may be stuck reading a file, with nothing to drain).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// SIGHUP's handler; a reload asked for now is acted on once serving.
    pub fn install_reload() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: None,
                int: None,
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// SIGTERM's and SIGINT's handlers, from now on.
    pub fn install_stop(&mut self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            self.term = signal(SignalKind::terminate()).ok();
            self.int = signal(SignalKind::interrupt()).ok();
        }
    }

    /// The next stop signal (SIGHUPs before it are ignored).
    pub async fn next_stop(&mut self) {
        while self.next().await != Signal::Stop {}
    }

    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => Signal::Stop,
                () = recv(&mut self.int) => Signal::Stop,
                () = recv(&mut self.hup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
