//! The control plane's API requests alone: what a `bpfnet` verb does once its process runs,
//! without the process. One HTTP/1.1 request on the agent's Unix socket, timed from the
//! connection to the last byte of the answer: the agent's work (checks, kernel objects, map
//! updates, its state journal's record made durable) plus the HTTP round trip.
//!
//! Plain HTTP/1.1 over a std `UnixStream` (`Connection: close`, so the answer ends with the
//! connection): the bench needs no HTTP client for these request shapes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bound on a request, so a hung agent fails the measurement instead of the bench.
const LIMIT: Duration = Duration::from_secs(30);

/// `METHOD path` with an optional JSON body; returns how long it took and the answer's body.
/// Fails unless the agent answered 200.
pub fn send(socket: &Path, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<(Duration, String)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bpfnet\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the bpfnet agent at {}", socket.display()))?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.write_all(request.as_bytes()).with_context(|| format!("sending {method} {path}"))?;
    stream.read_to_end(&mut answer).context("reading the agent's answer")?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("the agent refused `{method} {path}`: {text}");
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Ok((took, body))
}

/// The sandbox's names need no percent-encoding in a path; anything else would be a bug.
pub fn plain_name(name: &str) -> Result<&str> {
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        bail!("name {name:?} would need percent-encoding in the API path");
    }
    Ok(name)
}

/// `POST /v1/containers/CONTAINER/publish` with one `--publish` spec; returns how long the
/// request took.
pub fn publish(socket: &Path, container: &str, spec: &str) -> Result<Duration> {
    let path = format!("/v1/containers/{}/publish", plain_name(container)?);
    Ok(send(socket, "POST", &path, Some(&serde_json::json!({ "specs": [spec] })))?.0)
}
