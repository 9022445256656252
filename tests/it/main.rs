//! One integration-test binary: wharf in-process against a fake upstream, driven by HTTP
//! requests and by the real `cargo`.

mod battery;
mod crash;
mod ops;
mod private;
mod support;

use std::time::Duration;

use support::*;

/// alpha 1.1.0 (feature `extra` -> optional dep `Delta`) -> beta 0.2 (feature fast)
/// -> gamma_util ^1.
pub(crate) fn publish_graph(up: &FakeUpstream) {
    up.publish(make_crate("gamma_util", "1.0.0", &[], &[]));
    up.publish(make_crate("gamma_util", "1.2.0", &[], &[]));
    up.publish(make_crate(
        "beta",
        "0.2.0",
        &[dep("gamma_util", "^1")],
        &[("fast", &[])],
    ));
    up.publish(make_crate("Delta", "0.1.0+build.7", &[], &[]));
    up.publish(make_crate("alpha", "1.0.0", &[dep("beta", "^0.2")], &[]));
    up.publish(make_crate(
        "alpha",
        "1.1.0",
        &[
            Dep {
                name: "beta",
                req: "^0.2",
                features: &["fast"],
                optional: false,
            },
            Dep {
                name: "Delta",
                req: "^0.1",
                features: &[],
                optional: true,
            },
        ],
        &[("extra", &["Delta"])],
    ));
}

