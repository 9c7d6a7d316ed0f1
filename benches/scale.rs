//! Scale comparison: the `spaceroute` binary against NSD, Knot and BIND, each serving the same
//! N apps, loaded by dnsperf on the same loopback with the same thread budget.
//!
//! - **Data**, generated per N (env `SCALE_APPS`, default `10000`; a list such as
//!   `10000,1000000` runs each in turn): spaceroute gets one space file (`bench`, network
//!   127.16.0.0/16, a peer 127.32.0.0/16, router private 127.16.0.10 and public 127.100.0.10,
//!   apps `app-0000000` .. with every 10th a standard app, `internal_routing: false`, each with
//!   one web dyno at 127.16.x.y:5000 that nothing ever connects to; `SCALE_SPACES=K` spreads
//!   the apps over K space files, the others peering with both sources so that every answer
//!   stays the same). Knot and NSD get the
//!   equivalent `herokuapp.com` zone (SOA, NS, one A 127.16.0.10 per app). BIND gets two views,
//!   as BIND operators split a domain: `trusted` (match-clients 127.16.0.0/16 and
//!   127.32.0.0/16) serves that zone; the catch-all view serves a `herokuapp.com` holding only
//!   the standard apps, at the public address. So BIND hides internal names from outsiders with
//!   NXDOMAIN, where spaceroute answers REFUSED: BIND refuses per zone, not per name, and
//!   per-name REFUSED would take one zone per standard app (100k zones at 1M apps), which nobody
//!   runs. Knot and NSD have no view here: they answer everyone (`no ACL` in the table).
//! - **Servers**, one worker each where it can be set, so rates compare per core: spaceroute
//!   `--dns-workers 1` with `TOKIO_WORKER_THREADS=1` (`w1`), and again with 2 of each (`w2`, to
//!   show multicore scaling; on 2 cores it shares them with dnsperf); Knot `udp-workers: 1`,
//!   `tcp-workers: 1`, `background-workers: 1`; NSD `server-count: 1`, `minimal-responses: yes`,
//!   RRL off (`rrl-ratelimit: 0`: Debian's NSD is built with RRL, on at 200 qps per source by
//!   default, which would cap every run); BIND `named -n 1`, `minimal-responses yes`,
//!   `recursion no`. They load one after the other; "load" is process start to the first right
//!   answer (polled every 10 ms), "RSS" the VmRSS after the runs (serving, settled) summed
//!   over its processes and "PSS" their proportional set size, which counts shared pages once
//!   (NSD forks a server process that holds the zone, and xfrd). The lines printed as each
//!   server loads show RSS and PSS right after the load.
//! - **Load**: `dnsperf -l SECS -c 8 -T 2 -q 100` (env `SCALE_SECS`, default 10; `0` only
//!   loads and probes), `SCALE_ROUNDS` rounds (default 3), interleaved: each round runs every
//!   test against every server in turn. Tests: `udp trusted` from 127.16.0.5 (90% an app's A,
//!   5% an unknown name: NXDOMAIN, 5% an app's AAAA: NODATA), `udp refused` from 127.200.0.1
//!   (internal apps' A), `tcp trusted` (the trusted mix, `-m tcp`). CPU per query is the
//!   server's utime and stime (all threads and processes, from `/proc`) over the run divided by
//!   the completed queries; `cpu` is CPU over dnsperf's run time, and `limit` says `generator`
//!   when the server used under 95% of a core per worker: something other than its CPU set
//!   the rate, dnsperf, or over TCP the round trips of a server that seems to answer one query
//!   per connection at a time (Knot and NSD here: 8 connections, ~30% CPU). Queries carry no
//!   EDNS (dnsperf without `-e`). Ratios are spaceroute `w1` over each peer, and `w2` over
//!   `w1`, the median of per-round ratios.
//!
//! Run: `cargo bench --bench scale`, or for the full comparison
//! `SCALE_APPS=10000,1000000 cargo bench --bench scale` on a quiet machine (needs `dnsperf`,
//! `knotd`, `nsd`, `named`: `apt-get install -y dnsperf knot nsd bind9`; a missing peer is
//! skipped; `SCALE_LOAD_TIMEOUT` seconds, default 900, bounds each server's load). Under `cargo
//! test` (no `--bench` argument) it serves 100 apps with spaceroute alone and checks its
//! answers; no peers needed. Traffic goes only to 127.0.0.0/8, ports are picked free, files go
//! to a temporary directory, and every process started is stopped by PID when the bench ends or
//! panics (the bench is a child subreaper, so NSD's forks are stopped and reaped too). Nothing
//! is written to `benches/RESULTS.md`: paste a run there.
//!
//! Last result (2026-11-29, the 2-core workplace VM, commit 9035135; the full run is in
//! `benches/RESULTS.md`): one worker answers UDP at 1.26x Knot's and 1.12x NSD's rate at 10k
//! apps, with 0.32 us user CPU per query (Knot and NSD 0.76), and at 1.21x and 1.10x at 1M
//! (0.85 us; Knot 1.74, NSD 1.92); TCP 3.4-4x Knot. 1M apps load in 2.5 s from one file and
//! 1.7 s from 100 (Knot 1.3 s, NSD 1.4 s) and take 302 MB once serving (Knot 317 MB, NSD
//! 310 MB PSS). dnsperf (two threads) and a one-worker server share the 2 cores, so only BIND,
//! the dearest per query, is CPU-bound: compare `user` and `sys` per query more than qps. Over
//! TCP Knot and NSD idle at ~30% CPU: bound by round trips on 8 connections, not by CPU.

