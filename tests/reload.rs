//! Hot reload: edits to a copy of the fixture picked up by the running binary (file watcher
//! and SIGHUP), bad edits rejected while the old answers keep serving, and reloads under load.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use spaceroute::dns::answer::{Transport, answer};
use spaceroute::dns::server::{self, Limits};
use spaceroute::reload::{self, FileWatch, Reloaded, Reloader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The rcode and sorted answer data of a UDP query.
async fn ask(b: &Binary, from: &str, name: &str, qtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = udp(b.dns, from, name, qtype).await;
    (m.metadata.response_code, data(&m))
}

/// The SOA serial of the zone at `apex` as `from` sees it.
async fn serial(b: &Binary, from: &str, apex: &str) -> u32 {
    let m = udp(b.dns, from, apex, RecordType::SOA).await;
    match m.answers.first().map(|r| &r.data) {
        Some(RData::SOA(soa)) => soa.serial,
        other => panic!("no SOA for {apex}: {other:?}"),
    }
}

/// Waits until the SOA serial at `apex` is no longer `old` (right after the reload that applies
/// an edit, whether the watcher saw it as one event or two); returns the new one.
async fn serial_moves(b: &Binary, from: &str, apex: &str, old: u32) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = serial(b, from, apex).await;
        if now != old {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{apex}'s serial stays {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    write_atomic(path, &text.replacen(from, to, 1));
}

const NEW_APP: &str = "  - name: new-app\n    domains: [new.example.org]\n    dynos:\n      - {name: web.1, ip: 127.16.1.51, port: 5000}\n";

#[tokio::test]
async fn edits_are_applied_without_a_restart() {
    let dir = copy_dir(&fixture_dir());
    let alpha = dir.path().join("alpha.yaml");
    let b = Binary::start(dir.path());
    let private = (ResponseCode::NoError, vec!["127.16.0.10".to_string()]);

    // Add an app (editor-style: write a temp file, rename it over the old one).
    let before = ask(&b, SPACE, "new-app.herokuapp.com.", RecordType::A).await;
    assert_eq!(before.0, ResponseCode::NXDomain);
    let text = fs::read_to_string(&alpha).unwrap();
    write_atomic(&alpha, &format!("{text}{NEW_APP}"));
    b.wait_for("reloaded:", 1).await;
    settles(&b, SPACE, "new-app.herokuapp.com.", &private).await;
    settles(&b, PROD_VPC, "new.example.org.", &private).await;
    assert!(
        b.logs().iter().any(|l| l.contains("apps +alpha/new-app")),
        "{:#?}",
        b.logs()
    );

    // Change a dyno's address (plain in-place write this time).
    let text = fs::read_to_string(&alpha).unwrap();
    fs::write(&alpha, text.replace("127.16.1.22", "127.16.1.99")).unwrap();
    b.wait_for("reloaded:", 2).await;
    let dynos = (
        ResponseCode::NoError,
        vec!["127.16.1.21".to_string(), "127.16.1.99".to_string()],
    );
    settles(&b, SPACE, "web.internal-app.app.localspace.", &dynos).await;

    // Remove a peer: its askers are refused now.
    settles(&b, PROD_VPC, "open-app.herokuapp.com.", &private).await;
    edit(
        &alpha,
        "  - name: prod-vpc\n    cidrs: [127.31.0.0/16]\n",
        "",
    );
    b.wait_for("reloaded:", 3).await;
    let refused = (ResponseCode::Refused, Vec::new());
    settles(&b, PROD_VPC, "open-app.herokuapp.com.", &refused).await;

    // Add a custom domain.
    edit(
        &alpha,
        "domains: [open.example.org]",
        "domains: [open.example.org, extra.example.org]",
    );
    b.wait_for("reloaded:", 4).await;
    settles(&b, SPACE, "extra.example.org.", &private).await;

    // Add a whole space file, then delete it.
    let gamma = dir.path().join("gamma.yaml");
    let gamma_yaml = "space: gamma\nnetwork: 127.18.0.0/16\nrouter: {private: [127.18.0.10]}\napps:\n  - name: gamma-app\n";
    fs::write(&gamma, gamma_yaml).unwrap();
    b.wait_for("reloaded:", 5).await;
    let gamma_answer = (ResponseCode::NoError, vec!["127.18.0.10".to_string()]);
    settles(&b, "127.18.0.5", "gamma-app.herokuapp.com.", &gamma_answer).await;
    fs::remove_file(&gamma).unwrap();
    b.wait_for("reloaded:", 6).await;
    settles(&b, "127.18.0.5", "gamma-app.herokuapp.com.", &refused).await;
    assert_eq!(b.count("last reload failed"), 0);
}

/// Waits until `from` asking `name` (A) gets `want`: right after the reload that applies an
/// edit, or a moment later should one edit have caused two reloads.
async fn settles(b: &Binary, from: &str, name: &str, want: &(ResponseCode, Vec<String>)) {
    eventually(
        &format!("{name} from {from} to answer {want:?}"),
        || async { ask(b, from, name, RecordType::A).await == *want },
    )
    .await;
}

#[tokio::test]
async fn bad_edits_keep_the_last_good_answers_until_fixed() {
    let dir = copy_dir(&fixture_dir());
    let alpha = dir.path().join("alpha.yaml");
    let zone = dir.path().join("corp.example.com.zone");
    let good_alpha = fs::read_to_string(&alpha).unwrap();
    let good_zone = fs::read_to_string(&zone).unwrap();
    let b = Binary::start(dir.path());
    let before = ask(&b, SPACE, "www.corp.example.com.", RecordType::A).await;
    assert_eq!(before.1, ["127.16.5.5"]);

    let cases = [
        (
            &alpha,
            good_alpha.replace("network: 127.16.0.0/16", "network: [127.16.0.0/16"),
            "alpha.yaml:",
        ),
        (
            &alpha,
            good_alpha.replace("name: open-app", "name: internal-app"),
            "alpha.yaml:28:",
        ),
        (
            &zone,
            good_zone.replace("127.16.5.5", "127.16.5.500"),
            "corp.example.com.zone:11:1:",
        ),
    ];
    for (n, (path, bad, location)) in cases.iter().enumerate() {
        write_atomic(path, bad);
        b.wait_for("last reload failed", n + 1).await;
        let errors: Vec<String> = b
            .logs()
            .into_iter()
            .filter(|l| l.contains("ERROR") && l.contains(": error: "))
            .collect();
        assert_eq!(errors.len(), n + 1, "one error per bad edit: {errors:#?}");
        assert!(errors[n].contains(location), "no {location} in {errors:#?}");
        assert_eq!(
            ask(&b, SPACE, "www.corp.example.com.", RecordType::A).await,
            before
        );
        assert_eq!(
            ask(&b, SPACE, "open-app.herokuapp.com.", RecordType::A)
                .await
                .1,
            ["127.16.0.10"]
        );
        // Fixing the file applies the fix.
        let fixed = if *path == &zone {
            good_zone.replace("127.16.5.5", "127.16.5.55")
        } else {
            good_alpha.clone()
        };
        write_atomic(path, &fixed);
        b.wait_for("reloaded:", n + 1).await;
    }
    assert_eq!(
        ask(&b, SPACE, "www.corp.example.com.", RecordType::A)
            .await
            .1,
        ["127.16.5.55"]
    );
}

#[tokio::test]
async fn serials_grow_only_for_changed_zones_and_sighup_without_changes_keeps_them() {
    let dir = copy_dir(&fixture_dir());
    let b = Binary::start(dir.path());
    let app_domain = serial(&b, SPACE, "herokuapp.com.").await;
    let corp = serial(&b, SPACE, "corp.example.com.").await;
    let beta = serial(&b, BETA, "herokuapp.com.").await;

    b.signal("HUP");
    b.wait_for("reloaded: no changes", 1).await;
    assert_eq!(serial(&b, SPACE, "herokuapp.com.").await, app_domain);
    assert_eq!(serial(&b, SPACE, "corp.example.com.").await, corp);

    // Two changes in quick succession (likely within one second) still give growing serials.
    edit(&dir.path().join("alpha.yaml"), "ttl: 30", "ttl: 31");
    let first = serial_moves(&b, SPACE, "herokuapp.com.", app_domain).await;
    edit(&dir.path().join("alpha.yaml"), "ttl: 31", "ttl: 32");
    let second = serial_moves(&b, SPACE, "herokuapp.com.", first).await;
    assert!(
        app_domain < first && first < second,
        "{app_domain} {first} {second}"
    );
    assert_eq!(
        serial(&b, SPACE, "corp.example.com.").await,
        corp,
        "zone file unchanged"
    );
    // Beta's askers see alpha's standard apps, whose TTL changed: their serial moved too.
    let beta_now = serial(&b, BETA, "herokuapp.com.").await;
    assert_ne!(beta_now, beta, "beta sees alpha's standard apps");
    // An internal change of alpha (its private router) moves alpha's serial, not beta's.
    edit(
        &dir.path().join("alpha.yaml"),
        "private: [127.16.0.10, ",
        "private: [127.16.0.11, ",
    );
    serial_moves(&b, SPACE, "herokuapp.com.", second).await;
    assert_eq!(
        serial(&b, BETA, "herokuapp.com.").await,
        beta_now,
        "alpha's internal change does not show in beta's serial"
    );

    edit(
        &dir.path().join("corp.example.com.zone"),
        "127.16.5.5",
        "127.16.5.6",
    );
    // The file's serial was not raised: one more than before, and the operator is told.
    let warning = "zone corp.example.com. (its SOA)";
    assert_eq!(
        serial_moves(&b, SPACE, "corp.example.com.", corp).await,
        corp + 1
    );
    b.wait_for(warning, 1).await;
    assert_eq!(b.count(warning), 1, "{:?}", b.logs());
}

/// Issue 10: two replicas of the same files, started at different times and one of them
/// through an edit, serve the same SOA serials: the ones the files declare.
#[tokio::test]
async fn issue_10_replicas_started_at_different_times_serve_the_same_serials() {
    let dir = copy_dir(&fixture_dir());
    let alpha = dir.path().join("alpha.yaml");
    edit(&alpha, "ttl: 30", "serial: 2026113001\nttl: 30");
    edit(
        &dir.path().join("beta.yaml"),
        "space: beta\n",
        "space: beta\nserial: 7\n",
    );
    let early = Binary::start(dir.path());
    let zones = [
        (SPACE, "herokuapp.com."),
        (SPACE, "corp.example.com."),
        (PUBLIC, "www.example.net."),
    ];
    let mut first = Vec::new();
    for (from, apex) in zones {
        first.push(serial(&early, from, apex).await);
    }
    // Alpha's askers see alpha's data and beta's standard apps: alpha's serial plus beta's.
    assert_eq!(first, [2026113001 + 7, 2026112301, 2026113001]);

    edit(
        &alpha,
        "serial: 2026113001\nttl: 30",
        "serial: 2026113002\nttl: 31",
    );
    early.wait_for("reloaded:", 1).await;
    // A later second on the clock, which gave the serials before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = Binary::start(dir.path());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (from, apex) in zones {
        a.push(serial(&early, from, apex).await);
        b.push(serial(&late, from, apex).await);
    }
    assert_eq!(a, [2026113002 + 7, 2026112301, 2026113002]);
    assert_eq!(a, b);
}

