//! The fleet's shared store on Redis (`[cache] redis_url`, `redis://` or
//! `rediss://`): sealed entries, renewal locks, and the health of the
//! connection. Standalone or Redis Cluster, found out when connecting (`INFO
//! cluster`): a cluster is reached through all its nodes, the URL's being
//! the first asked.
//!
//! Keys, under `key_prefix`: `PREFIX{ID}:token` holds an entry until the
//! token's expiry (`PX`); `PREFIX{ID}:lock` is a renewal lock (`SET NX PX`
//! with a random value, released by a compare-and-delete script, expiring on
//! its own if its holder dies; a lock key found without expiry — not a
//! replica's — is given one). An entry is replaced by a compare-and-set
//! script: only if it still holds what the writer read before fetching.
//! An entry is read by a script that sends it only when it is at most
//! [`MAX_ENTRY`] bytes (its length otherwise): a huge value someone wrote
//! at the key never crosses the network, and is replaced like any other
//! entry that does not open; so is a key of another type (a hash someone
//! wrote there). Entries are bytes, not text: whatever is stored at the
//! key is an answer, never an error.
//!
//! Redis trouble never reaches a caller as an error: every operation is
//! bounded by [`OP_TIMEOUT`]; a failure marks Redis down, logs one WARN, and
//! for a backoff (0.5 s doubling to [`BACKOFF_MAX`], 2 s) operations answer
//! [`Down`] without touching the network; the first operation after it that
//! succeeds logs that Redis is back — a write, once a write failed (a Redis
//! that reads but refuses writes stays down, one WARN; a read then tries a
//! write too, at most once per backoff period). One multiplexed connection serves
//! every engine; a failure drops it and the next operation (after the
//! backoff) connects again — at most one attempt per backoff period.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Script, TlsCertificates,
    Value,
};
use rustls_pki_types::CertificateDer;

use super::CacheError;
use tokio::time::Instant;

/// Longest one Redis operation may take, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest pause between attempts while Redis is down.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest entry read: a sealed token is a few kilobytes.
pub const MAX_ENTRY: u64 = 1 << 20;

/// An entry as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// None.
    Absent,
    /// These bytes.
    Value(Vec<u8>),
    /// A value longer than [`MAX_ENTRY`]: its length; not read.
    Oversized(u64),
    /// A key of another type (a hash, a list…): that type.
    Foreign(String),
}

impl Entry {
    /// What the compare-and-set script compares against.
    fn expected(&self) -> Vec<u8> {
        match self {
            Entry::Absent => Vec::new(),
            Entry::Value(value) => value.clone(),
            Entry::Oversized(len) => format!("oversized:{len}").into_bytes(),
            Entry::Foreign(kind) => format!("type:{kind}").into_bytes(),
        }
    }
}

/// Redis could not be used for this operation (it is down, or was a moment ago).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// Whether Redis answers, for `/readyz`, `/metrics` and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisState {
    /// Not used yet, or its last operation succeeded.
    Up,
    /// Its last operation failed; why, and when the next is tried.
    Down {
        /// The last error, one line.
        reason: String,
    },
}

#[derive(Debug)]
struct Health {
    /// Why Redis is down, until when operations are not tried, and whether
    /// a write failed (then only a write that succeeds brings it back).
    down: Option<(String, Instant, Kind)>,
    backoff: Duration,
}

/// Whether an operation writes: a Redis that answers reads and refuses
/// writes (out of memory, a read-only replica, an ACL) shares no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// Take the lock (1); else 0, or -1 when it had no expiry and now has one.
const LOCK: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
                    if redis.call('PTTL', KEYS[1]) == -1 then \
                    redis.call('PEXPIRE', KEYS[1], ARGV[2]) return -1 end return 0";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) end return 0";
/// The entry if it is a string of at most ARGV[1] bytes; else its length,
/// or `{TYPE}` when the key holds another type.
const READ: &str = "local t = redis.call('TYPE', KEYS[1]).ok \
                    if t == 'none' then return false end \
                    if t ~= 'string' then return {t} end \
                    local n = redis.call('STRLEN', KEYS[1]) \
                    if n > tonumber(ARGV[1]) then return n end \
                    return redis.call('GET', KEYS[1])";
/// Set the entry if it holds ARGV[1] (`oversized:LEN` for one longer than
/// ARGV[4], `type:TYPE` for a key of another type).
const COMPARE_AND_SET: &str = "local t = redis.call('TYPE', KEYS[1]).ok local current = '' \
                               if t == 'string' then \
                               local n = redis.call('STRLEN', KEYS[1]) \
                               if n > tonumber(ARGV[4]) then current = 'oversized:' .. n \
                               else current = redis.call('GET', KEYS[1]) end \
                               elseif t ~= 'none' then current = 'type:' .. t end \
                               if current == ARGV[1] then \
                               redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) \
                               return 1 end return 0";

