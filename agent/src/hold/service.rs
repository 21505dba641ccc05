//! [`HeldService`]: one held (Service, port) — its Ready endpoints, bounded queue, deadline,
//! and the signal that tells the run loop someone waits (the loop decides the wakes,
//! `crate::plan::machine`).
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
use tokio::sync::{Notify, watch};

use super::{
    admission::{self, Budget, BudgetSlot, Limits},
    release::{ReleaseTurn, ReleaseWindow},
};

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

/// Why a held connection or request was not forwarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    /// The service's queue was full.
    #[error("hold queue of {0} is full")]
    QueueFull(ServiceId),
    /// Every service on this node together holds as much as the agent allows.
    #[error("this node's agent holds its maximum; {0} refused")]
    NodeFull(ServiceId),
    /// No endpoint became Ready within the deadline.
    #[error("no Ready endpoint for {0} within {1:?}")]
    Deadline(ServiceId, Duration),
    /// The service's target does not exist: nothing will become Ready.
    #[error("the target of {0} does not exist")]
    TargetNotFound(ServiceId),
}

/// The longest a released caller keeps its turn: its answer (HTTP) or its pod's first
/// bytes (TCP) usually give it back much sooner, but a slow pod must not slow the release of
/// the others to its own pace.
pub const RELEASE_TURN_MAX: Duration = Duration::from_millis(2);

/// What a caller gets once the service has Ready endpoints.
#[derive(Debug)]
pub struct Ready {
    pub endpoints: Endpoints,
    /// How long this caller waited (zero when the service was already Ready).
    pub waited: Duration,
    /// For the first caller released after a cold period: how long that period lasted,
    /// from its first held caller to this release (the service's cold start).
    pub cold_start: Option<Duration>,
    /// A held caller's turn in the release; give it back once forwarded (at the latest
    /// after [`RELEASE_TURN_MAX`]). `None` for a caller that was not held.
    pub turn: Option<ReleaseTurn>,
}

/// Called when a caller starts waiting (the run loop then decides whether to wake).
pub type OnHeld = Arc<dyn Fn() + Send + Sync>;

pub struct HeldService {
    id: ServiceId,
    endpoints: watch::Receiver<Endpoints>,
    held: AtomicUsize,
    /// Mirrors `held` for /metrics.
    held_gauge: Gauge,
    limits: Limits,
    budget: Arc<Budget>,
    on_held: OnHeld,
    failed: AtomicBool,
    failed_signal: Notify,
    /// The ElastiService's `probeResponse` rules, compiled (replaced when the spec changes).
    probe_rules: std::sync::RwLock<Arc<elasti_api::probe::CompiledRules>>,
    /// When the current cold period's first caller was held.
    cold_since: std::sync::Mutex<Option<Instant>>,
    /// The turns of the release; fair, so the longest held go first.
    release: ReleaseWindow,
}

impl HeldService {
    pub fn new(
        id: ServiceId,
        endpoints: watch::Receiver<Endpoints>,
        limits: Limits,
        budget: Arc<Budget>,
        on_held: OnHeld,
        held_gauge: Gauge,
    ) -> Self {
        Self {
            id,
            endpoints,
            held: AtomicUsize::new(0),
            held_gauge,
            limits,
            budget,
            on_held,
            failed: AtomicBool::new(false),
            failed_signal: Notify::new(),
            probe_rules: std::sync::RwLock::default(),
            cold_since: std::sync::Mutex::default(),
            release: ReleaseWindow::default(),
        }
    }

