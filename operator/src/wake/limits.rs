//! Open connections per client address, so one client cannot take every slot of the
//! wake server (the admin server in `runtime/src/admin.rs` keeps the same kind of share).
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Connections open per client address, up to a share each.
#[derive(Debug)]
pub struct PerClient {
    share: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub fn new(share: usize) -> Self {
        Self {
            share,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection of `ip`, or `None` when it holds its share.
    pub fn enter(self: Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.share {
            return None;
        }
        *n += 1;
        drop(open);
        Some(ClientSlot { of: self, ip })
    }
}

/// One connection's place in its client's share, given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    of: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.of.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_it_comes_back() {
        let per = Arc::new(PerClient::new(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = per.clone().enter(a);
        let s2 = per.clone().enter(a);
        assert!(s1.is_some() && s2.is_some());
        assert!(per.clone().enter(a).is_none(), "over its share");
        assert!(per.clone().enter(b).is_some(), "another client");
        drop(s1);
        assert!(per.clone().enter(a).is_some(), "given back");
    }
}
