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
use hickory_proto::rr::rdata::TSIG;
use hickory_proto::rr::rdata::tsig::{TsigError, make_tsig_record};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::dns::fast;
use crate::dns::resolve::resolve;
use crate::snapshot::Snapshot;

/// Our EDNS UDP payload size (the DNS flag day 2020 value), and the most we send over UDP.
pub const UDP_PAYLOAD: u16 = 1232;

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
    /// The reply bytes; `None` means drop the packet silently. For a query to relay
    /// ([`Outcome::forward`]) this is the SERVFAIL to send when no upstream answers.
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
    /// The query is for an unlisted name under an app domain whose policy is `forward`: relay
    /// it to that space's upstreams.
    pub forward: Option<Forward>,
}

/// A query to relay to the upstreams of a space's app domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The space whose `unlisted.upstreams` answer.
    pub space: usize,
    /// The most bytes the asker accepts over UDP (its EDNS size, or 512).
    pub limit: u16,
}

/// Answers one DNS message `query` from `client` that came over `transport`.
pub fn answer(snapshot: &Snapshot, client: IpAddr, transport: Transport, query: &[u8]) -> Answer {
    fast::answer(snapshot, client, transport, query)
        .unwrap_or_else(|| reference(snapshot, client, transport, query))
}

/// [`answer`] without the fast path: every case, through hickory's parser and encoder. The
/// fast path must give exactly what this gives; tests and the fuzz target check that.
pub fn reference(
    snapshot: &Snapshot,
    client: IpAddr,
    transport: Transport,
    query: &[u8],
) -> Answer {
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

    // The answer and authority sections of a query must hold nothing we would use, but they
    // must parse; the additional section carries the OPT record and any TSIG.
    let op = header.metadata.op_code;
    let sections = question.as_ref().and_then(|_| {
        Message::read_records(&mut decoder, header.counts.answers.into(), false, op)
            .and_then(|_| {
                Message::read_records(&mut decoder, header.counts.authorities.into(), false, op)
            })
            .and_then(|_| {
                Message::read_records(&mut decoder, header.counts.additionals.into(), true, op)
            })
            .ok()
    });
    if let Some((_, Some(edns), _)) = &sections {
        reply.limit = edns.max_payload().clamp(512, UDP_PAYLOAD);
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD)
            .set_version(0)
            // RFC 3225 §3: the DO bit is copied into the response.
            .set_dnssec_ok(edns.flags().dnssec_ok);
        reply.edns = Some(ours);
    }
    if op != OpCode::Query {
        return reply.finish(ResponseCode::NotImp, transport);
    }
    let (Some(question), Some((additionals, request_edns, _))) = (question, sections) else {
        return reply.finish(ResponseCode::FormErr, transport);
    };
    // Bytes after the last record are not a DNS message (Knot answers FORMERR too).
    if !decoder.is_empty() {
        return reply.finish(ResponseCode::FormErr, transport);
    }
    if request_edns.as_ref().is_some_and(|e| e.version() > 0) {
        return reply.finish(ResponseCode::BADVERS, transport);
    }
    // RFC 8945 §5.2: TSIG is the last record; a key we do not know gets NOTAUTH/BADKEY,
    // unsigned.
    if let Some(at) = (additionals.iter()).position(|r| r.record_type() == RecordType::TSIG) {
        if at + 1 != additionals.len() {
            return reply.finish(ResponseCode::FormErr, transport);
        }
        reply.signature = bad_key(&additionals[at]);
        return reply.finish(ResponseCode::NotAuth, transport);
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
    if let Some(space) = found.forward {
        reply.space = Some(space);
        let upstreams = &snapshot.spaces[space].upstreams;
        // A query from one of our own upstreams for a name we would relay back to it is a
        // forwarding loop: end it here.
        let client = client.to_canonical();
        if !upstreams.iter().any(|u| u.ip().to_canonical() == client) {
            reply.forward = Some(Forward {
                space,
                limit: reply.limit,
            });
        }
        return reply.finish(ResponseCode::ServFail, transport);
    }
    reply.answers = found.answers;
    reply.authorities = found.authorities;
    reply.additionals = found.additionals;
    reply.finish(found.rcode, transport)
}

/// The unsigned TSIG record of a BADKEY error for the request's `tsig` (RFC 8945 §5.3.2): the
/// same key name, algorithm, time and fudge, no MAC.
fn bad_key(tsig: &Record) -> Option<Box<Record<TSIG>>> {
    let RData::TSIG(request) = &tsig.data else {
        return None;
    };
    let rdata = TSIG::new(
        request.algorithm.clone(),
        request.time,
        request.fudge,
        Vec::new(),
        request.oid,
        Some(TsigError::BadKey),
        Vec::new(),
    );
    Some(Box::new(make_tsig_record(tsig.name.clone(), rdata)))
}

