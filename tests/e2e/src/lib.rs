//! Helpers for the end-to-end tests: find the real binaries, start them on
//! ephemeral ports in temp dirs, talk HTTP to them, and stop them cleanly.
//!
//! The binaries are the ones `make test` builds into `target/debug`
//! (override with `OMNIGRAPH_BIN_DIR`).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod raw_client;
pub mod s3;
pub mod soak;

pub fn bin(name: &str) -> PathBuf {
    bin_in("debug", name)
}

/// A binary from `target/<profile>` (or `OMNIGRAPH_BIN_DIR`).
pub fn bin_in(profile: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os("OMNIGRAPH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target").join(profile));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (make test does)", p.display());
    if let Some(stale) = newer_source(name, &p) {
        panic!(
            "{} is older than {}: a test would run yesterday's code. Run `cargo build --workspace --bins` first (make test does)",
            p.display(),
            stale.display()
        );
    }
    p
}

/// A source file of `binary` that changed after the binary was built, if any.
fn newer_source(binary: &str, built: &Path) -> Option<PathBuf> {
    let crate_dir = match binary {
        "omnigraph-gateway" => "gateway",
        "omnigraph-worker" => "worker",
        _ => return None,
    };
    let built_at = std::fs::metadata(built).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut stack = vec![root.join(crate_dir).join("src"), root.join("contract/src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t > built_at) {
                return Some(path);
            }
        }
    }
    None
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A child process in its own process group, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    /// Every stdout line so far.
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdout piped, and waits for a
    /// stdout line containing `marker`; returns the process and that line.
    pub fn spawn(mut cmd: Command, marker: &str, timeout: Duration) -> (Proc, String) {
        cmd.stdout(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let marker = marker.to_string();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[child] {line}");
                if let Ok(mut l) = sink.lock() {
                    l.push(line.clone());
                }
                if !sent && line.contains(&marker) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let mut p = Proc { child, stdout: lines };
        match rx.recv_timeout(timeout) {
            Ok(line) => (p, line),
            Err(_) => {
                let status = p.child.try_wait().ok().flatten();
                panic!("process did not print {:?} within {timeout:?} (exit: {status:?})", "listening");
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM and wait up to `timeout`; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_for(timeout)
    }

    pub fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::killpg(self.pid(), libc::SIGTERM);
            }
            if self.wait_for(Duration::from_secs(10)).is_none() {
                unsafe {
                    libc::killpg(self.pid(), libc::SIGKILL);
                }
                let _ = self.child.wait();
            }
        }
    }
}

/// A worker started with `omnigraph-worker serve` on an ephemeral loopback port.
pub struct Worker {
    pub proc: Proc,
    pub base: String,
}

pub struct WorkerOpts<'a> {
    /// `debug` for tests, `release` for benchmarks.
    pub profile: &'a str,
    pub graph_id: &'a str,
    pub uri: &'a Path,
    pub init_schema: Option<&'a Path>,
    pub key: Option<&'a str>,
}

impl Worker {
    pub fn start(o: WorkerOpts<'_>) -> Worker {
        let mut cmd = Command::new(bin_in(o.profile, "omnigraph-worker"));
        cmd.args(["serve", "--graph-id", o.graph_id, "--uri"]).arg(o.uri).args(["--listen", "127.0.0.1:0"]);
        if let Some(s) = o.init_schema {
            cmd.arg("--init").arg("--schema").arg(s);
        }
        cmd.env_remove("OMNIGRAPH_WORKER_KEY");
        if let Some(k) = o.key {
            cmd.env("OMNIGRAPH_WORKER_KEY", k);
        }
        let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(120));
        let base = line.rsplit(' ').next().expect("address").trim().to_string();
        Worker { proc, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// One HTTP response: status, headers we care about, and the body as JSON
/// (or as a JSON string when it is not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One keep-alive agent per process, so a benchmark measures requests, not TCP handshakes.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into())
}

pub fn call(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
    try_call(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`call`], but a transport error (say, nothing listening yet) is an `Err`.
pub fn try_call(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map(<[u8]>::to_vec).unwrap_or_default()).expect("request");
    let mut resp = agent().run(req).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let text = resp.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Resp { status, body, headers })
}

