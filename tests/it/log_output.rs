//! Where the log goes: a log collector that stalls or dies never stops
//! sidekey from serving (lines may be dropped; requests are not).

use std::time::Duration;

use crate::support::config::{TestConfig, route, static_token};
use crate::support::process::{LogReader, SidekeyProcess};
use crate::support::proxy::TestClient;
use crate::support::upstream::{Upstream, UpstreamOpts};

/// Serve requests whose access lines are 16 KiB each (a long path) with
/// the log reader doing `then` after start: every one gets its 200 in
/// time, the process is alive after them and stops cleanly on SIGTERM.
async fn serves_with_the_log_reader(then: LogReader) {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    let config = TestConfig::new()
        .json_log()
        .line("[log]", "access = true")
        .with(static_token("api", "API_TOKEN"))
        .with(route(&upstream.url(), "api"));
    std::fs::write(&path, config.text()).unwrap();
    let path = path.to_str().unwrap();
    let mut sidekey =
        SidekeyProcess::run_then(path, &[("API_TOKEN", "t")], "sidekey running", then);
    let addr = sidekey.listen_addr("proxy listening");

    // 100 lines of 16 KiB: far more than a pipe holds (64 KiB on Linux).
    let client = TestClient::new();
    let url = format!("http://{addr}/{}", "p".repeat(16 * 1024));
    for i in 0..100 {
        let response = tokio::time::timeout(Duration::from_secs(2), client.get(&url))
            .await
            .unwrap_or_else(|_| panic!("request {i} stalled behind a {then:?} log"));
        assert_eq!(response.status, 200, "request {i}");
    }
    assert!(
        sidekey.child.try_wait().unwrap().is_none(),
        "sidekey exited: {:?}",
        sidekey.child.try_wait()
    );
    let stopping = std::time::Instant::now();
    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_log_reader_that_stalls_holds_up_no_request() {
    serves_with_the_log_reader(LogReader::Stalls).await;
}

#[tokio::test]
async fn a_log_reader_that_goes_away_fails_no_request() {
    serves_with_the_log_reader(LogReader::Closes).await;
}

#[tokio::test]
async fn an_empty_or_invalid_rust_log_leaves_the_configured_level_and_an_invalid_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    let config = TestConfig::new()
        .json_log()
        .with(static_token("api", "API_TOKEN"))
        .with(route("http://127.0.0.1:9", "api"));
    std::fs::write(&path, config.text()).unwrap();
    let path = path.to_str().unwrap();

    // `RUST_LOG=` (a template with nothing to put there) silenced every
    // line, errors included.
    let sidekey = SidekeyProcess::run(path, &[("API_TOKEN", "t"), ("RUST_LOG", "")]);
    sidekey.wait_for("sidekey running");

    // A typo was ignored without a word.
    let sidekey = SidekeyProcess::run(path, &[("API_TOKEN", "t"), ("RUST_LOG", "sidekey=debg")]);
    let warning = sidekey.wait_for("RUST_LOG");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["rust_log"], "sidekey=debg", "{warning}");
    sidekey.wait_for("sidekey running");
}

#[tokio::test]
async fn a_reload_applies_the_log_level_and_says_the_format_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    let config = |log: &str| {
        TestConfig::new()
            .line("[log]", log)
            .with(static_token("api", "API_TOKEN"))
            // Written literally for a WARN line at start, when signals are handled.
            .line("[credentials.api]", "token = \"t\"")
            .with(route("http://127.0.0.1:9", "api"))
            .text()
    };
    std::fs::write(&path, config("format = \"json\"\nlevel = \"warn\"")).unwrap();
    let path_text = path.to_str().unwrap();
    let sidekey = SidekeyProcess::run(path_text, &[]);
    sidekey.wait_for("secret written literally");

    // To debug a live problem: level = "info" and SIGHUP. The reload that
    // applies it logs before it does, so ask again until one shows.
    std::fs::write(&path, config("format = \"json\"\nlevel = \"info\"")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        sidekey.signal("HUP");
        let line = sidekey.lines.recv_timeout(Duration::from_millis(200));
        if let Ok(line) = line
            && line["message"] == "reloading the configuration"
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
    };
    assert!(shown, "no INFO line after a reload to level = \"info\"");

    std::fs::write(&path, config("format = \"text\"\nlevel = \"info\"")).unwrap();
    sidekey.signal("HUP");
    sidekey.wait_for("[log] format changes at the next restart");
}
