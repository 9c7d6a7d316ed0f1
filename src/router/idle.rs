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
use tokio::time::Instant;

/// When bytes last moved on one connection.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte, plus one; 0 before the first.
    last: Arc<AtomicU64>,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: Arc::default(),
        }
    }

    fn touch(&self) {
        let at = self.start.elapsed().as_millis() as u64 + 1;
        self.last.store(at, Ordering::Relaxed);
    }

    /// Resolves when the connection has sent nothing for `first` since it was accepted, or,
    /// once bytes moved, when none has for `idle`.
    pub async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            let deadline = match self.last.load(Ordering::Relaxed) {
                0 => self.start + first,
                at => self.start + Duration::from_millis(at - 1) + idle,
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
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
