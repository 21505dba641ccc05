//! The agent's state machine, pure: from what the watches show (the ports to hold, their
//! Ready endpoints, how many connections wait) and `now`, which sockets to open and close,
//! which map entries to put in and take out, which endpoints to feed the waiters, and when
//! to wake the operator. [`crate::run`] observes and applies; nothing here does I/O.
//!
//! A port's life: `Holding` (listening, connects steered here, waiters queue) → Ready →
//! `Grace` (still steered, forwarded at once, so kube-proxy can catch up) → `Serving` (map
//! entries out, listener closed: the agent is out of the path) → back to `Holding` when the
//! endpoints go. While the operator scales the target down
//! ([`elasti_api::conditions::SCALE_DOWN_PENDING`]) a Ready port is `Intercepting`: steered
//! here and forwarded at once to the pods that remain, so nothing reaches a pod that is
//! going away through kube-proxy; when they are gone it is `Holding`. While the operator
//! drains the Service before `/scale` goes to 0 (`Draining`), its pods leave its slices but
//! still run: an intercepting port goes on feeding the ones it last fed. A port no longer
//! managed goes `Leaving`: nothing new reaches it, and what it still holds stays fed until
//! answered or its deadline passes.
//!
//! A port whose ElastiService has an `activity` trigger is counted: its entries count
//! connects and track open sockets while steered, and a `Serving` port keeps count-only
//! entries (no rewrite), so the agent sees its traffic while it is warm too.
//!
//! Invariants, each tested below:
//! - a listener opens before its map entries go in, and map entries come out before their
//!   listener closes;
//! - one proxy port has one owner: a second service naming it is refused, and so is a port
//!   outside the allocation range;
//! - a port is listened on only while it is held, in its grace, or intercepting;
//! - a counted port is never without entries while managed: count-only entries replace
//!   steering ones in place (and the other way round), with no gap.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    ops::RangeInclusive,
    time::{Duration, Instant},
};

use super::HeldPort;
use crate::hold::{Endpoints, ServiceId};

/// What the machine needs to know about the agent's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long connects stay steered after the service became Ready.
    pub grace: Duration,
    /// How long a held connection may wait; a port no longer managed is fed this long.
    pub hold_timeout: Duration,
    /// How often to wake the operator again while something waits and nothing is Ready.
    pub rewake: Duration,
    /// The proxy ports the operator allocates from; anything else is refused.
    pub proxy_ports: RangeInclusive<u16>,
}

/// What the run loop observed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The ports to hold now (from the ElastiServices and their Services).
    pub ports: Vec<HeldPort>,
    /// Ready endpoints of every service port the watches know (missing: none Ready).
    pub ready: HashMap<ServiceId, Endpoints>,
    /// Connections waiting right now, per service port.
    pub held: HashMap<ServiceId, usize>,
    /// SIGTERM: take everything out of the path, feed what is held, then stop.
    pub draining: bool,
}

/// One thing for the run loop to do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the listener of `proxy_port` for `service`.
    Listen { service: ServiceId, proxy_port: u16 },
    /// Steer connects to `addrs` to this agent's `proxy_port` (and count them if `count`).
    Map {
        service: ServiceId,
        addrs: Vec<SocketAddr>,
        proxy_port: u16,
        count: bool,
    },
    /// Only count connects to `addrs` (replacing steering entries in place).
    Count {
        service: ServiceId,
        addrs: Vec<SocketAddr>,
    },
    /// Stop steering connects to `addrs`.
    Unmap {
        service: ServiceId,
        addrs: Vec<SocketAddr>,
    },
    /// Take out map entries an earlier agent on this node left (it crashed).
    Clear { addrs: Vec<SocketAddr> },
    /// Stop accepting on `proxy_port`; accepted connections go on.
    Close { service: ServiceId, proxy_port: u16 },
    /// The service's Ready endpoints changed: tell its waiters and forwarders.
    Feed {
        service: ServiceId,
        endpoints: Endpoints,
    },
    /// Ask the operator to scale the service's target up.
    Wake { service: ServiceId },
    /// Answer everything `service` holds now, without waiting for endpoints.
    Fail { service: ServiceId, reason: Failure },
    /// Nothing of `service` is left: drop its queue, counters and gauges.
    Forget { service: ServiceId },
    /// `service` is not held, and why (logged and counted once per reason).
    Refuse {
        service: ServiceId,
        proxy_port: u16,
        reason: Refusal,
    },
}

/// Why a service's waiters are answered at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The ElastiService names a target that does not exist: nothing will ever be Ready.
    TargetNotFound,
}

/// Why a port is not held.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Its proxy port is outside the allocation range.
    OutOfRange,
    /// Another service holds that proxy port on this agent.
    PortTaken { by: ServiceId },
    /// Its target does not exist.
    TargetNotFound,
}

