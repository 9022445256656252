//! `wharf verify`: re-hash every stored crate against the checksum of its index line.
//! Mirror crates that fail (and damaged index records) can be moved aside with `--repair`,
//! so the next request fetches them again; private crates cannot be refetched and are
//! only reported.

use crate::index;
use crate::record;
use crate::store::{Key, Store};

#[derive(Debug, Default)]
pub struct Report {
    pub checked: usize,
    /// (what, why)
    pub problems: Vec<(String, String)>,
    /// Keys moved under `quarantine-v1/`.
    pub repaired: Vec<String>,
    /// Mirror crates whose index record is absent (cannot be checked).
    pub unverifiable: Vec<String>,
}

const QUARANTINE: &str = "quarantine-v1/";

/// `crates-v1/<prefix>/<lower>/<lower>-<version>.crate` -> (lower name, version).
fn parse_mirror_key(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("crates-v1/")?;
    let (dir, file) = rest.rsplit_once('/')?;
    let name = dir.rsplit('/').next()?;
    let version = file
        .strip_prefix(&format!("{name}-"))?
        .strip_suffix(".crate")?;
    Some((name.to_owned(), version.to_owned()))
}

async fn quarantine(store: &dyn Store, key: &Key, report: &mut Report) {
    let Ok(Some(obj)) = store.get(key).await else {
        return;
    };
    let aside = Key::raw(format!("{QUARANTINE}{}", key.as_str()));
    if store.put(&aside, obj.bytes).await.is_ok() && store.delete(key).await.is_ok() {
        report.repaired.push(key.as_str().to_owned());
    }
}

pub async fn verify(store: &dyn Store, repair: bool) -> Result<Report, String> {
    let mut report = Report::default();
    let mut keys = store.list("crates-v1/").await.map_err(|e| e.to_string())?;
    keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    for key in keys {
        let Some((name, version)) = parse_mirror_key(key.as_str()) else {
            report
                .problems
                .push((key.as_str().to_owned(), "unexpected file name".into()));
            continue;
        };
        let Ok(cname) = index::CrateName::parse(&name) else {
            report
                .problems
                .push((key.as_str().to_owned(), "invalid crate name".into()));
            continue;
        };
        report.checked += 1;
        let ikey = Key::index(&cname);
        let cksum = match store.get(&ikey).await {
            Ok(Some(o)) => match record::decode_index(&o.bytes) {
                Ok((_, body)) => index::find_version(&body, &name, &version).map(|v| v.cksum),
                Err(e) => {
                    report.problems.push((
                        ikey.as_str().to_owned(),
                        format!("damaged index record: {e}"),
                    ));
                    if repair {
                        quarantine(store, &ikey, &mut report).await;
                    }
                    None
                }
            },
            _ => None,
        };
        let Some(cksum) = cksum else {
            report.unverifiable.push(format!("{name} {version}"));
            continue;
        };
        match store.get(&key).await {
            Ok(Some(o)) => {
                let actual = index::sha256_hex(&o.bytes);
                if actual != cksum {
                    report.problems.push((
                        format!("{name} {version}"),
                        format!("sha256 {actual}, index says {cksum}"),
                    ));
                    if repair {
                        quarantine(store, &key, &mut report).await;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => report
                .problems
                .push((key.as_str().to_owned(), format!("unreadable: {e}"))),
        }
    }

    // Private crates: every index line must have its blob, with the right hash.
    let mut idx = store
        .list("private-v1/index/")
        .await
        .map_err(|e| e.to_string())?;
    idx.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    for ikey in idx {
        let Ok(Some(o)) = store.get(&ikey).await else {
            continue;
        };
        for line in o.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                report
                    .problems
                    .push((ikey.as_str().to_owned(), "unparsable index line".into()));
                continue;
            };
            let label = format!(
                "private {} {}",
                v["name"].as_str().unwrap_or("?"),
                v["vers"].as_str().unwrap_or("?")
            );
            let Some(ck) = v["cksum"].as_str().filter(|c| index::is_sha256_hex(c)) else {
                report.problems.push((label, "no valid cksum".into()));
                continue;
            };
            report.checked += 1;
            match store.get(&Key::private_blob(ck)).await {
                Ok(Some(b)) if index::sha256_hex(&b.bytes) == ck => {}
                Ok(Some(_)) => report.problems.push((
                    label,
                    "the stored .crate does not match its checksum (restore it from a backup)"
                        .into(),
                )),
                Ok(None) => report.problems.push((
                    label,
                    "the .crate is missing (restore it from a backup)".into(),
                )),
                Err(e) => report.problems.push((label, format!("unreadable: {e}"))),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_keys() {
        assert_eq!(
            parse_mirror_key("crates-v1/se/rd/serde/serde-1.0.0+b.crate"),
            Some(("serde".into(), "1.0.0+b".into()))
        );
        assert_eq!(
            parse_mirror_key("crates-v1/1/a/a-0.1.0.crate"),
            Some(("a".into(), "0.1.0".into()))
        );
        assert_eq!(parse_mirror_key("crates-v1/x/other.crate"), None);
    }
}
