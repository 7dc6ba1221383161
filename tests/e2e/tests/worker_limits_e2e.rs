//! Worker resource limits (docs/reliability.md, `limits.worker_memory_bytes`
//! and `limits.worker_nofile`): every worker the gateway starts runs under
//! them, as `/proc/<pid>/limits` shows, and a worker that allocates past its
//! memory limit dies alone: the supervisor restarts it, nothing of the
//! request that killed it is visible, and another graph answers 200 all the
//! while.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
/// The memory limit of the crash test: the smallest the gateway accepts,
/// room for an idle debug worker (20 to 30 MiB of data mapped,
/// docs/reliability.md) and its ordinary requests, not for the batch below.
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// Starts the gateway of `env` with its log in `<env>/gateway.log` and core
/// dumps off (an aborting worker must not leave a core file behind on
/// machines that keep them).
fn start(env: &ConfigDir) -> Gateway {
    let log = std::fs::File::create(env.path().join("gateway.log")).expect("the gateway's log file");
    let mut cmd = Command::new(bin("omnigraph-gateway"));
    cmd.arg("serve").arg("--config").arg(&env.cfg).args(["--bind", "127.0.0.1:0"]).env_remove("OMNIGRAPH_WORKER_BIN").stderr(log);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(60));
    let gw = Gateway { proc, base: line.rsplit(' ').next().expect("address").trim().to_string() };
    gw.wait_ready(Duration::from_secs(120));
    gw
}

