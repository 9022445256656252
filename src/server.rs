//! HTTP only: the accept loop (HTTP/1.1 and h2c, TCP_NODELAY, graceful drain), routing, and
//! turning mirror answers and errors into responses. Handlers stay thin; decisions live in
//! `mirror` and `index`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
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
use crate::mirror::{CacheStatus, Mirror};
use crate::upstream::Reachability;

pub type Body = Full<Bytes>;

/// Everything a request handler needs.
pub struct App {
    pub mirror: Arc<Mirror>,
    config_json: Bytes,
    config_etag: HeaderValue,
    started: Instant,
}

impl App {
    pub fn new(mirror: Arc<Mirror>, public_url: &str) -> Arc<Self> {
        let config_json = index::mirror_config_json(public_url);
        let config_etag = HeaderValue::from_str(&index::etag_for(&config_json))
            .unwrap_or(HeaderValue::from_static("\"config\""));
        Arc::new(Self {
            mirror,
            config_json,
            config_etag,
            started: Instant::now(),
        })
    }
}

/// How long a client may take to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` resolves, then stops accepting and drains open
/// connections (bounded by `DRAIN_TIMEOUT`).
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
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
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
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
    let span = info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        krate = field::Empty,
        version = field::Empty,
    );
    let resp = route(app, &req).instrument(span.clone()).await;
    let resp = resp.unwrap_or_else(|e| error_response(&e));
    span.in_scope(|| {
        info!(
            target: "wharf::access",
            status = resp.status().as_u16(),
            bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0"),
            cache = resp.headers().get("x-wharf-cache").and_then(|v| v.to_str().ok()).unwrap_or("-"),
            micros = start.elapsed().as_micros() as u64,
            "request"
        )
    });
    resp
}

async fn route(app: &App, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    let path = req.uri().path();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(Error::MethodNotAllowed(format!(
            "method {} is not allowed on {}",
            req.method(),
            shorten(path)
        )));
    }
    if path == "/health" {
        return Ok(health(app));
    }
    if let Some(rest) = path.strip_prefix("/index/") {
        return match index::parse_index_path(rest).map_err(|e| bad_path(&e))? {
            IndexRequest::Config => Ok(conditional(
                req,
                app.config_json.clone(),
                app.config_etag.clone(),
                "application/json",
                None,
            )),
            IndexRequest::Crate(name) => {
                tracing::Span::current().record("krate", name.as_str());
                let r = app.mirror.index_file(&name).await?;
                let etag = HeaderValue::from_str(&r.etag)
                    .map_err(|_| Error::Storage("stored ETag is not a valid header".into()))?;
                Ok(conditional(
                    req,
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
            let span = tracing::Span::current();
            span.record("krate", name.as_str());
            span.record("version", version.as_str());
            let r = app.mirror.crate_file(&name, &version).await?;
            return Ok(crate_response(r.body, r.status));
        }
    }
    Err(Error::NotFound(format!("no such route: {}", shorten(path))))
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
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(body));
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

fn crate_response(body: Bytes, status: CacheStatus) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
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
    h.insert(
        CACHE_HEADER.clone(),
        HeaderValue::from_static(status.as_str()),
    );
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
    let mut r = Response::new(Full::new(Bytes::from(body)));
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
