//! Issue 11: standard secondaries follow spaceroute per audience, with real programs on
//! loopback. Knot DNS follows space alpha's own view from its catalog zone and one key, hears of
//! each edit by NOTIFY and takes it by IXFR; a second Knot with space beta's key gets beta's view
//! and none of alpha's; BIND follows the public view; kdig shows that no request without the
//! right key, from the right address, over TCP, gets any data.
//!
//! Every test is `#[ignore]` (they need knotd, named and kdig); `.ci/run` runs them. The
//! secondaries' addresses play networks as everywhere else: 127.16.9.1 is inside alpha's
//! network, 127.17.9.1 inside beta's, 127.200.9.1 is public.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Binary, SPACE, data, udp};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const SECRET_A: &str = "c3BhY2Vyb3V0ZS10ZXN0LWtleS1mb3Itc3BhY2UtYWxwaGE=";
const SECRET_B: &str = "c3BhY2Vyb3V0ZS10ZXN0LWtleS1mb3Itc3BhY2UtYmV0YQ==";
const SECRET_PUBLIC: &str = "c3BhY2Vyb3V0ZS10ZXN0LWtleS1mb3ItdGhlLXB1YmxpYw==";
/// Where each secondary sends from and listens.
const KNOT_A: &str = "127.16.9.1";
const KNOT_B: &str = "127.17.9.1";
const BIND_PUBLIC: &str = "127.200.9.1";
const PUBLIC_ASKER: &str = "127.200.0.1";

