//! The DNS socket loops: read a query, load the snapshot once, call [`answer`], write or drop.
//!
//! No DNS decisions are made here. Servers are given bound sockets and a shutdown token (as in
//! mini-redis), so tests bind port 0. UDP runs on worker threads ([`super::udp`]); TCP (RFC 7766)
//! reads length-prefixed queries one after another on each connection, so a client may
//! pipeline, and closes a connection idle for `tcp_idle`. Connections are admitted by a
//! [`Gate`]: at most `tcp_max_connections`, of which untrusted sources hold at most
//! half (64 per address, 256 per /24 or /64), so that the public cannot take the places of a
//! space's resolvers; when a cap is reached, the connection under it idle longest (for at least
//! [`EVICT_AFTER`]) is closed to make room (RFC 7766 §6.2.2). A connection answers one query at
//! a time, so queries in flight over TCP are at most the connections. A query that `answer`
//! marks for relaying goes to the [`Forwarder`] (in its own task over UDP, so the receive loop
//! never waits on an upstream).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{Admitted, Capacity, Gate};
use crate::dns::answer::{Answer, Transport, answer};
use crate::dns::cookie::{self, Cookies, Seen};
use crate::dns::forward::Forwarder;
use crate::dns::rrl::{self, RateLimits, Rrl, Verdict};
use crate::dns::{notify, udp, wire, xfr};
use crate::metrics::{self, DnsCounters, Metrics, Refusal};
use crate::snapshot::Snapshot;

/// Limits of the DNS server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a TCP connection may sit between queries before it is closed.
    pub tcp_idle: Duration,
    /// The most TCP connections open at once; more are closed on accept.
    pub tcp_max_connections: usize,
    /// UDP worker threads per address, each on its own `SO_REUSEPORT` socket.
    pub udp_workers: usize,
    /// The most queries relayed to upstreams at once; more get SERVFAIL.
    pub forward_in_flight: usize,
    /// How long an upstream has to answer one relayed query (over UDP, then again over TCP).
    pub forward_timeout: Duration,
    /// Response rate limits for UDP.
    pub rate: RateLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tcp_idle: Duration::from_secs(10),
            tcp_max_connections: 512,
            udp_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            forward_in_flight: 512,
            forward_timeout: Duration::from_millis(1500),
            rate: RateLimits::default(),
        }
    }
}

/// How long a TCP connection must have been idle to be closed for a newcomer when full.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

/// What every loop of one DNS server shares.
pub(super) struct Server {
    pub(super) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(super) metrics: Arc<Metrics>,
    limits: Limits,
    connections: Arc<Gate>,
    forwarder: Forwarder,
    rrl: Rrl,
    cookies: Cookies,
    /// Recent changes of the zones secondaries follow, for IXFR.
    pub(super) journal: Arc<xfr::Journal>,
    pub(super) shutdown: CancellationToken,
}

/// Serves DNS on `udp` and `tcp` from the current snapshot, counting into `metrics`, until
/// `shutdown` is cancelled, then waits for queries in flight to finish.
pub async fn run(
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Gate::evicting(
        "dns tcp",
        Capacity::for_total(limits.tcp_max_connections),
        EVICT_AFTER,
    );
    metrics.watch_gate("dns_tcp", connections.clone());
    let server = Arc::new(Server {
        snapshot,
        metrics,
        limits,
        connections,
        forwarder: Forwarder::new(limits.forward_in_flight, limits.forward_timeout),
        rrl: Rrl::new(limits.rate),
        cookies: Cookies::new(),
        journal: Arc::new(xfr::Journal::default()),
        shutdown,
    });
    let tasks = TaskTracker::new();
    tasks.spawn(notify::run(
        server.snapshot.clone(),
        server.journal.clone(),
        server.shutdown.clone(),
    ));
    for socket in udp {
        let sockets = socket
            .into_std()
            .and_then(|first| udp::siblings(first, limits.udp_workers));
        match sockets {
            Ok(sockets) => {
                for socket in sockets {
                    let (server, relays) = (server.clone(), tasks.clone());
                    tasks.spawn_blocking(move || udp::serve(socket, server, relays));
                }
            }
            Err(e) => warn!(error = %e, "cannot serve a udp socket"),
        }
    }
    for listener in tcp {
        tasks.spawn(accept_tcp(listener, server.clone(), tasks.clone()));
    }
    tasks.close();
    tasks.wait().await;
}

/// What goes back for `result`: its reply, or for a query to relay, the upstreams' answer (the
/// prepared SERVFAIL when none comes); counted and logged either way.
pub(super) async fn respond(
    server: &Server,
    mut result: Answer,
    query: &[u8],
    peer: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    if let Some(forward) = result.outcome.forward {
        let upstreams = (server.snapshot.load().spaces.get(forward.space))
            .map(|space| space.upstreams.clone())
            .unwrap_or_default();
        let relayed = (server.forwarder)
            .relay(&upstreams, query, transport, forward.limit)
            .await;
        server.metrics.dns_shared().relayed(relayed.is_some());
        match relayed {
            Some(reply) => {
                // RCODE is the low nibble of the fourth header byte.
                let rcode = reply.get(3).map_or(0, |b| u16::from(b & 0x0f));
                result.outcome.rcode = rcode.into();
                result.reply = Some(reply);
            }
            None => debug!(%peer, ?upstreams, "no upstream answered a relayed query"),
        }
    }
    record(server.metrics.dns_shared(), &result, query, peer, transport);
    result.reply
}

