//! Whether one more connection or request may wait: per service (a bounded queue) and per
//! node (a budget shared by every service, by count and by bytes, so no tenant can hold the
//! whole agent). The decisions are pure functions, tested without sockets.
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Per-service holding limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How many connections/requests may wait at once; the next is refused (HTTP 503 with
    /// `Retry-After`, raw TCP closed).
    pub max_held: usize,
    /// How long one may wait for a Ready endpoint before it is answered 504 (raw TCP:
    /// closed).
    pub deadline: Duration,
}

impl Limits {
    /// Knative's activator holds 10,000 per revision; KubeElasti 50,000 globally. 10,000
    /// per service per node keeps one service from exhausting the agent's file descriptors.
    pub const DEFAULT_MAX_HELD: usize = 10_000;
    /// Long enough for an image pull plus a slow JVM start; KubeElasti uses 600 s.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_held: Self::DEFAULT_MAX_HELD,
            deadline: Self::DEFAULT_DEADLINE,
        }
    }
}

/// The queue length after admitting one more, or `None` if the queue is full.
pub fn admit(held_now: usize, limits: &Limits) -> Option<usize> {
    (held_now < limits.max_held).then_some(held_now + 1)
}

/// What every service on this node may hold together.
#[derive(Debug)]
pub struct Budget {
    max_count: usize,
    max_bytes: usize,
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl Budget {
    /// 50,000 held connections node-wide (KubeElasti's global queue), five services' worth
    /// of the per-service bound.
    pub const DEFAULT_MAX_COUNT: usize = 50_000;
    /// 256 MiB of request bytes waiting unread in held sockets, node-wide.
    pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            max_count,
            max_bytes,
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    /// A place for one more held connection carrying `bytes`, or `None` past either bound.
    pub fn reserve(&self, bytes: usize) -> Option<BudgetSlot<'_>> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_count).then_some(n + 1)
            })
            .ok()?;
        let fits = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                fits(b, bytes, self.max_bytes)
            })
            .is_ok();
        if !fits {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(BudgetSlot {
            budget: self,
            bytes,
        })
    }

    /// Held connections and bytes right now.
    pub fn used(&self) -> (usize, usize) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_COUNT, Self::DEFAULT_MAX_BYTES)
    }
}

/// The bytes held after adding `more` to `held`, or `None` past `max`.
pub fn fits(held: usize, more: usize, max: usize) -> Option<usize> {
    held.checked_add(more).filter(|total| *total <= max)
}

/// One connection's share of the budget, given back on drop.
#[derive(Debug)]
pub struct BudgetSlot<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for BudgetSlot<'_> {
    fn drop(&mut self) {
        self.budget.count.fetch_sub(1, Ordering::AcqRel);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_no_further() {
        let limits = Limits {
            max_held: 2,
            deadline: Duration::from_secs(1),
        };
        assert_eq!(admit(0, &limits), Some(1));
        assert_eq!(admit(1, &limits), Some(2));
        assert_eq!(admit(2, &limits), None);
    }

    #[test]
    fn bytes_fit_up_to_the_budget_exactly() {
        assert_eq!(fits(0, 10, 10), Some(10));
        assert_eq!(fits(5, 6, 10), None);
        assert_eq!(fits(usize::MAX, 1, usize::MAX), None, "no overflow");
    }

    #[test]
    fn the_budget_gives_back_what_it_reserved() {
        let b = Budget::new(2, 100);
        let one = b.reserve(60);
        assert!(one.is_some());
        assert!(b.reserve(60).is_none(), "bytes");
        let two = b.reserve(40);
        assert!(two.is_some());
        assert!(b.reserve(0).is_none(), "count");
        drop(one);
        assert_eq!(b.used(), (1, 40));
        drop(two);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn a_zero_bound_refuses_everything() {
        let limits = Limits {
            max_held: 0,
            ..Limits::default()
        };
        assert_eq!(admit(0, &limits), None);
    }
}