pub(crate) const CONSUMER_DEPS: &str = "alpha = { version = \"1\", features = [\"extra\"] }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cargo_fetch_cold_warm_and_with_upstream_down() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let env = CargoEnv::new(&w.url, CONSUMER_DEPS);

    // Cold: everything comes from upstream through wharf.
    let (ok, out) = env.cargo(&["generate-lockfile"]).await;
    assert!(ok, "generate-lockfile failed:\n{out}");
    let lock = std::fs::read_to_string(env.project().join("Cargo.lock")).unwrap();
    for pkg in ["alpha", "beta", "gamma_util", "Delta"] {
        assert!(
            lock.contains(&format!("name = \"{pkg}\"")),
            "{pkg} missing:\n{lock}"
        );
    }
    assert!(lock.contains("version = \"1.1.0\"") && lock.contains("version = \"1.2.0\""));
    let (ok, out) = env.cargo(&["fetch"]).await;
    assert!(ok, "cold fetch failed:\n{out}");
    assert_eq!(up.count("/files/"), 4, "one download per crate");
    // The crates are real: cargo can build the graph from what it fetched.
    let (ok, out) = env.cargo(&["build", "--offline"]).await;
    assert!(ok, "build failed:\n{out}");

    // Warm: a fresh client (new CI machine) gets everything from wharf's cache.
    let files_before = up.count("/files/");
    let index_before = up.count("/index/");
    env.fresh_home();
    let (ok, out) = env.cargo(&["fetch", "--locked"]).await;
    assert!(ok, "warm fetch failed:\n{out}");
    assert_eq!(
        up.count("/files/"),
        files_before,
        "warm fetch hit upstream for crates"
    );
    assert_eq!(
        up.count("/index/"),
        index_before,
        "fresh index entries were revalidated"
    );

    // Upstream down, entries long past their freshness window: served stale.
    up.set_down(true);
    w.clock.advance(Duration::from_secs(24 * 3600));
    env.fresh_home();
    let (ok, out) = env.cargo(&["generate-lockfile"]).await;
    assert!(ok, "generate-lockfile with upstream down failed:\n{out}");
    let (ok, out) = env.cargo(&["fetch", "--locked"]).await;
    assert!(ok, "fetch with upstream down failed:\n{out}");
    let r = w.get("/index/al/ph/alpha").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert!(r.headers().contains_key("warning"));
    let h: serde_json::Value = w.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "degraded");

    // Upstream back: revalidation resumes (after the error backoff) and health recovers.
    up.set_down(false);
    w.clock.advance(Duration::from_secs(10));
    let r = w.get("/index/al/ph/alpha").await;
    assert_eq!(r.headers()["x-wharf-cache"], "revalidated");
    let h: serde_json::Value = w.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    w.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_cause_one_upstream_request() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    // Slow upstream answers keep all 50 requests in flight together.
    up.fault(
        "/index/be/ta/beta",
        Fault::Delay(Duration::from_millis(300)),
        Some(1),
    );
    up.fault("/files/", Fault::Delay(Duration::from_millis(300)), Some(1));

    let c = client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        let url = if i % 2 == 0 {
            format!("{}/api/v1/crates/beta/0.2.0/download", w.url)
        } else {
            format!("{}/index/be/ta/beta", w.url)
        };
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }));
    }
    let expected = make_crate(
        "beta",
        "0.2.0",
        &[dep("gamma_util", "^1")],
        &[("fast", &[])],
    );
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        if i % 2 == 0 {
            assert_eq!(body, expected.bytes);
        } else {
            assert_eq!(&body[..], &up.index_body("beta")[..]);
        }
    }
    assert_eq!(up.count("/files/"), 1, "crate downloads were not coalesced");
    assert_eq!(
        up.count("/index/be/ta/beta"),
        1,
        "index fetches were not coalesced"
    );
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn corrupt_upstream_bytes_are_refused_and_never_cached() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let good = make_crate("gamma_util", "1.2.0", &[], &[]);
    let store_has_crate = |data: &std::path::Path, name: &str| {
        files_under(data).iter().any(|(p, _)| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.contains(name) && f.ends_with(".crate")
        })
    };

    up.fault("/files/", Fault::WrongBytes, Some(1));
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    let detail = v["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("gamma_util") && detail.contains("1.2.0"),
        "{detail}"
    );
    assert!(
        detail.contains(&good.cksum),
        "expected checksum missing: {detail}"
    );
    assert!(
        !store_has_crate(data.path(), "gamma_util"),
        "bad bytes were stored"
    );

    // Reset mid-body: an error, nothing partial stored.
    up.fault("/files/", Fault::ResetMidBody, Some(1));
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(!store_has_crate(data.path(), "gamma_util"));

    // A good upstream now: served, cached, and then served without upstream.
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["x-wharf-cache"], "miss");
    assert_eq!(r.bytes().await.unwrap(), good.bytes);
    assert!(store_has_crate(data.path(), "gamma_util"));
    up.set_down(true);
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), good.bytes);
    w.running.shutdown().await.unwrap();

    // After a restart (empty hot tier), the crate comes from disk, upstream still down.
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), good.bytes);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn index_files_pass_through_byte_for_byte_with_etags() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    // Lines cargo cannot parse and unknown fields must reach the client untouched.
    up.add_raw_line(
        "alpha",
        "{\"name\":\"alpha\",\"vers\":\"bogus\"}\nnot json at all\n",
    );
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;

    let r = w.get("/index/AL/ph/ALPHA").await; // any case the client sends
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "miss");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'), "strong etag expected: {etag}");
    assert_eq!(&r.bytes().await.unwrap()[..], &up.index_body("alpha")[..]);
    assert_eq!(
        up.count("/index/al/ph/alpha"),
        1,
        "upstream path must be lower case"
    );

    // Client revalidation: 304 for our ETag (weak form too), 200 for another.
    for inm in [etag.clone(), format!("W/{etag}")] {
        let r = client()
            .get(format!("{}/index/al/ph/alpha", w.url))
            .header("if-none-match", inm)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    }
    let r = client()
        .get(format!("{}/index/al/ph/alpha", w.url))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(
        up.count("/index/al/ph/alpha"),
        1,
        "fresh entries must not hit upstream"
    );

    // config.json sends downloads back to wharf, with an ETag and 304 support.
    let r = w.get("/index/config.json").await;
    let cfg_etag = r.headers()["etag"].clone();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["dl"], format!("{}/api/v1/crates", w.url));
    let r = client()
        .get(format!("{}/index/config.json", w.url))
        .header("if-none-match", cfg_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn revalidation_uses_upstream_validators_and_stale_while_revalidate() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let path = "/index/be/ta/beta";
    assert_eq!(w.get(path).await.status(), 200);
    assert_eq!(up.count(path), 1);

    // Past the TTL but inside the stale-while-revalidate window: served at once as stale,
    // one background revalidation (a conditional request answered 304).
    w.clock.advance(Duration::from_secs(90));
    let r = w.get(path).await;
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(&r.bytes().await.unwrap()[..], &up.index_body("beta")[..]);
    wait_for(|| up.not_modified() == 1).await;
    assert_eq!(up.seen_if_none_match().len(), 1);
    let r = w.get(path).await;
    assert_eq!(
        r.headers()["x-wharf-cache"],
        "hit",
        "revalidated entry is fresh again"
    );

    // Far past the window: revalidated before answering; a new version shows up at once.
    up.publish(make_crate("beta", "0.3.0", &[], &[]));
    w.clock.advance(Duration::from_secs(3600));
    let r = w.get(path).await;
    assert_eq!(r.headers()["x-wharf-cache"], "revalidated");
    let body = r.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("0.3.0"));
    assert_eq!(&body[..], &up.index_body("beta")[..]);
    // ...and the new bytes were persisted: a restarted wharf serves them offline.
    w.running.shutdown().await.unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.offline = true;
    let w = Wharf::start(&cfg).await;
    let r = w.get(path).await;
    assert_eq!(r.status(), 200);
    assert!(String::from_utf8_lossy(&r.bytes().await.unwrap()).contains("0.3.0"));
    w.running.shutdown().await.unwrap();
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 4 s");
}

