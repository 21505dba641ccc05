//! What the supervisor keeps for its worker, across the worker's crashes: the listening
//! sockets and the accepted connections the worker has not read yet. Pure bookkeeping over
//! descriptors; [`super::run`] does the talking.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
};

/// The supervisor's descriptors.
#[derive(Debug, Default)]
pub struct Keeper {
    /// One listening socket per proxy port (the worker has a duplicate of each).
    listeners: BTreeMap<u16, OwnedFd>,
    /// Listeners the current worker asked for since it started.
    requested: BTreeSet<u16>,
    /// Accepted, unread connections, by the worker's id, with the port they came in on.
    kept: BTreeMap<u64, (u16, OwnedFd)>,
    /// Ids handed back to the current worker (it releases them like its own).
    resumed: BTreeSet<u64>,
}

impl Keeper {
    /// A new worker starts: nothing is requested by it yet.
    pub fn worker_started(&mut self) {
        self.requested.clear();
        self.resumed.clear();
    }

    /// The listener of `port`, if the supervisor has one already (kept from a crashed
    /// worker, or asked for twice).
    pub fn listener(&mut self, port: u16) -> Option<&OwnedFd> {
        self.requested.insert(port);
        self.listeners.get(&port)
    }

    /// Keeps a listener the supervisor just opened.
    pub fn add_listener(&mut self, port: u16, fd: OwnedFd) {
        self.requested.insert(port);
        self.listeners.insert(port, fd);
    }

    /// The worker closed `port`.
    pub fn close(&mut self, port: u16) {
        self.requested.remove(&port);
        self.listeners.remove(&port);
    }

    pub fn keep(&mut self, id: u64, port: u16, fd: OwnedFd) {
        self.kept.insert(id, (port, fd));
    }

    pub fn release(&mut self, id: u64) {
        self.kept.remove(&id);
        self.resumed.remove(&id);
    }

    /// The worker's first decision is made: listeners it did not ask for close (it no
    /// longer holds those ports), and every kept connection is to be handed back once.
    /// Returns them (id and port), in id order; [`Keeper::kept_fd`] gives each descriptor.
    pub fn synced(&mut self) -> Vec<(u64, u16)> {
        let requested = &self.requested;
        self.listeners.retain(|port, _| requested.contains(port));
        let resumed = &mut self.resumed;
        self.kept
            .iter()
            .filter(|(id, _)| resumed.insert(**id))
            .map(|(id, (port, _))| (*id, *port))
            .collect()
    }

    /// The kept connection `id`.
    pub fn kept_fd(&self, id: u64) -> Option<&OwnedFd> {
        self.kept.get(&id).map(|(_, fd)| fd)
    }

    /// The largest id kept, so a new worker numbers its connections after it.
    pub fn max_id(&self) -> u64 {
        self.kept.keys().next_back().copied().unwrap_or(0)
    }

    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn kept_connections_are_handed_back_once_to_the_next_worker() {
        let mut k = Keeper::default();
        k.worker_started();
        k.add_listener(24000, fd());
        k.keep(1, 24000, fd());
        k.keep(2, 24000, fd());
        k.release(1);
        // The worker crashes; its successor asks for the same port and gets the socket
        // the supervisor kept.
        k.worker_started();
        assert!(
            k.listener(24000).is_some(),
            "the listener survived the crash"
        );
        assert_eq!(
            k.synced(),
            vec![(2, 24000)],
            "the unread connection comes back, the read one not"
        );
        assert!(k.kept_fd(2).is_some());
        assert!(k.synced().is_empty(), "handed back once");
        assert_eq!(k.max_id(), 2);
        k.release(2);
        assert_eq!(k.kept(), 0);
    }

    #[test]
    fn listeners_the_new_worker_does_not_ask_for_are_closed_at_its_first_sync() {
        let mut k = Keeper::default();
        k.worker_started();
        k.add_listener(24000, fd());
        k.add_listener(24001, fd());
        k.worker_started();
        assert!(k.listener(24001).is_some());
        let _ = k.synced();
        assert_eq!(k.listeners(), 1, "24000 is no longer held: closed");
        assert!(k.listener(24000).is_none());
    }
}
