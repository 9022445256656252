//! `wharf prefetch`: warm a running wharf from lockfiles. Planning (which packages, from
//! which source) is pure; fetching asks the server for each index file and `.crate` with
//! bounded concurrency and checks every crate against the lockfile's checksum.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;

use crate::index::{self, CrateName};

/// What to do with one lockfile package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    /// A crates.io package: fetched through the mirror.
    Mirror {
        name: String,
        version: String,
        checksum: Option<String>,
    },
    /// A package wharf does not serve through the mirror (git, path, other registries).
    Skip { name: String, why: String },
}

#[derive(Deserialize)]
struct Lock {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

fn is_crates_io(source: &str) -> bool {
    let s = source.trim_end_matches('/');
    s == format!("registry+{}", tame_index::CRATES_IO_INDEX)
        || s == tame_index::CRATES_IO_HTTP_INDEX.trim_end_matches('/')
}

/// The packages of one lockfile (v1 to v4), in file order.
pub fn plan(lock: &str) -> Result<Vec<Item>, String> {
    let lock: Lock = toml::from_str(lock).map_err(|e| format!("not a Cargo.lock: {e}"))?;
    Ok(lock
        .package
        .into_iter()
        .filter_map(|p| {
            let source = p.source?; // no source: the workspace's own or a path package
            Some(if is_crates_io(&source) {
                Item::Mirror {
                    name: p.name,
                    version: p.version,
                    checksum: p.checksum,
                }
            } else if source.starts_with("git+") {
                Item::Skip {
                    name: p.name,
                    why: "git dependency".into(),
                }
            } else {
                Item::Skip {
                    name: p.name,
                    why: format!("not from crates.io ({source})"),
                }
            })
        })
        .collect())
}

/// `plan` over lockfiles on disk, concatenated.
pub fn plan_files(lockfiles: &[std::path::PathBuf]) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for f in lockfiles {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        items.extend(plan(&text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ok(items)
}

#[derive(Debug, Default)]
pub struct Summary {
    pub fetched: usize,
    pub cached: usize,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn crates_per_second(&self) -> f64 {
        (self.fetched + self.cached) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Outcome {
    Fetched,
    Cached,
}

/// Fetches every planned crate through the wharf at `server`, `jobs` at a time.
pub async fn run(items: Vec<Item>, server: &str, jobs: usize, progress: bool) -> Summary {
    let server = server.trim_end_matches('/').to_owned();
    let mut summary = Summary::default();
    let mut todo = BTreeSet::new();
    for it in items {
        match it {
            Item::Skip { name, why } => summary.skipped.push((name, why)),
            m @ Item::Mirror { .. } => {
                todo.insert(m);
            }
        }
    }
    crate::upstream::install_crypto_provider();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            summary.failed.push(("*".into(), e.to_string()));
            return summary;
        }
    };
    let bar = if progress && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(todo.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} crates  {elapsed}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let start = Instant::now();
    let total = todo.len();
    let mut results = futures_util::stream::iter(todo.into_iter().map(|it| {
        let client = client.clone();
        let server = server.clone();
        async move {
            let Item::Mirror {
                name,
                version,
                checksum,
            } = it
            else {
                unreachable!("only mirror items are queued")
            };
            let r = fetch_one(&client, &server, &name, &version, checksum.as_deref()).await;
            (format!("{name} {version}"), r)
        }
    }))
    .buffer_unordered(jobs.max(1));
    let mut done = 0;
    while let Some((label, r)) = results.next().await {
        done += 1;
        let line = match &r {
            Ok(Outcome::Fetched) => format!("fetched  {label}"),
            Ok(Outcome::Cached) => format!("cached   {label}"),
            Err(e) => format!("FAILED   {label}: {e}"),
        };
        match &bar {
            Some(b) => {
                b.inc(1);
                b.set_message(label.clone());
                if r.is_err() {
                    b.println(line);
                }
            }
            None if progress => eprintln!("[{done}/{total}] {line}"),
            None => {}
        }
        match r {
            Ok(Outcome::Fetched) => summary.fetched += 1,
            Ok(Outcome::Cached) => summary.cached += 1,
            Err(e) => summary.failed.push((label, e)),
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.elapsed = start.elapsed();
    summary
}

async fn fetch_one(
    client: &reqwest::Client,
    server: &str,
    name: &str,
    version: &str,
    checksum: Option<&str>,
) -> Result<Outcome, String> {
    let krate = CrateName::parse(name).map_err(|e| e.to_string())?;
    let detail = |r: reqwest::Response| async move {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let d = v["errors"][0]["detail"]
            .as_str()
            .unwrap_or(&text)
            .to_owned();
        format!("HTTP {status}: {d}")
    };
    let url = format!("{server}/index/{}", krate.index_path());
    let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("index: {}", detail(r).await));
    }
    let url = format!("{server}/api/v1/crates/{name}/{version}/download");
    let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(detail(r).await);
    }
    let hit = r
        .headers()
        .get("x-wharf-cache")
        .is_some_and(|v| v.as_bytes() == b"hit");
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if let Some(want) = checksum {
        let got = index::sha256_hex(&body);
        if got != want {
            return Err(format!(
                "checksum mismatch: Cargo.lock says {want}, wharf served {got}"
            ));
        }
    }
    Ok(if hit {
        Outcome::Cached
    } else {
        Outcome::Fetched
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_registry_packages_and_skips_the_rest() {
        let lock = format!(
            r#"
version = 4

[[package]]
name = "app"
version = "0.1.0"

[[package]]
name = "serde"
version = "1.0.200"
source = "registry+{}"
checksum = "{}"

[[package]]
name = "fast"
version = "0.2.0"
source = "{}"
checksum = "{}"

[[package]]
name = "forked"
version = "0.1.0"
source = "git+https://example.invalid/forked#abc"

[[package]]
name = "acme-util"
version = "0.1.0"
source = "sparse+http://wharf:8080/private/index/"
checksum = "{}"
"#,
            tame_index::CRATES_IO_INDEX,
            "a".repeat(64),
            tame_index::CRATES_IO_HTTP_INDEX,
            "b".repeat(64),
            "c".repeat(64)
        );
        let items = plan(&lock).unwrap();
        assert_eq!(items.len(), 4, "{items:?}");
        assert!(
            matches!(&items[0], Item::Mirror { name, checksum: Some(_), .. } if name == "serde")
        );
        assert!(matches!(&items[1], Item::Mirror { name, .. } if name == "fast"));
        assert!(matches!(&items[2], Item::Skip { why, .. } if why == "git dependency"));
        assert!(matches!(&items[3], Item::Skip { why, .. } if why.contains("not from crates.io")));
        assert!(plan("garbage [").is_err());
    }
}
