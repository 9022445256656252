//! The HTTP client for the upstream sparse registry: conditional index fetches, config.json
//! and `.crate` downloads, with connect and total timeouts on every request. It reports what
//! happened; cache decisions are made by the mirror.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Metrics, UpstreamKind};
use hyper::StatusCode;
use reqwest::header;

/// Why an upstream request failed. All of these are transient from cargo's point of view.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("could not connect to upstream: {0}")]
    Connect(String),
    #[error("upstream answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("upstream transfer failed: {0}")]
    Transfer(String),
}

impl UpstreamError {
    pub fn client_status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Status { status: 429, .. }
            | UpstreamError::Status { status: 503, .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            UpstreamError::Timeout
        } else if e.is_connect() {
            UpstreamError::Connect(error_chain(&e))
        } else {
            UpstreamError::Transfer(error_chain(&e))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Result of a (conditional) index fetch.
#[derive(Debug)]
pub enum IndexFetch {
    Modified {
        body: Bytes,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    NotModified,
    NotFound,
}

/// A `.crate` body being received from upstream.
pub struct CrateDownload<'a> {
    up: &'a Upstream,
    resp: reqwest::Response,
    started: Instant,
    read: u64,
    /// Content-Length as announced (a lie shows up as a transfer error).
    pub len: Option<u64>,
}

impl CrateDownload<'_> {
    /// The next piece of the body; `Ok(None)` at the end. Enforces `upstream.max_body`.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let r = match self.resp.chunk().await.map_err(UpstreamError::from_reqwest) {
            Ok(Some(c)) => {
                self.read += c.len() as u64;
                if self.read > self.up.max_body {
                    Err(UpstreamError::Transfer(format!(
                        "body larger than the {} byte limit",
                        self.up.max_body
                    )))
                } else {
                    return Ok(Some(c));
                }
            }
            other => other,
        };
        self.up.observe(UpstreamKind::Crate, self.started, &r);
        r
    }
}

/// Upstream reachability as last observed, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Unknown,
    Reachable,
    Unreachable,
}

pub struct UpstreamSettings<'a> {
    /// The sparse index root URL, ending in `/` (no `sparse+`).
    pub index_url: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca_file: Option<&'a Path>,
    /// Largest body accepted from upstream.
    pub max_body: u64,
}

pub struct Upstream {
    index_url: String,
    /// Index and config.json: gzip accepted and decoded (stored bytes are the decoded ones).
    index_client: reqwest::Client,
    /// `.crate` downloads: never decoded, the checksum covers the bytes as sent.
    crate_client: reqwest::Client,
    max_body: u64,
    state: AtomicU8,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read upstream.ca_file {path}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream.ca_file {path} holds no usable PEM certificate")]
    CaParse {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Upstream {
    pub fn new(s: UpstreamSettings<'_>, metrics: Arc<Metrics>) -> Result<Self, UpstreamSetupError> {
        install_crypto_provider();
        let extra = match s.ca_file {
            Some(p) => {
                let pem = std::fs::read(p).map_err(|source| UpstreamSetupError::CaFile {
                    path: p.display().to_string(),
                    source,
                })?;
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    UpstreamSetupError::CaParse {
                        path: p.display().to_string(),
                        source,
                    }
                })?
            }
            None => Vec::new(),
        };
        let build = |gzip: bool| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(s.connect_timeout)
                .timeout(s.timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .gzip(gzip);
            if !extra.is_empty() {
                b = b.tls_certs_merge(extra.clone());
            }
            b.build().map_err(UpstreamSetupError::Client)
        };
        Ok(Self {
            index_url: s.index_url,
            index_client: build(true)?,
            crate_client: build(false)?,
            max_body: s.max_body,
            state: AtomicU8::new(0),
            metrics,
        })
    }

    pub fn index_url(&self) -> &str {
        &self.index_url
    }

    pub fn reachability(&self) -> Reachability {
        match self.state.load(Ordering::Relaxed) {
            1 => Reachability::Reachable,
            2 => Reachability::Unreachable,
            _ => Reachability::Unknown,
        }
    }

