//! HTTP through a hold: the client connection is served by hyper (HTTP/1.1 or h2c, chosen
//! by hyper-util's auto builder) once its service is Ready, and each request goes to a pod
//! over a pooled client whose connector picks Ready endpoints with failover. `Upgrade`
//! requests (websockets) get a connection of their own, spliced after the 101.
//!
//! The agent leaves the path as soon as it can: the first response on a connection that
//! came through a hold ends it (`Connection: close` on HTTP/1.1, GOAWAY on h2), so the
//! client's next connection goes straight to the pods.
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpStream;

use super::endpoints::Balancer;
use crate::{
    hold::{Endpoints, HeldService, HoldError},
    metrics::{Metrics, Outcome, Protocol},
};

/// A client that has not sent its request headers by then is disconnected (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An h2 connection with no request by then is closed.
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `Retry-After` on a 503 for a full queue: about one cold start.
pub const RETRY_AFTER_SECS: u32 = 5;
/// The largest request head (line and headers) read, in bytes: 64 KiB, as nginx's
/// default `large_client_header_buffers` allows 4 × 8 KiB and Envoy 60 KiB.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Headers one HTTP/1.1 request may carry.
pub const MAX_HEADERS: usize = 100;
/// Streams one h2 client may have open on this agent at once (Envoy's and nginx's
/// defaults are 100 and 128; gRPC clients open few).
pub const H2_MAX_STREAMS: u32 = 128;

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's bytes were not HTTP, came too slowly, or the connection broke.
    #[error("serving the client connection failed")]
    Serve(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What a failed client connection counts as: bad bytes or a slowloris are `Malformed`;
/// a client that went away (closed, reset) before its answer is `ClientGone`.
fn serve_failure(e: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse() || h.is_parse_too_large() || h.is_timeout() || h.is_user() {
            return Outcome::Malformed;
        }
        return Outcome::ClientGone;
    }
    if e.downcast_ref::<std::io::Error>().is_some() {
        return Outcome::ClientGone;
    }
    Outcome::Malformed
}

/// Forwards HTTP for one held service.
pub struct HttpForwarder {
    service: Arc<HeldService>,
    metrics: Arc<Metrics>,
    balancer: Arc<Balancer>,
    http1: Client<EndpointConnector, Body>,
    http2: Client<EndpointConnector, Body>,
}

impl HttpForwarder {
    pub fn new(service: Arc<HeldService>, metrics: Arc<Metrics>, balancer: Arc<Balancer>) -> Self {
        let connector = EndpointConnector {
            service: service.clone(),
            balancer: balancer.clone(),
        };
        let http1 = Client::builder(TokioExecutor::new()).build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self {
            service,
            metrics,
            balancer,
            http1,
            http2,
        }
    }

