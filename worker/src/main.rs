//! `omnigraph-worker`: the command line only; the library does the work.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use omnigraph_worker::limits::Limits;
use omnigraph_worker::serve::{self, Bind, Options};

#[derive(Parser)]
#[command(name = "omnigraph-worker", version, about = "Serves one typed property graph stored in Lance datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one graph over HTTP (loopback TCP by default, or a Unix socket).
    Serve(ServeArgs),
    /// Look at or remove a graph's objects on object storage (the gateway
    /// runs these, so it never links an object-store client itself).
    #[command(subcommand)]
    Storage(StorageCommand),
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Prints `{"uri": ..., "empty": true|false}`: whether anything lies under the URI.
    Empty {
        #[arg(long)]
        uri: String,
    },
    /// Deletes every object under an `s3://bucket/prefix` URI (whole path
    /// segments only) and prints `{"uri": ..., "deleted": N}`.
    Purge {
        #[arg(long)]
        uri: String,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("init_mode").args(["init", "init_if_empty"])))]
struct ServeArgs {
    /// The graph's id, as the gateway knows it.
    #[arg(long)]
    graph_id: String,
    /// Where the graph lives: a local path or `s3://bucket/prefix`
    /// (endpoint, region and credentials from the `AWS_*` environment).
    #[arg(long)]
    uri: String,
    /// TCP address to listen on.
    #[arg(long, conflicts_with = "socket", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Unix socket to listen on instead of TCP (the gateway uses this).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Create the graph from --schema; refuses a URI that is not empty.
    #[arg(long, requires = "schema")]
    init: bool,
    /// Create the graph from --schema when the URI is empty; open it otherwise.
    #[arg(long, requires = "schema")]
    init_if_empty: bool,
    /// The `.pg` schema file for --init or --init-if-empty.
    #[arg(long, requires = "init_mode")]
    schema: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The `limits:` block of DESIGN.md section 2, one flag each. The gateway
/// passes these by name, so the names are part of the contract.
#[derive(Args)]
struct LimitArgs {
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = Limits::default().max_body_bytes as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_body_bytes: u64,
    /// Largest /ingest body in bytes (413 above it); the body is streamed.
    #[arg(long, default_value_t = Limits::default().max_ingest_bytes, value_parser = clap::value_parser!(u64).range(1..))]
    max_ingest_bytes: u64,
    /// Most ops in one /change batch.
    #[arg(long, default_value_t = Limits::default().max_change_ops as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_change_ops: u64,
    /// Most traverse steps in one read.
    #[arg(long, default_value_t = Limits::default().max_traverse_steps as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_traverse_steps: u64,
    /// Most values in one `where` `in` list.
    #[arg(long, default_value_t = Limits::default().max_in_list as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_in_list: u64,
    /// Most nodes one read may visit (start set included).
    #[arg(long, default_value_t = Limits::default().max_visited as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_visited: u64,
    /// Longest a read may take, in milliseconds.
    #[arg(long, default_value_t = Limits::default().read_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout_ms: u64,
    /// Maintenance keeps each branch's newest N commits readable (the head always).
    #[arg(long, default_value_t = Limits::default().retain_commits)]
    retain_commits: u64,
    /// ... and every commit younger than N days (0: none by age).
    #[arg(long, default_value_t = Limits::default().retain_days)]
    retain_days: u64,
    /// Seconds between background maintenance runs (0: no timer).
    #[arg(long, default_value_t = Limits::default().maintenance_interval_s)]
    maintenance_interval_s: u64,
    /// Run maintenance in the background after this many commits (0: never by count).
    #[arg(long, default_value_t = Limits::default().maintenance_after_commits)]
    maintenance_after_commits: u64,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        Ok(Limits::from(omnigraph_worker::contract::limits::WorkerLimits {
            max_body_bytes: self.max_body_bytes,
            max_ingest_bytes: self.max_ingest_bytes,
            max_change_ops: self.max_change_ops,
            max_traverse_steps: self.max_traverse_steps,
            max_in_list: self.max_in_list,
            max_visited: self.max_visited,
            read_timeout_ms: self.read_timeout_ms,
            retain_commits: self.retain_commits,
            retain_days: self.retain_days,
            maintenance_interval_s: self.maintenance_interval_s,
            maintenance_after_commits: self.maintenance_after_commits,
        }))
    }
}

/// Caps glibc's malloc at two arenas, unless `MALLOC_ARENA_MAX` says
/// otherwise. By default each thread that allocates may get an arena of
/// its own (up to eight per core), and memory freed in one is not reused by
/// another: a million-line ingest, whose rows are built on one thread and
/// indexed on another while Lance writes on the runtime's, held 15 MiB more
/// at its peak with the default than with two. Called before any thread.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> anyhow::Result<()> {
    cap_malloc_arenas();
    // Read the key before any thread exists, then drop it from the environment.
    let worker_key = serve::take_worker_key()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OMNIGRAPH_LOG").unwrap_or_else(|_| "info,lance=warn".into());
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os(omnigraph_worker::contract::headers::LOG_BARE_ENV).is_some() {
        // Under the gateway: one timestamp per line (the gateway's), no colours.
        log.without_time().with_ansi(false).init();
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    let a = match Cli::parse().command {
        Command::Serve(a) => a,
        Command::Storage(op) => return storage(op),
    };
    omnigraph_worker::contract::GraphId::parse(&a.graph_id)?;
    let init_schema = match &a.schema {
        Some(p) => {
            let src = std::fs::read_to_string(p).with_context(|| format!("read schema {}", p.display()))?;
            omnigraph_worker::contract::GraphSchema::parse(&src).map_err(|e| anyhow::anyhow!(e.render(&p.display().to_string(), &src)))?;
            Some(src)
        }
        None => None,
    };
    let bind = match a.socket {
        Some(p) => Bind::Unix(p),
        None => Bind::Tcp(a.listen),
    };
    let limits = a.limits.limits()?;
    let opts = Options { graph_id: a.graph_id, uri: a.uri, bind, init_schema, init_if_empty: a.init_if_empty, limits };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match rt.block_on(serve::run(opts, worker_key)) {
        Ok(()) => Ok(()),
        Err(e @ serve::ServeError::Store(omnigraph_worker::store::StoreError::NotEmpty(_))) => {
            tracing::error!(error = %e, "not initialising");
            eprintln!("Error: {e}");
            std::process::exit(omnigraph_worker::contract::headers::EXIT_NOT_EMPTY);
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs one `storage` command and prints its answer as one JSON line.
fn storage(op: StorageCommand) -> anyhow::Result<()> {
    use omnigraph_worker::store::Store;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = match op {
        StorageCommand::Empty { uri } => {
            let empty = rt.block_on(Store::location_is_empty(&uri))?;
            serde_json::json!({"uri": uri, "empty": empty})
        }
        StorageCommand::Purge { uri } => {
            let deleted = rt.block_on(Store::purge_objects(&uri))?;
            serde_json::json!({"uri": uri, "deleted": deleted})
        }
    };
    println!("{out}");
    Ok(())
}
