//! Cutting the secrets a token request carried out of text that came back
//! from the token endpoint.
//!
//! Error bodies may echo the request (API gateways, HTML error pages, debug
//! endpoints), so every message built from an answer goes through a
//! [`Redactor`] that knows each secret in every spelling the request used:
//! raw, `application/x-www-form-urlencoded` (`+` for space), percent-encoded
//! (`%20`), JSON-escaped (inside a JSON string), with whitespace runs
//! collapsed (as excerpts show them), and whole header values such as
//! `Basic base64(id:secret)` together with the credentials after the scheme.
//! Each occurrence becomes `<redacted>`, longest spelling first. Callers
//! redact the whole text *before* cutting it to an excerpt, so a secret that
//! straddles the cut cannot leave its first half behind.

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// The secrets one token request carried, in every spelling it used.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first; never empty strings.
    spellings: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("spellings", &self.spellings.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor that knows no secret yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a secret sent raw, in a form or JSON body, or in a URL.
    pub fn secret(mut self, secret: &str) -> Self {
        self.add(secret.to_owned());
        self.add(form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        self.add(percent_encode(secret));
        let quoted = serde_json::Value::from(secret).to_string();
        if let Some(inner) = quoted.get(1..quoted.len() - 1) {
            self.add(inner.to_owned());
        }
        self.add(collapse_whitespace(secret));
        self
    }

    /// Add a header value sent with the request (`Basic …`, `Bearer …`):
    /// the whole value and the credentials after the scheme.
    pub fn header_value(mut self, value: &str) -> Self {
        self.add(value.to_owned());
        if let Some((_scheme, credentials)) = value.split_once(' ') {
            self.add(credentials.trim().to_owned());
        }
        self
    }

    fn add(&mut self, spelling: String) {
        if spelling.is_empty() || self.spellings.contains(&spelling) {
            return;
        }
        let at = self
            .spellings
            .iter()
            .position(|s| s.len() < spelling.len())
            .unwrap_or(self.spellings.len());
        self.spellings.insert(at, spelling);
    }

    /// `text` with every known spelling of every secret replaced by
    /// [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for spelling in &self.spellings {
            if out.contains(spelling.as_str()) {
                out = out.replace(spelling.as_str(), REDACTED);
            }
        }
        out
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Control characters become spaces and runs of whitespace one space, with
/// none at either end: how excerpts show text.
pub fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_cut() {
        let secret = "pa ss/\"q\"\\+é";
        let redactor = Redactor::new().secret(secret);
        for spelling in [
            secret.to_owned(),
            form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
            "pa%20ss%2F%22q%22%5C%2B%C3%A9".to_owned(),
            r#"pa ss/\"q\"\\+é"#.to_owned(),
        ] {
            assert_eq!(
                redactor.redact(&format!("x {spelling} y")),
                "x <redacted> y",
                "{spelling}"
            );
        }
    }

    #[test]
    fn header_values_are_cut_whole_and_after_the_scheme() {
        let redactor = Redactor::new().header_value("Basic dXNlcjpwYXNz");
        assert_eq!(
            redactor.redact("authorization: Basic dXNlcjpwYXNz"),
            "authorization: <redacted>"
        );
        assert_eq!(redactor.redact("got dXNlcjpwYXNz"), "got <redacted>");
    }

    #[test]
    fn longer_spellings_go_first_and_whitespace_runs_count() {
        let redactor = Redactor::new().secret("ab").secret("abcd  ef");
        assert_eq!(redactor.redact("abcd  ef ab"), "<redacted> <redacted>");
        assert_eq!(redactor.redact("abcd ef"), "<redacted>");
        assert_eq!(Redactor::new().redact("nothing to cut"), "nothing to cut");
        assert!(!format!("{redactor:?}").contains("ab"));
    }

    #[test]
    fn collapses_like_an_excerpt() {
        assert_eq!(collapse_whitespace("  a\r\n\tb  c \u{7}"), "a b c");
    }
}
