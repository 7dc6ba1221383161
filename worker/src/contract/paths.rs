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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_resolve() {
        assert_eq!(normalize_lexically(Path::new("/a/./b/../c//d/")), PathBuf::from("/a/c/d"));
    }
}
