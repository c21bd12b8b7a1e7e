//! `Link` field values from an upstream: finding their targets never panics,
//! and a rewrite changes the targets and nothing else (marking every target
//! and then unmarking it gives the value back byte for byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::proxy::link::rewrite_targets;

/// Text that cannot end a target or start another.
const MARK: &str = "~mark~";

fuzz_target!(|value: &str| {
    assert_eq!(rewrite_targets(value, |_| None), None, "nothing to change");
    let Some(marked) = rewrite_targets(value, |target| Some(format!("{MARK}{target}"))) else {
        return;
    };
    assert!(marked.len() > value.len());
    let unmarked = rewrite_targets(&marked, |target| {
        Some(
            target
                .strip_prefix(MARK)
                .expect("every target of the rewritten value was marked")
                .to_owned(),
        )
    });
    assert_eq!(unmarked.as_deref(), Some(value));
});
