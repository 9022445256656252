//! The publish protocol as pure functions: decoding cargo's binary publish body, validating
//! the metadata and the `.crate` tarball, and converting publish metadata into an index
//! line exactly as crates.io does. No I/O here: everything is unit-tested with crafted input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Size limits for one publish.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `.crate` (compressed), `registry.max_crate_size`.
    pub max_crate: u64,
    /// Largest JSON metadata (crates.io: 1 MiB).
    pub max_json: u64,
    /// Largest unpacked tarball (crates.io: 512 MiB): the gzip-bomb guard.
    pub max_unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_crate: 10 << 20,
            max_json: 1 << 20,
            max_unpacked: 512 << 20,
        }
    }
}

/// A publish that cannot be accepted. The message is shown by cargo as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("malformed publish request: {0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

/// Publish metadata as cargo sends it (`NewCrate`). Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NewCrate {
    pub name: String,
    pub vers: String,
    #[serde(default)]
    pub deps: Vec<NewDep>,
    #[serde(default)]
    pub features: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub documentation: Option<String>,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub readme: Option<String>,
    #[serde(default)]
    pub readme_file: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub license_file: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub links: Option<String>,
    #[serde(default)]
    pub rust_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NewDep {
    /// The real package name.
    pub name: String,
    pub version_req: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub optional: bool,
    #[serde(default = "yes")]
    pub default_features: bool,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The rename key in the depending manifest, when renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_name_in_toml: Option<String>,
}

fn yes() -> bool {
    true
}

/// An index line, in crates.io's field order and omission rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexLine {
    pub name: String,
    pub vers: String,
    pub deps: Vec<IndexDep>,
    pub cksum: String,
    pub features: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features2: Option<BTreeMap<String, Vec<String>>>,
    pub yanked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubtime: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexDep {
    pub name: String,
    pub req: String,
    pub features: Vec<String>,
    pub optional: bool,
    pub default_features: bool,
    pub target: Option<String>,
    pub kind: String,
    /// `null`: this registry. Public dependencies keep the crates.io index URL cargo sent.
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// Splits cargo's publish body: u32 LE JSON length, JSON, u32 LE crate length, crate.
pub fn parse_body(body: &Bytes, limits: &Limits) -> Result<(NewCrate, Bytes), PublishError> {
    let read_len = |at: usize| -> Result<u64, PublishError> {
        body.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
            .ok_or_else(|| PublishError::Malformed("the body ends early".into()))
    };
    let json_len = read_len(0)?;
    if json_len > limits.max_json {
        return Err(PublishError::TooLarge(format!(
            "publish metadata is {json_len} bytes, over the {} byte limit",
            limits.max_json
        )));
    }
    let json_end = 4 + json_len as usize;
    let json = body
        .get(4..json_end)
        .ok_or_else(|| PublishError::Malformed("metadata length exceeds the body".into()))?;
    let crate_len = read_len(json_end)?;
    if crate_len > limits.max_crate {
        return Err(PublishError::TooLarge(format!(
            "the .crate is {crate_len} bytes, over this registry's limit of {} bytes (max_crate_size)",
            limits.max_crate
        )));
    }
    let start = json_end + 4;
    let end = start + crate_len as usize;
    if body.len() != end {
        return Err(PublishError::Malformed(format!(
            "the .crate length field says {crate_len} bytes but {} follow",
            body.len().saturating_sub(start)
        )));
    }
    let meta: NewCrate = serde_json::from_slice(json)
        .map_err(|e| PublishError::Malformed(format!("metadata is not valid JSON: {e}")))?;
    Ok((meta, body.slice(start..end)))
}

/// Builds a publish body (what cargo sends; used by `wharf push` and tests).
pub fn encode_body(meta: &NewCrate, tarball: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + json.len() + tarball.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(tarball.len() as u32).to_le_bytes());
    out.extend_from_slice(tarball);
    out
}

fn invalid(msg: impl Into<String>) -> PublishError {
    PublishError::Invalid(msg.into())
}

