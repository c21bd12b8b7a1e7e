//! Reading the Prometheus text sidekey's `/metrics` (or `Metrics::encode`) writes.

/// The sum of every sample of `name` whose labels include all of `labels`
/// (`sidekey_token_refresh_total` with `[("outcome", "success")]` adds up
/// every reason); 0 when none matches.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels_text, value) = match rest.strip_prefix('{') {
                Some(inner) => inner.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has_all = labels.iter().all(|(key, value)| {
                labels_text
                    .split(',')
                    .any(|pair| pair == format!("{key}=\"{value}\""))
            });
            has_all.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}
