//! The bad-input matrix (docs/reliability.md): one table of broken and
//! hostile requests, each sent through the real gateway as raw bytes, so no
//! client library tidies a path, a header or the framing first.
//!
//! Every input must get its clear 4xx: the contract's JSON error with a
//! stable `code` (or, for the few requests Pingora refuses before the
//! gateway sees them, the documented answer). After each one the gateway
//! must still be healthy (`/healthz` 200 and an authorized read 200) and
//! the head of every branch unchanged; after the whole matrix the export of
//! every branch is byte-identical, the worker never restarted, and the YAML
//! and the data folder are as they were.
//!
//! Overlaps, on purpose (this is the one table of the whole input surface):
//! two `Authorization` headers, hostile URIs and policy files and `where`
//! past 32 predicates are also pinned by security_e2e.rs; alg confusion by
//! gateway_e2e.rs; headers over 16 KiB and `Transfer-Encoding` with
//! `Content-Length` by connections_e2e.rs; a bad line deep in an ingest and
//! an ingest declared past its limit by ingest_export_e2e.rs; the worker's
//! own limits, without a gateway, by worker_security_e2e.rs.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
const ISSUER: &str = "https://idp.test";
const ROOT: &str = "Bearer tok-root";
const READ: &str = "/graphs/alpha/read";
const CHANGE: &str = "/graphs/alpha/change";
const INGEST: &str = "/graphs/alpha/ingest";
/// Two HMAC keys that the test's JWKS publishes under one `kid`.
const DUP_SECRET_A: &[u8] = b"duplicate-kid-secret-number-one-0123456789";
const DUP_SECRET_B: &[u8] = b"duplicate-kid-secret-number-two-0123456789";
/// The default limits (DESIGN.md section 2), which the matrix runs with.
const MAX_BODY: usize = 16 * 1024 * 1024;
const CREATE_BODY: usize = 1024 * 1024;
const MAX_INGEST: u64 = 10 * 1024 * 1024 * 1024;
const MAX_CHANGE_OPS: usize = 100_000;
const MAX_TRAVERSE_STEPS: usize = 8;
const MAX_IN_LIST: usize = 10_000;
/// The large ingest: this many lines of exactly `BIG_LINE` bytes (100 MB),
/// the last one bad.
const BIG_LINES: usize = 100_000;
const BIG_LINE: usize = 1000;

/// How a case's request is framed and sent.
enum Send {
    /// `Content-Length` framing (no body and no length for a bodiless GET or DELETE).
    Length(Vec<u8>),
    /// `Transfer-Encoding: chunked`, in 64 KiB chunks.
    Chunked(Vec<u8>),
    /// A large body, made when the case runs, with `Content-Length`.
    Make(fn() -> Vec<u8>),
    /// `Content-Length: N` declared and no body sent: the answer must come first.
    Declared(u64),
    /// These exact bytes, request line and all.
    Raw(Vec<u8>),
}

/// What the answer must be besides its status.
#[derive(Clone, Copy)]
enum Want {
    /// The contract's JSON error with this `code`.
    Error(&'static str),
    /// Pingora's own answer, given before any of the gateway's phases run:
    /// an empty body (docs/security.md).
    Pingora,
    /// A normal JSON answer: the documented repair of an ambiguous request.
    Served,
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    send: Send,
    status: u16,
    want: Want,
    /// `details.<key>` must equal the value.
    details: Option<(&'static str, Value)>,
    /// The gateway must close the connection after its answer.
    closes: bool,
    /// Nothing may follow the one answer (no smuggled second request).
    one_answer: bool,
}

fn case(name: &'static str, method: &'static str, path: impl Into<String>) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: vec![("authorization".into(), ROOT.into()), ("content-type".into(), b"application/json".to_vec())],
        send: Send::Length(Vec::new()),
        status: 0,
        want: Want::Pingora,
        details: None,
        closes: false,
        one_answer: false,
    }
}

impl Case {
    fn body(mut self, b: impl AsRef<[u8]>) -> Case {
        self.send = Send::Length(b.as_ref().to_vec());
        self
    }
    fn json(self, v: Value) -> Case {
        self.body(v.to_string())
    }
    fn chunked(mut self, b: impl AsRef<[u8]>) -> Case {
        self.send = Send::Chunked(b.as_ref().to_vec());
        self
    }
    fn make(mut self, f: fn() -> Vec<u8>) -> Case {
        self.send = Send::Make(f);
        self
    }
    fn declared(mut self, n: u64) -> Case {
        self.send = Send::Declared(n);
        self
    }
    fn raw(mut self, r: impl AsRef<[u8]>) -> Case {
        self.send = Send::Raw(r.as_ref().to_vec());
        self
    }
    /// Adds a header (a second one of the same name is a second line).
    fn header(mut self, k: &str, v: impl AsRef<[u8]>) -> Case {
        self.headers.push((k.to_string(), v.as_ref().to_vec()));
        self
    }
    /// Replaces every header named `k` (none with an empty value).
    fn set(mut self, k: &str, v: impl AsRef<[u8]>) -> Case {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        if !v.as_ref().is_empty() {
            self.headers.push((k.to_string(), v.as_ref().to_vec()));
        }
        self
    }
    fn ndjson(self) -> Case {
        self.set("content-type", "application/x-ndjson")
    }
    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.want = Want::Error(code);
        self
    }
    fn pingora(mut self, status: u16) -> Case {
        self.status = status;
        self.want = Want::Pingora;
        self
    }
    fn served(mut self, status: u16) -> Case {
        self.status = status;
        self.want = Want::Served;
        self
    }
    fn details(mut self, key: &'static str, v: Value) -> Case {
        self.details = Some((key, v));
        self
    }
    fn closes(mut self) -> Case {
        self.closes = true;
        self
    }
    fn one_answer(mut self) -> Case {
        self.one_answer = true;
        self
    }
}

