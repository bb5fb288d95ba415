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
    body::Body,
    extract::{rejection::JsonRejection, DefaultBodyLimit, MatchedPath, Path as UrlPath, Query, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::net::UnixListener;

use crate::{
    api::{
        routes, Attach, Call, CreateContainer, CreateNetwork, MonitorEvent, MonitorFilter, PortSpecs, MAX_BODY_BYTES,
    },
    daemon::{metrics, service, Agent},
    sys::dirs::MadeDirs,
};

/// The API on the agent's socket.
pub fn router(agent: Agent) -> Router {
    Router::new()
        .route(routes::NETWORKS, post(create_network).get(|s: State<Agent>| run(s, Ok(Call::ListNetworks))))
        .route(
            routes::NETWORK,
            get(|s: State<Agent>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::InspectNetwork(n))))
                .delete(|s: State<Agent>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::RemoveNetwork(n)))),
        )
        .route(routes::CONTAINERS, post(create_container).get(|s: State<Agent>| run(s, Ok(Call::ListContainers))))
        .route(
            routes::CONTAINER,
            get(|s: State<Agent>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::InspectContainer(n))))
                .delete(|s: State<Agent>, UrlPath(n): UrlPath<String>| run(s, Ok(Call::RemoveContainer(n)))),
        )
        .route(routes::ATTACHMENTS, post(attach).get(|s: State<Agent>| run(s, Ok(Call::ListAttachments))))
        .route(
            routes::ATTACHMENT,
            axum::routing::delete(|s: State<Agent>, UrlPath((id, i)): UrlPath<(String, String)>| {
                run(s, Ok(Call::Detach(id, i)))
            }),
        )
        .route(
            routes::ATTACHMENT_CHECK,
            get(|s: State<Agent>, UrlPath((id, i)): UrlPath<(String, String)>| {
                run(s, Ok(Call::CheckAttachment(id, i)))
            }),
        )
        .route(routes::PUBLISH, post(publish))
        .route(routes::UNPUBLISH, post(unpublish))
        .route(routes::STATUS, get(|s: State<Agent>| run(s, Ok(Call::Status))))
        .route(routes::CONNTRACK, get(|s: State<Agent>| run(s, Ok(Call::ListConntrack))))
        .route(routes::CONNTRACK_GC, post(|s: State<Agent>| run(s, Ok(Call::CollectConntrack))))
        .route(routes::DOWN, post(|s: State<Agent>| run(s, Ok(Call::Down))))
        .route(routes::MONITOR, get(monitor))
        .route(routes::METRICS, get(serve_metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route; see `bpfnet --help`".into()) })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(agent)
}

/// `--metrics-listen`: only the metrics, for a Prometheus that scrapes over TCP.
pub fn metrics_router(agent: Agent) -> Router {
    Router::new()
        .route(routes::METRICS, get(serve_metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, format!("only {} is served here", routes::METRICS)) })
        .with_state(agent)
}

async fn create_network(s: State<Agent>, body: Result<Json<CreateNetwork>, JsonRejection>) -> Response {
    run(s, body.map(|Json(b)| Call::CreateNetwork(b))).await
}

async fn create_container(s: State<Agent>, body: Result<Json<CreateContainer>, JsonRejection>) -> Response {
    run(s, body.map(|Json(b)| Call::CreateContainer(b))).await
}

async fn attach(s: State<Agent>, body: Result<Json<Attach>, JsonRejection>) -> Response {
    run(s, body.map(|Json(b)| Call::Attach(b))).await
}

async fn publish(
    s: State<Agent>,
    UrlPath(n): UrlPath<String>,
    body: Result<Json<PortSpecs>, JsonRejection>,
) -> Response {
    run(s, body.map(|Json(b)| Call::Publish(n, b))).await
}

async fn unpublish(
    s: State<Agent>,
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
async fn run(State(agent): State<Agent>, call: Result<Call, JsonRejection>) -> Response {
    let call = match call {
        Ok(call) => call,
        Err(rejection) => return error(rejection.status(), format!("invalid request body: {}", rejection.body_text())),
    };
    tracing::debug!(?call, "API call");
    let mut host = agent.host.lock().await;
    match service::execute(&mut host, call, &agent.monitor, &agent.metrics).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => {
            tracing::info!("refused: {err:#}");
            error(StatusCode::BAD_REQUEST, format!("{err:#}"))
        }
    }
}

/// `GET /v1/monitor`: the events that pass the filter, one JSON object a line, until the
/// client goes away. Replayed drops (`last`) come first.
async fn monitor(
    State(agent): State<Agent>,
    filter: Result<Query<MonitorFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let filter = match filter {
        Ok(Query(filter)) => filter,
        Err(rejection) => {
            return error(StatusCode::BAD_REQUEST, format!("invalid monitor filter: {}", rejection.body_text()))
        }
    };
    if let Err(message) = filter.validate() {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let mut subscription = agent.monitor.subscribe(filter);
    // The datapath writes what this listener wants before it hears that it listens.
    agent.monitor.sync(&agent.host).await;
    let replay = std::mem::take(&mut subscription.replay);
    let line = |event: &MonitorEvent| {
        let mut line = serde_json::to_vec(event).expect("events always serialize");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    };
    let replayed = futures::stream::iter(replay.iter().map(line).collect::<Vec<_>>());
    let live = futures::stream::unfold(subscription, move |mut subscription| async move {
        let event = subscription.next().await?;
        Some((line(&event), subscription))
    });
    let body = Body::from_stream(futures::StreamExt::chain(replayed, live));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it, else Prometheus text.
async fn serve_metrics(State(agent): State<Agent>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match agent.metrics.scrape(&agent.host, &agent.monitor, openmetrics).await {
        Ok(text) => {
            let content_type = if openmetrics { metrics::OPENMETRICS } else { metrics::PROMETHEUS_TEXT };
            ([(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the metrics: {e:#}")),
    }
}

/// Counts every request by its route's template, method and status.
async fn count_requests(State(agent): State<Agent>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    agent.metrics.count_request(&route, &method, response.status().as_u16());
    response
}

/// Binds the API socket, root-only (mode 0600). A socket another agent answers on is refused;
/// one left by an agent that died is replaced.
pub async fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    let made = match path.parent() {
        Some(dir) => MadeDirs::create(dir)?,
        None => MadeDirs::default(),
    };
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
    Ok((listener, SocketFile(path.to_owned(), made)))
}

/// Removes the socket file when the agent stops, and the directories made for it if empty.
pub struct SocketFile(PathBuf, MadeDirs);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        self.1.remove_empty();
    }
}
