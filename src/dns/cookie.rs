//! DNS cookies (RFC 7873) with server cookies in the interoperable form of RFC 9018: version 1,
//! three reserved bytes, a timestamp and SipHash-2-4 over the client cookie, those eight bytes
//! and the client's address, keyed by a secret of the process.
//!
//! A query with a client cookie gets it back with a fresh server cookie. A query whose server
//! cookie checks out comes from the address it claims (it received our earlier reply), so rate
//! limiting exempts it (as BIND does). Cookies are not required: a query with a missing, stale
//! or wrong server cookie is answered as any other (RFC 7873 §5.2.3), and a COOKIE option of a
//! length no cookie has is FORMERR (§5.2.2).
//!
//! Each process draws its own secret, so a server cookie from one replica does not check out at
//! another behind the same address; the client then simply gets a new one.

use std::net::IpAddr;

use siphasher::sip::SipHasher24;

use super::wire::{self, Opt};

/// The COOKIE option's code.
const COOKIE: u16 = wire::OPTION_COOKIE;

/// A server cookie is valid this long after its timestamp (RFC 9018 §4.3)...
const VALID_FOR: u32 = 3600;
/// ...and from this long before it (clock differences between replicas).
const VALID_EARLY: u32 = 300;

/// The length of our COOKIE option: code, length, client cookie, server cookie.
const OPTION_LEN: usize = 4 + 8 + 16;

/// What a query says about cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No COOKIE option (or no OPT).
    None,
    /// A COOKIE option no cookie fits: FORMERR.
    Malformed,
    /// A client cookie, and no server cookie that checks out.
    Client([u8; 8]),
    /// A client cookie and our valid server cookie for this client.
    Valid([u8; 8]),
}

/// The process's cookie secret.
#[derive(Debug, Clone)]
pub struct Cookies {
    key: [u8; 16],
}

impl Cookies {
    /// Cookies under a new random secret.
    pub fn new() -> Cookies {
        Cookies {
            key: rand::random(),
        }
    }

    /// The cookies of `query` from `client` at `now` (seconds since the epoch, mod 2³²; asked
    /// only when the query has a cookie to check).
    pub fn check(&self, query: &[u8], client: IpAddr, now: impl FnOnce() -> u32) -> Seen {
        let Some(opt) = wire::find_opt(query) else {
            return Seen::None;
        };
        let Some((_, cookie)) = opt.options(query).find(|&(code, _)| code == COOKIE) else {
            return Seen::None;
        };
        if cookie.len() != 8 && !(16..=40).contains(&cookie.len()) {
            return Seen::Malformed;
        }
        let mut client_cookie = [0u8; 8];
        client_cookie.copy_from_slice(&cookie[..8]);
        let server = &cookie[8..];
        let valid = server.len() == 16 && server[..4] == [1, 0, 0, 0] && {
            let stamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
            // RFC 1982 arithmetic: the age is the difference mod 2³².
            let age = now().wrapping_sub(stamp);
            (age <= VALID_FOR || age.wrapping_neg() <= VALID_EARLY)
                && server[8..] == self.hash(&client_cookie, stamp, client)
        };
        match valid {
            true => Seen::Valid(client_cookie),
            false => Seen::Client(client_cookie),
        }
    }

    /// Adds `client_cookie` and a new server cookie to the OPT of `reply`, when the OPT is the
    /// last record and the reply stays within `limit` bytes.
    pub fn answer(
        &self,
        reply: &mut Vec<u8>,
        client_cookie: [u8; 8],
        client: IpAddr,
        now: u32,
        limit: usize,
    ) {
        let Some(Opt {
            rdlength_at,
            rdlength,
            last: true,
            ..
        }) = wire::find_opt(reply)
        else {
            return;
        };
        let Ok(grown) = u16::try_from(rdlength + OPTION_LEN) else {
            return;
        };
        if reply.len() + OPTION_LEN > limit {
            return;
        }
        reply[rdlength_at..rdlength_at + 2].copy_from_slice(&grown.to_be_bytes());
        reply.extend_from_slice(&COOKIE.to_be_bytes());
        reply.extend_from_slice(&24u16.to_be_bytes());
        reply.extend_from_slice(&client_cookie);
        reply.extend_from_slice(&[1, 0, 0, 0]);
        reply.extend_from_slice(&now.to_be_bytes());
        reply.extend_from_slice(&self.hash(&client_cookie, now, client));
    }