#[tokio::test]
async fn certificates_outside_the_zones_directory_are_watched() {
    let root = tempfile::tempdir().unwrap();
    let zones = root.path().join("zones");
    let certs = root.path().join("certs");
    fs::create_dir_all(&zones).unwrap();
    fs::create_dir_all(&certs).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["api.example.org".to_string()]).unwrap();
    let key_pem = cert.signing_key.serialize_pem();
    fs::write(certs.join("api.pem"), cert.cert.pem()).unwrap();
    fs::write(certs.join("api.key"), &key_pem).unwrap();
    let yaml = "space: s\nnetwork: 127.16.0.0/16\nrouter: {private: [127.16.0.10]}\napps:\n  - name: tls-app\n    tls: {cert: ../certs/api.pem, key: ../certs/api.key}\n";
    fs::write(zones.join("s.yaml"), yaml).unwrap();
    let b = Binary::start(&zones);
    fs::remove_file(certs.join("api.key")).unwrap();
    b.wait_for("last reload failed", 1).await;
    assert!(
        b.logs()
            .iter()
            .any(|l| l.contains("s.yaml:6:") && l.contains("cannot read key file"))
    );
    fs::write(certs.join("api.key"), "not a key").unwrap();
    b.wait_for("last reload failed", 2).await;
    assert!(
        b.logs()
            .iter()
            .any(|l| l.contains("s.yaml:6:") && l.contains("no usable PEM private key"))
    );
    fs::write(certs.join("api.key"), &key_pem).unwrap();
    b.wait_for("reloaded:", 1).await;
}

