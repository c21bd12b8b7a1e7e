//! Route matching and path joining on arbitrary request paths.
//!
//! The oracle is a plain reading of the path, independent of the proxy's
//! own checker: percent-decode until nothing changes, read `\` as `/`, drop
//! everything from `;` in a segment. If that reading has a `.` or `..`
//! segment, `proxy::path::check` must refuse the path. A path it accepts,
//! joined onto a base path, stays under that base path and is valid in a URI.
#![no_main]

use std::borrow::Cow;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use sidekey::proxy::path;
use sidekey::proxy::route::{join_path, prefix_matches};

fn decode_once(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            changed = true;
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// Whether the plain reading of `path` climbs with `.` or `..`.
fn plainly_dotted(path: &str) -> bool {
    let mut bytes = Cow::Borrowed(path.as_bytes());
    for _ in 0..8 {
        match decode_once(&bytes) {
            Some(decoded) => bytes = Cow::Owned(decoded),
            None => break,
        }
    }
    bytes
        .split(|b| *b == b'/' || *b == b'\\')
        .map(|segment| segment.split(|b| *b == b';').next().unwrap_or_default())
        .any(|segment| segment == b"." || segment == b"..")
}

fuzz_target!(|input: (&str, &str, bool)| {
    let (raw_path, prefix, strip) = input;
    let Ok(uri) = raw_path.parse::<Uri>() else {
        return;
    };
    if uri.scheme().is_some() {
        return;
    }
    let request_path = uri.path();
    let verdict = path::check(request_path);
    if plainly_dotted(request_path) {
        assert!(verdict.is_err(), "{request_path:?} climbs but was accepted");
    }
    if verdict.is_err() {
        return;
    }
    let prefix = match prefix.trim_end_matches('/') {
        "" => "/",
        trimmed if trimmed.starts_with('/') => trimmed,
        _ => return,
    };
    if !prefix_matches(prefix, request_path) {
        return;
    }
    for base in ["", "/v1", "/api/v2"] {
        let Ok(joined) = join_path(base, prefix, strip, &uri) else {
            continue;
        };
        assert!(joined.path().starts_with(base), "{joined} left {base}");
        let full = format!("https://upstream.example{joined}");
        assert!(full.parse::<Uri>().is_ok(), "{full}");
    }
});