    /// The `probeResponse` rules answered while the service is at zero.
    pub fn probe_rules(&self) -> Arc<elasti_api::probe::CompiledRules> {
        self.probe_rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Replaces the `probeResponse` rules.
    pub fn set_probe_rules(&self, rules: elasti_api::probe::CompiledRules) {
        if let Ok(mut r) = self.probe_rules.write() {
            *r = Arc::new(rules);
        }
    }

    pub fn id(&self) -> &ServiceId {
        &self.id
    }

    /// How long a caller may wait for a Ready endpoint.
    pub fn deadline(&self) -> Duration {
        self.limits.deadline
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

    /// Nothing will become Ready (the target is gone): every waiter, now and later, is
    /// answered at once.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.failed_signal.notify_waiters();
    }

    /// Returns the Ready endpoints, waiting for them if there are none yet: the caller is
    /// queued (bounded per service, and `bytes` against the node's budget), the run loop is
    /// told someone waits, and the caller is released the instant the endpoint watch shows
    /// a Ready endpoint — no polling.
    ///
    /// # Errors
    /// [`HoldError::QueueFull`] or [`HoldError::NodeFull`] when a bound is reached,
    /// [`HoldError::Deadline`] when nothing became Ready in time,
    /// [`HoldError::TargetNotFound`] when the service was failed.
    pub async fn acquire(&self, bytes: usize) -> Result<Ready, HoldError> {
        let now = self.endpoints();
        if !now.is_empty() {
            return Ok(Ready {
                endpoints: now,
                waited: Duration::ZERO,
                cold_start: None,
                turn: None,
            });
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(HoldError::TargetNotFound(self.id.clone()));
        }
        let _slot = self.enqueue(bytes)?;
        let start = Instant::now();
        if let Ok(mut since) = self.cold_since.lock()
            && since.is_none()
        {
            *since = Some(start);
            // A new cold period: its release starts narrow (`super::release`).
            self.release.narrow();
        }
        (self.on_held)();
        let mut rx = self.endpoints.clone();
        let failed = self.failed_signal.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        if self.failed.load(Ordering::Acquire) {
            return Err(HoldError::TargetNotFound(self.id.clone()));
        }
        let wait = async {
            tokio::select! {
                r = rx.wait_for(|e| !e.is_empty()) => r.map(|e| e.clone()).map_err(|_| ()),
                () = &mut failed => Err(()),
            }
        };
        match tokio::time::timeout(self.limits.deadline, wait).await {
            Ok(Ok(endpoints)) => {
                let cold_start = self
                    .cold_since
                    .lock()
                    .ok()
                    .and_then(|mut since| since.take())
                    .map(|since| since.elapsed());
                let turn = self.release.turn().await;
                Ok(Ready {
                    endpoints,
                    waited: start.elapsed(),
                    cold_start,
                    turn,
                })
            }
            Ok(Err(())) if self.failed.load(Ordering::Acquire) => {
                Err(HoldError::TargetNotFound(self.id.clone()))
            }
            // The sender is gone: the service stopped being managed while we waited and its
            // leftovers were dropped. Treat as a deadline; the caller answers 504.
            Ok(Err(())) | Err(_) => Err(HoldError::Deadline(self.id.clone(), self.limits.deadline)),
        }
    }

    fn enqueue(&self, bytes: usize) -> Result<QueueSlot<'_>, HoldError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                admission::admit(n, &self.limits)
            })
            .map_err(|_| HoldError::QueueFull(self.id.clone()))?;
        let Some(budget) = self.budget.reserve(bytes) else {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(HoldError::NodeFull(self.id.clone()));
        };
        self.held_gauge.inc();
        Ok(QueueSlot {
            service: self,
            _budget: budget,
        })
    }
}

