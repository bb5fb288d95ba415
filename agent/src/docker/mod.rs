//! Docker's remote network driver (libnetwork's plugin protocol), served by the agent on its
//! own unix socket (`--docker-plugin-socket`, e.g. `/run/docker/plugins/bpfnet.sock`, where
//! dockerd discovers it as the driver `bpfnet`). dockerd POSTs JSON to `/Plugin.Activate` and
//! `/NetworkDriver.*`; each call runs on the agent's one host, like an API call, and a failed
//! one answers `{"Err": "..."}`. The agent owns the datapath and its state: the driver keeps
//! nothing of its own.
//!
//! - `protocol`: the requests and answers, typed;
//! - `driver`: what each call does on the host.
pub mod driver;
pub mod protocol;

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    docker::protocol::{
        ActivateAnswer, CreateEndpointRequest, CreateNetworkRequest, DeleteNetworkRequest, DiscoveryRequest, Empty,
        EndpointRequest, ErrorAnswer, ExternalConnectivityRequest, JoinRequest, CONTENT_TYPE,
    },
    host::Host,
};

/// The agent's one host, shared with its API (one operation at a time).
type SharedHost = std::sync::Arc<tokio::sync::Mutex<Host>>;

/// The protocol's routes on the plugin socket.
pub fn router(host: SharedHost) -> Router {
    Router::new()
        // Every handler reads the body, also those that need nothing of it: a connection
        // closed before the client finished sending fails its write (EPIPE) before it reads
        // the answer.
        .route(
            "/Plugin.Activate",
            post(|_: Bytes| async { answer(ActivateAnswer { implements: vec!["NetworkDriver".into()] }) }),
        )
        .route("/NetworkDriver.GetCapabilities", post(|_: Bytes| async { answer(driver::capabilities()) }))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(program_external_connectivity))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(revoke_external_connectivity))
        .route("/NetworkDriver.DiscoverNew", post(discovery))
        .route("/NetworkDriver.DiscoverDelete", post(discovery))
        .fallback(|uri: axum::http::Uri, _: Bytes| async move {
            failed(
                StatusCode::NOT_FOUND,
                format!("bpfnet's network driver does not implement {uri} (it is a local-scope NetworkDriver)"),
            )
        })
        .with_state(host)
}

async fn create_network(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: CreateNetworkRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::create_network(&mut host, &request).await.map(|()| Empty {}))
}

async fn delete_network(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: DeleteNetworkRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::delete_network(&mut host, &request.network_id).await.map(|()| Empty {}))
}

async fn create_endpoint(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: CreateEndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::create_endpoint(&mut host, &request).await)
}

async fn delete_endpoint(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: EndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::delete_endpoint(&mut host, &request).await.map(|()| Empty {}))
}

async fn endpoint_info(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: EndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    reply(driver::endpoint_info(&*host.lock().await, &request))
}

async fn join(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: JoinRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    reply(driver::join(&*host.lock().await, &request))
}

/// dockerd moves the interface back into its own namespace itself; DeleteEndpoint removes it.
async fn leave(body: Bytes) -> Response {
    match parse::<EndpointRequest>(&body) {
        Ok(_) => answer(Empty {}),
        Err(refused) => refused.into_response(),
    }
}

async fn program_external_connectivity(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: ExternalConnectivityRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::program_external_connectivity(&mut host, &request).await.map(|()| Empty {}))
}

async fn revoke_external_connectivity(State(host): State<SharedHost>, body: Bytes) -> Response {
    let request: EndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::revoke_external_connectivity(&mut host, &request.endpoint_id).await.map(|()| Empty {}))
}

/// Swarm's node discovery: nothing to do for a local driver.
async fn discovery(body: Bytes) -> Response {
    match parse::<DiscoveryRequest>(&body) {
        Ok(_) => answer(Empty {}),
        Err(refused) => refused.into_response(),
    }
}

/// A request body that is not the call's JSON.
struct Unreadable(String);

impl IntoResponse for Unreadable {
    fn into_response(self) -> Response {
        failed(StatusCode::BAD_REQUEST, format!("invalid request body for bpfnet's network driver: {}", self.0))
    }
}

/// Reads a request, whatever content type dockerd names (it sends
/// `application/vnd.docker.plugins.v1.2+json`, which axum's `Json` would refuse).
fn parse<R: DeserializeOwned + std::fmt::Debug>(body: &[u8]) -> Result<R, Unreadable> {
    let request = serde_json::from_slice(body).map_err(|e| Unreadable(e.to_string()))?;
    tracing::debug!(?request, "docker driver call");
    Ok(request)
}

fn reply(result: anyhow::Result<impl Serialize>) -> Response {
    match result {
        Ok(body) => answer(body),
        Err(err) => {
            tracing::info!("docker driver call refused: {err:#}");
            failed(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
        }
    }
}

fn answer(body: impl Serialize) -> Response {
    let json = serde_json::to_vec(&body).expect("protocol answers always serialize");
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], json).into_response()
}

/// The protocol's error form. libnetwork's plugin client reads `Err` from any answer that is
/// not 200 OK.
fn failed(status: StatusCode, err: String) -> Response {
    let json = serde_json::to_vec(&ErrorAnswer { err }).expect("errors always serialize");
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], json).into_response()
}
