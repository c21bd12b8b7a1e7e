//! "Did you mean …?": the name closest to a misspelt one, by edit distance
//! (`strsim`), when it is close enough to be a likely typo.

/// The candidate closest to `word`, if at most a third of its letters (and at
/// least one) need an edit.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let distance = |candidate: &&str| strsim::levenshtein(word, candidate);
    let best = candidates.into_iter().min_by_key(distance)?;
    (distance(&best) <= (word.chars().count() / 3).max(1)).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_only_near_names() {
        let keys = ["token_url", "client_id", "connect_timeout"];
        assert_eq!(closest("tokn_url", keys), Some("token_url"));
        assert_eq!(closest("conect_timeout", keys), Some("connect_timeout"));
        assert_eq!(closest("secret", keys), None);
        assert_eq!(closest("x", ["y"]), Some("y"));
        assert_eq!(closest("xml", ["text", "json"]), None);
    }
}
