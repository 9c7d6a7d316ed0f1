//! The proxy service: pick the app from the snapshot, forward to one of its web dynos, and turn
//! every failure into a Heroku router error with its status, page and log line.
//!
//! One request, in order: refuse ambiguous framing and oversize lines (400/431) before anything
//! reaches a dyno; route by Host or `:authority` with the DNS access rules (404 "no such app"
//! otherwise); connect to the next web dyno in round-robin order, skipping ones that refuse
//! (H10 when none accepts, H14 when there are none); send the request with the proxy headers;
//! wait for response headers (H12 after the timeout, H13 if the dyno hangs up); stream the
//! response back. The request keeps the snapshot it started with. This file is the request's
//! lifecycle; the header rules are in `headers`, the error catalog and its pages in `log`, the
//! dyno rotation and pool in `upstream`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hickory_proto::rr::Name;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::debug;

use super::Router;
use super::body::{Idle, Outcome, Tail};
use super::headers::{
    check_framing, forwarded_for, host_of, is_upgrade, request_id, strip_hop_by_hop,
    upstream_headers,
};
use super::log::{Record, RouterError, error_page};
use super::upstream::{self, ConnectError, ProxyBody};
use crate::snapshot::Endpoint;

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
    // Logs H27 if hyper drops this future because the client went away.
    let mut pending = Pending {
        record: Record {
            method: req.method().clone(),
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
        },
        armed: true,
        started,
        router: router.clone(),
    };

    if let Err(e) = check_framing(&req) {
        return Ok(pending.fail(e));
    }
    // Only host-name characters: anything else is no host of ours, and must not reach the log.
    let host = &mut pending.record.host;
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        host.clear();
        return Ok(pending.fail(RouterError::BAD_REQUEST));
    }
    let app_ref = Name::from_ascii(host)
        .ok()
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
        .and_then(|name| snapshot.route(downstream.peer.ip(), &name));
    let Some(app_ref) = app_ref else {
        return Ok(pending.fail(RouterError::NO_SUCH_APP));
    };
    let web = snapshot.spaces[app_ref.space].web(snapshot.app(app_ref));
    if web.is_empty() {
        return Ok(pending.fail(RouterError::NO_WEB));
    }

    let upgrade = is_upgrade(req.headers());
    let (mut parts, body) = req.into_parts();
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let headers = upstream_headers(
        &parts.headers,
        &parts.uri,
        &pending.record,
        &downstream,
        upgrade,
    );
    // The dyno gets the origin form of the target.
    let mut target = http::uri::Parts::default();
    target.path_and_query = parts.uri.path_and_query().cloned();
    let uri = Uri::from_parts(target).unwrap_or_else(|_| Uri::from_static("/"));
    // A bodiless GET or HEAD may be sent again when a pooled connection turns out to have been
    // closed by the dyno in the meantime; anything else could have had effects.
    let retryable = matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    let mut body = (!body.is_end_stream()).then(|| Idle::new(body, router.timeouts.idle));
    let mut retried = false;
    let mut sent = None;
    let (addr, sender, mut response) = loop {
        let Some((addr, mut sender, reused)) =
            connect(&router, web, &mut pending.record, upgrade).await
        else {
            return Ok(pending.fail(RouterError::NO_DYNO));
        };
        let mut upstream_req = match body.take() {
            // How the client's body ended decides the error and when the response timeout
            // starts: once the whole body has been sent. (A bodiless request is sent whole.)
            Some(body) => {
                let (sent_tx, sent_rx) = watch::channel(None);
                sent = Some(sent_rx);
                let body = Tail::new(body.boxed_unsync(), move |_, end| {
                    sent_tx.send_replace(Some(end));
                });
                Request::new(body.boxed_unsync())
            }
            _ => Request::new(empty()),
        };
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri.clone();
        *upstream_req.headers_mut() = headers.clone();
        let mut sent_rx = sent.clone();
        let response_timeout = router.timeouts.response;
        let timer = async move {
            let end = match &mut sent_rx {
                Some(rx) => rx.wait_for(Option::is_some).await.ok().and_then(|end| *end),
                None => None,
            };
            match end {
                Some(Outcome::Idle) => RouterError::CLIENT_IDLE,
                Some(Outcome::Failed) => RouterError::CLIENT_GONE,
                Some(Outcome::Malformed) => RouterError::BAD_REQUEST,
                _ => {
                    tokio::time::sleep(response_timeout).await;
                    RouterError::TIMEOUT
                }
            }
        };
        let result = tokio::select! {
            r = sender.send_request(upstream_req) => r,
            e = timer => return Ok(pending.fail(e)),
        };
        match result {
            Ok(response) => break (addr, sender, response),
            Err(e) => {
                debug!(%addr, error = %e, reused, "no response from the dyno");
                let end = sent.as_ref().and_then(|rx| *rx.borrow());
                let error = match end {
                    Some(Outcome::Idle) => RouterError::CLIENT_IDLE,
                    Some(Outcome::Failed) => RouterError::CLIENT_GONE,
                    Some(Outcome::Malformed) => RouterError::BAD_REQUEST,
                    _ if reused && retryable && !retried => {
                        retried = true;
                        continue;
                    }
                    _ => RouterError::CLOSED,
                };
                return Ok(pending.fail(error));
            }
        }
    };

    pending.record.status = response.status().as_u16();
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 must switch to what was asked, WebSocket on an upgrade request; anything else
        // would turn the connection into a tunnel past routing, headers, logs and timeouts.
        let websocket = (response.headers().get(header::UPGRADE))
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if client_upgrade.is_none() || !websocket {
            return Ok(pending.fail(RouterError::CLOSED));
        }
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, upstream));
        }
        let mut record = pending.disarm();
        record.service = started.elapsed();
        served(&router, &record);
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let mut record = pending.disarm();
    let body = Tail::new(
        Idle::new(body, router.timeouts.idle),
        move |bytes, outcome| {
            record.bytes = bytes;
            record.service = started.elapsed();
            match outcome {
                Outcome::Complete => router.upstreams.checkin(addr, sender),
                Outcome::Idle => record.error = Some(RouterError::IDLE),
                Outcome::Failed | Outcome::Malformed => {
                    record.error = Some(RouterError::INTERRUPTED)
                }
                Outcome::Dropped => record.error = Some(RouterError::CLIENT_GONE),
            }
            served(&router, &record);
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
    for dyno in router.upstreams.order(web) {
        let addr = upstream::address(dyno);
        match router.upstreams.checkout(addr, upgrade).await {
            Ok((sender, took, reused)) => {
                record.connect = took;
                record.dyno = Some(dyno.index);
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

/// The request's log record, which is logged as an H27 if the request's future is dropped
/// before it answered (the client went away).
struct Pending {
    record: Record,
    /// Whether dropping logs the record.
    armed: bool,
    started: Instant,
    router: Arc<Router>,
}

impl Pending {
    /// Answers with the error page of `e` and logs the request.
    fn fail(mut self, e: RouterError) -> Response<ProxyBody> {
        let mut record = self.disarm();
        record.status = e.status;
        record.error = Some(e);
        let page = error_page(e, &record.request_id);
        record.bytes = page.len() as u64;
        record.service = self.started.elapsed();
        served(&self.router, &record);
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

    /// The record, no longer logged on drop.
    fn disarm(&mut self) -> Record {
        self.armed = false;
        std::mem::take(&mut self.record)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let e = RouterError::CLIENT_GONE;
            self.record.status = e.status;
            self.record.error = Some(e);
            self.record.service = self.started.elapsed();
            served(&self.router, &self.record);
        }
    }
}

/// Writes the request's log line and counts it.
fn served(router: &Router, record: &Record) {
    router.log.write(record);
    router.metrics.http_request(
        record.status,
        record.error.map_or("", |e| e.code),
        record.service,
    );
}

/// An empty body.
fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
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
