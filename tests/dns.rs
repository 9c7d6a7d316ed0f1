//! DNS over real sockets: the server task on 127.0.0.1:0, clients on loopback sources.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode::{self, NXDomain, NoError, Refused};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use hickory_proto::rr::RecordType::{self, A, MX};
use spaceroute::dns::rrl::RateLimits;
use spaceroute::dns::server::Limits;
use spaceroute::dns::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

#[tokio::test]
async fn answers_space_and_refuses_public_over_udp_and_tcp() {
    let server = Server::start(&fixture_dir()).await;
    let m = udp(server.addr, SPACE, "internal-app.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    assert!(m.metadata.authoritative);
    let m = tcp(server.addr, HQ_VPN, "internal-app.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    let m = udp(server.addr, PUBLIC, "internal-app.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, Refused);
    let m = tcp(server.addr, PUBLIC, "internal-app.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, Refused);
    server.stop().await;
}

/// One row of who sees what: asker, qname, qtype, rcode, sorted answer data, and the owner of
/// the authority SOA when the answer is negative.
type Row = (
    &'static str,
    &'static str,
    RecordType,
    ResponseCode,
    &'static [&'static str],
    Option<&'static str>,
);

/// Asks every row over UDP and over TCP and checks rcode, data, SOA, flags and the question.
async fn assert_rows(server: &Server, rows: &[Row]) {
    for &(from, name, qtype, rcode, want, soa_owner) in rows {
        for transport in ["udp", "tcp"] {
            let m = match transport {
                "udp" => udp(server.addr, from, name, qtype).await,
                _ => tcp(server.addr, from, name, qtype).await,
            };
            let why = format!("{from} asking {name} {qtype} over {transport}: {m:?}");
            assert_eq!(m.metadata.response_code, rcode, "{why}");
            assert_eq!(data(&m), want, "{why}");
            let soa = authority_soa(&m).map(|s| s.0);
            assert_eq!(soa.as_deref(), soa_owner, "{why}");
            assert_eq!(m.metadata.authoritative, rcode != Refused, "{why}");
            assert!(m.metadata.recursion_desired, "RD is echoed: {why}");
            assert!(!m.metadata.recursion_available, "RA is never set: {why}");
            assert_eq!(m.queries.len(), 1, "{why}");
            assert_eq!(m.queries[0].name.to_ascii(), name, "{why}");
        }
    }
}

const APP: &str = "internal-app.herokuapp.com.";
const APP_APEX: Option<&str> = Some("herokuapp.com.");
const CORP: Option<&str> = Some("corp.example.com.");

/// DESIGN.md's who-sees-what table, row by row, for the two-spaces fixture.
#[rustfmt::skip]
const WHO_SEES_WHAT: &[Row] = &[
    // The space itself sees its internal apps, custom domains and service discovery.
    (SPACE, APP, A, NoError, &["127.16.0.10"], None),
    (SPACE, "api.corp.example.com.", A, NoError, &["127.16.0.10"], None),
    (SPACE, "web.internal-app.app.localspace.", A, NoError, &["127.16.1.21", "127.16.1.22"], None),
    (SPACE, "std-app.herokuapp.com.", A, NoError, &["127.16.0.10"], None),
    (SPACE, "no-such-app.herokuapp.com.", A, NXDomain, &[], APP_APEX),
    // prod-vpc is a peer, but internal-app's allow leaves it out: as if absent.
    (PROD_VPC, APP, A, NXDomain, &[], APP_APEX),
    (PROD_VPC, "api.corp.example.com.", A, NXDomain, &[], CORP),
    (PROD_VPC, "open-app.herokuapp.com.", A, NoError, &["127.16.0.10"], None),
    (PROD_VPC, "web.internal-app.app.localspace.", A, Refused, &[], None),
    // hq-vpn is allowed, and is also beta's shared-vpn: it sees both spaces.
    (HQ_VPN, APP, A, NoError, &["127.16.0.10"], None),
    (HQ_VPN, "x.tools.corp.example.com.", A, NoError, &["127.16.0.10"], None),
    (HQ_VPN, "beta-app.herokuapp.com.", A, NoError, &["127.17.0.10"], None),
    // The other space: nothing of alpha leaks, alpha sees nothing of beta.
    (BETA, APP, A, NXDomain, &[], APP_APEX),
    (BETA, "open-app.herokuapp.com.", A, NXDomain, &[], APP_APEX),
    (BETA, "beta-app.herokuapp.com.", A, NoError, &["127.17.0.10"], None),
    (BETA, "std-app.herokuapp.com.", A, NoError, &["127.100.0.10"], None),
    (SPACE, "beta-app.herokuapp.com.", A, NXDomain, &[], APP_APEX),
    // The public sees standard apps at router.public and nothing else.
    (PUBLIC, APP, A, Refused, &[], None),
    (PUBLIC, "open-app.herokuapp.com.", A, Refused, &[], None),
    (PUBLIC, "no-such-app.herokuapp.com.", A, Refused, &[], None),
    (PUBLIC, "std-app.herokuapp.com.", A, NoError, &["127.100.0.10"], None),
    (PUBLIC, "beta-std.herokuapp.com.", A, NoError, &["127.100.0.17"], None),
    (PUBLIC, "www.example.net.", A, NoError, &["127.100.0.10"], None),
    // Names under no zone we serve: we never recurse.
    (SPACE, "www.example.com.", A, Refused, &[], None),
    (SPACE, "com.", A, Refused, &[], None),
    (PUBLIC, "www.example.com.", A, Refused, &[], None),
];

#[tokio::test]
async fn who_sees_what_holds_from_every_network_over_udp_and_tcp() {
    let server = Server::start(&fixture_dir()).await;
    assert_rows(&server, WHO_SEES_WHAT).await;
    server.stop().await;
}

#[tokio::test]
async fn another_space_gets_its_own_soa_and_no_trace_of_alpha() {
    let server = Server::start(&fixture_dir()).await;
    for name in ["internal-app.herokuapp.com.", "open-app.herokuapp.com."] {
        let bytes = query(name, A, None);
        let wait = Duration::from_secs(3);
        let udp_reply = udp_raw(server.addr, BETA, &bytes, wait).await.unwrap();
        let mut stream = tcp_connect(server.addr, BETA).await;
        tcp_send(&mut stream, &bytes).await;
        let tcp_reply = tcp_recv(&mut stream, wait).await.unwrap();
        for m in [Message::from_vec(&udp_reply).unwrap(), tcp_reply] {
            assert_eq!(m.metadata.id, id_of(&bytes));
            assert_eq!(m.metadata.response_code, NXDomain, "{m:?}");
            assert!(m.answers.is_empty() && m.additionals.is_empty(), "{m:?}");
            assert_eq!(m.authorities.len(), 1, "{m:?}");
            let soa = authority_soa(&m).expect("a SOA");
            assert_eq!(soa.1, "ns1.beta.spaceroute.internal.", "beta's own SOA");
        }
        // Neither alpha's name server nor its router address is anywhere in the bytes.
        let leaks = |b: &[u8], what: &[u8]| b.windows(what.len()).any(|w| w == what);
        assert!(!leaks(&udp_reply, b"alpha"));
        assert!(!leaks(&udp_reply, &[127, 16, 0, 10]));
    }
    server.stop().await;
}

#[tokio::test]
async fn ipv6_loopback_is_public_to_a_server_on_ipv6() {
    let server = Server::start_at(
        &fixture_dir(),
        "[::1]:0".parse().unwrap(),
        Limits::default(),
    )
    .await;
    assert!(server.addr.is_ipv6());
    let addr = server.addr;
    for transport in ["udp", "tcp"] {
        let ask = move |name: &'static str, qtype| async move {
            match transport {
                "udp" => udp(addr, "::1", name, qtype).await,
                _ => tcp(addr, "::1", name, qtype).await,
            }
        };
        let m = ask("internal-app.herokuapp.com.", A).await;
        assert_eq!(m.metadata.response_code, Refused, "{transport}");
        assert!(m.answers.is_empty());
        let m = ask("std-app.herokuapp.com.", A).await;
        assert_eq!(m.metadata.response_code, NoError, "{transport}");
        assert_eq!(data(&m), ["127.100.0.10"], "{transport}");
        // router.public has no IPv6 address: NODATA, not an internal one.
        let m = ask("std-app.herokuapp.com.", RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, NoError, "{transport}");
        assert!(m.answers.is_empty(), "{transport}: {m:?}");
        assert!(authority_soa(&m).is_some(), "{transport}: {m:?}");
    }
    server.stop().await;
}