use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

mod common;

use common::{Proc, Rng, find_tool, free_port, median, si, stat_fields, tree};

/// Where every server listens.
const LISTEN: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// A resolver inside the space's network: trusted.
const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 16, 0, 5);
/// An asker outside the space and its peer: public.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(127, 200, 0, 1);
/// The router addresses: what trusted askers get for every app, and the public for standard
/// apps.
const ROUTER_PRIVATE: Ipv4Addr = Ipv4Addr::new(127, 16, 0, 10);
const ROUTER_PUBLIC: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 10);
/// Lines in each dnsperf query file (it cycles through them).
const QUERY_LINES: usize = 200_000;
const INSTALL: &str = "apt-get install -y dnsperf knot nsd bind9";

fn main() {
    // Processes our servers fork (NSD's server and xfrd) are reparented to us, not to init,
    // when their parent exits first, so that `Proc`'s drop can stop and reap them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    if std::env::args().any(|a| a == "--bench") {
        full_run(&Settings::from_env());
    } else {
        smoke();
    }
}

/// Under `cargo test`: 100 apps, spaceroute alone, its answers checked.
fn smoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = Data::generate(&dir.path().join("data"), 100, 1);
    let kind = Kind::Spaceroute(1);
    let server = Server::start(
        kind,
        &kind.tool().expect("spaceroute"),
        &data,
        dir.path(),
        20,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let wrong = probe(&server);
    println!(
        "smoke scale: spaceroute loaded 100 apps in {:.0?}, RSS {}, {} probes wrong",
        server.load,
        mb(server.rss_kb),
        wrong.len()
    );
    assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
}

/// What the environment asks for.
struct Settings {
    apps: Vec<usize>,
    /// Space files spaceroute's apps are spread over (`SCALE_SPACES`, default 1).
    spaces: usize,
    secs: u64,
    rounds: usize,
    load_timeout: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_string());
        let number = |name: &str, text: &str| -> u64 {
            (text.trim().replace('_', ""))
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {text:?} is not a number"))
        };
        let apps = var("SCALE_APPS", "10000")
            .split(',')
            .map(|n| number("SCALE_APPS", n) as usize)
            .collect::<Vec<_>>();
        assert!(
            apps.iter().all(|&n| n >= 20),
            "SCALE_APPS: at least 20 apps"
        );
        Settings {
            apps,
            spaces: number("SCALE_SPACES", &var("SCALE_SPACES", "1")).clamp(1, 65_000) as usize,
            secs: number("SCALE_SECS", &var("SCALE_SECS", "10")),
            rounds: number("SCALE_ROUNDS", &var("SCALE_ROUNDS", "3")).max(1) as usize,
            load_timeout: number("SCALE_LOAD_TIMEOUT", &var("SCALE_LOAD_TIMEOUT", "900")),
        }
    }
}

