//! `POST /v1/wake` (design §2.5): asks the operator to scale a service's target up. The
//! request carries the agent's projected ServiceAccount token (audience
//! `elasti-operator`), re-read on every attempt because the kubelet rotates it. When to ask
//! is decided by `crate::plan::machine` (at the first waiter of a cold period, then again
//! every few seconds while something waits and nothing is Ready); this module sends one
//! request per decision, and never two at once for one service.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use elasti_api::wake::{PATH, WakeRequest};
use http_body_util::Full;
use hyper::{Request, StatusCode, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    hold::ServiceId,
    metrics::{Metrics, WakeResult},
};

/// Where and how to reach the operator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the operator's wake API, e.g. `http://elasti-operator.elasti-system:8080`.
    pub operator_url: String,
    /// The projected ServiceAccount token file.
    pub token_path: PathBuf,
}

/// How long one wake request may take: the operator answers after the `/scale` patch,
/// which takes milliseconds; a hung request must not delay the next decision's.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends wake requests, one per service at a time.
pub struct Notifier {
    config: Config,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashSet<ServiceId>>,
}

impl Notifier {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            config,
            client: Client::builder(TokioExecutor::new()).build_http(),
            metrics,
            in_flight: Mutex::default(),
        })
    }

    /// Sends one wake for `id`, unless one is already under way.
    pub fn wake(self: &Arc<Self>, id: ServiceId) {
        let fresh = self
            .in_flight
            .lock()
            .map(|mut f| f.insert(id.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = post(&this.config, &this.client, &id).await;
            this.metrics.wake(&id, result);
            match result {
                WakeResult::Accepted => {
                    tracing::info!(service = %id, "wake accepted by the operator")
                }
                other => {
                    tracing::warn!(service = %id, result = ?other, "wake not accepted; the next decision retries")
                }
            }
            if let Ok(mut f) = this.in_flight.lock() {
                f.remove(&id);
            }
        });
    }
}

async fn post(
    config: &Config,
    client: &Client<HttpConnector, Full<Bytes>>,
    id: &ServiceId,
) -> WakeResult {
    let token = match tokio::fs::read_to_string(&config.token_path).await {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            tracing::warn!(path = %config.token_path.display(), error = %e, "no ServiceAccount token to wake with");
            return WakeResult::NoToken;
        }
    };
    let body = WakeRequest {
        namespace: id.namespace.clone(),
        service: id.name.clone(),
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return WakeResult::Failed;
    };
    let url = format!("{}{PATH}", config.operator_url.trim_end_matches('/'));
    let Ok(req) = Request::post(url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
    else {
        return WakeResult::Failed;
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK => WakeResult::Accepted,
            StatusCode::NOT_FOUND => WakeResult::UnknownService,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => WakeResult::Refused,
            _ => WakeResult::Failed,
        },
        Ok(Err(_)) | Err(_) => WakeResult::Unreachable,
    }
}