    fn server() -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }

    /// Serves one client connection (its service is Ready; it waited `waited`) until its
    /// first response is sent: then the connection is ended gracefully, so the client
    /// reconnects straight to the pods. A held connection's `turn` in the release is given
    /// back with that response, or after [`crate::hold::RELEASE_TURN_MAX`].
    pub async fn serve(
        self: Arc<Self>,
        io: TcpStream,
        peer: SocketAddr,
        waited: Duration,
        turn: Option<crate::hold::ReleaseTurn>,
    ) -> Result<(), Error> {
        let mut turn = turn;
        if !waited.is_zero() {
            self.metrics.waited(self.service.id(), waited);
        }
        let answered = Arc::new(tokio::sync::Notify::new());
        let first = Arc::new(AtomicBool::new(!waited.is_zero()));
        let this = self.clone();
        let svc = service_fn({
            let (answered, first) = (answered.clone(), first.clone());
            move |req| {
                let (this, answered, first) = (this.clone(), answered.clone(), first.clone());
                async move {
                    let held = first.swap(false, Ordering::AcqRel);
                    let resp = this.handle(req, peer, held).await;
                    answered.notify_one();
                    Ok::<_, Infallible>(resp)
                }
            }
        });
        let builder = Self::server();
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut ending = false;
        let idle = tokio::time::sleep(H2_IDLE_TIMEOUT);
        tokio::pin!(idle);
        let turn_over = tokio::time::sleep(crate::hold::RELEASE_TURN_MAX);
        tokio::pin!(turn_over);
        let served = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = answered.notified(), if !ending => {
                    // HTTP/1.1: close after this response; h2: GOAWAY, in-flight streams
                    // finish.
                    ending = true;
                    turn = None;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut turn_over, if turn.is_some() => turn = None,
                () = &mut idle, if !ending => {
                    ending = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        served.map_err(|e| {
            let outcome = serve_failure(e.as_ref());
            self.metrics
                .outcome(self.service.id(), Protocol::Http1, outcome);
            Error::Serve(e)
        })
    }

    /// Answers a `probeResponse` health check with its rule's reply, then closes.
    pub async fn answer_probe(&self, io: TcpStream, answer: crate::listen::probe::Answer) {
        Self::answer_once(io, move || {
            let answer = answer.clone();
            let mut r = Response::new(
                Full::new(answer.body)
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
            if let Some(ct) = answer.content_type {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            r
        })
        .await;
    }

    /// Answers every request on `io` with what `refused` means (503 with `Retry-After` for
    /// a full queue, 504 for the deadline, 503 for a missing target), then closes.
    pub async fn refuse(&self, io: TcpStream, refused: &HoldError) {
        let (code, body): (StatusCode, &'static str) = match refused {
            HoldError::QueueFull(_) | HoldError::NodeFull(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "elasti: hold queue full\n")
            }
            HoldError::Deadline(..) => (
                StatusCode::GATEWAY_TIMEOUT,
                "elasti: the service did not become ready in time\n",
            ),
            HoldError::TargetNotFound(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "elasti: the service's workload does not exist\n",
            ),
        };
        let retry = matches!(refused, HoldError::QueueFull(_) | HoldError::NodeFull(_));
        Self::answer_once(io, move || {
            let mut r = status(code, body);
            if retry {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            r
        })
        .await;
    }

    /// Serves `io` one answer made by `answer`, with `Connection: close`, then lets it go
    /// (within [`HEADER_READ_TIMEOUT`]).
    async fn answer_once<F>(io: TcpStream, answer: F)
    where
        F: Fn() -> Response<Body> + Clone + Send + 'static,
    {
        let svc = service_fn(move |_req: Request<Incoming>| {
            let mut r = answer();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            async move { Ok::<_, Infallible>(r) }
        });
        let server = Self::server();
        let conn = server.serve_connection(TokioIo::new(io), svc);
        let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, held: bool) -> Response<Body> {
        let protocol = if req.version() == Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let id = self.service.id();
        // Ready already (the connection was held until then); a later request on the same
        // connection waits again if the service went cold meanwhile.
        let ready = match self.service.acquire(0).await {
            Ok(ready) => ready,
            Err(refused) => {
                let outcome = crate::listen::listener::outcome_of(&refused);
                self.metrics.outcome(id, protocol, outcome);
                tracing::warn!(service = %id, error = %refused, "request answered without forwarding");
                let (code, body) = match refused {
                    HoldError::Deadline(..) => (
                        StatusCode::GATEWAY_TIMEOUT,
                        "elasti: the service did not become ready in time\n",
                    ),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "elasti: hold queue full\n"),
                };
                let mut r = status(code, body);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return r;
            }
        };
        let held = held || !ready.waited.is_zero();
        let result = if is_upgrade(&req) {
            self.upgrade(forwarded(req, peer), &ready.endpoints).await
        } else {
            self.send(forwarded(req, peer), protocol, id).await
        };
        match result {
            Ok(mut resp) => {
                let outcome = if held {
                    Outcome::ForwardedAfterHold
                } else {
                    Outcome::Forwarded
                };
                self.metrics.outcome(id, protocol, outcome);
                let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(resp.headers_mut(), switching);
                if protocol == Protocol::Http1 && !switching {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
            Err(e) => {
                self.metrics.outcome(id, protocol, Outcome::UpstreamFailed);
                tracing::warn!(service = %id, error = %elasti_runtime::DisplayChain(e.as_ref()), "forwarding failed; 502");
                status(
                    StatusCode::BAD_GATEWAY,
                    "elasti: forwarding to the service failed\n",
                )
            }
        }
    }

    /// Sends `req` to a pod. A request whose upstream closed before the response head is
    /// sent once more, to another Ready endpoint, when it can safely be: it has no body and
    /// an idempotent method.
    async fn send(
        &self,
        req: Request<Incoming>,
        protocol: Protocol,
        id: &crate::hold::ServiceId,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        let client = if protocol == Protocol::Http2 {
            &self.http2
        } else {
            &self.http1
        };
        let retry = replayable(&req).then(|| {
            let mut again = Request::new(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *again.method_mut() = req.method().clone();
            *again.uri_mut() = req.uri().clone();
            *again.version_mut() = req.version();
            *again.headers_mut() = req.headers().clone();
            again
        });
        let first = client.request(to_upstream(req.map(BodyExt::boxed))).await;
        match (first, retry) {
            (Ok(resp), _) => Ok(resp.map(BodyExt::boxed)),
            (Err(e), Some(again)) if closed_before_answer(&e) => {
                tracing::info!(service = %id, error = %elasti_runtime::DisplayChain(&e), "the pod closed before answering; retrying once on another endpoint");
                self.metrics.outcome(id, protocol, Outcome::Retried);
                Ok(client
                    .request(to_upstream(again))
                    .await
                    .map(|r| r.map(BodyExt::boxed))?)
            }
            (Err(e), _) => Err(Box::new(e)),
        }
    }

    /// Sends an `Upgrade` request on a connection of its own and, on `101`, splices the
    /// two upgraded connections.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        endpoints: &Endpoints,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        let (stream, _) = self
            .balancer
            .connect_held(&self.service, endpoints.clone())
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded upstream connection ended");
            }
        });
        let from_client = hyper::upgrade::on(&mut req);
        let mut resp = sender.send_request(req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let from_upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = futures::join!(from_client, from_upstream) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
        }
        Ok(resp.map(BodyExt::boxed))
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE)
}

/// Whether a request can be sent again: no body was (or will be) sent, and its method is
/// idempotent (RFC 9110 §9.2.2).
fn replayable<B: hyper::body::Body>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && req.body().is_end_stream() && !is_upgrade(req)
}

