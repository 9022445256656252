//! The sparse-index protocol as pure functions: request paths, crate names, index lines,
//! download-URL templates, config.json and ETag matching. Nothing here does I/O, so every
//! rule is unit-tested without a server.

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Longest crate name accepted (crates.io's limit; cargo itself has none, but a longer name
/// can only be an attack on the path handling).
pub const MAX_NAME_LEN: usize = 64;
/// Longest version string accepted (crates.io's limit).
pub const MAX_VERSION_LEN: usize = 150;

/// Why a request path or name is not acceptable. The messages are shown to cargo users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("`{0}` is not a valid crate name: {1}")]
    BadName(String, String),
    #[error("`{0}` is not a valid index path: the prefix does not match the crate name")]
    BadPrefix(String),
    #[error("`{0}` is not a valid version: {1}")]
    BadVersion(String, String),
    #[error("not a valid index path: {0}")]
    Malformed(String),
}

/// A validated crate name, kept in the case the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CrateName(String);

impl CrateName {
    /// Accepts what cargo accepts in a dependency name: ASCII letters, digits, `-` and `_`,
    /// starting with a letter or `_`, at most [`MAX_NAME_LEN`] characters. Reserved names
    /// (keywords, `nul`, ...) are accepted on the read path: old crates may use them, and
    /// the name never becomes a path component on its own (see `store::Key`).
    pub fn parse(name: &str) -> Result<Self, PathError> {
        let bad = |why: String| PathError::BadName(truncate(name), why);
        if name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "longer than {MAX_NAME_LEN} characters ({})",
                name.len()
            )));
        }
        tame_index::KrateName::try_from(name).map_err(|e| bad(e.to_string()))?;
        let first = name.as_bytes()[0];
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return Err(bad("it must start with a letter or `_`".into()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as cargo puts it in index paths (ASCII lower case).
    pub fn lower(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd`: the sparse index path, lower-cased.
    pub fn index_path(&self) -> String {
        // tame-index owns the prefix rule; our names are already validated by it.
        tame_index::KrateName::try_from(self.0.as_str())
            .map(|k| k.relative_path(Some('/')))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for CrateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the part of an index request after the index root: `config.json` or a crate's
/// index file. Any case is accepted; the prefix must match the name, as cargo builds it.
#[derive(Debug, PartialEq, Eq)]
pub enum IndexRequest {
    Config,
    Crate(CrateName),
}

pub fn parse_index_path(rest: &str) -> Result<IndexRequest, PathError> {
    if rest == "config.json" {
        return Ok(IndexRequest::Config);
    }
    check_raw_segment_chars(rest)?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(PathError::Malformed("empty path segment".into()));
    }
    let name = match segs.as_slice() {
        [_, n] | [_, _, n] => *n,
        _ => return Err(PathError::Malformed(truncate(rest))),
    };
    let name = CrateName::parse(name)?;
    if !rest.eq_ignore_ascii_case(&name.index_path()) {
        return Err(PathError::BadPrefix(truncate(rest)));
    }
    Ok(IndexRequest::Crate(name))
}

/// Parses `{crate}/{version}` of a download request.
pub fn parse_download(name: &str, version: &str) -> Result<(CrateName, String), PathError> {
    let name = CrateName::parse(name)?;
    if version.len() > MAX_VERSION_LEN {
        return Err(PathError::BadVersion(truncate(version), "too long".into()));
    }
    semver::Version::parse(version)
        .map_err(|e| PathError::BadVersion(truncate(version), e.to_string()))?;
    Ok((name, version.to_owned()))
}

/// Rejects percent-escapes, dots, backslashes and control bytes before anything else looks
/// at a path: a valid index path never contains them, so there is nothing to decode.
fn check_raw_segment_chars(p: &str) -> Result<(), PathError> {
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/')))
    {
        return Err(PathError::Malformed(format!(
            "character {c:?} is not allowed in an index path"
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut t = s[..end].escape_debug().to_string();
    if end < s.len() {
        t.push('…');
    }
    t
}

/// The fields of an index line that the proxy needs; everything else stays in the raw bytes.
#[derive(Deserialize)]
struct LineHead<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    vers: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    cksum: std::borrow::Cow<'a, str>,
}

/// One version found in an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    /// The name exactly as the index spells it (download URLs use this case).
    pub name: String,
    pub cksum: String,
}

/// Finds `version` of `name` in an index file. Lines cargo could not parse are skipped, as
/// cargo skips them; the name is compared ignoring ASCII case (one file holds one crate).
pub fn find_version(body: &[u8], name: &str, version: &str) -> Option<VersionEntry> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<LineHead<'_>>(l).ok())
        .find(|h| h.vers == version && h.name.eq_ignore_ascii_case(name))
        .filter(|h| is_sha256_hex(&h.cksum))
        .map(|h| VersionEntry {
            name: h.name.into_owned(),
            cksum: h.cksum.into_owned(),
        })
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Expands a registry's `dl` template the way cargo does (`crate_url` in cargo): every
/// marker is substituted; with no marker at all, `/{crate}/{version}/download` is appended.
pub fn download_url(template: &str, name: &str, version: &str, cksum: &str) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| template.contains(m)) {
        let sep = if template.ends_with('/') { "" } else { "/" };
        return format!("{template}{sep}{name}/{version}/download");
    }
    // tame-index's prefix keeps the name's case, as `{prefix}` requires.
    let mut prefix = String::with_capacity(6);
    if let Ok(k) = tame_index::KrateName::try_from(name) {
        k.prefix(&mut prefix, '/');
    }
    template
        .replace("{crate}", name)
        .replace("{version}", version)
        .replace("{lowerprefix}", &prefix.to_ascii_lowercase())
        .replace("{prefix}", &prefix)
        .replace("{sha256-checksum}", cksum)
}

/// Reads `dl` from an upstream `config.json` (tame-index's type, which ignores unknown keys).
pub fn parse_upstream_config(body: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<tame_index::index::IndexConfig>(body)
        .map(|c| c.dl)
        .map_err(|e| format!("upstream config.json is not valid: {e}"))
}

/// wharf's own `config.json` for the mirror root: downloads come back to wharf.
pub fn mirror_config_json(public_url: &str) -> Bytes {
    let dl = format!("{}/api/v1/crates", public_url.trim_end_matches('/'));
    let v = serde_json::json!({ "dl": dl });
    Bytes::from(format!("{v}\n"))
}

/// A strong ETag for bytes we serve: a quoted, truncated sha256.
pub fn etag_for(body: &[u8]) -> String {
    format!("\"{}\"", &sha256_hex(body)[..32])
}

/// RFC 9110 §13.1.2 If-None-Match: weak comparison, lists and `*`.
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = strip(etag);
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || strip(t) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_follow_cargo_layout() {
        let p = |s: &str| match parse_index_path(s) {
            Ok(IndexRequest::Crate(n)) => n.as_str().to_owned(),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(p("1/a"), "a");
        assert_eq!(p("2/ab"), "ab");
        assert_eq!(p("3/s/syn"), "syn");
        assert_eq!(p("se/rd/serde"), "serde");
        assert_eq!(p("SE/rd/SERDE"), "SERDE");
        assert_eq!(p("se/rd/serde_json"), "serde_json");
        assert_eq!(
            parse_index_path("config.json").unwrap(),
            IndexRequest::Config
        );
    }

    #[test]
    fn lower_and_path_are_lowercase() {
        let n = CrateName::parse("MyCrate").unwrap();
        assert_eq!(n.lower(), "mycrate");
        assert_eq!(n.index_path(), "my/cr/mycrate");
    }

    #[test]
    fn bad_index_paths_are_rejected() {
        for bad in [
            "se/re/serde",
            "1/ab",
            "2/a",
            "3/x/syn",
            "../etc/passwd",
            "se/rd/..",
            "%2e%2e/x/y",
            "se/rd/ser%00de",
            "se\\rd\\serde",
            "se/rd/ser.de",
            "a/b/c/d",
            "",
            "se/rd/",
            "/se/rd/serde",
            "1/9",
            "se/rd/serde\0",
            "é/x",
        ] {
            assert!(parse_index_path(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(65);
        assert!(matches!(
            parse_index_path(&format!("aa/aa/{long}")),
            Err(PathError::BadName(..))
        ));
    }

    #[test]
    fn crate_names() {
        assert!(CrateName::parse("_private").is_ok());
        assert!(CrateName::parse("a-b_c9").is_ok());
        for bad in ["", "9lives", "-x", "a.b", "a/b", "a b", "ünï"] {
            assert!(CrateName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn download_parsing_validates_semver() {
        assert!(parse_download("serde", "1.0.0").is_ok());
        assert!(parse_download("serde", "1.0.0-beta.1+build.5").is_ok());
        assert!(parse_download("serde", "1.0").is_err());
        assert!(parse_download("serde", "../1.0.0").is_err());
        assert!(parse_download("ser/de", "1.0.0").is_err());
        assert!(parse_download("serde", &format!("1.0.0+{}", "a".repeat(200))).is_err());
    }

    #[test]
    fn find_version_skips_bad_lines() {
        let ck = "a".repeat(64);
        let body = format!(
            "not json\n{{\"name\":\"Foo\",\"vers\":\"1.0.0\",\"deps\":[],\"cksum\":\"{ck}\",\"x\":1}}\n\n{{\"name\":\"Foo\",\"vers\":\"2.0.0\"}}\n"
        );
        let v = find_version(body.as_bytes(), "foo", "1.0.0").unwrap();
        assert_eq!(v.name, "Foo");
        assert_eq!(v.cksum, ck);
        assert!(find_version(body.as_bytes(), "foo", "2.0.0").is_none());
        assert!(find_version(body.as_bytes(), "foo", "3.0.0").is_none());
        assert!(find_version(body.as_bytes(), "bar", "1.0.0").is_none());
    }

    #[test]
    fn download_templates() {
        let ck = "c".repeat(64);
        assert_eq!(
            download_url("http://u/api/v1/crates", "Serde", "1.0.0", &ck),
            "http://u/api/v1/crates/Serde/1.0.0/download"
        );
        assert_eq!(
            download_url("http://u/", "a", "1.0.0", &ck),
            "http://u/a/1.0.0/download"
        );
        assert_eq!(
            download_url(
                "http://u/{prefix}/{lowerprefix}/{crate}/{crate}-{version}.crate?s={sha256-checksum}",
                "SerDe",
                "1.0.0+b",
                &ck
            ),
            format!("http://u/Se/rD/se/rd/SerDe/SerDe-1.0.0+b.crate?s={ck}")
        );
        assert_eq!(
            download_url("http://u/{prefix}/{crate}", "Syn", "1.0.0", &ck),
            "http://u/3/S/Syn"
        );
        assert_eq!(
            download_url("http://u/{lowerprefix}/{crate}", "Ab", "1.0.0", &ck),
            "http://u/2/Ab"
        );
    }

    #[test]
    fn upstream_config_parsing() {
        assert_eq!(
            parse_upstream_config(br#"{"dl":"http://x/{crate}","api":"http://x","new":1}"#)
                .unwrap(),
            "http://x/{crate}"
        );
        assert!(parse_upstream_config(b"{}").is_err());
        assert!(parse_upstream_config(b"<html>").is_err());
    }

    #[test]
    fn etag_matching() {
        let e = etag_for(b"hello");
        assert!(e.starts_with('"') && e.ends_with('"'));
        assert!(if_none_match_matches(&e, &e));
        assert!(if_none_match_matches(&format!("W/{e}"), &e));
        assert!(if_none_match_matches(&format!("\"x\", {e}"), &e));
        assert!(if_none_match_matches("*", &e));
        assert!(!if_none_match_matches("\"other\"", &e));
    }

    #[test]
    fn mirror_config_points_downloads_at_wharf() {
        let c = mirror_config_json("http://h:1/");
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["dl"], "http://h:1/api/v1/crates");
        assert!(v.get("api").is_none());
    }
}