/// What the run loop does with a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// When to decide again even if nothing changes (a grace ends, a re-wake is due).
    pub next: Option<Instant>,
    /// Draining and nothing is held any more: the agent may exit.
    pub finished: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Holding,
    Grace { until: Instant },
    Intercepting,
    Serving,
    Leaving { until: Instant },
}

/// What the entries of `Port::mapped` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapped {
    Steer { count: bool },
    CountOnly,
}

#[derive(Clone, Debug)]
struct Port {
    plan: HeldPort,
    phase: Phase,
    /// The proxy port listened on, if any.
    listening: Option<u16>,
    /// The addresses whose map entries point here (or count for this port).
    mapped: Vec<SocketAddr>,
    /// What those entries do.
    mapped_as: Mapped,
    /// The endpoints last fed.
    fed: Endpoints,
    last_wake: Option<Instant>,
}

/// The state carried between decisions.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    ports: BTreeMap<ServiceId, Port>,
    /// Who listens on each proxy port.
    owners: BTreeMap<u16, ServiceId>,
    /// Refusals already reported, so each is logged once.
    refused: BTreeMap<ServiceId, Refusal>,
    /// Map entries found at start (a crashed predecessor's) that no port has claimed.
    orphans: BTreeSet<SocketAddr>,
}

impl Machine {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ports: BTreeMap::new(),
            owners: BTreeMap::new(),
            refused: BTreeMap::new(),
            orphans: BTreeSet::new(),
        }
    }

    /// Every port the machine knows, and whether its entries steer connects here now
    /// (held, in its grace, or intercepting a scale-down).
    pub fn ports(&self) -> impl Iterator<Item = (&HeldPort, bool)> {
        self.ports.values().map(|p| {
            let steering = !p.mapped.is_empty() && matches!(p.mapped_as, Mapped::Steer { .. });
            (&p.plan, steering)
        })
    }

    /// The plan of `id`, while the machine knows it.
    pub fn plan_of(&self, id: &ServiceId) -> Option<&HeldPort> {
        self.ports.get(id).map(|p| &p.plan)
    }

    /// `id`'s listener could not be opened: it is neither listened on nor mapped, and the
    /// next decision tries again.
    pub fn listen_failed(&mut self, id: &ServiceId) {
        if let Some(p) = self.ports.get_mut(id) {
            if let Some(port) = p.listening.take()
                && self.owners.get(&port) == Some(id)
            {
                self.owners.remove(&port);
            }
            p.mapped.clear();
        }
    }

    /// `id`'s map entries could not go in (none of them is left in): the next decision
    /// tries again.
    pub fn map_failed(&mut self, id: &ServiceId) {
        if let Some(p) = self.ports.get_mut(id) {
            p.mapped.clear();
        }
    }

    /// Map entries already in the map at start: each is taken out at the first decision
    /// unless a held port claims its address.
    pub fn adopt(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.orphans.extend(addrs);
    }

    /// The next steps from what was observed at `now`.
    pub fn decide(&mut self, observed: &Observed, now: Instant) -> Decision {
        let mut d = Decision::default();
        let held = |id: &ServiceId| observed.held.get(id).copied().unwrap_or(0);
        let ready = |id: &ServiceId| {
            observed
                .ready
                .get(id)
                .cloned()
                .unwrap_or_else(|| Endpoints::from(Vec::new()))
        };

        // Which desired ports may be held at all.
        let mut wanted: BTreeMap<ServiceId, HeldPort> = BTreeMap::new();
        if !observed.draining {
            let mut desired = observed.ports.clone();
            desired.sort_by(|a, b| a.id.cmp(&b.id));
            let mut claimed: BTreeMap<u16, ServiceId> = BTreeMap::new();
            for p in desired {
                let refusal = if p.target_missing {
                    Some(Refusal::TargetNotFound)
                } else if !self.settings.proxy_ports.contains(&p.proxy_port) {
                    Some(Refusal::OutOfRange)
                } else {
                    self.claimant(p.proxy_port, &p.id, &claimed)
                        .map(|by| Refusal::PortTaken { by })
                };
                match refusal {
                    Some(reason) => {
                        if self.refused.get(&p.id) != Some(&reason) {
                            self.refused.insert(p.id.clone(), reason.clone());
                            d.actions.push(Action::Refuse {
                                service: p.id.clone(),
                                proxy_port: p.proxy_port,
                                reason,
                            });
                        }
                    }
                    None => {
                        self.refused.remove(&p.id);
                        claimed.insert(p.proxy_port, p.id.clone());
                        wanted.insert(p.id.clone(), p);
                    }
                }
            }
            let desired_ids: BTreeSet<&ServiceId> = observed.ports.iter().map(|p| &p.id).collect();
            self.refused.retain(|id, _| desired_ids.contains(id));
        }

        // Ports that stop being held: out of the path first, then fed until done.
        let target_missing: BTreeSet<ServiceId> = observed
            .ports
            .iter()
            .filter(|p| p.target_missing)
            .map(|p| p.id.clone())
            .collect();
        let gone: Vec<ServiceId> = self
            .ports
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            let Some(mut port) = self.ports.remove(&id) else {
                continue;
            };
            self.leave(&mut port, &mut d);
            if target_missing.contains(&id) && held(&id) > 0 {
                d.actions.push(Action::Fail {
                    service: id.clone(),
                    reason: Failure::TargetNotFound,
                });
            }
            let until = match port.phase {
                Phase::Leaving { until } => until,
                _ => now + self.settings.hold_timeout,
            };
            if held(&id) == 0 || now >= until || target_missing.contains(&id) {
                d.actions.push(Action::Forget { service: id });
                continue;
            }
            port.phase = Phase::Leaving { until };
            feed(&mut port, ready(&id), &mut d);
            d.next = earliest(d.next, until);
            self.ports.insert(id, port);
        }

        // Ports to hold.
        for (id, plan) in wanted {
            let mut endpoints = ready(&id);
            if endpoints.is_empty()
                && plan.draining
                && let Some(port) = self.ports.get(&id)
                && port.phase == Phase::Intercepting
            {
                endpoints = port.fed.clone();
            }
            let is_ready = !endpoints.is_empty();
            let port = self.ports.entry(id.clone()).or_insert_with(|| Port {
                plan: plan.clone(),
                // Seen Ready first (agent start, a warm service): nothing to hold.
                phase: match (is_ready, plan.scale_down_pending) {
                    (true, true) => Phase::Intercepting,
                    (true, false) => Phase::Serving,
                    (false, _) => Phase::Holding,
                },
                listening: None,
                mapped: Vec::new(),
                mapped_as: Mapped::Steer { count: false },
                fed: Endpoints::from(Vec::new()),
                last_wake: None,
            });
            let moved = port.plan.proxy_port != plan.proxy_port;
            port.plan = plan;
            let before = port.phase;
            if let Phase::Leaving { .. } = port.phase {
                // Managed again while its leftovers drain.
                port.phase = Phase::Holding;
            }
            let pending = port.plan.scale_down_pending;
            port.phase = match (port.phase, is_ready, pending) {
                (Phase::Holding | Phase::Grace { .. } | Phase::Serving, true, true) => {
                    Phase::Intercepting
                }
                (Phase::Holding | Phase::Intercepting, true, false) => Phase::Grace {
                    until: now + self.settings.grace,
                },
                (Phase::Grace { until }, true, false) if now >= until => Phase::Serving,
                (Phase::Grace { .. } | Phase::Intercepting | Phase::Serving, false, _) => {
                    Phase::Holding
                }
                (phase, _, _) => phase,
            };
            if port.phase == Phase::Holding && before != Phase::Holding {
                // A new cold period: its first waiter wakes at once.
                port.last_wake = None;
            }
            match port.phase {
                Phase::Holding | Phase::Grace { .. } | Phase::Intercepting => {
                    // Listener first (a moved port opens its new one before the old closes),
                    // then the map entries, which re-point at the new port on insert.
                    let old = port.listening.filter(|_| moved);
                    if port.listening.is_none() || moved {
                        d.actions.push(Action::Listen {
                            service: id.clone(),
                            proxy_port: port.plan.proxy_port,
                        });
                        port.listening = Some(port.plan.proxy_port);
                        self.owners.insert(port.plan.proxy_port, id.clone());
                    }
                    let stale: Vec<SocketAddr> = port
                        .mapped
                        .iter()
                        .filter(|a| !port.plan.cluster_addrs.contains(a))
                        .copied()
                        .collect();
                    if !stale.is_empty() {
                        d.actions.push(Action::Unmap {
                            service: id.clone(),
                            addrs: stale,
                        });
                    }
                    let steer = Mapped::Steer {
                        count: port.plan.count,
                    };
                    if missing_entries(port) || moved || port.mapped_as != steer {
                        d.actions.push(Action::Map {
                            service: id.clone(),
                            addrs: port.plan.cluster_addrs.clone(),
                            proxy_port: port.plan.proxy_port,
                            count: port.plan.count,
                        });
                        port.mapped = port.plan.cluster_addrs.clone();
                        port.mapped_as = steer;
                        for a in &port.mapped {
                            self.orphans.remove(a);
                        }
                    }
                    if let Some(old) = old {
                        d.actions.push(Action::Close {
                            service: id.clone(),
                            proxy_port: old,
                        });
                        if self.owners.get(&old) == Some(&id) {
                            self.owners.remove(&old);
                        }
                    }
                }
                Phase::Serving if port.plan.count => {
                    // Count-only entries overwrite the steering ones in place, then the
                    // listener closes: connects are counted throughout, never steered to
                    // a closed port.
                    let stale: Vec<SocketAddr> = port
                        .mapped
                        .iter()
                        .filter(|a| !port.plan.cluster_addrs.contains(a))
                        .copied()
                        .collect();
                    if !stale.is_empty() {
                        d.actions.push(Action::Unmap {
                            service: id.clone(),
                            addrs: stale,
                        });
                    }
                    if missing_entries(port) || port.mapped_as != Mapped::CountOnly {
                        d.actions.push(Action::Count {
                            service: id.clone(),
                            addrs: port.plan.cluster_addrs.clone(),
                        });
                        port.mapped = port.plan.cluster_addrs.clone();
                        port.mapped_as = Mapped::CountOnly;
                        for a in &port.mapped {
                            self.orphans.remove(a);
                        }
                    }
                    if let Some(p) = port.listening.take() {
                        d.actions.push(Action::Close {
                            service: id.clone(),
                            proxy_port: p,
                        });
                        if self.owners.get(&p) == Some(&id) {
                            self.owners.remove(&p);
                        }
                    }
                }
                Phase::Serving => {
                    if !port.mapped.is_empty() {
                        d.actions.push(Action::Unmap {
                            service: id.clone(),
                            addrs: std::mem::take(&mut port.mapped),
                        });
                    }
                    if let Some(p) = port.listening.take() {
                        d.actions.push(Action::Close {
                            service: id.clone(),
                            proxy_port: p,
                        });
                        if self.owners.get(&p) == Some(&id) {
                            self.owners.remove(&p);
                        }
                    }
                }
                Phase::Leaving { .. } => {}
            }
            feed(port, endpoints, &mut d);
            match port.phase {
                Phase::Holding if held(&id) > 0 => {
                    let due = port
                        .last_wake
                        .is_none_or(|at| now >= at + self.settings.rewake);
                    if due {
                        d.actions.push(Action::Wake {
                            service: id.clone(),
                        });
                        port.last_wake = Some(now);
                    }
                    let at = port.last_wake.unwrap_or(now) + self.settings.rewake;
                    d.next = earliest(d.next, at);
                }
                Phase::Holding => {
                    // Nothing waits: the next cold period wakes at once.
                    port.last_wake = None;
                }
                Phase::Grace { until } => d.next = earliest(d.next, until),
                _ => {}
            }
        }

        if !self.orphans.is_empty() {
            d.actions.push(Action::Clear {
                addrs: std::mem::take(&mut self.orphans).into_iter().collect(),
            });
        }
        d.finished = observed.draining && self.ports.is_empty();
        d
    }

    /// The service already holding `proxy_port`, if it is not `id`.
    fn claimant(
        &self,
        proxy_port: u16,
        id: &ServiceId,
        claimed_now: &BTreeMap<u16, ServiceId>,
    ) -> Option<ServiceId> {
        let other = |o: &&ServiceId| *o != id;
        claimed_now
            .get(&proxy_port)
            .filter(other)
            .or_else(|| self.owners.get(&proxy_port).filter(other))
            .cloned()
    }

    /// Takes `port` out of the path: map entries out, then the listener closed.
    fn leave(&mut self, port: &mut Port, d: &mut Decision) {
        let id = &port.plan.id;
        if !port.mapped.is_empty() {
            d.actions.push(Action::Unmap {
                service: id.clone(),
                addrs: std::mem::take(&mut port.mapped),
            });
        }
        if let Some(p) = port.listening.take() {
            d.actions.push(Action::Close {
                service: id.clone(),
                proxy_port: p,
            });
            if self.owners.get(&p) == Some(id) {
                self.owners.remove(&p);
            }
        }
    }
}

