//! The `sidekey` binary: exit codes, `check` messages, `run` with signals,
//! and the demo.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::config::{TestConfig, oauth2, route};
use crate::support::process::{BIN, SidekeyProcess};
use crate::support::proxy::{TestClient, body_bytes, request_with};
use crate::support::token_servers::{OAuthBehaviour, OAuthServer, TokenReply};

fn sidekey(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SIDEKEY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run sidekey")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const GOOD: &str = r#"
[credentials.legacy]
type = "static"
token = { env = "SIDEKEY_TEST_TOKEN" }

[[routes]]
listen = "127.0.0.1:0"
upstream = "https://api.example.test"
credential = "legacy"
"#;

#[test]
fn version_and_usage_errors() {
    let out = sidekey(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    assert_eq!(sidekey(&[]).status.code(), Some(2));
    assert_eq!(sidekey(&["run", "--bogus"]).status.code(), Some(2));
    assert_eq!(
        sidekey(&["run"]).status.code(),
        Some(2),
        "run needs --config or SIDEKEY_CONFIG"
    );
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = Command::new(BIN)
        .args(["check", "--config", &path])
        .env("SIDEKEY_TEST_TOKEN", "t0ken-value")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("t0ken-value"));
}

#[test]
fn check_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(
        dir.path(),
        "unknown.toml",
        &GOOD.replace(
            "credential = \"legacy\"",
            "credential = \"legacy\"\ncredentail = \"typo\"",
        ),
    );
    let out = sidekey(&["check", "--config", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown.toml:10"), "{err}");
    assert!(err.contains("credentail"), "{err}");

    // The variable is not set for this process: the secret reference fails, by line and key.
    let good = write(dir.path(), "good.toml", GOOD);
    let out = sidekey(&["check", "--config", &good]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("good.toml:4"), "{err}");
    assert!(err.contains("credentials.legacy.token"), "{err}");
    assert!(err.contains("SIDEKEY_TEST_TOKEN"), "{err}");

    let missing = sidekey(&["check", "--config", "/nonexistent/sidekey.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/sidekey.toml"));
}

/// GOOD with the token written literally on line 4.
fn literal_token() -> String {
    GOOD.replace("{ env = \"SIDEKEY_TEST_TOKEN\" }", "\"t0ken-literal\"")
}

#[test]
fn check_warns_where_a_secret_is_written_literally() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "literal.toml", &literal_token());
    let out = sidekey(&["check", "--config", &path]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("literal.toml:4: credentials.legacy.token: secret written literally"),
        "{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains("t0ken-literal"));
}

// Reading the log blocks a worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_where_a_secret_is_written_literally() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{}",
        literal_token()
    );
    let path = write(dir.path(), "literal.toml", &config);
    let mut sidekey = SidekeyProcess::run(&path, &[]);
    let warning = sidekey.wait_for("secret written literally");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["key"], "credentials.legacy.token", "{warning}");
    assert_eq!(warning["line"], 8, "{warning}");
    assert!(
        warning["file"].as_str().unwrap().ends_with("literal.toml"),
        "{warning}"
    );
    sidekey.wait_for("admin listening");
    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
    while let Ok(line) = sidekey.lines.try_recv() {
        assert!(!line.to_string().contains("t0ken-literal"));
    }
}

#[tokio::test]
async fn run_serves_reloads_on_sighup_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{GOOD}");
    let path = write(dir.path(), "run.toml", &config);
    let mut sidekey = SidekeyProcess::run(&path, &[("SIDEKEY_TEST_TOKEN", "t0ken-value")]);
    let admin = sidekey.listen_addr("admin listening");
    let client = TestClient::new();
    assert_eq!(
        client.get(&format!("http://{admin}/readyz")).await.status,
        200
    );

    // An invalid new configuration is refused and the old one keeps serving.
    std::fs::write(&path, format!("{config}\nbogus_key = 1\n")).unwrap();
    sidekey.signal("HUP");
    let refused = sidekey.wait_for("reload refused");
    assert!(refused["message"].as_str().unwrap().contains("bogus_key"));
    assert_eq!(
        client.get(&format!("http://{admin}/healthz")).await.status,
        200
    );
    // The status page says so, and names the file.
    let page = client.get(&format!("http://{admin}/")).await.text();
    assert!(page.contains("refused"), "{page}");
    assert!(page.contains("bogus_key"), "{page}");
    assert!(page.contains("run.toml"), "{page}");
    assert!(!page.contains("t0ken-value"), "{page}");

    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
    // Nothing the process logged contained the token.
    while let Ok(line) = sidekey.lines.try_recv() {
        assert!(!line.to_string().contains("t0ken-value"));
    }
}