/// A valid read of `p1`, padded with JSON whitespace to `len` bytes: the
/// size alone is what is wrong with it.
fn padded_read(len: usize) -> Vec<u8> {
    let mut b = br#"{"match":{"type":"Person","key":"p1"}}"#.to_vec();
    b.resize(len, b' ');
    b
}

fn padded_change(len: usize) -> Vec<u8> {
    let mut b = br#"{"ops":[{"upsert":{"type":"Person","key":"big","props":{}}}]}"#.to_vec();
    b.resize(len, b' ');
    b
}

fn read_over_limit() -> Vec<u8> {
    padded_read(MAX_BODY + 1)
}

fn change_over_limit() -> Vec<u8> {
    padded_change(MAX_BODY + 1)
}

/// A create that would be valid but for its size.
fn create_over_limit() -> Vec<u8> {
    let mut b = json!({"graph_id": "big", "uri": "data/big", "schema": {"source": SOCIAL_SCHEMA}}).to_string().into_bytes();
    b.resize(CREATE_BODY + 1, b' ');
    b
}

/// One more op than `limits.max_change_ops`; small enough for the body limit.
fn too_many_ops() -> Vec<u8> {
    let ops: Vec<Value> = (0..=MAX_CHANGE_OPS).map(|i| json!({"delete": {"type": "Person", "key": format!("z{i}")}})).collect();
    json!({ "ops": ops }).to_string().into_bytes()
}

/// 100 MB of NDJSON: `BIG_LINES` people of exactly `BIG_LINE` bytes each
/// (a padded tag), then a last line whose `age` is not a number.
fn big_ingest() -> Vec<u8> {
    let mut out = Vec::with_capacity(BIG_LINES * BIG_LINE);
    for i in 0..BIG_LINES - 1 {
        let head = format!("{{\"type\":\"Person\",\"key\":\"big{i}\",\"props\":{{\"age\":{},\"tags\":[\"", i % 90);
        let tail = "\"]}}\n";
        let pad = BIG_LINE - head.len() - tail.len();
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b't', pad));
        out.extend_from_slice(tail.as_bytes());
    }
    let mut bad = b"{\"type\":\"Person\",\"key\":\"bad\",\"props\":{\"age\":\"old\"}}".to_vec();
    bad.resize(BIG_LINE - 1, b' ');
    bad.push(b'\n');
    out.extend_from_slice(&bad);
    out
}


fn claims() -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({"sub": "jwt-admin", "iss": ISSUER, "aud": "omnigraph", "exp": now + 600, "iat": now, "groups": ["admins"]})
}

fn hs256(kid: &str, secret: &[u8]) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims(), &jsonwebtoken::EncodingKey::from_secret(secret)).expect("sign a test token")
}

/// The config folder: graph `alpha` (protecting nothing), the admin token,
/// and a JWT issuer whose JWKS (a file) is the fixture's plus two HMAC keys
/// under one `kid`.
fn environment() -> ConfigDir {
    let env = ConfigDir::admin("", "", &["alpha"]);
    let mut jwks: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURES).join("jwks.json")).expect("fixture jwks")).expect("jwks json");
    if let Some(keys) = jwks["keys"].as_array_mut() {
        for secret in [DUP_SECRET_A, DUP_SECRET_B] {
            keys.push(json!({"kty": "oct", "kid": "dup", "alg": "HS256", "k": b64url(secret)}));
        }
    }
    write_file(env.path(), "jwks.json", &jwks.to_string());
    let yaml = env.yaml().replace(
        "auth:\n",
        &format!("auth:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [omnigraph]\n      algorithms: [RS256, HS256]\n      jwks: {{ file: jwks.json }}\n      leeway_s: 5\n"),
    );
    std::fs::write(&env.cfg, yaml).expect("write omnigraph.yaml");
    env
}

/// Fifty people in a Knows chain, a city, and a branch `dev` with a change
/// of its own; returns dev's head.
fn seed(gw: &Gateway) -> String {
    let auth = [("authorization", ROOT)];
    let mut ops: Vec<Value> = (0..50).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i, "tags": [format!("t{i}")]}}})).collect();
    ops.push(json!({"upsert": {"type": "City", "key": "oslo", "props": {"country": "NO"}}}));
    ops.extend((0..49).map(|i| json!({"link": {"edge": "Knows", "from": format!("p{i}"), "to": format!("p{}", i + 1), "props": {"since": "2020-01-02"}}})));
    ops.push(json!({"link": {"edge": "LivesIn", "from": "p1", "to": "oslo"}}));
    let r = post_with(&gw.url(CHANGE), &json!({ "ops": ops }), &auth);
    assert_eq!(r.status, 200, "seed: {:?}", r.body);
    let r = call("POST", &gw.url("/graphs/alpha/branches?branch=dev"), None, &auth);
    assert_eq!(r.status, 201, "branch: {:?}", r.body);
    let r = post_with(&gw.url("/graphs/alpha/change?branch=dev"), &json!({"ops": [{"upsert": {"type": "Person", "key": "devon", "props": {}}}]}), &auth);
    assert_eq!(r.status, 200, "dev change: {:?}", r.body);
    r.body["commit_id"].as_str().expect("a commit id").to_string()
}

