//! Settings: proxy.toml (strict: unknown keys are errors), overridden by `WHARF_*`
//! environment variables and command-line flags. Merging is a pure function, so the
//! precedence rules (flag > env > file > default) are unit-tested.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// proxy.toml as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub offline: Option<bool>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub private: PrivateFile,
    #[serde(default)]
    pub auth: AuthFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// A client must send its request headers within this (slowloris guard).
    pub header_read_timeout: Option<String>,
    /// A client must send a request body (publish) within this.
    pub body_timeout: Option<String>,
    /// PEM certificate chain and private key: serve HTTPS with ALPN h2.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateFile {
    /// Glob patterns of names that are never fetched from the upstream (e.g. `acme-*`).
    pub reserved: Option<Vec<String>>,
    pub max_crate_size: Option<ByteSize>,
    pub max_body: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Every private index read and download needs a token.
    pub read_required: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `"crates-io"` or a sparse index URL.
    pub index: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub max_body: Option<ByteSize>,
    /// Same as the top-level `offline`.
    pub offline: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub index_ttl: Option<String>,
    pub index_stale_while_revalidate: Option<String>,
    pub negative_ttl: Option<String>,
    pub hot_index_size: Option<ByteSize>,
    pub hot_crate_size: Option<ByteSize>,
    pub hot_crate_max_item: Option<ByteSize>,
    /// Evict least-recently-used crates when the store grows over this.
    pub max_size: Option<ByteSize>,
    /// Lockfiles whose crates are never evicted.
    pub pin: Option<Vec<PathBuf>>,
    /// How often the background loop flushes access times and enforces max_size.
    pub gc_interval: Option<String>,
}

/// Values from flags or the environment (clap reads both; the flag wins).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub offline: bool,
    pub upstream: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// The resolved settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: `http://<bound address>`, known once the socket is bound.
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub offline: bool,
    pub log_format: LogFormat,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub server: ServerConfig,
    pub private: PrivateConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    /// (certificate chain, private key), both PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct PrivateConfig {
    pub reserved: Vec<String>,
    pub max_crate_size: u64,
    /// Largest publish request body, enforced before buffering.
    pub max_body: u64,
    pub read_required: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Sparse index root, `http(s)://.../` (no `sparse+`), with a trailing slash.
    pub index_url: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub max_body: u64,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub policy: Policy,
    pub hot_index_bytes: u64,
    pub hot_crate_bytes: u64,
    pub hot_crate_max_item: u64,
    pub max_size: Option<u64>,
    pub pin: Vec<PathBuf>,
    pub gc_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting {key} = {value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CONFIG: &str = "proxy.toml";

/// Reads `path` if given (it must exist), else `proxy.toml` if present, else defaults.
pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let (path, must_exist) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    })
}

pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn duration(
    key: &'static str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).map_err(|e| ConfigError::Invalid {
            key,
            value: s,
            why: format!("{e} (write e.g. \"30s\", \"5m\")"),
        }),
    }
}

/// The upstream sparse index URL for a setting value.
pub fn upstream_index_url(v: &str) -> Result<String, ConfigError> {
    let url = if v == "crates-io" {
        tame_index::CRATES_IO_HTTP_INDEX
    } else {
        v
    };
    let url = url.strip_prefix("sparse+").unwrap_or(url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            key: "upstream.index",
            value: v.to_owned(),
            why: "expected \"crates-io\" or a sparse index URL (http:// or https://)".into(),
        });
    }
    let mut url = url.to_owned();
    if !url.ends_with('/') {
        url.push('/');
    }
    Ok(url)
}

