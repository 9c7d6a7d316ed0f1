//! Relays a query for an unlisted name under an app domain to that domain's upstreams
//! (`unlisted.policy: forward`), for the askers [`answer`](super::answer::answer) chose.
//!
//! No cache and no recursion of our own: each query goes out once per upstream in turn, over
//! UDP with a fresh random ID, then over TCP when the answer is truncated; the first answer
//! that matches the question goes back with the asker's ID, truncated if it does not fit the
//! asker's UDP size. A bound on relays in flight keeps a flood from turning into one.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, Query};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::dns::answer::Transport;
use crate::dns::wire;

/// Relays queries to upstream servers.
#[derive(Debug)]
pub struct Forwarder {
    in_flight: Arc<Semaphore>,
    /// How long one upstream gets for one exchange (UDP, then TCP).
    timeout: Duration,
    ids: RandomState,
    sent: AtomicU64,
}

impl Forwarder {
    /// A forwarder that relays at most `max_in_flight` queries at once, giving each upstream
    /// `timeout` per exchange.
    pub fn new(max_in_flight: usize, timeout: Duration) -> Forwarder {
        Forwarder {
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            timeout,
            ids: RandomState::new(),
            sent: AtomicU64::new(0),
        }
    }

    /// Relays `query` to `upstreams` in turn and returns the first matching answer, with the
    /// query's ID; over UDP (`transport`), one larger than `limit` is truncated. `None` when
    /// every upstream failed or too many relays are in flight: the caller sends SERVFAIL.
    pub async fn relay(
        &self,
        upstreams: &[SocketAddr],
        query: &[u8],
        transport: Transport,
        limit: u16,
    ) -> Option<Vec<u8>> {
        let _permit = self.in_flight.try_acquire().ok()?;
        // Cookies are between the asker and us, and between us and the upstream: the asker's
        // do not go on, the upstream's do not come back (we add ours to the reply).
        let mut outgoing = query.to_vec();
        wire::strip_option(&mut outgoing, wire::OPTION_COOKIE);
        let id = self.ids.hash_one(self.sent.fetch_add(1, Ordering::Relaxed)) as u16;
        outgoing.get_mut(..2)?.copy_from_slice(&id.to_be_bytes());
        let question = question(&outgoing)?;
        for &upstream in upstreams {
            let Some(mut reply) = self.exchange(upstream, &outgoing, &question).await else {
                continue;
            };
            reply.get_mut(..2)?.copy_from_slice(query.get(..2)?);
            wire::strip_option(&mut reply, wire::OPTION_COOKIE);
            if transport == Transport::Udp && reply.len() > usize::from(limit) {
                return truncated(&reply);
            }
            return Some(reply);
        }
        None
    }

    /// One upstream: UDP, then TCP if the UDP answer is truncated.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        query: &[u8],
        question: &Question,
    ) -> Option<Vec<u8>> {
        let reply = timeout(self.timeout, udp(upstream, query, question))
            .await
            .ok()?
            .ok()?;
        // TC is bit 1 of the third header byte.
        if reply.get(2).is_some_and(|flags| flags & 0x02 != 0) {
            return timeout(self.timeout, tcp(upstream, query, question))
                .await
                .ok()?
                .ok();
        }
        Some(reply)
    }
}

/// A message's ID and question, which an upstream's answer must repeat.
#[derive(Debug, PartialEq)]
struct Question {
    id: u16,
    query: Query,
}

fn question(message: &[u8]) -> Option<Question> {
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).ok()?;
    (header.counts.queries == 1).then_some(())?;
    Some(Question {
        id: header.metadata.id,
        query: Query::read(&mut decoder).ok()?,
    })
}

/// Whether `reply` answers `asked`: a response with the same ID and question.
fn answers(reply: &[u8], asked: &Question) -> bool {
    let is_response = reply.get(2).is_some_and(|flags| flags & 0x80 != 0);
    is_response && question(reply).as_ref() == Some(asked)
}

async fn udp(upstream: SocketAddr, query: &[u8], asked: &Question) -> io::Result<Vec<u8>> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything else (a late or forged datagram) is ignored; the timeout ends the wait.
        if answers(&buf[..len], asked) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn tcp(upstream: SocketAddr, query: &[u8], asked: &Question) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    match answers(&reply, asked) {
        true => Ok(reply),
        false => Err(io::Error::other("upstream answered another question")),
    }
}

/// `reply` cut to its header and question, with TC set, so the asker retries over TCP.
fn truncated(reply: &[u8]) -> Option<Vec<u8>> {
    let mut message = Message::from_vec(reply).ok()?;
    (message.metadata.message_type == MessageType::Response).then_some(())?;
    message.metadata.truncation = true;
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.signature = None;
    message.to_vec().ok()
}
