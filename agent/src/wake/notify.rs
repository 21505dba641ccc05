//! `POST /v1/wake` (design §2.5): asks the operator to scale a service's target up. The
//! request carries the agent's projected ServiceAccount token (audience
//! `elasti-operator`), re-read on every attempt because the kubelet rotates it. When to ask
//! is decided by `crate::plan::machine` (at the first waiter of a cold period, then again
//! every few seconds while something waits and nothing is Ready); this module sends one
//! request per decision, and never two at once for one service.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use elasti_api::wake::{PATH, WakeRequest};
use hyper::StatusCode;

use crate::{
    hold::ServiceId,
    metrics::{Metrics, WakeResult},
    operator::{self, OperatorClient},
};

/// How long one wake request may take: the operator answers after the `/scale` patch,
/// which takes milliseconds; a hung request must not delay the next decision's.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends wake requests, one per service at a time.
pub struct Notifier {
    client: OperatorClient,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashSet<ServiceId>>,
}

impl Notifier {
    pub fn new(client: OperatorClient, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            client,
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
            let body = WakeRequest {
                namespace: id.namespace.clone(),
                service: id.name.clone(),
            };
            let answer = this.client.post(PATH, &body, REQUEST_TIMEOUT).await;
            let result = match &answer {
                Ok(StatusCode::ACCEPTED | StatusCode::OK) => WakeResult::Accepted,
                Ok(StatusCode::NOT_FOUND) => WakeResult::UnknownService,
                Ok(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => WakeResult::Refused,
                Ok(_) => WakeResult::Failed,
                Err(operator::Error::NoToken { .. }) => WakeResult::NoToken,
                Err(operator::Error::Unreachable(_) | operator::Error::Timeout(_)) => {
                    WakeResult::Unreachable
                }
                Err(_) => WakeResult::Failed,
            };
            this.metrics.wake(&id, result);
            match (result, answer) {
                (WakeResult::Accepted, _) => {
                    tracing::info!(service = %id, "wake accepted by the operator")
                }
                (other, Ok(status)) => {
                    tracing::warn!(service = %id, result = ?other, %status, "wake not accepted; the next decision retries")
                }
                (other, Err(e)) => {
                    tracing::warn!(service = %id, result = ?other, error = %elasti_runtime::DisplayChain(&e), "wake not sent; the next decision retries")
                }
            }
            if let Ok(mut f) = this.in_flight.lock() {
                f.remove(&id);
            }
        });
    }
}
