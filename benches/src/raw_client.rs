//! A minimal keep-alive HTTP/1.1 client on a raw socket with TCP_NODELAY
//! that sends each request in one write, so the numbers the harnesses print
//! are the servers' and not a client library's (ureq's separate header and
//! body writes cost the Pingora path ~120 µs more than the direct path).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One keep-alive connection sending the same pre-built request again and again.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: &str, path: &str, extra_headers: &str, body: &str) -> RawClient {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        RawClient { reader: BufReader::new(s.try_clone().expect("clone")), writer: s, request }
    }

    /// Sends the request, reads the whole response, which must be a 200,
    /// and returns the round trip.
    pub fn once(&mut self) -> Duration {
        let (status, took) = self.send();
        assert_eq!(status, 200, "expected 200");
        took
    }

    /// Sends the request and reads the whole response; returns its status
    /// and the round trip.
    pub fn send(&mut self) -> (u16, Duration) {
        let t = Instant::now();
        self.writer.write_all(&self.request).expect("write");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line: {line:?}"));
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("content-length");
            }
        }
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf).expect("body");
        (status, t.elapsed())
    }
}
