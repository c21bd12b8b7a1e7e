//! The deploy files agree with each other and with sidekey: the Kubernetes
//! manifest parses and its embedded configuration is valid, probes hit the
//! admin port that configuration declares, the app points at a route, the
//! Secret mount holds every `{ file = … }` the configuration reads, the
//! Secret template is a file of its own (applying the manifest never
//! overwrites the real Secret), the image is pinned to this version, and
//! README's snippet agrees; the systemd unit runs and reloads sidekey with its
//! credentials where the configuration expects them; the Dockerfile's final
//! stage runs the binary as a non-root user, and its `docker run` example
//! (README's too) publishes every listener of a configuration that `check`
//! accepts with the variables that line sets. The workload identity example
//! projects a service-account token, with an audience and a lifetime,
//! wherever its configuration reads a client assertion or subject token.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml_ng::Value;
use sidekey::config::Config;
use sidekey::credential::settings::{CredentialKind, InbentaKey};
use sidekey::secret::{MapEnv, SecretRef};

const MANIFEST: &str = "deploy/kubernetes/sidecar.yaml";
const SECRET_TEMPLATE: &str = "deploy/kubernetes/secret.example.yaml";
const WORKLOAD_IDENTITY: &str = "deploy/kubernetes/workload-identity.yaml";
const UNIT: &str = "deploy/systemd/sidekey.service";
const UNIT_CONFIG: &str = "deploy/systemd/sidekey.toml";
const DOCKERFILE: &str = "deploy/Dockerfile";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------- helpers --

/// Every YAML document of the Kubernetes file `rel`.
fn documents_of(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel}: a document does not parse: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert!(!docs.is_empty(), "{rel}: no documents");
    docs
}

/// Every YAML document of the manifest.
fn documents() -> Vec<Value> {
    documents_of(MANIFEST)
}

/// The one document of `kind` in the Kubernetes file `rel`.
fn doc_of_kind_in(rel: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents_of(rel)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "{rel}: expected one {kind}");
    found.remove(0)
}

fn doc_of_kind(kind: &str) -> Value {
    doc_of_kind_in(MANIFEST, kind)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq_of<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    match v {
        Value::Sequence(s) => s,
        Value::Null => &[],
        other => panic!("{what}: expected a list, got {other:?}"),
    }
}

/// The ConfigMap's `sidekey.toml` text.
fn embedded_config_text() -> String {
    let cm = doc_of_kind("ConfigMap");
    str_of(&cm["data"]["sidekey.toml"], "ConfigMap data.sidekey.toml").to_owned()
}

fn raw_toml(text: &str, what: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{what}: not TOML: {e}"))
}