/// Checks the metadata alone: names, version, dependencies, rust-version.
pub fn validate_meta(m: &NewCrate) -> Result<semver::Version, PublishError> {
    tame_index::KrateName::crates_io(&m.name)
        .map_err(|e| invalid(format!("invalid crate name `{}`: {e}", m.name)))?;
    if m.vers.len() > crate::index::MAX_VERSION_LEN {
        return Err(invalid("the version is longer than 150 characters"));
    }
    let vers = semver::Version::parse(&m.vers)
        .map_err(|e| invalid(format!("`{}` is not a valid semver version: {e}", m.vers)))?;
    for d in &m.deps {
        tame_index::KrateName::cargo(&d.name)
            .map_err(|e| invalid(format!("invalid dependency name `{}`: {e}", d.name)))?;
        if let Some(alias) = &d.explicit_name_in_toml {
            tame_index::KrateName::cargo(alias)
                .map_err(|e| invalid(format!("invalid dependency rename `{alias}`: {e}")))?;
        }
        semver::VersionReq::parse(&d.version_req).map_err(|e| {
            invalid(format!(
                "dependency `{}` has an invalid version requirement `{}`: {e}",
                d.name, d.version_req
            ))
        })?;
        if let Some(k) = &d.kind
            && !matches!(k.as_str(), "normal" | "dev" | "build")
        {
            return Err(invalid(format!(
                "dependency `{}` has an unknown kind `{k}`",
                d.name
            )));
        }
    }
    if let Some(rv) = &m.rust_version {
        let ok = {
            let parts: Vec<&str> = rv.split('.').collect();
            (2..=3).contains(&parts.len())
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if !ok {
            return Err(invalid(format!(
                "rust_version `{rv}` is not a bare version such as `1.70`"
            )));
        }
    }
    Ok(vers)
}

/// What the tarball check found.
#[derive(Debug)]
pub struct TarballInfo {
    /// The raw `Cargo.toml` inside the tarball.
    pub manifest: String,
}

/// Reads the tarball (bounded) and checks it like crates.io: every entry under
/// `name-version/`, UTF-8 paths, no `..`, regular files and directories only, exactly one
/// `Cargo.toml`, whose name and version match `name` and `vers`.
pub fn check_tarball(
    tarball: &[u8],
    name: &str,
    vers: &str,
    limits: &Limits,
) -> Result<TarballInfo, PublishError> {
    let prefix = format!("{name}-{vers}");
    let gz = flate2::read::GzDecoder::new(tarball);
    // One byte over the limit is enough to know it is over.
    let mut archive = tar::Archive::new(gz.take(limits.max_unpacked + 1));
    let bad = |e: std::io::Error| invalid(format!("the .crate is not a valid gzip'd tar: {e}"));
    let mut manifest = None;
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| invalid("the .crate has a path that is not UTF-8"))?
            .to_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(invalid(format!(
                "the .crate contains `{path}`, which is not a regular file or directory (links and devices are refused)"
            )));
        }
        let mut comps = path.split('/').filter(|c| !c.is_empty() && *c != ".");
        if comps.next() != Some(prefix.as_str()) || path.starts_with('/') {
            return Err(invalid(format!(
                "the .crate contains `{path}`, outside of `{prefix}/`"
            )));
        }
        let rest: Vec<&str> = comps.collect();
        if rest.iter().any(|c| *c == ".." || c.contains('\\')) {
            return Err(invalid(format!(
                "the .crate contains `{path}`, which escapes `{prefix}/`"
            )));
        }
        total = total.saturating_add(entry.size());
        if total > limits.max_unpacked {
            return Err(PublishError::TooLarge(format!(
                "the .crate unpacks to more than {} bytes",
                limits.max_unpacked
            )));
        }
        if rest.len() == 1 && rest[0].eq_ignore_ascii_case("cargo.toml") {
            if manifest.is_some() {
                return Err(invalid("the .crate contains more than one Cargo.toml"));
            }
            if !(rest[0] == "Cargo.toml" || rest[0] == "cargo.toml") || !kind.is_file() {
                return Err(invalid(format!(
                    "the .crate's manifest is named `{}`; expected `Cargo.toml`",
                    rest[0]
                )));
            }
            let mut text = String::new();
            (&mut entry)
                .take(limits.max_json * 4)
                .read_to_string(&mut text)
                .map_err(|e| invalid(format!("Cargo.toml is not readable UTF-8: {e}")))?;
            manifest = Some(text);
        } else {
            // Read through, so the unpacked-size guard sees real bytes (a lying header
            // cannot hide a bomb).
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(bad)?;
        }
    }
    let manifest =
        manifest.ok_or_else(|| invalid(format!("the .crate has no `{prefix}/Cargo.toml`")))?;
    let (m_name, m_vers) = manifest_name_version(&manifest)?;
    if m_name != name || m_vers != vers {
        return Err(invalid(format!(
            "the metadata says `{name}` {vers} but the .crate's Cargo.toml says `{m_name}` {m_vers}"
        )));
    }
    Ok(TarballInfo { manifest })
}

