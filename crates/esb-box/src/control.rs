//! The box process (`esb up --foreground`, or the background process `esb up` starts):
//! brings up the node network, then runs every component as a supervised child process —
//! containerd, S3, DynamoDB, the log store, the local proxy, the agent and the gateway —
//! builds and imports the function images, provisions tables and buckets, and keeps it all
//! running: a child that exits is reported in `STATE/run/box.json` and restarted with
//! exponential backoff while the others keep serving. SIGHUP rebuilds and swaps the
//! gateway's functions (`esb watch`); SIGTERM or Ctrl-C stops everything in reverse order
//! and removes the network.
//!
//! Children run in their own session (Ctrl-C reaches the box only) with a parent-death
//! signal, so that a box killed with SIGKILL does not leave them running; each has a pid
//! file `STATE/run/<name>.pid` ("PID STARTTIME") so that a later `up` or `down` can stop
//! leftovers of an unclean stop, by verified PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::containerd::destroy_leftover_workers;
use crate::daemon;
use crate::images::{build_and_provision, prepare_registry, prune_registry, read_revisions, Warn};
use crate::layout::{
    agent_socket, box_lock_file, box_pid_file, ca_file, cluster_socket, containerd_dir,
    gateway_admin_socket, hosts_dir, log_file, ready_file, registry_server, revisions_file,
    run_dir, start_report_file, status_file, tls_dir, wg_file, wg_status_file,
};
use crate::status::{save, update, BoxStatus, Failure, Shared, StartReport};
use crate::supervise::{pending_components, start, stop_leftovers, ChildSpec, Ready};
use crate::{Error, Result, ResultExt};

/// Everything the box needs, checked before anything is created.
#[derive(Debug, Clone)]
pub struct Plan {
    /// State directory.
    pub state: PathBuf,
    /// The SAM template.
    pub template: PathBuf,
    /// Parameter overrides given on the command line.
    pub parameter_overrides: Option<String>,
    /// Build every function image from scratch (`esb up --build`): no layer from the
    /// cache; base images stay cached.
    pub rebuild: bool,
    /// The node network.
    pub node: esb_runtime_node::NodeConfig,
    /// Ports the local proxy listens on inside the node namespace.
    pub proxy_ports: [u16; 3],
    /// Arguments of `esb proxy` (backends, limits).
    pub proxy_args: Vec<String>,
    /// The gateway's client listener.
    pub gateway_listen: SocketAddr,
    /// Embedded services.
    pub s3: SocketAddr,
    /// DynamoDB.
    pub dynamodb: SocketAddr,
    /// Log store.
    pub logstore: SocketAddr,
    /// The log store's listener for workers' records (signed, stamped, ingestion only).
    pub logstore_workers: SocketAddr,
    /// Where the gateway ships its logs (`VICTORIALOGS_URL`).
    pub gateway_logs_url: String,
    /// How functions' policies are applied (`ESB_IAM`).
    pub iam_mode: esb_iam::Mode,
    /// Account id in ARNs (`ESB_ACCOUNT_ID`).
    pub account_id: String,
    /// The static supervisor put into images.
    pub supervisor: PathBuf,
    /// The credential pair.
    pub creds: (String, String),
    /// Region.
    pub region: String,
    /// The box's registry on this host (loopback).
    pub registry_listen: SocketAddr,
    /// More names for the registry's certificate.
    pub registry_sans: Vec<String>,
    /// The control namespace holding 10.99.0.1 and the relays.
    pub control: esb_runtime_node::ControlNetwork,
    /// The local agent pulls images from the registry instead of having them imported
    /// (`ESB_IMAGE_SOURCE=registry`).
    pub pull_images: bool,
    /// The control side of compute nodes (WireGuard, join exchange, agents file).
    pub cluster: crate::cluster::ControlSide,
    /// Whether control runs workers itself (`--no-local-workers` / `ESB_LOCAL_WORKERS=0`:
    /// only on compute nodes).
    pub local_workers: bool,
    /// The `esb` executable the components run as (`esb s3`, `esb gateway`, …).
    pub esb: PathBuf,
    /// The containerd program (`ESB_CONTAINERD`).
    pub containerd: PathBuf,
    /// The registry program (`esb_registry::server::program`).
    pub registry_program: PathBuf,
    /// The local agent's node id in the gateway's agents (`ESB_NODE_ID`).
    pub node_id: String,
    /// More names for the gateway's certificate (`ESB_GATEWAY_SANS`).
    pub gateway_sans: Vec<String>,
    /// `ESB_GATEWAY_LOG_STDERR` for the gateway ("0": its records go to the log store only).
    pub gateway_log_stderr: String,
}

