//! Air-gap bundles. `export` writes one tar holding what some lockfiles need, laid out as
//! a static sparse registry (`index/config.json`, `index/<path>` with upstream's bytes,
//! `crates/<name>/<name>-<version>.crate`) plus `manifest.json` with every file's sha256.
//! `import` reads the archive twice: the first pass verifies every file against the
//! manifest and every crate against its index checksum; only then does the second pass
//! write, so a tampered archive imports nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::index::{self, CrateName, IndexRequest};
use crate::ops::prefetch::Item;
use crate::record::{self, IndexMeta};
use crate::store::{Key, Store};

const FORMAT: &str = "wharf-export-v1";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// path in the archive -> lower-case hex sha256
    files: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(String),
    #[error("not cached, so not exported (run `wharf prefetch` first): {0}")]
    Missing(String),
    #[error("the archive is refused, nothing was imported: {0}")]
    Refused(String),
}

fn io(e: impl std::fmt::Display) -> BundleError {
    BundleError::Io(e.to_string())
}

pub struct ExportSummary {
    pub index_files: usize,
    pub crates: usize,
    pub bytes: u64,
}

/// Writes the archive for `items` (from `prefetch::plan`) to `out`, atomically.
pub async fn export(
    store: &dyn Store,
    items: &[Item],
    out: &Path,
    public_url: &str,
) -> Result<ExportSummary, BundleError> {
    let mut files: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut names: BTreeMap<String, CrateName> = BTreeMap::new();
    let wanted: BTreeSet<(String, String)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Mirror { name, version, .. } => Some((name.clone(), version.clone())),
            Item::Skip { .. } => None,
        })
        .collect();
    for (name, version) in &wanted {
        let cname = CrateName::parse(name).map_err(|e| BundleError::Io(e.to_string()))?;
        match store.get(&Key::krate(&cname, version)).await.map_err(io)? {
            Some(o) => {
                files.insert(format!("crates/{name}/{name}-{version}.crate"), o.bytes);
            }
            None => missing.push(format!("{name} {version}")),
        }
        names.insert(cname.lower(), cname);
    }
    for cname in names.values() {
        match store.get(&Key::index(cname)).await.map_err(io)? {
            Some(o) => {
                let (_, body) = record::decode_index(&o.bytes)
                    .map_err(|e| BundleError::Io(format!("index record of `{cname}`: {e}")))?;
                files.insert(format!("index/{}", cname.index_path()), body);
            }
            None => missing.push(format!("index file of `{cname}`")),
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::Missing(missing.join(", ")));
    }
    let url = public_url.trim_end_matches('/');
    let config =
        serde_json::json!({ "dl": format!("{url}/crates/{{crate}}/{{crate}}-{{version}}.crate") });
    files.insert(
        "index/config.json".into(),
        Bytes::from(format!("{config}\n")),
    );

    let manifest = Manifest {
        format: FORMAT.into(),
        files: files
            .iter()
            .map(|(p, b)| (p.clone(), index::sha256_hex(b)))
            .collect(),
    };
    let summary = ExportSummary {
        index_files: names.len(),
        crates: wanted.len(),
        bytes: files.values().map(|b| b.len() as u64).sum(),
    };
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write_tar(&out, &manifest, &files))
        .await
        .map_err(io)??;
    Ok(summary)
}

fn write_tar(
    out: &Path,
    manifest: &Manifest,
    files: &BTreeMap<String, Bytes>,
) -> Result<(), BundleError> {
    let tmp = out.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
    let mut add = |path: &str, data: &[u8]| -> Result<(), BundleError> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data).map_err(io)
    };
    let m = serde_json::to_vec_pretty(manifest).map_err(io)?;
    add(MANIFEST, &m)?;
    for (p, b) in files {
        add(p, b)?;
    }
    let mut w = tar.into_inner().map_err(io)?;
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)
}

/// What an archive path is.
enum Member {
    Manifest,
    Config,
    Index(CrateName),
    Crate(CrateName, String),
}

fn classify(path: &str) -> Result<Member, String> {
    if path == MANIFEST {
        return Ok(Member::Manifest);
    }
    if let Some(rest) = path.strip_prefix("index/") {
        return match index::parse_index_path(rest).map_err(|e| e.to_string())? {
            IndexRequest::Config => Ok(Member::Config),
            IndexRequest::Crate(n) => Ok(Member::Index(n)),
        };
    }
    if let Some(rest) = path.strip_prefix("crates/")
        && let Some((name, file)) = rest.split_once('/')
        && let Some(version) = file
            .strip_prefix(&format!("{name}-"))
            .and_then(|f| f.strip_suffix(".crate"))
    {
        let (n, v) = index::parse_download(name, version).map_err(|e| e.to_string())?;
        return Ok(Member::Crate(n, v));
    }
    Err(format!("unexpected file `{}`", path.escape_debug()))
}

fn entries(
    archive: &Path,
    mut f: impl FnMut(&str, Vec<u8>) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let file = std::fs::File::open(archive).map_err(io)?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let bad = |e: std::io::Error| BundleError::Refused(format!("not a valid tar archive: {e}"));
    for e in tar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        if !e.header().entry_type().is_file() {
            return Err(BundleError::Refused(
                "the archive holds something other than files".into(),
            ));
        }
        let path = String::from_utf8(e.path_bytes().into_owned())
            .map_err(|_| BundleError::Refused("a path is not UTF-8".into()))?;
        let mut data = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut data).map_err(bad)?;
        f(&path, data)?;
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub index_files: usize,
    pub index_kept: usize,
    pub crates: usize,
    pub crates_present: usize,
}

