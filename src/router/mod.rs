//! The bundled HTTP router: takes the traffic the DNS answers point at to the apps' dynos.
//!
//! [`run`] accepts on bound listeners (TLS or not), serves HTTP/1.1 and HTTP/2 on each
//! connection with hyper, and hands every request to [`proxy::handle`]. On shutdown it stops
//! accepting and lets connections finish their requests for a bounded time.

pub mod body;
pub mod headers;
pub mod idle;
pub mod log;
pub mod logger;
pub mod proxy;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Capacity, Gate};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use idle::{Activity, Watched};
use logger::RequestLog;
use proxy::Downstream;
use upstream::Upstreams;

/// The router's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To connect to a dyno (Heroku: 5 s).
    pub connect: Duration,
    /// From sending the request to the dyno's response headers (Heroku: 30 s, then H12).
    pub response: Duration,
    /// Rolling idle time while a body streams (Heroku: 55 s).
    pub idle: Duration,
    /// How long a dyno that refused a connection is tried last.
    pub down_for: Duration,
    /// How long requests in flight may finish after shutdown starts.
    pub shutdown: Duration,
    /// To receive a request's headers (the connection closes after it).
    pub header_read: Duration,
    /// To complete a TLS handshake.
    pub handshake: Duration,
    /// A connection that has not sent its first byte by then is closed (the first request's
    /// headers then have `header_read`).
    pub first_bytes: Duration,
    /// A connection on which no byte moved either way for this long is closed: a keep-alive
    /// or HTTP/2 connection left idle (nginx's `keepalive_timeout` is 75 s).
    pub connection_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            idle: Duration::from_secs(55),
            down_for: Duration::from_secs(10),
            shutdown: Duration::from_secs(10),
            header_read: Duration::from_secs(30),
            handshake: Duration::from_secs(10),
            first_bytes: Duration::from_secs(10),
            connection_idle: Duration::from_secs(75),
        }
    }
}

/// What every request of the router shares.
pub struct Router {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    upstreams: Upstreams,
    timeouts: Timeouts,
    /// Who may open another connection.
    gate: Arc<Gate>,
    /// Where request log lines go.
    log: RequestLog,
}

impl Router {
    /// A router over `snapshot` with `timeouts`, counting into `metrics`.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
    ) -> Router {
        let gate = Gate::new("router", Capacity::default());
        metrics.watch_gate("router", gate.clone());
        Router {
            snapshot,
            metrics,
            upstreams: Upstreams::new(timeouts.connect, timeouts.down_for),
            timeouts,
            gate,
            log: RequestLog::default(),
        }
    }

    /// The same router holding at most `capacity` client connections.
    pub fn with_capacity(mut self, capacity: Capacity) -> Router {
        self.gate = Gate::new("router", capacity);
        self.metrics.watch_gate("router", self.gate.clone());
        self
    }

    /// The same router writing its request log to `log`.
    pub fn with_log(mut self, log: RequestLog) -> Router {
        self.log = log;
        self
    }
}

/// A bound listener, with TLS or without.
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// Set for HTTPS.
    pub tls: Option<tls::Tls>,
}

/// The most header fields a request may have.
const MAX_HEADERS: usize = 100;

/// Serves `listeners` until `shutdown`, then drains connections for up to `timeouts.shutdown`.
pub async fn run(router: Arc<Router>, listeners: Vec<Listener>, shutdown: CancellationToken) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accepts = tokio::task::JoinSet::new();
    for listener in listeners {
        accepts.spawn(accept(
            router.clone(),
            listener,
            graceful.clone(),
            shutdown.clone(),
        ));
    }
    while accepts.join_next().await.is_some() {}
    // The accept loops are done, so this is the last reference: connections hold only watchers.
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(router.timeouts.shutdown, graceful.shutdown())
                .await
                .is_err()
            {
                warn!(
                    "router: requests still in flight after {:?}, closing them",
                    router.timeouts.shutdown
                );
            }
        }
        Err(_) => warn!("router: cannot drain connections"),
    }
    router.log.flush();
}

async fn accept(
    router: Arc<Router>,
    listener: Listener,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) {
    let protocol = if listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let local_port = listener.tcp.local_addr().map_or(0, |a| a.port());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.tcp.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "router accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let trusted = router.snapshot.load().access.trusted(peer.ip());
        let Ok(admitted) = router.gate.admit(peer.ip(), trusted) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let downstream = Downstream {
            peer,
            local_port,
            protocol,
        };
        let handler = router.clone();
        let service = service_fn(move |req| proxy::handle(handler.clone(), downstream, req));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(router.timeouts.header_read)
            .max_headers(MAX_HEADERS);
        // Each connection gets its own watcher; only the accept loop holds `graceful`.
        let watcher = graceful.watcher();
        let (tls, timeouts) = (listener.tls.clone(), router.timeouts);
        let activity = Activity::new();
        tokio::spawn(async move {
            let deadline = activity.expired(timeouts.first_bytes, timeouts.connection_idle);
            let serve = async {
                match tls {
                    None => {
                        let io = TokioIo::new(Watched::new(stream, activity.clone()));
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(tls) => match tls.accept(stream, peer.ip(), timeouts.handshake).await {
                        Ok(stream) => {
                            let io = TokioIo::new(Watched::new(stream, activity.clone()));
                            let conn = builder.serve_connection_with_upgrades(io, service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Err(e) => {
                            debug!(%peer, error = %e, "tls handshake failed");
                            Ok(())
                        }
                    },
                }
            };
            tokio::select! {
                served = serve => if let Err(e) = served {
                    debug!(%peer, error = %e, "{protocol} connection ended");
                },
                // Dropping the connection closes it.
                () = deadline => debug!(%peer, "{protocol} connection idle, closed"),
            }
            drop(admitted);
        });
    }
}

/// Logs where the router listens, in the stable form tests read.
pub fn log_listening(listener: &Listener) {
    if let Ok(addr) = listener.tcp.local_addr() {
        let scheme = if listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!("listening {scheme}={addr}");
    }
}