/// Everything a bad input must not change: each branch's head and the branch list.
fn heads(gw: &Gateway) -> Result<Value, String> {
    let auth = [("authorization", ROOT)];
    let mut out = json!({});
    for b in ["main", "dev"] {
        let r = try_call("GET", &gw.url(&format!("/graphs/alpha/snapshot?branch={b}")), None, &auth)?;
        if r.status != 200 {
            return Err(format!("snapshot of {b}: {} {}", r.status, r.body));
        }
        out[b] = r.body["commit_id"].clone();
    }
    let r = try_call("GET", &gw.url("/graphs/alpha/branches"), None, &auth)?;
    out["branches"] = r.body;
    Ok(out)
}

/// The SHA-256 of each branch's export.
fn exports(gw: &Gateway) -> Vec<String> {
    ["main", "dev"]
        .iter()
        .map(|b| {
            let r = call("POST", &gw.url(&format!("/graphs/alpha/export?branch={b}")), None, &[("authorization", ROOT)]);
            assert_eq!(r.status, 200, "export {b}: {:?}", r.body);
            let text = match &r.body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert!(text.lines().count() > 50, "the export of {b} holds the seeded graph");
            sha256_hex(&text)
        })
        .collect()
}

/// The gateway serves and the graph is as it was.
fn still_healthy(gw: &Gateway, before: &Value) -> Result<(), String> {
    let h = try_call("GET", &gw.url("/healthz"), None, &[])?;
    if h.status != 200 {
        return Err(format!("/healthz answered {}", h.status));
    }
    let r = try_call("POST", &gw.url(READ), Some(br#"{"match":{"type":"Person","key":"p1"}}"#), &[("authorization", ROOT)])?;
    if r.status != 200 || r.body["row_count"] != 1 {
        return Err(format!("an authorized read answered {} {}", r.status, r.body));
    }
    let now = heads(gw)?;
    if &now != before {
        return Err(format!("the graph changed: {before} -> {now}"));
    }
    Ok(())
}

/// One answer, as read off the wire.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection was closed after the answer.
    closed: bool,
    /// Bytes that followed the answer before the close.
    after: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(300).collect();
        let headers: Vec<String> = self.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{} [{}] {body}", self.status, headers.join("; "))
    }
}

/// The request's head and body bytes for a case.
fn request(c: &Case) -> (Vec<u8>, Vec<u8>, bool) {
    let mut head = format!("{} {} HTTP/1.1\r\nhost: gw\r\n", c.method, c.path).into_bytes();
    for (k, v) in &c.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    let (framing, body, chunked) = match &c.send {
        Send::Length(b) if b.is_empty() && matches!(c.method, "GET" | "DELETE") => (String::new(), Vec::new(), false),
        Send::Length(b) => (format!("content-length: {}\r\n", b.len()), b.clone(), false),
        Send::Make(f) => {
            let b = f();
            (format!("content-length: {}\r\n", b.len()), b, false)
        }
        Send::Chunked(b) => ("transfer-encoding: chunked\r\n".to_string(), b.clone(), true),
        Send::Declared(n) => (format!("content-length: {n}\r\n"), Vec::new(), false),
        Send::Raw(r) => return (r.clone(), Vec::new(), false),
    };
    head.extend_from_slice(framing.as_bytes());
    head.extend_from_slice(b"\r\n");
    (head, body, chunked)
}

/// Sends one request, writing on a thread of its own while the answer is
/// read (a gateway that refuses early must not be mistaken for a dead one),
/// and reads exactly one answer; with `wait_close`, then waits for the close.
fn exchange(addr: &str, head: Vec<u8>, body: Vec<u8>, chunked: bool, wait_close: bool) -> Result<Answer, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    let mut w = s.try_clone().map_err(|e| format!("clone: {e}"))?;
    let writer = std::thread::spawn(move || {
        if w.write_all(&head).is_err() {
            return;
        }
        if chunked {
            for part in body.chunks(64 * 1024) {
                let mut framed = format!("{:x}\r\n", part.len()).into_bytes();
                framed.extend_from_slice(part);
                framed.extend_from_slice(b"\r\n");
                if w.write_all(&framed).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        } else {
            for part in body.chunks(1 << 20) {
                if w.write_all(part).is_err() {
                    return;
                }
            }
        }
    });
    // A 100 MB ingest is read and checked before its answer comes.
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    let mut r = WireReader { s, buf: Vec::new(), eof: false };
    let answer = r.answer(wait_close);
    let _ = r.s.shutdown(Shutdown::Both);
    let _ = writer.join();
    answer
}

