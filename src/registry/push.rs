//! `wharf push`: publish metadata rebuilt from the normalized Cargo.toml inside a `.crate`
//! (as cargo would have sent it), so artifacts built elsewhere go through the normal
//! publish API. Pure: reading the file and the HTTP request live in the CLI.

use std::collections::BTreeMap;

use super::publish::{NewCrate, NewDep};

/// Builds `NewCrate` from a packaged manifest. `own_index` is this registry's index URL:
/// dependencies from it get no `registry` (same registry); dependencies without
/// `registry-index` are crates.io dependencies.
pub fn metadata_from_manifest(manifest: &str, own_index: &str) -> Result<NewCrate, String> {
    let doc: toml::Table =
        toml::from_str(manifest).map_err(|e| format!("Cargo.toml is not valid TOML: {e}"))?;
    let pkg = doc
        .get("package")
        .and_then(|p| p.as_table())
        .ok_or("Cargo.toml has no [package]")?;
    let s = |k: &str| pkg.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let list = |k: &str| -> Vec<String> {
        pkg.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = s("name").ok_or("Cargo.toml has no package.name")?;
    let vers = s("version").ok_or("Cargo.toml has no package.version")?;

    let mut deps = Vec::new();
    let mut add_table =
        |t: Option<&toml::Value>, kind: &str, target: Option<&str>| -> Result<(), String> {
            let Some(t) = t.and_then(|v| v.as_table()) else {
                return Ok(());
            };
            for (key, spec) in t {
                deps.push(dep_from_spec(key, spec, kind, target, own_index)?);
            }
            Ok(())
        };
    for (section, kind) in [
        ("dependencies", "normal"),
        ("dev-dependencies", "dev"),
        ("build-dependencies", "build"),
    ] {
        add_table(doc.get(section), kind, None)?;
    }
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for (cfg, t) in targets {
            for (section, kind) in [
                ("dependencies", "normal"),
                ("dev-dependencies", "dev"),
                ("build-dependencies", "build"),
            ] {
                add_table(t.get(section), kind, Some(cfg))?;
            }
        }
    }

    let features: BTreeMap<String, Vec<String>> = doc
        .get("features")
        .and_then(|f| f.as_table())
        .map(|t| {
            t.iter()
                .map(|(k, v)| {
                    let vals = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (k.clone(), vals)
                })
                .collect()
        })
        .unwrap_or_default();

    Ok(NewCrate {
        name,
        vers,
        deps,
        features,
        authors: list("authors"),
        description: s("description"),
        documentation: s("documentation"),
        homepage: s("homepage"),
        readme: None,
        readme_file: s("readme"),
        keywords: list("keywords"),
        categories: list("categories"),
        license: s("license"),
        license_file: s("license-file"),
        repository: s("repository"),
        links: s("links"),
        rust_version: s("rust-version"),
    })
}

fn same_index(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        u.trim_start_matches("sparse+")
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

fn dep_from_spec(
    key: &str,
    spec: &toml::Value,
    kind: &str,
    target: Option<&str>,
    own_index: &str,
) -> Result<NewDep, String> {
    let (req, t) = match spec {
        toml::Value::String(req) => (req.clone(), None),
        toml::Value::Table(t) => (
            t.get("version")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("dependency `{key}` has no version (path or git dependencies cannot be published)"))?
                .to_owned(),
            Some(t),
        ),
        _ => return Err(format!("dependency `{key}` is neither a string nor a table")),
    };
    let get_bool = |k: &str, default: bool| {
        t.and_then(|t| t.get(k))
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    };
    let package = t.and_then(|t| t.get("package")).and_then(|v| v.as_str());
    let registry_index = t
        .and_then(|t| t.get("registry-index"))
        .and_then(|v| v.as_str());
    let registry = match registry_index {
        None => Some(tame_index::CRATES_IO_INDEX.to_owned()),
        Some(r) if same_index(r, own_index) => None,
        Some(r) => Some(r.to_owned()),
    };
    Ok(NewDep {
        name: package.unwrap_or(key).to_owned(),
        version_req: req,
        features: t
            .and_then(|t| t.get("features"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        optional: get_bool("optional", false),
        default_features: get_bool("default-features", get_bool("default_features", true)),
        target: target.map(str::to_owned),
        kind: Some(kind.to_owned()),
        registry,
        explicit_name_in_toml: package.map(|_| key.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_manifest_to_metadata() {
        let own = "sparse+http://w:8080/private/index/";
        let m = metadata_from_manifest(
            r#"
            [package]
            name = "acme-tool"
            version = "0.3.0"
            description = "internal tool"
            license = "MIT"
            rust-version = "1.70"

            [dependencies]
            serde = { version = "1.0", features = ["derive"], default-features = false }
            json = { version = "^1", package = "serde_json", optional = true }
            acme-util = { version = "0.1", registry-index = "http://w:8080/private/index" }
            other = { version = "2", registry-index = "sparse+https://elsewhere/index/" }
            plain = "3"

            [dev-dependencies]
            tempdir = "0.3"

            [target.'cfg(unix)'.dependencies]
            libc = "0.2"

            [features]
            default = ["json"]
            "#,
            own,
        )
        .unwrap();
        assert_eq!((m.name.as_str(), m.vers.as_str()), ("acme-tool", "0.3.0"));
        assert_eq!(m.description.as_deref(), Some("internal tool"));
        assert_eq!(m.rust_version.as_deref(), Some("1.70"));
        let d = |n: &str| m.deps.iter().find(|d| d.name == n).unwrap();
        assert_eq!(
            d("serde").registry.as_deref(),
            Some(tame_index::CRATES_IO_INDEX)
        );
        assert!(!d("serde").default_features);
        assert_eq!(d("serde").features, vec!["derive"]);
        assert_eq!(
            d("serde_json").explicit_name_in_toml.as_deref(),
            Some("json")
        );
        assert!(d("serde_json").optional);
        assert_eq!(d("acme-util").registry, None, "own registry must be null");
        assert_eq!(
            d("other").registry.as_deref(),
            Some("sparse+https://elsewhere/index/")
        );
        assert_eq!(d("plain").version_req, "3");
        assert_eq!(d("tempdir").kind.as_deref(), Some("dev"));
        assert_eq!(d("libc").target.as_deref(), Some("cfg(unix)"));
        assert_eq!(m.features["default"], vec!["json"]);
    }

    #[test]
    fn unpublishable_manifests() {
        assert!(metadata_from_manifest("[package]\nname = \"x\"", "u").is_err());
        assert!(
            metadata_from_manifest(
                "[package]\nname = \"x\"\nversion = \"1.0.0\"\n[dependencies]\ny = { path = \"../y\" }",
                "u"
            )
            .unwrap_err()
            .contains("no version")
        );
    }
}
