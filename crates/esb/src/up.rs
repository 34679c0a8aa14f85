//! `esb up`, `esb down`, `esb status`, `esb reset`, `esb invoke`, `esb watch` and
//! `esb config`: the box as one thing.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use esb_box::control::{self, Plan};
use esb_box::daemon;
use esb_box::layout;
use esb_box::status::{running, BoxStatus, StartReport};

use crate::config_file;
use crate::settings::{
    containerd_program, esb_exe, private_containerd, BoxArgs, NodeArgs, ProxyArgs, StateArgs,
};

/// Arguments of `esb up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// The SAM template: the global `-t/--template` (default: ./template.yaml, else the
    /// bundled example application).
    #[arg(skip)]
    pub template: Option<PathBuf>,
    /// Rebuild every function image from scratch (layers not taken from the cache; base
    /// images stay cached).
    #[arg(long)]
    pub build: bool,
    /// Parameter overrides, `Key=Value` separated by spaces (after generator.yml's).
    #[arg(long)]
    pub parameter_overrides: Option<String>,
    /// HTTPS port of the gateway on every address (ESB_GATEWAY_LISTEN sets the address too).
    #[arg(long, env = "ESB_GATEWAY_PORT")]
    pub port: Option<u16>,
    /// Stay in the foreground (for a service manager); Ctrl-C or SIGTERM stops the box.
    #[arg(long)]
    pub foreground: bool,
    /// Address of the embedded S3.
    #[arg(long, env = "ESB_S3_LISTEN", default_value = "127.0.0.1:9000")]
    pub s3_listen: SocketAddr,
    /// Address of the embedded DynamoDB.
    #[arg(long, env = "ESB_DYNAMODB_LISTEN", default_value = "127.0.0.1:8000")]
    pub dynamodb_listen: SocketAddr,
    /// Address of the embedded log store.
    #[arg(long, env = "ESB_LOGSTORE_LISTEN", default_value = "127.0.0.1:9428")]
    pub logstore_listen: SocketAddr,
    /// Address of the log store's listener for workers' records (the local proxy's
    /// `victorialogs` backend: ingestion only, signed with the function's key).
    #[arg(
        long,
        env = "ESB_LOGSTORE_WORKER_LISTEN",
        default_value = "127.0.0.1:9429"
    )]
    pub logstore_worker_listen: SocketAddr,
    /// The static esb-supervisor binary to put in images (default: next to `esb`).
    #[arg(long, env = "ESB_SUPERVISOR_BIN")]
    pub supervisor: Option<PathBuf>,
    /// Address of the box's image registry on this host (loopback only: compute nodes
    /// reach it as 10.99.0.1:5010 through the relay in the control namespace).
    #[arg(long, env = "ESB_REGISTRY_LISTEN", default_value = "127.0.0.1:5010")]
    pub registry_listen: SocketAddr,
    /// More names or addresses for the registry's certificate (comma-separated; it always
    /// carries 10.99.0.1, esb-registry, 127.0.0.1 and localhost).
    #[arg(long, env = "ESB_REGISTRY_SANS", value_delimiter = ',')]
    pub registry_sans: Vec<String>,
    /// Where the local agent gets function images: `import` (built images go straight
    /// into its containerd) or `registry` (pulled from the box's registry, as compute
    /// nodes do).
    #[arg(long, env = "ESB_IMAGE_SOURCE", default_value = "import",
          value_parser = ["import", "registry"])]
    pub image_source: String,
    #[command(flatten)]
    pub control: crate::settings::ControlArgs,
    /// WireGuard UDP port of the control node, on the host's addresses.
    #[arg(long, env = "ESB_WG_PORT", default_value_t = 51820)]
    pub wg_port: u16,
    /// How functions' policies apply: `enforce` (denied calls to S3, DynamoDB and the
    /// Invoke API are refused), `warn` (they pass and are logged) or `off`.
    #[arg(long, env = "ESB_IAM", default_value = "enforce",
          value_parser = ["enforce", "warn", "off"])]
    pub iam: String,
    /// Run workers only on compute nodes (no local agent).
    #[arg(long)]
    pub no_local_workers: bool,
    /// `0` is `--no-local-workers`.
    #[arg(long, env = "ESB_LOCAL_WORKERS", default_value = "1", hide = true)]
    pub local_workers: String,
    /// Next hop of 10.88.0.0/16 on the control side instead of wg0 (an address).
    #[arg(long, env = "GATEWAY_WORKER_ROUTE_VIA_HOST")]
    pub worker_route_via_host: Option<std::net::Ipv4Addr>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub box_args: BoxArgs,
}

