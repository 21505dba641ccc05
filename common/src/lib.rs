//! `#[repr(C)]` map keys and values shared by the eBPF programs (`ebpf/`) and the agent.
//!
//! Every address is stored as an IPv6 address; IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one map serves both `connect4` and `connect6`.
#![no_std]

/// `IPPROTO_TCP`; the only protocol held today.
pub const PROTO_TCP: u8 = 6;

/// Maximum number of (Service, port) pairs one agent can hold at once.
pub const MAX_SERVICES: u32 = 16_384;

/// How many steered sockets getpeername can answer for at once (an LRU map).
pub const MAX_TRACKED_SOCKETS: u32 = 65_536;

/// How many counted sockets (connects to a Service with an `activity` trigger) one node
/// tracks as open at once; past it, connects are still counted but not tracked as open
/// (an undercount, never a count that stays up for ever).
pub const MAX_OPEN_SOCKETS: u32 = 65_536;

/// [`ProxyTarget::flags`]: count the connect and track the socket as open until it is
/// released (the Service has an `activity` trigger).
pub const FLAG_COUNT: u16 = 1;
/// [`ProxyTarget::flags`]: do not steer; only count (with [`FLAG_COUNT`]). A warm Service
/// with an `activity` trigger has such entries, so its connects go where they were aimed.
pub const FLAG_NO_STEER: u16 = 2;

/// Index of [`Config::agent_cgroup_id`] etc. in the single-element config array.
pub const CONFIG_INDEX: u32 = 0;

/// A Service ClusterIP:port as seen by `connect()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The ClusterIP, IPv4-mapped when it is IPv4, in network byte order.
    pub addr: [u8; 16],
    /// The Service port, network byte order.
    pub port_be: u16,
    /// The IP protocol number ([`PROTO_TCP`]).
    pub proto: u8,
    pub _pad: u8,
}

/// Where a held Service's connects are steered to: the agent's listener for it (unless
/// [`FLAG_NO_STEER`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The agent's proxy address, IPv4-mapped when it is IPv4, network byte order.
    pub addr: [u8; 16],
    /// The per-service proxy port, network byte order.
    pub port_be: u16,
    /// [`FLAG_COUNT`], [`FLAG_NO_STEER`]; 0 steers without counting.
    pub flags: u16,
    /// Identifies the (Service, port) pair in the per-CPU rewrite counters.
    pub service_id: u32,
}

/// The destination a steered socket originally asked for, keyed by socket cookie, so
/// `getpeername()` can answer with the ClusterIP rather than the agent's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// The ClusterIP, IPv4-mapped when it is IPv4.
    pub addr: [u8; 16],
    /// The Service port, network byte order.
    pub port_be: u16,
    pub _pad: u16,
    /// The service the socket was steered for.
    pub service_id: u32,
}

/// Agent-wide settings read by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The agent's own cgroup v2 id: its connects are never rewritten, so it can always
    /// reach the real endpoints.
    pub agent_cgroup_id: u64,
}

/// Rewrite counters, per CPU, indexed by [`ProxyTarget::service_id`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteCounters {
    /// connect() calls steered to the agent.
    pub connects: u64,
    /// getpeername() calls answered with the original ClusterIP.
    pub peernames: u64,
}

/// The connection counts of one counted ClusterIP:port ([`FLAG_COUNT`]), keyed by its
/// [`ServiceKey`]: stable across agent worker restarts, unlike service ids. The agent
/// creates the entry (with a fresh `generation`) and the programs only add to it, with
/// atomic adds (it is shared by all CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// connect() calls counted, steered or not.
    pub connects: u64,
    /// Sockets recorded as open (the first connect of each, while there is room among
    /// [`MAX_OPEN_SOCKETS`]).
    pub tracked: u64,
    /// Recorded sockets of this generation released (closed). `tracked - released` are
    /// open now.
    pub released: u64,
    /// Set by the agent when it creates the entry: a socket recorded under an earlier
    /// entry for the same key is not counted as released by this one.
    pub generation: u32,
    pub _pad: u32,
}

/// What the programs remember of an open counted socket, keyed by its cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSocket {
    /// The ClusterIP:port it connected to (the [`Activity`] entry to credit on release).
    pub key: ServiceKey,
    /// That entry's generation at connect time.
    pub generation: u32,
}

impl ProxyTarget {
    /// Whether connects are steered to the agent (not count-only).
    pub const fn steers(&self) -> bool {
        self.flags & FLAG_NO_STEER == 0
    }

    /// Whether connects are counted and their sockets tracked.
    pub const fn counts(&self) -> bool {
        self.flags & FLAG_COUNT != 0
    }
}

impl ServiceKey {
    /// The key for an IPv4 ClusterIP, given in network byte order as the kernel hands it over.
    pub const fn v4(addr_be: u32, port_be: u16, proto: u8) -> Self {
        let o = addr_be.to_ne_bytes();
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
            ],
            port_be,
            proto,
            _pad: 0,
        }
    }

    /// The key for an IPv6 ClusterIP, given as the sixteen address bytes.
    pub const fn v6(addr: [u8; 16], port_be: u16, proto: u8) -> Self {
        Self {
            addr,
            port_be,
            proto,
            _pad: 0,
        }
    }
}

impl ProxyTarget {
    /// Whether the proxy address is IPv4-mapped, i.e. usable from `connect4`.
    pub const fn is_v4_mapped(&self) -> bool {
        let a = &self.addr;
        a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && a[3] == 0
            && a[4] == 0
            && a[5] == 0
            && a[6] == 0
            && a[7] == 0
            && a[8] == 0
            && a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
    }

    /// The IPv4 proxy address in network byte order, as `user_ip4` wants it.
    pub const fn v4_be(&self) -> u32 {
        u32::from_ne_bytes([self.addr[12], self.addr[13], self.addr[14], self.addr[15]])
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are `#[repr(C)]`, `Copy`, and made only of integers with explicit
    // padding fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ProxyTarget {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::RewriteCounters {}
    unsafe impl aya::Pod for super::Activity {}
    unsafe impl aya::Pod for super::OpenSocket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_key_is_v4_mapped_in_network_order() {
        // 10.96.0.50 as the kernel stores it in user_ip4: network order in a native u32.
        let be = u32::from_ne_bytes([10, 96, 0, 50]);
        let key = ServiceKey::v4(be, 80u16.to_be(), PROTO_TCP);
        assert_eq!(&key.addr[10..], &[0xff, 0xff, 10, 96, 0, 50]);
        assert_eq!(u16::from_be(key.port_be), 80);
    }

    #[test]
    fn proxy_target_round_trips_v4() {
        let t = ProxyTarget {
            addr: ServiceKey::v4(u32::from_ne_bytes([169, 254, 20, 11]), 0, 0).addr,
            port_be: 24000u16.to_be(),
            flags: 0,
            service_id: 7,
        };
        assert!(t.is_v4_mapped());
        assert_eq!(t.v4_be().to_ne_bytes(), [169, 254, 20, 11]);
        let v6 = ProxyTarget {
            addr: [0xfd; 16],
            ..t
        };
        assert!(!v6.is_v4_mapped());
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<ProxyTarget>(), 24);
        assert_eq!(core::mem::size_of::<Config>(), 8);
        assert_eq!(core::mem::size_of::<RewriteCounters>(), 16);
        assert_eq!(core::mem::size_of::<Activity>(), 32);
        assert_eq!(core::mem::size_of::<OpenSocket>(), 24);
    }
}
