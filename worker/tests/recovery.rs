//! A crash between a change's table writes and its commit row must leave
//! nothing visible, and the next open must put the tables back in step, on
//! main and on a branch.


use arrow_array::RecordBatchIterator;
use lance::dataset::{Dataset, WriteMode};
use omnigraph_worker::change;
use omnigraph_worker::store::location::Location;
use omnigraph_worker::store::{tables, ApplyError, Author, Store, WriteTo};
use serde_json::json;

const SCHEMA: &str = "node Person { name: String @key age: I64? }\nedge Knows: Person -> Person\n";

async fn apply(store: &Store, ops: serde_json::Value) {
    let ops = change::parse_body(&json!({ "ops": ops })).unwrap();
    match store.apply(WriteTo::main(), &Author::new("test"), |base| change::plan(&base.schema.graph, base, ops)).await {
        Ok(_) => {}
        Err(ApplyError::Plan(e)) => panic!("plan: {e}"),
        Err(ApplyError::Store(e)) => panic!("store: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_table_write_is_invisible_and_repaired_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g");
    let uri = uri.to_str().unwrap();
    let store = Store::init("g", uri, SCHEMA, "test").await.unwrap();
    apply(&store, json!([{"upsert": {"type": "Person", "key": "a", "props": {"age": 1}}}])).await;
    let pinned = store.head("main").unwrap().commit.tables.get("Person").unwrap().version;
    let schema = store.head("main").unwrap().schema.graph.clone();
    drop(store);

    // The "crash": a table write lands, its commit row never does.
    let loc = Location::parse(uri).unwrap();
    let mut ds = loc.open("Person", None).await.unwrap();
    let ghost = omnigraph_worker::store::state::props(json!({"name": "ghost", "age": 9}).as_object().unwrap().clone());
    let batch = tables::node_batch(schema.node("Person").unwrap(), &[&ghost]).unwrap();
    let arrow_schema = batch.schema();
    ds.append(RecordBatchIterator::new(vec![Ok(batch)], arrow_schema), Some(loc.write_params(WriteMode::Append))).await.unwrap();
    assert_eq!(ds.version().version, pinned + 1);

    let store = Store::open("g", uri).await.unwrap();
    let head = store.head("main").unwrap();
    assert!(head.data.nodes["Person"].rows.get("ghost").is_none(), "the uncommitted row is not visible");
    assert_eq!(head.data.nodes["Person"].rows.len(), 1);
    let latest = loc.open("Person", None).await.unwrap();
    assert_eq!(latest.count_rows(None).await.unwrap(), 1, "the table was restored to the pinned content");

    // The next change builds on the committed state, not on the ghost.
    apply(&store, json!([{"upsert": {"type": "Person", "key": "b", "props": {}}}])).await;
    drop(store);
    let store = Store::open("g", uri).await.unwrap();
    let mut keys: Vec<String> = store.head("main").unwrap().data.nodes["Person"].rows.keys().map(|k| k.to_string()).collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "b"]);
}