    /// RFC 9018 §4.4: SipHash-2-4 over client cookie, version, reserved, timestamp, address.
    fn hash(&self, client_cookie: &[u8; 8], stamp: u32, client: IpAddr) -> [u8; 8] {
        use std::hash::Hasher;
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(client_cookie);
        h.write(&[1, 0, 0, 0]);
        h.write(&stamp.to_be_bytes());
        match client.to_canonical() {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
        h.finish().to_be_bytes()
    }
}

impl Default for Cookies {
    fn default() -> Cookies {
        Cookies::new()
    }
}

/// FORMERR for `query`, built on `reply` (its header and question): no records.
pub fn formerr(reply: Vec<u8>) -> Vec<u8> {
    let mut reply = wire::header_and_question(reply);
    if let Some(rcode) = reply.get_mut(3) {
        *rcode = (*rcode & 0xf0) | 1;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query with an OPT carrying a COOKIE option of `cookie`, and its reply's start: the
    /// same bytes with QR set (the OPT without options, as `answer` writes it).
    fn query(cookie: &[u8]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend_from_slice(&(cookie.len() as u16 + 4).to_be_bytes());
        m.extend_from_slice(&COOKIE.to_be_bytes());
        m.extend_from_slice(&(cookie.len() as u16).to_be_bytes());
        m.extend_from_slice(cookie);
        m
    }

    fn reply() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x85, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn a_server_cookie_checks_out_for_its_client_and_time_only() {
        let cookies = Cookies::new();
        let client: IpAddr = "127.200.0.1".parse().unwrap();
        let ours = [7u8; 8];
        assert_eq!(
            cookies.check(&query(&ours), client, || 1000),
            Seen::Client(ours)
        );

        let mut r = reply();
        cookies.answer(&mut r, ours, client, 1000, 1232);
        let opt = wire::find_opt(&r).unwrap();
        let (code, cookie) = opt.options(&r).next().unwrap();
        assert_eq!((code, cookie.len()), (COOKIE, 24));
        assert_eq!(&cookie[..8], &ours);
        assert_eq!(&cookie[8..16], &[1, 0, 0, 0, 0, 0, 0x03, 0xe8]);

        let back = query(cookie);
        assert_eq!(cookies.check(&back, client, || 1000), Seen::Valid(ours));
        assert_eq!(
            cookies.check(&back, client, || 1000 + 3600),
            Seen::Valid(ours)
        );
        assert_eq!(
            cookies.check(&back, client, || 1000 + 3601),
            Seen::Client(ours)
        );
        assert_eq!(
            cookies.check(&back, client, || 1000 - 300),
            Seen::Valid(ours)
        );
        assert_eq!(
            cookies.check(&back, client, || 1000 - 301),
            Seen::Client(ours)
        );
        let other: IpAddr = "127.200.0.2".parse().unwrap();
        assert_eq!(cookies.check(&back, other, || 1000), Seen::Client(ours));
        let mapped: IpAddr = "::ffff:127.200.0.1".parse().unwrap();
        assert_eq!(cookies.check(&back, mapped, || 1000), Seen::Valid(ours));
        assert_eq!(
            Cookies::new().check(&back, client, || 1000),
            Seen::Client(ours)
        );
        // Time wraps (RFC 1982): a cookie from just before the wrap is still young after it.
        let mut r = reply();
        cookies.answer(&mut r, ours, client, u32::MAX - 10, 1232);
        let opt = wire::find_opt(&r).unwrap();
        let (_, cookie) = opt.options(&r).next().unwrap();
        assert_eq!(
            cookies.check(&query(cookie), client, || 20),
            Seen::Valid(ours)
        );
    }

    #[test]
    fn odd_lengths_are_malformed_and_no_room_means_no_cookie() {
        let cookies = Cookies::new();
        let client: IpAddr = "127.200.0.1".parse().unwrap();
        for len in [0, 1, 7, 9, 15, 41] {
            assert_eq!(
                cookies.check(&query(&vec![1; len]), client, || 0),
                Seen::Malformed,
                "{len}"
            );
        }
        let mut r = reply();
        let before = r.clone();
        cookies.answer(&mut r, [1; 8], client, 0, before.len() + OPTION_LEN - 1);
        assert_eq!(r, before);
        let f = formerr(reply());
        assert_eq!((f[3] & 0x0f, &f[6..12]), (1, &[0u8; 6][..]));
        assert_eq!(f.len(), 27);
    }
}
