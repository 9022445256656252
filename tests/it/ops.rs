//! Build-farm operations: prefetch from lockfiles, then serving with the upstream gone.

use super::support::*;
use super::{CONSUMER_DEPS, publish_graph};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_then_fetch_with_upstream_down() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    // A lockfile made elsewhere (another wharf, so the one under test starts empty).
    let other = tempfile::tempdir().unwrap();
    let w1 = Wharf::start(&wharf_config(&up, other.path())).await;
    let env = CargoEnv::new(&w1.url, CONSUMER_DEPS);
    let (ok, out) = env.cargo(&["generate-lockfile"]).await;
    assert!(ok, "{out}");
    w1.running.shutdown().await.unwrap();
    let lockfile = env.project().join("Cargo.lock");

    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let lock = std::fs::read_to_string(&lockfile).unwrap();
    let items = wharf::ops::prefetch::plan(&lock).unwrap();
    let s = wharf::ops::prefetch::run(items.clone(), &w.url, 4, false).await;
    assert_eq!((s.fetched, s.cached, s.failed.len()), (4, 0, 0), "{s:?}");
    let s = wharf::ops::prefetch::run(items, &w.url, 4, false).await;
    assert_eq!(
        (s.fetched, s.cached),
        (0, 4),
        "second prefetch must hit the cache"
    );

    // No upstream: a fresh client still gets everything.
    up.set_down(true);
    let client = CargoEnv::new(&w.url, CONSUMER_DEPS);
    std::fs::copy(&lockfile, client.project().join("Cargo.lock")).unwrap();
    let (ok, out) = client.cargo(&["fetch", "--locked"]).await;
    assert!(ok, "fetch after prefetch with upstream down failed:\n{out}");

    // The CLI reports failures and exits non-zero.
    let bad = data.path().join("bad.lock");
    std::fs::write(
        &bad,
        format!(
            "version = 4\n[[package]]\nname = \"nosuch\"\nversion = \"1.0.0\"\nsource = \"registry+{}\"\nchecksum = \"{}\"\n",
            tame_index::CRATES_IO_INDEX,
            "0".repeat(64)
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("prefetch")
        .arg(&bad)
        .arg(&lockfile)
        .args(["--server", &w.url])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("nosuch 1.0.0") && err.contains("1 failed"),
        "{err}"
    );
    assert!(err.contains("4 already cached"), "{err}");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn verify_finds_and_repairs_a_corrupted_crate() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    for p in [
        "/api/v1/crates/beta/0.2.0/download",
        "/api/v1/crates/gamma_util/1.2.0/download",
    ] {
        assert_eq!(w.get(p).await.status(), 200);
    }
    w.running.shutdown().await.unwrap();
    let verify = |repair: bool| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"));
        c.arg("verify").arg("--data-dir").arg(data.path());
        if repair {
            c.arg("--repair");
        }
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (ok, out) = verify(false).await;
    assert!(ok && out.contains("2 crates checked, 0 problems"), "{out}");

    // Flip one byte of a stored crate.
    let f = data.path().join("crates-v1/be/ta/beta/beta-0.2.0.crate");
    let mut b = std::fs::read(&f).unwrap();
    b[10] ^= 1;
    std::fs::write(&f, b).unwrap();
    let (ok, out) = verify(false).await;
    assert!(!ok && out.contains("BAD      beta 0.2.0"), "{out}");
    let (ok, out) = verify(true).await;
    assert!(ok && out.contains("1 repaired"), "{out}");
    assert!(!f.exists());

    // Served again: refetched from upstream and verified.
    let before = up.count("/files/");
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let r = w.get("/api/v1/crates/beta/0.2.0/download").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count("/files/"), before + 1);
    let (ok, out) = verify(false).await;
    assert!(ok && out.contains("0 problems"), "{out}");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_counters_move() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let metric = |text: &str, line: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line)
                    .map(|v| v.trim().parse::<f64>().unwrap() as u64)
            })
            .unwrap_or(0)
    };
    let before = w.get("/metrics").await.text().await.unwrap();
    assert!(before.contains("# TYPE wharf_requests_total counter"));

    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200); // miss
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200); // hit
    assert_eq!(w.get("/index/zz/zz/zzzz").await.status(), 404);
    up.fault("/files/", Fault::WrongBytes, Some(1));
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        502
    );
    let r = w.get("/api/v1/crates/beta/0.2.0/download").await;
    let n = r.bytes().await.unwrap().len() as u64;

    let t = w.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&t, "wharf_requests_total{route=\"index\",status=\"200\"}"),
        2
    );
    assert_eq!(
        metric(&t, "wharf_requests_total{route=\"index\",status=\"404\"}"),
        1
    );
    assert_eq!(
        metric(&t, "wharf_requests_total{route=\"crate\",status=\"502\"}"),
        1
    );
    assert_eq!(
        metric(&t, "wharf_requests_total{route=\"crate\",status=\"200\"}"),
        1
    );
    assert_eq!(metric(&t, "wharf_cache_events_total{event=\"miss\"}"), 2);
    assert_eq!(metric(&t, "wharf_cache_events_total{event=\"hit\"}"), 1);
    assert_eq!(metric(&t, "wharf_checksum_failures_total"), 1);
    assert!(metric(&t, "wharf_response_bytes_total{route=\"crate\"}") >= n);
    // Index (beta, zzzz) + config.json + two downloads.
    assert_eq!(
        metric(
            &t,
            "wharf_upstream_requests_total{kind=\"crate\",result=\"ok\"}"
        ),
        2
    );
    assert_eq!(
        metric(&t, "wharf_upstream_request_duration_seconds_count"),
        up.total() as u64
    );
    w.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_import_and_serve_offline() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let a = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, a.path())).await;
    let env = CargoEnv::new(&w.url, CONSUMER_DEPS);
    let (ok, out) = env.cargo(&["fetch"]).await;
    assert!(ok, "{out}");
    w.running.shutdown().await.unwrap();
    let lockfile = env.project().join("Cargo.lock");

    let wharf = |args: Vec<std::ffi::OsString>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("bundle.tar");
    let (ok, err) = wharf(vec![
        "export".into(),
        "--lockfile".into(),
        lockfile.clone().into(),
        "--out".into(),
        archive.clone().into(),
        "--data-dir".into(),
        a.path().into(),
    ])
    .await;
    assert!(ok && err.contains("4 crates"), "{err}");

    // The archive is a static registry: byte-for-byte index files and the crates.
    let mut names = Vec::new();
    let mut t = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    for e in t.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    for p in [
        "manifest.json",
        "index/config.json",
        "index/al/ph/alpha",
        "crates/Delta/Delta-0.1.0+build.7.crate",
    ] {
        assert!(names.iter().any(|n| n == p), "{p} missing from {names:?}");
    }

    // A flipped byte anywhere in a crate: refused, nothing imported.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = find(&bytes, b"\x1f\x8b").expect("a gzip member") + 40;
    bytes[at] ^= 0x01;
    let bad = work.path().join("bad.tar");
    std::fs::write(&bad, bytes).unwrap();
    let c = tempfile::tempdir().unwrap();
    let (ok, err) = wharf(vec![
        "import".into(),
        bad.into(),
        "--data-dir".into(),
        c.path().into(),
    ])
    .await;
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(
        std::fs::read_dir(c.path()).unwrap().count(),
        0,
        "a refused archive wrote files"
    );

    // The good one into an empty data dir, then served offline to a fresh cargo.
    let b = tempfile::tempdir().unwrap();
    let (ok, err) = wharf(vec![
        "import".into(),
        archive.into(),
        "--data-dir".into(),
        b.path().into(),
    ])
    .await;
    assert!(ok && err.contains("4 crates added"), "{err}");
    let before = up.total();
    let mut cfg = wharf_config(&up, b.path());
    cfg.offline = true;
    let w = Wharf::start(&cfg).await;
    let client = CargoEnv::new(&w.url, CONSUMER_DEPS);
    std::fs::copy(&lockfile, client.project().join("Cargo.lock")).unwrap();
    let (ok, out) = client.cargo(&["fetch", "--locked"]).await;
    assert!(ok, "offline fetch from an imported bundle failed:\n{out}");
    assert_eq!(up.total(), before);
    w.running.shutdown().await.unwrap();
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bytes in `p`, not counting temp files (as the store counts).
fn dir_size(p: &std::path::Path) -> u64 {
    files_under(p)
        .iter()
        .filter(|(f, _)| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn eviction_keeps_pinned_private_and_recent_crates() {
    use wharf::registry::publish::{NewCrate, encode_body};
    use wharf::registry::tokens::{self, Scope};
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let store = wharf::store::FsStore::new(data.path());
    let tok = tokens::create(
        &store,
        "a",
        "a",
        Scope::Publish,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    // A private crate (never evicted).
    let c = make_crate("inhouse", "1.0.0", &[], &[]);
    let meta: NewCrate =
        serde_json::from_value(serde_json::json!({"name": "inhouse", "vers": "1.0.0"})).unwrap();
    let r = client()
        .put(format!("{}/private/api/v1/crates/new", w.url))
        .header("authorization", &tok)
        .body(encode_body(&meta, &c.bytes))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Mirror crates, used in this order (oldest first).
    for p in [
        "alpha/1.0.0",
        "gamma_util/1.0.0",
        "beta/0.2.0",
        "alpha/1.1.0",
    ] {
        w.clock.advance(std::time::Duration::from_secs(10));
        let r = w.get(&format!("/api/v1/crates/{p}/download")).await;
        assert_eq!(r.status(), 200, "{p}");
    }
    w.running.shutdown().await.unwrap(); // flushes access times

    let crate_file = |p: &str| data.path().join(format!("crates-v1/{p}"));
    let gamma = crate_file("ga/mm/gamma_util/gamma_util-1.0.0.crate");
    let beta = crate_file("be/ta/beta/beta-0.2.0.crate");
    let alpha_old = crate_file("al/ph/alpha/alpha-1.0.0.crate");
    let alpha_new = crate_file("al/ph/alpha/alpha-1.1.0.crate");
    let total = dir_size(data.path());
    let limit = total - std::fs::metadata(&gamma).unwrap().len() - 1;

    // alpha 1.0.0 is the oldest, but pinned by a lockfile.
    let lock = data.path().join("pin.lock");
    std::fs::write(
        &lock,
        format!(
            "version = 4\n[[package]]\nname = \"alpha\"\nversion = \"1.0.0\"\nsource = \"registry+{}\"\n",
            tame_index::CRATES_IO_INDEX
        ),
    )
    .unwrap();
    let cfg_file = data.path().join("wharf.toml");
    std::fs::write(&cfg_file, format!("[cache]\npin = [{:?}]\n", lock)).unwrap();
    let gc = |dry: bool| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"));
        c.arg("gc")
            .arg("--config")
            .arg(&cfg_file)
            .arg("--data-dir")
            .arg(data.path());
        c.args(["--max-size", &limit.to_string()]);
        if dry {
            c.arg("--dry-run");
        }
        async move {
            let out = c.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let out = gc(true).await;
    assert!(out.contains("would evict 2 crates"), "{out}");
    assert!(gamma.exists() && beta.exists());
    let out = gc(false).await;
    assert!(out.contains("evicted 2 crates"), "{out}");
    assert!(!gamma.exists() && !beta.exists(), "LRU crates were kept");
    assert!(alpha_old.exists(), "the pinned crate was evicted");
    assert!(alpha_new.exists(), "the most recent crate was evicted");
    assert!(
        dir_size(data.path()) <= limit + 1024,
        "still over the limit"
    );
    let blobs = data.path().join("private-v1/blobs");
    assert_eq!(
        dir_size(&blobs),
        c.bytes.len() as u64,
        "a private crate was evicted"
    );

    // The server does the same in the background.
    let mut cfg = wharf_config(&up, data.path());
    cfg.cache.max_size = Some(dir_size(data.path()) - 1);
    cfg.cache.gc_interval = std::time::Duration::from_millis(100);
    cfg.cache.pin = vec![lock.clone()];
    let w = Wharf::start(&cfg).await;
    let mut evicted = 0;
    for _ in 0..100 {
        let t = w.get("/metrics").await.text().await.unwrap();
        evicted = t
            .lines()
            .find_map(|l| l.strip_prefix("wharf_evictions_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if evicted > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(evicted >= 1, "background eviction did not run");
    assert!(alpha_old.exists());
    // An evicted crate is simply fetched again.
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    w.running.shutdown().await.unwrap();
}