/// The `Cargo.toml` at `<dir>/Cargo.toml` of a `.crate`, without knowing its name first
/// (`wharf push`); the server still runs the full `check_tarball`.
pub fn read_manifest(tarball: &[u8], limits: &Limits) -> Result<String, PublishError> {
    let gz = flate2::read::GzDecoder::new(tarball);
    let mut archive = tar::Archive::new(gz.take(limits.max_unpacked + 1));
    let bad = |e: std::io::Error| invalid(format!("not a valid .crate (gzip'd tar): {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path_bytes().into_owned();
        let parts: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() == 2 && parts[1] == b"Cargo.toml" {
            let mut text = String::new();
            (&mut entry)
                .take(limits.max_json * 4)
                .read_to_string(&mut text)
                .map_err(|e| invalid(format!("Cargo.toml is not readable UTF-8: {e}")))?;
            return Ok(text);
        }
    }
    Err(invalid("the .crate has no Cargo.toml"))
}

fn manifest_name_version(manifest: &str) -> Result<(String, String), PublishError> {
    let v: toml::Table = toml::from_str(manifest)
        .map_err(|e| invalid(format!("the .crate's Cargo.toml is not valid TOML: {e}")))?;
    let pkg = v
        .get("package")
        .and_then(|p| p.as_table())
        .ok_or_else(|| invalid("the .crate's Cargo.toml has no [package]"))?;
    let get = |k: &str| {
        pkg.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("the .crate's Cargo.toml has no package.{k}")))
    };
    Ok((get("name")?, get("version")?))
}

/// Converts publish metadata to the index line crates.io would write.
pub fn to_index_line(m: &NewCrate, cksum: &str, pubtime: &str) -> IndexLine {
    let deps = m
        .deps
        .iter()
        .map(|d| {
            let (name, package) = match &d.explicit_name_in_toml {
                Some(alias) => (alias.clone(), Some(d.name.clone())),
                None => (d.name.clone(), None),
            };
            IndexDep {
                name,
                req: d.version_req.clone(),
                features: d
                    .features
                    .iter()
                    .filter(|f| !f.is_empty())
                    .cloned()
                    .collect(),
                optional: d.optional,
                default_features: d.default_features,
                target: d.target.clone(),
                kind: d.kind.clone().unwrap_or_else(|| "normal".into()),
                registry: d.registry.clone(),
                package,
            }
        })
        .collect();
    let (features, features2) = split_features(&m.features);
    IndexLine {
        name: m.name.clone(),
        vers: m.vers.clone(),
        deps,
        cksum: cksum.to_owned(),
        features,
        v: features2.as_ref().map(|_| 2),
        features2,
        yanked: false,
        links: m.links.clone(),
        rust_version: m.rust_version.clone(),
        pubtime: Some(pubtime.to_owned()),
    }
}

type FeatureMap = BTreeMap<String, Vec<String>>;

