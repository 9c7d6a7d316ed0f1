//! The `spaceroute` binary: `check` output and exit codes, `serve` startup, its listening line,
//! startup errors and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tempfile::TempDir;

fn spaceroute() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spaceroute"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SPACEROUTE_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// A temporary zones directory holding `files` as (name, text).
fn zones(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `spaceroute check` on a directory of broken `files`: exit 1 and the diagnostics on stderr.
struct Checked {
    dir: TempDir,
    stderr: String,
}

fn check_broken(files: &[(&str, &str)]) -> Checked {
    let dir = zones(files);
    let out: Output = spaceroute()
        .args(["check", "--zones"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout when broken");
    Checked { dir, stderr }
}

impl Checked {
    /// Asserts a diagnostic `path:line:column: error: ...` for `file` at `line` saying `phrase`.
    fn has(&self, file: &str, line: usize, phrase: &str) -> &Checked {
        let prefix = format!("{}:{line}:", self.dir.path().join(file).display());
        let found = self.stderr.lines().any(|l| {
            let column = l
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(": error: "));
            column
                .is_some_and(|(c, message)| c.parse::<usize>().is_ok() && message.contains(phrase))
        });
        assert!(
            found,
            "want {prefix}N: error: ...{phrase:?}... in\n{}",
            self.stderr
        );
        self
    }

    /// Asserts the closing count line.
    fn count(&self, n: usize) {
        let want = format!("{}: {n} error(s)", self.dir.path().display());
        assert_eq!(
            self.stderr.lines().last(),
            Some(want.as_str()),
            "{}",
            self.stderr
        );
    }
}

const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 10.16.0.2\nwww IN A 10.16.5.5\n";

#[test]
fn check_accepts_the_fixture_with_a_one_line_summary() {
    let out = spaceroute()
        .args(["check", "--zones", "tests/data/two-spaces"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("2 spaces"), "{stdout}");
    assert!(stdout.starts_with("tests/data/two-spaces: ok:"), "{stdout}");
}

#[test]
fn check_reports_bad_yaml_syntax_at_its_line() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\n  bad: indent\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 3, "mapping values are not allowed")
        .count(1);
}

#[test]
fn check_reports_an_unknown_field_at_its_line() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter:\n  private: [10.16.0.10]\n  pubic: [1.2.3.4]\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 5, "unknown field `pubic`")
        .count(1);
}

#[test]
fn check_reports_a_bad_cidr_at_its_line() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\npeers:\n  - name: vpn\n    cidrs: [192.168.10.0/33]\nrouter: {private: [10.16.0.10]}\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 5, "\"192.168.10.0/33\" is not a CIDR")
        .count(1);
}

#[test]
fn check_reports_an_app_defined_in_two_files() {
    let a = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: shared-app\n";
    let b = "space: beta\nnetwork: 10.17.0.0/16\nrouter: {private: [10.17.0.10]}\napps:\n  - name: other-app\n  - name: shared-app\n";
    let c = check_broken(&[("alpha.yaml", a), ("beta.yaml", b)]);
    let first = c.dir.path().join("alpha.yaml");
    c.has("beta.yaml", 6, "app \"shared-app\" is already defined")
        .has("beta.yaml", 6, &format!("in {}", first.display()))
        .count(1);
}

#[test]
fn check_reports_overlapping_networks() {
    let a = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\n";
    let b = "space: beta\nnetwork: 10.16.128.0/17\nrouter: {private: [10.16.128.10]}\n";
    check_broken(&[("alpha.yaml", a), ("beta.yaml", b)])
        .has("beta.yaml", 2, "overlaps space \"alpha\"")
        .count(1);
}

#[test]
fn check_reports_a_custom_domain_colliding_with_a_zone_record() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\nzones:\n  - file: corp.example.com.zone\napps:\n  - name: www-app\n    domains: [www.corp.example.com]\n";
    check_broken(&[("alpha.yaml", yaml), ("corp.example.com.zone", ZONE)])
        .has("alpha.yaml", 8, "collides with www.corp.example.com.")
        .count(1);
}