/// Zone-file data: split horizon, wildcards, NODATA and NXDOMAIN with the zone's SOA.
#[rustfmt::skip]
const ZONE_DATA: &[Row] = &[
    (SPACE, "www.corp.example.com.", A, NoError, &["127.16.5.5"], None),
    (HQ_VPN, "www.corp.example.com.", A, NoError, &["127.16.5.5"], None),
    (PUBLIC, "www.corp.example.com.", A, NoError, &["127.100.0.80"], None),
    (BETA, "www.corp.example.com.", A, NoError, &["127.100.0.80"], None),
    (SPACE, "mail.corp.example.com.", A, NoError, &["127.16.0.25"], None),
    (PUBLIC, "mail.corp.example.com.", A, NXDomain, &[], CORP),
    (SPACE, "nope.corp.example.com.", A, NXDomain, &[], CORP),
    (SPACE, "www.corp.example.com.", MX, NoError, &[], CORP),
    (SPACE, "Foo.Dev.corp.example.com.", A, NoError, &["127.16.5.6"], None),
];

#[tokio::test]
async fn zone_files_answer_by_horizon_chase_cnames_and_deny_with_soa() {
    let server = Server::start(&fixture_dir()).await;
    assert_rows(&server, ZONE_DATA).await;

    // A CNAME chain is chased inside our data, in order.
    for transport in ["udp", "tcp"] {
        let m = match transport {
            "udp" => udp(server.addr, SPACE, "chain.corp.example.com.", A).await,
            _ => tcp(server.addr, SPACE, "chain.corp.example.com.", A).await,
        };
        let chain: Vec<(String, String)> = (m.answers.iter())
            .map(|r| (r.name.to_ascii(), r.data.to_string()))
            .collect();
        let want = [
            ("chain.corp.example.com.", "alias.corp.example.com."),
            ("alias.corp.example.com.", "www.corp.example.com."),
            ("www.corp.example.com.", "127.16.5.5"),
        ];
        let want: Vec<(String, String)> = (want.iter())
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(chain, want, "{transport}");
        assert!(m.metadata.authoritative);
    }
    // Into an app name, with the asker's rights.
    let m = udp(server.addr, HQ_VPN, "to-app.corp.example.com.", A).await;
    assert_eq!(data(&m), ["127.16.0.10", "internal-app.herokuapp.com."]);

    // Negative answers carry the SOA with the negative TTL of the file that answered.
    let m = udp(server.addr, SPACE, "nope.corp.example.com.", A).await;
    let soa = authority_soa(&m).unwrap();
    assert_eq!((soa.1.as_str(), soa.2), ("ns1.corp.example.com.", 120));
    let m = tcp(server.addr, PUBLIC, "nope.corp.example.com.", A).await;
    assert_eq!(m.metadata.response_code, NXDomain);
    assert_eq!(
        authority_soa(&m).unwrap().2,
        60,
        "the public file's minimum"
    );
    server.stop().await;
}

