//! The long soak (release build): 64 clients of mixed key lookups and
//! three-op changes through the gateway for 10 minutes (`SOAK_SECS`) while
//! the graph's worker is SIGKILLed every 30 s (`SOAK_KILL_EVERY_S`; 0: never,
//! which shows one worker's memory over the whole run). Prints
//! the table for `docs/reliability.md` and exits non-zero when a promise
//! broke (see `omnigraph_e2e::soak`). The 60-second version runs in CI as
//! `tests/e2e/tests/soak_e2e.rs`.

use std::time::Duration;

use omnigraph_e2e::soak::{self, KillPlan, SoakOpts};
use omnigraph_e2e::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    // History is bounded too (`SOAK_RETAIN_DAYS`, default 0: maintenance
    // keeps each branch's newest 100 commits), as the graph is by
    // `SOAK_KEY_SLOTS`: with the default of 7 days every version of the run
    // is kept, and each maintenance run reads more of them than the last.
    let retain_days = env_u64("SOAK_RETAIN_DAYS", 0);
    let env = ConfigDir::admin("", &format!("limits:\n  retain_days: {retain_days}\n"), &["alpha"]);
    let gw = Gateway::start_in("release", &env.cfg, &[]);
    let opts = SoakOpts {
        concurrency: env_u64("SOAK_CONCURRENCY", 64) as usize,
        duration: Duration::from_secs(env_u64("SOAK_SECS", 600)),
        kills: match env_u64("SOAK_KILL_EVERY_S", 30) {
            0 => KillPlan::Never,
            s => KillPlan::Every(Duration::from_secs(s)),
        },
        write_percent: env_u64("SOAK_WRITE_PERCENT", 20),
        // Bounded by default, so RSS growth is growth with time, not data (0: a new id every write).
        key_slots: Some(env_u64("SOAK_KEY_SLOTS", 32)).filter(|k| *k > 0),
    };
    println!("## soak: c={}, {:?}, worker SIGKILL {:?}, {}% changes, batch ids per client {:?}, retain_days {retain_days} (release)\n", opts.concurrency, opts.duration, opts.kills, opts.write_percent, opts.key_slots);
    let report = soak::run(&gw, "tok-root", "alpha", &opts);
    println!("{}", report.table());
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!("FAILED: {failures:#?}");
        std::process::exit(1);
    }
}