#[test]
fn check_reports_a_missing_zone_file() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\nzones:\n  - file: missing.example.com.zone\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 5, "cannot read zone file")
        .has("alpha.yaml", 5, "missing.example.com.zone")
        .count(1);
}

#[test]
fn check_reports_a_missing_cert_file() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: tls-app\n    tls:\n      cert: certs/missing.pem\n      key: tls-app.key\n";
    check_broken(&[("alpha.yaml", yaml), ("tls-app.key", "not checked")])
        .has("alpha.yaml", 7, "cannot read cert file")
        .has("alpha.yaml", 7, "missing.pem")
        .count(1);
}

#[test]
fn check_reports_the_line_of_a_zone_record_that_does_not_parse() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nzones:\n  - file: corp.example.com.zone\n";
    let zone = "$TTL 300\n@ IN SOA ns1 hostmaster (\n    1 3600 600 86400 60 )\n; fine so far\nwww IN A 10.16.5.5\nbad IN A not-an-address\nok IN A 10.16.5.6\n";
    check_broken(&[("alpha.yaml", yaml), ("corp.example.com.zone", zone)])
        .has("corp.example.com.zone", 6, "zone file does not parse")
        .count(1);
}

#[test]
fn check_reports_a_standard_app_in_a_space_without_router_public() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: std-app\n    internal_routing: false\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 6, "needs router.public")
        .count(1);
}

#[test]
fn check_reports_dynos_of_the_wrong_shape() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: app-one\n    dynos:\n      - {name: web.1, ip: 10.16.1.21, port: 5000}\n      - {name: web, ip: 10.16.1.22, port: 5000}\n      - {name: web.2, ip: 10.16.1.23}\n";
    check_broken(&[("alpha.yaml", yaml)])
        .has("alpha.yaml", 8, "must be <process>.<n>")
        .has("alpha.yaml", 9, "needs a port")
        .count(2);
}

#[test]
fn check_reports_every_error_of_a_run() {
    let a = "space: alpha\nnetwork: 10.16.0.0/33\nrouter: {private: [10.16.0.10]}\nzones:\n  - file: gone.zone\napps:\n  - name: app-one\n    dynos:\n      - {name: web-1, ip: 10.16.1.21, port: 5000}\n";
    let b = "space: beta\nnetwork: 10.17.0.0/16\nbogus: true\n";
    check_broken(&[("alpha.yaml", a), ("beta.yaml", b)])
        .has("alpha.yaml", 2, "is not a CIDR")
        .has("alpha.yaml", 5, "cannot read zone file")
        .has("alpha.yaml", 9, "must be <process>.<n>")
        .has("beta.yaml", 3, "unknown field `bogus`")
        .count(4);
}

