//! RFC 1034 §4.3.2 over a snapshot: one question and one asker in, the sections of the reply out.
//!
//! Pure: no sockets, no tokio, no clock, no logging. What the asker may see comes from
//! [`Snapshot::sight`] and [`Snapshot::zone`] (the one "who sees what" decision); this module
//! only assembles records, follows CNAMEs inside what the asker may see, and decides between
//! data, NODATA, NXDOMAIN, a referral, REFUSED and a relay to the domain's upstreams.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::access::Trusts;
use crate::snapshot::{Apex, Policy, Rrset, Sight, Snapshot, ZoneData, ZoneView, address_record};

/// The longest CNAME chain followed inside our own data.
const MAX_CHAIN: usize = 8;

/// The result of resolving one question.
#[derive(Debug, Default)]
pub struct Found {
    /// The response code.
    pub rcode: ResponseCode,
    /// Whether the answer is authoritative (AA).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section.
    pub authorities: Vec<Record>,
    /// The additional section (without OPT).
    pub additionals: Vec<Record>,
    /// The space whose data answered.
    pub space: Option<usize>,
    /// The name is unlisted under the app domain of this space, whose policy is `forward`:
    /// the query goes to that space's upstreams.
    pub forward: Option<usize>,
}

/// One step of resolution: the answer for one name, before CNAME chasing.
enum Step<'s> {
    /// We serve no zone for this name to this asker, or its policy says REFUSED.
    Refused,
    /// Records for the name, from `space`'s data; `follow` is a CNAME target to chase.
    Records {
        records: Vec<Record>,
        additionals: Vec<Record>,
        space: usize,
        follow: Option<Name>,
    },
    /// The name exists but has no records of the type.
    NoData(ZoneView<'s>),
    /// The name does not exist.
    NxDomain(ZoneView<'s>),
    /// The name is below a delegation in a zone file.
    Referral { ns: Vec<Record>, glue: Vec<Record> },
    /// An unlisted name under the app domain of a space whose policy is `forward`.
    Forward(usize),
}

/// Resolves `qname`/`qtype` for an asker, chasing CNAMEs within what the asker may see.
pub fn resolve(snapshot: &Snapshot, trusts: &Trusts, qname: &Name, qtype: RecordType) -> Found {
    let mut found = Found::default();
    let mut name = qname.clone();
    let mut seen: Vec<Name> = Vec::new();
    for hop in 0..MAX_CHAIN {
        let step = lookup(snapshot, trusts, &name, qtype);
        if hop == 0 {
            found.authoritative = !matches!(
                step,
                Step::Refused | Step::Referral { .. } | Step::Forward(_)
            );
        }
        match step {
            // A chain that leaves our data ends there: the asker's resolver follows it.
            Step::Refused | Step::Referral { .. } | Step::Forward(_) if hop > 0 => {}
            Step::Refused => found.rcode = ResponseCode::Refused,
            Step::Forward(space) => found.forward = Some(space),
            Step::Referral { ns, glue } => {
                found.authorities = ns;
                found.additionals = glue;
            }
            Step::Records {
                records,
                additionals,
                space,
                follow,
            } => {
                found.space.get_or_insert(space);
                found.answers.extend(records);
                found.additionals.extend(additionals);
                if let Some(target) = follow {
                    seen.push(name.to_lowercase());
                    let lower = target.to_lowercase();
                    if !seen.contains(&lower) {
                        name = target;
                        continue;
                    }
                }
            }
            Step::NoData(zone) => {
                found.space.get_or_insert(zone.space);
                found.authorities.extend(negative_soa(snapshot, &zone));
            }
            Step::NxDomain(zone) => {
                found.space.get_or_insert(zone.space);
                found.rcode = ResponseCode::NXDomain;
                found.authorities.extend(negative_soa(snapshot, &zone));
            }
        }
        break;
    }
    found
}

/// The SOA for a negative answer, with the negative TTL: min(SOA TTL, MINIMUM) (RFC 2308 §3).
fn negative_soa(snapshot: &Snapshot, zone: &ZoneView) -> Option<Record> {
    let mut soa = snapshot.soa(zone)?;
    if let RData::SOA(data) = &soa.data {
        soa.ttl = soa.ttl.min(data.minimum);
    }
    Some(soa)
}

/// Answers one name without following CNAMEs.
fn lookup<'s>(snapshot: &'s Snapshot, trusts: &Trusts, name: &Name, qtype: RecordType) -> Step<'s> {
    let lower = name.to_lowercase();
    let exists = match snapshot.sight(&lower, trusts) {
        Sight::App(app) => {
            let Some(addresses) = snapshot.addresses(app, trusts) else {
                return Step::Refused;
            };
            let space = &snapshot.spaces[app.space];
            // The zone is looked up only when a negative answer needs its SOA.
            let zone = || {
                snapshot.zone(&lower, trusts).unwrap_or(ZoneView {
                    apex: &space.domain,
                    kind: Apex::Domain,
                    space: app.space,
                    public: !trusts.iter().any(|t| t.space == app.space),
                })
            };
            return match qtype {
                RecordType::A | RecordType::AAAA | RecordType::ANY => {
                    addresses_step(name, qtype, addresses, space.ttl, app.space, zone)
                }
                // Other types at a custom domain come from the zone it sits in (its apex SOA,
                // MX, TXT); the name exists, so a zone without it says NODATA, not NXDOMAIN.
                _ => in_zone(snapshot, zone(), name, &lower, qtype, true),
            };
        }
        Sight::Empty => true,
        Sight::Nothing => false,
    };
    match snapshot.zone(&lower, trusts) {
        Some(zone) => in_zone(snapshot, zone, name, &lower, qtype, exists),
        None => Step::Refused,
    }
}

