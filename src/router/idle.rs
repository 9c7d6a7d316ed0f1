//! The deadline every client connection lives under: its first bytes within a set time, and
//! never longer than a set time without a byte moving either way.
//!
//! hyper's own timers start only once it parses HTTP/1 headers; protocol detection, an HTTP/2
//! connection with no stream, or a half-sent preface would wait forever. [`Watched`] notes when
//! bytes last moved and [`Activity::expired`] resolves at the deadline, whatever the protocol.
//! The idle limit sits above the router's own per-request timeouts (response 30 s, body idle
//! 55 s), so it closes only connections that nothing is using.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether bytes moved on one connection.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    /// Bumped whenever bytes move: a counter, not a clock, so that a read or write costs no
    /// clock read.
    moved: Arc<AtomicU64>,
}

/// The deadline is checked this many times per idle period, so a connection closes between
/// `idle` and `idle * (1 + 1/CHECKS)` after its last byte.
const CHECKS: u32 = 4;

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Activity {
        Activity::default()
    }

    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the connection has sent nothing for `first` since it was accepted, or,
    /// once bytes moved, when none has for `idle` (give or take a quarter of it).
    pub async fn expired(&self, first: Duration, idle: Duration) {
        tokio::time::sleep(first).await;
        let mut seen = self.moved.load(Ordering::Relaxed);
        if seen == 0 {
            return;
        }
        let step = idle / CHECKS;
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            let now = self.moved.load(Ordering::Relaxed);
            if now == seen {
                quiet += step;
                if quiet >= idle {
                    return;
                }
            } else {
                (seen, quiet) = (now, Duration::ZERO);
            }
        }
    }
}

/// A stream that tells its [`Activity`] whenever bytes move.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    /// Watches `inner`.
    pub fn new(inner: S, activity: Activity) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
