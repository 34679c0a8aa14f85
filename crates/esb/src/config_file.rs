//! The configuration file (`esb.toml`) and the box's generated secrets.
//!
//! Keys are the environment variable names (`CNI_SUBNET = "10.88.1.0/24"`,
//! `JWT_SECRET_KEY = "…"`), so one name means one setting everywhere. Precedence is
//! flags > environment > `esb.toml` > `.env` beside the template (upstream ESB's file,
//! its names translated) > `STATE_DIR/secrets.toml` > defaults: before the
//! command line is parsed, every key of the files that the environment does not set is
//! put into this process's environment, and clap's `env` fallback does the rest. Child
//! processes of the box inherit the same environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Settings read by the gateway library from the environment (no clap flag of their own).
pub const GATEWAY_KEYS: &[&str] = &[
    "AUTH_ENDPOINT_PATH",
    "AUTH_PASS",
    "AUTH_USER",
    "CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
    "CIRCUIT_BREAKER_THRESHOLD",
    "ESB_ACCOUNT_ID",
    "ESB_AGENT_TIMEOUT",
    "ESB_API_STAGE",
    "ESB_CONTAINER_PAUSE",
    "ESB_DEFAULT_CONCURRENCY",
    "ESB_DRAIN_SECONDS",
    "ESB_EVENT_QUEUE",
    "ESB_EVENT_QUEUE_BYTES",
    "ESB_EVENT_RETRY_DELAY_MS",
    "ESB_GATEWAY_LOG_STDERR",
    "ESB_GATEWAY_SANS",
    "ESB_MAX_BODY_BYTES",
    "ESB_PAUSE_IDLE_SECONDS",
    "GATEWAY_IDLE_TIMEOUT_SECONDS",
    "HEARTBEAT_INTERVAL",
    "JWT_EXPIRES_DELTA",
    "JWT_SECRET_KEY",
    "LAMBDA_INVOKE_TIMEOUT",
    "LOG_LEVEL",
    "ORPHAN_GRACE_PERIOD_SECONDS",
    "POOL_ACQUIRE_TIMEOUT",
    "SSL_CERT_PATH",
    "SSL_KEY_PATH",
    "X_API_KEY",
];

/// Settings whose values are never printed.
pub const SECRET_KEYS: &[&str] = &[
    "JWT_SECRET_KEY",
    "X_API_KEY",
    "AUTH_PASS",
    "ESB_SECRET_ACCESS_KEY",
];

