//! The DNS answer function: query bytes and a source address in, reply bytes (or a drop) out.
//!
//! Pure: no sockets, no tokio, no clock, no logging. The socket loops in `dns::server` call
//! [`answer`] and send or drop what it returns; tests, fuzz targets and benches call it
//! directly. Every input has an outcome: a response or a runt packet is dropped, everything
//! else gets NOERROR, NXDOMAIN, REFUSED, FORMERR, NOTIMP or BADVERS. UDP truncation is decided
//! here from the transport and the query's EDNS.

use std::net::IpAddr;

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::access::Trusts;
use crate::snapshot::{Apex, Snapshot, ZoneView, address_record};

/// Our EDNS UDP payload size (the DNS flag day 2020 value), and the most we send over UDP.
pub const UDP_PAYLOAD: u16 = 1232;

/// The longest CNAME chain followed inside our own data.
const MAX_CHAIN: usize = 8;

/// How the query arrived, which bounds the reply's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: replies larger than the asker allows are truncated (TC).
    Udp,
    /// TCP: replies up to 65535 bytes.
    Tcp,
}

/// What to send back, and what happened, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply bytes; `None` means drop the packet silently.
    pub reply: Option<Vec<u8>>,
    /// What happened.
    pub outcome: Outcome,
}

/// What happened to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The response code sent (meaningless when the reply is dropped).
    pub rcode: ResponseCode,
    /// The space whose data answered, if any.
    pub space: Option<usize>,
    /// The reply was truncated to fit UDP.
    pub truncated: bool,
}

/// Answers one DNS message `query` from `client` that came over `transport`.
pub fn answer(snapshot: &Snapshot, client: IpAddr, transport: Transport, query: &[u8]) -> Answer {
    let mut decoder = BinDecoder::new(query);
    let Ok(header) = Header::read(&mut decoder) else {
        return dropped();
    };
    if header.metadata.message_type == MessageType::Response {
        return dropped();
    }
    let mut reply = Reply::new(&header.metadata);
    let question = match header.counts.queries {
        1 => Query::read(&mut decoder).ok(),
        _ => None,
    };
    reply.question = question.clone();
    if header.metadata.op_code != OpCode::Query {
        return reply.finish(ResponseCode::NotImp, transport);
    }
    let Some(question) = question else {
        return reply.finish(ResponseCode::FormErr, transport);
    };

    // The answer and authority sections of a query must hold nothing we would use, but they
    // must parse; the additional section carries the OPT record.
    let op = header.metadata.op_code;
    let sections = Message::read_records(&mut decoder, header.counts.answers.into(), false, op)
        .and_then(|_| {
            Message::read_records(&mut decoder, header.counts.authorities.into(), false, op)
        })
        .and_then(|_| {
            Message::read_records(&mut decoder, header.counts.additionals.into(), true, op)
        });
    let Ok((_, request_edns, _)) = sections else {
        return reply.finish(ResponseCode::FormErr, transport);
    };
    if let Some(edns) = &request_edns {
        reply.limit = edns.max_payload().clamp(512, UDP_PAYLOAD);
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD).set_version(0);
        reply.edns = Some(ours);
        if edns.version() > 0 {
            return reply.finish(ResponseCode::BADVERS, transport);
        }
    }

    match question.query_type {
        RecordType::OPT => return reply.finish(ResponseCode::FormErr, transport),
        // Zone transfers are not offered (yet); say so rather than answer half of one.
        RecordType::AXFR | RecordType::IXFR => {
            return reply.finish(ResponseCode::Refused, transport);
        }
        _ => {}
    }
    if question.query_class != DNSClass::IN {
        return reply.finish(ResponseCode::Refused, transport);
    }

    let trusts = snapshot.access.classify(client);
    let found = resolve(snapshot, &trusts, &question.name, question.query_type);
    reply.metadata.authoritative = found.authoritative;
    reply.space = found.space.or(trusts.first().map(|t| t.space));
    reply.answers = found.answers;
    reply.authorities = found.authorities;
    reply.additionals = found.additionals;
    reply.finish(found.rcode, transport)
}

