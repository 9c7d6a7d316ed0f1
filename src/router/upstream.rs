//! Connections to dynos (upstreams): a keep-alive pool per dyno address, the connect timeout,
//! and the down marks that make the router skip a dyno that refused a connection.
//!
//! HTTP/1.1 only, as Heroku's router speaks to dynos. A pooled connection is handed out again
//! only once the response it carried has been read to the end (the response body returns it);
//! a connection for a WebSocket upgrade is never pooled.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Errors carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of requests sent to dynos and of responses sent to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle connections kept per dyno.
const MAX_IDLE_PER_DYNO: usize = 64;

/// How long an idle connection is kept. Short, because app servers close idle keep-alive
/// connections early (gunicorn after 2 s, Node after 5 s) and a request sent on a connection the
/// dyno is closing fails; a bodiless GET or HEAD is retried on a new connection (see `proxy`).
const IDLE_FOR: Duration = Duration::from_secs(2);

/// An idle connection and since when it is idle.
type Pooled = (SendRequest<ProxyBody>, Instant);

/// Why no connection to a dyno could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The dyno refused or reset the connection.
    Refused(io::Error),
    /// No connection within the connect timeout.
    Timeout,
    /// The HTTP/1 handshake failed.
    Handshake(hyper::Error),
}

/// The connections to every dyno.
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Pooled>>>,
    down: Mutex<HashMap<SocketAddr, Instant>>,
    connect_timeout: Duration,
    down_for: Duration,
}

impl Upstreams {
    /// An empty pool with the given connect timeout and down-mark duration.
    pub fn new(connect_timeout: Duration, down_for: Duration) -> Upstreams {
        Upstreams {
            idle: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            connect_timeout,
            down_for,
        }
    }

    /// A ready connection to `addr`: a pooled one if there is one (and `upgrade` is false),
    /// else a new one. Also returns how long connecting took, and whether it was pooled.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<(SendRequest<ProxyBody>, Duration, bool), ConnectError> {
        let started = Instant::now();
        if !upgrade {
            while let Some(mut sender) = self.pop_idle(addr) {
                // A connection returned at the end of a body is ready at once; one that is not
                // within a moment is broken or busy, and is dropped.
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_millis(5), sender.ready()).await
                {
                    return Ok((sender, started.elapsed(), true));
                }
            }
        }
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(ConnectError::Refused(e)),
                Err(_) => return Err(ConnectError::Timeout),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        if upgrade {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        }
        Ok((sender, started.elapsed(), false))
    }

    fn pop_idle(&self, addr: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.get_mut(&addr)?;
        senders.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        let sender = senders.pop().map(|(sender, _)| sender);
        if senders.is_empty() {
            idle.remove(&addr);
        }
        sender
    }

    /// Returns a connection whose response has been read to the end, for reuse.
    pub fn checkin(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.entry(addr).or_default();
        if senders.len() < MAX_IDLE_PER_DYNO {
            senders.push((sender, Instant::now()));
        }
    }

    /// Marks `addr` down: it is tried last until `down_for` has passed.
    pub fn mark_down(&self, addr: SocketAddr) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.insert(addr, Instant::now() + self.down_for);
    }

    /// Whether `addr` is marked down now.
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.get(&addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(&addr);
                false
            }
            None => false,
        }
    }
}
