//! Object-store graph URIs (`s3://bucket/prefix`), parsed one strict way so
//! the gateway's containment checks and the worker's storage agree on which
//! objects a graph owns.
//!
//! Strict because a URI names what a purge deletes: every spelling that
//! could name the same objects twice (`a//b`, `a/./b`, `a/../b`, a trailing
//! `/`, percent escapes, a query) is refused rather than folded, and a graph
//! always has a non-empty prefix, so no graph ever owns a whole bucket.

use std::fmt;

/// A parsed `s3://bucket/prefix` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUri {
    bucket: String,
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a usable object-store URI: {why}")]
pub struct ObjectUriError {
    pub uri: String,
    pub why: &'static str,
}

/// The longest object key prefix a graph may have (S3 keys are at most 1024 bytes).
const MAX_PREFIX: usize = 512;

impl ObjectUri {
    pub fn parse(uri: &str) -> Result<ObjectUri, ObjectUriError> {
        let err = |why| ObjectUriError { uri: uri.to_string(), why };
        let rest = uri.strip_prefix("s3://").ok_or_else(|| err("only the s3:// scheme is supported"))?;
        let (bucket, prefix) = rest.split_once('/').ok_or_else(|| err("it names a whole bucket; a graph needs s3://bucket/prefix"))?;
        if !valid_bucket(bucket) {
            return Err(err("the bucket name must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"));
        }
        if prefix.is_empty() {
            return Err(err("it names a whole bucket; a graph needs s3://bucket/prefix"));
        }
        if prefix.len() > MAX_PREFIX {
            return Err(err("the prefix is longer than 512 bytes"));
        }
        for seg in prefix.split('/') {
            if seg.is_empty() {
                return Err(err("the prefix has an empty segment (a doubled or trailing '/')"));
            }
            if seg == "." || seg == ".." {
                return Err(err("the prefix has a '.' or '..' segment"));
            }
            if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return Err(err("prefix segments may hold only A-Z, a-z, 0-9, '-', '_' and '.'"));
            }
        }
        Ok(ObjectUri { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix, without a leading or trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True when `self` is `other` or lies inside it (whole segments only:
    /// `s3://b/a/x` is inside `s3://b/a`, `s3://b/ab` is not).
    pub fn is_within(&self, other: &ObjectUri) -> bool {
        self.bucket == other.bucket && self.prefix.strip_prefix(&other.prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's bucket naming rules, minus the rarely used ones that cannot widen
/// what a URI names (an IP-shaped name is simply a name here).
fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&b.len())
        && bytes.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !b.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_uri_round_trips() {
        let u = ObjectUri::parse("s3://my-bucket/graphs/alpha").unwrap();
        assert_eq!((u.bucket(), u.prefix()), ("my-bucket", "graphs/alpha"));
        assert_eq!(u.to_string(), "s3://my-bucket/graphs/alpha");
    }

    #[test]
    fn every_second_spelling_is_refused() {
        for bad in [
            "s3://b",
            "s3://bkt",
            "s3://bkt/",
            "s3://bkt/a/",
            "s3://bkt//a",
            "s3://bkt/a//b",
            "s3://bkt/a/./b",
            "s3://bkt/a/../b",
            "s3://bkt/../x",
            "s3://bkt/a%2Fb",
            "s3://bkt/a?x=1",
            "s3://bkt/a#f",
            "s3://bkt/a b",
            "s3://Bkt/a",
            "s3://-bkt/a",
            "s3://bk..t/a",
            "s3://user@bkt/a",
            "s3://bkt:9000/a",
            "gs://bkt/a",
            "S3://bkt/a",
            "s3:/bkt/a",
        ] {
            assert!(ObjectUri::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(ObjectUri::parse(&format!("s3://bkt/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn containment_is_by_whole_segments() {
        let p = |s| ObjectUri::parse(s).unwrap();
        assert!(p("s3://bkt/a/x").is_within(&p("s3://bkt/a")));
        assert!(p("s3://bkt/a").is_within(&p("s3://bkt/a")));
        assert!(!p("s3://bkt/ab").is_within(&p("s3://bkt/a")));
        assert!(!p("s3://other/a/x").is_within(&p("s3://bkt/a")));
        assert!(!p("s3://bkt/a").is_within(&p("s3://bkt/a/x")));
    }
}
