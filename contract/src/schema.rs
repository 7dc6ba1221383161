//! The `.pg` schema language:
//!
//! ```text
//! # comments run to the end of the line (also `//`)
//! node Person { name: String @key  age: I64?  tags: [String]? }
//! edge Knows: Person -> Person { since: Date? }
//! ```
//!
//! Every error carries the line and column of the offending token, and
//! [`SchemaError::render`] draws the source line with a caret under it.

use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// A property's scalar or list type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PropType {
    String,
    Bool,
    I32,
    I64,
    F32,
    F64,
    Date,
    DateTime,
    Blob,
    List(Box<PropType>),
}

impl PropType {
    fn from_name(name: &str) -> Option<PropType> {
        Some(match name {
            "String" => PropType::String,
            "Bool" => PropType::Bool,
            "I32" => PropType::I32,
            "I64" => PropType::I64,
            "F32" => PropType::F32,
            "F64" => PropType::F64,
            "Date" => PropType::Date,
            "DateTime" => PropType::DateTime,
            "Blob" => PropType::Blob,
            _ => return None,
        })
    }

    /// Types whose values have a total order, so `<`, `order_by` and friends apply.
    pub fn is_ordered(&self) -> bool {
        !matches!(self, PropType::List(_) | PropType::Blob | PropType::Bool)
    }
}

