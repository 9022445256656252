//! The crates.io mirror: index files and `.crate` downloads through three tiers (moka hot
//! tier, the store, the upstream). Concurrent misses for one key are coalesced into one
//! upstream request; index files are revalidated per `policy`; crates are verified against
//! the index checksum before anything is cached or served.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::index::{self, CrateName, VersionEntry};
use crate::metrics::{CacheEvent, Metrics};
use crate::policy::{self, Clock, Freshness, Policy};
use crate::record::{self, IndexMeta};
use crate::store::{Key, Store};
use crate::upstream::{IndexFetch, Upstream, UpstreamError};

/// How an answer was produced, sent to clients as `X-Wharf-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, fresh (or immutable, for crates).
    Hit,
    /// Fetched from upstream for this request.
    Miss,
    /// Upstream confirmed the cached copy (304) or sent a new one during revalidation.
    Revalidated,
    /// Served past its freshness window (revalidation pending or upstream failing).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
        }
    }
}

pub struct IndexReply {
    pub body: Bytes,
    pub etag: Arc<str>,
    pub status: CacheStatus,
    /// Set when the copy is stale because upstream could not be asked.
    pub revalidation_failed: bool,
}

pub struct CrateReply {
    pub body: CrateBody,
    pub status: CacheStatus,
}

/// A crate's bytes: complete, or streaming from upstream while being verified.
pub enum CrateBody {
    Full(Bytes),
    /// Chunks as they arrive; the last one is only sent once the sha256 matched, and a
    /// `Fail` ends the stream with an error (the client never sees a complete response).
    Stream {
        len: Option<u64>,
        rx: mpsc::UnboundedReceiver<Chunk>,
    },
}

/// What the loader of a large crate tells the request that is streaming it.
#[derive(Debug)]
pub enum Chunk {
    Start(Option<u64>),
    Data(Bytes),
    Fail(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Store,
    Upstream,
}

/// A cached index file with what we need to serve and revalidate it.
struct Doc {
    body: Bytes,
    etag: Arc<str>,
    upstream_etag: Option<String>,
    upstream_last_modified: Option<String>,
}

/// What the hot tier holds per crate name: a document, or a remembered upstream 404.
struct IndexSlot {
    doc: Option<Arc<Doc>>,
    /// When upstream last confirmed this state.
    checked_at: SystemTime,
    origin: Origin,
    /// Held by whoever revalidates this slot; others wait on it (coalescing) or skip the
    /// background refresh when it is taken.
    reval: tokio::sync::Mutex<()>,
    failed_at: Mutex<Option<SystemTime>>,
}

impl IndexSlot {
    fn new(doc: Option<Arc<Doc>>, checked_at: SystemTime, origin: Origin) -> Arc<Self> {
        Arc::new(Self {
            doc,
            checked_at,
            origin,
            reval: tokio::sync::Mutex::new(()),
            failed_at: Mutex::new(None),
        })
    }