impl Plan {
    /// `STATE/run`.
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.state)
    }
    fn agent_socket(&self) -> PathBuf {
        agent_socket(&self.state)
    }
    /// The private containerd's directory.
    pub fn containerd_dir(&self) -> PathBuf {
        containerd_dir(&self.state)
    }
    /// The box CA clients trust.
    pub fn ca_path(&self) -> PathBuf {
        ca_file(&self.state)
    }
    /// The box CA and the certificates it issued.
    pub fn tls_dir(&self) -> PathBuf {
        tls_dir(&self.state)
    }
    /// The registry's configuration and storage.
    pub fn registry(&self) -> esb_registry::ServerConfig {
        registry_server(&self.state, self.registry_listen)
    }
    /// The registry as this host's clients reach it (loopback, the box CA).
    pub fn registry_client(&self) -> esb_image::Registry {
        let mut r = esb_image::Registry::from_setting(&self.registry_listen.to_string())
            .expect("a socket address is a registry address");
        r.ca_file = Some(self.ca_path());
        r
    }
    /// Where the box builds images.
    pub fn build_dir(&self) -> PathBuf {
        crate::layout::build_dir(&self.state)
    }
}

/// Where this machine reaches a listener bound to `a` (an unspecified address is dialled
/// on loopback).
pub fn dial_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

/// The order components start in (and stop in, reversed).
pub const COMPONENTS: &[&str] = &[
    "containerd",
    "s3",
    "dynamodb",
    "logstore",
    "registry",
    "proxy",
    "relay",
    "wireguard",
    "agent",
    "gateway",
];

