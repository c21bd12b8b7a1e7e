//! The URLs an upstream's answer gives the app to follow, rewritten: its
//! `Location` and `Content-Location` when it is a redirect (or a `201`),
//! and the targets of its `Link` fields (RFC 8288 §3) whatever its status
//! ([`rewrite_answer_urls`]). A paginated API's `Link: <https://api.example/v1/items?page=2>;
//! rel="next", <…>; rel="last"` names the upstream's own URLs, which an app
//! following `rel="next"` would ask without sidekey (and its credential).
//! The caller says what a URL becomes ([`super::relocate`] for a route
//! listener, [`super::redirect`] for the forward proxy); this module only
//! finds the URLs.
//!
//! A field holds comma-separated link-values, each `<URI-Reference>` then
//! `;`-separated parameters whose values may be quoted strings (which may
//! hold `,`, `<`, `>` and `\`-escapes); the field may repeat, and empty
//! list elements are allowed (RFC 9110 §5.6.1). Only the text between `<`
//! and `>` changes; parameters (`anchor` too), whitespace and every other
//! byte pass as sent. A value that does not parse so (a `<` without its
//! `>`, an unterminated quoted string, text between a target and its
//! parameters, non-ASCII bytes) passes whole, never half rewritten.
//!
//! An answer that is no redirect and has no `Link` costs one header lookup
//! and no allocation.

use std::ops::Range;

use http::header::{CONTENT_LOCATION, Entry, LINK, LOCATION};
use http::{HeaderMap, HeaderValue};

/// Whether an answer names a URL [`rewrite_answer_urls`] would look at: a
/// `redirect` (a 3xx or a `201`) with `Location` or `Content-Location`, or
/// any answer with `Link`.
pub fn names_urls(headers: &HeaderMap, redirect: bool) -> bool {
    (redirect && (headers.contains_key(LOCATION) || headers.contains_key(CONTENT_LOCATION)))
        || headers.contains_key(LINK)
}

/// Rewrite the URLs an answer gives the app to follow for which `map`
/// returns a new one: `Location` and `Content-Location` when it is a
/// `redirect` (a 3xx or a `201`), the targets of its `Link` fields
/// whatever its status. Values that are not text, or `Link` fields that do
/// not parse, pass as they are.
pub fn rewrite_answer_urls(
    headers: &mut HeaderMap,
    redirect: bool,
    mut map: impl FnMut(&str) -> Option<String>,
) {
    if redirect {
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(value) = headers.get_mut(&name)
                && let Some(rewritten) = value
                    .to_str()
                    .ok()
                    .and_then(&mut map)
                    .and_then(|url| HeaderValue::try_from(url).ok())
            {
                *value = rewritten;
            }
        }
    }
    rewrite_links(headers, map);
}

/// Rewrite the targets of every `Link` field of `headers` for which `map`
/// returns a new reference; fields that do not parse pass as they are.
fn rewrite_links(headers: &mut HeaderMap, mut map: impl FnMut(&str) -> Option<String>) {
    // Looked up first: `entry` reserves room for an insert, which may
    // allocate, and most answers have no `Link`.
    if !headers.contains_key(LINK) {
        return;
    }
    if let Entry::Occupied(mut fields) = headers.entry(LINK) {
        for value in fields.iter_mut() {
            if let Some(rewritten) = value
                .to_str()
                .ok()
                .and_then(|text| rewrite_targets(text, &mut map))
                .and_then(|text| HeaderValue::try_from(text).ok())
            {
                *value = rewritten;
            }
        }
    }
}

