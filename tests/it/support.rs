//! Test support: a fake upstream sparse registry (generated crates, request counters, fault
//! injection, a cut-the-network switch), wharf started in-process, and a cargo driver.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use wharf::config::{self, Config, FileConfig, Overrides};
use wharf::policy::Clock;

type Body = BoxBody<Bytes, std::io::Error>;

/// A generated crate version: its `.crate` bytes and its index line.
#[derive(Clone)]
pub struct FakeVersion {
    pub name: String,
    pub vers: String,
    pub bytes: Bytes,
    pub cksum: String,
    pub line: String,
}

/// A dependency of a generated crate.
pub struct Dep<'a> {
    pub name: &'a str,
    pub req: &'a str,
    pub features: &'a [&'a str],
    pub optional: bool,
}

pub fn dep<'a>(name: &'a str, req: &'a str) -> Dep<'a> {
    Dep {
        name,
        req,
        features: &[],
        optional: false,
    }
}

/// Builds a real `.crate` (gzip'd tar with Cargo.toml and src/lib.rs) and its index line.
pub fn make_crate(
    name: &str,
    vers: &str,
    deps: &[Dep<'_>],
    features: &[(&str, &[&str])],
) -> FakeVersion {
    let mut toml = format!(
        "[package]\nname = \"{name}\"\nversion = \"{vers}\"\nedition = \"2021\"\n\n[dependencies]\n"
    );
    for d in deps {
        let feats: Vec<String> = d.features.iter().map(|f| format!("\"{f}\"")).collect();
        toml.push_str(&format!(
            "{} = {{ version = \"{}\", features = [{}], optional = {} }}\n",
            d.name,
            d.req,
            feats.join(", "),
            d.optional
        ));
    }
    toml.push_str("\n[features]\n");
    for (f, v) in features {
        let vals: Vec<String> = v.iter().map(|x| format!("\"{x}\"")).collect();
        toml.push_str(&format!("{f} = [{}]\n", vals.join(", ")));
    }
    let lib = format!("pub fn which() -> &'static str {{ \"{name} {vers}\" }}\n");

    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("Cargo.toml", toml.as_bytes()),
        ("src/lib.rs", lib.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_153_704_088);
        h.set_cksum();
        tar.append_data(&mut h, format!("{name}-{vers}/{path}"), data)
            .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let bytes = Bytes::from(gz.finish().unwrap());
    let cksum = hex::encode(Sha256::digest(&bytes));

    let deps_json: Vec<serde_json::Value> = deps
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name, "req": d.req, "features": d.features, "optional": d.optional,
                "default_features": true, "target": null, "kind": "normal"
            })
        })
        .collect();
    let feats: BTreeMap<&str, &[&str]> = features.iter().copied().collect();
    let line = serde_json::json!({
        "name": name, "vers": vers, "deps": deps_json, "cksum": cksum,
        "features": feats, "yanked": false,
        // A field cargo does not know: must pass through untouched.
        "x-unknown": {"kept": true},
    })
    .to_string();
    FakeVersion {
        name: name.to_owned(),
        vers: vers.to_owned(),
        bytes,
        cksum,
        line,
    }
}

