//! Prometheus metrics: what the servers count, and the `/metrics` endpoint that serves them.
//!
//! One [`Metrics`] per process, shared by the DNS server, the router and the reloader, which
//! only ever add to it. DNS counts go to per-thread [`DnsCounters`] (each UDP worker has its
//! own, on cache lines no other core writes) and are summed when `/metrics` is scraped. The endpoint speaks HTTP/1.1 on its own listener (`--metrics`), off
//! unless given, and answers `GET /metrics` in the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
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
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admission::Gate;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    transport: &'static str,
    rcode: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AudienceLabels {
    audience: String,
    rcode: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabels {
    space: String,
    zone: String,
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
    /// Replies truncated to fit UDP (TC=1).
    truncated: AtomicU64,
    /// REFUSED replies by [`Refusal`].
    refused: [AtomicU64; 3],
    /// Replies by audience (a space, `space/peer`, `public`) and rcode. Only its own thread
    /// writes a set, so the lock is uncontended but for a scrape.
    by_audience: Mutex<HashMap<Box<str>, [u64; RCODES]>>,
    /// Queries relayed to upstreams, and those no upstream answered (SERVFAIL sent).
    relayed: [AtomicU64; 2],
    /// Time to answer a query, by bucket of [`DNS_LATENCY`], with the sum in nanoseconds.
    latency: [AtomicU64; DNS_LATENCY.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// Upper bounds (seconds) of the DNS latency buckets: from the fast path's microsecond to a
/// relayed query's upstream round trip.
pub const DNS_LATENCY: [f64; 10] = [1e-6, 2e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

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

    /// Counts a reply with `rcode` to a source of `audience`.
    pub fn audience(&self, audience: &str, rcode: u16) {
        let rcode = usize::from(rcode).min(RCODES - 1);
        let mut by = lock(&self.by_audience);
        match by.get_mut(audience) {
            Some(counts) => counts[rcode] += 1,
            None => {
                let mut counts = [0; RCODES];
                counts[rcode] = 1;
                by.insert(audience.into(), counts);
            }
        }
    }

    /// Counts a REFUSED reply and why.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reply truncated to fit UDP.
    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a query relayed to upstreams, `answered` by one or not.
    pub fn relayed(&self, answered: bool) {
        self.relayed[0].fetch_add(1, Ordering::Relaxed);
        if !answered {
            self.relayed[1].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `count` queries answered in `took` each.
    pub fn answered_in(&self, took: Duration, count: u64) {
        let seconds = took.as_secs_f64();
        let bucket = DNS_LATENCY.partition_point(|&bound| bound < seconds);
        self.latency[bucket].fetch_add(count, Ordering::Relaxed);
        self.latency_sum_ns
            .fetch_add(took.as_nanos() as u64 * count, Ordering::Relaxed);
    }
}

/// Why a query was REFUSED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The asker is trusted by no space (whatever it asked: a public asker is not told a
    /// private name from a name we do not serve).
    Public = 0,
    /// An operation or class we do not offer (a zone transfer, a class other than IN).
    NotAllowed = 1,
    /// A trusted asker asked for a name in no zone we serve (we never recurse).
    NotOurs = 2,
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
        let (mut truncated, mut relayed, mut refused) = (0, [0u64; 2], [0u64; 3]);
        let mut by_audience: BTreeMap<Box<str>, [u64; RCODES]> = BTreeMap::new();
        let mut latency = [0u64; DNS_LATENCY.len() + 1];
        let mut latency_sum_ns = 0;
        for shard in lock(&self.shards).iter() {
            let pairs = (rate_limited.iter_mut().zip(&shard.rate_limited))
                .chain(relayed.iter_mut().zip(&shard.relayed))
                .chain(refused.iter_mut().zip(&shard.refused))
                .chain(latency.iter_mut().zip(&shard.latency));
            for (sum, counter) in pairs {
                *sum += counter.load(Ordering::Relaxed);
            }
            truncated += shard.truncated.load(Ordering::Relaxed);
            for (audience, counts) in lock(&shard.by_audience).iter() {
                let sums = by_audience.entry(audience.clone()).or_insert([0; RCODES]);
                for (sum, n) in sums.iter_mut().zip(counts) {
                    *sum += n;
                }
            }
            latency_sum_ns += shard.latency_sum_ns.load(Ordering::Relaxed);
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
        let mut family = encoder.encode_descriptor(
            "dns_audience_queries",
            "DNS queries answered, by the asker's audience (the first space that trusts it: \
             the space's own network as the space's name, a peer as space/peer; or public) \
             and rcode",
            None,
            MetricType::Counter,
        )?;
        for (audience, sums) in &by_audience {
            for (rcode, sum) in sums.iter().enumerate().filter(|(_, n)| **n > 0) {
                let labels = AudienceLabels {
                    audience: audience.to_string(),
                    rcode: rcode as u16,
                };
                ConstCounter::new(*sum).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "dns_refused",
            "DNS queries REFUSED, by reason: public (no space trusts the asker), not_allowed (a \
             zone transfer, a class other than IN), not_ours (a trusted asker, a name we do not \
             serve)",
            None,
            MetricType::Counter,
        )?;
        for (reason, sum) in ["public", "not_allowed", "not_ours"]
            .into_iter()
            .zip(refused)
        {
            ConstCounter::new(sum).encode(family.encode_family(&ReasonLabels { reason })?)?;
        }
        for (name, help, value) in [
            (
                "dns_truncated",
                "DNS replies truncated to fit UDP (TC=1)",
                truncated,
            ),
            (
                "dns_relayed",
                "DNS queries relayed to upstreams (unlisted names)",
                relayed[0],
            ),
            (
                "dns_relay_failures",
                "Relayed DNS queries no upstream answered (SERVFAIL sent)",
                relayed[1],
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = (DNS_LATENCY.iter().copied().chain([f64::INFINITY]))
            .zip(latency)
            .map(|(bound, n)| {
                cumulative += n;
                (bound, n)
            })
            .collect();
        encoder
            .encode_descriptor(
                "dns_answer_seconds",
                "Time to answer a DNS query (a UDP batch's time shared by its queries)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                latency_sum_ns as f64 / 1e9,
                cumulative,
                &buckets,
                None,
            )?;
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

/// The connection gates, reported at scrape.
#[derive(Debug, Default)]
struct Gates {
    gates: Mutex<Vec<(&'static str, Arc<Gate>)>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    source: &'static str,
}

impl Collector for Gates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "open_connections",
            "Client connections open, by listener and source (trusted or public)",
            None,
            MetricType::Gauge,
        )?;
        for (listener, gate) in lock(&self.gates).iter() {
            let (all, public) = gate.open();
            for (source, n) in [("trusted", all - public), ("public", public)] {
                let labels = ConnectionLabels { listener, source };
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
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
    http_seconds: Histogram,
    /// The connection gates to report at scrape, by listener.
    gates: Arc<Gates>,
    zone_serials: Family<ZoneLabels, Gauge>,
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
            http_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            gates: Arc::default(),
            zone_serials: Family::default(),
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
            "http_request_seconds",
            "Router requests, from the request to the end of the response",
            m.http_seconds.clone(),
        );
        r.register_collector(Box::new(m.gates.clone()));
        r.register(
            "zone_serial",
            "The SOA serial of each zone, by space and zone (a zone file's apex and audience, \
             or the app domain's trusted or public view)",
            m.zone_serials.clone(),
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

    /// Counts a router request by the status sent and its error code (empty when none), and
    /// how long it `took`.
    pub fn http_request(&self, status: u16, code: &'static str, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels { status, code })
            .inc();
        self.http_seconds.observe(took.as_secs_f64());
    }

    /// Reports the connections `gate` holds, as those of `listener` (`router`, `dns_tcp`).
    pub fn watch_gate(&self, listener: &'static str, gate: Arc<Gate>) {
        let mut gates = lock(&self.gates.gates);
        gates.retain(|(l, _)| *l != listener);
        gates.push((listener, gate));
    }

    /// Sets the serial of every zone, forgetting zones no longer served.
    pub fn zone_serials<'a>(&self, serials: impl IntoIterator<Item = (&'a str, String, u32)>) {
        self.zone_serials.clear();
        for (space, zone, serial) in serials {
            let labels = ZoneLabels {
                space: space.to_string(),
                zone,
            };
            self.zone_serials
                .get_or_create(&labels)
                .set(i64::from(serial));
        }
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
        m.http_request(503, "H12", Duration::from_millis(3));
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