struct WireReader {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl WireReader {
    /// Reads more bytes; false at the end of the stream (or a reset).
    fn fill(&mut self) -> Result<bool, String> {
        let mut b = [0u8; 64 * 1024];
        match self.s.read(&mut b) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(format!("the answer ended after {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&l[..i]).to_string());
            }
            if !self.fill()? {
                return Err("the answer ended inside a line".into());
            }
        }
    }

    fn answer(&mut self, wait_close: bool) -> Result<Answer, String> {
        while !self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if !self.fill()? {
                return Err(format!("the connection closed without an answer ({} bytes)", self.buf.len()));
            }
        }
        let status_line = self.line()?;
        let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            self.take(n)?
        } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size = usize::from_str_radix(self.line()?.split(';').next().unwrap_or("").trim(), 16).map_err(|e| format!("chunk size: {e}"))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                body.extend(self.take(size)?);
                self.take(2)?;
            }
            body
        } else {
            while self.fill()? {}
            std::mem::take(&mut self.buf)
        };
        let mut closed = self.eof;
        if wait_close && !closed {
            self.s.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                match self.fill() {
                    Ok(false) => {
                        closed = true;
                        break;
                    }
                    Ok(true) => {}
                    Err(_) => {}
                }
            }
        }
        let after = std::mem::take(&mut self.buf);
        Ok(Answer { status, headers, body, closed, after })
    }
}

/// Checks one answer against its row; `Err` says what is wrong.
fn judge(c: &Case, a: &Answer) -> Result<(), String> {
    if a.status != c.status {
        return Err(format!("expected {}, got {}", c.status, a.summary()));
    }
    match c.want {
        Want::Error(code) => {
            let v = a.json();
            if v["code"] != code {
                return Err(format!("expected code {code:?}, got {}", a.summary()));
            }
            if v["error"].as_str().is_none_or(str::is_empty) {
                return Err(format!("no error message: {}", a.summary()));
            }
            if !a.header("content-type").is_some_and(|t| t.starts_with("application/json")) {
                return Err(format!("content-type {:?}", a.header("content-type")));
            }
            if a.header("x-request-id").is_none() {
                return Err("no x-request-id".into());
            }
            if c.status == 401 && !a.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")) {
                return Err("a 401 without WWW-Authenticate: Bearer".into());
            }
            if let Some((k, want)) = &c.details {
                if &v["details"][k] != want {
                    return Err(format!("expected details.{k} = {want}, got {}", a.summary()));
                }
            }
        }
        Want::Pingora => {
            if !a.body.is_empty() {
                return Err(format!("expected Pingora's empty answer, got {}", a.summary()));
            }
        }
        Want::Served => {
            if a.json()["row_count"] != 1 {
                return Err(format!("expected the read's rows, got {}", a.summary()));
            }
        }
    }
    if c.closes && !(a.closed && a.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))) {
        return Err(format!("the connection was not closed (connection: {:?}, closed: {})", a.header("connection"), a.closed));
    }
    if c.one_answer && String::from_utf8_lossy(&a.after).contains("HTTP/1.1 ") {
        return Err(format!("a second answer followed: {}", String::from_utf8_lossy(&a.after)));
    }
    Ok(())
}

