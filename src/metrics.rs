//! Prometheus metrics: what the servers count, and the `/metrics` endpoint that serves them.
//!
//! One [`Metrics`] per process, shared by the DNS server, the router and the reloader, which
//! only ever add to it. The endpoint speaks HTTP/1.1 on its own listener (`--metrics`), off
//! unless given, and answers `GET /metrics` in the Prometheus text format.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    transport: &'static str,
    rcode: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    status: u16,
    code: &'static str,
}

/// The process's counters and gauges.
pub struct Metrics {
    registry: Registry,
    dns_queries: Family<DnsLabels, Counter>,
    /// The counters of `dns_queries` for UDP and TCP and rcodes below 32, taken from the
    /// family once: counting a query is then one atomic add, with no lock on the hot path.
    dns_counters: [[OnceLock<Counter>; 32]; 2],
    dns_dropped: Counter,
    http_requests: Family<HttpLabels, Counter>,
    reloads: Counter,
    reload_failures: Counter,
    last_reload_failed: Gauge,
    generation: Gauge,
    serial: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("spaceroute"),
            dns_queries: Family::default(),
            dns_counters: Default::default(),
            dns_dropped: Counter::default(),
            http_requests: Family::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            last_reload_failed: Gauge::default(),
            generation: Gauge::default(),
            serial: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "dns_queries",
            "DNS queries answered, by transport and rcode",
            m.dns_queries.clone(),
        );
        r.register(
            "dns_dropped",
            "DNS packets dropped (responses, runts)",
            m.dns_dropped.clone(),
        );
        r.register(
            "http_requests",
            "Router requests, by status and Heroku error code",
            m.http_requests.clone(),
        );
        r.register(
            "reloads",
            "Successful configuration loads, the first included",
            m.reloads.clone(),
        );
        r.register(
            "reload_failures",
            "Rejected reloads (the last good config kept serving)",
            m.reload_failures.clone(),
        );
        r.register(
            "last_reload_failed",
            "1 when the last reload was rejected",
            m.last_reload_failed.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the configuration serving",
            m.generation.clone(),
        );
        r.register("serial", "The last SOA serial given out", m.serial.clone());
        m
    }

    /// Counts a DNS query: `rcode` is `None` for a dropped packet.
    pub fn dns_query(&self, transport: &'static str, rcode: Option<u16>) {
        let Some(rcode) = rcode else {
            self.dns_dropped.inc();
            return;
        };
        let labels = || DnsLabels { transport, rcode };
        let at = match transport {
            "udp" => 0,
            _ => 1,
        };
        match self.dns_counters[at].get(usize::from(rcode)) {
            Some(counter) => counter
                .get_or_init(|| self.dns_queries.get_or_create(&labels()).clone())
                .inc(),
            None => self.dns_queries.get_or_create(&labels()).inc(),
        };
    }

    /// Counts a router request by the status sent and its error code (empty when none).
    pub fn http_request(&self, status: u16, code: &'static str) {
        self.http_requests
            .get_or_create(&HttpLabels { status, code })
            .inc();
    }

    /// Records a successful load of `generation` whose newest serial is `serial`.
    pub fn reloaded(&self, generation: u64, serial: u32) {
        self.reloads.inc();
        self.last_reload_failed.set(0);
        self.generation.set(generation as i64);
        self.serial.set(i64::from(serial));
    }

    /// Records a rejected reload.
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
        self.last_reload_failed.set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req| respond(metrics.clone(), req));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

async fn respond(
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics.encode()),
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let text = header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, text);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::new();
        m.dns_query("udp", Some(5));
        m.dns_query("udp", Some(5));
        m.dns_query("tcp", None);
        m.http_request(503, "H12");
        m.reload_failed();
        m.reloaded(3, 1_795_474_385);
        let text = m.encode();
        for line in [
            "spaceroute_dns_queries_total{transport=\"udp\",rcode=\"5\"} 2",
            "spaceroute_dns_dropped_total 1",
            "spaceroute_http_requests_total{status=\"503\",code=\"H12\"} 1",
            "spaceroute_reload_failures_total 1",
            "spaceroute_reloads_total 1",
            "spaceroute_last_reload_failed 0",
            "spaceroute_config_generation 3",
            "spaceroute_serial 1795474385",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
