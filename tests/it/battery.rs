//! Reliability and security battery: hostile HTTP, slow clients, upstream lies, damaged
//! and full storage.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::publish_graph;
use super::support::*;

#[tokio::test]
async fn hostile_http_shapes_get_clear_4xx() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    let a = w.running.addr;
    let big = "a".repeat(100_000);
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (
            b"PUT /private/api/v1/crates/new HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
            &[400],
        ),

        (
            b"GET /index/be/ta/beta HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            format!("GET /index/be/ta/beta HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            &[431],
        ),
        (
            format!("GET /index/{big} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            &[414, 431],
        ),
        (
            b"GET /index/be/ta/be\xff\xfeta HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            b"GET /index/..%5c..%5cetc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400, 404],
        ),
        (b"GARBAGE\r\n\r\n".to_vec(), &[400]),
    ];
    for (req, want) in cases {
        let got = raw_status(a, &req).await;
        assert!(
            want.contains(&got),
            "{:?}: got {got}, want {want:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    // CL + TE: hyper drops Content-Length and reads the body as chunked (RFC 9112 §6.3);
    // the bytes after the chunked body must not become a second request.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(
        b"PUT /private/api/v1/crates/new HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /index/be/ta/beta HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // The smuggled GET is answered as its own request (a normal pipelined request), not
    // as part of the PUT body: either way it never reached the publish handler's body.
    assert!(!answer.contains("malformed publish"), "{answer}");
    assert_eq!(up.total(), 0, "hostile input reached the upstream");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.server.header_read_timeout = Duration::from_millis(500);
    cfg.server.body_timeout = Duration::from_millis(500);
    let w = Wharf::start(&cfg).await;

    // Slowloris: headers that never end. The server closes the connection.
    let mut s = tokio::net::TcpStream::connect(w.running.addr)
        .await
        .unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..20 {
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("connection left open")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.contains("408"), "{answer}");

    // A publish body that stalls: refused when body_timeout passes.
    let mut s = tokio::net::TcpStream::connect(w.running.addr)
        .await
        .unwrap();
    s.write_all(
        b"PUT /private/api/v1/crates/new HTTP/1.1\r\nHost: x\r\nAuthorization: t\r\nContent-Length: 100000\r\n\r\npartial",
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("stalled body held the connection")
        .unwrap_or(0);
    // (A bogus token is refused before the body is read; either way nothing hangs.)
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn stalled_publish_body_times_out() {
    use wharf::registry::tokens::{self, Scope};
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let tok = tokens::create(
        &wharf::store::FsStore::new(data.path()),
        "a",
        "a",
        Scope::Publish,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.server.body_timeout = Duration::from_millis(500);
    let w = Wharf::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(w.running.addr)
        .await
        .unwrap();
    s.write_all(
        format!("PUT /private/api/v1/crates/new HTTP/1.1\r\nHost: x\r\nAuthorization: {tok}\r\nContent-Length: 100000\r\n\r\npartial").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("stalled body held the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncated_upstream_body_is_502_and_not_cached() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let w = Wharf::start(&wharf_config(&up, data.path())).await;
    up.fault("/files/", Fault::Truncated, Some(1));
    let r = w.get("/api/v1/crates/beta/0.2.0/download").await;
    assert_eq!(r.status(), 502);
    assert!(!data.path().join("crates-v1/be/ta/beta").exists());
    let t = w.get("/metrics").await.text().await.unwrap();
    assert!(
        t.contains("wharf_upstream_requests_total{kind=\"crate\",result=\"error\"} 1"),
        "{t}"
    );
    let r = w.get("/api/v1/crates/beta/0.2.0/download").await;
    assert_eq!(r.status(), 200);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unresolvable_upstream_is_5xx() {
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.upstream.index_url = "http://upstream.invalid/index/".into();
    let w = Wharf::start(&cfg).await;
    let r = w.get("/index/be/ta/beta").await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let h: serde_json::Value = w.get("/health").await.json().await.unwrap();
    assert_eq!(h["status"], "degraded");
    w.running.shutdown().await.unwrap();

    // Connection refused (nothing listens on port 1): 502 at once, not a hang.
    cfg.upstream.index_url = "http://127.0.0.1:1/index/".into();
    let w = Wharf::start(&cfg).await;
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("connect")
    );
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn damaged_stored_index_is_refetched_and_missing_data_dir_created() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("not/yet/there");
    let w = Wharf::start(&wharf_config(&up, &data)).await;
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200);
    w.running.shutdown().await.unwrap();
    std::fs::write(data.join("index-v1/be/ta/beta"), b"wharf-index v1\n{broken").unwrap();
    let w = Wharf::start(&wharf_config(&up, &data)).await;
    let r = w.get("/index/be/ta/beta").await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &up.index_body("beta")[..]);
    assert_eq!(up.count("/index/be/ta/beta"), 2);
    w.running.shutdown().await.unwrap();

    // A data dir that cannot be a directory: start-up fails with a clear error.
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = wharf::start(&wharf_config(&up, &file), wharf::policy::Clock::system())
        .await
        .err()
        .expect("started on a file");
    assert!(err.to_string().contains("data directory"), "{err}");
}

#[tokio::test]
async fn disk_full_fails_cleanly_and_recovers() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let root = tempfile::tempdir().unwrap();
    let Some((_mnt, data)) = Tmpfs::data_dir(root.path(), "512k") else {
        return;
    };
    let w = Wharf::start(&wharf_config(&up, &data)).await;
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    // Fill the disk.
    let filler = data.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    // A miss cannot be stored: 5xx with a clear message, nothing partial left behind.
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("could not store")
    );
    let leftovers: Vec<_> = files_under(&data)
        .into_iter()
        .map(|(p, _)| p.display().to_string())
        .filter(|p| p.contains(".tmp.") || p.contains("gamma_util-1.2.0"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Hits keep working.
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    // Space returns: the miss succeeds.
    std::fs::remove_file(&filler).unwrap();
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 200);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_only_data_dir_serves_hits_and_refuses_crate_misses() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let root = tempfile::tempdir().unwrap();
    let Some((_mnt, data)) = Tmpfs::data_dir(root.path(), "4m") else {
        return;
    };
    let w = Wharf::start(&wharf_config(&up, &data)).await;
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    w.running.shutdown().await.unwrap();
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    // Restarted on the read-only directory: cached data from disk, misses refused cleanly.
    let w = Wharf::start(&wharf_config(&up, &data)).await;
    assert_eq!(
        w.get("/api/v1/crates/beta/0.2.0/download").await.status(),
        200
    );
    assert_eq!(w.get("/index/be/ta/beta").await.status(), 200);
    let r = w.get("/api/v1/crates/gamma_util/1.2.0/download").await;
    assert_eq!(r.status(), 503);
    // An index miss is still served (it just is not persisted).
    assert_eq!(w.get("/index/al/ph/alpha").await.status(), 200);
    w.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_never_reach_logs_and_host_header_is_ignored() {
    let up = FakeUpstream::start().await;
    let data = tempfile::tempdir().unwrap();
    let tok = wharf::registry::tokens::create(
        &wharf::store::FsStore::new(data.path()),
        "ci",
        "ci",
        wharf::registry::tokens::Scope::Read,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    let mut w = spawn_wharf_binary(
        data.path(),
        &[
            "--upstream",
            &up.index_url(),
            "--public-url",
            "http://wharf.internal:8080",
        ],
        "trace",
    )
    .await;
    // The log announces the bound address; config.json carries the public URL.
    let base = w.url.clone();
    let wrong = "wharf_0123456789abcdef0123456789abcdef01234567";
    let c = client();
    let r = c
        .get(format!("{base}/t/{tok}/private/index/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(format!("{base}/private/api/v1/crates/new"))
        .header("authorization", wrong)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        !r.text().await.unwrap().contains(wrong),
        "token echoed in an error"
    );
    // A crafted Host header cannot redirect downloads: public_url comes from config only.
    let r = c
        .get(format!("{base}/index/config.json"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["dl"], "http://wharf.internal:8080/api/v1/crates");
    assert!(w.terminate().await.success());
    let log = (&mut w.log).await.unwrap();
    assert!(
        log.contains("/t/<token>/private/index/config.json"),
        "{log}"
    );
    assert!(!log.contains(&tok), "the token appeared in the log");
    assert!(
        !log.contains(wrong),
        "a presented token appeared in the log"
    );
}

/// Large cold crates stream to the client while being hashed; the end of the file is held
/// back until the checksum matched, so a bad upstream never yields a complete response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_cold_crates_stream_and_bad_ones_abort() {
    let up = FakeUpstream::start().await;
    publish_graph(&up);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = wharf_config(&up, data.path());
    cfg.cache.hot_crate_max_item = 64; // every test crate counts as "large"
    let w = Wharf::start(&cfg).await;
    let good = make_crate(
        "beta",
        "0.2.0",
        &[dep("gamma_util", "^1")],
        &[("fast", &[])],
    );

    let url = format!("{}/api/v1/crates/beta/0.2.0/download", w.url);
    let guard = Duration::from_secs(10); // only against hangs, not a timing assertion

    // The upstream sends half and stalls: headers reaching the client now prove streaming.
    // The second half is corrupt: the transfer breaks, nothing is cached.
    up.fault("/files/", Fault::Gate { corrupt: true }, Some(1));
    let r = tokio::time::timeout(guard, client().get(&url).send())
        .await
        .expect("no headers while upstream stalls: the crate was not streamed")
        .unwrap();
    assert_eq!(r.status(), 200);
    up.open_gate();
    assert!(
        r.bytes().await.is_err(),
        "a corrupt crate was delivered as a complete response"
    );
    assert!(!data.path().join("crates-v1/be/ta/beta").exists());

    // Good bytes, streamed the same way: identical, with the announced length, then cached.
    up.fault("/files/", Fault::Gate { corrupt: false }, Some(1));
    let r = tokio::time::timeout(guard, client().get(&url).send())
        .await
        .expect("no headers while upstream stalls: the crate was not streamed")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "miss");
    assert_eq!(
        r.headers()["content-length"],
        good.bytes.len().to_string().as_str()
    );
    assert!(r.headers().get("content-encoding").is_none());
    up.open_gate();
    assert_eq!(r.bytes().await.unwrap(), good.bytes);
    let r = w.get("/api/v1/crates/beta/0.2.0/download").await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(r.bytes().await.unwrap(), good.bytes);

    // Coalescing still holds with streaming: one upstream request for 20 clients.
    up.fault("/files/", Fault::Delay(Duration::from_millis(300)), Some(1));
    let before = up.count("/files/");
    let c = client();
    let url = format!("{}/api/v1/crates/gamma_util/1.2.0/download", w.url);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.get(url).send().await.unwrap().bytes().await.unwrap() })
        })
        .collect();
    let want = make_crate("gamma_util", "1.2.0", &[], &[]).bytes;
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
    assert_eq!(up.count("/files/"), before + 1);
    w.running.shutdown().await.unwrap();
}