pub fn get(url: &str) -> Resp {
    call("GET", url, None, &[])
}

pub fn post(url: &str, body: &Value) -> Resp {
    call("POST", url, Some(body.to_string().as_bytes()), &[])
}

pub fn post_with(url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    call("POST", url, Some(body.to_string().as_bytes()), headers)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write file");
    p
}

pub const SOCIAL_SCHEMA: &str = "node Person { name: String @key  age: I64?  tags: [String]? }\nnode City { name: String @key country: String }\nedge Knows: Person -> Person { since: Date? }\nedge LivesIn: Person -> City\n";

/// A small deterministic pseudo-random generator, so tests need no extra crate.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The p-th percentile (0-100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p / 100.0).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// `graphs:` entries for each id, at `data/<id>` with the social schema.
pub fn graphs_yaml(ids: &[&str]) -> String {
    ids.iter().map(|g| format!("  {g}:\n    uri: data/{g}\n    schema: {{ file: s.pg }}\n")).collect()
}

/// A test's config folder: a temporary directory and its `omnigraph.yaml`.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
}

/// One entry of a test's static tokens file.
pub struct TestToken<'a> {
    pub token: &'a str,
    pub actor: &'a str,
    pub groups: &'a [&'a str],
    pub tenant: Option<&'a str>,
}

/// `tok-root`, actor `root`, group `admins` (allowed everything).
pub const ROOT_TOKEN: TestToken<'static> = TestToken { token: "tok-root", actor: "root", groups: &["admins"], tenant: None };

/// Team members may read any branch but `secret`, change only unprotected
/// branches, and create branches (tests of branch policies).
pub const TEAM_POLICY: &str = r#"
@id("team-read")
permit (principal in Omnigraph::Group::"team", action == Omnigraph::Action::"read", resource)
when { context has branch && context.branch != "secret" };

@id("team-change-unprotected")
permit (principal in Omnigraph::Group::"team", action == Omnigraph::Action::"change", resource)
when { context has branch_protected && !context.branch_protected };

@id("team-branch")
permit (principal in Omnigraph::Group::"team", action == Omnigraph::Action::"branch_create", resource);
"#;