/// Ten space files, each with one app whose router address carries the version `v`.
fn ten_spaces(dir: &Path, v: u8) {
    for i in 0..10u8 {
        let yaml = format!(
            "space: s{i}\nnetwork: 127.{}.0.0/16\nrouter: {{private: [127.16.{v}.{i}]}}\napps:\n  - name: app-{i}\n",
            40 + i
        );
        fs::write(dir.join(format!("s{i}.yaml")), yaml).unwrap();
    }
}

/// Which version each of the ten apps answers in one snapshot, asked from inside its space.
fn versions(snapshot: &spaceroute::snapshot::Snapshot) -> Vec<String> {
    (0..10u8)
        .map(|i| {
            let q = query(&format!("app-{i}.herokuapp.com."), RecordType::A, None);
            let reply = answer(
                snapshot,
                format!("127.{}.0.5", 40 + i).parse().unwrap(),
                Transport::Tcp,
                &q,
            );
            let m = Message::from_vec(&reply.reply.unwrap()).unwrap();
            data(&m)
                .join(",")
                .split('.')
                .nth(2)
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

/// The router address that `snapshot` gives app-`i` of [`ten_spaces`].
fn router_of(snapshot: &spaceroute::snapshot::Snapshot, i: u8) -> String {
    let q = query(&format!("app-{i}.herokuapp.com."), RecordType::A, None);
    let from = format!("127.{}.0.5", 40 + i).parse().unwrap();
    let reply = answer(snapshot, from, Transport::Udp, &q);
    data(&Message::from_vec(&reply.reply.unwrap()).unwrap()).join(",")
}

#[test]
fn issue_8_a_reload_reads_and_compiles_only_the_space_files_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    ten_spaces(dir.path(), 1);
    let reloader = Reloader::load(dir.path()).unwrap();
    let before = reloader.snapshot().load_full();

    // One file edited: nine spaces are the very same compiled objects, one is new.
    let s3 = dir.path().join("s3.yaml");
    edit(&s3, "127.16.1.3", "127.16.9.3");
    let Reloaded::Swapped {
        reused, changes, ..
    } = reloader.reload()
    else {
        panic!("rejected")
    };
    assert_eq!(reused, 9);
    assert_eq!(changes.to_string(), "spaces ~s3");
    let after = reloader.snapshot().load_full();
    for i in 0..10 {
        let same = Arc::ptr_eq(&before.spaces[i], &after.spaces[i]);
        assert_eq!(same, i != 3, "space s{i}");
        let want = if i == 3 {
            "127.16.9.3".to_string()
        } else {
            format!("127.16.1.{i}")
        };
        assert_eq!(router_of(&after, i as u8), want);
    }
    assert_eq!(reloader.summary(), "10 spaces, 10 apps, 10 names");

    // Nothing changed: everything reused, nothing to report.
    let Reloaded::Swapped {
        reused, changes, ..
    } = reloader.reload()
    else {
        panic!("rejected")
    };
    assert_eq!((reused, changes.to_string().as_str()), (10, "no changes"));

    // An edit that collides with a kept space is reported at the edited file's line, and the
    // last good snapshot keeps serving.
    let s5 = dir.path().join("s5.yaml");
    edit(
        &s5,
        "  - name: app-5\n",
        "  - name: app-5\n  - name: app-2\n",
    );
    let Reloaded::Rejected(diagnostics) = reloader.reload() else {
        panic!("a duplicate app was accepted")
    };
    let errors: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
    let want = format!(
        "{}:6:11: error: app \"app-2\" is already defined",
        s5.display()
    );
    assert!(
        errors.len() == 1 && errors[0].starts_with(&want),
        "{errors:#?}"
    );
    assert_eq!(router_of(&reloader.snapshot().load(), 5), "127.16.1.5");
}

#[test]
fn issue_8_a_changed_zone_file_recompiles_the_space_that_names_it() {
    let dir = copy_dir(&fixture_dir());
    let reloader = Reloader::load(dir.path()).unwrap();
    let zone = dir.path().join("corp.example.com.zone");
    let text = fs::read_to_string(&zone).unwrap();
    fs::write(&zone, format!("{text}added 60 IN A 127.16.7.7\n")).unwrap();
    let Reloaded::Swapped {
        reused, changes, ..
    } = reloader.reload()
    else {
        panic!("rejected")
    };
    // alpha names the zone file; beta is kept.
    assert_eq!(reused, 1);
    assert!(
        changes.names.added == ["added.corp.example.com."],
        "{changes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_files_changed_at_once_never_serve_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    ten_spaces(dir.path(), 1);
    let reloader = Arc::new(Reloader::load(dir.path()).unwrap());
    let snapshot = reloader.snapshot();
    let (tx, rx) = mpsc::unbounded_channel();
    let watch = FileWatch::start(&reloader, tx).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(reload::run(
        reloader.clone(),
        Some(watch),
        rx,
        Duration::from_millis(200),
        shutdown.clone(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (snapshot, stop) = (snapshot.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let v = versions(&snapshot.load());
                assert!(v.iter().all(|x| *x == v[0]), "a mixed snapshot: {v:?}");
                if seen.last() != Some(&v[0]) {
                    seen.push(v[0].clone());
                }
            }
            seen
        })
    };
    ten_spaces(dir.path(), 2);
    eventually("version 2 everywhere", || {
        let done = versions(&snapshot.load())[0] == "2";
        async move { done }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    // Never a mix, and never the old version after the new one. How many reloads the burst
    // took depends on how the kernel spread the events; the debounce has its own test.
    assert_eq!(watcher.await.unwrap(), ["1", "2"]);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_answer_every_query_consistently() {
    let dir = copy_dir(&fixture_dir());
    let alpha = dir.path().join("alpha.yaml");
    let zone = dir.path().join("corp.example.com.zone");
    let (alpha_a, zone_a) = (
        fs::read_to_string(&alpha).unwrap(),
        fs::read_to_string(&zone).unwrap(),
    );
    // Version B moves the router and the www record together.
    let alpha_b = alpha_a.replace(
        "private: [127.16.0.10, \"fd16::10\"]",
        "private: [127.16.0.11, 127.16.0.12]",
    );
    let zone_b = zone_a.replace("127.16.5.5", "127.16.5.9");
    let reloader = Arc::new(Reloader::load(dir.path()).unwrap());
    let (udp_socket, tcp) = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp_socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(server::run(
        vec![udp_socket],
        vec![tcp],
        reloader.snapshot(),
        reloader.metrics(),
        Limits::default(),
        shutdown.clone(),
    ));

    let answers_a = [vec!["127.16.0.10"], vec!["127.16.5.5"]];
    let answers_b = [vec!["127.16.0.11", "127.16.0.12"], vec!["127.16.5.9"]];
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (c, from) in [SPACE, HQ_VPN, "127.16.9.9", "127.32.1.1"]
        .into_iter()
        .enumerate()
    {
        let (stop, asked) = (stop.clone(), asked.clone());
        let (a, b) = (answers_a.clone(), answers_b.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = tcp_connect(addr, from).await;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let which = (n + c) % 2;
                let name = ["internal-app.herokuapp.com.", "www.corp.example.com."][which];
                let m = if n.is_multiple_of(3) {
                    udp(addr, from, name, RecordType::A).await
                } else {
                    tcp_send(&mut conn, &query(name, RecordType::A, None)).await;
                    tcp_recv(&mut conn, Duration::from_secs(5))
                        .await
                        .expect("every tcp query is answered")
                };
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
                let got = data(&m);
                assert!(
                    got == a[which] || got == b[which],
                    "{name} from {from}: {got:?}"
                );
                n += 1;
                asked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for i in 0..50u32 {
        // Let every client get answers between two reloads, so that reloads overlap queries.
        let floor = asked.load(Ordering::Relaxed) + 8;
        eventually("queries between reloads", || {
            let n = asked.load(Ordering::Relaxed);
            async move { n >= floor }
        })
        .await;
        let (y, z) = if i.is_multiple_of(2) {
            (&alpha_b, &zone_b)
        } else {
            (&alpha_a, &zone_a)
        };
        fs::write(&alpha, y).unwrap();
        fs::write(&zone, z).unwrap();
        let r = reloader.clone();
        let result = tokio::task::spawn_blocking(move || r.reload())
            .await
            .unwrap();
        assert!(matches!(result, Reloaded::Swapped { .. }), "{result:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(reloader.status().generation, 51);
    shutdown.cancel();
}

/// The `/metrics` text of a running binary.
async fn scrape(b: &Binary) -> String {
    let addr = b.metrics.expect("started with --metrics");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n";
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the metric line that starts with `name ` (labels included in `name`).
fn metric(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
}

#[tokio::test]
async fn metrics_count_reloads_failures_serials_and_queries() {
    let dir = copy_dir(&fixture_dir());
    let b = Binary::start_with(dir.path(), &["--metrics", "127.0.0.1:0"]);
    // The last serial taken from the clock, which the first load gave every zone that declares
    // none: alpha's public view is one.
    let serial = serial(&b, PUBLIC, "www.example.net.").await;
    let text = scrape(&b).await;
    assert_eq!(
        metric(&text, "spaceroute_reloads_total").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&text, "spaceroute_reload_failures_total").as_deref(),
        Some("0")
    );
    assert_eq!(metric(&text, "spaceroute_serial"), Some(serial.to_string()));
    let refused = "spaceroute_dns_queries_total{transport=\"udp\",rcode=\"5\"}";
    assert_eq!(metric(&text, refused), None);

    for _ in 0..3 {
        ask(&b, PUBLIC, "internal-app.herokuapp.com.", RecordType::A).await;
    }
    edit(
        &dir.path().join("alpha.yaml"),
        "network: 127.16.0.0/16",
        "network: bogus",
    );
    b.wait_for("last reload failed", 1).await;
    let text = scrape(&b).await;
    assert_eq!(metric(&text, refused).as_deref(), Some("3"));
    // One edit is usually one reload; the watcher may see it twice, and the count follows.
    assert_eq!(
        metric(&text, "spaceroute_reload_failures_total"),
        Some(b.count("last reload failed").to_string())
    );
    assert_eq!(
        metric(&text, "spaceroute_last_reload_failed").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&text, "spaceroute_config_generation").as_deref(),
        Some("1")
    );

    edit(
        &dir.path().join("alpha.yaml"),
        "network: bogus",
        "network: 127.16.0.0/16",
    );
    b.wait_for("reloaded:", 1).await;
    let text = scrape(&b).await;
    assert_eq!(
        metric(&text, "spaceroute_last_reload_failed").as_deref(),
        Some("0")
    );
    assert_eq!(
        metric(&text, "spaceroute_config_generation"),
        Some((1 + b.count("reloaded:")).to_string())
    );
}

/// Lays out `files` as Kubernetes mounts a ConfigMap: the data in a timestamped directory,
/// `..data` pointing at it, and each file a symlink through `..data`. Returns the directory.
fn configmap_version(dir: &Path, version: &str, files: &[(String, String)]) -> String {
    let data = format!("..2026_11_30_00_00_00.{version}");
    fs::create_dir(dir.join(&data)).unwrap();
    for (name, text) in files {
        fs::write(dir.join(&data).join(name), text).unwrap();
    }
    data
}

/// The fixture's files, by name.
fn fixture_files() -> Vec<(String, String)> {
    (fs::read_dir(fixture_dir()).unwrap())
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Issue 10: Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and
/// swapping the `..data` symlink to it in one rename, then deleting the old directory. That is
/// exactly one reload, with the new answers, and no error on the way.
#[tokio::test]
async fn issue_10_a_configmap_update_by_symlink_swap_is_one_reload_with_the_new_answers() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let files = fixture_files();
    let first = configmap_version(dir.path(), "1", &files);
    symlink(&first, dir.path().join("..data")).unwrap();
    for (name, _) in &files {
        symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let b = Binary::start(dir.path());
    assert_eq!(
        ask(&b, SPACE, "new-app.herokuapp.com.", RecordType::A)
            .await
            .0,
        ResponseCode::NXDomain
    );

    // The kubelet's update: new directory, `..data_tmp` renamed over `..data`, old one removed.
    let updated: Vec<(String, String)> = (files.iter())
        .map(|(name, text)| match name.as_str() {
            "alpha.yaml" => (name.clone(), format!("{text}{NEW_APP}")),
            _ => (name.clone(), text.clone()),
        })
        .collect();
    let second = configmap_version(dir.path(), "2", &updated);
    symlink(&second, dir.path().join("..data_tmp")).unwrap();
    fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    fs::remove_dir_all(dir.path().join(&first)).unwrap();

    let private = (ResponseCode::NoError, vec!["127.16.0.10".to_string()]);
    settles(&b, SPACE, "new-app.herokuapp.com.", &private).await;
    // Let any late event run its course before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logs = b.logs();
    let reloads: Vec<&String> = logs.iter().filter(|l| l.contains("reloaded:")).collect();
    assert_eq!(reloads.len(), 1, "{}", logs.join("\n"));
    assert!(reloads[0].contains("apps +alpha/new-app"), "{}", reloads[0]);
    let bad: Vec<&String> = (logs.iter())
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Issue 10: after a known sequence of queries and requests, every DNS and router counter is
/// exactly what that sequence makes it: answers by transport and rcode, truncations, rate
/// limiting, relays, the answer-time and request-time histograms' counts, open connections by
/// listener and source, and each zone's serial.
#[tokio::test]
async fn issue_10_metrics_count_a_known_sequence_exactly() {
    let dir = copy_dir(&fixture_dir());
    let b = Binary::start_with(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let app_serial = serial(&b, SPACE, "herokuapp.com.").await;
    let corp_serial = serial(&b, SPACE, "corp.example.com.").await;
    // 2 SOA above; 3 answers, 2 refusals, 1 truncated TXT over UDP; 1 answer over TCP.
    for _ in 0..3 {
        ask(&b, SPACE, "internal-app.herokuapp.com.", RecordType::A).await;
    }
    for _ in 0..2 {
        ask(&b, PUBLIC, "internal-app.herokuapp.com.", RecordType::A).await;
    }
    let big = query("big.corp.example.com.", RecordType::TXT, None);
    let reply = udp_raw(b.dns, SPACE, &big, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(Message::from_vec(&reply).unwrap().metadata.truncation);
    tcp(b.dns, SPACE, "internal-app.herokuapp.com.", RecordType::A).await;
    // From a peer: its own audience.
    ask(&b, PROD_VPC, "open-app.herokuapp.com.", RecordType::A).await;
    // Refused as not ours (a trusted asker, a name we do not serve) and as not allowed (AXFR).
    ask(&b, SPACE, "example.net.", RecordType::A).await;
    tcp(b.dns, SPACE, "herokuapp.com.", RecordType::AXFR).await;
    // Two requests for no app of the requester's: 404s.
    for _ in 0..2 {
        let mut stream = tcp_connect(b.http.unwrap(), PUBLIC).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = "GET / HTTP/1.1\r\nHost: internal-app.herokuapp.com\r\nConnection: close\r\n\r\n";
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    }

    let text = scrape(&b).await;
    let expect = [
        (
            "spaceroute_dns_queries_total{transport=\"udp\",rcode=\"0\"}",
            "7",
        ),
        (
            "spaceroute_dns_audience_queries_total{audience=\"alpha\",rcode=\"0\"}",
            "7",
        ),
        (
            "spaceroute_dns_audience_queries_total{audience=\"alpha\",rcode=\"5\"}",
            "2",
        ),
        (
            "spaceroute_dns_audience_queries_total{audience=\"alpha/prod-vpc\",rcode=\"0\"}",
            "1",
        ),
        (
            "spaceroute_dns_audience_queries_total{audience=\"public\",rcode=\"5\"}",
            "2",
        ),
        (
            "spaceroute_dns_queries_total{transport=\"udp\",rcode=\"5\"}",
            "3",
        ),
        (
            "spaceroute_dns_queries_total{transport=\"tcp\",rcode=\"0\"}",
            "1",
        ),
        (
            "spaceroute_dns_queries_total{transport=\"tcp\",rcode=\"5\"}",
            "1",
        ),
        ("spaceroute_dns_refused_total{reason=\"public\"}", "2"),
        ("spaceroute_dns_refused_total{reason=\"not_ours\"}", "1"),
        ("spaceroute_dns_refused_total{reason=\"not_allowed\"}", "1"),
        ("spaceroute_dns_truncated_total", "1"),
        ("spaceroute_dns_dropped_total", "0"),
        ("spaceroute_dns_rate_limited_total{action=\"drop\"}", "0"),
        ("spaceroute_dns_rate_limited_total{action=\"slip\"}", "0"),
        ("spaceroute_dns_relayed_total", "0"),
        ("spaceroute_dns_relay_failures_total", "0"),
        ("spaceroute_dns_answer_seconds_count", "12"),
        (
            "spaceroute_http_requests_total{status=\"404\",code=\"\"}",
            "2",
        ),
        ("spaceroute_http_request_seconds_count", "2"),
        (
            "spaceroute_open_connections{listener=\"router\",source=\"public\"}",
            "0",
        ),
        (
            "spaceroute_open_connections{listener=\"dns_tcp\",source=\"trusted\"}",
            "0",
        ),
        ("spaceroute_reloads_total", "1"),
    ];
    let mut wrong = Vec::new();
    for (name, want) in expect {
        let got = metric(&text, name);
        if got.as_deref() != Some(want) {
            wrong.push(format!("{name}: {got:?}, not {want}"));
        }
    }
    let zone = |space: &str, zone: &str| {
        metric(
            &text,
            &format!("spaceroute_zone_serial{{space=\"{space}\",zone=\"{zone}\"}}"),
        )
    };
    if zone("alpha", "app domain (trusted)") != Some(app_serial.to_string()) {
        wrong.push(format!("alpha's app domain serial: {app_serial}"));
    }
    if zone("alpha", "corp.example.com. (trusted)") != Some(corp_serial.to_string()) {
        wrong.push(format!("corp.example.com's serial: {corp_serial}"));
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
}
