//! Body wrappers of the proxy: the rolling idle timeout, and the tail that reports how a body
//! ended (for a response: counts bytes, returns the dyno connection to the pool and writes the
//! log line; for a request: starts the response timeout, or tells a stalled client apart).
//!
//! Bodies stream frame by frame; nothing here buffers a whole body.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::upstream::BoxError;

/// Whether a body error is a framing error of the sender's (hyper's decoder reports a bad chunk
/// as invalid data or input; a connection that ends early is an unexpected EOF).
fn malformed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        cause = e.source();
    }
    false
}

/// The error a body gives when nothing flowed for the idle timeout.
#[derive(Debug)]
pub struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no data for the idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// A body that fails with [`IdleTimeout`] when no frame arrives for `idle`; each frame resets
/// the clock (Heroku's 55 s rolling window). The timer is armed only when the body has to wait,
/// so a body whose frames are ready at once never touches the timer wheel.
pub struct Idle<B> {
    inner: Pin<Box<B>>,
    idle: Duration,
    /// When the last frame came (or the body was made).
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Idle<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, idle: Duration) -> Idle<B> {
        Idle {
            inner: Box::pin(inner),
            idle,
            last: Instant::now(),
            timer: None,
        }
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last = Instant::now();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.last + this.idle;
                let timer = (this.timer)
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that calls `done` once, with the bytes sent and whether the body ended
/// cleanly, when it ends, fails or is dropped.
pub struct Tail<B, F: FnOnce(u64, Outcome)> {
    inner: Pin<Box<B>>,
    bytes: u64,
    done: Option<F>,
}

/// How a body finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the end.
    Complete,
    /// The idle timeout fired.
    Idle,
    /// The upstream failed mid-body.
    Failed,
    /// The client's body was malformed (a bad chunk): its fault, not a disconnect.
    Malformed,
    /// The client went away before the end.
    Dropped,
}

impl<B, F: FnOnce(u64, Outcome)> Tail<B, F> {
    /// Wraps `inner`; `done` runs exactly once.
    /// A body already at its end (HEAD, 204, 304, `Content-Length: 0`) is complete at once:
    /// hyper never polls it, it only drops it.
    pub fn new(inner: B, done: F) -> Tail<B, F>
    where
        B: Body,
    {
        let mut tail = Tail {
            inner: Box::pin(inner),
            bytes: 0,
            done: Some(done),
        };
        if tail.inner.is_end_stream() {
            tail.finish(Outcome::Complete);
        }
        tail
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            done(self.bytes, outcome);
        }
    }
}

impl<B, F> Body for Tail<B, F>
where
    B: Body<Data = Bytes, Error = BoxError>,
    F: FnOnce(u64, Outcome) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Complete);
                }
            }
            Some(Err(e)) if e.is::<IdleTimeout>() => this.finish(Outcome::Idle),
            Some(Err(e)) if malformed(&**e) => this.finish(Outcome::Malformed),
            Some(Err(_)) => this.finish(Outcome::Failed),
            None => this.finish(Outcome::Complete),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F: FnOnce(u64, Outcome)> Drop for Tail<B, F> {
    fn drop(&mut self) {
        self.finish(Outcome::Dropped);
    }
}
