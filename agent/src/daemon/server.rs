//! The agent's side of the API: routes of [`crate::api`] to [`crate::daemon::service::execute`], one
//! operation at a time on the host. Bad requests get a 4xx and `{"error": ...}`; nothing a
//! client sends can stop the agent.
use std::{
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use axum::{
    extract::{rejection::JsonRejection, DefaultBodyLimit, Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::net::UnixListener;

use crate::{
    api::{routes, Call, CreateContainer, CreateNetwork, PortSpecs, MAX_BODY_BYTES},
    daemon::service,
    daemon::SharedHost,
};

pub fn router(host: SharedHost) -> Router {
    Router::new()
        .route(routes::NETWORKS, post(create_network).get(|s: State<SharedHost>| run(s, Ok(Call::ListNetworks))))
        .route(
            routes::NETWORK,
            get(|s: State<SharedHost>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::InspectNetwork(n))))
                .delete(|s: State<SharedHost>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::RemoveNetwork(n)))),
        )
        .route(routes::CONTAINERS, post(create_container).get(|s: State<SharedHost>| run(s, Ok(Call::ListContainers))))
        .route(
            routes::CONTAINER,
            axum::routing::delete(|s: State<SharedHost>, UrlPath(n): UrlPath<String>| {
                run(s, Ok(Call::RemoveContainer(n)))
            }),
        )
        .route(routes::PUBLISH, post(publish))
        .route(routes::UNPUBLISH, post(unpublish))
        .route(routes::STATUS, get(|s: State<SharedHost>| run(s, Ok(Call::Status))))
        .route(routes::CONNTRACK, get(|s: State<SharedHost>| run(s, Ok(Call::ListConntrack))))
        .route(routes::CONNTRACK_GC, post(|s: State<SharedHost>| run(s, Ok(Call::CollectConntrack))))
        .route(routes::DOWN, post(|s: State<SharedHost>| run(s, Ok(Call::Down))))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route; see `bpfnet --help`".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(host)
}

async fn create_network(s: State<SharedHost>, body: Result<Json<CreateNetwork>, JsonRejection>) -> Response {
    run(s, body.map(|Json(b)| Call::CreateNetwork(b))).await
}

async fn create_container(s: State<SharedHost>, body: Result<Json<CreateContainer>, JsonRejection>) -> Response {
    run(s, body.map(|Json(b)| Call::CreateContainer(b))).await
}

async fn publish(
    s: State<SharedHost>,
    UrlPath(n): UrlPath<String>,
    body: Result<Json<PortSpecs>, JsonRejection>,
) -> Response {
    run(s, body.map(|Json(b)| Call::Publish(n, b))).await
}

async fn unpublish(
    s: State<SharedHost>,
    UrlPath(n): UrlPath<String>,
    body: Result<Json<PortSpecs>, JsonRejection>,
) -> Response {
    run(s, body.map(|Json(b)| Call::Unpublish(n, b))).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Runs one call on the host. Operation errors are the client's to read (400): every
/// operation validates its input and rolls back what it started when it fails.
async fn run(State(host): State<SharedHost>, call: Result<Call, JsonRejection>) -> Response {
    let call = match call {
        Ok(call) => call,
        Err(rejection) => return error(rejection.status(), format!("invalid request body: {}", rejection.body_text())),
    };
    tracing::debug!(?call, "API call");
    let mut host = host.lock().await;
    match service::execute(&mut host, call).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => {
            tracing::info!("refused: {err:#}");
            error(StatusCode::BAD_REQUEST, format!("{err:#}"))
        }
    }
}

/// Binds the API socket, root-only (mode 0600). A socket another agent answers on is refused;
/// one left by an agent that died is replaced.
pub async fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => bail!(
            "another bpfnet agent is already listening on {}; stop it first, or give this one its own --socket",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(_) => {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?
        }
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} root-only", path.display()))?;
    Ok((listener, SocketFile(path.to_owned())))
}

/// Removes the socket file when the agent stops.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
