//! `openapi.json`, generated from the route table: the gateway serves it at
//! `/openapi.json`, and `docs/openapi.json` is this output, checked by a test
//! so the committed copy can never go stale.

use serde_json::{json, Map, Value};

use crate::routes::{Body, BranchFrom, GatewayRoute, WorkerRoute, GATEWAY_ROUTES, WORKER_ROUTES};

const GRAPH_ID_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
const BRANCH_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$";

/// The schema of one query key, by name.
fn query_schema(key: &str) -> Value {
    match key {
        "branch" | "target" | "from" => json!({"type": "string", "pattern": BRANCH_PATTERN}),
        "purge" | "allow_data_loss" | "dry_run" => json!({"type": "string", "enum": ["true", "false"]}),
        _ => json!({"type": "string"}),
    }
}

fn query_params(params: &[&str], branch: Option<BranchFrom>) -> Vec<Value> {
    params
        .iter()
        .map(|k| {
            let required = *k == "branch" && branch == Some(BranchFrom::QueryRequired) || *k == "target";
            json!({"name": k, "in": "query", "required": required, "schema": query_schema(k)})
        })
        .collect()
}

fn path_param(name: &str) -> Value {
    let schema = match name {
        "graph_id" => json!({"type": "string", "pattern": GRAPH_ID_PATTERN}),
        "name" => json!({"type": "string", "pattern": BRANCH_PATTERN}),
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn path_params(pattern: &str) -> Vec<Value> {
    pattern.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).map(path_param).collect()
}

fn content(body: Body, schema: Value) -> Option<Value> {
    let media = body.media_type()?;
    let schema = if body == Body::Json { schema } else { json!({"type": "string"}) };
    Some(json!({ media: {"schema": schema} }))
}

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    codes
        .iter()
        .map(|c| ((*c).to_string(), json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})))
        .collect()
}

/// The response schema of a route, where the contract fixes one.
fn response_schema(method: &str, pattern: &str) -> Value {
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    match (method, pattern) {
        ("GET", "/graphs") => r("GraphList"),
        ("POST", "/graphs") | ("GET", "/graphs/{graph_id}") => r("Graph"),
        ("GET", "/readyz") => r("Ready"),
        ("POST", "/read") => r("ReadResponse"),
        ("POST", "/change") => r("ChangeResponse"),
        ("GET", "/snapshot") => r("Snapshot"),
        ("GET", "/commits") => r("CommitList"),
        ("GET", "/commits/{id}") => r("Commit"),
        ("POST", "/schema/apply") => r("SchemaApplyResponse"),
        ("POST", "/maintenance") => r("MaintenanceResponse"),
        _ => json!({"type": "object"}),
    }
}

