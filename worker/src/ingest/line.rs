//! One NDJSON line of `/ingest`: splitting the body into lines, parsing a
//! line into a node or an edge, and applying it with `/change`'s validation
//! ([`Working::upsert`] and [`Working::link`]), so the two routes accept
//! exactly the same values.
//!
//! A line is a node `{"type": "Person", "key": "alice", "props": {…}}` or an
//! edge `{"edge": "Knows", "from": "alice", "to": "bob", "props": {…}}`.
//! Blank lines (only whitespace) are skipped but counted, so every error
//! names the line an editor shows; `\r\n` endings are accepted.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::change::{ChangeError, Working};

/// A bad line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: u64,
    pub message: String,
}

impl LineError {
    fn new(line: u64, message: impl Into<String>) -> LineError {
        LineError { line, message: message.into() }
    }

    /// `/change`'s error for the op, reworded for a line (`props.age: …`).
    fn from_change(line: u64, e: ChangeError) -> LineError {
        match e.field {
            Some(f) => LineError::new(line, format!("{f}: {}", e.message)),
            None => LineError::new(line, e.message),
        }
    }
}

/// What a line was, for the answer's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blank,
    Node,
    Edge,
}

/// A JSON string, borrowed from the line unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A field that is there must hold a value: `"props": null` or
/// `"edge": null` is refused, as `/change` refuses it, never read as absent
/// (found by the fuzz target `ingest_lines_structured`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    ty: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    edge: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    from: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<Text<'a>>,
    #[serde(default, deserialize_with = "present")]
    props: Option<Map<String, Value>>,
}

const SHAPE: &str = r#"a line is a node {"type", "key", "props"} or an edge {"edge", "from", "to", "props"}"#;

/// Parses line `n` and applies it to `w`: a node is upserted, an edge
/// linked (its endpoints must exist in the base or earlier in the ingest).
pub fn apply(w: &mut Working<'_>, n: u64, line: &[u8]) -> Result<Kind, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Kind::Blank);
    }
    let raw: RawLine<'_> = serde_json::from_slice(line).map_err(|e| LineError::new(n, format!("not a valid line ({SHAPE}): {e}")))?;
    let i = usize::try_from(n).unwrap_or(usize::MAX);
    let props = raw.props.unwrap_or_default();
    match (raw.ty, raw.key, raw.edge, raw.from, raw.to) {
        (Some(ty), Some(key), None, None, None) => {
            w.upsert(i, &ty.0, &key.0, props).map_err(|e| LineError::from_change(n, e))?;
            Ok(Kind::Node)
        }
        (None, None, Some(edge), Some(from), Some(to)) => {
            w.link(i, &edge.0, &from.0, &to.0, props).map_err(|e| LineError::from_change(n, e))?;
            Ok(Kind::Edge)
        }
        (ty, key, edge, from, to) => {
            let node = [("type", ty.is_some()), ("key", key.is_some())];
            let edge = [("edge", edge.is_some()), ("from", from.is_some()), ("to", to.is_some())];
            let has = |fs: &[(&str, bool)]| fs.iter().any(|(_, p)| *p);
            let missing = |fs: &[(&str, bool)]| fs.iter().filter(|(_, p)| !*p).map(|(f, _)| format!("{f:?}")).collect::<Vec<_>>().join(", ");
            let message = match (has(&node), has(&edge)) {
                (true, true) => format!("{SHAPE}, not both"),
                (true, false) => format!("a node line is missing {}", missing(&node)),
                (false, true) => format!("an edge line is missing {}", missing(&edge)),
                (false, false) => SHAPE.to_string(),
            };
            Err(LineError::new(n, message))
        }
    }
}

/// Splits a body arriving in chunks into lines without copying those that
/// lie within one chunk; only a line cut by a chunk boundary is gathered.
#[derive(Debug)]
pub struct Lines {
    carry: Vec<u8>,
    /// Lines completed so far.
    line: u64,
    max_line: usize,
}

impl Lines {
    /// `max_line`: the longest line accepted, in bytes.
    pub fn new(max_line: usize) -> Lines {
        Lines { carry: Vec::new(), line: 0, max_line }
    }

    fn too_long(&self, n: u64) -> LineError {
        LineError::new(n, format!("the line is longer than {} bytes (limits.max_body_bytes bounds one line)", self.max_line))
    }

