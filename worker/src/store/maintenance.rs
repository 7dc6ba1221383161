//! Maintenance: compaction of small fragments, and removal of the table
//! versions no retained commit pins and of the Lance branches nothing pins
//! any more (`POST /maintenance`, and the background runs scheduled by
//! `crate::maintenance`).
//!
//! Every Lance commit adds a manifest, and every one-op change adds a small
//! fragment (and a deletion file on an older one). Left alone, both pile up
//! and writes slow down. A run does three things, in order; the first two
//! under the writer lock, so they never race a change, a merge or a branch
//! operation (readers never wait for any of it):
//!
//! 1. **Compacts** each branch's own lineages (`lineage.rs`) at their tips,
//!    through the same commit protocol as a change: the rewrite is a new
//!    Lance version of each table it touches, and one graph commit on the
//!    branch (parent: the head; the same content; actor `maintenance` in the
//!    background) pins those versions, so the head reads the compacted
//!    tables and later commits build on them. A failure before that row
//!    restores the tables, and a crash before it is repaired on the next
//!    open, like any unfinished change. A branch with nothing to compact
//!    gets no commit, so an idle graph's heads never move. Then it compacts
//!    `_commits` and `_branches`.
//! 2. **Decides what stays readable** ([`retained`]): every branch head, each
//!    branch's newest `retain_commits` commits, every commit younger than
//!    `retain_days`, the merge base of every two branches (a three-way merge
//!    reads it), and any older commit a read holds at that moment. It opens
//!    every lineage of every table as it is at that moment.
//! 3. **Removes**, after releasing the writer lock, every other version of
//!    those lineages, with Lance's cleanup given the exact list of versions
//!    to drop and the lineage as it was opened in step 2: Lance never
//!    removes a version newer than the one a cleanup was opened at, so the
//!    writes made meanwhile are never touched. Lance also keeps each
//!    lineage's latest version, and every file a kept version or a Lance
//!    branch forked from the lineage still references. A Lance branch
//!    (`og-…`) that no kept commit pins (a deleted graph branch's, or a fork
//!    a failed change left) is deleted whole, forks of forks first; nothing
//!    can pin it again, since only heads are ever branched from or merged.
//!    Both logs keep only their latest version: they are only ever read
//!    whole, at the latest. This step is the slow one (Lance reads every
//!    manifest of a lineage it cleans), which is why writes do not wait for it.
//!
//! Runs are one at a time (a second waits for the first).
//!
//! A commit outside the window may then be unreadable: `?commit=` on it
//! answers [`StoreError::Expired`] (404) while `/commits` still lists it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use lance::dataset::cleanup::CleanupPolicyBuilder;
use lance::dataset::optimize::{compact_files, plan_compaction, CompactionOptions};
use lance::dataset::Dataset;
use serde::Serialize;

use super::branches::REFS_TABLE;
use super::commits::{CommitLog, CommitRecord, TablePin};
use super::lineage::lineage_of;
use super::location::COMMITS_TABLE;
use super::write::Txn;
use super::{Author, Snapshot, Store, StoreError, Writer};

/// The name every lineage this worker forks starts with (`lineage::fork`);
/// a Lance branch named otherwise is not ours and is left alone.
const FORK_PREFIX: &str = "og-";

/// What maintenance keeps readable: each branch's newest `commits` commits
/// (the head always) and every commit younger than `days` days (0: none by
/// age). A commit either rule keeps stays readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub commits: u64,
    pub days: u64,
}

/// What one run did: `POST /maintenance`'s answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceReport {
    /// Small fragments rewritten into larger ones (tables and logs).
    pub compacted_fragments: u64,
    /// Table and log versions removed, those of deleted Lance branches included.
    pub removed_versions: u64,
    /// Bytes of manifests, data, deletion and transaction files removed.
    pub bytes_freed: u64,
}

/// A table's lineages as one run found them under the writer lock: Lance's
/// main and our Lance branches (forks of forks first), each opened then.
struct TableNow {
    table: String,
    main: Dataset,
    forks: Vec<(Arc<str>, Dataset)>,
}

/// A table's lineage, as a map key: `(table, None)` is Lance's main chain.
type LineageKey = (String, Option<Arc<str>>);

