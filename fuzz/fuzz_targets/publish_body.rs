//! cargo's binary publish body, then metadata validation, the tarball checks and the
//! index-line conversion: never a panic, and an accepted publish yields a parsable line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wharf::registry::publish::{Limits, check_tarball, parse_body, to_index_line, validate_meta};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_crate: 1 << 20,
        max_json: 1 << 16,
        max_unpacked: 4 << 20,
    };
    let b = bytes::Bytes::copy_from_slice(data);
    if let Ok((meta, tarball)) = parse_body(&b, &limits)
        && validate_meta(&meta).is_ok()
    {
        let _ = check_tarball(&tarball, &meta.name, &meta.vers, &limits);
        let line = to_index_line(&meta, &"0".repeat(64), "2026-01-01T00:00:00Z");
        let text = serde_json::to_string(&line).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["name"], meta.name.as_str());
    }
});
