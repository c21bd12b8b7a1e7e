//! `GET /`: the status page, server-rendered HTML that reloads itself
//! every [`REFRESH_SECS`] seconds (no script).
//!
//! It shows the process (version, uptime, configuration file, last reload),
//! each credential (state, token lifetime left, last renewal with its
//! reason and outcome, next renewal, failures and backoff, the last error)
//! and each route (its credential, request and 5xx rates, latency over the
//! last minute, see [`super::rates`]). Everything comes from
//! [`crate::credential::CredentialReport`], [`crate::status::ProcessStatus`]
//! and the metric families: never a token or a secret. Every name and
//! message is HTML-escaped ([`escape`]).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::AdminState;
use super::rates::{RouteRates, RouteTotals};
use crate::cache::RedisState;
use crate::credential::{CredentialReport, CredentialState};

/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.35em .7em;text-align:left;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.s{display:inline-block;padding:0 .5em;border-radius:.6em;font-weight:600;color:#fff}
.ready{background:#2e7d32}.renewing{background:#1565c0}.retrying{background:#ef6c00}
.unavailable{background:#c62828}.muted{color:#687080}.err{color:#b71c1c}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0}dt{color:#687080}
";

/// The page, now.
pub fn render(state: &AdminState) -> String {
    let now = SystemTime::now();
    let status = &state.status;
    let configured = status.configured();
    let credentials = state.credentials.load_full();
    let reports: Vec<CredentialReport> = credentials
        .iter()
        .map(|(_, handle)| handle.report())
        .collect();
    let (window, rates) = state
        .rates
        .sample(Instant::now(), RouteTotals::parse(&state.metrics.encode()));

    let mut page = String::with_capacity(8 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>sidekey status</title><style>{STYLE}</style></head><body>\n"
    );
    let unavailable = reports
        .iter()
        .filter(|report| report.state == CredentialState::Unavailable)
        .count();
    let summary = match unavailable {
        0 => "<span class=\"s ready\">ready</span>".to_owned(),
        n => format!("<span class=\"s unavailable\">{n} credential(s) without a token</span>"),
    };
    let _ = write!(page, "<h1>sidekey {summary}</h1>\n<dl>");
    let reload = match status.last_reload() {
        None => "none".to_owned(),
        Some(record) => match record.refused {
            None => format!("accepted {}", ago(now, record.at)),
            Some(why) => format!(
                "<span class=\"err\">refused {}: {}</span>",
                ago(now, record.at),
                escape(&why)
            ),
        },
    };
    let rows = [
        ("version", escape(status.version())),
        (
            "uptime",
            format!(
                "{} (since {})",
                duration(status.uptime()),
                httpdate::fmt_http_date(status.started())
            ),
        ),
        (
            "configuration",
            format!(
                "<code>{}</code>",
                escape(&configured.path.display().to_string())
            ),
        ),
        ("last reload", reload),
        (
            "page",
            format!(
                "{} · reloads every {REFRESH_SECS} s · rates over the last {}",
                httpdate::fmt_http_date(now),
                duration(window)
            ),
        ),
    ];
    for (term, value) in rows {
        let _ = write!(page, "<dt>{term}</dt><dd>{value}</dd>");
    }
    page.push_str("</dl>\n");

    page.push_str(
        "<h2>Credentials</h2>\n<table><tr><th>credential</th><th>type</th><th>state</th>\
         <th>token left</th><th>last renewal</th><th>next renewal</th><th>failures</th>\
         <th>last error</th></tr>\n",
    );
    for report in &reports {
        credential_row(&mut page, report, now);
    }
    if reports.is_empty() {
        page.push_str("<tr><td colspan=\"8\" class=\"muted\">none</td></tr>\n");
    }
    page.push_str("</table>\n");
    match state.credentials.load().redis_state() {
        Some(RedisState::Up) => page
            .push_str("<p>Token cache: Redis up — one renewal per credential for the fleet.</p>\n"),
        Some(RedisState::Down { reason }) => {
            let _ = writeln!(
                page,
                "<p>Token cache: <span class=\"err\">Redis down</span> ({}) — each replica \
                 renews its own tokens until it is back.</p>",
                escape(&reason)
            );
        }
        None => {}
    }

    page.push_str(
        "<h2>Routes</h2>\n<table><tr><th>route</th><th>listen</th><th>upstream</th>\
         <th>credential</th><th>requests/s</th><th>5xx/s</th><th>5xx share</th>\
         <th>mean</th><th>p50</th><th>p95</th><th>requests</th></tr>\n",
    );
    let idle = RouteRates::default();
    for route in &configured.routes {
        let rates = rates.get(&route.name).unwrap_or(&idle);
        let credential_state = reports
            .iter()
            .find(|report| report.name == route.credential)
            .map_or(CredentialState::Unavailable, |report| report.state);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
             <td>{} {}</td><td class=\"n\">{:.2}</td><td class=\"n\">{:.2}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&route.name),
            escape(&route.listen),
            escape(&route.upstream),
            escape(&route.credential),
            badge(credential_state),
            rates.requests_per_s,
            rates.errors_per_s,
            rates
                .error_ratio
                .map_or_else(dash, |ratio| format!("{:.1} %", ratio * 100.0)),
            seconds(rates.mean_s),
            seconds(rates.p50_s),
            seconds(rates.p95_s),
            rates.requests_total,
        );
    }
    if configured.routes.is_empty() {
        page.push_str("<tr><td colspan=\"11\" class=\"muted\">none</td></tr>\n");
    }
    page.push_str(
        "</table>\n<p class=\"muted\">Latency: request start to the response head. \
         p50 and p95 are estimated from the histogram buckets of \
         <code>sidekey_request_duration_seconds</code>. Tokens are never shown. \
         Also: <a href=\"/readyz\">/readyz</a> · <a href=\"/metrics\">/metrics</a>.</p>\n\
         </body></html>\n",
    );
    page
}

fn credential_row(page: &mut String, report: &CredentialReport, now: SystemTime) {
    let left = match (report.state, report.expires_in, report.lifetime) {
        (CredentialState::Unavailable, _, _) => dash(),
        (_, Some(left), Some(lifetime)) => {
            format!("{} of {}", duration(left), duration(lifetime))
        }
        (_, Some(left), None) => duration(left),
        (_, None, _) => "no expiry".to_owned(),
    };
    let left = match report.generation {
        0 => left,
        n => format!("{left} <span class=\"muted\">(token #{n})</span>"),
    };
    let last = match &report.last_attempt {
        None => dash(),
        Some(attempt) => format!(
            "{} · {} · {} (took {})",
            if attempt.succeeded {
                "<span class=\"s ready\">ok</span>"
            } else {
                "<span class=\"s unavailable\">failed</span>"
            },
            attempt.reason,
            ago(now, attempt.at),
            duration(attempt.took),
        ),
    };
    let next = match (report.in_flight, report.next_attempt_in) {
        (true, _) => "in flight".to_owned(),
        (false, None) => dash(),
        (_, Some(delay)) if report.failures > 0 => {
            format!("retry in {} (backoff)", duration(delay))
        }
        (_, Some(delay)) => format!("in {}", duration(delay)),
    };
    let failures = format!(
        "{} in a row · {} total",
        report.failures, report.failures_total
    );
    let error = report
        .unavailable_reason
        .as_deref()
        .or(report.last_error.as_deref())
        .map_or_else(dash, |error| {
            format!("<span class=\"err\">{}</span>", escape(error))
        });
    let _ = writeln!(
        page,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{left}</td><td>{last}</td>\
         <td>{next}</td><td>{failures}</td><td>{error}</td></tr>",
        escape(&report.name),
        report.kind,
        badge(report.state),
    );
}

fn badge(state: CredentialState) -> String {
    let word = state.as_str();
    format!("<span class=\"s {word}\">{word}</span>")
}

fn dash() -> String {
    "<span class=\"muted\">–</span>".to_owned()
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => dash(),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

/// `12 s ago`, from the wall clock.
fn ago(now: SystemTime, then: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(elapsed) => format!("{} ago", duration(elapsed)),
        Err(_) => "just now".to_owned(),
    }
}

/// A duration for people: `0.4 ms`, `850 ms`, `4.2 s`, `12 min 5 s`, `3 h 20 min`, `2 d 3 h`.
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d < Duration::from_millis(10) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        0 => format!("{} ms", d.as_millis()),
        1..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `text` safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_micros(420)), "0.4 ms");
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(4_200)), "4.2 s");
        assert_eq!(duration(Duration::from_secs(725)), "12 min 5 s");
        assert_eq!(duration(Duration::from_secs(12_000)), "3 h 20 min");
        assert_eq!(duration(Duration::from_secs(183_600)), "2 d 3 h");
    }
}
