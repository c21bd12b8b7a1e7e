//! Which request paths are safe to join onto an upstream's base path.
//!
//! sidekey forwards the path as the app sent it, but the upstream decides
//! what it means, and servers differ: Tomcat and Spring read `..;x` as `..`,
//! IIS reads `\` as `/` and `%u002e` as `.`, servers that decode twice turn
//! `%252e` into `.`, C code stops at `%00`, Windows drops trailing spaces.
//! Any of these can climb out of the base path with the credential attached.
//! So a path is refused when *some* reading of it has a `.` or `..` segment:
//!
//! 1. percent-decode (`%XX`, and IIS's `%uXXXX`) until nothing changes, at
//!    most [`MAX_DECODES`] times (a path still encoded after that is refused);
//! 2. refuse control characters (`%00`-`%1F`, `%7F`) and overlong UTF-8
//!    (`%C0%AE` is `.` to a lax decoder);
//! 3. read the full-width and other compatibility forms of `.`, `/`, `\`,
//!    `;` as those characters (NFKC / Windows "best fit"; `‥` is `..`);
//! 4. split segments at `/` and `\`, cut each at `;`, `?` or `#`, drop
//!    trailing spaces: a segment `.` or `..` is refused.
//!
//! Everything else passes unchanged: `/a..b`, `/...`, `/.well-known`,
//! `/files/a%2Fb` (an encoded slash inside an ID decodes to segments that
//! are not dot segments, so it is safe and forwarded as sent), `/caf%C3%A9`.
//! A path without `.`, `%`, `\`, `;` or non-ASCII bytes cannot be refused
//! and is not looked at further.

use std::borrow::Cow;

/// Percent-decoding rounds before a path counts as deliberately obscured.
pub const MAX_DECODES: usize = 3;

/// Why a path is refused (text for the `bad_request` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    /// Some reading of the path has a `.` or `..` segment.
    #[error("request paths with `.` or `..` segments (in any encoding) are not forwarded")]
    DotSegment,
    /// A control character, once decoded.
    #[error("request paths with encoded control characters are not forwarded")]
    Control,
    /// Overlong UTF-8, once decoded.
    #[error("request paths with overlong UTF-8 sequences are not forwarded")]
    Overlong,
    /// Still percent-encoded after [`MAX_DECODES`] rounds.
    #[error("request paths encoded more than {MAX_DECODES} times are not forwarded")]
    Obscured,
}

/// Refuse `path` when some upstream could read a `.`/`..` segment into it.
pub fn check(path: &str) -> Result<(), UnsafePath> {
    let interesting = |b: &u8| matches!(b, b'.' | b'%' | b'\\' | b';') || !b.is_ascii();
    if !path.as_bytes().iter().any(interesting) {
        return Ok(());
    }
    let mut bytes = Cow::Borrowed(path.as_bytes());
    let mut rounds = 0;
    while bytes.contains(&b'%')
        && let Some(decoded) = decode_once(&bytes)
    {
        rounds += 1;
        if rounds > MAX_DECODES {
            return Err(UnsafePath::Obscured);
        }
        bytes = Cow::Owned(decoded);
    }
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(UnsafePath::Control);
    }
    if has_overlong_utf8(&bytes) {
        return Err(UnsafePath::Overlong);
    }
    if !bytes.is_ascii() {
        let mut mapped = String::with_capacity(bytes.len());
        String::from_utf8_lossy(&bytes)
            .chars()
            .for_each(|c| push_compatibility_form(&mut mapped, c));
        bytes = Cow::Owned(mapped.into_bytes());
    }
    let dot_segment = bytes.split(|b| matches!(b, b'/' | b'\\')).any(|segment| {
        let end = segment
            .iter()
            .position(|b| matches!(b, b';' | b'?' | b'#'))
            .unwrap_or(segment.len());
        let mut core = &segment[..end];
        while let [rest @ .., b' '] = core {
            core = rest;
        }
        core == b"." || core == b".."
    });
    if dot_segment {
        return Err(UnsafePath::DotSegment);
    }
    Ok(())
}