/// crates.io's split: features using `dep:` or `?/` syntax, and every feature enabling one
/// of those (transitively), go to `features2` (read by cargo >= 1.60, with `v: 2`).
pub fn split_features(all: &FeatureMap) -> (FeatureMap, Option<FeatureMap>) {
    let mut new_syntax: BTreeSet<&str> = all
        .iter()
        .filter(|(_, vals)| {
            vals.iter()
                .any(|v| v.starts_with("dep:") || v.contains("?/"))
        })
        .map(|(k, _)| k.as_str())
        .collect();
    loop {
        let more: Vec<&str> = all
            .iter()
            .filter(|(k, vals)| {
                !new_syntax.contains(k.as_str())
                    && vals.iter().any(|v| new_syntax.contains(v.as_str()))
            })
            .map(|(k, _)| k.as_str())
            .collect();
        if more.is_empty() {
            break;
        }
        new_syntax.extend(more);
    }
    let (f2, f1): (FeatureMap, FeatureMap) = all
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| new_syntax.contains(k.as_str()));
    (f1, (!f2.is_empty()).then_some(f2))
}

/// Index timestamps: `YYYY-MM-DDTHH:MM:SSZ`, exactly as cargo 1.94+ requires.
pub fn pubtime(now: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar entry for crafted tarballs.
    pub enum Entry<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        /// A raw name written into the header bytes, bypassing the tar crate's checks.
        RawName(&'a [u8], &'a [u8]),
    }

    pub fn tarball(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                Entry::File(p, data) => {
                    h.set_size(data.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    set_raw_name(&mut h, p.as_bytes());
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
                Entry::RawName(p, data) => {
                    h.set_size(data.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    set_raw_name(&mut h, p);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
                Entry::Dir(p) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    set_raw_name(&mut h, p.as_bytes());
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
                Entry::Symlink(p, target) | Entry::HardLink(p, target) => {
                    h.set_size(0);
                    h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    set_raw_name(&mut h, p.as_bytes());
                    h.set_link_name(target).unwrap();
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
            }
        }
        gzip(&b.into_inner().unwrap())
    }

    fn set_raw_name(h: &mut tar::Header, name: &[u8]) {
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    pub fn manifest(name: &str, vers: &str) -> Vec<u8> {
        format!("[package]\nname = \"{name}\"\nversion = \"{vers}\"\nedition = \"2021\"\n")
            .into_bytes()
    }

    fn meta(name: &str, vers: &str) -> NewCrate {
        serde_json::from_value(serde_json::json!({"name": name, "vers": vers, "deps": []})).unwrap()
    }

    fn check(t: &[u8]) -> Result<TarballInfo, PublishError> {
        check_tarball(t, "foo", "1.0.0", &Limits::default())
    }

    fn good() -> Vec<u8> {
        tarball(&[
            Entry::Dir("foo-1.0.0/"),
            Entry::File("foo-1.0.0/Cargo.toml", &manifest("foo", "1.0.0")),
            Entry::File("foo-1.0.0/src/lib.rs", b"pub fn f() {}"),
        ])
    }

    fn err_text(r: Result<TarballInfo, PublishError>) -> String {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_tarball_passes() {
        let info = check(&good()).unwrap();
        assert!(info.manifest.contains("name = \"foo\""));
    }

    #[test]
    fn tar_slip_is_refused() {
        let m = manifest("foo", "1.0.0");
        for path in [
            "foo-1.0.0/../../etc/passwd",
            "foo-1.0.0/src/../../x",
            "other-1.0.0/x.rs",
            "/foo-1.0.0/abs",
            "x.rs",
        ] {
            let t = tarball(&[
                Entry::File("foo-1.0.0/Cargo.toml", &m),
                Entry::File(path, b"x"),
            ]);
            let e = err_text(check(&t));
            assert!(
                e.contains("outside") || e.contains("escapes"),
                "{path}: {e}"
            );
        }
    }

    #[test]
    fn links_and_devices_are_refused() {
        let m = manifest("foo", "1.0.0");
        for e in [
            Entry::Symlink("foo-1.0.0/link", "/etc/passwd"),
            Entry::HardLink("foo-1.0.0/hard", "/etc/passwd"),
        ] {
            let t = tarball(&[Entry::File("foo-1.0.0/Cargo.toml", &m), e]);
            assert!(err_text(check(&t)).contains("not a regular file"));
        }
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        let m = manifest("foo", "1.0.0");
        let t = tarball(&[
            Entry::File("foo-1.0.0/Cargo.toml", &m),
            Entry::RawName(b"foo-1.0.0/\xff\xfe.rs", b"x"),
        ]);
        assert!(err_text(check(&t)).contains("UTF-8"));
    }

    #[test]
    fn manifest_rules() {
        // Missing.
        let t = tarball(&[Entry::File("foo-1.0.0/src/lib.rs", b"")]);
        assert!(err_text(check(&t)).contains("no `foo-1.0.0/Cargo.toml`"));
        // Two of them (different case).
        let m = manifest("foo", "1.0.0");
        let t = tarball(&[
            Entry::File("foo-1.0.0/Cargo.toml", &m),
            Entry::File("foo-1.0.0/cargo.toml", &m),
        ]);
        assert!(err_text(check(&t)).contains("more than one"));
        // Odd case.
        let t = tarball(&[Entry::File("foo-1.0.0/CARGO.TOML", &m)]);
        assert!(err_text(check(&t)).contains("expected `Cargo.toml`"));
        // Mismatching name or version.
        for (n, v) in [("bar", "1.0.0"), ("foo", "2.0.0")] {
            let t = tarball(&[Entry::File("foo-1.0.0/Cargo.toml", &manifest(n, v))]);
            assert!(err_text(check(&t)).contains("Cargo.toml says"), "{n} {v}");
        }
        // Not TOML.
        let t = tarball(&[Entry::File("foo-1.0.0/Cargo.toml", b"[package")]);
        assert!(err_text(check(&t)).contains("not valid TOML"));
    }

    #[test]
    fn garbage_and_gzip_bombs_are_refused() {
        assert!(err_text(check(b"definitely not gzip")).contains("not a valid"));
        // 64 MiB of zeros compresses to ~64 KiB.
        let m = manifest("foo", "1.0.0");
        let zeros = vec![0u8; 64 << 20];
        let t = tarball(&[
            Entry::File("foo-1.0.0/Cargo.toml", &m),
            Entry::File("foo-1.0.0/big", &zeros),
        ]);
        assert!(t.len() < 1 << 20);
        let small = Limits {
            max_unpacked: 8 << 20,
            ..Limits::default()
        };
        let e = check_tarball(&t, "foo", "1.0.0", &small).unwrap_err();
        assert!(matches!(e, PublishError::TooLarge(_)), "{e}");
    }

    #[test]
    fn body_parsing() {
        let lim = Limits::default();
        let t = good();
        let body = Bytes::from(encode_body(&meta("foo", "1.0.0"), &t));
        let (m, tb) = parse_body(&body, &lim).unwrap();
        assert_eq!(m.name, "foo");
        assert_eq!(&tb[..], &t[..]);
        // Truncated, trailing junk, lying lengths.
        assert!(parse_body(&body.slice(..body.len() - 1), &lim).is_err());
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(parse_body(&Bytes::from(longer), &lim).is_err());
        assert!(parse_body(&Bytes::from_static(b"\x01\x00"), &lim).is_err());
        let mut lie = body.to_vec();
        lie[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_body(&Bytes::from(lie), &lim),
            Err(PublishError::TooLarge(_))
        ));
        // Over the crate size limit.
        let tiny = Limits {
            max_crate: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_body(&body, &tiny),
            Err(PublishError::TooLarge(m)) if m.contains("max_crate_size")
        ));
        // Bad JSON.
        let bad = Bytes::from([&2u32.to_le_bytes()[..], b"{]", &0u32.to_le_bytes()[..]].concat());
        assert!(matches!(
            parse_body(&bad, &lim),
            Err(PublishError::Malformed(_))
        ));
    }

    #[test]
    fn metadata_validation() {
        assert!(validate_meta(&meta("foo", "1.0.0")).is_ok());
        for (n, v) in [
            ("9foo", "1.0.0"),
            ("foo.bar", "1.0.0"),
            ("nul", "1.0.0"),
            ("", "1.0.0"),
            (&"a".repeat(65), "1.0.0"),
            ("foo", "1.0"),
            ("foo", "latest"),
        ] {
            assert!(validate_meta(&meta(n, v)).is_err(), "{n} {v}");
        }
        let mut m = meta("foo", "1.0.0");
        m.deps = vec![
            serde_json::from_value(serde_json::json!({"name": "bar", "version_req": ">>1"}))
                .unwrap(),
        ];
        assert!(
            validate_meta(&m)
                .unwrap_err()
                .to_string()
                .contains("version requirement")
        );
        let mut m = meta("foo", "1.0.0");
        m.rust_version = Some(">=1.70".into());
        assert!(validate_meta(&m).is_err());
        m.rust_version = Some("1.70".into());
        assert!(validate_meta(&m).is_ok());
    }

    #[test]
    fn index_line_conversion_matches_crates_io() {
        let m: NewCrate = serde_json::from_value(serde_json::json!({
            "name": "foo", "vers": "1.2.3",
            "deps": [
                {"name": "serde", "version_req": "^1.0", "features": ["derive", ""],
                 "optional": true, "default_features": false, "target": null, "kind": "normal",
                 "registry": tame_index::CRATES_IO_INDEX},
                {"name": "real-name", "version_req": "^0.1", "explicit_name_in_toml": "alias",
                 "kind": "dev"},
            ],
            "features": {"default": ["std"], "std": [], "json": ["dep:serde"], "all": ["json"]},
            "links": "z", "rust_version": "1.70",
            "description": "dropped from the index",
        }))
        .unwrap();
        let line = to_index_line(&m, &"a".repeat(64), "2026-11-25T02:00:00Z");
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["deps"][0]["req"], "^1.0");
        assert_eq!(v["deps"][0]["features"], serde_json::json!(["derive"]));
        assert_eq!(v["deps"][0]["registry"], tame_index::CRATES_IO_INDEX);
        assert_eq!(v["deps"][0]["optional"], true);
        assert_eq!(v["deps"][0]["default_features"], false);
        assert!(v["deps"][0].get("package").is_none());
        assert_eq!(v["deps"][1]["name"], "alias");
        assert_eq!(v["deps"][1]["package"], "real-name");
        assert_eq!(v["deps"][1]["kind"], "dev");
        assert_eq!(v["deps"][1]["registry"], serde_json::Value::Null);
        assert_eq!(
            v["features"],
            serde_json::json!({"default": ["std"], "std": []})
        );
        assert_eq!(
            v["features2"],
            serde_json::json!({"json": ["dep:serde"], "all": ["json"]})
        );
        assert_eq!(v["v"], 2);
        assert_eq!(v["links"], "z");
        assert_eq!(v["rust_version"], "1.70");
        assert_eq!(v["pubtime"], "2026-11-25T02:00:00Z");
        assert_eq!(v["yanked"], false);
        assert!(v.get("description").is_none());
        // tame-index (cargo's types) reads the line back.
        let text = serde_json::to_string(&line).unwrap();
        let parsed: tame_index::IndexVersion = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.version, "1.2.3");
    }

    #[test]
    fn plain_features_stay_v1() {
        let mut f = FeatureMap::new();
        f.insert("a".into(), vec!["b".into()]);
        f.insert("b".into(), vec![]);
        let (f1, f2) = split_features(&f);
        assert_eq!(f1.len(), 2);
        assert!(f2.is_none());
    }

    #[test]
    fn pubtime_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_036_000);
        let s = pubtime(t);
        assert_eq!(s.len(), 20);
        assert!(s.ends_with('Z') && s.contains('T'));
    }
}
