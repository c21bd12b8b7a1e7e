//! `GET /readyz`: every credential with its state and the seconds its
//! token has left; 200 when every one holds a valid token, else 503.
//!
//! `GET /readyz?route=NAME` (repeatable) answers for the credentials of
//! those routes only, so that a pod whose app uses one route does not turn
//! unready because another credential's token endpoint is down; a route
//! name that the configuration in force does not have is a 404 with
//! sidekey's JSON error (`unknown_route`). Forward-proxy hosts are routes
//! named `forward_proxy:HOST`.
//!
//! Body: `{"ready": bool, "credentials": [{"name", "ready", "state",
//! "reason"?, "expires_in_s"?}]}`, plus `"routes": [{"name", "credential"}]`
//! when routes were named. `reason` is there when there is no valid token,
//! `expires_in_s` when there is one that expires. With `[cache] redis_url`,
//! `"cache": {"redis": "up" | "down", "reason"?}`; Redis down does not make
//! sidekey unready (each replica then renews its own tokens).

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::{Value, json};

use super::AdminState;
use crate::cache::RedisState;

/// The status and JSON body of `/readyz` with `query`.
pub fn readyz(state: &AdminState, query: Option<&str>) -> (StatusCode, Value) {
    let credentials = state.credentials.load_full();
    let asked: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "route")
        .map(|(_, value)| value.into_owned())
        .collect();
    let mut routes = Vec::new();
    let wanted: Option<BTreeSet<String>> = if asked.is_empty() {
        None
    } else {
        let configured = state.status.configured();
        let mut wanted = BTreeSet::new();
        for name in &asked {
            let Some(route) = configured.routes.iter().find(|route| &route.name == name) else {
                let message = format!("no route named `{name}` in the configuration in force");
                return (
                    StatusCode::NOT_FOUND,
                    json!({ "error": "unknown_route", "message": message }),
                );
            };
            routes.push(json!({ "name": route.name, "credential": route.credential }));
            wanted.insert(route.credential.clone());
        }
        Some(wanted)
    };
    let mut ready = true;
    let mut listed = Vec::new();
    for (name, handle) in credentials.iter() {
        if wanted.as_ref().is_some_and(|wanted| !wanted.contains(name)) {
            continue;
        }
        let report = handle.report();
        let serves = report.state.serves();
        ready &= serves;
        let mut entry = json!({ "name": name, "ready": serves, "state": report.state.as_str() });
        if let Some(reason) = report.unavailable_reason {
            entry["reason"] = Value::from(reason);
        }
        if let Some(left) = report.expires_in {
            entry["expires_in_s"] = Value::from((left.as_secs_f64() * 1000.0).round() / 1000.0);
        }
        listed.push(entry);
    }
    if let Some(wanted) = &wanted {
        // A route whose credential a reload has just removed: not ready.
        ready &= wanted.iter().all(|name| credentials.get(name).is_some());
    }
    let mut body = json!({ "ready": ready, "credentials": listed });
    // Redis trouble is no readiness failure: each replica renews alone.
    match credentials.redis_state() {
        Some(RedisState::Up) => body["cache"] = json!({ "redis": "up" }),
        Some(RedisState::Down { reason }) => {
            body["cache"] = json!({ "redis": "down", "reason": reason });
        }
        None => {}
    }
    if !routes.is_empty() {
        body["routes"] = Value::from(routes);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