/// The same on a branch: a crash after a change extended the branch's own
/// Lance branch of a table, and a crash after a change forked a new one.
/// Neither is visible after the restart, main is untouched, and the branch
/// writes on from its committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_write_on_a_branch_is_invisible_and_repaired_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g");
    let uri = uri.to_str().unwrap();
    let store = Store::init("g", uri, SCHEMA, "test").await.unwrap();
    apply_on(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {}}}])).await;
    store.create_branch("dev", "main", &Author::new("test")).await.unwrap();
    apply_on(&store, "dev", json!([{"upsert": {"type": "Person", "key": "b", "props": {}}}])).await;
    let pin = store.head("dev").unwrap().commit.tables.get("Person").unwrap().clone();
    let lineage = pin.lineage.clone().expect("dev's first write forked Person");
    let schema = store.head("main").unwrap().schema.graph.clone();
    drop(store);

    let loc = Location::parse(uri).unwrap();
    let ghost = omnigraph_worker::store::state::props(json!({"name": "ghost"}).as_object().unwrap().clone());
    let batch = tables::node_batch(schema.node("Person").unwrap(), &[&ghost]).unwrap();
    // An extension of dev's lineage that never got its commit row...
    let mut ds = loc.open_on("Person", Some(&lineage), None).await.unwrap();
    assert_eq!(ds.version().version, pin.version);
    ds.append(RecordBatchIterator::new(vec![Ok(batch.clone())], batch.schema()), Some(loc.write_params(WriteMode::Append))).await.unwrap();
    // ...and a fork that never got one either.
    let mut forked = Dataset::clone(&ds).create_branch("og-crashed", (Some(lineage.as_ref()), Some(pin.version)), None).await.unwrap();
    forked.append(RecordBatchIterator::new(vec![Ok(batch.clone())], batch.schema()), Some(loc.write_params(WriteMode::Append))).await.unwrap();

    let store = Store::open("g", uri).await.unwrap();
    let keys = |store: &Store, b: &str| {
        let mut k: Vec<String> = store.head(b).unwrap().data.nodes["Person"].rows.keys().map(|k| k.to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(keys(&store, "dev"), ["a", "b"]);
    assert_eq!(keys(&store, "main"), ["a"]);
    let latest = loc.open_on("Person", Some(&lineage), None).await.unwrap();
    assert_eq!(latest.count_rows(None).await.unwrap(), 2, "dev's lineage was restored to its pinned content");
    apply_on(&store, "dev", json!([{"upsert": {"type": "Person", "key": "c", "props": {}}}])).await;
    apply_on(&store, "main", json!([{"upsert": {"type": "Person", "key": "m", "props": {}}}])).await;
    drop(store);
    let store = Store::open("g", uri).await.unwrap();
    assert_eq!(keys(&store, "dev"), ["a", "b", "c"]);
    assert_eq!(keys(&store, "main"), ["a", "m"]);
}

async fn apply_on(store: &Store, branch: &str, ops: serde_json::Value) {
    let ops = change::parse_body(&json!({ "ops": ops })).unwrap();
    match store.apply(WriteTo::branch(branch), &Author::new("test"), |base| change::plan(&base.schema.graph, base, ops)).await {
        Ok(_) => {}
        Err(ApplyError::Plan(e)) => panic!("plan: {e}"),
        Err(ApplyError::Store(e)) => panic!("store: {e}"),
    }
}

/// Power loss cannot be simulated here, so this pins the order of the
/// system calls that make a commit durable, traced with `strace` on this
/// very process: a table's data file is renamed into place without a sync
/// (Lance's own local writer), then `syncfs` makes it durable, and only
/// then are the commit log's files written, each fsynced before it is
/// renamed or linked into place (the logs go through the fsyncing object
/// store). See docs/worker.md, "Durability".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_a_commit_publishes_is_synced_before_its_row() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g");
    let store = Store::init("g", uri.to_str().unwrap(), SCHEMA, "test").await.unwrap();
    apply(&store, json!([{"upsert": {"type": "Person", "key": "a"}}])).await;

    let trace = tmp.path().join("trace.txt");
    // Under Yama's `ptrace_scope` 1 a child may not trace its parent unless
    // the parent says so (a non-root CI user); harmless as root.
    // SAFETY: prctl with these arguments only sets this process's ptracer.
    unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) };
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=syncfs,fsync,fdatasync,rename,renameat,renameat2,link,linkat", "-o"])
        .arg(&trace)
        .args(["-p", &std::process::id().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace must be installed (`make deps` installs it)");
    // strace says so on stderr once it has attached to every thread.
    let mut stderr = std::io::BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("attached") {
        line.clear();
    }
    assert!(line.contains("attached"), "strace did not attach: {line}");

    apply(&store, json!([{"upsert": {"type": "Person", "key": "b"}}])).await;
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();

    // Only this test's graph: the tests of this file run at once, in this process.
    let ours = tmp.path().to_str().unwrap().to_string();
    let calls: Vec<String> = std::fs::read_to_string(&trace).unwrap().lines().filter(|c| c.contains(&ours)).map(str::to_string).collect();
    let first = |what: &dyn Fn(&str) -> bool| calls.iter().position(|c| what(c));
    let data = first(&|c| c.contains("rename") && c.contains("/Person.lance/data/")).expect("the Person data file is renamed into place");
    let sync = first(&|c| c.contains("syncfs(")).expect("a syncfs");
    let log = first(&|c| c.contains("/_commits.lance/")).expect("the commit log is written");
    assert!(data < sync && sync < log, "data file at {data}, syncfs at {sync}, first commit-log call at {log}:\n{}", calls.join("\n"));
    // Every commit-log data file is fsynced before it is put in place.
    let log_fsync = first(&|c| c.starts_with_any_pid("fsync(") && c.contains("/_commits.lance/data/")).expect("an fsync of the commit log's data file");
    let log_publish = calls.iter().rposition(|c| (c.contains("rename") || c.contains("link")) && c.contains("/_commits.lance/data/")).expect("the commit log's data file is put in place");
    assert!(log_fsync < log_publish, "the commit log's data file is fsynced (call {log_fsync}) before it is put in place (call {log_publish})");
}

/// `strace -f` prefixes each line with the thread id.
trait CallLine {
    fn starts_with_any_pid(&self, call: &str) -> bool;
}

impl CallLine for str {
    fn starts_with_any_pid(&self, call: &str) -> bool {
        self.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with(call)
    }
}