    fn observe<T>(&self, kind: UpstreamKind, started: Instant, r: &Result<T, UpstreamError>) {
        self.metrics.upstream(kind, r.is_ok(), started.elapsed());
        let v = match r {
            Ok(_) => 1,
            Err(UpstreamError::Status { status, .. }) if *status < 500 && *status != 429 => 1,
            Err(_) => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// GETs `<index>/<path>`; with validators, a conditional request.
    pub async fn fetch_index(
        &self,
        path: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<IndexFetch, UpstreamError> {
        let started = Instant::now();
        let url = format!("{}{}", self.index_url, path);
        let mut req = self
            .index_client
            .get(&url)
            .header("cargo-protocol", "version=1")
            .header(header::ACCEPT, "text/plain");
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        } else if let Some(lm) = last_modified {
            req = req.header(header::IF_MODIFIED_SINCE, lm);
        }
        let r = self.index_response(req).await;
        self.observe(UpstreamKind::Index, started, &r);
        r
    }

    async fn index_response(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<IndexFetch, UpstreamError> {
        let resp = req.send().await.map_err(UpstreamError::from_reqwest)?;
        match resp.status().as_u16() {
            200 => {
                let h = resp.headers();
                let get = |n: header::HeaderName| {
                    h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned)
                };
                let etag = get(header::ETAG);
                let last_modified = get(header::LAST_MODIFIED);
                let body = self.read_body(resp).await?;
                Ok(IndexFetch::Modified {
                    body,
                    etag,
                    last_modified,
                })
            }
            304 => Ok(IndexFetch::NotModified),
            // 410 and 451 mean "gone" upstream; cargo 1.96+ only understands 404.
            404 | 410 | 451 => Ok(IndexFetch::NotFound),
            _ => Err(status_error(&resp)),
        }
    }

    /// The upstream's `config.json`, unconditionally.
    pub async fn fetch_config(&self) -> Result<Bytes, UpstreamError> {
        let started = Instant::now();
        let url = format!("{}config.json", self.index_url);
        let r = async {
            let resp = self
                .index_client
                .get(&url)
                .header("cargo-protocol", "version=1")
                .send()
                .await
                .map_err(UpstreamError::from_reqwest)?;
            if resp.status() != StatusCode::OK {
                return Err(status_error(&resp));
            }
            self.read_body(resp).await
        }
        .await;
        self.observe(UpstreamKind::Config, started, &r);
        r
    }

    /// Starts a `.crate` download; the body is then read with [`CrateDownload::chunk`].
    /// `Ok(None)` is a real upstream 404.
    pub async fn open_crate(&self, url: &str) -> Result<Option<CrateDownload<'_>>, UpstreamError> {
        let started = Instant::now();
        let r = async {
            let resp = self
                .crate_client
                .get(url)
                .header(header::ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(UpstreamError::from_reqwest)?;
            match resp.status().as_u16() {
                200 => {
                    if resp.content_length().is_some_and(|n| n > self.max_body) {
                        return Err(UpstreamError::Transfer(format!(
                            "body larger than the {} byte limit",
                            self.max_body
                        )));
                    }
                    Ok(Some(resp))
                }
                404 | 410 | 451 => Ok(None),
                _ => Err(status_error(&resp)),
            }
        }
        .await;
        match r {
            Ok(Some(resp)) => Ok(Some(CrateDownload {
                up: self,
                len: resp.content_length(),
                resp,
                started,
                read: 0,
            })),
            other => {
                self.observe(UpstreamKind::Crate, started, &other);
                other.map(|_| None)
            }
        }
    }

    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        if resp.content_length().is_some_and(|n| n > self.max_body) {
            return Err(UpstreamError::Transfer(format!(
                "body larger than the {} byte limit",
                self.max_body
            )));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::from_reqwest)? {
            if (buf.len() + chunk.len()) as u64 > self.max_body {
                return Err(UpstreamError::Transfer(format!(
                    "body larger than the {} byte limit",
                    self.max_body
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// ring as the process's rustls provider (idempotent). The platform verifier supplies the
/// OS root store, so corporate and TLS-inspecting CAs installed on the machine are trusted.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn status_error(resp: &reqwest::Response) -> UpstreamError {
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    UpstreamError::Status {
        status: resp.status().as_u16(),
        retry_after,
    }
}

/// RFC 9110 §10.2.3: delay-seconds or an HTTP-date.
fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<u64> {
    let v = v.trim();
    v.parse::<u64>().ok().or_else(|| {
        let at = httpdate::parse_http_date(v).ok()?;
        Some(at.duration_since(now).map_or(0, |d| d.as_secs()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 02:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(7));
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 02:00:30 GMT", now),
            Some(30)
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 01:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