#[tokio::test]
async fn demo_injects_a_rotating_token_the_app_never_sees() {
    let demo = sidekey::demo::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("demo starts");
    let client = TestClient::new();
    let req = request_with(
        http::Method::GET,
        &format!("http://{}/hello?x=1", demo.proxy_addr()),
        &[("authorization", "Bearer app-should-not-leak")],
        body_bytes(""),
    );
    let response = client.send(req).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    assert_eq!(echo["path"], "/v1/hello");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["authorization"], "Bearer demo-token-1");
    assert_eq!(echo["headers"]["x-tenant"], "demo");
    assert!(!response.text().contains("app-should-not-leak"));
    assert_eq!(
        demo.tokens_issued
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

// The log reader blocks a thread: the token servers run on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reload_cancels_it_and_drains_within_the_grace() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let hanging = OAuthServer::start(OAuthBehaviour::default()).await;
    hanging.set_reply(Some(TokenReply::hang()));
    let config = |token_url: &str| {
        TestConfig::new()
            .top(r#"shutdown_grace = "1s""#)
            .json_log()
            .with(oauth2("pliant", token_url).line(r#"timeout = "25s""#))
            .with(route("https://api.example.test", "pliant"))
            .text()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.toml", &config(&server.url()));
    let defaults = OAuthBehaviour::default();
    let mut sidekey = SidekeyProcess::run(
        &path,
        &[
            ("CLIENT_ID", defaults.client_id.as_str()),
            ("CLIENT_SECRET", defaults.client_secret.as_str()),
        ],
    );
    sidekey.wait_for("obtained token");

    // The new token endpoint never answers: the reload waits for its first token.
    std::fs::write(&path, config(&hanging.url())).unwrap();
    sidekey.signal("HUP");
    hanging.wait_for_requests(1).await;
    let stopping = std::time::Instant::now();
    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "SIGTERM during a reload stops within shutdown_grace, took {:?}",
        stopping.elapsed()
    );
}

/// `check --config PATH` with only `env` set (plus PATH), as stdout, stderr and exit code.
fn check_with(path: &str, env: &[(&str, &str)]) -> (String, String, Option<i32>) {
    let mut command = Command::new(BIN);
    command.args(["check", "--config", path]).env_clear();
    command.envs(env.iter().copied());
    let out = command.output().expect("run sidekey");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&out.stdout), text(&out.stderr), out.status.code())
}

/// The stderr line naming `key`, or a panic showing all of stderr.
fn line_of_key<'a>(stderr: &'a str, key: &str) -> &'a str {
    let found = stderr
        .lines()
        .find(|line| line.contains(&format!(": {key}: ")));
    found.unwrap_or_else(|| panic!("no error names `{key}`:\n{stderr}"))
}

/// A FIFO at `path`, which no one writes to.
fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// `check --config path` with an empty environment, which must answer
/// within `limit`: its exit code and stderr.
async fn check_within(path: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("check").arg("--config").arg(path).env_clear();
    let out = tokio::time::timeout(limit, command.kill_on_drop(true).output());
    let out = out.await.expect("check answers at once").unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_refuses_a_secret_file_that_is_a_fifo_or_a_device_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    mkfifo(&fifo);
    // A FIFO no one writes to held `check` (and `run`) for ever; /dev/zero
    // was read until memory ran out.
    for file in [fifo.to_str().unwrap(), "/dev/zero"] {
        let reference = format!("{{ file = \"{file}\" }}");
        let config = GOOD.replace("{ env = \"SIDEKEY_TEST_TOKEN\" }", &reference);
        let path = write(dir.path(), "sidekey.toml", &config);
        let (code, stderr) = check_within(Path::new(&path), Duration::from_secs(20)).await;
        assert_eq!(code, Some(1), "{stderr}");
        let line = line_of_key(&stderr, "credentials.legacy.token");
        assert!(line.contains("not a regular file"), "{file}: {line}");
    }
}

