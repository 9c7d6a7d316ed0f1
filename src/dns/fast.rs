//! The fast path of [`answer`](super::answer::answer): the answers that make up most of a busy
//! server's traffic, written as bytes with no `Message` and no `Name` parsed. An A or AAAA query
//! for an app's exact name that the asker may see gets its addresses (or, for an app name under
//! its domain with none of the type, NODATA with the SOA); an asker no space trusts,
//! asking below every name it may see, gets REFUSED; a trusted asker asking for a name under
//! an app domain that no app it may see owns gets NXDOMAIN with the SOA (policy `nxdomain`).
//!
//! Pure, like `answer`. It reads the query in place (header, one question, at most an OPT
//! without options and nothing after it), looks the lower-cased wire name up in the snapshot
//! (the host table; the public names, ancestors as suffixes of the same buffer), asks the one
//! "who sees what" policy ([`Snapshot::addresses_for`]) with the trust of the app's own space,
//! and writes what the full path would write, byte for byte: the same header flags, the
//! question as sent, one record per address with its owner compressed to the question, our
//! OPT. Anything else returns `None` and takes the full path, which stays the reference: a
//! test compares both over a large random query set, and the `answer` fuzz target compares
//! them on every input.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;

use super::answer::{Answer, Outcome, Transport, UDP_PAYLOAD};
use crate::snapshot::{Apex, AppRef, Policy, Snapshot, ZoneView, is_wire};

/// The longest wire-format name (RFC 1035 §3.1).
const MAX_NAME: usize = 255;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The answer to `query` when it is the common case; `None` hands it to the full path.
pub fn answer(
    snapshot: &Snapshot,
    client: IpAddr,
    transport: Transport,
    query: &[u8],
) -> Option<Answer> {
    let header = query.get(..12)?;
    let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    // QR=0, opcode QUERY; one question, no answers or authority, at most the OPT.
    if header[2] & 0xf8 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return None;
    }
    let additionals = count(10);

    let mut key = [0u8; MAX_NAME];
    let mut at = 12;
    let mut len = 0;
    loop {
        let label = usize::from(*query.get(at)?);
        // A compression pointer or an extended label type: the full path decides.
        if label > 63 || len + label + 1 > MAX_NAME {
            return None;
        }
        let bytes = query.get(at..at + 1 + label)?;
        key[len] = bytes[0];
        for (k, b) in key[len + 1..len + 1 + label].iter_mut().zip(&bytes[1..]) {
            *k = b.to_ascii_lowercase();
        }
        len += label + 1;
        at += label + 1;
        if label == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes(query.get(at..at + 2)?.try_into().ok()?);
    let qclass = u16::from_be_bytes(query.get(at + 2..at + 4)?.try_into().ok()?);
    let question_end = at + 4;
    if qtype == TYPE_OPT || qclass != CLASS_IN {
        return None;
    }

    // The OPT: root owner, version 0, no options, and the message ends with it.
    let (limit, dnssec_ok) = match additionals {
        0 if query.len() == question_end => (512, false),
        1 => {
            let opt = query.get(question_end..)?;
            if opt.len() != 11 || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT {
                return None;
            }
            let payload = u16::from_be_bytes([opt[3], opt[4]]);
            // TTL: extended RCODE (must be 0 in a query we take here), version; then RDLENGTH.
            if opt[5] != 0 || opt[6] != 0 || opt[9] != 0 || opt[10] != 0 {
                return None;
            }
            (payload.clamp(512, UDP_PAYLOAD), opt[7] & 0x80 != 0)
        }
        _ => return None,
    };
    let query = Parsed {
        bytes: query,
        key: &key[..len],
        qtype,
        question_end,
        edns: (additionals == 1).then_some(dnssec_ok),
        limit: match transport {
            Transport::Udp => usize::from(limit),
            Transport::Tcp => usize::from(u16::MAX),
        },
    };
    // Below every name an untrusted asker may see: REFUSED, whatever the type. Decided before
    // the name is looked up: a public flood never touches the million-entry host table.
    let trusted = snapshot.access.trusted(client);
    if !trusted && !snapshot.public_may_see(query.key) {
        return refused(&query);
    }
    // The app that owns the name, if the asker may see it.
    let visible = snapshot.exact_host(query.key).and_then(|app| {
        let trust = snapshot.access.trust(client, app.space);
        Some((app, snapshot.addresses_for(app, trust.as_ref())?))
    });
    if let Some((app, ips)) = visible {
        return match qtype {
            TYPE_A | TYPE_AAAA if ips.iter().any(|ip| ip.is_ipv4() == (qtype == TYPE_A)) => {
                addresses(snapshot, app, ips, &query)
            }
            TYPE_A | TYPE_AAAA => nodata(snapshot, client, app, &query),
            _ => None,
        };
    }
    if !trusted {
        return None;
    }
    unlisted(snapshot, client, &query)
}

