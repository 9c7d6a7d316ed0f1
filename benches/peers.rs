//! Peer comparison: the `spaceroute` binary against the servers it stands in for, on the same
//! data, the same loopback and the same thread budget.
//!
//! - **DNS**: spaceroute vs Knot DNS (`knotd`, Debian's `knot`), both authoritative for
//!   `herokuapp.com` with 1000 apps (`app-0` .. `app-999`, two A records each, TTL 60). Knot
//!   gets an equivalent zone file. The load generator is in this file: one std thread with 4
//!   UDP sockets from 127.16.0.5 (inside the space's network, so spaceroute answers as to a
//!   trusted resolver), 16 queries outstanding per socket, EDNS 1232, names drawn at random:
//!   90% apps (NOERROR, 2 A) and 10% unknown names (NXDOMAIN + SOA). A reply counts only with
//!   the query's ID, QR and the expected rcode (and answers for an app). Then the same over TCP:
//!   4 connections pipelining 16 queries each, from 127.0.0.1 (a trusted peer: std cannot
//!   bind a TCP client's source). Latency is send to reply; with a fixed window it
//!   is mostly queueing (window / rate), so read p99 for jitter.
//! - **Router**: spaceroute's router vs nginx `proxy_pass` (keep-alive upstream, the same
//!   `X-Forwarded-*`/`X-Request-Id`/`Via` headers, one access-log line per request to a file for
//!   both: spaceroute's stderr, nginx's `access_log`), in front of the same dyno: another nginx
//!   answering `return 200 "ok"`. Five modes, each from 127.0.0.1 with `Host` (or
//!   `:authority`) `app-0.herokuapp.com` (the space trusts 127.0.0.0/24 as a peer), 16
//!   connections from one client thread: HTTP/1.1 keep-alive and a new connection per request
//!   (`wrk`, `Connection: close`), the same over TLS (a self-signed ECDSA P-256 certificate;
//!   TLS 1.3 on both, as nginx 1.22 offers only up to 1.2 unless told; nginx keeps a session
//!   cache, spaceroute issues tickets; wrk resumes TLS 1.2 sessions but not 1.3 ones, so every
//!   connection is a full handshake), and HTTP/2 over TLS (`h2load -m8`,
//!   Debian's `nghttp2-client`; its p50 column is the mean, its p99 the maximum).
//!
//! Threads: each server gets one. spaceroute runs with `--dns-workers 1` (one UDP worker thread)
//! and `TOKIO_WORKER_THREADS=1` (its binary uses tokio's default multi-thread runtime, which
//! reads that variable), so its TCP connections and router share one worker thread; Knot runs
//! `udp-workers: 1`, `tcp-workers: 1`, `background-workers: 1`; both nginx processes run
//! `worker_processes 1`. On a 2-core machine that leaves one core for the load generator (and,
//! for the router, the dyno nginx and wrk share it). Servers run one after the other, 3 rounds of
//! 5 s each, alternating so that machine noise hits both; the ratio is the median of the
//! per-round ratios. `cpu` is the server's CPU time over wall time (from `/proc`, including
//! nginx's worker): below ~95% the load generator, not the server, was the limit, and `per cpu-s`
//! (answers per CPU second of the server) is the fairer comparison.
//!
//! Run: `cargo bench --bench peers` (needs `knotd`, `nginx`, `wrk` and `h2load`: `apt-get
//! install -y knot nginx wrk nghttp2-client`; a missing peer is skipped); `PEERS_ONLY=dns` or
//! `PEERS_ONLY=router` runs one half. Under `cargo test` (no `--bench` argument) it runs a
//! short UDP and TCP round against spaceroute alone and checks the answers; no peers needed.
//! Traffic goes only to 127.0.0.0/8, ports are picked free, and every process started is
//! stopped when the bench ends or panics.
//!
//! Last DNS result (2026-11-29, the 2-core workplace VM, release build, Knot 3.2.6; shared and
//! noisy, so ratios matter more than rates; the router's runs are in `benches/RESULTS.md`).
//! Earlier the same day, before the UDP workers (`recvmmsg`/`sendmmsg` on their own threads)
//! and the byte-level fast path, the same run gave 0.61 (udp) and 0.95 (tcp); with the workers
//! alone, 0.75 and 0.98:
//!
//! ```text
//! test             server       rate per round               median      p50      p99   cpu per cpu-s
//! dns udp          spaceroute   382.6k 405.1k 401.1k         401.1k  152.6µs  253.4µs   98%    408.0k
//! dns udp          knot         331.7k 337.6k 341.9k         337.6k  183.2µs  253.4µs   98%    343.6k
//! dns udp          spaceroute/knot: 1.17 (rounds 1.15 1.20 1.17), per cpu-s 1.17
//! dns tcp          spaceroute   305.7k 300.1k 301.7k         301.7k  197.2µs  379.6µs   98%    308.8k
//! dns tcp          knot         220.9k 215.7k 228.8k         220.9k  272.4µs  524.4µs   98%    225.2k
//! dns tcp          spaceroute/knot: 1.38 (rounds 1.38 1.39 1.32), per cpu-s 1.39
//! ```
//!
//! Both DNS servers are CPU-bound (cpu ~98%), so rates compare the servers, not the generator.
//! Over UDP both read and write batches now. The workload (90% app names, 10% unknown names)
//! is mostly the fast path: 0.6 µs of user CPU per query against Knot's 0.75 (dnsperf, 10k
//! apps); the unknown names (NXDOMAIN with the SOA) still take the full resolver, through
//! hickory's `Message`. Over TCP the same fast path serves each framed query.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