#[tokio::test]
async fn big_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let server = Server::start(&fixture_dir()).await;
    let name = "big.corp.example.com.";
    let wait = Duration::from_secs(3);

    let q = query(name, RecordType::TXT, None);
    let reply = udp_raw(server.addr, SPACE, &q, wait)
        .await
        .expect("a reply");
    assert!(reply.len() <= 512, "{} bytes without EDNS", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, id_of(&q));
    assert!(m.metadata.truncation, "TC: {m:?}");
    assert!(m.answers.is_empty());
    assert_eq!(m.queries[0].name.to_ascii(), name);

    // 40 records of ~60 bytes do not fit our 1232 either.
    let q = query(name, RecordType::TXT, Some(4096));
    let reply = udp_raw(server.addr, SPACE, &q, wait)
        .await
        .expect("a reply");
    assert!(reply.len() <= 1232, "{} bytes with EDNS", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.metadata.truncation);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));

    let m = tcp(server.addr, SPACE, name, RecordType::TXT).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.metadata.response_code, NoError);
    assert_eq!(m.answers.len(), 40);
    for (i, text) in data(&m).iter().enumerate() {
        assert!(text.starts_with(&format!("record {i:02} ")), "{text}");
    }

    // Small answers are not truncated.
    let q = query("www.corp.example.com.", A, None);
    let reply = udp_raw(server.addr, SPACE, &q, wait).await.unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(data(&m), ["127.16.5.5"]);
    server.stop().await;
}

#[tokio::test]
async fn tcp_answers_pipelined_queries_in_order() {
    let server = Server::start(&fixture_dir()).await;
    let asks = [
        ("internal-app.herokuapp.com.", A),
        ("big.corp.example.com.", RecordType::TXT),
        ("nope.corp.example.com.", A),
        ("www.corp.example.com.", A),
        ("std-app.herokuapp.com.", RecordType::AAAA),
    ];
    let queries: Vec<Vec<u8>> = (asks.iter()).map(|(n, t)| query(n, *t, None)).collect();
    let mut stream = tcp_connect(server.addr, SPACE).await;
    // Every query before reading any reply, in one write; the last one split across writes.
    let mut framed = Vec::new();
    for q in &queries[..4] {
        framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
        framed.extend_from_slice(q);
    }
    let last = &queries[4];
    framed.extend_from_slice(&(last.len() as u16).to_be_bytes());
    framed.extend_from_slice(&last[..5]);
    stream.write_all(&framed).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(&last[5..]).await.unwrap();

    let mut replies = Vec::new();
    for _ in &queries {
        let m = tcp_recv(&mut stream, Duration::from_secs(3)).await;
        replies.push(m.expect("one reply per query"));
    }
    let ids: Vec<u16> = replies.iter().map(|m| m.metadata.id).collect();
    let want: Vec<u16> = queries.iter().map(|q| id_of(q)).collect();
    assert_eq!(ids, want, "replies come in query order");
    assert_eq!(data(&replies[0]), ["127.16.0.10"]);
    assert_eq!(replies[1].answers.len(), 40);
    assert_eq!(replies[2].metadata.response_code, NXDomain);
    assert_eq!(data(&replies[3]), ["127.16.5.5"]);
    assert_eq!(data(&replies[4]), ["fd16::10"]);
    for (m, (name, _)) in replies.iter().zip(asks) {
        assert_eq!(m.queries[0].name.to_ascii(), name);
    }
    server.stop().await;
}