/// Whether some of the port's addresses have no entry yet.
fn missing_entries(port: &Port) -> bool {
    port.mapped.len() != port.plan.cluster_addrs.len()
        || port
            .plan
            .cluster_addrs
            .iter()
            .any(|a| !port.mapped.contains(a))
}

fn feed(port: &mut Port, endpoints: Endpoints, d: &mut Decision) {
    if port.fed[..] != endpoints[..] {
        port.fed = endpoints.clone();
        d.actions.push(Action::Feed {
            service: port.plan.id.clone(),
            endpoints,
        });
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(2);
    const HOLD: Duration = Duration::from_secs(300);
    const REWAKE: Duration = Duration::from_secs(5);

    fn machine() -> Machine {
        Machine::new(Settings {
            grace: GRACE,
            hold_timeout: HOLD,
            rewake: REWAKE,
            proxy_ports: 24000..=27999,
        })
    }

    fn sid(name: &str) -> ServiceId {
        ServiceId {
            namespace: "ns".into(),
            name: name.into(),
            port: 80,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn port(name: &str, ip: &str, proxy_port: u16) -> HeldPort {
        HeldPort {
            id: sid(name),
            cluster_addrs: vec![addr(&format!("{ip}:80"))],
            port_name: "http".into(),
            proxy_port,
            target_missing: false,
            count: false,
            scale_down_pending: false,
            draining: false,
            probe_response: Vec::new(),
        }
    }

    fn pods(n: u8) -> Endpoints {
        (0..n)
            .map(|i| addr(&format!("10.244.1.{}:8080", i + 1)))
            .collect::<Vec<_>>()
            .into()
    }

    struct World {
        observed: Observed,
    }

    impl World {
        fn new(ports: Vec<HeldPort>) -> Self {
            Self {
                observed: Observed {
                    ports,
                    ..Observed::default()
                },
            }
        }
        fn ready(mut self, name: &str, n: u8) -> Self {
            self.observed.ready.insert(sid(name), pods(n));
            self
        }
        fn held(mut self, name: &str, n: usize) -> Self {
            self.observed.held.insert(sid(name), n);
            self
        }
        fn draining(mut self) -> Self {
            self.observed.draining = true;
            self
        }
    }

    fn kinds(d: &Decision) -> Vec<&'static str> {
        d.actions
            .iter()
            .map(|a| match a {
                Action::Listen { .. } => "listen",
                Action::Map { .. } => "map",
                Action::Count { .. } => "count",
                Action::Unmap { .. } => "unmap",
                Action::Clear { .. } => "clear",
                Action::Close { .. } => "close",
                Action::Feed { .. } => "feed",
                Action::Wake { .. } => "wake",
                Action::Fail { .. } => "fail",
                Action::Forget { .. } => "forget",
                Action::Refuse { .. } => "refuse",
            })
            .collect()
    }

    #[test]
    fn a_cold_port_listens_before_it_is_mapped() {
        let mut m = machine();
        let t0 = Instant::now();
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)]).observed,
            t0,
        );
        assert_eq!(kinds(&d), ["listen", "map"]);
        assert_eq!(
            d.actions[1],
            Action::Map {
                service: sid("web"),
                addrs: vec![addr("10.96.0.1:80")],
                proxy_port: 24000,
                count: false,
            }
        );
        // Nothing changes, nothing to do.
        assert!(
            m.decide(
                &World::new(vec![port("web", "10.96.0.1", 24000)]).observed,
                t0
            )
            .actions
            .is_empty()
        );
    }

    #[test]
    fn a_warm_port_seen_first_is_neither_listened_on_nor_mapped() {
        let mut m = machine();
        let w = World::new(vec![port("web", "10.96.0.1", 24000)]).ready("web", 1);
        let d = m.decide(&w.observed, Instant::now());
        assert_eq!(
            kinds(&d),
            ["feed"],
            "no listener: no open proxy for a warm service"
        );
    }

    #[test]
    fn ready_feeds_the_waiters_then_the_grace_ends_unmapped_before_closed() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![port("web", "10.96.0.1", 24000)];
        m.decide(&World::new(p.clone()).held("web", 3).observed, t0);
        let d = m.decide(
            &World::new(p.clone())
                .ready("web", 1)
                .held("web", 3)
                .observed,
            t0,
        );
        assert_eq!(kinds(&d), ["feed"]);
        assert_eq!(d.next, Some(t0 + GRACE), "decide again when the grace ends");
        let d = m.decide(
            &World::new(p.clone()).ready("web", 1).observed,
            t0 + GRACE / 2,
        );
        assert!(d.actions.is_empty(), "still in the grace: still steered");
        let d = m.decide(&World::new(p).ready("web", 1).observed, t0 + GRACE);
        assert_eq!(
            kinds(&d),
            ["unmap", "close"],
            "out of the path, in that order"
        );
    }

    #[test]
    fn endpoints_going_away_holds_again_and_a_flap_in_the_grace_keeps_the_listener() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![port("web", "10.96.0.1", 24000)];
        m.decide(&World::new(p.clone()).ready("web", 1).observed, t0);
        let d = m.decide(&World::new(p.clone()).observed, t0);
        assert_eq!(
            kinds(&d),
            ["listen", "map", "feed"],
            "cold again: held again"
        );
        m.decide(&World::new(p.clone()).ready("web", 1).observed, t0);
        let d = m.decide(
            &World::new(p.clone()).observed,
            t0 + Duration::from_millis(500),
        );
        assert_eq!(
            kinds(&d),
            ["feed"],
            "a readiness flap in the grace only feeds"
        );
        let d = m.decide(
            &World::new(p).ready("web", 2).observed,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(kinds(&d), ["feed"]);
    }

    #[test]
    fn a_moved_proxy_port_rebinds_new_first_and_closes_the_old() {
        let mut m = machine();
        let t0 = Instant::now();
        m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)]).observed,
            t0,
        );
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24001)]).observed,
            t0,
        );
        assert_eq!(kinds(&d), ["listen", "map", "close"]);
        assert_eq!(
            d.actions[2],
            Action::Close {
                service: sid("web"),
                proxy_port: 24000
            }
        );
        // The freed port goes to another tenant: one listener per port, never shared.
        let d = m.decide(
            &World::new(vec![
                port("web", "10.96.0.1", 24001),
                port("api", "10.96.0.2", 24000),
            ])
            .observed,
            t0,
        );
        assert_eq!(kinds(&d), ["listen", "map"]);
        assert_eq!(
            d.actions[0],
            Action::Listen {
                service: sid("api"),
                proxy_port: 24000
            }
        );
    }

    #[test]
    fn a_proxy_port_taken_by_another_service_is_refused_once() {
        let mut m = machine();
        let t0 = Instant::now();
        let both = vec![
            port("web", "10.96.0.1", 24000),
            port("api", "10.96.0.2", 24000),
        ];
        let d = m.decide(&World::new(both.clone()).observed, t0);
        assert_eq!(kinds(&d), ["refuse", "listen", "map"]);
        assert_eq!(
            d.actions[0],
            Action::Refuse {
                service: sid("web"),
                proxy_port: 24000,
                reason: Refusal::PortTaken { by: sid("api") }
            },
            "the first by name wins; the other is refused"
        );
        assert!(
            m.decide(&World::new(both).observed, t0).actions.is_empty(),
            "refused once"
        );
        // The holder keeps it even when a newcomer sorts first.
        let d = m.decide(
            &World::new(vec![
                port("api", "10.96.0.2", 24000),
                port("aaa", "10.96.0.3", 24000),
            ])
            .observed,
            t0,
        );
        assert_eq!(
            d.actions,
            vec![Action::Refuse {
                service: sid("aaa"),
                proxy_port: 24000,
                reason: Refusal::PortTaken { by: sid("api") }
            }]
        );
    }

    #[test]
    fn a_proxy_port_outside_the_range_is_refused() {
        let mut m = machine();
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.1", 9095)]).observed,
            Instant::now(),
        );
        assert_eq!(
            d.actions,
            vec![Action::Refuse {
                service: sid("web"),
                proxy_port: 9095,
                reason: Refusal::OutOfRange
            }],
            "never a listener on, say, the admin port"
        );
    }

    #[test]
    fn a_changed_cluster_ip_is_rekeyed() {
        let mut m = machine();
        let t0 = Instant::now();
        m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)]).observed,
            t0,
        );
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.9", 24000)]).observed,
            t0,
        );
        assert_eq!(
            d.actions,
            vec![
                Action::Unmap {
                    service: sid("web"),
                    addrs: vec![addr("10.96.0.1:80")]
                },
                Action::Map {
                    service: sid("web"),
                    addrs: vec![addr("10.96.0.9:80")],
                    proxy_port: 24000,
                    count: false,
                },
            ]
        );
    }

    #[test]
    fn a_deleted_port_is_taken_out_of_the_path_and_fed_until_its_waiters_are_done() {
        let mut m = machine();
        let t0 = Instant::now();
        m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)])
                .held("web", 2)
                .observed,
            t0,
        );
        let d = m.decide(&World::new(vec![]).held("web", 2).observed, t0);
        assert_eq!(kinds(&d), ["unmap", "close"], "not forgotten while 2 wait");
        assert_eq!(d.next, Some(t0 + HOLD));
        // The operator's cleanup scales the target up: the waiters are fed.
        let d = m.decide(
            &World::new(vec![]).held("web", 2).ready("web", 1).observed,
            t0,
        );
        assert_eq!(kinds(&d), ["feed"]);
        let d = m.decide(&World::new(vec![]).ready("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["forget"], "answered: forgotten");
    }

    #[test]
    fn a_deleted_port_whose_waiters_never_finish_is_forgotten_at_the_deadline() {
        let mut m = machine();
        let t0 = Instant::now();
        m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)])
                .held("web", 1)
                .observed,
            t0,
        );
        m.decide(&World::new(vec![]).held("web", 1).observed, t0);
        let d = m.decide(&World::new(vec![]).held("web", 1).observed, t0 + HOLD);
        assert_eq!(kinds(&d), ["forget"]);
    }

    #[test]
    fn a_missing_target_is_not_held_and_its_waiters_are_answered_at_once() {
        let mut m = machine();
        let t0 = Instant::now();
        let mut p = port("web", "10.96.0.1", 24000);
        let d = m.decide(&World::new(vec![p.clone()]).held("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map", "wake"]);
        p.target_missing = true;
        let d = m.decide(&World::new(vec![p.clone()]).held("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["refuse", "unmap", "close", "fail", "forget"]);
        let d = m.decide(&World::new(vec![p]).observed, t0);
        assert!(d.actions.is_empty(), "not held while the target is missing");
    }

    #[test]
    fn one_wake_per_cold_period_and_again_every_rewake_while_waiting() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![port("web", "10.96.0.1", 24000)];
        let d = m.decide(&World::new(p.clone()).observed, t0);
        assert!(!kinds(&d).contains(&"wake"), "nothing waits: no wake");
        let d = m.decide(&World::new(p.clone()).held("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["wake"]);
        assert_eq!(d.next, Some(t0 + REWAKE));
        let d = m.decide(
            &World::new(p.clone()).held("web", 40).observed,
            t0 + Duration::from_secs(1),
        );
        assert!(d.actions.is_empty(), "more waiters are not more wakes");
        let d = m.decide(&World::new(p.clone()).held("web", 40).observed, t0 + REWAKE);
        assert_eq!(
            kinds(&d),
            ["wake"],
            "still waiting, still not Ready: wake again"
        );
        // Served, then cold again: the new cold period wakes at once.
        m.decide(&World::new(p.clone()).ready("web", 1).observed, t0 + REWAKE);
        m.decide(
            &World::new(p.clone()).ready("web", 1).observed,
            t0 + REWAKE + GRACE,
        );
        m.decide(&World::new(p.clone()).observed, t0 + REWAKE + GRACE);
        let d = m.decide(&World::new(p).held("web", 1).observed, t0 + REWAKE + GRACE);
        assert_eq!(kinds(&d), ["wake"]);
    }

    #[test]
    fn draining_takes_everything_out_of_the_path_and_finishes_when_nothing_waits() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![
            port("web", "10.96.0.1", 24000),
            port("api", "10.96.0.2", 24001),
        ];
        m.decide(&World::new(p.clone()).held("web", 1).observed, t0);
        let d = m.decide(
            &World::new(p.clone()).held("web", 1).draining().observed,
            t0,
        );
        assert_eq!(kinds(&d), ["unmap", "close", "forget", "unmap", "close"]);
        assert!(!d.finished, "web still holds one");
        let d = m.decide(
            &World::new(p.clone())
                .held("web", 1)
                .ready("web", 1)
                .draining()
                .observed,
            t0,
        );
        assert_eq!(kinds(&d), ["feed"]);
        let d = m.decide(&World::new(p).draining().observed, t0);
        assert_eq!(kinds(&d), ["forget"]);
        assert!(d.finished);
    }

    #[test]
    fn a_listener_that_failed_to_open_is_tried_again_and_never_mapped_meanwhile() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![port("web", "10.96.0.1", 24000)];
        m.decide(&World::new(p.clone()).observed, t0);
        m.listen_failed(&sid("web"));
        let d = m.decide(&World::new(p).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map"], "both again, in order");
    }

    #[test]
    fn map_entries_left_by_a_crashed_agent_are_removed_unless_claimed() {
        let mut m = machine();
        m.adopt([addr("10.96.0.1:80"), addr("10.96.0.7:80")]);
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)]).observed,
            Instant::now(),
        );
        assert_eq!(kinds(&d), ["listen", "map", "clear"]);
        assert_eq!(
            d.actions[2],
            Action::Clear {
                addrs: vec![addr("10.96.0.7:80")]
            }
        );
    }

    fn pending(mut p: HeldPort) -> HeldPort {
        p.scale_down_pending = true;
        p
    }

    fn counted(mut p: HeldPort) -> HeldPort {
        p.count = true;
        p
    }

    #[test]
    fn a_pending_scale_down_intercepts_while_pods_are_ready_and_holds_once_they_are_gone() {
        let mut m = machine();
        let t0 = Instant::now();
        let warm = vec![port("web", "10.96.0.1", 24000)];
        m.decide(&World::new(warm.clone()).ready("web", 2).observed, t0);
        // The operator decides to scale down: intercept before any pod goes.
        let going = vec![pending(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(going.clone()).ready("web", 2).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map"], "steered while pods are Ready");
        // Intercepting has no end of its own: no grace runs out.
        let d = m.decide(
            &World::new(going.clone()).ready("web", 2).observed,
            t0 + GRACE * 10,
        );
        assert!(d.actions.is_empty(), "{d:?}");
        // One pod goes: the remaining one is fed; still steered.
        let d = m.decide(&World::new(going.clone()).ready("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["feed"]);
        // All gone: holding as usual, and a waiter wakes the operator (which abandons the
        // scale-down).
        let d = m.decide(&World::new(going.clone()).held("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["feed", "wake"]);
    }

    fn draining(p: HeldPort) -> HeldPort {
        let mut p = pending(p);
        p.draining = true;
        p
    }

    /// Issue 14 item 8: the drain takes the pods out of the Service's slices while they
    /// still run; an intercepting agent goes on forwarding to them (no hold, no wake), and
    /// holds only once `/scale` has gone to 0 (the operator says `ScalingDown`).
    #[test]
    fn a_drained_service_is_still_forwarded_to_the_pods_last_fed_until_the_scale_down() {
        let mut m = machine();
        let t0 = Instant::now();
        let going = vec![pending(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(going).ready("web", 2).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map", "feed"]);
        let fed = d.actions.iter().find_map(|a| match a {
            Action::Feed { endpoints, .. } => Some(endpoints.clone()),
            _ => None,
        });
        // Drained: no pod in the slices, requests waiting; nothing changes for them.
        let drained = vec![draining(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(drained.clone()).held("web", 3).observed, t0);
        assert!(d.actions.is_empty(), "still fed, not held: {d:?}");
        assert_eq!(
            m.ports.get(&sid("web")).map(|p| p.fed.clone()),
            fed,
            "the pods last fed"
        );
        // `/scale` went to 0: the pods are going, so the waiters are held and wake.
        let down = vec![pending(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(down).held("web", 3).observed, t0);
        assert_eq!(kinds(&d), ["feed", "wake"]);
        // A port first seen drained (an agent started mid-drain) has nothing to feed: it
        // holds and wakes, which abandons the scale-down.
        let mut fresh = machine();
        let d = fresh.decide(&World::new(drained).held("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map", "wake"]);
    }

    #[test]
    fn an_abandoned_scale_down_hands_back_after_the_grace() {
        let mut m = machine();
        let t0 = Instant::now();
        let going = vec![pending(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(going).ready("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map", "feed"], "first seen pending");
        let warm = vec![port("web", "10.96.0.1", 24000)];
        let d = m.decide(&World::new(warm.clone()).ready("web", 1).observed, t0);
        assert!(d.actions.is_empty(), "still steered in the grace");
        assert_eq!(d.next, Some(t0 + GRACE));
        let d = m.decide(&World::new(warm).ready("web", 1).observed, t0 + GRACE);
        assert_eq!(kinds(&d), ["unmap", "close"]);
    }

    #[test]
    fn a_counted_warm_port_gets_count_only_entries_and_no_listener() {
        let mut m = machine();
        let p = vec![counted(port("web", "10.96.0.1", 24000))];
        let d = m.decide(
            &World::new(p.clone()).ready("web", 1).observed,
            Instant::now(),
        );
        assert_eq!(kinds(&d), ["count", "feed"]);
        assert_eq!(
            d.actions[0],
            Action::Count {
                service: sid("web"),
                addrs: vec![addr("10.96.0.1:80")]
            }
        );
        assert!(
            m.decide(&World::new(p).ready("web", 1).observed, Instant::now())
                .actions
                .is_empty()
        );
    }

    #[test]
    fn a_counted_port_switches_between_steering_and_counting_in_place() {
        let mut m = machine();
        let t0 = Instant::now();
        let p = vec![counted(port("web", "10.96.0.1", 24000))];
        let d = m.decide(&World::new(p.clone()).ready("web", 1).observed, t0);
        assert_eq!(kinds(&d), ["count", "feed"]);
        // Cold: the count-only entries are overwritten by counted steering ones (no unmap
        // in between: no connect goes uncounted).
        let d = m.decide(&World::new(p.clone()).observed, t0);
        assert_eq!(kinds(&d), ["listen", "map", "feed"]);
        assert_eq!(
            d.actions[1],
            Action::Map {
                service: sid("web"),
                addrs: vec![addr("10.96.0.1:80")],
                proxy_port: 24000,
                count: true,
            }
        );
        m.decide(&World::new(p.clone()).ready("web", 1).observed, t0);
        // Warm again after the grace: count-only in place, then the listener closes.
        let d = m.decide(&World::new(p).ready("web", 1).observed, t0 + GRACE);
        assert_eq!(kinds(&d), ["count", "close"]);
    }

    #[test]
    fn a_port_that_stops_being_counted_loses_its_count_only_entries() {
        let mut m = machine();
        let t0 = Instant::now();
        m.decide(
            &World::new(vec![counted(port("web", "10.96.0.1", 24000))])
                .ready("web", 1)
                .observed,
            t0,
        );
        let d = m.decide(
            &World::new(vec![port("web", "10.96.0.1", 24000)])
                .ready("web", 1)
                .observed,
            t0,
        );
        assert_eq!(kinds(&d), ["unmap"]);
        // And a deleted counted port is taken out of the map too.
        m.decide(
            &World::new(vec![counted(port("web", "10.96.0.1", 24000))])
                .ready("web", 1)
                .observed,
            t0,
        );
        let d = m.decide(&World::new(vec![]).observed, t0);
        assert_eq!(kinds(&d), ["unmap", "forget"]);
    }
}
