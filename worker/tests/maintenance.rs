//! Maintenance (issue 8, `POST /maintenance`): compaction and the removal of
//! table versions and lineages no retained commit pins.
//!
//! - After many one-op commits, a run compacts and removes old versions; every
//!   retained commit exports byte for byte as before, heads keep their
//!   content, the graph's folder shrinks, and commits past the retention
//!   answer 404 with `details.reason == "expired"` (their record stays).
//! - Deleted branches' Lance branches (`tree/og-…`) leave the disk, forks of
//!   forks first, and a live fork of a deleted branch's lineage still reads.
//! - A run racing changes and reads loses no acknowledged commit and fails
//!   no read; a second run finds nothing to do; the background task runs by
//!   itself after N commits, and not at all when switched off.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use omnigraph_worker::limits::Limits;
use omnigraph_worker::maintenance::{self, MAINTENANCE_ACTOR};
use omnigraph_worker::store::{Author, Retention, Store};
use serde_json::{json, Value};

async fn fresh() -> (tempfile::TempDir, String, Arc<Store>) {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Arc::new(Store::init("g", &uri, SCHEMA, "test").await.unwrap());
    (tmp, uri, store)
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                total += e.metadata().unwrap().len();
            }
        }
    }
    total
}

/// Manifests (versions) of `table`'s Lance main chain.
fn versions(uri: &str, table: &str) -> usize {
    std::fs::read_dir(Path::new(uri).join(format!("{table}.lance/_versions"))).unwrap().count()
}

