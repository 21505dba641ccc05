//! `POST /v1/wake` (design §2.5): the first held connection of a cold period asks the
//! operator to scale the service's target up. The request carries the agent's projected
//! ServiceAccount token (audience `elasti-operator`), re-read on every attempt because the
//! kubelet rotates it. It is retried with backoff until the operator accepts it (202) or
//! the service has a Ready endpoint, and given up after the hold deadline.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use elasti_api::wake::{PATH, WakeRequest};
use http_body_util::Full;
use hyper::{Request, StatusCode, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::mpsc;

use crate::{
    hold::{ServiceId, Wake},
    metrics::{Metrics, WakeResult},
};

/// Where and how to reach the operator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the operator's wake API, e.g. `http://elasti-operator.elasti-system:8080`.
    pub operator_url: String,
    /// The projected ServiceAccount token file.
    pub token_path: PathBuf,
    /// Stop retrying after this long (the hold deadline: nobody waits longer).
    pub give_up_after: Duration,
}

/// First retry after 100 ms, doubling to at most 5 s: fast while the operator restarts,
/// gentle while it is down.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << attempt.min(6))).min(Duration::from_secs(5))
}

/// Whether a service has a Ready endpoint now (then there is nothing left to ask for).
pub type IsReady = Arc<dyn Fn(&ServiceId) -> bool + Send + Sync>;

/// The [`Wake`] handle given to every held service; the work happens on a task.
pub struct Notifier {
    tx: mpsc::UnboundedSender<ServiceId>,
}

impl Wake for Notifier {
    fn wake(&self, service: &ServiceId) {
        let _ = self.tx.send(service.clone());
    }
}

impl Notifier {
    /// Starts the notification task.
    pub fn spawn(config: Config, is_ready: IsReady, metrics: Arc<Metrics>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<ServiceId>();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let (config, client, is_ready, metrics) = (
                    config.clone(),
                    client.clone(),
                    is_ready.clone(),
                    metrics.clone(),
                );
                tokio::spawn(async move {
                    notify_until_done(&config, &client, &is_ready, &metrics, &id).await
                });
            }
        });
        Self { tx }
    }
}

async fn notify_until_done(
    config: &Config,
    client: &Client<HttpConnector, Full<Bytes>>,
    is_ready: &IsReady,
    metrics: &Metrics,
    id: &ServiceId,
) {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        if is_ready(id) {
            return;
        }
        let result = post(config, client, id).await;
        metrics.wake(id, result);
        match result {
            WakeResult::Accepted => {
                tracing::info!(service = %id, attempt, "wake accepted by the operator");
                return;
            }
            other => {
                tracing::warn!(service = %id, attempt, result = ?other, "wake not accepted; retrying")
            }
        }
        if start.elapsed() > config.give_up_after {
            tracing::error!(service = %id, "giving up on waking the service after the hold deadline");
            return;
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
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
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK => WakeResult::Accepted,
            StatusCode::NOT_FOUND => WakeResult::UnknownService,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => WakeResult::Refused,
            _ => WakeResult::Failed,
        },
        Ok(Err(_)) | Err(_) => WakeResult::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), Duration::from_secs(5));
        assert_eq!(backoff(60), Duration::from_secs(5));
    }
}
