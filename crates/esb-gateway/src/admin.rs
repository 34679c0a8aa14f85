//! The admin API on a unix socket (`ESB_GATEWAY_ADMIN_SOCKET`): plain HTTP/1.1 with
//! `GET /status` (functions, routes, pools, breakers, workers, agents) and `GET /health`,
//! for `esb status` and the box's supervision. Only the socket's owner (mode 0600) may
//! connect: no other authentication.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::gateway::Gateway;

/// The bound admin socket. Dropping it removes the socket file (if it is still ours).
pub(crate) struct AdminSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// Device and inode of the socket file we created.
    id: (u64, u64),
}

/// The running admin server.
pub(crate) struct AdminTask {
    task: JoinHandle<()>,
}

impl AdminSocket {
    /// Creates the socket at `path` with mode 0600. A stale socket file (nobody listening)
    /// is replaced; a live one, or a file that is not a socket, is an error.
    pub fn bind(path: &Path) -> anyhow::Result<AdminSocket> {
        let shown = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                bail!("admin socket {shown}: a file that is not a socket is in the way")
            }
            Ok(_) => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!("admin socket {shown} is in use by another process");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("admin socket {shown}")),
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("admin socket {shown}: create {}", dir.display()))?;
        // Bound inside a private directory, made 0600 there, then renamed into place:
        // nobody can connect before the mode is set, and a stale file is replaced at once.
        let private = dir.join(format!(".esb-admin.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .with_context(|| format!("admin socket {shown}: create {}", private.display()))?;
        let result = (|| -> anyhow::Result<(std::os::unix::net::UnixListener, (u64, u64))> {
            let tmp = private.join("s");
            let l = std::os::unix::net::UnixListener::bind(&tmp)
                .with_context(|| format!("admin socket {shown}: bind"))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("admin socket {shown}: chmod 0600"))?;
            std::fs::rename(&tmp, path).with_context(|| format!("admin socket {shown}: rename"))?;
            let m =
                std::fs::symlink_metadata(path).with_context(|| format!("admin socket {shown}"))?;
            l.set_nonblocking(true)?;
            Ok((l, (m.dev(), m.ino())))
        })();
        let _ = std::fs::remove_dir_all(&private);
        let (l, id) = result?;
        let listener = UnixListener::from_std(l).context("admin socket: register listener")?;
        Ok(AdminSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            id,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the admin API until `stop` changes; the socket file is removed then.
    pub fn serve(mut self, gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) -> AdminTask {
        let listener = self.listener.take().expect("served once");
        let task = tokio::spawn(async move {
            let _socket = self;
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, _)) => {
                            let gw = gw.clone();
                            conns.spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let gw = gw.clone();
                                    async move { Ok::<_, Infallible>(handle(&gw, req)) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = stop.changed() => return,
                }
            }
        });
        AdminTask { task }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl AdminTask {
    /// Waits for the server to stop (after the stop signal) and its socket to be removed.
    pub async fn stop(self) {
        let _ = self.task.await;
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/status" | "/health" if !get => {
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"message":"Method Not Allowed"}"#.into(),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        "/status" => json(StatusCode::OK, gw.status().to_string()),
        "/health" => json(StatusCode::OK, r#"{"status":"healthy"}"#.into()),
        _ => json(StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#.into()),
    }
}
