//! A small typed layer over containerd's gRPC API (the `containerd-client` crate): every
//! call carries the namespace (and a lease where objects are being made), errors keep
//! containerd's status code so "not found" can be told apart.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    ApplyRequest, Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest, KillRequest,
    ListContainersRequest, PauseTaskRequest, PublishRequest, ReadContentRequest, ResumeTaskRequest,
    StartRequest, SubscribeRequest, UpdateContainerRequest, UpdateRequest as UpdateContentRequest,
    WaitRequest,
};
use containerd_client::types::v1::{Process, Status};
use containerd_client::types::{Descriptor, Mount};
use tonic::transport::Channel;
use tonic::{Code, Request, Status as RpcStatus};

/// containerd's runtime for runc workers.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// Type URL of an OCI runtime spec inside a container record.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A connection to containerd, bound to one namespace and snapshotter.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    snapshotter: String,
}

/// A containerd call failed.
#[derive(Debug, thiserror::Error)]
#[error("containerd {op}: {status}")]
pub struct CtdError {
    /// What was asked.
    pub op: &'static str,
    /// containerd's answer.
    pub status: RpcStatus,
}

impl CtdError {
    /// Whether containerd said the object does not exist.
    pub fn not_found(&self) -> bool {
        self.status.code() == Code::NotFound
    }
}

/// Result of containerd calls.
pub type CtdResult<T> = Result<T, CtdError>;

fn err(op: &'static str) -> impl FnOnce(RpcStatus) -> CtdError {
    move |status| CtdError { op, status }
}

/// Treats "not found" as success (`false`) for idempotent removals.
pub fn ignore_missing(r: CtdResult<()>) -> CtdResult<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

