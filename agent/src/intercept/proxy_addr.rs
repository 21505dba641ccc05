//! The address steered connects go to: a link-local IPv4 (NodeLocal DNSCache uses
//! 169.254.20.10 the same way) on an interface of the agent's own, made over rtnetlink.
//! A `dummy` link is preferred; kernels without `CONFIG_DUMMY` get a bridge with no ports,
//! which holds a local address just the same. Removed again on shutdown.
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No netlink socket (not root, or no CAP_NET_ADMIN).
    #[error("opening a netlink socket failed")]
    Connect(#[source] std::io::Error),
    /// The kernel refused both a dummy and a bridge link.
    #[error("creating link {name} failed (tried dummy, then bridge)")]
    CreateLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Reading, configuring or removing the link or its address failed.
    #[error("{what} on link {name} failed")]
    Netlink {
        what: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Which kind of link holds the proxy address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Dummy,
    /// A bridge with no ports (on kernels without the dummy driver).
    Bridge,
    /// The link already existed (left by a previous run); reused as it is.
    Existing,
}

/// The agent's proxy interface; [`ProxyInterface::remove`] deletes it.
#[derive(Debug)]
pub struct ProxyInterface {
    name: String,
    index: u32,
    pub kind: LinkKind,
    pub addr: IpAddr,
}

impl ProxyInterface {
    /// Creates (or reuses) link `name`, brings it up, and puts `addr` on it as a host
    /// address (/32 or /128).
    pub async fn ensure(name: &str, addr: IpAddr) -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        let netlink = |what: &'static str| {
            move |source| Error::Netlink {
                what,
                name: name.to_string(),
                source,
            }
        };
        let (index, kind) = match link_index(&handle, name)
            .await
            .map_err(netlink("looking up"))?
        {
            Some(index) => (index, LinkKind::Existing),
            None => {
                let kind = match handle
                    .link()
                    .add(LinkDummy::new(name).up().build())
                    .execute()
                    .await
                {
                    Ok(()) => LinkKind::Dummy,
                    Err(_) => {
                        handle
                            .link()
                            .add(LinkBridge::new(name).build())
                            .execute()
                            .await
                            .map_err(|source| Error::CreateLink {
                                name: name.to_string(),
                                source,
                            })?;
                        LinkKind::Bridge
                    }
                };
                let index = link_index(&handle, name)
                    .await
                    .map_err(netlink("looking up"))?
                    .ok_or_else(|| Error::CreateLink {
                        name: name.to_string(),
                        source: rtnetlink::Error::RequestFailed,
                    })?;
                (index, kind)
            }
        };
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink("bringing up"))?;
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        handle
            .address()
            .add(index, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink("adding the address"))?;
        Ok(Self {
            name: name.to_string(),
            index,
            kind,
            addr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the link (and with it the address), over a netlink socket of its own so it
    /// works from whatever runtime shuts the agent down.
    pub async fn remove(self) -> Result<(), Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        handle
            .link()
            .del(self.index)
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: "deleting",
                name: self.name.clone(),
                source,
            })
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e),
    }
}
