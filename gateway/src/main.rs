//! `omnigraph-gateway`: the command line only; the library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use omnigraph_gateway::config::Loaded;

#[derive(Parser)]
#[command(name = "omnigraph-gateway", version, about = "Policy-first authorization gateway for Omnigraph graph workers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every graph in the config behind one port.
    Serve {
        #[arg(long, default_value = "omnigraph.yaml")]
        config: PathBuf,
        /// Start even though no authentication is configured (every caller is "anonymous").
        #[arg(long)]
        insecure_no_auth: bool,
        /// Listen here instead of `server.bind`.
        #[arg(long)]
        bind: Option<String>,
        /// Put worker sockets here instead of `server.runtime_dir`.
        #[arg(long)]
        runtime_dir: Option<String>,
    },
    /// Graphs on a running gateway (over HTTP), and orphaned creates (on disk).
    Graphs {
        #[command(subcommand)]
        command: omnigraph_gateway::cli_graphs::GraphsCommand,
    },
    /// Static tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Cedar policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token once, with the tokens-file entry that admits it.
    New {
        #[arg(long)]
        actor: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse and strictly validate every policy file the config names.
    Validate {
        #[arg(long, default_value = "omnigraph.yaml")]
        config: PathBuf,
    },
    /// Show the decision for one request, and the policies behind it.
    Explain {
        #[arg(long, default_value = "omnigraph.yaml")]
        config: PathBuf,
        /// The actor; its groups and tenant come from the static tokens file unless given.
        #[arg(long)]
        actor: String,
        #[arg(long)]
        action: String,
        /// The graph (omit for server actions).
        #[arg(long)]
        graph: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// The base of a new branch, for branch_create (default main).
        #[arg(long)]
        from: Option<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Run a file of policy test cases; exits 1 if any case fails.
    Test {
        /// The cases (YAML: `cases: [{name, actor, action, graph?, branch?, target?, from?, expect, policies?}]`).
        file: PathBuf,
        #[arg(long, default_value = "omnigraph.yaml")]
        config: PathBuf,
    },
}

/// mimalloc instead of glibc's malloc. Under a steady load the gateway's
/// live heap stays flat (heaptrack), but with glibc's allocator its arena
/// kept growing, about 12 KiB a second at 200 requests a second (the soak,
/// docs/reliability.md): freed chunks were not reused for the next
/// requests' allocations, and the arena's top crept up.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OMNIGRAPH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, insecure_no_auth, bind, runtime_dir } => {
            let mut loaded = Loaded::load(&config)?;
            if let Some(b) = bind {
                loaded.config.server.bind = b;
            }
            if let Some(r) = runtime_dir {
                loaded.config.server.runtime_dir = r;
            }
            omnigraph_gateway::serve::run(loaded, insecure_no_auth)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Graphs { command } => omnigraph_gateway::cli_graphs::run(command),
        Command::Token { command: TokenCommand::New { actor } } => {
            let (token, entry) = omnigraph_gateway::authn::static_tokens::new_token(&actor);
            println!("token (shown once, store it now): {token}\n\nadd this entry under `tokens:` in your static tokens file:\n{entry}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Validate { config } } => {
            let loaded = Loaded::load(&config)?;
            let engine = omnigraph_gateway::app::load_engine(&loaded)?;
            let (server, graphs) = omnigraph_gateway::app::load_policies(&engine, &loaded)?;
            println!("ok: {} server policies; {} graphs", server.len(), graphs.len());
            for (id, p) in graphs {
                println!("  {id}: {} graph policies", p.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Explain { config, actor, action, graph, branch, target, from, groups, tenant } } => {
            let loaded = Loaded::load(&config)?;
            let spec = omnigraph_gateway::explain::ActorSpec { id: actor, groups, tenant, ..Default::default() };
            let q = omnigraph_gateway::explain::Question {
                action: &action,
                graph: graph.as_deref(),
                branch: branch.as_deref(),
                target: target.as_deref(),
                from: from.as_deref(),
            };
            let out = omnigraph_gateway::explain::explain(&loaded, &spec, q)?;
            println!("{}", out.text);
            Ok(if out.allowed { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
        Command::Policy { command: PolicyCommand::Test { file, config } } => {
            let loaded = Loaded::load(&config)?;
            let book = omnigraph_gateway::explain::PolicyBook::load(&loaded)?;
            let cases = omnigraph_gateway::policy_test::load(&file)?;
            let outcomes = omnigraph_gateway::policy_test::run(&book, &cases);
            print!("{}", omnigraph_gateway::policy_test::render(&outcomes));
            Ok(if outcomes.iter().all(|o| o.passed()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
