//! wharf: a caching pull-through proxy of the crates.io sparse registry.
//!
//! # Layout
//! - [`config`]: proxy.toml + env + flags, merged by a pure function.
//! - [`index`]: the sparse-index protocol (paths, names, lines, templates); no I/O.
//! - [`metrics`]: lock-free counters and the Prometheus text format.
//! - [`policy`]: index freshness rules and the injectable clock; no I/O.
//! - [`record`]: versioned on-disk record format for cached index files.
//! - [`store`]: bytes at rest behind the [`store::Store`] trait (local filesystem today).
//! - [`upstream`]: the HTTP client for the upstream registry.
//! - [`mirror`]: hot tier → store → upstream, coalescing, revalidation, verification.
//! - [`registry`]: the hosted registry for private crates (publish, yank, owners, tokens)
//!   and the dependency-confusion guard.
//! - [`ops`]: operator commands over the whole cache (prefetch, ...).
//! - [`server`]: HTTP routing and responses only.
//! - [`cli`]: the `wharf` command line.

pub mod cli;
pub mod config;
pub mod error;
pub mod index;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod policy;
pub mod record;
pub mod registry;
pub mod server;
pub mod store;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::mirror::{Mirror, MirrorSettings};
use crate::policy::Clock;
use crate::registry::publish::Limits;
use crate::registry::{Registry, RegistrySettings};
use crate::store::FsStore;
use crate::upstream::{Upstream, UpstreamSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamSetupError),
    #[error(transparent)]
    Registry(#[from] registry::RegistrySetupError),
    #[error("{0}")]
    Pin(String),
    #[error("{0}")]
    Tls(String),
}

/// A wharf serving in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub public_url: String,
    pub app: Arc<server::App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, drains in-flight requests, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = (&mut self.task).await.map_err(std::io::Error::other)?;
        if let Err(e) = self.app.mirror.flush_access().await {
            tracing::warn!(error = %e, "could not save access times");
        }
        served
    }
}

/// Binds, builds the mirror and starts serving. `clock` is `Clock::system()` outside tests.
pub async fn start(config: &Config, clock: Clock) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let tls = match &config.server.tls {
        Some((cert, key)) => Some(server::tls_acceptor(cert, key).map_err(StartError::Tls)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let metrics = Arc::new(metrics::Metrics::default());
    let up = &config.upstream;
    let upstream = Upstream::new(
        UpstreamSettings {
            index_url: up.index_url.clone(),
            connect_timeout: up.connect_timeout,
            timeout: up.timeout,
            ca_file: up.ca_file.as_deref(),
            max_body: up.max_body,
        },
        metrics.clone(),
    )?;
    let store: Arc<dyn store::Store> = Arc::new(FsStore::new(&config.data_dir));
    let p = &config.private;
    let registry = Registry::new(
        store.clone(),
        clock.clone(),
        RegistrySettings {
            public_url: public_url.clone(),
            read_required: p.read_required,
            limits: Limits {
                max_crate: p.max_crate_size,
                ..Limits::default()
            },
            reserved: p.reserved.clone(),
            max_body: p.max_body,
        },
    )
    .await?;
    let store_for_scan = store.clone();
    let mirror = Mirror::new(
        store,
        Arc::new(upstream),
        clock,
        MirrorSettings {
            policy: config.cache.policy.clone(),
            offline: config.offline,
            hot_index_bytes: config.cache.hot_index_bytes,
            hot_crate_bytes: config.cache.hot_crate_bytes,
            hot_crate_max_item: config.cache.hot_crate_max_item,
            metrics: metrics.clone(),
        },
    );
    let pinned = ops::gc::pinned_keys(&config.cache.pin).map_err(StartError::Pin)?;
    tokio::spawn(scan_store(store_for_scan.clone(), metrics.clone()));
    tokio::spawn(maintain(
        mirror.clone(),
        store_for_scan,
        metrics.clone(),
        config.cache.max_size,
        pinned,
        config.cache.gc_interval,
    ));
    let app = server::App::new(mirror, registry, metrics, &public_url, &config.server);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, app.clone(), tls, async {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        public_url,
        app,
        shutdown: Some(tx),
        task,
    })
}

/// How often the store is walked for the size gauges (in the background: start-up never
/// scans the store).
const STORE_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

async fn scan_store(store: Arc<dyn store::Store>, metrics: Arc<metrics::Metrics>) {
    loop {
        match store.list_sized("").await {
            Ok(all) => {
                let bytes = all.iter().map(|(_, n)| n).sum();
                metrics.set_store(bytes, all.len() as u64);
            }
            Err(e) => tracing::warn!(error = %e, "store scan failed"),
        }
        tokio::time::sleep(STORE_SCAN_INTERVAL).await;
    }
}

/// Saves access times and keeps the store under `cache.max_size`, every `interval`.
async fn maintain(
    mirror: Arc<Mirror>,
    store: Arc<dyn store::Store>,
    metrics: Arc<metrics::Metrics>,
    max_size: Option<u64>,
    pinned: std::collections::HashSet<String>,
    interval: std::time::Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = mirror.flush_access().await {
            tracing::warn!(error = %e, "could not save access times");
        }
        let Some(limit) = max_size else { continue };
        match ops::gc::run(store.as_ref(), limit, &pinned, false).await {
            Ok(p) if !p.evict.is_empty() => {
                metrics.evicted(p.evict.len() as u64, p.freed);
                tracing::info!(
                    evicted = p.evict.len(),
                    freed = p.freed,
                    total = p.total,
                    limit,
                    "evicted least-recently-used crates"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "eviction failed"),
        }
    }
}
