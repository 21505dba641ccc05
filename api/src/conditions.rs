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
/// The [`SCALE_DOWN_PENDING`] reason while the Service is drained before `/scale` goes to
/// zero: every agent intercepts, and the pods are out of the Service's endpoints
/// ([`crate::endpoints::DRAINED_SELECTOR_KEY`]) but still run. Agents go on forwarding to
/// the pods they last saw Ready, so nothing has to wait.
pub const DRAINING: &str = "Draining";
/// `True` while the target has a Ready endpoint (`status.mode` is `serve`); its
/// `lastTransitionTime` says since when, which is what the cooldown counts from.
pub const SERVING: &str = "Serving";
/// `True` when another ElastiService, created before this one, manages the same Service
/// or the same target: this one is left alone (no proxy ports, no scaling, no slices).
pub const CONFLICT: &str = "Conflict";
/// `False` outside `enabledPeriod` (reason `OutsideEnabledPeriod`: the target is kept at
/// `minTargetReplicas`) or when the schedule cannot be read (reason `InvalidSchedule`:
/// nothing is scaled down).
pub const SCALE_TO_ZERO_ALLOWED: &str = "ScaleToZeroAllowed";
