//! Who may open another connection: the router's share of file descriptors, split fairly.
//!
//! A connection costs a file descriptor and some memory whether or not it ever sends a byte,
//! so a public host can starve everyone by opening connections and idling. The [`Gate`] caps
//! what untrusted sources hold: per address, per /24 (IPv4) or /64 (IPv6), and in total, below
//! the router's whole capacity, so the rest stays reserved for sources a space trusts (its
//! network, its peers, its VPN). Trusted sources are bounded by the whole capacity only: they
//! often reach us through one NAT address (a VPN concentrator, a NAT gateway), where a cap per
//! address would refuse real users.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

/// How many connections the router holds open, and how many of them untrusted sources may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Every connection, trusted or not.
    pub total: usize,
    /// Untrusted sources together; the rest of `total` is reserved for trusted ones.
    pub public: usize,
    /// One untrusted address.
    pub per_address: usize,
    /// One untrusted /24 (IPv4) or /64 (IPv6).
    pub per_prefix: usize,
}

impl Capacity {
    /// The capacity for `total` connections: half of them for the public, 64 per address and
    /// 256 per prefix (at most that half).
    pub fn for_total(total: usize) -> Capacity {
        let public = total / 2;
        Capacity {
            total,
            public,
            per_address: public.min(64),
            per_prefix: public.min(256),
        }
    }
}

impl Default for Capacity {
    fn default() -> Capacity {
        Capacity::for_total(16_384)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The router holds `total` connections.
    Total,
    /// Untrusted sources hold their share.
    Public,
    /// This address holds its share.
    Address,
    /// This prefix holds its share.
    Prefix,
}

/// Counts connections by source and admits or refuses new ones.
#[derive(Debug)]
pub struct Gate {
    capacity: Capacity,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    public: usize,
    by_address: HashMap<IpAddr, usize>,
    by_prefix: HashMap<IpAddr, usize>,
    /// Refusals since the last warning, and when it was.
    refused: usize,
    warned: Option<Instant>,
}

/// How often a refusal is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    /// The source's address when it counts against the public caps.
    public: Option<IpAddr>,
}

impl Gate {
    /// A gate with `capacity`.
    pub fn new(capacity: Capacity) -> Arc<Gate> {
        Arc::new(Gate {
            capacity,
            counts: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, which some space trusts or not.
    pub fn admit(self: &Arc<Gate>, ip: IpAddr, trusted: bool) -> Result<Admitted, Full> {
        let ip = ip.to_canonical();
        let c = &self.capacity;
        let mut counts = self.lock();
        let full = if counts.total >= c.total {
            Some(Full::Total)
        } else if trusted {
            None
        } else if counts.public >= c.public {
            Some(Full::Public)
        } else if counts.by_address.get(&ip).copied().unwrap_or(0) >= c.per_address {
            Some(Full::Address)
        } else if counts.by_prefix.get(&prefix(ip)).copied().unwrap_or(0) >= c.per_prefix {
            Some(Full::Prefix)
        } else {
            None
        };
        if let Some(full) = full {
            counts.refused += 1;
            let now = Instant::now();
            if counts.warned.is_none_or(|at| now - at >= WARN_EVERY) {
                warn!(
                    refused = counts.refused,
                    open = counts.total,
                    public = counts.public,
                    last = %ip,
                    "router connection cap reached ({full:?}): closing new connections"
                );
                counts.refused = 0;
                counts.warned = Some(now);
            }
            return Err(full);
        }
        counts.total += 1;
        if !trusted {
            counts.public += 1;
            *counts.by_address.entry(ip).or_default() += 1;
            *counts.by_prefix.entry(prefix(ip)).or_default() += 1;
        }
        Ok(Admitted {
            gate: self.clone(),
            public: (!trusted).then_some(ip),
        })
    }

    /// Connections open now: (all, untrusted).
    pub fn open(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.total, counts.public)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counts are updated in single statements: a panic cannot leave them half-written.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.gate.lock();
        let counts = &mut *counts;
        counts.total -= 1;
        if let Some(ip) = self.public {
            counts.public -= 1;
            for (map, key) in [
                (&mut counts.by_address, ip),
                (&mut counts.by_prefix, prefix(ip)),
            ] {
                if let Some(n) = map.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

/// The /24 or /64 of an address, as the address with the host bits cleared.
fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => Ipv4Addr::from(u32::from(v4) & 0xffff_ff00).into(),
        IpAddr::V6(v6) => Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_is_capped_per_address_prefix_and_share_and_trusted_sources_keep_the_rest() {
        let gate = Gate::new(Capacity {
            total: 10,
            public: 6,
            per_address: 2,
            per_prefix: 4,
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut held = Vec::new();
        held.push(gate.admit(ip("127.200.0.1"), false).unwrap());
        held.push(gate.admit(ip("::ffff:127.200.0.1"), false).unwrap());
        assert_eq!(
            gate.admit(ip("127.200.0.1"), false).unwrap_err(),
            Full::Address
        );
        held.push(gate.admit(ip("127.200.0.2"), false).unwrap());
        held.push(gate.admit(ip("127.200.0.3"), false).unwrap());
        assert_eq!(
            gate.admit(ip("127.200.0.4"), false).unwrap_err(),
            Full::Prefix
        );
        held.push(gate.admit(ip("127.201.0.1"), false).unwrap());
        held.push(gate.admit(ip("127.202.0.1"), false).unwrap());
        assert_eq!(
            gate.admit(ip("127.203.0.1"), false).unwrap_err(),
            Full::Public
        );
        for _ in 0..4 {
            held.push(gate.admit(ip("127.16.0.5"), true).unwrap());
        }
        assert_eq!(gate.admit(ip("127.16.0.5"), true).unwrap_err(), Full::Total);
        assert_eq!(gate.open(), (10, 6));
        // Closing gives the place back, to the same address too.
        held.remove(0);
        assert_eq!(gate.open(), (9, 5));
        held.push(gate.admit(ip("127.200.0.1"), false).unwrap());
        drop(held);
        assert_eq!(gate.open(), (0, 0));
        assert!(gate.lock().by_address.is_empty() && gate.lock().by_prefix.is_empty());
    }
}