fn full_run(settings: &Settings) {
    let dnsperf = find_tool("dnsperf");
    if dnsperf.is_none() {
        println!("dnsperf not found ({INSTALL}): load times and memory only");
    }
    let kinds = [
        Kind::Spaceroute(1),
        Kind::Spaceroute(2),
        Kind::Knot,
        Kind::Nsd,
        Kind::Bind,
    ];
    let mut tools = Vec::new();
    for kind in kinds {
        match kind.tool() {
            Some(tool) => tools.push((kind, tool)),
            None => println!("{} not found ({INSTALL}): skipped", kind.binary()),
        }
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = String::new();
    for &apps in &settings.apps {
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let data = Data::generate(&dir.path().join("data"), apps, settings.spaces);
        println!(
            "N = {apps} in {} space file(s): data generated in {:.1?} (space files {}, zone {})",
            settings.spaces,
            started.elapsed(),
            mb(dir_kb(&data.spaces)),
            mb(file_kb(&data.zone))
        );
        let mut servers = Vec::new();
        for (kind, tool) in &tools {
            match Server::start(*kind, tool, &data, dir.path(), settings.load_timeout) {
                Ok(server) => {
                    let wrong = probe(&server);
                    println!(
                        "  {} loaded in {:.2?}, RSS {}, PSS {}{}",
                        server.label,
                        server.load,
                        mb(server.rss_kb),
                        mb(server.pss_kb),
                        if wrong.is_empty() {
                            ", answers as expected".to_string()
                        } else {
                            format!(", WRONG ANSWERS: {}", wrong.join("; "))
                        }
                    );
                    servers.push(server);
                }
                Err(e) => println!("  {} skipped: {e}", kind.label()),
            }
        }
        let mut results: Vec<Vec<Vec<Round>>> = Vec::new();
        if let (Some(dnsperf), true) = (&dnsperf, settings.secs > 0) {
            results = vec![vec![Vec::new(); servers.len()]; TESTS.len()];
            for round in 0..settings.rounds {
                for (t, test) in TESTS.iter().enumerate() {
                    for (s, server) in servers.iter().enumerate() {
                        let r = measure(dnsperf, server, test, &data, settings.secs, dir.path());
                        match r {
                            Ok(r) => {
                                println!(
                                    "  round {} {:<12} {:<14} {}",
                                    round + 1,
                                    test.label,
                                    server.label,
                                    r.line()
                                );
                                results[t][s].push(r);
                            }
                            Err(e) => println!(
                                "  round {} {} {}: {e}",
                                round + 1,
                                test.label,
                                server.label
                            ),
                        }
                    }
                }
            }
        }
        // Memory once serving has settled: right after a load, a process may still hold its
        // loading peak (spaceroute's allocator hands it back within seconds).
        std::thread::sleep(Duration::from_secs(if settings.secs > 0 { 1 } else { 10 }));
        for server in &mut servers {
            let pid = server.proc.pid();
            server.rss_kb = tree(pid).iter().map(|&p| status_kb(p, "VmRSS:")).sum();
            server.pss_kb = tree(pid).iter().map(|&p| pss_kb(p)).sum();
        }
        table(&mut report, apps, settings, cpus, &servers, &results);
        drop(servers);
    }
    println!("\n{report}");
}

// ---------------------------------------------------------------------------------------------
// The data

/// The files generated for N apps.
struct Data {
    /// The directory holding spaceroute's one space file.
    spaces: PathBuf,
    space_file: PathBuf,
    /// `herokuapp.com` with every app at the private router address.
    zone: PathBuf,
    /// `herokuapp.com` with the standard apps only, at the public router address.
    public_zone: PathBuf,
    /// dnsperf input: the trusted mix and the internal apps' A.
    trusted_queries: PathBuf,
    refused_queries: PathBuf,
}

fn app(n: usize) -> String {
    format!("app-{n:07}")
}

/// Every 10th app is a standard (public) app; the rest are internal.
fn standard(n: usize) -> bool {
    n.is_multiple_of(10)
}

const ZONE_HEAD: &str = "$ORIGIN herokuapp.com.\n$TTL 60\n\
     @ IN SOA ns1.bench.internal. hostmaster.herokuapp.com. 1 3600 600 86400 60\n\
     @ IN NS ns1.bench.internal.\n";

impl Data {
    /// `space_files` > 1 spreads the apps over that many: `bench` as with one, and
    /// `bench-<i>`, whose own networks are never asked from (10.x.y.0/24) and which peer with
    /// the trusted and peer sources, so every source sees the same answers as with one space.
    fn generate(dir: &Path, apps: usize, space_files: usize) -> Data {
        let spaces = dir.join("spaces");
        std::fs::create_dir_all(&spaces).expect("mkdir");
        let data = Data {
            space_file: spaces.join("bench.yaml"),
            spaces,
            zone: dir.join("herokuapp.com.zone"),
            public_zone: dir.join("herokuapp.com.public.zone"),
            trusted_queries: dir.join("trusted.txt"),
            refused_queries: dir.join("refused.txt"),
        };
        let mut files: Vec<_> = (0..space_files)
            .map(|i| {
                let (name, network, peers, path) = match i {
                    0 => (
                        "bench".to_string(),
                        "127.16.0.0/16".to_string(),
                        "[127.32.0.0/16]",
                        data.space_file.clone(),
                    ),
                    _ => (
                        format!("bench-{i:05}"),
                        format!("10.{}.{}.0/24", 200 + i / 256, i % 256),
                        "[127.16.0.0/16, 127.32.0.0/16]",
                        data.spaces.join(format!("bench-{i:05}.yaml")),
                    ),
                };
                let mut space = writer(&path);
                let _ = write!(
                    space,
                    "space: {name}\n\
                     domain: herokuapp.com\n\
                     network: {network}\n\
                     peers:\n  - {{name: peer, cidrs: {peers}}}\n\
                     router: {{private: [{ROUTER_PRIVATE}], public: [{ROUTER_PUBLIC}]}}\n\
                     ttl: 60\n\
                     nameservers:\n  - {{name: ns1.{name}.internal, ip: 127.16.0.2}}\n\
                     apps:\n"
                );
                space
            })
            .collect();
        let mut zone = writer(&data.zone);
        let mut public = writer(&data.public_zone);
        zone.write_all(ZONE_HEAD.as_bytes()).expect("write");
        public.write_all(ZONE_HEAD.as_bytes()).expect("write");
        for n in 0..apps {
            let name = app(n);
            let routing = if standard(n) {
                "    internal_routing: false\n"
            } else {
                ""
            };
            // Dynos at 127.16.1.1 .. 127.16.255.254 (repeating past 64k apps); never contacted.
            let _ = write!(
                files[n % space_files],
                "  - name: {name}\n{routing}    dynos:\n      - {{name: web.1, ip: 127.16.{}.{}, port: 5000}}\n",
                1 + (n / 254) % 255,
                1 + n % 254
            );
            let _ = writeln!(zone, "{name} IN A {ROUTER_PRIVATE}");
            if standard(n) {
                let _ = writeln!(public, "{name} IN A {ROUTER_PUBLIC}");
            }
        }
        for mut w in files.into_iter().chain([zone, public]) {
            w.flush().expect("write");
        }

        let mut rng = Rng(0x5eed_1234_abcd_ef01 ^ apps as u64);
        let mut trusted = writer(&data.trusted_queries);
        let mut refused = writer(&data.refused_queries);
        for _ in 0..QUERY_LINES {
            let n = (rng.next() % apps as u64) as usize;
            let _ = match rng.next() % 100 {
                0..90 => writeln!(trusted, "{}.herokuapp.com A", app(n)),
                90..95 => writeln!(trusted, "nx-{}.herokuapp.com A", rng.next() % 10_000_000),
                _ => writeln!(trusted, "{}.herokuapp.com AAAA", app(n)),
            };
            let internal = if standard(n) { n + 1 } else { n };
            let _ = writeln!(refused, "{}.herokuapp.com A", app(internal.min(apps - 1)));
        }
        for mut w in [trusted, refused] {
            w.flush().expect("write");
        }
        data
    }
}

fn writer(path: &Path) -> BufWriter<std::fs::File> {
    BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

// ---------------------------------------------------------------------------------------------
// The servers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// spaceroute with this many DNS workers (and tokio worker threads).
    Spaceroute(usize),
    Knot,
    Nsd,
    Bind,
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Spaceroute(w) => format!("spaceroute w{w}"),
            Kind::Knot => "knot".into(),
            Kind::Nsd => "nsd".into(),
            Kind::Bind => "bind".into(),
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Kind::Spaceroute(_) => "spaceroute",
            Kind::Knot => "knotd",
            Kind::Nsd => "nsd",
            Kind::Bind => "named",
        }
    }

    fn tool(self) -> Option<PathBuf> {
        match self {
            Kind::Spaceroute(_) => Some(PathBuf::from(env!("CARGO_BIN_EXE_spaceroute"))),
            _ => find_tool(self.binary()),
        }
    }

    fn workers(self) -> usize {
        match self {
            Kind::Spaceroute(w) => w,
            _ => 1,
        }
    }

    /// What a public asker gets for an internal app: (rcode, address).
    fn public_internal(self) -> Expected {
        match self {
            Kind::Spaceroute(_) => (ResponseCode::Refused, None),
            Kind::Bind => (ResponseCode::NXDomain, None),
            Kind::Knot | Kind::Nsd => (ResponseCode::NoError, Some(ROUTER_PRIVATE)),
        }
    }

    /// The note on the refused test's row.
    fn refused_note(self) -> &'static str {
        match self {
            Kind::Spaceroute(_) => "",
            Kind::Bind => "catch-all view",
            Kind::Knot | Kind::Nsd => "no ACL",
        }
    }
}