mod common;

use common::{Proc, Rng, find_tool, free_port, median, si, stat_fields, tree};

/// Apps in the zone, `app-0` .. `app-{APPS-1}`.
const APPS: usize = 1000;
/// Where the DNS load comes from: inside the space's network 127.16.0.0/16.
const ASKER: Ipv4Addr = Ipv4Addr::new(127, 16, 0, 5);
/// Where every server listens.
const SERVERS: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The router addresses answered for every app (spaceroute's `router.private`, Knot's A records).
const ROUTER_IPS: [&str; 2] = ["10.16.0.10", "10.16.0.11"];
/// Share of queries (in percent) for names that do not exist.
const NXDOMAIN_PERCENT: u64 = 10;

/// One load-generator thread, 4 sockets (or TCP connections) with 16 queries outstanding each.
const LOAD_THREADS: usize = 1;
const FLOWS: usize = 4;
const WINDOW: usize = 16;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        full_run();
    } else {
        smoke();
    }
}

/// Under `cargo test`: spaceroute alone, a fraction of a second each for UDP and TCP.
fn smoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dyno = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
    let sr = Spaceroute::start(dir.path(), dyno, None);
    let queries = Queries::new();
    for (transport, run) in [("udp", udp_load as LoadFn), ("tcp", tcp_load as LoadFn)] {
        let r = run(sr.dns, &queries, 1, 2, 4, Duration::from_millis(300));
        println!(
            "smoke dns {transport} spaceroute: {} answers ({:.0} qps), {} wrong, {} lost",
            r.answered,
            r.qps(),
            r.wrong,
            r.lost
        );
        assert!(r.answered > 10, "{transport}: too few answers");
        assert_eq!(r.wrong, 0, "{transport}: wrong answers");
    }
}

