//! Checked identifiers. Validate once at the edge, then pass the type along.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid graph id {0:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    GraphId(String),
    #[error("graph id {0:?} is reserved")]
    ReservedGraphId(String),
    #[error("invalid branch name {0:?}: use 1-128 characters of A-Z a-z 0-9 . _ / -, starting with a letter or digit, as '/'-separated segments that are not empty and do not start with '.'")]
    Branch(String),
}

/// Names that would collide with the gateway's own routes.
pub const RESERVED_GRAPH_IDS: &[&str] = &["graphs", "healthz", "readyz", "metrics", "openapi"];

/// A graph id: `^[a-z0-9][a-z0-9-]{0,62}$`, not reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GraphId(Arc<str>);

impl GraphId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !ok {
            return Err(IdError::GraphId(s.to_string()));
        }
        if RESERVED_GRAPH_IDS.contains(&s) {
            return Err(IdError::ReservedGraphId(s.to_string()));
        }
        Ok(GraphId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GraphId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A branch name: `^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$`, made of
/// `/`-separated segments that are neither empty nor start with `.`.
///
/// The gateway and the worker both call this one function, so they can never
/// disagree on which names reach Cedar. The segment rules exist so that one
/// branch has exactly one spelling: `main/`, `a//b`, `a/./b` would otherwise
/// be aliases that a path-normalising store resolves to `main`, `a/b`, `a/b`
/// while a Cedar rule written for `main` or `a/b` does not match them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchName(Arc<str>);

impl BranchName {
    pub const MAIN: &'static str = "main";

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
            && !s.contains("..")
            // No empty segment (`a//b`, a trailing `/`) and no segment starting
            // with `.` (`a/./b`, `a/.`, `a/.hidden`): each is an alias or a
            // hidden name, never a distinct branch.
            && s.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.'));
        if ok {
            Ok(BranchName(Arc::from(s)))
        } else {
            Err(IdError::Branch(s.to_string()))
        }
    }

    pub fn main() -> Self {
        BranchName(Arc::from(Self::MAIN))
    }

    /// `?branch=` absent means `main`: a missing branch is never a way around a branch rule.
    pub fn parse_or_main(s: Option<&str>) -> Result<Self, IdError> {
        match s {
            None => Ok(Self::main()),
            Some(s) => Self::parse(s),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_ids() {
        for ok in ["alpha", "a", "0", "a-b-9", &"a".repeat(63)] {
            assert!(GraphId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "Alpha", "a_b", "a/b", "a.b", "..", "a%2Fb", &"a".repeat(64), "é"] {
            assert!(matches!(GraphId::parse(bad), Err(IdError::GraphId(_))), "{bad}");
        }
        for reserved in RESERVED_GRAPH_IDS {
            assert!(matches!(GraphId::parse(reserved), Err(IdError::ReservedGraphId(_))));
        }
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "dev", "feature/x-1", "v1.2", "A_b", &"b".repeat(128)] {
            assert!(BranchName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", ".x", "-x", "a..b", "a b", "a\\b", "a%2e", &"b".repeat(129), "ü"] {
            assert!(BranchName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(BranchName::parse_or_main(None).unwrap().as_str(), "main");
    }

    /// One branch, one name: spellings that a path-normalising layer would
    /// fold into another branch's name are refused, not normalised.
    #[test]
    fn branch_aliases_are_rejected() {
        for alias in ["main/", "a//b", "a/./b", "a/.", "a/.x", "feature/.hidden/x", "a/b/", "a///b"] {
            assert!(matches!(BranchName::parse(alias), Err(IdError::Branch(_))), "{alias} must be rejected");
        }
        for ok in ["a/b", "a.b/c.d", "release/v1.2", "a/b-c/d_e"] {
            assert!(BranchName::parse(ok).is_ok(), "{ok}");
        }
        assert!(BranchName::parse_or_main(Some("main/")).is_err());
    }
}
