//! A minimal keep-alive HTTP/1.1 client on a raw socket with TCP_NODELAY
//! that sends each request in one write, so the numbers the harnesses print
//! are the servers' and not a client library's (ureq's separate header and
//! body writes cost the Pingora path ~120 µs more than the direct path).
//! It also tells an answer from a connection closed without one, which the
//! soak harness counts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request, head and body, as one buffer.
pub fn request(method: &str, path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// An answer read whole.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `connection: close`: the next request needs a new connection.
    pub close: bool,
}

/// One keep-alive connection.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The request [`RawClient::once`] and [`RawClient::send`] repeat.
    request: Vec<u8>,
}

impl RawClient {
    /// A connection that repeats one pre-built POST (the benchmarks).
    pub fn connect(addr: &str, path: &str, extra_headers: &str, body: &str) -> RawClient {
        let mut c = RawClient::open(addr).expect("connect");
        c.request = request("POST", path, extra_headers, body);
        c
    }

    pub fn open(addr: &str) -> std::io::Result<RawClient> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(RawClient { reader: BufReader::new(s.try_clone()?), writer: s, request: Vec::new() })
    }

    /// Sends the request, reads the whole response, which must be a 200,
    /// and returns the round trip.
    pub fn once(&mut self) -> Duration {
        let (status, took) = self.send();
        assert_eq!(status, 200, "expected 200");
        took
    }

    /// Sends the repeated request; its status and round trip.
    pub fn send(&mut self) -> (u16, Duration) {
        let t = Instant::now();
        let req = std::mem::take(&mut self.request);
        let a = self.exchange(&req).expect("an answer");
        self.request = req;
        (a.status, t.elapsed())
    }

    /// Sends `req` and reads the answer; an error means the connection
    /// ended (or failed) before a whole answer came.
    pub fn exchange(&mut self, req: &[u8]) -> std::io::Result<Answer> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a whole answer");
        self.writer.write_all(req)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
        let (mut len, mut close) = (0usize, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(eof());
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| std::io::Error::other(format!("content-length {v:?}")))?;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok(Answer { status, body, close })
    }
}
