//! sidekey as a child process (the real binary): JSON log lines read on a
//! thread, signals, and the process's own memory figures. For tests of the
//! command line, of signals, and of the memory of the proxy alone (an
//! in-process proxy shares its RSS with every test running beside it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `sidekey` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sidekey");

/// A running `sidekey run`, killed when dropped.
pub struct SidekeyProcess {
    /// The child.
    pub child: Child,
    /// Its log lines, parsed as JSON (`[log] format = "json"` is required).
    pub lines: mpsc::Receiver<serde_json::Value>,
    /// The log pipe, held open and never read ([`LogReader::Stalls`]).
    _unread: Option<BufReader<ChildStderr>>,
}

/// What the log's reader does once it has read the line it waits for
/// ([`SidekeyProcess::run_then`]).
#[derive(Clone, Copy, Debug)]
pub enum LogReader {
    /// Keeps the pipe open and reads no more (a log collector that stalls):
    /// the pipe fills.
    Stalls,
    /// Closes the pipe (a log collector that died): writes fail with EPIPE.
    Closes,
}

impl SidekeyProcess {
    /// `sidekey run --config PATH` with `env` added to its environment.
    pub fn run(config_path: &str, env: &[(&str, &str)]) -> SidekeyProcess {
        let mut child = spawn_run(config_path, env);
        let lines = log_lines(&mut child);
        SidekeyProcess {
            child,
            lines,
            _unread: None,
        }
    }

    /// Like [`run`](Self::run), but the log is read only up to and
    /// including the first line whose message contains `until`; then the
    /// reader does what `then` says. The lines read are in `lines`.
    pub fn run_then(
        config_path: &str,
        env: &[(&str, &str)],
        until: &str,
        then: LogReader,
    ) -> SidekeyProcess {
        let mut child = spawn_run(config_path, env);
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).expect("read sidekey's log");
            assert!(read > 0, "sidekey's log ended before `{until}`");
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let done = value["message"].as_str().is_some_and(|m| m.contains(until));
            let _ = tx.send(value);
            if done {
                break;
            }
        }
        let unread = match then {
            LogReader::Closes => None,
            LogReader::Stalls => Some(reader),
        };
        SidekeyProcess {
            child,
            lines,
            _unread: unread,
        }
    }

    /// Wait (up to 20 s, then panic) for a log line whose message contains `message`.
    pub fn wait_for(&self, message: &str) -> serde_json::Value {
        wait_for(&self.lines, message)
    }

    /// The address logged by the next line containing `message` (its `listen` field).
    pub fn listen_addr(&self, message: &str) -> SocketAddr {
        self.wait_for(message)["listen"]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("`{message}` carries no listen address"))
    }

    /// Send signal `name` (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Wait (up to 20 s, then panic) for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sidekey") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sidekey still running after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }
}

impl Drop for SidekeyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sidekey run --config PATH` with `env` added, its log piped.
fn spawn_run(config_path: &str, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config", config_path])
        .env_remove("RUST_LOG")
        .env_remove("SIDEKEY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("start sidekey")
}

/// Reads the child's JSON log lines on a thread and hands them over.
fn log_lines(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line)
                && tx.send(value).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Wait (up to 20 s, then panic) for a line whose message contains `message`.
fn wait_for(lines: &mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no log line `{message}`"));
        if line["message"]
            .as_str()
            .is_some_and(|m| m.contains(message))
        {
            return line;
        }
    }
}

/// Send signal `name` to `child` with `kill`.
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}
