//! Following a chunked request body through the bytes as they are read: no
//! panic, and the same verdict (where the body ends, or that it cannot be
//! followed) however the bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::proxy::chunked::{Chunked, Lost, Progress};

/// Where the body ends in `bytes` (`Ok(None)`: not yet), fed in `splits`.
fn follow(bytes: &[u8], splits: &[u8]) -> Result<Option<usize>, Lost> {
    let mut state = Chunked::default();
    let mut scratch = Vec::new();
    let mut at = 0;
    let mut sizes = splits.iter().map(|s| usize::from(*s).max(1)).cycle();
    while at < bytes.len() {
        let size = if splits.is_empty() {
            bytes.len()
        } else {
            sizes.next().unwrap_or(1)
        };
        let end = (at + size).min(bytes.len());
        match state.follow(&bytes[at..end], &mut scratch)? {
            Progress::More => at = end,
            Progress::Ended(used) => {
                assert!(used <= end - at);
                return Ok(Some(at + used));
            }
        }
    }
    Ok(None)
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (bytes, splits) = input;
    let whole = follow(bytes, &[]);
    let split = follow(bytes, splits);
    assert_eq!(
        whole, split,
        "the verdict depends on how the bytes were read"
    );
});
