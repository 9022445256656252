//! Prometheus metrics. Every label set is fixed (routes, status codes, outcomes), so each
//! counter is a plain atomic: the request path never takes a lock to count. `render`
//! writes the text exposition format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Index,
    Config,
    Crate,
    PrivateIndex,
    PrivateApi,
    Health,
    Metrics,
    Other,
}

const ROUTES: [&str; 8] = [
    "index",
    "config",
    "crate",
    "private_index",
    "private_api",
    "health",
    "metrics",
    "other",
];

const STATUSES: [u16; 14] = [
    200, 304, 400, 401, 403, 404, 405, 409, 413, 500, 502, 503, 504, 0,
];

impl Route {
    /// Classifies a request path (cheap prefix checks only).
    pub fn of(path: &str) -> Self {
        if path == "/index/config.json" {
            Route::Config
        } else if path.starts_with("/index/") {
            Route::Index
        } else if path.starts_with("/api/v1/crates/") {
            Route::Crate
        } else if path.starts_with("/private/index/") || path.starts_with("/t/") {
            Route::PrivateIndex
        } else if path.starts_with("/private/") {
            Route::PrivateApi
        } else if path == "/health" {
            Route::Health
        } else if path == "/metrics" {
            Route::Metrics
        } else {
            Route::Other
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum CacheEvent {
    Hit,
    Miss,
    Revalidated,
    Stale,
    /// A request that waited for another request's upstream fetch of the same key.
    Coalesced,
}

const CACHE_EVENTS: [&str; 5] = ["hit", "miss", "revalidated", "stale", "coalesced"];

#[derive(Debug, Clone, Copy)]
pub enum UpstreamKind {
    Index,
    Config,
    Crate,
}

const UPSTREAM_KINDS: [&str; 3] = ["index", "config", "crate"];

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    bytes: [AtomicU64; ROUTES.len()],
    cache: [AtomicU64; CACHE_EVENTS.len()],
    upstream_ok: [AtomicU64; UPSTREAM_KINDS.len()],
    upstream_err: [AtomicU64; UPSTREAM_KINDS.len()],
    upstream_latency: Histogram,
    checksum_failures: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    store_bytes: AtomicU64,
    store_objects: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16, bytes: u64) {
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route as usize][s].fetch_add(1, Relaxed);
        self.bytes[route as usize].fetch_add(bytes, Relaxed);
    }

    pub fn cache(&self, e: CacheEvent) {
        self.cache[e as usize].fetch_add(1, Relaxed);
    }

    pub fn upstream(&self, kind: UpstreamKind, ok: bool, took: Duration) {
        let c = if ok {
            &self.upstream_ok
        } else {
            &self.upstream_err
        };
        c[kind as usize].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let h = &self.upstream_latency;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn checksum_failure(&self) {
        self.checksum_failures.fetch_add(1, Relaxed);
    }

    pub fn evicted(&self, objects: u64, bytes: u64) {
        self.evictions.fetch_add(objects, Relaxed);
        self.evicted_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn set_store(&self, bytes: u64, objects: u64) {
        self.store_bytes.store(bytes, Relaxed);
        self.store_objects.store(objects, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8 << 10);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "wharf_requests_total",
            "counter",
            "HTTP requests by route and status (0: other statuses).",
        );
        for (r, row) in self.requests.iter().enumerate() {
            for (s, n) in row.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "wharf_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                        ROUTES[r], STATUSES[s]
                    );
                }
            }
        }
        head(
            &mut o,
            "wharf_response_bytes_total",
            "counter",
            "Response body bytes by route.",
        );
        for (r, n) in self.bytes.iter().enumerate() {
            let _ = writeln!(
                o,
                "wharf_response_bytes_total{{route=\"{}\"}} {}",
                ROUTES[r],
                n.load(Relaxed)
            );
        }
        head(
            &mut o,
            "wharf_cache_events_total",
            "counter",
            "Cache outcomes of index and crate requests.",
        );
        for (i, n) in self.cache.iter().enumerate() {
            let _ = writeln!(
                o,
                "wharf_cache_events_total{{event=\"{}\"}} {}",
                CACHE_EVENTS[i],
                n.load(Relaxed)
            );
        }
        head(
            &mut o,
            "wharf_upstream_requests_total",
            "counter",
            "Upstream requests by kind and result.",
        );
        for (i, k) in UPSTREAM_KINDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "wharf_upstream_requests_total{{kind=\"{k}\",result=\"ok\"}} {}",
                self.upstream_ok[i].load(Relaxed)
            );
            let _ = writeln!(
                o,
                "wharf_upstream_requests_total{{kind=\"{k}\",result=\"error\"}} {}",
                self.upstream_err[i].load(Relaxed)
            );
        }
        head(
            &mut o,
            "wharf_upstream_request_duration_seconds",
            "histogram",
            "Upstream request latency.",
        );
        let h = &self.upstream_latency;
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += h.buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "wharf_upstream_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(
            o,
            "wharf_upstream_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "wharf_upstream_request_duration_seconds_sum {}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "wharf_upstream_request_duration_seconds_count {count}");
        for (name, kind, help, v) in [
            (
                "wharf_checksum_failures_total",
                "counter",
                "Upstream crates refused for a checksum mismatch.",
                &self.checksum_failures,
            ),
            (
                "wharf_evictions_total",
                "counter",
                "Cached crates evicted to stay under cache.max_size.",
                &self.evictions,
            ),
            (
                "wharf_evicted_bytes_total",
                "counter",
                "Bytes freed by eviction.",
                &self.evicted_bytes,
            ),
            (
                "wharf_store_bytes",
                "gauge",
                "Bytes in the store (as of the last scan).",
                &self.store_bytes,
            ),
            (
                "wharf_store_objects",
                "gauge",
                "Objects in the store (as of the last scan).",
                &self.store_objects,
            ),
        ] {
            head(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {}", v.load(Relaxed));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/index/config.json"), Route::Config);
        assert_eq!(Route::of("/index/se/rd/serde"), Route::Index);
        assert_eq!(Route::of("/api/v1/crates/a/1.0.0/download"), Route::Crate);
        assert_eq!(Route::of("/private/api/v1/crates/new"), Route::PrivateApi);
        assert_eq!(Route::of("/private/index/1/a"), Route::PrivateIndex);
        assert_eq!(Route::of("/nope"), Route::Other);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request(Route::Index, 200, 10);
        m.request(Route::Index, 200, 5);
        m.request(Route::Crate, 418, 0);
        m.cache(CacheEvent::Coalesced);
        m.upstream(UpstreamKind::Crate, true, Duration::from_millis(30));
        m.upstream(UpstreamKind::Crate, false, Duration::from_secs(100));
        m.set_store(1234, 3);
        let t = m.render();
        assert!(t.contains("wharf_requests_total{route=\"index\",status=\"200\"} 2"));
        assert!(t.contains("wharf_requests_total{route=\"crate\",status=\"0\"} 1"));
        assert!(t.contains("wharf_response_bytes_total{route=\"index\"} 15"));
        assert!(t.contains("wharf_cache_events_total{event=\"coalesced\"} 1"));
        assert!(t.contains("wharf_upstream_requests_total{kind=\"crate\",result=\"error\"} 1"));
        assert!(t.contains("wharf_upstream_request_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(t.contains("wharf_upstream_request_duration_seconds_bucket{le=\"30\"} 1"));
        assert!(t.contains("wharf_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t.contains("wharf_store_bytes 1234"));
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.rsplit(' ').count(), 2, "{l}");
        }
    }
}