impl Containerd {
    /// Connects to the containerd socket.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        snapshotter: &str,
    ) -> Result<Containerd, String> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| format!("connect to containerd at {}: {e}", socket.display()))?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            snapshotter: snapshotter.to_string(),
        })
    }

    /// The containerd namespace of workers.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotter of worker root filesystems.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        md.insert(
            "containerd-namespace",
            self.namespace.parse().expect("ascii namespace"),
        );
        if let Some(lease) = lease {
            md.insert("containerd-lease", lease.parse().expect("ascii lease"));
        }
        r
    }

    /// Creates a lease that keeps what is made under it from garbage collection for an hour.
    pub async fn create_lease(&self, id: &str) -> CtdResult<()> {
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire_in(3600))]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(
                CreateLeaseRequest {
                    id: id.into(),
                    labels,
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("create lease"))
    }

    /// Deletes a lease (what it held stays while something else references it).
    pub async fn delete_lease(&self, id: &str) -> CtdResult<()> {
        LeasesClient::new(self.channel.clone())
            .delete(self.req(
                DeleteLeaseRequest {
                    id: id.into(),
                    sync: false,
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("delete lease"))
    }

    /// The image's target descriptor.
    pub async fn image_target(&self, name: &str) -> CtdResult<Descriptor> {
        let resp = ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name: name.into() }, None))
            .await
            .map_err(err("get image"))?;
        resp.into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| CtdError {
                op: "get image",
                status: RpcStatus::not_found("image has no target"),
            })
    }

    /// Reads a blob from the content store.
    pub async fn read_blob(&self, digest: &str) -> CtdResult<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(
                ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(err("read content"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(err("read content"))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Sets one label on a blob (used to tie unpacked snapshots to the image for GC).
    pub async fn label_blob(&self, digest: &str, key: &str, value: &str) -> CtdResult<()> {
        use containerd_client::services::v1::Info;
        let info = Info {
            digest: digest.into(),
            labels: HashMap::from([(key.to_string(), value.to_string())]),
            ..Default::default()
        };
        let mask = prost_types::FieldMask {
            paths: vec![format!("labels.{key}")],
        };
        ContentClient::new(self.channel.clone())
            .update(self.req(
                UpdateContentRequest {
                    info: Some(info),
                    update_mask: Some(mask),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("label content"))
    }

    /// Whether a committed snapshot exists.
    pub async fn snapshot_exists(&self, key: &str) -> CtdResult<bool> {
        let r = SnapshotsClient::new(self.channel.clone())
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.into(),
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(CtdError {
                op: "stat snapshot",
                status: s,
            }),
        }
    }

    /// Prepares an active snapshot on `parent` and returns its mounts.
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        lease: Option<&str>,
    ) -> CtdResult<Vec<Mount>> {
        let resp = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.into(),
                    parent: parent.into(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(err("prepare snapshot"))?;
        Ok(resp.into_inner().mounts)
    }

    /// Commits an active snapshot under `name`.
    pub async fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        lease: Option<&str>,
    ) -> CtdResult<()> {
        SnapshotsClient::new(self.channel.clone())
            .commit(self.req(
                CommitSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    name: name.into(),
                    key: key.into(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map(drop)
            .map_err(err("commit snapshot"))
    }

    /// Removes a snapshot.
    pub async fn remove_snapshot(&self, key: &str) -> CtdResult<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.into(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("remove snapshot"))
    }

    /// Applies a layer onto mounts (unpacking).
    pub async fn apply_layer(
        &self,
        layer: Descriptor,
        mounts: Vec<Mount>,
        lease: Option<&str>,
    ) -> CtdResult<()> {
        DiffClient::new(self.channel.clone())
            .apply(self.req(
                ApplyRequest {
                    diff: Some(layer),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await
            .map(drop)
            .map_err(err("apply layer"))
    }

    /// Creates a container record.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        labels: HashMap<String, String>,
        spec: &serde_json::Value,
        lease: Option<&str>,
    ) -> CtdResult<()> {
        let container = Container {
            id: id.into(),
            labels,
            image: image.into(),
            runtime: Some(Runtime {
                name: RUNC_RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec).expect("spec json"),
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(self.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
            .map(drop)
            .map_err(err("create container"))
    }

    /// Sets one label on a container.
    pub async fn label_container(&self, id: &str, key: &str, value: &str) -> CtdResult<()> {
        let container = Container {
            id: id.into(),
            labels: HashMap::from([(key.to_string(), value.to_string())]),
            ..Default::default()
        };
        let mask = prost_types::FieldMask {
            paths: vec![format!("labels.{key}")],
        };
        ContainersClient::new(self.channel.clone())
            .update(self.req(
                UpdateContainerRequest {
                    container: Some(container),
                    update_mask: Some(mask),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("label container"))
    }

    /// One container record.
    pub async fn container(&self, id: &str) -> CtdResult<Container> {
        let resp = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.into() }, None))
            .await
            .map_err(err("get container"))?;
        resp.into_inner().container.ok_or_else(|| CtdError {
            op: "get container",
            status: RpcStatus::not_found(id),
        })
    }

    /// Container records matching a containerd filter (e.g. `labels."esb.box"==x`; empty:
    /// all of the namespace).
    pub async fn containers(&self, filter: &str) -> CtdResult<Vec<Container>> {
        let resp = ContainersClient::new(self.channel.clone())
            .list(self.req(
                ListContainersRequest {
                    filters: if filter.is_empty() {
                        vec![]
                    } else {
                        vec![filter.into()]
                    },
                },
                None,
            ))
            .await
            .map_err(err("list containers"))?;
        Ok(resp.into_inner().containers)
    }

    /// Deletes a container record.
    pub async fn delete_container(&self, id: &str) -> CtdResult<()> {
        ContainersClient::new(self.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.into() }, None))
            .await
            .map(drop)
            .map_err(err("delete container"))
    }

    /// Creates the container's task with its root filesystem; its stdout and stderr go
    /// to the stdio URI `uri` (`file://PATH`, `binary://PROGRAM?ARGS`).
    pub async fn create_task(&self, id: &str, rootfs: Vec<Mount>, uri: &str) -> CtdResult<u32> {
        let uri = uri.to_string();
        let resp = TasksClient::new(self.channel.clone())
            .create(self.req(
                CreateTaskRequest {
                    container_id: id.into(),
                    rootfs,
                    stdout: uri.clone(),
                    stderr: uri,
                    ..Default::default()
                },
                None,
            ))
            .await
            .map_err(err("create task"))?;
        Ok(resp.into_inner().pid)
    }

    /// Starts a created task.
    pub async fn start_task(&self, id: &str) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .start(self.req(
                StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("start task"))
    }

    /// The task's process state.
    pub async fn task(&self, id: &str) -> CtdResult<Process> {
        let resp = TasksClient::new(self.channel.clone())
            .get(self.req(
                GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(err("get task"))?;
        resp.into_inner().process.ok_or_else(|| CtdError {
            op: "get task",
            status: RpcStatus::not_found(id),
        })
    }

    /// Sends a signal to every process of the task.
    pub async fn kill_task(&self, id: &str, signal: u32) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .kill(self.req(
                KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal,
                    all: true,
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("kill task"))
    }

    /// Waits for the task to exit.
    pub async fn wait_task(&self, id: &str) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .wait(self.req(
                WaitRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("wait task"))
    }

    /// Deletes an exited task.
    pub async fn delete_task(&self, id: &str) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .delete(self.req(
                DeleteTaskRequest {
                    container_id: id.into(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("delete task"))
    }

    /// Freezes the task.
    pub async fn pause_task(&self, id: &str) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .pause(self.req(
                PauseTaskRequest {
                    container_id: id.into(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("pause task"))
    }

    /// Thaws the task.
    pub async fn resume_task(&self, id: &str) -> CtdResult<()> {
        TasksClient::new(self.channel.clone())
            .resume(self.req(
                ResumeTaskRequest {
                    container_id: id.into(),
                },
                None,
            ))
            .await
            .map(drop)
            .map_err(err("resume task"))
    }
}

/// A task's end as containerd's event stream tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    /// The container (= worker id).
    pub container_id: String,
    /// Exit status (128 + signal when killed).
    pub exit_status: u32,
    /// When (Unix milliseconds; 0 unknown).
    pub exited_at_ms: i64,
}

/// The exits of init processes in the stream's namespace, in order; `Ok(None)` when
/// containerd ended the stream.
pub struct TaskExits {
    stream: tonic::Streaming<containerd_client::types::Envelope>,
}

impl TaskExits {
    /// The next exit of a task's init process (exec'd processes are skipped).
    pub async fn next(&mut self) -> CtdResult<Option<TaskExit>> {
        use prost::Message;
        loop {
            let Some(env) = self.stream.message().await.map_err(err("events"))? else {
                return Ok(None);
            };
            let Some(any) = env.event else { continue };
            if !any.type_url.ends_with("TaskExit") {
                continue;
            }
            let Ok(e) = containerd_client::events::TaskExit::decode(any.value.as_slice()) else {
                continue;
            };
            if !e.id.is_empty() && e.id != e.container_id {
                continue;
            }
            let exited_at_ms = e
                .exited_at
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                .unwrap_or(0);
            return Ok(Some(TaskExit {
                container_id: e.container_id,
                exit_status: e.exit_status,
                exited_at_ms,
            }));
        }
    }
}

impl Containerd {
    /// Subscribes to the exits of tasks in this namespace (containerd's `/tasks/exit`) and
    /// returns once containerd delivers to the subscription: it sends nothing (not even
    /// the stream's headers) before a first event, so marker events are published on a
    /// topic of our own until one comes back. No exit after this returns is missed.
    pub async fn task_exits(&self) -> CtdResult<TaskExits> {
        let ns = &self.namespace;
        let filters = vec![
            format!("namespace=={ns},topic==\"/tasks/exit\""),
            format!("namespace=={ns},topic==\"{WATCH_MARKER_TOPIC}\""),
        ];
        let mut client = EventsClient::new(self.channel.clone());
        let subscribe = client.subscribe(SubscribeRequest { filters });
        tokio::pin!(subscribe);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        let stream = loop {
            tokio::select! {
                r = &mut subscribe => break r.map_err(err("subscribe to events"))?.into_inner(),
                _ = tick.tick() => {
                    let marker = prost_types::Any {
                        type_url: "esb.agent.v1.WatchMarker".into(),
                        value: Vec::new(),
                    };
                    EventsClient::new(self.channel.clone())
                        .publish(self.req(
                            PublishRequest {
                                topic: WATCH_MARKER_TOPIC.into(),
                                event: Some(marker),
                            },
                            None,
                        ))
                        .await
                        .map_err(err("publish event"))?;
                }
            }
        };
        Ok(TaskExits { stream })
    }
}

/// Topic of the agent's own marker events (see [`Containerd::task_exits`]).
const WATCH_MARKER_TOPIC: &str = "/esb/agent/watching";

/// A task status as the agent API names it.
pub fn status_name(status: i32) -> &'static str {
    use esb_agent_api::status::*;
    match Status::try_from(status).unwrap_or(Status::Unknown) {
        Status::Running | Status::Created => RUNNING,
        Status::Paused | Status::Pausing => PAUSED,
        Status::Stopped => STOPPED,
        Status::Unknown => UNKNOWN,
    }
}

fn expire_in(secs: u64) -> String {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}
