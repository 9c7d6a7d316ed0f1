//! Prometheus metrics: what the servers count, and the `/metrics` endpoint that serves them.
//!
//! One [`Metrics`] per process, shared by the DNS server, the router and the reloader, which
//! only ever add to it. DNS counts go to per-thread [`DnsCounters`] (each UDP worker has its
//! own, on cache lines no other core writes) and are summed when `/metrics` is scraped. The endpoint speaks HTTP/1.1 on its own listener (`--metrics`), off
//! unless given, and answers `GET /metrics` in the Prometheus text format.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    transport: &'static str,
    rcode: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    status: u16,
    code: &'static str,
}

/// The rcodes counted apart, per transport; higher ones (none that we send) count as 31.
const RCODES: usize = 32;

/// The DNS counters of one thread, or of the tasks that share them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct DnsCounters {
    /// Answers by transport (UDP, TCP) and rcode.
    answered: [[AtomicU64; RCODES]; 2],
    /// Packets dropped unanswered (responses, runts).
    dropped: AtomicU64,
    /// Replies over the rate limits: dropped, and sent truncated instead (slipped).
    rate_limited: [AtomicU64; 2],
}

impl DnsCounters {
    /// Counts a query: `rcode` is `None` for a dropped packet.
    pub fn query(&self, transport: Transport, rcode: Option<u16>) {
        let counter = match rcode {
            Some(rcode) => {
                let rcode = usize::from(rcode).min(RCODES - 1);
                &self.answered[transport as usize][rcode]
            }
            None => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl DnsCounters {
    /// Counts a reply over the rate limits, `slipped` (sent truncated) or dropped.
    pub fn rate_limited(&self, slipped: bool) {
        self.rate_limited[usize::from(slipped)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The transport a DNS query came over, as the counters index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp = 0,
    /// TCP.
    Tcp = 1,
}

/// Every set of DNS counters, encoded as their sums when `/metrics` is scraped.
#[derive(Debug, Default)]
struct DnsShards {
    shards: Mutex<Vec<Arc<DnsCounters>>>,
}

impl Collector for DnsShards {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut answered = [[0u64; RCODES]; 2];
        let mut dropped = 0;
        let mut rate_limited = [0u64; 2];
        for shard in lock(&self.shards).iter() {
            for (sum, counter) in rate_limited.iter_mut().zip(&shard.rate_limited) {
                *sum += counter.load(Ordering::Relaxed);
            }
            for (sums, counters) in answered.iter_mut().zip(&shard.answered) {
                for (sum, counter) in sums.iter_mut().zip(counters) {
                    *sum += counter.load(Ordering::Relaxed);
                }
            }
            dropped += shard.dropped.load(Ordering::Relaxed);
        }
        let help = "DNS queries answered, by transport and rcode";
        let mut family =
            encoder.encode_descriptor("dns_queries", help, None, MetricType::Counter)?;
        for (transport, sums) in ["udp", "tcp"].into_iter().zip(answered) {
            for (rcode, sum) in sums.into_iter().enumerate().filter(|(_, n)| *n > 0) {
                let labels = DnsLabels {
                    transport,
                    rcode: rcode as u16,
                };
                ConstCounter::new(sum).encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "DNS replies over the rate limits, dropped or sent truncated (slipped)";
        let mut family =
            encoder.encode_descriptor("dns_rate_limited", help, None, MetricType::Counter)?;
        for (action, sum) in ["drop", "slip"].into_iter().zip(rate_limited) {
            ConstCounter::new(sum).encode(family.encode_family(&ActionLabels { action })?)?;
        }
        let help = "DNS packets dropped (responses, runts)";
        let counter = ConstCounter::new(dropped);
        counter.encode(encoder.encode_descriptor(
            "dns_dropped",
            help,
            None,
            counter.metric_type(),
        )?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The lists only grow, one push at a time: a panic cannot leave them half-written.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's counters and gauges.
pub struct Metrics {
    registry: Registry,
    /// DNS counters, one set per answering thread, summed at scrape.
    dns: Arc<DnsShards>,
    /// The set for tasks that share one (TCP connections, relayed replies).
    dns_shared: Arc<DnsCounters>,
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
            dns: Arc::default(),
            dns_shared: Arc::default(),
            http_requests: Family::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            last_reload_failed: Gauge::default(),
            generation: Gauge::default(),
            serial: Gauge::default(),
        };
        let r = &mut m.registry;
        lock(&m.dns.shards).push(m.dns_shared.clone());
        r.register_collector(Box::new(m.dns.clone()));
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

    /// A set of DNS counters for one thread to count into on its own: a UDP worker counts
    /// with no cache line shared with another core, and a scrape sums every set.
    pub fn dns_counters(&self) -> Arc<DnsCounters> {
        let counters = Arc::new(DnsCounters::default());
        lock(&self.dns.shards).push(counters.clone());
        counters
    }

    /// The set of DNS counters that tasks share (TCP connections, relayed replies).
    pub fn dns_shared(&self) -> &DnsCounters {
        &self.dns_shared
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
    let connections = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin on the error.
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection cap reached, closing");
            continue;
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req| respond(metrics.clone(), req));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A scrape takes milliseconds; whatever is still open after this is not a scraper.
            match tokio::time::timeout(SCRAPE_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended"),
                Err(_) => debug!(%peer, "metrics connection too slow, closed"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// The most scrapers served at once; more connections are closed as they are accepted.
const MAX_SCRAPERS: usize = 16;

/// How long one scrape may take, headers to the last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

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
        m.dns_shared().query(Transport::Udp, Some(5));
        m.dns_counters().query(Transport::Udp, Some(5));
        m.dns_counters().query(Transport::Tcp, Some(0));
        m.dns_shared().query(Transport::Tcp, None);
        m.http_request(503, "H12");
        m.reload_failed();
        m.reloaded(3, 1_795_474_385);
        let text = m.encode();
        for line in [
            "spaceroute_dns_queries_total{transport=\"udp\",rcode=\"5\"} 2",
            "spaceroute_dns_queries_total{transport=\"tcp\",rcode=\"0\"} 1",
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
