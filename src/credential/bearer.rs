//! What a token obtained from a token endpoint or a static source may
//! contain before it is sent ([`token_text`], [`bearer_header`]), and how
//! large it may be ([`MAX_TOKEN_BYTES`]). A leaf of `credential`.
//!
//! A token is sent in a header, so it must be something a header carries
//! unchanged and an upstream reads back as one token. Spaces and tabs
//! around it are dropped, as every receiver drops them around a header
//! value (RFC 9110 §5.5) — `Bearer  tok ` would otherwise reach the
//! upstream as `Bearer  tok`. What is left must be visible ASCII (`!` to
//! `~`; RFC 6750's `b64token` is a subset): a tab or space inside, a
//! control byte or a non-ASCII byte would reach the upstream as a different
//! or unreadable token, and CR/LF could forge a header. Such a token, an
//! empty one, or one over [`MAX_TOKEN_BYTES`] (it would be sent on every
//! request, and upstreams answer a head that large with 431) is refused: a
//! [`FetchError::Transient`] naming what is wrong and where, never quoting
//! the token, so that the engine keeps the token it holds and retries.

use http::HeaderValue;

use super::provider::FetchError;
use super::token_client::transient;

/// Largest token sent: 64 KiB, the request head sidekey itself accepts from
/// an app by default; far above real access tokens (a few KiB).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// `Bearer <token>` as a sensitive header value, `token` being what
/// [`token_text`] makes of it; or why `token` (described as `what`, e.g.
/// "the access token") cannot be sent so.
pub fn bearer_header(token: &str, what: &str) -> Result<HeaderValue, FetchError> {
    let token = token_text(token, what, false)?;
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| transient(format!("{what} cannot be sent in an HTTP header")))?;
    header.set_sensitive(true);
    Ok(header)
}

/// `token` without the spaces and tabs around it, if what is left can be
/// sent as one token: not empty, at most [`MAX_TOKEN_BYTES`], visible ASCII
/// — or, with `inner_spaces`, also spaces between visible characters (a raw
/// header value such as `SSWS 00abc`). The error names the first offending
/// byte's kind and position, never the token.
pub fn token_text<'a>(
    token: &'a str,
    what: &str,
    inner_spaces: bool,
) -> Result<&'a str, FetchError> {
    let token = token.trim_matches([' ', '\t']);
    if token.is_empty() {
        return Err(transient(format!("{what} is empty; refused")));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(transient(format!(
            "{what} is {} bytes long, over the {} KiB a token may have; refused",
            token.len(),
            MAX_TOKEN_BYTES / 1024
        )));
    }
    let offending = token.bytes().enumerate().find(|&(_, byte)| match byte {
        b'!'..=b'~' => false,
        b' ' => !inner_spaces,
        _ => true,
    });
    match offending {
        None => Ok(token),
        Some((at, byte)) => Err(transient(format!(
            "{what} holds {} at byte {at} of {}, so it cannot be sent as one token; refused",
            kind(byte),
            token.len()
        ))),
    }
}

/// What a byte that cannot be in a token is, for messages.
fn kind(byte: u8) -> &'static str {
    match byte {
        b'\r' | b'\n' => "a line break",
        b'\t' => "a tab",
        b' ' => "a space",
        0x80.. => "a non-ASCII character",
        _ => "a control character",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(token: &str, inner_spaces: bool) -> String {
        token_text(token, "the access token", inner_spaces)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn visible_ascii_is_sent_as_is_and_surrounding_blanks_are_dropped() {
        let header = bearer_header("eyJ.a-b_c~d+e/f=", "the access token").unwrap();
        assert_eq!(header, "Bearer eyJ.a-b_c~d+e/f=");
        assert!(header.is_sensitive());
        let header = bearer_header(" \ttok-1\t ", "the access token").unwrap();
        assert_eq!(header, "Bearer tok-1");
        assert_eq!(
            token_text(" SSWS 00ab cd ", "t", true).unwrap(),
            "SSWS 00ab cd"
        );
    }

    #[test]
    fn every_refusal_names_the_problem_and_never_the_token() {
        let cases = [
            ("sec\r\nx-forged: 1", false, "a line break at byte 3"),
            ("sec\0ret", false, "a control character at byte 3"),
            ("sec\tret", false, "a tab at byte 3"),
            ("sec\tret", true, "a tab at byte 3"),
            ("sec ret", false, "a space at byte 3"),
            ("sécret", false, "a non-ASCII character at byte 1"),
            ("", false, "is empty"),
            (" \t ", true, "is empty"),
        ];
        for (token, inner_spaces, expected) in cases {
            let message = refused(token, inner_spaces);
            assert!(message.contains(expected), "{token:?}: {message}");
            assert!(message.starts_with("the access token"), "{message}");
            assert!(!message.contains("sec"), "{message}");
        }
        let huge = "s".repeat(MAX_TOKEN_BYTES + 1);
        let message = refused(&huge, false);
        assert!(
            message.contains("65537 bytes long, over the 64 KiB"),
            "{message}"
        );
        assert!(token_text(&huge[1..], "t", false).is_ok());
    }
}