/// Every setting: its environment name and default (empty when none), from the flags of
/// `cmd` and its subcommands, plus the gateway's own settings; sorted by name.
pub fn settings(cmd: &clap::Command) -> BTreeMap<String, String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeMap<String, String>) {
        for a in cmd.get_arguments() {
            if let Some(env) = a.get_env() {
                let default = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                out.entry(env.to_string_lossy().into_owned())
                    .or_insert(default);
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(cmd, &mut out);
    for k in GATEWAY_KEYS {
        out.entry(k.to_string()).or_default();
    }
    out
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file at this path.
    File(PathBuf),
    /// The `.env` file beside the template (upstream ESB's configuration).
    EnvFile(PathBuf),
    /// The box's generated secrets.
    Secrets,
}

/// What [`preload`] did: the files it read and the keys it supplied.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    /// Keys set from a file, and which.
    pub origins: BTreeMap<String, Origin>,
    /// The `.env` file read, if any.
    pub env_file: Option<PathBuf>,
    /// What the user should know about the files (keys of `.env` that mean nothing in
    /// esb, and the like), to be printed once.
    pub warnings: Vec<String>,
}

/// Upstream ESB's settings that esb names otherwise: (upstream name, esb name, how the
/// value converts).
const UPSTREAM_ALIASES: &[(&str, &str, Convert)] = &[
    ("RUSTFS_ACCESS_KEY", "ESB_ACCESS_KEY_ID", Convert::Same),
    ("RUSTFS_SECRET_KEY", "ESB_SECRET_ACCESS_KEY", Convert::Same),
    ("GATEWAY_PORT", "ESB_GATEWAY_PORT", Convert::Same),
    ("RUSTFS_API_PORT", "ESB_S3_LISTEN", Convert::LoopbackPort),
    (
        "SCYLLADB_PORT",
        "ESB_DYNAMODB_LISTEN",
        Convert::LoopbackPort,
    ),
    (
        "VICTORIALOGS_PORT",
        "ESB_LOGSTORE_LISTEN",
        Convert::LoopbackPort,
    ),
    (
        "IDLE_TIMEOUT_MINUTES",
        "GATEWAY_IDLE_TIMEOUT_SECONDS",
        Convert::MinutesToSeconds,
    ),
    (
        "DEFAULT_MAX_CAPACITY",
        "ESB_DEFAULT_CONCURRENCY",
        Convert::Same,
    ),
    (
        "ENABLE_CONTAINER_PAUSE",
        "ESB_CONTAINER_PAUSE",
        Convert::Bool,
    ),
    (
        "PAUSE_IDLE_SECONDS",
        "ESB_PAUSE_IDLE_SECONDS",
        Convert::Same,
    ),
];

/// Upstream ESB's settings that have no meaning in esb (Docker Compose networks, the
/// manager service, RustFS/ScyllaDB tuning): accepted in `.env` and ignored, with a note.
const UPSTREAM_IGNORED: &[&str] = &[
    "CONTAINERS_NETWORK",
    "CONTAINER_CACHE_TTL",
    "DATA_ROOT_PATH",
    "EXTERNAL_NETWORK",
    "FUNCTIONS_CONFIG_PATH",
    "LAMBDA_NETWORK",
    "LOGS_ROOT_PATH",
    "MANAGER_PORT",
    "MANAGER_TIMEOUT",
    "MANAGER_URL",
    "ROUTING_CONFIG_PATH",
    "RUSTFS_COMPRESSION",
    "RUSTFS_CONSOLE_PORT",
    "RUSTFS_DEDUPLICATION",
    "SCYLLADB_MEMORY",
    "UVICORN_BIND_ADDR",
    "UVICORN_WORKERS",
];

/// How an upstream value becomes esb's.
#[derive(Debug, Clone, Copy)]
enum Convert {
    Same,
    /// A port becomes `127.0.0.1:PORT` (esb's services listen on loopback).
    LoopbackPort,
    MinutesToSeconds,
    /// `true`/`false` (any case) or `1`/`0` becomes `1`/`0`.
    Bool,
}

impl Convert {
    fn apply(self, key: &str, v: &str) -> Result<String> {
        let v = v.trim();
        Ok(match self {
            Convert::Same => v.to_string(),
            Convert::LoopbackPort => {
                let port: u16 = v
                    .parse()
                    .with_context(|| format!("{key}={v:?} is not a port"))?;
                format!("127.0.0.1:{port}")
            }
            Convert::MinutesToSeconds => {
                let m: f64 = v
                    .parse()
                    .with_context(|| format!("{key}={v:?} is not a number of minutes"))?;
                format!("{}", (m * 60.0).round() as u64)
            }
            Convert::Bool => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => "1".into(),
                "0" | "false" | "no" | "off" | "" => "0".into(),
                _ => bail!("{key}={v:?} is not true or false"),
            },
        })
    }
}

/// The template path the command line or `ESB_TEMPLATE` names (before parsing), else
/// `template.yaml`.
pub fn template_of(args: &[OsString]) -> PathBuf {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-t" || s == "--template" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        }
        if let Some(v) = s
            .strip_prefix("--template=")
            .or_else(|| s.strip_prefix("-t="))
        {
            return PathBuf::from(v);
        }
    }
    std::env::var_os("ESB_TEMPLATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("template.yaml"))
}

/// The `.env` file beside `template` (upstream ESB keeps its settings there).
pub fn env_file_of(template: &Path) -> PathBuf {
    match template.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(".env"),
        _ => PathBuf::from(".env"),
    }
}

