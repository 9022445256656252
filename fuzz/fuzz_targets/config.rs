//! proxy.toml: parsing and resolving never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(f) = wharf::config::parse_file(s) {
        let _ = wharf::config::resolve(f, wharf::config::Overrides::default());
    }
});
