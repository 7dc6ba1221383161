//! Load harness for maintenance (issue 8): 10,000 one-op commits pile up
//! versions and small fragments in a fresh `omnigraph-worker` (background
//! maintenance off), then one `POST /maintenance` compacts and removes what
//! no retained commit pins. It prints what a one-op change costs around
//! commit 100, at the end before the run, and after it, and the graph
//! folder's size at each point. Target: after the run a change costs at
//! most 1.5 times what it did at commit 100, and the folder is bounded (by
//! the retained commits, not by the commits ever made).
//!
//! ```sh
//! cargo bench -p omnigraph-benches --bench maintenance          # release worker, 10,000 commits
//! OMNIGRAPH_BENCH_COMMITS=1000 OMNIGRAPH_BENCH_PROFILE=debug OMNIGRAPH_BENCH_SETTLE_S=0 \
//!     cargo test -p omnigraph-benches --bench maintenance       # a quick look, all in debug
//! ```
//!
//! Without maintenance the folder grows faster than the commits (each
//! manifest lists every fragment): about 450 MiB at 3,000 commits and
//! several GiB at 10,000, so leave room in the temp folder.
//! `OMNIGRAPH_BENCH_SETTLE_S` (default 300; 0 to skip) times the changes a
//! second time that long after the run: ext4 does not reuse the inodes of
//! files deleted in the last 60 to 300 s, so creating files costs more right
//! after a run that deleted thousands of them.
//!
//! `OMNIGRAPH_BENCH_RETAIN_COMMITS` (default 100) is the worker's
//! `--retain-commits`; `--retain-days` is 0, since every commit here is
//! minutes old (the default, 7 days, would keep them all). The changes
//! upsert `Person` keys `p0`..`p49` in turn, so from commit 50 on each one
//! replaces a row (a delete and an append), at commit 100 as at 10,000;
//! every tenth links two of them instead (from commit 500 on, replacing an
//! edge). The worker comes from `target/<OMNIGRAPH_BENCH_PROFILE>`
//! (default `release`), or `OMNIGRAPH_BIN_DIR`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::json;

