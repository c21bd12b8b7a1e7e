//! `[cache] redis_url`: replicas share one token per credential through a
//! real Redis (`redis-server` on a free port). Each replica is an in-process
//! sidekey with its own engines; they share one token endpoint, one
//! upstream and one Redis. Real time (Redis runs outside the runtime), so
//! tokens last 1 s and runs a few seconds.
//!
//! 1 s tokens are renewed at half their life minus up to 5 % jitter: a
//! replica alone renews every 0.45–0.5 s, so one renewal per period for
//! the whole fleet means at most `run / 0.45 s + 1` token requests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::config::{TestConfig, oauth2, route, toml_str};
use crate::support::logs::capture;
use crate::support::proxy::TestProxy;
use crate::support::redis::{MuteRedis, RedisCluster, RedisServer};
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Reply, Upstream, UpstreamOpts};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Shortest renewal period of a 1 s token (half its life, minus 5 % jitter).
const PERIOD: Duration = Duration::from_millis(450);
/// The same for a 2 s token.
const PERIOD_2S: Duration = Duration::from_millis(900);

/// One OAuth credential on `token`, one route to `upstream`, tokens shared on `redis`.
fn config(token: &OAuthServer, upstream: &Upstream, redis: &RedisServer) -> TestConfig {
    config_on(token, upstream, &redis.url(), "it:")
}

/// [`config`] with Redis at `url` and keys under `prefix`.
fn config_on(token: &OAuthServer, upstream: &Upstream, url: &str, prefix: &str) -> TestConfig {
    TestConfig::new()
        .with(oauth2("api", &token.url()))
        .with(route(&upstream.url(), "api"))
        .line(
            "[cache]",
            &format!(
                "redis_url = {{ env = \"REDIS_URL\" }}\nkey_prefix = {}\n\
                 encryption_key = {{ env = \"CACHE_KEY\" }}",
                toml_str(prefix)
            ),
        )
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
        .env("CACHE_KEY", KEY)
        .env("REDIS_URL", url)
        .admin()
}

/// A token endpoint whose tokens last `secs` seconds.
async fn token_server(secs: u64) -> OAuthServer {
    OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!(secs)),
        ..OAuthBehaviour::default()
    })
    .await
}

/// `n` replicas, each with its first token.
async fn fleet(n: usize, config: &TestConfig) -> Vec<Arc<TestProxy>> {
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        let proxy = config.start().await;
        proxy.wait_for_tokens().await;
        replicas.push(Arc::new(proxy));
    }
    replicas
}

/// Requests answered 200, and what every other answer said.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

/// Every replica sends a request every 20 ms for `run`.
async fn traffic(replicas: &[Arc<TestProxy>], run: Duration) -> Arc<Tally> {
    let stop = Arc::new(AtomicBool::new(false));
    let running = traffic_until(replicas, Arc::clone(&stop));
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::SeqCst);
    running.await.expect("traffic")
}

