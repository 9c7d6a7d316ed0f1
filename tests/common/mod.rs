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
        let config = spaceroute::config::load_dir(dir).expect("test config is valid");
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot::compile(&config, |_| 1)));
        let (udp, tcp) = server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = udp.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server::run(
            vec![udp],
            vec![tcp],
            snapshot.clone(),
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
