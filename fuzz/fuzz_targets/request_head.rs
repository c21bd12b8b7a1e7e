//! Reading a request head as it arrives (the framing tap's scanner): no
//! panic on any bytes, and wherever httparse — hyper's parser, with hyper's
//! settings — completes a head, the scanner ends it at the same byte with
//! the same method and framing headers (`Content-Length` read by hyper's
//! rule: digits only), however the bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::proxy::head::{Head, HeadScan, Scan};

/// Where the first head ends and what it says, fed in `splits`.
fn scan(bytes: &[u8], splits: &[u8]) -> Option<(usize, Head)> {
    let mut scanner = HeadScan::default();
    let mut sizes = splits.iter().map(|s| usize::from(*s).max(1)).cycle();
    let mut at = 0;
    while at < bytes.len() {
        let size = if splits.is_empty() {
            bytes.len()
        } else {
            sizes.next().unwrap_or(1)
        };
        let end = (at + size).min(bytes.len());
        if let Scan::Complete(used, head) = scanner.scan(&bytes[at..end]) {
            assert!(used >= 1 && used <= end - at);
            return Some((at + used, head));
        }
        at = end;
    }
    None
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (bytes, splits) = input;
    let scanned = scan(bytes, splits);
    let mut headers = vec![httparse::EMPTY_HEADER; bytes.len() + 1];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = request.parse(bytes) else {
        return;
    };
    let Some((end, head)) = scanned else {
        panic!("httparse completed a head at {len}, the scanner did not");
    };
    assert_eq!(end, len, "where the head ends");
    assert!(head.method.is(request.method.unwrap_or_default()), "method");
    let mut content_length = None;
    let mut transfer_encoding = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let digits = !header.value.is_empty() && header.value.iter().all(u8::is_ascii_digit);
            let value = std::str::from_utf8(header.value).ok().filter(|_| digits);
            content_length = match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(length) => Some(length),
                None => content_length.or(Some(0)),
            };
        }
    }
    assert_eq!(head.content_length, content_length, "content-length");
    assert_eq!(head.transfer_encoding, transfer_encoding, "transfer-encoding");
});