    /// Calls `f(n, line)` for every line `chunk` completes, in order.
    pub fn feed<E: From<LineError>>(&mut self, chunk: &[u8], mut f: impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            self.line += 1;
            let (head, tail) = (&rest[..pos], &rest[pos + 1..]);
            if self.carry.is_empty() {
                if head.len() > self.max_line {
                    return Err(self.too_long(self.line).into());
                }
                f(self.line, head)?;
            } else {
                self.carry.extend_from_slice(head);
                if self.carry.len() > self.max_line {
                    return Err(self.too_long(self.line).into());
                }
                let line = std::mem::take(&mut self.carry);
                f(self.line, &line)?;
                self.carry = line;
                self.carry.clear();
            }
            rest = tail;
        }
        self.carry.extend_from_slice(rest);
        if self.carry.len() > self.max_line {
            return Err(self.too_long(self.line + 1).into());
        }
        Ok(())
    }

    /// The last line, when the body did not end with a newline.
    pub fn finish<E: From<LineError>>(&mut self, mut f: impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.carry.is_empty() {
            return Ok(());
        }
        self.line += 1;
        let line = std::mem::take(&mut self.carry);
        f(self.line, &line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::GraphSchema;
    use crate::store::state::GraphData;

    const SCHEMA: &str = "node Person { name: String @key age: I64? }\nnode City { name: String @key }\nedge Knows: Person -> Person { since: I64? }\nedge LivesIn: Person -> City\n";

    /// Runs `body` through a splitter (in chunks of `chunk` bytes) and the
    /// validator, as the ingest does; returns the kinds or the first error.
    fn run(body: &str, chunk: usize) -> Result<Vec<Kind>, LineError> {
        let schema = GraphSchema::parse(SCHEMA).unwrap();
        let mut w = Working::new(&schema, GraphData::default());
        let mut lines = Lines::new(200);
        let mut kinds = Vec::new();
        for part in body.as_bytes().chunks(chunk) {
            lines.feed(part, |n, l| apply(&mut w, n, l).map(|k| kinds.push(k)))?;
        }
        lines.finish(|n, l| apply(&mut w, n, l).map(|k| kinds.push(k)))?;
        Ok(kinds)
    }

    fn bad(body: &str) -> LineError {
        let e = run(body, 7).unwrap_err();
        assert_eq!(run(body, 4096).unwrap_err(), e, "the chunking does not change the error");
        e
    }

    const GOOD: &str = "{\"type\": \"Person\", \"key\": \"alice\", \"props\": {\"age\": 34}}\n";

    #[test]
    fn nodes_edges_and_blank_lines_in_any_chunking() {
        let body = format!(
            "{GOOD}\n  \r\n{{\"type\": \"Person\", \"key\": \"b\\u00f6b\"}}\r\n{{\"edge\": \"Knows\", \"from\": \"alice\", \"to\": \"böb\", \"props\": {{\"since\": 2019}}}}"
        );
        for chunk in [1, 3, 7, 64, 4096] {
            assert_eq!(run(&body, chunk).unwrap(), [Kind::Node, Kind::Blank, Kind::Blank, Kind::Node, Kind::Edge], "chunks of {chunk}");
        }
        assert_eq!(run("", 7).unwrap(), []);
    }

    #[test]
    fn an_edge_may_join_nodes_from_earlier_lines() {
        let body = format!("{GOOD}{{\"type\": \"City\", \"key\": \"paris\"}}\n{{\"edge\": \"LivesIn\", \"from\": \"alice\", \"to\": \"paris\"}}\n");
        assert_eq!(run(&body, 5).unwrap(), [Kind::Node, Kind::Node, Kind::Edge]);
        // ...but not from later ones.
        let e = bad("{\"edge\": \"LivesIn\", \"from\": \"alice\", \"to\": \"paris\"}\n{\"type\": \"Person\", \"key\": \"alice\"}\n");
        assert_eq!(e, LineError::new(1, "from: Person \"alice\" does not exist"));
    }

    #[test]
    fn each_bad_line_names_its_line_and_problem() {
        let cases: &[(&str, &str)] = &[
            ("{\"type\": \"Person\", \"key\": ", "not a valid line"),
            ("[1, 2]", "not a valid line"),
            ("{\"type\": \"Persn\", \"key\": \"x\"}", "type: unknown node type \"Persn\""),
            ("{\"type\": \"Person\", \"key\": \"x\", \"props\": {\"age\": \"old\"}}", "props.age: expected I64, got \"old\""),
            ("{\"type\": \"Person\", \"key\": \"x\", \"props\": {\"height\": 2}}", "props.height: Person has no property \"height\""),
            ("{\"type\": \"Person\", \"key\": \"x\", \"props\": {\"name\": \"y\"}}", "props.name: must equal \"key\""),
            ("{\"type\": \"Person\", \"key\": \"\"}", "key: must not be empty"),
            ("{\"type\": \"Person\"}", "a node line is missing \"key\""),
            ("{\"edge\": \"Knows\", \"from\": \"alice\"}", "an edge line is missing \"to\""),
            ("{\"type\": \"Person\", \"key\": \"x\", \"edge\": \"Knows\"}", "not both"),
            ("{\"type\": \"Person\", \"key\": \"x\", \"branch\": \"dev\"}", "unknown field `branch`"),
            ("{\"edge\": \"Likes\", \"from\": \"alice\", \"to\": \"alice\"}", "edge: unknown edge type \"Likes\""),
            ("{\"edge\": \"Knows\", \"from\": \"alice\", \"to\": \"ghost\"}", "to: Person \"ghost\" does not exist"),
            ("{\"edge\": \"Knows\", \"from\": \"alice\", \"to\": \"alice\", \"props\": {\"since\": 1.5}}", "props.since: expected I64"),
            ("{}", "a line is a node"),
        ];
        for (line, want) in cases {
            // Line 1 is good, line 2 blank, line 3 the bad one, line 4 never read.
            let e = bad(&format!("{GOOD}\n{line}\n{GOOD}"));
            assert_eq!(e.line, 3, "{line}: {e}");
            assert!(e.message.contains(want), "{line}: got {:?}, want {want:?}", e.message);
            assert!(e.to_string().starts_with("line 3: "), "{e}");
        }
        // The last line, with no newline after it, is still numbered.
        assert_eq!(bad(&format!("{GOOD}{{\"type\": \"Persn\", \"key\": \"x\"}}")).line, 2);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_even_unfinished() {
        let long = format!("{{\"type\": \"Person\", \"key\": \"{}\"}}", "x".repeat(300));
        let e = bad(&format!("{GOOD}{long}\n"));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("longer than 200 bytes"), "{e}");
        let e = bad(&format!("{GOOD}{long}"));
        assert_eq!(e.line, 2, "no newline yet: refused before it is all gathered");
    }
}