/// A port free for UDP and TCP on `ip` right now.
fn free_port(ip: &str) -> u16 {
    for _ in 0..32 {
        let udp = UdpSocket::bind((ip, 0)).expect("bind udp on loopback");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// The spaces: alpha (its own network 127.16/16, peer vpn 127.32/16) with a trusted and a
/// public zone file, a bulk zone of 3,000 names (a transfer of several messages), internal,
/// peer-only and standard apps; beta (127.17/16) with one app. Each has its secondaries.
fn spaces(dir: &Path, ports: &Ports) {
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    w(
        "alpha.yaml",
        &format!(
            "space: alpha
serial: 2026113001
network: 127.16.0.0/16
peers:
  - {{name: vpn, cidrs: [127.32.0.0/16]}}
router: {{private: [127.16.0.10], public: [127.200.9.9]}}
nameservers: [{{name: ns1.herokuapp.com, ip: 127.16.0.2}}]
public: {{serial: 2026110101, nameservers: [{{name: ns.public.example, ip: 127.200.5.53}}]}}
zones:
  - file: corp.example.com.zone
  - file: corp.example.com.public.zone
    audience: public
  - file: bulk.example.com.zone
apps:
  - name: internal-app
  - name: vpn-only
    allow: [vpn]
    domains: [api.corp.example.com]
  - name: open-app
    internal_routing: false
    domains: [open.example.org, \"*.wild.example.org\"]
secondaries:
  - name: knot-a
    addresses: [\"{KNOT_A}:{}\"]
    key: {{name: xfr-a, file: xfr-a.key}}
    audience: space
  - name: bind-public
    addresses: [{BIND_PUBLIC}]
    notify: [\"127.0.0.1:{}\"]
    key: {{name: xfr-public, algorithm: hmac-sha256, file: xfr-public.key}}
    audience: public
",
            ports.knot_a, ports.bind
        ),
    );
    w(
        "beta.yaml",
        &format!(
            "space: beta
serial: 7
network: 127.17.0.0/16
router: {{private: [127.17.0.10]}}
apps:
  - name: beta-app
secondaries:
  - name: knot-b
    addresses: [\"{KNOT_B}:{}\"]
    key: {{name: xfr-b, file: xfr-b.key}}
    audience: space
",
            ports.knot_b
        ),
    );
    w(
        "corp.example.com.zone",
        "$TTL 300\n@ IN SOA ns1 hostmaster 2026112301 3600 600 604800 120\n@ IN NS ns1\n\
         ns1 IN A 127.16.5.1\nwww IN A 127.16.5.5\n@ IN MX 10 www\ntxt IN TXT \"private words\"\n",
    );
    w(
        "corp.example.com.public.zone",
        "$TTL 300\n@ IN SOA ns1 hostmaster 2026112301 3600 600 604800 120\n@ IN NS ns1\n\
         ns1 IN A 127.200.5.1\nwww IN A 127.200.5.5\n",
    );
    let mut bulk = String::from(
        "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 604800 120\n@ IN NS ns1\nns1 IN A 127.16.6.1\n",
    );
    for i in 0..3000 {
        bulk.push_str(&format!(
            "host-{i} IN A 127.16.{}.{}\n",
            7 + i / 250,
            i % 250 + 1
        ));
    }
    w("bulk.example.com.zone", &bulk);
    w("xfr-a.key", &format!("{SECRET_A}\n"));
    w(
        "xfr-b.key",
        &format!("key:\n  - id: xfr-b\n    algorithm: hmac-sha256\n    secret: {SECRET_B}\n"),
    );
    w(
        "xfr-public.key",
        &format!(
            "key \"xfr-public\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET_PUBLIC}\";\n}};\n"
        ),
    );
}

/// The spaces in a fresh directory, and spaceroute serving them.
fn primary() -> (tempfile::TempDir, Ports, Binary) {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    spaces(dir.path(), &ports);
    let b = Binary::start(dir.path());
    (dir, ports, b)
}

struct Ports {
    knot_a: u16,
    knot_b: u16,
    bind: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            knot_a: free_port(KNOT_A),
            knot_b: free_port(KNOT_B),
            // BIND listens only on an interface's address: it sends from 127.200.9.1 and
            // listens on 127.0.0.1.
            bind: free_port("127.0.0.1"),
        }
    }
}

/// A secondary program run by the test in the foreground; dropping it stops it (by PID).
struct Secondary {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Secondary {
    /// Knot following `catalog` from `primary` with `key`, sending from and listening on
    /// `ip:port`, allowing NOTIFY from loopback with that key.
    fn knot(
        ip: &str,
        port: u16,
        primary: SocketAddr,
        key: (&str, &str),
        catalog: &str,
    ) -> Secondary {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (key_name, secret) = key;
        let conf = format!(
            "server:
    rundir: \"{d}\"
    pidfile: \"{d}/knot.pid\"
    listen: {ip}@{port}
log:
  - target: stderr
    any: info
database:
    storage: \"{d}\"
key:
  - id: {key_name}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: primary
    address: {}@{}
    key: {key_name}
    via: {ip}
acl:
  - id: notify
    address: 127.0.0.0/8
    key: {key_name}
    action: notify
template:
  - id: member
    master: primary
    acl: notify
    storage: \"{d}\"
    zonefile-sync: -1
    zonefile-load: none
    journal-content: all
zone:
  - domain: {catalog}
    master: primary
    acl: notify
    storage: \"{d}\"
    zonefile-sync: -1
    zonefile-load: none
    journal-content: all
    catalog-role: interpret
    catalog-template: member
",
            primary.ip(),
            primary.port()
        );
        let path = dir.path().join("knot.conf");
        std::fs::write(&path, &conf).unwrap();
        let check = Command::new("knotc")
            .arg("-c")
            .arg(&path)
            .arg("conf-check")
            .output()
            .expect("knotc");
        assert!(
            check.status.success(),
            "knotc conf-check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        Secondary::spawn(
            Command::new("knotd").arg("-c").arg(&path),
            ip,
            port,
            dir,
            "knotd.log",
        )
    }

    /// BIND following `catalog` from `primary` with `key`, sending from `ip` and listening on
    /// 127.0.0.1:`port` (named listens only on an interface's own address).
    fn bind(
        ip: &str,
        port: u16,
        primary: SocketAddr,
        key: (&str, &str),
        catalog: &str,
    ) -> Secondary {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (key_name, secret) = key;
        let (pip, pport) = (primary.ip(), primary.port());
        let conf = format!(
            "options {{
    directory \"{d}\";
    pid-file \"{d}/named.pid\";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    transfer-source {ip};
    catalog-zones {{
        zone \"{catalog}\" default-masters {{ {pip} port {pport} key \"{key_name}\"; }}
            zone-directory \"{d}\" in-memory yes min-update-interval 1;
    }};
}};
key \"{key_name}\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};
controls {{ }};
zone \".\" {{ type hint; file \"{d}/root.hints\"; }};
zone \"{catalog}\" {{
    type secondary;
    file \"catalog.db\";
    masters {{ {pip} port {pport} key \"{key_name}\"; }};
}};
"
        );
        // Root hints on loopback: named must never send a priming query off this machine.
        std::fs::write(
            dir.path().join("root.hints"),
            ". 3600000 NS a.root.invalid.\na.root.invalid. 3600000 A 127.0.0.254\n",
        )
        .unwrap();
        let path = dir.path().join("named.conf");
        std::fs::write(&path, &conf).unwrap();
        let check = Command::new("named-checkconf")
            .arg(&path)
            .output()
            .expect("named-checkconf");
        assert!(
            check.status.success(),
            "named-checkconf: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        Secondary::spawn(
            Command::new("named").args(["-g", "-c"]).arg(&path),
            "127.0.0.1",
            port,
            dir,
            "named.log",
        )
    }

    fn spawn(
        command: &mut Command,
        ip: &str,
        port: u16,
        dir: tempfile::TempDir,
        log: &str,
    ) -> Secondary {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the secondary");
        Secondary {
            child,
            addr: SocketAddr::new(ip.parse().unwrap(), port),
            dir,
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        for name in ["knotd.log", "named.log"] {
            text.push_str(&std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default());
        }
        text
    }

    /// Waits until asking `name`/`qtype` of the secondary gets `want`; panics with its log.
    async fn settles(&mut self, name: &str, qtype: RecordType, want: &(ResponseCode, Vec<String>)) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = ask(self.addr, "127.0.0.1", name, qtype).await;
            if &got == want {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{name} {qtype} at the secondary: {got:?}, wanted {want:?}; exited {exited:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rcode and sorted answer data of `name`/`qtype` asked of `to` from `from`; SERVFAIL with
/// "no reply" when nothing answers (a secondary still starting).
async fn ask(
    to: SocketAddr,
    from: &str,
    name: &str,
    qtype: RecordType,
) -> (ResponseCode, Vec<String>) {
    let bytes = common::query(name, qtype, Some(1232));
    let reply = common::udp_raw(to, from, &bytes, Duration::from_secs(1)).await;
    match reply.and_then(|r| hickory_proto::op::Message::from_vec(&r).ok()) {
        Some(m) => (m.metadata.response_code, data(&m)),
        None => (ResponseCode::ServFail, vec!["no reply".to_string()]),
    }
}

/// The names a secondary of alpha's own view is checked on: apps, custom domains (exact, below
/// a wildcard), zone-file data, the bulk zone, a name that does not exist.
const SAMPLE: &[(&str, RecordType)] = &[
    ("internal-app.herokuapp.com.", RecordType::A),
    ("vpn-only.herokuapp.com.", RecordType::A),
    ("open-app.herokuapp.com.", RecordType::A),
    ("ns1.herokuapp.com.", RecordType::A),
    ("api.corp.example.com.", RecordType::A),
    ("www.corp.example.com.", RecordType::A),
    ("corp.example.com.", RecordType::MX),
    ("txt.corp.example.com.", RecordType::TXT),
    ("open.example.org.", RecordType::A),
    ("x.wild.example.org.", RecordType::A),
    ("host-2999.bulk.example.com.", RecordType::A),
    ("nobody.herokuapp.com.", RecordType::A),
];

#[tokio::test]
#[ignore = "needs knotd"]
async fn issue_11_knot_follows_a_spaces_view_from_its_catalog_by_notify_and_ixfr() {
    let (dir, ports, b) = primary();
    let mut knot = Secondary::knot(
        KNOT_A,
        ports.knot_a,
        b.dns,
        ("xfr-a", SECRET_A),
        "alpha.catalog.spaceroute.invalid.",
    );

    // It answers every name of the sample exactly as spaceroute answers alpha's network.
    for &(name, qtype) in SAMPLE {
        let want = ask(b.dns, SPACE, name, qtype).await;
        knot.settles(name, qtype, &want).await;
    }
    assert!(
        knot.log().contains("zone added from catalog"),
        "{}",
        knot.log()
    );

    // An edit: an app removed, a new custom domain outside every zone (a new member zone), the
    // serial raised. NOTIFY brings it over, by IXFR for the app domain.
    let alpha = dir.path().join("alpha.yaml");
    let text = std::fs::read_to_string(&alpha).unwrap();
    let text = text
        .replace("serial: 2026113001", "serial: 2026113002")
        .replace("  - name: internal-app\n", "")
        .replace(
            "open.example.org, ",
            "open.example.org, fresh.example.net, ",
        );
    common::write_atomic(&alpha, &text);
    b.wait_for("apps -alpha/internal-app", 1).await;
    let nx = ask(b.dns, SPACE, "internal-app.herokuapp.com.", RecordType::A).await;
    assert_eq!(nx.0, ResponseCode::NXDomain, "spaceroute applied the edit");
    knot.settles("internal-app.herokuapp.com.", RecordType::A, &nx)
        .await;
    let fresh = ask(b.dns, SPACE, "fresh.example.net.", RecordType::A).await;
    assert_eq!(fresh.1, ["127.16.0.10"]);
    knot.settles("fresh.example.net.", RecordType::A, &fresh)
        .await;
    let log = knot.log();
    let app_domain = |words: &str| {
        log.lines()
            .any(|l| l.contains("[herokuapp.com.] IXFR, incoming") && l.contains(words))
    };
    assert!(app_domain("finished") && !app_domain("AXFR-style"), "{log}");
    assert!(
        log.contains("[fresh.example.net.] zone added from catalog"),
        "{log}"
    );
    assert!(
        b.logs()
            .iter()
            .any(|l| l.contains("NOTIFY acknowledged") && l.contains("knot-a"))
    );

    // Beta's secondary gets beta's view: its app, and of alpha only what anyone outside alpha
    // sees (the standard app, the public zone file), never alpha's private data.
    let mut knot_b = Secondary::knot(
        KNOT_B,
        ports.knot_b,
        b.dns,
        ("xfr-b", SECRET_B),
        "beta.catalog.spaceroute.invalid.",
    );
    let beta_asker = "127.17.0.5";
    let beta = ask(b.dns, beta_asker, "beta-app.herokuapp.com.", RecordType::A).await;
    assert_eq!(beta.1, ["127.17.0.10"]);
    knot_b
        .settles("beta-app.herokuapp.com.", RecordType::A, &beta)
        .await;
    for &(name, qtype) in SAMPLE {
        let want = ask(b.dns, beta_asker, name, qtype).await;
        let got = ask(knot_b.addr, "127.0.0.1", name, qtype).await;
        // Where beta's asker is refused (no zone of its view), the secondary has no zone.
        assert_eq!(got, want, "{name} {qtype}\n{}", knot_b.log());
    }
    let private = ["127.16.5.5", "127.16.0.10", "private words"];
    for &(name, qtype) in SAMPLE {
        let got = ask(knot_b.addr, "127.0.0.1", name, qtype).await;
        assert!(
            !got.1.iter().any(|d| private.iter().any(|p| d.contains(p))),
            "{name}: {got:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs named (bind9)"]
async fn issue_11_bind_follows_the_public_view() {
    let (_dir, ports, b) = primary();
    let mut bind = Secondary::bind(
        BIND_PUBLIC,
        ports.bind,
        b.dns,
        ("xfr-public", SECRET_PUBLIC),
        "_public.catalog.spaceroute.invalid.",
    );
    // The public view: the standard app's custom domains and the public zone file, as a public
    // asker gets them; nothing private.
    for (name, qtype) in [
        ("open.example.org.", RecordType::A),
        ("x.wild.example.org.", RecordType::A),
        ("www.corp.example.com.", RecordType::A),
    ] {
        let want = ask(b.dns, PUBLIC_ASKER, name, qtype).await;
        assert_eq!(want.0, ResponseCode::NoError, "{name}");
        bind.settles(name, qtype, &want).await;
    }
    assert_eq!(
        ask(
            bind.addr,
            "127.0.0.1",
            "www.corp.example.com.",
            RecordType::A
        )
        .await
        .1,
        ["127.200.5.5"]
    );
    for name in [
        "txt.corp.example.com.",
        "api.corp.example.com.",
        "internal-app.herokuapp.com.",
    ] {
        let got = ask(bind.addr, "127.0.0.1", name, RecordType::A).await;
        assert!(got.1.is_empty(), "{name}: {got:?}");
    }
    let soa = udp(bind.addr, "127.0.0.1", "open.example.org.", RecordType::SOA).await;
    assert!(
        format!("{soa:?}").contains("2026110101"),
        "the public serial: {soa:?}"
    );
}

/// kdig as a secondary that gets it wrong: no key, a wrong secret, an unknown key, the right key
/// from another address, over UDP: no data. With everything right, a transfer of several
/// messages, each signed and each checked by kdig.
#[test]
#[ignore = "needs kdig"]
fn issue_11_kdig_gets_zone_data_only_signed_from_the_secondarys_address_over_tcp() {
    let (_dir, _, b) = primary();
    let kdig = |args: &[&str]| {
        let out = Command::new("kdig")
            .arg(format!("@{}", b.dns.ip()))
            .args(["-p", &b.dns.port().to_string(), "+time=3", "+retry=0"])
            .args(args)
            .output()
            .expect("kdig");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let key = format!("hmac-sha256:xfr-a:{SECRET_A}");
    let wrong = "hmac-sha256:xfr-a:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string();
    let unknown = format!("hmac-sha256:nobody:{SECRET_A}");
    let axfr = |from: &str, key: Option<&str>, udp: bool| {
        let mut args = vec!["-b", from, "AXFR", "bulk.example.com."];
        if let Some(key) = key {
            args.extend(["-y", key]);
        }
        if udp {
            args.push("+notcp");
        }
        kdig(&args)
    };
    let cases = [
        ("no key", axfr(KNOT_A, None, false), "REFUSED"),
        (
            "a wrong secret",
            axfr(KNOT_A, Some(&wrong), false),
            "BADSIG",
        ),
        (
            "an unknown key",
            axfr(KNOT_A, Some(&unknown), false),
            "BADKEY",
        ),
        (
            "another address",
            axfr("127.16.9.2", Some(&key), false),
            "REFUSED",
        ),
        ("udp", axfr(KNOT_A, Some(&key), true), "REFUSED"),
        (
            "the public",
            axfr(PUBLIC_ASKER, Some(&key), false),
            "REFUSED",
        ),
    ];
    for (what, out, error) in &cases {
        assert!(
            !out.contains("host-1.bulk.example.com"),
            "{what}: data leaked\n{out}"
        );
        assert!(out.contains(error), "{what}: expected {error}\n{out}");
    }
    // With the key from its address: the whole zone, several messages, every one verified.
    let out = axfr(KNOT_A, Some(&key), false);
    let received = out
        .lines()
        .find(|l| l.contains(";; Received"))
        .unwrap_or_default()
        .to_string();
    let messages: usize = received
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(messages > 1, "{received}\n{out}");
    assert!(out.contains("host-2999.bulk.example.com."), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("\tTSIG\t")).count(),
        messages,
        "a TSIG in every message:\n{out}"
    );
    assert!(
        !out.contains(";; ERROR") && !out.contains(";; WARNING"),
        "{out}"
    );
    // IXFR over UDP from a secondary that is behind: the SOA alone, "ask again over TCP".
    let out = kdig(&[
        "-b",
        KNOT_A,
        "-y",
        &key,
        "+notcp",
        "IXFR=0",
        "bulk.example.com.",
    ]);
    assert!(out.contains("SOA") && !out.contains("host-1."), "{out}");
}
