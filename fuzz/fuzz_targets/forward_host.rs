//! Forward-proxy `hosts` keys: parsing never panics, and a key that parses
//! reads back as itself (its canonical form parses to the same host and port).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::host::ForwardHost;

fuzz_target!(|key: &str| {
    let Ok(host) = ForwardHost::parse(key) else {
        return;
    };
    let canonical = host.to_string();
    let again = ForwardHost::parse(&canonical).expect("a canonical key parses");
    assert_eq!(again.to_string(), canonical);
    assert_eq!(again.request_port(), host.request_port());
    assert_eq!(again.upstream_authority(), host.upstream_authority());
    assert!(
        host.upstream_authority()
            .parse::<http::uri::Authority>()
            .is_ok()
    );
});
