//! The shared catalog on etcd (issue 12), end to end: two gateways on two
//! ports share one real etcd (started on loopback by the test) and one host.
//! Racing creates split across them give exactly one 201 per id; both list
//! every graph; a graph's requests go to its one registered worker whichever
//! gateway they arrive at; a `kill -9` of one gateway loses no graph, and
//! the other takes its graphs' workers over once its lease expires; a
//! delete through one is seen by the other; and a graph's own policies,
//! stored in etcd, decide its requests identically on both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omnigraph_e2e::etcd::EtcdServer;
use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const TEAM: (&str, &str) = ("authorization", "Bearer tok-team");
const LEASE_TTL_S: u64 = 3;

/// One config folder, two gateway configs (their own runtime folders) on one
/// etcd prefix: the same data root and policy folder, as two gateways on one host.
struct Pair {
    env: ConfigDir,
    b_cfg: std::path::PathBuf,
}

fn pair(etcd: &EtcdServer, server_extra: &str) -> Pair {
    let team = TestToken { token: "tok-team", actor: "tm", groups: &["team"], tenant: None };
    let env = ConfigDir::with(server_extra, &etcd.catalog_yaml("/og-test/", LEASE_TTL_S), &[ROOT_TOKEN, team], "  {}\n");
    let b_yaml = env.yaml().replace("runtime_dir: run\n", "runtime_dir: run-b\n");
    let b_cfg = write_file(env.path(), "omnigraph-b.yaml", &b_yaml);
    Pair { env, b_cfg }
}

fn create_body(id: &str) -> Value {
    json!({"graph_id": id, "uri": format!("data/{id}"), "schema": {"source": SOCIAL_SCHEMA}})
}

