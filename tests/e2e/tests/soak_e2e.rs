//! The short soak that CI runs: 64 clients of mixed key lookups and
//! three-op changes through the gateway for 60 s while the graph's worker is
//! SIGKILLed every 14 s (4 kills). Every answer is a 200 or a 503 while the
//! worker restarts, no connection is closed without an answer, no
//! acknowledged change is lost, no change is partly visible, and the commit
//! log has no gap (see `omnigraph_e2e::soak`). Each client overwrites 16
//! batch ids, so "lost" here means an id holding less than its newest
//! acknowledged write (crash_e2e checks the ever-new-id form). The 10-minute release
//! version is `cargo bench --bench soak`.

use std::time::Duration;

use omnigraph_e2e::soak::{self, KillPlan, SoakOpts};
use omnigraph_e2e::*;

#[test]
fn a_minute_of_mixed_load_with_worker_kills_loses_nothing() {
    let env = ConfigDir::admin("", "", &["alpha"]);
    let gw = env.start();
    let secs = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let opts = SoakOpts { concurrency: 64, duration: Duration::from_secs(secs), kills: KillPlan::Every(Duration::from_secs(14)), write_percent: 20, key_slots: Some(16) };
    let report = soak::run(&gw, "tok-root", "alpha", &opts);
    println!("{}", report.table());
    assert!(report.kills >= (secs / 14) as u32, "the worker was killed {} times", report.kills);
    let failures = report.failures();
    assert!(failures.is_empty(), "the soak broke its promises: {failures:#?}\n{}", report.table());
}
