//! A real S3-compatible server on loopback for the object-storage tests:
//! `moto_server` (PyPI `moto[server]`, which `make test-deps` installs into
//! `.tools/moto`), started on an ephemeral port in its own process group and
//! stopped with the test. Never a mock inside the process: the workers talk
//! S3 over HTTP to it exactly as they would to AWS.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_in, free_port, try_call, Proc, Worker};

/// Dummy credentials: moto accepts any, and they prove the workers take
/// credentials from the environment the gateway passes on.
pub const ACCESS_KEY: &str = "og-test-access";
pub const SECRET_KEY: &str = "og-test-secret";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    pub proc: Proc,
    pub endpoint: String,
}

/// `moto_server`: `OMNIGRAPH_MOTO_SERVER`, else the repository's
/// `.tools/moto/bin/moto_server`, else the one on `PATH`.
fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("OMNIGRAPH_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/moto/bin/moto_server");
    if local.exists() {
        return local;
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("moto_server")).find(|p| p.exists());
    on_path.unwrap_or_else(|| panic!("moto_server is missing: run `make test-deps` (make test does), or set OMNIGRAPH_MOTO_SERVER"))
}

impl S3Server {
    /// Starts the server and waits until it answers.
    pub fn start() -> S3Server {
        let port = free_port();
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        let child = cmd.spawn().expect("spawn moto_server");
        let proc = Proc { child, stdout: Default::default() };
        let endpoint = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(60);
        while try_call("GET", &format!("{endpoint}/moto-api/"), None, &[]).is_err() {
            assert!(Instant::now() < end, "moto_server did not answer on {endpoint} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { proc, endpoint }
    }

    /// Creates `bucket` (path-style `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let r = try_call("PUT", &format!("{}/{bucket}", self.endpoint), Some(b""), &[]).expect("create bucket");
        assert_eq!(r.status, 200, "create bucket {bucket}: {:?}", r.body);
    }

    /// Puts one object directly (not through a worker).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = try_call("PUT", &format!("{}/{bucket}/{key}", self.endpoint), Some(body), &[]).expect("put object");
        assert_eq!(r.status, 200, "put {bucket}/{key}: {:?}", r.body);
    }

    /// Every key under `prefix` (ListObjectsV2, following continuation).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint);
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={}", urlencode(t)));
            }
            let r = try_call("GET", &url, None, &[]).expect("list objects");
            let xml = r.body.as_str().unwrap_or_default().to_string();
            out.extend(tag_values(&xml, "Key"));
            token = tag_values(&xml, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return out;
            }
        }
    }

    /// The environment a gateway (and so its workers) needs for this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string())]
    }

    /// [`S3Server::env`] plus what `server.object_store` would give a worker:
    /// for an `omnigraph-worker` run without a gateway.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.extend([("AWS_ENDPOINT", self.endpoint.clone()), ("AWS_ALLOW_HTTP", "true".to_string()), ("AWS_REGION", REGION.to_string())]);
        env
    }

    /// `omnigraph-worker serve` (from `target/<profile>`) on `uri` on
    /// loopback TCP, with this server's endpoint and credentials; `init`
    /// creates the graph from that schema file.
    pub fn worker(&self, profile: &str, graph_id: &str, uri: &str, init: Option<&Path>) -> Worker {
        let mut cmd = Command::new(bin_in(profile, "omnigraph-worker"));
        cmd.args(["serve", "--graph-id", graph_id, "--uri", uri, "--listen", "127.0.0.1:0"]);
        if let Some(schema) = init {
            cmd.arg("--init").arg("--schema").arg(schema);
        }
        cmd.env_remove("OMNIGRAPH_WORKER_KEY").envs(self.worker_env());
        let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(120));
        let base = line.rsplit(' ').next().expect("address").trim().to_string();
        Worker { proc, base }
    }

    /// The `server.object_store` block for this server, lines indented for `server:`.
    pub fn server_yaml(&self, roots: &[&str]) -> String {
        format!("  object_store:\n    endpoint: {}\n    region: {REGION}\n    allow_http: true\n    roots: [{}]\n", self.endpoint, roots.join(", "))
    }
}

fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open).skip(1).filter_map(|s| s.split_once(&close).map(|(v, _)| v.replace("&amp;", "&"))).collect()
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
