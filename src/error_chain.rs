//! One line for an error and its causes, the way sidekey reports errors
//! that carry a cause chain (`thiserror` `#[source]`s, hyper and I/O
//! errors): at the edge, once, where the line is logged or shown.

/// Every cause in an error chain joined with ": ", each cause once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "connection refused");
    }
}
