//! The UDP workers: OS threads that read queries in batches (`recvmmsg`), answer them from one
//! snapshot load per batch and write the replies in batches (`sendmmsg`).
//!
//! One worker per core, each on its own `SO_REUSEPORT` socket bound to the same address, so the
//! kernel spreads queries over them with no shared receive queue (NSD and Knot do the same).
//! Threads rather than tokio tasks: a worker does nothing but read, answer and write, and a
//! blocking batch read costs one system call for up to [`BATCH`] queries where a readiness loop
//! costs several per query. Queries to relay go to the tokio runtime, so a worker never waits on
//! an upstream. A worker sees shutdown within [`POLL`].

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::answer::{Transport, answer};
use super::server::{Server, record, respond, unix_now};
use super::xfr;

/// The most datagrams one system call reads or writes.
const BATCH: usize = 32;

/// The largest query read; a longer datagram is cut, so it answers FORMERR. DNS over UDP
/// queries are a few hundred bytes.
const MAX_QUERY: usize = 4096;

/// How often a blocked worker looks for shutdown.
const POLL: Duration = Duration::from_millis(100);

/// A UDP socket bound to `addr` with `SO_REUSEPORT`, so that more can join it (`addr`'s port
/// may be 0).
pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `workers` sockets for the address of `first` (itself included): siblings bound with
/// `SO_REUSEPORT`, or, where that fails (a socket bound without it), clones of `first`.
pub(super) fn siblings(first: UdpSocket, workers: usize) -> io::Result<Vec<UdpSocket>> {
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    while sockets.len() < workers.max(1) {
        let next = match bind(addr) {
            Ok(socket) => socket,
            Err(e) => {
                debug!(%addr, error = %e, "no SO_REUSEPORT sibling; workers share one socket");
                sockets[0].try_clone()?
            }
        };
        sockets.push(next);
    }
    Ok(sockets)
}

/// Serves queries on `socket` until shutdown: the body of one worker thread.
pub(super) fn serve(socket: UdpSocket, server: Arc<Server>, tasks: TaskTracker) {
    if let Err(e) = socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(POLL)))
    {
        return warn!(error = %e, "udp worker cannot set its socket up");
    }
    let socket = Arc::new(socket);
    let fd = socket.as_raw_fd();
    let counters = server.metrics.dns_counters();
    let mut buffers = vec![[0u8; MAX_QUERY]; BATCH];
    let mut received: Vec<(usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut read_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut write_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    while !server.shutdown.is_cancelled() {
        received.clear();
        {
            let mut slices: Vec<[IoSliceMut; 1]> =
                (buffers.iter_mut()).map(|b| [IoSliceMut::new(b)]).collect();
            // MSG_WAITFORONE: block (up to POLL) for the first datagram, then take what is queued.
            match recvmmsg(
                fd,
                &mut read_headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(messages) => received.extend(messages.filter_map(|m| {
                    let peer = m.address.as_ref().and_then(socket_addr)?;
                    Some((m.bytes.min(MAX_QUERY), peer))
                })),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                // An ICMP error from an earlier send surfaces here on some systems.
                Err(e) => {
                    debug!(error = %e, "udp receive failed");
                    continue;
                }
            }
        }
        let started = Instant::now();
        let snapshot = server.snapshot.load();
        for (buffer, &(len, peer)) in buffers.iter().zip(&received) {
            let query = &buffer[..len];
            if let Some(xfr) = xfr::handle(
                &snapshot,
                &server.journal,
                peer.ip(),
                Transport::Udp,
                query,
                unix_now(),
            ) {
                if let xfr::Xfr::Reply(reply) = xfr {
                    replies.push((reply, peer));
                }
                continue;
            }
            let result = answer(&snapshot, peer.ip(), Transport::Udp, query);
            if result.outcome.forward.is_some() {
                let (server, socket, query) = (server.clone(), socket.clone(), query.to_vec());
                tasks.spawn(async move {
                    let reply = respond(&server, result, &query, peer, Transport::Udp).await;
                    let snapshot = server.snapshot.load();
                    let counters = server.metrics.dns_shared();
                    let reply = reply.and_then(|reply| {
                        server.guard(
                            &snapshot,
                            counters,
                            reply,
                            &query,
                            peer.ip(),
                            Transport::Udp,
                        )
                    });
                    if let Some(reply) = reply
                        && let Err(e) = socket.send_to(&reply, peer)
                    {
                        debug!(error = %e, %peer, "udp send failed");
                    }
                });
                continue;
            }
            record(&counters, &result, query, peer, Transport::Udp);
            let reply = result.reply.and_then(|reply| {
                server.guard(
                    &snapshot,
                    &counters,
                    reply,
                    query,
                    peer.ip(),
                    Transport::Udp,
                )
            });
            if let Some(reply) = reply {
                replies.push((reply, peer));
            }
        }
        drop(snapshot);
        if !received.is_empty() {
            let n = received.len() as u32;
            counters.answered_in(started.elapsed() / n, u64::from(n));
        }
        send_all(fd, &mut write_headers, &replies);
        replies.clear();
    }
}

/// Writes every reply, in as few `sendmmsg` calls as the kernel allows; a reply the kernel
/// refuses (an unreachable peer) is skipped.
fn send_all(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[(Vec<u8>, SocketAddr)],
) {
    let mut rest = replies;
    while !rest.is_empty() {
        let slices: Vec<[IoSlice; 1]> = rest.iter().map(|(r, _)| [IoSlice::new(r)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = (rest.iter())
            .map(|(_, peer)| Some(SockaddrStorage::from(*peer)))
            .collect();
        let sent = sendmmsg(
            fd,
            headers,
            &slices,
            &addrs,
            [] as [ControlMessage; 0],
            MsgFlags::empty(),
        )
        .map(Iterator::count);
        match sent {
            Err(Errno::EINTR) => {}
            Ok(n) => rest = &rest[n.clamp(1, rest.len())..],
            Err(e) => {
                debug!(error = %e, peer = %rest[0].1, "udp send failed");
                rest = &rest[1..];
            }
        }
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    (address.as_sockaddr_in().map(|a| SocketAddr::from(*a)))
        .or_else(|| address.as_sockaddr_in6().map(|a| SocketAddr::from(*a)))
}