/// Where the bundled example application is installed (`scripts/run.sh` puts it there),
/// relative to the `esb` executable, then in the source tree this binary was built from.
fn bundled_example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let installed = exe
        .parent()?
        .parent()?
        .join("share/esb/examples/template.yaml");
    if installed.is_file() {
        return Some(installed);
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/template.yaml");
    source
        .is_file()
        .then(|| source.canonicalize().unwrap_or(source))
}

fn resolve_template(a: &UpArgs) -> Result<PathBuf> {
    let path = match &a.template {
        Some(t) => t.clone(),
        None if Path::new("template.yaml").is_file() => PathBuf::from("template.yaml"),
        None => bundled_example().context(
            "no template: give --template (or ESB_TEMPLATE), or run in a directory with template.yaml",
        )?,
    };
    if !path.is_file() {
        bail!(
            "--template / ESB_TEMPLATE: {} does not exist",
            path.display()
        );
    }
    Ok(std::path::absolute(&path)?)
}

fn check_port_free(addr: SocketAddr, setting: &str) -> Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{setting}: cannot listen on {addr}: {e}"))
}

fn check_writable(dir: &Path) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("ESB_STATE_DIR {}: cannot create it", dir.display()))?;
    let probe = dir.join(".esb-write-probe");
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    r.with_context(|| {
        format!(
            "ESB_STATE_DIR {}: not writable (full or read-only disk?)",
            dir.display()
        )
    })
}

fn gateway_listen(a: &UpArgs) -> Result<SocketAddr> {
    if let Ok(v) = std::env::var("ESB_GATEWAY_LISTEN") {
        let mut addr: SocketAddr = v
            .parse()
            .map_err(|_| anyhow::anyhow!("ESB_GATEWAY_LISTEN: {v:?} is not an address:port"))?;
        if let Some(p) = a.port {
            addr.set_port(p);
        }
        return Ok(addr);
    }
    Ok(SocketAddr::from(([0, 0, 0, 0], a.port.unwrap_or(443))))
}

/// The local proxy's settings in a box: backends follow the services' ports unless
/// `ESB_*_BACKEND` names them.
pub fn box_backends(p: &ProxyArgs, s3: u16, dynamodb: u16, logs: u16) -> ProxyArgs {
    let mut proxy = p.clone();
    if std::env::var_os("ESB_S3_BACKEND").is_none() {
        proxy.s3_backend = format!("s3-storage:{s3}");
    }
    if std::env::var_os("ESB_DB_BACKEND").is_none() {
        proxy.db_backend = format!("database:{dynamodb}");
    }
    if std::env::var_os("ESB_LOGS_BACKEND").is_none() {
        proxy.logs_backend = format!("victorialogs:{logs}");
    }
    proxy
}

/// The gateway's log target when `VICTORIALOGS_URL` is not set: the box's log store.
pub fn default_gateway_logs_url(logstore: SocketAddr) -> String {
    format!("http://{}", esb_box::control::dial_addr(logstore))
}

