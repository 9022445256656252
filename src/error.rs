//! The errors a client can see, each with the HTTP status cargo handles well. Cargo treats
//! 404 as "no such crate" and retries 5xx/429, so an upstream fault must never become 404.

use hyper::StatusCode;

use crate::upstream::UpstreamError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No (valid) token where one is required; answered with `WWW-Authenticate: Cargo`.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// `--offline` (or the upstream is never asked) and the data is not in the cache.
    #[error("{0} is not cached and wharf runs offline (upstream is never contacted)")]
    NotCached(String),
    #[error("{what}: {source}")]
    Upstream {
        what: String,
        #[source]
        source: UpstreamError,
    },
    #[error(
        "checksum mismatch for {name} {version}: the index says sha256 {expected}, upstream sent bytes with sha256 {actual}; nothing was cached"
    )]
    ChecksumMismatch {
        name: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("storage failed: {0}")]
    Storage(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotCached(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream { source, .. } => source.client_status(),
            Error::ChecksumMismatch { .. } => StatusCode::BAD_GATEWAY,
            Error::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds for a `Retry-After` header, when one helps cargo (1.89+ honours it on 429/503).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Upstream { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// Cargo's error body: `{"errors":[{"detail":"..."}]}`.
    pub fn to_json(&self) -> String {
        cargo_error_json(&self.to_string())
    }
}

pub fn cargo_error_json(detail: &str) -> String {
    serde_json::json!({ "errors": [ { "detail": detail } ] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_faults_are_never_404() {
        for e in [
            UpstreamError::Timeout,
            UpstreamError::Connect("refused".into()),
            UpstreamError::Status {
                status: 500,
                retry_after: None,
            },
            UpstreamError::Status {
                status: 429,
                retry_after: Some(3),
            },
            UpstreamError::Transfer("reset".into()),
        ] {
            let err = Error::Upstream {
                what: "x".into(),
                source: e,
            };
            assert!(err.status().is_server_error(), "{err}");
        }
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&Error::NotFound("no \"x\"".into()).to_json()).unwrap();
        assert_eq!(v["errors"][0]["detail"], "no \"x\"");
    }
}
