//! Whether a target should sleep, wake or stay as it is. Pure: the reconciler gathers the
//! inputs (replicas, times, readiness, the schedule, the group, and the triggers' reading
//! when asked for) and acts on the answer.
//!
//! A target is scaled down only when all of these hold:
//! - it is inside its `enabledPeriod` (or has none, or one that can be read);
//! - it has been Ready (a Ready endpoint) for the whole cooldown, and the cooldown has also
//!   passed since its creation, its last scale-up and the last wake an agent sent (every
//!   wake counts, also one answered "already up");
//! - no agent has sent a wake for [`HOLD_WINDOW`]: agents repeat their wake every couple
//!   of seconds while they hold a request and nothing is Ready;
//! - no group member that wakes it is up;
//! - every trigger reads idle.
use std::time::Duration;

use jiff::Timestamp;

/// Agents repeat a wake every 2 s while they hold a request for a target with no Ready
/// endpoint; a wake this recent means one may still hold. Two repeats and some margin.
pub const HOLD_WINDOW: Duration = Duration::from_secs(5);

/// What `enabledPeriod` says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Window {
    /// No `enabledPeriod`: scale-to-zero is always allowed.
    Always,
    /// Inside a window; it closes at `until` (if within the look-ahead).
    Open { until: Option<Timestamp> },
    /// Outside every window; the next opens at `opens` (if within the look-ahead).
    Closed { opens: Option<Timestamp> },
    /// The schedule cannot be read: fail open (nothing is scaled down).
    Invalid(String),
}

/// What the reconciler knows before asking the triggers.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub now: Timestamp,
    /// The ElastiService's creation.
    pub created: Option<Timestamp>,
    /// `status.lastScaledUpTime`.
    pub last_scaled_up: Option<Timestamp>,
    /// `status.lastWakeTime`: the last wake any agent sent.
    pub last_wake: Option<Timestamp>,
    /// Since when the target has had a Ready endpoint; `None` while it has none.
    pub ready_since: Option<Timestamp>,
    /// `spec.cooldownPeriod`.
    pub cooldown: Duration,
    /// The target's current `spec.replicas`.
    pub replicas: i32,
    /// Whether the ElastiService has triggers at all.
    pub has_triggers: bool,
    pub window: Window,
    /// Group members that wake this one and are up (`wakeWith`).
    pub kept_up_by: Vec<String>,
}

/// The triggers' reading (KubeElasti's semantics: healthy Prometheus, every value under
/// its threshold means idle; elasti's `activity`: no connect and nothing open).
#[derive(Clone, Debug, PartialEq)]
pub enum Idleness {
    /// Every trigger reads idle.
    Idle,
    /// No trigger is busy, but one saw activity less than a cooldown ago: idle after
    /// `recheck`.
    Recent { detail: String, recheck: Duration },
    /// At least one trigger is at or above its threshold.
    Busy { detail: String },
    /// A trigger could not be read (Prometheus down, a silent agent): never scale down on
    /// that.
    Unknown { detail: String },
}

impl Idleness {
    /// The reading of several triggers: busy if any is, else unknown if any is, else
    /// recent if any is (the latest), else idle.
    pub fn all(readings: impl IntoIterator<Item = Idleness>) -> Idleness {
        let (mut busy, mut unknown, mut recent) = (Vec::new(), Vec::new(), None);
        for r in readings {
            match r {
                Idleness::Idle => {}
                Idleness::Busy { detail } => busy.push(detail),
                Idleness::Unknown { detail } => unknown.push(detail),
                Idleness::Recent { detail, recheck } => {
                    if recent.as_ref().is_none_or(|(_, r)| recheck > *r) {
                        recent = Some((detail, recheck));
                    }
                }
            }
        }
        if !busy.is_empty() {
            Idleness::Busy {
                detail: busy.join("; "),
            }
        } else if !unknown.is_empty() {
            Idleness::Unknown {
                detail: unknown.join("; "),
            }
        } else if let Some((detail, recheck)) = recent {
            Idleness::Recent { detail, recheck }
        } else {
            Idleness::Idle
        }
    }
}