    fn failed_at(&self) -> Option<SystemTime> {
        *self.failed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_failed(&self, t: SystemTime) {
        *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }
}

#[derive(Clone)]
struct CachedCrate {
    body: Bytes,
    origin: Origin,
}

pub struct MirrorSettings {
    pub policy: Policy,
    pub offline: bool,
    pub hot_index_bytes: u64,
    pub hot_crate_bytes: u64,
    pub hot_crate_max_item: u64,
    pub metrics: Arc<Metrics>,
}

pub struct Mirror {
    store: Arc<dyn Store>,
    upstream: Arc<Upstream>,
    clock: Clock,
    policy: Policy,
    offline: bool,
    index: Cache<String, Arc<IndexSlot>>,
    crates: Cache<String, CachedCrate>,
    /// The upstream's `dl` template, refreshed hourly.
    upstream_dl: Cache<(), Arc<str>>,
    metrics: Arc<Metrics>,
    access: crate::ops::gc::AccessLog,
    /// Cold crates larger than this stream to the client while downloading.
    stream_above: u64,
}

const UPSTREAM_CONFIG_KEY: &str = "upstream-config.json";

impl Mirror {
    pub fn new(
        store: Arc<dyn Store>,
        upstream: Arc<Upstream>,
        clock: Clock,
        s: MirrorSettings,
    ) -> Arc<Self> {
        let max_item = s.hot_crate_max_item;
        Arc::new(Self {
            store,
            upstream,
            clock,
            policy: s.policy,
            offline: s.offline,
            index: Cache::builder()
                .max_capacity(s.hot_index_bytes)
                .weigher(|k: &String, v: &Arc<IndexSlot>| {
                    let n = v.doc.as_ref().map_or(0, |d| d.body.len()) + k.len() + 200;
                    u32::try_from(n).unwrap_or(u32::MAX)
                })
                .build(),
            crates: Cache::builder()
                .max_capacity(s.hot_crate_bytes)
                .weigher(move |_k: &String, v: &CachedCrate| {
                    // Larger files are read from the store each time: weighing them above the
                    // capacity keeps them out of memory (moka still coalesces their loads).
                    if v.body.len() as u64 > max_item {
                        u32::MAX
                    } else {
                        v.body.len() as u32 + 64
                    }
                })
                .build(),
            upstream_dl: Cache::builder()
                .time_to_live(Duration::from_secs(3600))
                .build(),
            metrics: s.metrics,
            access: crate::ops::gc::AccessLog::default(),
            stream_above: max_item,
        })
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Saves recorded crate access times to the store (for LRU eviction).
    pub async fn flush_access(&self) -> Result<(), String> {
        self.access.flush(self.store.as_ref()).await
    }

    // ---- index files -------------------------------------------------------------------

    /// An index file for `name`, per the freshness policy.
    pub async fn index_file(self: &Arc<Self>, name: &CrateName) -> Result<IndexReply, Error> {
        let (slot, loaded_now) = self.slot(name).await?;
        let now = self.clock.now();
        let freshness = match (&slot.doc, self.offline) {
            (_, true) => Freshness::Fresh,
            (Some(_), false) => self.policy.index(slot.checked_at, now),
            (None, false) => self.policy.negative(slot.checked_at, now),
        };
        let status = if loaded_now && slot.origin == Origin::Upstream {
            CacheStatus::Miss
        } else {
            CacheStatus::Hit
        };
        match freshness {
            Freshness::Fresh => {
                let stale =
                    self.offline && self.policy.index(slot.checked_at, now) != Freshness::Fresh;
                reply(
                    name,
                    &slot,
                    if stale { CacheStatus::Stale } else { status },
                    false,
                )
            }
            Freshness::StaleWhileRevalidate => {
                if self.policy.may_retry(slot.failed_at(), now) {
                    self.spawn_revalidation(name.clone(), slot.clone());
                }
                reply(name, &slot, CacheStatus::Stale, slot.failed_at().is_some())
            }
            Freshness::MustRevalidate => {
                let (slot, status, err) = self.revalidate(name, slot).await;
                match (err, &slot.doc) {
                    (Some(e), None) => Err(e),
                    (err, _) => reply(name, &slot, status, err.is_some()),
                }
            }
        }
    }

    /// The hot-tier slot for `name`, loading it (store, then upstream) on a miss. Concurrent
    /// misses share one load. The bool says whether this call loaded it.
    async fn slot(self: &Arc<Self>, name: &CrateName) -> Result<(Arc<IndexSlot>, bool), Error> {
        let key = name.lower();
        // The common case, a hit, skips the entry API's insertion bookkeeping.
        if let Some(slot) = self.index.get(&key).await {
            return Ok((slot, false));
        }
        let entry = self
            .index
            .entry(key)
            .or_try_insert_with(self.load_slot(name))
            .await
            .map_err(|e| (*e).clone())?;
        let fresh = entry.is_fresh();
        if !fresh {
            self.metrics.cache(CacheEvent::Coalesced);
        }
        Ok((entry.into_value(), fresh))
    }

    async fn load_slot(&self, name: &CrateName) -> Result<Arc<IndexSlot>, Error> {
        let key = Key::index(name);
        match self.store.get(&key).await {
            Ok(Some(obj)) => match record::decode_index(&obj.bytes) {
                Ok((meta, body)) => {
                    let doc = Doc {
                        body,
                        etag: meta.etag.into(),
                        upstream_etag: meta.upstream_etag,
                        upstream_last_modified: meta.upstream_last_modified,
                    };
                    let at = policy::from_unix_secs(meta.fetched_at);
                    return Ok(IndexSlot::new(Some(Arc::new(doc)), at, Origin::Store));
                }
                Err(e) => warn!(key = key.as_str(), error = %e, "damaged index record; refetching"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "store read failed; treating as a miss"),
        }
        if self.offline {
            return Err(Error::NotCached(format!(
                "the index file of crate `{name}`"
            )));
        }
        let fetched = self
            .upstream
            .fetch_index(&name.index_path(), None, None)
            .await
            .map_err(|source| Error::Upstream {
                what: format!("fetching the index of `{name}`"),
                source,
            })?;
        self.apply_fetch(name, None, fetched, Origin::Upstream)
            .await
            .map_err(|source| Error::Upstream {
                what: format!("fetching the index of `{name}`"),
                source,
            })
    }

    /// Turns an upstream answer into a new slot, persisting new bytes.
    async fn apply_fetch(
        &self,
        name: &CrateName,
        old: Option<&Arc<Doc>>,
        fetched: IndexFetch,
        origin: Origin,
    ) -> Result<Arc<IndexSlot>, UpstreamError> {
        let now = self.clock.now();
        Ok(match fetched {
            IndexFetch::Modified {
                body,
                etag,
                last_modified,
            } => {
                let meta = IndexMeta {
                    fetched_at: policy::unix_secs(now),
                    etag: index::etag_for(&body),
                    upstream_etag: etag,
                    upstream_last_modified: last_modified,
                };
                // A failed write only costs a refetch later; the bytes are still good to serve.
                if let Err(e) = self
                    .store
                    .put(&Key::index(name), record::encode_index(&meta, &body))
                    .await
                {
                    warn!(krate = %name, error = %e, "could not persist index file");
                }
                let doc = Doc {
                    body,
                    etag: meta.etag.into(),
                    upstream_etag: meta.upstream_etag,
                    upstream_last_modified: meta.upstream_last_modified,
                };
                IndexSlot::new(Some(Arc::new(doc)), now, origin)
            }
            // The stored record keeps its old fetched_at; after a restart that only costs
            // one extra revalidation, and saves rewriting the file on every 304.
            IndexFetch::NotModified => match old {
                Some(doc) => IndexSlot::new(Some(doc.clone()), now, origin),
                None => {
                    return Err(UpstreamError::Transfer(
                        "upstream answered 304 to an unconditional request".into(),
                    ));
                }
            },
            IndexFetch::NotFound => IndexSlot::new(None, now, origin),
        })
    }

    /// Revalidates `slot` now, or waits for whoever is already doing it. Returns the slot to
    /// serve, how it was obtained, and the upstream error if revalidation failed (the old
    /// slot is then returned: stale-if-error).
    async fn revalidate(
        self: &Arc<Self>,
        name: &CrateName,
        slot: Arc<IndexSlot>,
    ) -> (Arc<IndexSlot>, CacheStatus, Option<Error>) {
        let _guard = slot.reval.lock().await;
        if let Some(cur) = self.index.get(&name.lower()).await
            && !Arc::ptr_eq(&cur, &slot)
        {
            // Someone revalidated while we waited.
            return (cur, CacheStatus::Revalidated, None);
        }
        let now = self.clock.now();
        // Requests queued behind a failed attempt must not each retry in turn (N waiters
        // would wait N upstream timeouts): within the backoff they get the failure at once.
        if !self.policy.may_retry(slot.failed_at(), now) {
            return (
                slot.clone(),
                CacheStatus::Stale,
                Some(self.backoff_error(name)),
            );
        }
        match self.refresh(name, &slot).await {
            Ok(new) => (new, CacheStatus::Revalidated, None),
            Err(e) => {
                slot.set_failed(now);
                if slot.doc.is_some() {
                    warn!(krate = %name, error = %e, "upstream failed; serving stale index file");
                }
                (slot.clone(), CacheStatus::Stale, Some(e))
            }
        }
    }

    fn backoff_error(&self, name: &CrateName) -> Error {
        Error::Upstream {
            what: format!("revalidating the index of `{name}`"),
            source: UpstreamError::Connect("upstream failed recently; retrying shortly".into()),
        }
    }

    async fn refresh(
        &self,
        name: &CrateName,
        slot: &Arc<IndexSlot>,
    ) -> Result<Arc<IndexSlot>, Error> {
        let doc = slot.doc.as_ref();
        let wrap = |source| Error::Upstream {
            what: format!("revalidating the index of `{name}`"),
            source,
        };
        let fetched = self
            .upstream
            .fetch_index(
                &name.index_path(),
                doc.and_then(|d| d.upstream_etag.as_deref()),
                doc.and_then(|d| d.upstream_last_modified.as_deref()),
            )
            .await
            .map_err(wrap)?;
        let new = self
            .apply_fetch(name, doc, fetched, Origin::Upstream)
            .await
            .map_err(wrap)?;
        self.index.insert(name.lower(), new.clone()).await;
        debug!(krate = %name, "index file revalidated");
        Ok(new)
    }

    fn spawn_revalidation(self: &Arc<Self>, name: CrateName, slot: Arc<IndexSlot>) {
        // Only one background refresh per slot: if the lock is taken, one is running.
        if slot.reval.try_lock().is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_guard) = slot.reval.try_lock() else {
                return;
            };
            if let Some(cur) = this.index.get(&name.lower()).await
                && !Arc::ptr_eq(&cur, &slot)
            {
                return;
            }
            if let Err(e) = this.refresh(&name, &slot).await {
                slot.set_failed(this.clock.now());
                warn!(krate = %name, error = %e, "background revalidation failed; serving stale");
            }
        });
    }