/// The soft and hard values of one row of `/proc/<pid>/limits`.
fn limit(pid: i32, row: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row:?} in /proc/{pid}/limits:\n{text}"));
    let fields: Vec<&str> = line[row.len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

fn read_status(gw: &Gateway, graph: &str) -> u16 {
    try_call("POST", &gw.url(&format!("/graphs/{graph}/read")), Some(br#"{"match":{"type":"Person","key":"p1"}}"#), &[ROOT]).map_or(0, |r| r.status)
}

#[test]
fn every_worker_runs_under_the_configured_limits() {
    // Defaults: no memory limit, 4096 descriptors.
    let env = ConfigDir::admin("", "", &["alpha"]);
    let gw = start(&env);
    let pid = gw.worker_pid("alpha").expect("alpha's worker");
    assert_eq!(limit(pid, "Max open files"), ("4096".into(), "4096".into()));
    assert_eq!(limit(pid, "Max data size"), ("unlimited".into(), "unlimited".into()));
    drop(gw);

    let env = ConfigDir::admin("", "limits:\n  worker_memory_bytes: 4294967296\n  worker_nofile: 1000\n", &["alpha", "beta"]);
    let gw = start(&env);
    for g in ["alpha", "beta"] {
        let pid = gw.worker_pid(g).unwrap_or_else(|| panic!("{g}'s worker"));
        assert_eq!(limit(pid, "Max open files"), ("1000".into(), "1000".into()), "{g}: soft and hard, so a worker cannot lift it");
        assert_eq!(limit(pid, "Max data size"), ("4294967296".into(), "4294967296".into()), "{g}");
    }
    // A worker the gateway creates at run time gets them too.
    let r = post_with(&gw.url("/graphs"), &json!({"graph_id": "gamma", "uri": "data/gamma", "schema": {"source": SOCIAL_SCHEMA}}), &[ROOT]);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let pid = gw.worker_pid("gamma").expect("gamma's worker");
    assert_eq!(limit(pid, "Max open files"), ("1000".into(), "1000".into()));
    // The gateway itself keeps its own (lifted) descriptor limit.
    assert_ne!(limit(gw.proc.pid(), "Max open files").0, "1000");

    // A limit no worker could start under is refused when the config loads.
    let bad = ConfigDir::admin("", "limits:\n  worker_nofile: 10\n", &["alpha"]);
    let out = Command::new(bin("omnigraph-gateway")).arg("serve").arg("--config").arg(&bad.cfg).output().expect("run the gateway");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.worker_nofile") && err.contains("at least 64"), "{err}");
}

/// The largest batch the limits allow (`max_change_ops` ops, each with a
/// tag of about 85 bytes: 16 MB of JSON, just under `max_body_bytes`): the body, the
/// parsed ops, the 100,000 rows it adds to the in-memory state and their
/// Arrow batch hold several times `MEMORY_LIMIT` in a debug worker.
fn huge_batch() -> Value {
    let tag = "t".repeat(80);
    let ops: Vec<Value> = (0..100_000).map(|i| json!({"upsert": {"type": "Person", "key": format!("h{i}"), "props": {"age": i, "tags": [format!("{tag}{i}")]}}})).collect();
    json!({ "ops": ops })
}

#[test]
fn a_worker_past_its_memory_limit_dies_alone_and_is_restarted() {
    let env = ConfigDir::admin("", &format!("limits:\n  worker_memory_bytes: {MEMORY_LIMIT}\n"), &["alpha", "beta"]);
    let gw = start(&env);
    for g in ["alpha", "beta"] {
        let ops: Vec<Value> = (0..20).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect();
        let r = post_with(&gw.url(&format!("/graphs/{g}/change")), &json!({ "ops": ops }), &[ROOT]);
        assert_eq!(r.status, 200, "{g}: ordinary work fits the limit: {:?}", r.body);
    }
    let alpha_pid = gw.worker_pid("alpha").expect("alpha's worker");
    let beta_pid = gw.worker_pid("beta").expect("beta's worker");
    assert_eq!(limit(alpha_pid, "Max data size").0, MEMORY_LIMIT.to_string());
    let head = |g: &str| call("GET", &gw.url(&format!("/graphs/{g}/snapshot")), None, &[ROOT]).body["commit_id"].clone();
    let alpha_head = head("alpha");

    // Beta is read the whole time, from another thread.
    let stop = Arc::new(AtomicBool::new(false));
    let url = gw.url("/graphs/beta/read");
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let s = try_call("POST", &url, Some(br#"{"match":{"type":"Person","key":"p1"}}"#), &[ROOT]).map_or(0, |r| r.status);
                statuses.push(s);
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };

    let body = huge_batch();
    let t = Instant::now();
    let r = post_with(&gw.url("/graphs/alpha/change"), &body, &[ROOT]);
    eprintln!("the batch past the limit was answered {} after {:.1} s: {}", r.status, t.elapsed().as_secs_f64(), r.body);
    assert_eq!((r.status, r.body["code"].as_str()), (503, Some("worker_unavailable")), "the request whose worker died: {:?}", r.body);
    assert!(r.header("retry-after").is_some());

    // The supervisor restarts alpha's worker: a new process, up, under the same limit.
    assert!(
        eventually(Duration::from_secs(60), || {
            let g = call("GET", &gw.url("/graphs/alpha"), None, &[ROOT]).body;
            g["status"] == "up" && g["restarts"].as_u64() >= Some(1) && read_status(&gw, "alpha") == 200
        }),
        "alpha was not restarted: {:?}",
        call("GET", &gw.url("/graphs/alpha"), None, &[ROOT]).body
    );
    // Why it died, from the gateway's log: the worker's own last words and its exit.
    let log = std::fs::read_to_string(env.path().join("gateway.log")).unwrap_or_default();
    let last_words = log.lines().find(|l| l.contains("graph=alpha") && l.contains("memory allocation of"));
    assert!(last_words.is_some(), "the worker reported its failed allocation:\n{log}");
    let exit = log.lines().find(|l| l.contains("worker exited; restarting with backoff") && l.contains("alpha"));
    assert!(exit.is_some_and(|l| l.contains("SIGABRT")), "the supervisor saw it abort: {exit:?}");
    let new_pid = gw.worker_pid("alpha").expect("alpha's new worker");
    assert_ne!(new_pid, alpha_pid, "a new process");
    assert_eq!(limit(new_pid, "Max data size").0, MEMORY_LIMIT.to_string(), "the restarted worker has the limit too");
    assert_eq!(head("alpha"), alpha_head, "nothing of the batch that killed the worker is visible");

    stop.store(true, Ordering::SeqCst);
    let statuses = watcher.join().expect("the watcher");
    assert!(statuses.len() >= 10, "beta was read throughout ({} reads)", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200), "beta answered something else than 200: {statuses:?}");
    assert_eq!(gw.worker_pid("beta"), Some(beta_pid), "beta's worker was never touched");
    let b = call("GET", &gw.url("/graphs/beta"), None, &[ROOT]).body;
    assert_eq!(b["restarts"].as_u64(), Some(0), "{b:?}");
    assert_eq!(get(&gw.url("/healthz")).status, 200);
    eprintln!("alpha restarted as pid {new_pid} (was {alpha_pid}); beta answered {} reads, all 200", statuses.len());
}