/// The matrix. `dev_head` is a commit that is on `dev` and not on `main`.
fn matrix(dev_head: &str) -> Vec<Case> {
    let pub_pem = std::fs::read(Path::new(FIXTURES).join("jwt-rsa.pub.pem")).expect("fixture public key");
    let read = json!({"match": {"type": "Person", "key": "p1"}});
    let smuggle_body = r#"{"match":{"type":"Person","key":"p1"}}"#;
    let steps = |n: usize| json!({"match": {"type": "Person", "key": "p0"}, "traverse": vec![json!({"edge": "Knows"}); n]});
    let create = |id: &str, uri: &str| json!({"graph_id": id, "uri": uri, "schema": {"source": SOCIAL_SCHEMA}});
    let mut utf16 = vec![0xff, 0xfe];
    for u in read.to_string().encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let multipart = "--xyz\r\ncontent-disposition: form-data; name=\"ops\"\r\n\r\n[]\r\n--xyz--\r\n";
    vec![
        // Bodies past each route's limit.
        case("read: body over max_body_bytes, declared", "POST", READ).make(read_over_limit).expect(413, "payload_too_large").closes(),
        case("read: body over max_body_bytes, chunked", "POST", READ).chunked(read_over_limit()).expect(413, "payload_too_large").details("limit", json!("max_body_bytes")),
        case("change: body over max_body_bytes, declared", "POST", CHANGE).make(change_over_limit).expect(413, "payload_too_large").closes(),
        case("change: body over max_body_bytes, chunked", "POST", CHANGE).chunked(change_over_limit()).expect(413, "payload_too_large").details("limit", json!("max_body_bytes")),
        case("schema/apply: body over max_body_bytes, declared", "POST", "/graphs/alpha/schema/apply").make(change_over_limit).expect(413, "payload_too_large").closes(),
        case("graphs: create body over 1 MiB, declared", "POST", "/graphs").make(create_over_limit).expect(413, "payload_too_large").closes(),
        case("graphs: create body over 1 MiB, chunked", "POST", "/graphs").chunked(create_over_limit()).expect(413, "payload_too_large").closes(),
        case("ingest: declared past max_ingest_bytes", "POST", INGEST).ndjson().declared(MAX_INGEST + 1).expect(413, "payload_too_large").closes(),
        // Headers and framing.
        case("headers: one header of 20 KiB", "GET", "/graphs").header("x-big", "a".repeat(20 * 1024)).expect(400, "bad_request").closes(),
        case("headers: 200 small headers past 16 KiB", "GET", "/graphs")
            .raw(format!("GET /graphs HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\n{}\r\n", (0..200).map(|i| format!("x-h{i}: {}\r\n", "v".repeat(90))).collect::<String>()))
            .expect(400, "bad_request")
            .closes(),
        case("headers: 300 headers, past Pingora's 256", "GET", "/graphs")
            .raw(format!("GET /graphs HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\n{}\r\n", (0..300).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()))
            .pingora(400)
            .closes(),
        case("headers: a request line over 16 KiB", "GET", format!("/graphs/alpha/snapshot?branch={}", "b".repeat(17 * 1024))).expect(400, "bad_request").closes(),
        case("framing: two Content-Length headers that disagree", "POST", READ)
            .raw(format!("POST {READ} HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\ncontent-length: 5\r\ncontent-length: 38\r\n\r\n{smuggle_body}"))
            .pingora(400)
            .closes(),
        case("framing: a Content-Length that is not a number", "POST", READ)
            .raw(format!("POST {READ} HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\ncontent-length: 3x\r\n\r\n{smuggle_body}"))
            .pingora(400)
            .closes(),
        case("framing: Transfer-Encoding and Content-Length together (chunked wins, then close)", "POST", READ)
            .raw(format!(
                "POST {READ} HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{smuggle_body}\r\n0\r\n\r\nGET /graphs HTTP/1.1\r\nhost: gw\r\n\r\n",
                smuggle_body.len()
            ))
            .served(200)
            .one_answer()
            .closes(),
        case("framing: a chunk size that is not hex", "POST", READ)
            .raw(format!("POST {READ} HTTP/1.1\r\nhost: gw\r\nauthorization: {ROOT}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{smuggle_body}\r\n0\r\n\r\n"))
            .expect(400, "bad_request")
            .closes(),
        // Malformed JSON.
        case("read: malformed JSON", "POST", READ).body(r#"{"match": {"type": "Person""#).expect(400, "bad_request"),
        case("change: malformed JSON", "POST", CHANGE).body(r#"{"ops": [}"#).expect(400, "bad_request"),
        case("graphs: malformed JSON", "POST", "/graphs").body(r#"{"graph_id": "x", "uri": "#).expect(400, "bad_request"),
        case("read: an empty body", "POST", READ).body("").expect(400, "bad_request"),
        case("read: a JSON array, not an object", "POST", READ).body("[]").expect(400, "bad_request"),
        case("read: arrays nested 100,000 deep", "POST", READ).body("[".repeat(100_000)).expect(400, "bad_request"),
        case("graphs: objects nested 100,000 deep", "POST", "/graphs").body(format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000))).expect(400, "bad_request"),
        case("read: a number past f64 (1e400)", "POST", READ).body(r#"{"match":{"type":"Person"},"limit":1e400}"#).expect(400, "bad_request"),
        case("read: a negative limit", "POST", READ).json(json!({"match": {"type": "Person"}, "limit": -1})).expect(400, "bad_request"),
        case("read: an unknown field", "POST", READ).json(json!({"match": {"type": "Person"}, "hack": 1})).expect(400, "bad_request"),
        case("read: an unknown node type", "POST", READ).json(json!({"match": {"type": "Robot"}})).expect(400, "bad_request"),
        case("change: an unknown op", "POST", CHANGE).json(json!({"ops": [{"drop": {"type": "Person"}}]})).expect(400, "bad_request"),
        case("change: the branch in the body", "POST", CHANGE).json(json!({"branch": "main", "ops": [{"upsert": {"type": "Person", "key": "x", "props": {}}}]})).expect(400, "bad_request"),
        case("change: a property of the wrong type", "POST", CHANGE).json(json!({"ops": [{"upsert": {"type": "Person", "key": "x", "props": {"age": "old"}}}]})).expect(400, "bad_request"),
        case("change: a link to a node that does not exist", "POST", CHANGE).json(json!({"ops": [{"link": {"edge": "Knows", "from": "p1", "to": "nobody"}}]})).expect(400, "bad_request"),
        case("change: a lone UTF-16 surrogate in a key", "POST", CHANGE).body(r#"{"ops":[{"upsert":{"type":"Person","key":"\ud800","props":{}}}]}"#).expect(400, "bad_request"),
        // Bytes that are not UTF-8.
        case("read: invalid UTF-8 in a string", "POST", READ).body(b"{\"match\":{\"type\":\"Person\",\"key\":\"\xff\xfe\"}}").expect(400, "bad_request"),
        case("change: invalid UTF-8 in a key", "POST", CHANGE).body(b"{\"ops\":[{\"upsert\":{\"type\":\"Person\",\"key\":\"a\xc3\x28\",\"props\":{}}}]}").expect(400, "bad_request"),
        case("graphs: invalid UTF-8 in the schema", "POST", "/graphs").body(b"{\"graph_id\":\"u8\",\"uri\":\"data/u8\",\"schema\":{\"source\":\"node P { k: String @key \xff }\"}}").expect(400, "bad_request"),
        case("ingest: invalid UTF-8 on line 2", "POST", INGEST).ndjson().body(b"{\"type\":\"Person\",\"key\":\"i1\"}\n{\"type\":\"Person\",\"key\":\"\xff\"}\n").expect(400, "bad_request").details("line", json!(2)),
        // Wrong content types (the type is not checked; the body is: docs/reliability.md).
        case("read: an XML body (application/xml)", "POST", READ).set("content-type", "application/xml").body("<match type=\"Person\"/>").expect(400, "bad_request"),
        case("change: a multipart/form-data body", "POST", CHANGE).set("content-type", "multipart/form-data; boundary=xyz").body(multipart).expect(400, "bad_request"),
        case("read: JSON in UTF-16 (charset=utf-16)", "POST", READ).set("content-type", "application/json; charset=utf-16").body(utf16).expect(400, "bad_request"),
        case("graphs: a form-urlencoded create", "POST", "/graphs").set("content-type", "application/x-www-form-urlencoded").body("graph_id=x&uri=data%2Fx").expect(400, "bad_request"),
        case("ingest: a JSON array sent as application/json", "POST", INGEST).body(json!([{"type": "Person", "key": "a"}]).to_string()).expect(400, "bad_request").details("line", json!(1)),
        // Authentication.
        case("auth: two Authorization headers", "POST", READ).header("authorization", "Bearer tok-root").json(read.clone()).expect(401, "unauthorized"),
        case("auth: HS256 signed with the RS256 public key (alg confusion)", "POST", READ).set("authorization", format!("Bearer {}", hs256("rsa-1", &pub_pem))).json(read.clone()).expect(401, "unauthorized"),
        case("auth: a kid two JWKS keys share, signed with the second", "POST", READ).set("authorization", format!("Bearer {}", hs256("dup", DUP_SECRET_B))).json(read.clone()).expect(401, "unauthorized"),
        // Not "whichever key comes first": an ambiguous kid verifies nothing.
        case("auth: a kid two JWKS keys share, signed with the first", "POST", READ).set("authorization", format!("Bearer {}", hs256("dup", DUP_SECRET_A))).json(read.clone()).expect(401, "unauthorized"),
        case("auth: a token that is not UTF-8", "POST", READ).set("authorization", b"Bearer \xff\xfe\xfd").json(read.clone()).expect(401, "unauthorized"),
        case("auth: 12 KiB of dots and base64", "POST", READ).set("authorization", format!("Bearer {}", "eyJ.".repeat(3 * 1024))).json(read.clone()).expect(401, "unauthorized"),
        case("auth: a JWT header that is not JSON", "POST", READ).set("authorization", format!("Bearer {}.{}.sig", b64url(b"{\"alg\":"), b64url(claims().to_string().as_bytes()))).json(read.clone()).expect(401, "unauthorized"),
        // Routing and paths.
        case("route: an unknown graph", "POST", "/graphs/nope/read").json(read.clone()).expect(404, "not_found"),
        case("route: /graphs/../x", "GET", "/graphs/../x").expect(400, "bad_request"),
        case("route: %2e%2e as a segment", "POST", "/graphs/%2e%2e/alpha/read").json(read.clone()).expect(400, "bad_request"),
        case("route: %2E%2E after the graph", "POST", "/graphs/alpha/%2E%2E/read").json(read.clone()).expect(400, "bad_request"),
        case("route: an encoded slash in the graph id", "POST", "/graphs/alpha%2Fread").json(read.clone()).expect(400, "bad_request"),
        case("route: an encoded backslash", "POST", "/graphs/alpha%5C..%5Cx/read").json(read.clone()).expect(400, "bad_request"),
        case("route: a double slash", "POST", "/graphs//alpha/read").json(read.clone()).expect(400, "bad_request"),
        case("route: a leading double slash", "POST", "//graphs/alpha/read").json(read.clone()).expect(400, "bad_request"),
        case("route: a trailing slash", "POST", "/graphs/alpha/read/").json(read.clone()).expect(400, "bad_request"),
        case("route: an encoded NUL", "POST", "/graphs/alpha/read%00").json(read.clone()).expect(400, "bad_request"),
        case("route: percent-encoding that is not UTF-8", "GET", "/graphs/alpha/commits/%ff%fe").expect(400, "bad_request"),
        case("route: a graph id in capitals", "POST", "/graphs/ALPHA/read").json(read.clone()).expect(400, "bad_request"),
        case("route: a bare worker path", "POST", "/read").json(read.clone()).expect(404, "not_found"),
        case("route: a method the route does not take", "DELETE", READ).expect(405, "method_not_allowed"),
        case("route: CONNECT", "CONNECT", "gw:443").pingora(405).closes(),
        // Query strings: keys, branches, commits.
        case("query: an unknown key", "POST", "/graphs/alpha/read?brnach=dev").json(read.clone()).expect(400, "bad_request"),
        case("query: a key given twice", "POST", "/graphs/alpha/read?branch=main&branch=dev").json(read.clone()).expect(400, "bad_request"),
        case("query: not UTF-8", "GET", "/graphs/alpha/snapshot?branch=%ff").expect(400, "bad_request"),
        case("branch: ..", "GET", "/graphs/alpha/snapshot?branch=..").expect(400, "bad_request"),
        case("branch: a/../main", "POST", "/graphs/alpha/change?branch=a/../main").json(json!({"ops": []})).expect(400, "bad_request"),
        case("branch: main/ (an alias of main)", "POST", "/graphs/alpha/change?branch=main/").json(json!({"ops": []})).expect(400, "bad_request"),
        case("branch: 200 characters", "GET", format!("/graphs/alpha/snapshot?branch={}", "b".repeat(200))).expect(400, "bad_request"),
        case("branch: starts with '-'", "GET", "/graphs/alpha/snapshot?branch=-rf").expect(400, "bad_request"),
        case("branch: does not exist", "GET", "/graphs/alpha/snapshot?branch=nope").expect(404, "not_found"),
        case("branch: create one that exists", "POST", "/graphs/alpha/branches?branch=dev").expect(409, "conflict"),
        case("branch: create from one that does not exist", "POST", "/graphs/alpha/branches?branch=x&from=nope").expect(404, "not_found"),
        case("branch: delete main", "DELETE", "/graphs/alpha/branches/main").expect(400, "bad_request"),
        case("branch: merge into one that does not exist", "POST", "/graphs/alpha/branches/merge?branch=dev&target=nope").expect(404, "not_found"),
        case("commit: quotes and SQL in ?commit=", "POST", "/graphs/alpha/read?commit=x%27%20OR%201%3D1--").json(read.clone()).expect(404, "not_found"),
        case("commit: another branch's commit on main", "POST", format!("/graphs/alpha/read?commit={dev_head}")).json(read.clone()).expect(404, "not_found"),
        case("commit: a path id that is no commit", "GET", "/graphs/alpha/commits/%27%3B--").expect(404, "not_found"),
        case("commit: a stale ?if_commit=", "POST", "/graphs/alpha/change?if_commit=01STALE").json(json!({"ops": [{"upsert": {"type": "Person", "key": "x", "props": {}}}]})).expect(412, "precondition_failed"),
        case("read: a cursor that is not one", "POST", READ).json(json!({"match": {"type": "Person"}, "cursor": "not-a-cursor"})).expect(400, "bad_request"),
        case("graphs: DELETE ?purge=yes", "DELETE", "/graphs/alpha?purge=yes").expect(400, "bad_request"),
        case("graphs: DELETE with an unknown key", "DELETE", "/graphs/alpha?confirm=1").expect(400, "bad_request"),
        // Read and change limits.
        case("read: traverse past max_traverse_steps", "POST", READ).json(steps(MAX_TRAVERSE_STEPS + 1)).expect(400, "bad_request").details("limit", json!("max_traverse_steps")),
        case("read: an in list past max_in_list", "POST", READ)
            .json(json!({"match": {"type": "Person", "where": [{"prop": "age", "op": "in", "value": (0..=MAX_IN_LIST as i64).collect::<Vec<_>>()}]}}))
            .expect(400, "bad_request")
            .details("limit", json!("max_in_list")),
        case("read: 33 where predicates", "POST", READ).json(json!({"match": {"type": "Person", "where": vec![json!({"prop": "age", "op": ">=", "value": 1}); 33]}})).expect(400, "bad_request"),
        case("read: max_hops past u32", "POST", READ).json(json!({"match": {"type": "Person", "key": "p0"}, "traverse": [{"edge": "Knows", "max_hops": 1u64 << 40}]})).expect(400, "bad_request"),
        case("read: min_hops above max_hops", "POST", READ).json(json!({"match": {"type": "Person", "key": "p0"}, "traverse": [{"edge": "Knows", "min_hops": 3, "max_hops": 1}]})).expect(400, "bad_request"),
        case("change: ops past max_change_ops", "POST", CHANGE).make(too_many_ops).expect(400, "bad_request").details("limit", json!("max_change_ops")),
        // Ingest.
        case("ingest: 100 MB of NDJSON, the last line bad", "POST", INGEST).ndjson().make(big_ingest).expect(400, "bad_request").details("line", json!(BIG_LINES)),
        case("ingest: a first line that is not JSON", "POST", INGEST).ndjson().body("hello\n").expect(400, "bad_request").details("line", json!(1)),
        // Creating graphs with hostile paths (containment).
        case("graphs: a URI outside data_root (/etc/og)", "POST", "/graphs").json(create("esc", "/etc/og")).expect(400, "bad_request"),
        case("graphs: a URI climbing out (../../x)", "POST", "/graphs").json(create("esc", "../../x")).expect(400, "bad_request"),
        case("graphs: a file:// URI outside data_root", "POST", "/graphs").json(create("esc", "file:///tmp/og-escape")).expect(400, "bad_request"),
        case("graphs: a URI inside another graph", "POST", "/graphs").json(create("nest", "data/alpha/inner")).expect(409, "conflict"),
        case("graphs: the runtime folder", "POST", "/graphs").json(create("run", "run/x")).expect(400, "bad_request"),
        case("graphs: a schema named by file", "POST", "/graphs").json(json!({"graph_id": "sf", "uri": "data/sf", "schema": {"file": "/etc/passwd"}})).expect(400, "bad_request"),
        case("graphs: a policy file outside policy_dir", "POST", "/graphs").json(json!({"graph_id": "pf", "uri": "data/pf", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"file": "/etc/passwd"}})).expect(400, "bad_request"),
        case("graphs: a schema that does not parse", "POST", "/graphs").json(json!({"graph_id": "bad", "uri": "data/bad", "schema": {"source": "node {"}})).expect(400, "bad_request"),
        case("graphs: a reserved id", "POST", "/graphs").json(create("healthz", "data/healthz")).expect(400, "bad_request"),
        case("graphs: an id with a slash", "POST", "/graphs").json(create("a/b", "data/ab")).expect(400, "bad_request"),
        case("graphs: an id that exists", "POST", "/graphs").json(create("alpha", "data/alpha2")).expect(409, "conflict"),
    ]
}

#[test]
fn every_bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let env = environment();
    let gw = env.start();
    let dev_head = seed(&gw);
    let auth = [("authorization", ROOT)];
    // The JWT issuer is live: a token under the fixture's HMAC key is served,
    // so the 401s below are the tokens' fault, not a dead issuer's.
    let r = call("GET", &gw.url("/graphs"), None, &[("authorization", &format!("Bearer {}", hs256("hs-1", &std::fs::read(Path::new(FIXTURES).join("hs-secret.txt")).expect("secret"))))]);
    assert_eq!(r.status, 200, "a valid JWT: {:?}", r.body);

    let before = heads(&gw).expect("heads");
    let exports_before = exports(&gw);
    let yaml_before = env.yaml();
    let data_dir = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p.join("data")).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    let data_before = data_dir(env.path());
    let worker_before = children_of(gw.proc.pid());

    let cases = matrix(&dev_head);
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "every case has its own name");
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let started = Instant::now();
    for c in &cases {
        let t = Instant::now();
        let (head, body, chunked) = request(c);
        let answer = exchange(&gw.addr(), head, body, chunked, c.closes || c.one_answer);
        let took = t.elapsed();
        match &answer {
            Ok(a) => {
                let code = match c.want {
                    Want::Error(code) => code,
                    Want::Pingora => "(Pingora, empty)",
                    Want::Served => "(served)",
                };
                report.push(format!("{:>4} {code:<24} {:>7.2}s  {}", a.status, took.as_secs_f64(), c.name));
                if let Err(e) = judge(c, a) {
                    failures.push(format!("{} ({} {}): {e}", c.name, c.method, c.path.chars().take(80).collect::<String>()));
                }
            }
            Err(e) => failures.push(format!("{} ({} {}): no answer: {e}", c.name, c.method, c.path.chars().take(80).collect::<String>())),
        }
        if let Err(e) = still_healthy(&gw, &before) {
            failures.push(format!("after {}: {e}", c.name));
            if get_or_dead(&gw) {
                break;
            }
        }
    }
    let count = |f: fn(&Want) -> bool| cases.iter().filter(|c| f(&c.want)).count();
    eprintln!(
        "bad-input matrix: {} inputs in {:.1} s ({} JSON errors, {} Pingora's own empty answers, {} served as documented)\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        count(|w| matches!(w, Want::Error(_))),
        count(|w| matches!(w, Want::Pingora)),
        count(|w| matches!(w, Want::Served)),
        report.join("\n")
    );
    assert!(failures.is_empty(), "{} of {} inputs failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // Nothing else changed: every branch exports byte for byte as before,
    // the refused ingest left no row, the worker never restarted, and no
    // create left a folder or a YAML entry.
    assert_eq!(exports(&gw), exports_before, "an export changed");
    let r = post_with(&gw.url(READ), &json!({"match": {"type": "Person", "key": "big1"}}), &auth);
    assert_eq!((r.status, r.body["row_count"].as_u64()), (200, Some(0)), "nothing of the refused ingest is visible: {:?}", r.body);
    let g = call("GET", &gw.url("/graphs/alpha"), None, &auth);
    assert_eq!((g.body["status"].as_str(), g.body["restarts"].as_u64()), (Some("up"), Some(0)), "{:?}", g.body);
    assert_eq!(children_of(gw.proc.pid()), worker_before, "the same worker serves");
    if let Some((pid, _)) = worker_before.first() {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        eprintln!("the worker holds {fds} descriptors after the matrix (limits.worker_nofile: 4096)");
    }
    assert_eq!(env.yaml(), yaml_before, "the YAML is untouched");
    assert_eq!(data_dir(env.path()), data_before, "no folder was created in data/");
    assert!(cases.len() >= 40, "the matrix holds {} inputs", cases.len());
}

/// True when the gateway no longer answers at all (the matrix stops there).
fn get_or_dead(gw: &Gateway) -> bool {
    try_call("GET", &gw.url("/healthz"), None, &[]).is_err()
}
