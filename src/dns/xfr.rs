//! Zone transfers to secondaries, one audience at a time: AXFR and IXFR (RFC 5936, 1995), signed
//! with TSIG (RFC 8945), and a catalog zone per audience (RFC 9432).
//!
//! A request signed with a secondary's key, from one of its addresses, is answered as that
//! secondary's audience sees the zones: the space's own network, one of its peers, or the
//! public. The audience is played by a source address it holds, and the records of a transfer
//! come from [`answer`] for that source (app hosts, a million of them, straight from
//! [`Snapshot::addresses`], which is what `answer` uses; a test holds the two together), so a
//! secondary serves exactly what spaceroute answers its audience. The zones of an audience are the apexes whose SOA the audience gets; the app
//! domain is one of them only when it is wholly ours for that audience (`unlisted: nxdomain`):
//! a secondary cannot relay unlisted names as we do. Service discovery (`app.localspace.`) is
//! never transferred: its names are not listed anywhere a secondary could find them.
//!
//! Pure, like `answer`: the caller passes the time and does the I/O (the one piece of state is a
//! memo of each audience's zones per snapshot, [`members`]). A transfer is a
//! [`Transfer`], an iterator of messages built as they are taken, so a million-app zone is never
//! in memory whole. IXFR answers from the [`Journal`] of recent changes, and with the whole zone
//! (RFC 1995 §4 allows it) when the journal does not reach back to the secondary's serial.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{NS, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::answer::{Transport, answer};
use super::tsig::{self, Rejected, Signed, Signer};
use crate::snapshot::{
    LOCALSPACE, Policy, Secondary, Snapshot, TsigKey, XfrAudience, address_record, is_wire,
    serial_after,
};

/// The most bytes of records in one transfer message, before its TSIG record.
const MESSAGE_BUDGET: usize = 16_000;
/// The most records in one transfer message: hickory compresses the first 120 names of a
/// message and writes the rest whole (a bound against quadratic work), so larger messages
/// would carry a third more bytes.
const MESSAGE_RECORDS: usize = 110;

/// What to send for a request that [`handle`] took.
pub enum Xfr {
    /// One message, signed (or carrying an unsigned TSIG error).
    Reply(Vec<u8>),
    /// A transfer over TCP: its messages, signed as they are built.
    Transfer(Box<Transfer>),
}

/// Whose secondary it is: the space that lists it.
#[derive(Debug, Clone, Copy)]
pub struct Who {
    /// The space's index in the snapshot.
    pub space: usize,
}

/// A request signed with one of our secondaries' keys: the answer, or `None` when the request
/// carries no TSIG with a key we know (the answer function then answers it as any other).
pub fn handle(
    snapshot: &Arc<Snapshot>,
    journal: &Journal,
    client: IpAddr,
    transport: Transport,
    query: &[u8],
    now: u64,
) -> Option<Xfr> {
    let signed = match tsig::find(query)? {
        Ok(signed) => signed,
        Err(()) => return None,
    };
    let (who, secondary) = find_key(snapshot, &signed.key)?;
    let key = &secondary.key;
    let (header, question) = header_and_question(query)?;
    if let Err(rejected) = tsig::verify(query, &signed, key, now) {
        return Some(Xfr::Reply(rejection(
            &header, question, &signed, key, rejected, now,
        )));
    }
    let mut signer = Signer::new(key, &signed.mac, now);
    let sign = |mut reply: Vec<u8>, signer: &mut Signer| {
        signer.sign(&mut reply, 0);
        Xfr::Reply(reply)
    };
    let client = client.to_canonical();
    let (h0, q0) = (header, question.clone());
    let refused = move |signer: &mut Signer| {
        sign(
            message(&h0, q0.clone(), ResponseCode::Refused, Vec::new()),
            signer,
        )
    };
    if !secondary.sources.iter().any(|s| s.to_canonical() == client) {
        return Some(refused(&mut signer));
    }
    let Some(source) = audience_source(snapshot, &who, secondary.audience) else {
        return Some(refused(&mut signer));
    };
    let Some(question) = question else {
        return Some(refused(&mut signer));
    };
    let qname = question.name().to_lowercase();
    let is_catalog = catalog_name(snapshot, &who, secondary.audience).as_ref() == Some(&qname);
    let rtype = question.query_type();
    let unsigned = &query[..signed.start];
    match rtype {
        RecordType::AXFR | RecordType::IXFR => {
            // A zone of this audience (or its catalog), and its SOA as the audience sees it.
            let known = is_catalog || members(snapshot, source).iter().any(|m| m.0 == qname);
            let Some(soa) = known
                .then(|| zone_soa(snapshot, source, &qname, is_catalog))
                .flatten()
            else {
                return Some(refused(&mut signer));
            };
            let serial = soa_serial(&soa);
            let theirs = (rtype == RecordType::IXFR)
                .then(|| ixfr_serial(unsigned))
                .flatten();
            let up_to_date = theirs.is_some_and(|t| !serial_after(serial, t));
            if transport == Transport::Udp || up_to_date {
                // AXFR over UDP carries no data; IXFR over UDP, or for a secondary that is up
                // to date, gets the current SOA alone (RFC 1995 §2, §4).
                if rtype == RecordType::AXFR {
                    return Some(refused(&mut signer));
                }
                let answers = vec![soa];
                let reply = message(&header, Some(question), ResponseCode::NoError, answers);
                return Some(sign(reply, &mut signer));
            }
            let changes = theirs.and_then(|from| journal.changes(source, &qname, from, serial));
            let zone = match (changes, is_catalog) {
                // IXFR (RFC 1995 §4): the differences since the secondary's serial, each as
                // its old SOA, what went, its new SOA, what came.
                (Some(changes), _) => {
                    let body: Vec<Record> = (changes.into_iter())
                        .flat_map(|d| {
                            let Diff {
                                from,
                                to,
                                removed,
                                added,
                            } = d;
                            std::iter::once(from)
                                .chain(removed)
                                .chain(std::iter::once(to))
                                .chain(added)
                        })
                        .collect();
                    Zone::Records(body.into_iter())
                }
                (None, true) => {
                    Zone::Records(catalog_records(snapshot, source, &qname).into_iter())
                }
                (None, false) => Zone::Names(Box::new(zone_names(snapshot, source, &qname))),
            };
            Some(Xfr::Transfer(Box::new(Transfer {
                snapshot: snapshot.clone(),
                source,
                header,
                question,
                zone,
                soa,
                started: false,
                pending: Vec::new(),
                done: false,
                signer,
            })))
        }
        _ if is_catalog => {
            let answers = match rtype {
                RecordType::SOA => catalog_soa(snapshot, source, &qname).into_iter().collect(),
                _ => Vec::new(),
            };
            let reply = message(&header, Some(question), ResponseCode::NoError, answers);
            Some(sign(reply, &mut signer))
        }
        _ => {
            // Any other signed query (a secondary's SOA refresh): the audience's answer.
            let mut reply = answer(snapshot, source, transport, &strip_tsig(unsigned))
                .reply
                .unwrap_or_default();
            if reply.len() < 12 {
                return Some(refused(&mut signer));
            }
            reply[..2].copy_from_slice(&header.metadata.id.to_be_bytes());
            Some(sign(reply, &mut signer))
        }
    }
}

