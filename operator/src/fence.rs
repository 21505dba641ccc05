//! Fencing: what this replica does as the leader stops the moment it stops leading. A
//! reconcile under way is cancelled (its future dropped), and each write it would still
//! make checks first, so a deposed leader never writes over its successor.
use tokio::sync::watch;

/// Whether this replica leads, as the leader election publishes it.
#[derive(Clone, Debug)]
pub struct Fence(watch::Receiver<bool>);

/// This replica no longer leads; the work was dropped.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[error("no longer the leader")]
pub struct Fenced;

impl Fence {
    pub fn new(leading: watch::Receiver<bool>) -> Self {
        Self(leading)
    }

    /// A fence that always leads (one replica, no election; tests).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // Kept: a dropped sender reads as "no longer leading".
        std::mem::forget(tx);
        Self(rx)
    }

    pub fn leading(&self) -> bool {
        *self.0.borrow()
    }

    /// `Ok` while this replica leads.
    ///
    /// # Errors
    /// [`Fenced`] once it does not.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.leading() { Ok(()) } else { Err(Fenced) }
    }

    /// Runs `work` until it ends or leadership is lost, whichever comes first; in the
    /// second case `work` is dropped where it stands.
    ///
    /// # Errors
    /// [`Fenced`] when leadership was lost (or was not held to begin with).
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Fenced> {
        let mut lost = self.0.clone();
        self.check()?;
        tokio::select! {
            out = work => Ok(out),
            _ = lost.wait_for(|l| !*l) => Err(Fenced),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn losing_the_lease_cancels_work_under_way() {
        let (tx, rx) = watch::channel(true);
        let fence = Fence::new(rx);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        let work = {
            let fence = fence.clone();
            tokio::spawn(async move {
                fence
                    .guard(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        let _ = done_tx.send(()).await;
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(false);
        let r = tokio::time::timeout(Duration::from_secs(2), work).await;
        assert!(matches!(r, Ok(Ok(Err(Fenced)))), "{r:?}");
        assert!(done_rx.try_recv().is_err(), "the work went on");
        assert_eq!(fence.check(), Err(Fenced));
        assert_eq!(fence.guard(async {}).await, Err(Fenced), "no new work");
    }

    #[tokio::test]
    async fn work_that_ends_while_leading_returns() {
        assert_eq!(Fence::always().guard(async { 7 }).await, Ok(7));
    }
}