/// Every `{ file = "…" }` anywhere in a TOML table.
fn file_refs(value: &toml::Value, out: &mut BTreeSet<PathBuf>) {
    match value {
        toml::Value::Table(t) => {
            if t.len() == 1
                && let Some(toml::Value::String(p)) = t.get("file")
            {
                out.insert(PathBuf::from(p));
                return;
            }
            for v in t.values() {
                file_refs(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| file_refs(v, out)),
        _ => {}
    }
}

fn raw_file_refs(table: &toml::Table) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    file_refs(&toml::Value::Table(table.clone()), &mut out);
    out
}

fn raw_admin_listen(table: &toml::Table) -> SocketAddr {
    table["admin"]["listen"]
        .as_str()
        .expect("[admin] listen")
        .parse()
        .expect("admin listen is an address")
}

fn raw_route_listens(table: &toml::Table) -> Vec<SocketAddr> {
    table["routes"]
        .as_array()
        .expect("[[routes]]")
        .iter()
        .map(|r| r["listen"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Parse with sidekey's own parser (secrets are references, not resolved).
fn sidekey_parse(text: &str, path: &str) -> Config {
    sidekey::config::parse(text, Path::new(path), Arc::new(MapEnv::default()))
        .unwrap_or_else(|e| panic!("sidekey refuses the configuration: {e}"))
}

/// Every `{ file = … }` reference of the parsed configuration.
fn typed_file_refs(config: &Config) -> BTreeSet<PathBuf> {
    let mut refs = Vec::new();
    for cred in config.credentials.values() {
        match &cred.kind {
            CredentialKind::Inbenta(c) => {
                refs.push(&c.api_key);
                match &c.key {
                    InbentaKey::Secret(s) | InbentaKey::DomainKey(s) => refs.push(s),
                }
                refs.extend(c.oauth_token.iter());
            }
            CredentialKind::OAuth2(c) => {
                refs.push(&c.client_id);
                refs.extend(c.client_secret.iter());
                refs.extend(c.private_key.iter().chain(&c.client_key));
                refs.extend(c.client_assertion.iter().chain(&c.subject_token));
            }
            CredentialKind::Static(c) => refs.push(&c.token),
        }
    }
    refs.into_iter()
        .filter_map(|r| match r {
            SecretRef::File(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn pod_spec() -> Value {
    doc_of_kind("Deployment")["spec"]["template"]["spec"].clone()
}

/// The sidekey container (by image) and whether it is a native sidecar.
fn sidekey_container(spec: &Value) -> (Value, bool) {
    for (list, native) in [("initContainers", true), ("containers", false)] {
        for c in seq_of(&spec[list], list) {
            if str_of(&c["image"], "image").contains("sidekey") {
                return (c.clone(), native);
            }
        }
    }
    panic!("{MANIFEST}: no sidekey container");
}

fn app_containers(spec: &Value) -> Vec<Value> {
    seq_of(&spec["containers"], "containers")
        .iter()
        .filter(|c| !str_of(&c["image"], "image").contains("sidekey"))
        .cloned()
        .collect()
}

/// A probe's port, resolving a named port through the container's ports.
fn probe_port(container: &Value, probe: &Value, what: &str) -> u16 {
    let port = &probe["httpGet"]["port"];
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap(),
        Value::String(name) => seq_of(&container["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("{what}: no container port named {name}")),
        other => panic!("{what}: httpGet.port missing ({other:?})"),
    }
}

fn volume_mounts(container: &Value) -> Vec<(String, PathBuf, bool, bool)> {
    seq_of(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            (
                str_of(&m["name"], "volumeMount name").to_owned(),
                PathBuf::from(str_of(&m["mountPath"], "mountPath")),
                m["readOnly"].as_bool() == Some(true),
                !m["subPath"].is_null(),
            )
        })
        .collect()
}

fn volume<'a>(spec: &'a Value, name: &str) -> &'a Value {
    seq_of(&spec["volumes"], "volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{MANIFEST}: no volume {name}"))
}

fn map_keys(v: &Value) -> BTreeSet<String> {
    match v {
        Value::Mapping(m) => m.keys().map(|k| str_of(k, "key").to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

// ------------------------------------------------------------- kubernetes --

#[test]
fn workload_identity_projects_a_token_wherever_the_config_reads_one() {
    let config_map = doc_of_kind_in(WORKLOAD_IDENTITY, "ConfigMap");
    let text = str_of(&config_map["data"]["sidekey.toml"], "sidekey.toml");
    let config = sidekey_parse(text, "sidekey.toml");
    assert_eq!(
        typed_file_refs(&config),
        raw_file_refs(&raw_toml(text, "sidekey.toml"))
    );
    let deployment = doc_of_kind_in(WORKLOAD_IDENTITY, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    let sidekey = seq_of(&spec["initContainers"], "initContainers")
        .iter()
        .find(|c| str_of(&c["image"], "image").contains("sidekey"))
        .expect("sidekey container");
    let env: BTreeSet<&str> = seq_of(&sidekey["env"], "env")
        .iter()
        .map(|e| str_of(&e["name"], "env name"))
        .collect();

    let mut projected = 0;
    for (name, credential) in &config.credentials {
        let CredentialKind::OAuth2(oauth2) = &credential.kind else {
            panic!("{name}: expected oauth2");
        };
        assert!(oauth2.client_secret.is_none(), "{name} needs no secret");
        if let SecretRef::Env(var) = &oauth2.client_id {
            assert!(env.contains(var.as_str()), "{name}: {var} is not set");
        }
        let token_files = oauth2.client_assertion.iter().chain(&oauth2.subject_token);
        for token in token_files {
            let SecretRef::File(path) = token else {
                panic!("{name}: the token is a file");
            };
            let (volume_name, dir, _, sub_path) = volume_mounts(sidekey)
                .into_iter()
                .find(|(_, dir, _, _)| path.parent() == Some(dir.as_path()))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", path.display()));
            assert!(!sub_path, "{name}: a subPath mount never sees rotations");
            let sources = &volume(spec, &volume_name)["projected"]["sources"];
            let source = seq_of(sources, "projected sources")
                .iter()
                .map(|s| &s["serviceAccountToken"])
                .find(|t| dir.join(str_of(&t["path"], "path")) == *path)
                .unwrap_or_else(|| panic!("{name}: {} is not projected", path.display()));
            assert!(source["audience"].as_str().is_some_and(|a| !a.is_empty()));
            let lifetime = source["expirationSeconds"]
                .as_u64()
                .expect("expirationSeconds");
            assert!((600..=86_400).contains(&lifetime), "{lifetime}");
            if oauth2.token_url.host() == Some("login.microsoftonline.com") {
                assert_eq!(source["audience"], "api://AzureADTokenExchange");
            }
            projected += 1;
        }
    }
    assert_eq!(projected, 2, "a client assertion and a subject token");
}

#[test]
fn every_manifest_document_parses_and_is_a_known_kind() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"], "kind")).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment"]);
    for d in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "apiVersion: {d:?}");
        assert!(d["metadata"]["name"].as_str().is_some(), "name: {d:?}");
    }
    let deployment = doc_of_kind("Deployment");
    assert_eq!(deployment["apiVersion"].as_str(), Some("apps/v1"));
    // The selector must match the pod template's labels.
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for key in map_keys(selector) {
        assert_eq!(selector[key.as_str()], labels[key.as_str()], "label {key}");
    }
}

#[test]
fn embedded_config_is_accepted_by_sidekey() {
    let text = embedded_config_text();
    let config = sidekey_parse(&text, "sidekey.toml");
    let raw = raw_toml(&text, "ConfigMap sidekey.toml");

    assert!(!config.credentials.is_empty());
    assert!(config.credentials.values().any(|c| matches!(
        c.kind,
        CredentialKind::Inbenta(_) | CredentialKind::OAuth2(_)
    )));
    // What sidekey reads is what the cross-checks below read.
    let admin = config.admin.as_ref().expect("[admin]");
    assert_eq!(admin.listen, raw_admin_listen(&raw));
    let listens: Vec<SocketAddr> = config.routes.iter().map(|r| r.listen).collect();
    assert_eq!(listens, raw_route_listens(&raw));
    assert_eq!(typed_file_refs(&config), raw_file_refs(&raw));
    // Routes spend credentials: they stay on loopback.
    for route in &config.routes {
        assert!(route.listen.ip().is_loopback(), "{}", route.listen);
        assert!(!route.allow_non_loopback);
    }
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_configured_admin_port() {
    let raw = raw_toml(&embedded_config_text(), "ConfigMap sidekey.toml");
    let admin = raw_admin_listen(&raw);
    let spec = pod_spec();
    let (sidekey, _) = sidekey_container(&spec);

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let p = &sidekey[probe];
        let probed = p["httpGet"]["path"].as_str().unwrap_or_default();
        assert_eq!(probed.split('?').next(), Some(path), "{probe}");
        assert_eq!(probe_port(&sidekey, p, probe), admin.port(), "{probe}");
    }
    if !sidekey["startupProbe"].is_null() {
        let p = &sidekey["startupProbe"];
        assert_eq!(probe_port(&sidekey, p, "startupProbe"), admin.port());
    }
    // kubelet probes the pod IP: an httpGet probe needs the admin listener
    // off loopback, which sidekey only accepts with allow_non_loopback.
    assert!(
        !admin.ip().is_loopback(),
        "httpGet probes cannot reach a loopback admin listener"
    );
    assert_eq!(raw["admin"]["allow_non_loopback"].as_bool(), Some(true));
}

#[test]
fn per_route_readiness_names_routes_of_the_embedded_config() {
    let config = sidekey_parse(&embedded_config_text(), "sidekey.toml");
    let spec = pod_spec();
    let (sidekey, _) = sidekey_container(&spec);
    let path = str_of(
        &sidekey["readinessProbe"]["httpGet"]["path"],
        "readiness path",
    );
    let Some((_, query)) = path.split_once('?') else {
        return;
    };
    let asked: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| {
            assert_eq!(key, "route", "{path}: only route= is understood");
            value.into_owned()
        })
        .collect();
    assert!(!asked.is_empty(), "{path}");
    for name in &asked {
        assert!(
            config.routes.iter().any(|route| &route.name == name),
            "{path}: no route named {name} (a 404 would keep the pod unready)"
        );
    }
}

#[test]
fn the_app_points_at_a_route() {
    let raw = raw_toml(&embedded_config_text(), "ConfigMap sidekey.toml");
    let routes = raw_route_listens(&raw);
    let spec = pod_spec();
    let apps = app_containers(&spec);
    assert!(!apps.is_empty(), "no app container");

    let mut used = BTreeSet::new();
    for app in &apps {
        for env in seq_of(&app["env"], "env") {
            let Some(value) = env["value"].as_str() else {
                continue;
            };
            let Some(rest) = value.strip_prefix("http://") else {
                continue;
            };
            let authority = rest.split('/').next().unwrap();
            let addr: SocketAddr = authority
                .parse()
                .unwrap_or_else(|e| panic!("{value}: not an address: {e}"));
            assert!(
                routes.contains(&addr),
                "{}={value} matches no route listen {routes:?}",
                str_of(&env["name"], "env name")
            );
            used.insert(addr);
        }
    }
    assert!(
        used.contains(&"127.0.0.1:8080".parse().unwrap()),
        "the app should use http://127.0.0.1:8080"
    );
    assert_eq!(used.len(), routes.len(), "every route is used by the app");
}

#[test]
fn the_secret_mount_holds_every_file_the_config_reads() {
    let raw = raw_toml(&embedded_config_text(), "ConfigMap sidekey.toml");
    let refs = raw_file_refs(&raw);
    assert!(!refs.is_empty(), "the config reads secrets from files");

    let secret = doc_of_kind_in(SECRET_TEMPLATE, "Secret");
    let secret_name = str_of(&secret["metadata"]["name"], "Secret name");
    let mut keys = map_keys(&secret["stringData"]);
    keys.extend(map_keys(&secret["data"]));

    let spec = pod_spec();
    let (sidekey, _) = sidekey_container(&spec);
    let mounts = volume_mounts(&sidekey);
    let (_, mount_path, read_only, sub_path) = mounts
        .iter()
        .find(|(name, ..)| {
            volume(&spec, name)["secret"]["secretName"].as_str() == Some(secret_name)
        })
        .unwrap_or_else(|| panic!("Secret {secret_name} is not mounted into sidekey"));
    assert!(read_only, "the secret volume is mounted read-only");
    assert!(!sub_path, "subPath mounts never see rotated values");

    let mut used = BTreeSet::new();
    for path in &refs {
        let rel = path
            .strip_prefix(mount_path)
            .unwrap_or_else(|_| panic!("{} is outside {}", path.display(), mount_path.display()));
        let key = rel.to_str().unwrap();
        assert!(
            keys.contains(key),
            "{}: no key {key} in Secret {secret_name} {keys:?}",
            path.display()
        );
        used.insert(key.to_owned());
    }
    assert_eq!(used, keys, "every Secret key is read by the config");

    // Placeholders only: nothing that looks like a real credential.
    for key in &keys {
        let value = secret["stringData"][key.as_str()].as_str().unwrap_or("");
        assert!(value.contains("REPLACE"), "{key} is not a placeholder");
    }
}

#[test]
fn the_sidecar_reads_the_configmap_and_is_hardened() {
    let cm = doc_of_kind("ConfigMap");
    let cm_name = str_of(&cm["metadata"]["name"], "ConfigMap name");
    let spec = pod_spec();
    let (sidekey, native) = sidekey_container(&spec);

    // args: run --config PATH, and PATH is the ConfigMap's key on its mount.
    let args: Vec<&str> = seq_of(&sidekey["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/sidekey/sidekey.toml"]);
    let config_path = Path::new(args[2]);
    let mounts = volume_mounts(&sidekey);
    let (_, mount_path, read_only, _) = mounts
        .iter()
        .find(|(name, ..)| volume(&spec, name)["configMap"]["name"].as_str() == Some(cm_name))
        .expect("the ConfigMap is mounted into sidekey");
    assert!(read_only);
    assert_eq!(config_path.parent(), Some(mount_path.as_path()));
    let file = config_path.file_name().unwrap().to_str().unwrap();
    assert!(map_keys(&cm["data"]).contains(file));

    if native {
        assert_eq!(
            sidekey["restartPolicy"].as_str(),
            Some("Always"),
            "a sidecar in initContainers needs restartPolicy: Always"
        );
    }

    let sc = &sidekey["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let non_root = sc["runAsNonRoot"].as_bool() == Some(true)
        || spec["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
    assert!(non_root, "runAsNonRoot");

    let res = &sidekey["resources"];
    assert!(res["requests"]["cpu"].as_str().is_some());
    assert!(res["requests"]["memory"].as_str().is_some());
    assert!(res["limits"]["memory"].as_str().is_some());

    // Drain before SIGKILL: the grace period exceeds shutdown_grace.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let raw = raw_toml(&embedded_config_text(), "ConfigMap sidekey.toml");
    let shutdown = raw
        .get("shutdown_grace")
        .and_then(|v| v.as_str())
        .unwrap_or("20s");
    let shutdown_secs: u64 = shutdown
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("shutdown_grace in seconds");
    assert!(
        grace > shutdown_secs,
        "{grace}s <= shutdown_grace {shutdown}"
    );
}

#[test]
fn applying_the_sidecar_manifest_leaves_the_real_secret_alone() {
    // `kubectl apply -f sidecar.yaml` replaces every object the file holds:
    // a Secret in it would overwrite the real credentials with placeholders.
    let kinds: Vec<String> = documents()
        .iter()
        .map(|d| str_of(&d["kind"], "kind").to_owned())
        .collect();
    assert!(
        !kinds.iter().any(|k| k == "Secret"),
        "{MANIFEST} holds a Secret ({kinds:?}): applying it overwrites the real one"
    );
    // The template is a file of its own, for the Secret the pod mounts.
    let docs = documents_of(SECRET_TEMPLATE);
    assert_eq!(docs.len(), 1, "{SECRET_TEMPLATE}: only the Secret");
    let secret = doc_of_kind_in(SECRET_TEMPLATE, "Secret");
    let name = str_of(&secret["metadata"]["name"], "Secret name");
    let spec = pod_spec();
    assert!(
        seq_of(&spec["volumes"], "volumes")
            .iter()
            .any(|v| v["secret"]["secretName"].as_str() == Some(name)),
        "the Deployment mounts no Secret named {name}"
    );
    // The manifest tells where the Secret comes from.
    assert!(read(MANIFEST).contains("secret.example.yaml"));
}

#[test]
fn the_sidekey_image_is_pinned_to_this_version() {
    let spec = pod_spec();
    let (sidekey, _) = sidekey_container(&spec);
    let image = str_of(&sidekey["image"], "image");
    let tag = image.rsplit_once(':').map(|(_, tag)| tag);
    assert_eq!(
        tag,
        Some(env!("CARGO_PKG_VERSION")),
        "{image}: pin the image to the crate's version"
    );
}

/// The fenced code blocks of README's section `heading`, as (info string, text).
fn readme_blocks(heading: &str) -> Vec<(String, String)> {
    let readme = read("README.md");
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading}"));
    let section = &readme[start + heading.len() + 2..];
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect();
        blocks.push((info.trim().to_owned(), body.join("\n")));
    }
    blocks
}

#[test]
fn readme_kubernetes_snippet_agrees_with_the_manifest() {
    let blocks = readme_blocks("## Deploying");
    let manifest = raw_toml(&embedded_config_text(), "ConfigMap sidekey.toml");

    // The probes reach the admin listener only off loopback: the snippet
    // shows the same [admin] table as the manifest's configuration.
    let (_, admin) = blocks
        .iter()
        .find(|(info, text)| info == "toml" && text.contains("[admin]"))
        .expect("README's Kubernetes snippet shows the [admin] listener its probes reach");
    let admin = raw_toml(admin, "README [admin] snippet");
    assert_eq!(
        admin["admin"], manifest["admin"],
        "README [admin] vs {MANIFEST}"
    );

    let (_, yaml) = blocks
        .iter()
        .find(|(info, text)| info == "yaml" && text.contains("readinessProbe"))
        .expect("README's Kubernetes snippet");
    let yaml: Value = serde_yaml_ng::from_str(yaml)
        .unwrap_or_else(|e| panic!("README's Kubernetes snippet is not YAML: {e}"));
    let sidekey = &seq_of(&yaml["initContainers"], "initContainers")[0];
    let port = probe_port(sidekey, &sidekey["readinessProbe"], "README readinessProbe");
    assert_eq!(port, raw_admin_listen(&manifest).port());
}

// ---------------------------------------------------------------- systemd --

/// `[Section]` → list of (key, value), in order (keys may repeat).
fn unit_sections(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            sections.entry(current.clone()).or_default();
            continue;
        }
        assert!(!line.ends_with('\\'), "keep unit lines unwrapped: {line}");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not KEY=VALUE: {line}"));
        assert!(!current.is_empty(), "{UNIT}: {key} outside a section");
        sections
            .get_mut(&current)
            .unwrap()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

fn values<'a>(section: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    section
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_unit_runs_and_reloads_sidekey_hardened() {
    let sections = unit_sections(&read(UNIT));
    for name in ["Unit", "Service", "Install"] {
        assert!(sections.contains_key(name), "[{name}] missing");
    }
    let service = &sections["Service"];
    assert_eq!(
        values(service, "ExecStart"),
        ["/usr/local/bin/sidekey run --config /etc/sidekey/sidekey.toml"]
    );
    assert_eq!(values(service, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(values(service, key), [want], "{key}");
    }
    assert!(!values(service, "SystemCallFilter").is_empty());
    assert!(!values(service, "RestrictAddressFamilies").is_empty());
    assert_eq!(
        values(&sections["Install"], "WantedBy"),
        ["multi-user.target"]
    );
}

#[test]
fn systemd_credentials_are_where_the_config_reads_them() {
    let sections = unit_sections(&read(UNIT));
    let service = &sections["Service"];
    let creds: BTreeSet<String> = values(service, "LoadCredential")
        .iter()
        .map(|v| {
            let (name, source) = v
                .split_once(':')
                .unwrap_or_else(|| panic!("LoadCredential={v}: want NAME:PATH"));
            assert!(source.starts_with('/'), "LoadCredential={v}");
            name.to_owned()
        })
        .collect();
    assert!(!creds.is_empty(), "secrets come through LoadCredential=");

    let text = read(UNIT_CONFIG);
    let raw = raw_toml(&text, UNIT_CONFIG);
    let dir = Path::new("/run/credentials/sidekey.service");
    let read_by_config: BTreeSet<String> = raw_file_refs(&raw)
        .iter()
        .map(|p| {
            let rel = p
                .strip_prefix(dir)
                .unwrap_or_else(|_| panic!("{}: not under {}", p.display(), dir.display()));
            rel.to_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(read_by_config, creds);
    // A host-local listener: everything on loopback.
    assert!(raw_admin_listen(&raw).ip().is_loopback());
    assert!(raw_route_listens(&raw).iter().all(|a| a.ip().is_loopback()));
}

#[test]
fn systemd_config_is_accepted_by_sidekey() {
    let text = read(UNIT_CONFIG);
    let config = sidekey_parse(&text, "/etc/sidekey/sidekey.toml");
    let raw = raw_toml(&text, UNIT_CONFIG);
    assert_eq!(typed_file_refs(&config), raw_file_refs(&raw));
}

// ------------------------------------------------------------- Dockerfile --

/// Instructions as (KEYWORD, arguments), continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            pending.push_str(body);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((pending.as_str(), ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    assert!(pending.is_empty(), "dangling continuation");
    out
}

#[test]
fn dockerfile_final_stage_runs_sidekey_as_non_root() {
    let instructions = dockerfile_instructions(&read(DOCKERFILE));
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage build");

    // The builder compiles the sidekey binary with the profile that ships
    // (bench/optimize.sh builds it), and Cargo.toml defines it.
    let build = &instructions[stages[0]..stages[stages.len() - 1]];
    assert!(
        build
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("bash bench/optimize.sh")),
        "a builder stage runs bench/optimize.sh"
    );
    let optimize = read("bench/optimize.sh");
    assert!(
        optimize.contains("cargo build --quiet --locked --profile dist --bin sidekey")
            && optimize.contains("$TARGET_DIR/dist/sidekey"),
        "bench/optimize.sh builds --profile dist and takes target/dist/sidekey"
    );
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    assert_eq!(
        manifest["profile"]["dist"]["inherits"].as_str(),
        Some("release"),
        "Cargo.toml defines the dist profile"
    );

    let last = &instructions[stages[stages.len() - 1]..];
    let base = &last[0].1;
    let user: Vec<&str> = last
        .iter()
        .filter(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .collect();
    match user.last() {
        Some(u) => {
            let name = u.split(':').next().unwrap();
            assert!(name != "root" && name != "0", "USER {u} is root");
        }
        None => assert!(
            base.contains("nonroot"),
            "no USER and base {base} is not nonroot"
        ),
    }

    let entrypoint = last
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a)
        .expect("final stage has an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(entrypoint)
        .unwrap_or_else(|e| panic!("ENTRYPOINT {entrypoint} is not exec form: {e}"));
    let binary = Path::new(&argv[0]);
    assert_eq!(binary.file_name().unwrap(), "sidekey");
    assert!(binary.is_absolute());
    // …and the final stage puts the binary exactly there.
    assert!(
        last.iter().any(|(k, a)| k == "COPY"
            && a.starts_with("--from=")
            && a.split_whitespace().last() == Some(&argv[0])),
        "no COPY --from=… {}",
        argv[0]
    );
    if let Some((_, cmd)) = last.iter().rev().find(|(k, _)| k == "CMD") {
        let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
        assert_eq!(cmd[0], "run");
    }
}

#[test]
fn dockerfile_builder_has_what_the_optimized_build_needs() {
    let instructions = dockerfile_instructions(&read(DOCKERFILE));
    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    // Every tool bench/pgo.sh checks for is installed (cargo and rustc come
    // with the rust image), llvm-profdata's component is added, and so are
    // BOLT's llvm-bolt and merge-fdata, which bench/optimize.sh runs.
    let pgo = read("bench/pgo.sh");
    let optimize = read("bench/optimize.sh");
    let tools = pgo
        .lines()
        .find_map(|l| l.strip_prefix("for tool in "))
        .and_then(|l| l.strip_suffix("; do"))
        .expect("bench/pgo.sh lists the tools it needs");
    let install = runs
        .iter()
        .find(|a| a.contains("apt-get install"))
        .expect("the builder installs packages");
    let packages: Vec<&str> = install.split_whitespace().collect();
    for tool in tools.split_whitespace() {
        if !["cargo", "rustc"].contains(&tool) {
            assert!(packages.contains(&tool), "{tool} is not installed");
        }
    }
    assert!(optimize.contains("llvm-bolt") && optimize.contains("merge-fdata"));
    assert!(
        packages.iter().any(|p| p
            .strip_prefix("bolt-")
            .is_some_and(|v| v.parse::<u32>().is_ok())),
        "BOLT (bolt-NN) is not installed: {install}"
    );
    assert!(
        runs.iter()
            .any(|a| a.contains("rustup component add llvm-tools"))
    );
    // The scripts, and what they source or run, are in the build context
    // and the image.
    let needed: Vec<&str> = [&optimize, &pgo]
        .iter()
        .flat_map(|script| script.lines())
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("source \"$ROOT/")
                .or_else(|| l.strip_prefix("bash \"$ROOT/"))
        })
        .map(|l| l.split('"').next().unwrap_or(l))
        .chain(["bench/optimize.sh"])
        .collect();
    assert!(needed.contains(&"bench/pgo.sh") && needed.contains(&"bench/fixtures.sh"));
    let ignore = read("deploy/Dockerfile.dockerignore");
    let copy = instructions
        .iter()
        .find(|(k, a)| k == "COPY" && a.starts_with("bench/optimize.sh "))
        .map(|(_, a)| a.split_whitespace().collect::<Vec<_>>())
        .expect("COPY bench/optimize.sh");
    for file in needed {
        assert!(
            ignore.lines().any(|l| l == format!("!{file}")),
            "{file} is not in the build context"
        );
        assert!(copy.contains(&file), "{file} is not copied");
    }
    // The build writes the optimized binary where the final stage takes it.
    let words: Vec<&str> = runs
        .iter()
        .find(|a| a.contains("bench/optimize.sh"))
        .expect("the build runs bench/optimize.sh")
        .split_whitespace()
        .collect();
    let out = words
        .windows(3)
        .find(|w| w[..2] == ["bash", "bench/optimize.sh"])
        .map(|w| w[2])
        .expect("bench/optimize.sh is given the binary's path");
    assert!(
        instructions.iter().any(|(k, a)| k == "COPY"
            && a.starts_with("--from=build ")
            && a.split_whitespace().nth(1) == Some(out)),
        "the final stage does not copy {out}"
    );
}

/// The shell command starting with `prefix` in `text` (a Dockerfile's
/// comments or a README block): `#` comment markers dropped, continuation
/// lines joined, split into words (double quotes group, `$PWD` stays as is).
fn shell_command(text: &str, prefix: &str, what: &str) -> Vec<String> {
    let mut lines = text
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .skip_while(|l| !l.starts_with(prefix));
    let mut command = String::new();
    for line in lines.by_ref() {
        match line.strip_suffix('\\') {
            Some(part) => command.push_str(part),
            None => {
                command.push_str(line);
                break;
            }
        }
    }
    assert!(!command.is_empty(), "{what}: no `{prefix}` command");
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in command.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    assert!(!quoted, "{what}: unbalanced quotes in {command}");
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// What a `docker run` command line asks for.
#[derive(Debug, Default, PartialEq)]
struct DockerRun {
    /// `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT`, as written.
    publish: Vec<String>,
    /// `-e NAME[=VALUE]`.
    env: Vec<String>,
    /// `-v HOST:CONTAINER[:ro]`.
    volumes: Vec<String>,
    image: String,
    /// The command after the image (empty: the image's CMD).
    args: Vec<String>,
}

fn docker_run(words: &[String]) -> DockerRun {
    assert_eq!(words[..2], ["docker", "run"]);
    let mut run = DockerRun::default();
    let mut words = words[2..].iter();
    while let Some(word) = words.next() {
        let list = match word.as_str() {
            "-p" | "--publish" => &mut run.publish,
            "-e" | "--env" => &mut run.env,
            "-v" | "--volume" => &mut run.volumes,
            "--rm" | "-it" | "-i" | "-t" | "-d" => continue,
            other if other.starts_with('-') => panic!("docker run option {other} not understood"),
            image => {
                run.image = image.to_owned();
                run.args = words.cloned().collect();
                break;
            }
        };
        list.push(words.next().expect("option value").clone());
    }
    run
}

#[test]
fn docker_run_example_serves_with_what_it_publishes_and_sets() {
    let dockerfile = read(DOCKERFILE);
    let build = shell_command(&dockerfile, "docker build", DOCKERFILE);
    let tag = build
        .iter()
        .skip_while(|w| *w != "-t")
        .nth(1)
        .expect("docker build -t TAG");
    let run = docker_run(&shell_command(&dockerfile, "docker run", DOCKERFILE));
    assert_eq!(
        &run.image, tag,
        "docker run uses the image docker build makes"
    );
    assert!(run.args.is_empty(), "the image's CMD runs the proxy");

    // The configuration: a file of the repository, mounted where CMD reads it.
    let instructions = dockerfile_instructions(&dockerfile);
    let (_, cmd) = instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "CMD")
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(cmd[..2], ["run", "--config"]);
    let [volume] = &run.volumes[..] else {
        panic!("one volume, the configuration: {:?}", run.volumes);
    };
    let parts: Vec<&str> = volume.split(':').collect();
    assert_eq!(parts[1..], [cmd[2].as_str(), "ro"], "-v {volume}");
    let host = parts[0]
        .strip_prefix("$PWD/")
        .expect("the configuration is a file of the repository ($PWD/…)");
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(host);

    // `sidekey check` accepts it with exactly the variables the line sets.
    let mut check = std::process::Command::new(crate::support::process::BIN);
    check
        .args(["check", "--config"])
        .arg(&config_path)
        .env_clear();
    for var in &run.env {
        // `-e NAME` passes the caller's value on.
        let (name, value) = var.split_once('=').unwrap_or((var, "example-token"));
        check.env(name, value);
    }
    let out = check.output().expect("run sidekey check");
    assert!(
        out.status.success(),
        "{host} with {:?}: {}",
        run.env,
        String::from_utf8_lossy(&out.stderr)
    );

    // Every listener is reachable through a published port (a container's
    // loopback is not the host's), and published on the host's loopback
    // only: whoever reaches a route spends its credential.
    let raw = raw_toml(&read(host), host);
    let mut listens = raw_route_listens(&raw);
    listens.push(raw_admin_listen(&raw));
    let mut published = BTreeSet::new();
    for p in &run.publish {
        let parts: Vec<&str> = p.split(':').collect();
        let [host_ip, _, container] = parts[..] else {
            panic!("-p {p}: write HOST_IP:HOST_PORT:CONTAINER_PORT");
        };
        assert_eq!(
            host_ip, "127.0.0.1",
            "-p {p}: publish on the host's loopback"
        );
        published.insert(container.parse::<u16>().expect("container port"));
    }
    for addr in &listens {
        assert!(
            addr.ip().is_unspecified(),
            "{addr}: unreachable from outside the container"
        );
        assert!(published.contains(&addr.port()), "{addr} is not published");
    }

    // README shows the same command.
    let readme = read("README.md");
    let readme_run = docker_run(&shell_command(&readme, "docker run", "README.md"));
    assert_eq!(
        readme_run, run,
        "README's docker run differs from {DOCKERFILE}'s"
    );
}