/// The secondary whose key is `key` (lower-case wire form).
fn find_key<'s>(snapshot: &'s Snapshot, key: &[u8]) -> Option<(Who, &'s Secondary)> {
    snapshot.spaces.iter().enumerate().find_map(|(s, space)| {
        let secondary = (space.secondaries.iter()).find(|sec| is_wire(&sec.key.name, key))?;
        Some((Who { space: s }, secondary))
    })
}

/// Every secondary of every space, with the source address that plays its audience.
pub fn secondaries(snapshot: &Snapshot) -> Vec<(Who, &Secondary, IpAddr)> {
    let mut out = Vec::new();
    for (s, space) in snapshot.spaces.iter().enumerate() {
        for secondary in &space.secondaries {
            let who = Who { space: s };
            if let Some(source) = audience_source(snapshot, &who, secondary.audience) {
                out.push((who, secondary, source));
            }
        }
    }
    out
}

/// A source address that the audience holds: the first address of the space's network or of
/// the peer's first network; for the public, a documentation address no space trusts. Only
/// ever classified, never sent anything.
pub fn audience_source(snapshot: &Snapshot, who: &Who, audience: XfrAudience) -> Option<IpAddr> {
    let space = snapshot.spaces.get(who.space)?;
    match audience {
        XfrAudience::Space => Some(space.network.network()),
        XfrAudience::Peer(i) => Some(space.peers.get(i)?.first()?.network()),
        XfrAudience::Public => ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1"]
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .find(|ip| snapshot.access.classify(*ip).is_empty()),
    }
}

/// Where the catalog zones are.
const CATALOGS: &str = "catalog.spaceroute.invalid.";

/// The name of an audience's catalog zone: `<space>.catalog.spaceroute.invalid.`,
/// `<peer>.<space>.catalog.spaceroute.invalid.`, `_public.catalog.spaceroute.invalid.`.
pub fn catalog_name(snapshot: &Snapshot, who: &Who, audience: XfrAudience) -> Option<Name> {
    let space = snapshot.spaces.get(who.space)?;
    let text = match audience {
        XfrAudience::Space => format!("{}.{CATALOGS}", space.name),
        XfrAudience::Peer(i) => format!("{}.{}.{CATALOGS}", space.peer_names.get(i)?, space.name),
        XfrAudience::Public => format!("_public.{CATALOGS}"),
    };
    Name::from_ascii(text).ok()
}

/// The SOA of the zone at `apex` as `source` sees it; `catalog` for a catalog zone.
fn zone_soa(snapshot: &Snapshot, source: IpAddr, apex: &Name, catalog: bool) -> Option<Record> {
    match catalog {
        true => catalog_soa(snapshot, source, apex),
        false => records(snapshot, source, apex, RecordType::SOA).pop(),
    }
}

