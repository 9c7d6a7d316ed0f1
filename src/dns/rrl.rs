//! Response rate limiting for UDP, in the spirit of BIND's `rate-limit` and Knot's `mod-rrl`.
//!
//! A spoofed query makes us send a reply to its victim; RRL caps how many replies one source
//! prefix (a /24, or a /56 for IPv6) gets per second in one class of response: answers per name
//! and type, empty answers per name, NXDOMAIN, and errors and refusals. Each (class, prefix,
//! name) has a token bucket refilled at the rate, holding a second's worth. Past it, a reply is
//! dropped, except that every `slip`-th one goes out as an empty truncated reply (TC=1): a real
//! resolver behind a limited prefix retries over TCP, where no one can spoof, and still gets
//! its answer. Rates are per second: tight for sources no space trusts, generous for trusted
//! ones (a space's resolvers ask for many clients). TCP replies are never limited.
//!
//! Buckets live in a fixed table of atomics indexed by a keyed hash, shared by every UDP worker;
//! two keys that collide share a bucket (Knot's table is lossy the same way). Updates are one
//! compare-and-swap; nothing allocates.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::wire;

/// Buckets in the table (a power of two).
const BUCKETS: usize = 1 << 16;

/// The highest rate a bucket holds (a second's worth of milli-tokens fills 32 bits).
pub const MAX_RATE: u32 = 4_000_000;

/// Rate limits, in responses per second per (class, prefix, name); 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// For sources no space trusts.
    pub public: u32,
    /// For sources a space trusts.
    pub trusted: u32,
    /// Every `slip`-th limited reply goes out truncated; 0 drops them all, 1 truncates all.
    pub slip: u32,
}

impl Default for RateLimits {
    /// 20 a second for the public (BIND's documentation suggests 5 to 20); 100,000 for trusted
    /// sources, whose resolvers ask for whole networks (a busy one sends tens of thousands of
    /// NXDOMAIN-bound queries a second, all one class); slip 2 (BIND's and Knot's default).
    fn default() -> RateLimits {
        RateLimits {
            public: 20,
            trusted: 100_000,
            slip: 2,
        }
    }
}

/// What to do with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send it empty and truncated instead.
    Slip,
    /// Send nothing.
    Drop,
}

/// The shared bucket table.
pub struct Rrl {
    limits: RateLimits,
    /// Per bucket: the last refill (ms on our clock, mod 2³²) in the high half, milli-tokens in
    /// the low half.
    buckets: Box<[AtomicU64]>,
    started: Instant,
    hasher: foldhash::fast::RandomState,
    limited: AtomicU32,
}

/// Response classes, as BIND counts them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Answer = 1,
    Empty = 2,
    NxDomain = 3,
    Error = 4,
}

impl Rrl {
    /// An empty table with `limits` (rates above [`MAX_RATE`] count as [`MAX_RATE`]).
    pub fn new(mut limits: RateLimits) -> Rrl {
        limits.public = limits.public.min(MAX_RATE);
        limits.trusted = limits.trusted.min(MAX_RATE);
        Rrl {
            limits,
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            started: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            limited: AtomicU32::new(0),
        }
    }

