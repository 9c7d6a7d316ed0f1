//! The router's access-log record: one line per request, in Heroku's router format.
//!
//! Pure: the proxy fills a [`Record`] as the request goes and formats it once, when the
//! response body ends (so `bytes` is what was sent) or the request is abandoned.

use std::fmt;
use std::time::Duration;

use http::Method;

/// Whose fault an error is (pingora's idea, reduced to one field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong or went away.
    Downstream,
    /// The dyno refused, timed out or broke the connection.
    Upstream,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
        })
    }
}

/// A Heroku router error: its code, status and description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterError {
    /// `H12` and friends; empty for errors Heroku gives no code (a bad request, no such app).
    pub code: &'static str,
    /// The HTTP status sent.
    pub status: u16,
    /// What happened.
    pub desc: &'static str,
    /// Whose fault.
    pub fault: Fault,
}

impl RouterError {
    /// No web dyno accepted a connection.
    pub const NO_DYNO: RouterError = RouterError {
        code: "H10",
        status: 503,
        desc: "App not responding",
        fault: Fault::Upstream,
    };
    /// No response headers within the response timeout.
    pub const TIMEOUT: RouterError = RouterError {
        code: "H12",
        status: 503,
        desc: "Request timeout",
        fault: Fault::Upstream,
    };
    /// The dyno closed the connection without a response.
    pub const CLOSED: RouterError = RouterError {
        code: "H13",
        status: 503,
        desc: "Connection closed without response",
        fault: Fault::Upstream,
    };
    /// The app has no web dynos.
    pub const NO_WEB: RouterError = RouterError {
        code: "H14",
        status: 503,
        desc: "No web dynos running",
        fault: Fault::Upstream,
    };
    /// Nothing flowed for the idle timeout while a body was streaming.
    pub const IDLE: RouterError = RouterError {
        code: "H15",
        status: 503,
        desc: "Idle connection",
        fault: Fault::Upstream,
    };
    /// The client went away before the response.
    pub const CLIENT_GONE: RouterError = RouterError {
        code: "H27",
        status: 499,
        desc: "Client Request Interrupted",
        fault: Fault::Downstream,
    };
    /// The dyno broke the connection while sending the response body.
    pub const INTERRUPTED: RouterError = RouterError {
        code: "H18",
        status: 503,
        desc: "Server Request Interrupted",
        fault: Fault::Upstream,
    };
    /// The client sent nothing for the idle timeout while uploading.
    pub const CLIENT_IDLE: RouterError = RouterError {
        code: "H28",
        status: 408,
        desc: "Client connection idle",
        fault: Fault::Downstream,
    };
    /// The host is no app the client may reach.
    pub const NO_SUCH_APP: RouterError = RouterError {
        code: "",
        status: 404,
        desc: "No such app",
        fault: Fault::Downstream,
    };
    /// Ambiguous or malformed framing, refused before it reaches a dyno.
    pub const BAD_REQUEST: RouterError = RouterError {
        code: "",
        status: 400,
        desc: "Bad request",
        fault: Fault::Downstream,
    };
    /// A header line over the limit.
    pub const TOO_LARGE: RouterError = RouterError {
        code: "",
        status: 431,
        desc: "Request header too large",
        fault: Fault::Downstream,
    };
    /// A request line over the limit.
    pub const URI_TOO_LONG: RouterError = RouterError {
        code: "",
        status: 414,
        desc: "URI too long",
        fault: Fault::Downstream,
    };
}

/// One request, as logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// HTTP method.
    pub method: Method,
    /// Path and query as requested.
    pub path: String,
    /// The Host the client asked for.
    pub host: String,
    /// The request id passed to the dyno.
    pub request_id: String,
    /// The client address (and any X-Forwarded-For before it).
    pub fwd: String,
    /// The web dyno that served (`web.<n>` in the log), once one accepted a connection.
    pub dyno: Option<u32>,
    /// Time to get a connection to the dyno.
    pub connect: Duration,
    /// Time from the request to the end of the response.
    pub service: Duration,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// `http` or `https`.
    pub protocol: &'static str,
    /// The router error, if the request failed.
    pub error: Option<RouterError>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error {
            Some(e) if !e.code.is_empty() => {
                write!(f, "at=error code={} desc=\"{}\" ", e.code, e.desc)?
            }
            Some(e) => write!(f, "at=error desc=\"{}\" ", e.desc)?,
            None => f.write_str("at=info ")?,
        }
        write!(
            f,
            "method={} path=\"{}\" host={} request_id={} fwd=\"{}\" dyno=",
            self.method,
            Escaped(&self.path),
            self.host,
            self.request_id,
            Escaped(&self.fwd),
        )?;
        if let Some(n) = self.dyno {
            write!(f, "web.{n}")?;
        }
        write!(
            f,
            " connect={}ms service={}ms status={} bytes={} protocol={}",
            self.connect.as_millis(),
            self.service.as_millis(),
            self.status,
            self.bytes,
            self.protocol,
        )?;
        if let Some(e) = self.error {
            write!(f, " fault={}", e.fault)?;
        }
        Ok(())
    }
}

/// A value with quotes and backslashes escaped, so a quoted value (a path, X-Forwarded-For)
/// cannot forge fields. Unquoted values (host, request id) are checked by the proxy before they
/// get here.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"']) {
            f.write_str(&rest[..i])?;
            f.write_str("\\")?;
            f.write_str(&rest[i..i + 1])?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// The short HTML page of a router error.
pub fn error_page(e: RouterError, request_id: &str) -> String {
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

    fn record() -> Record {
        Record {
            method: Method::GET,
            path: "/".into(),
            host: "frozen-oasis-70544.herokuapp.com".into(),
            request_id: "8601b555-6a83-4c12-96d2-b8e9bd1e7e4a".into(),
            fwd: "10.16.0.5".into(),
            dyno: Some(1),
            connect: Duration::from_millis(1),
            service: Duration::from_millis(12),
            status: 200,
            bytes: 512,
            protocol: "https",
            error: None,
        }
    }

    #[test]
    fn formats_like_herokus_router() {
        assert_eq!(
            record().to_string(),
            "at=info method=GET path=\"/\" host=frozen-oasis-70544.herokuapp.com request_id=8601b555-6a83-4c12-96d2-b8e9bd1e7e4a fwd=\"10.16.0.5\" dyno=web.1 connect=1ms service=12ms status=200 bytes=512 protocol=https"
        );
    }

    #[test]
    fn errors_carry_code_description_and_fault() {
        let r = Record {
            status: 503,
            error: Some(RouterError::TIMEOUT),
            ..record()
        };
        let line = r.to_string();
        assert!(
            line.starts_with("at=error code=H12 desc=\"Request timeout\" method=GET"),
            "{line}"
        );
        assert!(
            line.ends_with("status=503 bytes=512 protocol=https fault=upstream"),
            "{line}"
        );
        let r = Record {
            status: 404,
            error: Some(RouterError::NO_SUCH_APP),
            ..record()
        };
        assert!(
            r.to_string()
                .starts_with("at=error desc=\"No such app\" method=GET")
        );
    }

    #[test]
    fn paths_cannot_forge_fields() {
        let r = Record {
            path: "/a\" status=200 \\".into(),
            ..record()
        };
        assert!(
            r.to_string().contains("path=\"/a\\\" status=200 \\\\\""),
            "{r}"
        );
    }
}
