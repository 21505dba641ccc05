//! Proxy-port allocation. Pure: the book is rebuilt from a fresh list of the
//! ElastiServices' `status.proxyPorts` when this replica starts leading, and then only
//! this replica allocates, so allocations are unique cluster-wide and stable across
//! restarts.
//!
//! A freed port is not handed out again at once: an agent that has not seen the release
//! yet may still serve it for the old tenant. It is quarantined for a while, and new ports
//! are taken next-fit (after the last one handed out, wrapping around), so a freed port
//! comes back last.
use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
    time::Duration,
};

use elasti_api::ProxyPort;
use jiff::Timestamp;

/// An ElastiService, by namespace and name.
pub type Owner = (String, String);

/// One TCP port of a Service that needs a proxy port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name ("" for a single unnamed port).
    pub name: String,
    pub port: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Every port of the range is allocated or quarantined.
    #[error("proxy-port range {first}-{last} is exhausted")]
    Exhausted { first: u16, last: u16 },
}

/// Who holds which proxy port.
#[derive(Debug)]
pub struct PortBook {
    range: RangeInclusive<u16>,
    quarantine: Duration,
    by_owner: BTreeMap<Owner, Vec<ProxyPort>>,
    used: BTreeSet<i32>,
    /// Freed ports, and until when they stay unused.
    freed: BTreeMap<i32, Timestamp>,
    /// The last port handed out; the next search starts after it.
    last: i32,
}

impl PortBook {
    pub fn new(range: RangeInclusive<u16>, quarantine: Duration) -> Self {
        let last = i32::from(*range.start()) - 1;
        Self {
            range,
            quarantine,
            by_owner: BTreeMap::new(),
            used: BTreeSet::new(),
            freed: BTreeMap::new(),
            last,
        }
    }

    /// A book holding what the statuses record. Should two owners claim one port (which
    /// only a second operator writing concurrently could cause), the first in name order
    /// keeps it and the other is given a new one on its next reconcile. The search for new
    /// ports starts after the highest one held.
    pub fn from_statuses<'a>(
        range: RangeInclusive<u16>,
        quarantine: Duration,
        statuses: impl IntoIterator<Item = (Owner, &'a [ProxyPort])>,
    ) -> Self {
        let mut book = Self::new(range, quarantine);
        let mut sorted: Vec<_> = statuses.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (owner, ports) in sorted {
            let kept: Vec<ProxyPort> = ports
                .iter()
                .filter(|p| book.in_range(p.proxy_port) && book.used.insert(p.proxy_port))
                .cloned()
                .collect();
            if !kept.is_empty() {
                book.by_owner.insert(owner, kept);
            }
        }
        if let Some(max) = book.used.last() {
            book.last = *max;
        }
        book
    }

    fn in_range(&self, port: i32) -> bool {
        u16::try_from(port).is_ok_and(|p| self.range.contains(&p))
    }

    /// The next free port after the last one handed out, skipping `taken` and ports still
    /// in quarantine at `now`.
    fn next_free(&self, taken: &[i32], now: Timestamp) -> Option<i32> {
        let (first, end) = (i32::from(*self.range.start()), i32::from(*self.range.end()));
        let after = (self.last + 1..=end).chain(first..=self.last.min(end));
        after.into_iter().find(|p| {
            !self.used.contains(p)
                && !taken.contains(p)
                && self.freed.get(p).is_none_or(|until| *until <= now)
        })
    }

    /// The proxy ports for `owner`'s Service ports at `now`: a port it already holds for
    /// the same (name, port) is kept; new ones get the next free port; ports of Service
    /// ports that are gone are released. On exhaustion nothing changes.
    pub fn allocate(
        &mut self,
        owner: &Owner,
        service_ports: &[ServicePort],
        now: Timestamp,
    ) -> Result<Vec<ProxyPort>, Error> {
        self.freed.retain(|_, until| *until > now);
        let held = self.by_owner.get(owner).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(service_ports.len());
        let mut taken: Vec<i32> = Vec::new();
        for sp in service_ports {
            let proxy_port = match held.iter().find(|p| p.name == sp.name && p.port == sp.port) {
                Some(p) => p.proxy_port,
                None => {
                    let Some(free) = self.next_free(&taken, now) else {
                        return Err(Error::Exhausted {
                            first: *self.range.start(),
                            last: *self.range.end(),
                        });
                    };
                    taken.push(free);
                    free
                }
            };
            out.push(ProxyPort {
                name: sp.name.clone(),
                port: sp.port,
                protocol: "TCP".into(),
                proxy_port,
            });
        }
        if let Some(l) = taken.last() {
            self.last = *l;
        }
        let kept: BTreeSet<i32> = out.iter().map(|p| p.proxy_port).collect();
        for p in held.iter().filter(|p| !kept.contains(&p.proxy_port)) {
            self.used.remove(&p.proxy_port);
            self.freed.insert(p.proxy_port, now + self.quarantine);
        }
        self.by_owner.remove(owner);
        self.used.extend(kept);
        if !out.is_empty() {
            self.by_owner.insert(owner.clone(), out.clone());
        }
        Ok(out)
    }

