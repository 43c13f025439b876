//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on a thread of its
//! own (tiny_http), so a slow scraper never holds up the run.

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use anyhow::Context as _;

/// What the endpoint serves: the metrics in the OpenMetrics text format, made at each scrape.
pub type Encode = Arc<dyn Fn() -> String + Send + Sync>;

pub struct Server {
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    pub fn start(addr: SocketAddr, encode: Encode) -> anyhow::Result<Server> {
        let http = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("serve metrics on {addr}"))?;
        let http = Arc::new(http);
        let bound = http
            .server_addr()
            .to_ip()
            .context("the metrics endpoint has no IP address")?;
        let serving = http.clone();
        let thread = std::thread::Builder::new()
            .name("fault-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &encode);
                }
            })
            .context("start the metrics thread")?;
        Ok(Server {
            http,
            thread: Some(thread),
            addr: bound,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(request: tiny_http::Request, encode: &Encode) {
    use super::exposition::{to_prometheus_text, wants_openmetrics, OPENMETRICS, PROMETHEUS_TEXT};
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or("");
    let accept = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Accept"))
        .map(|h| h.value.as_str().to_owned());
    let response = match (request.method(), path) {
        (Method::Get, "/metrics") => {
            let text = encode();
            let (body, kind) = match wants_openmetrics(accept.as_deref()) {
                true => (text, OPENMETRICS),
                false => (to_prometheus_text(&text), PROMETHEUS_TEXT),
            };
            let header = Header::from_bytes("Content-Type", kind).expect("valid header");
            Response::from_string(body).with_header(header)
        }
        (Method::Get, "/") => Response::from_string("fault: metrics are at /metrics\n"),
        _ => Response::from_string("not found\n").with_status_code(404),
    };
    let _ = request.respond(response);
}
