//! The CLI's side of the API: one HTTP request on the agent's Unix socket per command.
use std::{io::ErrorKind, path::Path};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::api::{Call, Method};

/// No agent answers on the socket (none runs there, or it is not a socket): the caller may
/// retry later, unlike after a refusal.
#[derive(Debug, thiserror::Error)]
#[error(
    "no bpfnet agent is running at {}: start it with `bpfnet agent` (see README), or point \
     --socket / BPFNET_SOCKET at its socket",
    socket.display()
)]
pub struct Unreachable {
    pub socket: std::path::PathBuf,
}

/// The agent answered, and refused the call: its message says why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Makes `call` and reads its answer as `T`, the type the agent answers it with.
pub async fn call<T: DeserializeOwned>(socket: &Path, call: &Call) -> Result<T> {
    let answer = raw_call(socket, call).await?;
    serde_json::from_value(answer.clone()).with_context(|| {
        format!("the agent's answer is not what this bpfnet expects (is the agent another version?): {answer}")
    })
}

async fn raw_call(socket: &Path, call: &Call) -> Result<Value> {
    let response = send(socket, call).await?;
    let bytes = response.into_body().collect().await.context("reading the agent's answer")?.to_bytes();
    serde_json::from_slice(&bytes)
        .with_context(|| format!("the agent answered with invalid JSON: {}", String::from_utf8_lossy(&bytes)))
}

/// Makes `call`, whose answer is a stream of JSON lines: `started` once the agent accepted it,
/// then each line to `each` as a `T`, until the agent ends the stream or `each` says stop
/// (false).
pub async fn stream<T: DeserializeOwned>(
    socket: &Path,
    call: &Call,
    started: impl FnOnce(),
    mut each: impl FnMut(T) -> Result<bool>,
) -> Result<()> {
    let mut body = send(socket, call).await?.into_body();
    started();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the agent's stream")?;
        let Some(data) = frame.data_ref() else { continue };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let item = serde_json::from_slice(&line).with_context(|| {
                format!("the agent sent what this bpfnet does not expect: {}", String::from_utf8_lossy(&line))
            })?;
            if !each(item)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sends `call` and returns the response if the agent accepted it, else its error message.
async fn send(socket: &Path, call: &Call) -> Result<hyper::Response<hyper::body::Incoming>> {
    let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow!(Unreachable { socket: socket.to_owned() }),
        ErrorKind::PermissionDenied => {
            anyhow!("permission denied on {}: the bpfnet API is for root only (run as root)", socket.display())
        }
        _ => anyhow!(e).context(format!("connecting to the bpfnet agent at {}", socket.display())),
    })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("talking to the bpfnet agent")?;
    tokio::spawn(connection);
    let (method, path, body) = call.request();
    let method = match method {
        Method::Get => hyper::Method::GET,
        Method::Post => hyper::Method::POST,
        Method::Delete => hyper::Method::DELETE,
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(&path)
        .header(hyper::header::HOST, "bpfnet")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await.context("sending the request to the bpfnet agent")?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let bytes = response.into_body().collect().await.context("reading the agent's answer")?.to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!("the agent answered {status} with invalid JSON: {}", String::from_utf8_lossy(&bytes))
    })?;
    let message = answer["error"].as_str().unwrap_or("the agent refused the request without saying why");
    Err(Refused(message.to_owned()).into())
}
