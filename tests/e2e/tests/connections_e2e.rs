//! End-to-end tests of connection-level abuse (docs/security.md, "Slow and
//! idle clients"): a client that dribbles or withholds its request header is
//! closed at `server.header_timeout_ms`, thousands of such clients do not
//! keep others out, and honest slow traffic (idle keep-alive gaps, slow
//! bodies) is not mistaken for an attack.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::json;

const AUTH: (&str, &str) = ("authorization", "Bearer tok-root");
/// Short, so the tests are quick; the default is 10 s.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

fn start() -> (ConfigDir, Gateway) {
    let env = ConfigDir::admin(&format!("  header_timeout_ms: {}\n", HEADER_TIMEOUT.as_millis()), "", &["alpha"]);
    let gw = env.start();
    (env, gw)
}

/// Waits up to `limit` for the server to close `s`; returns how long it took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 256];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => panic!("the server answered a request that was never completed"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

fn header_timeouts(gw: &Gateway) -> u64 {
    let m = call("GET", &gw.url("/metrics"), None, &[AUTH]);
    let text = m.body.as_str().unwrap_or_default().to_string();
    text.lines().find_map(|l| l.strip_prefix("omnigraph_header_timeouts_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// One raw HTTP/1.1 exchange on an open connection; returns the status line.
fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).expect("an answer");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    // Drain the body so the connection can carry the next request.
    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0);
    let body_start = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut have = buf.len() - body_start;
    while have < len {
        have += s.read(&mut b).unwrap();
    }
    head.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_slowloris_client_is_closed_at_the_header_deadline() {
    let (_env, gw) = start();
    let before = header_timeouts(&gw);
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    // One byte every 200 ms: each read is far inside Pingora's 60 s per-read
    // timeout, so only a whole-header deadline can close this client.
    let req = b"GET /graphs HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let t = Instant::now();
    let mut closed = None;
    for b in req {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            closed = Some(t.elapsed());
            break;
        }
        if closed_within(&mut s, Duration::from_millis(200)).is_some() {
            closed = Some(t.elapsed());
            break;
        }
    }
    let took = closed.expect("the dribbling client was never closed");
    assert!(took >= HEADER_TIMEOUT - Duration::from_millis(100) && took < HEADER_TIMEOUT + Duration::from_secs(3), "closed after {took:?}");
    assert!(header_timeouts(&gw) > before, "the close is counted in /metrics");
    assert_eq!(call("GET", &gw.url("/healthz"), None, &[]).status, 200, "the gateway is healthy");
}

#[test]
fn a_client_that_connects_and_says_nothing_is_closed() {
    // Pingora peeks for an HTTP/2 preface first and would wait forever.
    let (_env, gw) = start();
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    let took = closed_within(&mut s, HEADER_TIMEOUT + Duration::from_secs(5)).expect("a silent client is closed");
    assert!(took >= HEADER_TIMEOUT - Duration::from_millis(100), "not before the deadline: {took:?}");
    // A short, complete HTTP/1.0 request (under the preface's 24 bytes) is
    // not left hanging either: it is answered or closed, never held.
    let mut short = TcpStream::connect(gw.addr()).unwrap();
    short.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(closed_within_or_answered(&mut short, HEADER_TIMEOUT + Duration::from_secs(5)));
}

/// True once the server answers-and-closes or just closes `s` within `limit`.
fn closed_within_or_answered(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn thousands_of_idle_connections_do_not_keep_a_new_client_out() {
    let (_env, gw) = start();
    let want = raise_nofile(12_000).min(10_000);
    let mut idle = Vec::with_capacity(want);
    for _ in 0..want {
        match TcpStream::connect(gw.addr()) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} refused: {e}", idle.len()),
        }
    }
    let t = Instant::now();
    let r = post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person", "key": "p1"}}), &[AUTH]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "a new client waited {:?} behind {want} idle ones", t.elapsed());
    // And the idle ones are all let go at the deadline, so they cannot pile up.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(1500));
    let mut still_open = 0;
    for s in idle.iter_mut() {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Err(ref e) if e.kind() == ErrorKind::WouldBlock) {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "{still_open} of {want} idle connections were still open after the header deadline");
    eprintln!("{want} idle connections held and closed");
}