impl Server {
    /// What goes out for `reply` to `query` from `client` over `transport`: with our cookie
    /// when the query had one (FORMERR for a malformed one), and over UDP within the rate
    /// limits unless the query's server cookie proves its source (a truncated stand-in or
    /// nothing past them).
    pub(super) fn guard(
        &self,
        snapshot: &Snapshot,
        counters: &DnsCounters,
        mut reply: Vec<u8>,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32)
        };
        // The clock is read only for a query that has a cookie.
        let seen = self.cookies.check(query, client, now);
        match seen {
            Seen::None => {}
            Seen::Malformed => reply = cookie::formerr(reply),
            Seen::Client(client_cookie) | Seen::Valid(client_cookie) => {
                let limit = match transport {
                    Transport::Udp => (wire::find_opt(query))
                        .map_or(512, |opt| opt.payload(query))
                        .clamp(512, 1232),
                    Transport::Tcp => u16::MAX,
                };
                (self.cookies).answer(&mut reply, client_cookie, client, now(), limit.into());
            }
        }
        let first = snapshot.access.first(client);
        let audience =
            first.and_then(|(space, member)| Some(snapshot.spaces.get(space)?.audience(member)));
        let trusted = first.is_some();
        let rcode = reply.get(3).map_or(0, |b| b & 0x0f);
        counters.audience(audience.unwrap_or("public"), u16::from(rcode));
        if rcode == 5 {
            counters.refused(refusal(query, trusted));
        }
        if transport == Transport::Tcp || matches!(seen, Seen::Valid(_)) {
            return Some(reply);
        }
        match self.rrl.check(client, trusted, query, &reply) {
            Verdict::Send => Some(reply),
            Verdict::Slip => {
                counters.rate_limited(true);
                Some(rrl::slipped(reply))
            }
            Verdict::Drop => {
                counters.rate_limited(false);
                None
            }
        }
    }
}

/// Why `query` from an asker that some space trusts (or not) was REFUSED.
fn refusal(query: &[u8], trusted: bool) -> Refusal {
    // The question's type and class are its last four bytes.
    let end = wire::question_end(query).unwrap_or(0);
    let tail = query.get(end.saturating_sub(4)..end).unwrap_or(&[]);
    let not_offered = match tail {
        [t0, t1, c0, c1] => {
            matches!(u16::from_be_bytes([*t0, *t1]), 251 | 252)
                || u16::from_be_bytes([*c0, *c1]) != 1
        }
        _ => false,
    };
    match (not_offered, trusted) {
        (true, _) => Refusal::NotAllowed,
        (false, true) => Refusal::NotOurs,
        (false, false) => Refusal::Public,
    }
}

async fn accept_tcp(listener: TcpListener, server: Arc<Server>, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = server.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(r) => r,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let trusted = server.snapshot.load().access.trusted(peer.ip());
        let Ok(admitted) = server.connections.admit(peer.ip(), trusted) else {
            debug!(%peer, "tcp connection cap reached, closing");
            continue;
        };
        let server = server.clone();
        tasks.spawn(async move {
            if let Err(e) = serve_tcp(stream, peer, &server, &admitted).await {
                debug!(error = %e, %peer, "tcp connection ended");
            }
        });
    }
}

/// Answers length-prefixed queries on one connection until the client closes it, it idles
/// past the idle limit, a read or write fails, the gate evicts it, or shutdown (which lets the
/// query being answered finish).
async fn serve_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: &Server,
    admitted: &Admitted,
) -> io::Result<()> {
    let idle = server.limits.tcp_idle;
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = tokio::select! {
            r = tokio::time::timeout(idle, stream.read_u16()) => match r {
                Ok(Ok(len)) => usize::from(len),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            },
            () = admitted.evicted() => {
                debug!(%peer, "idle tcp connection closed for a newcomer");
                return Ok(());
            }
            () = server.shutdown.cancelled() => return Ok(()),
        };
        admitted.touch();
        let message = &mut buf[..len];
        tokio::time::timeout(idle, stream.read_exact(message)).await??;
        let started = Instant::now();
        let snapshot = server.snapshot.load();
        let xfr = xfr::handle(
            &snapshot,
            &server.journal,
            peer.ip(),
            Transport::Tcp,
            message,
            unix_now(),
        );
        let result = match xfr {
            None => answer(&snapshot, peer.ip(), Transport::Tcp, message),
            Some(xfr) => {
                drop(snapshot);
                match xfr {
                    xfr::Xfr::Reply(reply) => write_framed(&mut stream, &reply, idle).await?,
                    xfr::Xfr::Transfer(transfer) => {
                        send_transfer(&mut stream, transfer, idle, peer).await?;
                    }
                }
                admitted.touch();
                continue;
            }
        };
        drop(snapshot);
        let Some(reply) = respond(server, result, message, peer, Transport::Tcp).await else {
            continue;
        };
        let snapshot = server.snapshot.load();
        let counters = server.metrics.dns_shared();
        let guarded = server.guard(
            &snapshot,
            counters,
            reply,
            message,
            peer.ip(),
            Transport::Tcp,
        );
        counters.answered_in(started.elapsed(), 1);
        let Some(reply) = guarded else {
            continue;
        };
        write_framed(&mut stream, &reply, idle).await?;
        admitted.touch();
    }
}

