//! Where the request log lines go: through `tracing` (the default, and what tests capture), or
//! straight to stderr in batches, off the workers, which is what the binary uses.
//!
//! The batched writer exists for speed and for safety. Through `tracing` every request costs a
//! formatted event, an escaping pass over the message and a `write(2)` on the worker that served
//! it, and a slow stderr (a full pipe, a stalled journald) stalls that worker. Here a worker
//! formats the line into a reused buffer, appends it to a shared one under a short lock and goes
//! on; one thread writes what gathered every few milliseconds. When stderr falls behind by more
//! than [`MAX_PENDING`] bytes, lines are dropped and counted, and the count is logged: a request
//! is never held up by its log line. Lines look like `tracing`'s own (`<time>  INFO
//! spaceroute::router: at=info …`), so both kinds read alike in one stream.
//!
//! A file of its own, not part of `log` (which is pure), because it owns a thread and does I/O.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::log::Record;

/// How long the writer lets lines gather after the first one before it writes them.
const GATHER: Duration = Duration::from_millis(5);

/// Bytes waiting for stderr beyond which new lines are dropped.
pub const MAX_PENDING: usize = 4 << 20;

/// The destination of the router's request log.
#[derive(Clone, Default)]
pub enum RequestLog {
    /// An info event with target `spaceroute::router`.
    #[default]
    Tracing,
    /// Lines batched to stderr by a thread of their own.
    Batched(Arc<Batched>),
}

impl RequestLog {
    /// Logs `record`.
    pub fn write(&self, record: &Record) {
        match self {
            RequestLog::Tracing => tracing::info!(target: "spaceroute::router", "{record}"),
            RequestLog::Batched(batched) => batched.push(record),
        }
    }

    /// Writes out what is waiting (at shutdown).
    pub fn flush(&self) {
        if let RequestLog::Batched(batched) = self {
            batched.flush();
        }
    }
}

/// Lines waiting for stderr, and the thread that writes them.
pub struct Batched {
    pending: Mutex<Pending>,
    /// Signalled when the first line arrives in an empty buffer.
    arrived: Condvar,
    /// Where lines go (stderr); held while writing, so that a flush at shutdown and the
    /// thread do not interleave.
    out: Mutex<Box<dyn Write + Send>>,
    /// Lines as JSON objects, not text.
    json: bool,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Batched {
    /// Starts the thread writing to stderr, lines as JSON objects when `json`.
    pub fn start(json: bool) -> std::io::Result<Arc<Batched>> {
        Batched::start_to(Box::new(std::io::stderr()), json)
    }

    /// Starts the thread writing to `out`.
    pub fn start_to(out: Box<dyn Write + Send>, json: bool) -> std::io::Result<Arc<Batched>> {
        let batched = Arc::new(Batched {
            pending: Mutex::new(Pending::default()),
            arrived: Condvar::new(),
            out: Mutex::new(out),
            json,
        });
        let writer = batched.clone();
        std::thread::Builder::new()
            .name("request-log".into())
            .spawn(move || writer.run())?;
        Ok(batched)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, record: &Record) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            match self.json {
                true => json_line_of(record, SystemTime::now(), line),
                false => line_of(record, SystemTime::now(), line),
            }
            let mut pending = self.lock();
            if pending.bytes.len() + line.len() > MAX_PENDING {
                pending.dropped += 1;
                return;
            }
            let first = pending.bytes.is_empty();
            pending.bytes.extend_from_slice(line);
            drop(pending);
            if first {
                self.arrived.notify_one();
            }
        });
    }

    fn run(&self) {
        let mut lines = Vec::new();
        loop {
            let mut pending = self.lock();
            while pending.bytes.is_empty() {
                pending = self
                    .arrived
                    .wait(pending)
                    .unwrap_or_else(|p| p.into_inner());
            }
            drop(pending);
            std::thread::sleep(GATHER);
            self.write_out(&mut lines);
        }
    }

    fn flush(&self) {
        self.write_out(&mut Vec::new());
    }

    /// Takes what is pending (leaving `lines`' buffer in its place) and writes it out.
    fn write_out(&self, lines: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = {
            let mut pending = self.lock();
            lines.clear();
            std::mem::swap(lines, &mut pending.bytes);
            std::mem::take(&mut pending.dropped)
        };
        // Nothing to do about a failing stderr but to go on: the requests are served either way.
        let _ = out.write_all(lines).and_then(|()| out.flush());
        if dropped > 0 {
            warn!("router: the request log is not keeping up, {dropped} lines dropped");
        }
        // A burst can leave a large buffer behind; keep a modest one.
        lines.clear();
        lines.shrink_to(64 << 10);
    }
}

/// One log line as `tracing`'s default format writes it: UTC time, level, target, message.
fn line_of(record: &Record, now: SystemTime, line: &mut Vec<u8>) {
    let _ = writeln!(
        line,
        "{}  INFO spaceroute::router: {record}",
        Timestamp(now)
    );
}

