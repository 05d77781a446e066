//! Talking HTTP to an Azure Functions custom handler on this machine: finding it a port,
//! waiting until it listens, and one request at a time over a fresh loopback connection.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How often a starting handler's port is tried.
const LISTEN_POLL: Duration = Duration::from_millis(50);

/// A request to the handler.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    /// Path and query, as `/api/orders?x=1` or `/orders`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The handler's answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A port no one listens on now (the handler is told it and binds it).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// A custom handler's `defaultExecutablePath`: a file of the app (by its path from the app's
/// root) when there is one, else a program found through `PATH` (`python3`, `node`).
pub(crate) fn app_program(root: &Path, program: &str) -> String {
    let in_app = root.join(program);
    let candidates = [in_app.clone(), in_app.with_extension("exe")];
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) if cfg!(windows) || found == &in_app => found.to_string_lossy().into_owned(),
        _ => program.to_string(),
    }
}

/// Says `ready` once something accepts connections on the port; gives up (dropping `ready`)
/// when the handler is found dead.
pub(crate) async fn wait_listening(port: u16, ready: oneshot::Sender<()>, dead: impl Fn() -> bool) {
    loop {
        if dead() || ready.is_closed() {
            return;
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let _ = ready.send(());
            return;
        }
        tokio::time::sleep(LISTEN_POLL).await;
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing took the connection: the handler is gone or broken.
    Connect(String),
    /// The exchange went wrong (cut short, malformed, too large): this request only.
    Exchange(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) | SendError::Exchange(e) => f.write_str(e),
        }
    }
}

/// Sends one request and reads the answer, its body up to `max_body` bytes.
pub(crate) async fn send(port: u16, req: Request, max_body: usize) -> Result<Response, SendError> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| SendError::Connect(format!("connect to port {port}: {e}")))?;
    exchange(stream, port, req, max_body).await.map_err(SendError::Exchange)
}

async fn exchange(stream: TcpStream, port: u16, req: Request, max_body: usize) -> Result<Response, String> {
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven beside the request and ends with it.
    let driver = tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(req.target.as_str())
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"));
    for (k, v) in &req.headers {
        // The connection's own headers are this client's to set.
        if !["host", "content-length", "transfer-encoding", "connection"].contains(&k.to_ascii_lowercase().as_str()) {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    let request = builder.body(Full::new(Bytes::from(req.body))).map_err(|e| format!("bad request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("{} {}: {e}", req.method, req.target))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer (at most {max_body} bytes): {e}"))?
        .to_bytes();
    driver.abort();
    Ok(Response { status, headers, body })
}