/// The zones `source` may transfer, with their serials, sorted by name: every apex whose SOA
/// and NS it gets, except service discovery and an app domain whose unlisted names we relay or
/// refuse.
pub fn members(snapshot: &Snapshot, source: IpAddr) -> Arc<Vec<(Name, u32)>> {
    // Asked on every transfer and catalog SOA, and it asks the answer function once or twice
    // per apex: kept for the snapshot it was computed from (a memo of a pure function).
    type Memo = Vec<(u64, IpAddr, Arc<Vec<(Name, u32)>>)>;
    static MEMO: std::sync::Mutex<Memo> = std::sync::Mutex::new(Vec::new());
    if let Ok(memo) = MEMO.lock()
        && let Some((_, _, found)) = memo
            .iter()
            .find(|(id, s, _)| *id == snapshot.id && *s == source)
    {
        return found.clone();
    }
    let found = Arc::new(members_of(snapshot, source));
    if let Ok(mut memo) = MEMO.lock() {
        memo.retain(|(id, _, _)| *id == snapshot.id);
        memo.push((snapshot.id, source, found.clone()));
    }
    found
}

fn members_of(snapshot: &Snapshot, source: IpAddr) -> Vec<(Name, u32)> {
    let trusts = snapshot.access.classify(source);
    let localspace = Name::from_ascii(LOCALSPACE).ok();
    let not_wholly_ours: Vec<&Name> = (snapshot.spaces.iter().enumerate())
        .filter(|(s, space)| {
            trusts.iter().any(|t| t.space == *s) && space.unlisted != Policy::Nxdomain
        })
        .map(|(_, space)| &space.domain)
        .collect();
    let mut out: Vec<(Name, u32)> = snapshot
        .apex_names()
        .filter(|apex| Some(*apex) != localspace.as_ref() && !not_wholly_ours.contains(apex))
        .filter_map(|apex| {
            let soa = records(snapshot, source, apex, RecordType::SOA).pop()?;
            // A zone without NS (a public identity that names no nameservers) cannot live
            // on a secondary: RFC 1034 wants NS at every apex, and BIND rejects it.
            if records(snapshot, source, apex, RecordType::NS).is_empty() {
                return None;
            }
            Some((apex.clone(), soa_serial(&soa)))
        })
        .collect();
    out.sort();
    out
}

fn soa_serial(record: &Record) -> u32 {
    match &record.data {
        RData::SOA(soa) => soa.serial,
        _ => 0,
    }
}

/// The records of `qname`/`rtype` that `source` gets as the answer itself: owned by `qname`
/// and of that type (a CNAME's target, glue and the like left out), from an authoritative
/// NOERROR. A delegation's NS come from the referral's authority section.
fn records(snapshot: &Snapshot, source: IpAddr, qname: &Name, rtype: RecordType) -> Vec<Record> {
    let mut query = Message::query();
    query.metadata.id = 0;
    query.add_query(Query::query(qname.clone(), rtype));
    let Some(reply) = (query.to_vec().ok())
        .and_then(|bytes| answer(snapshot, source, Transport::Tcp, &bytes).reply)
        .and_then(|bytes| Message::from_vec(&bytes).ok())
    else {
        return Vec::new();
    };
    if reply.metadata.response_code != ResponseCode::NoError {
        return Vec::new();
    }
    let owned = |r: &&Record| r.record_type() == rtype && r.name.to_lowercase() == *qname;
    if reply.metadata.authoritative {
        return reply.answers.iter().filter(owned).cloned().collect();
    }
    if rtype == RecordType::NS {
        return reply.authorities.iter().filter(owned).cloned().collect();
    }
    Vec::new()
}

/// The names of the zone at `apex` as `source` sees it, with the types to ask for each: its
/// apex first, then every name it may resolve at or below the apex that no deeper member zone
/// holds, and the nameserver names inside it. App host names come last, one at a time.
fn zone_names(snapshot: &Snapshot, source: IpAddr, apex: &Name) -> Names {
    let deeper: Vec<Name> = (members(snapshot, source).iter())
        .map(|(n, _)| n.clone())
        .filter(|n| n != apex && apex.zone_of(n))
        .collect();
    let mut types: HashMap<Name, BTreeSet<RecordType>> = HashMap::new();
    for space in &snapshot.spaces {
        for zone in &space.zones {
            for (owner, rrsets) in &zone.nodes {
                let set = types.entry(owner.clone()).or_default();
                set.extend(rrsets.iter().map(|r| r.rtype));
            }
        }
    }
    let mut names = snapshot.visible_names_but_hosts(source, false);
    for record in records(snapshot, source, apex, RecordType::NS) {
        if let RData::NS(NS(ns)) = &record.data {
            names.push(ns.to_lowercase());
        }
    }
    let inside = move |n: &Name| apex.zone_of(n) && !deeper.iter().any(|d| d.zone_of(n));
    names.retain(|n| n != apex && inside(n));
    names.sort();
    names.dedup();
    let ask = |name: &Name| -> Vec<RecordType> {
        let mut set: BTreeSet<RecordType> = [RecordType::A, RecordType::AAAA].into();
        if let Some(more) = types.get(name) {
            set.extend(more.iter().filter(|t| **t != RecordType::SOA));
        }
        set.into_iter().collect()
    };
    let mut apex_types = ask(apex);
    apex_types.retain(|t| *t != RecordType::NS);
    apex_types.insert(0, RecordType::NS);
    let mut others = vec![(apex.clone(), apex_types)];
    others.extend(names.into_iter().map(|n| {
        let t = ask(&n);
        (n, t)
    }));
    // App host names: only under an app domain, which no zone file or custom domain holds
    // (validation keeps them apart), so they need no filtering beyond the apex.
    let hosts = (snapshot.spaces.iter())
        .any(|s| &s.domain == apex)
        .then(|| Hosts {
            trusts: snapshot.access.classify(source),
            space: 0,
            app: 0,
        });
    Names {
        others: others.into_iter(),
        hosts,
        apex: apex.clone(),
    }
}

