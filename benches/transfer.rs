//! Zone transfer of a large view: `kdig AXFR` of `herokuapp.com` with N apps, signed with TSIG,
//! from spaceroute (a space file with N apps and one secondary) and from Knot serving the same
//! zone as a primary (a zone file with the same N A records, the same key).
//!
//! For each server: the transfer's wall time as kdig sees it (median of `XFR_ROUNDS`, default
//! 3, interleaved), messages and bytes, and the peak memory the transfer adds (the kernel's
//! peak RSS is reset through `/proc/PID/clear_refs` after the load; the line is the peak during
//! the transfers minus the RSS before). Ratios are spaceroute over Knot.
//!
//! Run: `cargo bench --bench transfer` (N = 100,000), `XFR_APPS=1000000 cargo bench --bench
//! transfer` for the line (needs `kdig` and `knotd`). Under `cargo test` (no `--bench`
//! argument) it transfers 1,000 apps from spaceroute alone and checks the record count. All
//! traffic stays on 127.0.0.0/8; every process started is stopped by PID.

use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Proc, find_tool, free_port, median};

const SECRET: &str = "c3BhY2Vyb3V0ZS1iZW5jaC10cmFuc2Zlci1rZXktMTIzNA==";
/// The secondary's address, inside the space's network.
const SECONDARY: &str = "127.16.9.1";

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let apps: usize = match std::env::var("XFR_APPS") {
        Ok(n) => n.parse().expect("XFR_APPS is a number"),
        Err(_) if bench => 100_000,
        Err(_) => 1_000,
    };
    let rounds: usize = std::env::var("XFR_ROUNDS").map_or(3, |n| n.parse().expect("a number"));
    let Some(kdig) = find_tool("kdig") else {
        println!("transfer: kdig not found (apt-get install -y knot-dnsutils); skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path(), apps);

    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut servers = vec![spaceroute(dir.path(), port)];
    if bench {
        match find_tool("knotd") {
            Some(knotd) => servers.push(knot(dir.path(), &knotd)),
            None => println!("transfer: knotd not found; spaceroute alone"),
        }
    }
    let mut results: Vec<Vec<Transfer>> = servers.iter().map(|_| Vec::new()).collect();
    let before: Vec<u64> = servers.iter().map(|s| reset_peak(s.proc.pid())).collect();
    for _ in 0..rounds.max(1) {
        for (i, server) in servers.iter().enumerate() {
            results[i].push(transfer(&kdig, server.port));
        }
    }
    println!("\nAXFR of herokuapp.com with {apps} apps, TSIG hmac-sha256, {rounds} rounds");
    println!(
        "{:<12} {:>9} {:>9} {:>11} {:>13}",
        "server", "time", "messages", "bytes", "peak +RSS"
    );
    let mut times = Vec::new();
    for ((server, runs), rss_before) in servers.iter().zip(&results).zip(&before) {
        let time = median(runs.iter().map(|t| t.seconds));
        let added = peak(server.proc.pid()).saturating_sub(*rss_before);
        let last = &runs[runs.len() - 1];
        assert_eq!(last.records, apps + 3, "{}: records", server.name);
        println!(
            "{:<12} {:>8.2}s {:>9} {:>11} {:>10} MB",
            server.name,
            time,
            last.messages,
            last.bytes,
            added / 1024
        );
        times.push(time);
    }
    if times.len() == 2 {
        println!("time spaceroute / knot: {:.2}", times[0] / times[1]);
    }
}

/// A server under test.
struct Server {
    name: &'static str,
    port: u16,
    proc: Proc,
}

/// What kdig reported for one transfer.
struct Transfer {
    seconds: f64,
    messages: usize,
    bytes: usize,
    records: usize,
}

/// The space file with `apps` apps (every 10th standard) and a secondary, its key file, and the
/// same view as a zone file for Knot.
fn generate(dir: &Path, apps: usize) {
    let spaces = dir.join("spaces");
    std::fs::create_dir_all(&spaces).expect("mkdir");
    std::fs::write(spaces.join("xfr.key"), SECRET).expect("key");
    let mut space = BufWriter::new(std::fs::File::create(spaces.join("big.yaml")).expect("yaml"));
    let mut zone = BufWriter::new(std::fs::File::create(dir.join("zone")).expect("zone"));
    let _ = write!(
        space,
        "space: big\nserial: 5\nnetwork: 127.16.0.0/16\n\
         router: {{private: [127.16.0.10], public: [127.100.0.10]}}\n\
         nameservers: [{{name: ns1.big.internal, ip: 127.16.0.2}}]\n\
         secondaries:\n  - name: kdig\n    addresses: [{SECONDARY}]\n\
         \x20   key: {{name: xfr, file: xfr.key}}\n    audience: space\napps:\n"
    );
    let _ = write!(
        zone,
        "$ORIGIN herokuapp.com.\n$TTL 60\n\
         @ IN SOA ns1.big.internal. hostmaster.big.spaceroute.internal. 5 14400 3600 604800 60\n\
         @ IN NS ns1.big.internal.\n"
    );
    for n in 0..apps {
        let _ = writeln!(space, "  - name: app-{n:07}");
        if n % 10 == 0 {
            let _ = writeln!(space, "    internal_routing: false");
        }
        let _ = writeln!(zone, "app-{n:07} IN A 127.16.0.10");
    }
    space.flush().expect("write");
    zone.flush().expect("write");
}

fn spaceroute(dir: &Path, port: u16) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spaceroute"));
    cmd.args([
        "serve",
        "--dns",
        &format!("127.0.0.1:{port}"),
        "--http",
        "127.0.0.1:0",
    ])
    .arg("--zones")
    .arg(dir.join("spaces"));
    let mut proc = Proc::spawn("spaceroute", &mut cmd, &dir.join("spaceroute.log"));
    let log = dir.join("spaceroute.log");
    proc.wait_until("loaded", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("compiled the zones directory"))
    });
    Server {
        name: "spaceroute",
        port,
        proc,
    }
}

