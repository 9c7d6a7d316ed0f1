//! Reload cost at scale: how long a reload of 1k, 10k and 100k apps takes (load + validate +
//! compile + swap), and how long queries wait while snapshots are swapped under them.
//!
//! Run: `cargo bench --bench reload`. Under `cargo test` (no `--bench` argument) it runs once
//! on 1k apps as a smoke test. It is a plain `harness = false` program rather than criterion:
//! the numbers are single reloads of seconds, not nanosecond loops, and CI builds every bench
//! target, so criterion's compile time would buy nothing here.
//!
//! Last result (2026-11-23, the 2-core workplace VM, quiet, release build; reload = median of 3):
//!
//! ```text
//! apps     files  first load   reload (median)  query p50 / p99 / max during swaps  (idle p99)
//! 1000     1      18.6ms       18.4ms           1.3µs / 1.8µs / 83.7µs  (1.6µs)
//! 10000    10     174.5ms      185.2ms          1.3µs / 2.5µs / 4.1ms  (2.4µs)
//! 100000   100    1.8s         2.1s             1.3µs / 2.3µs / 4.5ms  (3.0µs)
//! ```
//!
//! Queries never wait for a reload (the swap is one pointer store; p99 during swaps equals
//! idle). The max is scheduling on two cores shared by the reload thread, the query thread and
//! the OS; before the old snapshot was freed on the reload thread it was 145 ms at 100k apps,
//! the time to free 100k apps on the query that held the last reference.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use spaceroute::dns::answer::{Transport, answer};
use spaceroute::reload::{Reloaded, Reloader};

/// Writes `apps` apps into space files of 1000 apps each, every app with a custom domain and
/// two dynos.
fn write_spaces(dir: &Path, apps: usize) {
    for space in 0..apps.div_ceil(1000) {
        let mut yaml = format!(
            "space: s{space}\nnetwork: 10.{}.{}.0/24\npeers:\n  - {{name: vpn, cidrs: [172.16.{}.0/24]}}\nrouter: {{private: [10.255.0.{}]}}\napps:\n",
            space / 256,
            space % 256,
            space % 256,
            space % 250 + 1
        );
        for app in (space * 1000)..((space + 1) * 1000).min(apps) {
            let _ = write!(
                yaml,
                "  - name: app-{app}\n    domains: [app-{app}.corp{space}.example.com]\n    dynos:\n      - {{name: web.1, ip: 10.1.0.1, port: 5000}}\n      - {{name: web.2, ip: 10.1.0.2, port: 5000}}\n"
            );
        }
        std::fs::write(dir.join(format!("s{space}.yaml")), yaml).expect("write space file");
    }
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000]
    };
    let rounds = if full { 3 } else { 1 };
    println!(
        "apps     files  first load   reload (median)  query p50 / p99 / max during swaps  (idle p99)"
    );
    for &apps in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        write_spaces(dir.path(), apps);
        let started = Instant::now();
        let reloader = Arc::new(Reloader::load(dir.path()).expect("valid"));
        let first = started.elapsed();

        // Queries from one thread while the main thread reloads.
        let q = query("app-7.herokuapp.com.");
        let from = "10.0.0.5".parse().expect("ip");
        let snapshot = reloader.snapshot();
        let measure = |stop: &AtomicBool| {
            let mut waits = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let a = answer(&snapshot.load(), from, Transport::Udp, &q);
                waits.push(t.elapsed());
                assert!(a.reply.is_some());
            }
            waits.sort();
            waits
        };
        let stop = AtomicBool::new(false);
        let (reloads, busy) = std::thread::scope(|s| {
            let h = s.spawn(|| measure(&stop));
            let mut reloads = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                assert!(matches!(reloader.reload(), Reloaded::Swapped { .. }));
                reloads.push(t.elapsed());
            }
            stop.store(true, Ordering::Relaxed);
            (reloads, h.join().expect("query thread"))
        });
        let stop = AtomicBool::new(false);
        let idle = std::thread::scope(|s| {
            let h = s.spawn(|| measure(&stop));
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            h.join().expect("query thread")
        });
        println!(
            "{apps:<8} {:<6} {:<12.1?} {:<16.1?} {:.1?} / {:.1?} / {:.1?}  ({:.1?})",
            apps.div_ceil(1000),
            first,
            median(reloads),
            percentile(&busy, 0.5),
            percentile(&busy, 0.99),
            busy.last().copied().unwrap_or_default(),
            percentile(&idle, 0.99),
        );
    }
}
