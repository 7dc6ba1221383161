//! Path spelling, shared so the gateway and the worker agree on when two
//! spellings name one place.

use std::path::{Component, Path, PathBuf};

/// Resolves `.` and `..` without touching the file system, so two spellings
/// of one path compare equal even before the directory exists.
pub fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The local path of a graph URI (a plain path or a `file://` URL), or
/// `None` for an object-store URL such as `s3://bucket/graph`.
pub fn local_path(uri: &str) -> Option<&str> {
    match uri.strip_prefix("file://") {
        Some(p) => Some(p),
        None if uri.contains("://") => None,
        None => Some(uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote_uris() {
        assert_eq!(local_path("data/a"), Some("data/a"));
        assert_eq!(local_path("file:///srv/a"), Some("/srv/a"));
        assert_eq!(local_path("s3://b/a"), None);
    }

    #[test]
    fn dots_resolve() {
        assert_eq!(normalize_lexically(Path::new("/a/./b/../c//d/")), PathBuf::from("/a/c/d"));
    }
}