#[tokio::test]
async fn tcp_idle_connections_close_and_busy_ones_stay_open() {
    let limits = Limits {
        tcp_idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start_with(&fixture_dir(), limits).await;

    let idle = async {
        let mut stream = tcp_connect(server.addr, SPACE).await;
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "EOF within the deadline: {read:?}"
        );
        start.elapsed()
    };
    // A query cut short in the middle is closed after the idle time too.
    let half = async {
        let mut stream = tcp_connect(server.addr, SPACE).await;
        let q = query("www.corp.example.com.", A, None);
        stream
            .write_all(&(q.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&q[..7]).await.unwrap();
        tcp_closed_without_reply(&mut stream, Duration::from_secs(3)).await
    };
    let busy = async {
        let mut stream = tcp_connect(server.addr, HQ_VPN).await;
        let start = Instant::now();
        // Pacing, not waiting: one query every 100 ms, each gap well inside the idle time.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut answered = 0;
        while start.elapsed() < Duration::from_millis(900) {
            tick.tick().await;
            let q = query("internal-app.herokuapp.com.", A, None);
            tcp_send(&mut stream, &q).await;
            let m = tcp_recv(&mut stream, Duration::from_secs(3)).await;
            let m = m.expect("the busy connection stays open");
            assert_eq!(
                (m.metadata.id, data(&m)),
                (id_of(&q), vec!["127.16.0.10".into()])
            );
            answered += 1;
        }
        (start.elapsed(), answered)
    };
    let (idle_for, half_closed, (busy_for, answered)) = tokio::join!(idle, half, busy);
    assert!(
        idle_for >= Duration::from_millis(250),
        "closed after {idle_for:?}"
    );
    assert!(half_closed, "a half-sent query is closed");
    assert!(
        busy_for >= Duration::from_millis(900) && answered >= 8,
        "{answered} answers"
    );
    server.stop().await;
}

/// Asks for www.corp.example.com on an open connection and checks the answer.
async fn ask(stream: &mut tokio::net::TcpStream) {
    let q = query("www.corp.example.com.", A, None);
    tcp_send(stream, &q).await;
    let m = tcp_recv(stream, Duration::from_secs(3))
        .await
        .expect("a reply");
    assert_eq!(
        (m.metadata.id, data(&m)),
        (id_of(&q), vec!["127.16.5.5".into()])
    );
}

#[tokio::test]
async fn tcp_connections_past_the_cap_are_closed_until_one_frees() {
    let limits = Limits {
        tcp_max_connections: 2,
        ..Limits::default()
    };
    let server = Server::start_with(&fixture_dir(), limits).await;
    let mut first = tcp_connect(server.addr, SPACE).await;
    ask(&mut first).await;
    let mut second = tcp_connect(server.addr, SPACE).await;
    ask(&mut second).await;

    let mut third = tcp_connect(server.addr, SPACE).await;
    let q = query("www.corp.example.com.", A, None);
    let _ = third.write_all(&(q.len() as u16).to_be_bytes()).await;
    let _ = third.write_all(&q).await;
    assert!(
        tcp_closed_without_reply(&mut third, Duration::from_secs(3)).await,
        "the third connection is closed without an answer"
    );
    ask(&mut first).await;
    ask(&mut second).await;

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut stream = tcp_connect(server.addr, SPACE).await;
        let q = query("www.corp.example.com.", A, None);
        let _ = stream.write_all(&(q.len() as u16).to_be_bytes()).await;
        let _ = stream.write_all(&q).await;
        if let Some(m) = tcp_recv(&mut stream, Duration::from_millis(200)).await {
            assert_eq!(
                (m.metadata.id, data(&m)),
                (id_of(&q), vec!["127.16.5.5".into()])
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
    }
    ask(&mut second).await;
    server.stop().await;
}

/// Issue 10: twenty idle connections from one public address held all twenty places before,
/// and a space's resolver got "no servers could be reached". Now the public holds at most half
/// (and one address at most its share), the space's resolvers the rest, and when every place is
/// taken, the connection idle longest makes room for a newcomer.
#[tokio::test]
async fn issue_10_a_public_flood_of_idle_tcp_connections_leaves_trusted_resolvers_their_share() {
    let limits = Limits {
        tcp_max_connections: 20,
        ..Limits::default()
    };
    let server = Server::start_with(&fixture_dir(), limits).await;
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(tcp_connect(server.addr, PUBLIC).await);
    }
    let mut kept = Vec::new();
    for mut stream in flood {
        if !tcp_closed_without_reply(&mut stream, Duration::from_millis(100)).await {
            kept.push(stream);
        }
    }
    assert_eq!(kept.len(), 10, "the public's half of the places");

    // The space's resolvers get every answer, on connections they keep (ten of them).
    let mut resolvers = Vec::new();
    for _ in 0..10 {
        let mut stream = tcp_connect(server.addr, SPACE).await;
        ask(&mut stream).await;
        resolvers.push(stream);
    }
    // Every place is taken now; the next resolver gets the place of the connection idle
    // longest, one of the public ones, idle since it opened.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for stream in &mut resolvers {
        ask(stream).await;
    }
    let mut newcomer = tcp_connect(server.addr, SPACE).await;
    ask(&mut newcomer).await;
    let mut closed = 0;
    for stream in &mut kept {
        if tcp_closed_without_reply(stream, Duration::from_millis(100)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one idle public connection made room");
    for stream in &mut resolvers {
        ask(stream).await;
    }
    server.stop().await;
}

/// A query for `name`/A with EDNS and, when given, a COOKIE option of `cookie`.
fn cookie_query(name: &str, cookie: Option<&[u8]>) -> Vec<u8> {
    use hickory_proto::rr::rdata::opt::EdnsOption;
    let mut m = Message::from_vec(&query(name, A, Some(1232))).unwrap();
    if let (Some(cookie), Some(edns)) = (cookie, m.edns.as_mut()) {
        edns.options_mut()
            .insert(EdnsOption::Unknown(10, cookie.to_vec()));
    }
    m.to_vec().unwrap()
}

/// The COOKIE option of a reply.
fn cookie_of(m: &Message) -> Option<Vec<u8>> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    match m.edns.as_ref()?.options().get(EdnsCode::Cookie)? {
        EdnsOption::Unknown(_, data) => Some(data.clone()),
        _ => None,
    }
}

/// Sends `count` copies of `query` (fresh IDs) over UDP from `from` at once and sorts the
/// replies that come within a second: (full answers, truncated stand-ins).
async fn flood(to: std::net::SocketAddr, from: &str, query: &[u8], count: u16) -> (usize, usize) {
    let socket = udp_client(from).await;
    let (mut full, mut slipped) = (0, 0);
    let mut buf = vec![0u8; 4096];
    let mut sort =
        |n: usize, buf: &[u8]| match Message::from_vec(&buf[..n]).unwrap().metadata.truncation {
            true => slipped += 1,
            false => full += 1,
        };
    // In bursts of 50, taking what came back in between, so that no reply is lost to the
    // client's receive buffer.
    for id in 0..count {
        let mut q = query.to_vec();
        q[..2].copy_from_slice(&id.to_be_bytes());
        socket.send_to(&q, to).await.unwrap();
        if id % 50 == 49 {
            while let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(5), socket.recv_from(&mut buf)).await
            {
                sort(n, &buf);
            }
        }
    }
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(1000), socket.recv_from(&mut buf)).await
    {
        sort(n, &buf);
    }
    (full, slipped)
}