fn dropped() -> Answer {
    Answer {
        reply: None,
        outcome: Outcome {
            rcode: ResponseCode::NoError,
            space: None,
            truncated: false,
        },
    }
}

/// A reply being put together.
struct Reply {
    metadata: Metadata,
    question: Option<Query>,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    edns: Option<Edns>,
    /// The most bytes the asker accepts over UDP.
    limit: u16,
    space: Option<usize>,
}

impl Reply {
    fn new(request: &Metadata) -> Reply {
        Reply {
            metadata: Metadata::response_from_request(request),
            question: None,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
            limit: 512,
            space: None,
        }
    }

    /// Encodes the reply; over UDP, one that does not fit is sent as the question alone with TC.
    fn finish(mut self, rcode: ResponseCode, transport: Transport) -> Answer {
        self.metadata.response_code = rcode;
        let limit = match transport {
            Transport::Udp => usize::from(self.limit),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let mut message = Message::new(
            self.metadata.id,
            MessageType::Response,
            self.metadata.op_code,
        );
        message.metadata = self.metadata;
        message.queries.extend(self.question);
        message.answers = self.answers;
        message.authorities = self.authorities;
        message.additionals = self.additionals;
        message.edns = self.edns;
        let mut truncated = false;
        let mut bytes = message.to_vec().ok();
        if bytes.as_ref().is_some_and(|b| b.len() > limit) {
            truncated = true;
            message.metadata.truncation = true;
            message.answers.clear();
            message.authorities.clear();
            message.additionals.clear();
            bytes = message.to_vec().ok();
        }
        let rcode = match bytes {
            Some(_) => rcode,
            None => {
                // Only an rdata hickory cannot encode gets here; answer what we can say.
                message.metadata.response_code = ResponseCode::ServFail;
                message.answers.clear();
                message.authorities.clear();
                message.additionals.clear();
                bytes = message.to_vec().ok();
                ResponseCode::ServFail
            }
        };
        Answer {
            reply: bytes,
            outcome: Outcome {
                rcode,
                space: self.space,
                truncated,
            },
        }
    }
}

/// The result of resolving one question.
#[derive(Debug, Default)]
struct Found {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    space: Option<usize>,
}

/// One step of resolution: the answer for one name, before CNAME chasing.
enum Step<'s> {
    /// We serve no zone for this name to this asker.
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
}

/// Resolves `qname`/`qtype` for an asker, chasing CNAMEs within what the asker may see.
fn resolve(snapshot: &Snapshot, trusts: &Trusts, qname: &Name, qtype: RecordType) -> Found {
    let mut found = Found::default();
    let mut name = qname.clone();
    let mut seen: Vec<Name> = Vec::new();
    for hop in 0..MAX_CHAIN {
        let step = lookup(snapshot, trusts, &name, qtype);
        if hop == 0 {
            found.authoritative = !matches!(step, Step::Refused | Step::Referral { .. });
        }
        match step {
            Step::Refused if hop == 0 => found.rcode = ResponseCode::Refused,
            // A chain that leaves our data ends there: the asker's resolver follows it.
            Step::Refused | Step::Referral { .. } if hop > 0 => {}
            Step::Refused => {}
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
    if let Some(app) = snapshot.host(&lower)
        && let Some(addresses) = snapshot.addresses(app, trusts)
    {
        let space = &snapshot.spaces[app.space];
        // The zone is looked up only when a negative answer needs its SOA.
        let zone = || {
            snapshot.zone(&lower, trusts).unwrap_or(ZoneView {
                apex: &space.domain,
                kind: Apex::Domain,
                space: app.space,
            })
        };
        return match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                addresses_step(name, qtype, addresses, space.ttl, app.space, zone)
            }
            // Other types at a custom domain come from the zone it sits in (its apex SOA,
            // MX, TXT); the name exists, so a zone without it says NODATA, not NXDOMAIN.
            _ => match in_zone(snapshot, zone(), name, &lower, qtype) {
                Step::NxDomain(zone) => Step::NoData(zone),
                step => step,
            },
        };
    }
    match snapshot.zone(&lower, trusts) {
        Some(zone) => in_zone(snapshot, zone, name, &lower, qtype),
        None => Step::Refused,
    }
}