/// The components a plan runs, in start order (see [`COMPONENTS`]).
pub fn child_specs(plan: &Plan) -> Vec<ChildSpec> {
    let state = plan.state.display().to_string();
    let esb = |name: &'static str, mut args: Vec<String>, env, ready| {
        let mut a = vec![format!("--state-dir={state}")];
        a.append(&mut args);
        ChildSpec::new(name, plan.esb.clone(), a, env, ready)
    };
    let ctd_dir = plan.containerd_dir();
    let containerd = ChildSpec::new(
        "containerd",
        plan.containerd.clone(),
        vec![
            "--config".into(),
            ctd_dir.join("config.toml").display().to_string(),
        ],
        vec![],
        Ready::Containerd(ctd_dir.join("containerd.sock")),
    );
    let netns = plan.node.netns.clone();
    let proxy_pid = ready_file(&plan.state, "proxy");
    let mut proxy_args = vec![
        "proxy".to_string(),
        format!("--netns={netns}"),
        format!("--s3-port={}", plan.proxy_ports[0]),
        format!("--db-port={}", plan.proxy_ports[1]),
        format!("--logs-port={}", plan.proxy_ports[2]),
        format!("--pid-file={}", proxy_pid.display()),
    ];
    proxy_args.extend(plan.proxy_args.iter().cloned());
    let gateway_ready = dial_addr(plan.gateway_listen);
    let mut gateway_args = vec![
        "gateway".to_string(),
        format!("--template={}", plan.template.display()),
        format!("--revisions={}", revisions_file(&plan.state).display()),
    ];
    if let Some(o) = &plan.parameter_overrides {
        gateway_args.push(format!("--parameter-overrides={o}"));
    }
    let mut gateway = esb(
        "gateway",
        gateway_args,
        vec![
            ("ESB_GATEWAY_LISTEN".into(), plan.gateway_listen.to_string()),
            ("ESB_GATEWAY_INTERNAL_NETNS".into(), netns.clone()),
            (
                "ESB_AGENTS".into(),
                if plan.local_workers {
                    format!(
                        "unix://{},netns={netns},node={}",
                        plan.agent_socket().display(),
                        plan.node_id
                    )
                } else {
                    String::new()
                },
            ),
            (
                "ESB_AGENTS_FILE".into(),
                crate::layout::agents_file(&plan.state)
                    .display()
                    .to_string(),
            ),
            (
                "ESB_CLUSTER_SOCKET".into(),
                cluster_socket(&plan.state).display().to_string(),
            ),
            (
                "ESB_GATEWAY_DATA_DIR".into(),
                plan.tls_dir().display().to_string(),
            ),
            (
                "ESB_GATEWAY_ADMIN_SOCKET".into(),
                gateway_admin_socket(&plan.state).display().to_string(),
            ),
            // The gateway runs in the host namespace: by default it ships to the log
            // store directly (`VICTORIALOGS_URL` of the seed).
            ("VICTORIALOGS_URL".into(), plan.gateway_logs_url.clone()),
            (
                "ESB_IAM_FILE".into(),
                crate::layout::iam_file(&plan.state).display().to_string(),
            ),
            // Its records are in the log store (`esb logs`); its own log file keeps the
            // process's diagnostics only, unless asked otherwise.
            (
                "ESB_GATEWAY_LOG_STDERR".into(),
                plan.gateway_log_stderr.clone(),
            ),
        ],
        Ready::Tcp(gateway_ready),
    );
    gateway.stop_grace = Duration::from_secs(60);
    gateway.ready_timeout = Duration::from_secs(180);
    let agent = esb(
        "agent",
        vec![
            "agent".into(),
            format!("--socket={}", plan.agent_socket().display()),
            format!("--ca-file={}", plan.ca_path().display()),
            format!(
                "--registry-hosts-dir={}",
                hosts_dir(&plan.state).path().display()
            ),
            format!("--registry-netns={}", plan.control.netns),
        ],
        vec![],
        Ready::Unix(plan.agent_socket()),
    );
    let registry = ChildSpec::new(
        "registry",
        plan.registry_program.clone(),
        vec![
            "serve".into(),
            plan.registry().config_path().display().to_string(),
        ],
        vec![],
        Ready::Tcp(plan.registry_listen),
    );
    let mut relay_args = vec![
        "relay".to_string(),
        format!("--netns={}", plan.control.netns),
        format!(
            "--route=registry={}:{}={}:{}",
            plan.control.ip,
            esb_registry::DEFAULT_PORT,
            esb_registry::BACKEND_NAME,
            plan.registry_listen.port()
        ),
        // What compute nodes' local proxies and workers reach at 10.99.0.1.
        format!(
            "--route=s3={}:9000=s3-storage:{}",
            plan.control.ip,
            plan.s3.port()
        ),
        format!(
            "--route=db={}:8000=database:{}",
            plan.control.ip,
            plan.dynamodb.port()
        ),
        format!(
            "--route=logs={}:9428=victorialogs:{}",
            plan.control.ip,
            plan.logstore_workers.port()
        ),
        format!(
            "--route=gateway={}:443=gateway:{}",
            plan.control.ip,
            plan.gateway_listen.port()
        ),
        format!("--pid-file={}", ready_file(&plan.state, "relay").display()),
    ];
    // The local proxy's hosts file and limits.
    relay_args.extend(plan.proxy_args.iter().cloned());
    let relay = esb(
        "relay",
        relay_args,
        vec![],
        Ready::PidFile(ready_file(&plan.state, "relay")),
    );
    let wireguard = esb(
        "wireguard",
        vec![
            "wireguard".into(),
            format!("--interface-file={}", wg_file(&plan.state).display()),
            format!("--status-file={}", wg_status_file(&plan.state).display()),
            format!(
                "--ready-file={}",
                ready_file(&plan.state, "wireguard").display()
            ),
        ],
        vec![],
        Ready::PidFile(ready_file(&plan.state, "wireguard")),
    );
    vec![
        containerd,
        esb(
            "s3",
            vec!["s3".into(), format!("--listen={}", plan.s3)],
            vec![],
            Ready::Tcp(dial_addr(plan.s3)),
        ),
        esb(
            "dynamodb",
            vec!["dynamodb".into(), format!("--listen={}", plan.dynamodb)],
            vec![],
            Ready::Tcp(dial_addr(plan.dynamodb)),
        ),
        esb(
            "logstore",
            vec![
                "logstore".into(),
                format!("--listen={}", plan.logstore),
                format!("--worker-listen={}", plan.logstore_workers),
            ],
            vec![],
            Ready::Tcp(dial_addr(plan.logstore)),
        ),
        registry,
        esb("proxy", proxy_args, vec![], Ready::PidFile(proxy_pid)),
        relay,
        wireguard,
        agent,
        gateway,
    ]
}