/// A running `spaceroute serve` whose stderr lines arrive on a channel; killed on drop.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Serve {
    fn start(zones: &Path, dns: &str) -> Serve {
        let mut child = spaceroute()
            .args(["serve", "--dns", dns, "--http", "127.0.0.1:0", "--zones"])
            .arg(zones)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Serve {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line containing `needle`, read within `wait`.
    fn line(&mut self, needle: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no {needle:?} on stderr ({e}); saw {:#?}", self.seen),
            }
        }
    }

    /// Waits up to `wait` for the process to exit (its stderr closes), collecting stderr.
    fn exit(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running: {:#?}", self.seen),
            }
        }
        self.child.wait().unwrap()
    }

    fn said(&self, needle: &str) -> bool {
        self.seen.iter().any(|l| l.contains(needle))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn serve_prints_where_it_listens_answers_there_and_exits_0_on_sigterm() {
    let mut serve = Serve::start(Path::new("tests/data/two-spaces"), "127.0.0.1:0");
    let line = serve.line("listening dns ", Duration::from_secs(10));
    let addr = |key: &str| -> SocketAddr {
        let field = line.split_whitespace().find_map(|w| w.strip_prefix(key));
        field
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    let (udp_addr, tcp_addr) = (addr("udp="), addr("tcp="));
    assert_eq!(udp_addr, tcp_addr, "UDP and TCP share one address");
    assert_eq!(udp_addr.ip().to_string(), "127.0.0.1");
    assert_ne!(udp_addr.port(), 0);

    let m = udp(
        udp_addr,
        SPACE,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    let m = tcp(
        tcp_addr,
        PUBLIC,
        "internal-app.herokuapp.com.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = tcp(tcp_addr, PUBLIC, "std-app.herokuapp.com.", RecordType::A).await;
    assert_eq!(data(&m), ["127.100.0.10"]);

    let pid = serve.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = serve.exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{:#?}", serve.seen);
    assert!(serve.said("SIGTERM"), "{:#?}", serve.seen);
}

#[test]
fn serve_on_a_broken_dir_exits_1_naming_file_and_line() {
    let yaml = "space: alpha\nnetwork: 10.16.0.0/33\nrouter: {private: [10.16.0.10]}\n";
    let dir = zones(&[("alpha.yaml", yaml)]);
    let mut serve = Serve::start(dir.path(), "127.0.0.1:0");
    let status = serve.exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{:#?}", serve.seen);
    let at = format!("{}:2:10: error: ", dir.path().join("alpha.yaml").display());
    assert!(serve.said(&at), "want {at} in {:#?}", serve.seen);
    assert!(serve.said("is not a CIDR"), "{:#?}", serve.seen);
    assert!(!serve.said("listening dns"), "{:#?}", serve.seen);
}

#[test]
fn serve_exits_1_when_the_dns_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut serve = Serve::start(Path::new("tests/data/two-spaces"), &addr);
    let status = serve.exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{:#?}", serve.seen);
    let want = format!("cannot listen for dns on {addr}");
    assert!(serve.said(&want), "want {want:?} in {:#?}", serve.seen);
}

/// A space of `apps` apps, big enough that loading it takes a while.
fn big_space(apps: usize) -> TempDir {
    let mut yaml = String::from(
        "space: big\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10]}\napps:\n",
    );
    for n in 0..apps {
        yaml.push_str(&format!(
            "  - name: app-{n}\n    dynos:\n      - {{name: web.1, ip: 127.16.1.1, port: 5000}}\n"
        ));
    }
    zones(&[("big.yaml", &yaml)])
}

fn kill(serve: &Serve, signal: &str) {
    let pid = serve.child.id().to_string();
    let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(sent.success());
}

/// Issue 10: the handlers are installed before the first load, so a SIGHUP while loading (a
/// service manager's reload, a log rotation) is a reload once serving, not the end of the
/// process, and a SIGTERM while loading stops it at once.
#[tokio::test]
async fn issue_10_signals_during_the_first_load_reload_or_stop_instead_of_killing() {
    let dir = big_space(100_000);
    let mut serve = Serve::start(dir.path(), "127.0.0.1:0");
    serve.line("loading", Duration::from_secs(10));
    kill(&serve, "-HUP");
    // The signal went a moment after "loading"; the load took far longer than that moment.
    let stages = serve.line("compiled the zones directory", Duration::from_secs(120));
    let took: f64 = (stages.split_whitespace())
        .filter_map(|w| w.split_once("_ms="))
        .filter_map(|(_, ms)| ms.parse::<f64>().ok())
        .sum();
    assert!(
        took > 100.0,
        "the load was too quick to show anything: {stages}"
    );
    let line = serve.line("listening dns ", Duration::from_secs(120));
    serve.line("SIGHUP, reloading", Duration::from_secs(120));
    let addr: SocketAddr = (line.split_whitespace())
        .find_map(|w| w.strip_prefix("udp="))
        .and_then(|a| a.parse().ok())
        .unwrap();
    let m = udp(addr, SPACE, "app-99999.herokuapp.com.", RecordType::A).await;
    assert_eq!(data(&m), ["127.16.0.10"]);
    drop(serve);

    let mut serve = Serve::start(dir.path(), "127.0.0.1:0");
    serve.line("loading", Duration::from_secs(10));
    kill(&serve, "-TERM");
    let status = serve.exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{:#?}", serve.seen);
    assert!(serve.said("SIGTERM while loading"), "{:#?}", serve.seen);
}

/// Issue 10: the first SIGTERM lets requests in flight finish (up to 10 s); a second one
/// stops at once.
#[tokio::test]
async fn issue_10_a_second_sigterm_stops_without_waiting_for_requests_in_flight() {
    // A dyno that takes connections and never answers.
    let dyno = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = dyno.local_addr().unwrap();
    let yaml = format!(
        "space: alpha\nnetwork: 127.16.0.0/16\nrouter: {{private: [127.16.0.10]}}\napps:\n  \
         - name: slow-app\n    dynos:\n      - {{name: web.1, ip: 127.0.0.1, port: {}}}\n",
        at.port()
    );
    let dir = zones(&[("alpha.yaml", &yaml)]);
    let mut serve = Serve::start(dir.path(), "127.0.0.1:0");
    let line = serve.line("listening http=", Duration::from_secs(10));
    let http: SocketAddr = (line.split("listening http=").nth(1))
        .and_then(|a| a.trim().parse().ok())
        .unwrap();
    let mut client = tcp_connect(http, SPACE).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut client,
        b"GET / HTTP/1.1\r\nHost: slow-app.herokuapp.com\r\n\r\n",
    )
    .await
    .unwrap();
    // The request reached the dyno: it is in flight.
    let (_held, _) = dyno.accept().unwrap();
    kill(&serve, "-TERM");
    serve.line("SIGTERM, shutting down", Duration::from_secs(5));
    let started = Instant::now();
    kill(&serve, "-TERM");
    let status = serve.exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{:#?}", serve.seen);
    assert!(serve.said("SIGTERM again"), "{:#?}", serve.seen);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Issue 10: `spaceroute probe`, the readiness probe of the Kubernetes example, exits 0 once a
/// server answers (whatever the rcode: 127.0.0.1 is public to the fixture) and 1 when nothing
/// does.
#[tokio::test]
async fn issue_10_probe_exits_0_when_the_server_answers_and_1_when_none_does() {
    let mut serve = Serve::start(Path::new("tests/data/two-spaces"), "127.0.0.1:0");
    let line = serve.line("listening dns ", Duration::from_secs(10));
    let addr = (line.split_whitespace())
        .find_map(|w| w.strip_prefix("udp="))
        .unwrap()
        .to_string();
    let probe = |addr: &str| {
        spaceroute()
            .args([
                "probe",
                "--dns",
                addr,
                "--timeout-ms",
                "500",
                "herokuapp.com",
            ])
            .output()
            .unwrap()
    };
    let out = probe(&addr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("answered rcode=5"),
        "{out:?}"
    );
    drop(serve);
    // Nothing listens there now.
    let out = probe(&addr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer"),
        "{out:?}"
    );
}

/// `spaceroute explain --json` on the fixture.
fn explain(args: &[&str]) -> serde_json::Value {
    let out = spaceroute()
        .args(["explain", "--zones", "tests/data/two-spaces", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 10: `spaceroute explain` names the row of the "who sees what" table that applied, for
/// every row, next to the exact answer the server gives.
#[test]
fn issue_10_explain_names_the_rule_of_each_row_and_the_exact_answer() {
    // (source, name, words of the rule, rcode, an answer's data or "")
    let rows = [
        (
            HQ_VPN,
            "internal-app.herokuapp.com",
            "an internal app of alpha the source may see",
            "NOERROR",
            "127.16.0.10",
        ),
        (
            PROD_VPC,
            "internal-app.herokuapp.com",
            "allows only some peers, not this source's",
            "NXDOMAIN",
            "",
        ),
        (
            BETA,
            "internal-app.herokuapp.com",
            "which does not trust the source",
            "NXDOMAIN",
            "",
        ),
        (
            SPACE,
            "std-app.herokuapp.com",
            "a standard app of alpha: router.private",
            "NOERROR",
            "127.16.0.10",
        ),
        (
            PUBLIC,
            "std-app.herokuapp.com",
            "alpha's router.public",
            "NOERROR",
            "127.100.0.10",
        ),
        (
            SPACE,
            "www.corp.example.com",
            "a name in alpha's zone files",
            "NOERROR",
            "127.16.5.5",
        ),
        (
            SPACE,
            "nobody-here.herokuapp.com",
            "that no space lists",
            "NXDOMAIN",
            "",
        ),
        (
            PUBLIC,
            "www.corp.example.com",
            "audience: public zone file",
            "NOERROR",
            "127.100.0.80",
        ),
        (
            PUBLIC,
            "internal-app.herokuapp.com",
            "REFUSED",
            "REFUSED",
            "",
        ),
        (
            SPACE,
            "example.net",
            "a name in no zone we serve",
            "REFUSED",
            "",
        ),
    ];
    for (from, name, rule, rcode, data) in rows {
        let e = explain(&["--from", from, name]);
        let said = e["rule"].as_str().unwrap();
        assert!(said.contains(rule), "{from} {name}: {said}");
        assert_eq!(e["answer"]["rcode"], rcode, "{from} {name}: {e}");
        let answers = e["answer"]["answers"].as_array().unwrap();
        match data {
            "" => assert!(answers.is_empty(), "{from} {name}: {e}"),
            ip => assert!(
                answers
                    .iter()
                    .any(|a| a.as_str().unwrap().ends_with(&format!(" {ip}"))),
                "{from} {name}: {e}"
            ),
        }
    }
    // Who trusts the source, and through what.
    let e = explain(&["--from", HQ_VPN, "open-app.herokuapp.com"]);
    assert_eq!(
        e["trusted_by"],
        serde_json::json!([
            {"space": "alpha", "via": ["peer hq-vpn"]},
            {"space": "beta", "via": ["peer shared-vpn"]}
        ])
    );

    // The text form, whole.
    let out = spaceroute()
        .args([
            "explain",
            "--zones",
            "tests/data/two-spaces",
            "--from",
            PROD_VPC,
        ])
        .args(["internal-app.herokuapp.com", "A"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..6],
        [
            "source   127.31.0.5",
            "trust    space alpha via peer prod-vpc",
            "name     internal-app.herokuapp.com. A",
            "owner    internal app alpha/internal-app",
            "rule     trusted by alpha, but alpha's internal app internal-app allows only some \
             peers, not this source's: as if absent (NXDOMAIN or NODATA with the SOA)",
            "answer   NXDOMAIN, aa",
        ],
        "{text}"
    );
    assert!(
        lines[6].starts_with("  authority herokuapp.com. 30 IN SOA "),
        "{text}"
    );

    // Every name a source may resolve: the peer prod-vpc sees open-app, not internal-app.
    let all = explain(&["--from", PROD_VPC, "--all"]);
    let names: Vec<&str> = (all["names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(names.contains(&"open-app.herokuapp.com."), "{names:?}");
    assert!(names.contains(&"www.corp.example.com."), "{names:?}");
    assert!(!names.contains(&"internal-app.herokuapp.com."), "{names:?}");
}

/// Issue 10: `--log-format json` writes every line as a JSON object, the router's request log
/// included; the query log is off by default, `--query-log 1` logs each query, and SIGUSR1
/// switches it off (and on again) at run time.
#[tokio::test]
async fn issue_10_json_logs_and_a_query_log_switched_at_run_time() {
    let mut child = spaceroute()
        .args(["--log-format", "json", "serve", "--query-log", "1"])
        .args(["--dns", "127.0.0.1:0", "--http", "127.0.0.1:0", "--zones"])
        .arg("tests/data/two-spaces")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut next = |want: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{e}: {seen:#?}"));
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            seen.push(value.clone());
            if want(&value) {
                return value;
            }
        }
    };
    let message = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_string();
    let listening = next(&|v| message(v).starts_with("listening dns"));
    let udp_at: SocketAddr = (message(&listening).split_whitespace())
        .find_map(|w| w.strip_prefix("udp="))
        .and_then(|a| a.parse().ok())
        .unwrap();
    let http = next(&|v| message(v).starts_with("listening http="));
    let http_at: SocketAddr = message(&http)["listening http=".len()..].parse().unwrap();

    udp(udp_at, SPACE, "internal-app.herokuapp.com.", RecordType::A).await;
    let logged = next(&|v| v["target"] == "spaceroute::query");
    assert_eq!(logged["qname"], "internal-app.herokuapp.com.");
    assert_eq!(
        (logged["client"].as_str(), logged["rcode"].as_str()),
        (Some(SPACE), Some("No Error"))
    );

    let mut stream = tcp_connect(http_at, PUBLIC).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /x HTTP/1.1\r\nHost: nowhere.herokuapp.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let request = next(&|v| v["target"] == "spaceroute::router" && v["status"].is_number());
    assert_eq!(
        (request["status"].as_u64(), request["path"].as_str()),
        (Some(404), Some("/x"))
    );

    let pid = child.id().to_string();
    let switch = || {
        assert!(
            Command::new("kill")
                .args(["-USR1", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    switch();
    next(&|v| message(v) == "SIGUSR1, query log off");
    udp(udp_at, SPACE, "open-app.herokuapp.com.", RecordType::A).await;
    switch();
    next(&|v| message(v).starts_with("SIGUSR1, query log on"));
    udp(udp_at, SPACE, "std-app.herokuapp.com.", RecordType::A).await;
    let logged = next(&|v| v["target"] == "spaceroute::query");
    assert_eq!(
        logged["qname"], "std-app.herokuapp.com.",
        "open-app's query was not logged"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue 10: `check` compiles as the server does, so a certificate the server could not use
/// (here, a key that is not the certificate's) fails the check instead of being found at serve
/// time as a fallback to the default certificate.
#[test]
fn issue_10_check_rejects_a_certificate_the_server_could_not_use() {
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["secure.example.org".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap().pem();
    let yaml = "space: alpha\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: tls-app\n    domains: [secure.example.org]\n    tls: {cert: app.pem, key: app.key}\n";
    for (key_pem, ok) in [(key.serialize_pem(), true), (other.serialize_pem(), false)] {
        let dir = zones(&[
            ("alpha.yaml", yaml),
            ("app.pem", &cert),
            ("app.key", &key_pem),
        ]);
        let out = spaceroute()
            .args(["check", "--zones"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{stderr}");
        if !ok {
            assert!(
                stderr.contains("app.pem: app tls-app's certificate cannot be used (the private key is not the certificate's)"),
                "{stderr}"
            );
        }
    }
}

/// Issue 10: a space with an error of its own still takes part in the checks across files, so
/// one run of `check` reports both its error and its conflict with another file.
#[test]
fn issue_10_check_reports_a_files_own_error_and_its_conflict_with_another_in_one_run() {
    let a = "space: alpha\nnetwork: 10.16.0.0/16\npeers:\n  - {name: vpn, cidrs: [10.99.0.0/33]}\nrouter: {private: [10.16.0.10]}\napps:\n  - name: app-one\n";
    let b = "space: beta\nnetwork: 10.17.0.0/16\nrouter: {private: [10.17.0.10]}\napps:\n  - name: app-one\n";
    check_broken(&[("alpha.yaml", a), ("beta.yaml", b)])
        .has("alpha.yaml", 4, "is not a CIDR")
        .has("beta.yaml", 5, "already defined")
        .count(2);
}
