//! HTTP only: the accept loop (HTTP/1.1 and h2c, TCP_NODELAY, graceful drain), routing, and
//! turning mirror answers and errors into responses. Handlers stay thin; decisions live in
//! `mirror` and `index`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::error::{Error, cargo_error_json};
use crate::index::{self, IndexRequest};
use crate::metrics::{CacheEvent, Metrics, Route};
use crate::mirror::{CacheStatus, Chunk, CrateBody, Mirror};
use crate::registry::{Identity, Registry};
use crate::upstream::Reachability;

/// Response bodies: complete buffers, or a crate streaming in from upstream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: Bytes) -> Body {
    use http_body_util::BodyExt;
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// Everything a request handler needs.
pub struct App {
    pub mirror: Arc<Mirror>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    public_url: String,
    config_json: Bytes,
    config_etag: HeaderValue,
    started: Instant,
    /// `server.header_read_timeout` and `server.body_timeout`.
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
}

impl App {
    pub fn new(
        mirror: Arc<Mirror>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        public_url: &str,
        limits: &crate::config::ServerConfig,
    ) -> Arc<Self> {
        let config_json = index::mirror_config_json(public_url);
        let config_etag = HeaderValue::from_str(&index::etag_for(&config_json))
            .unwrap_or(HeaderValue::from_static("\"config\""));
        Arc::new(Self {
            mirror,
            registry,
            metrics,
            public_url: public_url.trim_end_matches('/').to_owned(),
            config_json,
            config_etag,
            started: Instant::now(),
            header_read_timeout: limits.header_read_timeout,
            body_timeout: limits.body_timeout,
        })
    }
}

/// Largest request head (request line + headers) read; larger ones get 431.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS for the listener: rustls with ALPN `h2` and `http/1.1`, so cargo multiplexes.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::upstream::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read server.tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls_cert {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read server.tls_key {}: {e}", key.display()))?;
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_cert/tls_key do not form a usable pair: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// How long a client gets to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then stops accepting and drains open
/// connections (bounded by `DRAIN_TIMEOUT`).
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, req).await) }
                });
                match &tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                                Err(_) => return debug!("TLS handshake timed out"),
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            if let Err(e) = watcher.watch(conn).await {
                                debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let route_kind = Route::of(req.uri().path());
    let span = info_span!(
        "request",
        method = %req.method(),
        // Tokens in `/t/TOKEN/...` paths never reach the logs.
        path = %redact(req.uri().path()),
        krate = field::Empty,
        version = field::Empty,
    );
    let resp = route(app, req).instrument(span.clone()).await;
    let mut resp = resp.unwrap_or_else(|e| error_response(&e));
    if resp.status() == StatusCode::UNAUTHORIZED
        && let Ok(v) =
            HeaderValue::from_str(&format!("Cargo login_url=\"{}\"", app.registry.login_url()))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    // Content-Length is only added by hyper when writing; the body knows its size.
    let len = hyper::body::Body::size_hint(resp.body())
        .exact()
        .or_else(|| {
            resp.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        })
        .unwrap_or(0);
    app.metrics.request(route_kind, resp.status().as_u16(), len);
    if let Some(c) = resp.headers().get(&CACHE_HEADER) {
        app.metrics.cache(match c.as_bytes() {
            b"hit" => CacheEvent::Hit,
            b"miss" => CacheEvent::Miss,
            b"revalidated" => CacheEvent::Revalidated,
            _ => CacheEvent::Stale,
        });
    }
    span.in_scope(|| {
        info!(
            target: "wharf::access",
            status = resp.status().as_u16(),
            bytes = len,
            cache = resp.headers().get("x-wharf-cache").and_then(|v| v.to_str().ok()).unwrap_or("-"),
            micros = start.elapsed().as_micros() as u64,
            "request"
        )
    });
    resp
}

