//! Who may open another connection: a server's share of file descriptors, split fairly. The
//! router and DNS over TCP each have a [`Gate`]; a module of its own because both use it.
//!
//! A connection costs a file descriptor and some memory whether or not it ever sends a byte,
//! so a public host can starve everyone by opening connections and idling. The [`Gate`] caps
//! what untrusted sources hold: per address, per /24 (IPv4) or /64 (IPv6), and in total, below
//! the server's whole capacity, so the rest stays reserved for sources a space trusts (its
//! network, its peers, its VPN). Trusted sources are bounded by the whole capacity only: they
//! often reach us through one NAT address (a VPN concentrator, a NAT gateway), where a cap per
//! address would refuse real users.
//!
//! A gate made [`Gate::evicting`] (DNS over TCP) also makes room when a cap is reached by
//! closing the connection, among those the cap counts, that has been idle longest, if it has
//! been idle for a while (RFC 7766 §6.2.2): its owner marks activity with
//! [`Admitted::touch`] and hears of its eviction from [`Admitted::evicted`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How many connections a server holds open, and how many of them untrusted sources may.
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
    /// The server holds `total` connections.
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
    /// What the warnings call the server (`router`, `dns tcp`).
    name: &'static str,
    /// Connections idle this long may be closed to make room; `None`: never.
    evict_after: Option<Duration>,
    /// The clock of [`Admitted::touch`].
    started: Instant,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    public: usize,
    by_address: HashMap<IpAddr, usize>,
    by_prefix: HashMap<IpAddr, usize>,
    /// The open connections of an evicting gate, by id.
    open: HashMap<u64, Arc<Slot>>,
    next_id: u64,
    /// Refusals since the last warning, and when it was.
    refused: usize,
    warned: Option<Instant>,
}

/// What an evicting gate knows of one connection.
#[derive(Debug)]
struct Slot {
    /// The source's address when it counts against the public caps.
    public: Option<IpAddr>,
    /// Milliseconds after the gate's start of the last activity.
    last: AtomicU64,
    evicted: CancellationToken,
}

/// How often a refusal is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    id: u64,
    slot: Arc<Slot>,
}

impl Gate {
    /// A gate with `capacity` for the server `name`.
    pub fn new(name: &'static str, capacity: Capacity) -> Arc<Gate> {
        Arc::new(Gate {
            capacity,
            name,
            evict_after: None,
            started: Instant::now(),
            counts: Mutex::default(),
        })
    }