/// Makes sure the box CA and its certificates exist: the gateway's (`ESB_GATEWAY_SANS`
/// adds names) and the registry's (the control address, its backend name, loopback and
/// `ESB_REGISTRY_SANS`); writes the hosts.toml through which this host's containerd side
/// trusts the registry at the control address.
fn prepare_tls(plan: &Plan) -> Result<()> {
    let tls = plan.tls_dir();
    esb_pki::ensure_box_certs(&tls, &esb_pki::default_sans(&plan.gateway_sans))?;
    let mut sans: Vec<String> = vec![
        plan.control.ip.to_string(),
        esb_registry::BACKEND_NAME.into(),
        "127.0.0.1".into(),
        "localhost".into(),
    ];
    for extra in std::iter::once(plan.registry_listen.ip().to_string())
        .chain(plan.registry_sans.iter().map(|s| s.trim().to_string()))
    {
        if !extra.is_empty() && !sans.contains(&extra) {
            sans.push(extra);
        }
    }
    esb_pki::ensure_server_cert(&tls, "registry", "esb registry", &sans)
        .step("the registry's certificate (ESB_REGISTRY_SANS)")?;
    let host = format!("{}:{}", plan.control.ip, esb_registry::DEFAULT_PORT);
    hosts_dir(&plan.state).write(&host, &format!("https://{host}"), &plan.ca_path())?;
    // The gateway calls the agents of compute nodes with this (mTLS).
    esb_pki::ensure_node_cert(
        &tls,
        "gateway-client",
        "esb gateway",
        &[plan.control.ip.to_string()],
    )
    .step("the gateway's client certificate")?;
    Ok(())
}

/// Holds the box's exclusive lock (`STATE/run/box.lock`) for the life of the process.
pub struct BoxLock(#[allow(dead_code)] std::fs::File);

/// Takes the lock, or says which box holds it.
pub fn lock(state: &Path) -> Result<BoxLock> {
    use std::os::fd::AsRawFd;
    let path = box_lock_file(state);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::file("open", &path, e))?;
    // SAFETY: flock(2) on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::BoxRunning {
            state: state.to_path_buf(),
            pid: daemon::read_live(&box_pid_file(state))
                .map(|t| t.pid.to_string())
                .unwrap_or_else(|| "?".into()),
        });
    }
    Ok(BoxLock(f))
}

async fn signal_stream(kind: tokio::signal::unix::SignalKind) -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(kind).expect("signal handler")
}

