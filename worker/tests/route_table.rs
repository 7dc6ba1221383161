//! The worker serves exactly the contract's route table: every row answers
//! under its method (never the router's 404 or 405), another method on a
//! known path is 405, and a path outside the table is 404.

use std::sync::Arc;

use omnigraph_worker::contract::routes::WORKER_ROUTES;
use omnigraph_worker::http::{router, AppState};
use omnigraph_worker::limits::Limits;
use omnigraph_worker::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"match": {"type": "Person"}}"#;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_route_table() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g");
    let store = Store::init("g", uri.to_str().unwrap(), "node Person { name: String @key }\n", "test").await.unwrap();
    let app = router(AppState { store: Arc::new(store), worker_key: None, limits: Limits::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    for r in WORKER_ROUTES {
        let path = r.pattern.replace("{name}", "dev").replace("{id}", "01X");
        let (code, text) = status(addr, r.method, &path).await;
        assert!(!text.contains("no such route") && code != 405, "{}: {code} {text}", r.label);
        let other = if r.method == "PATCH" { "PUT" } else { "PATCH" };
        let (code, _) = status(addr, other, &path).await;
        assert_eq!(code, 405, "{other} {path}");
    }
    let (code, text) = status(addr, "GET", "/not-in-the-table").await;
    assert!(code == 404 && text.contains("no such route"), "{text}");
}
