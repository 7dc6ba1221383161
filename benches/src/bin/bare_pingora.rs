//! A bare Pingora reverse proxy: no authn, no Cedar, no header rewrite, no
//! metrics; only `upstream_peer`. The gateway latency harness puts it in
//! front of a worker beside the gateway, so that what Pingora itself costs on
//! this machine and what the gateway's phases add are measured apart.
//!
//! `bare_pingora <listen 127.0.0.1:port> <upstream: host:port | /path/to.sock>`

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let peer = if self.upstream.starts_with('/') {
            HttpPeer::new_uds(&self.upstream, false, String::new())?
        } else {
            HttpPeer::new(self.upstream.as_str(), false, String::new())
        };
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora <listen addr> <upstream addr or socket path>");
        std::process::exit(2);
    };
    let pid = std::process::id();
    let conf = ServerConf { threads: 1, pid_file: format!("/tmp/bare_pingora.{pid}.pid"), upgrade_sock: format!("/tmp/bare_pingora.{pid}.sock"), ..ServerConf::default() };
    let mut conf = conf;
    conf.work_stealing = std::env::var("BARE_WORK_STEALING").map_or(true, |v| v != "0");
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    println!("bare_pingora listening on http://{listen}");
    server.run_forever();
}