/// The names of a zone as a transfer walks them: the few others first, then app host names
/// one by one.
struct Names {
    others: std::vec::IntoIter<(Name, Vec<RecordType>)>,
    hosts: Option<Hosts>,
    apex: Name,
}

/// Where the walk over app host names is.
struct Hosts {
    trusts: crate::access::Trusts,
    space: usize,
    app: usize,
}

/// The next name of a walk: one to ask the answer function about, or an app host's records.
enum Step {
    Ask(Name, Vec<RecordType>),
    Records(Vec<Record>),
}

impl Names {
    /// The next name. An app host's A and AAAA are its addresses as [`Snapshot::addresses`]
    /// gives them to this audience, with its space's TTL: what `answer` says for it (a test
    /// holds the two together), at a tenth of the cost, which a million-app zone needs.
    fn next(&mut self, snapshot: &Snapshot) -> Option<Step> {
        if let Some((name, types)) = self.others.next() {
            return Some(Step::Ask(name, types));
        }
        let hosts = self.hosts.as_mut()?;
        while let Some(space) = snapshot.spaces.get(hosts.space) {
            let Some(app) = space.apps.get(hosts.app) else {
                hosts.space += 1;
                hosts.app = 0;
                continue;
            };
            let app_ref = crate::snapshot::AppRef {
                space: hosts.space,
                app: hosts.app,
            };
            hosts.app += 1;
            if space.domain != self.apex {
                continue;
            }
            let Some(addresses) = snapshot.addresses(app_ref, &hosts.trusts) else {
                continue;
            };
            return Some(Step::Records(host_records(
                snapshot,
                app_ref.space,
                &app.name,
                addresses,
            )));
        }
        None
    }
}

/// The catalog zone of the audience `source` (RFC 9432, version 2) but its SOA ([`catalog_soa`]):
/// NS, version, and one PTR per member, its label a hash of the member's name so that it is the
/// same on every replica.
fn catalog_records(snapshot: &Snapshot, source: IpAddr, catalog: &Name) -> Vec<Record> {
    let members = members(snapshot, source);
    let mut out = Vec::new();
    if let Ok(invalid) = Name::from_ascii("invalid.") {
        out.push(Record::from_rdata(
            catalog.clone(),
            0,
            RData::NS(NS(invalid)),
        ));
    }
    if let Ok(version) = Name::from_ascii("version").and_then(|v| v.append_domain(catalog)) {
        let txt = RData::TXT(TXT::new(vec!["2".to_string()]));
        out.push(Record::from_rdata(version, 0, txt));
    }
    for (member, _) in members.iter() {
        let digest = ring::digest::digest(&ring::digest::SHA256, &crate::snapshot::wire(member));
        let id: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Ok(owner) =
            Name::from_ascii(format!("{id}.zones")).and_then(|n| n.append_domain(catalog))
        {
            out.push(Record::from_rdata(
                owner,
                0,
                RData::PTR(PTR(member.clone())),
            ));
        }
    }
    out
}

/// The zones a secondary follows, with their serials: its audience's members, then its catalog.
pub fn followed(snapshot: &Snapshot, who: &Who, secondary: &Secondary) -> Vec<(Name, u32)> {
    let Some(source) = audience_source(snapshot, who, secondary.audience) else {
        return Vec::new();
    };
    let mut zones = members(snapshot, source).to_vec();
    if let Some(catalog) = catalog_name(snapshot, who, secondary.audience)
        && let Some(soa) = catalog_soa(snapshot, source, &catalog)
    {
        zones.push((catalog, soa_serial(&soa)));
    }
    zones
}