/// Runs the box until SIGTERM/SIGINT. Returns an error when it could not start
/// ([`Error::DidNotStart`] once the box holds its lock: the failing step's error, what
/// was cleaned up, the warnings; also kept in `STATE/run/start.json`); then nothing it
/// made is left behind.
pub async fn run(plan: Plan) -> Result<()> {
    let state = plan.state.clone();
    crate::perms::restrict_umask();
    std::fs::create_dir_all(plan.run_dir())?;
    let tightened = crate::perms::secure_state(&state)?;
    if tightened > 0 {
        tracing::info!(
            entries = tightened,
            "state directory: took group and other permissions off what an older start left"
        );
    }
    let _lock = lock(&state)?;
    daemon::write_pid_file(&box_pid_file(&state))?;
    // The report of this start: warnings as they are found, and why it failed.
    let report = Arc::new(Mutex::new(StartReport {
        pid: std::process::id() as i32,
        ..StartReport::default()
    }));
    report.lock().unwrap().save(&state);
    let warn: Warn = {
        let (report, state) = (report.clone(), state.clone());
        Arc::new(move |w: String| {
            tracing::warn!("{w}");
            let mut r = report.lock().unwrap();
            r.warnings.push(w);
            r.save(&state);
        })
    };
    let left = stop_leftovers(&state, COMPONENTS);
    if !left.is_empty() {
        warn(format!(
            "stopped leftovers of an unclean stop: {}",
            left.join(", ")
        ));
    }
    for stale in [
        gateway_admin_socket(&state),
        plan.agent_socket(),
        plan.containerd_dir().join("containerd.sock"),
        plan.containerd_dir().join("containerd.sock.ttrpc"),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let specs = child_specs(&plan);
    let shared: Shared = Arc::new(Mutex::new(BoxStatus {
        pid: std::process::id() as i32,
        state: "starting".into(),
        message: String::new(),
        template: plan.template.display().to_string(),
        gateway_url: format!("https://localhost:{}", plan.gateway_listen.port()),
        endpoints: serde_json::json!({
            "s3": format!("http://{}", dial_addr(plan.s3)),
            "dynamodb": format!("http://{}", dial_addr(plan.dynamodb)),
            "logs": format!("http://{}", dial_addr(plan.logstore)),
        }),
        ca: plan.ca_path().display().to_string(),
        components: pending_components(&state, &specs),
        generation: 0,
        last_build: serde_json::Value::Null,
    }));
    save(&state, &shared.lock().unwrap());

    let mut term = signal_stream(tokio::signal::unix::SignalKind::terminate()).await;
    let mut int = signal_stream(tokio::signal::unix::SignalKind::interrupt()).await;
    let mut hup = signal_stream(tokio::signal::unix::SignalKind::hangup()).await;

    let (stop_tx, _) = watch::channel(false);
    let (cluster_stop, _) = watch::channel(false);
    let mut stops: Vec<(String, watch::Sender<bool>, tokio::task::JoinHandle<()>)> = Vec::new();
    let rn = esb_runtime_node::RuntimeNode::new(plan.node.clone())?;

    let start = async {
        update(&state, &shared, |s| {
            s.message = "creating the node network".into()
        });
        rn.up().step("node network")?;
        plan.control.up().step("control network")?;
        let ctd = plan.containerd_dir();
        std::fs::create_dir_all(&ctd)
            .and_then(|()| std::fs::canonicalize(&ctd))
            .and_then(|dir| {
                std::fs::write(dir.join("config.toml"), esb_containerd::config_toml(&dir))
            })
            .map_err(|e| Error::file("write the configuration in", &ctd, e))
            .step("containerd's configuration")?;
        prepare_tls(&plan).step("the box's certificates")?;
        for spec in &specs {
            update(&state, &shared, |s| {
                s.message = format!("starting {}", spec.name)
            });
            if spec.name == "wireguard" {
                plan.cluster
                    .write_wg_file()
                    .step("the WireGuard interface file")?;
                plan.cluster
                    .write_agents_file()
                    .step("the gateway's agents file")?;
            }
            if spec.name == "gateway" {
                let path = cluster_socket(&state);
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)
                    .map_err(|e| Error::file("listen on", &path, e))?;
                let control: Arc<dyn esb_cluster::join::Control> = Arc::new(plan.cluster.clone());
                let mut stopped = cluster_stop.subscribe();
                tokio::spawn(esb_cluster::join::serve(listener, control, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }));
            }
            if spec.name == "registry" {
                update(&state, &shared, |s| {
                    s.message = "collecting the registry".into()
                });
                prepare_registry(&plan)
                    .await
                    .step("collect the registry's garbage")?;
            }
            if spec.name == "agent" {
                update(&state, &shared, |s| s.message = "building images".into());
                let built = build_and_provision(&plan, warn.clone()).await?;
                update(&state, &shared, |s| s.last_build = built);
            }
            let (tx, h) = start(spec, &state, &shared).await?;
            stops.push((spec.name.to_string(), tx, h));
        }
        Ok::<_, Error>(())
    };
    let started = tokio::select! {
        r = start => r,
        _ = term.recv() => Err(Error::StoppedWhileStarting("SIGTERM")),
        _ = int.recv() => Err(Error::StoppedWhileStarting("SIGINT")),
    };
    drop(stop_tx);
    if let Err(e) = started {
        tracing::error!("the box did not start: {}", e.chain());
        // The step's own error first and complete; the cleanup adds to it, never
        // replaces it (its own failures are listed among what was cleaned up).
        let (step, lines) = e.explain();
        let step = step.unwrap_or_else(|| shared.lock().unwrap().message.clone());
        let failed = format!("{step} failed");
        {
            let mut r = report.lock().unwrap();
            r.failure = Some(Failure {
                step,
                lines,
                cleaned_up: Vec::new(),
            });
            r.save(&state);
        }
        update(&state, &shared, |s| {
            s.state = "failed".into();
            s.message = failed.clone();
        });
        let _ = cluster_stop.send(true);
        let cleaned = shutdown(&plan, &rn, &shared, stops, &format!("{failed}; ")).await;
        let report = {
            let mut r = report.lock().unwrap();
            if let Some(f) = r.failure.as_mut() {
                f.cleaned_up = cleaned;
            }
            r.save(&state);
            r.clone()
        };
        update(&state, &shared, |s| {
            s.state = "failed".into();
            s.message = failed;
        });
        if let Some(f) = &report.failure {
            tracing::info!("cleaned up: {}", f.cleaned_up.join("; "));
        }
        let _ = std::fs::remove_file(box_pid_file(&state));
        return Err(Error::DidNotStart(Box::new(report)));
    }
    update(&state, &shared, |s| {
        s.state = "ready".into();
        s.message = "serving".into();
    });
    tracing::info!("the box is ready");
    prune_registry(&plan, read_revisions(&state).as_ref()).await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: rebuilding");
                update(&state, &shared, |s| s.message = "rebuilding".into());
                let log_only: Warn = Arc::new(|w| tracing::warn!("{w}"));
                let outcome = match build_and_provision(&plan, log_only).await {
                    Ok(v) => match reload_gateway(&state).await {
                        Ok(()) => {
                            prune_registry(&plan, read_revisions(&state).as_ref()).await;
                            Ok(v)
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                update(&state, &shared, |s| {
                    s.generation += 1;
                    match outcome {
                        Ok(v) => { s.last_build = v; s.message = "serving".into(); }
                        Err(e) => {
                            let e = e.chain();
                            tracing::error!("rebuild failed (still serving the previous build): {e}");
                            s.last_build = serde_json::json!({"ok": false, "error": e});
                            s.message = "serving (last rebuild failed)".into();
                        }
                    }
                });
            }
        }
    }
    update(&state, &shared, |s| {
        s.state = "stopping".into();
        s.message = "stopping".into();
    });
    let _ = cluster_stop.send(true);
    shutdown(&plan, &rn, &shared, stops, "").await;
    let _ = std::fs::remove_file(status_file(&state));
    let _ = std::fs::remove_file(start_report_file(&state));
    let _ = std::fs::remove_file(box_pid_file(&state));
    let _ = std::fs::remove_file(revisions_file(&state));
    tracing::info!("the box is down");
    Ok(())
}

