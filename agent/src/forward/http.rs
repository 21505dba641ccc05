//! HTTP through a hold: the client connection is served by hyper (HTTP/1.1 or h2c, chosen
//! by hyper-util's auto builder), each request waits in the service's queue, then goes to a
//! pod over a pooled client whose connector picks Ready endpoints with failover.
//! `Upgrade` requests (websockets) get a connection of their own, spliced after the 101.
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpStream, sync::watch};

use super::endpoints::Balancer;
use crate::{
    hold::{Endpoints, HeldService, HoldError},
    metrics::{Metrics, Outcome, Protocol},
};

/// A client that has not sent its request headers by then is disconnected (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `Retry-After` on a 503 for a full queue: about one cold start.
pub const RETRY_AFTER_SECS: u32 = 5;

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
    http1: Client<EndpointConnector, Incoming>,
    http2: Client<EndpointConnector, Incoming>,
}

impl HttpForwarder {
    pub fn new(service: Arc<HeldService>, metrics: Arc<Metrics>, balancer: Arc<Balancer>) -> Self {
        let connector = EndpointConnector {
            endpoints: service.watch_endpoints(),
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

    /// Serves one client connection until it closes.
    pub async fn serve(self: Arc<Self>, io: TcpStream) -> Result<(), Error> {
        let this = self.clone();
        let svc = service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .await;
        served.map_err(|e| {
            let outcome = serve_failure(e.as_ref());
            self.metrics
                .outcome(self.service.id(), Protocol::Http1, outcome);
            if outcome == Outcome::Malformed {
                tracing::debug!(service = %self.service.id(), error = %e, "malformed request");
            }
            Error::Serve(e)
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let protocol = if req.version() == Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let id = self.service.id();
        let ready = match self.service.acquire().await {
            Ok(ready) => ready,
            Err(HoldError::QueueFull(_)) => {
                self.metrics.outcome(id, protocol, Outcome::QueueFull);
                tracing::warn!(service = %id, "hold queue full; 503");
                let mut r = status(StatusCode::SERVICE_UNAVAILABLE, "elasti: hold queue full\n");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return r;
            }
            Err(HoldError::Deadline(_, after)) => {
                self.metrics.outcome(id, protocol, Outcome::Deadline);
                tracing::warn!(service = %id, ?after, "no Ready endpoint in time; 504");
                return status(
                    StatusCode::GATEWAY_TIMEOUT,
                    "elasti: the service did not become ready in time\n",
                );
            }
        };
        let held = !ready.waited.is_zero();
        if held {
            self.metrics.waited(id, ready.waited);
        }
        let result = if is_upgrade(&req) {
            self.upgrade(req, &ready.endpoints).await
        } else {
            let client = if protocol == Protocol::Http2 {
                &self.http2
            } else {
                &self.http1
            };
            client
                .request(to_upstream(req))
                .await
                .map(|r| r.map(BodyExt::boxed))
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        match result {
            Ok(resp) => {
                let outcome = if held {
                    Outcome::ForwardedAfterHold
                } else {
                    Outcome::Forwarded
                };
                self.metrics.outcome(id, protocol, outcome);
                resp
            }
            Err(e) => {
                self.metrics.outcome(id, protocol, Outcome::UpstreamFailed);
                tracing::warn!(service = %id, error = %e, "forwarding failed; 502");
                status(
                    StatusCode::BAD_GATEWAY,
                    "elasti: forwarding to the service failed\n",
                )
            }
        }
    }

    /// Sends an `Upgrade` request on a connection of its own and, on `101`, splices the
    /// two upgraded connections.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        endpoints: &Endpoints,
    ) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
        let (stream, _) = self.balancer.connect(endpoints).await?;
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

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE)
}

/// The request as the pooled client sends it: the connector ignores the URI's authority
/// (it dials a Ready endpoint), but the pool keys on it, and HTTP/2 sends it as
/// `:authority`, so it is the client's own Host.
fn to_upstream(mut req: Request<Incoming>) -> Request<Incoming> {
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

/// Dials a Ready endpoint of the service, with failover; the URI is ignored.
#[derive(Clone)]
pub struct EndpointConnector {
    endpoints: watch::Receiver<Endpoints>,
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
        let endpoints: Vec<SocketAddr> = self.endpoints.borrow().iter().copied().collect();
        let balancer = self.balancer.clone();
        Box::pin(async move {
            balancer
                .connect(&endpoints)
                .await
                .map(|(s, _)| TokioIo::new(s))
        })
    }
}
