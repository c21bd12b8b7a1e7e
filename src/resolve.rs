//! Name lookups for upstream connections, one at a time per host name.
//!
//! hyper-util's resolver runs `getaddrinfo` on a blocking thread for every
//! connection attempt. When the DNS server is slow or gone (a CoreDNS
//! outage; glibc then waits out its timeout), every app request that finds
//! no idle upstream connection started its own lookup: 300 at once started
//! about 250 threads (+15 MiB), and the lookups, queued in the resolver,
//! gave their 502s after 15 to 20 s. [`SharedResolver`] lets one lookup per
//! host name be in flight: the connections that ask meanwhile wait for its
//! answer, success or error (the same 300: 3 threads, 502s after 5 s).
//! Nothing is cached: the next connection after an answer asks again, so
//! DNS changes are seen as soon as without it.
//!
//! A connection waits for an answer at most [`SharedResolver::answer_within`]
//! (a route's `connect_timeout`, at least 6 s: see
//! `proxy::client::LOOKUP_AT_LEAST`): a DNS server that does not answer made the
//! app wait out glibc's timeouts (10 s by default, 40 s with Kubernetes'
//! `ndots:5` search list) whatever `connect_timeout` said. Errors name the
//! host and say which happened: "no answer within 5s" (a DNS server that
//! does not answer) or the lookup's own error ("Name or service not known":
//! no such name). The lookup itself goes on, for the next connection to
//! join.
//!
//! A name with several addresses, one of them dead (a black-holed backend
//! still in DNS), cost every new connection that tried the dead one first
//! its share of `connect_timeout` (hyper-util divides it among the
//! addresses): half of it, each time, with two. [`RememberingConnector`]
//! tells the resolver which address each new connection reached; the
//! addresses handed out before it failed, and for [`FAILED_FOR`] the next
//! answers put them last: the dead address costs its share about once a
//! minute. The others keep the order DNS gave them, so round-robin DNS
//! still spreads new connections over the working addresses.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service;

/// How long an address a connection had to pass over goes last.
pub const FAILED_FOR: Duration = Duration::from_secs(60);

/// What connections to one host found.
#[derive(Debug, Default)]
struct Tried {
    /// The order of the addresses last handed out.
    handed: Vec<IpAddr>,
    /// Addresses a connection passed over, and when.
    failed: Vec<(IpAddr, Instant)>,
}

/// One lookup's answer, shared by everyone who waited for it.
type Answer = Result<Arc<[SocketAddr]>, Arc<io::Error>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The lookups in flight, by host name.
type InFlight = HashMap<Box<str>, watch::Receiver<Option<Answer>>>;

/// Looks a host name up (blocking): `getaddrinfo` in production, a stand-in
/// in tests.
type Lookup = fn(&str) -> io::Result<Vec<SocketAddr>>;

/// A resolver for [`hyper_util`]'s `HttpConnector` that joins concurrent
/// lookups of one name. Clones share the lookups in flight.
#[derive(Clone)]
pub struct SharedResolver {
    in_flight: Arc<Mutex<InFlight>>,
    /// Per host: the order of addresses last handed out, and the ones
    /// a connection had to pass over (with when).
    tried: Arc<Mutex<HashMap<Box<str>, Tried>>>,
    lookup: Lookup,
    /// How long a connection waits for an answer (`None`: for ever).
    answer_within: Option<Duration>,
}

