//! The shared catalog on etcd (release build), side by side in one run:
//! - `POST /graphs` on a gateway whose catalog is its YAML file against one
//!   whose catalog is etcd (interleaved), p50 and p99;
//! - how long after gateway A's 201 gateway B serves the new graph (the
//!   watch round trip and B loading it), p50 and p99;
//! - a key lookup through the gateway that runs the graph's worker against
//!   one through the other gateway, which proxies to that worker (interleaved);
//! - the takeover after a `kill -9` of the gateway running a worker: from the
//!   kill until the other gateway answers a read (lease TTL + a worker start).
//!
//! `CATALOG_CREATES` (default 30) and `CATALOG_READS` (default 500) resize it.

use std::time::{Duration, Instant};

use omnigraph_e2e::etcd::EtcdServer;
use omnigraph_e2e::*;
use serde_json::json;

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const LEASE_TTL_S: u64 = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn create(gw: &Gateway, id: &str) -> Duration {
    let body = json!({"graph_id": id, "uri": format!("data/{id}"), "schema": {"source": SOCIAL_SCHEMA}});
    let t = Instant::now();
    let r = post_with(&gw.url("/graphs"), &body, &[ROOT]);
    assert_eq!(r.status, 201, "{id}: {:?}", r.body);
    t.elapsed()
}

fn lookup(gw: &Gateway, graph: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person", "key": "x"}}), &[ROOT]);
    (r.status, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    let creates = env_usize("CATALOG_CREATES", 30);
    let reads = env_usize("CATALOG_READS", 500);
    let etcd = EtcdServer::start();
    let shared = ConfigDir::with("", &etcd.catalog_yaml("/bench/", LEASE_TTL_S), &[ROOT_TOKEN], "  {}\n");
    let b_cfg = write_file(shared.path(), "omnigraph-b.yaml", &shared.yaml().replace("runtime_dir: run\n", "runtime_dir: run-b\n"));
    let yaml = ConfigDir::with("", "", &[ROOT_TOKEN], "  {}\n");
    let a = Gateway::start_in("release", &shared.cfg, &[]);
    let b = Gateway::start_in("release", &b_cfg, &[]);
    let file = Gateway::start_in("release", &yaml.cfg, &[]);

    // Creates, interleaved; each etcd create is also timed until the other gateway serves it.
    let (mut on_file, mut on_etcd, mut visible) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..creates {
        on_file.push(create(&file, &format!("f{i:03}")));
        let id = format!("e{i:03}");
        on_etcd.push(create(&a, &id));
        // From A's 201 until B answers for the graph.
        let t = Instant::now();
        let url = b.url(&format!("/graphs/{id}"));
        while call("GET", &url, None, &[ROOT]).status != 200 {
            assert!(t.elapsed() < Duration::from_secs(10), "{id} never reached gateway B");
        }
        visible.push(t.elapsed());
    }

    // Reads of one graph whose worker runs under A: through A, and through B (proxied to A's worker).
    let (mut owner, mut follower) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        lookup(&a, "e000");
        lookup(&b, "e000");
    }
    for _ in 0..reads {
        let (s, d) = lookup(&a, "e000");
        assert_eq!(s, 200);
        owner.push(d);
        let (s, d) = lookup(&b, "e000");
        assert_eq!(s, 200);
        follower.push(d);
    }
    assert!(b.worker_pid("e000").is_none(), "B proxied to A's worker, it did not start one");

    // Takeover: kill -9 A; B serves A's graph once A's lease expired.
    let kill = Instant::now();
    a.proc.signal(libc::SIGKILL);
    loop {
        if lookup(&b, "e001").0 == 200 {
            break;
        }
        assert!(kill.elapsed() < Duration::from_secs(60), "no takeover within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let takeover = kill.elapsed();

    let p = |v: &mut Vec<Duration>, q: f64| ms(percentile(v, q));
    println!("## shared catalog on etcd: release build, one host, etcd {} on loopback\n", "3.4");
    println!("| measurement | p50 ms | p99 ms |\n|---|---|---|");
    println!("| POST /graphs, YAML catalog ({creates}) | {} | {} |", p(&mut on_file, 50.0), p(&mut on_file, 99.0));
    println!("| POST /graphs, etcd catalog ({creates}) | {} | {} |", p(&mut on_etcd, 50.0), p(&mut on_etcd, 99.0));
    println!("| from A's 201 until B serves the graph ({creates}) | {} | {} |", p(&mut visible, 50.0), p(&mut visible, 99.0));
    println!("| key lookup through the gateway running the worker ({reads}) | {} | {} |", p(&mut owner, 50.0), p(&mut owner, 99.0));
    println!("| key lookup through the other gateway ({reads}) | {} | {} |", p(&mut follower, 50.0), p(&mut follower, 99.0));
    println!("\ntakeover after kill -9 of the gateway running the worker (lease_ttl_s {LEASE_TTL_S}): {:.2} s", takeover.as_secs_f64());
}
