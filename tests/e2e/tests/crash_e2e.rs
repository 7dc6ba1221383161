//! Crash consistency, end to end:
//! - a worker SIGKILLed 20 times at random moments (during start-up, during
//!   writes) while clients send three-op change batches: every batch that got
//!   200 is in the graph afterwards, no batch is partly visible whatever its
//!   answer was, and the commit log has no gap (`omnigraph_e2e::soak`);
//! - the gateway SIGKILLed while `POST /graphs` requests are in flight:
//!   `omnigraph.yaml` always parses, lists every graph whose create got 201
//!   and only graphs whose create got 201 or had no answer, and a restart on
//!   it serves every graph it lists.

use std::collections::BTreeSet;
use std::time::Duration;

use omnigraph_e2e::soak::{self, KillPlan, SoakOpts};
use omnigraph_e2e::*;
use serde_json::json;

#[test]
fn twenty_random_worker_kills_lose_no_acknowledged_change() {
    // Kills this close together are a crash loop to the supervisor, whose
    // restart delay would otherwise double to 30 s.
    let env = ConfigDir::admin("  restart_backoff_max_ms: 400\n", "", &["alpha"]);
    let gw = env.start();
    let opts = SoakOpts {
        concurrency: 8,
        duration: Duration::from_secs(300),
        kills: KillPlan::Random { count: 20, min: Duration::from_millis(50), max: Duration::from_millis(1500), seed: 7 },
        write_percent: 100,
        // A new batch id every time: each acknowledged batch must be whole.
        key_slots: None,
    };
    let report = soak::run(&gw, "tok-root", "alpha", &opts);
    println!("{}", report.table());
    assert_eq!(report.kills, 20, "the worker was killed {} times", report.kills);
    let failures = report.failures();
    assert!(failures.is_empty(), "crash consistency broke: {failures:#?}\n{}", report.table());
}

/// One create: `Some(status)` for an answer, `None` for a connection the
/// kill cut (its graph may or may not have been written).
fn create(base: &str, id: &str) -> Option<u16> {
    let body = json!({"graph_id": id, "uri": format!("data/{id}"), "schema": {"source": SOCIAL_SCHEMA}}).to_string();
    try_call("POST", &format!("{base}/graphs"), Some(body.as_bytes()), &[("authorization", "Bearer tok-root")]).ok().map(|r| r.status)
}

#[test]
fn a_gateway_killed_during_creates_leaves_a_whole_config() {
    let mut rng = Lcg(11);
    let (mut acked_total, mut cut_total) = (0, 0);
    for round in 0..8 {
        let env = ConfigDir::admin("", "", &["alpha"]);
        let gw = env.start();
        let ids: Vec<String> = (0..4).map(|i| format!("r{round}g{i}")).collect();
        let creates: Vec<_> = ids
            .iter()
            .map(|id| {
                let (base, id) = (gw.base.clone(), id.clone());
                std::thread::spawn(move || (id.clone(), create(&base, &id)))
            })
            .collect();
        // Somewhere between "nothing started yet" and "all done" (a debug
        // create takes a few hundred ms here).
        std::thread::sleep(Duration::from_millis(rng.below(1200)));
        gw.proc.signal(libc::SIGKILL);
        let answers: Vec<(String, Option<u16>)> = creates.into_iter().map(|t| t.join().expect("create thread")).collect();
        drop(gw);

        let acked: BTreeSet<&str> = answers.iter().filter(|(_, s)| *s == Some(201)).map(|(id, _)| id.as_str()).collect();
        let cut: BTreeSet<&str> = answers.iter().filter(|(_, s)| s.is_none()).map(|(id, _)| id.as_str()).collect();
        let bytes = std::fs::read(&env.cfg).expect("omnigraph.yaml is there");
        let cfg = omnigraph_gateway::config::parse(&env.cfg, &bytes).unwrap_or_else(|e| panic!("round {round}: the config does not parse after the kill: {e}\n{}", String::from_utf8_lossy(&bytes)));
        let listed: BTreeSet<&str> = cfg.graphs.keys().map(String::as_str).filter(|g| *g != "alpha").collect();
        assert!(cfg.graphs.contains_key("alpha"), "round {round}: the graph that was there is gone");
        assert!(acked.is_subset(&listed), "round {round}: a create answered 201 is not in the config: acked {acked:?}, listed {listed:?}");
        let allowed: BTreeSet<&str> = acked.union(&cut).copied().collect();
        assert!(listed.is_subset(&allowed), "round {round}: the config lists a graph whose create failed: listed {listed:?}, answers {answers:?}");
        acked_total += acked.len();
        cut_total += cut.len();

        // A restart serves every graph the config lists.
        let gw = env.start();
        for g in listed.iter().chain(std::iter::once(&"alpha")) {
            let snap = call("GET", &gw.url(&format!("/graphs/{g}/snapshot")), None, &[("authorization", "Bearer tok-root")]);
            assert_eq!(snap.status, 200, "round {round}: graph {g} after the restart: {}", snap.body);
        }
    }
    println!("creates answered 201: {acked_total}; cut by the kill: {cut_total}");
    assert!(acked_total > 0 && cut_total > 0, "the kills should land both before and after some creates finish");
}