/// Answers a name inside `zone`; `exists` says an app's name makes it exist (it or a name
/// below it), so it is NODATA where the zone has nothing.
fn in_zone<'s>(
    snapshot: &'s Snapshot,
    zone: ZoneView<'s>,
    name: &Name,
    lower: &Name,
    qtype: RecordType,
    exists: bool,
) -> Step<'s> {
    if let Some(data) = snapshot.zone_data(&zone) {
        return in_zone_file(data, zone, name, lower, qtype, exists);
    }
    if lower == zone.apex {
        return synthesized_apex(snapshot, zone, name, qtype);
    }
    let ttl = snapshot.spaces[zone.space].ttl;
    if zone.kind == Apex::Localspace {
        return match snapshot.discovery(zone.space, lower) {
            Some(dynos) => addresses_step(name, qtype, &dynos, ttl, zone.space, || zone),
            None => Step::NxDomain(zone),
        };
    }
    // In-bailiwick nameservers answer their addresses (RFC 1034 §4.2.1: the zone holds them).
    let nameserver = (snapshot.nameservers(&zone).iter()).find(|(n, _)| n == lower);
    if let Some((_, ip)) = nameserver {
        let ips: &[IpAddr] = ip.as_slice();
        return addresses_step(name, qtype, ips, ttl, zone.space, || zone);
    }
    if exists {
        return Step::NoData(zone);
    }
    match (zone.kind, snapshot.spaces[zone.space].unlisted) {
        (Apex::Domain, Policy::Forward) => Step::Forward(zone.space),
        (Apex::Domain, Policy::Refused) => Step::Refused,
        _ => Step::NxDomain(zone),
    }
}

/// SOA and NS at the apex of a zone we synthesize (app domain, custom domain, service discovery).
fn synthesized_apex<'s>(
    snapshot: &'s Snapshot,
    zone: ZoneView<'s>,
    name: &Name,
    qtype: RecordType,
) -> Step<'s> {
    let (records, additionals) = match qtype {
        RecordType::SOA | RecordType::ANY => {
            (snapshot.soa(&zone).into_iter().collect(), Vec::new())
        }
        RecordType::NS => snapshot.synthesized_ns(&zone),
        _ => return Step::NoData(zone),
    };
    if records.is_empty() {
        return Step::NoData(zone);
    }
    Step::Records {
        records: with_owner(records, name),
        additionals,
        space: zone.space,
        follow: None,
    }
}