impl ConfigDir {
    /// A config folder: the social schema, a server policy that lets
    /// `admins` do everything (`admins-all`), `tokens`, and `graphs_yaml`
    /// under `graphs:`. `server_extra` lines go under `server:`, `top_extra`
    /// at the top level (a `limits:` block, say).
    pub fn with(server_extra: &str, top_extra: &str, tokens: &[TestToken<'_>], graphs_yaml: &str) -> ConfigDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_file(d, "s.pg", SOCIAL_SCHEMA);
        write_file(d, "policies/server.cedar", "@id(\"admins-all\")\npermit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
        let mut t = String::from("tokens:\n");
        for k in tokens {
            t.push_str(&format!("  - actor_id: {}\n    sha256: {}\n", k.actor, sha256_hex(k.token)));
            if !k.groups.is_empty() {
                t.push_str(&format!("    groups: [{}]\n", k.groups.join(", ")));
            }
            if let Some(tn) = k.tenant {
                t.push_str(&format!("    tenant: {tn}\n"));
            }
        }
        write_file(d, "tokens.yaml", &t);
        let yaml = format!("server:\n  bind: 127.0.0.1:0\n  runtime_dir: run\n  policy: {{ file: policies/server.cedar }}\n{server_extra}{top_extra}auth:\n  static_tokens: {{ file: tokens.yaml }}\ngraphs:\n{graphs_yaml}");
        let cfg = write_file(d, "omnigraph.yaml", &yaml);
        ConfigDir { dir, cfg }
    }

    /// [`ConfigDir::with`] for the one admin [`ROOT_TOKEN`] and each of
    /// `graphs` at `data/<id>`.
    pub fn admin(server_extra: &str, top_extra: &str, graphs: &[&str]) -> ConfigDir {
        ConfigDir::with(server_extra, top_extra, &[ROOT_TOKEN], &graphs_yaml(graphs))
    }

    /// Graph `alpha`, protecting `main`, with `graph_policy` as its own
    /// policies; the admin [`ROOT_TOKEN`] and `tok-team` (actor `tm`, group `team`).
    pub fn team(server_extra: &str, graph_policy: &str) -> ConfigDir {
        let team = TestToken { token: "tok-team", actor: "tm", groups: &["team"], tenant: None };
        let graphs = "  alpha:\n    uri: data/alpha\n    schema: { file: s.pg }\n    policy: { file: policies/alpha.cedar }\n    protected_branches: [main]\n";
        let env = ConfigDir::with(server_extra, "", &[ROOT_TOKEN, team], graphs);
        write_file(env.path(), "policies/alpha.cedar", graph_policy);
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config file as it is on disk now.
    pub fn yaml(&self) -> String {
        std::fs::read_to_string(&self.cfg).expect("read omnigraph.yaml")
    }

    pub fn start(&self) -> Gateway {
        Gateway::start(&self.cfg)
    }

    pub fn start_env(&self, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn("debug", &self.cfg, &[], env)
    }
}

/// A gateway started with `omnigraph-gateway serve --config` and waited on
/// until `/readyz` answers 200.
pub struct Gateway {
    pub proc: Proc,
    pub base: String,
}

impl Gateway {
    pub fn start(config: &Path) -> Gateway {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &Path, extra: &[&str]) -> Gateway {
        Self::start_in("debug", config, extra)
    }

    /// Starts the gateway from `target/<profile>`; its workers come from the same folder.
    pub fn start_in(profile: &str, config: &Path, extra: &[&str]) -> Gateway {
        Self::spawn(profile, config, extra, &[])
    }

    /// [`Gateway::start_in`] with extra environment variables.
    pub fn spawn(profile: &str, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(bin_in(profile, "omnigraph-gateway"));
        cmd.arg("serve").arg("--config").arg(config).args(extra);
        cmd.envs(env.iter().copied());
        // Port 0: the gateway prints the port the kernel chose, so no test races for a free one.
        if !extra.contains(&"--bind") {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        cmd.env_remove("OMNIGRAPH_WORKER_BIN");
        let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(60));
        let base = line.rsplit(' ').next().expect("address").trim().to_string();
        let g = Gateway { proc, base };
        g.wait_ready(Duration::from_secs(120));
        g
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if try_call("GET", &self.url("/readyz"), None, &[]).is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < end, "gateway not ready within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The pid of `graph`'s worker, while it runs.
    pub fn worker_pid(&self, graph: &str) -> Option<i32> {
        worker_of(self.proc.pid(), graph)
    }

    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// Sends `raw` bytes as one HTTP/1.1 request and returns (status, body):
/// for paths an HTTP client library would normalise.
pub fn raw_request(addr: &str, raw: &str) -> (u16, String) {
    raw_request_within(addr, raw, Duration::from_secs(30))
}

/// [`raw_request`], waiting up to `timeout` for the answer (a long
/// maintenance run in a benchmark).
pub fn raw_request_within(addr: &str, raw: &str, timeout: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Processes whose parent is `pid`, with their command lines.
pub fn children_of(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The ppid is the second field after the ")" that closes the command name.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|x| x.parse::<i32>().ok());
        if ppid == Some(pid) {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default();
            out.push((p, cmd));
        }
    }
    out
}

/// The pid of `graph`'s worker, a child of the gateway `gateway_pid`.
pub fn worker_of(gateway_pid: i32, graph: &str) -> Option<i32> {
    let flag = format!("--graph-id {graph} ");
    children_of(gateway_pid).into_iter().find(|(_, cmd)| cmd.contains("omnigraph-worker") && cmd.contains(&flag)).map(|(p, _)| p)
}

/// Processes whose command line contains `needle` (zombies excluded).
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default();
        if cmd.contains(needle) {
            out.push(p);
        }
    }
    out
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Unpadded URL-safe base64 (RFC 4648 §5), as JWTs and JWK key material use it.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 hex of a token, as the static tokens file wants it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}