/// A time as `tracing` writes it: RFC 3339, UTC, microseconds.
struct Timestamp(SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (year, month, day) = civil(secs / 86_400);
        let day_secs = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            day_secs / 3600,
            day_secs / 60 % 60,
            day_secs % 60,
            since.subsec_micros(),
        )
    }
}

/// One log line as `tracing`'s JSON format writes it (`--log-format json`, events flattened):
/// time, level, target, and the record's fields, numbers as numbers.
fn json_line_of(record: &Record, now: SystemTime, line: &mut Vec<u8>) {
    let error = record.error;
    let value = serde_json::json!({
        "timestamp": Timestamp(now).to_string(),
        "level": "INFO",
        "target": "spaceroute::router",
        "at": if error.is_some() { "error" } else { "info" },
        "code": error.map(|e| e.code).filter(|c| !c.is_empty()),
        "desc": error.map(|e| e.desc),
        "method": record.method.as_str(),
        "path": record.path,
        "host": record.host,
        "request_id": record.request_id,
        "fwd": record.fwd,
        "dyno": record.dyno.map(|n| format!("web.{n}")),
        "connect_ms": record.connect.as_millis() as u64,
        "service_ms": record.service.as_millis() as u64,
        "status": record.status,
        "bytes": record.bytes,
        "protocol": record.protocol,
        "fault": error.map(|e| e.fault.to_string()),
    });
    let _ = serde_json::to_writer(&mut *line, &value);
    line.push(b'\n');
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(11_017), (2000, 3, 1));
        assert_eq!(civil(20_786), (2026, 11, 29));
        assert_eq!(civil(47_540), (2100, 2, 28));
        assert_eq!(civil(47_541), (2100, 3, 1));
    }

    /// A sink the test reads, which can be made to stall like a full pipe.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        stalled: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _wait = self.stalled.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(n: u64) -> Record {
        Record {
            bytes: n,
            ..Record::default()
        }
    }

    fn lines(sink: &Sink) -> Vec<String> {
        let written = sink.written.lock().unwrap();
        (String::from_utf8_lossy(&written).lines())
            .map(|l| l.split(" bytes=").nth(1).unwrap_or(l).to_string())
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn lines_are_written_in_order_and_a_stalled_writer_drops_lines_instead_of_waiting() {
        let sink = Sink::default();
        let log = RequestLog::Batched(Batched::start_to(Box::new(sink.clone()), false).unwrap());
        for n in 0..3 {
            log.write(&record(n));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines(&sink).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lines(&sink), ["0", "1", "2"]);

        // stderr stops taking lines: pushing goes on at once, and what does not fit is dropped.
        let stall = sink.stalled.lock().unwrap();
        let line_len = {
            let mut line = Vec::new();
            line_of(&record(1000), SystemTime::now(), &mut line);
            line.len()
        };
        let fits = MAX_PENDING / line_len;
        let started = std::time::Instant::now();
        for n in 1000..1000 + 2 * fits as u64 + 100 {
            log.write(&record(n));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(stall);
        log.flush();
        let written = lines(&sink);
        // The writer may have taken one batch before it stalled; beyond that only what fits.
        assert!(written.len() < 3 + 2 * fits + 10, "{}", written.len());
        assert!(written.len() >= 3 + fits - 1, "{}", written.len());
        assert!(
            written
                .windows(2)
                .all(|w| w[0].parse::<u64>().unwrap() < w[1].parse::<u64>().unwrap())
        );
    }

    #[test]
    fn json_lines_carry_every_field_as_json() {
        let record = Record {
            status: 503,
            error: Some(super::super::log::RouterError::TIMEOUT),
            dyno: Some(2),
            path: "/a\"b".into(),
            ..Record::default()
        };
        let mut line = Vec::new();
        json_line_of(
            &record,
            UNIX_EPOCH + Duration::from_secs(1_796_083_200),
            &mut line,
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-12-01T00:00:00.000000Z");
        assert_eq!(
            (v["status"].as_u64(), v["code"].as_str()),
            (Some(503), Some("H12"))
        );
        assert_eq!(
            (v["dyno"].as_str(), v["path"].as_str()),
            (Some("web.2"), Some("/a\"b"))
        );
        assert_eq!(v["fault"], "upstream");
    }

    #[test]
    fn lines_read_like_tracing_lines() {
        let record = Record {
            status: 200,
            protocol: "http",
            ..Record::default()
        };
        let at = UNIX_EPOCH + Duration::from_micros(1_796_083_200_000_042);
        let mut line = Vec::new();
        line_of(&record, at, &mut line);
        let line = String::from_utf8(line).unwrap();
        assert_eq!(
            line,
            format!("2026-12-01T00:00:00.000042Z  INFO spaceroute::router: {record}\n")
        );
    }
}