/// Checks everything `up` needs without creating anything but the state directory and
/// the generated secrets. Returns the plan and the secrets generated now.
pub fn plan(state: &StateArgs, a: &UpArgs) -> Result<(Plan, Vec<(String, String)>)> {
    let template_path = resolve_template(a)?;
    let _template =
        esb_box::images::load_template(&template_path, a.parameter_overrides.as_deref())?;
    check_writable(&state.state_dir)?;
    let state_dir = std::path::absolute(&state.state_dir)?;
    std::fs::create_dir_all(layout::run_dir(&state_dir))?;
    // Secrets missing everywhere are generated now, stored once every check passed.
    let generated = config_file::generate_missing_secrets()?;
    // The credentials may just have been generated: read them again.
    let creds = crate::settings::Credentials {
        access_key: std::env::var("ESB_ACCESS_KEY_ID").ok(),
        secret_key: std::env::var("ESB_SECRET_ACCESS_KEY").ok(),
        region: a.box_args.creds.region.clone(),
    };
    let pair = creds.pair()?;
    let node = a.node.node_config(&StateArgs {
        state_dir: state_dir.clone(),
    });
    node.validate()?;
    let listen = gateway_listen(a)?;
    // The gateway's own checks (JWT secret length, auth settings, …) before any start.
    let mut gw = esb_gateway::Config::from_env()?;
    gw.listen = listen;
    gw.validate()?;
    let ports = crate::node::proxy_ports(&node);
    let proxy = box_backends(
        &a.proxy,
        a.s3_listen.port(),
        a.dynamodb_listen.port(),
        a.logstore_worker_listen.port(),
    );
    let st = StateArgs {
        state_dir: state_dir.clone(),
    };
    proxy.proxy_config(&st, None, [127, 0, 0, 1].into(), ports)?;
    for (addr, setting) in [
        (listen, "--port / ESB_GATEWAY_LISTEN"),
        (a.s3_listen, "ESB_S3_LISTEN"),
        (a.dynamodb_listen, "ESB_DYNAMODB_LISTEN"),
        (a.logstore_listen, "ESB_LOGSTORE_LISTEN"),
        (a.logstore_worker_listen, "ESB_LOGSTORE_WORKER_LISTEN"),
    ] {
        check_port_free(addr, setting)?;
    }
    if !a.registry_listen.ip().is_loopback() {
        bail!(
            "ESB_REGISTRY_LISTEN: {} is not a loopback address (the registry is reached from \
             elsewhere only through the relay at {})",
            a.registry_listen,
            esb_registry::CONTROL_HOST
        );
    }
    check_port_free(a.registry_listen, "ESB_REGISTRY_LISTEN")?;
    let registry_program = esb_registry::server::program()?;
    let control = a.control.network()?;
    std::net::UdpSocket::bind(("0.0.0.0", a.wg_port))
        .map(drop)
        .map_err(|e| anyhow::anyhow!("ESB_WG_PORT: cannot use UDP port {}: {e}", a.wg_port))?;
    let cluster = esb_box::cluster::ControlSide {
        state: state_dir.clone(),
        netns: control.netns.clone(),
        ip: control.ip,
        wg_port: a.wg_port,
        reserved: esb_box::cluster::reserved_numbers(node.worker_subnet),
        worker_route_via: a.worker_route_via_host,
        credentials: (
            pair.0.clone(),
            pair.1.clone(),
            a.box_args.creds.region.clone(),
        ),
    };
    let supervisor = crate::build::supervisor_path(&a.supervisor);
    if !supervisor.is_file() {
        bail!(
            "ESB_SUPERVISOR_BIN: {} does not exist (scripts/run.sh installs the static esb-supervisor)",
            supervisor.display()
        );
    }
    config_file::store_secrets(&state_dir, &generated)?;
    let hosts = st.hosts_file();
    if !hosts.exists() {
        std::fs::write(&hosts, crate::node::DEFAULT_HOSTS)
            .with_context(|| format!("write {}", hosts.display()))?;
    }
    Ok((
        Plan {
            state: state_dir,
            template: template_path,
            parameter_overrides: a.parameter_overrides.clone(),
            rebuild: a.build,
            node,
            proxy_ports: ports,
            proxy_args: proxy.to_args(&st),
            gateway_listen: listen,
            s3: a.s3_listen,
            dynamodb: a.dynamodb_listen,
            logstore: a.logstore_listen,
            logstore_workers: a.logstore_worker_listen,
            iam_mode: a.iam.parse()?,
            account_id: std::env::var("ESB_ACCOUNT_ID")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "000000000000".into()),
            gateway_logs_url: a
                .box_args
                .victorialogs_url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| default_gateway_logs_url(a.logstore_listen)),
            supervisor,
            creds: pair,
            region: a.box_args.creds.region.clone(),
            registry_listen: a.registry_listen,
            registry_sans: a.registry_sans.clone(),
            control,
            pull_images: a.image_source == "registry",
            cluster,
            local_workers: !a.no_local_workers && a.local_workers.trim() != "0",
            esb: esb_exe()?,
            containerd: containerd_program(),
            registry_program,
            node_id: std::env::var("ESB_NODE_ID").unwrap_or_else(|_| "node-1".into()),
            gateway_sans: std::env::var("ESB_GATEWAY_SANS")
                .map(|s| {
                    s.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            gateway_log_stderr: std::env::var("ESB_GATEWAY_LOG_STDERR")
                .unwrap_or_else(|_| "0".into()),
        },
        generated,
    ))
}

/// The warnings of the box's start (`STATE/run/start.json`), when it was written by `pid`.
fn start_warnings(state: &Path, pid: i32) -> Vec<String> {
    StartReport::read(state)
        .filter(|r| r.pid == pid)
        .map(|r| r.warnings)
        .unwrap_or_default()
}

/// What `esb up` says about the secrets it generated: their names and where they are,
/// never their values.
fn generated_note(generated: &[(String, String)], file: &Path) -> String {
    let names: Vec<&str> = generated.iter().map(|(k, _)| k.as_str()).collect();
    format!(
        "generated secrets {} (kept 0600 in {}; `esb config --show-secrets` prints them)",
        names.join(", "),
        file.display()
    )
}

