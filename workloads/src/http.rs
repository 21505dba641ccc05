//! The HTTP test workload's server. Every answer names the pod that served it.
//!
//! - `GET /` → `pod=<name>`; request headers starting with `x-` are echoed back.
//! - `GET /slow?ms=N&drip=K` → answers after N ms, dripping the body in K pieces.
//! - `GET /stream?chunks=N&interval_ms=M` → a chunked response of N chunks.
//! - `POST /echo` → the request body, streamed back (used with 1 MiB bodies).
//! - `GET /ws` → a websocket echo.
//! - `GET /healthz` → 200 once `READY_AFTER_MS` (default 0) has passed since start, 503
//!   before: a pod that is Running but not yet Ready.
//! - `GET /metrics` → `http_requests_total`, every request but probes and scrapes (what a
//!   Prometheus trigger reads to tell traffic from idleness).
//! - HTTP/2 with prior knowledge (h2c) on the same port, including a gRPC echo:
//!   `/elasti.test.Echo/Unary` returns the request message, `/elasti.test.Echo/ServerStream`
//!   returns it `grpc-repeat` times (default 3). Messages are opaque bytes.
use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

/// Response bodies: fixed, streamed, or the request body itself (whose errors pass through).
type Body = BoxBody<Bytes, hyper::Error>;

/// The process start and the request counter, shared by every connection.
struct State {
    started: std::time::Instant,
    ready_after: Duration,
    registry: prometheus_client::registry::Registry,
    requests: prometheus_client::metrics::counter::Counter,
}

static STATE: std::sync::OnceLock<State> = std::sync::OnceLock::new();

fn state() -> &'static State {
    STATE.get_or_init(|| {
        let ready_after = std::env::var("READY_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "http_requests",
            "Requests served, probes and scrapes excluded",
            requests.clone(),
        );
        State {
            started: std::time::Instant::now(),
            ready_after,
            registry,
            requests,
        }
    })
}

/// Serves HTTP/1.1 and h2c on `listener` as pod `pod`, until the task is dropped.
pub async fn serve(listener: TcpListener, pod: String) -> std::io::Result<()> {
    state();
    loop {
        let (stream, _) = listener.accept().await?;
        let pod = pod.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, pod.clone()));
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, pod: String) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = Query(req.uri().query().unwrap_or("").to_string());
    let st = state();
    if path != "/healthz" && path != "/metrics" {
        st.requests.inc();
    }
    let resp = match path.as_str() {
        "/metrics" => {
            let mut text = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut text, &st.registry);
            text_response(StatusCode::OK, &text)
        }
        "/healthz" if st.started.elapsed() < st.ready_after => {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
        }
        "/ws" => websocket(req),
        "/echo" => echo(req),
        "/slow" => slow(&pod, query.get("ms", 1000), query.get("drip", 1)),
        "/stream" => stream(&pod, query.get("chunks", 5), query.get("interval_ms", 100)),
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        p if p.starts_with("/elasti.test.Echo/") => grpc(req, &path).await,
        _ => {
            let mut resp = text_response(StatusCode::OK, &format!("pod={pod}\n"));
            for (name, value) in req.headers() {
                if name.as_str().starts_with("x-") {
                    resp.headers_mut().insert(name.clone(), value.clone());
                }
            }
            resp
        }
    };
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(&pod) {
        resp.headers_mut().insert("x-served-by", v);
    }
    Ok(resp)
}

struct Query(String);

impl Query {
    fn get(&self, key: &str, default: u64) -> u64 {
        self.0
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    }
}

fn text_response(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    Response::new(req.into_body().boxed())
}

fn full(data: Bytes) -> Body {
    Full::new(data).map_err(|never| match never {}).boxed()
}

fn streamed<S>(frames: S) -> Body
where
    S: futures::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Sync + 'static,
{
    BodyExt::boxed(StreamBody::new(frames))
}

fn slow(pod: &str, ms: u64, drip: u64) -> Response<Body> {
    let drip = drip.max(1);
    let pause = Duration::from_millis(ms / drip);
    let last = format!("pod={pod}\n");
    let frames = futures::stream::unfold(0u64, move |i| {
        let last = last.clone();
        async move {
            if i >= drip {
                return None;
            }
            tokio::time::sleep(pause).await;
            let data = if i + 1 == drip {
                Bytes::from(last)
            } else {
                Bytes::from_static(b".")
            };
            Some((Ok::<_, hyper::Error>(Frame::data(data)), i + 1))
        }
    });
    Response::new(streamed(frames))
}

fn stream(pod: &str, chunks: u64, interval_ms: u64) -> Response<Body> {
    let pod = pod.to_string();
    let frames = futures::stream::unfold(0u64, move |i| {
        let pod = pod.clone();
        async move {
            if i >= chunks {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            let data = Bytes::from(format!("chunk {i} from pod={pod}\n"));
            Some((Ok::<_, hyper::Error>(Frame::data(data)), i + 1))
        }
    });
    Response::new(streamed(frames))
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// A gRPC echo over h2c with an opaque-bytes codec: the request's message frames are
/// returned once (Unary) or `grpc-repeat` times (ServerStream), then `grpc-status: 0`.
async fn grpc(req: Request<Incoming>, path: &str) -> Response<Body> {
    let repeat = match path {
        "/elasti.test.Echo/Unary" => 1,
        "/elasti.test.Echo/ServerStream" => req
            .headers()
            .get("grpc-repeat")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(3),
        _ => return grpc_status(12, "unknown method"),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return grpc_status(13, "request body broken"),
    };
    let mut frames: Vec<Result<Frame<Bytes>, hyper::Error>> = Vec::new();
    for _ in 0..repeat {
        frames.push(Ok(Frame::data(body.clone())));
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    frames.push(Ok(Frame::trailers(trailers)));
    let mut resp = Response::new(streamed(futures::stream::iter(frames)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

fn grpc_status(code: u32, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        resp.headers_mut().insert("grpc-message", v);
    }
    resp
}
