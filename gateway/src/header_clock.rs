//! A whole-header deadline for client connections: the slowloris defence.
//!
//! Pingora 0.9 times each *read* of a request header (60 s), not the whole
//! header (upstream issue cloudflare/pingora#447), so a client that sends one
//! byte every 59 s holds a connection, a buffer and a descriptor forever, and
//! a few thousand such clients starve everyone else. nginx
//! (`client_header_timeout`) and Go (`ReadHeaderTimeout`) bound the whole
//! header instead; this module does the same, below Pingora, by wrapping each
//! accepted stream:
//!
//! - A connection starts in the header phase, with its deadline running
//!   from the accept (a client that connects and says nothing is closed too).
//! - The phase ends at the first empty line after a non-empty one: the end of
//!   an HTTP/1 header (`\r\n\r\n` or a bare `\n\n`). Body bytes are not timed
//!   here (the proxy's own body timeouts apply).
//! - Once a final response has started (a write beginning `HTTP/1.x` with a
//!   status of 200 or more; `100 Continue` is not final), the next byte the
//!   client sends starts the next request's header phase and its deadline.
//!   The idle time before that byte is Pingora's keep-alive timeout.
//! - HTTP/2 (h2c) never writes `HTTP/1.`, so after its preface (which ends in
//!   an empty line) the clock stops for the connection.
//!
//! - Pingora's h2c check peeks for 24 bytes before any read, with no
//!   timeout of its own; the clock covers that peek as well.
//!
//! At the deadline the read fails with `TimedOut`, Pingora drops the request
//! and closes the connection, and `omnigraph_header_timeouts_total` counts it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a Pingora app so every connection it is given runs on a [`Clocked`] stream.
pub struct HeaderClock<A> {
    pub inner: Arc<A>,
    pub timeout: Duration,
    pub timeouts: IntCounter,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderClock<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Pingora hands a kept-alive connection back to `process_new` for
        // each next request, as the stream the last one returned: ours,
        // already clocked (its phase carries over from one request to the
        // next). Wrapping it again nested one more `Clocked` per request,
        // so the gateway's memory grew by about 70 bytes a request and every
        // read went through one more layer (the soak, docs/reliability.md).
        let stream: Stream = if stream.as_ref().as_any().is::<Clocked>() { stream } else { Box::new(Clocked::new(stream, self.timeout, self.timeouts.clone())) };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Where the end-of-header scan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a header: bytes on the current line (CR not counted), and
    /// whether a non-empty line has been seen (leading blank lines do not
    /// end a header).
    Header { line_len: usize, seen_line: bool },
    /// Between the end of a header and the start of a final response.
    Body,
    /// A final response has started: the next byte read begins a request.
    Answered,
}

/// Scans `bytes` read in `phase`; returns the phase after them.
fn scan(mut phase: Phase, bytes: &[u8]) -> Phase {
    for &b in bytes {
        phase = match phase {
            Phase::Answered => Phase::Header { line_len: 0, seen_line: false }.step(b),
            Phase::Header { .. } => phase.step(b),
            Phase::Body => return Phase::Body,
        };
    }
    phase
}

