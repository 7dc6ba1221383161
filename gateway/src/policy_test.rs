//! `policy test FILE.yaml`: a security team's unit tests for its Cedar
//! files. Each case is decided by the gateway's own decision function
//! (through [`PolicyBook`]), exactly as a live request with the same actor,
//! action, graph and branches would be, and compared with what it expects.

use std::path::Path;

use serde::Deserialize;

use crate::app::StartupError;
use crate::explain::{ActorSpec, PolicyBook, Question};

/// A test file: `cases:`, a list of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub actor: ActorSpec,
    pub action: String,
    pub graph: Option<String>,
    pub branch: Option<String>,
    pub target: Option<String>,
    pub from: Option<String>,
    pub expect: Expect,
    /// When given, the determining policy ids must be exactly these (any order).
    pub policies: Option<Vec<String>>,
}

/// One case's outcome.
pub struct Outcome {
    pub name: String,
    pub expected: Expect,
    pub got: Option<Expect>,
    pub policies: Vec<String>,
    /// Why the case failed, if it did.
    pub failure: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Reads and parses a test file.
pub fn load(path: &Path) -> Result<TestFile, StartupError> {
    let text = std::fs::read_to_string(path).map_err(|e| StartupError::Other(format!("cannot read {}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text).map_err(|e| StartupError::Other(format!("{}: {e}", path.display())))
}

/// Decides every case. A case that cannot be decided (an unknown action or
/// graph, a bad branch name) fails with the reason; it never passes.
pub fn run(book: &PolicyBook, file: &TestFile) -> Vec<Outcome> {
    file.cases.iter().map(|c| run_case(book, c)).collect()
}

fn run_case(book: &PolicyBook, c: &Case) -> Outcome {
    let actor = book.actor(&c.actor);
    let q = Question {
        action: &c.action,
        graph: c.graph.as_deref(),
        branch: c.branch.as_deref(),
        target: c.target.as_deref(),
        from: c.from.as_deref(),
    };
    let mut out = Outcome { name: c.name.clone(), expected: c.expect, got: None, policies: Vec::new(), failure: None };
    let v = match book.decide(&actor, &q) {
        Ok(v) => v,
        Err(e) => {
            out.failure = Some(e.to_string());
            return out;
        }
    };
    let got = if v.decision.allowed { Expect::Allow } else { Expect::Deny };
    out.got = Some(got);
    out.policies = v.decision.policies.clone();
    out.policies.sort();
    if got != c.expect {
        out.failure = Some(format!("expected {}, got {}", word(c.expect), word(got)));
    } else if let Some(want) = &c.policies {
        let mut want = want.clone();
        want.sort();
        if want != out.policies {
            out.failure = Some(format!("expected determining policies [{}], got [{}]", want.join(", "), out.policies.join(", ")));
        }
    }
    if let (Some(f), false) = (&mut out.failure, v.decision.errors.is_empty()) {
        f.push_str(&format!(" (errors while deciding, each a deny: {})", v.decision.errors.join("; ")));
    }
    out
}

fn word(e: Expect) -> &'static str {
    match e {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    }
}

/// The results as a table, one row per case, then a summary line.
pub fn render(outcomes: &[Outcome]) -> String {
    let rows: Vec<[String; 5]> = outcomes
        .iter()
        .map(|o| {
            [
                if o.passed() { "PASS".into() } else { "FAIL".into() },
                o.name.clone(),
                word(o.expected).into(),
                o.got.map_or("-".into(), |g| word(g).to_string()),
                if o.policies.is_empty() { "(none)".into() } else { o.policies.join(", ") },
            ]
        })
        .collect();
    let header = ["result", "case", "expect", "got", "determining policies"];
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for (r, o) in rows.iter().zip(outcomes) {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        if let Some(f) = &o.failure {
            out.push_str(&format!("      {}: {f}\n", o.name));
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    out.push_str(&format!("\n{} cases: {} passed, {failed} failed\n", outcomes.len(), outcomes.len() - failed));
    out
}
