//! Whether a target should sleep, wake or stay as it is. Pure: the reconciler gathers the
//! inputs (replicas, times, and the triggers' reading when asked for) and acts on the answer.
use std::time::Duration;

use jiff::Timestamp;

/// What the reconciler knows before asking Prometheus.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub now: Timestamp,
    /// The ElastiService's creation.
    pub created: Option<Timestamp>,
    /// `status.lastScaledUpTime`.
    pub last_scaled_up: Option<Timestamp>,
    /// `spec.cooldownPeriod`.
    pub cooldown: Duration,
    /// The target's current `spec.replicas`.
    pub replicas: i32,
    /// Whether the ElastiService has triggers at all.
    pub has_triggers: bool,
}

/// The triggers' reading (KubeElasti's semantics: healthy Prometheus, every value under
/// its threshold means idle).
#[derive(Clone, Debug, PartialEq)]
pub enum Idleness {
    /// Every trigger's value is under its threshold.
    Idle,
    /// At least one trigger is at or above its threshold.
    Busy { detail: String },
    /// Prometheus is down, unhealthy, or a query failed: never scale down on that.
    Unknown { detail: String },
}

/// Why the target stays as it is; also the `ScaledToZero` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// At zero and no trigger asks for more.
    ScaledToZero,
    /// No triggers: only a manual scale or traffic changes the replicas.
    NoTriggers,
    /// Up, and the cooldown since creation or the last scale-up has not passed.
    CooldownPending,
    /// Up, and a trigger is at or above its threshold.
    TrafficAboveThreshold,
    /// Prometheus could not tell (down, unhealthy, bad query).
    PrometheusUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScaledToZero => "ScaledToZero",
            Self::NoTriggers => "NoTriggers",
            Self::CooldownPending => "CooldownPending",
            Self::TrafficAboveThreshold => "TrafficAboveThreshold",
            Self::PrometheusUnavailable => "PrometheusUnavailable",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Scale the target to zero.
    ScaleDown,
    /// Scale the target up to `minTargetReplicas`: a trigger rose above its threshold.
    ScaleUp { detail: String },
    /// Leave it; look again after `recheck` at the latest.
    Stay {
        reason: Reason,
        detail: String,
        recheck: Option<Duration>,
    },
}

/// The first step: decide without Prometheus when possible.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Decided(Verdict),
    /// Read the triggers, then call [`with_idleness`].
    ReadTriggers,
}

/// The time left until the cooldown since creation and since the last scale-up has passed.
pub fn cooldown_left(inp: &Inputs) -> Option<Duration> {
    let since = [inp.created, inp.last_scaled_up]
        .into_iter()
        .flatten()
        .max()?;
    let elapsed = inp.now.duration_since(since);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    inp.cooldown.checked_sub(elapsed).filter(|d| !d.is_zero())
}

pub fn first_step(inp: &Inputs) -> Step {
    if !inp.has_triggers {
        let reason = if inp.replicas == 0 {
            Reason::ScaledToZero
        } else {
            Reason::NoTriggers
        };
        return Step::Decided(Verdict::Stay {
            reason,
            detail: "no triggers: only traffic or a manual scale changes the replicas".into(),
            recheck: None,
        });
    }
    if inp.replicas > 0
        && let Some(left) = cooldown_left(inp)
    {
        return Step::Decided(Verdict::Stay {
            reason: Reason::CooldownPending,
            detail: format!("cooldown ends in {}s", left.as_secs()),
            recheck: Some(left),
        });
    }
    Step::ReadTriggers
}

/// The verdict once the triggers are read.
pub fn with_idleness(inp: &Inputs, idleness: Idleness) -> Verdict {
    match (inp.replicas, idleness) {
        (0, Idleness::Busy { detail }) => Verdict::ScaleUp { detail },
        (0, Idleness::Idle) => Verdict::Stay {
            reason: Reason::ScaledToZero,
            detail: "every trigger is under its threshold".into(),
            recheck: None,
        },
        (0, Idleness::Unknown { detail }) => Verdict::Stay {
            reason: Reason::ScaledToZero,
            detail: format!("triggers unreadable ({detail}); waiting for traffic"),
            recheck: None,
        },
        (_, Idleness::Idle) => Verdict::ScaleDown,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn inputs(replicas: i32) -> Inputs {
        Inputs {
            now: at(1000),
            created: Some(at(0)),
            last_scaled_up: None,
            cooldown: Duration::from_secs(300),
            replicas,
            has_triggers: true,
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
            Verdict::ScaleUp { .. }
        ));
        // At zero the cooldown does not apply: a busy trigger wakes it at once.
        let mut fresh = inputs(0);
        fresh.created = Some(at(999));
        assert_eq!(first_step(&fresh), Step::ReadTriggers);
    }

    #[test]
    fn no_triggers_means_no_automatic_scale_down() {
        let mut inp = inputs(3);
        inp.has_triggers = false;
        assert!(matches!(
            first_step(&inp),
            Step::Decided(Verdict::Stay {
                reason: Reason::NoTriggers,
                ..
            })
        ));
    }
}