/// Raises this process's soft descriptor limit towards `want`; returns the
/// number of connections it can afford to open.
fn raise_nofile(want: u64) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    (lim.rlim_cur as usize).saturating_sub(200)
}

#[test]
fn honest_slow_traffic_is_not_cut() {
    let (_env, gw) = start();
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    assert!(exchange(&mut s, get).contains(" 200 "));
    // A keep-alive gap longer than the header deadline: idle time is not header time.
    std::thread::sleep(HEADER_TIMEOUT + Duration::from_millis(500));
    assert!(exchange(&mut s, get).contains(" 200 "), "the kept-alive connection still works");
    // A body that trickles in for longer than the header deadline, after a complete header.
    let body = br#"{"match": {"type": "Person", "key": "p1"}}"#;
    let head = format!("POST /graphs/alpha/read HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-root\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    let mut c = TcpStream::connect(gw.addr()).unwrap();
    c.set_nodelay(true).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let per_chunk = (HEADER_TIMEOUT * 2) / (body.len() as u32 / 4);
    for chunk in body.chunks(4) {
        std::thread::sleep(per_chunk);
        c.write_all(chunk).unwrap();
    }
    assert!(exchange(&mut c, b"").contains(" 200 "), "a slow body is the proxy's business, not the header clock's");
}

/// The whole answer to one raw request on a fresh connection.
fn raw(gw: &Gateway, req: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.write_all(req).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn oversized_headers_are_400_and_ambiguous_framing_is_never_passed_on() {
    let (_env, gw) = start();
    let body = r#"{"match": {"type": "Person", "key": "p1"}}"#;
    let big = format!("GET /graphs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-root\r\nx-big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let answer = raw(&gw, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\"") && answer.contains("headers are"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "the connection is not reused: {answer}");
    // Transfer-Encoding and Content-Length together: Pingora frames by the
    // chunked encoding and drops Content-Length (RFC 9112 6.3), so the worker
    // reads exactly the chunked body, and the connection is closed after the
    // answer, so no smuggled second request can ride on it.
    let smuggle = format!(
        "POST /graphs/alpha/read HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-root\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\nGET /graphs HTTP/1.1\r\nhost: x\r\n\r\n",
        body.len()
    );
    let answer = raw(&gw, smuggle.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer only, the smuggled request is dropped: {answer}");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"rows\""), "the chunked body was read: {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(call("GET", &gw.url("/healthz"), None, &[]).status, 200, "the gateway is healthy");
}

fn fair_env(limits: &str) -> (ConfigDir, Gateway) {
    let admin = |token, actor| TestToken { token, actor, groups: &["admins"], tenant: None };
    let env = ConfigDir::with("", &format!("limits:\n{limits}"), &[admin("tok-noisy", "noisy"), admin("tok-quiet", "quiet")], &graphs_yaml(&["alpha"]));
    let gw = env.start();
    (env, gw)
}

fn read_as(gw: &Gateway, token: &str) -> Resp {
    post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[("authorization", &format!("Bearer {token}"))])
}

/// A `noisy` request held in flight: headers sent, 1 byte of its 100-byte body.
fn hold_noisy(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.write_all(b"POST /graphs/alpha/read HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-noisy\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{").unwrap();
    s
}

/// Sends the rest of a held request's body and reads its status.
fn finish_held(mut s: TcpStream) -> u16 {
    let rest = format!("{:<99}", r#""match": {"type": "Person"}}"#);
    s.write_all(rest.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// The gateway's `omnigraph_requests_in_flight`, read by the quiet actor.
fn requests_in_flight(gw: &Gateway) -> i64 {
    let m = call("GET", &gw.url("/metrics"), None, &[("authorization", "Bearer tok-quiet")]);
    m.body.as_str().unwrap_or_default().lines().find_map(|l| l.strip_prefix("omnigraph_requests_in_flight ")).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0)
}

#[test]
fn one_actor_past_its_in_flight_limit_gets_429_and_others_do_not() {
    let (_env, gw) = fair_env("  per_actor_inflight: 2\n  per_actor_queue_ms: 0\n");
    // Two requests of `noisy` held in flight: headers sent, body still coming.
    let held: Vec<TcpStream> = (0..2).map(|_| hold_noisy(&gw)).collect();
    // Wait until the gateway has both held requests in flight (the scrape itself is a third).
    let t = Instant::now();
    while requests_in_flight(&gw) < 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "the two held requests never reached the gateway");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let third = loop {
        let r = read_as(&gw, "tok-noisy");
        if r.status == 429 || t.elapsed() > Duration::from_secs(5) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(third.status, 429, "{:?}", third.body);
    assert_eq!((third.body["code"].as_str(), third.body["details"]["limit"].as_str()), (Some("too_many_requests"), Some("per_actor_inflight")));
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(read_as(&gw, "tok-quiet").status, 200, "another actor is not held back");
    drop(held);
    let t = Instant::now();
    while read_as(&gw, "tok-noisy").status != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "finished requests free their places");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = call("GET", &gw.url("/metrics"), None, &[("authorization", "Bearer tok-quiet")]);
    assert!(m.body.as_str().unwrap().contains("omnigraph_throttled_total{limit=\"per_actor_inflight\"}"), "counted in /metrics");
}

#[test]
fn a_request_past_its_in_flight_limit_waits_for_its_turn_then_gets_429_on_a_kept_connection() {
    let (_env, gw) = fair_env("  per_actor_inflight: 1\n  per_actor_queue_ms: 1500\n");
    let held = hold_noisy(&gw);
    let t = Instant::now();
    while requests_in_flight(&gw) < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "the held request never reached the gateway");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second request of the same actor waits for the held one's place ...
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = gw.url("/graphs/alpha/read");
    std::thread::spawn(move || {
        let r = post_with(&addr, &json!({"match": {"type": "Person"}}), &[("authorization", "Bearer tok-noisy")]);
        let _ = tx.send(r.status);
    });
    assert!(rx.recv_timeout(Duration::from_millis(400)).is_err(), "it waits while the first is in flight");
    assert_eq!(read_as(&gw, "tok-quiet").status, 200, "another actor does not wait");
    // ... and is served once that finishes.
    assert_eq!(finish_held(held), 200);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(200), "the waiting request is admitted when a place frees");

    // Past the queue time it gets 429, on a connection that stays open.
    let held = hold_noisy(&gw);
    let t = Instant::now();
    while requests_in_flight(&gw) < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "the held request never reached the gateway");
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = json!({"match": {"type": "Person"}}).to_string();
    let req = omnigraph_e2e::raw_client::request("POST", "/graphs/alpha/read", "authorization: Bearer tok-noisy\r\n", &body);
    let mut c = omnigraph_e2e::raw_client::RawClient::open(&gw.addr()).unwrap();
    let t = Instant::now();
    let refused = c.exchange(&req).unwrap();
    let waited = t.elapsed();
    assert_eq!(refused.status, 429);
    assert!(!refused.close, "a refused request with a small body keeps its connection");
    assert!(waited >= Duration::from_millis(1400), "refused only after limits.per_actor_queue_ms: {waited:?}");
    let refused: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!((refused["code"].as_str(), refused["details"]["limit"].as_str()), (Some("too_many_requests"), Some("per_actor_inflight")));
    assert_eq!(finish_held(held), 200);
    let again = c.exchange(&req).expect("the refused request's connection carries the next one");
    assert_eq!(again.status, 200);
}

#[test]
fn one_actor_past_its_rate_gets_429_and_others_do_not() {
    let (_env, gw) = fair_env("  per_actor_rps: 5\n  per_actor_queue_ms: 0\n");
    let statuses: Vec<u16> = (0..12).map(|_| read_as(&gw, "tok-noisy").status).collect();
    assert!(statuses.contains(&429), "12 requests at once are past 5 per second: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 5, "{statuses:?}");
    assert_eq!(read_as(&gw, "tok-quiet").status, 200, "another actor is not held back");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(read_as(&gw, "tok-noisy").status, 200, "the next second admits it again");
}