/// Issue 10: a spoofed public flood got every reply (19x amplification from a public TXT).
/// Now a public source gets its rate and every other reply past it truncated (so that a real
/// resolver retries over TCP), while a trusted source flooding in the same run gets every
/// answer; a server cookie proves the source, which then gets every answer too.
#[tokio::test]
async fn issue_10_a_public_udp_flood_is_rate_limited_a_trusted_one_and_cookies_are_not() {
    let server = Server::start(&fixture_dir()).await;
    let public = query("std-app.herokuapp.com.", A, Some(1232));
    let trusted = query("internal-app.herokuapp.com.", A, Some(1232));
    let started = Instant::now();
    let ((full, slipped), (trusted_full, trusted_slipped)) = tokio::join!(
        flood(server.addr, PUBLIC, &public, 400),
        flood(server.addr, SPACE, &trusted, 400),
    );
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!((trusted_full, trusted_slipped), (400, 0));
    // 20 a second, a second's worth at first.
    let allowed = 20 + (20.0 * seconds).ceil() as usize;
    assert!(
        (20..=allowed).contains(&full),
        "{full} full answers in {seconds:.1} s"
    );
    let limited = 400 - full;
    assert!(
        slipped.abs_diff(limited / 2) <= 1,
        "{slipped} of {limited} limited replies slipped"
    );
    // Over TCP the same source gets its answer.
    let m = tcp(server.addr, PUBLIC, "std-app.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.100.0.10"]);

    // A client cookie gets our cookie back; with it, the flood is answered in full.
    let client_cookie = [0x5a; 8];
    let bytes = udp_raw(
        server.addr,
        "127.201.0.1",
        &cookie_query("std-app.herokuapp.com.", Some(&client_cookie)),
        Duration::from_secs(3),
    )
    .await
    .expect("a reply");
    let cookie = cookie_of(&Message::from_vec(&bytes).unwrap()).expect("our cookie");
    assert_eq!(
        (&cookie[..8], cookie.len(), cookie[8]),
        (&client_cookie[..], 24, 1)
    );
    let with_cookie = cookie_query("std-app.herokuapp.com.", Some(&cookie));
    assert_eq!(
        flood(server.addr, "127.201.0.1", &with_cookie, 200).await,
        (200, 0)
    );
    // The same cookie from another address proves nothing.
    let (full, _) = flood(server.addr, "127.202.0.1", &with_cookie, 200).await;
    assert!(full < 100, "{full}");
    // A COOKIE option of a length no cookie has is FORMERR.
    let bytes = udp_raw(
        server.addr,
        "127.203.0.1",
        &cookie_query("std-app.herokuapp.com.", Some(&[1, 2, 3])),
        Duration::from_secs(3),
    )
    .await
    .expect("a reply");
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    server.stop().await;
}

