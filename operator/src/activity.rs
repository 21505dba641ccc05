//! The agents' reports (`POST /v1/report`, `elasti_api::report`), kept per agent, and what
//! they say about a Service: whether it was active (the `activity` trigger) and whether
//! every Ready agent steers it (the two-phase scale-down). Pure: the report endpoint
//! records, the reconcile reads; time is passed in.
//!
//! **Activity.** A report shows activity for a Service when its agent's `connects` grew
//! since that agent's previous report, when the agent is new (a first report, or a new
//! incarnation after a restart) with `connects > 0`, or when `open > 0`. An agent is keyed
//! by node *and* incarnation: during a rolling update two agents report for one node, and
//! their counters must not be compared with each other. A connection that stays open
//! keeps the Service active for as long as its agent reports it open.
//!
//! **Nothing known is not idle.** The book starts empty when this replica starts leading;
//! quiet time counts from then, and a Ready agent that has not reported (or whose report
//! expired) makes the reading unknown, which never scales anything down.
use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use elasti_api::report::{AgentReport, EXPIRY, ServiceReport};

/// A Service, by namespace and name.
pub type ServiceKey = (String, String);

/// One agent's latest report.
#[derive(Debug)]
struct Agent {
    received: Instant,
    services: HashMap<ServiceKey, ServiceReport>,
}

/// The latest report of every agent, and when each Service was last active.
#[derive(Debug)]
pub struct Reports {
    /// When this book started: nothing is known before.
    since: Instant,
    agents: HashMap<(String, String), Agent>,
    last_active: HashMap<ServiceKey, Instant>,
}

/// What the reports say about a Service's activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Connections are open now, on these nodes.
    Open(Vec<String>),
    /// No connection open; the last activity (or the book's start) was this long ago.
    Quiet(Duration),
    /// A Ready agent has no live report: nothing can be said.
    Unknown(String),
}