fn print_summary(s: &BoxStatus, generated: &[(String, String)], warnings: &[String]) {
    println!("esb is up (pid {}), serving {}", s.pid, s.template);
    println!("  gateway   {}", s.gateway_url);
    println!("  CA        {}", s.ca);
    for k in ["s3", "dynamodb", "logs"] {
        if let Some(v) = s.endpoints[k].as_str() {
            println!("  {k:<9} {v}");
        }
    }
    for item in s.last_build["provisioned"]["created"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!("  created   {}", item.as_str().unwrap_or(""));
    }
    // Drift, a runtime served by another interpreter version, a function left out, …
    for w in warnings {
        println!("  warning   {w}");
    }
    let get = |k: &str| std::env::var(k).unwrap_or_default();
    if !generated.is_empty() {
        println!(
            "  {}",
            generated_note(generated, Path::new("the state directory's secrets.toml"))
        );
    }
    println!(
        "  credentials: AWS_ACCESS_KEY_ID={} (secret: `esb config --show-secrets`)",
        get("ESB_ACCESS_KEY_ID")
    );
    println!("  try (X_API_KEY, AUTH_USER, AUTH_PASS from `esb config --show-secrets`):");
    println!(
        "    TOKEN=$(curl -s --cacert {ca} -X POST {url}{path} -H \"x-api-key: $X_API_KEY\" \\\n      -d \"{{\\\"AuthParameters\\\":{{\\\"USERNAME\\\":\\\"$AUTH_USER\\\",\\\"PASSWORD\\\":\\\"$AUTH_PASS\\\"}}}}\" | jq -r .AuthenticationResult.IdToken)",
        ca = s.ca,
        url = s.gateway_url,
        path = std::env::var("AUTH_ENDPOINT_PATH").unwrap_or_else(|_| "/user/auth/ver1.0".into()),
    );
    println!(
        "    curl --cacert {} -H \"Authorization: Bearer $TOKEN\" {}/<route>",
        s.ca, s.gateway_url
    );
    println!("    esb status · esb logs -f · esb invoke <function> · esb down");
}

/// `esb up --access-key A --secret-key S`: the pair becomes the box's keys (stored in the
/// state directory's secrets.toml, so later starts keep them), then `esb up` runs again
/// without the flags and with the pair in its environment, so that no process's command
/// line holds a secret.
fn adopt_keys_and_restart(
    state: &StateArgs,
    rest: &[std::ffi::OsString],
    keys: &[(String, String)],
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let given = |env: &str| keys.iter().rev().find(|(k, _)| k == env).map(|(_, v)| v);
    let (Some(ak), Some(sk)) = (given("ESB_ACCESS_KEY_ID"), given("ESB_SECRET_ACCESS_KEY")) else {
        bail!("--access-key and --secret-key go together: give both (or neither)");
    };
    if ak.is_empty() || sk.is_empty() {
        bail!("--access-key / --secret-key: empty value");
    }
    if let Some((t, _)) = running(&state.state_dir) {
        bail!(
            "a box is already running on {} (pid {}): `esb down` first to change its keys",
            state.state_dir.display(),
            t.pid
        );
    }
    std::fs::create_dir_all(&state.state_dir).with_context(|| {
        format!(
            "ESB_STATE_DIR {}: cannot create it",
            state.state_dir.display()
        )
    })?;
    let pairs = [
        ("ESB_ACCESS_KEY_ID".to_string(), ak.clone()),
        ("ESB_SECRET_ACCESS_KEY".to_string(), sk.clone()),
    ];
    config_file::store_secrets(&state.state_dir, &pairs)?;
    let err = std::process::Command::new(std::env::current_exe()?)
        .args(&rest[1..])
        .envs(pairs)
        .exec();
    Err(err).context("run esb up again without the key flags")
}

