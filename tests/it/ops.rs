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
