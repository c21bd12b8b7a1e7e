//! The user docs agree with sidekey: `docs/configuration.md` names every key
//! `config.example.toml` shows and every error sidekey answers;
//! `config.example.toml` says in its first lines which variables and files
//! `check` needs, and passes `check` with exactly those; README says how to
//! install and with which Rust; links in the docs lead to files of the
//! repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sidekey::config::parse;
use sidekey::credential::Unavailable;
use sidekey::error::ProxyError;
use sidekey::secret::{MapEnv, SecretRef};

use crate::support::process::BIN;

const REFERENCE: &str = "docs/configuration.md";
const EXAMPLE: &str = "config.example.toml";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Keys whose tables are data (header names, forward-proxy hosts), not keys.
const MAPS: [&str; 2] = ["headers", "hosts"];

/// Table names and keys of one TOML line, if it is TOML.
fn keys_of_line(line: &str, out: &mut BTreeSet<String>) {
    let line = line.trim();
    if let Some(header) = line.strip_prefix('[') {
        let name = header.trim_start_matches('[');
        let end = name.find([']', '.']).unwrap_or(name.len());
        let name = name[..end].trim();
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            out.insert(name.to_owned());
        }
        return;
    }
    let Ok(table) = line.parse::<toml::Table>() else {
        return;
    };
    for (key, value) in &table {
        out.insert(key.clone());
        if let toml::Value::Table(inner) = value
            && !MAPS.contains(&key.as_str())
        {
            out.extend(inner.keys().cloned());
        }
    }
}

/// Every table and key `config.example.toml` shows, commented out or not:
/// a commented line counts when what follows its `#` is a TOML line.
fn example_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for line in read(EXAMPLE).lines() {
        let line = line.trim();
        match line.strip_prefix('#') {
            Some(commented) => keys_of_line(commented, &mut keys),
            None => keys_of_line(line, &mut keys),
        }
    }
    keys
}

#[test]
fn configuration_reference_names_every_key_of_the_example() {
    let keys = example_keys();
    // The parse sees what the example is about (guards the parse itself).
    for key in [
        "shutdown_grace",
        "workers",
        "admin",
        "routes",
        "hosts",
        "client_key",
    ] {
        assert!(keys.contains(key), "example keys lack {key}: {keys:?}");
    }
    let reference = read(REFERENCE);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| {
            ![
                format!("`{key}`"),
                format!("[{key}]"),
                format!("[[{key}]]"),
                format!("[{key}."),
                format!("{{ {key} = "),
            ]
            .iter()
            .any(|form| reference.contains(form.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{REFERENCE} does not describe {missing:?} (shown in {EXAMPLE})"
    );
}

/// One of each error sidekey answers itself. The match makes a new variant
/// a compile error here until the reference lists it.
fn every_proxy_error() -> Vec<ProxyError> {
    let all = vec![
        ProxyError::NoRoute("/x".into()),
        ProxyError::CredentialUnavailable(Unavailable {
            credential: Arc::from("c"),
            reason: "r".into(),
        }),
        ProxyError::UpstreamUnreachable {
            upstream: "u".into(),
            failure: "unreachable",
            reason: "r".into(),
        },
        ProxyError::UpstreamTimeout {
            upstream: "u".into(),
            timeout: Duration::from_secs(1),
        },
        ProxyError::RequestBodyTimeout {
            timeout: Duration::from_secs(1),
        },
        ProxyError::HostNotAllowed("h".into()),
        ProxyError::BadRequest("b".into()),
        ProxyError::UpgradeNotSupported("u".into()),
    ];
    for error in &all {
        match error {
            ProxyError::NoRoute(_)
            | ProxyError::CredentialUnavailable(_)
            | ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::RequestBodyTimeout { .. }
            | ProxyError::HostNotAllowed(_)
            | ProxyError::BadRequest(_)
            | ProxyError::UpgradeNotSupported(_) => {}
        }
    }
    all
}

#[test]
fn configuration_reference_lists_every_error_sidekey_answers() {
    let reference = read(REFERENCE);
    // Rows `| STATUS | `code` | …` of the error table.
    let rows: BTreeSet<(u16, String)> = reference
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status = cells.get(1)?.parse().ok()?;
            let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((status, code.to_owned()))
        })
        .collect();
    let answered: BTreeSet<(u16, String)> = every_proxy_error()
        .iter()
        .map(|e| (e.status().as_u16(), e.code().to_owned()))
        .collect();
    assert_eq!(rows, answered, "{REFERENCE}'s error table");
    for part in [
        "x-sidekey-error",
        "application/json",
        r#""error""#,
        r#""message""#,
    ] {
        assert!(
            reference.contains(part),
            "{REFERENCE} does not mention {part}"
        );
    }
}