/// A Redis server shared by the fleet.
pub struct RedisStore {
    client: Client,
    config: AsyncConnectionConfig,
    /// The open connection (multiplexed: every engine shares it); dropped
    /// after any failure, made again by the next operation.
    connection: tokio::sync::Mutex<Option<Connection>>,
    prefix: String,
    health: Mutex<Health>,
    read: Script,
    lock: Script,
    release: Script,
    compare_and_set: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("state", &self.state())
            .finish()
    }
}

impl RedisStore {
    /// A store for `url`; connects on first use. A `rediss://` server is
    /// trusted as sidekey trusts upstreams: the system's roots, and the
    /// certificates of `ca_file` when given.
    pub fn new(url: &str, prefix: &str, ca_file: Option<&Path>) -> Result<RedisStore, CacheError> {
        let client = match ca_file {
            Some(ca_file) if url.starts_with("rediss://") => {
                let mut pem = Vec::new();
                for cert in rustls_native_certs::load_native_certs().certs {
                    pem.extend_from_slice(pem_of(&cert).as_bytes());
                }
                for cert in crate::tls::load_certs(ca_file)? {
                    pem.extend_from_slice(pem_of(&cert).as_bytes());
                }
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                Client::build_with_tls(url, certificates)?
            }
            _ => Client::open(url)?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT));
        Ok(RedisStore {
            client,
            config,
            connection: tokio::sync::Mutex::new(None),
            prefix: prefix.to_owned(),
            health: Mutex::new(Health {
                down: None,
                backoff: BACKOFF_MIN,
            }),
            read: Script::new(READ),
            lock: Script::new(LOCK),
            release: Script::new(RELEASE),
            compare_and_set: Script::new(COMPARE_AND_SET),
        })
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Connection, RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let mut single = (self.client)
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut single)
            .await?;
        let connection = match info.contains("cluster_enabled:1") {
            false => Connection::Single(single),
            true => {
                let info = self.client.get_connection_info().clone();
                let cluster = ClusterClient::builder([info])
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .retries(1)
                    .build()?;
                Connection::Cluster(cluster.get_async_connection().await?)
            }
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Up or down, as the last operation found it.
    pub fn state(&self) -> RedisState {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match &health.down {
            None => RedisState::Up,
            Some((reason, _, _)) => RedisState::Down {
                reason: reason.clone(),
            },
        }
    }

    fn key(&self, id: &str, what: &str) -> String {
        format!("{}{{{id}}}:{what}", self.prefix)
    }

    /// The entry of `id`, as stored.
    pub async fn get(&self, id: &str) -> Result<Entry, Down> {
        let key = self.key(id, "token");
        let value: Value = self
            .run(Kind::Read, |mut conn| async move {
                let mut invocation = self.read.key(key);
                invocation.arg(MAX_ENTRY).invoke_async(&mut conn).await
            })
            .await?;
        if self.writes_failing() {
            self.probe_writes(id).await;
        }
        Ok(match value {
            Value::Int(len) => Entry::Oversized(u64::try_from(len).unwrap_or_default()),
            Value::BulkString(bytes) => Entry::Value(bytes),
            Value::SimpleString(text) => Entry::Value(text.into_bytes()),
            Value::Array(kind) => match kind.first() {
                Some(Value::BulkString(kind)) => {
                    Entry::Foreign(String::from_utf8_lossy(kind).into_owned())
                }
                _ => Entry::Foreign(String::new()),
            },
            _ => Entry::Absent,
        })
    }

    /// Take the renewal lock of `id` for `ttl`. A lock key without expiry
    /// (no replica's: theirs expire) is given `ttl`, so it cannot stop
    /// the fleet's sharing for ever.
    pub async fn lock(&self, id: &str, ttl: Duration) -> Result<Locked, Down> {
        let key = self.key(id, "lock");
        let value = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let ttl = ttl.as_millis().max(1);
        let ttl = u64::try_from(ttl).unwrap_or(u64::MAX);
        let arg = value.clone();
        let taken: i64 = self
            .run(Kind::Write, |mut conn| async move {
                let mut invocation = self.lock.key(key);
                invocation.arg(arg).arg(ttl).invoke_async(&mut conn).await
            })
            .await?;
        Ok(match taken {
            1 => Locked::Taken(value),
            -1 => Locked::Stuck,
            _ => Locked::Busy,
        })
    }

    /// Release the lock of `id` if it still holds `value`.
    pub async fn unlock(&self, id: &str, value: &str) {
        let key = self.key(id, "lock");
        let _: Result<i64, Down> = self
            .run(Kind::Write, |mut conn| async move {
                let mut invocation = self.release.key(key);
                invocation.arg(value).invoke_async(&mut conn).await
            })
            .await;
    }

    /// Store `value` as the entry of `id` for `ttl`, only if the entry still
    /// holds `expected`. Whether it was stored.
    pub async fn put_if(
        &self,
        id: &str,
        expected: &Entry,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, Down> {
        let key = self.key(id, "token");
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let stored: i64 = self
            .run(Kind::Write, |mut conn| async move {
                let mut invocation = self.compare_and_set.key(key);
                invocation.arg(expected.expected()).arg(value).arg(ttl);
                invocation.arg(MAX_ENTRY);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Run one operation unless Redis is in its backoff, bounded by
    /// [`OP_TIMEOUT`], and note how it went. A read that succeeds does not
    /// bring back a Redis whose writes failed: it would flap between down
    /// and back at every renewal.
    async fn run<T, F: Future<Output = Result<T, RedisError>>>(
        &self,
        kind: Kind,
        operation: impl FnOnce(Connection) -> F,
    ) -> Result<T, Down> {
        if self.backing_off() {
            return Err(Down);
        }
        let attempt = async { operation(self.connection().await?).await };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(one_line(&e.to_string())),
            Err(_) => Err(format!("no answer within {} ms", OP_TIMEOUT.as_millis())),
        };
        if outcome.is_err() {
            *self.connection.lock().await = None;
        }
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(value) => {
                let writes_fail = matches!(health.down, Some((_, _, Kind::Write)));
                if kind == Kind::Read && writes_fail {
                    return Ok(value);
                }
                if health.down.take().is_some() {
                    tracing::info!("token cache: Redis is reachable again; tokens are shared");
                }
                health.backoff = BACKOFF_MIN;
                Ok(value)
            }
            Err(reason) => {
                if health.down.is_none() {
                    tracing::warn!(
                        "token cache: Redis unavailable ({reason}); each replica renews its own \
                         tokens until it is back"
                    );
                } else {
                    tracing::debug!("token cache: Redis still unavailable: {reason}");
                }
                let retry_at = Instant::now() + health.backoff;
                health.backoff = health.backoff.saturating_mul(2).min(BACKOFF_MAX);
                let kind = match &health.down {
                    Some((_, _, Kind::Write)) => Kind::Write,
                    _ => kind,
                };
                health.down = Some((reason, retry_at, kind));
                Err(Down)
            }
        }
    }

    /// Whether Redis is down because a write failed.
    fn writes_failing(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(health.down, Some((_, _, Kind::Write)))
    }

    /// Whether writes are taken again (a replica that adopts every token
    /// others publish would not write before its own next renewal): a
    /// `SET NX PX 1` of the lock — nothing when it is held, else a lock for
    /// a millisecond — refused exactly as the writes that failed (OOM,
    /// READONLY, NOPERM).
    async fn probe_writes(&self, id: &str) {
        let mut command = redis::cmd("SET");
        command.arg(self.key(id, "lock")).arg("probe");
        command.arg("NX").arg("PX").arg(1);
        let _: Result<Option<String>, Down> = self
            .run(Kind::Write, |mut conn| async move {
                command.query_async(&mut conn).await
            })
            .await;
    }

    fn backing_off(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health
            .down
            .as_ref()
            .is_some_and(|(_, retry_at, _)| Instant::now() < *retry_at)
    }
}

/// The outcome of [`RedisStore::lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    /// Taken: its value, for its release.
    Taken(String),
    /// Held by another replica.
    Busy,
    /// Held by a key without expiry, which now expires with the lock's TTL.
    Stuck,
}

/// A connection to a standalone server or to a cluster.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(single) => single.req_packed_command(cmd),
            Connection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(single) => single.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(single) => single.get_db(),
            Connection::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// One certificate as PEM.
fn pem_of(cert: &CertificateDer<'_>) -> String {
    let base64 = STANDARD.encode(cert.as_ref());
    let lines: Vec<&str> = (0..base64.len())
        .step_by(64)
        .filter_map(|at| base64.get(at..(at + 64).min(base64.len())))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// An error's first line (redis-rs never prints the URL's password).
fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