/// A/AAAA answers from a list of addresses; ANY gets both families (RFC 8482: a subset).
fn addresses_step<'s>(
    name: &Name,
    qtype: RecordType,
    addresses: &[IpAddr],
    ttl: u32,
    space: usize,
    zone: impl FnOnce() -> ZoneView<'s>,
) -> Step<'s> {
    let records: Vec<Record> = (addresses.iter())
        .filter(|ip| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            _ => true,
        })
        .map(|ip| address_record(name.clone(), ttl, *ip))
        .collect();
    if records.is_empty() || !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return Step::NoData(zone());
    }
    Step::Records {
        records,
        additionals: Vec::new(),
        space,
        follow: None,
    }
}

/// RFC 1034 §4.3.2 inside a zone file: delegations, exact names, CNAMEs, wildcards.
fn in_zone_file<'s>(
    data: &'s ZoneData,
    zone: ZoneView<'s>,
    name: &Name,
    lower: &Name,
    qtype: RecordType,
    exists: bool,
) -> Step<'s> {
    if data.has_cuts {
        for labels in data.apex.num_labels() + 1..=lower.num_labels() {
            // DS at a cut belongs to the parent side (RFC 4035 §3.1.4.1): answered from here.
            if qtype == RecordType::DS && labels == lower.num_labels() {
                break;
            }
            let cut = lower.trim_to(labels as usize);
            let ns =
                (data.nodes.get(&cut).into_iter().flatten()).find(|r| r.rtype == RecordType::NS);
            if let Some(ns) = ns {
                let glue = (ns.records.iter())
                    .filter_map(|r| match &r.data {
                        RData::NS(target) => data.nodes.get(&target.0.to_lowercase()),
                        _ => None,
                    })
                    .flatten()
                    .filter(|r| matches!(r.rtype, RecordType::A | RecordType::AAAA))
                    .flat_map(|r| r.records.iter().cloned())
                    .collect();
                return Step::Referral {
                    ns: ns.records.clone(),
                    glue,
                };
            }
        }
    }
    if let Some(rrsets) = data.nodes.get(lower) {
        return at_node(rrsets, zone, name, qtype);
    }
    if exists {
        return Step::NoData(zone);
    }
    // Not an existing name: a wildcard at the closest encloser answers for it (RFC 4592).
    let mut encloser = lower.base_name();
    while data.apex.zone_of(&encloser) {
        if data.nodes.contains_key(&encloser) {
            let wildcard = encloser.prepend_label("*").ok();
            if let Some(rrsets) = wildcard.and_then(|w| data.nodes.get(&w)) {
                return at_node(rrsets, zone, name, qtype);
            }
            break;
        }
        if encloser.is_root() {
            break;
        }
        encloser = encloser.base_name();
    }
    Step::NxDomain(zone)
}

/// The answer at an existing node whose rrsets are `rrsets`, owned by `name` as asked.
fn at_node<'s>(rrsets: &[Rrset], zone: ZoneView<'s>, name: &Name, qtype: RecordType) -> Step<'s> {
    let cname = rrsets.iter().find(|r| r.rtype == RecordType::CNAME);
    let (rrset, follow) = match cname {
        Some(cname) if qtype != RecordType::CNAME => {
            let target = cname.records.iter().find_map(|r| match &r.data {
                RData::CNAME(t) => Some(t.0.clone()),
                _ => None,
            });
            (Some(cname), target)
        }
        // ANY gets one rrset (RFC 8482).
        _ if qtype == RecordType::ANY => (rrsets.iter().find(|r| !r.records.is_empty()), None),
        _ => (rrsets.iter().find(|r| r.rtype == qtype), None),
    };
    match rrset {
        Some(rrset) if !rrset.records.is_empty() => Step::Records {
            records: with_owner(rrset.records.clone(), name),
            additionals: Vec::new(),
            space: zone.space,
            follow,
        },
        _ => Step::NoData(zone),
    }
}

/// Sets the owner of `records` to `name`, so the answer echoes the name as asked.
fn with_owner(mut records: Vec<Record>, name: &Name) -> Vec<Record> {
    for r in &mut records {
        r.name = name.clone();
    }
    records
}