/// A query the fast path can take, read in place.
struct Parsed<'q> {
    /// The whole message.
    bytes: &'q [u8],
    /// The question's name, lower-cased wire form.
    key: &'q [u8],
    qtype: u16,
    /// Where the question ends.
    question_end: usize,
    /// With an OPT: whether it has DO.
    edns: Option<bool>,
    /// The most bytes the reply may have.
    limit: usize,
}

/// The addresses `ips` of an app's exact name, when it has some of the type asked.
fn addresses(
    snapshot: &Snapshot,
    app: AppRef,
    addresses: &[IpAddr],
    query: &Parsed,
) -> Option<Answer> {
    let ttl = snapshot.spaces[app.space].ttl;
    let qtype = query.qtype;
    let wanted = |ip: &&IpAddr| match qtype {
        TYPE_A => ip.is_ipv4(),
        _ => ip.is_ipv6(),
    };
    let answers = addresses.iter().filter(wanted).count();

    let mut reply = start(
        query,
        true,
        ResponseCode::NoError,
        u16::try_from(answers).ok()?,
    );
    for ip in addresses.iter().filter(wanted) {
        // The owner is the question's name, at offset 12.
        reply.extend_from_slice(&[0xc0, 12]);
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        match ip {
            IpAddr::V4(ip) => {
                reply.extend_from_slice(&[0, 4]);
                reply.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                reply.extend_from_slice(&[0, 16]);
                reply.extend_from_slice(&ip.octets());
            }
        }
    }
    done(query, reply, ResponseCode::NoError, Some(app.space))
}

/// NXDOMAIN for a name under an app domain that no app the asker may see owns, when the
/// asker's space answers such names itself (`unlisted.policy: nxdomain`), with the SOA of that
/// space's view of the domain.
fn unlisted(snapshot: &Snapshot, client: IpAddr, query: &Parsed) -> Option<Answer> {
    // Zone transfers are REFUSED before any lookup (the full path says so).
    if matches!(query.qtype, 251 | 252) {
        return None;
    }
    // The closest apex is an app domain, and the name is below it.
    let (at, true) = snapshot.closest_apex(query.key)? else {
        return None;
    };
    if at == 0 {
        return None;
    }
    let domain = &query.key[at..];
    // The first space that trusts the asker and uses this domain answers (its SOA, its policy).
    let space = snapshot
        .access
        .first_trusting(client, |s| is_wire(&snapshot.spaces[s].domain, domain))?;
    let view = &snapshot.spaces[space];
    // Its nameservers' names answer their addresses: the full path.
    if view.unlisted != Policy::Nxdomain
        || view.nameservers.iter().any(|(n, _)| is_wire(n, query.key))
    {
        return None;
    }
    let zone = ZoneView {
        apex: &view.domain,
        kind: Apex::Domain,
        space,
        public: false,
    };
    negative(snapshot, query, &zone, ResponseCode::NXDomain)
}

/// NODATA for an app's own name (`<app>.<domain>`) that the asker may see but that has no
/// address of the type asked: the SOA of the app domain as the asker sees it (its first
/// trusting space's, or the app space's public identity).
fn nodata(snapshot: &Snapshot, client: IpAddr, app: AppRef, query: &Parsed) -> Option<Answer> {
    let domain = &snapshot.spaces[app.space].domain;
    // The name is right below the app domain, and no apex lies above that domain.
    let (at, true) = snapshot.closest_apex(query.key)? else {
        return None;
    };
    let above = at + usize::from(*query.key.get(at)?) + 1;
    if at == 0
        || !is_wire(domain, &query.key[at..])
        || snapshot.closest_apex(query.key.get(above..)?).is_some()
    {
        return None;
    }
    let trusting = snapshot
        .access
        .first_trusting(client, |s| &snapshot.spaces[s].domain == domain);
    let zone = ZoneView {
        apex: domain,
        kind: Apex::Domain,
        space: trusting.unwrap_or(app.space),
        public: trusting.is_none(),
    };
    negative(snapshot, query, &zone, ResponseCode::NoError)
}

