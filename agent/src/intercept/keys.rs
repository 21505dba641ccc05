//! Encoding socket addresses into the `#[repr(C)]` map types of `elasti-common`. Pure, so
//! the byte-order rules are unit-tested without a kernel.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use elasti_common::{PROTO_TCP, ProxyTarget, ServiceKey};

/// The map key for TCP connects to `service` (a ClusterIP:port). IPv4 is stored
/// IPv4-mapped, so `connect6` on a v6 socket dialling a v4 ClusterIP finds it too.
pub fn service_key(service: SocketAddr) -> ServiceKey {
    ServiceKey::v6(
        mapped(service.ip()).octets(),
        service.port().to_be(),
        PROTO_TCP,
    )
}

/// The map value steering a held Service to the agent listener at `proxy`.
pub fn proxy_target(proxy: SocketAddr, service_id: u32) -> ProxyTarget {
    ProxyTarget {
        addr: mapped(proxy.ip()).octets(),
        port_be: proxy.port().to_be(),
        _pad: 0,
        service_id,
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
            "169.254.20.11:24000"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            3,
        );
        assert!(t.is_v4_mapped());
        assert_eq!(t.v4_be().to_ne_bytes(), [169, 254, 20, 11]);
        assert_eq!(u16::from_be(t.port_be), 24000);
        assert_eq!(t.service_id, 3);
    }
}
