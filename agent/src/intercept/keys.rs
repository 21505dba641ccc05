//! Encoding socket addresses into the `#[repr(C)]` map types of `elasti-common`. Pure, so
//! the byte-order rules are unit-tested without a kernel.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use elasti_common::{FLAG_COUNT, FLAG_NO_STEER, PROTO_TCP, ProxyTarget, ServiceKey};

/// The map key for TCP connects to `service` (a ClusterIP:port). IPv4 is stored
/// IPv4-mapped, so `connect6` on a v6 socket dialling a v4 ClusterIP finds it too.
pub fn service_key(service: SocketAddr) -> ServiceKey {
    ServiceKey::v6(
        mapped(service.ip()).octets(),
        service.port().to_be(),
        PROTO_TCP,
    )
}

/// What a map entry does with the connects it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Steer to the agent's listener at this address; `count` also counts them.
    Steer { proxy: SocketAddr, count: bool },
    /// Only count them (a warm Service with an `activity` trigger).
    CountOnly,
}

impl Entry {
    /// Steer to `proxy`, without counting.
    pub fn steer(proxy: SocketAddr) -> Self {
        Self::Steer {
            proxy,
            count: false,
        }
    }

    /// Whether the entry counts connects.
    pub fn counts(self) -> bool {
        matches!(self, Self::Steer { count: true, .. } | Self::CountOnly)
    }
}

/// A generation for a new counts entry: different from the one before it for the same
/// key (process id and clock mixed), so a socket of the old entry released later is not
/// credited to the new one.
pub fn generation() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16) ^ NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed)
}

/// The map value for `entry`, counted under `service_id`.
pub fn proxy_target(entry: Entry, service_id: u32) -> ProxyTarget {
    match entry {
        Entry::Steer { proxy, count } => ProxyTarget {
            addr: mapped(proxy.ip()).octets(),
            port_be: proxy.port().to_be(),
            flags: if count { FLAG_COUNT } else { 0 },
            service_id,
        },
        Entry::CountOnly => ProxyTarget {
            addr: [0; 16],
            port_be: 0,
            flags: FLAG_COUNT | FLAG_NO_STEER,
            service_id,
        },
    }
}

/// The ClusterIP:port a map key was made from (the inverse of [`service_key`]).
pub fn service_addr(key: &ServiceKey) -> SocketAddr {
    let v6 = Ipv6Addr::from(key.addr);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be(key.port_be))
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_service_key_matches_what_connect4_builds() {
        let key = service_key("10.96.0.50:80".parse().unwrap_or_else(|_| unreachable!()));
        // connect4 sees user_ip4 as network-order bytes in a native u32.
        let from_kernel = ServiceKey::v4(
            u32::from_ne_bytes([10, 96, 0, 50]),
            80u16.to_be(),
            PROTO_TCP,
        );
        assert_eq!(key, from_kernel);
    }

    #[test]
    fn v6_service_key_keeps_the_address() {
        let key = service_key("[fd00::50]:8080".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(
            key.addr,
            "fd00::50"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or_default()
        );
        assert_eq!(u16::from_be(key.port_be), 8080);
    }

    #[test]
    fn keys_decode_back_to_the_addresses_they_were_made_from() {
        for a in ["10.96.0.50:80", "[fd00::50]:8080"] {
            let addr: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
            assert_eq!(service_addr(&service_key(addr)), addr);
        }
    }

    #[test]
    fn v4_proxy_target_is_usable_from_connect4() {
        let t = proxy_target(
            Entry::Steer {
                proxy: "169.254.20.11:24000"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
                count: false,
            },
            3,
        );
        assert!(t.steers() && !t.counts());
        assert!(t.is_v4_mapped());
        assert_eq!(t.v4_be().to_ne_bytes(), [169, 254, 20, 11]);
        assert_eq!(u16::from_be(t.port_be), 24000);
        assert_eq!(t.service_id, 3);
    }

    #[test]
    fn entries_say_whether_they_steer_and_count() {
        let proxy: SocketAddr = "169.254.20.11:24000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let counted = proxy_target(Entry::Steer { proxy, count: true }, 1);
        assert!(counted.steers() && counted.counts());
        let count_only = proxy_target(Entry::CountOnly, 1);
        assert!(!count_only.steers() && count_only.counts());
    }
}