/// `esb up`.
pub fn up(state: &StateArgs, a: &UpArgs) -> Result<()> {
    // The state directory, secrets and databases are the owner's alone (0700/0600).
    esb_box::perms::restrict_umask();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (rest, keys) = config_file::take_secret_flags(&args);
    if !keys.is_empty() {
        return adopt_keys_and_restart(state, &rest, &keys);
    }
    if let Some((t, s)) = running(&state.state_dir) {
        match s {
            Some(s) if s.state == "ready" => {
                println!(
                    "a box is already running on {} (pid {}):",
                    state.state_dir.display(),
                    t.pid
                );
                print_summary(&s, &[], &start_warnings(&state.state_dir, t.pid));
            }
            Some(s) => println!(
                "a box is already running on {} (pid {}, {}: {})",
                state.state_dir.display(),
                t.pid,
                s.state,
                s.message
            ),
            None => println!(
                "a box is already running on {} (pid {})",
                state.state_dir.display(),
                t.pid
            ),
        }
        return Ok(());
    }
    let (plan, generated) = plan(state, a)?;
    if a.foreground {
        // Never the values: this output often ends up in a journal.
        if !generated.is_empty() {
            eprintln!(
                "{}",
                generated_note(&generated, &config_file::secrets_path(&plan.state))
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return Ok(rt.block_on(control::run(plan))?);
    }
    // Background: the same command in the foreground, detached, logging to box.log.
    let log = layout::log_file(&plan.state, "box");
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    let mut child = daemon::detached(std::env::current_exe()?.as_os_str(), &args, &log)?
        .env("ESB_STATE_DIR", &plan.state)
        .env("ESB_TEMPLATE", &plan.template)
        .spawn()
        .context("start the box process")?;
    let show = std::io::stderr().is_terminal() || std::env::var_os("ESB_PROGRESS").is_some();
    let mut shown = offset;
    let started = Instant::now();
    loop {
        if show {
            shown = follow(&log, shown);
        }
        if let Some(st) = child.try_wait()? {
            // The box's own account: the failing step's error, what it cleaned up, the
            // warnings (the same text `esb up --foreground` and `esb status` show).
            let pid = child.id() as i32;
            if let Some(r) =
                StartReport::read(&plan.state).filter(|r| r.pid == pid && r.failure.is_some())
            {
                return Err(esb_box::Error::DidNotStart(Box::new(r)).into());
            }
            let s: Option<BoxStatus> = esb_box::status::read(&plan.state).filter(|s| s.pid == pid);
            let why = s
                .map(|s| s.message)
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    format!(
                        "it exited ({st}); last log lines:\n{}",
                        daemon::tail(&log, 15)
                    )
                });
            bail!("the box did not start: {why}");
        }
        if let Some((t, Some(s))) = running(&plan.state) {
            if s.state == "ready" {
                print_summary(&s, &generated, &start_warnings(&plan.state, t.pid));
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "the box is not ready after 15 minutes; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints what was appended to `log` since `from`; returns the new offset.
fn follow(log: &Path, from: u64) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return from;
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return from;
    }
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    eprint!("{buf}");
    from + buf.len() as u64
}

/// `esb down [--volumes]`: stops the box (or cleans up after one that died) and, with
/// `volumes`, removes the data of S3, DynamoDB and the log store.
pub fn down(
    state: &StateArgs,
    node: &NodeArgs,
    control: &crate::settings::ControlArgs,
    volumes: bool,
) -> Result<()> {
    let dir = &state.state_dir;
    if let Some((t, _)) = running(dir) {
        println!("stopping the box (pid {})…", t.pid);
        // SAFETY: kill(2) on the PID recorded with its start time, verified just now.
        unsafe {
            libc::kill(t.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while daemon::start_time(t.pid) == Some(t.start_time) {
            if Instant::now() > deadline {
                bail!(
                    "the box (pid {}) did not stop in 3 minutes; see {}",
                    t.pid,
                    layout::log_file(dir, "box").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        // No box process: remove whatever an unclean stop left behind.
        let left = esb_box::supervise::stop_leftovers(dir, control::COMPONENTS);
        if !left.is_empty() {
            println!("stopped leftovers: {}", left.join(", "));
        }
        let rn = esb_runtime_node::RuntimeNode::from_state_or(node.node_config(state))?;
        let ctd = private_containerd(state);
        if rn.status()?.up && ctd.dir.join("config.toml").exists() {
            ctd.start()?;
            let n = esb_box::containerd::destroy_workers_blocking(
                layout::agent_dir(dir),
                rn.config(),
                ctd.socket(),
            )?;
            if n > 0 {
                println!("removed {n} worker(s)");
            }
            ctd.stop()?;
        }
        rn.down()?;
        control.network()?.down()?;
        let _ = std::fs::remove_file(layout::status_file(dir));
        let _ = std::fs::remove_file(layout::start_report_file(dir));
        let _ = std::fs::remove_file(layout::box_pid_file(dir));
    }
    if volumes {
        for d in ["s3", "dynamodb", "logstore"] {
            let p = dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("remove {}", p.display()))?;
            }
        }
        println!("removed the data of S3, DynamoDB and the log store");
    }
    println!("esb is down");
    Ok(())
}

/// `esb reset [--yes]`: `down --volumes`, then the whole state directory (secrets, CA,
/// images, containerd's store). Asks first unless `yes`.
pub fn reset(
    state: &StateArgs,
    node: &NodeArgs,
    control: &crate::settings::ControlArgs,
    yes: bool,
) -> Result<()> {
    let dir = &state.state_dir;
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "esb reset destroys {} (data, secrets, CA); confirm with --yes",
                dir.display()
            );
        }
        eprint!(
            "This destroys every table, bucket, log, secret and the CA in {}. Type yes: ",
            dir.display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if line.trim() != "yes" {
            bail!("not confirmed; nothing changed");
        }
    }
    down(state, node, control, true)?;
    // containerd's snapshots may hold read-only mounts: the down above unmounted them.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    println!("removed {}", dir.display());
    Ok(())
}

/// `esb status [--json]`.
pub fn status(state: &StateArgs, json: bool) -> Result<()> {
    // Why the last start failed, while the box cleans up and after it exited.
    let failed_start = StartReport::read(&state.state_dir).filter(|r| r.failure.is_some());
    let Some((t, s)) = running(&state.state_dir) else {
        if json {
            let mut v = serde_json::json!({"running": false});
            if let Some(r) = &failed_start {
                v["start"] = serde_json::to_value(r)?;
            }
            println!("{v}");
        } else {
            println!(
                "esb is not running (state directory {})",
                state.state_dir.display()
            );
            if let Some(r) = &failed_start {
                println!("its last start failed: {r}");
            }
        }
        std::process::exit(3);
    };
    let failed_start = failed_start.filter(|r| r.pid == t.pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let gw = rt
        .block_on(control::gateway_status(&state.state_dir))
        .map_err(anyhow::Error::from);
    let registry_bytes = esb_registry::server::disk_usage(&state.state_dir.join("registry/data"));
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["running"] = true.into();
        v["pid"] = t.pid.into();
        v["registry"] = serde_json::json!({"disk_bytes": registry_bytes});
        if let Some(r) = StartReport::read(&state.state_dir).filter(|r| r.pid == t.pid) {
            v["start"] = serde_json::to_value(&r)?;
        }
        match &gw {
            Ok(g) => {
                v["functions"] = g["functions"].clone();
                v["agents"] = g["agents"].clone();
                v["gateway_logs_dropped"] = g["logs_dropped"].clone();
            }
            Err(e) => {
                v["functions"] = serde_json::json!([]);
                v["gateway_error"] = format!("{e:#}").into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let Some(s) = s else {
        println!("esb box pid {}: starting", t.pid);
        return Ok(());
    };
    println!("esb box pid {}: {} ({})", t.pid, s.state, s.message);
    if let Some(r) = &failed_start {
        println!("the box did not start: {r}");
    }
    println!("  template  {}", s.template);
    println!("  gateway   {}   CA {}", s.gateway_url, s.ca);
    println!(
        "  registry  {}   {:.1} MiB on disk",
        esb_registry::CONTROL_HOST,
        registry_bytes as f64 / 1048576.0
    );
    println!("  components:");
    for c in &s.components {
        println!(
            "    {:<11} {:<10} pid {:<8} restarts {}{}",
            c.name,
            c.state,
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restarts,
            c.last_exit
                .as_ref()
                .filter(|_| c.restarts > 0 || c.state != "running")
                .map(|e| format!("  (last exit: {e})"))
                .unwrap_or_default()
        );
    }
    // What the start warned about (a runtime served by another interpreter version, a
    // function left out, …) stays visible for as long as the box runs.
    if let Some(r) = StartReport::read(&state.state_dir).filter(|r| r.pid == t.pid) {
        if !r.warnings.is_empty() {
            println!("  warnings:");
            for w in &r.warnings {
                println!("    {w}");
            }
        }
    }
    match &gw {
        Ok(g) => {
            println!("  functions:");
            for f in g["functions"].as_array().into_iter().flatten() {
                let workers = f["workers"].as_array().map(|w| w.len()).unwrap_or(0);
                // Paused workers (ESB_CONTAINER_PAUSE) are idle ones, frozen.
                let paused = match f["pool"]["paused"].as_u64() {
                    Some(n) if n > 0 => format!(" (paused {n})"),
                    _ => String::new(),
                };
                println!(
                    "    {:<20} workers {:<3} idle {}{paused} busy {} waiting {}  capacity {}  breaker {}",
                    f["name"].as_str().unwrap_or("?"),
                    workers,
                    f["pool"]["idle"],
                    f["pool"]["busy"],
                    f["pool"]["waiting"],
                    f["capacity"],
                    f["breaker"].as_str().unwrap_or("?"),
                );
                for r in f["routes"].as_array().into_iter().flatten() {
                    println!("      {}", r.as_str().unwrap_or(""));
                }
                if let Some(e) = f["last_error"]["message"].as_str() {
                    println!("      last worker start failed: {e}");
                }
                if let Some(e) = f["last_replacement"]["message"].as_str() {
                    println!("      last worker lost: {e}");
                }
                if let Some(n) = f["logs_dropped"].as_u64().filter(|n| *n > 0) {
                    println!(
                        "      log records dropped by its workers (log store away too long): {n}"
                    );
                }
            }
            if let Some(n) = g["logs_dropped"].as_u64().filter(|n| *n > 0) {
                println!("  gateway log records dropped (log store away too long): {n}");
            }
        }
        Err(e) => println!("  functions: gateway not answering ({e:#})"),
    }
    if let Ok(g) = &gw {
        let wg: serde_json::Value = std::fs::read(layout::wg_status_file(&state.state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        println!("  nodes:");
        for a in g["agents"].as_array().into_iter().flatten() {
            let node = a["node"].as_str().unwrap_or("?");
            let handshake = wg["peers"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == node))
                .map(|p| match p["last_handshake"]["secs"].as_u64() {
                    Some(s) => format!("  wg handshake {s}s ago"),
                    None => "  wg no handshake yet".into(),
                })
                .unwrap_or_default();
            let state = if a["removed"] == true {
                "removed"
            } else if a["up"] == true {
                "ready"
            } else {
                "down"
            };
            println!(
                "    {node:<20} {state:<8} workers {:<3} memory {}/{} MiB  {}{handshake}",
                a["workers"],
                a["memory_mb"],
                match a["max_memory_mb"].as_u64() {
                    Some(0) | None => "-".to_string(),
                    Some(m) => m.to_string(),
                },
                a["endpoint"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Arguments of `esb invoke`.
#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    /// Function name (or logical id).
    pub function: String,
    /// The event: JSON text, or @FILE.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Invoke asynchronously (InvocationType Event): prints the request id.
    #[arg(long = "async")]
    pub asynchronous: bool,
}

/// `esb invoke`: the Lambda Invoke API of the running box, SigV4-signed with the box's
/// pair, over HTTPS trusting the box CA.
pub fn invoke(state: &StateArgs, a: &InvokeArgs) -> Result<()> {
    let Some((_, Some(s))) = running(&state.state_dir) else {
        bail!(
            "esb is not running (state directory {})",
            state.state_dir.display()
        );
    };
    let payload = match a.payload.strip_prefix('@') {
        Some(f) => std::fs::read(f).with_context(|| format!("--payload @{f}"))?,
        None => a.payload.clone().into_bytes(),
    };
    serde_json::from_slice::<serde_json::Value>(&payload).context("--payload is not JSON")?;
    let port: u16 = s
        .gateway_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("gateway URL in the status file")?;
    let creds = (
        std::env::var("ESB_ACCESS_KEY_ID").context(
            "ESB_ACCESS_KEY_ID is not set (give the box's pair as `esb up` got it: environment or esb.toml)",
        )?,
        std::env::var("ESB_SECRET_ACCESS_KEY").context(
            "ESB_SECRET_ACCESS_KEY is not set (give the box's pair as `esb up` got it: environment or esb.toml)",
        )?,
    );
    let region = std::env::var("ESB_REGION").unwrap_or_else(|_| "ap-northeast-1".into());
    let path = format!(
        "/2015-03-31/functions/{}/invocations",
        esb_sigv4::uri_encode(&a.function, true)
    );
    let mut req = esb_box::http::request(
        "POST",
        &format!("https://localhost:{port}{path}"),
        payload.clone(),
    )?;
    req.headers_mut().insert(
        "x-amz-invocation-type",
        if a.asynchronous {
            "Event"
        } else {
            "RequestResponse"
        }
        .parse()?,
    );
    esb_box::http::sign(&mut req, &payload, (&creds.0, &creds.1), &region, "lambda")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(esb_box::http::https(
        "localhost",
        port,
        Path::new(&s.ca),
        req,
        Duration::from_secs(920),
    ))?;
    if r.status >= 300 {
        bail!(
            "{} {}: {}",
            r.status,
            r.header("x-amzn-errortype").unwrap_or(""),
            String::from_utf8_lossy(&r.body)
        );
    }
    if a.asynchronous {
        println!(
            "accepted ({}), request id {}",
            r.status,
            r.header("x-amzn-requestid").unwrap_or("?")
        );
        return Ok(());
    }
    println!("{}", String::from_utf8_lossy(&r.body));
    if let Some(e) = r.header("x-amz-function-error") {
        bail!("function error ({e})");
    }
    Ok(())
}

/// A fingerprint of the template's directory tree: paths, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if matches!(
                n.as_ref(),
                ".esb" | "__pycache__" | ".git" | "target" | ".aws-sam"
            ) {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                ));
            }
        }
    }
    out.sort();
    out
}

/// `esb watch`: rebuilds and swaps functions when the template or its code changes.
pub fn watch(state: &StateArgs) -> Result<()> {
    let Some((t, Some(s))) = running(&state.state_dir) else {
        bail!(
            "esb is not running (state directory {}); start it with esb up",
            state.state_dir.display()
        );
    };
    let dir = Path::new(&s.template)
        .parent()
        .context("template directory")?
        .to_path_buf();
    println!("watching {} (Ctrl-C to stop)", dir.display());
    let mut last = fingerprint(&dir);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if daemon::start_time(t.pid) != Some(t.start_time) {
            bail!("the box stopped");
        }
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        // Let a burst of writes settle.
        std::thread::sleep(Duration::from_millis(300));
        last = fingerprint(&dir);
        println!("change detected: rebuilding");
        rebuild(state)?;
    }
}

/// Asks the box to rebuild (SIGHUP) and waits for the outcome.
pub fn rebuild(state: &StateArgs) -> Result<()> {
    let Some((t, Some(before))) = running(&state.state_dir) else {
        bail!("esb is not running");
    };
    // SAFETY: kill(2) on the box PID verified with its start time.
    unsafe {
        libc::kill(t.pid, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some((_, Some(s))) = running(&state.state_dir) {
            if s.generation > before.generation {
                if s.last_build["ok"] == true {
                    let changed: Vec<String> = s.last_build["images"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| i["changed"] == true)
                        .filter_map(|i| i["function"].as_str().map(String::from))
                        .collect();
                    println!(
                        "rebuilt: {}",
                        if changed.is_empty() {
                            "no image changed".to_string()
                        } else {
                            format!("new images for {}", changed.join(", "))
                        }
                    );
                } else {
                    println!(
                        "rebuild failed, still serving the previous build: {}",
                        s.last_build["error"].as_str().unwrap_or("?")
                    );
                }
                return Ok(());
            }
        } else {
            bail!("the box stopped");
        }
        if Instant::now() > deadline {
            bail!("no rebuild outcome after 15 minutes");
        }
    }
}

/// `esb config`: every setting with its effective value and where it came from.
pub fn config(
    state: &StateArgs,
    loaded: &config_file::Loaded,
    cmd: &clap::Command,
    show_secrets: bool,
) -> Result<()> {
    println!(
        "# effective configuration (flags > environment > {} > {} > secrets.toml > defaults)",
        loaded
            .config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "esb.toml (none found)".into()),
        loaded
            .env_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".env (none beside the template)".into())
    );
    let mut defaults = config_file::settings(cmd);
    for (key, value) in esb_gateway::config::setting_defaults() {
        defaults.insert(key.to_string(), value);
    }
    let mut notes = std::collections::BTreeMap::new();
    for (key, value, note) in derived_defaults(state, &defaults) {
        defaults.insert(key.to_string(), value);
        notes.insert(key, note);
    }
    for (key, default) in defaults {
        let set = std::env::var(&key).ok();
        let (value, origin) = match set {
            Some(v) => (
                v,
                match loaded.origins.get(&key) {
                    Some(config_file::Origin::File(_)) => "file",
                    Some(config_file::Origin::EnvFile(_)) => ".env",
                    Some(config_file::Origin::Secrets) => "secrets",
                    _ => "env",
                },
            ),
            None if key == "ESB_STATE_DIR" => {
                let dir = state.state_dir.display().to_string();
                let origin = if dir == default { "default" } else { "flag" };
                (dir, origin)
            }
            None if !default.is_empty() => (
                default,
                notes.get(key.as_str()).copied().unwrap_or("default"),
            ),
            None => continue,
        };
        let shown = if show_secrets {
            value
        } else {
            config_file::mask(&key, &value)
        };
        println!("{key} = {shown:?}  # {origin}");
    }
    Ok(())
}

/// Defaults that follow from other settings, with what is in effect: (key, value, note).
fn derived_defaults(
    state: &StateArgs,
    defaults: &std::collections::BTreeMap<String, String>,
) -> Vec<(&'static str, String, &'static str)> {
    let effective = |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| defaults.get(key).cloned())
            .unwrap_or_default()
    };
    let loopback_db = effective("DNAT_DB_IP")
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback());
    let db_port = if loopback_db {
        (
            "8001",
            "default: DNAT_DB_IP is loopback, so the local proxy's DynamoDB port (the seed's 8000 is for a database target)",
        )
    } else {
        ("8000", "default, as the seed")
    };
    let logstore = effective("ESB_LOGSTORE_LISTEN");
    let logs_url = logstore
        .parse::<SocketAddr>()
        .map(default_gateway_logs_url)
        .unwrap_or_else(|_| format!("http://{logstore}"));
    let tls = layout::tls_dir(&state.state_dir);
    vec![
        ("DNAT_DB_PORT", db_port.0.to_string(), db_port.1),
        (
            "VICTORIALOGS_URL",
            logs_url,
            "default: the gateway ships to the log store at ESB_LOGSTORE_LISTEN",
        ),
        (
            "SSL_CERT_PATH",
            tls.join("server.pem").display().to_string(),
            "default: generated by the box, signed by its CA",
        ),
        (
            "SSL_KEY_PATH",
            tls.join("server.key").display().to_string(),
            "default: generated by the box",
        ),
        (
            "ESB_GATEWAY_LOG_STDERR",
            "0".into(),
            "default in a box: the gateway's records go to the log store",
        ),
    ]
}
