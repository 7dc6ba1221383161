//! End-to-end test of TLS on the client port (`server.tls`): a self-signed
//! certificate made here, requests over HTTPS, and a certificate swapped on
//! SIGHUP that new connections see while an open connection keeps working.

use std::path::Path;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;

fn make_cert(dir: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.pem()
}

/// A client that trusts exactly `pem`.
fn agent_trusting(pem: &str) -> ureq::Agent {
    let cert = ureq::tls::Certificate::from_pem(pem.as_bytes()).unwrap();
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[cert])).build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into()
}

fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<u16, String> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    req.call().map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// `curl` (which `make deps` installs; Debian's is built with nghttp2) over
/// TLS trusting `ca`: "<HTTP version> <status>".
fn curl_tls(ca: &Path, port: &str, flag: &str, path: &str, token: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", flag, "--max-time", "10"]);
    cmd.arg("--cacert").arg(ca).arg("--resolve").arg(format!("localhost:{port}:127.0.0.1"));
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
    }
    let out = cmd.arg(format!("https://localhost:{port}{path}")).output().expect("curl runs");
    assert!(out.status.success(), "curl {flag}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn https_with_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = make_cert(d);
    write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "policies/server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(d, "tokens.yaml", &format!("tokens:\n  - actor_id: root\n    sha256: {}\n    groups: [admins]\n", sha256_hex("tok-root")));
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        "server:\n  bind: 127.0.0.1:0\n  runtime_dir: run\n  policy: { file: policies/server.cedar }\n  tls: { cert: cert.pem, key: key.pem }\nauth:\n  static_tokens: { file: tokens.yaml }\ngraphs:\n  alpha:\n    uri: data/alpha\n    schema: { file: s.pg }\n",
    );
    let mut cmd = std::process::Command::new(bin("omnigraph-gateway"));
    cmd.arg("serve").arg("--config").arg(&cfg);
    let (proc, line) = Proc::spawn(cmd, "listening on https://", Duration::from_secs(60));
    let port = line.rsplit(':').next().unwrap().trim().to_string();
    let base = format!("https://localhost:{port}");

    let old = agent_trusting(&first);
    let t = Instant::now();
    while get(&old, &format!("{base}/readyz"), None) != Ok(200) {
        assert!(t.elapsed() < Duration::from_secs(60), "not ready over https");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&old, &format!("{base}/graphs/alpha/snapshot"), Some("tok-root")), Ok(200), "proxied over TLS");
    assert_eq!(get(&old, &format!("{base}/graphs/alpha/snapshot"), None), Ok(401));
    // ALPN: HTTP/2 when the client offers it, HTTP/1.1 when it does not;
    // both proxied to the worker and both still checked by Cedar.
    let ca = d.join("first-ca.pem");
    std::fs::write(&ca, &first).unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        assert_eq!(curl_tls(&ca, &port, flag, "/graphs/alpha/snapshot", Some("tok-root")), format!("{version} 200"), "{flag}");
        assert_eq!(curl_tls(&ca, &port, flag, "/graphs/alpha/snapshot", None), format!("{version} 401"), "{flag} without a token");
    }
    let plain = try_call("GET", &format!("http://127.0.0.1:{port}/healthz"), None, &[]);
    assert!(plain.map_or(true, |r| r.status >= 400), "plain HTTP is not served on the TLS port");

    // A new certificate, and SIGHUP.
    let second = make_cert(d);
    assert_ne!(first, second);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(proc.pid(), libc::SIGHUP) };
    let new = agent_trusting(&second);
    let t = Instant::now();
    while get(&new, &format!("{base}/healthz"), None) != Ok(200) {
        assert!(t.elapsed() < Duration::from_secs(10), "new connections never saw the new certificate");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&old, &format!("{base}/healthz"), None), Ok(200), "the connection opened before the reload still works");
    let fresh_old = agent_trusting(&first);
    assert!(get(&fresh_old, &format!("{base}/healthz"), None).is_err(), "a new connection no longer gets the old certificate");

    // A broken file leaves the current certificate in place.
    std::fs::write(d.join("cert.pem"), "not a certificate").unwrap();
    unsafe { libc::kill(proc.pid(), libc::SIGHUP) };
    let metrics = |agent: &ureq::Agent| agent.get(&format!("{base}/metrics")).header("authorization", "Bearer tok-root").call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default();
    let refused = || metrics(&agent_trusting(&second)).contains("omnigraph_tls_reloads_total{result=\"failed\"} 1");
    assert!(eventually(Duration::from_secs(10), refused), "the failed reload is counted");
    assert!(metrics(&agent_trusting(&second)).contains("omnigraph_tls_reloads_total{result=\"ok\"} 1"), "the good reload was counted");
    assert_eq!(get(&agent_trusting(&second), &format!("{base}/healthz"), None), Ok(200));
    drop(proc);
}