/// A `.crate` laid out as `dir_name-dir_vers/` whose Cargo.toml names another package.
pub fn make_crate_with_manifest(dir_name: &str, dir_vers: &str, name: &str, vers: &str) -> Vec<u8> {
    let toml = format!("[package]\nname = \"{name}\"\nversion = \"{vers}\"\n");
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(toml.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(
        &mut h,
        format!("{dir_name}-{dir_vers}/Cargo.toml"),
        toml.as_bytes(),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// A fault the fake upstream injects into responses for matching paths.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: 2`.
    TooMany,
    Delay(Duration),
    /// Sends part of the body, then aborts the connection.
    ResetMidBody,
    /// Sends other bytes than the crate's.
    WrongBytes,
    /// Announces the full Content-Length but sends only half of the crate.
    Truncated,
    /// Sends half of the crate, then waits for [`FakeUpstream::open_gate`] before sending
    /// the rest (corrupted when `corrupt`).
    Gate {
        corrupt: bool,
    },
    /// Omits ETag (and Last-Modified) on index responses.
    NoEtag,
}

struct Rule {
    contains: String,
    fault: Fault,
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    /// lower-case name -> versions
    crates: Mutex<BTreeMap<String, Vec<FakeVersion>>>,
    /// Extra raw lines appended to an index file (lower-case name -> text).
    raw_extra: Mutex<HashMap<String, String>>,
    counts: Mutex<HashMap<String, usize>>,
    not_modified: Mutex<usize>,
    rules: Mutex<Vec<Rule>>,
    down: AtomicBool,
    down_tx: tokio::sync::watch::Sender<bool>,
    gate: Arc<tokio::sync::Notify>,
    seen_if_none_match: Mutex<Vec<String>>,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if st.down.load(Ordering::SeqCst) {
                    drop(stream); // the network is cut: connection closed at once
                    continue;
                }
                let st = st.clone();
                let mut down_rx = st.down_tx.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(&st, addr, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    // Cutting the network also kills kept-alive connections.
                    tokio::select! {
                        _ = conn => {}
                        _ = down_rx.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    pub fn index_url(&self) -> String {
        format!("http://{}/index/", self.addr)
    }

    pub fn publish(&self, v: FakeVersion) {
        self.state
            .crates
            .lock()
            .unwrap()
            .entry(v.name.to_ascii_lowercase())
            .or_default()
            .push(v);
    }

    pub fn add_raw_line(&self, name: &str, text: &str) {
        self.state
            .raw_extra
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), text.to_owned());
    }

    /// The exact bytes of an index file as the fake serves it.
    pub fn index_body(&self, name: &str) -> Vec<u8> {
        index_body(&self.state, &name.to_ascii_lowercase()).unwrap()
    }

    /// Requests seen for paths containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.contains(needle))
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn total(&self) -> usize {
        self.state.counts.lock().unwrap().values().sum()
    }

    pub fn not_modified(&self) -> usize {
        *self.state.not_modified.lock().unwrap()
    }

    pub fn seen_if_none_match(&self) -> Vec<String> {
        self.state.seen_if_none_match.lock().unwrap().clone()
    }

    /// Injects `fault` on paths containing `contains`, `times` times (None: until cleared).
    pub fn fault(&self, contains: &str, fault: Fault, times: Option<usize>) {
        self.state.rules.lock().unwrap().push(Rule {
            contains: contains.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Lets a `Fault::Gate` response finish.
    pub fn open_gate(&self) {
        self.state.gate.notify_one();
    }

    /// Cuts (true) or restores (false) the network to the fake upstream.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        self.state.down_tx.send_replace(down);
    }
}

fn prefix(name: &str) -> String {
    match name.len() {
        1 => "1".into(),
        2 => "2".into(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    }
}

fn index_body(st: &State, lower: &str) -> Option<Vec<u8>> {
    let crates = st.crates.lock().unwrap();
    let versions = crates.get(lower)?;
    let mut body = String::new();
    for v in versions {
        body.push_str(&v.line);
        body.push('\n');
    }
    if let Some(extra) = st.raw_extra.lock().unwrap().get(lower) {
        body.push_str(extra);
    }
    Some(body.into_bytes())
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn take_fault(st: &State, path: &str) -> Option<Fault> {
    let mut rules = st.rules.lock().unwrap();
    let i = rules.iter().position(|r| path.contains(&r.contains))?;
    let fault = rules[i].fault.clone();
    if let Some(n) = rules[i].remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            rules.remove(i);
        }
    }
    Some(fault)
}

async fn serve(st: &State, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    *st.counts.lock().unwrap().entry(path.clone()).or_default() += 1;
    let fault = take_fault(st, &path);
    match &fault {
        Some(Fault::Status(s)) => {
            return full(StatusCode::from_u16(*s).unwrap(), "injected failure");
        }
        Some(Fault::TooMany) => {
            let mut r = full(StatusCode::TOO_MANY_REQUESTS, "slow down");
            r.headers_mut().insert("retry-after", "2".parse().unwrap());
            return r;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }

    if path == "/index/config.json" {
        // Uses several template markers, so wharf's expansion is exercised.
        let dl = format!(
            "http://{addr}/files/{{lowerprefix}}/{{crate}}/{{version}}/{{sha256-checksum}}/download"
        );
        return full(
            StatusCode::OK,
            serde_json::json!({ "dl": dl, "api": format!("http://{addr}") }).to_string(),
        );
    }
    if let Some(rest) = path.strip_prefix("/index/") {
        let name = rest.rsplit('/').next().unwrap_or("");
        if rest != format!("{}/{}", prefix(name), name) {
            return full(StatusCode::NOT_FOUND, "bad path");
        }
        let Some(body) = index_body(st, name) else {
            return full(StatusCode::NOT_FOUND, "not found");
        };
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..16]);
        if let Some(inm) = req.headers().get("if-none-match") {
            let inm = inm.to_str().unwrap_or("").to_owned();
            st.seen_if_none_match.lock().unwrap().push(inm.clone());
            if inm == etag {
                *st.not_modified.lock().unwrap() += 1;
                let mut r = full(StatusCode::NOT_MODIFIED, Bytes::new());
                r.headers_mut().insert("etag", etag.parse().unwrap());
                return r;
            }
        }
        let mut r = full(StatusCode::OK, body);
        if !matches!(fault, Some(Fault::NoEtag)) {
            r.headers_mut().insert("etag", etag.parse().unwrap());
        }
        return r;
    }
    if let Some(rest) = path.strip_prefix("/files/") {
        // {lowerprefix}/{crate}/{version}/{sha256}/download
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        if n < 5 || segs[n - 1] != "download" {
            return full(StatusCode::NOT_FOUND, "bad download path");
        }
        let (name, vers, ck) = (segs[n - 4], segs[n - 3].replace("%2B", "+"), segs[n - 2]);
        if segs[n - 3].contains('+') {
            return full(StatusCode::NOT_FOUND, "`+` must arrive as %2B");
        }
        if segs[..n - 4].join("/") != prefix(name).to_ascii_lowercase() {
            return full(StatusCode::NOT_FOUND, "bad prefix");
        }
        let found = st
            .crates
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.vers == vers && v.name == name)
                    .cloned()
            });
        let Some(v) = found else {
            return full(StatusCode::NOT_FOUND, "no such crate");
        };
        if v.cksum != ck {
            return full(StatusCode::NOT_FOUND, "wrong checksum in URL");
        }
        return match fault {
            Some(Fault::WrongBytes) => {
                let mut b = v.bytes.to_vec();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                full(StatusCode::OK, b)
            }
            Some(Fault::Gate { corrupt }) => {
                let half = v.bytes.len() / 2;
                let first = v.bytes.slice(..half);
                let mut rest = v.bytes.slice(half..).to_vec();
                if corrupt {
                    rest[0] ^= 0xff;
                }
                let gate = st.gate.clone();
                let frames = futures_util::StreamExt::chain(
                    futures_util::stream::once(async move {
                        Ok::<_, std::io::Error>(Frame::data(first))
                    }),
                    futures_util::stream::once(async move {
                        gate.notified().await;
                        Ok(Frame::data(Bytes::from(rest)))
                    }),
                );
                let mut r = Response::new(StreamBody::new(frames).boxed());
                r.headers_mut()
                    .insert("content-length", v.bytes.len().to_string().parse().unwrap());
                r
            }
            Some(Fault::Truncated) => {
                let mut r = full(StatusCode::OK, v.bytes.slice(..v.bytes.len() / 2));
                r.headers_mut()
                    .insert("content-length", v.bytes.len().to_string().parse().unwrap());
                r
            }
            Some(Fault::ResetMidBody) => {
                let half = v.bytes.slice(..v.bytes.len() / 2);
                let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                    Ok(Frame::data(half)),
                    Err(std::io::Error::other("injected reset")),
                ];
                let mut r =
                    Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
                r.headers_mut()
                    .insert("content-length", v.bytes.len().to_string().parse().unwrap());
                r
            }
            _ => full(StatusCode::OK, v.bytes),
        };
    }
    full(StatusCode::NOT_FOUND, "unknown path")
}

