//! `/metrics` (Prometheus text), `/healthz` (the process runs) and `/readyz` (the programs
//! are attached and the first sync is done).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;

/// Serves the admin endpoints on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    // SO_REUSEPORT: during a rolling update the surge agent serves beside the old one.
    let listener = crate::net::bind_reuseport(addr, 128)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (registry, ready) = (registry.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (registry, ready) = (registry.clone(), ready.clone());
                async move { Ok::<_, Infallible>(route(&req, &registry, &ready)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n".into(),
                );
            }
            let mut r = plain(StatusCode::OK, text);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => plain(StatusCode::OK, "ok\n".into()),
        "/readyz" if ready.load(Ordering::Acquire) => plain(StatusCode::OK, "ok\n".into()),
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n".into()),
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
