//! Shadow policies: a candidate policy set decided beside the live one on
//! real traffic, before it decides anything.
//!
//! The candidate is the live set with the files in `server.shadow.dir` put
//! in place of their live counterparts: `server.cedar` for the server
//! policies, `<graph_id>.cedar` for a graph's. A file that is not there
//! leaves the live one in the candidate. Every request is decided by both;
//! only the live decision counts, and a difference is written into that
//! request's decision-log line (`"shadow": {"decision", "policies"}`) and
//! counted in `omnigraph_shadow_differences_total{action, direction}`.
//!
//! `POST /policies/promote` makes the candidate live: it re-reads and
//! validates it, writes each shadow file over its live file (each write
//! atomic), and swaps the compiled sets in under the reload lock, so every
//! request is decided wholly by the old set or wholly by the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cedar_policy::Policy;

use crate::authz::{ActionSets, Engine, PolicyError};

/// The candidate set, compiled.
pub struct Shadow {
    /// The candidate server policies (for graphs created later).
    pub server_policies: Vec<Policy>,
    /// Server policies alone, sliced: server actions and missing graphs.
    pub server: ActionSets,
    /// Per graph: candidate server ∪ candidate graph policies.
    pub graphs: HashMap<String, ActionSets>,
}

/// The files a candidate set is made of.
pub struct ShadowFiles {
    pub server: Option<PathBuf>,
    /// Graph id → its shadow file.
    pub graphs: HashMap<String, PathBuf>,
}

/// Lists the shadow folder. A `.cedar` file must be `server.cedar` or name
/// a graph in `graph_ids`; anything else is an error, so a typo never
/// silently leaves a graph on its live policies.
pub fn files(dir: &Path, graph_ids: &[String]) -> Result<ShadowFiles, PolicyError> {
    let read = std::fs::read_dir(dir).map_err(|e| PolicyError::plain(format!("shadow folder {}: {e}", dir.display())))?;
    let mut out = ShadowFiles { server: None, graphs: HashMap::new() };
    for e in read.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("cedar") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if stem == "server" {
            out.server = Some(path);
        } else if graph_ids.contains(&stem) {
            out.graphs.insert(stem, path);
        } else {
            return Err(PolicyError::plain(format!("shadow file {} names no graph (expected server.cedar or <graph_id>.cedar)", path.display())));
        }
    }
    Ok(out)
}

/// Compiles the candidate: `live_server` and `live_graph(id)` stand in
/// for each file the shadow folder does not have.
pub fn compile(
    engine: &Engine,
    files: &ShadowFiles,
    live_server: &[Policy],
    graphs: &[(String, Option<PathBuf>)],
) -> Result<Shadow, PolicyError> {
    let server_policies = match &files.server {
        Some(p) => engine.parse_path(p)?,
        None => live_server.to_vec(),
    };
    let server = engine.slice(&server_policies)?;
    let mut sets = HashMap::new();
    for (id, live_file) in graphs {
        let own = match (files.graphs.get(id), live_file) {
            (Some(p), _) | (None, Some(p)) => engine.parse_path(p)?,
            (None, None) => Vec::new(),
        };
        sets.insert(id.clone(), engine.slice(server_policies.iter().chain(&own))?);
    }
    Ok(Shadow { server_policies, server, graphs: sets })
}

/// Writes each shadow file over the live file it stands in for. Every
/// shadow graph file needs a live file to replace.
pub fn promote_files(files: &ShadowFiles, live_server: &Path, graphs: &[(String, Option<PathBuf>)]) -> Result<usize, PolicyError> {
    let mut plan = Vec::new();
    if let Some(p) = &files.server {
        plan.push((p.clone(), live_server.to_path_buf()));
    }
    for (id, shadow) in &files.graphs {
        match graphs.iter().find(|(g, _)| g == id).and_then(|(_, f)| f.clone()) {
            Some(live) => plan.push((shadow.clone(), live)),
            None => return Err(PolicyError::plain(format!("graph {id:?} has no policy file for its shadow file to replace; give it `policy: {{file}}` first"))),
        }
    }
    for (from, to) in &plan {
        let text = std::fs::read(from).map_err(|e| PolicyError::plain(format!("{}: {e}", from.display())))?;
        omnigraph_durable::write_atomically(to, &text).map_err(|e| PolicyError::plain(format!("cannot write {}: {e}", to.display())))?;
    }
    Ok(plan.len())
}
