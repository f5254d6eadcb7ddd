//! Egress policy of an exit: which destinations it may open connections to.
//!
//! Checked after DNS resolution, for every address tried. By default an exit
//! refuses loopback, private (RFC 1918, CGNAT, ULA), link-local, multicast,
//! unspecified, broadcast and reserved addresses, and its own addresses.
//! `--allow CIDR[:PORTS]` opens a range (also one the defaults refuse),
//! `--deny CIDR[:PORTS]` closes one; a deny beats an allow.
//!
//! ```text
//! rule  = CIDR [ ":" ports ]          10.0.0.0/8   127.0.0.1/32:8080   fd00::/8:443,8000-8100
//! ports = range { "," range }         range = port | port "-" port
//! ```
//!
//! An address without a prefix length means the single host (`/32`, `/128`).
//! IPv6 forms that carry an IPv4 address are judged as that address:
//! IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated
//! but still routed by some stacks), NAT64 (`64:ff9b::/96`) and 6to4
//! (`2002:AABB:CCDD::/48`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 127.0.0.0/8, ::1.
    #[error("loopback address")]
    Loopback,
    /// RFC 1918, 100.64.0.0/10, fc00::/7.
    #[error("private address")]
    Private,
    /// 169.254.0.0/16, fe80::/10.
    #[error("link-local address")]
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    #[error("multicast address")]
    Multicast,
    /// 0.0.0.0/8, ::, 240.0.0.0/4, broadcast, documentation ranges.
    #[error("reserved or unspecified address")]
    Reserved,
    /// One of the exit's own addresses.
    #[error("the exit's own address")]
    Own,
    /// A `--deny` rule.
    #[error("denied by rule {0}")]
    Denied(String),
}

/// A malformed rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rule {rule:?}: {why} (expected CIDR[:PORTS], e.g. 10.0.0.0/8:22,80-90)")]
pub struct RuleError {
    rule: String,
    why: &'static str,
}

/// One `CIDR[:PORTS]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    net: IpAddr,
    prefix: u8,
    /// Inclusive port ranges; empty = every port.
    ports: Vec<(u16, u16)>,
    text: String,
}

/// The address a rule or class is judged on: IPv4-mapped and
/// IPv4-compatible IPv6 addresses become the IPv4 address they carry (`::`
/// and `::1` keep their own meaning).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            let s = a.segments();
            if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
                IpAddr::V4(embedded_v4(s[6], s[7]))
            } else {
                ip.to_canonical()
            }
        }
        v4 => v4,
    }
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, alen) = bits(canonical(ip));
    let (n, nlen) = bits(net);
    if alen != nlen {
        return false;
    }
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(alen - prefix);
    (a >> shift) == (n >> shift)
}

impl Rule {
    /// Parses `CIDR[:PORTS]`.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let err = |why| RuleError {
            rule: text.to_owned(),
            why,
        };
        let t = text.trim();
        // Ports come after the prefix length, or after a bare IPv4 address.
        let (net_part, ports_part) = match t.split_once('/') {
            Some((addr, rest)) => match rest.split_once(':') {
                Some((p, ports)) => (format!("{addr}/{p}"), Some(ports)),
                None => (t.to_owned(), None),
            },
            None if t.matches(':').count() == 1 => {
                let (a, p) = t.split_once(':').ok_or_else(|| err("bad address"))?;
                (a.to_owned(), Some(p))
            }
            None => (t.to_owned(), None),
        };
        let (addr, prefix) = match net_part.split_once('/') {
            Some((a, p)) => (
                a.to_owned(),
                Some(p.parse::<u8>().map_err(|_| err("bad prefix length"))?),
            ),
            None => (net_part, None),
        };
        let net: IpAddr = addr
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| err("bad address"))?;
        let net = canonical(net);
        let max = bits(net).1;
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err("prefix length too long"));
        }
        let mut ports = Vec::new();
        if let Some(p) = ports_part {
            for r in p.split(',') {
                let (lo, hi) = match r.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (r, r),
                };
                let lo: u16 = lo.trim().parse().map_err(|_| err("bad port"))?;
                let hi: u16 = hi.trim().parse().map_err(|_| err("bad port"))?;
                if lo == 0 || lo > hi {
                    return Err(err("bad port range"));
                }
                ports.push((lo, hi));
            }
        }
        Ok(Self {
            net,
            prefix,
            ports,
            text: t.to_owned(),
        })
    }

    /// Whether `dest` falls under this rule.
    pub fn matches(&self, dest: SocketAddr) -> bool {
        in_net(dest.ip(), self.net, self.prefix)
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|&(lo, hi)| (lo..=hi).contains(&dest.port())))
    }
}