/// Whether the pooled client failed before any response head arrived (the pod closed or
/// reset the connection, or refused it). A reset is hyper's I/O error: a pod that exits on
/// SIGTERM with a request unread or unanswered makes the kernel send RST, not FIN.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    use std::io::ErrorKind;
    if e.is_connect() {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_closed() || h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            );
        }
        cause = c.source();
    }
    false
}

/// The headers that describe one connection (RFC 9110 §7.6.1), never forwarded: the fixed
/// list plus whatever `Connection` names. An upgrade request keeps `Connection` and
/// `Upgrade`, which are its point.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !upgrade || (*n != header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(n);
    }
    // `TE: trailers` is how gRPC says it reads trailers; any other TE is per hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// `req` as the pod receives it: hop-by-hop headers out, and the client's address in
/// `X-Forwarded-For` and `Forwarded` (appended to what earlier proxies wrote).
fn forwarded(mut req: Request<Incoming>, peer: SocketAddr) -> Request<Incoming> {
    let upgrade = is_upgrade(&req);
    let h = req.headers_mut();
    strip_hop_by_hop(h, upgrade);
    let ip = peer.ip().to_canonical();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {ip}"),
        None => ip.to_string(),
    };
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let fwd = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, for={node};proto=http"),
        None => format!("for={node};proto=http"),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.insert(header::FORWARDED, v);
    }
    h.entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    req
}

/// The request as the pooled client sends it: the connector ignores the URI's authority
/// (it dials a Ready endpoint), but the pool keys on it, and HTTP/2 sends it as
/// `:authority`, so it is the client's own Host.
fn to_upstream(mut req: Request<Body>) -> Request<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_else(|| "elasti.invalid".to_string());
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req
}

fn status(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Dials a Ready endpoint of the service, with failover (and holding again when every
/// endpoint refuses: `Balancer::connect_held`); the URI is ignored.
#[derive(Clone)]
pub struct EndpointConnector {
    service: Arc<HeldService>,
    balancer: Arc<Balancer>,
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = super::endpoints::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (service, balancer) = (self.service.clone(), self.balancer.clone());
        Box::pin(async move {
            balancer
                .connect_held(&service, service.endpoints())
                .await
                .map(|(s, _)| TokioIo::new(s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "gzip"),
            ("proxy-authorization", "Basic x"),
            ("x-tenant", "blue"),
            ("upgrade", "websocket"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let left: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-tenant"]);
        let mut upgrade = h;
        upgrade.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        strip_hop_by_hop(&mut upgrade, true);
        assert!(upgrade.contains_key(header::UPGRADE) && upgrade.contains_key(header::CONNECTION));
    }

    #[test]
    fn only_bodyless_idempotent_requests_are_replayed() {
        let get = Request::get("/")
            .body(Empty::<Bytes>::new())
            .unwrap_or_default();
        assert!(replayable(&get));
        let post = Request::post("/")
            .body(Empty::<Bytes>::new())
            .unwrap_or_default();
        assert!(!replayable(&post), "POST is not idempotent");
        let put = Request::put("/")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap_or_default();
        assert!(!replayable(&put), "a body may already be on its way");
    }
}
