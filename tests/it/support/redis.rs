//! A real Redis for the `[cache] redis_url` tests: Debian's `redis-server`
//! as a child process on a free loopback port, without persistence, killed
//! when dropped. [`RedisServer::kill`] and [`RedisServer::restart`] (same
//! port, empty) play an outage. `.ci/run` installs `redis-server` when it
//! is missing; a machine without it fails these tests saying so.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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

    /// `PING` over a raw connection: `Some` when it answers `+PONG`.
    fn ping(&self) -> Option<()> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