fn dropped() -> Answer {
    Answer {
        reply: None,
        outcome: Outcome {
            rcode: ResponseCode::NoError,
            space: None,
            truncated: false,
            forward: None,
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
    signature: Option<Box<Record<TSIG>>>,
    /// The most bytes the asker accepts over UDP.
    limit: u16,
    space: Option<usize>,
    forward: Option<Forward>,
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
            signature: None,
            limit: 512,
            space: None,
            forward: None,
        }
    }

    /// Encodes the reply; over UDP, one that does not fit is sent as the question alone with TC.
    fn finish(mut self, rcode: ResponseCode, transport: Transport) -> Answer {
        if matches!(rcode, ResponseCode::FormErr | ResponseCode::NotImp) {
            // A request we could not take echoes only ID, opcode and RD (as Knot does).
            let mut bare = Metadata::new(
                self.metadata.id,
                MessageType::Response,
                self.metadata.op_code,
            );
            bare.recursion_desired = self.metadata.recursion_desired;
            self.metadata = bare;
        }
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
        message.signature = self.signature;
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
                message.signature = None;
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
                forward: self.forward,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::compile;
    use hickory_proto::op::Message;
    use hickory_proto::rr::Name;

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
        // Alpha's serial plus beta's public serial: alpha's askers see beta's standard apps.
        assert_eq!(record.serial, 7 + 7);
        let m = ask(&s, SPACE, "herokuapp.com.", RecordType::NS);
        assert_eq!(data(&m), ["ns1.alpha.internal."]);
        assert!(
            m.additionals.is_empty(),
            "no address for a name outside the zone, which we would refuse: {m:?}"
        );
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

    /// A snapshot of inline space files and zone files, compiled with serial 7 for trusted
    /// views and 5 for public ones.
    fn snapshot_of(files: &[(&str, &str)], zones: &[(&str, &str)]) -> Snapshot {
        let config = crate::config::parse_texts(files, zones).expect("valid config");
        compile(&config, |key| match key {
            crate::snapshot::ZoneKey::Public(_) => 5,
            _ => 7,
        })
    }

    fn rcode_and_data(m: &Message) -> (ResponseCode, Vec<String>) {
        (m.metadata.response_code, data(m))
    }

    const IN_BAILIWICK: &str = "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10], public: [127.100.0.10]}\nnameservers:\n  - {name: ns1.herokuapp.com, ip: 127.0.0.1}\n  - {name: ns2.herokuapp.com, ip: 127.0.0.2}\n  - {name: ns.outside.example, ip: 127.0.0.3}\napps:\n  - name: web-app\n";

    /// Issue 7, item 1: nameservers inside a zone we serve answer their addresses.
    #[test]
    fn issue_7_in_bailiwick_nameservers_answer_their_addresses() {
        let s = snapshot_of(&[("d/s.yaml", IN_BAILIWICK)], &[]);
        let m = ask(&s, SPACE, "ns1.herokuapp.com.", RecordType::A);
        assert_eq!(
            rcode_and_data(&m),
            (ResponseCode::NoError, vec!["127.0.0.1".into()])
        );
        assert!(m.metadata.authoritative);
        let m = ask(&s, SPACE, "NS2.herokuapp.com.", RecordType::AAAA);
        assert_eq!(rcode_and_data(&m), (ResponseCode::NoError, vec![]));
        assert_eq!(soa(&m).unwrap().0, "herokuapp.com.");
        let m = ask(&s, SPACE, "herokuapp.com.", RecordType::NS);
        assert_eq!(m.answers.len(), 3);
        let mut glue: Vec<String> = (m.additionals.iter())
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        glue.sort();
        assert_eq!(
            glue,
            [
                "ns1.herokuapp.com. 127.0.0.1",
                "ns2.herokuapp.com. 127.0.0.2"
            ],
            "glue only for names inside the zone"
        );
        // Still nothing for outsiders, and a name below a nameserver does not exist.
        let m = ask(&s, PUBLIC, "ns1.herokuapp.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = ask(&s, SPACE, "x.ns1.herokuapp.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&s, SPACE, "ns.outside.example.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    /// Issue 7, item 1: `check` rejects an app or custom domain that is a nameserver's name.
    #[test]
    fn issue_7_apps_may_not_own_a_nameserver_name() {
        let yaml = IN_BAILIWICK.replace(
            "  - name: web-app\n",
            "  - name: ns1\n  - name: other\n    domains: [ns.outside.example]\n",
        );
        let errs = crate::config::parse_texts(&[("d/s.yaml", &yaml)], &[]).unwrap_err();
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("d/s.yaml:9:"), "{errs:?}");
        assert!(errs[0].contains("nameserver"), "{errs:?}");
        assert!(errs[1].starts_with("d/s.yaml:11:"), "{errs:?}");
    }

    /// Issue 7, item 2: the parents of custom domains exist for those who may see below.
    #[test]
    fn issue_7_parents_of_custom_domains_are_nodata_for_those_who_see_below() {
        let s = fixture();
        // internal-app owns *.tools.corp.example.com; hq-vpn may see it, prod-vpc may not.
        let m = ask(&s, HQ_VPN, "tools.corp.example.com.", RecordType::A);
        assert_eq!(rcode_and_data(&m), (ResponseCode::NoError, vec![]));
        assert_eq!(soa(&m).unwrap().0, "corp.example.com.");
        assert!(m.metadata.authoritative);
        let m = ask(&s, PROD_VPC, "tools.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(&s, PUBLIC, "tools.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        let yaml = "space: s\nnetwork: 127.16.0.0/16\npeers:\n  - {name: vpn, cidrs: [127.32.0.0/16]}\nrouter: {private: [127.16.0.10]}\nzones:\n  - file: corp.example.com.zone\napps:\n  - name: deep\n    allow: []\n    domains: [x.y.corp.example.com, \"*.w.v.corp.example.com\"]\n";
        let zone = "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.16.0.2\n* IN TXT \"wild\"\n";
        let s = snapshot_of(&[("d/s.yaml", yaml)], &[("d/corp.example.com.zone", zone)]);
        for name in [
            "y.corp.example.com.",
            "v.corp.example.com.",
            "w.v.corp.example.com.",
        ] {
            let m = ask(&s, SPACE, name, RecordType::TXT);
            assert_eq!(
                rcode_and_data(&m),
                (ResponseCode::NoError, vec![]),
                "{name}"
            );
            // Not allowed below: the zone's own wildcard answers, as if nothing were there.
            let m = ask(&s, HQ_VPN, name, RecordType::TXT);
            assert_eq!(data(&m), ["wild"], "{name}");
        }
        let m = ask(&s, SPACE, "x.y.corp.example.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10"]);
    }

    fn edns_do() -> Option<Edns> {
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(true);
        Some(edns)
    }

    /// Issue 7, item 3: the DO bit is copied into every response that carries an OPT.
    #[test]
    fn issue_7_do_bit_is_copied() {
        let s = fixture();
        for (from, name, qtype, rcode) in [
            (
                SPACE,
                "corp.example.com.",
                RecordType::SOA,
                ResponseCode::NoError,
            ),
            (
                SPACE,
                "nope.corp.example.com.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                PUBLIC,
                "herokuapp.com.",
                RecordType::SOA,
                ResponseCode::Refused,
            ),
            (
                SPACE,
                "corp.example.com.",
                RecordType::OPT,
                ResponseCode::FormErr,
            ),
        ] {
            for transport in [Transport::Udp, Transport::Tcp] {
                let m = ask_with(&s, from, transport, &query_bytes(name, qtype, edns_do()));
                assert_eq!(m.metadata.response_code, rcode, "{name} {qtype}");
                assert!(m.edns.unwrap().flags().dnssec_ok, "{name} {qtype}");
            }
        }
        let m = ask_with(
            &s,
            SPACE,
            Transport::Udp,
            &query_bytes("corp.example.com.", RecordType::SOA, Some(Edns::new())),
        );
        assert!(!m.edns.unwrap().flags().dnssec_ok, "no DO asked, none set");
    }

    /// Issue 7, item 4: DS at a delegation is answered by the parent, authoritatively.
    #[test]
    fn issue_7_ds_at_a_delegation_comes_from_the_parent() {
        let s = fixture();
        let m = ask(&s, SPACE, "lab.corp.example.com.", RecordType::DS);
        assert_eq!(rcode_and_data(&m), (ResponseCode::NoError, vec![]));
        assert!(m.metadata.authoritative);
        assert_eq!(soa(&m).unwrap().0, "corp.example.com.");
        // Any other type there, and DS below the cut, is still a referral.
        for (name, qtype) in [
            ("lab.corp.example.com.", RecordType::A),
            ("x.lab.corp.example.com.", RecordType::DS),
        ] {
            let m = ask(&s, SPACE, name, qtype);
            assert!(!m.metadata.authoritative, "{name} {qtype}");
            assert_eq!(m.authorities[0].record_type(), RecordType::NS);
        }
    }

    /// Issue 7, item 5: NOTIMP and FORMERR echo only ID, opcode and RD.
    #[test]
    fn issue_7_errors_echo_only_id_opcode_and_rd() {
        let s = fixture();
        let mut q = query_bytes("internal-app.herokuapp.com.", RecordType::A, None);
        q[2] = (q[2] & 0x87) | (15 << 3) | 0x04 | 0x02; // opcode 15, AA, TC
        q[3] |= 0x10 | 0x20 | 0x40; // CD, AD, Z
        let reply = answer(&s, SPACE.parse().unwrap(), Transport::Udp, &q)
            .reply
            .unwrap();
        assert_eq!(&reply[..2], &q[..2], "ID");
        assert_eq!(reply[2], 0x80 | (15 << 3) | 0x01, "QR, opcode 15, RD only");
        assert_eq!(reply[3], 4, "NOTIMP and no other flag");
        let mut q = query_bytes("herokuapp.com.", RecordType::SOA, edns_do());
        q[2] = (q[2] & 0x87) | (15 << 3);
        let m = ask_with(&s, PUBLIC, Transport::Udp, &q);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert!(m.edns.expect("OPT echoed").flags().dnssec_ok);
        // FORMERR: a second question.
        let mut q = query_bytes("internal-app.herokuapp.com.", RecordType::A, None);
        q[5] = 2;
        q[3] |= 0x10;
        let reply = answer(&s, SPACE.parse().unwrap(), Transport::Udp, &q)
            .reply
            .unwrap();
        assert_eq!((reply[2], reply[3]), (0x81, 1));
    }

    /// Issue 7, item 6: a TSIG-signed query with a key we do not know gets NOTAUTH/BADKEY.
    #[test]
    fn issue_7_unknown_tsig_key_gets_notauth_badkey() {
        use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError, make_tsig_record};
        let s = fixture();
        let tsig = TSIG::new(
            TsigAlgorithm::HmacSha256,
            1_700_000_000,
            300,
            vec![7; 32],
            0x4242,
            None,
            Vec::new(),
        );
        let key = Name::from_ascii("nobody.key.").unwrap();
        let mut m = Message::from_vec(&query_bytes(
            "internal-app.herokuapp.com.",
            RecordType::A,
            Some(Edns::new()),
        ))
        .unwrap();
        m.signature = Some(Box::new(make_tsig_record(key.clone(), tsig.clone())));
        for from in [SPACE, PUBLIC] {
            let r = ask_with(&s, from, Transport::Udp, &m.to_vec().unwrap());
            assert_eq!(r.metadata.response_code, ResponseCode::NotAuth, "{from}");
            assert!(r.answers.is_empty());
            let record = r.additionals.last().expect("a TSIG record");
            assert_eq!(record.name, key);
            let RData::TSIG(t) = &record.data else {
                panic!("{record:?}")
            };
            assert_eq!(t.error, Some(TsigError::BadKey));
            assert!(t.mac.is_empty(), "unsigned");
            assert_eq!((t.time, t.fudge, t.oid), (1_700_000_000, 300, 0x4242));
        }
        // A TSIG that is not the last record is malformed.
        m.signature = None;
        m.additionals = vec![
            make_tsig_record(key, tsig).into_record_of_rdata(),
            crate::snapshot::address_record(Name::root(), 0, "127.0.0.1".parse().unwrap()),
        ];
        let r = ask_with(&s, SPACE, Transport::Udp, &m.to_vec().unwrap());
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }

    /// Issue 7, item 7: bytes after a complete message are FORMERR.
    #[test]
    fn issue_7_trailing_bytes_are_formerr() {
        let s = fixture();
        for edns in [None, Some(Edns::new())] {
            let mut q = query_bytes("internal-app.herokuapp.com.", RecordType::A, edns);
            q.push(0);
            let m = ask_with(&s, SPACE, Transport::Tcp, &q);
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert!(m.answers.is_empty());
        }
    }

    /// Issue 7, item 8: public askers see a public identity, never the space's.
    #[test]
    fn issue_7_public_askers_never_see_the_private_soa_or_ns() {
        let s = fixture();
        let private = |m: &Message| {
            let text = format!("{:?} {:?}", m.authorities, m.additionals);
            text.contains("alpha") || text.contains("internal") || text.contains("127.16.")
        };
        // A standard app's NODATA, its custom domain's apex SOA, NS and NODATA.
        for (name, qtype) in [
            ("std-app.herokuapp.com.", RecordType::AAAA),
            ("www.example.net.", RecordType::MX),
            ("www.example.net.", RecordType::NS),
            ("www.example.net.", RecordType::SOA),
        ] {
            let m = ask(&s, PUBLIC, name, qtype);
            let why = format!("{name} {qtype}: {m:?}");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{why}");
            assert!(!private(&m), "{why}");
            assert!(!format!("{:?}", m.answers).contains("alpha"), "{why}");
            if let Some((owner, mname, _)) = soa(&m) {
                assert_eq!(mname, owner, "a neutral MNAME: {why}");
            }
        }
        let m = ask(&s, PUBLIC, "std-app.herokuapp.com.", RecordType::AAAA);
        let RData::SOA(public) = &m.authorities[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(public.serial, 7, "the fixture compiles every serial as 7");
        // The space itself still sees its own.
        let m = ask(&s, SPACE, "std-app.herokuapp.com.", RecordType::TXT);
        assert_eq!(soa(&m).unwrap().1, "ns1.alpha.internal.");

        // With a public identity set, that is what public askers see, with the public serial.
        let yaml = "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10], public: [127.100.0.10]}\nnameservers:\n  - {name: ns1.s.internal, ip: 127.16.0.2}\npublic:\n  nameservers:\n    - {name: ns1.www.example.net, ip: 127.100.0.53}\n    - {name: ns2.example.org}\n  hostmaster: dns.example.org\napps:\n  - name: std\n    internal_routing: false\n    domains: [www.example.net]\n";
        let s = snapshot_of(&[("d/s.yaml", yaml)], &[]);
        let m = ask(&s, PUBLIC, "www.example.net.", RecordType::NS);
        assert_eq!(data(&m), ["ns1.www.example.net.", "ns2.example.org."]);
        let glue: Vec<String> = m.additionals.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(glue, ["127.100.0.53"]);
        let m = ask(&s, PUBLIC, "ns1.www.example.net.", RecordType::A);
        assert_eq!(data(&m), ["127.100.0.53"]);
        let m = ask(&s, PUBLIC, "std.herokuapp.com.", RecordType::TXT);
        let RData::SOA(public) = &m.authorities[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(
            (
                public.mname.to_ascii(),
                public.rname.to_ascii(),
                public.serial
            ),
            ("ns1.www.example.net.".into(), "dns.example.org.".into(), 5)
        );
        let m = ask(&s, SPACE, "std.herokuapp.com.", RecordType::TXT);
        let RData::SOA(private) = &m.authorities[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(
            (private.mname.to_ascii(), private.serial),
            ("ns1.s.internal.".into(), 7)
        );
    }

    /// Issue 7, item 8: a standard app's domain inside a zone file only trusted askers see is
    /// its own apex to the public, with the public identity.
    #[test]
    fn issue_7_a_standard_apps_domain_in_a_trusted_zone_is_its_own_apex_to_the_public() {
        let yaml = "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10], public: [127.100.0.10]}\nzones:\n  - file: corp.example.com.zone\napps:\n  - name: std\n    internal_routing: false\n    domains: [www.corp.example.com]\n";
        let zone = "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.16.0.2\n";
        let s = snapshot_of(&[("d/s.yaml", yaml)], &[("d/corp.example.com.zone", zone)]);
        let m = ask(&s, PUBLIC, "www.corp.example.com.", RecordType::MX);
        assert_eq!(rcode_and_data(&m), (ResponseCode::NoError, vec![]));
        let public = soa(&m).unwrap();
        assert_eq!(
            (public.0.as_str(), public.1.as_str()),
            ("www.corp.example.com.", "www.corp.example.com.")
        );
        let m = ask(&s, SPACE, "www.corp.example.com.", RecordType::MX);
        assert_eq!(
            soa(&m).unwrap().1,
            "ns1.corp.example.com.",
            "the zone file's own"
        );
        let m = ask(&s, PUBLIC, "ns1.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    /// Issue 7, item 9: a name the asker may not see does not exist for it, so a covering
    /// wildcard it may see answers, in DNS and in routing alike.
    #[test]
    fn issue_7_hidden_names_do_not_stop_a_visible_wildcard() {
        let a = "space: a\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10], public: [127.100.0.10]}\napps:\n  - name: wild\n    internal_routing: false\n    domains: [\"*.ext.example.net\"]\n";
        let b = "space: b\nnetwork: 127.17.0.0/16\nrouter: {private: [127.17.0.10]}\napps:\n  - name: hidden\n    domains: [secret.ext.example.net]\n";
        let s = snapshot_of(&[("d/a.yaml", a), ("d/b.yaml", b)], &[]);
        for name in [
            "secret.ext.example.net.",
            "any.ext.example.net.",
            "x.secret.ext.example.net.",
        ] {
            let m = ask(&s, PUBLIC, name, RecordType::A);
            assert_eq!(data(&m), ["127.100.0.10"], "{name}");
            let m = ask(&s, SPACE, name, RecordType::A);
            assert_eq!(data(&m), ["127.16.0.10"], "{name}");
        }
        let m = ask(&s, BETA, "secret.ext.example.net.", RecordType::A);
        assert_eq!(data(&m), ["127.17.0.10"]);
        // For b, `secret` exists, so the wildcard does not reach below it (RFC 4592 §4.1).
        let m = ask(&s, BETA, "x.secret.ext.example.net.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa(&m).unwrap().0, "secret.ext.example.net.");
        let host = |n: &str| Name::from_ascii(n).unwrap();
        let app = |r: Option<crate::snapshot::AppRef>| r.map(|r| s.app(r).name.clone());
        let public: IpAddr = PUBLIC.parse().unwrap();
        let beta: IpAddr = BETA.parse().unwrap();
        assert_eq!(
            app(s.route(public, &host("secret.ext.example.net."))),
            Some("wild".into())
        );
        assert_eq!(
            app(s.route(beta, &host("secret.ext.example.net."))),
            Some("hidden".into())
        );
    }

    /// Issue 7, item 10: the other side doors stay shut.
    #[test]
    fn issue_7_side_doors_stay_shut() {
        use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
        let s = fixture();
        // ECS claiming a trusted subnet does not make a public source trusted.
        let mut edns = Edns::new();
        let subnet: ipnet::IpNet = "127.16.0.0/24".parse().unwrap();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::from(subnet)));
        let q = query_bytes("internal-app.herokuapp.com.", RecordType::A, Some(edns));
        let m = ask_with(&s, PUBLIC, Transport::Udp, &q);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // IPv4-mapped sources are their IPv4 address, trusted or not.
        let m = ask(
            &s,
            "::ffff:127.16.0.5",
            "internal-app.herokuapp.com.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["127.16.0.10"]);
        let m = ask(
            &s,
            "::ffff:127.200.0.1",
            "internal-app.herokuapp.com.",
            RecordType::A,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // Meta and obsolete types, ANY and CHAOS get nothing private.
        for qtype in [
            RecordType::ANY,
            RecordType::Unknown(253),
            RecordType::Unknown(254),
            RecordType::TSIG,
            RecordType::Unknown(249),
        ] {
            let m = ask(&s, PUBLIC, "internal-app.herokuapp.com.", qtype);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qtype}");
        }
        let m = Message::from_vec(&query_bytes("version.bind.", RecordType::TXT, None)).unwrap();
        let mut m = m;
        m.queries[0].set_query_class(DNSClass::CH);
        let r = ask_with(&s, SPACE, Transport::Udp, &m.to_vec().unwrap());
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::Refused, 0)
        );
        // A CNAME chain from a zone the asker sees into an app it may not see stops there.
        let m = ask(&s, PROD_VPC, "to-app.corp.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(data(&m), ["internal-app.herokuapp.com."]);
        // NOTIFY and UPDATE are not ours to take.
        for opcode in [4u8, 5] {
            let mut q = query_bytes("herokuapp.com.", RecordType::SOA, None);
            q[2] = (q[2] & 0x87) | (opcode << 3);
            let reply = answer(&s, SPACE.parse().unwrap(), Transport::Udp, &q)
                .reply
                .unwrap();
            assert_eq!(reply[3] & 0x0f, 4, "NOTIMP for opcode {opcode}");
        }
    }

    const FORWARDING: &str = "space: s\nnetwork: 127.16.0.0/16\npeers:\n  - {name: vpn, cidrs: [127.32.0.0/16]}\nrouter: {private: [127.16.0.10], public: [127.100.0.10]}\nunlisted:\n  policy: forward\n  upstreams: [127.16.0.53, \"127.31.0.53:5300\"]\napps:\n  - name: mine\n    allow: []\n  - name: std\n    internal_routing: false\n    domains: [www.example.net]\n";

    /// Issue 7: unlisted names under an app domain follow the domain's policy.
    #[test]
    fn issue_7_unlisted_names_follow_the_domain_policy() {
        let s = snapshot_of(&[("d/s.yaml", FORWARDING)], &[]);
        let outcome = |from: &str, name: &str| {
            let q = query_bytes(name, RecordType::A, edns_do());
            answer(&s, from.parse().unwrap(), Transport::Udp, &q)
        };
        let relayed = |from: &str, name: &str| outcome(from, name).outcome.forward;
        let want = Some(Forward {
            space: 0,
            limit: 1232,
        });
        assert_eq!(relayed(SPACE, "elsewhere.herokuapp.com."), want);
        assert_eq!(relayed(SPACE, "x.mine.herokuapp.com."), want);
        // An app the asker may not see is, for it, a name no space lists.
        assert_eq!(relayed(HQ_VPN, "mine.herokuapp.com."), want);
        // Names we answer are not relayed, nor names outside the app domain, nor for the public.
        assert_eq!(relayed(SPACE, "mine.herokuapp.com."), None);
        assert_eq!(relayed(SPACE, "herokuapp.com."), None);
        assert_eq!(relayed(SPACE, "x.www.example.net."), None);
        assert_eq!(relayed(SPACE, "www.example.com."), None);
        assert_eq!(relayed(PUBLIC, "elsewhere.herokuapp.com."), None);
        let a = outcome(SPACE, "elsewhere.herokuapp.com.");
        let m = Message::from_vec(&a.reply.unwrap()).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "the fallback"
        );
        assert!(!m.metadata.authoritative);
        // A query from an upstream is a loop: SERVFAIL, not relayed.
        let a = outcome("127.16.0.53", "elsewhere.herokuapp.com.");
        assert_eq!(a.outcome.forward, None);
        assert_eq!(a.outcome.rcode, ResponseCode::ServFail);

        let refused = FORWARDING.replace(
            "  policy: forward\n  upstreams: [127.16.0.53, \"127.31.0.53:5300\"]\n",
            "  policy: refused\n",
        );
        let s = snapshot_of(&[("d/s.yaml", &refused)], &[]);
        let m = ask(&s, SPACE, "elsewhere.herokuapp.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(!m.metadata.authoritative);
        let m = ask(&s, SPACE, "mine.herokuapp.com.", RecordType::A);
        assert_eq!(data(&m), ["127.16.0.10"]);
        let nxdomain = FORWARDING.replace(
            "  policy: forward\n  upstreams: [127.16.0.53, \"127.31.0.53:5300\"]\n",
            "  policy: nxdomain\n",
        );
        let s = snapshot_of(&[("d/s.yaml", &nxdomain)], &[]);
        let m = ask(&s, SPACE, "elsewhere.herokuapp.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn unlisted_policy_is_checked() {
        let errs = |yaml: String| -> Vec<String> {
            let errs = crate::config::parse_texts(&[("d/s.yaml", &yaml)], &[]).unwrap_err();
            errs.iter().map(|e| e.to_string()).collect()
        };
        let e = errs(FORWARDING.replace("[127.16.0.53, \"127.31.0.53:5300\"]", "[]"));
        assert!(
            e.len() == 1 && e[0].starts_with("d/s.yaml:7:") && e[0].contains("upstream"),
            "{e:?}"
        );
        let e = errs(FORWARDING.replace("127.16.0.53,", "nope,"));
        assert!(
            e.len() == 1 && e[0].starts_with("d/s.yaml:8:") && e[0].contains("\"nope\""),
            "{e:?}"
        );
        let e = errs(FORWARDING.replace("policy: forward", "policy: refused"));
        assert!(
            e.len() == 1 && e[0].contains("only used with policy forward"),
            "{e:?}"
        );
        let e = errs(FORWARDING.replace("policy: forward", "policy: sometimes"));
        assert!(e.len() == 1 && e[0].starts_with("d/s.yaml:7:"), "{e:?}");
    }

    /// Issue 8: the fast path answers exactly what the full path answers, byte for byte, over
    /// a large random set of queries: names in every case, every kind of name, types, EDNS
    /// shapes, header flags, sources from every audience, both transports, mangled bytes.
    #[test]
    fn fast_path_replies_are_byte_identical_to_the_full_path() {
        let fixture = fixture();
        let many = snapshot_of(
            &[(
                "d/m.yaml",
                "space: m\nnetwork: 127.16.0.0/16\npeers:\n  - {name: vpn, cidrs: [127.32.0.0/16, \"fd00:10::/64\"]}\nrouter:\n  private: [127.16.0.10, 127.16.0.11, \"fd16::10\", \"fd16::11\"]\n  public: [127.100.0.10, \"2001:db8::10\"]\nttl: 45\napps:\n  - name: in-app\n    allow: [vpn]\n    domains: [In.Example.org, \"*.w.example.org\"]\n  - name: std-app\n    internal_routing: false\n    domains: [std.example.org]\n",
            )],
            &[],
        );
        let names = [
            "internal-app.herokuapp.com.",
            "open-app.herokuapp.com.",
            "std-app.herokuapp.com.",
            "beta-app.herokuapp.com.",
            "beta-std.herokuapp.com.",
            "api.corp.example.com.",
            "x.tools.corp.example.com.",
            "www.example.net.",
            "open.example.org.",
            "www.corp.example.com.",
            "nope.herokuapp.com.",
            "herokuapp.com.",
            "in-app.herokuapp.com.",
            "in.example.org.",
            "a.w.example.org.",
            "std.example.org.",
            "web.internal-app.app.localspace.",
            "x.internal-app.herokuapp.com.",
            "com.",
        ];
        let qtypes = [1u16, 1, 1, 28, 28, 2, 5, 6, 15, 16, 43, 255, 252, 41, 250];
        let sources = [
            SPACE,
            PROD_VPC,
            HQ_VPN,
            BETA,
            PUBLIC,
            "::1",
            "fd00:10::5",
            "::ffff:127.16.0.5",
            "127.32.9.9",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut fast_hits, mut refused, mut nxdomain, mut nodata) = (0, 0, 0, 0);
        let total = 40_000;
        for i in 0..total {
            let snapshot = if i % 2 == 0 { &fixture } else { &many };
            let name: String = (names[next(names.len())].chars())
                .map(|c| match next(3) {
                    0 => c.to_ascii_uppercase(),
                    _ => c,
                })
                .collect();
            let qtype = RecordType::from(qtypes[next(qtypes.len())]);
            let edns = match next(7) {
                0 | 1 => None,
                2 => Some(Edns::new()),
                3 => edns_do(),
                4 => {
                    let mut e = Edns::new();
                    e.set_max_payload([100, 512, 1232, 4096, 65535][next(5)] as u16);
                    Some(e)
                }
                5 => {
                    let mut e = Edns::new();
                    e.set_version(1);
                    Some(e)
                }
                _ => {
                    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
                    let mut e = Edns::new();
                    let cookie = EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7; 8]);
                    e.options_mut().insert(cookie);
                    Some(e)
                }
            };
            let mut q = query_bytes(&name, qtype, edns);
            q[0] = next(256) as u8;
            q[1] = next(256) as u8;
            // Flags: RD, CD, AD, TC, AA, Z at random; sometimes QR or another opcode.
            q[2] = (q[2] & 0xf8) | (next(8) as u8);
            q[3] = (next(8) as u8) << 4;
            match next(40) {
                0 => q[2] |= 0x80,
                1 => q[2] |= 4 << 3,
                2 => q.push(0),
                3 => q.truncate(q.len() - 1 - next(6)),
                4 => q[5] = 2,
                5 => q[7] = 1,
                6 => {
                    let at = 12 + next(q.len() - 12);
                    q[at] = next(256) as u8;
                }
                _ => {}
            }
            let from: IpAddr = sources[next(sources.len())].parse().unwrap();
            let transport = [Transport::Udp, Transport::Tcp][next(2)];
            let want = reference(snapshot, from, transport, &q);
            if let Some(got) = super::fast::answer(snapshot, from, transport, &q) {
                fast_hits += 1;
                refused += usize::from(got.outcome.rcode == ResponseCode::Refused);
                nxdomain += usize::from(got.outcome.rcode == ResponseCode::NXDomain);
                let reply = got.reply.as_deref().map(Message::from_vec);
                nodata += usize::from(reply.is_some_and(|m| {
                    m.is_ok_and(|m| {
                        m.metadata.response_code == ResponseCode::NoError && m.answers.is_empty()
                    })
                }));
                assert_eq!(
                    got,
                    want,
                    "query {q:02x?} from {from} over {transport:?}: {:?}",
                    want.reply.as_deref().map(Message::from_vec)
                );
            }
            assert_eq!(answer(snapshot, from, transport, &q), want);
        }
        // Exact app names, A or AAAA, a plain OPT, an asker who may see the app (with NODATA
        // where it has no address of the type); REFUSED for public askers; NXDOMAIN under the
        // app domain.
        assert!(
            fast_hits > total / 20
                && refused > total / 50
                && nxdomain > total / 100
                && nodata > total / 400,
            "the fast path took {fast_hits} of {total}: {refused} REFUSED, {nxdomain} NXDOMAIN, \
             {nodata} NODATA"
        );
    }
}
