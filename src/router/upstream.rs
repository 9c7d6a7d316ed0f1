//! Connections to dynos (upstreams): the round robin over an app's web dynos, a keep-alive pool
//! per dyno address, the connect timeout, and the down marks that make the router skip a dyno
//! that refused a connection. All the router's mutable state about dynos lives here, none in
//! the snapshot. Pooled connections and down marks expire and are swept, so a dyno a reload
//! removed leaves nothing behind.
//!
//! HTTP/1.1 only, as Heroku's router speaks to dynos. A pooled connection is handed out again
//! only once the response it carried has been read to the end (the response body returns it);
//! a connection for a WebSocket upgrade is never pooled.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::snapshot::Endpoint;

/// Where a dyno listens.
pub fn address(dyno: &Endpoint) -> SocketAddr {
    SocketAddr::new(dyno.ip, dyno.port.unwrap_or(0))
}

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
    /// Where the round robin stands: one rotation for every app.
    next: AtomicUsize,
    /// When the pool and the down marks were last swept.
    swept: Mutex<Instant>,
    connect_timeout: Duration,
    down_for: Duration,
}

impl Upstreams {
    /// An empty pool with the given connect timeout and down-mark duration.
    pub fn new(connect_timeout: Duration, down_for: Duration) -> Upstreams {
        Upstreams {
            idle: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            swept: Mutex::new(Instant::now()),
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
                // A connection returned at the end of a body is ready at once, or within a
                // moment; one that is not is broken or busy, and is dropped.
                if sender.is_ready()
                    || matches!(
                        tokio::time::timeout(Duration::from_millis(5), sender.ready()).await,
                        Ok(Ok(()))
                    )
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

    /// The order in which to try `web` dynos: the next in the rotation first, dynos marked
    /// down last. Requests for one app take its dynos in turn.
    pub fn order<'w>(&self, web: &'w [Endpoint]) -> Vec<&'w Endpoint> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<_> = (0..web.len())
            .map(|i| &web[(start + i) % web.len()])
            .collect();
        order.sort_by_key(|d| self.is_down(address(d)));
        order
    }

    /// Returns a connection whose response has been read to the end, for reuse.
    pub fn checkin(&self, addr: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        self.sweep();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let senders = idle.entry(addr).or_default();
        if senders.len() < MAX_IDLE_PER_DYNO {
            senders.push((sender, Instant::now()));
        }
    }

    /// Drops, at most once per [`IDLE_FOR`], every pooled connection idle that long and every
    /// expired down mark, whichever dyno they belong to.
    fn sweep(&self) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.elapsed() < IDLE_FOR {
                return;
            }
            *swept = Instant::now();
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, senders| {
            senders.retain(|(_, since)| since.elapsed() < IDLE_FOR);
            !senders.is_empty()
        });
        drop(idle);
        let now = Instant::now();
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|_, until| *until > now);
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
