//! Where a graph may live, and which files `POST /graphs` may read.
//!
//! Every path a client names is resolved the way the kernel would resolve it
//! — symlinks and `..` through the deepest ancestor that exists, the missing
//! rest appended — before any rule is checked, so no spelling, link or
//! `..` can carry a graph or a policy file outside its folder. The rules
//! (DESIGN.md section 2):
//!
//! - a local URI lies strictly inside `server.data_root` (else 400);
//! - it never equals, contains or lies inside another graph's URI, the
//!   runtime folder or the policy folder, nor contains the config file
//!   (else 409);
//! - a policy `{file}` is a regular file inside `server.policy_dir`, at most
//!   [`MAX_POLICY_FILE_BYTES`], read with that cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use omnigraph_contract::object_uri::ObjectUri;
use std::path::{Component, Path, PathBuf};

/// The largest policy file `POST /graphs` reads.
pub const MAX_POLICY_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainmentError {
    /// The path leaves its folder: 400.
    #[error("{0}")]
    Outside(String),
    /// The path overlaps something another owner holds: 409.
    #[error("{0}")]
    Overlap(String),
    /// The path cannot be resolved or read: 400.
    #[error("{0}")]
    Unusable(String),
}

/// A resolved folder as the key graphs are compared by (`canonical_uri`):
/// its path text without a trailing slash.
pub fn uri_key(resolved: &Path) -> String {
    resolved.display().to_string().trim_end_matches('/').to_string()
}

/// Resolves `p` (absolute) as the kernel would: each existing component is
/// canonicalised (following symlinks), `..` climbs from the physical folder,
/// and the components that do not exist yet are appended as written.
pub fn resolve_physical(p: &Path) -> Result<PathBuf, ContainmentError> {
    if !p.is_absolute() {
        return Err(ContainmentError::Unusable(format!("{} is not an absolute path", p.display())));
    }
    let mut cur = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => {
                cur.push(name);
                match std::fs::symlink_metadata(&cur) {
                    Ok(_) => {
                        // The error names no host path: it may reach a client.
                        cur = std::fs::canonicalize(&cur)
                            .map_err(|_| ContainmentError::Unusable("a part of the path cannot be resolved (a dangling link, or no permission)".into()))?;
                    }
                    // Missing, or under a file: created later, or refused then with a clear error.
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
                    Err(_) => return Err(ContainmentError::Unusable("a part of the path cannot be inspected".into())),
                }
            }
        }
    }
    Ok(cur)
}

/// True when one path equals, contains or lies inside the other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The folders and files a graph's storage must stay clear of.
#[derive(Debug, Clone)]
pub struct Fences {
    pub data_root: PathBuf,
    pub runtime_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub config_file: PathBuf,
    /// `server.object_store.roots`: where run-time graphs may live on object storage.
    pub object_roots: Vec<ObjectUri>,
}

impl Fences {
    /// Resolves each fence once; they are compared against resolved URIs.
    pub fn resolve(data_root: &Path, runtime_dir: &Path, policy_dir: &Path, config_file: &Path) -> Result<Fences, ContainmentError> {
        Ok(Fences {
            data_root: resolve_physical(data_root)?,
            runtime_dir: resolve_physical(runtime_dir)?,
            policy_dir: resolve_physical(policy_dir)?,
            config_file: resolve_physical(config_file)?,
            object_roots: Vec::new(),
        })
    }

    /// Where run-time graphs may live on object storage (`server.object_store.roots`).
    pub fn with_object_roots(mut self, roots: Vec<ObjectUri>) -> Fences {
        self.object_roots = roots;
        self
    }

