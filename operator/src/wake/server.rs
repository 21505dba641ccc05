//! The wake server, on every replica: `POST /v1/wake` (`elasti_api::wake`) and `POST
//! /v1/report` (`elasti_api::report`), both authenticated with the agent's token. Every
//! answer is counted by path and status code.
//!
//! **Bounded like every endpoint of elasti:** a connection cap and a per-client share,
//! a header-read and a body-read timeout, a maximum connection age, and `accept` errors
//! (EMFILE, ENFILE, ENOMEM) retried with backoff instead of ending the server. While the
//! listener is not bound, [`Health::ready`] is false, so `/readyz` takes the replica out of
//! the operator Service.
//!
//! **Reports go to the leader only.** Reports feed decisions only the leader makes (the
//! activity trigger's idleness, the interception the two-phase scale-down waits for), and
//! keeping them in two replicas would need the two to agree. A replica that does not lead
//! answers 503 with `Connection: close` and `Retry-After: 0`: the agent's retry opens a
//! new connection, which the operator Service may send to the leader. The leader starts
//! each term with an empty book, and decides nothing on a Service until the Ready agents
//! have reported there (see `crate::activity`).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use elasti_api::{
    ElastiService,
    report::{self, AgentReport},
    wake::{self, WakeRequest},
};
use elasti_runtime::DisplayChain;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use jiff::Timestamp;
use kube::{
    Client, ResourceExt,
    runtime::{
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tokio::sync::Semaphore;

use super::auth::{self, Authenticator, Verdict};
use crate::{
    metrics::Metrics,
    scale::{ScaleUp, Scaler},
    status,
    term::Leader,
};

/// Connections one client address may hold open. An agent (on its node's address) keeps
/// one or two; a pod flooding the port gets no more than this.
pub const MAX_PER_CLIENT: usize = 64;
/// A client must have sent a request head by then (the first, and each next one on a
/// kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A request body must have arrived by then.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed (gracefully) after this long, whatever it does.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Wake bodies are two short names; anything bigger is refused unread.
const MAX_WAKE_BODY: usize = 4096;
/// A report of [`report::MAX_SERVICES`] services, at about 200 bytes each, with room.
const MAX_REPORT_BODY: usize = 4 << 20;
/// `lastWakeTime` is written at most this often per ElastiService: agents repeat their
/// wake every 2 s per node.
const WAKE_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// What `/readyz` says about this replica.
#[derive(Debug, Default)]
pub struct Health {
    /// The ElastiService store has its first full list.
    pub synced: AtomicBool,
    /// The wake listener is bound and accepting.
    pub listening: AtomicBool,
}

impl elasti_runtime::admin::Health for Health {
    fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire) && self.listening.load(Ordering::Acquire)
    }
}

pub struct WakeService {
    pub client: Client,
    pub auth: Authenticator,
    pub scaler: Arc<Scaler>,
    /// Every in-scope ElastiService.
    pub store: Store<ElastiService>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub leader: Leader,
    /// Connections served at once.
    pub max_connections: usize,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times()
        .build()
}

/// Serves on `addr` until the task is dropped: binding is retried, and so is `accept`.
pub async fn serve(addr: SocketAddr, svc: Arc<WakeService>) {
    let slots = Arc::new(Semaphore::new(svc.max_connections));
    let per_client = Arc::new(super::limits::PerClient::new(MAX_PER_CLIENT));
    let mut delays = backoff();
    loop {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                svc.health.listening.store(false, Ordering::Release);
                let wait = delays.next().unwrap_or(Duration::from_secs(1));
                tracing::error!(%addr, error = %e, ?wait, "wake listener cannot bind; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        svc.health.listening.store(true, Ordering::Release);
        tracing::info!(%addr, "wake endpoint listening");
        delays = backoff();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => {
                    delays = backoff();
                    accepted
                }
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(1));
                    tracing::warn!(%addr, error = %e, ?wait, "wake accept failed; retrying");
                    svc.metrics.accept_errors.inc();
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let Some(mine) = per_client.clone().enter(peer.ip()) else {
                svc.metrics.connections_refused.inc();
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                svc.metrics.connections_refused.inc();
                continue;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                // hyper times a head only once its first byte arrived: a client that sends
                // nothing is closed here. (A peek, not `readable()`, which may wake
                // spuriously.)
                let mut first = [0u8; 1];
                match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                let handler = service_fn(move |req| {
                    let svc = svc.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let resp = svc.handle(req, peer).await;
                        svc.metrics.request(&path, resp.status().as_u16());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(64 << 10);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(64);
                let conn = builder.serve_connection(TokioIo::new(stream), handler);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(BODY_READ_TIMEOUT, conn).await;
                    }
                }
                drop((slot, mine));
            });
        }
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
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
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