    /// A gate that, when a cap is reached, closes the connection idle longest under that cap if
    /// it has been idle for `after`.
    pub fn evicting(name: &'static str, capacity: Capacity, after: Duration) -> Arc<Gate> {
        Arc::new(Gate {
            capacity,
            name,
            evict_after: Some(after),
            started: Instant::now(),
            counts: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, which some space trusts or not.
    pub fn admit(self: &Arc<Gate>, ip: IpAddr, trusted: bool) -> Result<Admitted, Full> {
        let ip = ip.to_canonical();
        let mut counts = self.lock();
        // Each eviction frees one place; the newcomer may exceed another cap after it.
        let refused = loop {
            match self.full(&counts, ip, trusted) {
                Some(full) if self.evict(&mut counts, full, ip) => continue,
                full => break full,
            }
        };
        if let Some(full) = refused {
            counts.refused += 1;
            let now = Instant::now();
            if counts.warned.is_none_or(|at| now - at >= WARN_EVERY) {
                warn!(
                    refused = counts.refused,
                    open = counts.total,
                    public = counts.public,
                    last = %ip,
                    "{} connection cap reached ({full:?}): closing new connections",
                    self.name
                );
                counts.refused = 0;
                counts.warned = Some(now);
            }
            return Err(full);
        }
        let public = (!trusted).then_some(ip);
        counts.total += 1;
        if let Some(ip) = public {
            counts.public += 1;
            *counts.by_address.entry(ip).or_default() += 1;
            *counts.by_prefix.entry(prefix(ip)).or_default() += 1;
        }
        let slot = Arc::new(Slot {
            public,
            last: AtomicU64::new(self.now()),
            evicted: CancellationToken::new(),
        });
        counts.next_id += 1;
        let id = counts.next_id;
        if self.evict_after.is_some() {
            counts.open.insert(id, slot.clone());
        }
        Ok(Admitted {
            gate: self.clone(),
            id,
            slot,
        })
    }

    /// The cap a connection from `ip` would exceed, if any.
    fn full(&self, counts: &Counts, ip: IpAddr, trusted: bool) -> Option<Full> {
        let c = &self.capacity;
        if counts.total >= c.total {
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
        }
    }

    /// Closes the connection idle longest among those `full` counts, for a newcomer from `ip`,
    /// if it has been idle long enough; whether one was.
    fn evict(&self, counts: &mut Counts, full: Full, ip: IpAddr) -> bool {
        let Some(after) = self.evict_after else {
            return false;
        };
        let counted = |slot: &Slot| match full {
            Full::Total => true,
            Full::Public => slot.public.is_some(),
            Full::Address => slot.public == Some(ip),
            Full::Prefix => slot.public.map(prefix) == Some(prefix(ip)),
        };
        // Touched at or before this (ms on the gate's clock) is idle long enough.
        let Some(idle_since) = self.now().checked_sub(after.as_millis() as u64) else {
            return false;
        };
        let idlest = (counts.open.iter())
            .filter(|(_, slot)| counted(slot))
            .map(|(&id, slot)| (slot.last.load(Ordering::Relaxed), id))
            .filter(|&(last, _)| last <= idle_since)
            .min();
        let Some(slot) = idlest.and_then(|(_, id)| counts.open.remove(&id)) else {
            return false;
        };
        release(counts, slot.public);
        slot.evicted.cancel();
        true
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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

impl Admitted {
    /// Notes that the connection did something now (an evicting gate closes idle ones first).
    pub fn touch(&self) {
        self.slot.last.store(self.gate.now(), Ordering::Relaxed);
    }

    /// Resolves when the gate closed this connection to make room for another.
    pub async fn evicted(&self) {
        self.slot.evicted.cancelled().await;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.gate.lock();
        // An evicted connection was already counted out.
        if self.slot.evicted.is_cancelled() {
            return;
        }
        counts.open.remove(&self.id);
        release(&mut counts, self.slot.public);
    }
}

/// Counts one connection (from `public`, when untrusted) out.
fn release(counts: &mut Counts, public: Option<IpAddr>) {
    counts.total -= 1;
    if let Some(ip) = public {
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
        let gate = Gate::new(
            "test",
            Capacity {
                total: 10,
                public: 6,
                per_address: 2,
                per_prefix: 4,
            },
        );
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

    #[test]
    fn an_evicting_gate_closes_the_connection_idle_longest_under_the_cap_it_hit() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let capacity = Capacity {
            total: 3,
            public: 2,
            per_address: 2,
            per_prefix: 2,
        };
        let gate = Gate::evicting("test", capacity, Duration::ZERO);
        let older = gate.admit(ip("127.200.0.1"), false).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let idlest = gate.admit(ip("127.200.0.2"), false).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        older.touch();
        // The public share is full: the public connection idle longest goes, not the oldest.
        let newcomer = gate.admit(ip("127.201.0.1"), false).unwrap();
        assert!(idlest.slot.evicted.is_cancelled() && !older.slot.evicted.is_cancelled());
        assert_eq!(gate.open(), (2, 2));
        drop(idlest);
        assert_eq!(
            gate.open(),
            (2, 2),
            "an evicted connection is not counted out twice"
        );
        let trusted = gate.admit(ip("127.16.0.5"), true).unwrap();
        assert_eq!(gate.open(), (3, 2));
        std::thread::sleep(Duration::from_millis(5));
        trusted.touch();
        newcomer.touch();
        // Everything is full: a trusted newcomer takes the place of the idlest of all.
        let _second = gate.admit(ip("127.16.0.6"), true).unwrap();
        assert!(older.slot.evicted.is_cancelled());
        assert_eq!(gate.open(), (3, 1));

        // Connections active within the eviction time are never closed.
        let patient = Gate::evicting("test", capacity, Duration::from_secs(3600));
        let _held: Vec<_> = (0..3)
            .map(|n| patient.admit(ip(&format!("127.16.0.{n}")), true).unwrap())
            .collect();
        assert_eq!(
            patient.admit(ip("127.16.0.9"), true).unwrap_err(),
            Full::Total
        );
    }
}
