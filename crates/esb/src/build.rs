//! `esb build` and `esb init`: thin wrappers over esb-template and esb-image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::settings::StateArgs;

/// The template a command reads, with its parameter overrides.
#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// The SAM template: the global `-t/--template` (default `template.yaml`).
    #[arg(skip = PathBuf::from("template.yaml"))]
    pub template: PathBuf,
    /// Parameter overrides, `Key=Value` separated by spaces (after generator.yml's).
    #[arg(long)]
    pub parameter_overrides: Option<String>,
}

impl TemplateArgs {
    /// Takes the global `-t/--template` (if given).
    pub fn set(&mut self, template: Option<PathBuf>) {
        if let Some(t) = template {
            self.template = t;
        }
    }

    /// Loads the template with generator.yml and the overrides.
    pub fn load(&self) -> Result<esb_template::Template> {
        Ok(esb_box::images::load_template(
            &self.template,
            self.parameter_overrides.as_deref(),
        )?)
    }
}

/// Arguments of `esb build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Rebuild every layer even when its input did not change.
    #[arg(long)]
    pub no_cache: bool,
    /// Only show what would be built.
    #[arg(long)]
    pub dry_run: bool,
    /// Show every layer.
    #[arg(short, long)]
    pub verbose: bool,
    /// The static esb-supervisor binary to put in images (default: next to `esb`).
    #[arg(long, env = "ESB_SUPERVISOR_BIN")]
    pub supervisor: Option<PathBuf>,
    /// Also import the images into this containerd socket (default: the box's private
    /// containerd when it runs).
    #[arg(long, env = "ESB_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// Push the images to this OCI registry (`host:port` for HTTPS, or an http(s):// URL),
    /// as `esb/functions/NAME:REVISION`. Default: the running box's registry.
    #[arg(long)]
    pub push: Option<String>,
    /// CA certificate to check the registry of `--push` with (default: the system roots).
    #[arg(long, env = "ESB_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// User for the registry's basic auth (password: ESB_REGISTRY_PASSWORD).
    #[arg(long, env = "ESB_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,
    /// The running box's registry on this host (where a plain `esb build` pushes).
    #[arg(long, env = "ESB_REGISTRY_LISTEN", default_value = "127.0.0.1:5010")]
    pub registry_listen: std::net::SocketAddr,
}

pub(crate) fn supervisor_path(given: &Option<PathBuf>) -> PathBuf {
    given.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("esb-supervisor")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/esb-supervisor"))
    })
}

/// `esb build`.
pub fn build(state: &StateArgs, a: &BuildArgs) -> Result<()> {
    let template = a.template.load()?;
    let mut opts = esb_image::BuildOptions::new(&template, supervisor_path(&a.supervisor));
    opts.no_cache = a.no_cache;
    opts.dry_run = a.dry_run;
    let verbose = a.verbose;
    let progress = move |p: &esb_image::Progress| {
        use esb_image::Progress::*;
        match p {
            Planned { images, layers } => {
                eprintln!("building {images} image(s), {layers} layer(s)")
            }
            Base(line) => eprintln!("  base: {line}"),
            Layer {
                what, size, cached, ..
            } if verbose || !cached => {
                eprintln!(
                    "  {} {what} ({size} bytes)",
                    if *cached { "cached " } else { "built  " }
                )
            }
            Layer { .. } => {}
            Image {
                function,
                reference,
                changed,
                ..
            } => {
                eprintln!(
                    "  image {function}: {reference}{}",
                    if *changed { "" } else { " (unchanged)" }
                )
            }
            Skipped { function, reason } => eprintln!("  skipped {function}: {reason}"),
            Warning(w) => eprintln!("  warning: {w}"),
        }
    };
    let report = esb_image::build(&template, &opts, &progress)?;
    println!(
        "{} image(s) in {} ({} layer(s) built, {} cached)",
        report.images.len(),
        report.layout.display(),
        report.layers_built,
        report.layers_cached
    );
    if a.dry_run {
        return Ok(());
    }
    if let Some(registry) = push_target(state, a)? {
        push_images(&template, &report, &registry)?;
    }
    let socket = a.containerd_socket.clone().or_else(|| {
        let ctd = crate::settings::private_containerd(state);
        Some(ctd.socket()).filter(|_| ctd.running().is_some())
    });
    if let Some(socket) = socket {
        let refs: Vec<String> = report.images.iter().map(|i| i.reference.clone()).collect();
        esb_image::import_to_containerd_blocking(&report.layout, &refs, &socket)
            .with_context(|| format!("import into containerd at {}", socket.display()))?;
        println!("imported into containerd ({})", socket.display());
    }
    Ok(())
}

