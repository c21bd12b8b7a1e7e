//! The configuration loader on arbitrary text: never a panic, and every
//! error names the file it was read from.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sidekey::secret::MapEnv;

fuzz_target!(|text: &str| {
    let env = Arc::new(MapEnv::from([("TOKEN", "fuzz-token"), ("ID", "id")]));
    if let Err(errors) = sidekey::config::parse(text, Path::new("fuzz.toml"), env) {
        assert!(!errors.0.is_empty());
        for error in &errors.0 {
            assert!(error.to_string().starts_with("fuzz.toml"), "{error}");
        }
    }
});
