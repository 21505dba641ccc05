//! [`HeldService`]: one held (Service, port) — its Ready endpoints, bounded queue, deadline
//! and wake-up signal.
use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::admission::{self, Limits};

/// The Ready endpoints of one Service port (pod IP : resolved target port).
pub type Endpoints = Arc<[SocketAddr]>;

/// Identifies a held (Service, port) in logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Asks for the service's workload to be scaled up. Called once per cold period per
/// service on this node (see [`HeldService::acquire`]); implementations retry on their own.
pub trait Wake: Send + Sync {
    fn wake(&self, service: &ServiceId);
}

/// Why a held connection or request was not forwarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    /// The service's queue was full.
    #[error("hold queue of {0} is full")]
    QueueFull(ServiceId),
    /// No endpoint became Ready within the deadline.
    #[error("no Ready endpoint for {0} within {1:?}")]
    Deadline(ServiceId, Duration),
}

/// What a caller gets once the service has Ready endpoints.
#[derive(Debug)]
pub struct Ready {
    pub endpoints: Endpoints,
    /// How long this caller waited (zero when the service was already Ready).
    pub waited: Duration,
}

pub struct HeldService {
    id: ServiceId,
    endpoints: watch::Receiver<Endpoints>,
    held: AtomicUsize,
    /// Mirrors `held` for /metrics.
    held_gauge: Gauge,
    limits: Limits,
    wake: Arc<dyn Wake>,
    /// Set when a wake-up has been asked for in the current cold period; cleared whenever
    /// a held caller stops waiting (see [`QueueSlot`]), so the next cold period asks again.
    wake_sent: AtomicBool,
}

impl HeldService {
    pub fn new(
        id: ServiceId,
        endpoints: watch::Receiver<Endpoints>,
        limits: Limits,
        wake: Arc<dyn Wake>,
        held_gauge: Gauge,
    ) -> Self {
        Self {
            id,
            endpoints,
            held: AtomicUsize::new(0),
            held_gauge,
            limits,
            wake,
            wake_sent: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> &ServiceId {
        &self.id
    }

    /// How many connections/requests wait right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The Ready endpoints right now (possibly none).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.borrow().clone()
    }

    /// A receiver that sees every change of the Ready endpoints.
    pub fn watch_endpoints(&self) -> watch::Receiver<Endpoints> {
        self.endpoints.clone()
    }

    /// Returns the Ready endpoints, waiting for them if there are none yet: the caller is
    /// queued (bounded), the workload is woken (once per cold period), and the caller is
    /// released the instant the endpoint watch shows a Ready endpoint — no polling.
    ///
    /// # Errors
    /// [`HoldError::QueueFull`] when the queue is at its bound, [`HoldError::Deadline`]
    /// when nothing became Ready in time.
    pub async fn acquire(&self) -> Result<Ready, HoldError> {
        let now = self.endpoints();
        if !now.is_empty() {
            self.wake_sent.store(false, Ordering::Relaxed);
            return Ok(Ready {
                endpoints: now,
                waited: Duration::ZERO,
            });
        }
        let _slot = self.enqueue()?;
        if !self.wake_sent.swap(true, Ordering::AcqRel) {
            self.wake.wake(&self.id);
        }
        let start = Instant::now();
        let mut rx = self.endpoints.clone();
        match tokio::time::timeout(self.limits.deadline, rx.wait_for(|e| !e.is_empty())).await {
            Ok(Ok(endpoints)) => Ok(Ready {
                endpoints: endpoints.clone(),
                waited: start.elapsed(),
            }),
            // The sender is gone: the service stopped being managed while we waited. Treat
            // as a deadline; the caller answers 504 rather than hanging.
            Ok(Err(_)) | Err(_) => Err(HoldError::Deadline(self.id.clone(), self.limits.deadline)),
        }
    }

    fn enqueue(&self) -> Result<QueueSlot<'_>, HoldError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                admission::admit(n, &self.limits)
            })
            .map(|_| {
                self.held_gauge.inc();
                QueueSlot(self)
            })
            .map_err(|_| HoldError::QueueFull(self.id.clone()))
    }
}

