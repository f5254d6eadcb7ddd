//! What "one address" means for the relay's per-address shares.
//!
//! Every open connection counts against the address it came from: an IPv4
//! address, or the /64 an IPv6 address is in (one host usually has a whole
//! /64 to pick from). No address holds more than its share
//! (`RelayConfig::max_per_ip`, by default a sixteenth of
//! `max_connections`), so one client flooding hellos that then wait (lobby
//! servers, reconnect tokens, slow requests) cannot take the slots everyone
//! else needs; its newest connections are refused with a reason instead.
//! The slots themselves are kept by the relay's admission (`admission.rs`).

use std::net::IpAddr;

/// What a connection from `ip` counts against: the address itself, or its
/// /64 (the same rule as the channel table's per-address limit).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    burrow_proto::channel::table::share_key(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let k = |s: &str| addr_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("198.51.100.7"), k("::ffff:198.51.100.7"));
        assert_ne!(k("198.51.100.7"), k("198.51.100.8"));
    }
}
