//! A token endpoint's answer, whatever it is, through the steps every
//! provider takes: status classification (with `Retry-After`), the JSON
//! body, then the OAuth 2.0 and the Inbenta token parsers. Never a panic;
//! a token's lifetime is at most a year; the bearer header carries the
//! token, which is visible ASCII and at most 64 KiB.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use sidekey::credential::bearer::MAX_TOKEN_BYTES;
use sidekey::credential::token_client::TokenResponse;
use sidekey::credential::{FetchError, Token, inbenta, oauth2};
use sidekey::secret::Secret;

const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Arbitrary)]
struct Answer<'a> {
    status: u16,
    retry_after: Option<&'a str>,
    body: &'a [u8],
    /// System clock in Unix seconds, as the parsers see it.
    now: f64,
    default_ttl_secs: u32,
}

fn check(token: Result<Token, FetchError>) {
    match token {
        Ok(token) => {
            let lifetime = token.lifetime.expect("issued tokens expire");
            assert!(
                lifetime > Duration::ZERO && lifetime <= YEAR,
                "{lifetime:?}"
            );
            // One token a header carries unchanged: visible ASCII, 64 KiB at most.
            let value = token.value.expose();
            assert!(!value.is_empty() && value.len() <= MAX_TOKEN_BYTES);
            assert!(value.bytes().all(|byte| byte.is_ascii_graphic()));
            let header = token.headers[0].1.to_str().unwrap_or_default();
            assert_eq!(header, format!("Bearer {value}"));
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

fuzz_target!(|answer: Answer<'_>| {
    let Ok(status) = StatusCode::from_u16(answer.status) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(value) = answer
        .retry_after
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(http::header::RETRY_AFTER, value);
    }
    let response = TokenResponse::new(
        status,
        headers,
        Bytes::copy_from_slice(answer.body),
        &HeaderMap::new(),
    );
    let response = match response.error_for_status(&["fuzz-secret"]) {
        Ok(response) => response,
        Err(FetchError::Transient {
            retry_after: Some(delay),
            ..
        }) => {
            // Retry-After is read but capped by the engine; parsing must not overflow.
            let _ = delay.as_secs();
            return;
        }
        Err(error) => {
            assert!(!error.to_string().contains("fuzz-secret"));
            return;
        }
    };
    let Ok(json) = response.json() else {
        return;
    };
    let ttl = Duration::from_secs(u64::from(answer.default_ttl_secs).max(1));
    check(oauth2::parse_token(&json, ttl, answer.now));
    check(inbenta::parse_token(
        &json,
        &Secret::new("api-key"),
        None,
        answer.now,
    ));
});
