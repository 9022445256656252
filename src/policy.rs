//! Cache freshness rules for index files, as pure functions of the entry's age and `now`.
//! The clock is injected (`Clock`) because tokio's paused time does not move `SystemTime`;
//! tests move a manual clock instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long cached index answers stay usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Served without asking upstream (`cache.index_ttl`).
    pub ttl: Duration,
    /// After `ttl`, still served at once while one background revalidation runs
    /// (RFC 5861 stale-while-revalidate, `cache.index_stale_while_revalidate`).
    pub stale_while_revalidate: Duration,
    /// An upstream 404 is remembered this long (`cache.negative_ttl`).
    pub negative_ttl: Duration,
    /// After a failed revalidation, stale data is served without retrying upstream for this
    /// long, so an outage costs one upstream timeout per entry, not one per request.
    pub error_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            error_backoff: Duration::from_secs(5),
        }
    }
}

/// What to do with a cached index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it; upstream is not asked.
    Fresh,
    /// Serve it now, and revalidate in the background.
    StaleWhileRevalidate,
    /// Revalidate before answering (falling back to the stale copy if upstream fails).
    MustRevalidate,
}

impl Policy {
    /// `checked_at` is when upstream last confirmed the entry (200 or 304).
    /// RFC 9111 §4.2: age = now - checked_at (saturating: a clock step back counts as fresh).
    pub fn index(&self, checked_at: SystemTime, now: SystemTime) -> Freshness {
        let age = now.duration_since(checked_at).unwrap_or_default();
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl + self.stale_while_revalidate {
            Freshness::StaleWhileRevalidate
        } else {
            Freshness::MustRevalidate
        }
    }

    /// A remembered upstream 404: fresh for `negative_ttl`, then asked again (never served
    /// stale, so a 404 seen during an outage cannot outlive the negative TTL).
    pub fn negative(&self, checked_at: SystemTime, now: SystemTime) -> Freshness {
        let age = now.duration_since(checked_at).unwrap_or_default();
        if age < self.negative_ttl {
            Freshness::Fresh
        } else {
            Freshness::MustRevalidate
        }
    }

    /// Whether upstream may be asked again after a failure at `failed_at`.
    pub fn may_retry(&self, failed_at: Option<SystemTime>, now: SystemTime) -> bool {
        match failed_at {
            None => true,
            Some(t) => now.duration_since(t).unwrap_or_default() >= self.error_backoff,
        }
    }
}

/// Wall-clock source. `Clock::system()` in production; `Clock::manual()` in tests.
#[derive(Clone, Debug)]
pub struct Clock {
    /// Seconds added to the system time (manual clocks only move forward).
    offset_ms: Arc<AtomicU64>,
}

impl Clock {
    pub fn system() -> Self {
        Self {
            offset_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A clock tests can move forward with [`Clock::advance`].
    pub fn manual() -> Self {
        Self::system()
    }

    pub fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        from_unix_secs(1_000_000 + s)
    }

    #[test]
    fn index_freshness_windows() {
        let p = Policy {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(100),
            ..Policy::default()
        };
        assert_eq!(p.index(at(0), at(0)), Freshness::Fresh);
        assert_eq!(p.index(at(0), at(59)), Freshness::Fresh);
        assert_eq!(p.index(at(0), at(60)), Freshness::StaleWhileRevalidate);
        assert_eq!(p.index(at(0), at(159)), Freshness::StaleWhileRevalidate);
        assert_eq!(p.index(at(0), at(160)), Freshness::MustRevalidate);
        // A clock that went backwards does not make entries stale.
        assert_eq!(p.index(at(10), at(0)), Freshness::Fresh);
    }

    #[test]
    fn zero_ttl_always_revalidates() {
        let p = Policy {
            ttl: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            ..Policy::default()
        };
        assert_eq!(p.index(at(0), at(0)), Freshness::MustRevalidate);
    }

    #[test]
    fn negative_entries_expire() {
        let p = Policy::default();
        assert_eq!(p.negative(at(0), at(29)), Freshness::Fresh);
        assert_eq!(p.negative(at(0), at(30)), Freshness::MustRevalidate);
    }

    #[test]
    fn error_backoff() {
        let p = Policy::default();
        assert!(p.may_retry(None, at(0)));
        assert!(!p.may_retry(Some(at(0)), at(4)));
        assert!(p.may_retry(Some(at(0)), at(5)));
    }

    #[test]
    fn manual_clock_moves() {
        let c = Clock::manual();
        let t0 = c.now();
        c.advance(Duration::from_secs(3600));
        assert!(c.now().duration_since(t0).unwrap() >= Duration::from_secs(3600));
    }
}
