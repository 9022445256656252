//! Keeping the store under `cache.max_size`: least-recently-used mirror crates go first.
//! Private crates, index files and pinned crates (`cache.pin` lockfiles) are never evicted.
//! Access times are wharf's own (`AccessLog`, flushed to the store), not filesystem atime,
//! which is often disabled (`noatime`) and does not exist in object stores.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::store::{Key, Store};

const ACCESS_KEY: &str = "access-v1.json";
const EVICTABLE_PREFIX: &str = "crates-v1/";

pub fn access_key() -> Key {
    Key::meta(ACCESS_KEY)
}

/// Last access (unix seconds) per store key of a cached crate, recorded on every serve.
/// Lock-free for the request path (moka's concurrent map); flushed to the store by the
/// background loop and at shutdown.
pub struct AccessLog {
    recent: moka::sync::Cache<String, u64>,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            recent: moka::sync::Cache::new(1 << 20),
        }
    }
}

impl AccessLog {
    pub fn touch(&self, key: &Key, now_secs: u64) {
        self.recent.insert(key.as_str().to_owned(), now_secs);
    }

    /// Merges the recent accesses into the stored log (newest time wins).
    pub async fn flush(&self, store: &dyn Store) -> Result<(), String> {
        if self.recent.entry_count() == 0 {
            self.recent.run_pending_tasks();
            if self.recent.entry_count() == 0 {
                return Ok(());
            }
        }
        for _ in 0..20 {
            let (mut map, version) = load(store).await?;
            for (k, t) in self.recent.iter() {
                let e = map.entry((*k).clone()).or_insert(0);
                *e = (*e).max(t);
            }
            let bytes = Bytes::from(serde_json::to_vec(&map).map_err(|e| e.to_string())?);
            if store
                .replace_if(&access_key(), version.as_deref(), bytes)
                .await
                .map_err(|e| e.to_string())?
            {
                self.recent.invalidate_all();
                return Ok(());
            }
        }
        Err("the access log kept changing; will retry".into())
    }
}

async fn load(store: &dyn Store) -> Result<(HashMap<String, u64>, Option<String>), String> {
    match store.get(&access_key()).await.map_err(|e| e.to_string())? {
        None => Ok((HashMap::new(), None)),
        Some(o) => Ok((
            // A damaged log only costs LRU precision: start over rather than stop gc.
            serde_json::from_slice(&o.bytes).unwrap_or_default(),
            Some(o.version),
        )),
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Bytes in the store before eviction.
    pub total: u64,
    pub limit: u64,
    /// Least recently used first.
    pub evict: Vec<(String, u64)>,
    pub freed: u64,
}

/// Chooses what to evict so that `total - freed <= limit`. Pure. Crates never accessed
/// (no entry in `access`) count as oldest.
pub fn plan(
    all: &[(String, u64)],
    access: &HashMap<String, u64>,
    pinned: &HashSet<String>,
    limit: u64,
) -> Plan {
    let total: u64 = all.iter().map(|(_, n)| n).sum();
    let mut p = Plan {
        total,
        limit,
        ..Plan::default()
    };
    if total <= limit {
        return p;
    }
    let mut candidates: Vec<&(String, u64)> = all
        .iter()
        .filter(|(k, _)| k.starts_with(EVICTABLE_PREFIX) && !pinned.contains(k))
        .collect();
    candidates.sort_by_key(|(k, _)| (access.get(k).copied().unwrap_or(0), k.clone()));
    for (k, n) in candidates {
        if total - p.freed <= limit {
            break;
        }
        p.evict.push((k.clone(), *n));
        p.freed += n;
    }
    p
}

/// Store keys of every crates.io package in `cache.pin` lockfiles.
pub fn pinned_keys(lockfiles: &[std::path::PathBuf]) -> Result<HashSet<String>, String> {
    let items = crate::ops::prefetch::plan_files(lockfiles)
        .map_err(|e| format!("cache.pin lockfile {e}"))?;
    Ok(items
        .into_iter()
        .filter_map(|it| match it {
            crate::ops::prefetch::Item::Mirror { name, version, .. } => {
                let n = crate::index::CrateName::parse(&name).ok()?;
                Some(Key::krate(&n, &version).as_str().to_owned())
            }
            crate::ops::prefetch::Item::Skip { .. } => None,
        })
        .collect())
}

/// Plans and (unless `dry_run`) deletes. Returns the plan as carried out.
pub async fn run(
    store: &dyn Store,
    limit: u64,
    pinned: &HashSet<String>,
    dry_run: bool,
) -> Result<Plan, String> {
    let all: Vec<(String, u64)> = store
        .list_sized("")
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(k, n)| (k.as_str().to_owned(), n))
        .collect();
    let (access, _) = load(store).await?;
    let mut p = plan(&all, &access, pinned, limit);
    if !dry_run {
        let mut done = Vec::with_capacity(p.evict.len());
        let mut freed = 0;
        for (k, n) in p.evict {
            if store
                .delete(&Key::raw(k.clone()))
                .await
                .map_err(|e| e.to_string())?
            {
                freed += n;
                done.push((k, n));
            }
        }
        p.evict = done;
        p.freed = freed;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, n: u64) -> (String, u64) {
        (k.to_owned(), n)
    }

    #[test]
    fn evicts_least_recently_used_mirror_crates_only() {
        let all = vec![
            s("index-v1/3/a/abc", 50),
            s("private-v1/blobs/aa/x.crate", 100),
            s("crates-v1/3/a/abc/abc-1.0.0.crate", 100),
            s("crates-v1/3/a/abc/abc-2.0.0.crate", 100),
            s("crates-v1/3/x/xyz/xyz-1.0.0.crate", 100),
            s("crates-v1/3/p/pin/pin-1.0.0.crate", 100),
        ];
        let access: HashMap<String, u64> = [
            ("crates-v1/3/a/abc/abc-1.0.0.crate".to_owned(), 30),
            ("crates-v1/3/a/abc/abc-2.0.0.crate".to_owned(), 10),
            ("crates-v1/3/x/xyz/xyz-1.0.0.crate".to_owned(), 20),
        ]
        .into();
        let pinned: HashSet<String> = ["crates-v1/3/p/pin/pin-1.0.0.crate".to_owned()].into();
        // 550 total, limit 400: two crates go, oldest first, never the pinned one.
        let p = plan(&all, &access, &pinned, 400);
        assert_eq!(p.total, 550);
        let keys: Vec<&str> = p.evict.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "crates-v1/3/a/abc/abc-2.0.0.crate",
                "crates-v1/3/x/xyz/xyz-1.0.0.crate"
            ]
        );
        assert_eq!(p.freed, 200);
        // Under the limit: nothing.
        assert!(plan(&all, &access, &pinned, 1000).evict.is_empty());
        // An impossible limit evicts every evictable crate, and nothing else.
        let p = plan(&all, &access, &pinned, 0);
        assert_eq!(p.evict.len(), 3);
    }
}
