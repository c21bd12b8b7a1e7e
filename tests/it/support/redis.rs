//! A real Redis for the `[cache] redis_url` tests: Debian's `redis-server`
//! as a child process on a free loopback port, without persistence, killed
//! when dropped; or three of them made a Redis Cluster ([`RedisCluster`]:
//! slots assigned, nodes met). [`RedisServer::kill`] and [`RedisServer::restart`] (same
//! port, empty) play an outage. `.ci/run` installs `redis-server` when it
//! is missing; a machine without it fails these tests saying so.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::TestPki;
use super::upstream::closed_port;

/// A `redis-server` child process.
pub struct RedisServer {
    port: u16,
    /// The cluster bus port (`--cluster-port`, cluster mode only).
    bus: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (cluster mode).
    args: Vec<String>,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    fn start_with(args: Vec<String>) -> RedisServer {
        let (port, bus) = (free_port(), free_port());
        let args = args.iter().map(|arg| {
            arg.replace("BUSPORT", &bus.to_string())
                .replace("PORT", &port.to_string())
        });
        let args = args.collect();
        let mut server = RedisServer {
            port,
            bus,
            child: None,
            args,
        };
        server.restart();
        server
    }

    /// One that speaks only TLS, with `pki`'s server certificate.
    pub fn start_tls(pki: &TestPki) -> RedisServer {
        let path = |path: &Path| path.to_string_lossy().into_owned();
        let mut args: Vec<String> = ["--port", "0", "--tls-port", "PORT"]
            .map(String::from)
            .into();
        args.extend(["--tls-cert-file".into(), path(pki.server_cert_path())]);
        args.extend(["--tls-key-file".into(), path(pki.server_key_path())]);
        args.extend(["--tls-ca-cert-file".into(), path(pki.ca_pem_path())]);
        args.extend(["--tls-auth-clients".into(), "no".into()]);
        Self::start_with(args)
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for [`RedisServer::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn tls(&self) -> bool {
        self.args.iter().any(|arg| arg == "--tls-port")
    }

    /// Kill it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port, empty, and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ping().is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `PING` over a raw connection: `Some` when it answers `+PONG` (a TLS
    /// server: when it accepts connections).
    fn ping(&self) -> Option<()> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        if self.tls() {
            return Some(());
        }
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(b"PING\r\n").ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).ok()?;
        (&reply == b"+PONG\r\n").then_some(())
    }

    /// The keys stored (`KEYS *`), read through `redis-cli`.
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["KEYS", "*"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// One `redis-cli` command's output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl RedisServer {
    /// `SET key value` over a raw connection: `value` may be any bytes
    /// (`redis-cli` takes only text arguments).
    pub fn set_raw(&self, key: &str, value: &[u8]) {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut command = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        )
        .into_bytes();
        command.extend_from_slice(value);
        command.extend_from_slice(b"\r\n");
        stream.write_all(&command).expect("send SET");
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).expect("SET's reply");
        assert_eq!(&reply, b"+OK\r\n", "SET {key}");
    }

    /// One counter of `INFO stats` (e.g. `total_net_output_bytes`).
    pub fn stat(&self, name: &str) -> u64 {
        let info = self.cli(&["INFO", "stats"]);
        let line = info
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")));
        let value = line.unwrap_or_else(|| panic!("no {name} in INFO stats: {info}"));
        value.trim().parse().expect("a counter")
    }
}

/// A port nothing listens on now (see [`closed_port`]).
fn free_port() -> u16 {
    closed_port().port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Each node's slots (the shares `redis-cli --cluster create` gives three masters).
const SLOTS: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Three `redis-server`s in cluster mode, no replicas: slots 0–5460 on the
/// first, 5461–10922 on the second, 10923–16383 on the third.
pub struct RedisCluster {
    /// The nodes, in slot order (killed when dropped, before their directory goes).
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Start the nodes and wait until the cluster says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        // Removed when dropped, also when starting the cluster fails.
        let tempdir = tempfile::tempdir().expect("cluster dir");
        let dir = tempdir.path().to_path_buf();
        let node = |_| {
            // The bus port is free too (the default, PORT + 10000, may not
            // be, or may not exist).
            let args = ["--cluster-enabled", "yes", "--cluster-port", "BUSPORT"];
            let args = args.iter().chain(&["--cluster-config-file"]);
            let mut args: Vec<String> = args.map(|a| (*a).to_owned()).collect();
            args.push(dir.join("nodes-PORT.conf").to_string_lossy().into_owned());
            args.extend(["--dir".to_owned(), dir.to_string_lossy().into_owned()]);
            RedisServer::start_with(args)
        };
        let nodes: Vec<RedisServer> = (0..3).map(node).collect();
        // Each node takes its slots and meets the others (what `redis-cli
        // --cluster create` does, without its one-second polls and waiting
        // on gossip: it once took over 10 s on a loaded machine). Meetings
        // are asked for again every 3 s until the cluster is up: meeting a
        // known node changes nothing.
        for (node, (first, last)) in nodes.iter().zip(SLOTS) {
            let (first, last) = (first.to_string(), last.to_string());
            let added = node.cli(&["CLUSTER", "ADDSLOTSRANGE", &first, &last]);
            assert_eq!(added.trim(), "OK", "CLUSTER ADDSLOTSRANGE: {added}");
        }
        let meet = || {
            for (i, node) in nodes.iter().enumerate() {
                for other in &nodes[i + 1..] {
                    let (port, bus) = (other.port.to_string(), other.bus.to_string());
                    node.cli(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
                }
            }
        };
        meet();
        // A master accepts writes 2 s after it started at the soonest.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut again = Instant::now() + Duration::from_secs(3);
        while !nodes
            .iter()
            .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not come up");
            if Instant::now() > again {
                meet();
                again = Instant::now() + Duration::from_secs(3);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster {
            nodes,
            _dir: tempdir,
        }
    }
}

/// A "Redis" that accepts connections, reads what it is sent and never
/// answers; stopped when dropped.
pub struct MuteRedis {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl MuteRedis {
    /// Listen on a free loopback port.
    pub async fn start() -> MuteRedis {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                });
            }
        });
        MuteRedis { port, task }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for MuteRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}