/// Settings for a wharf under test: loopback, a temp data dir, the fake upstream.
pub fn wharf_config(upstream: &FakeUpstream, data_dir: &Path) -> Config {
    let mut c = config::resolve(
        FileConfig::default(),
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.to_path_buf()),
            upstream: Some(upstream.index_url()),
            ..Default::default()
        },
    )
    .unwrap();
    c.upstream.timeout = Duration::from_secs(2);
    c.upstream.connect_timeout = Duration::from_secs(1);
    c
}

pub struct Wharf {
    pub running: wharf::Running,
    pub url: String,
    pub clock: Clock,
}

impl Wharf {
    pub async fn start(cfg: &Config) -> Self {
        let clock = Clock::manual();
        let running = wharf::start(cfg, clock.clone()).await.unwrap();
        let url = running.public_url.clone();
        Self {
            running,
            url,
            clock,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .unwrap()
    }
}

pub fn client() -> reqwest::Client {
    // Whichever test runs first, the rustls provider must be installed before a client.
    wharf::upstream::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A throwaway cargo home whose config replaces crates-io with wharf, and a project.
pub struct CargoEnv {
    pub dir: tempfile::TempDir,
}

impl CargoEnv {
    pub fn new(wharf_url: &str, manifest_deps: &str) -> Self {
        Self::package(
            wharf_url,
            "consumer",
            "0.1.0",
            manifest_deps,
            "pub use alpha;\n",
        )
    }

    /// A project named `name` with `deps` (a `[dependencies]` body) and `lib` as src/lib.rs.
    pub fn package(wharf_url: &str, name: &str, version: &str, deps: &str, lib: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let proj = dir.path().join("proj");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(proj.join("src")).unwrap();
        std::fs::write(
            home.join("config.toml"),
            format!(
                "{}\n[net]\nretry = 0\n",
                wharf::cli::cargo_config(wharf_url)
            ),
        )
        .unwrap();
        std::fs::write(
            proj.join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\ndescription = \"test crate {name}\"\nlicense = \"MIT\"\n\n[dependencies]\n{deps}\n\n[workspace]\n"
            ),
        )
        .unwrap();
        std::fs::write(proj.join("src/lib.rs"), lib).unwrap();
        Self { dir }
    }

    pub fn project(&self) -> PathBuf {
        self.dir.path().join("proj")
    }

    /// A fresh client cache, as on a new CI machine, keeping config and project.
    pub fn fresh_home(&self) {
        let home = self.dir.path().join("home");
        for sub in ["registry", ".package-cache", ".global-cache"] {
            let _ = std::fs::remove_dir_all(home.join(sub));
            let _ = std::fs::remove_file(home.join(sub));
        }
    }

    /// Runs cargo in a blocking thread; returns (success, combined output).
    pub async fn cargo(&self, args: &[&str]) -> (bool, String) {
        self.cargo_env(args, &[]).await
    }

    /// Runs cargo with extra environment variables.
    pub async fn cargo_env(&self, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let home = self.dir.path().join("home");
        let proj = self.project();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(cargo)
                .args(&args)
                .current_dir(&proj)
                .env("CARGO_HOME", &home)
                .env("CARGO_TARGET_DIR", proj.join("target"))
                .env("CARGO_HTTP_TIMEOUT", "20")
                .env_remove("CARGO_REGISTRIES_CRATES_IO_PROTOCOL")
                .env_remove("RUSTC_WRAPPER")
                .env_remove("CARGO_REGISTRIES_WHARF_TOKEN")
                .envs(envs)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
        .await
        .unwrap()
    }
}

/// A TLS front for `backend` whose certificate chains to a fresh private CA that no root
/// store knows (like a corporate TLS-inspecting proxy). Returns its address and the CA PEM.
pub async fn tls_front(backend: SocketAddr) -> (SocketAddr, String) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (ca_pem, leaf_pem, key_pem) = cert_chain();
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca_pem)
}

