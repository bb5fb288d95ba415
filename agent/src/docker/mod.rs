//! Docker's remote network driver (libnetwork's plugin protocol), served by the agent on its
//! own unix socket (`--docker-plugin-socket`, e.g. `/run/docker/plugins/bpfnet.sock`, where
//! dockerd discovers it as the driver `bpfnet`). dockerd POSTs JSON to `/Plugin.Activate` and
//! `/NetworkDriver.*`; each call runs on the agent's one host, like an API call, and a failed
//! one answers `{"Err": "..."}`. The agent owns the datapath and its state: the driver keeps
//! nothing of its own but where its port allocator stands (soft state, as in dockerd).
//!
//! - `protocol`: the requests and answers, typed;
//! - `driver`: what each call does on the host;
//! - `port_allocator`: the host ports of bindings that name none (`-p 80`, `-P`).
//!
//! dockerd finds the socket in `/run/docker/plugins`, or anywhere through a spec file
//! ([`SpecFile`], `--docker-plugin-spec`).
pub mod driver;
pub mod port_allocator;
pub mod protocol;

use std::path::{Path, PathBuf};

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
    docker::port_allocator::PortAllocator,
    docker::protocol::{
        ActivateAnswer, CreateEndpointRequest, CreateNetworkRequest, DeleteNetworkRequest, DiscoveryRequest, Empty,
        EndpointRequest, ErrorAnswer, ExternalConnectivityRequest, JoinRequest, CONTENT_TYPE,
    },
    host::Host,
};

/// The agent's one host, shared with its API (one operation at a time).
type SharedHost = std::sync::Arc<tokio::sync::Mutex<Host>>;

/// What the routes share: the host, and where the next host port without a number comes from
/// (soft state, as in dockerd: lost with the agent).
#[derive(Clone)]
struct Driver {
    host: SharedHost,
    ports: std::sync::Arc<std::sync::Mutex<PortAllocator>>,
}

/// The protocol's routes on the plugin socket.
pub fn router(host: SharedHost) -> Router {
    let ports = PortAllocator::for_this_host();
    let range = ports.range();
    tracing::info!("Docker bindings without a host port take one from {}-{}", range.start(), range.end());
    let driver = Driver { host, ports: std::sync::Arc::new(std::sync::Mutex::new(ports)) };
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
        .with_state(driver)
}

async fn create_network(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
    let request: CreateNetworkRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::create_network(&mut host, &request).await.map(|()| Empty {}))
}

async fn delete_network(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
    let request: DeleteNetworkRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::delete_network(&mut host, &request.network_id).await.map(|()| Empty {}))
}

async fn create_endpoint(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
    let request: CreateEndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::create_endpoint(&mut host, &request).await)
}

async fn delete_endpoint(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
    let request: EndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::delete_endpoint(&mut host, &request).await.map(|()| Empty {}))
}

async fn endpoint_info(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
    let request: EndpointRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    reply(driver::endpoint_info(&*host.lock().await, &request))
}

async fn join(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
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

async fn program_external_connectivity(State(Driver { host, ports }): State<Driver>, body: Bytes) -> Response {
    let request: ExternalConnectivityRequest = match parse(&body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let mut host = host.lock().await;
    reply(driver::program_external_connectivity(&mut host, &ports, &request).await.map(|()| Empty {}))
}

async fn revoke_external_connectivity(State(Driver { host, .. }): State<Driver>, body: Bytes) -> Response {
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

/// A plugin spec file (`/etc/docker/plugins/NAME.spec`) naming the driver's socket, for a
/// socket outside `/run/docker/plugins`: dockerd knows the driver by the file's name. Removed
/// when dropped (the agent stops), as the socket is, with the directories made for it if empty.
pub struct SpecFile(PathBuf, crate::sys::dirs::MadeDirs);

impl SpecFile {
    /// Fails, naming the fix, unless dockerd could use `spec` for `socket`.
    pub fn check(spec: &Path, socket: &Path) -> anyhow::Result<()> {
        if spec.extension().and_then(|e| e.to_str()) != Some("spec") || spec.file_stem().is_none() {
            anyhow::bail!(
                "--docker-plugin-spec {}: dockerd reads plugin spec files named NAME.spec (NAME is the driver's \
                 name), e.g. /etc/docker/plugins/bpfnet.spec",
                spec.display()
            );
        }
        if !socket.is_absolute() {
            anyhow::bail!(
                "--docker-plugin-socket {}: a spec file names the socket by its absolute path; give one",
                socket.display()
            );
        }
        Ok(())
    }

    /// Writes `unix://SOCKET` into `spec` (its directory made if needed), whole or not at all.
    pub fn write(spec: &Path, socket: &Path) -> anyhow::Result<SpecFile> {
        use anyhow::Context;
        SpecFile::check(spec, socket)?;
        let made = match spec.parent() {
            Some(dir) => crate::sys::dirs::MadeDirs::create(dir)?,
            None => crate::sys::dirs::MadeDirs::default(),
        };
        let partial = spec.with_extension("spec.partial");
        std::fs::write(&partial, format!("unix://{}\n", socket.display()))
            .and_then(|()| std::fs::rename(&partial, spec))
            .with_context(|| format!("writing the plugin spec file {}", spec.display()))?;
        tracing::info!("dockerd finds the network driver through {}", spec.display());
        Ok(SpecFile(spec.to_owned(), made))
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        self.1.remove_empty();
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
