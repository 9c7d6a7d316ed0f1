//! The shared harness of the integration tests: a spaceroute DNS server in the test process on
//! 127.0.0.1:0, and clients bound to chosen loopback sources so that one machine plays the
//! space (127.16.x.x), its peers (127.31.x.x, 127.32.x.x) and the public (127.200.x.x).

#![allow(dead_code)] // each test binary uses a part of the harness

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use spaceroute::dns::server::{self, Limits};
use spaceroute::snapshot::{self, Snapshot};

/// Askers, one per network of the two-spaces fixture.
pub const SPACE: &str = "127.16.0.5";
pub const PROD_VPC: &str = "127.31.0.5";
pub const HQ_VPN: &str = "127.32.0.5";
pub const BETA: &str = "127.17.0.5";
pub const PUBLIC: &str = "127.200.0.1";

/// The directory of the two-spaces fixture.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/two-spaces")
}

/// A running DNS server; dropping it shuts the server down.
pub struct Server {
    /// The UDP and TCP address (same port).
    pub addr: SocketAddr,
    /// The snapshot it serves, to swap in tests.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on the config in `dir` with default limits.
    pub async fn start(dir: &Path) -> Server {
        Server::start_with(dir, Limits::default()).await
    }

    /// Starts a server on the config in `dir` with `limits`.
    pub async fn start_with(dir: &Path, limits: Limits) -> Server {
        Server::start_at(dir, "127.0.0.1:0".parse().unwrap(), limits).await
    }

    /// Starts a server on the config in `dir`, listening on `addr` (port 0 picks a free port)
    /// with `limits`; for a server on `[::1]:0`, say.
    pub async fn start_at(dir: &Path, addr: SocketAddr, limits: Limits) -> Server {
        let config = spaceroute::config::load_dir(dir).expect("test config is valid");
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot::compile(&config, |_| 1)));
        let (udp, tcp) = server::bind(addr).await.expect("bind");
        let addr = udp.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server::run(
            vec![udp],
            vec![tcp],
            snapshot.clone(),
            Default::default(),
            limits,
            shutdown.clone(),
        ));
        Server {
            addr,
            snapshot,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Cancels the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .expect("server stops")
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A query message for `name`/`qtype` with RD set and EDNS when `edns` is given.
pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("test name"),
        qtype,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

/// Sends `bytes` over UDP from `from` (port 0) to `to`; the reply, or `None` after `wait`.
pub async fn udp_raw(to: SocketAddr, from: &str, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let ip: IpAddr = from.parse().unwrap();
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .expect("bind client");
    socket.send_to(bytes, to).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Asks over UDP from `from` and decodes the reply.
pub async fn udp(to: SocketAddr, from: &str, name: &str, qtype: RecordType) -> Message {
    let bytes = query(name, qtype, Some(1232));
    let reply = udp_raw(to, from, &bytes, Duration::from_secs(3))
        .await
        .expect("udp reply");
    let m = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
    m
}

/// Opens a TCP connection from `from` to `to`.
pub async fn tcp_connect(to: SocketAddr, from: &str) -> TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(SocketAddr::new(ip, 0)).expect("bind client");
    socket.connect(to).await.expect("connect")
}

/// Writes one length-prefixed DNS message.
pub async fn tcp_send(stream: &mut TcpStream, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
    stream.write_all(&len).await.unwrap();
    stream.write_all(bytes).await.unwrap();
}

/// Reads one length-prefixed DNS message, or `None` if the connection closes or `wait` passes.
pub async fn tcp_recv(stream: &mut TcpStream, wait: Duration) -> Option<Message> {
    let read = async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// Asks over a new TCP connection from `from` and decodes the reply.
pub async fn tcp(to: SocketAddr, from: &str, name: &str, qtype: RecordType) -> Message {
    let mut stream = tcp_connect(to, from).await;
    tcp_send(&mut stream, &query(name, qtype, None)).await;
    tcp_recv(&mut stream, Duration::from_secs(3))
        .await
        .expect("tcp reply")
}

/// The answer section's data as sorted text.
pub fn data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// The authority section's SOA as (owner, MNAME, TTL), if there is one.
pub fn authority_soa(m: &Message) -> Option<(String, String, u32)> {
    m.authorities.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(soa) => {
            Some((r.name.to_ascii(), soa.mname.to_ascii(), r.ttl))
        }
        _ => None,
    })
}

