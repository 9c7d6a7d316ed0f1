//! The proxy service: pick the app from the snapshot, forward to one of its web dynos, and turn
//! every failure into a Heroku router error with its status, page and log line.
//!
//! One request, in order: refuse ambiguous framing and oversize lines (400/431) before anything
//! reaches a dyno; route by Host or `:authority` with the DNS access rules (404 "no such app"
//! otherwise); connect to the next web dyno in round-robin order, skipping ones that refuse
//! (H10 when none accepts, H14 when there are none); send the request with the proxy headers;
//! wait for response headers (H12 after the timeout, H13 if the dyno hangs up); stream the
//! response back. The request keeps the snapshot it started with.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hickory_proto::rr::Name;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{debug, info};

use super::Router;
use super::body::{Idle, Outcome, Tail};
use super::log::{Record, RouterError};
use super::upstream::{ConnectError, ProxyBody};
use crate::metrics::Metrics;
use crate::snapshot::Endpoint;

/// The longest request line and header line accepted, as on Heroku.
pub const MAX_LINE: usize = 8192;

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    /// The client's address.
    pub peer: SocketAddr,
    /// The port it connected to.
    pub local_port: u16,
    /// `http` or `https`.
    pub protocol: &'static str,
}

/// Handles one request; never fails (every error is a response).
pub async fn handle(
    router: Arc<Router>,
    downstream: Downstream,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let snapshot = router.snapshot.load_full();
    let mut record = Record {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        host: host_of(&req).unwrap_or_default(),
        protocol: downstream.protocol,
        request_id: request_id(req.headers()),
        fwd: forwarded_for(req.headers(), downstream.peer.ip().to_canonical()),
        ..Record::default()
    };
    // Logs H27 if hyper drops this future because the client went away.
    let mut pending = Pending {
        record: Some(record.clone()),
        started,
        metrics: router.metrics.clone(),
    };

    if let Err(e) = check_framing(&req) {
        return Ok(pending.fail(e, &mut record));
    }
    // Only host-name characters: anything else is no host of ours, and must not reach the log.
    if !record
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        record.host.clear();
        return Ok(pending.fail(RouterError::BAD_REQUEST, &mut record));
    }
    let app_ref = Name::from_ascii(&record.host)
        .ok()
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .and_then(|name| snapshot.route(downstream.peer.ip(), &name));
    let Some(app_ref) = app_ref else {
        return Ok(pending.fail(RouterError::NO_SUCH_APP, &mut record));
    };
    let web = snapshot.spaces[app_ref.space].web(snapshot.app(app_ref));
    if web.is_empty() {
        return Ok(pending.fail(RouterError::NO_WEB, &mut record));
    }

    let upgrade = is_upgrade(req.headers());
    let (mut parts, body) = req.into_parts();
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let headers = upstream_headers(&parts.headers, &parts.uri, &record, &downstream, upgrade);
    let uri = Uri::from_maybe_shared(Bytes::from(record.path.clone()))
        .unwrap_or_else(|_| Uri::from_static("/"));
    // A bodiless GET or HEAD may be sent again when a pooled connection turns out to have been
    // closed by the dyno in the meantime; anything else could have had effects.
    let retryable = matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    let mut body = Some(Idle::new(body, router.timeouts.idle).boxed_unsync());
    let mut retried = false;
    let (addr, sender, mut response) = loop {
        let Some((addr, mut sender, reused)) = connect(&router, web, &mut record, upgrade).await
        else {
            return Ok(pending.fail(RouterError::NO_DYNO, &mut record));
        };
        pending.record = Some(record.clone());
        let (sent_tx, sent) = watch::channel(None);
        let body = body.take().unwrap_or_else(|| {
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync()
        });
        // Reports how the request body ended; the same wrapper as the response's tail.
        let body = Tail::new(body, move |_, end| {
            sent_tx.send_replace(Some(end));
        });
        let mut upstream_req = Request::new(body.boxed_unsync());
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri.clone();
        *upstream_req.headers_mut() = headers.clone();
        // The response timeout starts once the whole request body has been sent.
        let mut sent_rx = sent.clone();
        let response_timeout = router.timeouts.response;
        let timer = async move {
            match sent_rx.wait_for(Option::is_some).await.map(|end| *end) {
                Ok(Some(Outcome::Idle)) => RouterError::CLIENT_IDLE,
                Ok(Some(Outcome::Failed)) => RouterError::CLIENT_GONE,
                Ok(Some(Outcome::Malformed)) => RouterError::BAD_REQUEST,
                _ => {
                    tokio::time::sleep(response_timeout).await;
                    RouterError::TIMEOUT
                }
            }
        };
        let result = tokio::select! {
            r = sender.send_request(upstream_req) => r,
            e = timer => return Ok(pending.fail(e, &mut record)),
        };
        match result {
            Ok(response) => break (addr, sender, response),
            Err(e) => {
                debug!(%addr, error = %e, reused, "no response from the dyno");
                let error = match *sent.borrow() {
                    Some(Outcome::Idle) => RouterError::CLIENT_IDLE,
                    Some(Outcome::Failed) => RouterError::CLIENT_GONE,
                    Some(Outcome::Malformed) => RouterError::BAD_REQUEST,
                    _ if reused && retryable && !retried => {
                        retried = true;
                        continue;
                    }
                    _ => RouterError::CLOSED,
                };
                return Ok(pending.fail(error, &mut record));
            }
        }
    };

    record.status = response.status().as_u16();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 must switch to what was asked, WebSocket on an upgrade request; anything else
        // would turn the connection into a tunnel past routing, headers, logs and timeouts.
        let websocket = (response.headers().get(header::UPGRADE))
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if client_upgrade.is_none() || !websocket {
            return Ok(pending.fail(RouterError::CLOSED, &mut record));
        }
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, upstream));
        }
        record.service = started.elapsed();
        pending.disarm();
        served(&router.metrics, &record);
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(
            parts,
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync(),
        ));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    pending.disarm();
    let pool = router.clone();
    let body = Tail::new(
        Idle::new(body, router.timeouts.idle),
        move |bytes, outcome| {
            record.bytes = bytes;
            record.service = started.elapsed();
            match outcome {
                Outcome::Complete => pool.upstreams.checkin(addr, sender),
                Outcome::Idle => record.error = Some(RouterError::IDLE),
                Outcome::Failed | Outcome::Malformed => {
                    record.error = Some(RouterError::INTERRUPTED)
                }
                Outcome::Dropped => record.error = Some(RouterError::CLIENT_GONE),
            }
            served(&pool.metrics, &record);
        },
    );
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// A connection to the next of the `web` dynos in round-robin order, skipping (and marking
/// down) dynos that refuse; dynos already marked down are tried last. Also returns whether the
/// connection came from the pool. Sets the record's dyno and connect time.
async fn connect(
    router: &Router,
    web: &[Endpoint],
    record: &mut Record,
    upgrade: bool,
) -> Option<(SocketAddr, SendRequest<ProxyBody>, bool)> {
    // One rotation for every app: the snapshot holds no counters, and requests for one app
    // still take its dynos in turn.
    let start = router.next.fetch_add(1, Ordering::Relaxed);
    let mut order: Vec<_> = (0..web.len())
        .map(|i| &web[(start + i) % web.len()])
        .collect();
    order.sort_by_key(|d| {
        router
            .upstreams
            .is_down(SocketAddr::new(d.ip, d.port.unwrap_or(0)))
    });
    for dyno in order {
        let addr = SocketAddr::new(dyno.ip, dyno.port.unwrap_or(0));
        match router.upstreams.checkout(addr, upgrade).await {
            Ok((sender, took, reused)) => {
                record.connect = took;
                record.dyno = format!("web.{}", dyno.index);
                return Some((addr, sender, reused));
            }
            Err(e) => {
                debug!(%addr, error = ?e, "dyno did not accept a connection");
                if matches!(e, ConnectError::Refused(_) | ConnectError::Timeout) {
                    router.upstreams.mark_down(addr);
                }
            }
        }
    }
    None
}