/// Every version a run must not remove, per lineage.
#[derive(Debug, Default)]
struct Kept {
    versions: HashMap<LineageKey, HashSet<u64>>,
}

impl Kept {
    fn add(&mut self, table: &str, lineage: Option<Arc<str>>, version: u64) {
        self.versions.entry((table.to_string(), lineage)).or_default().insert(version);
    }

    fn commit(&mut self, c: &CommitRecord) {
        for (table, pin) in &c.tables {
            self.add(table, pin.lineage.clone(), pin.version);
        }
    }

    /// A snapshot's pins, and the versions its datasets are open at (after a
    /// rollback restored a table, a later version with the same content).
    fn snapshot(&mut self, s: &Snapshot) {
        self.commit(&s.commit);
        for (table, ds) in &s.datasets {
            self.add(table, lineage_of(ds), ds.version().version);
        }
    }

    fn of(&self, table: &str, lineage: Option<&Arc<str>>) -> Option<&HashSet<u64>> {
        self.versions.get(&(table.to_string(), lineage.cloned()))
    }
}

/// The commits whose table versions a run keeps: every head in `heads`, the
/// newest `retention.commits` commits of each head's history, every commit
/// of those histories younger than `retention.days` (a `created_at` that
/// does not parse counts as young), and the merge base of every two heads.
pub fn retained(log: &CommitLog, heads: &[&str], retention: Retention, now: DateTime<Utc>) -> HashSet<String> {
    let cutoff = match retention.days {
        0 => None,
        // Past chrono's range every commit is young.
        d => Some(i64::try_from(d).ok().and_then(TimeDelta::try_days).and_then(|d| now.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC)),
    };
    let young = |c: &CommitRecord| match cutoff {
        None => false,
        Some(t) => DateTime::parse_from_rfc3339(&c.created_at).map_or(true, |at| at.with_timezone(&Utc) >= t),
    };
    let distinct: BTreeSet<&str> = heads.iter().copied().collect();
    let newest = usize::try_from(retention.commits).unwrap_or(usize::MAX).max(1);
    let mut keep = HashSet::new();
    for head in &distinct {
        let mut history: Vec<&CommitRecord> = log.ancestors(head).into_iter().filter_map(|id| log.get(id)).collect();
        history.sort_by_key(|c| std::cmp::Reverse(c.seq));
        for (i, c) in history.into_iter().enumerate() {
            if i < newest || young(c) {
                keep.insert(c.commit_id.to_string());
            }
        }
    }
    let distinct: Vec<&str> = distinct.into_iter().collect();
    for (i, a) in distinct.iter().enumerate() {
        for b in &distinct[i + 1..] {
            if let Some(base) = log.merge_base(a, b) {
                keep.insert(base.commit_id.to_string());
            }
        }
    }
    keep
}

fn compaction_options() -> CompactionOptions {
    let mut o = CompactionOptions::default();
    // One rewrite at a time: the worker keeps serving reads on its two cores.
    o.num_threads = Some(1);
    o
}

/// Rewrites `ds`'s small fragments in place (a new version); the number of
/// fragments rewritten, 0 (and no new version) when there is nothing to do.
async fn compact(ds: &mut Dataset, table: &str) -> Result<u64, StoreError> {
    let plan = plan_compaction(ds, &compaction_options()).await.map_err(|e| StoreError::lance(format!("plan the compaction of {table}"), e))?;
    if plan.num_tasks() == 0 {
        return Ok(0);
    }
    let m = compact_files(ds, compaction_options(), None).await.map_err(|e| StoreError::lance(format!("compact {table}"), e))?;
    Ok(m.fragments_removed as u64)
}

/// Removes every version of the lineage `ds` is on but the one `ds` is at,
/// those in `keep` and any newer than `ds` (Lance never removes those: they
/// were written after `ds` was opened).
async fn clean_lineage(ds: &Dataset, what: &str, keep: Option<&HashSet<u64>>, report: &mut MaintenanceReport) -> Result<(), StoreError> {
    let opened = ds.version().version;
    let refs = ds.version_refs().await.map_err(|e| StoreError::lance(format!("list the versions of {what}"), e))?;
    let remove: Vec<u64> = refs.iter().map(|r| r.version).filter(|v| *v < opened && !keep.is_some_and(|k| k.contains(v))).collect();
    if remove.is_empty() {
        return Ok(());
    }
    let policy = CleanupPolicyBuilder::default()
        .versions(remove)
        .map_err(|e| StoreError::lance(format!("clean up {what}"), e))?
        .error_if_tagged_old_versions(false)
        .build();
    let stats = ds.cleanup_with_policy(policy).await.map_err(|e| StoreError::lance(format!("clean up {what}"), e))?;
    report.removed_versions += stats.old_versions;
    report.bytes_freed += stats.bytes_removed;
    Ok(())
}