/// A loaded server.
struct Server {
    kind: Kind,
    label: String,
    proc: Proc,
    addr: SocketAddr,
    /// Process start to the first right answer.
    load: Duration,
    /// VmRSS after load, summed over its processes (NSD's serving child holds the zone, its
    /// main process little): pages they share count more than once.
    rss_kb: u64,
    /// The proportional set size of its processes after load: shared pages counted once.
    pss_kb: u64,
}

impl Server {
    /// Writes the server's configuration under `dir`, starts it and waits (up to `timeout`
    /// seconds) until it answers an app's A right.
    fn start(
        kind: Kind,
        tool: &Path,
        data: &Data,
        dir: &Path,
        timeout: u64,
    ) -> Result<Server, String> {
        let label = kind.label();
        let dir = dir.join(label.replace(' ', "-"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let addr = SocketAddr::new(LISTEN.into(), free_port(LISTEN.into()));
        let d = dir.display();
        let (port, zone, public_zone) =
            (addr.port(), data.zone.display(), data.public_zone.display());
        let mut cmd = Command::new(tool);
        match kind {
            Kind::Spaceroute(workers) => {
                let http = SocketAddr::new(LISTEN.into(), free_port(LISTEN.into()));
                cmd.arg("serve")
                    .arg("--zones")
                    .arg(&data.spaces)
                    .args(["--dns", &addr.to_string(), "--http", &http.to_string()])
                    .args(["--dns-workers", &workers.to_string()])
                    .env("TOKIO_WORKER_THREADS", workers.to_string())
                    .env("SPACEROUTE_LOG", "warn");
            }
            Kind::Knot => {
                let conf = format!(
                    "server:\n    rundir: \"{d}\"\n    listen: {LISTEN}@{port}\n\
                     \x20   udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
                     log:\n  - target: stderr\n    any: warning\n\
                     database:\n    storage: \"{d}\"\n\
                     template:\n  - id: default\n    storage: \"{d}\"\n    journal-content: none\n\
                     \x20   zonefile-sync: -1\n\
                     zone:\n  - domain: herokuapp.com\n    file: \"{zone}\"\n"
                );
                let path = dir.join("knot.conf");
                std::fs::write(&path, conf).expect("write knot.conf");
                cmd.arg("-c").arg(path);
            }
            Kind::Nsd => {
                // Running as root, NSD would drop to the `nsd` user, who cannot read a private
                // temporary directory: username "" keeps it as we are.
                let conf = format!(
                    "server:\n    ip-address: {LISTEN}@{port}\n    port: {port}\n    do-ip6: no\n\
                     \x20   server-count: 1\n    reuseport: no\n    username: \"\"\n    chroot: \"\"\n\
                     \x20   zonesdir: \"{d}\"\n    pidfile: \"{d}/nsd.pid\"\n    database: \"\"\n\
                     \x20   zonelistfile: \"{d}/zone.list\"\n    xfrdfile: \"{d}/xfrd.state\"\n\
                     \x20   xfrdir: \"{d}\"\n    verbosity: 1\n    hide-version: yes\n\
                     \x20   minimal-responses: yes\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n\
                     remote-control:\n    control-enable: no\n\
                     zone:\n    name: herokuapp.com\n    zonefile: \"{zone}\"\n"
                );
                let path = dir.join("nsd.conf");
                std::fs::write(&path, conf).expect("write nsd.conf");
                cmd.arg("-d").arg("-c").arg(path);
            }
            Kind::Bind => {
                let conf = format!(
                    "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n\
                     \x20 session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n\
                     \x20 listen-on port {port} {{ {LISTEN}; }};\n  listen-on-v6 {{ none; }};\n\
                     \x20 recursion no;\n  minimal-responses yes;\n  notify no;\n\
                     \x20 dnssec-validation no;\n  empty-zones-enable no;\n  allow-transfer {{ none; }};\n}};\n\
                     controls {{ }};\n\
                     acl trusted {{ 127.16.0.0/16; 127.32.0.0/16; }};\n\
                     view \"trusted\" {{\n  match-clients {{ trusted; }};\n\
                     \x20 zone \"herokuapp.com\" {{ type primary; file \"{zone}\"; }};\n}};\n\
                     view \"public\" {{\n  match-clients {{ any; }};\n\
                     \x20 zone \"herokuapp.com\" {{ type primary; file \"{public_zone}\"; }};\n}};\n"
                );
                let path = dir.join("named.conf");
                std::fs::write(&path, conf).expect("write named.conf");
                cmd.args(["-g", "-n", "1", "-c"]).arg(path);
            }
        }
        let started = Instant::now();
        let mut proc = Proc::spawn(&label, &mut cmd, &dir.join("server.log"));
        let query = query_bytes(&format!("{}.herokuapp.com.", app(1)), RecordType::A, 1);
        let deadline = started + Duration::from_secs(timeout);
        loop {
            if let Some(status) = proc.exited() {
                return Err(format!("exited with {status}:\n{}", proc.log_tail()));
            }
            if let Some((ResponseCode::NoError, addrs)) = ask_udp(addr, TRUSTED, &query, 50)
                && addrs == [ROUTER_PRIVATE]
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no right answer within {timeout} s:\n{}",
                    proc.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let load = started.elapsed();
        let pid = proc.pid();
        Ok(Server {
            kind,
            label,
            proc,
            addr,
            load,
            rss_kb: tree(pid).iter().map(|&p| status_kb(p, "VmRSS:")).sum(),
            pss_kb: tree(pid).iter().map(|&p| pss_kb(p)).sum(),
        })
    }
}

/// What a probe asks (source, name, type, over TCP or not) and the rcode and address it
/// expects (no address: an empty answer section).
type Case<'a> = (&'a str, Ipv4Addr, &'a str, RecordType, bool, Expected);
type Expected = (ResponseCode, Option<Ipv4Addr>);

/// Asks `server` what each audience should see; the mismatches, described.
fn probe(server: &Server) -> Vec<String> {
    use RecordType::{A, AAAA};
    let internal = format!("{}.herokuapp.com.", app(1));
    let public_app = format!("{}.herokuapp.com.", app(0));
    let public_standard = match server.kind {
        Kind::Knot | Kind::Nsd => ROUTER_PRIVATE,
        _ => ROUTER_PUBLIC,
    };
    let ok = |ip| (ResponseCode::NoError, Some(ip));
    let cases: [Case; 6] = [
        (
            "trusted A",
            TRUSTED,
            &internal,
            A,
            false,
            ok(ROUTER_PRIVATE),
        ),
        (
            "trusted A over tcp",
            TRUSTED,
            &internal,
            A,
            true,
            ok(ROUTER_PRIVATE),
        ),
        (
            "trusted unknown A",
            TRUSTED,
            "nx-1.herokuapp.com.",
            A,
            false,
            (ResponseCode::NXDomain, None),
        ),
        (
            "trusted AAAA",
            TRUSTED,
            &internal,
            AAAA,
            false,
            (ResponseCode::NoError, None),
        ),
        (
            "public internal A",
            PUBLIC,
            &internal,
            A,
            false,
            server.kind.public_internal(),
        ),
        (
            "public standard A",
            PUBLIC,
            &public_app,
            A,
            false,
            ok(public_standard),
        ),
    ];
    let mut wrong = Vec::new();
    for (id, (what, source, name, rtype, tcp, (rcode, addr))) in cases.into_iter().enumerate() {
        let query = query_bytes(name, rtype, id as u16 + 100);
        let got = if tcp {
            ask_tcp(server.addr, source, &query)
        } else {
            ask_udp(server.addr, source, &query, 1000)
        };
        let expected = (rcode, addr.into_iter().collect::<Vec<_>>());
        if got.as_ref() != Some(&expected) {
            wrong.push(format!("{what}: got {got:?}, expected {expected:?}"));
        }
    }
    wrong
}

/// A query with ID `id`, RD clear, no EDNS (as dnsperf sends without `-e`).
fn query_bytes(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    m.to_vec().expect("encode")
}

/// The rcode and the IPv4 addresses answered, if a reply with the query's ID came.
fn reply_of(query: &[u8], reply: &[u8]) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let m = Message::from_vec(reply).ok()?;
    if m.metadata.id != u16::from_be_bytes([query[0], query[1]]) {
        return None;
    }
    let addrs = (m.answers.iter())
        .filter_map(|r| match r.data.ip_addr() {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    Some((m.metadata.response_code, addrs))
}

fn ask_udp(
    server: SocketAddr,
    source: Ipv4Addr,
    query: &[u8],
    wait_ms: u64,
) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind((source, 0)).expect("bind a loopback source");
    socket.connect(server).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(wait_ms)))
        .expect("timeout");
    socket.send(query).ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    reply_of(query, &buf[..n])
}

/// One framed query over TCP from `source` (bound before connecting, as std cannot).
fn ask_tcp(
    server: SocketAddr,
    source: Ipv4Addr,
    query: &[u8],
) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
    socket
        .bind(&SocketAddr::new(source.into(), 0).into())
        .ok()?;
    socket
        .connect_timeout(&server.into(), Duration::from_secs(1))
        .ok()?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).ok()?;
    reply_of(query, &buf)
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// One kind of load.
struct Test {
    label: &'static str,
    source: Ipv4Addr,
    refused: bool,
    tcp: bool,
}