/// `value` with each target `map` rewrites replaced; `None` when `value`
/// does not parse as a list of links, or no target changes.
pub fn rewrite_targets(value: &str, mut map: impl FnMut(&str) -> Option<String>) -> Option<String> {
    let mut rewritten: Option<String> = None;
    // How much of `value` is copied into `rewritten` already.
    let mut copied = 0;
    for target in targets(value)? {
        let Some(new) = map(&value[target.clone()]) else {
            continue;
        };
        let out = rewritten.get_or_insert_with(|| String::with_capacity(value.len() + 16));
        out.push_str(&value[copied..target.start]);
        out.push_str(&new);
        copied = target.end;
    }
    let mut out = rewritten?;
    out.push_str(&value[copied..]);
    Some(out)
}

/// Where the targets (between `<` and `>`) of the link-values in `value`
/// are; `None` when `value` is no list of links.
fn targets(value: &str) -> Option<Vec<Range<usize>>> {
    let bytes = value.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    loop {
        // Whitespace and empty list elements before a link-value.
        while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b',') {
            at += 1;
        }
        if at == bytes.len() {
            return Some(found);
        }
        if bytes[at] != b'<' {
            return None;
        }
        let start = at + 1;
        let end = start + value[start..].find(['>', '<'])?;
        if bytes[end] != b'>' {
            return None;
        }
        found.push(start..end);
        at = end + 1;
        // Parameters, up to the `,` that ends this link-value.
        while at < bytes.len() && matches!(bytes[at], b' ' | b'\t') {
            at += 1;
        }
        if at < bytes.len() && !matches!(bytes[at], b';' | b',') {
            return None;
        }
        while at < bytes.len() && bytes[at] != b',' {
            match bytes[at] {
                b'"' => at = after_quoted(bytes, at)?,
                b'<' | b'>' => return None,
                _ => at += 1,
            }
        }
    }
}

/// The index after the quoted string that opens at `open`; `None` when it
/// does not end.
fn after_quoted(bytes: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::rewrite_targets;

    /// Targets under `/v1` become `/api…`.
    fn mapped(value: &str) -> Option<String> {
        rewrite_targets(value, |target| {
            target.strip_prefix("/v1").map(|rest| format!("/api{rest}"))
        })
    }

    #[test]
    fn every_target_of_a_list_is_mapped_and_the_rest_kept() {
        for (value, expected) in [
            ("</v1/a>", "</api/a>"),
            ("</v1/a>; rel=next", "</api/a>; rel=next"),
            (
                "</v1/a?page=2>; rel=\"next\", </v1/a?page=9>; rel=\"last\"",
                "</api/a?page=2>; rel=\"next\", </api/a?page=9>; rel=\"last\"",
            ),
            (
                "<https://other/x>;rel=up,</v1/b>;rel=next",
                "<https://other/x>;rel=up,</api/b>;rel=next",
            ),
            // Quoted parameters may hold commas, brackets and escapes.
            (
                "</v1/a>; title=\"a, <b> \\\" c\"; rel=next, </v1/c>",
                "</api/a>; title=\"a, <b> \\\" c\"; rel=next, </api/c>",
            ),
            // Empty list elements and whitespace pass as they are.
            (
                " , </v1/a> ;rel=next ,, </v1/b>\t",
                " , </api/a> ;rel=next ,, </api/b>\t",
            ),
            ("</v1>; anchor=\"/v1/x\"", "</api>; anchor=\"/v1/x\""),
        ] {
            assert_eq!(mapped(value).as_deref(), Some(expected), "{value}");
        }
    }

    #[test]
    fn values_that_are_no_list_of_links_or_need_no_change_pass_whole() {
        for value in [
            "",
            "<https://other/x>; rel=next",
            "</v1/a",
            "</v1/a; rel=next, </v1/b>",
            "</v1/a>; title=\"open, </v1/b>",
            "</v1/a>; title=\"ends in an escape\\\"",
            "/v1/a; rel=next",
            "</v1/a> rel=next",
            "</v1/a>x",
            "</v1/a>; rel=next </v1/b>",
            "</v1/a>; rel=>",
            "<</v1/a>>",
        ] {
            assert_eq!(mapped(value), None, "{value}");
        }
    }
}
