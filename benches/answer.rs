//! The answer function alone: nanoseconds per query of `spaceroute::dns::answer::answer` (the
//! fast path, falling back to the full resolver) and of `answer::reference` (always the full
//! resolver, hickory's parser and encoder), on a snapshot of 10,000 apps.
//!
//! The snapshot is the space `benches/scale.rs` serves (network 127.16.0.0/16, a peer
//! 127.32.0.0/16, apps `app-0000000` .. with every 10th standard), built in memory with
//! `config::parse_texts` and compiled with `snapshot::compile(&config, |_| 1)`. Three queries,
//! each over 1024 different names in turn, A with EDNS 1232 as resolvers send, over UDP:
//! `hit` (an app's A from a trusted resolver, 127.16.0.5), `nxdomain` (an unknown name under
//! the app domain, trusted), `refused` (an internal app's A from a public source,
//! 127.200.0.1). No sockets: this is the CPU a worker spends between `recvmmsg` and
//! `sendmmsg`, to set beside the user µs per query that `benches/scale.rs` reads from `/proc`.
//!
//! Run: `cargo bench --bench answer` (criterion, 2 s per benchmark, 20 samples). Under `cargo
//! test` criterion runs each benchmark once, on 1,000 apps, as a check that it works.
//!
//! Last result (2026-11-29, the 2-core workplace VM, quiet, release build; criterion's median
//! time per call; the full run in `benches/RESULTS.md`):
//!
//! ```text
//! answer/hit              107.22 ns
//! answer/nxdomain         631.99 ns
//! answer/refused          125.00 ns
//! reference/hit             1.1749 µs
//! reference/nxdomain        2.6134 µs
//! reference/refused         1.8360 µs
//! ```
//!
//! The fast path answers a hit and a refusal in about a tenth of the full path's time;
//! NXDOMAIN (with the negative SOA, built through `Snapshot::soa` and compressed name by name)
//! about six times a hit: pre-encoding each view's SOA would close that.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use spaceroute::dns::answer::{self, Answer, Transport};
use spaceroute::snapshot::Snapshot;

const TRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 16, 0, 5));
const PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 200, 0, 1));
/// Different names per benchmark, cycled through.
const NAMES: usize = 1024;

fn space_yaml(apps: usize) -> String {
    let mut yaml = String::from(
        "space: bench\n\
         domain: herokuapp.com\n\
         network: 127.16.0.0/16\n\
         peers:\n  - {name: peer, cidrs: [127.32.0.0/16]}\n\
         router: {private: [127.16.0.10], public: [127.100.0.10]}\n\
         ttl: 60\n\
         nameservers:\n  - {name: ns1.bench.internal, ip: 127.16.0.2}\n\
         apps:\n",
    );
    for n in 0..apps {
        let routing = if n % 10 == 0 {
            "    internal_routing: false\n"
        } else {
            ""
        };
        let _ = write!(
            yaml,
            "  - name: app-{n:07}\n{routing}    dynos:\n      - {{name: web.1, ip: 127.16.{}.{}, port: 5000}}\n",
            1 + (n / 254) % 255,
            1 + n % 254
        );
    }
    yaml
}

fn snapshot(apps: usize) -> Snapshot {
    let yaml = space_yaml(apps);
    let config = spaceroute::config::parse_texts(&[("bench/bench.yaml", &yaml)], &[])
        .expect("the bench space is valid");
    spaceroute::snapshot::compile(&config, |_| 1)
}

/// An A query for `name` with EDNS 1232, RD set, as a resolver sends it.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.edns = Some(edns);
    m.to_vec().expect("encode")
}

fn rcode(a: &Answer) -> ResponseCode {
    let reply = a.reply.as_ref().expect("a reply");
    Message::from_vec(reply)
        .expect("the reply parses")
        .metadata
        .response_code
}

fn benches(c: &mut Criterion) {
    // Criterion's own test mode (`cargo test`) passes no `--bench`: a small snapshot suffices.
    let apps = if std::env::args().any(|a| a == "--bench") {
        10_000
    } else {
        1_000
    };
    let snapshot = snapshot(apps);
    // Spread over the whole app range; internal apps for `refused` (n % 10 != 0).
    let app = |i: usize| (i * 7919) % apps;
    let cases: [(&str, IpAddr, Vec<Vec<u8>>, ResponseCode); 3] = [
        (
            "hit",
            TRUSTED,
            (0..NAMES)
                .map(|i| query(&format!("app-{:07}.herokuapp.com.", app(i)), i as u16))
                .collect(),
            ResponseCode::NoError,
        ),
        (
            "nxdomain",
            TRUSTED,
            (0..NAMES)
                .map(|i| query(&format!("nx-{i}.herokuapp.com."), i as u16))
                .collect(),
            ResponseCode::NXDomain,
        ),
        (
            "refused",
            PUBLIC,
            (0..NAMES)
                .map(|i| {
                    let n = app(i) / 10 * 10 + 1;
                    query(&format!("app-{n:07}.herokuapp.com."), i as u16)
                })
                .collect(),
            ResponseCode::Refused,
        ),
    ];
    type AnswerFn = fn(&Snapshot, IpAddr, Transport, &[u8]) -> Answer;
    let paths: [(&str, AnswerFn); 2] =
        [("answer", answer::answer), ("reference", answer::reference)];
    for (path, f) in paths {
        let mut group = c.benchmark_group(path);
        for (case, source, queries, expected) in &cases {
            // Both paths must give what the case says before they are timed.
            for q in queries {
                assert_eq!(
                    rcode(&f(&snapshot, *source, Transport::Udp, q)),
                    *expected,
                    "{path} {case}"
                );
            }
            let mut i = 0;
            group.bench_function(*case, |b| {
                b.iter(|| {
                    i = (i + 1) % NAMES;
                    f(
                        &snapshot,
                        black_box(*source),
                        Transport::Udp,
                        black_box(&queries[i]),
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = answer_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = benches
}
criterion_main!(answer_benches);