/// Verifies the whole archive, then writes it into `store` (atomic per file).
pub async fn import(
    store: &dyn Store,
    archive: &Path,
    now: std::time::SystemTime,
) -> Result<ImportSummary, BundleError> {
    let path = archive.to_path_buf();
    // Pass 1: hashes, paths, and crate checksums (only hashes are kept in memory).
    tokio::task::spawn_blocking(move || verify_archive(&path))
        .await
        .map_err(io)??;
    // Pass 2: read again and write each file as it comes.
    let path = archive.to_path_buf();
    let mut summary = ImportSummary::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Member, Vec<u8>)>(16);
    let reader = tokio::task::spawn_blocking(move || {
        entries(&path, |p, data| {
            if let m @ (Member::Index(_) | Member::Crate(..)) =
                classify(p).map_err(BundleError::Refused)?
            {
                tx.blocking_send((m, data)).map_err(io)?;
            }
            Ok(())
        })
    });
    while let Some((m, data)) = rx.recv().await {
        write_member(store, m, data, now, &mut summary).await?;
    }
    reader.await.map_err(io)??;
    Ok(summary)
}

fn versions(body: &[u8]) -> BTreeSet<String> {
    body.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v["vers"].as_str().map(str::to_owned))
        .collect()
}

async fn write_member(
    store: &dyn Store,
    m: Member,
    data: Vec<u8>,
    now: std::time::SystemTime,
    s: &mut ImportSummary,
) -> Result<(), BundleError> {
    match m {
        Member::Index(name) => {
            let key = Key::index(&name);
            // Keep a cached copy that already lists every version the archive has (it is
            // at least as new); otherwise the archive's copy wins.
            if let Some(o) = store.get(&key).await.map_err(io)?
                && let Ok((_, body)) = record::decode_index(&o.bytes)
                && versions(&data).is_subset(&versions(&body))
            {
                s.index_kept += 1;
                return Ok(());
            }
            let meta = IndexMeta {
                // Imported data counts as just fetched; an online wharf revalidates it once
                // `index_ttl` has passed, an offline one serves it as is.
                fetched_at: crate::policy::unix_secs(now),
                etag: index::etag_for(&data),
                upstream_etag: None,
                upstream_last_modified: None,
            };
            store
                .put(&key, record::encode_index(&meta, &data))
                .await
                .map_err(io)?;
            s.index_files += 1;
        }
        Member::Crate(name, version) => {
            if store
                .put_if_absent(&Key::krate(&name, &version), Bytes::from(data))
                .await
                .map_err(io)?
            {
                s.crates += 1;
            } else {
                s.crates_present += 1;
            }
        }
        Member::Manifest | Member::Config => {}
    }
    Ok(())
}

fn verify_archive(path: &Path) -> Result<(), BundleError> {
    let refuse = |m: String| BundleError::Refused(m);
    let mut manifest: Option<Manifest> = None;
    let mut seen: HashMap<String, String> = HashMap::new();
    // lower name -> version -> cksum, from the archive's index files
    let mut cksums: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut crates: Vec<(String, String, String, String)> = Vec::new(); // path, name, vers, sha
    entries(path, |p, data| {
        if seen.contains_key(p) {
            return Err(refuse(format!("`{p}` appears twice")));
        }
        let sha = index::sha256_hex(&data);
        match classify(p).map_err(refuse)? {
            Member::Manifest => {
                let m: Manifest = serde_json::from_slice(&data)
                    .map_err(|e| refuse(format!("manifest.json is not valid: {e}")))?;
                if m.format != FORMAT {
                    return Err(refuse(format!("unknown archive format `{}`", m.format)));
                }
                manifest = Some(m);
                return Ok(());
            }
            Member::Index(n) => {
                let mut vs = HashMap::new();
                for l in data.split(|b| *b == b'\n') {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(l)
                        && let (Some(ver), Some(ck)) = (v["vers"].as_str(), v["cksum"].as_str())
                    {
                        vs.insert(ver.to_owned(), ck.to_owned());
                    }
                }
                cksums.insert(n.lower(), vs);
            }
            Member::Crate(n, v) => crates.push((p.to_owned(), n.lower(), v, sha.clone())),
            Member::Config => {}
        }
        seen.insert(p.to_owned(), sha);
        Ok(())
    })?;
    let manifest = manifest.ok_or_else(|| refuse("manifest.json is missing".into()))?;
    for (p, sha) in &seen {
        match manifest.files.get(p) {
            None => return Err(refuse(format!("`{p}` is not listed in manifest.json"))),
            Some(want) if want != sha => {
                return Err(refuse(format!(
                    "`{p}` has sha256 {sha} but manifest.json says {want}"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(p) = manifest.files.keys().find(|p| !seen.contains_key(*p)) {
        return Err(refuse(format!(
            "`{p}` is listed in manifest.json but missing"
        )));
    }
    for (p, name, vers, sha) in &crates {
        match cksums.get(name).and_then(|m| m.get(vers)) {
            Some(ck) if ck == sha => {}
            Some(ck) => {
                return Err(refuse(format!(
                    "`{p}` has sha256 {sha} but its index line says {ck}"
                )));
            }
            None => return Err(refuse(format!("`{p}` has no index line in the archive"))),
        }
    }
    Ok(())
}
