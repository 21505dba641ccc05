//! Whether one more connection or request may wait for a service. Pure, so the bound is
//! tested without sockets.
use std::time::Duration;

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
    fn a_zero_bound_refuses_everything() {
        let limits = Limits {
            max_held: 0,
            ..Limits::default()
        };
        assert_eq!(admit(0, &limits), None);
    }
}
