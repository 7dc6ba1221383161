//! A real etcd on loopback for the shared-catalog tests: the `etcd` binary
//! (Debian's `etcd-server`, which `make test-deps` installs), started on
//! ephemeral ports with a temporary data folder in its own process group and
//! stopped with the test. The gateways talk etcd's v3 gRPC API to it exactly
//! as they would to a production cluster.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, try_call, Proc};

pub struct EtcdServer {
    pub proc: Proc,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

/// `etcd`: `OMNIGRAPH_ETCD`, else the one on `PATH` (or `/usr/bin/etcd`).
fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OMNIGRAPH_ETCD") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("etcd")).find(|p| p.exists());
    on_path.unwrap_or_else(|| panic!("etcd is missing: run `make test-deps` (make test does: apt etcd-server), or set OMNIGRAPH_ETCD"))
}

impl EtcdServer {
    /// Starts a one-member cluster and waits until it is healthy.
    pub fn start() -> EtcdServer {
        let data = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--data-dir")
            .arg(data.path().join("etcd"))
            .args(["--name", "default"])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd.spawn().expect("spawn etcd");
        let proc = Proc { child, stdout: Default::default() };
        let end = Instant::now() + Duration::from_secs(60);
        while !try_call("GET", &format!("{endpoint}/health"), None, &[]).is_ok_and(|r| r.status == 200) {
            assert!(Instant::now() < end, "etcd did not become healthy on {endpoint} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        EtcdServer { proc, endpoint, _data: data }
    }

    /// The `catalog:` block of a gateway config sharing this etcd under `prefix`.
    pub fn catalog_yaml(&self, prefix: &str, lease_ttl_s: u64) -> String {
        format!("catalog:\n  etcd:\n    endpoints: [\"{}\"]\n    prefix: {prefix}\n    lease_ttl_s: {lease_ttl_s}\n", self.endpoint)
    }

    /// The value of `key`, through etcd's v3 JSON gateway.
    pub fn value(&self, key: &str) -> Option<String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({"key": b64.encode(key.as_bytes())});
        let r = try_call("POST", &format!("{}/v3/kv/range", self.endpoint), Some(body.to_string().as_bytes()), &[]).expect("etcd range");
        let v = r.body["kvs"].as_array()?.first()?["value"].as_str()?.to_string();
        Some(String::from_utf8_lossy(&b64.decode(v).unwrap_or_default()).into_owned())
    }

    /// The keys under `prefix`, through etcd's v3 JSON gateway (base64 keys).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        use base64::Engine;
        let (encode, decode) = (|b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b), |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default());
        let end = prefix_end(prefix.as_bytes());
        let body = serde_json::json!({"key": encode(prefix.as_bytes()), "range_end": encode(&end), "keys_only": true});
        let r = try_call("POST", &format!("{}/v3/kv/range", self.endpoint), Some(body.to_string().as_bytes()), &[]).expect("etcd range");
        r.body["kvs"].as_array().map(|kvs| kvs.iter().filter_map(|kv| kv["key"].as_str()).map(|k| String::from_utf8_lossy(&decode(k)).into_owned()).collect()).unwrap_or_default()
    }
}

/// The end of etcd's range for a prefix: the prefix with its last byte raised.
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