/// Person keys the changes cycle through: from commit 50 on, every change
/// replaces a row, so commit 100 and commit 10,000 do the same work.
const KEYS: u64 = 50;
/// Changes timed for each figure (their median).
const SAMPLE: usize = 51;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Files under `dir` (manifests, data, deletion and transaction files).
fn files(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| rest.split_whitespace().nth(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = field(11) + field(12);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

struct Bench {
    base: String,
    pid: i32,
    next: u64,
}

impl Bench {
    /// One one-op change; returns how long it took.
    fn change(&mut self) -> Duration {
        let i = self.next;
        self.next += 1;
        let op = if i % 10 == 9 {
            // Two keys the two changes before upserted.
            json!({"link": {"edge": "Knows", "from": format!("p{}", (i - 9) % KEYS), "to": format!("p{}", (i - 8) % KEYS), "props": {"since": i as i64}}})
        } else {
            json!({"upsert": {"type": "Person", "key": format!("p{}", i % KEYS), "props": {"age": i as i64}}})
        };
        let body = json!({ "ops": [op] }).to_string();
        let t = Instant::now();
        let r = call("POST", &format!("{}/change", self.base), Some(body.as_bytes()), &[]);
        let took = t.elapsed();
        assert_eq!(r.status, 200, "change {i}: {:?}", r.body);
        took
    }

    /// The median wall-clock time of `n` changes, and the worker's CPU time
    /// per change over them (the fairer figure on a shared machine).
    fn median(&mut self, n: usize) -> (Duration, Duration) {
        let before = cpu(self.pid);
        let mut samples: Vec<Duration> = (0..n).map(|_| self.change()).collect();
        let used = cpu(self.pid).saturating_sub(before);
        (percentile(&mut samples, 50.0), used / n as u32)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() {
    let commits: u64 = env_or("OMNIGRAPH_BENCH_COMMITS", 10_000);
    let retain: u64 = env_or("OMNIGRAPH_BENCH_RETAIN_COMMITS", 100);
    let profile: String = env_or("OMNIGRAPH_BENCH_PROFILE", "release".to_string());
    assert!(commits >= 200, "OMNIGRAPH_BENCH_COMMITS must be at least 200");
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = write_file(tmp.path(), "s.pg", "node Person { name: String @key age: I64? }\nedge Knows: Person -> Person { since: I64? }\n");
    let graph = tmp.path().join("graph");
    let mut cmd = Command::new(bin_in(&profile, "omnigraph-worker"));
    cmd.args(["serve", "--graph-id", "bench", "--uri"]).arg(&graph).args(["--listen", "127.0.0.1:0", "--init", "--schema"]).arg(&schema);
    cmd.args(["--retain-commits", &retain.to_string(), "--retain-days", "0", "--maintenance-interval-s", "0", "--maintenance-after-commits", "0"]);
    cmd.env_remove("OMNIGRAPH_WORKER_KEY");
    let (worker, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(120));
    let mut b = Bench { base: line.rsplit(' ').next().expect("address").trim().to_string(), pid: worker.pid(), next: 0 };

    // Around commit 100: the median of the changes from 75 to 125.
    let t = Instant::now();
    for _ in 0..(100 - SAMPLE as u64 / 2) {
        b.change();
    }
    let at_100 = b.median(SAMPLE);
    let disk_100 = (disk_bytes(&graph), files(&graph));

    // Up to `commits`, the last few timed: what a change costs when nothing was ever cleaned.
    while b.next < commits - SAMPLE as u64 {
        b.change();
    }
    let piled = b.median(SAMPLE);
    let load = t.elapsed();
    let disk_piled = (disk_bytes(&graph), files(&graph));

    let t = Instant::now();
    // A run after 10,000 unmaintained commits reads every manifest: it may
    // take longer than the shared client's timeout.
    let addr = b.base.trim_start_matches("http://");
    let (status, answer) = raw_request_within(addr, &format!("POST /maintenance HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"), Duration::from_secs(3600));
    let run = t.elapsed();
    let run_ended = Instant::now();
    assert_eq!(status, 200, "{answer}");
    let disk_after = (disk_bytes(&graph), files(&graph));
    let after = b.median(SAMPLE);
    // ext4 does not hand out the inodes of files deleted in the last 60 to 300
    // seconds, so right after a run that deleted thousands of files, creating
    // one costs more; the same changes once that has passed:
    let settle: u64 = env_or("OMNIGRAPH_BENCH_SETTLE_S", 300);
    let settled = (settle > 0).then(|| {
        std::thread::sleep(Duration::from_secs(settle).saturating_sub(run_ended.elapsed()));
        b.median(SAMPLE)
    });
    let last = settled.unwrap_or(after);
    let ratio = ms(last.0) / ms(at_100.0);
    let cpu_ratio = ms(last.1) / ms(at_100.1);

    println!("## Maintenance ({commits} one-op commits, retain_commits {retain}, retain_days 0; {profile} worker)\n");
    println!("loading took {:.1} s; the run answered {} in {:.0} ms\n", load.as_secs_f64(), answer.trim(), ms(run));
    println!("| point | one-op change: median of {SAMPLE} | worker CPU per change | graph folder | files |");
    println!("|---|---|---|---|---|");
    let row = |point: &str, (wall, cpu): (Duration, Duration), (bytes, n): (u64, u64)| {
        println!("| {point} | {:.2} ms ({:.2}x) | {:.2} ms ({:.2}x) | {:.2} MiB | {n} |", ms(wall), ms(wall) / ms(at_100.0), ms(cpu), ms(cpu) / ms(at_100.1), mib(bytes));
    };
    row("around commit 100", at_100, disk_100);
    row(&format!("at commit {commits}, never maintained"), piled, disk_piled);
    row("right after one maintenance run", after, disk_after);
    if let Some(s) = settled {
        row(&format!("{settle} s after the run"), s, (disk_bytes(&graph), files(&graph)));
    }
    let verdict = |r: f64| if r <= 1.5 { "within" } else { "OVER" };
    println!("\nafter the run, a change costs {ratio:.2}x (wall) and {cpu_ratio:.2}x (CPU) what it did at commit 100: {} / {} the 1.5x target", verdict(ratio), verdict(cpu_ratio));
}
