//! The one writer of `omnigraph.yaml` at run time: every change is a
//! read-modify-write in one critical section.
//!
//! The section holds an in-process mutex and an exclusive `flock` on a
//! separate `<file>.lock` that is never renamed (locking the file itself would
//! lock an inode the rename replaces, so two writers could both "hold" it).
//! Inside: read the bytes, compare their SHA-256 with the baseline (a
//! mismatch is a hand edit or another process: `Drift`, and nothing is
//! written), parse, let the caller modify the parsed config (it re-checks
//! duplicates against what is on disk), then write a temp file in the same
//! folder, fsync it, rename it over the config, fsync the folder and move the
//! baseline.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::config::{self, Config};

#[derive(Debug, thiserror::Error)]
pub enum RewriteError<E> {
    #[error("{}", drift_message(.0))]
    Drift(String),
    #[error("config I/O: {0}")]
    Io(String),
    /// The caller's modification refused the change; nothing was written.
    #[error("{0}")]
    Rejected(E),
}

pub fn drift_message(path: &str) -> String {
    format!("{path} changed on disk since the gateway read it (a hand edit or another process); not overwriting it. Restart the gateway to pick the edit up")
}

pub struct ConfigStore {
    path: PathBuf,
    lock_path: PathBuf,
    baseline: Mutex<[u8; 32]>,
    /// Serialises writers inside this process; the flock covers other processes.
    section: Mutex<()>,
}

pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ConfigStore {
    pub fn new(path: &Path, loaded_bytes: &[u8]) -> ConfigStore {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        ConfigStore { path: path.to_path_buf(), lock_path: PathBuf::from(lock), baseline: Mutex::new(digest(loaded_bytes)), section: Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `modify` on the config as it is on disk and writes the result
    /// atomically. Blocking: call it from a blocking thread.
    pub fn rewrite<R, E>(&self, modify: impl FnOnce(&mut Config) -> Result<R, E>) -> Result<R, RewriteError<E>> {
        let io = |what: &str, e: std::io::Error| RewriteError::Io(format!("{what}: {e}"));
        let _in_process = self.section.lock().map_err(|_| RewriteError::Io("config mutex poisoned".into()))?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock_path).map_err(|e| io("open lock file", e))?;
        lock.lock().map_err(|e| io("flock", e))?;
        let bytes = std::fs::read(&self.path).map_err(|e| io("read config", e))?;
        let mut baseline = self.baseline.lock().map_err(|_| RewriteError::Io("baseline mutex poisoned".into()))?;
        if digest(&bytes) != *baseline {
            return Err(RewriteError::Drift(self.path.display().to_string()));
        }
        let mut cfg = config::parse(&self.path, &bytes).map_err(|e| RewriteError::Io(e.to_string()))?;
        let before = cfg.clone();
        let out = modify(&mut cfg).map_err(RewriteError::Rejected)?;
        let new_bytes = render(&self.path, &String::from_utf8_lossy(&bytes), &before, &cfg).map_err(RewriteError::Io)?;
        write_atomically(&self.path, new_bytes.as_bytes()).map_err(|e| io("write config", e))?;
        *baseline = digest(new_bytes.as_bytes());
        drop(lock);
        Ok(out)
    }
}

/// The new file text. When only graphs were added or removed, the original
/// text is edited in place so the operator's comments and layout survive; the
/// edit is used only if it parses back to exactly `after`. Otherwise the whole
/// config is serialised.
fn render(path: &Path, original: &str, before: &Config, after: &Config) -> Result<String, String> {
    if let Some(text) = edit_graphs_in_place(original, before, after) {
        if config::parse(path, text.as_bytes()).ok().as_ref() == Some(after) {
            return Ok(text);
        }
    }
    let text = serde_yaml_ng::to_string(after).map_err(|e| format!("serialise: {e}"))?;
    Ok(format!("# Rewritten by omnigraph-gateway (POST/DELETE /graphs). Edit by hand only while the gateway is stopped.\n{text}"))
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

fn edit_graphs_in_place(original: &str, before: &Config, after: &Config) -> Option<String> {
    if before.server != after.server || before.auth != after.auth {
        return None;
    }
    if after.graphs.iter().any(|(k, v)| before.graphs.get(k).is_some_and(|b| b != v)) {
        return None;
    }
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
    let header = lines.iter().position(|l| l.starts_with("graphs:"))?;
    let rest = lines[header]["graphs:".len()..].trim();
    if rest.starts_with('{') {
        if rest.trim_start_matches('{').trim_start().starts_with('}') {
            lines[header] = "graphs:".to_string();
        } else {
            return None;
        }
    } else if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let section_end = |lines: &[String]| {
        (header + 1..lines.len()).find(|&i| !lines[i].starts_with(' ') && !is_blank_or_comment(&lines[i])).unwrap_or(lines.len())
    };
    for id in before.graphs.keys().filter(|k| !after.graphs.contains_key(*k)) {
        let end = section_end(&lines);
        let start = (header + 1..end).find(|&i| indent_of(&lines[i]) == 2 && lines[i].trim_start().split(':').next() == Some(id.as_str()))?;
        let stop = (start + 1..end).find(|&i| !lines[i].trim().is_empty() && indent_of(&lines[i]) <= 2).unwrap_or(end);
        lines.drain(start..stop);
    }
    for (id, section) in after.graphs.iter().filter(|(k, _)| !before.graphs.contains_key(*k)) {
        let one: std::collections::BTreeMap<&String, &config::GraphSection> = [(id, section)].into_iter().collect();
        let text = serde_yaml_ng::to_string(&one).ok()?;
        let mut end = section_end(&lines);
        // Keep trailing blank lines and comments that introduce the next section below us.
        while end > header + 1 && is_blank_or_comment(&lines[end - 1]) && indent_of(&lines[end - 1]) == 0 {
            end -= 1;
        }
        let block: Vec<String> = text.lines().map(|l| format!("  {l}")).collect();
        lines.splice(end..end, block);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Some(out)
}

pub use omnigraph_durable::write_atomically;

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "server:\n  bind: 127.0.0.1:1\n  policy: { file: p.cedar }\ngraphs: {}\n";

    fn section(uri: &str) -> crate::config::GraphSection {
        crate::config::GraphSection { uri: uri.into(), tenant: None, protected_branches: vec![], policy: None, schema: None, start: None }
    }

    #[test]
    fn read_modify_write_keeps_every_concurrent_insert() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omnigraph.yaml");
        std::fs::write(&p, CFG).unwrap();
        let store = std::sync::Arc::new(ConfigStore::new(&p, CFG.as_bytes()));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let s = store.clone();
                std::thread::spawn(move || s.rewrite(|c| {
                    c.graphs.insert(format!("g{i}"), section(&format!("data/g{i}")));
                    Ok::<_, ()>(())
                }))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let cfg = crate::config::parse(&p, &std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(cfg.graphs.len(), 16);
        assert!(dir.path().join("omnigraph.yaml.lock").exists());
    }

    #[test]
    fn a_hand_edit_is_drift_and_survives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omnigraph.yaml");
        std::fs::write(&p, CFG).unwrap();
        let store = ConfigStore::new(&p, CFG.as_bytes());
        let edited = format!("{CFG}# hand edit\n");
        std::fs::write(&p, &edited).unwrap();
        let r = store.rewrite(|c| {
            c.graphs.insert("x".into(), section("data/x"));
            Ok::<_, ()>(())
        });
        assert!(matches!(r, Err(RewriteError::Drift(_))));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), edited);
    }

    #[test]
    fn adding_and_removing_graphs_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omnigraph.yaml");
        let original = "# top comment\nserver:\n  bind: 127.0.0.1:1   # the port\n  policy: { file: p.cedar }\ngraphs:\n  # the first graph\n  alpha:\n    uri: data/alpha\n    tenant: acme\n\n# trailing note\n";
        std::fs::write(&p, original).unwrap();
        let store = ConfigStore::new(&p, original.as_bytes());
        store.rewrite(|c| {
            c.graphs.insert("beta".into(), section("data/beta"));
            Ok::<_, ()>(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# top comment") && text.contains("# the port") && text.contains("# the first graph") && text.contains("# trailing note"), "{text}");
        assert!(text.contains("  beta:\n    uri: data/beta"), "{text}");
        let cfg = crate::config::parse(&p, text.as_bytes()).unwrap();
        assert_eq!(cfg.graphs.len(), 2);
        store.rewrite(|c| {
            c.graphs.remove("alpha");
            Ok::<_, ()>(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("alpha") && text.contains("# top comment") && text.contains("beta"), "{text}");
        // An empty flow map becomes a block.
        let p2 = dir.path().join("b.yaml");
        std::fs::write(&p2, CFG).unwrap();
        let store = ConfigStore::new(&p2, CFG.as_bytes());
        store.rewrite(|c| {
            c.graphs.insert("g".into(), section("data/g"));
            Ok::<_, ()>(())
        })
        .unwrap();
        let text = std::fs::read_to_string(&p2).unwrap();
        assert!(text.starts_with("server:") && text.contains("graphs:\n  g:\n    uri: data/g"), "{text}");
    }

    #[test]
    fn a_rejected_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("omnigraph.yaml");
        std::fs::write(&p, CFG).unwrap();
        let store = ConfigStore::new(&p, CFG.as_bytes());
        let r = store.rewrite(|_| Err::<(), _>("duplicate"));
        assert!(matches!(r, Err(RewriteError::Rejected("duplicate"))));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), CFG);
    }
}