/// Why the target stays as it is; also the `ScaledToZero` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// At zero and no trigger asks for more.
    ScaledToZero,
    /// No triggers: only a manual scale or traffic changes the replicas.
    NoTriggers,
    /// Up, and the cooldown since creation, the last scale-up, the last wake or
    /// readiness has not passed.
    CooldownPending,
    /// Up, but no Ready endpoint yet: held requests wait for one.
    NotReady,
    /// Up, and an agent sent a wake within [`HOLD_WINDOW`].
    AgentHolding,
    /// Up, and a group member that wakes it is up.
    GroupMemberUp,
    /// Outside its `enabledPeriod`: kept at `minTargetReplicas`.
    OutsideEnabledPeriod,
    /// `enabledPeriod` cannot be read: nothing is scaled down.
    InvalidSchedule,
    /// Up, and a trigger is at or above its threshold (or saw activity recently).
    TrafficAboveThreshold,
    /// A trigger could not be read (Prometheus down, unhealthy, bad query; an agent
    /// silent).
    PrometheusUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScaledToZero => "ScaledToZero",
            Self::NoTriggers => "NoTriggers",
            Self::CooldownPending => "CooldownPending",
            Self::NotReady => "NotReady",
            Self::AgentHolding => "AgentHolding",
            Self::GroupMemberUp => "GroupMemberUp",
            Self::OutsideEnabledPeriod => "OutsideEnabledPeriod",
            Self::InvalidSchedule => "InvalidSchedule",
            Self::TrafficAboveThreshold => "TrafficAboveThreshold",
            Self::PrometheusUnavailable => "PrometheusUnavailable",
        }
    }
}

/// What caused a scale-up the verdict asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpCause {
    /// A trigger rose above its threshold.
    Trigger,
    /// Outside `enabledPeriod`, the target is kept at `minTargetReplicas`.
    Schedule,
    /// An agent's wake that has not been answered by a scale-up yet.
    Wake,
}

impl UpCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Schedule => "schedule",
            Self::Wake => "wake",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Scale the target to zero.
    ScaleDown,
    /// Scale the target up to `minTargetReplicas`.
    ScaleUp { cause: UpCause, detail: String },
    /// Leave it; look again after `recheck` at the latest.
    Stay {
        reason: Reason,
        detail: String,
        recheck: Option<Duration>,
    },
}

/// The first step: decide without the triggers when possible.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Decided(Verdict),
    /// Read the triggers, then call [`with_idleness`].
    ReadTriggers,
}

fn since(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO)
}