#[tokio::test]
async fn index_without_upstream_etag_still_gets_ours() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    up.fault("/index/", Fault::NoEtag, None);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    // Revalidation without validators is an unconditional GET, and still works.
    w.clock.advance(Duration::from_secs(3600));
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "revalidated");
    assert_eq!(up.count("/index/be/ta/beta"), 2);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_faults_are_5xx_never_404() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;

    up.fault("/index/be/ta/beta", Fault::Status(500), Some(1));
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 502);
    up.fault("/index/be/ta/beta", Fault::TooMany, Some(1));
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    // Slower than wharf's 2 s upstream timeout: 504 (had wharf waited, the fake would have
    // answered 200 after 5 s).
    up.fault(
        "/index/be/ta/beta",
        Fault::Delay(Duration::from_secs(5)),
        Some(1),
    );
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 504);
    up.set_down(true);
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["errors"][0]["detail"].as_str().unwrap().contains("beta"));
    // Uncached crate with upstream down: 5xx too.
    assert!(
        w.get("/api/v1/crates/beta/0.2.0/download")
            .await
            .status()
            .is_server_error()
    );

    // Once upstream is back, a cached entry survives a 500 as stale.
    up.set_down(false);
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200);
    w.clock.advance(Duration::from_secs(3600));
    up.fault("/index/be/ta/beta", Fault::Status(503), None);
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert!(r.headers()["warning"].to_str().unwrap().starts_with("111"));
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_404_is_cached_for_the_negative_ttl_only() {
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let path = "/index/ne/wc/newcrate";
    let r = w.get(path).await;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("newcrate")
    );
    assert_eq!(w.get(path).await.status(), 404);
    assert_eq!(up.count(path), 1, "404 was not cached");
    assert_eq!(
        w.get("/api/v1/crates/newcrate/1.0.0/download")
            .await
            .status(),
        404
    );

    // Published upstream meanwhile: visible once the negative TTL has passed.
    up.publish(make_crate("newcrate", "1.0.0", &[], &[]));
    w.clock.advance(Duration::from_secs(31));
    assert_eq!(w.get(path).await.status(), 200);
    assert_eq!(up.count(path), 2);
    assert_eq!(
        w.get("/api/v1/crates/newcrate/1.0.0/download")
            .await
            .status(),
        200
    );
    // A version the index does not list is 404, after one revalidation.
    assert_eq!(
        w.get("/api/v1/crates/newcrate/9.9.9/download")
            .await
            .status(),
        404
    );
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn offline_serves_cache_and_503s_the_rest() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200);
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    w.running.shutdown().await.unwrap();

    let before = up.total();
    let mut cfg = wharf_config(&up, data.path());
    cfg.offline = true;
    let w = Wharf::start(&cfg).await;
    w.clock.advance(Duration::from_secs(7 * 24 * 3600));
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    let r = w.get("/index/al/ph/alpha").await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not cached")
    );
    assert_eq!(
        w.get("/api/v1/crates/alpha/1.1.0/download").await.status(),
        503
    );
    let h: serde_json::Value = w.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "offline");
    assert_eq!(up.total(), before, "offline wharf contacted upstream");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_paths_are_refused_without_touching_upstream_or_disk() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let long = "a".repeat(300);
    let cases = [
        "/index/../../etc/passwd",
        "/index/%2e%2e/%2e%2e/passwd",
        "/index/se/rd/ser%00de",
        "/index/se/rd/ser%2Fde",
        "/index/se\\rd\\serde",
        "/index/se/rd/serde/extra",
        "/index/xx/yy/serde",
        "/index/9l/iv/9lives",
        &format!("/index/aa/aa/{long}"),
        "/api/v1/crates/beta/..%2f..%2fetc/download",
        "/api/v1/crates/beta/not-semver/download",
        "/api/v1/crates/../0.2.0/download",
        "/api/v1/crates/beta/0.2.0/download/more",
        "/index/",
        "/elsewhere",
    ];
    for p in cases {
        // Raw request: no client-side normalisation of `..` or escapes.
        let req = format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let status = raw_status(w.running.addr, req.as_bytes()).await;
        assert!(
            status == 400 || status == 404,
            "{p}: status {status}, expected 400/404"
        );
    }
    assert_eq!(up.total(), 0, "a bad path reached upstream");
    let entries: Vec<_> = std::fs::read_dir(data.path()).unwrap().collect();
    assert!(entries.is_empty(), "a bad path wrote to the data dir");
    let r = client()
        .post(format!("{}/index/be/ta/beta", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    w.running.shutdown().await.unwrap();
}

/// The binary: first log line names the address; SIGTERM drains and exits 0.
#[tokio::test]
async fn binary_announces_address_and_exits_cleanly_on_sigterm() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let mut w = spawn_wharf_binary(data.path(), &["--upstream", &up.index_url()], "info").await;
    assert!(
        w.first_line.contains("listening on http://"),
        "the first log line must announce the address: {}",
        w.first_line
    );
    assert!(
        w.url.starts_with("http://127.0.0.1:") && !w.url.ends_with(":0"),
        "{}",
        w.url
    );
    let r = client()
        .get(format!("{}/index/be/ta/beta", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = w.terminate().await;
    assert!(status.success(), "exit status {status}");
}

/// Against the real upstream; run by hand: `cargo test -- --ignored`.
#[tokio::test]
#[ignore = "needs the public registry"]
async fn live_crates_io_index_and_download() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = wharf::config::resolve(
        wharf::config::FileConfig::default(),
        wharf::config::Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    cfg.upstream.timeout = Duration::from_secs(30);
    let w = Wharf::start(&cfg).await;
    let r = w.get("/index/se/rd/serde").await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("\"vers\":\"1.0.0\"") || body.contains("\"vers\": \"1.0.0\""));
    let r = w.get("/api/v1/crates/serde/1.0.0/download").await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 1000);
    w.running.shutdown().await.unwrap();
}

