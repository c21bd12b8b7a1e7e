//! A token endpoint that echoes the request in its error body never gets a
//! secret into the message sidekey logs and shows: whatever surrounds it and
//! in whichever spelling the request carried it (raw, form-encoded,
//! JSON-escaped, inside the Basic header value).
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use sidekey::credential::FetchError;
use sidekey::credential::token_client::TokenResponse;

#[derive(Debug, Arbitrary)]
struct Echo<'a> {
    /// 4xx or 5xx.
    status: u16,
    client_id: &'a str,
    secret: &'a str,
    before: &'a str,
    after: &'a str,
    spelling: u8,
}

fn form(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Whether `needle` stands in `message` other than as part of a
/// `<redacted>` marker (a "secret" such as `edacted>` is found in the marker
/// itself).
fn leaks(message: &str, needle: &str) -> bool {
    const MARKER: &str = "<redacted>";
    let markers: Vec<(usize, usize)> = message
        .match_indices(MARKER)
        .map(|(at, m)| (at, at + m.len()))
        .collect();
    let mut from = 0;
    while let Some(found) = message[from..].find(needle) {
        let (start, end) = (from + found, from + found + needle.len());
        if !markers
            .iter()
            .any(|(m_start, m_end)| start < *m_end && *m_start < end)
        {
            return true;
        }
        from = start + message[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

fuzz_target!(|echo: Echo<'_>| {
    // Secrets are what `check` accepts: no control characters, and long
    // enough to mean something (short ones are not redacted on purpose).
    let printable = |s: &str| !s.chars().any(char::is_control);
    if echo.secret.trim().chars().count() < 8
        || echo.secret.trim() != echo.secret
        || !printable(echo.secret)
        || !printable(echo.client_id)
        || echo.client_id.is_empty()
        || "<redacted>".contains(echo.secret)
    {
        // (A "secret" that is part of the marker is found in every marker.)
        return;
    }
    let Ok(status) = StatusCode::from_u16(400 + echo.status % 200) else {
        return;
    };
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form(echo.client_id), form(echo.secret)))
    );
    let Ok(mut authorization) = HeaderValue::from_str(&basic) else {
        return;
    };
    authorization.set_sensitive(true);
    let mut request_headers = HeaderMap::new();
    request_headers.insert(http::header::AUTHORIZATION, authorization);

    let json = serde_json::Value::from(echo.secret).to_string();
    let credentials = &basic["Basic ".len()..];
    // Each spelling a token request carries the secret in.
    let spelled = match echo.spelling % 5 {
        0 => echo.secret.to_owned(),
        1 => form(echo.secret),
        2 => json[1..json.len() - 1].to_owned(),
        3 => basic.clone(),
        _ => credentials.to_owned(),
    };
    let body = format!("{}{spelled}{}", echo.before, echo.after);
    let response = TokenResponse::new(
        status,
        HeaderMap::new(),
        Bytes::from(body),
        &request_headers,
    );
    let message = match response.error_for_status(&[echo.secret]) {
        Err(FetchError::Refused { message, .. }) | Err(FetchError::Transient { message, .. }) => {
            message
        }
        other => panic!("an error status is an error: {other:?}"),
    };
    // Only the excerpt of the body counts; sidekey's own words around it
    // ("token endpoint answered 500 …: ") may hold any "secret".
    let excerpt = match message.strip_prefix("token endpoint answered ") {
        Some(rest) => rest.split_once(": ").map_or("", |(_, excerpt)| excerpt),
        None => message.as_str(),
    };
    let message = excerpt;
    assert!(!leaks(message, echo.secret), "secret in {message:?}");
    assert!(!leaks(message, &spelled), "{spelled:?} in {message:?}");
    assert!(
        !leaks(message, credentials),
        "Basic credentials in {message:?}"
    );
});
