//! Lineages: which Lance branch of a table a write lands on.
//!
//! Each table is one Lance dataset. A *lineage* is one chain of versions of
//! it: Lance's main chain, or a Lance branch (`tree/og-…`) forked from some
//! version of another lineage. A commit pins each table at one version of one
//! lineage ([`TablePin`]), so a graph branch is nothing but a head commit:
//! creating or fast-forwarding one writes no table at all.
//!
//! Why writes fork: Lance resolves a commit made on an old version by
//! rebasing it onto the chain's latest version when the operations commute
//! (two appends do), so a write based on main's v3 after main reached v5
//! would silently contain v4 and v5 (pinned in `tests/lance_facts.rs`). Two
//! graph branches must therefore never write the same chain. The rule:
//!
//! - every lineage has one *owner*, the graph branch whose commit created it
//!   (Lance's main belongs to graph `main`);
//! - a write to a table extends the lineage its base pins only when its
//!   branch owns that lineage *and* the base is the lineage's tip; otherwise
//!   it first forks a new lineage from the base version (no data is copied)
//!   and writes there, and that lineage is the branch's from then on.
//!
//! So a branch's first write to a table costs one extra manifest, and a
//! lineage is only ever extended by one branch, at its tip: Lance never has
//! anything to rebase onto. A deleted branch's lineages are retired, never
//! extended again, even by a new branch of the same name. When in doubt
//! (a tip this worker has not seen), the rule forks, which is always safe.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lance::dataset::Dataset;

use super::commits::CommitRecord;
use super::location::Location;
use super::StoreError;
use crate::contract::BranchName;

/// A table's lineage, as a map key: `(table, None)` is Lance's main chain.
type LineageKey = (String, Option<Arc<str>>);

#[derive(Debug, Clone, Default)]
pub struct Lineages {
    /// Lineage name → the graph branch that may extend it.
    owners: HashMap<Arc<str>, String>,
    /// Lineages of deleted branches: never owned again.
    retired: HashSet<Arc<str>>,
    /// The latest Lance version of each lineage this worker knows to be
    /// extendable. This worker is the graph's only writer, so what it wrote
    /// last is the tip; a lineage missing here is never extended.
    tips: HashMap<LineageKey, u64>,
}

impl Lineages {
    /// The branch that may extend `lineage` (`None` = Lance main = graph main).
    pub fn owner<'a>(&'a self, lineage: Option<&Arc<str>>) -> Option<&'a str> {
        match lineage {
            None => Some(BranchName::MAIN),
            Some(l) => self.owners.get(l).map(String::as_str),
        }
    }

    /// Replay and commit: a lineage first pinned by `c` was forked by it, so
    /// it belongs to `c`'s branch.
    pub fn record(&mut self, c: &CommitRecord) {
        for pin in c.tables.values() {
            if let Some(l) = pin.lineage.as_ref().filter(|l| !self.retired.contains(*l)) {
                self.owners.entry(l.clone()).or_insert_with(|| c.branch.to_string());
            }
        }
    }

    /// `branch` was deleted: nothing extends its lineages again.
    pub fn retire(&mut self, branch: &str) {
        let gone: Vec<Arc<str>> = self.owners.iter().filter(|(_, o)| o.as_str() == branch).map(|(l, _)| l.clone()).collect();
        for l in gone {
            self.owners.remove(&l);
            self.retired.insert(l.clone());
            self.tips.retain(|(_, tl), _| tl.as_ref() != Some(&l));
        }
    }

    pub fn set_tip(&mut self, table: &str, lineage: Option<&Arc<str>>, version: u64) {
        self.tips.insert((table.to_string(), lineage.cloned()), version);
    }

    /// Forgets `lineage`'s tip, so nothing extends it in place again (the
    /// next write forks): for a lineage a write left ahead of every pin
    /// and that could not be restored.
    pub fn forget_tip(&mut self, table: &str, lineage: Option<&Arc<str>>) {
        self.tips.remove(&(table.to_string(), lineage.cloned()));
    }

    /// True when `branch` may write `table` in place on `lineage`, whose
    /// dataset object is at `version`: it owns the lineage and `version` is
    /// the lineage's tip.
    pub fn can_extend(&self, branch: &str, table: &str, lineage: Option<&Arc<str>>, version: u64) -> bool {
        self.owner(lineage) == Some(branch) && self.tips.get(&(table.to_string(), lineage.cloned())) == Some(&version)
    }
}

/// The lineage a dataset object is on (`None` for Lance's main).
pub fn lineage_of(ds: &Dataset) -> Option<Arc<str>> {
    ds.manifest().branch.as_deref().map(Arc::from)
}

/// Forks `table` at `base`'s version into a new lineage and returns the new
/// lineage's name and its dataset. Lance's shallow clone copies no data. A
/// crash after the fork and before the commit row leaves an unpinned lineage
/// that nothing reads; its name is unique, so it is never reused.
pub async fn fork(loc: &Location, table: &str, base: &Dataset) -> Result<(Arc<str>, Dataset), StoreError> {
    let name: Arc<str> = Arc::from(format!("og-{}", ulid::Ulid::new().to_string().to_lowercase()));
    let from = base.manifest().branch.clone();
    let version = base.version().version;
    let ds = Dataset::clone(base)
        .create_branch(&name, (from.as_deref(), Some(version)), Some(loc.params()))
        .await
        .map_err(|e| StoreError::lance(format!("fork {table} at v{version}"), e))?;
    Ok((name, ds))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::commits::TablePin;

    fn commit(branch: &str, lineage: &str) -> CommitRecord {
        let mut tables = BTreeMap::new();
        tables.insert("T".to_string(), TablePin { lineage: Some(Arc::from(lineage)), version: 2 });
        tables.insert("U".to_string(), TablePin::main(1));
        CommitRecord { commit_id: "c".into(), branch: branch.into(), actor_id: "a".into(), tables: (&tables).into(), seq: 1, ..Default::default() }
    }

    #[test]
    fn only_the_owner_extends_and_only_at_the_tip() {
        let mut l = Lineages::default();
        let dev: Arc<str> = Arc::from("og-1");
        l.record(&commit("dev", "og-1"));
        l.set_tip("T", Some(&dev), 2);
        l.set_tip("U", None, 1);
        assert!(l.can_extend("dev", "T", Some(&dev), 2));
        assert!(!l.can_extend("dev", "T", Some(&dev), 1), "not at the tip");
        assert!(!l.can_extend("main", "T", Some(&dev), 2), "not the owner");
        assert!(l.can_extend("main", "U", None, 1), "Lance main belongs to graph main");
        assert!(!l.can_extend("dev", "U", None, 1));
        assert!(!l.can_extend("main", "V", None, 1), "an unknown tip is never extended");
        // A later commit pinning the same lineage does not change its owner.
        l.record(&commit("main", "og-1"));
        assert_eq!(l.owner(Some(&dev)), Some("dev"));
        // Deleting dev retires its lineages, even for a new "dev".
        l.retire("dev");
        assert!(!l.can_extend("dev", "T", Some(&dev), 2));
        assert_eq!(l.owner(Some(&dev)), None);
        l.record(&commit("dev", "og-1"));
        assert_eq!(l.owner(Some(&dev)), None, "a retired lineage is never owned again");
    }
}
