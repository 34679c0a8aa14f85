//! The gRPC face of the agent: `esb.agent.v1.AgentService` over a Unix socket and/or a TCP
//! address local to the control side (never the worker bridge).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use esb_agent_api::v1::agent_service_server::{AgentService, AgentServiceServer};
use esb_agent_api::v1::*;
use tonic::{Request, Response, Status};

use crate::{Agent, AgentError, EnsureRequest};

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let msg = e.to_string();
        match e {
            AgentError::InvalidArgument { .. } => Status::invalid_argument(msg),
            AgentError::NotFound(_) => Status::not_found(msg),
            AgentError::NotReady {
                timed_out: true, ..
            } => Status::deadline_exceeded(msg),
            AgentError::NotReady { .. } => Status::failed_precondition(msg),
            // The registry, not the agent, is out of reach: the agent stays usable.
            AgentError::Pull(_) => Status::failed_precondition(msg),
            AgentError::Containerd(c) if c.status.code() == tonic::Code::Unavailable => {
                Status::unavailable(msg)
            }
            AgentError::Node(esb_runtime_node::NodeError::NotUp(_)) => Status::unavailable(msg),
            _ => Status::internal(msg),
        }
    }
}

/// The service implementation.
#[derive(Clone)]
pub struct AgentGrpc {
    agent: Arc<Agent>,
}

impl AgentGrpc {
    /// Wraps an agent.
    pub fn new(agent: Arc<Agent>) -> AgentGrpc {
        AgentGrpc { agent }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AgentServiceServer<AgentGrpc> {
        AgentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn ensure_container(
        &self,
        req: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        let r = req.into_inner();
        let started = std::time::Instant::now();
        let w = self
            .agent
            .ensure(EnsureRequest {
                function_name: r.function_name.clone(),
                image: r.image,
                env: r.env,
                memory_mb: r.memory_mb,
                timeout_seconds: r.timeout_seconds,
                labels: r.labels,
            })
            .await
            .inspect_err(
                |e| tracing::warn!(function = %r.function_name, error = %e, "ensure failed"),
            )?;
        tracing::info!(function = %r.function_name, worker = %w.id, ip = %w.ip,
            ms = started.elapsed().as_millis() as u64, "worker ready");
        Ok(Response::new(WorkerInfo {
            name: w.id.clone(),
            id: w.id,
            ip_address: w.ip,
            port: w.port as i32,
            node_id: self.agent.config().node_id.clone(),
        }))
    }

    async fn destroy_container(
        &self,
        req: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        let r = req.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let success = self.agent.destroy(&r.container_id).await?;
        tracing::info!(worker = %r.container_id, existed = success, "worker destroyed");
        Ok(Response::new(DestroyContainerResponse { success }))
    }

    async fn pause_container(
        &self,
        req: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        self.agent.pause(&req.into_inner().container_id).await?;
        Ok(Response::new(PauseContainerResponse { success: true }))
    }

    async fn resume_container(
        &self,
        req: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        self.agent.resume(&req.into_inner().container_id).await?;
        Ok(Response::new(ResumeContainerResponse { success: true }))
    }

    async fn list_containers(
        &self,
        _req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let node_id = self.agent.config().node_id.clone();
        let containers = self
            .agent
            .list()
            .await?
            .into_iter()
            .map(|w| ContainerState {
                container_name: w.id.clone(),
                container_id: w.id,
                function_name: w.function_name,
                status: w.status.to_string(),
                last_used_at: w.created_at,
                created_at: w.created_at,
                ip_address: w.ip,
                node_id: node_id.clone(),
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn get_container_metrics(
        &self,
        req: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        let m = self.agent.metrics(&req.into_inner().container_id).await?;
        Ok(Response::new(GetContainerMetricsResponse {
            metrics: Some(ContainerMetrics {
                container_name: m.id.clone(),
                container_id: m.id,
                function_name: m.function_name,
                state: m.state.to_string(),
                memory_current: m.memory_current,
                memory_max: m.memory_max,
                oom_events: m.oom_events,
                cpu_usage_ns: m.cpu_usage_ns,
                exit_code: m.exit_code,
                restart_count: 0,
                exit_time: m.exit_time,
                collected_at: m.collected_at,
            }),
        }))
    }
}

/// Where the agent listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// Unix socket path (created, replaced if stale, mode 0600).
    pub unix: Option<PathBuf>,
    /// TCP address; must be loopback or otherwise local to the control side.
    pub tcp: Option<SocketAddr>,
}

/// Serves the agent until `shutdown` completes.
pub async fn serve(
    agent: Arc<Agent>,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
    let svc = AgentGrpc::new(agent);
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    if let Some(path) = &listen.unix {
        if path.exists() {
            std::fs::remove_file(path)
                .map_err(|e| anyhow::anyhow!("remove stale socket {}: {e}", path.display()))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
        }
        let l = tokio::net::UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("listen on {}: {e}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let mut rx = tx.subscribe();
        let server = tonic::transport::Server::builder().add_service(svc.clone().into_server());
        servers.spawn(async move {
            server
                .serve_with_incoming_shutdown(
                    skip_accept_errors(UnixListenerStream::new(l)),
                    async move {
                        let _ = rx.recv().await;
                    },
                )
                .await
        });
    }
    if let Some(addr) = listen.tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listen on {addr}: {e}"))?;
        let mut rx = tx.subscribe();
        let server = tonic::transport::Server::builder().add_service(svc.clone().into_server());
        servers.spawn(async move {
            server
                .serve_with_incoming_shutdown(
                    skip_accept_errors(TcpListenerStream::new(l)),
                    async move {
                        let _ = rx.recv().await;
                    },
                )
                .await
        });
    }
    if servers.is_empty() {
        anyhow::bail!("no listen address (set a Unix socket or a TCP address)");
    }
    // A listener that stops early is an error of the whole agent, never a silent half.
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        Some(r) = servers.join_next() => {
            let _ = tx.send(());
            r??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    let _ = tx.send(());
    while let Some(r) = servers.join_next().await {
        r??;
    }
    if let Some(path) = &listen.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Connections whose accept failed (a client that went away first, a descriptor limit)
/// are logged and skipped: one bad accept must not end the server.
fn skip_accept_errors<S, T>(
    incoming: S,
) -> impl tokio_stream::Stream<Item = Result<T, std::io::Error>>
where
    S: tokio_stream::Stream<Item = Result<T, std::io::Error>>,
{
    use tokio_stream::StreamExt;
    incoming.filter_map(|r| match r {
        Ok(conn) => Some(Ok(conn)),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            None
        }
    })
}
