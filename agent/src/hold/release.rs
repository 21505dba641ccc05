//! The release of held callers, in turns: a fair window of turns that starts narrow at
//! each cold period and widens by one with every turn given back, up to
//! [`RELEASE_IN_FLIGHT`] (TCP's slow start, for a pod that has just become Ready).
//!
//! Why narrow first: the pod has no connection from the agent yet, so each caller in the
//! first wave opens one, and the pod accepts and parses them all before it answers any.
//! With 10,000 held and 32 turns at once, the first answer came 8–11 ms after Ready; with
//! 4, 2–5 ms, and the last answer no later (the bench's capacity figure,
//! `bench/src/hold.rs`). The window is back to full width after 28 answers.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Turns open at once when a cold period's release begins.
pub const RELEASE_FIRST_TURNS: usize = 4;
/// Turns open at once in a release at full width: beyond this, 10,000 held requests would
/// all do their first step (hyper's parse, an upstream connect) before any got its answer.
pub const RELEASE_IN_FLIGHT: usize = 32;

/// The turns of one service's release. Cloning shares it.
#[derive(Clone, Debug)]
pub struct ReleaseWindow {
    turns: Arc<Semaphore>,
    /// Turns in circulation: open, plus taken and not yet given back.
    width: Arc<AtomicUsize>,
}

impl Default for ReleaseWindow {
    fn default() -> Self {
        Self {
            turns: Arc::new(Semaphore::new(RELEASE_FIRST_TURNS)),
            width: Arc::new(AtomicUsize::new(RELEASE_FIRST_TURNS)),
        }
    }
}

/// A released caller's turn: dropping it lets the next held caller go, and widens the
/// window by one (up to [`RELEASE_IN_FLIGHT`]).
#[derive(Debug)]
pub struct ReleaseTurn {
    _permit: OwnedSemaphorePermit,
    window: ReleaseWindow,
}

impl Drop for ReleaseTurn {
    fn drop(&mut self) {
        self.window.widen();
    }
}

impl ReleaseWindow {
    /// Waits for a turn, in arrival order. `None` only if the window were closed, which it
    /// never is.
    pub async fn turn(&self) -> Option<ReleaseTurn> {
        let permit = self.turns.clone().acquire_owned().await.ok()?;
        Some(ReleaseTurn {
            _permit: permit,
            window: self.clone(),
        })
    }

    /// Back to [`RELEASE_FIRST_TURNS`] for a new cold period. Only open turns are taken
    /// back; a turn still out from the last release is counted until it is given back.
    pub fn narrow(&self) {
        let extra = self
            .width
            .load(Ordering::Acquire)
            .saturating_sub(RELEASE_FIRST_TURNS);
        if extra > 0 {
            let taken = self.turns.forget_permits(extra);
            self.width.fetch_sub(taken, Ordering::AcqRel);
        }
    }

    fn widen(&self) {
        let wider = self
            .width
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < RELEASE_IN_FLIGHT).then_some(w + 1)
            });
        if wider.is_ok() {
            self.turns.add_permits(1);
        }
    }

    /// Turns open now (for tests).
    pub fn open(&self) -> usize {
        self.turns.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn take(w: &ReleaseWindow, n: usize) -> Vec<ReleaseTurn> {
        let mut turns = Vec::new();
        for _ in 0..n {
            let t = tokio::time::timeout(Duration::from_secs(1), w.turn())
                .await
                .unwrap_or_else(|_| panic!("no turn"));
            turns.push(t.unwrap_or_else(|| panic!("closed")));
        }
        turns
    }

    #[tokio::test]
    async fn a_release_starts_narrow_and_each_given_back_turn_opens_two() {
        let w = ReleaseWindow::default();
        let mut turns = take(&w, RELEASE_FIRST_TURNS).await;
        assert_eq!(w.open(), 0);
        let waiting = tokio::time::timeout(Duration::from_millis(20), w.turn()).await;
        assert!(waiting.is_err(), "no fifth turn before one is given back");
        turns.pop();
        assert_eq!(w.open(), 2, "its own turn back, and one more");
    }

    #[tokio::test]
    async fn the_window_widens_to_its_full_width_and_no_further() {
        let w = ReleaseWindow::default();
        for _ in 0..2 * RELEASE_IN_FLIGHT {
            drop(take(&w, 1).await);
        }
        assert_eq!(w.open(), RELEASE_IN_FLIGHT);
        let all = take(&w, RELEASE_IN_FLIGHT).await;
        drop(all);
        assert_eq!(w.open(), RELEASE_IN_FLIGHT);
    }

    #[tokio::test]
    async fn a_new_cold_period_starts_narrow_again_counting_turns_still_out() {
        let w = ReleaseWindow::default();
        for _ in 0..2 * RELEASE_IN_FLIGHT {
            drop(take(&w, 1).await);
        }
        let out = take(&w, 3).await;
        w.narrow();
        assert_eq!(
            w.open(),
            RELEASE_FIRST_TURNS - 3,
            "3 of the first turns are out"
        );
        drop(out);
        assert_eq!(
            w.open(),
            RELEASE_FIRST_TURNS + 3,
            "each given back widens again"
        );
        w.narrow();
        assert_eq!(w.open(), RELEASE_FIRST_TURNS);
    }
}