impl std::fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_flight = (self.in_flight.lock()).map_or(0, |in_flight| in_flight.len());
        f.debug_struct("SharedResolver")
            .field("in_flight", &in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for SharedResolver {
    fn default() -> Self {
        SharedResolver::with_lookup(getaddrinfo)
    }
}

impl SharedResolver {
    /// A resolver that looks names up with `lookup` (on the blocking pool).
    pub fn with_lookup(lookup: Lookup) -> Self {
        SharedResolver {
            in_flight: Arc::default(),
            tried: Arc::default(),
            lookup,
            answer_within: None,
        }
    }

    /// This resolver, for connections that wait at most `limit` for an
    /// answer (then fail with [`io::ErrorKind::TimedOut`]).
    pub fn answer_within(mut self, limit: Duration) -> Self {
        self.answer_within = Some(limit);
        self
    }

    /// A connection to `host` reached `ip`: the addresses handed out
    /// before it failed, and go last for a while.
    pub fn answered(&self, host: &str, ip: IpAddr) {
        let mut tried = (self.tried.lock()).unwrap_or_else(PoisonError::into_inner);
        let Some(tried) = tried.get_mut(host) else {
            return;
        };
        let Some(at) = tried.handed.iter().position(|handed| *handed == ip) else {
            return;
        };
        let now = Instant::now();
        let passed_over: Vec<IpAddr> = tried.handed[..at].to_vec();
        tried
            .failed
            .retain(|(failed, _)| !passed_over.contains(failed));
        tried
            .failed
            .extend(passed_over.into_iter().map(|failed| (failed, now)));
    }

    /// `addrs` of `host` in DNS order, but the ones that recently failed last.
    fn answered_first(&self, host: &str, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut tried = (self.tried.lock()).unwrap_or_else(PoisonError::into_inner);
        let tried = tried.entry(host.into()).or_default();
        let now = Instant::now();
        tried
            .failed
            .retain(|(_, when)| now.saturating_duration_since(*when) < FAILED_FOR);
        let failed = |addr: &SocketAddr| tried.failed.iter().any(|(ip, _)| *ip == addr.ip());
        let mut order: Vec<SocketAddr> = addrs.iter().filter(|a| !failed(a)).copied().collect();
        order.extend(addrs.iter().filter(|a| failed(a)));
        tried.handed = order.iter().map(SocketAddr::ip).collect();
        order
    }

    /// Whether a lookup of `host` is in flight.
    pub fn looking_up(&self, host: &str) -> bool {
        (self.in_flight.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(host)
    }

    /// The addresses of `host`: from the lookup in flight for it, or from
    /// a new one.
    pub async fn resolve(&self, host: &str) -> Answer {
        let mut answer = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(host) {
                Some(answer) => answer.clone(),
                None => {
                    let (tell, answer) = watch::channel(None);
                    in_flight.insert(host.into(), answer.clone());
                    let (this, host) = (self.clone(), Box::<str>::from(host));
                    // Spawned, not awaited here: the lookup ends (and the
                    // entry goes) even if every connection that waited for
                    // it has given up.
                    tokio::spawn(async move {
                        let lookup = this.lookup;
                        let name = host.clone();
                        let result = match tokio::task::spawn_blocking(move || lookup(&name)).await
                        {
                            Ok(Ok(addrs)) => Ok(Arc::from(addrs)),
                            Ok(Err(err)) => Err(Arc::new(err)),
                            Err(join) => Err(Arc::new(io::Error::other(join))),
                        };
                        this.in_flight
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&host);
                        tell.send_replace(Some(result));
                    });
                    answer
                }
            }
        };
        match answer.wait_for(Option::is_some).await {
            Ok(answer) => answer.clone().unwrap_or_else(|| Err(Arc::new(lost()))),
            // The lookup task was dropped with the runtime.
            Err(_) => Err(Arc::new(lost())),
        }
    }
}

fn lost() -> io::Error {
    io::Error::other("name lookup abandoned")
}

fn getaddrinfo(host: &str) -> io::Result<Vec<SocketAddr>> {
    (host, 0).to_socket_addrs().map(Iterator::collect)
}

impl Service<Name> for SharedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            let answer = this.resolve(host);
            let answer = match this.answer_within {
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "looking up {host}: no answer within {limit:?} \
                                 (is the DNS server reachable?)"
                            ),
                        ));
                    }
                },
                None => answer.await,
            };
            match answer {
                Ok(addrs) => Ok(this.answered_first(host, &addrs).into_iter()),
                // The first waiter's error, by kind and message, for each.
                Err(err) => Err(io::Error::new(
                    err.kind(),
                    format!("looking up {host}: {err}"),
                )),
            }
        })
    }
}

