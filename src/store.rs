//! Bytes at rest, behind one small async trait so the local filesystem can later be joined
//! by an object store. Keys are typed and never assume a local path; every write is atomic
//! (readers see the old object or the new one, never a partial one).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::index::CrateName;

/// A store key: a relative, `/`-separated name built only from validated parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// A cached upstream index file: `index-v1/se/rd/serde`.
    pub fn index(name: &CrateName) -> Self {
        Self(format!("index-v1/{}", name.index_path()))
    }

    /// A cached `.crate`: `crates-v1/se/rd/serde/serde-1.0.0.crate`. `version` must have
    /// passed `index::parse_download` (semver never contains `/` or starts with `.`).
    pub fn krate(name: &CrateName, version: &str) -> Self {
        Self(format!(
            "crates-v1/{}/{}-{version}.crate",
            name.index_path(),
            name.lower()
        ))
    }

    /// A private crate's index file: `private-v1/index/se/rd/serde` (plain index lines).
    pub fn private_index(name: &CrateName) -> Self {
        Self(format!("private-v1/index/{}", name.index_path()))
    }

    /// A private crate's owners and description: `private-v1/crates/se/rd/serde.json`.
    pub fn private_meta(name: &CrateName) -> Self {
        Self(format!("private-v1/crates/{}.json", name.index_path()))
    }

    /// A published `.crate`, content-addressed: `private-v1/blobs/ab/<sha256>.crate`.
    /// `cksum` must be lower-case hex (checked by `index::is_sha256_hex`).
    pub fn private_blob(cksum: &str) -> Self {
        Self(format!("private-v1/blobs/{}/{cksum}.crate", &cksum[..2]))
    }

    /// Canonical-name claim (`lower(name)` with `-` as `_`) -> the name as published.
    pub fn private_name(canonical: &str) -> Self {
        Self(format!("private-v1/names/{canonical}"))
    }

    pub const PRIVATE_NAMES_PREFIX: &'static str = "private-v1/names/";

    /// Small documents wharf keeps about itself, e.g. the upstream's config.json.
    pub fn meta(name: &'static str) -> Self {
        Self(format!("meta-v1/{name}"))
    }

    /// A key from parts already validated by the caller (e.g. a quarantine copy of an
    /// existing key).
    pub(crate) fn raw(k: String) -> Self {
        Self(k)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object as read, with a version tag for conditional replacement.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Bytes,
    /// Opaque; changes whenever the object is replaced (an ETag on object stores).
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cause is part of the message: store errors end up in log lines and client
    /// messages, not in anyhow chains.
    #[error("storage I/O failed for {key}: {err}")]
    Io { key: String, err: std::io::Error },
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &Key) -> Result<Option<Object>, StoreError>;
    /// Creates or replaces the object atomically.
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<(), StoreError>;
    /// Creates the object only if absent; returns false when it already existed.
    async fn put_if_absent(&self, key: &Key, bytes: Bytes) -> Result<bool, StoreError>;
    /// Replaces the object only if its current version is `expected` (`None`: only if
    /// absent). Returns false, writing nothing, when someone else changed it first.
    async fn replace_if(
        &self,
        key: &Key,
        expected: Option<&str>,
        bytes: Bytes,
    ) -> Result<bool, StoreError>;
    /// Returns false when there was nothing to delete.
    async fn delete(&self, key: &Key) -> Result<bool, StoreError>;
    /// Every key under `prefix` (e.g. `crates-v1/`) with its size in bytes, in no
    /// particular order.
    async fn list_sized(&self, prefix: &str) -> Result<Vec<(Key, u64)>, StoreError>;

    /// Every key under `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<Key>, StoreError> {
        Ok(self
            .list_sized(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}

/// Objects as files under a root directory. Writes go to a temp file in the target
/// directory, are fsynced, renamed into place, and the directory is fsynced, so a crash
/// leaves the old or the new complete file.
pub struct FsStore {
    root: PathBuf,
    /// Serialises `replace_if` per key (sharded, so unrelated keys rarely contend).
    shards: Arc<[Mutex<()>]>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            shards: (0..64).map(|_| Mutex::new(())).collect::<Vec<_>>().into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(&key.0)
    }

    fn shard_of(&self, key: &Key) -> usize {
        let h = key
            .0
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        h % self.shards.len()
    }

    async fn blocking<T: Send + 'static>(
        key: &Key,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let io = |err| StoreError::Io {
            key: key.0.clone(),
            err,
        };
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)
    }
}

fn version_of(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{mtime}", meta.len())
}

/// Objects at least this large are memory-mapped rather than copied into a new buffer on
/// every read (large crates served from disk cost no allocation).
const MMAP_THRESHOLD: u64 = 256 << 10;

fn read_object(path: &Path) -> std::io::Result<Option<Object>> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    let bytes = if meta.len() >= MMAP_THRESHOLD {
        // SAFETY: files in the store are never modified or truncated in place: every write
        // creates a new file and renames (or links) it over the old name, and deletion
        // only unlinks. A mapping therefore always sees the complete, unchanging bytes of
        // the inode it mapped, which stays alive until the mapping is dropped.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        Bytes::from_owner(map)
    } else {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut buf)?;
        Bytes::from(buf)
    };
    Ok(Some(Object {
        bytes,
        version: version_of(&meta),
    }))
}