impl fmt::Display for PropType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropType::List(inner) => write!(f, "[{inner}]"),
            other => write!(f, "{other:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Property {
    pub name: String,
    pub ty: PropType,
    pub optional: bool,
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeType {
    pub name: String,
    pub props: Vec<Property>,
}

impl NodeType {
    /// The `@key` property; the parser guarantees exactly one.
    pub fn key_prop(&self) -> &Property {
        self.props.iter().find(|p| p.key).unwrap_or(&self.props[0])
    }

    pub fn prop(&self, name: &str) -> Option<&Property> {
        self.props.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeType {
    pub name: String,
    pub from: String,
    pub to: String,
    pub props: Vec<Property>,
}

impl EdgeType {
    pub fn prop(&self, name: &str) -> Option<&Property> {
        self.props.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphSchema {
    pub nodes: Vec<NodeType>,
    pub edges: Vec<EdgeType>,
}

impl GraphSchema {
    pub fn node(&self, name: &str) -> Option<&NodeType> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn edge(&self, name: &str) -> Option<&EdgeType> {
        self.edges.iter().find(|e| e.name == name)
    }

    pub fn parse(src: &str) -> Result<GraphSchema, SchemaError> {
        Parser::new(src).parse_schema()
    }
}

/// The most node and edge types one schema may declare.
pub const MAX_TYPES: usize = 256;
/// The most properties one type may declare.
pub const MAX_PROPERTIES: usize = 256;

/// A schema error at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct SchemaError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl SchemaError {
    /// `file:line:col: message`, the source line, and a caret under the column.
    pub fn render(&self, file: &str, src: &str) -> String {
        crate::diagnostic::render(file, src, self.line, self.col, &self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    Arrow,
    At(String),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::Punct(c) => write!(f, "'{c}'"),
            Tok::Arrow => f.write_str("'->'"),
            Tok::At(s) => write!(f, "'@{s}'"),
            Tok::Eof => f.write_str("end of input"),
        }
    }
}

struct Parser {
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
    lex_error: Option<SchemaError>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Parser {
    fn new(src: &str) -> Parser {
        let mut toks = Vec::new();
        let mut lex_error = None;
        for (li, line) in src.lines().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                let c = chars[i];
                let (ln, col) = (li + 1, i + 1);
                if c.is_whitespace() || c == ',' {
                    i += 1;
                } else if c == '#' || (c == '/' && chars.get(i + 1) == Some(&'/')) {
                    break;
                } else if c == '-' && chars.get(i + 1) == Some(&'>') {
                    toks.push((Tok::Arrow, ln, col));
                    i += 2;
                } else if is_ident_start(c) || c == '@' {
                    let start = if c == '@' { i + 1 } else { i };
                    let mut j = start;
                    while j < chars.len() && is_ident_char(chars[j]) {
                        j += 1;
                    }
                    let word: String = chars[start..j].iter().collect();
                    if c == '@' {
                        if word.is_empty() {
                            lex_error.get_or_insert(SchemaError { line: ln, col, message: "expected an annotation name after '@'".into() });
                        }
                        toks.push((Tok::At(word), ln, col));
                    } else {
                        toks.push((Tok::Ident(word), ln, col));
                    }
                    i = j;
                } else if matches!(c, '{' | '}' | ':' | '[' | ']' | '?') {
                    toks.push((Tok::Punct(c), ln, col));
                    i += 1;
                } else {
                    lex_error.get_or_insert(SchemaError { line: ln, col, message: format!("unexpected character {c:?}") });
                    i += 1;
                }
            }
        }
        let (line, col) = (src.lines().count().max(1), src.lines().last().map(|l| l.chars().count() + 1).unwrap_or(1));
        toks.push((Tok::Eof, line, col));
        Parser { toks, pos: 0, lex_error }
    }

    fn peek(&self) -> &(Tok, usize, usize) {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> (Tok, usize, usize) {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err_at<T>(&self, line: usize, col: usize, message: impl Into<String>) -> Result<T, SchemaError> {
        Err(SchemaError { line, col, message: message.into() })
    }

    fn expect_punct(&mut self, c: char) -> Result<(), SchemaError> {
        let (t, l, col) = self.next();
        if t == Tok::Punct(c) {
            Ok(())
        } else {
            self.err_at(l, col, format!("expected '{c}', found {t}"))
        }
    }

    fn expect_ident(&mut self, what: &str) -> Result<(String, usize, usize), SchemaError> {
        match self.next() {
            (Tok::Ident(s), l, c) => Ok((s, l, c)),
            (t, l, c) => self.err_at(l, c, format!("expected {what}, found {t}")),
        }
    }

    /// Each type is one Lance dataset and each property a column: the bounds
    /// keep one schema from making a graph that takes minutes to initialise.
    fn check_type_count(&self, schema: &GraphSchema, l: usize, c: usize) -> Result<(), SchemaError> {
        if schema.nodes.len() + schema.edges.len() >= MAX_TYPES {
            return self.err_at(l, c, format!("a schema may declare at most {MAX_TYPES} node and edge types"));
        }
        Ok(())
    }

    fn parse_schema(mut self) -> Result<GraphSchema, SchemaError> {
        if let Some(e) = self.lex_error.take() {
            return Err(e);
        }
        let mut schema = GraphSchema { nodes: Vec::new(), edges: Vec::new() };
        let mut names: HashSet<String> = HashSet::new();
        let mut edge_refs = Vec::new();
        loop {
            match self.next() {
                (Tok::Eof, ..) => break,
                (Tok::Ident(kw), ..) if kw == "node" => {
                    let (name, l, c) = self.expect_ident("a node type name")?;
                    self.check_type_count(&schema, l, c)?;
                    check_type_name(&name, l, c)?;
                    if !names.insert(name.clone()) {
                        return self.err_at(l, c, format!("type {name:?} is declared twice"));
                    }
                    let props = self.parse_props(true, &name, l, c)?;
                    schema.nodes.push(NodeType { name, props });
                }
                (Tok::Ident(kw), ..) if kw == "edge" => {
                    let (name, l, c) = self.expect_ident("an edge type name")?;
                    self.check_type_count(&schema, l, c)?;
                    check_type_name(&name, l, c)?;
                    if !names.insert(name.clone()) {
                        return self.err_at(l, c, format!("type {name:?} is declared twice"));
                    }
                    self.expect_punct(':')?;
                    let (from, fl, fc) = self.expect_ident("the source node type")?;
                    match self.next() {
                        (Tok::Arrow, ..) => {}
                        (t, l, c) => return self.err_at(l, c, format!("expected '->', found {t}")),
                    }
                    let (to, tl, tc) = self.expect_ident("the target node type")?;
                    edge_refs.push((from.clone(), fl, fc));
                    edge_refs.push((to.clone(), tl, tc));
                    let props = if self.peek().0 == Tok::Punct('{') { self.parse_props(false, &name, l, c)? } else { Vec::new() };
                    schema.edges.push(EdgeType { name, from, to, props });
                }
                (t, l, c) => return self.err_at(l, c, format!("expected 'node' or 'edge', found {t}")),
            }
        }
        for (name, l, c) in edge_refs {
            if schema.node(&name).is_none() {
                return self.err_at(l, c, format!("edge endpoint {name:?} is not a declared node type"));
            }
        }
        Ok(schema)
    }

    fn parse_props(&mut self, is_node: bool, owner: &str, ol: usize, oc: usize) -> Result<Vec<Property>, SchemaError> {
        self.expect_punct('{')?;
        let mut props: Vec<Property> = Vec::new();
        loop {
            if self.peek().0 == Tok::Punct('}') {
                self.next();
                break;
            }
            let (name, l, c) = self.expect_ident("a property name or '}'")?;
            if name.starts_with('_') {
                return self.err_at(l, c, format!("property {name:?}: names starting with '_' are reserved"));
            }
            if props.iter().any(|p| p.name == name) {
                return self.err_at(l, c, format!("property {name:?} is declared twice in {owner}"));
            }
            if props.len() >= MAX_PROPERTIES {
                return self.err_at(l, c, format!("{owner} may have at most {MAX_PROPERTIES} properties"));
            }
            self.expect_punct(':')?;
            let ty = self.parse_type(false)?;
            let mut optional = false;
            if self.peek().0 == Tok::Punct('?') {
                self.next();
                optional = true;
            }
            let mut key = false;
            while let (Tok::At(a), al, ac) = self.peek().clone() {
                self.next();
                if a != "key" {
                    return self.err_at(al, ac, format!("unknown annotation '@{a}' (only '@key' exists)"));
                }
                if !is_node {
                    return self.err_at(al, ac, "'@key' is only allowed on node types");
                }
                if optional {
                    return self.err_at(al, ac, "a '@key' property cannot be optional");
                }
                if ty != PropType::String {
                    return self.err_at(al, ac, format!("a '@key' property must be String, not {ty}"));
                }
                if props.iter().any(|p| p.key) || key {
                    return self.err_at(al, ac, format!("{owner} has more than one '@key' property"));
                }
                key = true;
            }
            props.push(Property { name, ty, optional, key });
        }
        if is_node && !props.iter().any(|p| p.key) {
            return self.err_at(ol, oc, format!("node type {owner:?} needs exactly one '@key' property"));
        }
        Ok(props)
    }

    fn parse_type(&mut self, in_list: bool) -> Result<PropType, SchemaError> {
        match self.next() {
            (Tok::Punct('['), l, c) => {
                if in_list {
                    return self.err_at(l, c, "nested lists are not supported");
                }
                let inner = self.parse_type(true)?;
                self.expect_punct(']')?;
                Ok(PropType::List(Box::new(inner)))
            }
            (Tok::Ident(name), l, c) => PropType::from_name(&name).map_or_else(
                || self.err_at(l, c, format!("unknown type {name:?}: use String, Bool, I32, I64, F32, F64, Date, DateTime, Blob or [T]")),
                Ok,
            ),
            (t, l, c) => self.err_at(l, c, format!("expected a type, found {t}")),
        }
    }
}

fn check_type_name(name: &str, l: usize, c: usize) -> Result<(), SchemaError> {
    if name.starts_with('_') || matches!(name, "node" | "edge") {
        return Err(SchemaError { line: l, col: c, message: format!("type name {name:?} is reserved") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCIAL: &str = "# people\nnode Person { name: String @key  age: I64?  tags: [String]? }\nnode City { name: String @key, pop: I64 }\nedge Knows: Person -> Person { since: Date? }\nedge LivesIn: Person -> City\n";

    #[test]
    fn parses_every_type_and_shape() {
        let s = GraphSchema::parse(SOCIAL).unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.edges.len(), 2);
        let p = s.node("Person").unwrap();
        assert_eq!(p.key_prop().name, "name");
        assert_eq!(p.prop("tags").unwrap().ty, PropType::List(Box::new(PropType::String)));
        assert!(p.prop("age").unwrap().optional);
        let k = s.edge("Knows").unwrap();
        assert_eq!((k.from.as_str(), k.to.as_str()), ("Person", "Person"));
        assert!(s.edge("LivesIn").unwrap().props.is_empty());
        let all = "node T { k: String @key a: Bool b: I32 c: I64 d: F32 e: F64 f: Date g: DateTime h: Blob i: [F64]? }";
        assert_eq!(GraphSchema::parse(all).unwrap().nodes[0].props.len(), 10);
    }

    fn err(src: &str) -> SchemaError {
        GraphSchema::parse(src).unwrap_err()
    }

    #[test]
    fn schemas_are_bounded_in_types_and_properties() {
        let types: String = (0..MAX_TYPES).map(|i| format!("node T{i} {{ k: String @key }}\n")).collect();
        assert!(GraphSchema::parse(&types).is_ok());
        let e = GraphSchema::parse(&format!("{types}node Extra {{ k: String @key }}\n")).unwrap_err();
        assert_eq!(e.line, MAX_TYPES + 1, "{e}");
        assert!(e.message.contains("at most 256"));
        let props: String = (0..=MAX_PROPERTIES).map(|i| format!("p{i}: I64? ")).collect();
        let e = GraphSchema::parse(&format!("node P {{ k: String @key {props} }}")).unwrap_err();
        assert!(e.message.contains("at most 256 properties"), "{e}");
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = err("node Person {\n  name: Strin @key\n}");
        assert_eq!((e.line, e.col), (2, 9));
        assert!(e.message.contains("unknown type"));
        let e = err("node P { a: String }");
        assert!(e.message.contains("exactly one '@key'"), "{e}");
        let e = err("node P { a: String @key b: String @key }");
        assert!(e.message.contains("more than one"), "{e}");
        assert_eq!((e.line, e.col), (1, 35));
        let e = err("node P { a: String @key }\nedge E: P -> Q");
        assert_eq!((e.line, e.col), (2, 14));
        let e = err("node P { a: String? @key }");
        assert!(e.message.contains("optional"));
        let e = err("node P { a: String @key }\nnode P { b: String @key }");
        assert_eq!(e.line, 2);
        let e = err("node P { a: String @key $ }");
        assert_eq!((e.line, e.col), (1, 25));
        let e = err("node P { a: [[String]] @key }");
        assert!(e.message.contains("nested"));
        let e = err("node P { _a: String @key }");
        assert!(e.message.contains("reserved"));
        let e = err("edge E: P -> P { k: String @key }");
        assert!(e.message.contains("only allowed on node"));
        let e = err("node P { a: I64 @key }");
        assert!(e.message.contains("must be String"));
    }

    #[test]
    fn render_draws_a_caret() {
        let src = "node Person {\n  name: Strin @key\n}";
        let r = err(src).render("social.pg", src);
        assert!(r.starts_with("social.pg:2:9: unknown type"));
        assert!(r.ends_with("\n          ^"), "{r}");
    }
}
