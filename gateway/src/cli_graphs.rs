//! `omnigraph-gateway graphs …`: the HTTP lifecycle surface from a shell,
//! with readable output (or `--json`), plus `orphans`, which reads the disk.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::config::Loaded;

#[derive(clap::Args)]
pub struct Remote {
    /// The gateway, e.g. http://127.0.0.1:8080
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The environment variable that holds the bearer token.
    #[arg(long, default_value = "OMNIGRAPH_TOKEN")]
    token_env: String,
    /// Print the gateway's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum GraphsCommand {
    /// List the graphs and their status.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Create a graph (POST /graphs).
    Create {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        id: String,
        #[arg(long)]
        uri: String,
        /// The `.pg` schema file.
        #[arg(long)]
        schema: PathBuf,
        /// A Cedar policy file; its source is sent and stored as policies/<id>.cedar.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long = "protected")]
        protected_branches: Vec<String>,
    },
    /// Remove a graph (DELETE /graphs/{id}); its data is kept unless --purge.
    Delete {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        id: String,
        #[arg(long)]
        purge: bool,
    },
    /// Creates a crash interrupted: journaled in the runtime dir, absent from the config.
    Orphans {
        #[arg(long, default_value = "omnigraph.yaml")]
        config: PathBuf,
    },
}


fn call(remote: &Remote, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
    let token = std::env::var(&remote.token_env).map_err(|_| anyhow::anyhow!("set the bearer token in ${}", remote.token_env))?;
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let mut req = ureq::http::Request::builder().method(method).uri(&url).header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map(|b| b.to_string()).unwrap_or_default())?;
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn finish(remote: &Remote, status: u16, body: &Value, ok: impl FnOnce(&Value) -> String) -> ExitCode {
    if remote.json {
        println!("{body}");
    } else if (200..300).contains(&status) {
        println!("{}", ok(body));
    } else {
        eprintln!("error {status} ({}): {}", body["code"].as_str().unwrap_or("?"), body["error"].as_str().unwrap_or(&body.to_string()));
    }
    if (200..300).contains(&status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn run(cmd: GraphsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GraphsCommand::List { remote } => {
            let (st, body) = call(&remote, "GET", "/graphs", None)?;
            Ok(finish(&remote, st, &body, |b| {
                let mut out = format!("{:<24} {:<10} {}", "GRAPH", "STATUS", "URI");
                for g in b["graphs"].as_array().into_iter().flatten() {
                    out.push_str(&format!("\n{:<24} {:<10} {}", g["graph_id"].as_str().unwrap_or(""), g["status"].as_str().unwrap_or(""), g["uri"].as_str().unwrap_or("")));
                }
                out
            }))
        }
        GraphsCommand::Create { remote, id, uri, schema, policy, tenant, protected_branches } => {
            let source = std::fs::read_to_string(&schema).map_err(|e| anyhow::anyhow!("read {}: {e}", schema.display()))?;
            let mut body = json!({"graph_id": id, "uri": uri, "schema": {"source": source}, "protected_branches": protected_branches});
            if let Some(p) = policy {
                let src = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?;
                body["policy"] = json!({"source": src});
            }
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            let (st, body) = call(&remote, "POST", "/graphs", Some(body))?;
            Ok(finish(&remote, st, &body, |b| format!("created {} at {} ({})", b["graph_id"].as_str().unwrap_or(""), b["uri"].as_str().unwrap_or(""), b["status"].as_str().unwrap_or(""))))
        }
        GraphsCommand::Delete { remote, id, purge } => {
            let path = format!("/graphs/{id}{}", if purge { "?purge=true" } else { "" });
            let (st, body) = call(&remote, "DELETE", &path, None)?;
            Ok(finish(&remote, st, &body, |b| {
                format!("deleted {}{}", b["graph_id"].as_str().unwrap_or(""), if b["purged"] == true { " and its data" } else { " (data kept)" })
            }))
        }
        GraphsCommand::Orphans { config } => {
            let loaded = Loaded::load(&config)?;
            let runtime = loaded.resolve(&loaded.config.server.runtime_dir);
            let catalog = match &loaded.config.catalog {
                // The graphs are in etcd: an orphan is a journaled create it does not have.
                Some(c) => crate::etcd_catalog::list_blocking(&c.etcd)?,
                None => loaded.config.graphs.clone(),
            };
            let found = crate::lifecycle::orphans(&runtime, &catalog);
            if found.is_empty() {
                println!("no orphans: every create recorded in {} finished or was undone", crate::lifecycle::pending_dir(&runtime).display());
            }
            for (p, has_data) in found {
                println!("{}\t{}\t{}", p.graph_id, p.uri, if has_data { "data present (never served; see docs/operations.md)" } else { "no data" });
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