fn full_run() {
    let rounds = 3;
    let secs = Duration::from_secs(5);
    let knotd = find_tool("knotd");
    let nginx = find_tool("nginx");
    let wrk = find_tool("wrk");
    // PEERS_ONLY=dns or PEERS_ONLY=router runs one half.
    let only = std::env::var("PEERS_ONLY").ok();
    let only = only.as_deref();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{rounds} rounds x {secs:?}, alternating; 1 server thread each; load: {LOAD_THREADS} thread x {FLOWS} sockets x {WINDOW} outstanding (DNS); HTTP: wrk -t1 -c16, h2load -t1 -c16 -m8"
    );
    let _ = writeln!(
        report,
        "{:<16} {:<12} {:<26} {:>8} {:>8} {:>8} {:>5} {:>9}",
        "test", "server", "rate per round", "median", "p50", "p99", "cpu", "per cpu-s"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    // The dyno: nginx answering 200 "ok", when there is an nginx.
    let dyno = nginx.as_ref().map(|nginx| Nginx::dyno(nginx, dir.path()));
    let dyno_addr = dyno.as_ref().map_or_else(
        || SocketAddr::new(SERVERS.into(), free_port(SERVERS.into())),
        |d| d.addr,
    );
    if only.is_none_or(|o| o == "dns") {
        let sr_dir = dir.path().join("spaceroute");
        std::fs::create_dir_all(&sr_dir).expect("mkdir");
        let sr = Spaceroute::start(&sr_dir, dyno_addr, None);
        let knot = knotd
            .as_ref()
            .map(|k| Knot::start(k, &dir.path().join("knot")));
        if knot.is_none() {
            println!("knotd not found (apt-get install -y knot): spaceroute's DNS runs alone");
        }
        let queries = Queries::new();

        for (test, run) in [
            ("dns udp", udp_load as LoadFn),
            ("dns tcp", tcp_load as LoadFn),
        ] {
            let mut servers = vec![("spaceroute", sr.dns, sr.pid())];
            if let Some(k) = &knot {
                servers.push(("knot", k.addr, k.proc.pid()));
            }
            let results = alternate(&servers, rounds, |&(name, addr, pid)| {
                let cpu = Cpu::start(pid);
                let r = run(addr, &queries, LOAD_THREADS, FLOWS, WINDOW, secs);
                let cpu = cpu.stop();
                println!("  {test} {name}: {}", r.summary(cpu));
                if r.wrong > 0 || r.lost > 0 {
                    println!(
                        "  warning: {test} {name}: {} wrong, {} lost",
                        r.wrong, r.lost
                    );
                }
                Round {
                    rate: r.qps(),
                    p50: r.percentile(0.5),
                    p99: r.percentile(0.99),
                    cpu,
                }
            });
            table(&mut report, test, &servers, &results, "knot");
        }
    }

    match (&nginx, &wrk, &dyno) {
        (Some(nginx), Some(wrk), Some(_)) if only.is_none_or(|o| o == "router") => {
            let tls_dir = dir.path().join("tls");
            let tls = TlsFiles::write(&tls_dir);
            let sr_dir = dir.path().join("spaceroute-router");
            std::fs::create_dir_all(&sr_dir).expect("mkdir");
            let sr = Spaceroute::start(&sr_dir, dyno_addr, Some(&tls));
            let front = Nginx::front(nginx, &dir.path().join("front"), dyno_addr, &tls);
            let h2load = find_tool("h2load");
            if h2load.is_none() {
                println!("h2load not found (apt-get install -y nghttp2-client): h2 skipped");
            }
            for mode in MODES {
                let client = match mode.client {
                    Client::Wrk => wrk.clone(),
                    Client::H2load => match &h2load {
                        Some(h2load) => h2load.clone(),
                        None => continue,
                    },
                };
                let port = |s: &Spaceroute| if mode.tls { s.https } else { s.http };
                let servers = [
                    ("spaceroute", port(&sr), sr.pid()),
                    (
                        "nginx",
                        if mode.tls { front.https } else { front.addr },
                        front.proc.pid(),
                    ),
                ];
                // Warm both up: connections to the dyno, caches.
                for (_, addr, _) in &servers {
                    let _ = http_load(&client, mode, *addr, Duration::from_secs(1));
                }
                let results = alternate(&servers, rounds, |&(name, addr, pid)| {
                    let cpu = Cpu::start(pid);
                    let w = http_load(&client, mode, addr, secs);
                    let cpu = cpu.stop();
                    println!(
                        "  {} {name}: {:.0} req/s, p50 {:.1?}, p99 {:.1?}, cpu {:.0}%{}",
                        mode.name,
                        w.rate,
                        w.p50,
                        w.p99,
                        cpu * 100.0,
                        if w.errors.is_empty() {
                            String::new()
                        } else {
                            format!(", ERRORS: {}", w.errors)
                        }
                    );
                    Round {
                        rate: w.rate,
                        p50: w.p50,
                        p99: w.p99,
                        cpu,
                    }
                });
                table(&mut report, mode.name, &servers, &results, "nginx");
            }
        }
        (Some(_), Some(_), Some(_)) => {}
        _ => println!("nginx or wrk not found (apt-get install -y nginx wrk): router skipped"),
    }
    println!("\n{report}");
}

/// Runs `measure` on each server in turn, `rounds` times; the results per server.
fn alternate<S, F: FnMut(&S) -> Round>(
    servers: &[S],
    rounds: usize,
    mut measure: F,
) -> Vec<Vec<Round>> {
    let mut results: Vec<Vec<Round>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, s) in servers.iter().enumerate() {
            results[i].push(measure(s));
        }
    }
    results
}

/// One measured round of one server.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Answers (or responses) per second.
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// The server's CPU time over wall time (1.0 = one core).
    cpu: f64,
}