/// A negative answer (NXDOMAIN or NODATA) with `zone`'s SOA in the authority section, written
/// with hickory's name compression (RFC 1035 §4.1.4) so that the bytes are the full path's.
fn negative(
    snapshot: &Snapshot,
    query: &Parsed,
    zone: &ZoneView,
    rcode: ResponseCode,
) -> Option<Answer> {
    let soa = snapshot.soa(zone)?;
    let RData::SOA(data) = &soa.data else {
        return None;
    };
    let mut reply = start(query, true, rcode, 0);
    reply[9] = 1; // NSCOUNT
    // The question's labels end before its root byte, QTYPE and QCLASS.
    let mut names = Names::new(&reply, 12, query.question_end - 5);
    names.emit(&mut reply, soa.name.iter());
    reply.extend_from_slice(&6u16.to_be_bytes());
    reply.extend_from_slice(&CLASS_IN.to_be_bytes());
    // The negative TTL: min(SOA TTL, MINIMUM) (RFC 2308 §3).
    reply.extend_from_slice(&soa.ttl.min(data.minimum).to_be_bytes());
    let rdlength_at = reply.len();
    reply.extend_from_slice(&[0, 0]);
    names.emit(&mut reply, data.mname.iter());
    names.emit(&mut reply, data.rname.iter());
    reply.extend_from_slice(&data.serial.to_be_bytes());
    reply.extend_from_slice(&data.refresh.to_be_bytes());
    reply.extend_from_slice(&data.retry.to_be_bytes());
    reply.extend_from_slice(&data.expire.to_be_bytes());
    reply.extend_from_slice(&data.minimum.to_be_bytes());
    let rdlength = u16::try_from(reply.len() - rdlength_at - 2).ok()?;
    reply[rdlength_at..rdlength_at + 2].copy_from_slice(&rdlength.to_be_bytes());
    done(query, reply, rcode, Some(zone.space))
}

/// The names written so far and where, for compression as hickory's encoder does it: every
/// label sequence written (up to the end of its name, as written, case and all) can be pointed
/// to by a later name whose tail is byte-for-byte the same; the first such one wins.
struct Names {
    /// (offset in the reply, start and end in `written`).
    suffixes: Vec<(usize, usize, usize)>,
    /// The uncompressed label sequences, one after another.
    written: Vec<u8>,
}

impl Names {
    /// Starts with the question's name, at `start..end` of `reply` (without its final 0).
    fn new(reply: &[u8], start: usize, end: usize) -> Names {
        let mut names = Names {
            suffixes: Vec::with_capacity(8),
            written: Vec::with_capacity(128),
        };
        let mut at = start;
        while at < end {
            names.remember(at, &reply[at..end]);
            at += usize::from(reply[at]) + 1;
        }
        names
    }

    fn remember(&mut self, offset: usize, labels: &[u8]) {
        let from = self.written.len();
        self.written.extend_from_slice(labels);
        self.suffixes.push((offset, from, self.written.len()));
    }

    /// Writes the name of `labels` to `reply`, ending in a pointer where a tail was written
    /// before.
    fn emit<'l>(&mut self, reply: &mut Vec<u8>, labels: impl Iterator<Item = &'l [u8]>) {
        let first = reply.len();
        let mut starts = [0usize; 128];
        let mut count = 0;
        for label in labels {
            if let Some(slot) = starts.get_mut(count) {
                *slot = reply.len();
                count += 1;
            }
            reply.push(label.len() as u8);
            reply.extend_from_slice(label);
        }
        let end = reply.len();
        let tail: Vec<u8> = reply[first..end].to_vec();
        for &start in &starts[..count] {
            let search = &tail[start - first..];
            let found = (self.suffixes.iter())
                .find(|&&(_, from, to)| &self.written[from..to] == search)
                .map(|&(offset, _, _)| offset);
            match found {
                Some(offset) if offset < 0x3fff => {
                    reply.truncate(start);
                    reply.extend_from_slice(&(0xc000 | offset as u16).to_be_bytes());
                    return;
                }
                _ => self.remember(start, search),
            }
        }
        reply.push(0);
    }
}

/// REFUSED, not authoritative, with the question and our OPT.
fn refused(query: &Parsed) -> Option<Answer> {
    let reply = start(query, false, ResponseCode::Refused, 0);
    done(query, reply, ResponseCode::Refused, None)
}

/// The header and question of the reply to `query`, for `answers` records to follow.
fn start(query: &Parsed, authoritative: bool, rcode: ResponseCode, answers: u16) -> Vec<u8> {
    let header = &query.bytes[..12];
    let mut reply = Vec::with_capacity(query.question_end + usize::from(answers) * 28 + 11);
    reply.extend_from_slice(&header[..2]);
    // QR, AA when ours, the asker's RD; the asker's CD and the RCODE (all of ours fit 4 bits).
    let aa = if authoritative { 0x04 } else { 0 };
    reply.push(0x80 | aa | (header[2] & 0x01));
    reply.push((header[3] & 0x10) | (u16::from(rcode) & 0x0f) as u8);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, u8::from(query.edns.is_some())]);
    reply.extend_from_slice(&query.bytes[12..query.question_end]);
    reply
}

/// Appends our OPT when the query had one (payload 1232, version 0, the asker's DO) and
/// makes the answer; `None` when it is too big for the asker, so the full path truncates.
fn done(
    query: &Parsed,
    mut reply: Vec<u8>,
    rcode: ResponseCode,
    space: Option<usize>,
) -> Option<Answer> {
    if let Some(dnssec_ok) = query.edns {
        reply.extend_from_slice(&[0, 0, 41]);
        reply.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
        reply.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    (reply.len() <= query.limit).then_some(Answer {
        reply: Some(reply),
        outcome: Outcome {
            rcode,
            space,
            truncated: false,
            forward: None,
        },
    })
}