impl Phase {
    fn step(self, b: u8) -> Phase {
        let Phase::Header { line_len, seen_line } = self else { return self };
        match b {
            b'\n' if line_len == 0 && seen_line => Phase::Body,
            b'\n' => Phase::Header { line_len: 0, seen_line: seen_line || line_len > 0 },
            b'\r' => self,
            _ => Phase::Header { line_len: line_len + 1, seen_line },
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "request header not complete within server.header_timeout_ms")
}

/// True when `buf` starts a final (non-1xx) HTTP/1 response.
fn starts_final_response(buf: &[u8]) -> bool {
    // "HTTP/1.1 200": the status's first digit is at index 9.
    buf.len() >= 10 && buf.starts_with(b"HTTP/1.") && buf[8] == b' ' && (b'2'..=b'9').contains(&buf[9])
}

/// A client stream with a deadline on each request header.
pub struct Clocked {
    inner: Stream,
    phase: Phase,
    timeout: Duration,
    /// Armed while a header is being read.
    deadline: Pin<Box<Sleep>>,
    timeouts: IntCounter,
}

impl Clocked {
    pub fn new(inner: Stream, timeout: Duration, timeouts: IntCounter) -> Clocked {
        Clocked { inner, phase: Phase::Header { line_len: 0, seen_line: false }, timeout, deadline: Box::pin(tokio::time::sleep(timeout)), timeouts }
    }
}

impl fmt::Debug for Clocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clocked").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

impl AsyncRead for Clocked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if this.phase == Phase::Answered && !fresh.is_empty() {
                    // The first byte of the next request starts its clock.
                    this.deadline.as_mut().reset(Instant::now() + this.timeout);
                }
                this.phase = scan(this.phase, fresh);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if matches!(this.phase, Phase::Header { .. }) => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.timeouts.inc();
                    Poll::Ready(Err(timed_out()))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Clocked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if starts_final_response(buf) {
            this.phase = Phase::Answered;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().find(|b| !b.is_empty()).is_some_and(|b| starts_final_response(b)) {
            this.phase = Phase::Answered;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Clocked {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Clocked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Clocked {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Clocked {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Clocked {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Clocked {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for Clocked {
    /// Pingora peeks for the h2c preface before it reads anything, and its
    /// peek waits for all 24 bytes with no timeout: the header clock covers
    /// the peek too, or a silent client would never be closed.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if !matches!(self.phase, Phase::Header { .. }) {
            return self.inner.try_peek(buf).await;
        }
        match tokio::time::timeout_at(self.deadline.deadline(), self.inner.try_peek(buf)).await {
            Ok(r) => r,
            Err(_) => {
                self.timeouts.inc();
                Err(timed_out())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Phase = Phase::Header { line_len: 0, seen_line: false };

    /// Hands every connection back for reuse, noting for each request
    /// whether the stream it got is clocked and whether that clock wraps another.
    #[derive(Default)]
    struct Reuser {
        seen: std::sync::Mutex<Vec<(bool, bool)>>,
    }

    #[async_trait]
    impl ServerApp for Reuser {
        async fn process_new(self: &Arc<Self>, stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
            let clocked = stream.as_ref().as_any().downcast_ref::<Clocked>();
            let nested = clocked.is_some_and(|c| c.inner.as_ref().as_any().is::<Clocked>());
            self.seen.lock().unwrap().push((clocked.is_some(), nested));
            Some(stream)
        }

        async fn cleanup(&self) {}
    }

    #[tokio::test]
    async fn a_kept_alive_connection_keeps_its_one_clock_across_requests() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let mut stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(a));
        let app = Arc::new(HeaderClock { inner: Arc::new(Reuser::default()), timeout: Duration::from_secs(5), timeouts: IntCounter::new("t", "t").unwrap() });
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            stream = app.process_new(stream, &shutdown).await.expect("kept alive");
        }
        assert_eq!(*app.inner.seen.lock().unwrap(), vec![(true, false); 3], "clocked once, never a clock around a clock");
    }

    #[test]
    fn a_header_ends_at_its_first_empty_line() {
        assert_eq!(scan(START, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), Phase::Body);
        assert_eq!(scan(START, b"GET / HTTP/1.1\nhost: x\n\n"), Phase::Body, "bare LF, as httparse accepts");
        assert!(matches!(scan(START, b"GET / HTTP/1.1\r\nhost: x\r\n"), Phase::Header { .. }));
    }

    #[test]
    fn the_end_is_found_across_reads_one_byte_at_a_time() {
        let mut p = START;
        for b in b"POST /r HTTP/1.1\r\nx: y\r\n\r" {
            p = scan(p, std::slice::from_ref(b));
            assert!(matches!(p, Phase::Header { .. }));
        }
        assert_eq!(scan(p, b"\n{\"body\":1}"), Phase::Body);
    }

    #[test]
    fn leading_blank_lines_do_not_end_a_header() {
        // Otherwise "\r\n" and then a dribbled header would stop the clock.
        assert!(matches!(scan(START, b"\r\n\r\n\nGET"), Phase::Header { .. }));
    }

    #[test]
    fn body_bytes_are_not_scanned_and_the_next_request_restarts_the_scan() {
        assert_eq!(scan(Phase::Body, b"\r\n\r\n"), Phase::Body);
        assert!(matches!(scan(Phase::Answered, b"GET / HTTP/1.1\r\n"), Phase::Header { line_len: 0, seen_line: true }));
    }

    #[test]
    fn only_a_final_http1_response_ends_a_request() {
        assert!(starts_final_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_final_response(b"HTTP/1.0 503 Service Unavailable\r\n"));
        assert!(!starts_final_response(b"HTTP/1.1 100 Continue\r\n\r\n"), "100 Continue comes before the body");
        assert!(!starts_final_response(b"\x00\x00\x12\x04"), "an HTTP/2 frame");
        assert!(!starts_final_response(b"HTTP/1.1"));
    }
}
