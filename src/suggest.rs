//! "Did you mean …?": the name closest to a misspelt one, by edit distance
//! (`strsim`), when it is close enough to be a likely typo; and serde's
//! "unknown field `x`, expected one of `a`, `b`" messages told so.

/// The candidate closest to `word`, if at most a third of its letters (and at
/// least one) need an edit.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let distance = |candidate: &&str| strsim::levenshtein(word, candidate);
    let best = candidates.into_iter().min_by_key(distance)?;
    (distance(&best) <= (word.chars().count() / 3).max(1)).then_some(best)
}

/// `unknown key `x`, expected one of `a`, `b`` (or any "unknown …" message
/// listing what is expected in backquotes) with "did you mean `a`?" when `x`
/// looks like a misspelt `a`.
pub fn did_you_mean(message: String) -> String {
    let parts: Vec<&str> = message.split('`').collect();
    let candidates = parts.iter().skip(3).step_by(2).copied();
    let near = (message.starts_with("unknown ") && parts.len() > 3)
        .then(|| closest(parts[1], candidates))
        .flatten();
    match (near, message.split_once(", expected ")) {
        (Some(near), Some((head, expected))) => {
            format!("{head}, did you mean `{near}`? (expected {expected})")
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::{closest, did_you_mean};

    #[test]
    fn suggests_only_near_names() {
        let keys = ["token_url", "client_id", "connect_timeout"];
        assert_eq!(closest("tokn_url", keys), Some("token_url"));
        assert_eq!(closest("conect_timeout", keys), Some("connect_timeout"));
        assert_eq!(closest("secret", keys), None);
        assert_eq!(closest("x", ["y"]), Some("y"));
        assert_eq!(closest("xml", ["text", "json"]), None);
    }

    #[test]
    fn unknown_names_in_messages_get_a_suggestion() {
        let message = "unknown key `tokn`, expected one of `token`, `header`".to_owned();
        assert_eq!(
            did_you_mean(message),
            "unknown key `tokn`, did you mean `token`? (expected one of `token`, `header`)"
        );
        let far = "unknown value `xml`, expected `text` or `json`".to_owned();
        assert_eq!(did_you_mean(far.clone()), far);
        let other = "invalid type: integer `5`, expected a string".to_owned();
        assert_eq!(did_you_mean(other.clone()), other);
    }
}