fn operation(summary: &str, action: Option<&str>, params: Vec<Value>, request: Body, response: Body, ok: &str, schema: Value, errors: &[&str]) -> Value {
    let mut op = Map::new();
    let summary = match action {
        Some(a) => format!("{summary} (Cedar action `{a}`)"),
        None => summary.to_string(),
    };
    op.insert("summary".into(), json!(summary));
    if action.is_none() {
        op.insert("security".into(), json!([]));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(c) = content(request, json!({"type": "object"})) {
        op.insert("requestBody".into(), json!({"required": true, "content": c}));
    }
    let mut responses = Map::new();
    let mut okr = json!({"description": "success"});
    if let Some(c) = content(response, schema) {
        okr["content"] = c;
    }
    responses.insert(ok.into(), okr);
    responses.extend(error_responses(errors));
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

fn gateway_op(r: &GatewayRoute) -> Value {
    let ok = if r.method == "POST" && r.pattern == "/graphs" { "201" } else { "200" };
    let errors: &[&str] = match (r.action, r.pattern) {
        (None, "/readyz") => &["503"],
        (None, _) => &[],
        (Some(_), "/graphs") if r.method == "POST" => &["400", "401", "403", "409", "413", "429", "503"],
        (Some(_), _) => &["400", "401", "403", "404", "409", "429", "503"],
    };
    let params = query_params(r.params, None);
    operation(r.summary, r.action.map(|a| a.name()), params, r.request, r.response, ok, response_schema(r.method, r.pattern), errors)
}

fn worker_op(r: &WorkerRoute) -> Value {
    let ok = if r.method == "POST" && r.pattern == "/branches" { "201" } else { "200" };
    let mut params = path_params(r.pattern);
    params.extend(query_params(r.params, Some(r.branch)));
    // 412 answers a stale `?if_commit=`; 429 is the gateway's per-actor limits.
    let mut errors = vec!["400", "401", "403", "404", "405", "409", "413", "429", "503"];
    if r.params.contains(&"if_commit") {
        errors.push("412");
    }
    operation(r.summary, Some(r.action.name()), params, r.request, r.response, ok, response_schema(r.method, r.pattern), &errors)
}

fn insert(paths: &mut Map<String, Value>, path: String, method: &str, op: Value, shared: Vec<Value>) {
    let entry = paths.entry(path).or_insert_with(|| json!({}));
    if !shared.is_empty() {
        entry["parameters"] = Value::Array(shared);
    }
    entry[method.to_ascii_lowercase()] = op;
}

fn components() -> Value {
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "code"], "properties": {
                "error": {"type": "string"},
                "code": {"type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed", "conflict", "precondition_failed", "payload_too_large", "too_many_requests", "config_drift", "worker_unavailable", "not_implemented", "internal"]},
                "details": {}
            }},
            "Ready": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ready", "starting"]}}},
            "Graph": {"type": "object", "required": ["graph_id", "uri", "status"], "properties": {
                "graph_id": {"type": "string"}, "uri": {"type": "string"}, "status": {"type": "string", "enum": ["starting", "up", "down", "failed", "stopping", "idle"]}
            }},
            "GraphList": {"type": "object", "required": ["graphs"], "properties": {"graphs": {"type": "array", "items": {"$ref": "#/components/schemas/Graph"}}}},
            "ReadResponse": {"type": "object", "required": ["commit_id", "rows", "row_count", "next_cursor"], "properties": {
                "commit_id": {"type": "string"},
                "rows": {"type": "array", "items": {"type": "object", "required": ["type", "key", "hops", "props"], "properties": {
                    "type": {"type": "string"}, "key": {"type": "string"}, "hops": {"type": "integer"}, "props": {"type": "object"}
                }}},
                "row_count": {"type": "integer"},
                "next_cursor": {"type": "string", "nullable": true}
            }},
            "ChangeResponse": {"type": "object", "required": ["commit_id", "affected_nodes", "affected_edges", "actor_id"], "properties": {
                "commit_id": {"type": "string"}, "affected_nodes": {"type": "integer"}, "affected_edges": {"type": "integer"}, "actor_id": {"type": "string"}
            }},
            "Snapshot": {"type": "object", "required": ["branch", "commit_id", "tables"], "properties": {
                "branch": {"type": "string"}, "commit_id": {"type": "string"},
                "tables": {"type": "array", "items": {"type": "object", "required": ["name", "kind"], "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string", "enum": ["node", "edge"]}, "version": {"type": "integer", "nullable": true}, "rows": {"type": "integer", "nullable": true}
                }}}
            }},
            "Commit": {"type": "object", "required": ["commit_id", "parents", "branch", "actor_id", "request_id", "created_at", "tables"], "properties": {
                "commit_id": {"type": "string"}, "parents": {"type": "array", "items": {"type": "string"}}, "branch": {"type": "string"},
                "actor_id": {"type": "string"}, "request_id": {"type": "string", "nullable": true}, "created_at": {"type": "string"}, "tables": {"type": "object"}
            }},
            "CommitList": {"type": "object", "required": ["commits"], "properties": {"commits": {"type": "array", "items": {"$ref": "#/components/schemas/Commit"}}}},
            "MaintenanceResponse": {"type": "object", "required": ["compacted_fragments", "removed_versions", "bytes_freed"], "properties": {
                "compacted_fragments": {"type": "integer"}, "removed_versions": {"type": "integer"}, "bytes_freed": {"type": "integer"}
            }},
            "SchemaApplyResponse": {"type": "object", "required": ["commit_id", "steps"], "properties": {
                "commit_id": {"type": "string", "nullable": true}, "dry_run": {"type": "boolean"},
                "steps": {"type": "array", "items": {"type": "object", "required": ["kind", "type"], "properties": {
                    "kind": {"type": "string", "enum": ["add_type", "add_property", "drop_type", "drop_property"]}, "type": {"type": "string"}, "property": {"type": "string"}
                }}}
            }}
        }
    })
}

