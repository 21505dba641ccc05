//! What this replica holds while it leads, and only then: the agents' latest reports and
//! the channel that asks the controller to reconcile an ElastiService now. A new term
//! starts empty (reports from an earlier term may be stale, and the controller is new).
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use elasti_api::ElastiService;
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

use crate::activity::Reports;

/// One leadership term.
pub struct Term {
    pub reports: Reports,
    poke: mpsc::UnboundedSender<ObjectRef<ElastiService>>,
}

/// This replica's current term, if it leads.
#[derive(Clone, Default)]
pub struct Leader(Arc<Mutex<Option<Term>>>);

impl Leader {
    /// Starts a term; the controller reconciles what arrives on the returned stream.
    pub fn start(&self, now: Instant) -> mpsc::UnboundedReceiver<ObjectRef<ElastiService>> {
        let (poke, rx) = mpsc::unbounded();
        if let Ok(mut t) = self.0.lock() {
            *t = Some(Term {
                reports: Reports::new(now),
                poke,
            });
        }
        rx
    }

    /// Ends the term: reports are refused until the next.
    pub fn end(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = None;
        }
    }

    /// `f` on the term, or `None` when this replica does not lead.
    pub fn with<R>(&self, f: impl FnOnce(&mut Term) -> R) -> Option<R> {
        self.0.lock().ok()?.as_mut().map(f)
    }

    /// Asks the controller to reconcile `refs` now (nothing when not leading).
    pub fn poke(&self, refs: impl IntoIterator<Item = ObjectRef<ElastiService>>) {
        self.with(|t| {
            for r in refs {
                let _ = t.poke.unbounded_send(r);
            }
        });
    }
}
