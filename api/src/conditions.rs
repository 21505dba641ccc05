//! The ElastiService conditions other parts act on. The operator writes them; the agent
//! reads the ones named here.

/// `True` when the ElastiService is wired up: its Service and target exist and its proxy
/// ports are allocated.
pub const READY: &str = "Ready";
/// The [`READY`] reason for a target that does not exist: nothing will ever become Ready,
/// so agents do not hold its Service (clients get an answer at once, not a hang).
pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
/// `True` while the target is at zero; the reason says why it is or is not.
pub const SCALED_TO_ZERO: &str = "ScaledToZero";
/// `True` from the operator's decision to scale the target to zero until the target is at
/// zero with no Ready endpoint (or the scale-down is abandoned because a wake arrived).
/// While it is `True`, every agent steers the Service to itself and forwards to the Ready
/// pods that remain, so no request reaches a pod that is going away; the operator patches
/// `/scale` to zero only once every Ready agent reports intercepting
/// ([`crate::report::ServiceReport::intercepting`]), or after a timeout.
pub const SCALE_DOWN_PENDING: &str = "ScaleDownPending";