/// xorshift64: a seeded PRNG, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Real queries that the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        query("internal-app.herokuapp.com.", A, Some(1232)),
        query("www.corp.example.com.", A, None),
        query("big.corp.example.com.", RecordType::TXT, Some(4096)),
        query("chain.corp.example.com.", RecordType::ANY, None),
        query("herokuapp.com.", RecordType::SOA, Some(512)),
        query("2.web.internal-app.app.localspace.", A, None),
        query("x.tools.corp.example.com.", RecordType::AAAA, Some(1232)),
        query("host.lab.corp.example.com.", RecordType::NS, None),
    ]
}

/// A real query, mutated one or more times.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    loop {
        match rng.below(10) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len().max(1));
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 + rng.below(255) as u8;
                    }
                }
            }
            1 => b.truncate(rng.below(b.len() + 1)),
            2 if b.len() > 2 => b[2] |= 0x80,
            3 if b.len() >= 12 => {
                let i = 4 + 2 * rng.below(4);
                let count: u16 = [0, 2, 3, 0xffff, rng.next() as u16][rng.below(5)];
                b[i..i + 2].copy_from_slice(&count.to_be_bytes());
            }
            4 => {
                let n = 1 + rng.below(64);
                b.extend(rng.bytes(n));
            }
            5 => {
                let n = (4000 + rng.below(1200)).saturating_sub(b.len());
                b.extend(rng.bytes(n));
            }
            6 => {
                let n = rng.below(600);
                b = rng.bytes(n);
            }
            7 if b.len() >= 4 => {
                b[2] = rng.next() as u8 & 0x7f;
                b[3] = rng.next() as u8;
            }
            // A compression pointer where the question's name starts, pointing at itself.
            8 if b.len() >= 14 => b[12..14].copy_from_slice(&[0xc0, 0x0c]),
            _ => {
                let i = rng.below(b.len().max(1));
                b.insert(i.min(b.len()), rng.next() as u8);
            }
        }
        if rng.below(3) != 0 {
            return b;
        }
    }
}

/// What was sent under each ID: whether the design promises a reply (a header's worth of
/// bytes with QR=0), and the packet, to print on failure.
type Sent = HashMap<u16, (bool, Vec<u8>)>;

/// Stamps `id` on `packet` (where it is long enough) and records it.
fn stamp(sent: &mut Sent, id: u16, mut packet: Vec<u8>) -> Vec<u8> {
    if packet.len() >= 2 {
        packet[..2].copy_from_slice(&id.to_be_bytes());
        let answerable = packet.len() >= 12 && packet[2] & 0x80 == 0;
        sent.insert(id, (answerable, packet.clone()));
    }
    packet
}

/// Checks one reply against what was sent, and records that it came.
fn check_reply(sent: &Sent, replied: &mut HashMap<u16, usize>, reply: &[u8], limit: usize) {
    let m = Message::from_vec(reply)
        .unwrap_or_else(|e| panic!("reply does not parse ({e}): {reply:02x?}"));
    let id = m.metadata.id;
    let (answerable, packet) = sent
        .get(&id)
        .unwrap_or_else(|| panic!("reply with an ID never sent: {m:?}"));
    assert!(
        *answerable,
        "a reply to a response or a runt {packet:02x?}: {m:?}"
    );
    assert_eq!(m.metadata.message_type, MessageType::Response, "{m:?}");
    assert!(reply.len() <= limit, "{} byte reply", reply.len());
    *replied.entry(id).or_default() += 1;
    assert_eq!(replied[&id], 1, "two replies to {packet:02x?}");
}

/// Every packet the design promises a reply to got exactly one.
fn assert_all_answered(who: &str, sent: &Sent, replied: &HashMap<u16, usize>) {
    let missing: Vec<&Vec<u8>> = (sent.iter())
        .filter(|(id, (answerable, _))| *answerable && !replied.contains_key(id))
        .map(|(_, (_, packet))| packet)
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: {} packets got no reply, e.g. {:02x?}",
        missing.len(),
        missing.first()
    );
    assert!(
        replied.len() > sent.len() / 4,
        "{who}: too few replies to be a test"
    );
}

/// Sends `count` mutated packets over UDP from `from` in batches, draining replies after each.
async fn storm_udp(server: &Server, from: &str, rng: &mut Rng, next_id: &mut u16, count: usize) {
    let socket: UdpSocket = udp_client(from).await;
    let seeds = seeds();
    let (mut sent, mut replied) = (Sent::new(), HashMap::new());
    let mut buf = vec![0u8; 65_535];
    for _ in 0..count / 50 {
        for _ in 0..50 {
            *next_id += 1;
            let packet = stamp(&mut sent, *next_id, mutate(rng, &seeds));
            socket.send_to(&packet, server.addr).await.unwrap();
        }
        // Drain until every promised reply is in, then a short quiet spell for stray ones.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let promised = sent.values().filter(|(a, _)| *a).count();
            let wait = if replied.len() >= promised {
                Duration::from_millis(5)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => check_reply(&sent, &mut replied, &buf[..n], 1232),
                _ => break,
            }
        }
    }
    assert_all_answered(from, &sent, &replied);
}