/// A UDP client socket bound to `from` on a free port.
pub async fn udp_client(from: &str) -> UdpSocket {
    let ip: IpAddr = from.parse().unwrap();
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .expect("bind client")
}

/// The ID of a DNS message in wire form.
pub fn id_of(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// Waits up to `wait` for the server to close `stream`; `true` if it closed (EOF or reset)
/// without sending a byte, `false` if data came or the time ran out.
pub async fn tcp_closed_without_reply(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The `spaceroute serve` binary running on a zones directory, DNS on 127.0.0.1:0.
pub struct Binary {
    child: std::process::Child,
    /// Where it serves DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// Where its router serves HTTP.
    pub http: Option<SocketAddr>,
    /// Where its router serves HTTPS: set by [`Binary::start_with`] when given `--https`.
    pub https: Option<SocketAddr>,
    /// Where it serves `/metrics`: set by [`Binary::start_with`] when given `--metrics`.
    pub metrics: Option<SocketAddr>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts the binary on `zones` (DNS and HTTP on 127.0.0.1:0) and waits until it listens.
    pub fn start(zones: &Path) -> Binary {
        Binary::start_with(zones, &[])
    }

    /// Starts the binary on `zones` like [`Binary::start`] (DNS and HTTP on 127.0.0.1:0) with
    /// `extra` arguments after those, e.g. `--https 127.0.0.1:0 --tls-cert PEM --tls-key PEM`;
    /// waits for its `listening dns`, `listening http=` and (when `extra` has `--https`)
    /// `listening https=` lines. With several addresses of a kind, the first one logged is kept.
    pub fn start_with(zones: &Path, extra: &[&str]) -> Binary {
        Binary::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_spaceroute")),
            zones,
            extra,
        )
    }

    /// [`Binary::start_with`] under a limit of `open_files` open files, soft and hard, as a
    /// service manager would set it (util-linux `prlimit`, which execs: the PID is the
    /// binary's).
    pub fn start_limited(zones: &Path, extra: &[&str], open_files: u64) -> Binary {
        let mut prlimit = std::process::Command::new("prlimit");
        prlimit
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg(env!("CARGO_BIN_EXE_spaceroute"));
        Binary::spawn(prlimit, zones, extra)
    }

    fn spawn(mut command: std::process::Command, zones: &Path, extra: &[&str]) -> Binary {
        use std::io::BufRead;
        let mut child = command
            .args([
                "serve",
                "--dns",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--zones",
            ])
            .arg(zones)
            .args(extra)
            .env("SPACEROUTE_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn spaceroute");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                for (kind, marker) in [
                    ("dns", "listening dns udp="),
                    ("http", "listening http="),
                    ("https", "listening https="),
                    ("metrics", "listening metrics="),
                ] {
                    if let Some(at) = line.split(marker).nth(1) {
                        let addr = at.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send((kind, addr));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let want_https = extra.contains(&"--https");
        let want_metrics = extra.contains(&"--metrics");
        let (mut dns, mut http, mut https, mut metrics) = (None, None, None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while dns.is_none()
            || http.is_none()
            || (want_https && https.is_none())
            || (want_metrics && metrics.is_none())
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok((kind, addr)) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "spaceroute did not print its addresses (dns {dns:?}, http {http:?}, \
                     https {https:?}):\n{}",
                    lines.lock().unwrap().join("\n")
                );
            };
            let addr: SocketAddr = addr.parse().expect("a listening address");
            let slot = match kind {
                "dns" => &mut dns,
                "http" => &mut http,
                "https" => &mut https,
                _ => &mut metrics,
            };
            slot.get_or_insert(addr);
        }
        Binary {
            child,
            dns: dns.unwrap(),
            http,
            https,
            metrics,
            lines,
        }
    }

    /// Every line it has logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many logged lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `count(needle)` reaches `n`; panics after 10 s with the log.
    pub async fn wait_for(&self, needle: &str, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.count(needle) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no {n}x {needle:?} in log:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the files of `from` (not below it) into a new temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Writes `text` to `path` the way editors do: a temporary file renamed over the old one.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
