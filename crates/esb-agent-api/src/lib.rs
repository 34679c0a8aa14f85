//! The agent's gRPC API, `esb.agent.v1.AgentService` (see `proto/esb/agent/v1/agent.proto`).
//!
//! The gateway uses [`v1::agent_service_client::AgentServiceClient`]; the agent implements
//! [`v1::agent_service_server::AgentService`]. Worker states in `ContainerState.status` are
//! the strings of [`status`].

/// Generated types and services of package `esb.agent.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("esb.agent.v1");
}

/// Values of `ContainerState.status` and `ContainerMetrics.state`.
pub mod status {
    /// The worker's task runs.
    pub const RUNNING: &str = "RUNNING";
    /// The worker is frozen.
    pub const PAUSED: &str = "PAUSED";
    /// The worker's task has exited.
    pub const STOPPED: &str = "STOPPED";
    /// Anything else.
    pub const UNKNOWN: &str = "UNKNOWN";
}

/// Values of `WorkerEvent.kind`.
pub mod event {
    /// The stream is live: no exit after this message is missed.
    pub const WATCHING: &str = "WATCHING";
    /// A worker's task ended.
    pub const EXITED: &str = "EXITED";
}

/// Container label holding the function name.
pub const LABEL_FUNCTION: &str = "esb.function";
/// Container label holding the creation time (Unix seconds).
pub const LABEL_CREATED_AT: &str = "esb.created-at";
/// Container label holding the box id.
pub const LABEL_BOX: &str = "esb.box";
/// Container label holding the worker's address.
pub const LABEL_IP: &str = "esb.ip";

/// Connects a client to an agent at `endpoint`: `unix:///path/agent.sock`, a bare socket
/// path, or `http://host:port`.
pub async fn connect(
    endpoint: &str,
) -> Result<
    v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    use tonic::transport::Endpoint;
    let unix = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.starts_with('/').then_some(endpoint));
    let channel = match unix {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            Endpoint::from_static("http://agent.invalid")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await?
        }
        None => {
            Endpoint::from_shared(endpoint.to_string())?
                .connect()
                .await?
        }
    };
    Ok(v1::agent_service_client::AgentServiceClient::new(channel))
}