    /// Whether `reply` to `query` may go to `client`, which a space trusts or not.
    pub fn check(&self, client: IpAddr, trusted: bool, query: &[u8], reply: &[u8]) -> Verdict {
        let rate = match trusted {
            true => self.limits.trusted,
            false => self.limits.public,
        };
        if rate == 0 {
            return Verdict::Send;
        }
        let bucket = &self.buckets[self.key(client, query, reply) & (BUCKETS - 1)];
        let now = self.started.elapsed().as_millis() as u32;
        let full = u64::from(rate) * 1000;
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (last, tokens) = ((current >> 32) as u32, current & 0xffff_ffff);
            // A new bucket (all zero) starts full.
            let tokens = match current {
                0 => full,
                _ => (tokens + u64::from(now.wrapping_sub(last)) * u64::from(rate)).min(full),
            };
            let Some(left) = tokens.checked_sub(1000) else {
                break;
            };
            let next = (u64::from(now) << 32) | left.max(1);
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Verdict::Send,
                Err(seen) => current = seen,
            }
        }
        let slip = self.limits.slip;
        let n = self.limited.fetch_add(1, Ordering::Relaxed);
        match slip {
            0 => Verdict::Drop,
            _ if n.is_multiple_of(slip) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }

    /// The bucket key: class, source prefix, and for answers the name and type asked.
    fn key(&self, client: IpAddr, query: &[u8], reply: &[u8]) -> usize {
        let rcode = reply.get(3).map_or(2, |b| b & 0x0f);
        let answers = reply
            .get(6..8)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let class = match (rcode, answers) {
            (0, 0) => Class::Empty,
            (0, _) => Class::Answer,
            (3, _) => Class::NxDomain,
            _ => Class::Error,
        };
        let mut h = self.hasher.build_hasher();
        h.write_u8(class as u8);
        match client.to_canonical() {
            IpAddr::V4(ip) => h.write_u32(u32::from(ip) & 0xffff_ff00),
            IpAddr::V6(ip) => h.write_u128(u128::from(ip) & !((1u128 << 72) - 1)),
        }
        if matches!(class, Class::Answer | Class::Empty) {
            // The name, case-folded (a flood varying case must not get fresh buckets), and type.
            let end = wire::question_end(query).unwrap_or(12).min(query.len());
            for &b in query.get(12..end).unwrap_or(&[]) {
                h.write_u8(b.to_ascii_lowercase());
            }
        }
        h.finish() as usize
    }
}

/// The truncated stand-in for `reply`: its header and question, TC set, no records.
pub fn slipped(reply: Vec<u8>) -> Vec<u8> {
    let mut reply = wire::header_and_question(reply);
    if let Some(flags) = reply.get_mut(2) {
        *flags |= 0x02;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &[u8], rcode: u8, answers: u16) -> Vec<u8> {
        let mut m = vec![0, 1, 0x84, rcode, 0, 1];
        m.extend_from_slice(&answers.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(name);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    #[test]
    fn a_prefix_gets_its_rate_per_class_and_name_then_slips_every_other_reply() {
        let rrl = Rrl::new(RateLimits {
            public: 5,
            trusted: 50,
            slip: 2,
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = message(b"\x01a\x07example\x00", 0, 1);
        let a_upper = message(b"\x01A\x07EXAMPLE\x00", 0, 1);
        let b = message(b"\x01b\x07example\x00", 0, 1);
        let verdicts = |client: &str, trusted, m: &[u8], n| -> Vec<Verdict> {
            (0..n)
                .map(|_| rrl.check(ip(client), trusted, m, m))
                .collect()
        };
        // A second's worth, then half dropped and half slipped.
        let first = verdicts("127.200.0.1", false, &a, 9);
        assert_eq!(first[..5], [Verdict::Send; 5]);
        assert!(first[5..].contains(&Verdict::Slip) && first[5..].contains(&Verdict::Drop));
        // The same /24, and the same name in other case, share the bucket; another name or
        // another prefix does not.
        assert!(!verdicts("127.200.0.77", false, &a_upper, 3).contains(&Verdict::Send));
        assert_eq!(verdicts("127.200.0.1", false, &b, 5), [Verdict::Send; 5]);
        assert_eq!(verdicts("127.201.0.1", false, &a, 5), [Verdict::Send; 5]);
        // NXDOMAIN for any name is one class per prefix.
        let nx1 = message(b"\x02x1\x07example\x00", 3, 0);
        let nx2 = message(b"\x02x2\x07example\x00", 3, 0);
        assert_eq!(verdicts("127.202.0.1", false, &nx1, 5), [Verdict::Send; 5]);
        assert_ne!(
            rrl.check(ip("127.202.0.1"), false, &nx2, &nx2),
            Verdict::Send
        );
        // Trusted sources have their own, higher rate.
        assert_eq!(verdicts("127.16.0.5", true, &a, 50), [Verdict::Send; 50]);
        // Time refills: 5 a second is one per 200 ms.
        std::thread::sleep(std::time::Duration::from_millis(450));
        assert_eq!(verdicts("127.200.0.1", false, &a, 2), [Verdict::Send; 2]);
    }

    #[test]
    fn a_slipped_reply_is_the_question_with_tc() {
        let reply = message(b"\x01a\x07example\x00", 0, 1);
        let mut full = reply.clone();
        full.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
        let s = slipped(full);
        assert_eq!(s.len(), reply.len());
        assert_eq!(s[2] & 0x02, 0x02);
        assert_eq!(&s[6..12], &[0; 6]);
    }
}