fn until(t: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    t.map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The time left until the cooldown has passed since creation, the last scale-up, the
/// last wake and the start of readiness.
pub fn cooldown_left(inp: &Inputs) -> Option<Duration> {
    let since_all = [
        inp.created,
        inp.last_scaled_up,
        inp.last_wake,
        inp.ready_since,
    ]
    .into_iter()
    .flatten()
    .max()?;
    inp.cooldown
        .checked_sub(since(since_all, inp.now))
        .filter(|d| !d.is_zero())
}

fn stay(reason: Reason, detail: impl Into<String>, recheck: Option<Duration>) -> Step {
    Step::Decided(Verdict::Stay {
        reason,
        detail: detail.into(),
        recheck,
    })
}

pub fn first_step(inp: &Inputs) -> Step {
    let wake_age = inp.last_wake.map(|t| since(t, inp.now));
    let holding = wake_age.is_some_and(|a| a < HOLD_WINDOW);
    match &inp.window {
        Window::Closed { opens } if inp.replicas == 0 => {
            return Step::Decided(Verdict::ScaleUp {
                cause: UpCause::Schedule,
                detail: "outside enabledPeriod: kept at minTargetReplicas".into(),
            });
        }
        Window::Closed { opens } => {
            return stay(
                Reason::OutsideEnabledPeriod,
                match opens {
                    Some(t) => format!("outside enabledPeriod until {t}"),
                    None => "outside enabledPeriod".into(),
                },
                until(*opens, inp.now),
            );
        }
        Window::Invalid(why) if inp.replicas > 0 => {
            return stay(
                Reason::InvalidSchedule,
                format!("enabledPeriod cannot be read, so nothing is scaled down: {why}"),
                None,
            );
        }
        _ => {}
    }
    // A scale-up since the wake answered it: scaling up again would undo a manual scale to
    // zero. Agents still holding repeat their wake, and a newer one counts again.
    let unanswered = inp
        .last_wake
        .is_some_and(|w| inp.last_scaled_up.is_none_or(|up| w > up));
    if inp.replicas == 0 && holding && unanswered {
        return Step::Decided(Verdict::ScaleUp {
            cause: UpCause::Wake,
            detail: "an agent holds a request".into(),
        });
    }
    if !inp.has_triggers {
        let reason = if inp.replicas == 0 {
            Reason::ScaledToZero
        } else {
            Reason::NoTriggers
        };
        return stay(
            reason,
            "no triggers: only traffic or a manual scale changes the replicas",
            None,
        );
    }
    if inp.replicas > 0 {
        if inp.ready_since.is_none() {
            return stay(
                Reason::NotReady,
                "no Ready endpoint yet: the cooldown starts once one is Ready",
                None,
            );
        }
        if let Some(age) = wake_age.filter(|_| holding) {
            return stay(
                Reason::AgentHolding,
                format!("an agent sent a wake {}ms ago", age.as_millis()),
                HOLD_WINDOW.checked_sub(age),
            );
        }
        if let Some(left) = cooldown_left(inp) {
            return stay(
                Reason::CooldownPending,
                format!("cooldown ends in {}s", left.as_secs()),
                Some(left),
            );
        }
        if !inp.kept_up_by.is_empty() {
            return stay(
                Reason::GroupMemberUp,
                format!(
                    "kept up while {} (whose wake reaches it) is up",
                    inp.kept_up_by.join(", ")
                ),
                None,
            );
        }
    }
    Step::ReadTriggers
}

/// The window's next change, as a recheck: a window that closes must be noticed then.
fn window_recheck(inp: &Inputs) -> Option<Duration> {
    match &inp.window {
        Window::Open { until: t } => until(*t, inp.now),
        _ => None,
    }
}

/// The verdict once the triggers are read.
pub fn with_idleness(inp: &Inputs, idleness: Idleness) -> Verdict {
    let verdict = match (inp.replicas, idleness) {
        (0, Idleness::Busy { detail }) => Verdict::ScaleUp {
            cause: UpCause::Trigger,
            detail,
        },
        (0, Idleness::Idle | Idleness::Recent { .. }) => Verdict::Stay {
            reason: Reason::ScaledToZero,
            detail: "every trigger is idle".into(),
            recheck: None,
        },
        (0, Idleness::Unknown { detail }) => Verdict::Stay {
            reason: Reason::ScaledToZero,
            detail: format!("triggers unreadable ({detail}); waiting for traffic"),
            recheck: None,
        },
        (_, Idleness::Idle) => Verdict::ScaleDown,
        (_, Idleness::Recent { detail, recheck }) => Verdict::Stay {
            reason: Reason::TrafficAboveThreshold,
            detail,
            recheck: Some(recheck),
        },
        (_, Idleness::Busy { detail }) => Verdict::Stay {
            reason: Reason::TrafficAboveThreshold,
            detail,
            recheck: None,
        },
        (_, Idleness::Unknown { detail }) => Verdict::Stay {
            reason: Reason::PrometheusUnavailable,
            detail,
            recheck: None,
        },
    };
    match verdict {
        Verdict::Stay {
            reason,
            detail,
            recheck,
        } => {
            let recheck = match (recheck, window_recheck(inp)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Verdict::Stay {
                reason,
                detail,
                recheck,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Up, Ready since long ago, created long ago, cooldown 300 s.
    fn inputs(replicas: i32) -> Inputs {
        Inputs {
            now: at(1000),
            created: Some(at(0)),
            last_scaled_up: None,
            last_wake: None,
            ready_since: (replicas > 0).then(|| at(0)),
            cooldown: Duration::from_secs(300),
            replicas,
            has_triggers: true,
            window: Window::Always,
            kept_up_by: Vec::new(),
        }
    }

    fn reason(step: Step) -> Option<Reason> {
        match step {
            Step::Decided(Verdict::Stay { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn idle_after_cooldown_scales_down() {
        let inp = inputs(2);
        assert_eq!(first_step(&inp), Step::ReadTriggers);
        assert_eq!(with_idleness(&inp, Idleness::Idle), Verdict::ScaleDown);
    }

    #[test]
    fn cooldown_counts_from_creation_and_from_the_last_scale_up() {
        let mut inp = inputs(1);
        inp.created = Some(at(900));
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { reason: Reason::CooldownPending, recheck: Some(d), .. })
                if d == Duration::from_secs(200)
        ));
        inp.created = Some(at(0));
        inp.last_scaled_up = Some(at(950));
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { recheck: Some(d), .. }) if d == Duration::from_secs(250)
        ));
        inp.last_scaled_up = Some(at(700));
        assert_eq!(first_step(&inp), Step::ReadTriggers);
    }

    /// Issue 14 item 1: a pod that takes longer than the cooldown to become Ready is not
    /// scaled away; the cooldown starts when it is Ready.
    #[test]
    fn a_slow_start_is_never_scaled_away() {
        // cooldown 5 s, scaled up 10 s ago, no pod Ready yet.
        let mut inp = inputs(1);
        inp.cooldown = Duration::from_secs(5);
        inp.last_scaled_up = Some(at(990));
        inp.ready_since = None;
        assert_eq!(reason(first_step(&inp)), Some(Reason::NotReady));
        // Ready 3 s ago: 2 s of cooldown left.
        inp.ready_since = Some(at(997));
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { reason: Reason::CooldownPending, recheck: Some(d), .. })
                if d == Duration::from_secs(2)
        ));
        inp.ready_since = Some(at(995));
        assert_eq!(first_step(&inp), Step::ReadTriggers);
    }

    /// Issue 14 item 2: every wake refreshes the cooldown, and a wake within the hold
    /// window means an agent may hold a request.
    #[test]
    fn every_wake_refreshes_the_cooldown_and_a_recent_one_means_held() {
        let mut inp = inputs(1);
        inp.cooldown = Duration::from_secs(5);
        inp.last_wake = Some(at(998));
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { reason: Reason::AgentHolding, recheck: Some(d), .. })
                if d == Duration::from_secs(3)
        ));
        // cooldown 60 s: a wake 30 s ago (an "already up" one) still counts.
        inp.cooldown = Duration::from_secs(60);
        inp.last_wake = Some(at(970));
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { reason: Reason::CooldownPending, recheck: Some(d), .. })
                if d == Duration::from_secs(30)
        ));
        // At zero, a recent wake is answered with a scale-up (the wake's own failed, or
        // it arrived during a scale-down).
        let mut zero = inputs(0);
        zero.last_wake = Some(at(998));
        assert!(matches!(
            first_step(&zero),
            Step::Decided(Verdict::ScaleUp {
                cause: UpCause::Wake,
                ..
            })
        ));
        zero.last_wake = Some(at(900));
        assert_eq!(first_step(&zero), Step::ReadTriggers);
    }

    /// A wake that a scale-up has answered since is not answered twice: a target scaled to
    /// zero by hand right after a wake stays at zero, until an agent wakes it again.
    #[test]
    fn a_wake_answered_by_a_scale_up_does_not_undo_a_manual_scale_to_zero() {
        let mut zero = inputs(0);
        zero.last_wake = Some(at(998));
        zero.last_scaled_up = Some(at(999));
        assert_eq!(first_step(&zero), Step::ReadTriggers);
        // Recorded in the same second: the scale-up was the wake's own.
        zero.last_scaled_up = Some(at(998));
        assert_eq!(first_step(&zero), Step::ReadTriggers);
        // An agent still holding repeats its wake after the scale-up.
        zero.last_wake = Some(at(999));
        assert!(matches!(
            first_step(&zero),
            Step::Decided(Verdict::ScaleUp {
                cause: UpCause::Wake,
                ..
            })
        ));
    }

    #[test]
    fn outside_its_window_a_target_is_kept_up_and_woken() {
        let mut inp = inputs(1);
        inp.window = Window::Closed {
            opens: Some(at(4600)),
        };
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay { reason: Reason::OutsideEnabledPeriod, recheck: Some(d), .. })
                if d == Duration::from_secs(3600)
        ));
        let mut zero = inputs(0);
        zero.window = inp.window.clone();
        assert!(matches!(
            first_step(&zero),
            Step::Decided(Verdict::ScaleUp {
                cause: UpCause::Schedule,
                ..
            })
        ));
        // Inside: the window's end is a recheck.
        inp.window = Window::Open {
            until: Some(at(1100)),
        };
        assert_eq!(first_step(&inp), Step::ReadTriggers);
        assert!(matches!(
            with_idleness(&inp, Idleness::Busy { detail: "x".into() }),
            Verdict::Stay { recheck: Some(d), .. } if d == Duration::from_secs(100)
        ));
    }

    #[test]
    fn an_invalid_schedule_fails_open() {
        let mut inp = inputs(1);
        inp.window = Window::Invalid("bad cron".into());
        assert_eq!(reason(first_step(&inp)), Some(Reason::InvalidSchedule));
        // At zero it is not woken either: nothing changes on a schedule nobody can read.
        let mut zero = inputs(0);
        zero.window = inp.window.clone();
        assert_eq!(first_step(&zero), Step::ReadTriggers);
        assert!(matches!(
            with_idleness(&zero, Idleness::Idle),
            Verdict::Stay {
                reason: Reason::ScaledToZero,
                ..
            }
        ));
    }

    #[test]
    fn a_member_woken_by_an_up_member_stays_up() {
        let mut inp = inputs(1);
        inp.kept_up_by = vec!["api".into()];
        assert_eq!(reason(first_step(&inp)), Some(Reason::GroupMemberUp));
    }

    #[test]
    fn prometheus_unknown_never_scales_down() {
        let v = with_idleness(
            &inputs(1),
            Idleness::Unknown {
                detail: "connection refused".into(),
            },
        );
        assert!(matches!(
            v,
            Verdict::Stay {
                reason: Reason::PrometheusUnavailable,
                ..
            }
        ));
    }

    #[test]
    fn busy_keeps_it_up_and_wakes_it_from_zero() {
        let busy = || Idleness::Busy {
            detail: "rate 3 >= 0.5".into(),
        };
        assert!(matches!(
            with_idleness(&inputs(1), busy()),
            Verdict::Stay {
                reason: Reason::TrafficAboveThreshold,
                ..
            }
        ));
        assert!(matches!(
            with_idleness(&inputs(0), busy()),
            Verdict::ScaleUp {
                cause: UpCause::Trigger,
                ..
            }
        ));
        // At zero the cooldown does not apply: a busy trigger wakes it at once.
        let mut fresh = inputs(0);
        fresh.created = Some(at(999));
        assert_eq!(first_step(&fresh), Step::ReadTriggers);
    }

    #[test]
    fn recent_activity_waits_and_never_wakes() {
        let recent = || Idleness::Recent {
            detail: "last connect 2s ago".into(),
            recheck: Duration::from_secs(3),
        };
        assert!(matches!(
            with_idleness(&inputs(1), recent()),
            Verdict::Stay { recheck: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            with_idleness(&inputs(0), recent()),
            Verdict::Stay {
                reason: Reason::ScaledToZero,
                ..
            }
        ));
    }

    #[test]
    fn readings_combine_busy_first_then_unknown() {
        let u = || Idleness::Unknown { detail: "u".into() };
        let b = || Idleness::Busy { detail: "b".into() };
        assert_eq!(Idleness::all([Idleness::Idle, u(), b()]), b());
        assert_eq!(Idleness::all([Idleness::Idle, u()]), u());
        assert_eq!(Idleness::all([Idleness::Idle]), Idleness::Idle);
        assert_eq!(Idleness::all([]), Idleness::Idle);
    }

    #[test]
    fn no_triggers_means_no_automatic_scale_down() {
        let mut inp = inputs(3);
        inp.has_triggers = false;
        assert_eq!(reason(first_step(&inp)), Some(Reason::NoTriggers));
    }
}