/// Appends the rows of one test to `report`: each server's rounds and medians, then the ratio
/// of spaceroute (the first server) to `peer`.
fn table(
    report: &mut String,
    test: &str,
    servers: &[(&str, SocketAddr, u32)],
    results: &[Vec<Round>],
    peer: &str,
) {
    for ((name, _, _), rounds) in servers.iter().zip(results) {
        let per_round: Vec<String> = rounds.iter().map(|r| si(r.rate)).collect();
        let _ = writeln!(
            report,
            "{:<16} {:<12} {:<26} {:>8} {:>8.1?} {:>8.1?} {:>4.0}% {:>9}",
            test,
            name,
            per_round.join(" "),
            si(median(rounds.iter().map(|r| r.rate))),
            Duration::from_secs_f64(median(rounds.iter().map(|r| r.p50.as_secs_f64()))),
            Duration::from_secs_f64(median(rounds.iter().map(|r| r.p99.as_secs_f64()))),
            median(rounds.iter().map(|r| r.cpu)) * 100.0,
            si(median(rounds.iter().map(|r| r.rate / r.cpu.max(0.01)))),
        );
    }
    if let [ours, theirs] = results {
        let ratios: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| a.rate / b.rate)
            .collect();
        let per_cpu: Vec<f64> = (ours.iter().zip(theirs))
            .map(|(a, b)| (a.rate / a.cpu.max(0.01)) / (b.rate / b.cpu.max(0.01)))
            .collect();
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            report,
            "{:<16} spaceroute/{peer}: {:.2} (rounds {}), per cpu-s {:.2}",
            test,
            median(ratios.iter().copied()),
            shown.join(" "),
            median(per_cpu.into_iter()),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Whether a DNS server answers a query at `addr` over UDP.
fn answers_dns(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((ASKER, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let q = query_bytes("app-1.herokuapp.com.");
    let mut buf = [0u8; 1500];
    socket.send_to(&q, addr).is_ok() && socket.recv(&mut buf).is_ok()
}

fn accepts_tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// CPU time of a process and its descendants (nginx's workers), from `/proc`.
struct Cpu {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl Cpu {
    fn start(pid: u32) -> Cpu {
        Cpu {
            pid,
            ticks: tree_ticks(pid),
            at: Instant::now(),
        }
    }

    /// CPU seconds per wall second since `start`.
    fn stop(self) -> f64 {
        let used = tree_ticks(self.pid).saturating_sub(self.ticks);
        // USER_HZ is 100 on every Linux the bench runs on.
        used as f64 / 100.0 / self.at.elapsed().as_secs_f64()
    }
}

/// utime + stime of `pid` and its descendants, in clock ticks.
fn tree_ticks(pid: u32) -> u64 {
    (tree(pid).into_iter())
        .filter_map(|p| {
            // utime and stime: the 12th and 13th fields after the command name.
            let f = stat_fields(p)?;
            Some(f.get(11)? + f.get(12)?)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The servers

/// The `spaceroute serve` binary with one runtime worker thread, writing its request log.
struct Spaceroute {
    proc: Proc,
    dns: SocketAddr,
    http: SocketAddr,
    /// With `tls`, else unused.
    https: SocketAddr,
}

impl Spaceroute {
    /// Writes the space into `dir` and serves it, over HTTPS too with `tls`.
    fn start(dir: &Path, dyno: SocketAddr, tls: Option<&TlsFiles>) -> Spaceroute {
        let zones = dir.join("zones");
        std::fs::create_dir_all(&zones).expect("mkdir");
        std::fs::write(zones.join("bench.yaml"), space_yaml(dyno)).expect("write space");
        let dns = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
        let http = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
        let https = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spaceroute"));
        cmd.arg("serve")
            .arg("--zones")
            .arg(&zones)
            .args(["--dns", &dns.to_string(), "--http", &http.to_string()])
            .args(["--dns-workers", "1"])
            .env("TOKIO_WORKER_THREADS", "1")
            .env("SPACEROUTE_LOG", "info");
        if let Some(tls) = tls {
            cmd.args(["--https", &https.to_string()])
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
        }
        let mut proc = Proc::spawn("spaceroute", &mut cmd, &dir.join("spaceroute.log"));
        proc.wait_until("answering dns", || answers_dns(dns));
        proc.wait_until("accepting http", || accepts_tcp(http));
        Spaceroute {
            proc,
            dns,
            http,
            https,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// A self-signed certificate for `*.herokuapp.com` and its key, as PEM files.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn write(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("mkdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["*.herokuapp.com".to_string()])
            .expect("certificate parameters");
        let cert = params.self_signed(&key).expect("certificate");
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// The space: `app-N` for N < [`APPS`] under herokuapp.com, each with one web dyno at `dyno`.
fn space_yaml(dyno: SocketAddr) -> String {
    let mut yaml = format!(
        "space: bench\n\
         domain: herokuapp.com\n\
         network: 127.16.0.0/16\n\
         peers:\n  - {{name: office, cidrs: [127.0.0.0/24]}}\n\
         router: {{private: [{}]}}\n\
         ttl: 60\n\
         nameservers:\n  - {{name: ns1.bench.internal, ip: 127.16.0.2}}\n\
         apps:\n",
        ROUTER_IPS.join(", ")
    );
    for n in 0..APPS {
        let _ = write!(
            yaml,
            "  - name: app-{n}\n    dynos:\n      - {{name: web.1, ip: {}, port: {}}}\n",
            dyno.ip(),
            dyno.port()
        );
    }
    yaml
}

/// `knotd` serving the equivalent herokuapp.com zone with one worker of each kind.
struct Knot {
    proc: Proc,
    addr: SocketAddr,
}

impl Knot {
    fn start(knotd: &Path, dir: &Path) -> Knot {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut zone = String::from(
            "$ORIGIN herokuapp.com.\n$TTL 60\n\
             @ 60 IN SOA ns1.bench.internal. hostmaster.herokuapp.com. 1 3600 600 86400 60\n\
             @ 60 IN NS ns1.bench.internal.\n",
        );
        for n in 0..APPS {
            for ip in ROUTER_IPS {
                let _ = writeln!(zone, "app-{n} 60 IN A {ip}");
            }
        }
        std::fs::write(dir.join("herokuapp.com.zone"), zone).expect("write zone");
        let addr = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
        let d = dir.display();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: {}@{}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
             log:\n  - target: stderr\n    any: warning\n\
             database:\n    storage: \"{d}\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n\
             zone:\n  - domain: herokuapp.com\n    file: herokuapp.com.zone\n",
            addr.ip(),
            addr.port()
        );
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf).expect("write knot.conf");
        let mut cmd = Command::new(knotd);
        cmd.arg("-c").arg(&conf_path);
        let mut proc = Proc::spawn("knotd", &mut cmd, &dir.join("knotd.log"));
        proc.wait_until("answering dns", || answers_dns(addr));
        Knot { proc, addr }
    }
}

/// An nginx with one worker: the dyno, or the reverse proxy in front of it.
struct Nginx {
    proc: Proc,
    addr: SocketAddr,
    /// The front's HTTPS (HTTP/1.1 and h2) listener; unused for the dyno.
    https: SocketAddr,
}

impl Nginx {
    /// The dyno: `return 200 "ok"` on every path.
    fn dyno(nginx: &Path, dir: &Path) -> Nginx {
        let dir = dir.join("dyno");
        Nginx::start(
            nginx,
            &dir,
            "access_log off;\n",
            "location / { default_type text/plain; return 200 \"ok\"; }",
            None,
        )
    }

    /// The reverse proxy: like spaceroute's router, keep-alive connections to the dyno, the
    /// forwarding headers and one access-log line per request; HTTPS with `tls` as well, with
    /// a session cache as spaceroute keeps one.
    fn front(nginx: &Path, dir: &Path, dyno: SocketAddr, tls: &TlsFiles) -> Nginx {
        let http = format!(
            "log_format router 'at=info method=$request_method path=\"$request_uri\" \
             host=$host request_id=$request_id fwd=\"$remote_addr\" dyno=web.1 \
             connect=$upstream_connect_time service=$upstream_response_time \
             status=$status bytes=$bytes_sent protocol=$scheme';\n\
             access_log {}/access.log router;\n\
             upstream dyno {{ server {dyno}; keepalive 32; keepalive_requests 1000000; }}\n\
             ssl_certificate {};\n\
             ssl_certificate_key {};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             ssl_session_cache shared:tls:10m;\n",
            dir.display(),
            tls.cert.display(),
            tls.key.display(),
        );
        Nginx::start(
            nginx,
            dir,
            &http,
            "location / {\n\
             proxy_pass http://dyno;\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
             proxy_set_header X-Forwarded-Port $server_port;\n\
             proxy_set_header X-Request-Start $msec;\n\
             proxy_set_header X-Request-Id $request_id;\n\
             proxy_set_header Via \"1.1 nginx\";\n\
             }",
            Some(SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()))),
        )
    }

    fn start(
        nginx: &Path,
        dir: &Path,
        http: &str,
        location: &str,
        https: Option<SocketAddr>,
    ) -> Nginx {
        std::fs::create_dir_all(dir).expect("mkdir");
        let addr = SocketAddr::new(SERVERS.into(), free_port(SERVERS.into()));
        // Started by root, nginx runs its worker as nobody, who may not reach a private
        // temporary directory: keep the worker as the user we are.
        use std::os::unix::fs::MetadataExt;
        let user = if std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(1) == 0 {
            "user root;\n"
        } else {
            ""
        };
        let d = dir.display();
        let listen_https = https.map_or(String::new(), |a| format!("listen {a} ssl http2;\n"));
        let conf = format!(
            "{user}worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n\
             {http}\
             server {{\n listen {addr};\n {listen_https} {location}\n }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        let mut proc = Proc::spawn("nginx", &mut cmd, &dir.join("stderr.log"));
        proc.wait_until("accepting http", || accepts_tcp(addr));
        Nginx {
            proc,
            addr,
            https: https.unwrap_or(addr),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wrk and h2load

/// The HTTP load generator of a mode.
#[derive(Debug, Clone, Copy)]
enum Client {
    Wrk,
    H2load,
}

/// One way of loading the router.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    client: Client,
    tls: bool,
    /// A new connection (and, over TLS, a handshake) per request.
    close: bool,
}

const MODES: [Mode; 5] = [
    Mode {
        name: "http keep-alive",
        client: Client::Wrk,
        tls: false,
        close: false,
    },
    Mode {
        name: "http conn/req",
        client: Client::Wrk,
        tls: false,
        close: true,
    },
    Mode {
        name: "https keep-alive",
        client: Client::Wrk,
        tls: true,
        close: false,
    },
    Mode {
        name: "https conn/req",
        client: Client::Wrk,
        tls: true,
        close: true,
    },
    Mode {
        name: "h2 over tls",
        client: Client::H2load,
        tls: true,
        close: false,
    },
];

/// What the load generator measured.
struct Http {
    rate: f64,
    /// wrk's median; h2load's mean.
    p50: Duration,
    /// wrk's 99th percentile; h2load's maximum.
    p99: Duration,
    /// wrk's "Non-2xx" and "Socket errors" lines, h2load's failures, if any.
    errors: String,
}

/// Runs `client` (the path of wrk or h2load, per `mode`) against `addr` for `secs`:
/// 16 connections from one thread, `Host: app-0.herokuapp.com`.
fn http_load(client: &Path, mode: Mode, addr: SocketAddr, secs: Duration) -> Http {
    assert!(addr.ip().is_loopback());
    let out =
        std::env::temp_dir().join(format!("spaceroute-peers-http-{}.txt", std::process::id()));
    let scheme = if mode.tls { "https" } else { "http" };
    let mut cmd = Command::new(client);
    match mode.client {
        Client::Wrk => {
            cmd.args(["-t1", "-c16", "--latency", "--timeout", "5s"])
                .arg(format!("-d{}s", secs.as_secs()))
                .args(["-H", "Host: app-0.herokuapp.com"]);
            if mode.close {
                cmd.args(["-H", "Connection: close"]);
            }
        }
        Client::H2load => {
            cmd.args(["-t1", "-c16", "-m8", "-D"])
                .arg(secs.as_secs().to_string())
                .args(["-H", ":authority: app-0.herokuapp.com"]);
        }
    }
    cmd.arg(format!("{scheme}://{addr}/"));
    let mut proc = Proc::spawn("http load", &mut cmd, &out);
    assert!(
        proc.wait_exit(secs + Duration::from_secs(15)).is_some(),
        "the load generator did not finish"
    );
    let text = proc.log_text();
    drop(proc);
    let _ = std::fs::remove_file(&out);
    let field = |prefix: &str| {
        (text.lines())
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {prefix:?} in the output:\n{text}"))
    };
    match mode.client {
        Client::Wrk => {
            let errors: Vec<&str> = (text.lines())
                .map(str::trim)
                .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
                .collect();
            Http {
                rate: field("Requests/sec:").parse().expect("Requests/sec"),
                p50: wrk_duration(field("50%")),
                p99: wrk_duration(field("99%")),
                errors: errors.join("; "),
            }
        }
        Client::H2load => {
            // "finished in 5.00s, 51234.20 req/s, 1.2MB/s"
            let finished = field("finished in");
            let rate = (finished.split(", ").nth(1))
                .and_then(|r| r.strip_suffix(" req/s"))
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("h2load rate in {finished:?}"));
            // "time for request:  123us  4.56ms  310us  180us  85.12%": min max mean sd.
            let times: Vec<&str> = field("time for request:").split_whitespace().collect();
            // "requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout"
            let requests = field("requests:");
            let failed = ["failed", "errored", "timeout"]
                .iter()
                .filter(|what| !requests.contains(&format!(" 0 {what}")))
                .count();
            Http {
                rate,
                p50: wrk_duration(times[2]),
                p99: wrk_duration(times[1]),
                errors: if failed > 0 {
                    requests.to_string()
                } else {
                    String::new()
                },
            }
        }
    }
}

/// "812.00us", "1.23ms", "2.00s" (wrk, h2load) → a duration.
fn wrk_duration(s: &str) -> Duration {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        panic!("wrk duration {s:?}")
    };
    Duration::from_secs_f64(number.parse::<f64>().expect("wrk number") * scale)
}

// ---------------------------------------------------------------------------------------------
// The DNS load generator

/// A load function: server, queries, threads, flows per thread, window per flow, duration.
type LoadFn = fn(SocketAddr, &Queries, usize, usize, usize, Duration) -> Load;

/// Queries in wire form, drawn at random once: most for apps, some for names that do not exist.
struct Queries {
    /// The message (ID 0) and whether NXDOMAIN is the right answer.
    list: Vec<(Vec<u8>, bool)>,
}

impl Queries {
    fn new() -> Queries {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let list = (0..8192)
            .map(|_| {
                let n = rng.next() % APPS as u64;
                if rng.next() % 100 < NXDOMAIN_PERCENT {
                    (
                        query_bytes(&format!("nx-{n}-{}.herokuapp.com.", rng.next() % 100_000)),
                        true,
                    )
                } else {
                    (query_bytes(&format!("app-{n}.herokuapp.com.")), false)
                }
            })
            .collect();
        Queries { list }
    }
}

/// An A query with EDNS (1232 bytes, as resolvers send), RD clear, ID 0.
fn query_bytes(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m.to_vec().expect("encode")
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Load {
    answered: u64,
    /// Replies with a known ID but the wrong rcode, no QR or no answer.
    wrong: u64,
    /// Queries that got no reply within a second (or whose connection broke).
    lost: u64,
    elapsed: Duration,
    /// Send-to-reply latencies in nanoseconds, sorted.
    latencies: Vec<u32>,
}

impl Load {
    fn qps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len().max(1) - 1) as f64 * p) as usize;
        Duration::from_nanos(self.latencies.get(i).copied().unwrap_or(0).into())
    }

    fn merge(&mut self, other: Load) {
        self.answered += other.answered;
        self.wrong += other.wrong;
        self.lost += other.lost;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.extend(other.latencies);
    }

    fn summary(&self, cpu: f64) -> String {
        format!(
            "{:.0} qps, p50 {:.1?}, p99 {:.1?}, server cpu {:.0}%",
            self.qps(),
            self.percentile(0.5),
            self.percentile(0.99),
            cpu * 100.0
        )
    }
}

/// The queries one flow (socket or connection) has outstanding, by ID.
struct Pending {
    sent: Vec<Option<(Instant, bool)>>,
    order: VecDeque<(u16, Instant)>,
    outstanding: usize,
    next_id: u16,
}

impl Pending {
    fn new(start_id: u16) -> Pending {
        Pending {
            sent: vec![None; 65_536],
            order: VecDeque::new(),
            outstanding: 0,
            next_id: start_id,
        }
    }

    /// Takes a query from `queries` at `pick`, stamps the next free ID; the bytes to send.
    fn next<'q>(
        &mut self,
        queries: &Queries,
        pick: usize,
        buf: &'q mut Vec<u8>,
        now: Instant,
    ) -> &'q [u8] {
        let (bytes, nx) = &queries.list[pick % queries.list.len()];
        while self.sent[usize::from(self.next_id)].is_some() {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.sent[usize::from(id)] = Some((now, *nx));
        self.order.push_back((id, now));
        self.outstanding += 1;
        buf.clear();
        buf.extend_from_slice(bytes);
        buf[..2].copy_from_slice(&id.to_be_bytes());
        buf
    }

    /// Checks a reply to an outstanding query: a right one adds its latency to `load`, a wrong
    /// one counts as wrong.
    fn reply(&mut self, reply: &[u8], now: Instant, load: &mut Load) {
        if reply.len() < 12 {
            load.wrong += 1;
            return;
        }
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        let Some((sent, nx)) = self.sent[usize::from(id)].take() else {
            return; // a late reply to a query already counted lost
        };
        self.outstanding -= 1;
        let qr = reply[2] & 0x80 != 0;
        let rcode = reply[3] & 0x0f;
        let answers = u16::from_be_bytes([reply[6], reply[7]]);
        let right = qr
            && if nx {
                rcode == 3
            } else {
                rcode == 0 && answers > 0
            };
        if right {
            load.answered += 1;
            let ns = now.duration_since(sent).as_nanos();
            load.latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
        } else {
            load.wrong += 1;
        }
    }

    /// Forgets queries sent more than `limit` ago, counting them lost.
    fn expire(&mut self, now: Instant, limit: Duration, load: &mut Load) {
        while let Some(&(id, at)) = self.order.front() {
            match self.sent[usize::from(id)] {
                Some((sent, _)) if sent == at => {
                    if now.duration_since(at) < limit {
                        break;
                    }
                    self.sent[usize::from(id)] = None;
                    self.outstanding -= 1;
                    load.lost += 1;
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }
}

/// Runs `threads` × `flows` UDP sockets against `server` for `secs`, each keeping `window`
/// queries outstanding.
fn udp_load(
    server: SocketAddr,
    queries: &Queries,
    threads: usize,
    flows: usize,
    window: usize,
    secs: Duration,
) -> Load {
    assert!(server.ip().is_loopback(), "load goes to loopback only");
    let mut total = Load::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || udp_thread(server, queries, t, flows, window, secs)))
            .collect();
        for h in handles {
            total.merge(h.join().expect("load thread"));
        }
    });
    total.latencies.sort_unstable();
    total
}

fn udp_thread(
    server: SocketAddr,
    queries: &Queries,
    thread: usize,
    flows: usize,
    window: usize,
    secs: Duration,
) -> Load {
    let mut load = Load::default();
    let mut sockets: Vec<(UdpSocket, Pending)> = (0..flows)
        .map(|f| {
            let socket = UdpSocket::bind((ASKER, 0)).expect("bind the asker's address");
            socket.connect(server).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            (socket, Pending::new((f * 4096) as u16))
        })
        .collect();
    let mut pick = thread * 1009;
    let mut out = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let end = start + secs;
    for (socket, pending) in &mut sockets {
        for _ in 0..window {
            pick += 1;
            let q = pending.next(queries, pick, &mut out, Instant::now());
            let _ = socket.send(q);
        }
    }
    let mut loops = 0u64;
    'run: loop {
        for (socket, pending) in &mut sockets {
            let got = socket.recv(&mut buf);
            let now = Instant::now();
            if now >= end {
                break 'run;
            }
            if let Ok(n) = got {
                pending.reply(&buf[..n], now, &mut load);
            }
            loops += 1;
            if got.is_err() || loops.is_multiple_of(1024) {
                pending.expire(now, Duration::from_secs(1), &mut load);
            }
            while pending.outstanding < window {
                pick += 1;
                let q = pending.next(queries, pick, &mut out, now);
                let _ = socket.send(q);
            }
        }
    }
    load.elapsed = start.elapsed();
    load
}

/// Runs `threads` × `flows` TCP connections against `server` for `secs`, each pipelining
/// `window` queries.
fn tcp_load(
    server: SocketAddr,
    queries: &Queries,
    threads: usize,
    flows: usize,
    window: usize,
    secs: Duration,
) -> Load {
    assert!(server.ip().is_loopback(), "load goes to loopback only");
    let mut total = Load::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || tcp_thread(server, queries, t, flows, window, secs)))
            .collect();
        for h in handles {
            total.merge(h.join().expect("load thread"));
        }
    });
    total.latencies.sort_unstable();
    total
}