/// Writes `bytes` to a fresh temp file beside `dest` and fsyncs it.
fn write_temp(dest: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match res {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_dir(dest: &Path) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn atomic_put(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(dest, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dest)
}

fn atomic_create(dest: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let tmp = write_temp(dest, bytes)?;
    // link(2) fails if `dest` exists: an atomic create-if-absent that never exposes a
    // partial file.
    let res = std::fs::hard_link(&tmp, dest);
    let _ = std::fs::remove_file(&tmp);
    match res {
        Ok(()) => sync_dir(dest).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Store for FsStore {
    async fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let path = self.path(key);
        Self::blocking(key, move || read_object(&path)).await
    }

    async fn put(&self, key: &Key, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        Self::blocking(key, move || atomic_put(&path, &bytes)).await
    }

    async fn put_if_absent(&self, key: &Key, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key);
        Self::blocking(key, move || atomic_create(&path, &bytes)).await
    }

    async fn replace_if(
        &self,
        key: &Key,
        expected: Option<&str>,
        bytes: Bytes,
    ) -> Result<bool, StoreError> {
        let path = self.path(key);
        let expected = expected.map(str::to_owned);
        // The shard lock is held only inside the blocking task, never across an await.
        let (shards, idx) = (self.shards.clone(), self.shard_of(key));
        Self::blocking(key, move || {
            let _g = shards[idx].lock().unwrap_or_else(|p| p.into_inner());
            let current = match std::fs::metadata(&path) {
                Ok(m) => Some(version_of(&m)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if current.as_deref() != expected.as_deref() {
                return Ok(false);
            }
            atomic_put(&path, &bytes).map(|()| true)
        })
        .await
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        let path = self.path(key);
        Self::blocking(key, move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    async fn list_sized(&self, prefix: &str) -> Result<Vec<(Key, u64)>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.trim_end_matches('/').to_owned();
        let key = Key(prefix.clone());
        Self::blocking(&key, move || {
            let mut out = Vec::new();
            let mut stack = vec![root.join(&prefix)];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for ent in rd {
                    let ent = ent?;
                    let name = ent.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with('.') {
                        continue; // temp files
                    }
                    if ent.file_type()?.is_dir() {
                        stack.push(ent.path());
                    } else if let Ok(rel) = ent.path().strip_prefix(&root)
                        && let Some(rel) = rel.to_str()
                    {
                        let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                        out.push((Key(rel.replace(std::path::MAIN_SEPARATOR, "/")), size));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> CrateName {
        CrateName::parse(s).unwrap()
    }

    #[test]
    fn keys_are_laid_out_by_prefix() {
        assert_eq!(Key::index(&name("Serde")).as_str(), "index-v1/se/rd/serde");
        assert_eq!(
            Key::krate(&name("Serde"), "1.0.0+x").as_str(),
            "crates-v1/se/rd/serde/serde-1.0.0+x.crate"
        );
        assert_eq!(
            Key::krate(&name("a"), "0.1.0").as_str(),
            "crates-v1/1/a/a-0.1.0.crate"
        );
    }

    #[tokio::test]
    async fn fs_store_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path());
        let k = Key::krate(&name("foo"), "1.0.0");
        assert!(s.get(&k).await.unwrap().is_none());
        assert!(
            s.put_if_absent(&k, Bytes::from_static(b"one"))
                .await
                .unwrap()
        );
        assert!(
            !s.put_if_absent(&k, Bytes::from_static(b"two"))
                .await
                .unwrap()
        );
        let o = s.get(&k).await.unwrap().unwrap();
        assert_eq!(&o.bytes[..], b"one");

        // Conditional replace: wrong version refused, right version accepted.
        assert!(
            !s.replace_if(&k, Some("nope"), Bytes::from_static(b"x"))
                .await
                .unwrap()
        );
        assert!(
            !s.replace_if(&k, None, Bytes::from_static(b"x"))
                .await
                .unwrap()
        );
        assert!(
            s.replace_if(&k, Some(&o.version), Bytes::from_static(b"three!"))
                .await
                .unwrap()
        );
        assert_eq!(&s.get(&k).await.unwrap().unwrap().bytes[..], b"three!");
        let k2 = Key::index(&name("bar"));
        assert!(
            s.replace_if(&k2, None, Bytes::from_static(b"new"))
                .await
                .unwrap()
        );

        s.put(&k2, Bytes::from_static(b"replaced")).await.unwrap();
        // Large objects (memory-mapped) read back exactly, and survive replacement.
        let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let kb = Key::krate(&name("big"), "1.0.0");
        s.put(&kb, Bytes::from(big.clone())).await.unwrap();
        let held = s.get(&kb).await.unwrap().unwrap().bytes;
        s.put(&kb, Bytes::from_static(b"small now")).await.unwrap();
        assert_eq!(&held[..], &big[..], "a mapping changed under its reader");
        assert_eq!(&s.get(&kb).await.unwrap().unwrap().bytes[..], b"small now");
        assert!(s.delete(&kb).await.unwrap());
        assert_eq!(held.len(), big.len());
        let mut keys: Vec<String> = s.list("").await.unwrap().into_iter().map(|k| k.0).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["crates-v1/3/f/foo/foo-1.0.0.crate", "index-v1/3/b/bar"]
        );
        assert_eq!(s.list("crates-v1/").await.unwrap().len(), 1);
        assert!(s.delete(&k).await.unwrap());
        assert!(!s.delete(&k).await.unwrap());
        // No temp files are left behind.
        let leftovers = walk(dir.path());
        assert!(
            leftovers.iter().all(|p| !p.contains(".tmp.")),
            "{leftovers:?}"
        );
    }

    fn walk(p: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                v.extend(walk(&e.path()));
            } else {
                v.push(e.path().display().to_string());
            }
        }
        v
    }
}