/// Sends `count` mutated frames pipelined on one TCP connection from `from`, then a real query,
/// reading replies alongside.
async fn storm_tcp(server: &Server, from: &str, rng: &mut Rng, next_id: &mut u16, count: usize) {
    let stream = tcp_connect(server.addr, from).await;
    let (mut reader, mut writer) = stream.into_split();
    let seeds = seeds();
    let mut sent = Sent::new();
    let (mut frames, mut frames_ids) = (Vec::new(), Vec::new());
    for _ in 0..count {
        *next_id += 1;
        frames_ids.push(*next_id);
        let packet = stamp(&mut sent, *next_id, mutate(rng, &seeds));
        frames.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        frames.extend_from_slice(&packet);
    }
    *next_id += 1;
    let control = stamp(&mut sent, *next_id, query("www.corp.example.com.", A, None));
    frames.extend_from_slice(&(control.len() as u16).to_be_bytes());
    frames.extend_from_slice(&control);
    let control_id = *next_id;
    frames_ids.push(control_id);

    let read = async {
        let mut replies = Vec::new();
        loop {
            let len = reader.read_u16().await.expect("replies until the control");
            let mut reply = vec![0u8; usize::from(len)];
            reader.read_exact(&mut reply).await.unwrap();
            let done = id_of(&reply) == control_id;
            replies.push(reply);
            if done {
                return replies;
            }
        }
    };
    let write = async { writer.write_all(&frames).await.unwrap() };
    let (replies, ()) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(read, write) })
            .await
            .expect("the control query is answered");
    let mut replied = HashMap::new();
    for reply in &replies {
        check_reply(&sent, &mut replied, reply, usize::from(u16::MAX));
    }
    // One connection answers in order: the replies' IDs are the answerable frames' IDs.
    let order: Vec<u16> = (frames_ids.iter())
        .filter(|id| sent.get(id).is_some_and(|(answerable, _)| *answerable))
        .copied()
        .collect();
    let got: Vec<u16> = replies.iter().map(|r| id_of(r)).collect();
    assert_eq!(got, order, "{from}: replies in frame order");
    let control = Message::from_vec(replies.last().unwrap()).unwrap();
    let www = if from == PUBLIC {
        "127.100.0.80"
    } else {
        "127.16.5.5"
    };
    assert_eq!(data(&control), [www], "{from}: the control query");
    assert_all_answered(from, &sent, &replied);
}