/// A TCP connection from the asker's address (std cannot bind before connect, so the source is
/// 127.0.0.1 here: inside the space's peer 127.0.0.0/24).
fn tcp_connect(server: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let reader = BufReader::with_capacity(16 * 1024, stream.try_clone().expect("clone"));
    (stream, reader)
}

fn tcp_thread(
    server: SocketAddr,
    queries: &Queries,
    thread: usize,
    flows: usize,
    window: usize,
    secs: Duration,
) -> Load {
    let mut load = Load::default();
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>, Pending)> = (0..flows)
        .map(|f| {
            let (w, r) = tcp_connect(server);
            (w, r, Pending::new((f * 4096) as u16))
        })
        .collect();
    let mut pick = thread * 1009;
    let mut out = Vec::with_capacity(512);
    let mut framed = Vec::with_capacity(512);
    let mut buf = vec![0u8; 65_535];
    let start = Instant::now();
    let end = start + secs;
    let send = |w: &mut TcpStream, framed: &mut Vec<u8>, q: &[u8]| {
        framed.clear();
        framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
        framed.extend_from_slice(q);
        w.write_all(framed)
    };
    for (w, _, pending) in &mut conns {
        for _ in 0..window {
            pick += 1;
            let q = pending.next(queries, pick, &mut out, Instant::now());
            send(w, &mut framed, q).expect("tcp send");
        }
    }
    'run: loop {
        for (w, r, pending) in &mut conns {
            let mut len = [0u8; 2];
            let got = r.read_exact(&mut len).and_then(|()| {
                let n = usize::from(u16::from_be_bytes(len));
                r.read_exact(&mut buf[..n]).map(|()| n)
            });
            let now = Instant::now();
            if now >= end {
                break 'run;
            }
            match got {
                Ok(n) => pending.reply(&buf[..n], now, &mut load),
                Err(_) => {
                    // A broken or stalled connection: its queries are lost; start over.
                    load.lost += pending.outstanding as u64;
                    *pending = Pending::new(pending.next_id);
                    (*w, *r) = tcp_connect(server);
                }
            }
            let mut failed = false;
            while pending.outstanding < window && !failed {
                pick += 1;
                let q = pending.next(queries, pick, &mut out, now);
                failed = send(w, &mut framed, q).is_err();
            }
        }
    }
    load.elapsed = start.elapsed();
    load
}