const TESTS: [Test; 3] = [
    Test {
        label: "udp trusted",
        source: TRUSTED,
        refused: false,
        tcp: false,
    },
    Test {
        label: "udp refused",
        source: PUBLIC,
        refused: true,
        tcp: false,
    },
    Test {
        label: "tcp trusted",
        source: TRUSTED,
        refused: false,
        tcp: true,
    },
];

/// One dnsperf run against one server.
#[derive(Debug, Clone)]
struct Round {
    qps: f64,
    completed: u64,
    lost: u64,
    /// Server CPU µs per completed query.
    user_us: f64,
    sys_us: f64,
    /// Server CPU time over dnsperf's run time (1.0 = one core).
    cpu: f64,
    /// dnsperf's "Response codes" line, shortened.
    rcodes: String,
}

impl Round {
    fn line(&self) -> String {
        format!(
            "{:>8} qps  user {:.2} µs/q  sys {:.2} µs/q  cpu {:>3.0}%  lost {}  {}",
            si(self.qps),
            self.user_us,
            self.sys_us,
            self.cpu * 100.0,
            self.lost,
            self.rcodes
        )
    }
}

fn measure(
    dnsperf: &Path,
    server: &Server,
    test: &Test,
    data: &Data,
    secs: u64,
    dir: &Path,
) -> Result<Round, String> {
    let file = if test.refused {
        &data.refused_queries
    } else {
        &data.trusted_queries
    };
    let mut cmd = Command::new(dnsperf);
    cmd.args([
        "-s",
        &LISTEN.to_string(),
        "-p",
        &server.addr.port().to_string(),
    ])
    .args(["-a", &test.source.to_string(), "-d"])
    .arg(file)
    .args(["-l", &secs.to_string(), "-c", "8", "-T", "2", "-q", "100"]);
    if test.tcp {
        cmd.args(["-m", "tcp"]);
    }
    let log = dir.join("dnsperf.log");
    let pid = server.proc.pid();
    let before = cpu_ticks(pid);
    let mut perf = Proc::spawn("dnsperf", &mut cmd, &log);
    let Some(status) = perf.wait_exit(Duration::from_secs(secs + 60)) else {
        return Err(format!("dnsperf did not finish:\n{}", perf.log_tail()));
    };
    let after = cpu_ticks(pid);
    let text = perf.log_text();
    drop(perf);
    if !status.success() {
        return Err(format!("dnsperf failed ({status}):\n{text}"));
    }
    let field = |key: &str| {
        (text.lines())
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .ok_or_else(|| format!("no {key:?} in dnsperf's output:\n{text}"))
    };
    let first_number = |s: &str| -> Result<f64, String> {
        (s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("not a number: {s:?}"))
    };
    let completed = first_number(field("Queries completed:")?)? as u64;
    let lost = first_number(field("Queries lost:")?)? as u64;
    let run_time = first_number(field("Run time (s):")?)?;
    let qps = first_number(field("Queries per second:")?)?;
    let rcodes = field("Response codes:").unwrap_or("").to_string();
    // "NOERROR 90 (90.00%), NXDOMAIN 10 (10.00%)" → "NOERROR 90% NXDOMAIN 10%".
    let rcodes = (rcodes.split(", "))
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let code = words.next()?;
            let share = words
                .nth(1)?
                .trim_matches(|c| c == '(' || c == ')' || c == '%');
            Some(format!("{code} {:.0}%", share.parse::<f64>().ok()?))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let hz = clock_ticks() as f64;
    let per_query = |ticks: u64| ticks as f64 / hz * 1e6 / completed.max(1) as f64;
    let (user, sys) = (after.0 - before.0, after.1 - before.1);
    Ok(Round {
        qps,
        completed,
        lost,
        user_us: per_query(user),
        sys_us: per_query(sys),
        cpu: (user + sys) as f64 / hz / run_time.max(1e-3),
        rcodes,
    })
}