fn redact(path: &str) -> String {
    match path.strip_prefix("/t/") {
        Some(rest) => match rest.split_once('/') {
            Some((_, tail)) => format!("/t/<token>/{}", shorten(tail)),
            None => "/t/<token>".into(),
        },
        None => shorten(path),
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_owned();

    if let Some(rest) = path.strip_prefix("/t/") {
        // Token in the path, for cargo older than 1.74 (no auth-required support).
        return match rest.split_once('/') {
            Some((token, tail)) if tail == "private" || tail.starts_with("private/") => {
                let token = token.to_owned();
                private(app, req, &format!("/{tail}"), Some(token)).await
            }
            _ => Err(Error::NotFound("no such route under /t/".into())),
        };
    }
    if path.starts_with("/private/") {
        return private(app, req, &path, None).await;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(Error::MethodNotAllowed(format!(
            "method {} is not allowed on {}",
            req.method(),
            shorten(&path)
        )));
    }
    if path == "/health" {
        return Ok(health(app));
    }
    if path == "/metrics" {
        let mut r = Response::new(full(Bytes::from(app.metrics.render())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return Ok(r);
    }
    if let Some(rest) = path.strip_prefix("/index/") {
        return match index::parse_index_path(rest).map_err(|e| bad_path(&e))? {
            IndexRequest::Config => Ok(conditional(
                &req,
                app.config_json.clone(),
                app.config_etag.clone(),
                "application/json",
                None,
            )),
            IndexRequest::Crate(name) => {
                tracing::Span::current().record("krate", name.as_str());
                guard(app, &name)?;
                let r = app.mirror.index_file(&name).await?;
                let etag = HeaderValue::from_str(&r.etag)
                    .map_err(|_| Error::Storage("stored ETag is not a valid header".into()))?;
                Ok(conditional(
                    &req,
                    r.body,
                    etag,
                    "text/plain; charset=utf-8",
                    Some((r.status, r.revalidation_failed)),
                ))
            }
        };
    }
    if let Some(rest) = path.strip_prefix("/api/v1/crates/") {
        let segs: Vec<&str> = rest.split('/').collect();
        if let [name, version, "download"] = segs.as_slice() {
            let (name, version) = index::parse_download(name, version).map_err(|e| bad_path(&e))?;
            record_crate(&name, &version);
            guard(app, &name)?;
            let r = app.mirror.crate_file(&name, &version).await?;
            return Ok(crate_response(r.body, Some(r.status)));
        }
    }
    Err(Error::NotFound(format!(
        "no such route: {}",
        shorten(&path)
    )))
}

fn record_crate(name: &index::CrateName, version: &str) {
    let span = tracing::Span::current();
    span.record("krate", name.as_str());
    span.record("version", version);
}

/// The dependency-confusion guard: private and reserved names never come from upstream.
fn guard(app: &App, name: &index::CrateName) -> Result<(), Error> {
    if app.registry.blocks_mirror(name.as_str()) {
        warn!(krate = %name, "refused: the name is private or reserved; not asking upstream");
        return Err(Error::NotFound(format!(
            "`{name}` is a private or reserved crate name: the crates.io mirror never serves it (depend on it with `registry = \"wharf\"`)"
        )));
    }
    Ok(())
}

/// The hosted registry: `/private/index/...`, `/private/api/v1/...`, `/private/me`.
async fn private(
    app: &App,
    req: Request<Incoming>,
    path: &str,
    path_token: Option<String>,
) -> Result<Response<Body>, Error> {
    let reg = &app.registry;
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let token = path_token.clone().or(header_token);
    let who = reg.identify(token.as_deref()).await?;
    let base = match &path_token {
        Some(t) => format!("{}/t/{t}", app.public_url),
        None => app.public_url.clone(),
    };
    let rest = path.strip_prefix("/private").unwrap_or(path);
    let read_ok = || -> Result<(), Error> {
        match (&who, token.is_some()) {
            (Some(_), _) => Ok(()),
            _ if !reg.read_required() => Ok(()),
            (None, false) => Err(Error::Unauthorized(
                "this registry requires a token for every request: run `cargo login --registry wharf` with a token from `wharf token create`".into(),
            )),
            (None, true) => Err(Error::Unauthorized(
                "the token is not valid (revoked or mistyped); create one with `wharf token create` and run `cargo login --registry wharf`".into(),
            )),
        }
    };
    // A presented but unknown token is refused outright on mutations.
    let writer = || -> Result<Option<&Identity>, Error> {
        if token.is_some() && who.is_none() {
            return Err(Error::Forbidden(
                "the token is not valid (revoked or mistyped); create one with `wharf token create` and run `cargo login --registry wharf`".into(),
            ));
        }
        Ok(who.as_ref())
    };
    let method = req.method().clone();
    let is_get = matches!(method, Method::GET | Method::HEAD);

    if rest == "/me" && is_get {
        let text = "wharf has no web login. Ask an administrator to run\n  wharf token create --name YOUR-NAME --scope publish\non the server, then run\n  cargo login --registry wharf\nand paste the token.\n";
        let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(r);
    }
    if let Some(ipath) = rest.strip_prefix("/index/") {
        if !is_get {
            return Err(Error::MethodNotAllowed(format!(
                "method {method} is not allowed on the index"
            )));
        }
        read_ok()?;
        return match index::parse_index_path(ipath).map_err(|e| bad_path(&e))? {
            IndexRequest::Config => {
                let body = reg.config_json(&base);
                let etag = HeaderValue::from_str(&index::etag_for(&body))
                    .unwrap_or(HeaderValue::from_static("\"config\""));
                Ok(conditional(&req, body, etag, "application/json", None))
            }
            IndexRequest::Crate(name) => {
                tracing::Span::current().record("krate", name.as_str());
                let body = reg.index_file(&name).await?;
                let etag = HeaderValue::from_str(&index::etag_for(&body))
                    .unwrap_or(HeaderValue::from_static("\"index\""));
                Ok(conditional(
                    &req,
                    body,
                    etag,
                    "text/plain; charset=utf-8",
                    None,
                ))
            }
        };
    }
    let Some(api) = rest.strip_prefix("/api/v1/crates") else {
        return Err(Error::NotFound(format!("no such route: {}", redact(path))));
    };
    let segs: Vec<&str> = api.split('/').skip(1).collect();
    match (method.clone(), segs.as_slice()) {
        (Method::PUT, ["new"]) => {
            let who = writer()?;
            let body = read_body(req, reg.max_body(), app.body_timeout).await?;
            json_ok(reg.publish(who, body).await?)
        }
        (Method::GET, []) | (Method::GET, [""]) => {
            read_ok()?;
            let (q, per_page) = search_params(req.uri().query().unwrap_or(""));
            json_ok(reg.search(&q, per_page).await?)
        }
        (Method::GET | Method::HEAD, [name, version, "download"]) => {
            read_ok()?;
            let (name, version) = index::parse_download(name, version).map_err(|e| bad_path(&e))?;
            record_crate(&name, &version);
            Ok(crate_response(
                CrateBody::Full(reg.download(&name, &version).await?),
                None,
            ))
        }
        (Method::DELETE, [name, version, "yank"]) | (Method::PUT, [name, version, "unyank"]) => {
            let (name, version) = index::parse_download(name, version).map_err(|e| bad_path(&e))?;
            record_crate(&name, &version);
            let yank = method == Method::DELETE;
            reg.set_yanked(writer()?, &name, &version, yank).await?;
            json_ok(serde_json::json!({ "ok": true }))
        }
        (m, [name, "owners"]) => {
            let name = index::CrateName::parse(name).map_err(|e| bad_path(&e))?;
            tracing::Span::current().record("krate", name.as_str());
            match m {
                Method::GET => {
                    read_ok()?;
                    json_ok(reg.owners(&name).await?)
                }
                Method::PUT | Method::DELETE => {
                    let who = writer()?;
                    let body = read_body(req, 64 << 10, app.body_timeout).await?;
                    #[derive(serde::Deserialize)]
                    struct Users {
                        users: Vec<String>,
                    }
                    let u: Users = serde_json::from_slice(&body).map_err(|e| {
                        Error::BadRequest(format!("expected {{\"users\": [\"login\", ...]}}: {e}"))
                    })?;
                    json_ok(
                        reg.change_owners(who, &name, &u.users, m == Method::PUT)
                            .await?,
                    )
                }
                _ => Err(Error::MethodNotAllowed(format!(
                    "method {m} is not allowed on owners"
                ))),
            }
        }
        _ => Err(Error::NotFound(format!(
            "no such API route: {method} {}",
            redact(path)
        ))),
    }
}

fn search_params(query: &str) -> (String, usize) {
    let mut q = String::new();
    let mut per_page = 10;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "q" => q = v.into_owned(),
            "per_page" => per_page = v.parse().unwrap_or(10),
            _ => {}
        }
    }
    (q, per_page.clamp(1, 100))
}

/// Reads a request body up to `max` bytes (checked against Content-Length before reading),
/// within `timeout`.
async fn read_body(req: Request<Incoming>, max: u64, timeout: Duration) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let too_large = || Error::TooLarge(format!("the request body is over the {max} byte limit"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(req.into_body(), max as usize);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(Error::BadRequest(
            "the request body did not arrive in time".into(),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Error::BadRequest(format!(
            "reading the request body failed: {e}"
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn json_ok(v: serde_json::Value) -> Result<Response<Body>, Error> {
    Ok(json_response(StatusCode::OK, v.to_string()))
}

fn bad_path(e: &index::PathError) -> Error {
    match e {
        index::PathError::BadPrefix(_) => Error::NotFound(e.to_string()),
        _ => Error::BadRequest(e.to_string()),
    }
}

fn shorten(p: &str) -> String {
    let mut end = p.len().min(100);
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    p[..end].escape_debug().to_string()
}

static CACHE_HEADER: header::HeaderName = header::HeaderName::from_static("x-wharf-cache");

/// A 200 with an ETag, or a 304 when the client's `If-None-Match` matches (never a 304 to
/// an unconditional request: cargo treats that as an error).
fn conditional(
    req: &Request<Incoming>,
    body: Bytes,
    etag: HeaderValue,
    content_type: &'static str,
    cache: Option<(CacheStatus, bool)>,
) -> Response<Body> {
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .zip(etag.to_str().ok())
        .is_some_and(|(inm, ours)| index::if_none_match_matches(inm, ours));
    let mut resp = if not_modified {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    if let Some((status, failed)) = cache {
        h.insert(
            CACHE_HEADER.clone(),
            HeaderValue::from_static(status.as_str()),
        );
        if status == CacheStatus::Stale {
            let w = if failed {
                "111 - \"Revalidation Failed\""
            } else {
                "110 - \"Response is Stale\""
            };
            h.insert(header::WARNING, HeaderValue::from_static(w));
        }
    }
    resp
}

fn crate_response(body: CrateBody, status: Option<CacheStatus>) -> Response<Body> {
    let mut r = match body {
        CrateBody::Full(b) => Response::new(full(b)),
        CrateBody::Stream { len, rx } => {
            use http_body_util::BodyExt;
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await? {
                        Chunk::Data(b) => return Some((Ok(Frame::data(b)), rx)),
                        // An error frame makes hyper abort the response: the client sees a
                        // broken transfer (and retries), never a complete wrong file.
                        Chunk::Fail(m) => return Some((Err(std::io::Error::other(m)), rx)),
                        Chunk::Start(_) => {}
                    }
                }
            });
            let mut r = Response::new(http_body_util::StreamBody::new(frames).boxed());
            if let Some(n) = len {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            r
        }
    };
    let h = r.headers_mut();
    // Never Content-Encoding: cargo hashes the bytes exactly as received.
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Some(status) = status {
        h.insert(
            CACHE_HEADER.clone(),
            HeaderValue::from_static(status.as_str()),
        );
    }
    r
}

fn health(app: &App) -> Response<Body> {
    let (status, reachable) = if app.mirror.offline() {
        ("offline", serde_json::Value::Null)
    } else {
        match app.mirror.upstream().reachability() {
            Reachability::Unreachable => ("degraded", false.into()),
            Reachability::Reachable => ("ok", true.into()),
            Reachability::Unknown => ("ok", serde_json::Value::Null),
        }
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": app.started.elapsed().as_secs(),
        "upstream": app.mirror.upstream().index_url(),
        "upstream_reachable": reachable,
        "offline": app.mirror.offline(),
    });
    json_response(StatusCode::OK, body.to_string())
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &Error) -> Response<Body> {
    let status = e.status();
    if status.is_server_error() {
        warn!(status = status.as_u16(), error = %e, "request failed");
    } else {
        debug!(status = status.as_u16(), error = %e, "request refused");
    }
    let mut r = json_response(status, cargo_error_json(&e.to_string()));
    if let Some(s) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s.min(60)));
    }
    r
}
