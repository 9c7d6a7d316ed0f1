//! Which spaces trust a source address, and as what: the space's own network or its peers.
//!
//! Pure: std and ipnet only. An [`Access`] table is built once per snapshot from every space's
//! `network` and peer `cidrs`; [`Access::classify`] does one hash probe per prefix length in
//! use. A source is trusted by every space one of whose networks contains it (one VPN can be
//! peered with two spaces); a source that matches nothing is public (default deny). IPv4 and
//! IPv6 live in separate tables, so an IPv4-only list never lets IPv6 in; an IPv4-mapped IPv6
//! source (`::ffff:10.0.0.1`, from a dual-stack socket) is looked up as the IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// How a network is related to the space that lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// The space's own `network`.
    Network,
    /// The space's peer with this index.
    Peer(usize),
}

/// One space's trust in a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trust {
    /// The space's index in the snapshot.
    pub space: usize,
    /// The source is inside the space's own network.
    pub network: bool,
    /// Bit `i` is set when the source is inside peer `i`.
    pub peers: u64,
}

/// Every space that trusts a source, by ascending space index; empty for a public source.
pub type Trusts = Vec<Trust>;

/// The networks of one prefix length, keyed by their masked address bits.
type Prefixes<T> = HashMap<T, Vec<(usize, Member)>>;

/// The compiled table of trusted networks.
#[derive(Debug, Clone, Default)]
pub struct Access {
    v4: Vec<(u8, Prefixes<u32>)>,
    v6: Vec<(u8, Prefixes<u128>)>,
}

impl Access {
    /// Builds the table from (network, space index, member) entries.
    pub fn new(entries: impl IntoIterator<Item = (IpNet, usize, Member)>) -> Access {
        let mut v4: HashMap<u8, HashMap<u32, Vec<_>>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, Vec<_>>> = HashMap::new();
        for (net, space, member) in entries {
            let net = net.trunc();
            match net {
                IpNet::V4(n) => (v4.entry(n.prefix_len()).or_default())
                    .entry(u32::from(n.network()))
                    .or_default()
                    .push((space, member)),
                IpNet::V6(n) => (v6.entry(n.prefix_len()).or_default())
                    .entry(u128::from(n.network()))
                    .or_default()
                    .push((space, member)),
            }
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        let mut v6: Vec<_> = v6.into_iter().collect();
        v4.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        v6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        Access { v4, v6 }
    }

    /// The spaces that trust `ip`, by ascending space index.
    pub fn classify(&self, ip: IpAddr) -> Trusts {
        let mut trusts = Trusts::new();
        self.each_hit(ip, |space, member| {
            let i = match trusts.binary_search_by_key(&space, |t| t.space) {
                Ok(i) => i,
                Err(i) => {
                    let trust = Trust {
                        space,
                        ..Trust::default()
                    };
                    trusts.insert(i, trust);
                    i
                }
            };
            trusts[i].add(member);
        });
        trusts
    }

    /// How `space` trusts `ip`, if it does: [`Access::classify`] for one space, without
    /// allocating.
    pub fn trust(&self, ip: IpAddr, space: usize) -> Option<Trust> {
        let mut trust: Option<Trust> = None;
        self.each_hit(ip, |hit, member| {
            if hit == space {
                (trust.get_or_insert(Trust {
                    space,
                    ..Trust::default()
                }))
                .add(member);
            }
        });
        trust
    }

    /// The lowest-indexed space that trusts `ip` and passes `accept`, without allocating.
    pub fn first_trusting(&self, ip: IpAddr, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let mut first: Option<usize> = None;
        self.each_hit(ip, |space, _| {
            if first.is_none_or(|f| space < f) && accept(space) {
                first = Some(space);
            }
        });
        first
    }

    /// The lowest-indexed space that trusts `ip` and how (its own network before a peer),
    /// without allocating: the source's audience, for counting.
    pub fn first(&self, ip: IpAddr) -> Option<(usize, Member)> {
        let mut first: Option<(usize, Member)> = None;
        self.each_hit(ip, |space, member| {
            let better = match first {
                None => true,
                Some((s, m)) => {
                    space < s || (space == s && member == Member::Network && m != Member::Network)
                }
            };
            if better {
                first = Some((space, member));
            }
        });
        first
    }

    /// Whether any space trusts `ip`.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        let mut any = false;
        self.each_hit(ip, |_, _| any = true);
        any
    }

    /// Calls `hit` with (space, member) for every network that contains `ip`.
    fn each_hit(&self, ip: IpAddr, mut hit: impl FnMut(usize, Member)) {
        let mut add = |hits: &Vec<(usize, Member)>| {
            for &(space, member) in hits {
                hit(space, member);
            }
        };
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                for (len, table) in &self.v4 {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    if let Some(hits) = table.get(&(bits & mask)) {
                        add(hits);
                    }
                }
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                for (len, table) in &self.v6 {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    if let Some(hits) = table.get(&(bits & mask)) {
                        add(hits);
                    }
                }
            }
        }
    }
}

impl Trust {
    fn add(&mut self, member: Member) {
        match member {
            Member::Network => self.network = true,
            Member::Peer(p) if p < 64 => self.peers |= 1 << p,
            Member::Peer(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Access {
        let e = |net: &str, space, member| (net.parse().unwrap(), space, member);
        Access::new([
            e("10.16.0.0/16", 0, Member::Network),
            e("172.31.0.0/16", 0, Member::Peer(0)),
            e("192.168.10.0/24", 0, Member::Peer(1)),
            e("fd00:10::/64", 0, Member::Peer(1)),
            e("10.17.0.0/16", 1, Member::Network),
            e("192.168.10.0/24", 1, Member::Peer(0)),
            e("192.168.0.0/16", 1, Member::Peer(1)),
            e("0.0.0.0/0", 2, Member::Peer(3)),
        ])
    }

    fn classify(ip: &str) -> Trusts {
        table().classify(ip.parse().unwrap())
    }

    #[test]
    fn space_network_and_peers() {
        let t = Trust {
            space: 0,
            network: true,
            peers: 0,
        };
        assert_eq!(
            classify("10.16.200.1")[..2],
            [
                t,
                Trust {
                    space: 2,
                    network: false,
                    peers: 8
                }
            ]
        );
        assert_eq!(
            classify("172.31.5.5")[0],
            Trust {
                space: 0,
                network: false,
                peers: 1
            }
        );
    }

    #[test]
    fn one_source_trusted_by_two_spaces_with_every_matching_peer() {
        let t = classify("192.168.10.7");
        assert_eq!(
            t[0],
            Trust {
                space: 0,
                network: false,
                peers: 0b10
            }
        );
        assert_eq!(
            t[1],
            Trust {
                space: 1,
                network: false,
                peers: 0b11
            }
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn ipv4_lists_never_let_ipv6_in() {
        let access = Access::new([("0.0.0.0/0".parse().unwrap(), 0, Member::Network)]);
        assert!(access.classify("::1".parse().unwrap()).is_empty());
        assert!(access.classify("fd00:10::1".parse().unwrap()).is_empty());
        assert_eq!(access.classify("::ffff:10.1.2.3".parse().unwrap()).len(), 1);
        assert_eq!(classify("fd00:10::99")[0].peers, 0b10);
        assert!(classify("fd00:11::1").is_empty());
    }

    #[test]
    fn unlisted_sources_are_public() {
        let access = Access::new([("10.16.0.0/16".parse().unwrap(), 0, Member::Network)]);
        assert!(access.classify("10.15.255.255".parse().unwrap()).is_empty());
        assert!(access.classify("127.0.0.1".parse().unwrap()).is_empty());
    }
}
