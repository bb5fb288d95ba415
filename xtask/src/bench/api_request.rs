//! The control plane's API request alone: what `bpfnet publish` does once its process runs,
//! without the process. One HTTP/1.1 request on the agent's Unix socket, timed from the
//! connection to the last byte of the answer: the agent's work (checks, map update, its state
//! journal's record made durable) plus the HTTP round trip.
//!
//! Plain HTTP/1.1 over a std `UnixStream` (`Connection: close`, so the answer ends with the
//! connection): the bench needs no HTTP client for one request shape.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bound on the request, so a hung agent fails the measurement instead of the bench.
const LIMIT: Duration = Duration::from_secs(10);

/// `POST /v1/containers/CONTAINER/publish` with one `--publish` spec; returns how long the
/// request took. Fails unless the agent answered 200.
pub fn publish(socket: &Path, container: &str, spec: &str) -> Result<Duration> {
    // The sandbox's names need no percent-encoding; anything else would be a bench bug.
    if !container.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        bail!("container name {container:?} would need percent-encoding in the API path");
    }
    let body = serde_json::json!({ "specs": [spec] }).to_string();
    let request = format!(
        "POST /v1/containers/{container}/publish HTTP/1.1\r\nHost: bpfnet\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the bpfnet agent at {}", socket.display()))?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.write_all(request.as_bytes()).context("sending the publish request")?;
    stream.read_to_end(&mut answer).context("reading the agent's answer")?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("the agent refused `publish {container} {spec}`: {text}");
    }
    Ok(took)
}