/// Merges file and overrides (flag > env > file > default). Pure.
pub fn resolve(file: FileConfig, ov: Overrides) -> Result<Config, ConfigError> {
    let listen_s = ov
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_s.parse().map_err(|e| ConfigError::Invalid {
        key: "listen",
        value: listen_s.clone(),
        why: format!("{e} (write e.g. \"127.0.0.1:8080\")"),
    })?;
    let public_url = match ov.public_url.or(file.public_url) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.trim_end_matches('/').to_owned())
        }
        Some(u) => {
            return Err(ConfigError::Invalid {
                key: "public_url",
                value: u,
                why: "must start with http:// or https://".into(),
            });
        }
        None => None,
    };
    let up = file.upstream;
    let index = ov
        .upstream
        .or(up.index)
        .unwrap_or_else(|| "crates-io".to_owned());
    let c = file.cache;
    let max_crate_size = file.private.max_crate_size.map_or(10 << 20, |b| b.as_u64());
    let private = PrivateConfig {
        reserved: file.private.reserved.unwrap_or_default(),
        max_crate_size,
        // The crate, up to 1 MiB of JSON metadata, and the two length fields.
        max_body: file
            .private
            .max_body
            .map_or(max_crate_size + (1 << 20) + 8, |b| b.as_u64()),
        read_required: file.auth.read_required.unwrap_or(false),
    };
    for p in &private.reserved {
        if let Err(e) = glob::Pattern::new(p) {
            return Err(ConfigError::Invalid {
                key: "private.reserved",
                value: p.clone(),
                why: e.to_string(),
            });
        }
    }
    let defaults = Policy::default();
    let policy = Policy {
        ttl: duration("cache.index_ttl", c.index_ttl, defaults.ttl)?,
        stale_while_revalidate: duration(
            "cache.index_stale_while_revalidate",
            c.index_stale_while_revalidate,
            defaults.stale_while_revalidate,
        )?,
        negative_ttl: duration("cache.negative_ttl", c.negative_ttl, defaults.negative_ttl)?,
        error_backoff: defaults.error_backoff,
    };
    Ok(Config {
        listen,
        public_url,
        data_dir: ov
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data")),
        offline: ov.offline || file.offline.or(up.offline).unwrap_or(false),
        log_format: ov.log_format.or(file.log_format).unwrap_or_default(),
        upstream: UpstreamConfig {
            index_url: upstream_index_url(&index)?,
            connect_timeout: duration(
                "upstream.connect_timeout",
                up.connect_timeout,
                Duration::from_secs(5),
            )?,
            timeout: duration("upstream.timeout", up.timeout, Duration::from_secs(60))?,
            ca_file: up.ca_file,
            max_body: up.max_body.map_or(256 << 20, |b| b.as_u64()),
        },
        cache: CacheConfig {
            policy,
            hot_index_bytes: c.hot_index_size.map_or(128 << 20, |b| b.as_u64()),
            hot_crate_bytes: c.hot_crate_size.map_or(256 << 20, |b| b.as_u64()),
            hot_crate_max_item: c.hot_crate_max_item.map_or(1 << 20, |b| b.as_u64()),
            max_size: c.max_size.map(|b| b.as_u64()),
            pin: c.pin.unwrap_or_default(),
            gc_interval: duration("cache.gc_interval", c.gc_interval, Duration::from_secs(60))?,
        },
        server: ServerConfig {
            header_read_timeout: duration(
                "server.header_read_timeout",
                file.server.header_read_timeout,
                Duration::from_secs(30),
            )?,
            body_timeout: duration(
                "server.body_timeout",
                file.server.body_timeout,
                Duration::from_secs(60),
            )?,
            tls: match (file.server.tls_cert, file.server.tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "server.tls_cert",
                        value: String::new(),
                        why: "server.tls_cert and server.tls_key go together".into(),
                    });
                }
            },
        },
        private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.public_url, None);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(!c.offline);
        assert_eq!(
            c.upstream.index_url,
            tame_index::CRATES_IO_HTTP_INDEX.trim_start_matches("sparse+")
        );
        assert_eq!(c.cache.policy, Policy::default());
    }

    #[test]
    fn precedence_flag_over_file() {
        let file = parse_file(
            r#"
            listen = "127.0.0.1:9000"
            public_url = "https://wharf.example/"
            data_dir = "/srv/wharf"
            [upstream]
            index = "sparse+http://127.0.0.1:1/idx"
            timeout = "10s"
            [cache]
            index_ttl = "2m"
            hot_crate_size = "64MiB"
            "#,
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.public_url.as_deref(), Some("https://wharf.example"));
        assert_eq!(c.data_dir, PathBuf::from("/srv/wharf"));
        assert_eq!(c.upstream.index_url, "http://127.0.0.1:1/idx/");
        assert_eq!(c.upstream.timeout, Duration::from_secs(10));
        assert_eq!(c.cache.policy.ttl, Duration::from_secs(120));
        assert_eq!(c.cache.hot_crate_bytes, 64 << 20);
    }

    #[test]
    fn private_and_auth_sections() {
        let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.private.max_crate_size, 10 << 20);
        assert!(c.private.max_body > c.private.max_crate_size);
        assert!(!c.private.read_required);
        let f = parse_file(
            "[private]\nreserved = [\"acme-*\"]\nmax_crate_size = \"1MiB\"\n[auth]\nread_required = true",
        )
        .unwrap();
        let c = resolve(f, Overrides::default()).unwrap();
        assert_eq!(c.private.reserved, vec!["acme-*"]);
        assert_eq!(c.private.max_crate_size, 1 << 20);
        assert!(c.private.read_required);
        let f = parse_file("[private]\nreserved = [\"[\"]").unwrap();
        assert!(resolve(f, Overrides::default()).is_err());
    }

    #[test]
    fn shipped_proxy_toml_parses() {
        let text = include_str!("../proxy.toml");
        let c = resolve(parse_file(text).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(parse_file("nonsense = 1").is_err());
        assert!(parse_file("[cache]\nindex_tll = \"1s\"").is_err());
        let bad = |t: &str| resolve(parse_file(t).unwrap(), Overrides::default()).unwrap_err();
        assert!(bad("listen = \"nowhere\"").to_string().contains("listen"));
        assert!(
            bad("[cache]\nindex_ttl = \"soon\"")
                .to_string()
                .contains("index_ttl")
        );
        assert!(
            bad("[upstream]\nindex = \"ftp://x\"")
                .to_string()
                .contains("upstream.index")
        );
        assert!(
            bad("public_url = \"wharf:8080\"")
                .to_string()
                .contains("public_url")
        );
    }

    #[test]
    fn offline_from_either_place() {
        let c = resolve(
            parse_file("[upstream]\noffline = true").unwrap(),
            Overrides::default(),
        );
        assert!(c.unwrap().offline);
        let c = resolve(
            FileConfig::default(),
            Overrides {
                offline: true,
                ..Default::default()
            },
        );
        assert!(c.unwrap().offline);
    }
}