/// hyper-util's `HttpConnector` over a [`SharedResolver`], telling the
/// resolver which address each new connection reached.
#[derive(Clone)]
pub struct RememberingConnector {
    http: HttpConnector<SharedResolver>,
    resolver: SharedResolver,
}

impl RememberingConnector {
    /// `http`, which looks names up with `resolver`.
    pub fn new(http: HttpConnector<SharedResolver>, resolver: SharedResolver) -> Self {
        RememberingConnector { http, resolver }
    }
}

impl Service<Uri> for RememberingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().map(str::to_owned);
        let connecting = self.http.call(uri);
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(BoxError::from)?;
            if let (Some(host), Ok(peer)) = (host, io.inner().peer_addr()) {
                resolver.answered(&host, peer.ip());
            }
            Ok(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

    fn slow(host: &str) -> io::Result<Vec<SocketAddr>> {
        SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        match host {
            "gone.test" => Err(io::Error::other("Temporary failure in name resolution")),
            _ => Ok(vec![SocketAddr::from(([192, 0, 2, 7], 0))]),
        }
    }

    fn last_octets(addrs: &[SocketAddr]) -> Vec<u8> {
        addrs
            .iter()
            .map(|a| match a.ip() {
                IpAddr::V4(ip) => ip.octets()[3],
                IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_passed_over_go_last_for_a_while_the_others_keep_dns_order() {
        let resolver = SharedResolver::default();
        let addrs: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 0)))
            .collect();
        assert_eq!(
            last_octets(&resolver.answered_first("api.test", &addrs)),
            [1, 2, 3, 4]
        );
        // The connection reached .3: .1 and .2 (handed out before it) failed.
        resolver.answered("api.test", IpAddr::from([10, 0, 0, 3]));
        assert_eq!(
            last_octets(&resolver.answered_first("api.test", &addrs)),
            [3, 4, 1, 2]
        );
        // Reaching the first one handed out passes over none; DNS may rotate.
        resolver.answered("api.test", IpAddr::from([10, 0, 0, 3]));
        let rotated: Vec<SocketAddr> = [4, 3, 2, 1]
            .map(|i| SocketAddr::from(([10, 0, 0, i], 0)))
            .into();
        assert_eq!(
            last_octets(&resolver.answered_first("api.test", &rotated)),
            [4, 3, 2, 1]
        );
        assert_eq!(
            last_octets(&resolver.answered_first("other.test", &addrs)),
            [1, 2, 3, 4]
        );
        tokio::time::advance(FAILED_FOR).await;
        assert_eq!(
            last_octets(&resolver.answered_first("api.test", &addrs)),
            [1, 2, 3, 4]
        );
    }

    fn hangs(_: &str) -> io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_millis(500));
        Err(io::Error::other("Temporary failure in name resolution"))
    }

    #[tokio::test]
    async fn a_connection_waits_for_an_answer_at_most_its_limit_and_says_so() {
        let mut resolver =
            SharedResolver::with_lookup(hangs).answer_within(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = resolver
            .call("api.test".parse::<Name>().unwrap())
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string()
                .contains("looking up api.test: no answer within 100ms"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_of_a_name_share_one_and_the_next_asks_again() {
        let resolver = SharedResolver::with_lookup(slow);
        let lookups: Vec<_> = (0..100)
            .map(|i| {
                let resolver = resolver.clone();
                let host = if i % 2 == 0 { "api.test" } else { "gone.test" };
                tokio::spawn(async move { (host, resolver.resolve(host).await) })
            })
            .collect();
        for lookup in lookups {
            match lookup.await.unwrap() {
                ("api.test", Ok(addrs)) => {
                    assert_eq!(&*addrs, &[SocketAddr::from(([192, 0, 2, 7], 0))]);
                }
                ("gone.test", Err(err)) => {
                    assert!(err.to_string().contains("name resolution"), "{err}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 2, "one lookup per name");
        assert!(resolver.in_flight.lock().unwrap().is_empty());
        // Answers are not kept: the next connection looks the name up again.
        resolver.resolve("api.test").await.unwrap();
        assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 3);
    }
}
