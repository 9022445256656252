//! Arbitrary bytes as a `.crate`: the checks never panic, never exceed the unpacked limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wharf::registry::publish::{Limits, check_tarball, read_manifest};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_crate: 1 << 20,
        max_json: 1 << 16,
        max_unpacked: 4 << 20,
    };
    let _ = check_tarball(data, "foo", "1.0.0", &limits);
    let _ = read_manifest(data, &limits);
});