/// An upstream behind a private CA: refused by default, trusted with `upstream.ca_file`.
#[tokio::test]
async fn upstream_tls_with_private_ca_file() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let (tls_addr, ca_pem) = tls_front(up.addr).await;
    let data = tempfile::tempdir().unwrap();
    let ca_file = data.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let mut cfg = wharf_config(&up, &data.path().join("a"));
    cfg.upstream.index_url = format!("https://{tls_addr}/index/");
    let w = Wharf::start(&cfg).await;
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 502, "an unknown CA must not be trusted");
    let v: serde_json::Value = r.json().await.unwrap();
    let detail = v["errors"][0]["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("beta"), "{detail}");
    w.running.shutdown().await.unwrap();

    cfg.upstream.ca_file = Some(ca_file);
    cfg.data_dir = data.path().join("b");
    let w = Wharf::start(&cfg).await;
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &up.index_body("beta")[..]);
    w.running.shutdown().await.unwrap();
}

/// wharf over HTTPS (private CA): ALPN gives HTTP/2, and cargo fetches through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_https_with_h2_to_cargo() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = cert_chain();
    let dir = data.path().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    for (f, v) in [("ca.pem", &ca), ("cert.pem", &leaf), ("key.pem", &key)] {
        std::fs::write(dir.join(f), v).unwrap();
    }
    let mut cfg = wharf_config(&up, &data.path().join("store"));
    cfg.server.tls = Some((dir.join("cert.pem"), dir.join("key.pem")));
    // Every crate streams from upstream to cargo (over h2) while being verified.
    cfg.cache.hot_crate_max_item = 64;
    let w = Wharf::start(&cfg).await;
    assert!(w.url.starts_with("https://127.0.0.1:"), "{}", w.url);

    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("{}/index/be/ta/beta", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_2,
        "ALPN did not select h2"
    );
    let v: serde_json::Value = c
        .get(format!("{}/index/config.json", w.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["dl"].as_str().unwrap().starts_with("https://"));

    let env = CargoEnv::new(&w.url, CONSUMER_DEPS);
    let cainfo = dir.join("ca.pem");
    let cainfo = cainfo.to_str().unwrap();
    let (ok, out) = env
        .cargo_env(&["generate-lockfile"], &[("CARGO_HTTP_CAINFO", cainfo)])
        .await;
    assert!(ok, "{out}");
    let (ok, out) = env
        .cargo_env(&["fetch"], &[("CARGO_HTTP_CAINFO", cainfo)])
        .await;
    assert!(ok, "cargo over https failed:\n{out}");
    // Without the CA, cargo refuses the certificate.
    env.fresh_home();
    let (ok, _) = env.cargo(&["fetch"]).await;
    assert!(!ok, "cargo trusted an unknown CA");
    w.running.shutdown().await.unwrap();
}