/// A fresh private CA and a leaf certificate for 127.0.0.1 signed by it:
/// (CA PEM, leaf PEM, leaf key PEM).
pub fn cert_chain() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wharf test private CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// The real `wharf` binary, started with `serve --listen 127.0.0.1:0 --data-dir DATA` plus
/// `extra` arguments; its URL is read from the first log line, which must announce it.
pub struct WharfProcess {
    pub child: tokio::process::Child,
    pub url: String,
    /// The first line the process logged.
    pub first_line: String,
    /// Every later stderr line, returned once the process has exited.
    pub log: tokio::task::JoinHandle<String>,
}

pub async fn spawn_wharf_binary(data: &Path, extra: &[&str], rust_log: &str) -> WharfProcess {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .env_remove("WHARF_CONFIG")
        .current_dir(data)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // At trace level other crates may log first; at info the announcement is line one.
    let mut first_line = None;
    let mut before = String::new();
    let url = loop {
        let line =
            strip_ansi(&lines.next_line().await.unwrap().unwrap_or_else(|| {
                panic!("wharf exited without announcing its address:\n{before}")
            }));
        first_line.get_or_insert_with(|| line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        before.push_str(&line);
        before.push('\n');
    };
    let first_line = first_line.unwrap_or_default();
    let log = tokio::spawn(async move {
        let mut all = before;
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    WharfProcess {
        child,
        url,
        first_line,
        log,
    }
}

impl WharfProcess {
    /// SIGTERM, then the exit status (graceful shutdown must finish within 20 s).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("wharf did not exit after SIGTERM")
            .unwrap()
    }

    /// SIGKILL, as a crash.
    pub async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends raw bytes to `addr` and returns the status code of the answer (0 if the
/// connection closed without one). No client-side normalisation of the request.
pub async fn raw_status(addr: SocketAddr, req: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every file under `p` (recursively) with its size.
pub fn files_under(p: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            v.extend(files_under(&path));
        } else {
            let n = e.metadata().map(|m| m.len()).unwrap_or(0);
            v.push((path, n));
        }
    }
    v
}

/// A tmpfs mounted over a fresh `data` directory under `root`, unmounted on drop. `None`
/// (with a note) only when not running as root; as root a failed mount fails the test.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn data_dir(root: &Path, size: &str) -> Option<(Self, PathBuf)> {
        let dir = root.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some((Self(dir.clone()), dir));
        }
        assert_ne!(uid(), 0, "running as root, yet the tmpfs mount failed");
        eprintln!("skipping: mounting tmpfs needs root (CI runs as root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(0)
}
