//! The wake endpoint. Every answer is counted by status code and logged.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use elasti_api::{
    ElastiService,
    wake::{PATH, WakeRequest},
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::runtime::reflector::Store;

use super::auth::{Authenticator, Verdict};
use crate::{
    metrics::Metrics,
    scale::{ScaleUp, Scaler},
};

/// Wake bodies are two short names; anything bigger is refused unread.
const MAX_BODY: usize = 4096;

pub struct WakeService {
    pub auth: Authenticator,
    pub scaler: Arc<Scaler>,
    /// Every in-scope ElastiService.
    pub store: Store<ElastiService>,
    /// Set once the store has its first full list.
    pub synced: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// Serves `/v1/wake` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, svc: Arc<WakeService>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "wake endpoint listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let svc = svc.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |req| {
                let svc = svc.clone();
                async move {
                    let resp = svc.handle(req).await;
                    svc.metrics.wake(resp.status().as_u16());
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "message": message.into() }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The bearer token of a request, if it has one.
pub fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl WakeService {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != PATH {
            return answer(StatusCode::NOT_FOUND, format!("no such path; POST {PATH}"));
        }
        if req.method() != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, format!("POST {PATH}"));
        }
        let Some(token) = bearer(&req).map(String::from) else {
            return answer(StatusCode::UNAUTHORIZED, "missing bearer token");
        };
        match self.auth.check(&token).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Unauthenticated(why)) => {
                tracing::warn!(%why, "wake refused: unauthenticated");
                return answer(StatusCode::UNAUTHORIZED, why);
            }
            Ok(Verdict::Forbidden(why)) => {
                tracing::warn!(%why, "wake refused: forbidden");
                return answer(StatusCode::FORBIDDEN, why);
            }
            Err(e) => {
                tracing::error!(error = %e, "TokenReview failed");
                return answer(StatusCode::SERVICE_UNAVAILABLE, "cannot review tokens now");
            }
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return answer(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
        };
        let wake: WakeRequest = match serde_json::from_slice(&body) {
            Ok(w) => w,
            Err(e) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!("body must be {{\"namespace\":…,\"service\":…}}: {e}"),
                );
            }
        };
        if !self.synced.load(Ordering::Acquire) {
            return answer(StatusCode::SERVICE_UNAVAILABLE, "starting: not synced yet");
        }
        let Some(es) = self.store.state().into_iter().find(|es| {
            es.metadata.namespace.as_deref() == Some(wake.namespace.as_str())
                && es.spec.service == wake.service
                && es.metadata.deletion_timestamp.is_none()
        }) else {
            tracing::info!(namespace = %wake.namespace, service = %wake.service, "wake for an unmanaged service");
            return answer(
                StatusCode::NOT_FOUND,
                format!(
                    "no ElastiService for service {}/{}",
                    wake.namespace, wake.service
                ),
            );
        };
        match self.scaler.up(&es, "wake").await {
            Ok(ScaleUp::Scaled { to }) => {
                answer(StatusCode::ACCEPTED, format!("scaled up to {to}"))
            }
            Ok(ScaleUp::AlreadyUp { replicas }) => answer(
                StatusCode::ACCEPTED,
                format!("already at {replicas} replicas"),
            ),
            Ok(ScaleUp::InFlight) => answer(StatusCode::ACCEPTED, "scale-up under way"),
            Err(e) => {
                tracing::error!(namespace = %wake.namespace, service = %wake.service, error = %e, "scale-up failed");
                self.scaler
                    .event(
                        &es,
                        kube::runtime::events::EventType::Warning,
                        "ScaleUpFailed",
                        format!("{e}"),
                    )
                    .await;
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("scale-up failed: {e}"),
                )
            }
        }
    }
}