/// Logs an H27 for a request whose future is dropped before it answered.
struct Pending {
    record: Option<Record>,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl Pending {
    /// Answers with the error page of `e` and logs the request.
    fn fail(&mut self, e: RouterError, record: &mut Record) -> Response<ProxyBody> {
        self.record = None;
        record.status = e.status;
        record.error = Some(e);
        let page = error_page(e, &record.request_id);
        record.bytes = page.len() as u64;
        record.service = self.started.elapsed();
        served(&self.metrics, record);
        let mut response = Response::new(
            Full::new(Bytes::from(page))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *response.status_mut() =
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        response
    }

    fn disarm(&mut self) {
        self.record = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            let e = RouterError::CLIENT_GONE;
            record.status = e.status;
            record.error = Some(e);
            record.service = self.started.elapsed();
            served(&self.metrics, &record);
        }
    }
}

/// Writes the request's log line and counts it.
fn served(metrics: &Metrics, record: &Record) {
    info!(target: "spaceroute::router", "{record}");
    metrics.http_request(record.status, record.error.map_or("", |e| e.code));
}

/// Copies bytes both ways between an upgraded client and dyno connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        debug!("upgrade did not complete");
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(error = %e, "tunnel ended");
    }
}

/// The host a request is for, lower-case, without a port or a trailing dot: the request
/// target's authority when it has one (an absolute-form target, which wins over Host, RFC 9112
/// §3.2.2; HTTP/2's `:authority`), else the Host header. A host with userinfo
/// (`internal@standard`) is returned whole, so that it routes nowhere and is a 400.
pub fn host_of<B>(req: &Request<B>) -> Option<String> {
    let host = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = match host.rfind(':') {
        Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &host[..i]
        }
        _ => host,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Rejects what could make the router and a dyno disagree about where a request ends or whom
/// it is for: differing Content-Lengths, several Host headers, an HTTP/2 `host` that is not its
/// `:authority`. Also lines over [`MAX_LINE`]. hyper itself rejects obs-fold and malformed
/// framing, and decodes a request with both Content-Length and Transfer-Encoding by the latter
/// alone, dropping the former (RFC 9112 §6.3), before the router sees it.
pub fn check_framing<B>(req: &Request<B>) -> Result<(), RouterError> {
    let h = req.headers();
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next()
        && lengths.any(|l| l != first)
    {
        return Err(RouterError::BAD_REQUEST);
    }
    if h.get_all(header::HOST).iter().count() > 1 {
        return Err(RouterError::BAD_REQUEST);
    }
    // RFC 9113 §8.3.1: a `host` that differs from `:authority` makes the request malformed.
    if req.version() == Version::HTTP_2
        && let (Some(host), Some(authority)) = (h.get(header::HOST), req.uri().authority())
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(RouterError::BAD_REQUEST);
    }
    if req.method().as_str().len() + req.uri().to_string().len() + 10 > MAX_LINE {
        return Err(RouterError::URI_TOO_LONG);
    }
    if h.iter()
        .any(|(n, v)| n.as_str().len() + v.len() + 2 > MAX_LINE)
    {
        return Err(RouterError::TOO_LARGE);
    }
    Ok(())
}