    /// Checks an object-store graph URI: strictly spelled, and strictly
    /// inside one of `server.object_store.roots` (400 otherwise), the
    /// counterpart of [`Fences::check_graph_dir`]. Returns the parsed URI.
    pub fn check_object_uri(&self, uri: &str) -> Result<ObjectUri, ContainmentError> {
        let parsed = ObjectUri::parse(uri).map_err(|e| ContainmentError::Unusable(e.to_string()))?;
        if !self.object_roots.iter().any(|root| parsed.is_within(root) && parsed != *root) {
            return Err(ContainmentError::Outside(format!(
                "the URI {uri:?} is not inside server.object_store.roots; graphs on object storage live under a prefix of their own there"
            )));
        }
        Ok(parsed)
    }

    /// Checks a resolved local graph folder against the fixed fences: inside
    /// the data root (400), clear of the runtime and policy folders and the
    /// config file (409). Other graphs are checked by the caller, who knows them.
    pub fn check_graph_dir(&self, dir: &Path, shown: &str) -> Result<(), ContainmentError> {
        if !dir.starts_with(&self.data_root) || dir == self.data_root {
            return Err(ContainmentError::Outside(format!(
                "the URI {shown:?} is not inside server.data_root; local graphs live in a folder of their own under it"
            )));
        }
        for (what, fence) in [("the gateway's runtime folder", &self.runtime_dir), ("the policy folder", &self.policy_dir)] {
            if overlaps(dir, fence) {
                return Err(ContainmentError::Overlap(format!("the URI {shown:?} overlaps {what}")));
            }
        }
        if self.config_file.starts_with(dir) {
            return Err(ContainmentError::Overlap(format!("the URI {shown:?} contains the config file")));
        }
        Ok(())
    }

    /// Resolves a policy file a client named and checks that it is a regular
    /// file inside the policy folder. Errors name the path as given, never
    /// anything read from it.
    pub fn check_policy_file(&self, path: &Path, shown: &str) -> Result<PathBuf, ContainmentError> {
        let resolved = resolve_physical(path)?;
        if !resolved.starts_with(&self.policy_dir) || resolved == self.policy_dir {
            return Err(ContainmentError::Outside(format!(
                "policy file {shown:?} is not inside server.policy_dir; name a file in that folder or pass the policy as {{\"source\": ...}}"
            )));
        }
        Ok(resolved)
    }
}