/// The Lance branches of `table` on disk (`tree/og-…`).
fn lineage_dirs(uri: &str, table: &str) -> BTreeSet<String> {
    match std::fs::read_dir(Path::new(uri).join(format!("{table}.lance/tree"))) {
        Ok(it) => it.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The lineages `branch`'s commits pin for `table`.
fn lineages_of(store: &Store, branch: &str, table: &str) -> BTreeSet<String> {
    store.commits(branch).unwrap().iter().filter_map(|c| c.tables.get(table).and_then(|p| p.lineage.as_deref().map(str::to_string))).collect()
}

async fn export(addr: std::net::SocketAddr, branch: &str, commit: &str) -> (u16, Vec<u8>) {
    call_raw(addr, "POST", &format!("/export?branch={branch}&commit={commit}"), b"").await
}

fn upsert(key: &str, age: i64) -> Value {
    json!([{"upsert": {"type": "Person", "key": key, "props": {"age": age}}}])
}

fn history(store: &Store, branch: &str) -> Vec<String> {
    store.commits(branch).unwrap().into_iter().map(|c| c.commit_id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_compacts_and_removes_what_no_retained_commit_pins() {
    let (tmp, uri, store) = fresh().await;
    let addr = serve_with(store.clone(), Limits { retain_commits: 10, retain_days: 0, ..Limits::default() }).await;
    let me = Author::new("test");
    for i in 0..40 {
        apply(&store, "main", upsert(&format!("p{}", i % 15), i)).await;
    }
    let fork_point = store.head("main").unwrap().commit.commit_id.to_string();
    store.create_branch("dev", "main", &me).await.unwrap();
    for i in 0..5 {
        apply(&store, "dev", upsert(&format!("d{i}"), i)).await;
    }
    // `gone` writes its own lineage of Person, then is deleted.
    store.create_branch("gone", "main", &me).await.unwrap();
    for i in 0..3 {
        apply(&store, "gone", upsert(&format!("g{i}"), i)).await;
    }
    let gone = lineages_of(&store, "gone", "Person");
    assert_eq!(gone.len(), 1, "{gone:?}");
    store.delete_branch("gone", &me).await.unwrap();
    for i in 40..80 {
        let ops = if i % 5 == 0 {
            json!([{"link": {"edge": "Knows", "from": format!("p{}", i % 15), "to": format!("p{}", (i + 1) % 15), "props": {"since": i}}}])
        } else {
            upsert(&format!("p{}", i % 15), i)
        };
        apply(&store, "main", ops).await;
    }

    // Every commit of both branches, exported before the run.
    let mut before: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let histories: BTreeMap<&str, Vec<String>> = ["main", "dev"].into_iter().map(|b| (b, history(&store, b))).collect();
    for (b, commits) in &histories {
        for c in commits {
            let (status, body) = export(addr, b, c).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            before.insert((b.to_string(), c.clone()), body);
        }
    }
    let heads: BTreeMap<&str, String> = histories.iter().map(|(b, h)| (*b, h[0].clone())).collect();
    let (bytes_before, versions_before) = (disk_bytes(tmp.path()), versions(&uri, "Person"));
    assert!(gone.is_subset(&lineage_dirs(&uri, "Person")), "the deleted branch's lineage is still on disk");

    let (status, report) = call(addr, "POST", "/maintenance", "").await;
    assert_eq!(status, 200, "{report}");
    for k in ["compacted_fragments", "removed_versions", "bytes_freed"] {
        assert!(report[k].as_u64().unwrap() > 0, "{k}: {report}");
    }
    assert_eq!(report.as_object().unwrap().len(), 3, "{report}");

    // Heads: one compaction commit each, on top of the old head, with the same content.
    for (b, old) in &heads {
        let head = store.head(b).unwrap();
        assert_eq!(head.commit.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(), vec![old.clone()], "{b}");
        assert_eq!(&*head.commit.actor_id, "local", "{b}: the caller's commit");
        assert_eq!(export(addr, b, &head.commit.commit_id).await, (200, before[&(b.to_string(), old.clone())].clone()), "{b}");
    }
    // Every commit reads as before, or is gone with a clear answer; the
    // retention window and the fork point always read.
    let mut expired = 0;
    for (b, commits) in &histories {
        for (i, c) in commits.iter().enumerate() {
            let (status, body) = export(addr, b, c).await;
            if status == 200 {
                assert_eq!(body, before[&(b.to_string(), c.clone())], "{b} {c} reads as before");
                continue;
            }
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!((status, v["code"].as_str(), &v["details"]), (404, Some("not_found"), &json!({"reason": "expired", "commit_id": c})), "{v}");
            assert!(i >= 9 && *c != fork_point, "{b}: commit {i} is retained: {v}");
            expired += 1;
            let (status, v) = call(addr, "POST", &format!("/read?branch={b}&commit={c}"), r#"{"match": {"type": "Person"}}"#).await;
            assert_eq!((status, &v["details"]["reason"]), (404, &json!("expired")), "{v}");
            let (status, v) = call(addr, "GET", &format!("/commits/{c}?branch={b}"), "").await;
            assert_eq!((status, v["commit_id"].as_str()), (200, Some(c.as_str())), "the record stays");
        }
    }
    assert!(expired > 40, "only {expired} commits expired");
    assert_eq!(export(addr, "main", &fork_point).await.0, 200, "the merge base of main and dev stays");

    let (bytes_after, versions_after) = (disk_bytes(tmp.path()), versions(&uri, "Person"));
    println!("disk {bytes_before} -> {bytes_after} bytes; Person versions {versions_before} -> {versions_after}");
    assert!(bytes_after < bytes_before, "{bytes_before} -> {bytes_after}");
    assert!(versions_after <= 15, "Person's main chain keeps {versions_after} versions");
    let left = lineage_dirs(&uri, "Person");
    assert!(left.is_disjoint(&gone), "the deleted branch's lineage is gone: {left:?}");
    assert_eq!(left, lineages_of(&store, "dev", "Person"), "dev's lineage stays");

    // A second run finds nothing to do and moves no head.
    let (status, again) = call(addr, "POST", "/maintenance", "").await;
    assert_eq!((status, again), (200, json!({"compacted_fragments": 0, "removed_versions": 0, "bytes_freed": 0})));
    let new_heads: Vec<String> = ["main", "dev"].iter().map(|b| store.head(b).unwrap().commit.commit_id.to_string()).collect();

    // After a restart: the same heads, and the retained commits read as before.
    let reopened = Arc::new(Store::open("g", &uri).await.unwrap());
    let addr = serve(reopened.clone()).await;
    for (b, h) in ["main", "dev"].iter().zip(&new_heads) {
        assert_eq!(&reopened.head(b).unwrap().commit.commit_id.to_string(), h);
        for c in histories[b].iter().take(9) {
            assert_eq!(export(addr, b, c).await, (200, before[&(b.to_string(), c.clone())].clone()), "{b} {c} after a restart");
        }
    }
    // And it keeps writing on the compacted tables.
    apply(&reopened, "main", upsert("p1", 1000)).await;
    assert_eq!(people(&reopened, "main")["p1"]["age"], 1000);
}

/// A branch made from a branch that is then deleted: its lineage forks the
/// deleted one's, which therefore stays (Lance refuses, and its files are
/// needed) until the fork goes too; then both leave the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_of_deleted_lineages_read_until_they_go_too() {
    let (_tmp, uri, store) = fresh().await;
    let me = Author::new("test");
    let heads_only = Retention { commits: 1, days: 0 };
    apply(&store, "main", upsert("m", 0)).await;
    store.create_branch("a", "main", &me).await.unwrap();
    for i in 0..4 {
        apply(&store, "a", upsert(&format!("a{i}"), i)).await;
    }
    store.create_branch("b", "a", &me).await.unwrap();
    for i in 0..4 {
        apply(&store, "b", upsert(&format!("b{i}"), i)).await;
    }
    let (la, lb) = (lineages_of(&store, "a", "Person"), lineages_of(&store, "b", "Person"));
    store.delete_branch("a", &me).await.unwrap();
    let b_rows = people(&store, "b");
    assert_eq!(b_rows.len(), 9);

    store.maintain(heads_only, &me).await.unwrap();
    let dirs = lineage_dirs(&uri, "Person");
    assert!(lb.is_subset(&dirs) && la.is_subset(&dirs), "a's lineage stays while b's forks it: {dirs:?}");
    // b reads the same, from Lance, after a restart.
    let reopened = Store::open("g", &uri).await.unwrap();
    assert_eq!(people(&reopened, "b"), b_rows);
    drop(reopened);
    let addr = serve(store.clone()).await;
    let (status, body) = call(addr, "POST", "/read?branch=b", r#"{"match": {"type": "Person", "where": [{"prop": "age", "op": ">=", "value": 0}]}}"#).await;
    assert_eq!((status, body["row_count"].as_u64()), (200, Some(9)), "a Lance scan of b's lineage: {body}");

    store.delete_branch("b", &me).await.unwrap();
    let report = store.maintain(heads_only, &me).await.unwrap();
    assert!(report.removed_versions > 0 && report.bytes_freed > 0, "{report:?}");
    assert_eq!(lineage_dirs(&uri, "Person"), BTreeSet::new(), "both forks are gone");
    assert_eq!(people(&Store::open("g", &uri).await.unwrap(), "main").len(), 1);
}

/// Changes from three writers, reads of the head and of an old commit (Lance
/// scans), and maintenance runs, all at once, keeping the newest `retain`
/// commits: every acknowledged change is in the history and reads back (or,
/// past the retention, answers `expired`), no read fails, and the final
/// state is the sum of the changes, also after a restart (which loads every
/// head from what is left on disk).
async fn race(retain: u64) {
    let (_tmp, uri, store) = fresh().await;
    let retention = Retention { commits: retain, days: 0 };
    let addr = serve_with(store.clone(), Limits { retain_commits: retain, retain_days: 0, ..Limits::default() }).await;
    let first = apply(&store, "main", upsert("w0", -1)).await;
    store.create_branch("pinned", "main", &Author::new("test")).await.unwrap();
    let writers = (0..3).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let ops = json!([
                    {"upsert": {"type": "Person", "key": format!("w{t}"), "props": {"age": i}}},
                    {"upsert": {"type": "Person", "key": format!("w{t}-{i}"), "props": {"age": i}}}
                ]);
                acked.push((t, i, apply(&store, "main", ops).await));
            }
            acked
        })
    });
    let runs = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut compacted = 0;
            for _ in 0..6 {
                compacted += store.maintain(retention, &Author::new("m")).await.unwrap().compacted_fragments;
            }
            compacted
        })
    };
    // `first` stays readable: the head of branch `pinned`.
    let readers = tokio::spawn(async move {
        let q = r#"{"match": {"type": "Person", "where": [{"prop": "age", "op": ">=", "value": -1}]}}"#;
        for _ in 0..30 {
            for path in ["/read".to_string(), format!("/read?commit={first}")] {
                let (status, body) = call(addr, "POST", &path, q).await;
                assert_eq!(status, 200, "{path}: {body}");
            }
        }
    });
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let compacted = runs.await.unwrap();
    readers.await.unwrap();
    assert!(compacted > 0, "the runs compacted while the writers wrote");

    let history: BTreeSet<String> = history(&store, "main").into_iter().collect();
    let mut read_back = 0;
    for (t, i, commit) in &acked {
        assert!(history.contains(commit), "acknowledged commit {commit} is in the history");
        let snap = match store.snapshot_at("main", commit).await {
            Ok(s) => s,
            Err(e) => {
                assert!(matches!(e, omnigraph_worker::store::StoreError::Expired { .. }), "{commit}: {e}");
                continue;
            }
        };
        read_back += 1;
        let rows = &snap.data.nodes["Person"].rows;
        assert_eq!(rows.get(format!("w{t}").as_str()).map(|p| p.get("age").cloned().unwrap_or_default()), Some(json!(i)), "{commit}");
        assert!(rows.contains_key(format!("w{t}-{i}").as_str()), "{commit}");
    }
    assert!(read_back >= acked.len().min(retain as usize - 1), "{read_back} of {} acknowledged commits read back", acked.len());
    let expect = |s: &Store| {
        let rows = people(s, "main");
        assert_eq!(rows.len(), 3 + 75);
        for t in 0..3 {
            assert_eq!(rows[&format!("w{t}")]["age"], 24);
        }
        assert_eq!(people(s, "pinned").len(), 1);
    };
    expect(&store);
    let reopened = Store::open("g", &uri).await.unwrap();
    expect(&reopened);
    assert_eq!(reopened.commits("main").unwrap().len(), store.commits("main").unwrap().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_racing_changes_and_reads_loses_nothing() {
    race(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_removing_versions_while_changes_land_keeps_every_head_readable() {
    race(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_runs_after_n_commits_and_can_be_switched_off() {
    let off = Limits { maintenance_interval_s: 0, maintenance_after_commits: 0, ..Limits::default() };
    let (_tmp, _uri, store) = fresh().await;
    assert!(maintenance::spawn(store.clone(), off).is_none());

    let (_tmp, _uri, store) = fresh().await;
    let task = maintenance::spawn(store.clone(), Limits { maintenance_interval_s: 0, maintenance_after_commits: 8, ..off }).expect("a task");
    for i in 0..10 {
        apply(&store, "main", upsert(&format!("p{i}"), i)).await;
    }
    let ran = a_background_run(&store).await;
    assert!(ran, "no background run after 10 commits");
    task.abort();
    assert_eq!(people(&store, "main").len(), 10);
}

/// A worker restarted more often than every `maintenance_after_commits`
/// commits must still maintain its graph: commits made before the task
/// started (by an earlier process) count towards its first run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_made_before_a_restart_count_towards_the_next_run() {
    let (_tmp, _uri, store) = fresh().await;
    for i in 0..10 {
        apply(&store, "main", upsert(&format!("p{i}"), i)).await;
    }
    assert!(!made_by_maintenance(&store));
    let limits = Limits { maintenance_interval_s: 0, maintenance_after_commits: 8, ..Limits::default() };
    let task = maintenance::spawn(store.clone(), limits).expect("a task");
    let ran = a_background_run(&store).await;
    assert!(ran, "10 commits made before the task started did not trigger a run");
    task.abort();
    assert_eq!(people(&store, "main").len(), 10);
}

/// Whether `main` has a commit by the background maintenance actor.
fn made_by_maintenance(store: &Store) -> bool {
    store.commits("main").unwrap().into_iter().any(|c| &*c.actor_id == MAINTENANCE_ACTOR)
}

/// Waits (up to 120 s) for a background run to leave its commit on `main`.
async fn a_background_run(store: &Store) -> bool {
    tokio::time::timeout(Duration::from_secs(120), async {
        while !made_by_maintenance(store) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}