#[test]
fn check_reports_every_secret_problem_of_the_example_in_one_run() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let (_, stderr, code) = check_with(example, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    for key in [
        "credentials.inbenta.api_key",
        "credentials.inbenta.secret",
        "credentials.pliant.client_id",
        "credentials.pliant.client_secret",
        "credentials.legacy.token",
    ] {
        assert!(line_of_key(&stderr, key).starts_with("error: "), "{stderr}");
    }
}

#[test]
fn check_reports_every_error_of_every_table_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"shutdown_grace = 5
[credentials.p]
type = "oauth2"
tokn_url = "https://auth.example.test/token"
client_id = { env = "ID" }
client_secret = { env = "SECRET" }

[[routes]]
listen = "127.0.0.1:0"
upstream = "https://api.example.test"
credential = "p"
conect_timeout = "5s"
request_timeout = "soon"
"#;
    let path = write(dir.path(), "typos.toml", text);
    let (_, stderr, code) = check_with(&path, &[("ID", "i"), ("SECRET", "s")]);
    assert_eq!(code, Some(1), "{stderr}");
    let grace = line_of_key(&stderr, "shutdown_grace");
    assert!(grace.contains("typos.toml:1:"), "{grace}");
    assert!(grace.contains(r#"a duration such as "5s""#), "{grace}");
    let typo = line_of_key(&stderr, "credentials.p.tokn_url");
    assert!(typo.contains("typos.toml:4:"), "{typo}");
    assert!(typo.contains("did you mean `token_url`"), "{typo}");
    assert!(!typo.contains("api_key"), "only oauth2's keys: {typo}");
    let route = line_of_key(&stderr, "routes[0].conect_timeout");
    assert!(route.contains("typos.toml:12:"), "{route}");
    assert!(route.contains("did you mean `connect_timeout`"), "{route}");
    let timeout = line_of_key(&stderr, "routes[0].request_timeout");
    assert!(timeout.contains("typos.toml:13:"), "{timeout}");
}

#[test]
fn check_says_what_it_reads_and_that_it_does_not_contact_the_network() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "t0ken-from-file\n");
    let text =
        format!("{GOOD}\n[credentials.filed]\ntype = \"static\"\ntoken = {{ file = \"token\" }}\n");
    let path = write(dir.path(), "inputs.toml", &text);
    let (stdout, stderr, code) = check_with(&path, &[("SIDEKEY_TEST_TOKEN", "t0ken-value")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("SIDEKEY_TEST_TOKEN"), "{stdout}");
    let file = dir.path().join("token");
    assert!(stdout.contains(&*file.to_string_lossy()), "{stdout}");
    assert!(stdout.contains("does not contact"), "{stdout}");
    assert!(stdout.contains("sidekey token"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("t0ken-"),
        "no secret value"
    );
}

#[test]
fn a_broken_stdout_is_an_error_for_token_and_no_panic_for_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    // Stdout is a pipe whose reader is gone (`sidekey token … | true`):
    // each write fails with EPIPE.
    let closed = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .env("SIDEKEY_TEST_TOKEN", "t0ken-value")
            .env_remove("RUST_LOG")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("t0ken-value"), "{stderr}");
        (out.status.code(), stderr)
    };
    let (code, stderr) = closed(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "check's verdict stands: {stderr}");
    let (code, stderr) = closed(&["token", "--config", &path, "legacy", "--show"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the token to standard output"),
        "{stderr}"
    );
}

#[test]
fn token_for_an_unknown_name_lists_the_defined_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = Command::new(BIN)
        .args(["token", "--config", &path, "legacyy"])
        .env("SIDEKEY_TEST_TOKEN", "t0ken-value")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`legacyy`"), "{stderr}");
    assert!(stderr.contains("defined: legacy"), "{stderr}");
}

#[test]
fn check_refuses_a_configuration_that_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[credentials.legacy]\ntype = \"static\"\ntoken = { env = \"T\" }\n";
    let path = write(dir.path(), "empty.toml", text);
    let (_, stderr, code) = check_with(&path, &[("T", "t")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no [[routes]] and no [forward_proxy]"),
        "{stderr}"
    );
}

#[test]
fn check_prints_warnings_also_when_it_refuses_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let text = literal_token().replace("credential = \"legacy\"", "credential = \"nope\"");
    let path = write(dir.path(), "both.toml", &text);
    let (_, stderr, code) = check_with(&path, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("secret written literally"),
        "{stderr}"
    );
    assert!(
        line_of_key(&stderr, "routes[0].credential").contains("`nope`"),
        "{stderr}"
    );
    assert!(!stderr.contains("t0ken-literal"), "{stderr}");
}

