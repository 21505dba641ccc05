//! Honest health: `/healthz` fails when the main loop or a watch has stopped making
//! progress, so the kubelet restarts a hung agent. Before it says so, a watchdog thread —
//! which needs neither the loop nor the runtime — empties the maps: a stalled agent no
//! longer steers any connect to itself (fail-open), and clients take the normal path.
use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::intercept::Interceptor;

/// The loop wakes at least every 10 s (the eBPF counter export); three missed ticks mean
/// it is stuck.
pub const LOOP_STALL: Duration = Duration::from_secs(30);
/// A watch failing for this long (apiserver gone, RBAC revoked) leaves the agent blind:
/// it can no longer tell when to stop steering.
pub const WATCH_STALL: Duration = Duration::from_secs(60);
/// How often the watchdog looks.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(2);

/// The watches the agent depends on.
pub const WATCHES: [&str; 3] = ["ElastiService", "Service", "EndpointSlice"];

/// Milliseconds on the agent's monotonic clock (what [`judge`] compares).
pub fn clock_ms() -> u64 {
    now_ms()
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
struct Watch {
    /// When its current run of errors began (0: it is fine).
    failing_since: AtomicU64,
    ended: AtomicBool,
}

/// What `/readyz` and `/healthz` answer for the agent.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    beat: AtomicU64,
    watches: [Watch; 3],
    stalled: Mutex<Option<String>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        let h = Arc::new(Self::default());
        h.beat();
        h
    }

    /// The first sync is done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The main loop went round once more.
    pub fn beat(&self) {
        self.beat.store(now_ms(), Ordering::Release);
    }

    /// Watch `i` ([`WATCHES`]) delivered an event (`ok`) or failed a call.
    pub fn watched(&self, i: usize, ok: bool) {
        let w = &self.watches[i];
        if ok {
            w.failing_since.store(0, Ordering::Release);
        } else {
            let _ =
                w.failing_since
                    .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Watch `i`'s stream ended (it never should).
    pub fn watch_ended(&self, i: usize) {
        self.watches[i].ended.store(true, Ordering::Release);
    }

    /// Why the agent is not making progress now, if it is not.
    pub fn judge_now(&self) -> Result<(), String> {
        self.judge_at(now_ms())
    }

    /// [`Health::judge_now`] at `now` ([`clock_ms`]).
    pub fn judge_at(&self, now: u64) -> Result<(), String> {
        let watches: Vec<(&str, u64, bool)> = WATCHES
            .iter()
            .zip(&self.watches)
            .map(|(n, w)| {
                (
                    *n,
                    w.failing_since.load(Ordering::Acquire),
                    w.ended.load(Ordering::Acquire),
                )
            })
            .collect();
        judge(now, self.beat.load(Ordering::Acquire), &watches)
    }

    fn stalled(&self) -> Option<String> {
        self.stalled.lock().ok().and_then(|s| s.clone())
    }
}

impl elasti_runtime::admin::Health for Health {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn live(&self) -> Result<(), String> {
        match self.stalled() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

/// Whether the loop beat within [`LOOP_STALL`] and no watch has failed for
/// [`WATCH_STALL`] or ended. Times are milliseconds on one monotonic clock.
pub fn judge(now: u64, beat: u64, watches: &[(&str, u64, bool)]) -> Result<(), String> {
    let since = |t: u64| Duration::from_millis(now.saturating_sub(t));
    if since(beat) > LOOP_STALL {
        return Err(format!(
            "the main loop made no progress for {:?}",
            since(beat)
        ));
    }
    for (name, failing_since, ended) in watches {
        if *ended {
            return Err(format!("the {name} watch ended"));
        }
        if *failing_since != 0 && since(*failing_since) > WATCH_STALL {
            return Err(format!(
                "the {name} watch has failed for {:?}",
                since(*failing_since)
            ));
        }
    }
    Ok(())
}

/// Starts the watchdog: once the agent stalls, it empties `maps` (its own handle on the
/// maps) and only then marks the agent unhealthy.
pub fn spawn_watchdog(health: Arc<Health>, mut maps: Interceptor) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("elasti-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(WATCHDOG_PERIOD);
                watchdog_tick(&health, &mut maps, now_ms());
            }
        })
        .map(drop)
}

/// One look of the watchdog at `now`: if the agent stalled, the map entries come out, then
/// it is marked unhealthy. Returns why, once it has stalled.
pub fn watchdog_tick(health: &Health, maps: &mut Interceptor, now: u64) -> Option<String> {
    if let Some(why) = health.stalled() {
        return Some(why);
    }
    let why = health.judge_at(now).err()?;
    let cleared = maps.clear();
    tracing::error!(%why, cleared, "agent stalled: map entries removed (connects take the normal path); reporting unhealthy");
    if let Ok(mut s) = health.stalled.lock() {
        *s = Some(why.clone());
    }
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_beat_recently_with_quiet_watches_is_healthy() {
        let watches = [("Service", 0, false), ("EndpointSlice", 0, false)];
        assert_eq!(judge(40_000, 35_000, &watches), Ok(()));
    }

    #[test]
    fn a_stuck_loop_is_unhealthy() {
        let e = judge(100_000, 50_000, &[]).expect_err("stuck for 50 s");
        assert!(e.contains("main loop"), "{e}");
    }

    #[test]
    fn a_watch_failing_past_its_limit_or_ended_is_unhealthy() {
        let failing = [("EndpointSlice", 10_000, false)];
        assert!(
            judge(30_000, 29_000, &failing).is_ok(),
            "20 s of errors: still retrying"
        );
        let e = judge(80_000, 79_000, &failing).expect_err("70 s of errors");
        assert!(e.contains("EndpointSlice"), "{e}");
        let e = judge(1_000, 900, &[("Service", 0, true)]).expect_err("ended");
        assert!(e.contains("Service watch ended"), "{e}");
    }

    #[test]
    fn watch_errors_count_from_the_first_of_a_run_and_clear_on_success() {
        let h = Health::new();
        h.watched(1, false);
        let first = h.watches[1].failing_since.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(5));
        h.watched(1, false);
        assert_eq!(h.watches[1].failing_since.load(Ordering::Acquire), first);
        h.watched(1, true);
        assert_eq!(h.watches[1].failing_since.load(Ordering::Acquire), 0);
    }
}