/// Writes one length-prefixed message; one too long for the prefix is not sent.
async fn write_framed(stream: &mut TcpStream, reply: &[u8], idle: Duration) -> io::Result<()> {
    let Ok(reply_len) = u16::try_from(reply.len()) else {
        return Ok(());
    };
    let mut framed = Vec::with_capacity(reply.len() + 2);
    framed.extend_from_slice(&reply_len.to_be_bytes());
    framed.extend_from_slice(reply);
    tokio::time::timeout(idle, stream.write_all(&framed)).await??;
    Ok(())
}

/// Streams a zone transfer: its messages are built on a blocking thread a few ahead of the
/// socket, so a large zone is never in memory whole and never holds up an async worker.
async fn send_transfer(
    stream: &mut TcpStream,
    transfer: Box<xfr::Transfer>,
    idle: Duration,
    peer: SocketAddr,
) -> io::Result<()> {
    let started = Instant::now();
    let zone = transfer.zone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        for message in transfer {
            if tx.blocking_send(message).is_err() {
                break;
            }
        }
    });
    let (mut messages, mut bytes) = (0u64, 0u64);
    while let Some(message) = rx.recv().await {
        write_framed(stream, &message, idle).await?;
        messages += 1;
        bytes += message.len() as u64;
    }
    let _ = producer.await;
    info!(%peer, zone, messages, bytes, ms = started.elapsed().as_millis() as u64, "zone transfer sent");
    Ok(())
}

/// Seconds since 1970, for TSIG.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The query log: every `every`-th query is logged at info (0: none), switchable at run time
/// (`spaceroute serve --query-log N`, SIGUSR1). One per process, as the log it writes to.
pub static QUERY_LOG: QueryLog = QueryLog {
    every: AtomicU32::new(0),
    seen: AtomicU64::new(0),
};

/// See [`QUERY_LOG`].
#[derive(Debug)]
pub struct QueryLog {
    every: AtomicU32,
    seen: AtomicU64,
}

impl QueryLog {
    /// Logs one query in `every` from now on; 0 turns the log off.
    pub fn set(&self, every: u32) {
        self.every.store(every, Ordering::Relaxed);
    }

    /// One query in how many is logged; 0 when the log is off.
    pub fn every(&self) -> u32 {
        self.every.load(Ordering::Relaxed)
    }

    /// Whether this query is one to log.
    fn sampled(&self) -> bool {
        match self.every.load(Ordering::Relaxed) {
            0 => false,
            every => self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(u64::from(every)),
        }
    }
}

/// Counts a query, and logs it when the query log samples it.
pub(super) fn record(
    counters: &DnsCounters,
    result: &Answer,
    query: &[u8],
    peer: SocketAddr,
    transport: Transport,
) {
    let (counted, transport) = match transport {
        Transport::Udp => (metrics::Transport::Udp, "udp"),
        Transport::Tcp => (metrics::Transport::Tcp, "tcp"),
    };
    let rcode = result
        .reply
        .as_ref()
        .map(|_| u16::from(result.outcome.rcode));
    counters.query(counted, rcode);
    if result.outcome.truncated && result.reply.is_some() {
        counters.truncated();
    }
    if !QUERY_LOG.sampled() {
        return;
    }
    let client: IpAddr = peer.ip();
    let name = wire::question(query).unwrap_or_default();
    let (qname, qtype) = (&name.0, name.1);
    match &result.reply {
        None => info!(target: "spaceroute::query", %client, transport, qname, qtype, "dropped"),
        Some(_) => info!(
            target: "spaceroute::query",
            %client,
            transport,
            qname,
            qtype,
            rcode = %result.outcome.rcode,
            space = result.outcome.space,
            truncated = result.outcome.truncated,
            relayed = result.outcome.forward.is_some(),
            "answered"
        ),
    }
}

/// Binds UDP and TCP on the same address; for port 0, on the same free port. The UDP socket
/// has `SO_REUSEPORT`, so the workers' sockets can join it.
pub async fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = TcpListener::bind(addr).await?;
        let mut at = addr;
        at.set_port(tcp.local_addr()?.port());
        match udp::bind(at) {
            Ok(udp) => {
                udp.set_nonblocking(true)?;
                return Ok((UdpSocket::from_std(udp)?, tcp));
            }
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port for both udp and tcp")))
}