fn listed(gw: &Gateway) -> BTreeSet<String> {
    let r = call("GET", &gw.url("/graphs"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["graphs"].as_array().expect("graphs").iter().filter_map(|g| g["graph_id"].as_str().map(str::to_string)).collect()
}

fn upsert(gw: &Gateway, graph: &str, key: &str) -> Resp {
    post_with(&gw.url(&format!("/graphs/{graph}/change")), &json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": 7}}}]}), &[ROOT])
}

fn read_key(gw: &Gateway, graph: &str, key: &str, who: (&str, &str)) -> Resp {
    post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person", "key": key}}), &[who])
}

fn rows(r: &Resp) -> usize {
    r.body["rows"].as_array().map_or(0, Vec::len)
}

/// Reads `key` from `graph` through `gw` until it answers 200 (a graph
/// whose worker ran on a dead gateway answers 503 until the lease expires).
fn read_eventually(gw: &Gateway, graph: &str, key: &str, within: Duration) -> Resp {
    let end = Instant::now() + within;
    loop {
        let r = read_key(gw, graph, key, ROOT);
        if r.status == 200 || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn racing_creates_across_two_gateways_give_one_graph_per_id_and_a_killed_gateway_loses_none() {
    let etcd = EtcdServer::start();
    let p = pair(&etcd, "  idle_stop_s: 3\n");
    let a = p.env.start();
    let b = Gateway::start(&p.b_cfg);
    let gateways = [a.base.clone(), b.base.clone()];

    // 50 ids, each POSTed once to each gateway: 100 racing creates.
    const IDS: usize = 50;
    let mut jobs: Vec<(usize, usize)> = (0..IDS).flat_map(|i| [(i, 0), (i, 1)]).collect();
    let mut rng = Lcg(12);
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let queue = Arc::new(Mutex::new(jobs));
    let results: Arc<Mutex<BTreeMap<usize, Vec<(usize, u16)>>>> = Arc::default();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (queue, results, gateways) = (queue.clone(), results.clone(), gateways.clone());
            std::thread::spawn(move || loop {
                let Some((i, g)) = queue.lock().unwrap().pop() else { return };
                let url = format!("{}/graphs", gateways[g]);
                let body = create_body(&format!("g{i:02}"));
                // A client retries 429 (the create queue is full) as told.
                let status = loop {
                    let r = post_with(&url, &body, &[ROOT]);
                    if r.status != 429 {
                        assert!(r.status == 201 || r.status == 409, "create g{i:02} via gateway {g}: {} {:?}", r.status, r.body);
                        break r.status;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                results.lock().unwrap().entry(i).or_default().push((g, status));
            })
        })
        .collect();
    for t in threads {
        t.join().expect("create thread");
    }
    let results = results.lock().unwrap().clone();
    let mut creator = BTreeMap::new();
    for i in 0..IDS {
        let r = &results[&i];
        let wins: Vec<_> = r.iter().filter(|(_, s)| *s == 201).collect();
        assert_eq!(wins.len(), 1, "g{i:02}: exactly one 201 across both gateways, got {r:?}");
        assert!(r.iter().any(|(_, s)| *s == 409), "g{i:02}: the other create gets 409: {r:?}");
        creator.insert(format!("g{i:02}"), wins[0].0);
    }
    let all: BTreeSet<String> = creator.keys().cloned().collect();
    for gw in [&a, &b] {
        assert!(eventually(Duration::from_secs(10), || listed(gw) == all), "a gateway lists every graph: {:?}", listed(gw));
    }
    assert_eq!(etcd.keys("/og-test/catalog/graphs/").len(), IDS);
    assert!(etcd.keys("/og-test/catalog/reservations/").is_empty(), "no reservation outlives its create");

    // Writes through the gateway that did not create a graph reach its one worker.
    let from_a: Vec<String> = creator.iter().filter(|(_, g)| **g == 0).map(|(id, _)| id.clone()).take(5).collect();
    assert!(!from_a.is_empty());
    for id in &from_a {
        let w = upsert(&b, id, "kim");
        assert_eq!(w.status, 200, "write to {id} through the other gateway: {:?}", w.body);
        assert_eq!(rows(&read_key(&a, id, "kim", ROOT)), 1, "{id}: the write is visible through both gateways");
    }

    // kill -9 of gateway A: its workers die with it, and no graph is lost.
    let owned_by_a: Vec<String> = from_a.iter().filter(|id| a.worker_pid(id).is_some()).cloned().collect();
    assert!(!owned_by_a.is_empty(), "A runs workers of the graphs just written");
    let a_pid = a.proc.pid();
    a.proc.signal(libc::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || children_of(a_pid).is_empty() && try_call("GET", &a.url("/healthz"), None, &[]).is_err()));
    assert_eq!(listed(&b), all, "the surviving gateway still lists every graph");
    // A request through B to a graph whose worker died with A waits for A's
    // lease to expire, and B then starts (and registers) the worker: the
    // very first request is answered, not refused.
    let t = Instant::now();
    let r = read_key(&b, &owned_by_a[0], "kim", ROOT);
    assert_eq!((r.status, rows(&r)), (200, 1), "{:?}", r.body);
    println!("first request to {} after the kill answered in {:?} (lease_ttl_s {LEASE_TTL_S})", owned_by_a[0], t.elapsed());
    assert!(b.worker_pid(&owned_by_a[0]).is_some());
    for id in &from_a {
        let r = read_eventually(&b, id, "kim", Duration::from_secs(LEASE_TTL_S * 5 + 20));
        assert_eq!(r.status, 200, "{id} is served by the surviving gateway: {:?}", r.body);
        assert_eq!(rows(&r), 1, "{id}: every acknowledged write survived");
        assert!(b.worker_pid(id).is_some(), "{id}'s worker now runs under the surviving gateway");
    }
    // A gateway started again on the same catalog serves every graph at once.
    drop(a);
    let a2 = p.env.start();
    assert_eq!(listed(&a2), all);
    assert_eq!(rows(&read_key(&a2, &from_a[0], "kim", ROOT)), 1, "served by the restarted gateway too");
    // Through B's worker, or (if it stopped as idle meanwhile) a new one under A: never both.
    let running = [a2.worker_pid(&from_a[0]), b.worker_pid(&from_a[0])];
    assert_eq!(running.iter().flatten().count(), 1, "one worker per graph: {running:?}");
}

#[test]
fn one_worker_per_graph_serves_both_gateways_and_moves_when_idle() {
    let etcd = EtcdServer::start();
    let p = pair(&etcd, "  idle_stop_s: 2\n");
    let a = p.env.start();
    let b = Gateway::start(&p.b_cfg);
    let r = post_with(&a.url("/graphs"), &create_body("alpha"), &[ROOT]);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(eventually(Duration::from_secs(10), || listed(&b).contains("alpha")), "published to the other gateway within a watch round trip");
    assert_eq!(upsert(&b, "alpha", "ann").status, 200);
    assert!(a.worker_pid("alpha").is_some(), "the creating gateway runs the worker");
    assert!(b.worker_pid("alpha").is_none(), "the other gateway proxies to it instead of starting a second");
    assert_eq!(etcd.keys("/og-test/workers/").len(), 1);
    // A's worker crashes and A restarts it, under the same registration and
    // key: B reaches the new worker with no change in etcd. (A request caught
    // on a connection the crash cut may get 503: it may have been applied,
    // so it is never sent twice; one refused before it was sent is retried,
    // as the kill -9 test shows.)
    let pid = a.worker_pid("alpha").expect("worker");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(20), || a.worker_pid("alpha").is_some_and(|p| p != pid)));
    let r = read_eventually(&b, "alpha", "ann", Duration::from_secs(5));
    assert_eq!((r.status, rows(&r)), (200, 1), "{:?}", r.body);

    // Used only through B for longer than idle_stop_s: B reports the use,
    // so A keeps the worker running.
    let pid = a.worker_pid("alpha").expect("worker");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(read_key(&b, "alpha", "ann", ROOT).status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(a.worker_pid("alpha"), Some(pid), "a worker used through another gateway is not idle");

    // Idle for idle_stop_s: the worker stops and its registration goes;
    // the next request, through B, starts it under B.
    assert!(eventually(Duration::from_secs(20), || a.worker_pid("alpha").is_none() && etcd.keys("/og-test/workers/").is_empty()), "the idle worker stops and is unregistered");
    let r = read_key(&b, "alpha", "ann", ROOT);
    assert_eq!((r.status, rows(&r)), (200, 1), "{:?}", r.body);
    assert!(b.worker_pid("alpha").is_some() && a.worker_pid("alpha").is_none(), "the worker now runs under B only");
    let r = read_key(&a, "alpha", "ann", ROOT);
    assert_eq!((r.status, rows(&r)), (200, 1), "A proxies to B's worker: {:?}", r.body);
    assert!(a.worker_pid("alpha").is_none());
}

#[test]
fn policies_and_deletes_in_the_catalog_are_the_same_on_every_gateway() {
    let etcd = EtcdServer::start();
    let p = pair(&etcd, "");
    let a = p.env.start();
    let b = Gateway::start(&p.b_cfg);
    // The graph's own policy, given as source to A, is stored in etcd: B decides from it too.
    let policy = "@id(\"team-read\")\npermit (principal in Omnigraph::Group::\"team\", action == Omnigraph::Action::\"read\", resource);\n";
    let mut body = create_body("beta");
    body["policy"] = json!({"source": policy});
    let r = post_with(&a.url("/graphs"), &body, &[ROOT]);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(!p.env.path().join("policies/beta.cedar").exists(), "a shared catalog writes no policy file");
    assert!(eventually(Duration::from_secs(10), || listed(&b).contains("beta")));
    assert_eq!(upsert(&a, "beta", "ann").status, 200);
    for gw in [&a, &b] {
        assert_eq!(read_key(gw, "beta", "ann", TEAM).status, 200, "team may read beta on every gateway");
        let w = post_with(&gw.url("/graphs/beta/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "x"}}]}), &[TEAM]);
        assert_eq!(w.status, 403, "and may not change it, on every gateway: {:?}", w.body);
    }
    // The same id through the other gateway: 409, and so is an overlapping URI.
    assert_eq!(post_with(&b.url("/graphs"), &create_body("beta"), &[ROOT]).status, 409);
    let inside = json!({"graph_id": "gamma", "uri": "data/beta/inner", "schema": {"source": SOCIAL_SCHEMA}});
    assert_eq!(post_with(&b.url("/graphs"), &inside, &[ROOT]).status, 409, "storage inside another gateway's graph");

    // A delete with purge through B, while A runs the worker: A stops serving
    // it and stops its worker, and only then is the folder removed.
    let data = p.env.path().join("data/beta");
    assert!(data.exists());
    let r = call("DELETE", &b.url("/graphs/beta?purge=true"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["purged"], true);
    assert!(!data.exists(), "purged");
    assert!(eventually(Duration::from_secs(10), || !listed(&a).contains("beta") && a.worker_pid("beta").is_none()));
    assert_eq!(read_key(&a, "beta", "ann", ROOT).status, 404);
    assert!(etcd.keys("/og-test/").iter().all(|k| !k.ends_with("/beta")), "nothing about beta is left in etcd: {:?}", etcd.keys("/og-test/"));
    // And the id is free again, on either gateway.
    assert_eq!(post_with(&a.url("/graphs"), &create_body("beta"), &[ROOT]).status, 201);
    // `graphs orphans` compares the journal with the graphs in etcd, not the file's empty `graphs:`.
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["graphs", "orphans", "--config"]).arg(&p.env.cfg).output().expect("run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no orphans"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir_all(p.env.path().join("run/pending")).unwrap();
    write_file(p.env.path(), "run/pending/half.json", r#"{"graph_id":"half","uri":"/nowhere/half","started_at_unix":1}"#);
    write_file(p.env.path(), "run/pending/beta.json", r#"{"graph_id":"beta","uri":"/x/beta","started_at_unix":1}"#);
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["graphs", "orphans", "--config"]).arg(&p.env.cfg).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("half") && !text.contains("beta"), "only the create etcd does not have: {text}");
}

#[test]
fn a_shared_catalog_refuses_graphs_in_the_file_and_waits_for_etcd() {
    let etcd = EtcdServer::start();
    // graphs: in the file and a catalog: refused at start, naming the conflict.
    let env = ConfigDir::with("", &etcd.catalog_yaml("/og-test/", 10), &[ROOT_TOKEN], &graphs_yaml(&["alpha"]));
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["serve", "--config"]).arg(&env.cfg).output().expect("run gateway");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("remove graphs:"), "{}", String::from_utf8_lossy(&out.stderr));
    // etcd unreachable: the gateway starts but is not ready, and creates get 503.
    let dead = format!("catalog:\n  etcd:\n    endpoints: [\"http://127.0.0.1:{}\"]\n", free_port());
    let env = ConfigDir::with("", &dead, &[ROOT_TOKEN], "  {}\n");
    let mut cmd = std::process::Command::new(bin("omnigraph-gateway"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--config"]).arg(&env.cfg);
    let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(60));
    let base = line.rsplit(' ').next().expect("address").trim().to_string();
    let r = get(&format!("{base}/readyz"));
    assert_eq!((r.status, r.body["status"].as_str()), (503, Some("starting")));
    let r = post_with(&format!("{base}/graphs"), &create_body("alpha"), &[ROOT]);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["code"], "worker_unavailable");
    drop(proc);
}

#[test]
fn a_gateway_cut_off_from_etcd_stops_its_workers_and_claims_them_again_after() {
    let etcd = EtcdServer::start();
    let p = pair(&etcd, "");
    let a = p.env.start();
    assert_eq!(post_with(&a.url("/graphs"), &create_body("alpha"), &[ROOT]).status, 201);
    assert_eq!(upsert(&a, "alpha", "ann").status, 200);
    assert!(a.worker_pid("alpha").is_some());
    // etcd stops answering (a silent partition): past three quarters of the
    // lease the gateway can no longer be sure it is alpha's only writer, so
    // it stops the worker before etcd could give the graph to anyone else.
    etcd.proc.signal(libc::SIGSTOP);
    let stopped = eventually(Duration::from_secs(LEASE_TTL_S * 4 + 10), || a.worker_pid("alpha").is_none());
    etcd.proc.signal(libc::SIGCONT);
    assert!(stopped, "the worker of a gateway that lost its lease is stopped");
    // etcd is back: a new lease, and the next request claims and starts the worker again.
    let r = read_eventually(&a, "alpha", "ann", Duration::from_secs(LEASE_TTL_S * 5 + 20));
    assert_eq!((r.status, rows(&r)), (200, 1), "{:?}", r.body);
    assert!(a.worker_pid("alpha").is_some());
    assert_eq!(etcd.keys("/og-test/workers/").len(), 1);
}

#[test]
fn workers_on_tcp_serve_gateways_that_share_no_socket_folder() {
    let etcd = EtcdServer::start();
    // catalog.etcd.worker_host: workers listen on TCP, as for gateways on several hosts.
    let catalog = format!("{}    worker_host: 127.0.0.1\n", etcd.catalog_yaml("/og-test/", LEASE_TTL_S));
    let env = ConfigDir::with("", &catalog, &[ROOT_TOKEN], "  {}\n");
    let b_cfg = write_file(env.path(), "omnigraph-b.yaml", &env.yaml().replace("runtime_dir: run\n", "runtime_dir: run-b\n"));
    let a = env.start();
    let b = Gateway::start(&b_cfg);
    assert_eq!(post_with(&a.url("/graphs"), &create_body("alpha"), &[ROOT]).status, 201);
    let reg: Value = serde_json::from_str(&etcd.value("/og-test/workers/alpha").expect("registered")).expect("json");
    let address = reg["address"].as_str().expect("address").to_string();
    assert!(address.starts_with("http://127.0.0.1:"), "a TCP address is registered: {address}");
    // Through the other gateway: proxied over TCP to A's worker, with its key.
    assert!(eventually(Duration::from_secs(10), || listed(&b).contains("alpha")));
    assert_eq!(upsert(&b, "alpha", "ann").status, 200);
    assert_eq!(rows(&read_key(&a, "alpha", "ann", ROOT)), 1);
    assert!(b.worker_pid("alpha").is_none());
    // The port is guarded by the worker key: a caller without it gets 401.
    let direct = post(&format!("{address}/read"), &json!({"match": {"type": "Person", "key": "ann"}}));
    assert_eq!(direct.status, 401, "{:?}", direct.body);
    // A worker restarted after a crash registers its new port (and key); B follows it.
    let pid = a.worker_pid("alpha").expect("worker");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(20), || etcd.value("/og-test/workers/alpha").is_some_and(|v| !v.contains(&address) && v.contains("http://127.0.0.1:"))));
    // B follows the move: its next request reaches the worker at the new port
    // (one refused at the old port would wait for the new registration and be sent again).
    let r = read_eventually(&b, "alpha", "ann", Duration::from_secs(5));
    assert_eq!((r.status, rows(&r)), (200, 1), "{:?}", r.body);
}