#[test]
fn token_reports_where_a_secret_is_written_literally() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "literal.toml", &literal_token());
    let out = Command::new(BIN)
        .args(["token", "--config", &path, "legacy"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("secret written literally"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("t0ken-literal"));
}

#[test]
fn run_refuses_a_bad_configuration_naming_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "credential = \"legacy\"",
        "credential = \"legacyy\"\nbogus = 1",
    );
    let path = write(dir.path(), "bad.toml", &text);
    let out = sidekey(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(line_of_key(&stderr, "credentials.legacy.token").contains("SIDEKEY_TEST_TOKEN"));
    let reference = line_of_key(&stderr, "routes[0].credential");
    assert!(reference.contains("(defined: legacy)"), "{stderr}");
    assert!(
        line_of_key(&stderr, "routes[0].bogus").starts_with("error: "),
        "{stderr}"
    );
}

#[test]
fn check_says_where_tokens_are_cached_and_reads_the_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD}\n[cache]\nredis_url = \"redis://:hunter2@127.0.0.1:1/0\"\n\
         encryption_key = {{ env = \"SIDEKEY_CACHE_KEY\" }}\n"
    );
    let path = write(dir.path(), "cache.toml", &text);
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let env = [
        ("SIDEKEY_TEST_TOKEN", "t0ken-value"),
        ("SIDEKEY_CACHE_KEY", key),
    ];
    let (stdout, stderr, code) = check_with(&path, &env);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("tokens shared on Redis"), "{stdout}");
    assert!(stdout.contains("SIDEKEY_CACHE_KEY"), "{stdout}");
    let all = format!("{stdout}{stderr}");
    assert!(
        !all.contains(key) && !all.contains("hunter2"),
        "no secret value: {all}"
    );

    let (_, stderr, code) = check_with(&path, &[("SIDEKEY_TEST_TOKEN", "t0ken-value")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(line_of_key(&stderr, "cache.encryption_key").contains("SIDEKEY_CACHE_KEY"));
}

#[tokio::test]
async fn a_sighup_while_starting_is_a_reload_not_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{GOOD}");
    let path = write(dir.path(), "run.toml", &config);
    // Starting reads the system's CA bundle (SSL_CERT_FILE): a FIFO holds
    // sidekey there, reading its configuration, until this test lets go.
    let bundle = dir.path().join("ca-bundle.pem");
    mkfifo(&bundle);
    let bundle_path = bundle.to_str().unwrap();
    let mut sidekey = SidekeyProcess::run(
        &path,
        &[
            ("SIDEKEY_TEST_TOKEN", "t0ken"),
            ("SSL_CERT_FILE", bundle_path),
        ],
    );
    // Opening the writing end waits for sidekey to open the reading end.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&bundle)
        .unwrap();
    sidekey.signal("HUP");
    // An empty regular file takes the FIFO's place (for the reload), then
    // the FIFO ends and starting goes on.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    std::fs::rename(&empty, &bundle).unwrap();
    drop(writer);

    let running = std::iter::from_fn(|| sidekey.lines.recv_timeout(Duration::from_secs(20)).ok())
        .any(|line| line["message"] == "sidekey running");
    assert!(
        running,
        "sidekey ended on a SIGHUP while starting: {:?}",
        sidekey.child.wait()
    );
    sidekey.wait_for("reloading the configuration");
    sidekey.wait_for("configuration reloaded");
    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_sigterm_while_starting_ends_a_start_stuck_on_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.toml", GOOD);
    // As above: the system's CA bundle is a FIFO no one writes to.
    let bundle = dir.path().join("ca-bundle.pem");
    mkfifo(&bundle);
    let env = [
        ("SIDEKEY_TEST_TOKEN", "t0ken"),
        ("SSL_CERT_FILE", bundle.to_str().unwrap()),
    ];
    let mut sidekey = SidekeyProcess::run(&path, &env);
    // Wait until it is stuck there: the writer's open waits for its reader.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&bundle)
        .unwrap();
    sidekey.signal("TERM");
    let started = std::time::Instant::now();
    let status = sidekey.wait_exit().await;
    drop(writer);
    assert!(!status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stuck start outlived SIGTERM by {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_configuration_file_that_is_a_fifo_or_too_large_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    // 5 MiB, sparse: it costs no disk.
    let large = dir.path().join("large.toml");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    for (file, why) in [(&fifo, "not a regular file"), (&large, "larger than 4 MiB")] {
        let (code, stderr) = check_within(file, Duration::from_secs(2)).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(why), "{}: {stderr}", file.display());
    }

    // A reload is refused the same way: before, reading a FIFO (or
    // /dev/zero, until memory ran out) held the thread that runs the
    // admin listener, the token renewals and the signals.
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n{GOOD}");
    let path = write(dir.path(), "run.toml", &config);
    let mut sidekey = SidekeyProcess::run(&path, &[("SIDEKEY_TEST_TOKEN", "t0ken")]);
    let admin = sidekey.listen_addr("admin listening");
    sidekey.wait_for("sidekey running");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&fifo, &path).unwrap();
    sidekey.signal("HUP");
    let refused = sidekey.wait_for("reload refused");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("not a regular file"), "{message}");
    let client = TestClient::new();
    assert_eq!(
        client.get(&format!("http://{admin}/healthz")).await.status,
        200
    );
    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_second_stop_signal_ends_the_drain_at_once() {
    use crate::support::config::static_token;
    use crate::support::upstream::{Gate, Reply, Upstream, UpstreamOpts};

    let gate = Gate::new();
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::echo().until(&gate))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new()
        .top(r#"shutdown_grace = "30s""#)
        .json_log()
        .with(static_token("api", "API_TOKEN"))
        .with(route(&upstream.url(), "api"));
    let path = write(dir.path(), "run.toml", &config.text());
    let mut sidekey = SidekeyProcess::run(&path, &[("API_TOKEN", "t0ken")]);
    let addr = sidekey.listen_addr("proxy listening");
    // A request the upstream holds keeps the drain waiting for the grace.
    let mut held = crate::support::raw::RawConn::connect(addr).await;
    held.send_get("/held").await.unwrap();
    upstream.wait_for_requests(1).await;
    sidekey.signal("TERM");
    sidekey.wait_for("shutting down");

    // An operator who does not want to wait says so again (Ctrl-C twice).
    let stopping = std::time::Instant::now();
    sidekey.signal("INT");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "exited {:?} after the second signal",
        stopping.elapsed()
    );
    assert!(held.closed_within(Duration::from_secs(1)).await);
    gate.open();
}

