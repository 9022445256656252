//! Stored index records and upstream index bytes: decoding and version lookup never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = bytes::Bytes::copy_from_slice(data);
    let _ = wharf::record::decode_index(&b);
    if let Some(v) = wharf::index::find_version(data, "foo", "1.0.0") {
        assert!(wharf::index::is_sha256_hex(&v.cksum));
    }
    let _ = wharf::index::parse_upstream_config(data);
});