    /// Frees every port `owner` holds (its ElastiService is gone), into quarantine.
    pub fn release(&mut self, owner: &Owner, now: Timestamp) {
        if let Some(ports) = self.by_owner.remove(owner) {
            for p in ports {
                self.used.remove(&p.proxy_port);
                self.freed.insert(p.proxy_port, now + self.quarantine);
            }
        }
    }

    /// How many proxy ports are allocated.
    pub fn allocated(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(120);

    fn owner(n: &str) -> Owner {
        ("ns".into(), n.into())
    }

    fn sp(name: &str, port: i32) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ports(p: &[ProxyPort]) -> Vec<i32> {
        p.iter().map(|p| p.proxy_port).collect()
    }

    #[test]
    fn allocations_are_unique_and_stable() {
        let mut book = PortBook::new(24000..=24009, Q);
        let a = book
            .allocate(&owner("a"), &[sp("http", 80), sp("grpc", 9000)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ports(&a), [24000, 24001]);
        let b = book
            .allocate(&owner("b"), &[sp("", 80)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b[0].proxy_port, 24002);
        // Again, with a port added: the existing ones stay.
        let a2 = book
            .allocate(
                &owner("a"),
                &[sp("grpc", 9000), sp("http", 80), sp("x", 1)],
                at(0),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ports(&a2), [24001, 24000, 24003]);
        assert_eq!(book.allocated(), 4);
    }

    /// Issue 14 item 7: a stale agent may still serve a freed port for a while; another
    /// tenant must not be handed it at once.
    #[test]
    fn a_freed_port_is_quarantined_before_another_tenant_gets_it() {
        let mut book = PortBook::new(24000..=24001, Q);
        book.allocate(&owner("a"), &[sp("http", 80)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        book.release(&owner("a"), at(1));
        let b = book
            .allocate(&owner("b"), &[sp("", 80)], at(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(b[0].proxy_port, 24000, "handed to b at once");
        // The range holds nothing else: c waits for the quarantine to end.
        assert!(book.allocate(&owner("c"), &[sp("", 80)], at(100)).is_err());
        let c = book
            .allocate(&owner("c"), &[sp("", 80)], at(122))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c[0].proxy_port, 24000);
    }

    #[test]
    fn a_removed_service_port_is_quarantined_too_and_next_fit_wraps() {
        let mut book = PortBook::new(24000..=24003, Q);
        book.allocate(&owner("a"), &[sp("http", 80), sp("grpc", 9000)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        book.allocate(&owner("a"), &[sp("grpc", 9000)], at(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let b = book
            .allocate(&owner("b"), &[sp("", 80), sp("x", 1)], at(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ports(&b), [24002, 24003]);
        assert_eq!(book.allocated(), 3);
        book.release(&owner("b"), at(3));
        let c = book
            .allocate(&owner("c"), &[sp("", 80)], at(200))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c[0].proxy_port, 24000,
            "wrapped around to the oldest free port"
        );
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let mut book = PortBook::new(24000..=24001, Q);
        book.allocate(&owner("a"), &[sp("", 80)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = book.allocate(&owner("b"), &[sp("a", 1), sp("b", 2)], at(0));
        assert_eq!(
            err,
            Err(Error::Exhausted {
                first: 24000,
                last: 24001
            })
        );
        assert_eq!(book.allocated(), 1);
    }

    #[test]
    fn rebuilt_from_statuses_keeps_allocations_and_resolves_conflicts() {
        let a = vec![ProxyPort {
            name: "".into(),
            port: 80,
            protocol: "TCP".into(),
            proxy_port: 24005,
        }];
        let b = a.clone();
        let mut book = PortBook::from_statuses(
            24000..=24009,
            Q,
            [(owner("b"), &b[..]), (owner("a"), &a[..])],
        );
        let again = book
            .allocate(&owner("a"), &[sp("", 80)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again[0].proxy_port, 24005, "a is first in name order");
        let moved = book
            .allocate(&owner("b"), &[sp("", 80)], at(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            moved[0].proxy_port, 24006,
            "b's duplicate is reallocated after the highest held"
        );
    }
}