/// One place in a service's queue (and in the node's budget), given back on drop
/// (forwarded, timed out, or the client went away).
struct QueueSlot<'a> {
    service: &'a HeldService,
    _budget: BudgetSlot<'a>,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.service.held.fetch_sub(1, Ordering::AcqRel);
        self.service.held_gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::hold::release::RELEASE_FIRST_TURNS;

    fn service(
        limits: Limits,
        budget: Budget,
    ) -> (watch::Sender<Endpoints>, Arc<HeldService>, Arc<AtomicUsize>) {
        let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
        let pokes = Arc::new(AtomicUsize::new(0));
        let id = ServiceId {
            namespace: "ns".into(),
            name: "web".into(),
            port: 80,
        };
        let p = pokes.clone();
        (
            tx,
            Arc::new(HeldService::new(
                id,
                rx,
                limits,
                Arc::new(budget),
                Arc::new(move || {
                    p.fetch_add(1, Ordering::Relaxed);
                }),
                Gauge::default(),
            )),
            pokes,
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
    async fn waiters_are_released_together_when_an_endpoint_becomes_ready() {
        let (tx, svc, pokes) = service(Limits::default(), Budget::default());
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn({
                    let svc = svc.clone();
                    // Each gives its release turn back at once, as a forwarder does once
                    // its pod accepted: more waiters than turns.
                    async move { svc.acquire(100).await.map(|r| r.endpoints) }
                })
            })
            .collect();
        while svc.held() < 50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pokes.load(Ordering::Relaxed),
            50,
            "the run loop hears of every waiter"
        );
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        for w in waiters {
            let r = w
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&r[..], &ready(&["10.244.0.9:8080"])[..]);
        }
        assert_eq!(svc.held(), 0, "every queue slot is given back");
    }

    type Released = tokio::sync::mpsc::UnboundedReceiver<Result<Ready, HoldError>>;

    /// `n` callers held by `svc` at once, then the endpoints Ready: what each is given, in
    /// the order they are released.
    async fn hold_then_ready(
        svc: &Arc<HeldService>,
        tx: &watch::Sender<Endpoints>,
        n: usize,
    ) -> Released {
        let (done_tx, done) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..n {
            let (svc, done_tx) = (svc.clone(), done_tx.clone());
            tokio::spawn(async move {
                let _ = done_tx.send(svc.acquire(0).await);
            });
        }
        while svc.held() < n {
            tokio::task::yield_now().await;
        }
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        done
    }

    /// The next `k` released, each with its turn.
    async fn next_released(done: &mut Released, k: usize) -> Vec<Ready> {
        let mut turns = Vec::new();
        for _ in 0..k {
            let r = done
                .recv()
                .await
                .unwrap_or_else(|| panic!("a waiter vanished"));
            turns.push(r.unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(
            turns.iter().all(|r| r.turn.is_some()),
            "each held one has a turn"
        );
        turns
    }

    #[tokio::test]
    async fn a_release_goes_in_turns_and_a_given_back_turn_lets_the_next_go() {
        let (tx, svc, _) = service(Limits::default(), Budget::default());
        let mut done = hold_then_ready(&svc, &tx, RELEASE_FIRST_TURNS + 1).await;
        let mut turns = next_released(&mut done, RELEASE_FIRST_TURNS).await;
        let early = tokio::time::timeout(Duration::from_millis(50), done.recv()).await;
        assert!(early.is_err(), "the last waits while every turn is taken");
        turns.pop();
        let last = tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await
            .unwrap_or_else(|_| panic!("a given-back turn did not let the last go"));
        assert!(last.is_some_and(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn each_cold_period_releases_narrow_first() {
        let (tx, svc, _) = service(Limits::default(), Budget::default());
        // A first cold period whose release gives back every turn: the window widens.
        let n = 2 * crate::hold::RELEASE_IN_FLIGHT;
        let mut done = hold_then_ready(&svc, &tx, n).await;
        for _ in 0..n {
            drop(next_released(&mut done, 1).await);
        }
        assert_eq!(svc.release.open(), crate::hold::RELEASE_IN_FLIGHT);
        // Cold again: the next release starts at its first turns.
        tx.send_replace(ready(&[]));
        let mut done = hold_then_ready(&svc, &tx, RELEASE_FIRST_TURNS + 1).await;
        let _turns = next_released(&mut done, RELEASE_FIRST_TURNS).await;
        let early = tokio::time::timeout(Duration::from_millis(50), done.recv()).await;
        assert!(early.is_err(), "the second release also starts narrow");
    }

    #[tokio::test]
    async fn one_cold_start_is_measured_per_cold_period() {
        let (tx, svc, _) = service(Limits::default(), Budget::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let svc = svc.clone();
                    async move { svc.acquire(0).await }
                })
            })
            .collect();
        while svc.held() < 3 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        let mut cold_starts = Vec::new();
        for w in waiters {
            let r = w
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            cold_starts.extend(r.cold_start);
        }
        assert_eq!(cold_starts.len(), 1, "one per cold period: {cold_starts:?}");
        assert!(cold_starts[0] >= Duration::from_millis(20));
        // Warm: nothing measured; the next cold period measures again.
        let warm = svc.acquire(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(warm.cold_start, None);
        tx.send_replace(ready(&[]));
        let next = tokio::spawn({
            let svc = svc.clone();
            async move { svc.acquire(0).await }
        });
        while svc.held() < 1 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        let r = next
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.cold_start.is_some());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_next_caller() {
        let (_tx, svc, _) = service(
            Limits {
                max_held: 1,
                deadline: Duration::from_secs(5),
            },
            Budget::default(),
        );
        let first = tokio::spawn({
            let svc = svc.clone();
            async move { svc.acquire(0).await }
        });
        while svc.held() < 1 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(svc.acquire(0).await, Err(HoldError::QueueFull(_))));
        first.abort();
    }

    #[tokio::test]
    async fn the_node_budget_is_shared_and_refuses_past_its_count_or_bytes() {
        let budget = Arc::new(Budget::new(2, 1000));
        let (_tx1, rx1) = watch::channel(Endpoints::from(Vec::new()));
        let (_tx2, rx2) = watch::channel(Endpoints::from(Vec::new()));
        let mk = |name: &str, rx| {
            Arc::new(HeldService::new(
                ServiceId {
                    namespace: "ns".into(),
                    name: name.into(),
                    port: 80,
                },
                rx,
                Limits::default(),
                budget.clone(),
                Arc::new(|| {}),
                Gauge::default(),
            ))
        };
        let (a, b) = (mk("a", rx1), mk("b", rx2));
        let wa = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(600).await }
        });
        while a.held() < 1 {
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(b.acquire(600).await, Err(HoldError::NodeFull(_))),
            "bytes: 600 + 600 > 1000"
        );
        let wb = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(100).await }
        });
        while b.held() < 1 {
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(a.acquire(1).await, Err(HoldError::NodeFull(_))),
            "count: two held node-wide"
        );
        assert_eq!(b.held(), 1, "a refused caller does not keep its queue slot");
        wa.abort();
        wb.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_wait() {
        let (_tx, svc, _) = service(
            Limits {
                max_held: 10,
                deadline: Duration::from_secs(3),
            },
            Budget::default(),
        );
        assert!(matches!(
            svc.acquire(0).await,
            Err(HoldError::Deadline(_, _))
        ));
        assert_eq!(svc.held(), 0);
    }

    #[tokio::test]
    async fn a_failed_service_answers_its_waiters_at_once() {
        let (_tx, svc, _) = service(Limits::default(), Budget::default());
        let waiter = tokio::spawn({
            let svc = svc.clone();
            async move { svc.acquire(0).await }
        });
        while svc.held() < 1 {
            tokio::task::yield_now().await;
        }
        svc.fail();
        assert!(matches!(
            waiter.await.unwrap_or_else(|e| panic!("{e}")),
            Err(HoldError::TargetNotFound(_))
        ));
        assert!(matches!(
            svc.acquire(0).await,
            Err(HoldError::TargetNotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_ready_service_does_not_queue() {
        let (tx, svc, pokes) = service(Limits::default(), Budget::default());
        tx.send_replace(ready(&["10.244.0.9:8080"]));
        let r = svc.acquire(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.waited, Duration::ZERO);
        assert_eq!(pokes.load(Ordering::Relaxed), 0);
    }
}
