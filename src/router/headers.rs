//! The router's header rules: which host a request is for, what framing it may not have,
//! which request id it carries, and what a dyno (and a client, on the way back) sees of the
//! headers: hop-by-hop headers dropped, forwarding headers set by us alone, only WebSocket
//! upgrades. Pure functions over `http` types; `proxy` applies them.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::log::{Record, RouterError};
use super::proxy::Downstream;

/// The longest request line and header line accepted, as on Heroku.
pub const MAX_LINE: usize = 8192;

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
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if req.method().as_str().len() + target + 10 > MAX_LINE {
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
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(valid)
    {
        Some(id) => id.to_string(),
        // From a thread-local generator: no system call per request.
        None => uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string(),
    }
}

/// The X-Forwarded-For to send: the client's, with the peer appended.
pub fn forwarded_for(headers: &HeaderMap, peer: IpAddr) -> String {
    let before: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    match before.is_empty() {
        true => peer.to_string(),
        false => format!("{}, {peer}", before.join(", ")),
    }
}

/// Whether a request asks for a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
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

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; `Upgrade` and `Connection: upgrade`
/// survive on an upgrade request.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// What a client says about earlier hops, other than X-Forwarded-For (appended to), is not ours
/// to vouch for: a dyno reads only what the router sets.
const CLIENT_FORWARDING: [HeaderName; 3] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
];

/// Drops hop-by-hop headers and those `Connection` names; an upgrade keeps its two.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        if upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
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
pub fn upstream_headers(
    client: &HeaderMap,
    uri: &Uri,
    record: &Record,
    downstream: &Downstream,
    upgrade: bool,
) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h, upgrade);
    for name in &CLIENT_FORWARDING {
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
    let mut set = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            h.insert(name, v);
        }
    };
    set(X_FORWARDED_FOR, record.fwd.clone());
    set(X_REQUEST_ID, record.request_id.clone());
    set(X_FORWARDED_PORT, downstream.local_port.to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    set(X_REQUEST_START, now.as_millis().to_string());
    match client.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(before) => set(header::VIA, format!("{before}, 1.1 spaceroute")),
        None => drop(h.insert(header::VIA, HeaderValue::from_static("1.1 spaceroute"))),
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(downstream.protocol),
    );
    h
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
