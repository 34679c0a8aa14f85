//! `esb`: the Edge Serverless Box command line. Thin: it parses arguments and settings,
//! wires the component crates together and prints results.

mod agent;
mod build;
mod config_file;
mod doctor;
mod node;
mod services;
mod settings;
mod up;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use settings::{NodeArgs, ProxyArgs, StateArgs};

/// Edge Serverless Box: run AWS SAM applications on your own machines.
#[derive(Debug, Parser)]
#[command(name = "esb", version, about)]
struct Cli {
    #[command(flatten)]
    state: StateArgs,
    /// Log filter (tracing's syntax: info, debug, esb_local_proxy=debug, …).
    #[arg(long, env = "ESB_LOG", default_value = "info,s3s=off", global = true)]
    log: String,
    /// Configuration file (keys are the environment names; default ./esb.toml, else
    /// STATE_DIR/esb.toml).
    #[arg(long, env = "ESB_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The SAM template (default ./template.yaml; `esb up` falls back to the bundled
    /// example application). A `.env` beside it is read as settings (below esb.toml).
    #[arg(long, short = 't', env = "ESB_TEMPLATE", global = true)]
    template: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the whole box: network, containerd, S3, DynamoDB, log store, agent, gateway;
    /// build the images and provision the template's tables and buckets.
    Up(Box<up::UpArgs>),
    /// Stop the box and remove its network, workers and processes.
    Down {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        control: settings::ControlArgs,
        /// Also delete the data of S3, DynamoDB and the log store.
        #[arg(long, short = 'v')]
        volumes: bool,
    },
    /// Show the box: components, functions, routes, workers, pools and breakers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the box and delete its whole state directory (data, secrets, CA).
    Reset {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        control: settings::ControlArgs,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Invoke a function through the box's Lambda Invoke API.
    Invoke(up::InvokeArgs),
    /// Rebuild and swap functions whenever the template or its code changes.
    Watch {
        /// Rebuild once now and exit.
        #[arg(long)]
        once: bool,
    },
    /// Trust the box CA system-wide (Debian's trust store), so that curl and Python reach
    /// the gateway without `--cacert`; `--remove` takes it out again.
    Trust {
        /// Remove the box CA from the trust store.
        #[arg(long)]
        remove: bool,
    },
    /// Print the effective configuration (secrets masked).
    Config {
        /// Print secrets in clear.
        #[arg(long)]
        show_secrets: bool,
    },
    /// The runtime-node: node namespace, bridge, NAT and local proxy.
    Node {
        #[command(subcommand)]
        command: Box<NodeCommand>,
    },
    /// Run the local proxy in the foreground.
    Proxy {
        /// Named network namespace to listen in (default: the current one).
        #[arg(long, env = "ESB_PROXY_NETNS")]
        netns: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        listen: IpAddr,
        /// Listen port of the S3 route.
        #[arg(long, default_value_t = 9000)]
        s3_port: u16,
        /// Listen port of the DynamoDB route.
        #[arg(long, default_value_t = 8001)]
        db_port: u16,
        /// Listen port of the log store route.
        #[arg(long, default_value_t = 9428)]
        logs_port: u16,
        /// Write "PID STARTTIME" here once listening.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Run an L4 relay in the foreground: listeners in a namespace, backends by name
    /// (the box runs one in the control namespace for 10.99.0.1:5010 -> esb-registry:5010).
    Relay {
        /// Named network namespace to listen in (default: the current one).
        #[arg(long)]
        netns: Option<String>,
        /// A route NAME=LISTEN=BACKEND, e.g. registry=10.99.0.1:5010=esb-registry:5010
        /// (repeat for more).
        #[arg(long = "route", required = true)]
        routes: Vec<String>,
        /// Write "PID STARTTIME" here once listening.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Run a WireGuard interface in the foreground (userspace): the interface in the
    /// namespace its file names, the UDP socket here; SIGHUP re-reads the peers.
    Wireguard {
        /// The interface's file (JSON: ifname, netns, address, private_key_file, listen,
        /// peers).
        #[arg(long)]
        interface_file: PathBuf,
        /// Rewritten every 2 s with each peer's handshake age and traffic.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Written with the PID once the interface is up.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Run the agent (worker lifecycle over gRPC) in the foreground.
    Agent(Box<agent::AgentArgs>),
    /// Run the embedded S3 service alone (default 127.0.0.1:9000).
    S3 {
        #[command(flatten)]
        svc: services::ServiceArgs,
        #[command(flatten)]
        creds: settings::Credentials,
        /// Accept Signature Version 2 (header and presigned URLs); off by default, as on
        /// AWS.
        #[arg(long = "sigv2", env = "ESB_S3_SIGV2", default_value = "0", value_parser = settings::parse_bool01)]
        sigv2: bool,
    },
    /// Run the embedded DynamoDB-compatible service alone (default 127.0.0.1:8000).
    Dynamodb {
        #[command(flatten)]
        svc: services::ServiceArgs,
        #[command(flatten)]
        creds: settings::Credentials,
    },
    /// Run the embedded log store alone (default 127.0.0.1:9428).
    Logstore {
        #[command(flatten)]
        svc: services::ServiceArgs,
        #[command(flatten)]
        limits: services::LogstoreArgs,
        /// The box's key pair, for the CloudWatch Logs API's host clients.
        #[command(flatten)]
        creds: settings::Credentials,
    },
    /// Show records from the log store.
    Logs(services::LogsArgs),
    /// Build the template's function images (only what changed).
    Build(build::BuildArgs),
    /// Write generator.yml with the template's parameters.
    Init(build::InitArgs),
    /// Run the gateway (HTTPS API Gateway, Lambda Invoke API, pools) in the foreground.
    Gateway(build::GatewayArgs),
    /// Check the box and print a hint for each problem; non-zero exit when a check fails.
    Doctor {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Print a one-time token with which a compute node joins this box (`esb node join`).
    Token {
        /// The address compute nodes reach this box's gateway at (HOST or HOST:PORT;
        /// default: this host's name and the gateway's port).
        #[arg(long)]
        endpoint: Option<String>,
        /// How long the token may be used (30m, 1h, 2d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// WireGuard UDP port of this box.
        #[arg(long, env = "ESB_WG_PORT", default_value_t = 51820)]
        wg_port: u16,
    },
    /// Join a box as a compute node (runs in the background, like `esb up`); with no token,
    /// restart a node that joined before with its identity.
    Join(settings::JoinArgs),
    /// Stop this compute node and remove everything it made (the control node drains and
    /// forgets it first).
    Leave(settings::LeaveArgs),
    /// On the control node: drain and forget a compute node that cannot leave itself (its
    /// host is gone), by id.
    Remove {
        /// The node's id, as `esb status` lists it.
        node_id: String,
    },
    /// Build the node network and start the local proxy (idempotent).
    Up {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Do not start the local proxy.
        #[arg(long)]
        no_proxy: bool,
        /// Do not start the private containerd (workers then need --containerd-socket).
        #[arg(long)]
        no_containerd: bool,
    },
    /// Stop the proxy and remove the node network, its attachments and leases.
    Down {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show the node network, NAT rules, proxy and attachments.
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a worker-like namespace NAME attached to the bridge.
    Attach {
        /// Namespace name.
        name: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach and remove the namespace NAME.
    Detach {
        /// Namespace name.
        name: String,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// `esb trust [--remove]`.
fn trust(state: &StateArgs, remove: bool) -> anyhow::Result<()> {
    use esb_box::trust::{self, Trust};
    let dir = std::path::Path::new(trust::LOCAL_CA_DIR);
    let done = if remove {
        trust::remove(dir)?
    } else {
        trust::install(&esb_box::layout::ca_file(&state.state_dir), dir)?
    };
    match done {
        Trust::Installed(p) => println!("the box CA is trusted system-wide ({})", p.display()),
        Trust::AlreadyTrusted(p) => println!("the box CA was trusted already ({})", p.display()),
        Trust::Removed(p) => println!("the box CA is no longer trusted (removed {})", p.display()),
        Trust::NotTrusted => println!("the box CA was not in the trust store"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Started by containerd's shim as a worker's console logger (not a user command).
    if args.get(1).is_some_and(|a| a == esb_agent::console::ARG) {
        esb_agent::console::run_logger();
    }
    let command = Cli::command();
    let loaded = match config_file::preload(
        &args,
        &config_file::settings(&command)
            .into_keys()
            .collect::<Vec<_>>(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("esb: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut cli = match Cli::from_arg_matches(&Cli::command().get_matches_from(&args)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    for w in &loaded.warnings {
        eprintln!("esb: warning: {w}");
    }
    // The global `-t TEMPLATE` goes to the commands that read a template.
    let template = cli.template.clone();
    match &mut cli.command {
        Command::Up(a) => a.template = template,
        Command::Build(a) => a.template.set(template),
        Command::Gateway(a) => a.template.set(template),
        Command::Init(a) => a.template = template.unwrap_or_else(|| "template.yaml".into()),
        _ => {}
    }
    // Commands that print end quietly when their reader goes away, like other Unix tools.
    // Servers keep Rust's default (SIGPIPE ignored): a client that disconnects mid-write
    // must cost one connection, not the process.
    let serves = matches!(
        cli.command,
        Command::Up(_)
            | Command::Proxy { .. }
            | Command::Relay { .. }
            | Command::Wireguard { .. }
            | Command::Agent(_)
            | Command::Gateway(_)
            | Command::S3 { .. }
            | Command::Dynamodb { .. }
            | Command::Logstore { .. }
    );
    if !serves {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    } else {
        // Long-running servers give memory back after a burst: few malloc arenas (glibc
        // makes one per thread that contends, and keeps what they grew to), and a fixed
        // mmap threshold so large buffers are unmapped when freed instead of raising the
        // threshold and staying in the heap.
        // SAFETY: mallopt(3) before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let state = &cli.state;
    let result = match cli.command {
        Command::Up(args) => up::up(state, &args),
        Command::Down {
            node,
            control,
            volumes,
        } => up::down(state, &node, &control, volumes),
        Command::Status { json } => up::status(state, json),
        Command::Reset { node, control, yes } => up::reset(state, &node, &control, yes),
        Command::Invoke(args) => up::invoke(state, &args),
        Command::Watch { once } => {
            if once {
                up::rebuild(state)
            } else {
                up::watch(state)
            }
        }
        Command::Trust { remove } => trust(state, remove),
        Command::Config { show_secrets } => up::config(state, &loaded, &command, show_secrets),
        Command::Node { command } => match *command {
            NodeCommand::Token {
                endpoint,
                ttl,
                wg_port,
            } => node::token(state, endpoint, &ttl, wg_port),
            NodeCommand::Join(args) => node::join(state, &args),
            NodeCommand::Leave(args) => node::leave(state, &args),
            NodeCommand::Remove { node_id } => node::remove(state, &node_id),
            NodeCommand::Up {
                node,
                proxy,
                no_proxy,
                no_containerd,
            } => node::up(state, &node, &proxy, no_proxy, no_containerd),
            NodeCommand::Down { node } => node::down(state, &node),
            NodeCommand::Status { node, json } => node::status(state, &node, json),
            NodeCommand::Attach { name, node, json } => node::attach(state, &node, &name, json),
            NodeCommand::Detach { name, node } => node::detach(state, &node, &name),
        },
        Command::Proxy {
            netns,
            listen,
            s3_port,
            db_port,
            logs_port,
            pid_file,
            proxy,
        } => node::proxy(
            state,
            &proxy,
            netns,
            listen,
            [s3_port, db_port, logs_port],
            pid_file,
        ),
        Command::Relay {
            netns,
            routes,
            pid_file,
            proxy,
        } => node::relay(state, &proxy, netns, &routes, pid_file),
        Command::Wireguard {
            interface_file: config,
            status_file,
            ready_file,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                let ready = || match &ready_file {
                    Some(p) => esb_box::daemon::write_pid_file(p).map_err(std::io::Error::other),
                    None => Ok(()),
                };
                let r = rt.block_on(esb_wireguard::service::run(
                    &config,
                    status_file.as_deref(),
                    ready,
                ));
                if let Some(p) = &ready_file {
                    let _ = std::fs::remove_file(p);
                }
                r.map_err(anyhow::Error::from)
            }),
        Command::Agent(args) => agent::run(state, &args),
        Command::S3 { svc, creds, sigv2 } => services::s3(state, &svc, &creds, sigv2),
        Command::Dynamodb { svc, creds } => services::dynamodb(state, &svc, &creds),
        Command::Logstore { svc, limits, creds } => {
            services::logstore(state, &svc, &limits, &creds)
        }
        Command::Logs(args) => services::logs(state, &args),
        Command::Build(args) => build::build(state, &args),
        Command::Init(args) => build::init(&args),
        Command::Gateway(args) => build::gateway(state, &args),
        Command::Doctor { node, proxy } => doctor::run(state, &node, &proxy),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
