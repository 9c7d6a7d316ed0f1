//! The checks behind the fuzz targets, shared with `tests/fuzz_corpus.rs`, which replays the
//! seed corpora in plain `cargo test` (it includes this file as a module).
//!
//! `answer`: the first byte of an input picks the source address (low three bits, one of
//! [`SOURCES`]) and the transport (high bit set: TCP); the rest is the query, answered against
//! the two-spaces fixture. `load`: an input is a space file's YAML, a NUL byte, and the text
//! of the zone (and certificate) files it may name. Neither may panic; the assertions below
//! are what else must hold.
//!
//! Seeds (`fuzz/corpus/<target>/`): the `answer` files are queries captured from dig 9.18 and
//! kdig 3.2 as sent, the selector byte in front; each file name gives the asker, the name and
//! the options, and `crafted-*` are edits of one of them (opcode, QDCOUNT, QR, a runt). The
//! `load` files named `valid-*` must load and `broken-*` must not; the replay test holds them
//! to that. Fuzz with `cargo +nightly fuzz run answer /tmp/new-corpus fuzz/corpus/answer` so
//! that new inputs go to the first directory rather than into the seeds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use hickory_proto::op::{Header, Message, MessageType, Query};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use spaceroute::config::Diagnostic;
use spaceroute::config::model::SpaceFile;
use spaceroute::dns::answer::{Transport, UDP_PAYLOAD, answer, reference};
use spaceroute::snapshot::{self, Snapshot};

/// The askers an `answer` input can pick: one per network of the two-spaces fixture, in IPv4
/// and IPv6.
pub const SOURCES: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(127, 16, 0, 5)), // alpha's own network
    IpAddr::V4(Ipv4Addr::new(127, 31, 0, 5)), // alpha's prod-vpc peer
    IpAddr::V4(Ipv4Addr::new(127, 32, 0, 5)), // hq-vpn: trusted by alpha and beta
    IpAddr::V4(Ipv4Addr::new(127, 17, 0, 5)), // beta's own network
    IpAddr::V4(Ipv4Addr::new(127, 200, 0, 1)), // public
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 5)), // hq-vpn over IPv6
    IpAddr::V6(Ipv6Addr::LOCALHOST),          // public over IPv6
    IpAddr::V4(Ipv4Addr::new(127, 16, 255, 255)), // the last address of alpha's network
];

/// The selector bit for TCP in an `answer` input's first byte.
pub const TCP: u8 = 0x80;

/// The two-spaces fixture (`tests/data/two-spaces`), compiled with serial 7.
///
/// # Panics
///
/// If the fixture does not validate, which its own tests rule out.
pub fn fixture() -> Snapshot {
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
    let config = spaceroute::config::parse_texts(&files, &zones).expect("fixture is valid");
    snapshot::compile(&config, |_| 7)
}

/// Answers one `answer` input and checks the reply: it parses, is a response, repeats the
/// query's ID, opcode and RD, never sets RA, repeats the question when it parsed (and has
/// none when it did not), and fits the UDP limit. Returns the reply, `None` if dropped.
///
/// # Panics
///
/// When a check fails: that is the finding.
pub fn check_answer(snapshot: &Snapshot, input: &[u8]) -> Option<Message> {
    let (&selector, query) = input.split_first()?;
    let client = SOURCES[usize::from(selector & 7)];
    let transport = match selector & TCP {
        0 => Transport::Udp,
        _ => Transport::Tcp,
    };
    let result = answer(snapshot, client, transport, query);
    // The fast path answers exactly what the full path does.
    assert_eq!(
        result,
        reference(snapshot, client, transport, query),
        "fast path differs: query {query:02x?} from {client}"
    );
    let reply = result.reply?;
    let message = Message::from_vec(&reply).unwrap_or_else(|e| {
        panic!("reply does not parse: {e}\nquery {query:02x?}\nreply {reply:02x?}")
    });
    let why = format!("query {query:02x?}\nreply {message:?}");

    // A reply exists only for a query whose header parsed.
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).expect("a query with a reply has a header");
    let (asked, got) = (&header.metadata, &message.metadata);
    assert_eq!(got.id, asked.id, "ID: {why}");
    assert_eq!(got.message_type, MessageType::Response, "{why}");
    assert_eq!(got.op_code, asked.op_code, "opcode: {why}");
    assert_eq!(got.recursion_desired, asked.recursion_desired, "RD: {why}");
    assert!(!got.recursion_available, "RA: {why}");
    assert_eq!(got.truncation, result.outcome.truncated, "TC: {why}");

    let question = match header.counts.queries {
        1 => Query::read(&mut decoder).ok(),
        _ => None,
    };
    match &question {
        Some(q) => {
            assert_eq!(message.queries.len(), 1, "question: {why}");
            let echoed = &message.queries[0];
            assert!(echoed.name.eq_case(&q.name), "question name: {why}");
            assert_eq!(echoed.name.is_fqdn(), q.name.is_fqdn(), "{why}");
            assert_eq!(echoed.query_type, q.query_type, "question type: {why}");
            assert_eq!(echoed.query_class, q.query_class, "question class: {why}");
        }
        None => assert!(message.queries.is_empty(), "no question to repeat: {why}"),
    }

    if transport == Transport::Udp {
        assert!(reply.len() <= usize::from(UDP_PAYLOAD), "UDP size: {why}");
        // A query that parses whole and has no OPT allows 512 bytes (RFC 1035 §4.2.1).
        if Message::from_vec(query).is_ok_and(|m| m.edns.is_none()) {
            assert!(reply.len() <= 512, "UDP size without EDNS: {why}");
        }
    }
    Some(message)
}