/// The whole description: the gateway's own routes, then every worker route
/// under `/graphs/{graph_id}`.
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    for r in GATEWAY_ROUTES {
        insert(&mut paths, r.pattern.to_string(), r.method, gateway_op(r), path_params(r.pattern));
    }
    for r in WORKER_ROUTES {
        let path = format!("/graphs/{{graph_id}}{}", r.pattern);
        insert(&mut paths, path, r.method, worker_op(r), vec![path_param("graph_id")]);
    }
    // Path-level parameters cover the graph id; keep operation-level ones for the rest.
    for item in paths.values_mut() {
        let shared: Vec<String> = item["parameters"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect()).unwrap_or_default();
        if let Some(obj) = item.as_object_mut() {
            for (k, op) in obj.iter_mut() {
                if k == "parameters" {
                    continue;
                }
                if let Some(ps) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    ps.retain(|p| !(p["in"] == "path" && shared.iter().any(|s| p["name"] == s.as_str())));
                    if ps.is_empty() {
                        op.as_object_mut().map(|o| o.remove("parameters"));
                    }
                }
            }
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Omnigraph Gateway",
            "version": version,
            "description": "Generated from the route table in omnigraph-contract. Every route needs `Authorization: Bearer <token>` except those marked with an empty security list. Errors are {\"error\", \"code\", \"details\"?}."
        },
        "components": components(),
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

/// `v` with every object's keys in sorted order, whether or not another
/// crate in the build turned on serde_json's `preserve_order`.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// [`document`] as the committed text: pretty JSON, keys sorted, with a final newline.
pub fn render(version: &str) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(document(version))).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    /// `docs/openapi.json` is exactly what the table generates. To refresh it
    /// after changing the table: `OMNIGRAPH_BLESS=1 cargo test -p omnigraph-contract`.
    #[test]
    fn the_committed_description_is_not_stale() {
        let fresh = render(env!("CARGO_PKG_VERSION"));
        if std::env::var_os("OMNIGRAPH_BLESS").is_some() {
            std::fs::write(DOCS, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(DOCS).unwrap_or_default();
        assert!(committed == fresh, "docs/openapi.json is stale: run `OMNIGRAPH_BLESS=1 cargo test -p omnigraph-contract` and commit it");
    }

    #[test]
    fn every_route_is_described_once() {
        let doc = document("t");
        let paths = doc["paths"].as_object().unwrap();
        for r in WORKER_ROUTES {
            let p = format!("/graphs/{{graph_id}}{}", r.pattern);
            let op = &paths[&p][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{p} {}", r.method);
            assert!(op["summary"].as_str().unwrap().contains(r.action.name()));
            for k in r.params {
                assert!(op["parameters"].as_array().unwrap().iter().any(|x| x["name"] == *k), "{p} ?{k}");
            }
        }
        for r in GATEWAY_ROUTES {
            assert!(paths[r.pattern][r.method.to_ascii_lowercase()].is_object(), "{} {}", r.method, r.pattern);
        }
        assert_eq!(paths["/healthz"]["get"]["security"], json!([]));
    }
}