impl Reports {
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            agents: HashMap::new(),
            last_active: HashMap::new(),
        }
    }

    /// Keeps `report` as its agent's latest. Returns the Services whose reading may have
    /// changed a decision: activity that starts (after quiet), and interception that
    /// changed.
    pub fn record(&mut self, report: AgentReport, now: Instant) -> BTreeSet<ServiceKey> {
        self.expire(now);
        let key = (report.node.clone(), report.incarnation.clone());
        let previous = self.agents.remove(&key);
        let mut changed = BTreeSet::new();
        let mut services = HashMap::with_capacity(report.services.len());
        for s in report.services {
            let id = (s.namespace.clone(), s.service.clone());
            let before = previous.as_ref().and_then(|p| p.services.get(&id));
            let grew = match before {
                Some(b) => s.connects > b.connects,
                None => s.connects > 0,
            };
            if grew || s.open > 0 {
                let was_quiet = self
                    .last_active
                    .get(&id)
                    .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(1));
                if was_quiet {
                    changed.insert(id.clone());
                }
                self.last_active.insert(id.clone(), now);
            }
            if before.map(|b| b.intercepting) != Some(s.intercepting) {
                changed.insert(id.clone());
            }
            services.insert(id, s);
        }
        // A Service that left the report stopped being intercepted there.
        for (id, b) in previous.iter().flat_map(|p| p.services.iter()) {
            if b.intercepting && !services.contains_key(id) {
                changed.insert(id.clone());
            }
        }
        self.agents.insert(
            key,
            Agent {
                received: now,
                services,
            },
        );
        changed
    }

    /// Forgets agents that have not reported for [`EXPIRY`].
    pub fn expire(&mut self, now: Instant) {
        self.agents
            .retain(|_, a| now.duration_since(a.received) <= EXPIRY);
    }

    fn live<'a>(&'a self, node: &'a str, now: Instant) -> impl Iterator<Item = &'a Agent> + 'a {
        self.agents
            .iter()
            .filter(move |((n, _), a)| n == node && now.duration_since(a.received) <= EXPIRY)
            .map(|(_, a)| a)
    }

    /// The activity of `service`, given the nodes of the Ready agents.
    pub fn activity(&self, service: &ServiceKey, ready_nodes: &[String], now: Instant) -> Activity {
        let silent: Vec<&str> = ready_nodes
            .iter()
            .map(String::as_str)
            .filter(|n| self.live(n, now).next().is_none())
            .collect();
        if !silent.is_empty() {
            return Activity::Unknown(format!(
                "no report for {}s from the agent on {}",
                EXPIRY.as_secs(),
                silent.join(", ")
            ));
        }
        let mut open: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| now.duration_since(a.received) <= EXPIRY)
            .filter(|(_, a)| a.services.get(service).is_some_and(|s| s.open > 0))
            .map(|((node, _), _)| node.clone())
            .collect();
        if !open.is_empty() {
            open.sort();
            open.dedup();
            return Activity::Open(open);
        }
        let last = self
            .last_active
            .get(service)
            .copied()
            .map_or(self.since, |t| t.max(self.since));
        Activity::Quiet(now.duration_since(last))
    }

    /// The nodes among `ready_nodes` whose agent does not report steering `service` now.
    pub fn not_intercepting(
        &self,
        service: &ServiceKey,
        ready_nodes: &[String],
        now: Instant,
    ) -> Vec<String> {
        ready_nodes
            .iter()
            .filter(|n| {
                !self
                    .live(n, now)
                    .any(|a| a.services.get(service).is_some_and(|s| s.intercepting))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, inc: &str, connects: u64, open: u64, intercepting: bool) -> AgentReport {
        AgentReport {
            node: node.into(),
            incarnation: inc.into(),
            services: vec![ServiceReport {
                namespace: "ns".into(),
                service: "web".into(),
                connects,
                open,
                intercepting,
            }],
        }
    }

    fn web() -> ServiceKey {
        ("ns".into(), "web".into())
    }

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn growing_connects_are_activity_and_a_steady_count_is_quiet() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut book = Reports::new(t0);
        let ready = nodes(&["n1"]);
        assert!(
            book.record(report("n1", "a", 5, 0, false), s(1))
                .contains(&web())
        );
        assert_eq!(
            book.activity(&web(), &ready, s(1)),
            Activity::Quiet(Duration::ZERO)
        );
        book.record(report("n1", "a", 5, 0, false), s(11));
        assert_eq!(
            book.activity(&web(), &ready, s(21)),
            Activity::Quiet(Duration::from_secs(20)),
            "counted from the last growth"
        );
        book.record(report("n1", "a", 6, 0, false), s(25));
        assert_eq!(
            book.activity(&web(), &ready, s(26)),
            Activity::Quiet(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_connection_that_stays_open_keeps_the_service_active() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut book = Reports::new(t0);
        let ready = nodes(&["n1", "n2"]);
        // One websocket opened at 1 s, still open, counters steady; n2 has nothing.
        book.record(report("n1", "a", 1, 1, false), s(1));
        book.record(report("n2", "b", 0, 0, false), s(1));
        for t in (11..=601).step_by(10) {
            book.record(report("n1", "a", 1, 1, false), s(t));
            book.record(report("n2", "b", 0, 0, false), s(t));
            assert_eq!(
                book.activity(&web(), &ready, s(t)),
                Activity::Open(nodes(&["n1"])),
                "at {t}s"
            );
        }
        // Closed: quiet from the last report that saw it open.
        book.record(report("n1", "a", 1, 0, false), s(611));
        assert_eq!(
            book.activity(&web(), &ready, s(641)),
            Activity::Unknown("no report for 30s from the agent on n2".into()),
            "n2's report expired"
        );
        book.record(report("n2", "b", 0, 0, false), s(641));
        book.record(report("n1", "a", 1, 0, false), s(641));
        assert_eq!(
            book.activity(&web(), &ready, s(641)),
            Activity::Quiet(Duration::from_secs(40))
        );
    }

    #[test]
    fn a_restarted_agent_is_new_and_two_agents_on_one_node_are_not_compared() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut book = Reports::new(t0);
        let ready = nodes(&["n1"]);
        for t in [1, 10, 20, 30, 40, 50] {
            book.record(report("n1", "old", 100, 0, false), s(t));
        }
        assert_eq!(
            book.activity(&web(), &ready, s(50)),
            Activity::Quiet(Duration::from_secs(49))
        );
        // A rolling update: the new agent starts from zero with 2 connects of its own; the
        // old one goes on reporting 100. Neither reads as the other going backwards.
        book.record(report("n1", "new", 2, 0, false), s(51));
        assert_eq!(
            book.activity(&web(), &ready, s(51)),
            Activity::Quiet(Duration::ZERO)
        );
        book.record(report("n1", "old", 100, 0, false), s(60));
        book.record(report("n1", "new", 2, 0, false), s(60));
        assert_eq!(
            book.activity(&web(), &ready, s(60)),
            Activity::Quiet(Duration::from_secs(9))
        );
        // A new incarnation that has seen nothing is no activity.
        book.record(report("n1", "newer", 0, 0, false), s(70));
        assert_eq!(
            book.activity(&web(), &ready, s(70)),
            Activity::Quiet(Duration::from_secs(19))
        );
    }

    #[test]
    fn quiet_time_counts_from_the_books_start_and_a_silent_agent_is_unknown() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let book = Reports::new(t0);
        assert!(matches!(
            book.activity(&web(), &nodes(&["n1"]), s(5)),
            Activity::Unknown(_)
        ));
        assert_eq!(
            book.activity(&web(), &[], s(5)),
            Activity::Quiet(Duration::from_secs(5))
        );
    }

    #[test]
    fn interception_needs_every_ready_agent_and_changes_are_reported() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut book = Reports::new(t0);
        let ready = nodes(&["n1", "n2"]);
        book.record(report("n1", "a", 0, 0, false), s(1));
        assert_eq!(
            book.not_intercepting(&web(), &ready, s(1)),
            nodes(&["n1", "n2"])
        );
        assert!(
            book.record(report("n1", "a", 0, 0, true), s(2))
                .contains(&web())
        );
        assert!(
            !book
                .record(report("n1", "a", 0, 0, true), s(3))
                .contains(&web()),
            "no change"
        );
        book.record(report("n2", "b", 0, 0, true), s(3));
        assert!(book.not_intercepting(&web(), &ready, s(3)).is_empty());
        // A report that no longer lists the Service: it is not steered there any more.
        let empty = AgentReport {
            node: "n2".into(),
            incarnation: "b".into(),
            services: vec![],
        };
        assert!(book.record(empty, s(4)).contains(&web()));
        assert_eq!(book.not_intercepting(&web(), &ready, s(4)), nodes(&["n2"]));
        // Expired reports do not count.
        assert_eq!(book.not_intercepting(&web(), &ready, s(40)), ready);
    }
}