/// Every replica sends a request every 20 ms until `stop` is set.
fn traffic_until(
    replicas: &[Arc<TestProxy>],
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Arc<Tally>> {
    let tally = Arc::new(Tally::default());
    let tasks: Vec<_> = replicas
        .iter()
        .map(|proxy| {
            let (proxy, tally, stop) = (Arc::clone(proxy), Arc::clone(&tally), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let response = proxy.get("/v1/items").await;
                    match response.status.as_u16() {
                        200 => tally.ok.fetch_add(1, Ordering::Relaxed),
                        status => {
                            let text = format!("{status} {}", response.text());
                            tally.failed.lock().unwrap().push(text);
                            0
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for task in tasks {
            task.await.expect("traffic task");
        }
        tally
    })
}

/// Traffic flowed all along: at least one answer per replica every 100 ms
/// of `run` (a fifth of what a request every 20 ms sends; how many more
/// depends on the CPU the test gets, not on sidekey).
fn flowed(ok: usize, replicas: usize, run: Duration) -> bool {
    ok as f64 >= replicas as f64 * run.as_secs_f64() / 0.1
}

/// At most this many token requests in `run` for one renewal per period of
/// a 1 s token, with 20 % slack.
fn one_per_period(run: Duration) -> usize {
    one_per(PERIOD, run)
}

/// At most this many token requests in `run` for one renewal per `period`, with 20 % slack.
fn one_per(period: Duration, run: Duration) -> usize {
    let periods = run.as_secs_f64() / period.as_secs_f64() + 1.0;
    (periods * 1.2).floor() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_make_one_renewal_per_period_for_the_whole_fleet() {
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(1).await;
    let replicas = fleet(10, &config(&token, &upstream, &redis)).await;
    let started = token.calls();
    assert!(
        started <= 2,
        "ten replicas starting made {started} token requests"
    );

    // Four renewal periods or more; ten replicas alone would make forty.
    let run = Duration::from_secs(2);
    let tally = traffic(&replicas, run).await;
    let renewals = token.calls() - started;
    let failed = tally.failed.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "fleet of 10, 1 s tokens, {run:?}: {started} token requests at start, {renewals} renewals \
         ({:.2} per second), {ok} requests ok, {} failed",
        renewals as f64 / run.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(flowed(ok, 10, run), "traffic flowed: {ok}");
    let bound = one_per_period(run);
    assert!(
        renewals <= bound,
        "{renewals} renewals in {run:?}: one per period for the fleet allows {bound} \
         (ten replicas on their own would make about {})",
        10 * bound
    );
    let mut adopted = 0.0;
    for replica in &replicas {
        let series = "sidekey_token_cache_adopted_total{credential=\"api\"}";
        adopted += replica.metric(series).await;
    }
    // Nine replicas adopt each token the tenth obtains (the starts too).
    assert!(adopted >= 9.0 * renewals as f64, "{adopted} tokens adopted");
    let keys = redis.keys();
    assert!(
        keys.iter()
            .any(|key| key.starts_with("it:{") && key.ends_with("}:token")),
        "{keys:?}"
    );
    let stored = redis.cli(&["GET", keys.iter().find(|k| k.ends_with(":token")).unwrap()]);
    let issued = token.last_token().expect("issued");
    assert!(
        !stored.contains(&issued),
        "the entry is encrypted: {stored}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn redis_killed_mid_run_fails_no_request_and_sharing_resumes() {
    let (logs, _guard) = capture();
    let mut redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    // 2 s tokens: a replica waits for another's renewal at most half the
    // life its token has left (0.4 s), room enough on a busy runtime.
    let token = token_server(2).await;
    let replicas = Arc::new(fleet(5, &config(&token, &upstream, &redis)).await);
    let (outage, after) = (Duration::from_millis(1500), Duration::from_millis(1500));

    let stop = Arc::new(AtomicBool::new(false));
    let driving = traffic_until(&replicas, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let before_outage = token.calls();
    tokio::time::sleep(outage).await;
    let during_outage = token.calls() - before_outage;
    let readyz = replicas[0].admin_get("/readyz").await;
    assert_eq!(
        readyz.status,
        200,
        "Redis down is no readiness failure: {}",
        readyz.text()
    );
    assert_eq!(readyz.json()["cache"]["redis"], "down", "{}", readyz.text());
    let series = replicas[0].admin_get("/metrics").await.text();
    assert!(
        series.contains("sidekey_cache_redis_up{store=\"redis\"} 0"),
        "{series}"
    );
    let page = replicas[0].admin_get("/").await.text();
    assert!(page.contains("Redis down"), "the status page says so");
    redis.restart();
    // Every replica tries Redis again within its backoff (at most 2 s) and
    // its next renewal (about 1 s): wait until all five said it is back.
    logs.wait_for_lines(&["Redis is reachable again"], 5).await;
    let resumed_at = token.calls();
    tokio::time::sleep(after).await;
    let shared = token.calls() - resumed_at;
    stop.store(true, Ordering::SeqCst);
    let tally = driving.await.expect("traffic");

    let failed = tally.failed.lock().unwrap().clone();
    eprintln!(
        "outage, 5 replicas, 2 s tokens: {during_outage} token requests in {outage:?} while Redis \
         was down, {shared} in {after:?} once it was back; {} ok, {} failed",
        tally.ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        during_outage > one_per(PERIOD_2S, outage),
        "while Redis was down each replica renewed for itself: {during_outage}"
    );
    let bound = one_per(PERIOD_2S, after);
    let renewals = logs.lines_with(&["obtained token"]).join("\n");
    assert!(
        shared <= bound,
        "sharing resumed: {shared} token requests in {after:?} (≤ {bound}):\n{renewals}"
    );
    // One line per replica each way, however many token requests met Redis down.
    let down = logs.lines_with(&["WARN", "Redis unavailable"]);
    assert_eq!(down.len(), 5, "one WARN per replica:\n{}", logs.text());
    let back = logs.lines_with(&["Redis is reachable again"]);
    assert_eq!(back.len(), 5, "{}", logs.text());
    let readyz = replicas[0].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());
    assert_eq!(
        replicas[0]
            .metric("sidekey_cache_redis_up{store=\"redis\"}")
            .await,
        1.0
    );
    let page = replicas[0].admin_get("/").await.text();
    assert!(page.contains("Redis up"), "the status page says so");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_renewed_once_for_the_fleet() {
    let redis = RedisServer::start();
    let revoked: Arc<Mutex<Option<String>>> = Arc::default();
    let upstream = {
        let revoked = Arc::clone(&revoked);
        Upstream::start(UpstreamOpts::plain().respond(move |request| {
            let bearer = request.header("authorization").unwrap_or_default();
            match revoked.lock().unwrap().as_deref() {
                Some(token) if bearer == format!("Bearer {token}") => Reply::status(401),
                _ => Reply::status(200),
            }
        }))
        .await
    };
    let token = token_server(3600).await;
    let replicas = fleet(5, &config(&token, &upstream, &redis)).await;
    assert_eq!(
        token.calls(),
        1,
        "the first replica's token serves the fleet"
    );

    *revoked.lock().unwrap() = token.last_token();
    let answers: Vec<_> = replicas
        .iter()
        .map(|proxy| {
            let proxy = Arc::clone(proxy);
            tokio::spawn(async move { proxy.get("/v1/items").await })
        })
        .collect();
    for answer in answers {
        let response = answer.await.expect("request");
        assert_eq!(
            response.status,
            200,
            "retried with the new token: {}",
            response.text()
        );
    }
    assert_eq!(
        token.calls(),
        2,
        "five replicas saw the token rejected; one renewed it for all"
    );
    // A replica that starts later adopts the new token.
    let late = config(&token, &upstream, &redis).start().await;
    assert_eq!(late.get("/v1/items").await.status, 200);
    assert_eq!(token.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_shared_through_any_of_its_nodes() {
    let cluster = RedisCluster::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(1).await;
    // `{x}` is the keys' hash tag: slot 16287, on the third node, so the
    // first node (the URL's) answers MOVED and only cluster routing works.
    let first = &cluster.nodes[0];
    let config = config_on(&token, &upstream, &first.url(), "it{x}:");
    let replicas = fleet(5, &config).await;
    let started = token.calls();
    let run = Duration::from_secs(2);
    let tally = traffic(&replicas, run).await;
    let renewals = token.calls() - started;
    let failed = tally.failed.lock().unwrap().clone();
    eprintln!(
        "cluster: 5 replicas, {started} token requests at start, {renewals} renewals in {run:?}"
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        started <= 2 && renewals <= one_per_period(run),
        "{started} + {renewals}"
    );
    let keys = cluster.nodes[2].keys();
    let entry = keys
        .iter()
        .find(|key| key.ends_with(":token"))
        .expect("the entry on node 3");
    assert!(
        first.cli(&["GET", entry]).contains("MOVED"),
        "the first node does not hold it"
    );
    let readyz = replicas[0].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_trusted_through_the_tls_ca_file() {
    let pki = TestPki::new();
    let redis = RedisServer::start_tls(&pki);
    assert!(redis.url().starts_with("rediss://"));
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(3600).await;
    let config = config(&token, &upstream, &redis).trusting(&pki);
    let replicas = fleet(3, &config).await;
    assert_eq!(token.calls(), 1, "three replicas shared one token over TLS");
    let readyz = replicas[2].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());

    // Without the CA, the server is not trusted: each replica renews alone.
    let untrusted = fleet(2, &self::config(&token, &upstream, &redis)).await;
    assert_eq!(token.calls(), 3);
    let readyz = untrusted[0].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "down", "{}", readyz.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_replica_fails_no_request() {
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(1).await;
    let replicas = fleet(2, &config(&token, &upstream, &redis)).await;
    // A replica died holding the renewal lock: it expires only in a minute.
    let keys = redis.keys();
    let entry = keys
        .iter()
        .find(|key| key.ends_with(":token"))
        .expect("the entry");
    let lock = entry.replace(":token", ":lock");
    assert_eq!(
        redis.cli(&["SET", &lock, "dead", "PX", "60000"]).trim(),
        "OK"
    );

    // Two lifetimes: each replica renews past the lock on its own, twice.
    let run = Duration::from_secs(2);
    let tally = traffic(&replicas, run).await;
    let failed = tally.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(flowed(ok, 2, run), "traffic flowed: {ok}");
}

/// The Redis key of the fleet's entry (the one credential's), once stored.
fn entry_key(redis: &RedisServer) -> String {
    let keys = redis.keys();
    let entry = keys.iter().find(|key| key.ends_with(":token"));
    entry.expect("the entry is stored").clone()
}

/// A third replica started after `spoiled` wrote something else at the
/// entry: the second ignores it with one WARN, keeps Redis up, replaces it
/// with its token, and the third adopts that token.
async fn spoiled_entry_is_replaced(spoil: impl FnOnce(&RedisServer, &str)) -> RedisServer {
    let (logs, _guard) = capture();
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(3600).await;
    let config = config(&token, &upstream, &redis);
    let first = config.start().await;
    first.wait_for_tokens().await;
    let key = entry_key(&redis);
    spoil(&redis, &key);

    let second = config.start().await;
    second.wait_for_tokens().await;
    assert_eq!(second.get("/v1/items").await.status, 200);
    assert_eq!(
        token.calls(),
        2,
        "the second replica renewed past the entry"
    );
    let readyz = second.admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", logs.text());
    assert!(
        logs.lines_with(&["Redis unavailable"]).is_empty(),
        "a bad entry is no Redis outage:\n{}",
        logs.text()
    );
    let ignored = logs.lines_with(&["WARN", "ignored"]);
    assert_eq!(ignored.len(), 1, "one WARN:\n{}", logs.text());
    let stored = redis.cli(&["GET", &key]);
    assert!(stored.starts_with('{'), "replaced: {:.80}", stored);

    let third = config.start().await;
    third.wait_for_tokens().await;
    assert_eq!(token.calls(), 2, "the third replica adopted the new token");
    redis
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_of_binary_garbage_is_ignored_and_replaced() {
    spoiled_entry_is_replaced(|redis, key| redis.set_raw(key, b"\xff\xfe\x00garbage\x80")).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_of_text_garbage_is_ignored_with_one_warning_and_replaced() {
    spoiled_entry_is_replaced(|redis, key| {
        assert_eq!(redis.cli(&["SET", key, "not json at all"]).trim(), "OK");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_key_of_another_type_is_ignored_and_replaced() {
    spoiled_entry_is_replaced(|redis, key| {
        assert_eq!(redis.cli(&["DEL", key]).trim(), "1");
        assert_eq!(redis.cli(&["HSET", key, "field", "value"]).trim(), "1");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_huge_entry_is_never_downloaded() {
    let mut spoiled = None;
    let redis = spoiled_entry_is_replaced(|redis, key| {
        // 20 MB (zero bytes), then what Redis has sent and received so far.
        assert_eq!(
            redis.cli(&["SETRANGE", key, "20000000", "x"]).trim(),
            "20000001"
        );
        spoiled = Some((
            redis.stat("total_net_output_bytes"),
            redis.stat("total_net_input_bytes"),
        ));
    })
    .await;
    let (output, input) = spoiled.expect("spoiled");
    let sent = redis.stat("total_net_output_bytes") - output;
    let received = redis.stat("total_net_input_bytes") - input;
    eprintln!("a 20 MB entry: Redis sent {sent} bytes, received {received}");
    assert!(sent < 1_000_000, "Redis sent {sent} bytes");
    assert!(received < 1_000_000, "Redis received {received} bytes");
}

/// Redis that answers reads but refuses writes (`refuse`, undone by
/// `accept`): one WARN per replica, no flapping between down and back on
/// every read, no failed request; once it accepts writes, one INFO each.
async fn writes_refused(refuse: &[&[&str]], accept: &[&[&str]], reason: &str) {
    let (logs, _guard) = capture();
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(1).await;
    let replicas = fleet(3, &config(&token, &upstream, &redis)).await;
    for command in refuse {
        assert!(redis.cli(command).starts_with("OK"), "{command:?}");
    }

    // Two renewals or more of each replica, each reading the entry first.
    let run = Duration::from_millis(1200);
    let tally = traffic(&replicas, run).await;
    let failed = tally.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let readyz = replicas[0].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "down", "{}", readyz.text());
    let down = logs.lines_with(&["WARN", "Redis unavailable", reason]);
    let back = logs.lines_with(&["Redis is reachable again"]);
    assert_eq!(
        (down.len(), back.len()),
        (3, 0),
        "one WARN per replica, then quiet:\n{}",
        logs.text()
    );

    for command in accept {
        assert!(redis.cli(command).starts_with("OK"), "{command:?}");
    }
    logs.wait_for_lines(&["Redis is reachable again"], 3).await;
    let readyz = replicas[0].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());
}

#[tokio::test(flavor = "current_thread")]
async fn redis_out_of_memory_is_one_warning_per_replica_not_one_per_renewal() {
    let refuse: &[&[&str]] = &[
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        &["CONFIG", "SET", "maxmemory", "1"],
    ];
    writes_refused(refuse, &[&["CONFIG", "SET", "maxmemory", "0"]], "OOM").await;
}

#[tokio::test(flavor = "current_thread")]
async fn redis_made_a_replica_is_one_warning_per_replica_not_one_per_renewal() {
    // A replica of a dead master: reads answer, writes say READONLY.
    let dead = crate::support::upstream::closed_port().port().to_string();
    let refuse: &[&[&str]] = &[&["REPLICAOF", "127.0.0.1", &dead]];
    writes_refused(refuse, &[&["REPLICAOF", "NO", "ONE"]], "ReadOnly").await;
}

/// A renewal lock without expiry (a plain `SET`, or a key of another type,
/// written by something other than a replica) is given one: it would keep
/// every replica waiting on a renewal that never comes, at each renewal,
/// for ever, without a word.
#[tokio::test(flavor = "current_thread")]
async fn a_lock_without_expiry_is_given_one_with_one_warning() {
    let (logs, _guard) = capture();
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(1).await;
    let replicas = fleet(2, &config(&token, &upstream, &redis)).await;
    let lock = entry_key(&redis).replace(":token", ":lock");
    assert_eq!(redis.cli(&["HSET", &lock, "held", "for ever"]).trim(), "1");

    let run = Duration::from_millis(1200);
    let tally = traffic(&replicas, run).await;
    let failed = tally.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // Replicas renew past it (at most half their token's life late) and
    // give it the TTL of their own locks.
    let ttl = redis.cli(&["PTTL", &lock]);
    let ttl: i64 = ttl.trim().parse().expect("PTTL");
    assert!(ttl != -1, "the lock still has no expiry");
    let warned = logs.lines_with(&["WARN", "renewal lock"]);
    assert_eq!(warned.len(), 1, "one WARN:\n{}", logs.text());
}

/// The ACL `docs/configuration.md` gives sidekey's Redis user is enough to
/// share tokens; a user without those commands is Redis down (one WARN per
/// replica saying why), which fails no request.
#[tokio::test(flavor = "current_thread")]
async fn the_documented_acl_is_enough_and_less_is_redis_down() {
    let (logs, _guard) = capture();
    let redis = RedisServer::start();
    let commands = "+info +evalsha +eval +script +type +strlen +get +set +pttl +pexpire +del";
    let mut acl = vec!["ACL", "SETUSER", "sidekey", "on", ">pw", "~it:*"];
    acl.extend(commands.split(' '));
    assert_eq!(redis.cli(&acl).trim(), "OK");
    let reader = [
        "ACL", "SETUSER", "reader", "on", ">pw", "~it:*", "+info", "+get",
    ];
    assert_eq!(redis.cli(&reader).trim(), "OK");
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(3600).await;
    let as_user = |user: &str| {
        redis
            .url()
            .replace("redis://", &format!("redis://{user}:pw@"))
    };
    let shared = fleet(2, &config_on(&token, &upstream, &as_user("sidekey"), "it:")).await;
    assert_eq!(token.calls(), 1, "two replicas shared one token");
    let readyz = shared[1].admin_get("/readyz").await;
    assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());

    let alone = fleet(2, &config_on(&token, &upstream, &as_user("reader"), "it:")).await;
    assert_eq!(token.calls(), 3, "each replica renewed alone");
    assert_eq!(alone[0].get("/v1/items").await.status, 200);
    let down = logs.lines_with(&["WARN", "Redis unavailable", "NoPerm"]);
    assert_eq!(down.len(), 2, "one WARN per replica:\n{}", logs.text());
}

/// After writes were refused, a replica that only reads (it adopts each
/// token another replica published) is back as soon as Redis takes writes
/// again, not at the next renewal it happens to make itself.
#[tokio::test(flavor = "current_thread")]
async fn a_replica_that_only_adopts_is_back_once_writes_are_taken() {
    let (logs, _guard) = capture();
    let redis = RedisServer::start();
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    // 2 s tokens: renewals 0.9–1 s apart, room for the second replica to
    // renew after the first published (1 s tokens leave 25 ms).
    let token = token_server(2).await;
    let replicas = fleet(2, &config(&token, &upstream, &redis)).await;
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    logs.wait_for_lines(&["WARN", "Redis unavailable", "OOM"], 2)
        .await;
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    // Both renew within a second: one takes the lock and publishes, the
    // other adopts what it published (its second adoption, the first was
    // at start) — and has Redis back by then.
    logs.wait_for_lines(&["Redis is reachable again"], 1).await;
    logs.wait_for_lines(&["using a cached token"], 2).await;
    for replica in &replicas {
        let readyz = replica.admin_get("/readyz").await;
        assert_eq!(readyz.json()["cache"]["redis"], "up", "{}", readyz.text());
    }
}

/// A Redis that accepts connections and never answers costs each replica
/// one bounded wait (1 s) for its first token and no request: one WARN per
/// replica, each renews alone.
#[tokio::test(flavor = "current_thread")]
async fn a_redis_that_never_answers_delays_each_replica_once_and_fails_no_request() {
    let (logs, _guard) = capture();
    let mute = MuteRedis::start().await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = token_server(3600).await;
    let config = config_on(&token, &upstream, &mute.url(), "it:");
    let started = Instant::now();
    let (first, second) = tokio::join!(config.start(), config.start());
    tokio::join!(first.wait_for_tokens(), second.wait_for_tokens());
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1800), "start took {took:?}");
    assert_eq!(token.calls(), 2, "each replica renewed alone");
    for replica in [&first, &second] {
        let asked = Instant::now();
        assert_eq!(replica.get("/v1/items").await.status, 200);
        assert!(
            asked.elapsed() < Duration::from_millis(200),
            "no wait on Redis"
        );
        let readyz = replica.admin_get("/readyz").await;
        assert_eq!(readyz.json()["cache"]["redis"], "down", "{}", readyz.text());
    }
    let down = logs.lines_with(&["WARN", "Redis unavailable"]);
    assert_eq!(down.len(), 2, "one WARN per replica:\n{}", logs.text());
}