/// The client's X-Request-Id if it is 20–200 of `[A-Za-z0-9+=/-]`, else a new UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    let valid = |v: &&str| {
        (20..=200).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'-'))
    };
    match headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(valid)
    {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// The X-Forwarded-For to send: the client's, with the peer appended.
fn forwarded_for(headers: &HeaderMap, peer: IpAddr) -> String {
    let before: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    match before.is_empty() {
        true => peer.to_string(),
        false => format!("{}, {peer}", before.join(", ")),
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // Only WebSocket passes through; an `Upgrade: h2c` (or anything else) is a hop-by-hop
    // header like any other, and the request goes to the dyno as plain HTTP/1.1.
    let websocket = (headers.get_all(header::UPGRADE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; `Upgrade` and `Connection: upgrade`
/// survive on an upgrade request.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().map(HeaderName::as_str).chain(HOP_BY_HOP) {
        if upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request headers a dyno sees: the client's without hop-by-hop headers, plus the proxy
/// headers of Heroku's router.
fn upstream_headers(
    client: &HeaderMap,
    uri: &Uri,
    record: &Record,
    downstream: &Downstream,
    upgrade: bool,
) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h, upgrade);
    // What a client says about earlier hops, other than X-Forwarded-For (appended to), is not
    // ours to vouch for: a dyno reads only what the router sets.
    for name in ["forwarded", "x-forwarded-host", "x-real-ip"] {
        h.remove(name);
    }
    // The authority of the target the request was routed by is the Host the dyno sees.
    if let Some(authority) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        h.insert(header::HOST, v);
    }
    if upgrade {
        // Only WebSocket is asked of the dyno, whatever else the client listed.
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("x-forwarded-for", record.fwd.clone());
    set("x-forwarded-proto", downstream.protocol.to_string());
    set("x-forwarded-port", downstream.local_port.to_string());
    set("x-request-id", record.request_id.clone());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    set("x-request-start", now.as_millis().to_string());
    let via = match client.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, 1.1 spaceroute"),
        None => "1.1 spaceroute".to_string(),
    };
    set("via", via);
    h
}

/// The short HTML page of a router error.
fn error_page(e: RouterError, request_id: &str) -> String {
    let (title, text) = match e.status {
        404 => ("No such app", "There is no app at this address."),
        400 | 414 | 431 => ("Bad request", "The request could not be understood."),
        _ => (
            "Application error",
            "An error occurred in the application and your page could not be served.",
        ),
    };
    let code = if e.code.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.code)
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body><h1>{title}</h1><p>{text}{code}</p><p>Request ID: {request_id}</p></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x?y=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_drops_port_case_and_trailing_dot() {
        assert_eq!(
            host_of(&req(&[("host", "Frozen-Oasis.HerokuApp.com:8080")])).as_deref(),
            Some("frozen-oasis.herokuapp.com")
        );
        assert_eq!(
            host_of(&req(&[("host", "api.example.com.")])).as_deref(),
            Some("api.example.com")
        );
        let h2 = Request::builder()
            .uri("https://API.example.com:443/")
            .body(())
            .unwrap();
        assert_eq!(host_of(&h2).as_deref(), Some("api.example.com"));
        assert_eq!(host_of(&req(&[])), None);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let differing = req(&[("content-length", "5"), ("content-length", "6")]);
        assert_eq!(check_framing(&differing), Err(RouterError::BAD_REQUEST));
        let same = req(&[("content-length", "5"), ("content-length", "5")]);
        assert_eq!(check_framing(&same), Ok(()));
        let hosts = req(&[("host", "a.example.com"), ("host", "b.example.com")]);
        assert_eq!(check_framing(&hosts), Err(RouterError::BAD_REQUEST));
        let long = "a".repeat(MAX_LINE);
        assert_eq!(
            check_framing(&req(&[("x-long", &long)])),
            Err(RouterError::TOO_LARGE)
        );
    }

    #[test]
    fn only_websocket_upgrades_pass_through() {
        let ws = req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_upgrade(ws.headers()));
        let h2c = req(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(!is_upgrade(h2c.headers()));
        let mut headers = h2c.headers().clone();
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty(), "{headers:?}");
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        let good = "abcdefghij0123456789+/=-";
        assert_eq!(request_id(req(&[("x-request-id", good)]).headers()), good);
        for bad in [
            "short",
            "has spaces in it 0123456789",
            &"a".repeat(201),
            "ünïcode-0123456789abcdef",
        ] {
            let id = request_id(req(&[("x-request-id", bad)]).headers());
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn proxy_headers_are_added_and_hop_by_hop_removed() {
        let client = req(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "s"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("x-app", "kept"),
        ]);
        let down = Downstream {
            peer: "127.16.0.5:4000".parse().unwrap(),
            local_port: 8443,
            protocol: "https",
        };
        let record = Record {
            fwd: forwarded_for(client.headers(), down.peer.ip()),
            request_id: "r".repeat(20),
            ..Record::default()
        };
        let h = upstream_headers(client.headers(), client.uri(), &record, &down, false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.16.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert_eq!(h["via"], "1.1 spaceroute");
        assert_eq!(h["x-app"], "kept");
        for gone in ["connection", "x-secret", "te", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        let start: u128 = h["x-request-start"].to_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000);
    }
}