/// One place in a service's queue, given back on drop (forwarded, timed out, or the
/// client went away).
struct QueueSlot<'a>(&'a HeldService);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.held_gauge.dec();
        // A waiter leaving (released, timed out, or its client gone) ends this cold
        // period's claim on the wake: the next caller that finds no endpoint wakes again.
        // Between cold periods the pods serve the ClusterIP without this agent, so no
        // caller here would ever see the service Ready and clear it. Clearing while other
        // callers still wait costs at most one more wake; the scale-up is idempotent.
        self.0.wake_sent.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct CountingWake(Mutex<Vec<ServiceId>>);

    impl Wake for CountingWake {
        fn wake(&self, service: &ServiceId) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(service.clone());
        }
    }

    fn service(
        limits: Limits,
    ) -> (
        watch::Sender<Endpoints>,
        Arc<HeldService>,
        Arc<CountingWake>,
    ) {
        let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
        let wake = Arc::new(CountingWake::default());
        let id = ServiceId {
            namespace: "ns".into(),
            name: "web".into(),
            port: 80,
        };
        (
            tx,
            Arc::new(HeldService::new(
                id,
                rx,
                limits,
                wake.clone(),
                Gauge::default(),
            )),
            wake,
        )
    }

    fn ready(addrs: &[&str]) -> Endpoints {
        addrs
            .iter()
            .map(|a| a.parse().unwrap_or_else(|_| unreachable!()))
            .collect::<Vec<SocketAddr>>()
            .into()
    }

    #[tokio::test]
    async fn waiters_are_released_together_when_an_endpoint_becomes_ready_and_wake_is_sent_once() {
        let (tx, svc, wake) = service(Limits::default());
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn({
                    let svc = svc.clone();
                    async move { svc.acquire().await }
                })
            })
            .collect();
        while svc.held() < 50 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        for w in waiters {
            let r = w
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&r.endpoints[..], &ready(&["10.244.0.9:8080"])[..]);
        }
        assert_eq!(svc.held(), 0, "every queue slot is given back");
        assert_eq!(
            wake.0.lock().map(|w| w.len()).unwrap_or(0),
            1,
            "one wake per cold period"
        );
    }

    /// Between cold periods the pods serve the ClusterIP directly: no caller of this
    /// agent ever finds the service Ready. The second cold period must still wake.
    #[tokio::test]
    async fn every_cold_period_wakes_even_when_no_caller_saw_the_service_ready() {
        let (tx, svc, wake) = service(Limits::default());
        for period in 1..=3 {
            tx.send_replace(Endpoints::from(Vec::new()));
            let held = tokio::spawn({
                let svc = svc.clone();
                async move { svc.acquire().await }
            });
            while svc.held() < 1 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                wake.0.lock().map(|w| w.len()).unwrap_or(0),
                period,
                "cold period {period} sends its own wake"
            );
            tx.send_replace(ready(&["10.244.0.9:8080"]));
            held.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[tokio::test]
    async fn a_cold_period_whose_clients_all_left_wakes_again() {
        let (_tx, svc, wake) = service(Limits::default());
        for _ in 0..2 {
            let held = tokio::spawn({
                let svc = svc.clone();
                async move { svc.acquire().await }
            });
            while svc.held() < 1 {
                tokio::task::yield_now().await;
            }
            held.abort();
            let _ = held.await;
        }
        assert_eq!(wake.0.lock().map(|w| w.len()).unwrap_or(0), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_period_that_timed_out_wakes_again() {
        let (_tx, svc, wake) = service(Limits {
            max_held: 10,
            deadline: Duration::from_secs(3),
        });
        for _ in 0..2 {
            assert!(matches!(
                svc.acquire().await,
                Err(HoldError::Deadline(_, _))
            ));
        }
        assert_eq!(wake.0.lock().map(|w| w.len()).unwrap_or(0), 2);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_next_caller() {
        let (_tx, svc, _) = service(Limits {
            max_held: 1,
            deadline: Duration::from_secs(5),
        });
        let first = tokio::spawn({
            let svc = svc.clone();
            async move { svc.acquire().await }
        });
        while svc.held() < 1 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(svc.acquire().await, Err(HoldError::QueueFull(_))));
        first.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_wait() {
        let (_tx, svc, _) = service(Limits {
            max_held: 10,
            deadline: Duration::from_secs(3),
        });
        assert!(matches!(
            svc.acquire().await,
            Err(HoldError::Deadline(_, _))
        ));
        assert_eq!(svc.held(), 0);
    }

    #[tokio::test]
    async fn a_ready_service_does_not_queue_or_wake() {
        let (tx, svc, wake) = service(Limits::default());
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        let r = svc.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.waited, Duration::ZERO);
        assert_eq!(wake.0.lock().map(|w| w.len()).unwrap_or(0), 0);
    }
}