/// The space file's path in a `load` input; its zone and certificate files sit beside it.
pub const SPACE_FILE: &str = "fuzz/space.yaml";

/// The names under which a `load` input's second part is offered to the space file.
pub const OTHER_FILES: [&str; 4] = [
    "fuzz/corp.example.com.zone",
    "fuzz/corp.example.com.public.zone",
    "fuzz/cert.pem",
    "fuzz/key.pem",
];

/// Splits a `load` input at its first NUL into the space file and the other file's text.
pub fn split_load_input(input: &[u8]) -> (String, String) {
    let cut = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let yaml = String::from_utf8_lossy(&input[..cut]).into_owned();
    let other = String::from_utf8_lossy(input.get(cut + 1..).unwrap_or_default()).into_owned();
    (yaml, other)
}

/// Loads one `load` input and checks that every diagnostic has a place inside the file it
/// names (line and column from 1, the line no further than the file's end), and a message;
/// a config that loads is compiled too. Returns the diagnostics, none if it loaded.
///
/// # Panics
///
/// When a check fails: that is the finding.
pub fn check_load(input: &[u8]) -> Vec<Diagnostic> {
    let (yaml, other) = split_load_input(input);
    // The fast YAML reader reads nothing differently from serde_yaml; it may only give up.
    if let Some(fast) = spaceroute::config::yaml::from_str::<SpaceFile>(&yaml) {
        let full: Result<SpaceFile, _> = serde_yaml::from_str(&yaml);
        assert_eq!(
            Some(&fast),
            full.as_ref().ok(),
            "the fast YAML reader disagrees"
        );
    }
    let files = [(SPACE_FILE, yaml.as_str())];
    let others = OTHER_FILES.map(|path| (path, other.as_str()));
    match spaceroute::config::parse_texts(&files, &others) {
        Ok(config) => {
            snapshot::compile(&config, |_| 1);
            Vec::new()
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "an error without a diagnostic");
            for d in &diagnostics {
                assert!(d.line >= 1 && d.column >= 1, "no position: {d}");
                assert!(!d.message.trim().is_empty(), "no message: {d}");
                // The YAML parser places an error at the end of a file that lacks a final
                // newline on the line after the last one; zone file errors are on a record.
                let (text, slack) = if d.file == Path::new(SPACE_FILE) {
                    (Some(&yaml), 1)
                } else if OTHER_FILES.iter().any(|f| d.file == Path::new(f)) {
                    (Some(&other), 0)
                } else {
                    (None, 0)
                };
                if let Some(text) = text {
                    let lines = text.matches(['\n', '\r']).count() + 1;
                    assert!(
                        d.line <= lines + slack,
                        "past the end of {lines} lines: {d}"
                    );
                }
            }
            diagnostics
        }
    }
}

/// `head`: an input is an HTTP/1 request head as a client sends it. Parsed as hyper's parser
/// (httparse) does, it goes through the router's header rules; the request a dyno would get
/// must carry no hop-by-hop header (but an upgrade's own two), none of the client's claims
/// about earlier hops but X-Forwarded-For, exactly one X-Forwarded-For ending with the client,
/// and exactly one well-formed X-Request-Id. Returns whether the head parsed.
///
/// # Panics
///
/// When a check fails: that is the finding.
pub fn check_head(input: &[u8]) -> bool {
    use spaceroute::router::headers;
    use spaceroute::router::log::Record;
    use spaceroute::router::proxy::Downstream;

    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = head.parse(input) else {
        return false;
    };
    let (Some(method), Some(path)) = (head.method, head.path) else {
        return false;
    };
    let mut builder = http::Request::builder().method(method).uri(path);
    for field in head.headers.iter() {
        builder = builder.header(field.name, field.value);
    }
    let Ok(request) = builder.body(()) else {
        return false;
    };
    let host = headers::host_of(&request);
    if let Some(host) = &host {
        assert_eq!(host, &host.to_ascii_lowercase(), "host not lower-cased");
        assert!(!host.ends_with('.'), "trailing dot kept: {host}");
    }
    let _ = headers::check_framing(&request);
    let peer = IpAddr::V4(Ipv4Addr::new(127, 31, 0, 5));
    let client = request.headers();
    let record = Record {
        fwd: headers::forwarded_for(client, peer),
        request_id: headers::request_id(client),
        ..Record::default()
    };
    let downstream = Downstream {
        peer: (peer, 40000).into(),
        local_port: 8080,
        protocol: "http",
    };
    let upgrade = headers::is_upgrade(client);
    let out = headers::upstream_headers(client, request.uri(), &record, &downstream, upgrade);
    for gone in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
    ] {
        assert!(!out.contains_key(gone), "{gone} would reach the dyno");
    }
    match upgrade {
        true => {
            assert_eq!(
                out.get("upgrade").map(|v| v.as_bytes()),
                Some(&b"websocket"[..])
            );
            assert_eq!(
                out.get("connection").map(|v| v.as_bytes()),
                Some(&b"upgrade"[..])
            );
        }
        false => assert!(!out.contains_key("upgrade") && !out.contains_key("connection")),
    }
    let xff: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "X-Forwarded-For: {xff:?}");
    assert!(xff[0].as_bytes().ends_with(b"127.31.0.5"), "{:?}", xff[0]);
    let ids: Vec<_> = out.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "X-Request-Id: {ids:?}");
    assert!(
        (20..=200).contains(&ids[0].len())
            && (ids[0].as_bytes().iter())
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'-')),
        "{:?}",
        ids[0]
    );
    true
}