// The token server answers while this thread waits for log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighups_while_the_same_file_reloads_cost_no_new_token_request() {
    use crate::support::config::static_token;

    let slow = OAuthServer::start(OAuthBehaviour {
        delay: Some(Duration::from_millis(800)),
        ..OAuthBehaviour::default()
    })
    .await;
    let defaults = OAuthBehaviour::default();
    let base = TestConfig::new()
        .json_log()
        .with(static_token("legacy", "SIDEKEY_TEST_TOKEN"))
        .with(route("https://api.example.test", "legacy"));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.toml", &base.text());
    let sidekey = SidekeyProcess::run(
        &path,
        &[
            ("SIDEKEY_TEST_TOKEN", "t0ken"),
            ("CLIENT_ID", defaults.client_id.as_str()),
            ("CLIENT_SECRET", defaults.client_secret.as_str()),
        ],
    );
    sidekey.wait_for("sidekey running");

    // A new credential whose token endpoint takes its time, and a config
    // reloader that sends SIGHUP again and again meanwhile. Each one started
    // the reload over: one more token request, and with SIGHUPs coming
    // faster than the endpoint answers, the reload never finished.
    let with_oauth = base
        .with(oauth2("pliant", &slow.url()))
        .with(route("https://api.example.test", "pliant").line(r#"path_prefix = "/p""#));
    std::fs::write(&path, with_oauth.text()).unwrap();
    sidekey.signal("HUP");
    slow.wait_for_requests(1).await;
    for _ in 0..4 {
        sidekey.signal("HUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidekey.wait_for("configuration reloaded");
    assert_eq!(slow.calls(), 1, "token requests for one reload");
    // The SIGHUPs are not lost: one more reload reads the files again, and
    // keeps the credential (and its token) that did not change.
    sidekey.wait_for("configuration reloaded");
    assert_eq!(slow.calls(), 1);
}