/// The names listed after `label` in the example's first lines.
fn listed(head: &[&str], label: &str) -> BTreeSet<String> {
    head.iter()
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix(label))
        .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
        .collect()
}

#[test]
fn example_config_says_which_variables_and_files_check_needs() {
    let text = read(EXAMPLE);
    let head: Vec<&str> = text.lines().take(15).collect();
    let (vars, files) = (listed(&head, "variables:"), listed(&head, "files:"));
    assert!(
        !vars.is_empty() || !files.is_empty(),
        "{EXAMPLE} neither passes check as shipped nor lists, in its first lines, the \
         `variables:` and `files:` it needs"
    );

    // The lists are what the configuration reads.
    let config =
        parse(&text, &repo(EXAMPLE), Arc::new(MapEnv::default())).unwrap_or_else(|e| panic!("{e}"));
    let (mut read_vars, mut read_files) = (BTreeSet::new(), BTreeSet::new());
    for credential in config.credentials.values() {
        for (_, secret) in credential.secret_refs() {
            match secret {
                SecretRef::Env(name) => read_vars.insert(name.clone()),
                SecretRef::File(path) => read_files.insert(path.display().to_string()),
                SecretRef::Literal(_) => false,
            };
        }
    }
    assert_eq!(vars, read_vars, "variables listed in {EXAMPLE}");
    assert_eq!(files, read_files, "files listed in {EXAMPLE}");

    // With them, the real `check` accepts it: the files are made under a
    // temporary directory and the copy points there.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut copy = text.clone();
    for (index, file) in files.iter().enumerate() {
        let made = dir.path().join(format!("secret-{index}"));
        std::fs::write(&made, "example-value\n").expect("write secret file");
        copy = copy.replace(
            &format!("\"{file}\""),
            &format!("{:?}", made.display().to_string()),
        );
    }
    let path = dir.path().join(EXAMPLE);
    std::fs::write(&path, copy).expect("write config copy");
    let mut check = Command::new(BIN);
    check.args(["check", "--config"]).arg(&path).env_clear();
    for var in &vars {
        check.env(var, "example-value");
    }
    let out = check.output().expect("run sidekey check");
    assert!(
        out.status.success(),
        "check {EXAMPLE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readme_says_how_to_install_and_which_rust() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let rust = manifest["package"]["rust-version"]
        .as_str()
        .expect("Cargo.toml states rust-version");
    let readme = read("README.md");
    for part in [
        "cargo install --locked --profile dist --path .".to_owned(),
        "target/dist/sidekey".to_owned(),
        "target/release/sidekey".to_owned(),
        format!("Rust {rust}"),
        REFERENCE.to_owned(),
    ] {
        assert!(readme.contains(&part), "README does not say `{part}`");
    }
}

/// `[text](target)` link targets of a markdown file.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_link_only_to_files_of_the_repository() {
    for doc in ["README.md", REFERENCE, "bench/README.md", "fuzz/README.md"] {
        let dir = repo(doc).parent().expect("a directory").to_path_buf();
        for target in link_targets(&read(doc)) {
            if target.starts_with("https://") || target.starts_with('#') {
                continue;
            }
            assert!(
                !target.starts_with('/') && !target.contains("://"),
                "{doc}: link {target} leaves the repository"
            );
            let file = target.split('#').next().unwrap_or_default();
            let path = dir.join(file);
            assert!(path.exists(), "{doc}: link {target}: no {}", path.display());
            let inside = path
                .canonicalize()
                .is_ok_and(|p| p.starts_with(repo("").canonicalize().unwrap_or_default()));
            assert!(inside, "{doc}: link {target} leaves the repository");
        }
    }
}