fn knot(dir: &Path, knotd: &Path) -> Server {
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let d = dir.display();
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
         database:\n    storage: \"{d}\"\n\
         key:\n  - id: xfr\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
         acl:\n  - id: xfr\n    address: {SECONDARY}\n    key: xfr\n    action: transfer\n\
         zone:\n  - domain: herokuapp.com\n    file: \"{d}/zone\"\n    acl: xfr\n\
         \x20   zonefile-sync: -1\n"
    );
    std::fs::write(dir.join("knot.conf"), conf).expect("knot.conf");
    let mut cmd = Command::new(knotd);
    cmd.arg("-c").arg(dir.join("knot.conf"));
    let mut proc = Proc::spawn("knotd", &mut cmd, &dir.join("knot.log"));
    let log = dir.join("knot.log");
    proc.wait_until("loaded", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("loaded, serial"))
    });
    Server {
        name: "knot",
        port,
        proc,
    }
}

/// One `kdig AXFR` from the secondary's address with the key; what it reported.
fn transfer(kdig: &Path, port: u16) -> Transfer {
    let started = Instant::now();
    let out = Command::new(kdig)
        .args(["@127.0.0.1", "-p", &port.to_string(), "-b", SECONDARY])
        .args(["-y", &format!("hmac-sha256:xfr:{SECRET}")])
        .args(["AXFR", "herokuapp.com.", "+noall", "+stats", "+time=60"])
        .output()
        .expect("kdig");
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    // ";; Received 36867444 B (2874 messages, 1000003 records)"
    let line = text
        .lines()
        .find(|l| l.contains(";; Received"))
        .unwrap_or_else(|| {
            panic!("kdig: {text}{}", String::from_utf8_lossy(&out.stderr));
        });
    let numbers: Vec<usize> = (line.split(|c: char| !c.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(numbers.len() >= 3, "{line}");
    Transfer {
        seconds,
        bytes: numbers[0],
        messages: numbers[1],
        records: numbers[2],
    }
}

/// Resets the process's peak RSS to its current RSS; returns that RSS in kB.
fn reset_peak(pid: u32) -> u64 {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    std::thread::sleep(Duration::from_millis(50));
    status_kb(pid, "VmRSS:")
}

/// The process's peak RSS since the reset, in kB.
fn peak(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