// ---------------------------------------------------------------------------------------------
// The report

/// Appends the tables for `apps` apps to `report`: `results[test][server]` are the rounds.
fn table(
    report: &mut String,
    apps: usize,
    settings: &Settings,
    cpus: usize,
    servers: &[Server],
    results: &[Vec<Vec<Round>>],
) {
    let load = if results.is_empty() {
        "load and answers only".to_string()
    } else {
        format!(
            "{} round(s) x {} s, interleaved; dnsperf -c 8 -T 2 -q 100",
            settings.rounds, settings.secs
        )
    };
    let _ = writeln!(report, "N = {apps} apps; {load}; {cpus} CPUs");
    let _ = writeln!(
        report,
        "{:<14} {:>7} {:>9} {:>9} {:>9}",
        "server", "workers", "load", "RSS", "PSS"
    );
    for s in servers {
        let _ = writeln!(
            report,
            "{:<14} {:>7} {:>9} {:>9} {:>9}",
            s.label,
            s.kind.workers(),
            format!("{:.2?}", s.load),
            mb(s.rss_kb),
            mb(s.pss_kb)
        );
    }
    if results.is_empty() {
        let _ = writeln!(report, "(no load: dnsperf missing or SCALE_SECS=0)");
    } else {
        let _ = writeln!(
            report,
            "\n{:<12} {:<14} {:<28} {:>7} {:>7} {:>5} {:<9} rcodes",
            "test", "server", "qps median (min-max)", "user", "sys", "cpu", "limit"
        );
        for (test, per_server) in TESTS.iter().zip(results) {
            for (server, rounds) in servers.iter().zip(per_server) {
                if rounds.is_empty() {
                    continue;
                }
                let qps = || rounds.iter().map(|r| r.qps);
                let cpu = median(rounds.iter().map(|r| r.cpu));
                let limit = if cpu < 0.95 * server.kind.workers() as f64 {
                    "generator"
                } else {
                    "server"
                };
                let lost: u64 = rounds.iter().map(|r| r.lost).sum();
                let completed: u64 = rounds.iter().map(|r| r.completed).sum();
                let mut rcodes = rounds[rounds.len() - 1].rcodes.clone();
                if test.refused && !server.kind.refused_note().is_empty() {
                    let _ = write!(rcodes, " ({})", server.kind.refused_note());
                }
                if lost > 0 {
                    let share = lost as f64 * 100.0 / (lost + completed) as f64;
                    let _ = write!(rcodes, ", lost {share:.2}%");
                }
                let _ = writeln!(
                    report,
                    "{:<12} {:<14} {:<28} {:>7.2} {:>7.2} {:>4.0}% {:<9} {}",
                    test.label,
                    server.label,
                    format!(
                        "{} ({}-{})",
                        si(median(qps())),
                        si(qps().fold(f64::INFINITY, f64::min)),
                        si(qps().fold(0.0, f64::max))
                    ),
                    median(rounds.iter().map(|r| r.user_us)),
                    median(rounds.iter().map(|r| r.sys_us)),
                    cpu * 100.0,
                    limit,
                    rcodes
                );
            }
        }
        let _ = writeln!(report, "(user, sys: server CPU µs per query, median)");
    }

    // Median of the per-round ratios of `f` between servers `a` and `b` in test `t`.
    let per_round = |t: usize, a: usize, b: usize, f: &dyn Fn(&Round) -> f64| -> Option<f64> {
        let (a, b) = (results.get(t)?.get(a)?, results.get(t)?.get(b)?);
        let ratios = a.iter().zip(b).map(|(x, y)| f(x) / f(y));
        (!a.is_empty() && !b.is_empty()).then(|| median(ratios))
    };
    let position = |kind| servers.iter().position(|s| s.kind == kind);
    let Some(ours) = position(Kind::Spaceroute(1)) else {
        let _ = writeln!(report);
        return;
    };
    // Multicore: w2 over w1.
    if let (Some(w2), false) = (position(Kind::Spaceroute(2)), results.is_empty()) {
        let _ = write!(report, "\nspaceroute w2 / w1 qps:");
        for (t, test) in TESTS.iter().enumerate() {
            if let Some(r) = per_round(t, w2, ours, &|r| r.qps) {
                let _ = write!(report, " {} {r:.2}", test.label);
            }
        }
        let _ = writeln!(report);
    }
    // Spaceroute w1 over each peer.
    let peers: Vec<usize> = (0..servers.len())
        .filter(|&i| !matches!(servers[i].kind, Kind::Spaceroute(_)))
        .collect();
    if peers.is_empty() {
        let _ = writeln!(report);
        return;
    }
    let _ = write!(report, "\n{:<26}", "spaceroute w1 / peer");
    for &i in &peers {
        let _ = write!(report, " {:>8}", servers[i].label);
    }
    let _ = writeln!(report);
    let mut row = |label: &str, ratio: &dyn Fn(usize) -> Option<f64>| {
        let _ = write!(report, "{label:<26}");
        for &i in &peers {
            let _ = match ratio(i) {
                Some(r) => write!(report, " {r:>8.2}"),
                None => write!(report, " {:>8}", "-"),
            };
        }
        let _ = writeln!(report);
    };
    for (t, test) in TESTS.iter().enumerate().filter(|_| !results.is_empty()) {
        row(&format!("{} qps", test.label), &|i| {
            per_round(t, ours, i, &|r| r.qps)
        });
        row(&format!("{} cpu/query", test.label), &|i| {
            per_round(t, ours, i, &|r| r.user_us + r.sys_us)
        });
    }
    let ours = &servers[ours];
    row("load time", &|i| {
        Some(ours.load.as_secs_f64() / servers[i].load.as_secs_f64())
    });
    row("RSS", &|i| {
        Some(ours.rss_kb as f64 / servers[i].rss_kb.max(1) as f64)
    });
    row("PSS", &|i| {
        Some(ours.pss_kb as f64 / servers[i].pss_kb.max(1) as f64)
    });
    let _ = writeln!(
        report,
        "(median of per-round ratios; qps > 1: spaceroute faster; cpu/query, load, memory < 1: \
         spaceroute cheaper; refused vs knot and nsd: they answer, no ACL)\n"
    );
}

/// kB → "12.3M".
fn mb(kb: u64) -> String {
    format!("{:.1}M", kb as f64 / 1024.0)
}

fn file_kb(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}

/// The size of the files in `dir`, in KiB.
fn dir_kb(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.map(|e| file_kb(&e.path())).sum()
}

// ---------------------------------------------------------------------------------------------
// Processes

/// User and system CPU time of `pid` and its descendants, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            // utime and stime: fields 14 and 15 of stat, the 12th and 13th after the name.
            let f = stat_fields(p)?;
            Some((*f.get(11)?, *f.get(12)?))
        })
        .fold((0, 0), |(u, s), (pu, ps): (u64, u64)| (u + pu, s + ps))
}

/// Clock ticks per second (USER_HZ), from `getconf CLK_TCK`; 100 if that fails.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// A `key: N kB` line of `/proc/PID/status`.
fn status_kb(pid: u32, key: &str) -> u64 {
    kb_field(&format!("/proc/{pid}/status"), key)
}

fn pss_kb(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn kb_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
