//! Proxy-port allocation (design §2.5). Pure: the book is rebuilt from the ElastiServices'
//! `status.proxyPorts` when this replica starts leading, and then only this replica
//! allocates, so allocations are unique cluster-wide and stable across restarts.
use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
};

use elasti_api::ProxyPort;

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
    /// Every port of the range is allocated.
    #[error("proxy-port range {first}-{last} is exhausted")]
    Exhausted { first: u16, last: u16 },
}

/// Who holds which proxy port.
#[derive(Debug)]
pub struct PortBook {
    range: RangeInclusive<u16>,
    by_owner: BTreeMap<Owner, Vec<ProxyPort>>,
    used: BTreeSet<i32>,
}

impl PortBook {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            by_owner: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// A book holding what the statuses record. Should two owners claim one port (which
    /// only a second operator writing concurrently could cause), the first in name order
    /// keeps it and the other is given a new one on its next reconcile.
    pub fn from_statuses<'a>(
        range: RangeInclusive<u16>,
        statuses: impl IntoIterator<Item = (Owner, &'a [ProxyPort])>,
    ) -> Self {
        let mut book = Self::new(range);
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
        book
    }

    fn in_range(&self, port: i32) -> bool {
        u16::try_from(port).is_ok_and(|p| self.range.contains(&p))
    }

    /// The proxy ports for `owner`'s Service ports: a port it already holds for the same
    /// (name, port) is kept; new ones get the lowest free port; ports of Service ports
    /// that are gone are released. On exhaustion nothing changes.
    pub fn allocate(
        &mut self,
        owner: &Owner,
        service_ports: &[ServicePort],
    ) -> Result<Vec<ProxyPort>, Error> {
        let held = self.by_owner.get(owner).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(service_ports.len());
        let mut taken: Vec<i32> = Vec::new();
        for sp in service_ports {
            let proxy_port = match held.iter().find(|p| p.name == sp.name && p.port == sp.port) {
                Some(p) => p.proxy_port,
                None => {
                    let free = self
                        .range
                        .clone()
                        .map(i32::from)
                        .find(|p| !self.used.contains(p) && !taken.contains(p));
                    let Some(free) = free else {
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
        self.release(owner);
        self.used.extend(out.iter().map(|p| p.proxy_port));
        if !out.is_empty() {
            self.by_owner.insert(owner.clone(), out.clone());
        }
        Ok(out)
    }

    /// Frees every port `owner` holds (its ElastiService is gone).
    pub fn release(&mut self, owner: &Owner) {
        if let Some(ports) = self.by_owner.remove(owner) {
            for p in ports {
                self.used.remove(&p.proxy_port);
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

    fn owner(n: &str) -> Owner {
        ("ns".into(), n.into())
    }

    fn sp(name: &str, port: i32) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
        }
    }

    #[test]
    fn allocations_are_unique_and_stable() {
        let mut book = PortBook::new(24000..=24009);
        let a = book
            .allocate(&owner("a"), &[sp("http", 80), sp("grpc", 9000)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.iter().map(|p| p.proxy_port).collect::<Vec<_>>(),
            [24000, 24001]
        );
        let b = book
            .allocate(&owner("b"), &[sp("", 80)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b[0].proxy_port, 24002);
        // Again, with a port added: the existing ones stay.
        let a2 = book
            .allocate(&owner("a"), &[sp("grpc", 9000), sp("http", 80), sp("x", 1)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a2.iter().map(|p| p.proxy_port).collect::<Vec<_>>(),
            [24001, 24000, 24003]
        );
        assert_eq!(book.allocated(), 4);
    }

    #[test]
    fn a_removed_service_port_is_released_and_reused() {
        let mut book = PortBook::new(24000..=24009);
        book.allocate(&owner("a"), &[sp("http", 80), sp("grpc", 9000)])
            .unwrap_or_else(|e| panic!("{e}"));
        book.allocate(&owner("a"), &[sp("grpc", 9000)])
            .unwrap_or_else(|e| panic!("{e}"));
        let b = book
            .allocate(&owner("b"), &[sp("", 80)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b[0].proxy_port, 24000);
        book.release(&owner("a"));
        assert_eq!(book.allocated(), 1);
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let mut book = PortBook::new(24000..=24001);
        book.allocate(&owner("a"), &[sp("", 80)])
            .unwrap_or_else(|e| panic!("{e}"));
        let err = book.allocate(&owner("b"), &[sp("a", 1), sp("b", 2)]);
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
        let mut book =
            PortBook::from_statuses(24000..=24009, [(owner("b"), &b[..]), (owner("a"), &a[..])]);
        let again = book
            .allocate(&owner("a"), &[sp("", 80)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again[0].proxy_port, 24005, "a is first in name order");
        let moved = book
            .allocate(&owner("b"), &[sp("", 80)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(moved[0].proxy_port, 24000, "b's duplicate is reallocated");
    }
}
