//! Property tests of the contract's checked ids, against the grammar of
//! DESIGN.md written out independently here.
//!
//! This file is also included (`#[path]`) by the gateway's and the worker's
//! agreement tests (`gateway/tests/prop_route_ids.rs`,
//! `worker/tests/model_change.rs`): all three check their side against the
//! same [`grammar`], so the gateway and the worker accept exactly the same
//! graph ids and branch names, generated near every edge of the grammar
//! (lengths 0/1/63/64/128/129, unicode, `/`, `.`, `-`, `_`).
//!
//! Cases: `PROPTEST_CASES` (default 512 here).

#![allow(dead_code)]

pub mod grammar {
    use proptest::prelude::*;

    pub const RESERVED: &[&str] = &["graphs", "healthz", "readyz", "metrics", "openapi"];

    /// `^[a-z0-9][a-z0-9-]{0,62}$`, not reserved (DESIGN.md section 2).
    pub fn graph_id_ok(s: &str) -> bool {
        let b = s.as_bytes();
        (1..=63).contains(&b.len())
            && matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
            && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
            && !RESERVED.contains(&s)
    }

    /// `^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$` without `..`, in `/`-separated
    /// segments that are not empty and do not start with `.` (DESIGN.md
    /// section 4 and the one-spelling rule of `BranchName`).
    pub fn branch_ok(s: &str) -> bool {
        let b = s.as_bytes();
        (1..=128).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
            && !s.contains("..")
            && s.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.'))
    }

    /// Lengths at every edge of both grammars, and some in between.
    pub fn edge_len() -> impl Strategy<Value = usize> {
        prop_oneof![
            3 => prop::sample::select(vec![0usize, 1, 2, 62, 63, 64, 65, 127, 128, 129, 130]),
            1 => 0usize..140,
        ]
    }

    const GRAPH_CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789-";
    const BRANCH_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-";
    /// Characters next to the grammar: unicode (some whose case mapping is
    /// ASCII), separators, escapes, whitespace, control characters.
    const NASTY: &[char] = &['é', 'ß', 'İ', '\u{212A}', '🦀', 'Ａ', ' ', '+', '%', '\\', '\0', '\n', '\t', '#', '?', '&', '=', ':', '~', '@', '"', '\''];

    fn from(alphabet: &'static str) -> impl Strategy<Value = char> {
        let chars: Vec<char> = alphabet.chars().collect();
        prop::sample::select(chars)
    }

    fn word(alphabet: &'static str) -> impl Strategy<Value = String> {
        edge_len().prop_flat_map(move |n| prop::collection::vec(from(alphabet), n).prop_map(String::from_iter))
    }

    /// A word of one alphabet with up to two characters swapped for others.
    fn mutated(alphabet: &'static str) -> impl Strategy<Value = String> {
        (word(alphabet), prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(NASTY.to_vec())), 0..3)).prop_map(|(w, edits)| {
            let mut cs: Vec<char> = w.chars().collect();
            for (i, c) in edits {
                if cs.is_empty() {
                    cs.push(c);
                } else {
                    let at = i.index(cs.len());
                    cs[at] = c;
                }
            }
            cs.into_iter().collect()
        })
    }

    /// Dot and slash structure: segments joined by `/`, some empty or dotted.
    fn segmented() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            4 => "[A-Za-z0-9_-]{1,12}",
            1 => Just(String::new()),
            1 => Just(".".to_string()),
            1 => Just("..".to_string()),
            1 => "\\.[a-z]{1,4}",
            1 => "[a-z]{1,4}\\.\\.?[a-z]{0,4}",
        ];
        prop::collection::vec(seg, 1..6).prop_map(|v| v.join("/"))
    }

    /// Candidate names: graph-id-shaped, branch-shaped, near misses of both,
    /// segment structure, and any string at all.
    pub fn candidate() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => word(GRAPH_CHARS),
            3 => word(BRANCH_CHARS),
            2 => mutated(GRAPH_CHARS),
            2 => mutated(BRANCH_CHARS),
            2 => segmented(),
            1 => prop::sample::select(RESERVED.to_vec()).prop_map(String::from),
            1 => any::<String>(),
        ]
    }

    /// Fixed names on every edge, checked before the random ones.
    pub fn edge_cases() -> Vec<String> {
        let mut v: Vec<String> = [
            "", "a", "A", "0", "-", "_", ".", "/", "..", "a..b", "a.b", "a/b", "a//b", "a/", "/a", "a/.b", "a/.", "main", "main/", "graphs", "healthz",
            "openapi", "openapi.json", "metrics-1", "a-", "-a", "_a", "a_b", "A_b", "é", "a%2Fb", "a b", "a+b", "Alpha", "\u{212A}elvin", "İ", "a\0b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [62, 63, 64, 127, 128, 129] {
            v.push("a".repeat(n));
            v.push(format!("{}/b", "a".repeat(n - 2)));
            v.push(format!("{}-", "b".repeat(n - 1)));
        }
        v
    }

    pub fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }
}

#[cfg(test)]
mod contract_ids {
    use super::grammar::{self, branch_ok, graph_id_ok};
    use omnigraph_contract::{BranchName, GraphId};
    use proptest::prelude::*;

    fn agree(s: &str) {
        assert_eq!(GraphId::parse(s).is_ok(), graph_id_ok(s), "GraphId::parse({s:?})");
        assert_eq!(BranchName::parse(s).is_ok(), branch_ok(s), "BranchName::parse({s:?})");
        if let Ok(b) = BranchName::parse(s) {
            assert_eq!(b.as_str(), s, "a branch name is kept as spelt");
        }
    }

    #[test]
    fn the_grammar_on_its_edges() {
        for s in grammar::edge_cases() {
            agree(&s);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: grammar::cases(512), failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn contract_ids_follow_the_grammar(s in grammar::candidate()) {
            agree(&s);
        }
    }
}