/// One round of percent-decoding, or `None` when there is nothing to decode.
fn decode_once(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let Some(byte) = input.get(i + 1..i + 3).and_then(hex_value) {
                out.push(byte as u8);
                changed = true;
                i += 3;
                continue;
            }
            // IIS: %uXXXX is the code point XXXX.
            let wide = input
                .get(i + 1)
                .filter(|u| u.eq_ignore_ascii_case(&b'u'))
                .and_then(|_| input.get(i + 2..i + 6))
                .and_then(hex_value)
                .and_then(char::from_u32);
            if let Some(c) = wide {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                changed = true;
                i += 6;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

fn hex_value(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, digit| {
        let d = (*digit as char).to_digit(16)?;
        Some(value * 16 + d)
    })
}

/// `C0`/`C1` leads, and `E0 80..9F` / `F0 80..8F`: longer encodings of
/// characters that have a shorter one, which only a lax decoder accepts.
fn has_overlong_utf8(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|pair| {
        matches!(
            pair,
            [0xC0 | 0xC1, _] | [0xE0, 0x80..=0x9F] | [0xF0, 0x80..=0x8F]
        )
    }) || matches!(bytes.last(), Some(0xC0 | 0xC1))
}

/// Append `c`, or what NFKC normalisation or Windows' "best fit" code page
/// mapping turns it into when that is `.`, `..`, `/`, `\` or `;`.
fn push_compatibility_form(out: &mut String, c: char) {
    match c {
        '\u{FF0E}' | '\u{FE52}' | '\u{2024}' => out.push('.'),
        '\u{2025}' => out.push_str(".."),
        '\u{FF0F}' | '\u{2215}' | '\u{2044}' => out.push('/'),
        '\u{FF3C}' | '\u{FE68}' | '\u{2216}' => out.push('\\'),
        '\u{FF1B}' | '\u{037E}' => out.push(';'),
        other => out.push(other),
    }
}

#[cfg(test)]
mod tests {
    use super::{UnsafePath, check};

    #[test]
    fn every_reading_of_a_dot_segment_is_refused() {
        for path in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2E%2e/b",
            "/a/.%2e",
            "/%2e",
            "/..;/admin",
            "/a/..;x=1/b",
            "/.;/a",
            "/..%2fadmin",
            "/..%3bx/a",
            "/..\\admin",
            "/a\\..\\b",
            "/a/..%5cb",
            "/%252e%252e/admin",
            "/%25252e%25252e/admin",
            "/%u002e%u002e/admin",
            "/%U002E./x",
            "/%ef%bc%8e%ef%bc%8e/admin",
            "/\u{FF0E}\u{FF0E}/admin",
            "/\u{2025}/admin",
            "/..\u{FF0F}admin",
            "/..%20/admin",
            "/.. ",
            "/..?x",
        ] {
            assert_eq!(check(path), Err(UnsafePath::DotSegment), "{path}");
        }
    }

    #[test]
    fn control_overlong_and_obscured_paths_are_refused() {
        for path in ["/..%00/a", "/a%00", "/a%0d%0ab", "/a%7f", "/a%2509"] {
            assert_eq!(check(path), Err(UnsafePath::Control), "{path}");
        }
        for path in [
            "/%c0%ae%c0%ae/a",
            "/%c0%af",
            "/%e0%80%ae",
            "/%f0%80%80%ae",
            "/a%c1",
        ] {
            assert_eq!(check(path), Err(UnsafePath::Overlong), "{path}");
        }
        assert_eq!(check("/%2525252e"), Err(UnsafePath::Obscured));
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/a/b/c",
            "/a.b/c",
            "/v1/file.json",
            "/..a/b",
            "/a..b",
            "/a/...",
            "/%2e%2e%2e",
            "/.well-known/x",
            "/a%2Fb",
            "/a%5Cb",
            "/a;b=c/d",
            "/100%25",
            "/100%",
            "/%zz",
            "/caf%C3%A9/%E2%80%A6",
            "/caf\u{e9}",
            "/%e2%80%a5x",
            "/%ef%bc%8e%ef%bc%8e%ef%bc%8e",
        ] {
            assert_eq!(check(path), Ok(()), "{path}");
        }
    }
}