/// Bytes of every file under `dir` (0 when it is missing).
fn dir_bytes(dir: &Path) -> u64 {
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

impl Store {
    /// One maintenance run (see the module's doc); compaction commits are
    /// recorded as `author`'s.
    pub async fn maintain(&self, retention: Retention, author: &Author) -> Result<MaintenanceReport, StoreError> {
        // A worker serves one graph; runs of any graph in the process go one at a time.
        static RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = RUNS.lock().await;
        let started = std::time::Instant::now();
        let mut report = MaintenanceReport::default();
        let (tables, logs, kept) = {
            let mut w = self.writer.lock().await;
            if w.poisoned {
                return Err(StoreError::Poisoned);
            }
            self.loc.check_writer().await?;
            let branches: Vec<String> = self.heads.load().keys().cloned().collect();
            for branch in &branches {
                self.loc.check_writer().await?;
                report.compacted_fragments += self.compact_branch(&mut w, branch, author).await?;
            }
            self.loc.check_writer().await?;
            report.compacted_fragments += compact(&mut w.commits, COMMITS_TABLE).await?;
            report.compacted_fragments += compact(&mut w.refs, REFS_TABLE).await?;
            let kept = self.kept(retention, Utc::now());
            let names: BTreeSet<String> = self.log.load().records().flat_map(|r| r.tables.keys().map(str::to_string)).collect();
            let mut tables = Vec::with_capacity(names.len());
            for name in names {
                tables.push(self.lineages_now(name).await?);
            }
            (tables, [(COMMITS_TABLE, Dataset::clone(&w.commits)), (REFS_TABLE, Dataset::clone(&w.refs))], kept)
        };
        let locked = started.elapsed();
        for t in tables {
            self.clean_table(t, &kept, &mut report).await?;
        }
        for (name, ds) in &logs {
            self.loc.check_writer().await?;
            clean_lineage(ds, name, None, &mut report).await?;
        }
        tracing::info!(
            compacted_fragments = report.compacted_fragments,
            removed_versions = report.removed_versions,
            bytes_freed = report.bytes_freed,
            writer_ms = locked.as_millis() as u64,
            ms = started.elapsed().as_millis() as u64,
            actor = %author.actor_id,
            "maintenance"
        );
        Ok(report)
    }

    /// How many commits the log holds (every branch, deleted ones too).
    pub fn commit_count(&self) -> usize {
        self.log.load().len()
    }

    /// How many commits came after the newest commit of `actor_id` (all of
    /// them when it made none); see [`CommitLog::commits_since`].
    pub fn commits_since(&self, actor_id: &str) -> usize {
        self.log.load().commits_since(actor_id)
    }

    /// Compacts the tables whose lineage `branch` owns at its tip, and
    /// commits the result on `branch` with the head's content; returns the
    /// fragments rewritten. On a failure every table is restored.
    async fn compact_branch(&self, w: &mut Writer, branch: &str, author: &Author) -> Result<u64, StoreError> {
        let base = self.head(branch)?;
        let mut txn = Txn::new(branch, &base);
        match self.compact_tables(w, &mut txn, &base).await {
            Ok((0, _)) => Ok(0),
            Ok((tables, fragments)) => {
                let snap = self.txn_finish(w, txn, base.data.clone(), vec![base.commit.commit_id.clone()], author).await?;
                tracing::info!(branch, tables, fragments, commit = %snap.commit.commit_id, "compacted");
                Ok(fragments)
            }
            Err(e) => {
                self.txn_rollback(w, txn).await;
                Err(e)
            }
        }
    }

    /// Compacts in `txn` each table of `base` that `txn`'s branch may
    /// extend in place (it owns the lineage, and the head is at its tip):
    /// (tables rewritten, fragments rewritten).
    async fn compact_tables(&self, w: &Writer, txn: &mut Txn, base: &Snapshot) -> Result<(u64, u64), StoreError> {
        let (mut tables, mut fragments) = (0, 0);
        for (table, pin) in &base.commit.tables {
            let Some(ds) = base.datasets.get(table) else { continue };
            if !w.lineages.can_extend(&txn.branch, table, pin.lineage.as_ref(), ds.version().version) {
                continue;
            }
            let plan = plan_compaction(ds, &compaction_options()).await.map_err(|e| StoreError::lance(format!("plan the compaction of {table}"), e))?;
            if plan.num_tasks() == 0 {
                continue;
            }
            let (lineage, start) = self.txn_open(w, txn, table).await?;
            let mut next = Dataset::clone(&start);
            fragments += compact(&mut next, table).await?;
            tables += 1;
            txn.wrote(table, lineage, Arc::new(next));
        }
        Ok((tables, fragments))
    }

    /// Every version this run keeps (writer lock held). Older snapshots in
    /// the history cache that a read holds right now keep theirs too; the
    /// others leave the cache, so a later read of their commit loads what
    /// is left, or learns that it expired.
    fn kept(&self, retention: Retention, now: DateTime<Utc>) -> Kept {
        let heads = self.heads.load();
        let log = self.log.load();
        let head_ids: Vec<&str> = heads.values().map(|s| &*s.commit.commit_id).collect();
        let commits = retained(&log, &head_ids, retention, now);
        let mut kept = Kept::default();
        for c in commits.iter().filter_map(|id| log.get(id)) {
            kept.commit(c);
        }
        for s in heads.values() {
            kept.snapshot(s);
        }
        if let Ok(mut cache) = self.history.lock() {
            cache.retain(|s| {
                let in_use = Arc::strong_count(s) > 1;
                if in_use {
                    kept.snapshot(s);
                }
                in_use || commits.contains(&*s.commit.commit_id)
            });
        }
        kept
    }

    /// `table`'s lineages as they are now (writer lock held): Lance's main
    /// and each of our Lance branches, forks of forks first.
    async fn lineages_now(&self, table: String) -> Result<TableNow, StoreError> {
        let main = self.loc.open(&table, None).await?;
        let mut forks: Vec<(String, usize)> = main
            .list_branches()
            .await
            .map_err(|e| StoreError::lance(format!("list the Lance branches of {table}"), e))?
            .into_iter()
            .filter(|(name, _)| name.starts_with(FORK_PREFIX))
            .map(|(name, c)| (name, c.identifier.version_mapping.len()))
            .collect();
        // Deepest first: Lance deletes a branch only once no branch forked from it is left.
        forks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut opened = Vec::with_capacity(forks.len());
        for (name, _) in forks {
            let ds = self.loc.open_on(&table, Some(&name), None).await?;
            opened.push((Arc::<str>::from(name), ds));
        }
        Ok(TableNow { table, main, forks: opened })
    }

    /// Removes what `kept` does not hold of a table: old versions of each
    /// lineage, and whole Lance branches nothing pins.
    async fn clean_table(&self, t: TableNow, kept: &Kept, report: &mut MaintenanceReport) -> Result<(), StoreError> {
        let TableNow { table, mut main, forks } = t;
        // Every destructive step first checks that no newer worker owns the
        // graph on object storage: what it wrote since is in no `kept` set here.
        self.loc.check_writer().await?;
        clean_lineage(&main, &table, kept.of(&table, None), report).await?;
        for (lineage, ds) in forks {
            let what = format!("{table} on {lineage}");
            self.loc.check_writer().await?;
            if let Some(keep) = kept.of(&table, Some(&lineage)) {
                clean_lineage(&ds, &what, Some(keep), report).await?;
                continue;
            }
            let versions = ds.version_refs().await.map_err(|e| StoreError::lance(format!("list the versions of {what}"), e))?.len() as u64;
            let bytes = self.loc.local.as_ref().map_or(0, |d| dir_bytes(&d.join(format!("{table}.lance")).join("tree").join(&*lineage)));
            match main.delete_branch(&lineage).await {
                Ok(()) => {
                    report.removed_versions += versions;
                    report.bytes_freed += bytes;
                    tracing::info!(table, %lineage, versions, bytes, "removed a lineage no kept commit pins");
                }
                Err(e) => {
                    // Still forked from (Lance refuses): its latest version stays.
                    tracing::debug!(table, %lineage, error = %e, "lineage kept");
                    clean_lineage(&ds, &what, None, report).await?;
                }
            }
        }
        Ok(())
    }

    /// Why loading `record`'s tables failed: [`StoreError::Expired`] when a
    /// version it pins is gone (maintenance removed it), otherwise `e`.
    pub(super) async fn load_error(&self, record: &CommitRecord, e: StoreError) -> StoreError {
        for (table, pin) in &record.tables {
            if !self.has_version(table, pin).await {
                return StoreError::Expired { commit: record.commit_id.to_string() };
            }
        }
        e
    }

    /// False when `pin`'s lineage or version of `table` is gone.
    async fn has_version(&self, table: &str, pin: &TablePin) -> bool {
        let Ok(ds) = self.loc.open_on(table, pin.lineage.as_deref(), None).await else { return false };
        // A listing that fails says nothing either way: not "gone".
        ds.version_refs().await.map_or(true, |refs| refs.iter().any(|r| r.version == pin.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, id: &str, parents: &[&str], created_at: &str) -> CommitRecord {
        CommitRecord {
            commit_id: id.into(),
            parents: parents.iter().map(|p| Arc::from(*p)).collect(),
            branch: "main".into(),
            actor_id: "t".into(),
            created_at: created_at.into(),
            seq,
            ..Default::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-31T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    /// main: m0 .. m5 (one a day, Jan 20 to 25, m5 the newest); dev forks at m2: d6 - d7.
    fn log() -> CommitLog {
        let day = |d: u32| format!("2024-01-{d}T00:00:00.000000Z");
        CommitLog::new(vec![
            rec(0, "m0", &[], &day(20)),
            rec(1, "m1", &["m0"], &day(21)),
            rec(2, "m2", &["m1"], &day(22)),
            rec(3, "m3", &["m2"], &day(23)),
            rec(4, "m4", &["m3"], &day(24)),
            rec(5, "m5", &["m4"], &day(25)),
            rec(6, "d6", &["m2"], &day(26)),
            rec(7, "d7", &["d6"], &day(27)),
        ])
    }

    fn sorted(s: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = s.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn the_newest_commits_of_each_branch_and_their_merge_base_stay() {
        let kept = retained(&log(), &["m5", "d7"], Retention { commits: 2, days: 0 }, now());
        assert_eq!(sorted(kept), ["d6", "d7", "m2", "m4", "m5"], "two per branch, and m2 where dev forked");
        let kept = retained(&log(), &["m5"], Retention { commits: 0, days: 0 }, now());
        assert_eq!(sorted(kept), ["m5"], "the head always");
        let kept = retained(&log(), &["m5", "m5"], Retention { commits: 1, days: 0 }, now());
        assert_eq!(sorted(kept), ["m5"], "two branches at one commit");
    }

    #[test]
    fn age_keeps_what_count_would_drop_and_the_reverse() {
        // Six days back from Jan 31 is Jan 25: m5 and dev's commits are young.
        let kept = retained(&log(), &["m5", "d7"], Retention { commits: 1, days: 6 }, now());
        assert_eq!(sorted(kept), ["d6", "d7", "m2", "m5"]);
        let kept = retained(&log(), &["m5"], Retention { commits: 3, days: 6 }, now());
        assert_eq!(sorted(kept), ["m3", "m4", "m5"], "count keeps what age would drop");
        let kept = retained(&log(), &["m5"], Retention { commits: 1, days: u64::MAX }, now());
        assert_eq!(kept.len(), 6, "a retention past chrono's range keeps everything");
        let mut l = log();
        l.push(rec(8, "m8", &["m5"], "garbage"));
        l.push(rec(9, "m9", &["m8"], "2024-01-30T12:00:00Z"));
        let kept = retained(&l, &["m9"], Retention { commits: 1, days: 1 }, now());
        assert_eq!(sorted(kept), ["m8", "m9"], "a date that does not parse is young, never dropped by age");
    }
}