/// Reads a `.env` file (`KEY=value` lines, `#` comments, quotes, `export`: dotenv's
/// syntax, without expanding into the environment). Keys esb knows are taken as they
/// are; upstream ESB's names are translated ([`UPSTREAM_ALIASES`]); upstream settings that
/// mean nothing here and keys nobody knows are left out with a warning (a `.env` is often
/// shared with other tools, so an unknown key is not an error there, unlike in esb.toml).
pub fn read_env_file(
    path: &Path,
    known: &[String],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, String>> {
    let iter = dotenvy::from_path_iter(path).with_context(|| format!("read {}", path.display()))?;
    let mut out = BTreeMap::new();
    for item in iter {
        let (key, value) =
            item.with_context(|| format!("{}: not a valid .env file", path.display()))?;
        if let Some((_, esb, conv)) = UPSTREAM_ALIASES.iter().find(|(u, _, _)| *u == key) {
            let v = conv
                .apply(&key, &value)
                .with_context(|| format!("{}", path.display()))?;
            out.insert(esb.to_string(), v);
        } else if key == "GATEWAY_INTERNAL_URL"
            && value
                .trim()
                .strip_prefix("https://")
                .and_then(|r| r.split(['/', ':']).next())
                .is_none_or(|h| h.parse::<std::net::IpAddr>().is_err())
        {
            // Upstream names the gateway's container (https://esb-gateway); here workers
            // reach it at an address of the node network.
            warnings.push(format!(
                "{}: GATEWAY_INTERNAL_URL={value:?} names a host; esb's workers reach the gateway at the default (https://10.88.0.1:443), so it is ignored",
                path.display()
            ));
        } else if known.iter().any(|k| k == &key) {
            out.insert(key, value);
        } else if UPSTREAM_IGNORED.contains(&key.as_str()) {
            warnings.push(format!(
                "{}: {key} has no meaning in esb and is ignored (docs/migrating.md)",
                path.display()
            ));
        } else {
            warnings.push(format!(
                "{}: {key} is not an esb setting and is ignored (`esb config` lists them)",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// Puts upstream ESB's names of settings set in the environment under esb's names, when
/// esb's own name is not set (`DEFAULT_MAX_CAPACITY=20` acts as `ESB_DEFAULT_CONCURRENCY`).
/// Must run before any thread starts.
pub fn apply_upstream_env_aliases() -> Result<()> {
    for (upstream, esb, conv) in UPSTREAM_ALIASES {
        if std::env::var_os(esb).is_some() {
            continue;
        }
        if let Ok(v) = std::env::var(upstream) {
            let v = conv.apply(upstream, &v)?;
            // SAFETY: called from main before any other thread exists.
            unsafe { std::env::set_var(esb, v) };
        }
    }
    Ok(())
}

/// The value of `--NAME VALUE` / `--NAME=VALUE` in `args` (before any subcommand parsing).
fn flag_value(args: &[OsString], name: &str) -> Option<PathBuf> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == long {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix(&with_eq) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Flags whose value is a secret (kept off every command line: see [`take_secret_flags`]).
pub const SECRET_FLAGS: &[(&str, &str)] = &[
    ("access-key", "ESB_ACCESS_KEY_ID"),
    ("secret-key", "ESB_SECRET_ACCESS_KEY"),
];

/// Removes the [`SECRET_FLAGS`] (`--NAME VALUE` / `--NAME=VALUE`) from `args`; returns the
/// remaining arguments and the values taken, by environment name.
pub fn take_secret_flags(args: &[OsString]) -> (Vec<OsString>, Vec<(String, String)>) {
    let mut rest = Vec::with_capacity(args.len());
    let mut taken = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let hit = SECRET_FLAGS.iter().find_map(|(flag, env)| {
            if s == format!("--{flag}") {
                Some((*env, it.next().map(|v| v.to_string_lossy().into_owned())))
            } else {
                s.strip_prefix(&format!("--{flag}="))
                    .map(|v| (*env, Some(v.to_owned())))
            }
        });
        match hit {
            Some((env, value)) => taken.push((env.to_owned(), value.unwrap_or_default())),
            None => rest.push(a.clone()),
        }
    }
    (rest, taken)
}

/// The state directory the command line, the environment or the default names.
pub fn state_dir_of(args: &[OsString]) -> PathBuf {
    flag_value(args, "state-dir")
        .or_else(|| std::env::var_os("ESB_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/esb"))
}

/// The generated secrets file of the box at `state_dir`.
pub fn secrets_path(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets.toml")
}

/// Reads a file of `KEY = value` pairs; values may be strings, integers, floats or
/// booleans. Unknown keys are an error naming the key and the file.
pub fn read_settings(path: &Path, known: &[String]) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if !known.iter().any(|k| k == &key) {
            bail!(
                "{}: unknown setting {key:?} (keys are the environment names: `esb config` lists them)",
                path.display()
            );
        }
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => (if b { "1" } else { "0" }).to_string(),
            other => bail!(
                "{}: {key} must be a string, number or boolean, not {}",
                path.display(),
                other.type_str()
            ),
        };
        out.insert(key, v);
    }
    Ok(out)
}

/// Loads the configuration file (`--config`/`ESB_CONFIG`, else `./esb.toml`, else
/// `STATE_DIR/esb.toml`), the `.env` file beside the template and the box's secrets into
/// the environment, in that order of precedence, without overriding anything the
/// environment already sets. Must run before any thread starts.
pub fn preload(args: &[OsString], known: &[String]) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let state = state_dir_of(args);
    let explicit =
        flag_value(args, "config").or_else(|| std::env::var_os("ESB_CONFIG").map(PathBuf::from));
    let config = match explicit {
        Some(p) => {
            if !p.exists() {
                bail!("ESB_CONFIG / --config: {} does not exist", p.display());
            }
            Some(p)
        }
        None => [PathBuf::from("esb.toml"), state.join("esb.toml")]
            .into_iter()
            .find(|p| p.is_file()),
    };
    apply_upstream_env_aliases()?;
    let mut layers = Vec::new();
    if let Some(path) = &config {
        layers.push((read_settings(path, known)?, Origin::File(path.clone())));
        loaded.config_file = Some(path.clone());
    }
    // Upstream ESB's `.env` beside the template: below esb.toml, above the secrets.
    let template = template_of(args);
    let env_file = env_file_of(&template);
    if template.is_file() && env_file.is_file() {
        let values = read_env_file(&env_file, known, &mut loaded.warnings)?;
        layers.push((values, Origin::EnvFile(env_file.clone())));
        loaded.env_file = Some(env_file);
    }
    let secrets = secrets_path(&state);
    if secrets.is_file() {
        layers.push((read_settings(&secrets, known)?, Origin::Secrets));
    }
    for (values, origin) in layers {
        for (k, v) in values {
            if std::env::var_os(&k).is_none() {
                // SAFETY: called from main before any other thread exists.
                unsafe { std::env::set_var(&k, &v) };
                loaded.origins.insert(k, origin.clone());
            }
        }
    }
    Ok(loaded)
}

/// A random token of `bytes` bytes from the kernel's generator, hex-encoded.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes one secret.
type Generator = fn() -> Result<String>;

/// The secrets the box needs and how to make each when it is missing.
fn secret_generators() -> Vec<(&'static str, Generator)> {
    vec![
        ("JWT_SECRET_KEY", || random_hex(32)),
        ("X_API_KEY", || random_hex(20)),
        ("AUTH_USER", || Ok("admin".to_string())),
        ("AUTH_PASS", || random_hex(12)),
        ("ESB_ACCESS_KEY_ID", || {
            Ok(format!("ESB{}", random_hex(8)?.to_uppercase()))
        }),
        ("ESB_SECRET_ACCESS_KEY", || random_hex(20)),
    ]
}

/// Generates the secrets that neither the environment nor a file provides and puts them
/// into the environment (nothing is written: see [`store_secrets`]). Returns the pairs
/// generated (empty when nothing was missing).
pub fn generate_missing_secrets() -> Result<Vec<(String, String)>> {
    let mut generated = Vec::new();
    for (key, make) in secret_generators() {
        if std::env::var(key).map(|v| v.is_empty()).unwrap_or(true) {
            generated.push((key.to_string(), make()?));
        }
    }
    for (k, v) in &generated {
        // SAFETY: `esb up` calls this before it starts any thread.
        unsafe { std::env::set_var(k, v) };
    }
    Ok(generated)
}

/// Sets `pairs` in `STATE_DIR/secrets.toml` (added, or replacing the same keys; mode
/// 0600, written atomically).
pub fn store_secrets(state_dir: &Path, pairs: &[(String, String)]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if pairs.is_empty() {
        return Ok(());
    }
    let path = secrets_path(state_dir);
    let mut table: toml::Table = match std::fs::read_to_string(&path) {
        Ok(t) => t
            .parse()
            .with_context(|| format!("{}: not valid TOML", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    for (k, v) in pairs {
        table.insert(k.clone(), toml::Value::String(v.clone()));
    }
    let mut text = "# Written by `esb up` (generated secrets, and keys given with --access-key/\n\
                    # --secret-key). Keys mirror the environment names; the environment and\n\
                    # esb.toml take precedence over this file.\n"
        .to_string();
    text.push_str(&toml::to_string(&table).context("encode secrets")?);
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

/// Masks a secret for display: its length only.
pub fn mask(key: &str, value: &str) -> String {
    if SECRET_KEYS.contains(&key) && !value.is_empty() {
        format!("******** ({} chars)", value.chars().count())
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "CNI_SUBNET",
            "X_API_KEY",
            "DNAT_APPLY_OUTPUT",
            "ESB_DEFAULT_CONCURRENCY",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn reads_strings_numbers_and_booleans() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esb.toml");
        std::fs::write(
            &p,
            "CNI_SUBNET = \"10.88.3.0/24\"\nESB_DEFAULT_CONCURRENCY = 4\nDNAT_APPLY_OUTPUT = false\n",
        )
        .unwrap();
        let v = read_settings(&p, &known()).unwrap();
        assert_eq!(v["CNI_SUBNET"], "10.88.3.0/24");
        assert_eq!(v["ESB_DEFAULT_CONCURRENCY"], "4");
        assert_eq!(v["DNAT_APPLY_OUTPUT"], "0");
    }

    #[test]
    fn unknown_keys_and_tables_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esb.toml");
        std::fs::write(&p, "CNI_SUBNETT = \"x\"\n").unwrap();
        let e = read_settings(&p, &known()).unwrap_err().to_string();
        assert!(e.contains("CNI_SUBNETT") && e.contains("esb.toml"), "{e}");
        std::fs::write(&p, "[X_API_KEY]\na = 1\n").unwrap();
        let e = read_settings(&p, &known()).unwrap_err().to_string();
        assert!(e.contains("X_API_KEY"), "{e}");
        std::fs::write(&p, "not toml =").unwrap();
        assert!(read_settings(&p, &known()).is_err());
    }

    #[test]
    fn flag_values_in_both_spellings() {
        let a: Vec<OsString> = ["esb", "--state-dir", "/x", "up"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(state_dir_of(&a), PathBuf::from("/x"));
        let a: Vec<OsString> = ["esb", "--state-dir=/y"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(state_dir_of(&a), PathBuf::from("/y"));
    }

    #[test]
    fn secret_flags_are_taken_off_the_command_line() {
        let a: Vec<OsString> = [
            "esb",
            "--access-key",
            "AK",
            "up",
            "--secret-key=SK",
            "--port",
            "8443",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let (rest, taken) = take_secret_flags(&a);
        assert_eq!(rest, ["esb", "up", "--port", "8443"]);
        assert_eq!(
            taken,
            [
                ("ESB_ACCESS_KEY_ID".to_string(), "AK".to_string()),
                ("ESB_SECRET_ACCESS_KEY".to_string(), "SK".to_string())
            ]
        );
    }

    #[test]
    fn stored_secrets_replace_the_same_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        store_secrets(
            dir.path(),
            &[pair("X_API_KEY", "a"), pair("AUTH_USER", "u")],
        )
        .unwrap();
        store_secrets(dir.path(), &[pair("X_API_KEY", "b")]).unwrap();
        let p = secrets_path(dir.path());
        let v = read_settings(&p, &known_with("AUTH_USER")).unwrap();
        assert_eq!(v["X_API_KEY"], "b");
        assert_eq!(v["AUTH_USER"], "u");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    fn known_with(extra: &str) -> Vec<String> {
        let mut k = known();
        k.push(extra.to_string());
        k
    }

    #[test]
    fn secrets_are_masked() {
        assert!(!mask("X_API_KEY", "abc").contains("abc"));
        assert_eq!(mask("CNI_SUBNET", "10.88.1.0/24"), "10.88.1.0/24");
    }

    #[test]
    fn env_file_takes_upstream_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(
            &p,
            "# upstream ESB's .env\n\
             JWT_SECRET_KEY=0123456789abcdef0123456789abcdef\n\
             X_API_KEY='quoted key'\n\
             export CNI_SUBNET=10.88.7.0/24\n\
             DEFAULT_MAX_CAPACITY=20\n\
             ENABLE_CONTAINER_PAUSE=true\n\
             IDLE_TIMEOUT_MINUTES=5\n\
             RUSTFS_API_PORT=9100\n\
             LAMBDA_NETWORK=onpre-internal-network\n\
             GATEWAY_INTERNAL_URL=https://esb-gateway\n\
             COMPOSE_PROJECT_NAME=x\n",
        )
        .unwrap();
        let mut known = known();
        known.push("JWT_SECRET_KEY".into());
        let mut warnings = Vec::new();
        let v = read_env_file(&p, &known, &mut warnings).unwrap();
        assert_eq!(v["JWT_SECRET_KEY"], "0123456789abcdef0123456789abcdef");
        assert_eq!(v["X_API_KEY"], "quoted key");
        assert_eq!(v["CNI_SUBNET"], "10.88.7.0/24");
        assert_eq!(v["ESB_DEFAULT_CONCURRENCY"], "20");
        assert_eq!(v["ESB_CONTAINER_PAUSE"], "1");
        assert_eq!(v["GATEWAY_IDLE_TIMEOUT_SECONDS"], "300");
        assert_eq!(v["ESB_S3_LISTEN"], "127.0.0.1:9100");
        assert!(!v.contains_key("LAMBDA_NETWORK"));
        assert!(!v.contains_key("GATEWAY_INTERNAL_URL"));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings
            .iter()
            .any(|w| w.contains("LAMBDA_NETWORK has no meaning")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("COMPOSE_PROJECT_NAME is not an esb setting")));
        // A bad value names the key and the file.
        std::fs::write(&p, "ENABLE_CONTAINER_PAUSE=perhaps\n").unwrap();
        let e = format!(
            "{:#}",
            read_env_file(&p, &known, &mut warnings).unwrap_err()
        );
        assert!(
            e.contains("ENABLE_CONTAINER_PAUSE") && e.contains(".env"),
            "{e}"
        );
    }

    #[test]
    fn template_and_env_file_from_the_command_line() {
        let args: Vec<OsString> = ["esb", "-t", "app/template.yaml", "up"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(template_of(&args), PathBuf::from("app/template.yaml"));
        assert_eq!(env_file_of(&template_of(&args)), PathBuf::from("app/.env"));
        assert_eq!(
            env_file_of(Path::new("template.yaml")),
            PathBuf::from(".env")
        );
        let args: Vec<OsString> = ["esb", "up", "--template=/x/t.yaml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(template_of(&args), PathBuf::from("/x/t.yaml"));
    }
}
