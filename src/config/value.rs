//! Values checked where they are read: durations (`"750ms"`, `"30s"`,
//! `"5m"`, `"24h"`), URLs, header names and values, status codes, listen
//! addresses, bounded integers, file paths. Each is a newtype whose
//! `Deserialize` says what is wrong with a value; the loader adds file, line
//! and key. Fields of the public types read them through [`via`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Parse `"750ms"`, `"30s"`, `"5m"`, `"24h"` (also `"1.5s"`). A unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h, e.g. \"30s\")"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration like \"750ms\", \"30s\", \"5m\" or \"24h\"")
    })?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("`{text}` is out of range"))
}

/// For `deserialize_with`: read newtype `N`, keep what it holds.
pub(crate) fn via<'de, D: Deserializer<'de>, N: Deserialize<'de>, T: From<N>>(
    d: D,
) -> Result<T, D::Error> {
    N::deserialize(d).map(T::from)
}

/// [`via`] for an optional key (with `#[serde(default)]`).
pub(crate) fn via_some<'de, D: Deserializer<'de>, N: Deserialize<'de>, T: From<N>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    via(d).map(Some)
}

/// A default of `N` seconds.
pub(crate) const fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// A string, or an error saying what was wanted instead (`expected a duration such as "5s"`).
pub(crate) struct Wanted(pub(crate) &'static str);

impl Visitor<'_> for Wanted {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        Ok(text.to_owned())
    }
}

/// Newtypes read from a string by a function that says what is wrong; a
/// subsystem whose setting needs a check of its own defines it with this too.
macro_rules! from_text {
    ($($(#[$doc:meta])* $name:ident($inner:ty, $wanted:literal) = $parse:expr;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name(pub(crate) $inner);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = d.deserialize_str($crate::config::value::Wanted($wanted))?;
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&text).map($name).map_err(::serde::de::Error::custom)
            }
        }

        impl From<$name> for $inner {
            fn from(value: $name) -> $inner {
                value.0
            }
        }
    )*};
}
pub(crate) use from_text;

from_text! {
    /// A duration; zero is allowed.
    Dur(Duration, "a duration such as \"5s\"") = parse_duration;
    /// A duration of at least 1 ms (timeouts, TTLs): less ends everything at once.
    Timeout(Duration, "a duration such as \"5s\"") = |text| match parse_duration(text)? {
        zero if zero.is_zero() => Err("must be longer than zero".to_owned()),
        short if short < Duration::from_millis(1) => Err("must be at least 1ms".to_owned()),
        duration => Ok(duration),
    };
    /// A listen address, `IP:PORT`.
    Listen(SocketAddr, "an address such as \"127.0.0.1:8080\"") = |text| SocketAddr::from_str(text)
        .map_err(|_| format!("`{text}` is not an IP:PORT address such as \"127.0.0.1:8080\""));
    /// An absolute `http(s)://` URL (whether `http` is allowed is a rule between keys).
    Url(Uri, "a URL such as \"https://api.example.com\"") = url;
    /// An absolute URL below which paths are joined: no query, no trailing `/`.
    BaseUrl(Uri, "a URL such as \"https://api.example.com\"") = |text| match url(text)?.query() {
        Some(_) => Err("a query (`?…`) is not allowed in a base URL".to_owned()),
        None => url(text.trim_end_matches('/')),
    };
    /// A header name.
    #[derive(PartialEq, Eq, Hash)]
    Name(HeaderName, "a header name") = |text| HeaderName::from_str(text)
        .map_err(|_| format!("`{text}` is not a valid header name"));
    /// A header value.
    Value(HeaderValue, "a header value") = |text| HeaderValue::from_str(text)
        .map_err(|_| "the value contains characters not allowed in a header".to_owned());
    /// A file path (relative ones are resolved by the loader).
    File(PathBuf, "a file path") = |text| match text {
        "" => Err("the path is empty".to_owned()),
        path => Ok(PathBuf::from(path)),
    };
    /// A name that is not empty.
    NonEmpty(String, "a string") = |text| match text {
        "" => Err("must not be empty".to_owned()),
        text => Ok(text.to_owned()),
    };
    /// A route's `path_prefix`: a URL path, without its trailing `/`.
    Prefix(String, "a path such as \"/api\"") = |text| {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        if text.contains(['?', '#']) || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{text}` is not a URL path"));
        }
        Ok(match text.trim_end_matches('/') {
            "" => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        })
    };
}

fn url(text: &str) -> Result<Uri, String> {
    let uri = Uri::from_str(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!(
            "`{text}` is not an absolute URL such as \"https://api.example.com\""
        ));
    };
    if authority.host().is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    if authority.as_str().contains('@') {
        return Err("user information in the URL is not supported".to_owned());
    }
    crate::host::written_port(authority)?;
    if text.contains('#') {
        return Err("a fragment (`#…`) is not allowed here".to_owned());
    }
    match scheme {
        "https" | "http" => Ok(uri),
        other => Err(format!("unsupported scheme `{other}` (use https)")),
    }
}

/// An integer within `LOW..=HIGH`, for an optional key.
pub(crate) fn bounded<'de, D: Deserializer<'de>, const LOW: usize, const HIGH: usize>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    let number = i64::deserialize(d)?;
    let out_of_range = || format!("{number} is out of range (use {LOW} to {HIGH})");
    let n = usize::try_from(number)
        .ok()
        .filter(|n| (LOW..=HIGH).contains(n));
    n.map(Some).ok_or_else(|| de::Error::custom(out_of_range()))
}

/// `renew_on_status = [401, 403]`: HTTP status codes.
pub(crate) fn statuses<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<StatusCode>>, D::Error> {
    let status = |code: i64| {
        let status = u16::try_from(code)
            .ok()
            .filter(|code| (100..=599).contains(code));
        let status = status.and_then(|code| StatusCode::from_u16(code).ok());
        status.ok_or_else(|| format!("{code} is not an HTTP status code (100-599)"))
    };
    let codes = Vec::<i64>::deserialize(d)?.into_iter().map(status);
    codes
        .collect::<Result<_, _>>()
        .map(Some)
        .map_err(de::Error::custom)
}

/// `headers = { "X-Name" = "value" }`, in the order of their names.
#[derive(Deserialize)]
pub(crate) struct Headers(HashMap<Name, Value>);

impl From<Headers> for Vec<(HeaderName, HeaderValue)> {
    fn from(headers: Headers) -> Self {
        let mut headers: Vec<_> = headers.0.into_iter().map(|(n, v)| (n.0, v.0)).collect();
        headers.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }
}