/// The default refusals, by address class.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match canonical(ip) {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Refusal> {
    let o = a.octets();
    if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
        Some(Refusal::Private)
    } else if a.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() {
        Some(Refusal::Multicast)
    } else if o[0] == 0
        || o[0] >= 240
        || a.is_broadcast()
        || a.is_documentation()
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        Some(Refusal::Reserved)
    } else {
        None
    }
}

fn classify_v6(a: Ipv6Addr) -> Option<Refusal> {
    let s = a.segments();
    if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_unspecified() || s[0] == 0x2001 && s[1] == 0x0db8 || s[0] == 0x0100 && s[1..4] == [0, 0, 0]
    {
        Some(Refusal::Reserved)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some(Refusal::Private)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() {
        Some(Refusal::Multicast)
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64: judge the embedded IPv4 address.
        classify_v4(embedded_v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address of the tunnel's end.
        classify_v4(embedded_v4(s[1], s[2]))
    } else {
        None
    }
}

/// An exit's egress policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    own: Vec<IpAddr>,
}

impl Policy {
    /// A policy with `--allow` and `--deny` rules and the exit's own addresses.
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>, own: Vec<IpAddr>) -> Self {
        Self {
            allow,
            deny,
            own: own.into_iter().map(canonical).collect(),
        }
    }

    /// Whether the exit may connect to `dest`, with the host's addresses
    /// as they are now (`own_now`, read at connect time: an address added
    /// after the exit started is its own too) beside those given at start.
    pub fn check_with(&self, dest: SocketAddr, own_now: &[IpAddr]) -> Result<(), Refusal> {
        self.check(dest)?;
        let ip = canonical(dest.ip());
        // (`check` passed: only an own address still needs an allow rule.)
        if own_now.iter().any(|&o| canonical(o) == ip) && !self.allow.iter().any(|r| r.matches(dest)) {
            return Err(Refusal::Own);
        }
        Ok(())
    }

    /// Whether the exit may connect to `dest`.
    pub fn check(&self, dest: SocketAddr) -> Result<(), Refusal> {
        if let Some(r) = self.deny.iter().find(|r| r.matches(dest)) {
            return Err(Refusal::Denied(r.text.clone()));
        }
        if self.allow.iter().any(|r| r.matches(dest)) {
            return Ok(());
        }
        if let Some(why) = classify(dest.ip()) {
            return Err(why);
        }
        if self.own.contains(&canonical(dest.ip())) {
            return Err(Refusal::Own);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_refuse_what_an_exit_must_not_reach() {
        let p = Policy::new(
            vec![],
            vec![],
            vec!["203.0.113.7".parse().unwrap(), "8.8.4.4".parse().unwrap()],
        );
        for (a, why) in [
            ("127.0.0.1:80", Refusal::Loopback),
            ("127.9.9.9:80", Refusal::Loopback),
            ("[::1]:80", Refusal::Loopback),
            ("[::ffff:127.0.0.1]:80", Refusal::Loopback),
            ("10.1.2.3:80", Refusal::Private),
            ("172.16.0.1:80", Refusal::Private),
            ("192.168.1.1:80", Refusal::Private),
            ("100.64.0.1:80", Refusal::Private),
            ("[fd12::1]:80", Refusal::Private),
            ("169.254.169.254:80", Refusal::LinkLocal),
            ("[fe80::1]:80", Refusal::LinkLocal),
            ("224.0.0.1:80", Refusal::Multicast),
            ("[ff02::1]:80", Refusal::Multicast),
            ("0.0.0.0:80", Refusal::Reserved),
            ("[::]:80", Refusal::Reserved),
            ("255.255.255.255:80", Refusal::Reserved),
            ("[64:ff9b::a00:1]:80", Refusal::Private),
            // IPv4 carried in IPv6: compatible, mapped, 6to4.
            ("[::127.0.0.1]:80", Refusal::Loopback),
            ("[::10.0.0.1]:80", Refusal::Private),
            ("[::169.254.169.254]:80", Refusal::LinkLocal),
            ("[::0.0.0.2]:80", Refusal::Reserved),
            ("[::ffff:192.168.0.1]:80", Refusal::Private),
            ("[2002:7f00:1::1]:80", Refusal::Loopback),
            ("[2002:a9fe:a9fe::]:80", Refusal::LinkLocal),
            ("8.8.4.4:53", Refusal::Own),
            ("[::8.8.4.4]:53", Refusal::Own),
        ] {
            assert_eq!(p.check(sa(a)), Err(why), "{a}");
        }
        assert_eq!(p.check(sa("1.1.1.1:443")), Ok(()));
        assert_eq!(p.check(sa("[2606:4700::1111]:443")), Ok(()));
        assert_eq!(p.check(sa("[::1.1.1.1]:443")), Ok(()));
        assert_eq!(p.check(sa("[2002:101:101::1]:443")), Ok(()));
    }

    #[test]
    fn addresses_the_host_gained_later_are_its_own() {
        let p = Policy::new(vec![Rule::parse("5.6.7.8").unwrap()], vec![], vec![]);
        let now: Vec<IpAddr> = vec!["1.2.3.4".parse().unwrap(), "5.6.7.8".parse().unwrap()];
        assert_eq!(p.check(sa("1.2.3.4:80")), Ok(()));
        assert_eq!(p.check_with(sa("1.2.3.4:80"), &now), Err(Refusal::Own));
        assert_eq!(p.check_with(sa("[::ffff:1.2.3.4]:80"), &now), Err(Refusal::Own));
        // An explicit allow still opens it.
        assert_eq!(p.check_with(sa("5.6.7.8:80"), &now), Ok(()));
        assert_eq!(p.check_with(sa("9.9.9.9:80"), &now), Ok(()));
    }

    #[test]
    fn allow_opens_and_deny_closes_with_ports() {
        let p = Policy::new(
            vec![Rule::parse("127.0.0.1/32:8080,9000-9010").unwrap()],
            vec![
                Rule::parse("1.1.1.0/24:53").unwrap(),
                Rule::parse("127.0.0.1:9005").unwrap(),
            ],
            vec![],
        );
        assert_eq!(p.check(sa("127.0.0.1:8080")), Ok(()));
        assert_eq!(p.check(sa("127.0.0.1:9001")), Ok(()));
        assert_eq!(p.check(sa("127.0.0.1:22")), Err(Refusal::Loopback));
        assert!(
            matches!(p.check(sa("127.0.0.1:9005")), Err(Refusal::Denied(_))),
            "deny beats allow"
        );
        assert!(matches!(p.check(sa("1.1.1.1:53")), Err(Refusal::Denied(_))));
        assert_eq!(p.check(sa("1.1.1.1:443")), Ok(()));
    }

    #[test]
    fn rules_parse_strictly() {
        assert!(Rule::parse("10.0.0.0/8").unwrap().matches(sa("10.200.0.1:1")));
        assert!(!Rule::parse("10.0.0.0/8").unwrap().matches(sa("11.0.0.1:1")));
        assert!(Rule::parse("fd00::/8:443").unwrap().matches(sa("[fd00::5]:443")));
        assert!(!Rule::parse("fd00::/8:443").unwrap().matches(sa("[fd00::5]:80")));
        assert!(Rule::parse("0.0.0.0/0").unwrap().matches(sa("9.9.9.9:1")));
        assert!(Rule::parse("::1").unwrap().matches(sa("[::1]:5")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/8:0",
            "10.0.0.0/8:9-3",
            "nope",
            "10.0.0.0/8:x",
            "1.2.3.4:70000",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
