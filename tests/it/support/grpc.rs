//! A real gRPC server and client (Python `grpcio`, scripts in
//! `tests/it/grpc/`) as child processes: the server over TLS with a
//! [`TestPki`] certificate, the client speaking h2c to sidekey.
//!
//! The tests need a `python3` that can `import grpc` (Debian:
//! `apt-get install -y python3-grpcio`). Without one they fail with that
//! instruction: a gRPC test that skips itself would prove nothing.
//! `SIDEKEY_TEST_PYTHON` names the interpreter to use; otherwise the first
//! of `python3` on `PATH` and `/usr/bin/python3` that has `grpc` is taken
//! (Debian's package installs for the system interpreter, which a
//! version manager's `python3` on `PATH` may hide).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::tls::TestPki;

/// How long a script may take to start, or the client to make its calls.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do when no interpreter has `grpc`.
const INSTALL: &str = "the gRPC tests need python3 with grpcio: \
    `sudo apt-get install -y python3-grpcio` (Debian/Ubuntu), \
    or set SIDEKEY_TEST_PYTHON to a python3 that can `import grpc`";

/// A script in `tests/it/grpc/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/grpc")
        .join(name)
}

/// The python3 that has `grpc` (looked for once); panics with [`INSTALL`].
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("SIDEKEY_TEST_PYTHON") {
            Some(python) => vec![python.into()],
            None => vec!["python3".into(), "/usr/bin/python3".into()],
        };
        let mut tried = Vec::new();
        for python in candidates {
            let probe = std::process::Command::new(&python)
                .args(["-c", "import grpc"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output();
            match probe {
                Ok(output) if output.status.success() => return Ok(python),
                Ok(output) => tried.push(format!(
                    "{}: {}",
                    python.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                Err(err) => tried.push(format!("{}: {err}", python.display())),
            }
        }
        Err(tried.join("; "))
    });
    match found {
        Ok(python) => python,
        Err(tried) => panic!("{INSTALL} (tried {tried})"),
    }
}

/// `server.py` running: the `sidekey.test.Echo` service over TLS.
pub struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    /// Start it with `pki`'s server certificate (for `localhost` and
    /// `127.0.0.1`); returns once it listens.
    pub async fn start(pki: &TestPki) -> GrpcServer {
        let mut child = Command::new(python())
            .arg(script("server.py"))
            .arg(pki.server_cert_path())
            .arg(pki.server_key_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start server.py: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        tokio::time::timeout(SCRIPT_TIMEOUT, BufReader::new(stdout).read_line(&mut first))
            .await
            .unwrap_or_else(|_| panic!("server.py printed no port within {SCRIPT_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("server.py: {e}"));
        let port: u16 = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server.py printed {first:?}, not a port"));
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// `https://localhost:PORT`, for a route's `upstream`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Run `client.py` against sidekey at `addr` and return what it printed
/// (see the script: one result per call).
pub async fn run_client(addr: SocketAddr) -> serde_json::Value {
    let run = Command::new(python())
        .arg(script("client.py"))
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("client.py did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run client.py: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client.py failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {stdout}"))
}