/// A zone's SOA and its records other than app hosts, as `source` sees it; `catalog` for a
/// catalog zone. App hosts are compared space by space ([`host_changes`]).
fn contents(
    snapshot: &Snapshot,
    source: IpAddr,
    apex: &Name,
    catalog: bool,
) -> Option<(Record, Vec<Record>)> {
    let soa = zone_soa(snapshot, source, apex, catalog)?;
    if catalog {
        return Some((soa, catalog_records(snapshot, source, apex)));
    }
    let names = zone_names(snapshot, source, apex);
    let body = (names.others)
        .flat_map(|(name, types)| {
            (types.into_iter()).flat_map(move |t| records(snapshot, source, &name, t))
        })
        .collect();
    Some((soa, body))
}

/// The app host records under the app domain `apex` that went and came between `old` and
/// `new` for `source`, looking only into spaces that changed: a space kept as it was (the same
/// compiled view) answers as before, since whether a source sees an app depends on the app's
/// own space alone. Also the number of hosts `new` has there, the size to compare against.
fn host_changes(
    old: &Snapshot,
    new: &Snapshot,
    source: IpAddr,
    apex: &Name,
) -> (Vec<Record>, Vec<Record>, usize) {
    let by_name = |snapshot: &Snapshot| -> HashMap<String, usize> {
        (snapshot.spaces.iter().enumerate())
            .filter(|(_, space)| &space.domain == apex)
            .map(|(s, space)| (space.name.clone(), s))
            .collect()
    };
    let (before, after) = (by_name(old), by_name(new));
    let size = (after.values()).map(|&s| new.spaces[s].apps.len()).sum();
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (o, n) = (before.get(name), after.get(name));
        if let (Some(&o), Some(&n)) = (o, n)
            && Arc::ptr_eq(&old.spaces[o], &new.spaces[n])
        {
            continue;
        }
        let mut was: HashMap<&str, &[IpAddr]> = match o {
            Some(&o) => visible_hosts(old, source, o).collect(),
            None => HashMap::new(),
        };
        let same_ttl =
            matches!((o, n), (Some(&o), Some(&n)) if old.spaces[o].ttl == new.spaces[n].ttl);
        if let Some(&n) = n {
            for (app, addresses) in visible_hosts(new, source, n) {
                match was.remove(app) {
                    Some(previous) if previous == addresses && same_ttl => {}
                    previous => {
                        if let (Some(previous), Some(&o)) = (previous, o) {
                            removed.extend(host_records(old, o, app, previous));
                        }
                        added.extend(host_records(new, n, app, addresses));
                    }
                }
            }
        }
        if let Some(&o) = o {
            for (app, previous) in was {
                removed.extend(host_records(old, o, app, previous));
            }
        }
    }
    (removed, added, size)
}

/// The addresses of each app of space `s` that `source` sees, by app name, borrowed from the
/// snapshot: records are built only for what changed.
fn visible_hosts(
    snapshot: &Snapshot,
    source: IpAddr,
    s: usize,
) -> impl Iterator<Item = (&str, &[IpAddr])> {
    let trusts = snapshot.access.classify(source);
    (snapshot.spaces[s].apps.iter().enumerate()).filter_map(move |(a, app)| {
        let app_ref = crate::snapshot::AppRef { space: s, app: a };
        Some((&*app.name, snapshot.addresses(app_ref, &trusts)?))
    })
}

/// The address records of app `app` of space `s` in `snapshot`, with `addresses`, as `answer`
/// gives them: the space's TTL, A first, then AAAA.
fn host_records(snapshot: &Snapshot, s: usize, app: &str, addresses: &[IpAddr]) -> Vec<Record> {
    let space = &snapshot.spaces[s];
    let Ok(host) = Name::from_ascii(app).and_then(|n| n.append_domain(&space.domain)) else {
        return Vec::new();
    };
    let mut records: Vec<Record> = (addresses.iter())
        .map(|ip| address_record(host.clone(), space.ttl, *ip))
        .collect();
    records.sort_by_key(|r| r.record_type() == RecordType::AAAA);
    records
}

/// How many changes of one zone the journal keeps.
const JOURNAL_DEPTH: usize = 16;

/// One change of a zone: its SOA before and after, and the records that went and came.
#[derive(Debug, Clone)]
pub struct Diff {
    from: Record,
    to: Record,
    removed: Vec<Record>,
    added: Vec<Record>,
}

/// The recent changes of the zones secondaries follow, per audience (by the source that plays
/// it) and zone, oldest first: what IXFR answers from. Written after each reload, off the
/// query path.
#[derive(Debug, Default)]
pub struct Journal {
    zones: std::sync::Mutex<HashMap<(IpAddr, Name), std::collections::VecDeque<Diff>>>,
}

