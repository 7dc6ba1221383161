//! Fuzz target: the `.pg` schema parser (`GraphSchema::parse`).
//!
//! Short form (stable, inside `cargo test`): each target runs the committed
//! corpus in `tests/__fuzz__/fuzz_schema__<target>/corpus/`, then random
//! inputs for a bounded time (`BOLERO_RANDOM_TEST_TIME_MS` or
//! `BOLERO_RANDOM_ITERATIONS` override it). Long form (libFuzzer, nightly):
//! `cargo bolero test -p omnigraph-contract --test fuzz_schema <target> --profile dev -T 60s`
//! (see docs in the report / the fuzzing section of docs/reliability.md).
//!
//! Properties, for any input:
//! - the parser never panics: it returns a schema or a `SchemaError`;
//! - an error points inside the source: line and column are 1-based, the line
//!   exists (or is the last one, for "end of input") and the column is at
//!   most one past that line's last character; `render` never panics and
//!   starts with `file:line:col: `;
//! - a schema honours every rule of the language: exactly one `@key` per node
//!   type, a String and not optional; unique type and property names; no
//!   reserved names; edge endpoints are declared node types; the type and
//!   property bounds hold;
//! - a schema printed back as `.pg` text parses to the same schema.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bolero::check;
use omnigraph_contract::schema::{MAX_PROPERTIES, MAX_TYPES};
use omnigraph_contract::{GraphSchema, PropType, Property, SchemaError};

/// Random inputs per target in the short form, after the corpus.
const SHORT: Duration = Duration::from_millis(2500);

fn check_error(src: &str, e: &SchemaError) {
    let lines: Vec<&str> = src.lines().collect();
    assert!(e.line >= 1 && e.col >= 1, "{e:?}");
    assert!(e.line <= lines.len().max(1), "line {} past the {} lines: {e:?}", e.line, lines.len());
    let width = lines.get(e.line - 1).map_or(0, |l| l.chars().count());
    assert!(e.col <= width + 1, "column {} past line {} of width {width}: {e:?}", e.col, e.line);
    assert!(!e.message.is_empty());
    let r = e.render("f.pg", src);
    assert!(r.starts_with(&format!("f.pg:{}:{}: ", e.line, e.col)), "{r}");
}

fn check_props(owner: &str, props: &[Property], is_node: bool) {
    assert!(props.len() <= MAX_PROPERTIES, "{owner}: {} properties", props.len());
    for (i, p) in props.iter().enumerate() {
        assert!(!p.name.is_empty() && !p.name.starts_with('_'), "{owner}.{}", p.name);
        assert!(props[..i].iter().all(|q| q.name != p.name), "{owner}.{} twice", p.name);
        if let PropType::List(inner) = &p.ty {
            assert!(!matches!(**inner, PropType::List(_)), "{owner}.{}: nested list", p.name);
        }
        if p.key {
            assert!(is_node, "{owner}.{}: @key on an edge", p.name);
            assert!(p.ty == PropType::String && !p.optional, "{owner}.{}: bad @key", p.name);
        }
    }
    if is_node {
        assert_eq!(props.iter().filter(|p| p.key).count(), 1, "{owner}: @key count");
    }
}

fn check_schema(s: &GraphSchema) {
    assert!(s.nodes.len() + s.edges.len() <= MAX_TYPES);
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).chain(s.edges.iter().map(|e| e.name.as_str())).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "type {n} twice");
        assert!(!n.starts_with('_') && *n != "node" && *n != "edge", "reserved type name {n}");
    }
    for n in &s.nodes {
        check_props(&n.name, &n.props, true);
        assert!(n.key_prop().key);
    }
    for e in &s.edges {
        check_props(&e.name, &e.props, false);
        assert!(s.node(&e.from).is_some() && s.node(&e.to).is_some(), "edge {} has an undeclared endpoint", e.name);
    }
}

fn print_type(t: &PropType) -> String {
    match t {
        PropType::List(inner) => format!("[{}]", print_type(inner)),
        other => format!("{other:?}"),
    }
}

fn print_props(props: &[Property]) -> String {
    let body: Vec<String> = props
        .iter()
        .map(|p| format!("{}: {}{}{}", p.name, print_type(&p.ty), if p.optional { "?" } else { "" }, if p.key { " @key" } else { "" }))
        .collect();
    format!("{{ {} }}", body.join("  "))
}

/// The schema as `.pg` text, in the canonical layout.
fn print(s: &GraphSchema) -> String {
    let mut out = String::new();
    for n in &s.nodes {
        out += &format!("node {} {}\n", n.name, print_props(&n.props));
    }
    for e in &s.edges {
        out += &format!("edge {}: {} -> {} {}\n", e.name, e.from, e.to, print_props(&e.props));
    }
    out
}

/// The whole property check for one source text.
fn one(src: &str) {
    match GraphSchema::parse(src) {
        Ok(s) => {
            check_schema(&s);
            let text = print(&s);
            let again = GraphSchema::parse(&text).unwrap_or_else(|e| panic!("the printed schema does not parse: {e}\n{text}"));
            assert_eq!(again, s, "the printed schema parses to another schema:\n{text}");
        }
        Err(e) => check_error(src, &e),
    }
}

fn report(name: &str, n: &AtomicU64, t: Instant) {
    eprintln!("fuzz {name}: {} executions in {:.1} s", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
}

/// Arbitrary bytes, read as UTF-8 (lossily: the gateway and the worker only
/// ever hand the parser a `&str`).
#[test]
fn pg_bytes() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        one(&String::from_utf8_lossy(bytes));
    });
    report("pg_bytes", &n, t);
}

/// The language's own tokens in random order: reaches the parser's deeper
/// states far more often than bytes do.
const VOCAB: &[&str] = &[
    "node", "edge", "Person", "City", "Knows", "P", "Q", "name", "age", "k", "_x", "node", "edge", "String", "Bool", "I32", "I64", "F32", "F64",
    "Date", "DateTime", "Blob", "Strin", "{", "}", "{", "}", ":", ":", "->", "-", ">", "@key", "@key", "@", "@nope", "?", "[", "]", ",", "\n",
    "\r\n", "# c\n", "// c\n", "/", "é", "\u{0}", "\t", "  ", "$", "9",
];

#[test]
fn pg_tokens() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_type::<Vec<u8>>().with_test_time(SHORT).for_each(|picks: &Vec<u8>| {
        n.fetch_add(1, Ordering::Relaxed);
        let src: Vec<&str> = picks.iter().map(|b| VOCAB[*b as usize % VOCAB.len()]).collect();
        one(&src.join(" "));
        one(&src.concat());
    });
    report("pg_tokens", &n, t);
}

/// Inputs that once failed or sit on an edge, pinned as named tests.
#[test]
fn regression_inputs() {
    for src in [
        "",
        "\n\n\n",
        "node",
        "node P {",
        "node P { k: String @key",
        "edge E: P -> P",
        "node P { k: String @key }\nedge E: P -> P { k: String @key }",
        "node P { k: [[String]] @key }",
        "node P { k: String @ }",
        "node P { k: String @key @key }",
        "node P { k: String? @key }",
        "node é { k: String @key }",
        "node P { k: String @key }\r\nedge E: P -> P\r\n",
        "node P { k: String @key }\n\n\n   $",
        "\u{feff}node P { k: String @key }",
        "node P { k: String @key } # trailing\n// and more\n",
    ] {
        one(src);
    }
}
