//! `/metrics` in the format the scraper asks for.
//!
//! prometheus-client writes OpenMetrics 1.0 text, and offers no Prometheus
//! 0.0.4 text encoder (only protobuf). A request whose `Accept` prefers
//! `application/openmetrics-text` gets that, as
//! `application/openmetrics-text; version=1.0.0; charset=utf-8`; any other
//! (no `Accept`, `*/*`, `text/plain`) gets the same families converted to
//! Prometheus text 0.0.4 ([`to_prometheus_text`]), as
//! `text/plain; version=0.0.4; charset=utf-8`.

/// Content type of an OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of a Prometheus text answer.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header value prefers OpenMetrics 1.0 over plain
/// text: its best `application/openmetrics-text` range (without a version
/// or of version 1.x) has a q-value above zero and at least that of the
/// best `text/plain`, `text/*` or `*/*` range.
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut openmetrics: f32 = 0.0;
    let mut text: f32 = 0.0;
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or_default().to_ascii_lowercase();
        let mut q: f32 = 1.0;
        let mut version_ok = true;
        for param in params {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "version" => version_ok = value.starts_with("1."),
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" if version_ok => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// OpenMetrics text as Prometheus text 0.0.4: a counter family `x` is
/// announced as `x_total` (its samples' name) in `# HELP` and `# TYPE`;
/// `# UNIT` lines and `# EOF` are dropped; types 0.0.4 lacks are mapped
/// (`info` and `stateset` to `gauge`, `gaugehistogram` to `histogram`,
/// `unknown` to `untyped`). Samples pass unchanged (sidekey's families
/// have no exemplars or `_created` samples).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // prometheus-client writes `# HELP` right before `# TYPE`.
            let kind = lines
                .get(at + 1)
                .and_then(|next| next.strip_prefix("# TYPE "))
                .and_then(|next| next.split_once(' '))
                .filter(|(typed, _)| *typed == name)
                .map(|(_, kind)| kind);
            out.push_str("# HELP ");
            out.push_str(&sample_name(name, kind));
            out.push(' ');
            out.push_str(help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let converted = match kind {
                "info" | "stateset" => "gauge",
                "gaugehistogram" => "histogram",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str("# TYPE ");
            out.push_str(&sample_name(name, Some(kind)));
            out.push(' ');
            out.push_str(converted);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The name 0.0.4 gives family `name` of type `kind`: a counter's and an
/// info's samples carry a suffix that their family name has not.
fn sample_name(name: &str, kind: Option<&str>) -> String {
    match kind {
        Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
        Some("info") if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,\
            text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(wants_openmetrics("application/openmetrics-text"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text; q=0.3, text/plain; q=0.9"
        ));
        // Only the pre-1.0 draft: not what we write.
        assert!(!wants_openmetrics(
            "application/openmetrics-text; version=0.0.1"
        ));
    }

    #[test]
    fn counters_are_announced_by_their_sample_name_and_eof_is_dropped() {
        let openmetrics = "# HELP sidekey_requests Responses sent to the app.\n\
            # TYPE sidekey_requests counter\n\
            sidekey_requests_total{route=\"api\",status=\"200\"} 2\n\
            # HELP sidekey_token_expires_in_seconds Seconds left.\n\
            # TYPE sidekey_token_expires_in_seconds gauge\n\
            # UNIT sidekey_token_expires_in_seconds seconds\n\
            sidekey_token_expires_in_seconds{credential=\"api\"} 12.5\n\
            # EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP sidekey_requests_total Responses sent to the app.\n\
             # TYPE sidekey_requests_total counter\n\
             sidekey_requests_total{route=\"api\",status=\"200\"} 2\n\
             # HELP sidekey_token_expires_in_seconds Seconds left.\n\
             # TYPE sidekey_token_expires_in_seconds gauge\n\
             sidekey_token_expires_in_seconds{credential=\"api\"} 12.5\n"
        );
    }
}