/// Asks the gateway to reload (SIGHUP) and waits for the outcome it records.
async fn reload_gateway(state: &Path) -> Result<()> {
    let outcome_file = crate::layout::reload_outcome_file(&revisions_file(state));
    let read = || -> (u64, serde_json::Value) {
        let v: serde_json::Value = std::fs::read(&outcome_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        (v["reloads"].as_u64().unwrap_or(0), v)
    };
    let (before, _) = read();
    let t = daemon::read_live(&crate::layout::component_pid_file(state, "gateway"))
        .ok_or(Error::GatewayNotRunning)?;
    daemon::signal_pid(t.pid, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (n, v) = read();
        if n > before {
            if v["ok"] == true {
                return Ok(());
            }
            return Err(Error::GatewayRefused(
                v["error"].as_str().unwrap_or("?").to_string(),
            ));
        }
        if Instant::now() > deadline {
            return Err(Error::GatewayNoReload(log_file(state, "gateway")));
        }
    }
}

/// The gateway's `GET /status` over its admin socket.
pub async fn gateway_status(state: &Path) -> Result<serde_json::Value> {
    let req = crate::http::request("GET", "http://localhost/status", bytes::Bytes::new())?;
    let r = crate::http::unix(&gateway_admin_socket(state), req, Duration::from_secs(10)).await?;
    if r.status != 200 {
        return Err(Error::GatewayAdmin(r.status));
    }
    Ok(r.json())
}

/// Stops the components in reverse order, removes what workers remain, then the network.
/// Returns what it did, one item per kind ("stopped gateway (pid 12), …", "removed the
/// node network esb-node"), its own failures included. `context` prefixes the status
/// message while it works (the failure it cleans up after, if any).
async fn shutdown(
    plan: &Plan,
    rn: &esb_runtime_node::RuntimeNode,
    shared: &Shared,
    mut stops: Vec<(String, watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    context: &str,
) -> Vec<String> {
    let state = &plan.state;
    let mut stopped = Vec::new();
    let mut done = Vec::new();
    while let Some((name, tx, h)) = stops.pop() {
        if name == "proxy" {
            // Workers first (the gateway, already stopped, removes its own; this catches
            // any left by a crash), while containerd still runs.
            let n = destroy_leftover_workers(
                crate::layout::agent_dir(state),
                plan.node.clone(),
                plan.containerd_dir().join("containerd.sock"),
            )
            .await;
            if n > 0 {
                done.push(format!("destroyed {n} leftover worker(s)"));
            }
        }
        let pid = shared
            .lock()
            .unwrap()
            .components
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.pid);
        update(state, shared, |s| {
            s.message = format!("{context}stopping {name}")
        });
        let _ = tx.send(true);
        let _ = h.await;
        stopped.push(match pid {
            Some(p) => format!("{name} (pid {p})"),
            None => name,
        });
    }
    if !stopped.is_empty() {
        done.insert(0, format!("stopped {}", stopped.join(", ")));
    }
    let left = stop_leftovers(state, COMPONENTS);
    if !left.is_empty() {
        done.push(format!("stopped leftovers {}", left.join(", ")));
    }
    match rn.down() {
        Ok(()) => done.push(format!("removed the node network ({})", plan.node.netns)),
        Err(e) => {
            tracing::error!("remove the node network: {e}");
            done.push(format!(
                "could not remove the node network ({}): {e}",
                plan.node.netns
            ));
        }
    }
    match plan.control.down() {
        Ok(true) => done.push(format!(
            "removed the control network ({})",
            plan.control.netns
        )),
        Ok(false) => {}
        Err(e) => {
            tracing::error!("remove the control network: {e}");
            done.push(format!(
                "could not remove the control network ({}): {e}",
                plan.control.netns
            ));
        }
    }
    for f in [
        gateway_admin_socket(state),
        plan.agent_socket(),
        ready_file(state, "proxy"),
        ready_file(state, "relay"),
        ready_file(state, "wireguard"),
        cluster_socket(state),
    ] {
        let _ = std::fs::remove_file(f);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(state: &Path, local_workers: bool) -> Plan {
        let node = esb_runtime_node::NodeConfig::with_defaults(state.join("node/esb-node"));
        let control = esb_runtime_node::ControlNetwork::new("esb-control").unwrap();
        Plan {
            state: state.to_path_buf(),
            template: state.join("app/template.yaml"),
            parameter_overrides: Some("Stage=prod".into()),
            rebuild: false,
            node: node.clone(),
            proxy_ports: [9000, 8001, 9428],
            proxy_args: vec!["--max-connections=10".into()],
            gateway_listen: "0.0.0.0:8443".parse().unwrap(),
            s3: "127.0.0.1:9000".parse().unwrap(),
            dynamodb: "127.0.0.1:8000".parse().unwrap(),
            logstore: "127.0.0.1:9428".parse().unwrap(),
            logstore_workers: "127.0.0.1:9429".parse().unwrap(),
            gateway_logs_url: "http://127.0.0.1:9428".into(),
            iam_mode: esb_iam::Mode::Enforce,
            account_id: "000000000000".into(),
            supervisor: "/usr/local/bin/esb-supervisor".into(),
            creds: ("ak".into(), "sk".into()),
            region: "ap-northeast-1".into(),
            registry_listen: "127.0.0.1:5010".parse().unwrap(),
            registry_sans: vec![],
            control: control.clone(),
            pull_images: false,
            cluster: crate::cluster::ControlSide {
                state: state.to_path_buf(),
                netns: control.netns.clone(),
                ip: control.ip,
                wg_port: 51820,
                reserved: crate::cluster::reserved_numbers(node.worker_subnet),
                worker_route_via: None,
                credentials: ("ak".into(), "sk".into(), "ap-northeast-1".into()),
            },
            local_workers,
            esb: "/opt/esb/bin/esb".into(),
            containerd: "containerd".into(),
            registry_program: "/usr/bin/docker-registry".into(),
            node_id: "node-1".into(),
            gateway_sans: vec![],
            gateway_log_stderr: "0".into(),
        }
    }

    fn env<'a>(spec: &'a ChildSpec, key: &str) -> &'a str {
        spec.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {key}", spec.name))
    }

    #[test]
    fn a_plan_starts_every_component_in_order() {
        let p = plan(Path::new("/s"), true);
        let specs = child_specs(&p);
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, COMPONENTS);
        for s in specs
            .iter()
            .filter(|s| !["containerd", "registry"].contains(&s.name))
        {
            assert_eq!(s.program, Path::new("/opt/esb/bin/esb"), "{}", s.name);
            assert_eq!(s.args[0], "--state-dir=/s", "{}", s.name);
        }
        let gw = specs.iter().find(|s| s.name == "gateway").unwrap();
        assert!(gw
            .args
            .contains(&"--parameter-overrides=Stage=prod".to_string()));
        assert_eq!(env(gw, "ESB_GATEWAY_LISTEN"), "0.0.0.0:8443");
        // The gateway's readiness is dialled on loopback.
        assert!(matches!(gw.ready, Ready::Tcp(a) if a.to_string() == "127.0.0.1:8443"));
        assert_eq!(
            env(gw, "ESB_AGENTS"),
            "unix:///s/agent.sock,netns=esb-node,node=node-1"
        );
        let relay = specs.iter().find(|s| s.name == "relay").unwrap();
        assert!(relay
            .args
            .contains(&"--route=registry=10.99.0.1:5010=esb-registry:5010".to_string()));
        assert!(relay.args.contains(&"--max-connections=10".to_string()));
    }

    #[test]
    fn without_local_workers_the_gateway_has_only_remote_agents() {
        let p = plan(Path::new("/s"), false);
        let specs = child_specs(&p);
        let gw = specs.iter().find(|s| s.name == "gateway").unwrap();
        assert_eq!(env(gw, "ESB_AGENTS"), "");
        assert_eq!(env(gw, "ESB_AGENTS_FILE"), "/s/cluster/agents");
    }

    #[test]
    fn unspecified_listeners_are_dialled_on_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0:443".parse().unwrap()).to_string(),
            "127.0.0.1:443"
        );
        assert_eq!(
            dial_addr("127.0.0.2:9000".parse().unwrap()).to_string(),
            "127.0.0.2:9000"
        );
    }
}