/// Reads a policy file that passed [`Fences::check_policy_file`]: a regular
/// file (checked on the opened handle, so a swap after the check is caught)
/// of at most [`MAX_POLICY_FILE_BYTES`], as UTF-8.
pub fn read_policy_file(path: &Path, shown: &str) -> Result<String, ContainmentError> {
    let unusable = |m: String| ContainmentError::Unusable(format!("policy file {shown:?}: {m}"));
    // Non-blocking, so a FIFO cannot hold the open; it is then refused as not a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| unusable(format!("cannot open it: {}", e.kind())))?;
    let meta = file.metadata().map_err(|e| unusable(format!("cannot inspect it: {}", e.kind())))?;
    if !meta.is_file() {
        return Err(unusable("is not a regular file".into()));
    }
    if meta.len() > MAX_POLICY_FILE_BYTES {
        return Err(unusable(format!("is larger than {MAX_POLICY_FILE_BYTES} bytes")));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_POLICY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| unusable(format!("cannot read it: {}", e.kind())))?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(unusable(format!("is larger than {MAX_POLICY_FILE_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| unusable("is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fences(root: &Path) -> Fences {
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("omnigraph.yaml"), "x").unwrap();
        Fences::resolve(&root.join("data"), &root.join("run"), &root.join("policies"), &root.join("omnigraph.yaml")).unwrap()
    }

    #[test]
    fn resolves_links_and_dots_through_the_deepest_existing_ancestor() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("data/a")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data/link")).unwrap();
        assert_eq!(resolve_physical(&root.join("data/./a/../b/c")).unwrap(), root.join("data/b/c"));
        assert_eq!(resolve_physical(&root.join("data/link/x")).unwrap(), PathBuf::from("/etc/x"));
        // `..` after a link climbs from where the link points, as the kernel does.
        assert_eq!(resolve_physical(&root.join("data/link/../tmp")).unwrap(), PathBuf::from("/tmp"));
    }

    #[test]
    fn graph_dirs_stay_inside_the_data_root_and_clear_of_the_fences() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let f = fences(&root);
        std::os::unix::fs::symlink("/tmp", root.join("data/out")).unwrap();
        std::os::unix::fs::symlink(root.join("policies"), root.join("data/pol")).unwrap();
        let check = |p: &str| f.check_graph_dir(&resolve_physical(&root.join(p)).unwrap(), p);
        assert!(check("data/g").is_ok());
        for p in ["data", "data/..", "elsewhere/g", "data/../../x", "data/out/g"] {
            assert!(matches!(check(p), Err(ContainmentError::Outside(_))), "{p}");
        }
        assert!(matches!(check("data/pol/g"), Err(ContainmentError::Outside(_))), "a link out of the data root is outside it");
        assert!(matches!(f.check_graph_dir(Path::new("/etc"), "/etc"), Err(ContainmentError::Outside(_))));
    }

    #[test]
    fn the_fences_themselves_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        // A data root that holds everything: the fences still apply.
        let f = Fences::resolve(&root, &root.join("run"), &root.join("policies"), &root.join("omnigraph.yaml")).unwrap();
        for p in ["run", "run/x", "policies", "policies/g"] {
            assert!(matches!(f.check_graph_dir(&root.join(p), p), Err(ContainmentError::Overlap(_))), "{p}");
        }
        let f = Fences::resolve(&root, &root.join("a/run"), &root.join("a/policies"), &root.join("a/omnigraph.yaml")).unwrap();
        assert!(matches!(f.check_graph_dir(&root.join("a"), "a"), Err(ContainmentError::Overlap(_))), "contains the config");
        assert!(overlaps(Path::new("/d/a"), Path::new("/d/a/b")) && overlaps(Path::new("/d/a/b"), Path::new("/d/a")));
        assert!(!overlaps(Path::new("/d/a"), Path::new("/d/ab")), "component-wise, not by string prefix");
    }

    #[test]
    fn policy_files_must_be_small_regular_files_in_the_policy_dir() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let f = fences(&root);
        std::fs::write(root.join("policies/ok.cedar"), "permit (principal, action, resource);").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("policies/passwd")).unwrap();
        std::fs::create_dir(root.join("policies/sub")).unwrap();
        let ok = f.check_policy_file(&root.join("policies/ok.cedar"), "ok").unwrap();
        assert!(read_policy_file(&ok, "ok").unwrap().starts_with("permit"));
        for p in ["/etc/passwd", "/proc/self/environ", "/dev/zero"] {
            assert!(matches!(f.check_policy_file(Path::new(p), p), Err(ContainmentError::Outside(_))), "{p}");
        }
        assert!(f.check_policy_file(&root.join("policies/passwd"), "passwd").is_err(), "a link out is outside");
        assert!(f.check_policy_file(&root.join("policies/../omnigraph.yaml"), "x").is_err());
        let fifo = root.join("policies/fifo.cedar");
        let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let fifo = f.check_policy_file(&fifo, "fifo").unwrap();
        assert!(read_policy_file(&fifo, "fifo").unwrap_err().to_string().contains("not a regular file"), "a FIFO never blocks the read");
        let sub = f.check_policy_file(&root.join("policies/sub"), "sub").unwrap();
        assert!(read_policy_file(&sub, "sub").unwrap_err().to_string().contains("not a regular file"));
        std::fs::write(root.join("policies/big.cedar"), vec![b' '; MAX_POLICY_FILE_BYTES as usize + 1]).unwrap();
        let big = f.check_policy_file(&root.join("policies/big.cedar"), "big").unwrap();
        assert!(read_policy_file(&big, "big").unwrap_err().to_string().contains("larger than"));
    }
}