impl Journal {
    /// Records how the zone at `apex` changed for `source` between `old` and `new`; a change too
    /// large to be worth sending as one (more than the zone) breaks the chain instead.
    pub fn record(&self, old: &Snapshot, new: &Snapshot, source: IpAddr, apex: &Name) {
        let catalog = Name::from_ascii(CATALOGS).is_ok_and(|c| c.zone_of(apex));
        let serial = |snapshot: &Snapshot| {
            zone_soa(snapshot, source, apex, catalog).map(|soa| soa_serial(&soa))
        };
        // The serials first: most reloads leave most zones alone, and comparing a zone's
        // contents means building it twice.
        if serial(old) == serial(new) {
            return;
        }
        let (Some((from, before)), Some((to, after))) = (
            contents(old, source, apex, catalog),
            contents(new, source, apex, catalog),
        ) else {
            return self.forget(source, apex);
        };
        if soa_serial(&from) == soa_serial(&to) {
            return;
        }
        let key = |r: &Record| r.to_string();
        let old_set: HashMap<String, Record> = before.into_iter().map(|r| (key(&r), r)).collect();
        let new_set: HashMap<String, Record> = after.into_iter().map(|r| (key(&r), r)).collect();
        let mut removed: Vec<(String, Record)> = (old_set.iter())
            .filter(|(k, _)| !new_set.contains_key(*k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut added: Vec<(String, Record)> = (new_set.iter())
            .filter(|(k, _)| !old_set.contains_key(*k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut size = new_set.len();
        if !catalog {
            let (gone, came, hosts) = host_changes(old, new, source, apex);
            removed.extend(gone.into_iter().map(|r| (key(&r), r)));
            added.extend(came.into_iter().map(|r| (key(&r), r)));
            size += hosts;
        }
        // A change larger than the zone is cheaper as the zone.
        if removed.len() + added.len() > size {
            return self.forget(source, apex);
        }
        removed.sort_by(|a, b| a.0.cmp(&b.0));
        added.sort_by(|a, b| a.0.cmp(&b.0));
        let diff = Diff {
            from,
            to,
            removed: removed.into_iter().map(|(_, r)| r).collect(),
            added: added.into_iter().map(|(_, r)| r).collect(),
        };
        let Ok(mut zones) = self.zones.lock() else {
            return;
        };
        let chain = zones.entry((source, apex.clone())).or_default();
        // A chain that does not end where this change starts is of no use any more.
        if chain
            .back()
            .is_some_and(|d| soa_serial(&d.to) != soa_serial(&diff.from))
        {
            chain.clear();
        }
        chain.push_back(diff);
        if chain.len() > JOURNAL_DEPTH {
            chain.pop_front();
        }
    }

    fn forget(&self, source: IpAddr, apex: &Name) {
        if let Ok(mut zones) = self.zones.lock() {
            zones.remove(&(source, apex.clone()));
        }
    }

    /// The changes that take the zone from serial `from` to `to`, if the journal has them all.
    fn changes(&self, source: IpAddr, apex: &Name, from: u32, to: u32) -> Option<Vec<Diff>> {
        let zones = self.zones.lock().ok()?;
        let chain = zones.get(&(source, apex.clone()))?;
        let start = chain.iter().position(|d| soa_serial(&d.from) == from)?;
        let picked: Vec<Diff> = chain.iter().skip(start).cloned().collect();
        (picked.last().map(|d| soa_serial(&d.to)) == Some(to)).then_some(picked)
    }
}

/// A catalog's SOA: its serial is the newest of its members'.
fn catalog_soa(snapshot: &Snapshot, source: IpAddr, catalog: &Name) -> Option<Record> {
    let serial = (members(snapshot, source).iter())
        .map(|m| m.1)
        .reduce(|a, b| if serial_after(b, a) { b } else { a })
        .unwrap_or(1);
    let invalid = Name::from_ascii("invalid.").ok()?;
    let soa = SOA::new(invalid.clone(), invalid, serial, 3600, 600, 604_800, 0);
    Some(Record::from_rdata(catalog.clone(), 0, RData::SOA(soa)))
}

/// The serial an IXFR request says the secondary has: the SOA in its authority section.
fn ixfr_serial(query: &[u8]) -> Option<u32> {
    let m = Message::from_vec(&strip_tsig(query)).ok()?;
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// `unsigned` (a message cut before its TSIG record) with ARCOUNT one less.
fn strip_tsig(unsigned: &[u8]) -> Vec<u8> {
    let mut out = unsigned.to_vec();
    if out.len() >= 12 {
        let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_sub(1);
        out[10..12].copy_from_slice(&arcount.to_be_bytes());
    }
    out
}

fn header_and_question(query: &[u8]) -> Option<(Header, Option<Query>)> {
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).ok()?;
    let question = match header.counts.queries {
        1 => Query::read(&mut decoder).ok(),
        _ => None,
    };
    Some((header, question))
}

/// A reply to `header`'s query: `question` echoed, `answers`, AA set when it is NOERROR.
fn message(
    header: &Header,
    question: Option<Query>,
    rcode: ResponseCode,
    answers: Vec<Record>,
) -> Vec<u8> {
    let mut m = Message::response(header.metadata.id, OpCode::Query);
    m.metadata.message_type = MessageType::Response;
    m.metadata.authoritative = rcode == ResponseCode::NoError;
    m.metadata.recursion_desired = header.metadata.recursion_desired;
    m.metadata.response_code = rcode;
    if let Some(q) = question {
        m.add_query(q);
    }
    m.add_answers(answers);
    m.to_vec().unwrap_or_default()
}

/// The answer to a request whose signature was not accepted: NOTAUTH with the TSIG error,
/// unsigned for BADSIG and BADKEY, signed with our time for BADTIME (RFC 8945 §5.2).
fn rejection(
    header: &Header,
    question: Option<Query>,
    signed: &Signed,
    key: &TsigKey,
    rejected: Rejected,
    now: u64,
) -> Vec<u8> {
    let mut reply = message(header, question, ResponseCode::NotAuth, Vec::new());
    match rejected {
        Rejected::Time => Signer::new(key, &signed.mac, now).sign(&mut reply, tsig::BADTIME),
        _ => tsig::append_unsigned(&mut reply, signed, rejected.code()),
    }
    reply
}

/// A zone's records as they are produced.
enum Zone {
    /// Names and the types to ask for each.
    Names(Box<Names>),
    /// Records built whole: a catalog (one record per member zone), or an IXFR's differences.
    Records(std::vec::IntoIter<Record>),
}

/// An AXFR (or IXFR answered as one) in progress, an iterator of signed messages, each built
/// when it is taken: the SOA first and last (RFC 5936 §2.2). Blocking work: run it off the async
/// workers.
pub struct Transfer {
    snapshot: Arc<Snapshot>,
    source: IpAddr,
    header: Header,
    question: Query,
    zone: Zone,
    soa: Record,
    started: bool,
    /// Records of the current name not yet sent, last first.
    pending: Vec<Record>,
    done: bool,
    signer: Signer,
}

impl Iterator for Transfer {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut message = self.next_message()?;
        self.signer.sign(&mut message, 0);
        Some(message)
    }
}

impl Transfer {
    /// The zone being transferred, as the request named it.
    pub fn zone(&self) -> String {
        self.question.name().to_ascii()
    }

    fn next_record(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.pending.pop() {
                return Some(r);
            }
            match &mut self.zone {
                Zone::Records(records) => return records.next(),
                Zone::Names(names) => {
                    let mut found: Vec<Record> = match names.next(&self.snapshot)? {
                        Step::Records(records) => records,
                        Step::Ask(name, types) => (types.into_iter())
                            .flat_map(|t| records(&self.snapshot, self.source, &name, t))
                            .collect(),
                    };
                    found.reverse();
                    self.pending = found;
                }
            }
        }
    }

    fn next_message(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut answers = Vec::new();
        if !self.started {
            answers.push(self.soa.clone());
            self.started = true;
        }
        let mut size = 0;
        while size < MESSAGE_BUDGET && answers.len() < MESSAGE_RECORDS {
            let Some(r) = self.next_record() else {
                answers.push(self.soa.clone());
                self.done = true;
                break;
            };
            size += 16 + r.name.len() + rdata_len(&r);
            answers.push(r);
        }
        let question = Some(self.question.clone());
        Some(message(
            &self.header,
            question,
            ResponseCode::NoError,
            answers,
        ))
    }
}

fn rdata_len(record: &Record) -> usize {
    match &record.data {
        RData::TXT(t) => t.txt_data.iter().map(|s| s.len() + 1).sum(),
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        _ => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snapshot(dir: &Path) -> Snapshot {
        let config = crate::config::load_dir(dir).unwrap();
        crate::snapshot::compile(&config, |_| 7)
    }

    fn fixture() -> Snapshot {
        snapshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/two-spaces"))
    }

    const SOURCES: [&str; 5] = [
        "127.16.0.5",
        "127.31.0.5",
        "127.32.0.5",
        "127.17.0.5",
        "127.200.0.1",
    ];

    /// The records a transfer takes straight from the snapshot for app hosts are exactly what
    /// the answer function gives each audience for those names, A and AAAA (the fixture has
    /// an IPv6 private router address).
    #[test]
    fn app_host_records_are_what_answer_gives() {
        let s = fixture();
        let mut hosts = 0;
        for source in SOURCES {
            let source: IpAddr = source.parse().unwrap();
            for (apex, _) in members(&s, source).iter() {
                let mut names = zone_names(&s, source, apex);
                while let Some(step) = names.next(&s) {
                    let Step::Records(got) = step else { continue };
                    let name = got[0].name.clone();
                    let want: Vec<Record> = [RecordType::A, RecordType::AAAA]
                        .into_iter()
                        .flat_map(|t| records(&s, source, &name, t))
                        .collect();
                    assert_eq!(got, want, "{name} for {source}");
                    hosts += 1;
                }
            }
        }
        assert!(hosts >= 8, "{hosts} hosts walked");
    }

    /// Each audience's zones: those whose SOA and NS it gets, never service discovery, and an
    /// app domain only when unlisted names under it are NXDOMAIN (a secondary cannot relay).
    #[test]
    fn members_are_the_zones_an_audience_gets_whole() {
        let s = fixture();
        let names = |source: &str| -> Vec<String> {
            (members(&s, source.parse().unwrap()).iter())
                .map(|(n, serial)| {
                    assert_ne!(*serial, 0);
                    n.to_ascii()
                })
                .collect()
        };
        let space = names("127.16.0.5");
        assert!(space.contains(&"herokuapp.com.".to_string()), "{space:?}");
        assert!(
            space.contains(&"corp.example.com.".to_string()),
            "{space:?}"
        );
        assert!(!space.iter().any(|n| n.contains("localspace")), "{space:?}");
        // The public gets no app domain (it is REFUSED there) and no private zone.
        let public = names("127.200.0.1");
        assert!(
            !public.contains(&"herokuapp.com.".to_string()),
            "{public:?}"
        );

        // With `unlisted: forward`, alpha's app domain is not whole: not a member for alpha.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.yaml"),
            "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10]}\n\
             nameservers: [{name: ns1.example.net}]\n\
             unlisted: {policy: forward, upstreams: [127.0.0.53]}\napps:\n  - name: an-app\n",
        )
        .unwrap();
        let forwarding = snapshot(dir.path());
        assert_eq!(*members(&forwarding, "127.16.0.5".parse().unwrap()), []);
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::snapshot::{SpaceView, assemble, compile_space};

    fn view(yaml: &str, serial: u32) -> Arc<SpaceView> {
        let config = crate::config::parse_texts(&[("d/s.yaml", yaml)], &[]).unwrap();
        Arc::new(compile_space(&config.spaces[0], |_| serial))
    }

    fn space(name: &str, net: &str, serial: u32, apps: &[&str]) -> Arc<SpaceView> {
        let apps: String = apps.iter().map(|a| format!("  - name: {a}\n")).collect();
        view(
            &format!(
                "space: {name}\nnetwork: {net}\nrouter: {{private: [127.16.0.10]}}\n\
                 nameservers: [{{name: ns1.example.net}}]\napps:\n{apps}"
            ),
            serial,
        )
    }

    /// IXFR of the app domain: one app gone and one come in a changed space is two records,
    /// whatever the size of the space that did not change; the chain answers from any serial
    /// it holds.
    #[test]
    fn the_journal_holds_what_changed_in_the_changed_space_only() {
        let apex = Name::from_ascii("herokuapp.com.").unwrap();
        let source: IpAddr = "127.16.0.5".parse().unwrap();
        let many: Vec<String> = (0..500).map(|i| format!("app-{i:04}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        // A space that trusts the source too, its apps visible, kept as it was throughout.
        let apps: String = many.iter().map(|a| format!("  - name: {a}\n")).collect();
        let big = view(
            &format!(
                "space: big\nnetwork: 127.17.0.0/16\npeers: [{{name: p, cidrs: [127.16.0.0/16]}}]\n\
                 router: {{private: [127.17.0.10]}}\napps:\n{apps}"
            ),
            1,
        );
        let v1 = assemble(vec![
            big.clone(),
            space("s", "127.16.0.0/16", 10, &["one-app", "two-app"]),
        ]);
        let v2 = assemble(vec![
            big.clone(),
            space("s", "127.16.0.0/16", 11, &["two-app", "new-app"]),
        ]);
        let v3 = assemble(vec![big, space("s", "127.16.0.0/16", 12, &["new-app"])]);
        let big_app = |v: &Snapshot| {
            records(
                v,
                source,
                &Name::from_ascii("app-0007.herokuapp.com.").unwrap(),
                RecordType::A,
            )
        };
        assert_eq!(big_app(&v1).len(), 1, "the unchanged space's apps are seen");
        let journal = Journal::default();
        journal.record(&v1, &v2, source, &apex);
        journal.record(&v2, &v3, source, &apex);
        let owners = |records: &[Record]| -> Vec<String> {
            records.iter().map(|r| r.name.to_ascii()).collect()
        };
        // The source is trusted by both spaces: it sees big's SOA, whose serial moves with the
        // public serial of `s` (the sum: see `Snapshot::app_domain_serial`).
        let serial = |v: &Snapshot| soa_serial(&records(v, source, &apex, RecordType::SOA)[0]);
        let (s1, s2, s3) = (serial(&v1), serial(&v2), serial(&v3));
        assert!(s1 < s2 && s2 < s3, "{s1} {s2} {s3}");
        let changes = journal
            .changes(source, &apex, s1, s3)
            .expect("a chain from v1 to v3");
        assert_eq!(changes.len(), 2);
        assert_eq!(owners(&changes[0].removed), ["one-app.herokuapp.com."]);
        assert_eq!(owners(&changes[0].added), ["new-app.herokuapp.com."]);
        assert_eq!(owners(&changes[1].removed), ["two-app.herokuapp.com."]);
        assert!(changes[1].added.is_empty());
        assert_eq!(
            journal.changes(source, &apex, s2, s3).map(|c| c.len()),
            Some(1)
        );
        assert!(
            journal.changes(source, &apex, s1 - 1, s3).is_none(),
            "a serial it never had"
        );
    }
}
