//! Choosing the address other hosts should dial.

use std::net::{IpAddr, SocketAddr};

/// Environment variable that overrides the advertised IP.
pub const ADVERTISE_IP_ENV: &str = "REGISTRY_EXT_ADVERTISE_IP";

/// Turns a listen address into one that other hosts can dial.
///
/// A specific IP is kept. An unspecified one (`0.0.0.0`, `::`) becomes, in
/// order: `override_ip`, the IP in the `REGISTRY_EXT_ADVERTISE_IP` environment
/// variable, or the first non-loopback address of this host (same family
/// first). The port is always kept.
///
/// ```
/// use rpc_ext_registry::advertise_address;
///
/// let listen = "0.0.0.0:8080".parse().unwrap();
/// let addr = advertise_address(listen, Some("10.1.2.3".parse().unwrap())).unwrap();
/// assert_eq!(addr, "10.1.2.3:8080".parse().unwrap());
/// ```
pub fn advertise_address(
    listen: SocketAddr,
    override_ip: Option<IpAddr>,
) -> crate::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let ip = match override_ip {
        Some(ip) => ip,
        None => match std::env::var(ADVERTISE_IP_ENV) {
            Ok(value) => value.trim().parse().map_err(|_| {
                crate::Error::Config(format!("{ADVERTISE_IP_ENV}={value:?} is not an IP address"))
            })?,
            Err(_) => first_non_loopback_ip(listen.is_ipv4())?,
        },
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

fn first_non_loopback_ip(prefer_v4: bool) -> crate::Result<IpAddr> {
    let interfaces = if_addrs::get_if_addrs()
        .map_err(|e| crate::Error::Config(format!("cannot list network interfaces: {e}")))?;
    let candidates: Vec<IpAddr> = interfaces
        .iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| !ip.is_unspecified() && !is_link_local(ip))
        .collect();
    candidates
        .iter()
        .find(|ip| ip.is_ipv4() == prefer_v4)
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| {
            crate::Error::Config(format!(
                "no non-loopback address on this host; set {ADVERTISE_IP_ENV}"
            ))
        })
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_specific_addresses() {
        let listen: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(advertise_address(listen, None).unwrap(), listen);
    }

    #[test]
    fn unspecified_becomes_routable() {
        let listen: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        match advertise_address(listen, None) {
            Ok(addr) => {
                assert!(!addr.ip().is_unspecified() && !addr.ip().is_loopback());
                assert_eq!(addr.port(), 9000);
            }
            // A sandbox with only loopback still gets a typed error, not a panic.
            Err(e) => assert!(matches!(e, crate::Error::Config(_))),
        }
    }
}