/// Where `esb build` pushes: `--push`, else the running box's registry, else nowhere.
fn push_target(state: &StateArgs, a: &BuildArgs) -> Result<Option<esb_image::Registry>> {
    if let Some(target) = &a.push {
        let mut r = esb_image::Registry::from_setting(target)?;
        r.ca_file = a.registry_ca.clone();
        if let Some(user) = &a.registry_username {
            let pass = std::env::var("ESB_REGISTRY_PASSWORD")
                .context("ESB_REGISTRY_PASSWORD: needed with --registry-username")?;
            r.auth = Some((user.clone(), pass));
        }
        return Ok(Some(r));
    }
    if esb_box::status::running(&state.state_dir).is_none() {
        return Ok(None);
    }
    let mut r = esb_image::Registry::from_setting(&a.registry_listen.to_string())?;
    r.ca_file = Some(state.state_dir.join("tls").join(esb_pki::CA_FILE));
    Ok(Some(r))
}

/// Pushes every built image as `esb/functions/NAME:REVISION` (only the blobs the registry
/// lacks), one line per image.
fn push_images(
    template: &esb_template::Template,
    report: &esb_image::BuildReport,
    registry: &esb_image::Registry,
) -> Result<()> {
    let layout = esb_image::Layout::open(&report.layout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!("pushing to {}", registry.url);
    let mut repos: Vec<String> = Vec::new();
    for i in &report.images {
        let Some(f) = template.function(&i.function) else {
            continue;
        };
        let repo = esb_registry::function_repository(&f.name);
        let tag = esb_registry::revision_tag(&i.manifest_digest);
        let r = rt
            .block_on(esb_image::push_mounting(
                &layout,
                &i.reference,
                registry,
                &repo,
                &tag,
                &repos,
            ))
            .with_context(|| format!("push {} to {}", f.name, registry.url))?;
        repos.push(repo);
        if r.manifest_pushed {
            println!(
                "  pushed {}: {} ({} layer(s) sent, {} blob(s) already there)",
                f.name, r.reference, r.layers_uploaded, r.blobs_present
            );
        } else {
            println!(
                "  {}: {} already in the registry, nothing sent",
                f.name, r.reference
            );
        }
    }
    Ok(())
}

/// Arguments of `esb init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The SAM template: the global `-t/--template` (default `template.yaml`).
    #[arg(skip = PathBuf::from("template.yaml"))]
    pub template: PathBuf,
    /// Stack name.
    #[arg(long, default_value = "esb")]
    pub stack_name: String,
    /// Take every default without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `esb init`: writes generator.yml beside the template, asking for each parameter when
/// run on a terminal (the default is taken on an empty answer or without a terminal).
pub fn init(a: &InitArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let specs = esb_template::parameter_specs(&a.template)?;
    let interactive = !a.yes && std::io::stdin().is_terminal();
    let mut values = indexmap::IndexMap::new();
    let stdin = std::io::stdin();
    for s in specs {
        let default = s.default.clone().unwrap_or_default();
        let value = if interactive {
            print!("{} ({}) [{}]: ", s.name, s.param_type, default);
            std::io::stdout().flush()?;
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            let line = line.trim().to_string();
            if line.is_empty() {
                default
            } else {
                line
            }
        } else {
            default
        };
        values.insert(s.name, value);
    }
    let out = a.template.with_file_name("generator.yml");
    std::fs::write(&out, esb_template::render_generator(&a.stack_name, &values))
        .with_context(|| format!("write {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Arguments of `esb gateway` (every other setting comes from the environment names of
/// the seed: JWT_SECRET_KEY, X_API_KEY, AUTH_USER, … see docs/gateway.md).
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The template whose routes and functions the gateway serves.
    #[command(flatten)]
    pub template: TemplateArgs,
    /// JSON file mapping function names to their image digests (written by the box after
    /// each build): a changed digest makes new workers on reload.
    #[arg(long)]
    pub revisions: Option<PathBuf>,
}

/// The functions of the template as the gateway serves them.
fn gateway_functions(a: &GatewayArgs) -> Result<Vec<esb_gateway::FunctionSpec>> {
    let template = a.template.load()?;
    let opts = esb_image::BuildOptions::new(&template, supervisor_path(&None));
    let revisions: serde_json::Map<String, serde_json::Value> = match &a.revisions {
        Some(p) if p.exists() => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("{}: not a JSON object", p.display()))?,
        _ => Default::default(),
    };
    // Each function's own key pair (ESB_IAM_FILE, written by the box with the revisions).
    let keys = match std::env::var_os("ESB_IAM_FILE") {
        Some(p) => esb_iam::store::read(std::path::Path::new(&p))?.principals,
        None => Vec::new(),
    };
    Ok(template
        .functions
        .iter()
        .map(|f| {
            let mut spec =
                esb_gateway::FunctionSpec::from_template(f, esb_image::image_reference(&opts, f));
            if let Some(r) = revisions.get(&f.name).and_then(|v| v.as_str()) {
                // A build of the box: the image as every node finds it, pinned by digest.
                spec.image = esb_registry::image_reference(esb_registry::CONTROL_HOST, &f.name, r);
                spec.revision = r.to_string();
            }
            if let Some(k) = keys
                .iter()
                .find(|k| k.function == f.name && k.expires_at.is_none())
            {
                spec.env.retain(|(name, _)| {
                    !matches!(
                        name.as_str(),
                        "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN"
                    )
                });
                spec.env
                    .push(("AWS_ACCESS_KEY_ID".into(), k.access_key.clone()));
                spec.env
                    .push(("AWS_SECRET_ACCESS_KEY".into(), k.secret_key.clone()));
            }
            spec
        })
        .collect())
}

/// `esb gateway`: serves the template's functions, images named as `esb build` names them.
/// SIGHUP re-reads the template and the revisions and swaps the functions without failing
/// requests; with `ESB_AGENTS_FILE`, it first re-reads that file and reloads the agents
/// (new node ids appended, missing ones removed; see `Reloader::reload_agents`).
pub fn gateway(state: &StateArgs, a: &GatewayArgs) -> Result<()> {
    let functions = gateway_functions(a)?;
    let mut cfg = esb_gateway::Config::from_env()?;
    if std::env::var_os("ESB_GATEWAY_DATA_DIR").is_none() {
        // The agent mounts STATE_DIR/tls/ca.pem into workers: keep the CA there.
        cfg.data_dir = state.state_dir.join("tls");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // What SIGHUP reloads the agents from: ESB_AGENTS (as started) and the file, re-read.
    let agents_cfg = cfg.agents_file.is_some().then(|| cfg.clone());
    rt.block_on(async move {
        let server = esb_gateway::Server::bind(cfg, functions).await?;
        let reloader = server.reloader();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // `{"reloads": N, "ok": bool, "error": "..."}` (the functions), with
        // `"agents": {"ok": bool, "report"|"error": …}` when `ESB_AGENTS_FILE` is set.
        let outcome_file = a
            .revisions
            .as_deref()
            .map(esb_box::layout::reload_outcome_file);
        if let Some(f) = &outcome_file {
            let _ = std::fs::remove_file(f);
        }
        let reloads = async move {
            let mut n = 0u64;
            while hup.recv().await.is_some() {
                n += 1;
                // Agents first: functions warmed up by this reload may use new nodes.
                let agents = match &agents_cfg {
                    None => None,
                    Some(c) => Some(match c.agent_list() {
                        Ok(list) => reloader.reload_agents(list).await,
                        Err(e) => Err(e),
                    }),
                };
                let agents_outcome = match &agents {
                    None => serde_json::Value::Null,
                    Some(Ok(r)) => {
                        tracing::info!(report = ?r, "agents reloaded");
                        serde_json::json!({"ok": true, "report": r})
                    }
                    Some(Err(e)) => {
                        tracing::error!(
                            "agents reload refused, keeping the previous agents: {e:#}"
                        );
                        serde_json::json!({"ok": false, "error": format!("{e:#}")})
                    }
                };
                let result = match gateway_functions(a) {
                    Ok(f) => reloader.reload(f).await,
                    Err(e) => Err(e),
                };
                let mut outcome = match &result {
                    Ok(r) => {
                        tracing::info!(report = ?r, "reloaded");
                        serde_json::json!({"reloads": n, "ok": true})
                    }
                    Err(e) => {
                        tracing::error!("reload refused, still serving the previous set: {e:#}");
                        serde_json::json!({"reloads": n, "ok": false, "error": format!("{e:#}")})
                    }
                };
                // `ok` stays the functions' outcome (what a rebuild waits for).
                if !agents_outcome.is_null() {
                    outcome["agents"] = agents_outcome;
                }
                if let Some(f) = &outcome_file {
                    let tmp = f.with_extension("tmp");
                    if std::fs::write(&tmp, outcome.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, f);
                    }
                }
            }
        };
        tokio::select! {
            r = server.run(crate::agent::shutdown_signal()) => r,
            _ = reloads => Ok(()),
        }
    })
}