    // ---- crates ------------------------------------------------------------------------

    /// A `.crate` file: hot tier, then store, then upstream (verified before caching).
    pub async fn crate_file(
        self: &Arc<Self>,
        name: &CrateName,
        version: &str,
    ) -> Result<CrateReply, Error> {
        let r = self.crate_tiers(name, version).await;
        if r.is_ok() {
            self.access.touch(
                &Key::krate(name, version),
                policy::unix_secs(self.clock.now()),
            );
        }
        r
    }

    async fn crate_tiers(
        self: &Arc<Self>,
        name: &CrateName,
        version: &str,
    ) -> Result<CrateReply, Error> {
        let key = format!("{}/{version}", name.lower());
        if let Some(c) = self.crates.get(&key).await {
            return Ok(CrateReply {
                body: CrateBody::Full(c.body),
                status: CacheStatus::Hit,
            });
        }
        // The load runs in its own task, so it finishes (and caches) even if this client
        // goes away; only the request whose loader actually runs receives `Chunk`s.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = self.clone();
        let (n, v) = (name.clone(), version.to_owned());
        let mut load = tokio::spawn(async move {
            let entry = this
                .crates
                .entry(key)
                .or_try_insert_with(this.load_crate(&n, &v, Some(tx)))
                .await
                .map_err(|e| (*e).clone())?;
            Ok::<_, Error>((entry.is_fresh(), entry.into_value()))
        });
        let loaded = tokio::select! {
            r = &mut load => r,
            msg = rx.recv() => match msg {
                Some(Chunk::Start(len)) => {
                    return Ok(CrateReply {
                        body: CrateBody::Stream { len, rx },
                        status: CacheStatus::Miss,
                    });
                }
                _ => load.await,
            },
        };
        let (loaded_now, c) =
            loaded.map_err(|e| Error::Storage(format!("crate loader failed: {e}")))??;
        if !loaded_now {
            self.metrics.cache(CacheEvent::Coalesced);
        }
        Ok(CrateReply {
            status: if loaded_now && c.origin == Origin::Upstream {
                CacheStatus::Miss
            } else {
                CacheStatus::Hit
            },
            body: CrateBody::Full(c.body),
        })
    }

