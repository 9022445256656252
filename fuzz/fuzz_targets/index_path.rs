//! Request paths: the parser must never panic, and whatever it accepts must be a
//! well-formed, lower-case, dot-free path (it becomes a store key).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wharf::index::{IndexRequest, parse_download, parse_index_path};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(IndexRequest::Crate(name)) = parse_index_path(s) {
        let p = name.index_path();
        assert!(!p.contains(".."));
        assert!(!p.starts_with('/'));
        assert_eq!(p, s.to_ascii_lowercase());
        let k = wharf::store::Key::index(&name);
        assert!(k.as_str().starts_with("index-v1/"));
    }
    if let Some((n, v)) = s.split_once('/')
        && let Ok((name, version)) = parse_download(n, v)
    {
        let k = wharf::store::Key::krate(&name, &version);
        assert!(!k.as_str().contains(".."));
        assert!(!version.contains('/'));
    }
});