async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Full<Bytes>>> {
    match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes"),
        )),
        Ok(Err(e)) => Err(answer(
            StatusCode::BAD_REQUEST,
            format!("reading body: {e}"),
        )),
        Err(_) => Err(answer(
            StatusCode::REQUEST_TIMEOUT,
            format!("body not sent within {BODY_READ_TIMEOUT:?}"),
        )),
    }
}

impl WakeService {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path != wake::PATH && path != report::PATH {
            return answer(
                StatusCode::NOT_FOUND,
                format!("no such path; POST {} or {}", wake::PATH, report::PATH),
            );
        }
        if req.method() != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, format!("POST {path}"));
        }
        if let Some(refused) = self.authenticate(&req, peer).await {
            return refused;
        }
        if req.uri().path() == wake::PATH {
            self.wake(req).await
        } else {
            self.report(req).await
        }
    }

    /// `None` for the agent; otherwise the answer to give.
    async fn authenticate(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Option<Response<Full<Bytes>>> {
        let Some(token) = bearer(req) else {
            return Some(answer(StatusCode::UNAUTHORIZED, "missing bearer token"));
        };
        match self.auth.check(token, peer.ip()).await {
            Ok(Verdict::Allowed) => None,
            Ok(Verdict::Unauthenticated(why)) => {
                tracing::debug!(%peer, %why, "refused: unauthenticated");
                Some(answer(StatusCode::UNAUTHORIZED, why))
            }
            Ok(Verdict::Forbidden(why)) => {
                tracing::warn!(%peer, %why, "refused: forbidden");
                Some(answer(StatusCode::FORBIDDEN, why))
            }
            Err(e @ auth::Error::RateLimited(_)) => {
                tracing::debug!(%peer, "refused: too many token reviews");
                Some(answer(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %DisplayChain(&e), "TokenReview failed");
                Some(answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot review tokens now",
                ))
            }
        }
    }

    async fn wake(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match body(req, MAX_WAKE_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
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
        if !self.health.synced.load(Ordering::Acquire) {
            return answer(StatusCode::SERVICE_UNAVAILABLE, "starting: not synced yet");
        }
        let all = self.store.state();
        let Some(es) = all.iter().find(|es| {
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
        let (_, members) = crate::reconcile::observe::group(es, &all);
        let (scaled, _) = futures::join!(
            self.scaler.up_with(es, &members, "wake"),
            self.record_wake(es)
        );
        match scaled.0 {
            Ok(ScaleUp::Scaled { to }) => {
                answer(StatusCode::ACCEPTED, format!("scaled up to {to}"))
            }
            Ok(ScaleUp::AlreadyUp { replicas }) => answer(
                StatusCode::ACCEPTED,
                format!("already at {replicas} replicas"),
            ),
            Ok(ScaleUp::InFlight) => answer(StatusCode::ACCEPTED, "scale-up under way"),
            Err(e) => {
                let chain = DisplayChain(&e).to_string();
                tracing::error!(namespace = %wake.namespace, service = %wake.service, error = %chain, "scale-up failed");
                self.scaler
                    .event(
                        es,
                        EventType::Warning,
                        "ScaleUpFailed",
                        format!("scaling up failed: {chain}"),
                    )
                    .await;
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("scale-up failed: {chain}"),
                )
            }
        }
    }

    /// `status.lastWakeTime`, which refreshes the cooldown on whichever replica leads.
    async fn record_wake(&self, es: &ElastiService) {
        let now = Timestamp::now();
        let recent = es
            .status
            .as_ref()
            .and_then(|s| s.last_wake_time.as_ref())
            .is_some_and(|t| {
                now.duration_since(t.0)
                    .unsigned_abs()
                    .lt(&WAKE_RECORD_INTERVAL)
            });
        if recent {
            return;
        }
        if let Err(e) =
            status::patch(&self.client, es, serde_json::json!({ "lastWakeTime": now })).await
        {
            tracing::warn!(elastiservice = %es.name_any(), error = %DisplayChain(&e), "recording the wake failed");
        }
    }

    async fn report(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match body(req, MAX_REPORT_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let report: AgentReport = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return answer(StatusCode::BAD_REQUEST, format!("not a report: {e}"));
            }
        };
        if report.services.len() > report::MAX_SERVICES {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {} services", report::MAX_SERVICES),
            );
        }
        let changed = self
            .leader
            .with(|t| t.reports.record(report, Instant::now()));
        let Some(changed) = changed else {
            let mut r = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not the leader: retry on a new connection",
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("0"));
            return r;
        };
        if !changed.is_empty() {
            let refs: Vec<ObjectRef<ElastiService>> = self
                .store
                .state()
                .iter()
                .filter(|es| {
                    changed.contains(&(es.namespace().unwrap_or_default(), es.spec.service.clone()))
                })
                .map(|es| ObjectRef::from_obj(es.as_ref()))
                .collect();
            self.leader.poke(refs);
        }
        answer(StatusCode::ACCEPTED, "recorded")
    }
}
