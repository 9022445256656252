//! Crash consistency: the real binary is killed with SIGKILL in the middle of prefetches and
//! publishes, again and again. Afterwards `wharf verify` finds nothing wrong, every stored
//! index record parses, and no publish that cargo saw acknowledged is lost.

use std::path::Path;
use std::time::Duration;

use super::support::*;

async fn spawn_wharf(data: &Path, upstream: &str) -> WharfProcess {
    spawn_wharf_binary(data, &["--upstream", upstream], "info,wharf::access=off").await
}

async fn kill9(c: &mut WharfProcess) {
    c.kill9().await;
}

async fn verify_ok(data: &Path) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0 problems"),
        "{text}"
    );
    // Every stored index record parses.
    let store = wharf::store::FsStore::new(data);
    use wharf::store::Store;
    for k in store.list("index-v1/").await.unwrap() {
        let o = store.get(&k).await.unwrap().unwrap();
        wharf::record::decode_index(&o.bytes)
            .unwrap_or_else(|e| panic!("{} damaged: {e}", k.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_prefetch_and_publish_loses_nothing() {
    let up = FakeUpstream::start().await;
    let mut lock = String::from("version = 4\n");
    for i in 0..40 {
        let name = format!("crash{i:02}");
        up.publish(make_crate(&name, "1.0.0", &[], &[]));
        lock.push_str(&format!(
            "[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\nsource = \"registry+{}\"\n",
            tame_index::CRATES_IO_INDEX
        ));
    }
    // Slow downloads keep many writes in flight when the kill lands.
    up.fault("/files/", Fault::Delay(Duration::from_millis(25)), None);
    let data = tempfile::tempdir().unwrap();
    let items = wharf::ops::prefetch::plan(&lock).unwrap();

    for delay_ms in [55u64, 70, 85, 100, 115, 130] {
        let mut c = spawn_wharf(data.path(), &up.index_url()).await;
        let (items, url) = (items.clone(), c.url.clone());
        let run =
            tokio::spawn(async move { wharf::ops::prefetch::run(items, &url, 8, false).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kill9(&mut c).await;
        if let Ok(s) = run.await {
            eprintln!(
                "kill -9 after {delay_ms} ms of prefetch: {} fetched, {} cached, {} cut off",
                s.fetched,
                s.cached,
                s.failed.len()
            );
        }
        verify_ok(data.path()).await;
    }
    // After all that, a last prefetch completes and everything verifies.
    let mut c = spawn_wharf(data.path(), &up.index_url()).await;
    let s = wharf::ops::prefetch::run(items.clone(), &c.url, 8, false).await;
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert_eq!(s.fetched + s.cached, 40);
    kill9(&mut c).await;
    verify_ok(data.path()).await;

    // Publishes: every version acknowledged with 200 must survive a SIGKILL.
    use wharf::registry::publish::{NewCrate, encode_body};
    let tok = wharf::registry::tokens::create(
        &wharf::store::FsStore::new(data.path()),
        "ci",
        "ci",
        wharf::registry::tokens::Scope::Publish,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0;
    for delay_ms in [30u64, 60, 90, 120, 150] {
        let mut c = spawn_wharf(data.path(), &up.index_url()).await;
        let url = c.url.clone();
        let tok2 = tok.clone();
        let start = next;
        let publisher = tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in start..start + 1000 {
                let vers = format!("1.0.{i}");
                let krate = make_crate("inhouse", &vers, &[], &[]);
                let meta: NewCrate =
                    serde_json::from_value(serde_json::json!({"name": "inhouse", "vers": vers}))
                        .unwrap();
                let r = client()
                    .put(format!("{url}/private/api/v1/crates/new"))
                    .header("authorization", &tok2)
                    .body(encode_body(&meta, &krate.bytes))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.push(vers),
                    _ => break,
                }
            }
            ok
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kill9(&mut c).await;
        let ok = publisher.await.unwrap();
        eprintln!(
            "kill -9 after {delay_ms} ms of publishing: {} acknowledged",
            ok.len()
        );
        next += ok.len() + 1;
        acked.extend(ok);
    }
    assert!(
        acked.len() >= 3,
        "too few publishes to mean anything: {acked:?}"
    );
    let c = spawn_wharf(data.path(), &up.index_url()).await;
    let idx = client()
        .get(format!("{}/private/index/in/ho/inhouse", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for v in &acked {
        assert!(
            idx.contains(&format!("\"vers\":\"{v}\"")),
            "acknowledged {v} lost"
        );
    }
    for l in idx.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("damaged index line");
    }
    drop(c);
    verify_ok(data.path()).await;
}

/// The upstream flaps every few hundred ms while fresh cargo clients fetch in a loop: once
/// the data is cached every fetch succeeds. `WHARF_SOAK_ROUNDS` runs it longer by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_flapping_upstream() {
    let up = std::sync::Arc::new(FakeUpstream::start().await);
    super::publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.cache.policy.ttl = Duration::ZERO; // every cargo run revalidates: worst case
    cfg.cache.policy.stale_while_revalidate = Duration::ZERO;
    cfg.cache.policy.error_backoff = Duration::from_millis(100);
    let w = Wharf::start(&cfg).await;
    let env = CargoEnv::new(&w.url, super::CONSUMER_DEPS);
    let (ok, out) = env.cargo(&["generate-lockfile"]).await;
    assert!(ok, "{out}");
    let (ok, out) = env.cargo(&["fetch"]).await;
    assert!(ok, "{out}");

    let flapper = {
        let up = up.clone();
        tokio::spawn(async move {
            let mut down = false;
            loop {
                down = !down;
                up.set_down(down);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rounds: usize = std::env::var("WHARF_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for i in 0..rounds {
        env.fresh_home();
        let (ok, out) = env.cargo(&["generate-lockfile"]).await;
        assert!(ok, "round {i}: resolve failed while upstream flaps:\n{out}");
        let (ok, out) = env.cargo(&["fetch", "--locked"]).await;
        assert!(ok, "round {i}: fetch failed while upstream flaps:\n{out}");
    }
    flapper.abort();
    eprintln!(
        "soak: {rounds} rounds of resolve + fetch, all succeeded; upstream saw {} requests",
        up.total()
    );
    w.running.shutdown().await.unwrap();
}