#[tokio::test]
async fn survives_random_and_mutated_packets_and_answers_only_queries() {
    // Every answerable packet gets its reply: no rate limits in this storm.
    let limits = Limits {
        rate: RateLimits {
            public: 0,
            trusted: 0,
            slip: 0,
        },
        ..Limits::default()
    };
    let server = Server::start_with(&fixture_dir(), limits).await;
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut next_id = 0u16;
    for from in [SPACE, PUBLIC] {
        storm_udp(&server, from, &mut rng, &mut next_id, 1500).await;
        storm_tcp(&server, from, &mut rng, &mut next_id, 300).await;
    }

    // Broken framing: a length larger than the data, half a length, a zero length.
    let wait = Duration::from_secs(3);
    let mut stream = tcp_connect(server.addr, SPACE).await;
    stream
        .write_all(&[0x01, 0x00, 0xab, 0xcd, 0x01])
        .await
        .unwrap();
    drop(stream);
    let mut stream = tcp_connect(server.addr, PUBLIC).await;
    stream.write_all(&[0x00]).await.unwrap();
    drop(stream);
    let mut stream = tcp_connect(server.addr, SPACE).await;
    stream.write_all(&[0x00, 0x00]).await.unwrap();
    let q = query("internal-app.herokuapp.com.", A, None);
    tcp_send(&mut stream, &q).await;
    let m = tcp_recv(&mut stream, wait)
        .await
        .expect("a zero-length frame is skipped");
    assert_eq!(
        (m.metadata.id, data(&m)),
        (id_of(&q), vec!["127.16.0.10".into()])
    );

    // Still serving, and serving right.
    let m = udp(server.addr, SPACE, "internal-app.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    let m = tcp(server.addr, PUBLIC, "std-app.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.100.0.10"]);
    let m = udp(server.addr, PUBLIC, "internal-app.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, Refused);
    server.stop().await;
}

#[tokio::test]
async fn edns_is_echoed_and_the_question_kept_as_sent_over_udp() {
    let server = Server::start(&fixture_dir()).await;
    let m = udp(server.addr, SPACE, "InTeRnAl-App.HerokuApp.COM.", A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    assert_eq!(m.queries[0].name.to_ascii(), "InTeRnAl-App.HerokuApp.COM.");
    assert_eq!(m.answers[0].name.to_ascii(), "InTeRnAl-App.HerokuApp.COM.");
    let edns = m.edns.expect("OPT echoed");
    assert_eq!((edns.max_payload(), edns.version()), (1232, 0));
    let m = tcp(server.addr, SPACE, "herokuapp.com.", RecordType::SOA).await;
    assert!(m.edns.is_none(), "no OPT without one in the query");
    let Some(RData::SOA(soa)) = m.answers.first().map(|r| &r.data) else {
        panic!("{m:?}")
    };
    // Every zone of the test server has serial 1: alpha's own plus beta's public one.
    assert_eq!(
        (soa.mname.to_ascii().as_str(), soa.serial),
        ("ns1.alpha.internal.", 1 + 1)
    );
    server.stop().await;
}

/// A directory holding one space file.
fn space_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("space.yaml"), yaml).unwrap();
    dir
}

/// Issue 7: unlisted names under a `forward` app domain are relayed to its upstream, here a
/// second spaceroute that stands in for the domain's public servers.
#[tokio::test]
async fn issue_7_unlisted_names_are_relayed_to_the_upstream_with_the_askers_id() {
    // The upstream trusts the relay's source (127.0.0.1) and answers a "public" app with 60
    // addresses, more than fit in 512 bytes.
    let many: Vec<String> = (1..=60).map(|i| format!("127.100.1.{i}")).collect();
    let upstream = space_dir(&format!(
        "space: public-heroku\nnetwork: 127.0.0.0/24\nrouter: {{private: [{}]}}\napps:\n  - name: big-app\n",
        many.join(", ")
    ));
    let upstream = Server::start(upstream.path()).await;
    let big: Vec<std::net::IpAddr> = many.iter().map(|ip| ip.parse().unwrap()).collect();
    let relay = space_dir(&format!(
        "space: s\nnetwork: 127.16.0.0/16\npeers:\n  - {{name: loop, cidrs: [127.0.0.1/32]}}\nrouter: {{private: [127.16.0.10]}}\nunlisted:\n  policy: forward\n  upstreams: [\"{}\"]\napps:\n  - name: mine\n",
        upstream.addr
    ));
    let relay = Server::start(relay.path()).await;

    // The upstream's answer, with the asker's ID and question as sent.
    let q = query("BIG-app.herokuapp.com.", A, Some(4096));
    let reply = udp_raw(relay.addr, SPACE, &q, Duration::from_secs(3))
        .await
        .unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, id_of(&q));
    assert_eq!(m.queries[0].name.to_ascii(), "BIG-app.herokuapp.com.");
    let mut got: Vec<std::net::IpAddr> =
        m.answers.iter().filter_map(|r| r.data.ip_addr()).collect();
    got.sort();
    let mut want = big.clone();
    want.sort();
    assert_eq!(got, want, "the upstream's answer");
    // Without EDNS it does not fit 512 bytes: TC, and the asker retries over TCP.
    let q = query("big-app.herokuapp.com.", A, None);
    let reply = udp_raw(relay.addr, SPACE, &q, Duration::from_secs(3))
        .await
        .unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert!(reply.len() <= 512 && m.metadata.truncation && m.answers.is_empty());
    assert_eq!(m.metadata.id, id_of(&q));
    // Over TCP without EDNS: the relay's UDP query gets TC from the upstream, so the relay
    // asks again over TCP.
    let m = tcp(relay.addr, SPACE, "big-app.herokuapp.com.", A).await;
    assert_eq!(m.answers.len(), 60);
    // The upstream's NXDOMAIN comes back as it is; our own names are still ours.
    let m = udp(relay.addr, SPACE, "nobody.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, NXDomain);
    assert_eq!(
        authority_soa(&m).unwrap().1,
        "ns1.public-heroku.spaceroute.internal."
    );
    let m = udp(relay.addr, SPACE, "mine.herokuapp.com.", A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    // Issue 10: cookies are per hop. The asker's does not go to the upstream, the upstream's
    // does not come back: the reply carries one COOKIE, ours, for the asker's client cookie.
    let q = cookie_query("big-app.herokuapp.com.", Some(&[0x5a; 8]));
    let reply = udp_raw(relay.addr, SPACE, &q, Duration::from_secs(3))
        .await
        .unwrap();
    let opt = wire::find_opt(&reply).expect("an OPT");
    let cookies: Vec<&[u8]> = (opt.options(&reply))
        .filter(|&(code, _)| code == wire::OPTION_COOKIE)
        .map(|(_, data)| data)
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0][..8], [0x5a; 8]);
    // Never for the public, and a query from the upstream's own address is a loop.
    let m = udp(relay.addr, PUBLIC, "big-app.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, Refused);
    let m = udp(relay.addr, "127.0.0.1", "big-app.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    relay.stop().await;
    upstream.stop().await;
}

/// Issue 7: an upstream that never answers costs a bounded wait and a SERVFAIL.
#[tokio::test]
async fn issue_7_a_silent_upstream_gets_servfail_in_bounded_time() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = space_dir(&format!(
        "space: s\nnetwork: 127.16.0.0/16\nrouter: {{private: [127.16.0.10]}}\nunlisted:\n  policy: forward\n  upstreams: [\"{}\"]\n",
        silent.local_addr().unwrap()
    ));
    let limits = Limits {
        forward_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let relay = Server::start_with(relay.path(), limits).await;
    let started = Instant::now();
    let m = udp(relay.addr, SPACE, "elsewhere.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The UDP loop kept serving while the relay waited.
    let m = tcp(relay.addr, SPACE, "elsewhere.herokuapp.com.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let mut buf = [0u8; 512];
    let (_, from) = silent.recv_from(&mut buf).await.unwrap();
    assert!(from.ip().is_loopback());
    relay.stop().await;
}