/// Answers a name inside `zone`.
fn in_zone<'s>(
    snapshot: &'s Snapshot,
    zone: ZoneView<'s>,
    name: &Name,
    lower: &Name,
    qtype: RecordType,
) -> Step<'s> {
    if let Some(data) = snapshot.zone_data(&zone) {
        return in_zone_file(data, zone, name, lower, qtype);
    }
    if lower == zone.apex {
        return synthesized_apex(snapshot, zone, name, qtype);
    }
    match zone.kind {
        Apex::Localspace => match snapshot.discovery(zone.space, lower) {
            Some(dynos) => {
                let ttl = snapshot.spaces[zone.space].ttl;
                addresses_step(name, qtype, dynos, ttl, zone.space, || zone)
            }
            None => Step::NxDomain(zone),
        },
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
    data: &'s crate::snapshot::ZoneData,
    zone: ZoneView<'s>,
    name: &Name,
    lower: &Name,
    qtype: RecordType,
) -> Step<'s> {
    if data.has_cuts {
        for labels in data.apex.num_labels() + 1..=lower.num_labels() {
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
fn at_node<'s>(
    rrsets: &[crate::snapshot::Rrset],
    zone: ZoneView<'s>,
    name: &Name,
    qtype: RecordType,
) -> Step<'s> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::compile;
    use hickory_proto::op::Message;

    /// The fixture of `tests/data/two-spaces`, compiled with serial 7.
    pub(crate) fn fixture() -> Snapshot {
        let files = [
            (
                "d/alpha.yaml",
                include_str!("../../tests/data/two-spaces/alpha.yaml"),
            ),
            (
                "d/beta.yaml",
                include_str!("../../tests/data/two-spaces/beta.yaml"),
            ),
        ];
        let zones = [
            (
                "d/corp.example.com.zone",
                include_str!("../../tests/data/two-spaces/corp.example.com.zone"),
            ),
            (
                "d/corp.example.com.public.zone",
                include_str!("../../tests/data/two-spaces/corp.example.com.public.zone"),
            ),
        ];
        let config = crate::config::parse_texts(&files, &zones).expect("fixture is valid");
        compile(&config, |_| 7)
    }

    const SPACE: &str = "127.16.0.5";
    const PROD_VPC: &str = "127.31.0.5";
    const HQ_VPN: &str = "127.32.0.5"; // trusted by alpha (hq-vpn) and beta (shared-vpn)
    const BETA: &str = "127.17.0.5";
    const PUBLIC: &str = "127.200.0.1";

    fn query_bytes(name: &str, qtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.edns = edns;
        m.to_vec().unwrap()
    }

    fn ask_with(snapshot: &Snapshot, from: &str, transport: Transport, bytes: &[u8]) -> Message {
        let reply = answer(snapshot, from.parse().unwrap(), transport, bytes)
            .reply
            .expect("a reply");
        Message::from_vec(&reply).expect("reply parses")
    }

    fn ask(snapshot: &Snapshot, from: &str, name: &str, qtype: RecordType) -> Message {
        ask_with(
            snapshot,
            from,
            Transport::Udp,
            &query_bytes(name, qtype, None),
        )
    }

    /// The answer section's data as text, sorted.
    fn data(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }

    /// The SOA owner and MNAME of the authority section, if any.
    fn soa(m: &Message) -> Option<(String, String, u32)> {
        m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some((r.name.to_ascii(), soa.mname.to_ascii(), r.ttl)),
            _ => None,
        })
    }

    #[test]
    fn who_sees_what_for_app_names() {
        let s = fixture();
        use ResponseCode::*;
        // (asker, name, rcode, answer data, SOA owner when negative)
        type Row<'a> = (
            &'a str,
            &'a str,
            ResponseCode,
            &'a [&'a str],
            Option<&'a str>,
        );
        let table: &[Row] = &[
            // internal app of the asker's space
            (
                SPACE,
                "internal-app.herokuapp.com.",
                NoError,
                &["127.16.0.10"],
                None,
            ),
            (
                HQ_VPN,
                "internal-app.herokuapp.com.",
                NoError,
                &["127.16.0.10"],
                None,
            ),
            (
                "fd00:10::5",
                "internal-app.herokuapp.com.",
                NoError,
                &["127.16.0.10"],
                None,
            ),
            // allow excludes prod-vpc: as if absent
            (
                PROD_VPC,
                "internal-app.herokuapp.com.",
                NXDomain,
                &[],
                Some("herokuapp.com."),
            ),
            (
                PROD_VPC,
                "open-app.herokuapp.com.",
                NoError,
                &["127.16.0.10"],
                None,
            ),
            // another space's internal app: no leak
            (
                BETA,
                "internal-app.herokuapp.com.",
                NXDomain,
                &[],
                Some("herokuapp.com."),
            ),
            (
                SPACE,
                "beta-app.herokuapp.com.",
                NXDomain,
                &[],
                Some("herokuapp.com."),
            ),
            // a source trusted by two spaces sees both
            (
                HQ_VPN,
                "beta-app.herokuapp.com.",
                NoError,
                &["127.17.0.10"],
                None,
            ),
            // standard apps: private inside, public outside
            (
                SPACE,
                "std-app.herokuapp.com.",
                NoError,
                &["127.16.0.10"],
                None,
            ),
            (
                BETA,
                "std-app.herokuapp.com.",
                NoError,
                &["127.100.0.10"],
                None,
            ),
            (
                PUBLIC,
                "std-app.herokuapp.com.",
                NoError,
                &["127.100.0.10"],
                None,
            ),
            (
                PUBLIC,
                "beta-std.herokuapp.com.",
                NoError,
                &["127.100.0.17"],
                None,
            ),
            (
                "::1",
                "std-app.herokuapp.com.",
                NoError,
                &["127.100.0.10"],
                None,
            ),
            (PUBLIC, "www.example.net.", NoError, &["127.100.0.10"], None),
            // public askers get nothing else, existing or not
            (PUBLIC, "internal-app.herokuapp.com.", Refused, &[], None),
            (PUBLIC, "no-such-app.herokuapp.com.", Refused, &[], None),
            (PUBLIC, "herokuapp.com.", Refused, &[], None),
            ("::1", "internal-app.herokuapp.com.", Refused, &[], None),
            (
                "fd00:11::5",
                "internal-app.herokuapp.com.",
                Refused,
                &[],
                None,
            ),
            // names under no zone we serve
            (SPACE, "www.example.com.", Refused, &[], None),
            (SPACE, "com.", Refused, &[], None),
            (SPACE, ".", Refused, &[], None),
            // an unknown app inside the space
            (
                SPACE,
                "no-such-app.herokuapp.com.",
                NXDomain,
                &[],
                Some("herokuapp.com."),
            ),
            (
                SPACE,
                "x.internal-app.herokuapp.com.",
                NXDomain,
                &[],
                Some("herokuapp.com."),
            ),
        ];
        for &(from, name, rcode, want, soa_owner) in table {
            let m = ask(&s, from, name, RecordType::A);
            let why = format!("{from} asking {name}: {m:?}");
            assert_eq!(m.metadata.response_code, rcode, "{why}");
            assert_eq!(data(&m), want, "{why}");
            assert_eq!(soa(&m).map(|s| s.0), soa_owner.map(String::from), "{why}");
            assert_eq!(m.metadata.authoritative, rcode != Refused, "{why}");
            assert!(!m.metadata.recursion_available, "{why}");
        }
    }

    #[test]
    fn custom_domains_and_wildcards_answer_router_addresses() {
        let s = fixture();
        let m = ask(&s, HQ_VPN, "api.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10"]);
        let m = ask(&s, HQ_VPN, "deep.x.tools.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10"]);
        let m = ask(&s, SPACE, "api.corp.example.com.", RecordType::AAAA);
        assert_eq!(data(&m), ["fd16::10"]);
        // Not allowed: the zone it sits in answers, and it has no such name.
        let m = ask(&s, PROD_VPC, "api.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa(&m).unwrap().0, "corp.example.com.");
        // Public askers see the public zone file, which does not have it either.
        let m = ask(&s, PUBLIC, "api.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa(&m).unwrap().2, 60, "the public file's negative TTL");
        // A custom domain outside every zone file is its own apex.
        let m = ask(&s, SPACE, "open.example.org.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].name.to_ascii(), "open.example.org.");
        let m = ask(&s, SPACE, "open.example.org.", RecordType::MX);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(soa(&m).unwrap().0, "open.example.org.");
        let m = ask(&s, SPACE, "x.open.example.org.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&s, PUBLIC, "open.example.org.", RecordType::SOA);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn zone_files_split_by_audience() {
        let s = fixture();
        let m = ask(&s, SPACE, "www.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.5.5"]);
        let m = ask(&s, PUBLIC, "www.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.100.0.80"]);
        let m = ask(&s, BETA, "www.corp.example.com.", RecordType::A);
        assert_eq!(
            data(&m),
            ["127.100.0.80"],
            "another space sees the public view"
        );
        let m = ask(&s, PUBLIC, "mail.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn zone_file_lookups_follow_rfc_1034() {
        let s = fixture();
        let m = ask(&s, SPACE, "chain.corp.example.com.", RecordType::A);
        assert_eq!(
            data(&m),
            [
                "127.16.5.5",
                "alias.corp.example.com.",
                "www.corp.example.com."
            ]
        );
        assert!(m.metadata.authoritative);
        // A chain into app names is chased with the asker's rights.
        let m = ask(&s, HQ_VPN, "to-app.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10", "internal-app.herokuapp.com."]);
        let m = ask(&s, PROD_VPC, "to-app.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(soa(&m).unwrap().0, "herokuapp.com.");
        let m = ask(&s, SPACE, "to-std.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10", "www.example.net."]);
        // A chain that leaves our data stops there.
        let m = ask(&s, SPACE, "to-out.corp.example.com.", RecordType::A);
        assert_eq!(
            (m.metadata.response_code, data(&m)),
            (ResponseCode::NoError, vec!["www.example.com.".into()])
        );
        // Loops end.
        let m = ask(&s, SPACE, "loop1.corp.example.com.", RecordType::A);
        assert_eq!(m.answers.len(), 2);
        // CNAME itself.
        let m = ask(&s, SPACE, "alias.corp.example.com.", RecordType::CNAME);
        assert_eq!(data(&m), ["www.corp.example.com."]);
        // Wildcards synthesize the asked name.
        let m = ask(&s, SPACE, "Foo.Dev.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.5.6"]);
        assert_eq!(m.answers[0].name.to_ascii(), "Foo.Dev.corp.example.com.");
        // NODATA and NXDOMAIN carry the SOA with the negative TTL.
        let m = ask(&s, SPACE, "www.corp.example.com.", RecordType::MX);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(
            soa(&m),
            Some((
                "corp.example.com.".into(),
                "ns1.corp.example.com.".into(),
                120
            ))
        );
        let m = ask(&s, SPACE, "b.c.corp.example.com.", RecordType::A);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0),
            "empty non-terminal"
        );
        let m = ask(&s, SPACE, "nope.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa(&m).unwrap().2, 120);
        // Delegations are referrals with glue, not authoritative.
        let m = ask(&s, SPACE, "host.lab.corp.example.com.", RecordType::A);
        assert!(!m.metadata.authoritative);
        assert_eq!(m.answers.len(), 0);
        assert_eq!(
            m.authorities[0].data.to_string(),
            "ns.lab.corp.example.com."
        );
        assert_eq!(m.additionals[0].data.to_string(), "127.16.9.9");
        // Apex data.
        let m = ask(&s, SPACE, "corp.example.com.", RecordType::MX);
        assert_eq!(data(&m), ["10 mail.corp.example.com."]);
        let m = ask(&s, SPACE, "www2.corp.example.com.", RecordType::A);
        assert_eq!(
            data(&m),
            ["127.16.5.7"],
            "zone data matches case-insensitively"
        );
    }

    #[test]
    fn app_domain_apex_and_nameservers() {
        let s = fixture();
        let m = ask(&s, SPACE, "herokuapp.com.", RecordType::SOA);
        let RData::SOA(record) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(record.mname.to_ascii(), "ns1.alpha.internal.");
        assert_eq!(record.serial, 7);
        let m = ask(&s, SPACE, "herokuapp.com.", RecordType::NS);
        assert_eq!(data(&m), ["ns1.alpha.internal."]);
        assert_eq!(m.additionals[0].data.to_string(), "127.16.0.2");
        let m = ask(&s, BETA, "herokuapp.com.", RecordType::NS);
        assert_eq!(data(&m), ["ns1.beta.spaceroute.internal."]);
        // Trusted by alpha and beta: the first space by name.
        let m = ask(&s, HQ_VPN, "herokuapp.com.", RecordType::SOA);
        let RData::SOA(record) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(record.mname.to_ascii(), "ns1.alpha.internal.");
        let m = ask(&s, BETA, "nope.herokuapp.com.", RecordType::A);
        assert_eq!(
            soa(&m).map(|s| s.1),
            Some("ns1.beta.spaceroute.internal.".into())
        );
        let m = ask(&s, SPACE, "std-app.herokuapp.com.", RecordType::TXT);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(soa(&m).unwrap().0, "herokuapp.com.");
        let m = ask(&s, PUBLIC, "std-app.herokuapp.com.", RecordType::TXT);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert!(soa(&m).is_some());
    }

    #[test]
    fn service_discovery_is_for_the_space_network_only() {
        let s = fixture();
        let m = ask(&s, SPACE, "web.internal-app.app.localspace.", RecordType::A);
        assert_eq!(data(&m), ["127.16.1.21", "127.16.1.22"]);
        let m = ask(
            &s,
            SPACE,
            "2.web.internal-app.app.localspace.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["127.16.1.22"]);
        let m = ask(
            &s,
            SPACE,
            "worker.internal-app.app.localspace.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["127.16.1.23"]);
        let m = ask(&s, SPACE, "internal-app.app.localspace.", RecordType::A);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let m = ask(&s, SPACE, "web.beta-app.app.localspace.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&s, BETA, "web.beta-app.app.localspace.", RecordType::A);
        assert_eq!(data(&m), ["127.17.1.21"]);
        for from in [HQ_VPN, PROD_VPC, PUBLIC] {
            let m = ask(&s, from, "web.internal-app.app.localspace.", RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{from}");
        }
    }

    #[test]
    fn question_is_echoed_as_sent_and_matched_case_insensitively() {
        let s = fixture();
        let m = ask(&s, SPACE, "InTeRnAl-App.HerokuApp.COM.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10"]);
        assert_eq!(m.queries[0].name.to_ascii(), "InTeRnAl-App.HerokuApp.COM.");
        assert_eq!(m.answers[0].name.to_ascii(), "InTeRnAl-App.HerokuApp.COM.");
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.metadata.recursion_desired, "RD is echoed");
    }

    #[test]
    fn edns_is_echoed_and_badvers_answered() {
        let s = fixture();
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        let m = ask_with(
            &s,
            SPACE,
            Transport::Udp,
            &query_bytes("internal-app.herokuapp.com.", RecordType::A, Some(edns)),
        );
        let e = m.edns.as_ref().expect("OPT echoed");
        assert_eq!((e.max_payload(), e.version()), (UDP_PAYLOAD, 0));
        let m = ask(&s, SPACE, "internal-app.herokuapp.com.", RecordType::A);
        assert!(m.edns.is_none(), "no OPT without one in the query");
        let mut edns = Edns::new();
        edns.set_version(1);
        let m = ask_with(
            &s,
            SPACE,
            Transport::Udp,
            &query_bytes("internal-app.herokuapp.com.", RecordType::A, Some(edns)),
        );
        assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
        assert!(m.answers.is_empty());
    }

    #[test]
    fn oversize_udp_answers_are_truncated() {
        let s = fixture();
        let q = query_bytes("big.corp.example.com.", RecordType::TXT, None);
        let m = ask_with(&s, SPACE, Transport::Udp, &q);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        let m = ask_with(&s, SPACE, Transport::Tcp, &q);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        // 40 TXT records of ~60 bytes exceed 1232 too.
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        let reply = answer(
            &s,
            SPACE.parse().unwrap(),
            Transport::Udp,
            &query_bytes("big.corp.example.com.", RecordType::TXT, Some(edns)),
        );
        let bytes = reply.reply.unwrap();
        assert!(bytes.len() <= usize::from(UDP_PAYLOAD));
        assert!(reply.outcome.truncated);
        // Small answers are not.
        let m = ask(&s, SPACE, "www.corp.example.com.", RecordType::A);
        assert!(!m.metadata.truncation);
    }

    #[test]
    fn a_custom_domain_at_a_zone_apex_answers_addresses_and_keeps_the_apex_data() {
        let yaml = "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10]}\nzones:\n  - file: apex.example.zone\napps:\n  - name: apex-app\n    domains: [apex.example]\n";
        let zone = "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\n@ IN MX 10 mail\nns1 IN A 127.16.0.2\n";
        let config =
            crate::config::parse_texts(&[("d/s.yaml", yaml)], &[("d/apex.example.zone", zone)])
                .unwrap();
        let s = compile(&config, |_| 7);
        let m = ask(&s, SPACE, "apex.example.", RecordType::A);
        assert_eq!(
            (m.metadata.response_code, data(&m)),
            (ResponseCode::NoError, vec!["127.16.0.10".to_string()])
        );
        assert!(
            m.answers.iter().all(|r| r.record_type() == RecordType::A),
            "no CNAME: {m:?}"
        );
        let m = ask(&s, SPACE, "apex.example.", RecordType::MX);
        assert_eq!(data(&m), ["10 mail.apex.example."]);
        let m = ask(&s, SPACE, "apex.example.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        let m = ask(&s, SPACE, "apex.example.", RecordType::TXT);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(soa(&m).unwrap().0, "apex.example.");
    }

    #[test]
    fn any_gets_a_minimal_answer() {
        let s = fixture();
        let m = ask(&s, SPACE, "corp.example.com.", RecordType::ANY);
        assert_eq!(m.answers.len(), 1, "one rrset: {m:?}");
        let m = ask(&s, SPACE, "internal-app.herokuapp.com.", RecordType::ANY);
        assert_eq!(data(&m), ["127.16.0.10", "fd16::10"]);
    }

    #[test]
    fn bad_questions_get_formerr_notimp_or_refused() {
        let s = fixture();
        let good = query_bytes("internal-app.herokuapp.com.", RecordType::A, None);
        let rcode = |bytes: &[u8]| {
            let reply = answer(&s, SPACE.parse().unwrap(), Transport::Udp, bytes).reply?;
            Some(Message::from_vec(&reply).ok()?.metadata.response_code)
        };
        // QDCOUNT 0 and 2.
        let mut b = good.clone();
        b[5] = 0;
        assert_eq!(rcode(&b[..12]), Some(ResponseCode::FormErr));
        b[5] = 2;
        assert_eq!(rcode(&b), Some(ResponseCode::FormErr));
        // A question cut short.
        assert_eq!(rcode(&good[..good.len() - 3]), Some(ResponseCode::FormErr));
        // Opcode NOTIFY (4) and UPDATE (5).
        let mut b = good.clone();
        b[2] = (b[2] & 0x87) | (4 << 3);
        assert_eq!(rcode(&b), Some(ResponseCode::NotImp));
        b[2] = (b[2] & 0x87) | (5 << 3);
        assert_eq!(rcode(&b), Some(ResponseCode::NotImp));
        // Responses and runts are dropped.
        let mut b = good.clone();
        b[2] |= 0x80;
        assert_eq!(rcode(&b), None);
        assert_eq!(rcode(&good[..11]), None);
        assert_eq!(rcode(&[]), None);
        // Class CHAOS, AXFR and OPT as a question.
        let mut m = Message::from_vec(&good).unwrap();
        m.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(rcode(&m.to_vec().unwrap()), Some(ResponseCode::Refused));
        let q = query_bytes("herokuapp.com.", RecordType::AXFR, None);
        assert_eq!(rcode(&q), Some(ResponseCode::Refused));
        let q = query_bytes("herokuapp.com.", RecordType::OPT, None);
        assert_eq!(rcode(&q), Some(ResponseCode::FormErr));
        // The header ID is kept on errors.
        let reply = answer(&s, SPACE.parse().unwrap(), Transport::Udp, &good[..20])
            .reply
            .unwrap();
        assert_eq!(&reply[..2], &good[..2]);
    }
}
