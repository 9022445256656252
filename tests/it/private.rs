//! The hosted registry for private crates, through the real cargo: publish, consume next
//! to crates.io crates, yank, owners, search, login, tokens, auth-required, the
//! dependency-confusion guard and `wharf push`.

use std::time::Duration;

use wharf::registry::tokens::{self, Scope};
use wharf::store::FsStore;

use super::support::*;

async fn token(data: &std::path::Path, name: &str, user: &str, scope: Scope) -> String {
    std::fs::create_dir_all(data).unwrap();
    tokens::create(
        &FsStore::new(data),
        name,
        user,
        scope,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap()
}

fn private_config(up: &FakeUpstream, data: &std::path::Path) -> wharf::config::Config {
    let mut cfg = wharf_config(up, data);
    cfg.private.reserved = vec!["acme-*".into()];
    cfg
}

const LIB_UTIL: &str = "pub fn util() -> &'static str { gamma_util::which() }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_consume_yank_owners_search_through_cargo() {
    let up = FakeUpstream::start().await;
    up.publish(make_crate("gamma_util", "1.0.0", &[], &[]));
    up.publish(make_crate("gamma_util", "1.2.0", &[], &[]));
    let data = tempfile::tempdir().unwrap();
    let alice = token(data.path(), "alice", "alice", Scope::Publish).await;
    let reader = token(data.path(), "reader", "reader", Scope::Read).await;
    let bob = token(data.path(), "bob", "bob", Scope::Publish).await;
    let w = Wharf::start(&private_config(&up, data.path())).await;

    // A private crate depending on a crates.io crate.
    let util = CargoEnv::package(&w.url, "acme-util", "0.1.0", "gamma_util = \"1\"", LIB_UTIL);
    let publish = ["publish", "--registry", "wharf", "--no-verify"];
    let (ok, out) = util.cargo(&publish).await;
    assert!(!ok, "publish without a token must fail:\n{out}");
    let (ok, out) = util
        .cargo_env(&publish, &[("CARGO_REGISTRIES_WHARF_TOKEN", &reader)])
        .await;
    assert!(
        !ok && out.contains("read-only"),
        "read token published:\n{out}"
    );
    // `cargo login` stores the token; publish then needs no env var.
    let (ok, out) = util.cargo(&["login", "--registry", "wharf", &alice]).await;
    assert!(ok, "cargo login failed:\n{out}");
    let (ok, out) = util.cargo(&publish).await;
    assert!(ok, "publish failed:\n{out}");

    // The index line keeps the crates.io registry of the public dependency.
    let idx = w
        .get("/private/index/ac/me/acme-util")
        .await
        .text()
        .await
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(idx.lines().next().unwrap()).unwrap();
    assert_eq!(line["vers"], "0.1.0");
    assert_eq!(line["deps"][0]["name"], "gamma_util");
    assert_eq!(line["deps"][0]["registry"], tame_index::CRATES_IO_INDEX);
    assert_eq!(line["pubtime"].as_str().unwrap().len(), 20);

    // A consumer using both resolves one gamma_util, and builds.
    let consumer = CargoEnv::package(
        &w.url,
        "app",
        "0.1.0",
        "acme-util = { version = \"0.1\", registry = \"wharf\" }\ngamma_util = \"1\"",
        "pub fn f() -> &'static str { acme_util::util() }\npub use gamma_util::which;\n",
    );
    let (ok, out) = consumer.cargo(&["generate-lockfile"]).await;
    assert!(ok, "consumer lockfile failed:\n{out}");
    let lock = std::fs::read_to_string(consumer.project().join("Cargo.lock")).unwrap();
    assert_eq!(
        lock.matches("name = \"gamma_util\"").count(),
        1,
        "gamma_util must be unified:\n{lock}"
    );
    assert!(lock.contains("name = \"acme-util\""));
    let (ok, out) = consumer.cargo(&["fetch"]).await;
    assert!(ok, "consumer fetch failed:\n{out}");
    let (ok, out) = consumer.cargo(&["build", "--offline"]).await;
    assert!(ok, "consumer build failed:\n{out}");

    // The guard: the mirror never asks upstream for a private or reserved name.
    assert_eq!(w.get("/index/ac/me/acme-util").await.status(), 404);
    assert_eq!(w.get("/index/ac/me/acme-other").await.status(), 404);
    assert_eq!(w.get("/index/ac/me/acme_util").await.status(), 404);
    assert_eq!(
        w.get("/api/v1/crates/acme-util/0.1.0/download")
            .await
            .status(),
        404
    );
    assert_eq!(up.count("acme"), 0, "a private name reached the upstream");

    // Non-owner bob cannot publish a new version; after `cargo owner --add` he can.
    let util2 = CargoEnv::package(&w.url, "acme-util", "0.2.0", "gamma_util = \"1\"", LIB_UTIL);
    let (ok, out) = util2
        .cargo_env(&publish, &[("CARGO_REGISTRIES_WHARF_TOKEN", &bob)])
        .await;
    assert!(
        !ok && out.contains("not an owner"),
        "non-owner published:\n{out}"
    );
    let alice_env = [("CARGO_REGISTRIES_WHARF_TOKEN", alice.as_str())];
    let (ok, out) = util2
        .cargo_env(
            &["owner", "--registry", "wharf", "--add", "bob", "acme-util"],
            &alice_env,
        )
        .await;
    assert!(ok, "owner --add failed:\n{out}");
    let (ok, out) = util2
        .cargo_env(
            &["owner", "--registry", "wharf", "--list", "acme-util"],
            &alice_env,
        )
        .await;
    assert!(
        ok && out.contains("bob") && out.contains("alice"),
        "owner --list:\n{out}"
    );
    let (ok, out) = util2
        .cargo_env(&publish, &[("CARGO_REGISTRIES_WHARF_TOKEN", &bob)])
        .await;
    assert!(ok, "co-owner publish failed:\n{out}");
    let (ok, out) = util2
        .cargo_env(
            &[
                "owner",
                "--registry",
                "wharf",
                "--remove",
                "bob",
                "acme-util",
            ],
            &alice_env,
        )
        .await;
    assert!(ok, "owner --remove failed:\n{out}");
    // Publishing the same version again is refused with a clear message.
    let (ok, out) = util2.cargo_env(&publish, &alice_env).await;
    // (cargo itself checks the index first; the server-side check is tested over HTTP.)
    assert!(
        !ok && (out.contains("already uploaded") || out.contains("already exists")),
        "duplicate accepted:\n{out}"
    );

    // Search by name and by description.
    let (ok, out) = util2
        .cargo(&["search", "--registry", "wharf", "acme"])
        .await;
    assert!(
        ok && out.contains("acme-util = \"0.2.0\""),
        "search:\n{out}"
    );
    let (ok, out) = util2
        .cargo(&["search", "--registry", "wharf", "test crate"])
        .await;
    assert!(
        ok && out.contains("acme-util"),
        "search by description:\n{out}"
    );

    // Yank hides versions from new resolution; --undo brings them back.
    for v in ["0.1.0", "0.2.0"] {
        let (ok, out) = util2
            .cargo_env(
                &["yank", "--registry", "wharf", "--version", v, "acme-util"],
                &alice_env,
            )
            .await;
        assert!(ok, "yank {v} failed:\n{out}");
    }
    let fresh = CargoEnv::package(
        &w.url,
        "app2",
        "0.1.0",
        "acme-util = { version = \"0.1\", registry = \"wharf\" }",
        "",
    );
    let (ok, out) = fresh.cargo(&["generate-lockfile"]).await;
    assert!(!ok, "a yanked version was selected:\n{out}");
    let (ok, out) = util2
        .cargo_env(
            &[
                "yank",
                "--registry",
                "wharf",
                "--undo",
                "--version",
                "0.1.0",
                "acme-util",
            ],
            &alice_env,
        )
        .await;
    assert!(ok, "unyank failed:\n{out}");
    let (ok, out) = fresh.cargo(&["generate-lockfile"]).await;
    assert!(ok, "unyanked version not selectable:\n{out}");
    w.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_required_blocks_anonymous_reads() {
    let up = FakeUpstream::start().await;
    up.publish(make_crate("gamma_util", "1.2.0", &[], &[]));
    let data = tempfile::tempdir().unwrap();
    let alice = token(data.path(), "alice", "alice", Scope::Publish).await;
    let reader = token(data.path(), "ci-read", "ci", Scope::Read).await;
    let mut cfg = private_config(&up, data.path());
    cfg.private.read_required = true;
    let w = Wharf::start(&cfg).await;

    let util = CargoEnv::package(&w.url, "acme-util", "0.1.0", "gamma_util = \"1\"", LIB_UTIL);
    let (ok, out) = util
        .cargo_env(
            &["publish", "--registry", "wharf", "--no-verify"],
            &[("CARGO_REGISTRIES_WHARF_TOKEN", &alice)],
        )
        .await;
    assert!(ok, "publish failed:\n{out}");

    // Anonymous: 401 with cargo's login hint, on config.json, index files and downloads.
    for p in [
        "/private/index/config.json",
        "/private/index/ac/me/acme-util",
        "/private/api/v1/crates/acme-util/0.1.0/download",
    ] {
        let r = w.get(p).await;
        assert_eq!(r.status(), 401, "{p}");
        let h = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(h.starts_with("Cargo login_url=\""), "{h}");
    }
    let r = client()
        .get(format!("{}/private/index/config.json", w.url))
        .header("authorization", "wharf_not_a_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/private/index/config.json", w.url))
        .header("authorization", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["auth-required"], true);

    // cargo with a read token resolves and fetches; without one it is refused.
    let consumer = CargoEnv::package(
        &w.url,
        "app",
        "0.1.0",
        "acme-util = { version = \"0.1\", registry = \"wharf\" }",
        "",
    );
    let (ok, out) = consumer.cargo(&["generate-lockfile"]).await;
    assert!(!ok, "anonymous cargo read the private index:\n{out}");
    let env = [("CARGO_REGISTRIES_WHARF_TOKEN", reader.as_str())];
    let (ok, out) = consumer.cargo_env(&["generate-lockfile"], &env).await;
    assert!(ok, "authenticated resolve failed:\n{out}");
    let (ok, out) = consumer.cargo_env(&["fetch"], &env).await;
    assert!(ok, "authenticated fetch failed:\n{out}");

    // Token in the path, for cargo older than 1.74.
    let r = w
        .get(&format!("/t/{reader}/private/index/config.json"))
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["dl"]
            .as_str()
            .unwrap()
            .contains(&format!("/t/{reader}/private/"))
    );
    let r = w
        .get(&format!(
            "/t/{reader}/private/api/v1/crates/acme-util/0.1.0/download"
        ))
        .await;
    assert_eq!(r.status(), 200);

    // A revoked token stops working without a restart.
    let store = FsStore::new(data.path());
    assert!(tokens::revoke(&store, "ci-read").await.unwrap());
    let mut status = 0;
    for _ in 0..40 {
        status = w
            .get(&format!("/t/{reader}/private/index/config.json"))
            .await
            .status()
            .as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "revoked token still accepted");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn publish_api_rules_and_concurrency() {
    use wharf::registry::publish::{NewCrate, encode_body};
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let alice = token(data.path(), "alice", "alice", Scope::Publish).await;
    let mut cfg = private_config(&up, data.path());
    cfg.private.max_body = 64 << 10;
    let w = Wharf::start(&cfg).await;
    let put = |body: Vec<u8>, tok: Option<String>| {
        let url = format!("{}/private/api/v1/crates/new", w.url);
        async move {
            let mut r = client().put(url).body(body);
            if let Some(t) = tok {
                r = r.header("authorization", t);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            let detail = v["errors"][0]["detail"].as_str().unwrap_or("").to_owned();
            (status, detail)
        }
    };
    let body_for = |name: &str, vers: &str| {
        let c = make_crate(name, vers, &[], &[]);
        let meta: NewCrate =
            serde_json::from_value(serde_json::json!({"name": name, "vers": vers})).unwrap();
        encode_body(&meta, &c.bytes)
    };

    // No token, a bogus token.
    let (s, d) = put(body_for("acme-x", "1.0.0"), None).await;
    assert_eq!(s, 403, "{d}");
    let (s, d) = put(body_for("acme-x", "1.0.0"), Some("wharf_bogus".into())).await;
    assert_eq!(s, 403);
    assert!(d.contains("not valid"), "{d}");

    // Two versions at once both land; the same version twice is refused.
    let a = put(body_for("acme-x", "1.0.0"), Some(alice.clone()));
    let b = put(body_for("acme-x", "1.1.0"), Some(alice.clone()));
    let (ra, rb) = tokio::join!(a, b);
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    let idx = w
        .get("/private/index/ac/me/acme-x")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(idx.lines().count(), 2, "{idx}");
    let (s, d) = put(body_for("acme-x", "1.1.0"), Some(alice.clone())).await;
    assert_eq!(s, 409);
    assert!(d.contains("already uploaded"), "{d}");
    let (s, _) = put(body_for("acme-x", "1.1.0+build"), Some(alice.clone())).await;
    assert_eq!(s, 409, "build metadata must not make a version new");

    // A name differing only by case or -/_ is refused.
    let (s, d) = put(body_for("acme_X", "2.0.0"), Some(alice.clone())).await;
    assert_eq!(s, 400);
    assert!(d.contains("previously named `acme-x`"), "{d}");

    // Metadata vs tarball mismatch, invalid name, oversize body (before buffering).
    let c = make_crate("acme-y", "1.0.0", &[], &[]);
    let meta: NewCrate =
        serde_json::from_value(serde_json::json!({"name": "acme-y", "vers": "1.0.1"})).unwrap();
    let (s, d) = put(encode_body(&meta, &c.bytes), Some(alice.clone())).await;
    assert_eq!(s, 400);
    assert!(d.contains("acme-y-1.0.1"), "{d}");
    // Same directory as the metadata, but the manifest inside says otherwise.
    let mut forged = make_crate("acme-y", "1.0.1", &[], &[]);
    forged.bytes = make_crate_with_manifest("acme-y", "1.0.1", "acme-z", "1.0.1").into();
    let meta: NewCrate =
        serde_json::from_value(serde_json::json!({"name": "acme-y", "vers": "1.0.1"})).unwrap();
    let (s, d) = put(encode_body(&meta, &forged.bytes), Some(alice.clone())).await;
    assert_eq!(s, 400);
    assert!(d.contains("Cargo.toml says `acme-z`"), "{d}");
    let (s, d) = put(body_for("self", "1.0.0"), Some(alice.clone())).await;
    assert_eq!(s, 400);
    assert!(d.contains("invalid crate name"), "{d}");
    let (s, _) = put(vec![0u8; 100 << 10], Some(alice.clone())).await;
    assert_eq!(s, 413);
    assert!(
        !data.path().join("private-v1/index/ac/me/acme-y").exists(),
        "a refused publish wrote an index file"
    );
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn wharf_push_uploads_a_prebuilt_crate() {
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let alice = token(data.path(), "alice", "alice", Scope::Publish).await;
    let w = Wharf::start(&private_config(&up, data.path())).await;
    let c = make_crate(
        "acme-pushed",
        "0.3.0",
        &[dep("gamma_util", "^1")],
        &[("fast", &[])],
    );
    let file = data.path().join("acme-pushed-0.3.0.crate");
    std::fs::write(&file, &c.bytes).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("push")
        .arg(&file)
        .args(["--server", &w.url, "--token", &alice])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let idx = w
        .get("/private/index/ac/me/acme-pushed")
        .await
        .text()
        .await
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(idx.trim()).unwrap();
    assert_eq!(line["cksum"], c.cksum);
    assert_eq!(line["deps"][0]["registry"], tame_index::CRATES_IO_INDEX);
    assert_eq!(line["features"]["fast"], serde_json::json!([]));
    let r = w
        .get("/private/api/v1/crates/acme-pushed/0.3.0/download")
        .await;
    assert_eq!(r.bytes().await.unwrap(), c.bytes);
    // A bad token is reported.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("push")
        .arg(&file)
        .args(["--server", &w.url, "--token", "wharf_nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"));
    w.running.shutdown().await.unwrap();
}
