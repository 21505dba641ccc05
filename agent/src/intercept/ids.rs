//! Numeric ids for held ports, used as the index of the eBPF per-CPU rewrite counters.
//! Pure. Freed ids are reused, so indexes stay below the map's size.
use std::collections::{BTreeSet, HashMap};

use elasti_common::MAX_SERVICES;

use crate::hold::ServiceId;

#[derive(Debug, Default)]
pub struct IdAllocator {
    ids: HashMap<ServiceId, u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl IdAllocator {
    /// The id of `service`, allocating the lowest free one; `None` when all
    /// [`MAX_SERVICES`] are in use.
    pub fn get_or_allocate(&mut self, service: &ServiceId) -> Option<u32> {
        if let Some(id) = self.ids.get(service) {
            return Some(*id);
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None if self.next < MAX_SERVICES => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.ids.insert(service.clone(), id);
        Some(id)
    }

    pub fn release(&mut self, service: &ServiceId) {
        if let Some(id) = self.ids.remove(service) {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(name: &str) -> ServiceId {
        ServiceId {
            namespace: "ns".into(),
            name: name.into(),
            port: 80,
        }
    }

    #[test]
    fn ids_are_stable_and_reused_after_release() {
        let mut a = IdAllocator::default();
        assert_eq!(a.get_or_allocate(&sid("a")), Some(0));
        assert_eq!(a.get_or_allocate(&sid("b")), Some(1));
        assert_eq!(a.get_or_allocate(&sid("a")), Some(0), "stable");
        a.release(&sid("a"));
        assert_eq!(
            a.get_or_allocate(&sid("c")),
            Some(0),
            "lowest free id reused"
        );
        assert_eq!(a.get_or_allocate(&sid("d")), Some(2));
    }
}
