//! Versioned on-disk records. A cached index file is stored as one object: a magic line
//! naming the format version, one JSON line of metadata, then the upstream bytes verbatim.
//! Keeping data and metadata in one object makes every update a single atomic replace.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC_V1: &[u8] = b"wharf-index v1\n";

/// What we know about a cached index file besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Unix seconds when upstream last sent or confirmed these bytes.
    pub fetched_at: u64,
    /// Our strong ETag for the body (see `index::etag_for`).
    pub etag: String,
    /// Upstream validators, replayed on revalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_last_modified: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("unknown record format (no wharf-index header)")]
    UnknownFormat,
    #[error("record metadata is damaged: {0}")]
    BadMeta(String),
}

pub fn encode_index(meta: &IndexMeta, body: &[u8]) -> Bytes {
    let meta = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC_V1.len() + meta.len() + 1 + body.len());
    out.extend_from_slice(MAGIC_V1);
    out.extend_from_slice(&meta);
    out.push(b'\n');
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Splits a record into metadata and the body (a zero-copy slice of `rec`).
pub fn decode_index(rec: &Bytes) -> Result<(IndexMeta, Bytes), RecordError> {
    let rest = rec
        .strip_prefix(MAGIC_V1)
        .ok_or(RecordError::UnknownFormat)?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| RecordError::BadMeta("no end of metadata line".into()))?;
    let meta: IndexMeta =
        serde_json::from_slice(&rest[..nl]).map_err(|e| RecordError::BadMeta(e.to_string()))?;
    let start = MAGIC_V1.len() + nl + 1;
    Ok((meta, rec.slice(start..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bytes_exactly() {
        let meta = IndexMeta {
            fetched_at: 42,
            etag: "\"abc\"".into(),
            upstream_etag: Some("W/\"u\"".into()),
            upstream_last_modified: None,
        };
        let body = b"{\"name\":\"a\"}\n\n{weird line\n\x00\xff";
        let rec = encode_index(&meta, body);
        let (m, b) = decode_index(&rec).unwrap();
        assert_eq!(m, meta);
        assert_eq!(&b[..], &body[..]);
    }

    #[test]
    fn v1_format_is_stable() {
        // A record written by this version must stay readable by later ones.
        let rec = Bytes::from_static(
            b"wharf-index v1\n{\"fetched_at\":7,\"etag\":\"\\\"e\\\"\"}\nline1\n",
        );
        let (m, b) = decode_index(&rec).unwrap();
        assert_eq!(m.fetched_at, 7);
        assert_eq!(m.etag, "\"e\"");
        assert_eq!(&b[..], b"line1\n");
    }

    #[test]
    fn damaged_records_are_detected() {
        assert_eq!(
            decode_index(&Bytes::from_static(b"garbage")),
            Err(RecordError::UnknownFormat)
        );
        assert!(matches!(
            decode_index(&Bytes::from_static(b"wharf-index v1\n{\"fetched")),
            Err(RecordError::BadMeta(_))
        ));
        assert!(matches!(
            decode_index(&Bytes::from_static(b"wharf-index v1\n{}\nbody")),
            Err(RecordError::BadMeta(_))
        ));
    }
}