    /// Store, else upstream. With `stream`, a large download is also forwarded chunk by
    /// chunk, holding the last chunk back until the checksum is verified.
    async fn load_crate(
        self: &Arc<Self>,
        name: &CrateName,
        version: &str,
        stream: Option<mpsc::UnboundedSender<Chunk>>,
    ) -> Result<CachedCrate, Error> {
        let key = Key::krate(name, version);
        match self.store.get(&key).await {
            Ok(Some(obj)) => {
                return Ok(CachedCrate {
                    body: obj.bytes,
                    origin: Origin::Store,
                });
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "store read failed; treating as a miss"),
        }
        if self.offline {
            return Err(Error::NotCached(format!(
                "crate `{name}` version {version}"
            )));
        }
        let entry = self.version_entry(name, version).await?;
        let dl = self.upstream_dl().await?;
        // `+` (build metadata) is percent-encoded, as the registry's object storage expects.
        let url = index::download_url(&dl, &entry.name, &version.replace('+', "%2B"), &entry.cksum);
        let what = || format!("downloading `{name}` {version}");
        let mut download = self
            .upstream
            .open_crate(&url)
            .await
            .map_err(|source| Error::Upstream {
                what: what(),
                source,
            })?
            .ok_or_else(|| {
                // The index lists the version but the download is missing: an upstream fault,
                // not "no such crate" (cargo must not give up on a crate that exists).
                Error::Upstream {
                    what: what(),
                    source: UpstreamError::Status {
                        status: 404,
                        retry_after: None,
                    },
                }
            })?;
        let stream = stream.filter(|_| download.len.is_some_and(|n| n > self.stream_above));
        let fail = |msg: String| {
            if let Some(tx) = &stream {
                let _ = tx.send(Chunk::Fail(msg));
            }
        };
        if let Some(tx) = &stream {
            let _ = tx.send(Chunk::Start(download.len));
        }
        let mut hasher = Sha256::new();
        let mut buf = bytes::BytesMut::with_capacity(download.len.unwrap_or(0) as usize);
        let mut held: Option<Bytes> = None;
        loop {
            match download.chunk().await {
                Ok(Some(c)) => {
                    hasher.update(&c);
                    buf.extend_from_slice(&c);
                    if let Some(tx) = &stream
                        && let Some(prev) = held.replace(c)
                    {
                        // A client that went away only stops receiving; the download goes on.
                        let _ = tx.send(Chunk::Data(prev));
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    fail(source.to_string());
                    return Err(Error::Upstream {
                        what: what(),
                        source,
                    });
                }
            }
        }
        let body = buf.freeze();
        let actual = hex::encode(hasher.finalize());
        if actual != entry.cksum {
            warn!(krate = %name, version, expected = %entry.cksum, actual = %actual, "checksum mismatch; not cached");
            self.metrics.checksum_failure();
            fail(format!("checksum mismatch for {name} {version}"));
            return Err(Error::ChecksumMismatch {
                name: entry.name,
                version: version.to_owned(),
                expected: entry.cksum,
                actual,
            });
        }
        match self.store.put_if_absent(&key, body.clone()).await {
            Ok(_) => info!(krate = %name, version, bytes = body.len(), "crate cached"),
            Err(e) => {
                warn!(krate = %name, version, error = %e, "could not store crate");
                fail(format!("could not store {name} {version}"));
                return Err(Error::Storage(format!(
                    "could not store `{name}` {version}; check the data directory ({e})"
                )));
            }
        }
        // Verified and stored: now the streaming client may have the end of the file.
        if let (Some(tx), Some(last)) = (&stream, held) {
            let _ = tx.send(Chunk::Data(last));
        }
        Ok(CachedCrate {
            body,
            origin: Origin::Upstream,
        })
    }

    /// The index line of `name` `version`: from the cached index when it lists the version
    /// (whatever its age: published versions never change checksum), else after revalidating.
    async fn version_entry(
        self: &Arc<Self>,
        name: &CrateName,
        version: &str,
    ) -> Result<VersionEntry, Error> {
        let find = |slot: &IndexSlot| {
            slot.doc
                .as_ref()
                .and_then(|d| index::find_version(&d.body, name.as_str(), version))
        };
        let (slot, loaded_now) = self.slot(name).await?;
        if let Some(v) = find(&slot) {
            return Ok(v);
        }
        let known_missing = slot.doc.is_none()
            && self.policy.negative(slot.checked_at, self.clock.now()) == Freshness::Fresh;
        let (slot, err) = if known_missing || (loaded_now && slot.origin == Origin::Upstream) {
            (slot, None)
        } else {
            let (slot, _, err) = self.revalidate(name, slot).await;
            (slot, err)
        };
        if let Some(v) = find(&slot) {
            return Ok(v);
        }
        match err {
            Some(e) => Err(e),
            None if slot.doc.is_none() => Err(Error::NotFound(format!(
                "crate `{name}` does not exist upstream"
            ))),
            None => Err(Error::NotFound(format!(
                "crate `{name}` has no version {version} upstream"
            ))),
        }
    }

    /// The upstream's download template (`dl` of its config.json), cached for an hour and
    /// kept in the store so a restart during an outage still knows it.
    async fn upstream_dl(&self) -> Result<Arc<str>, Error> {
        self.upstream_dl
            .try_get_with((), async {
                let key = Key::meta(UPSTREAM_CONFIG_KEY);
                match self.upstream.fetch_config().await {
                    Ok(bytes) => {
                        let dl =
                            index::parse_upstream_config(&bytes).map_err(|e| Error::Upstream {
                                what: "reading the upstream config.json".into(),
                                source: UpstreamError::Transfer(e),
                            })?;
                        if let Err(e) = self.store.put(&key, bytes).await {
                            warn!(error = %e, "could not persist upstream config.json");
                        }
                        Ok(Arc::from(dl))
                    }
                    Err(source) => match self.store.get(&key).await {
                        Ok(Some(obj)) => index::parse_upstream_config(&obj.bytes)
                            .map(Arc::from)
                            .map_err(|_| Error::Upstream {
                                what: "fetching the upstream config.json".into(),
                                source,
                            }),
                        _ => Err(Error::Upstream {
                            what: "fetching the upstream config.json".into(),
                            source,
                        }),
                    },
                }
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

fn reply(
    name: &CrateName,
    slot: &IndexSlot,
    status: CacheStatus,
    revalidation_failed: bool,
) -> Result<IndexReply, Error> {
    match &slot.doc {
        Some(d) => Ok(IndexReply {
            body: d.body.clone(),
            etag: d.etag.clone(),
            status,
            revalidation_failed,
        }),
        None => Err(Error::NotFound(format!(
            "crate `{name}` does not exist upstream"
        ))),
    }
}
