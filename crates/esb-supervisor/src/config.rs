//! The supervisor's configuration, read from the worker's environment.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default address of the invoke endpoint (the worker contract: worker.ip:8080).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default address of the Runtime API served to the runtime client.
pub const DEFAULT_RUNTIME_API: &str = "127.0.0.1:9001";
/// esb's Node.js runtime interface client in the image (the image builder puts it in the
/// supervisor's layer); `ESB_NODE_RIC` overrides it.
pub const NODE_RIC: &str = "/var/runtime/esb/ric.mjs";

/// Everything the supervisor needs to run one function.
#[derive(Clone, Debug)]
pub struct Config {
    /// Invoke endpoint address (`ESB_SUPERVISOR_LISTEN`, default `0.0.0.0:8080`; port 0 picks one).
    pub listen: SocketAddr,
    /// Runtime API address (`ESB_RUNTIME_API_LISTEN`, default `127.0.0.1:9001`; port 0 picks one).
    pub runtime_api_listen: SocketAddr,
    /// The runtime process: program and arguments.
    pub command: Vec<OsString>,
    /// `ESB_RUNTIME` as given (`python3.12`, `provided.al2023`, …); may be empty.
    pub runtime: String,
    /// `_HANDLER`.
    pub handler: String,
    /// `LAMBDA_TASK_ROOT` (default `/var/task`); the runtime's working directory.
    pub task_root: PathBuf,
    /// `AWS_LAMBDA_FUNCTION_NAME` (default `function`).
    pub function_name: String,
    /// `AWS_LAMBDA_FUNCTION_VERSION` (default `$LATEST`).
    pub function_version: String,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB (default 128).
    pub memory_mb: u32,
    /// `AWS_LAMBDA_FUNCTION_TIMEOUT` (seconds, default 3).
    pub timeout: Duration,
    /// `AWS_REGION` (default `us-east-1`).
    pub region: String,
    /// Account id used in the invoked function ARN (`ESB_ACCOUNT_ID`, default 000000000000).
    pub account_id: String,
    /// `VICTORIALOGS_URL`: where logs are shipped; `None` prints them on stdout.
    pub victorialogs_url: Option<String>,
    /// `ESB_LOG_STDOUT_FORMAT=json` prints the structured records instead of raw lines.
    pub stdout_json: bool,
    /// `ESB_INIT_TIMEOUT_MS` (default 10000, Lambda's init limit): how long an invocation may
    /// wait for the runtime's init before its own timeout starts.
    pub init_timeout: Duration,
    /// `ESB_SHUTDOWN_GRACE_MS` (default 2000): how long SIGTERM waits for a running invocation.
    pub shutdown_grace: Duration,
    /// `ESB_LOG_FLUSH_TIMEOUT_MS` (default 3000): how long the final log flush may take.
    pub log_flush_timeout: Duration,
    /// `ESB_LOG_BUFFER_BYTES` (default 8 MiB): memory bound of the log shipping queue.
    pub log_buffer_bytes: usize,
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment. `args` (the command line
    /// after the program name), when not empty, is the runtime command to run instead of
    /// the one derived from `ESB_RUNTIME`.
    pub fn from_env(args: Vec<OsString>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok(), args)
    }

    /// Like [`Config::from_env`] with a custom variable lookup (for tests and embedding).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        args: Vec<OsString>,
    ) -> Result<Config, ConfigError> {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let addr = |k: &str, default: &str| -> Result<SocketAddr, ConfigError> {
            let v = var(k).unwrap_or_else(|| default.to_string());
            v.trim().parse().map_err(|_| {
                ConfigError(format!("{k}={v:?} is not an address like 127.0.0.1:9001"))
            })
        };
        let millis = |k: &str, default: u64| -> Result<Duration, ConfigError> {
            match var(k) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError(format!("{k}={v:?} is not a number of milliseconds"))),
            }
        };

        let runtime = var("ESB_RUNTIME").unwrap_or_default().trim().to_string();
        let handler = var("_HANDLER").unwrap_or_default().trim().to_string();
        let task_root =
            PathBuf::from(var("LAMBDA_TASK_ROOT").unwrap_or_else(|| "/var/task".into()));

        let timeout = match var("AWS_LAMBDA_FUNCTION_TIMEOUT") {
            None => Duration::from_secs(3),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(ConfigError(format!(
                        "AWS_LAMBDA_FUNCTION_TIMEOUT={v:?} is not a positive number of seconds"
                    )))
                }
            },
        };
        let memory_mb = match var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
            None => 128,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE={v:?} is not a size in MB"
                    ))
                })?,
        };

        let command = if !args.is_empty() {
            args
        } else if runtime.starts_with("python") {
            if handler.is_empty() {
                return Err(ConfigError(format!(
                    "ESB_RUNTIME={runtime} needs _HANDLER (module.function)"
                )));
            }
            let python = var("ESB_PYTHON").unwrap_or_else(|| "python3".into());
            vec![
                python.into(),
                "-m".into(),
                "awslambdaric".into(),
                handler.clone().into(),
            ]
        } else if runtime.starts_with("nodejs") {
            if handler.is_empty() {
                return Err(ConfigError(format!(
                    "ESB_RUNTIME={runtime} needs _HANDLER (file.export)"
                )));
            }
            let node = var("ESB_NODE").unwrap_or_else(|| "node".into());
            let ric = var("ESB_NODE_RIC").unwrap_or_else(|| NODE_RIC.into());
            vec![node.into(), ric.into()]
        } else {
            let explicit = var("ESB_BOOTSTRAP").map(PathBuf::from);
            vec![explicit
                .unwrap_or_else(|| find_bootstrap(&runtime, &task_root))
                .into()]
        };

        let victorialogs_url = match var("VICTORIALOGS_URL") {
            None => None,
            Some(u) => {
                let u = u.trim().to_string();
                if !u.starts_with("http://") {
                    return Err(ConfigError(format!(
                        "VICTORIALOGS_URL={u:?}: only http:// endpoints are supported"
                    )));
                }
                Some(u)
            }
        };

        Ok(Config {
            listen: addr("ESB_SUPERVISOR_LISTEN", DEFAULT_LISTEN)?,
            runtime_api_listen: addr("ESB_RUNTIME_API_LISTEN", DEFAULT_RUNTIME_API)?,
            command,
            runtime,
            handler,
            task_root,
            function_name: var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "function".into()),
            function_version: var("AWS_LAMBDA_FUNCTION_VERSION")
                .unwrap_or_else(|| "$LATEST".into()),
            memory_mb,
            timeout,
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            account_id: var("ESB_ACCOUNT_ID").unwrap_or_else(|| "000000000000".into()),
            victorialogs_url,
            stdout_json: var("ESB_LOG_STDOUT_FORMAT")
                .is_some_and(|v| v.eq_ignore_ascii_case("json")),
            init_timeout: millis("ESB_INIT_TIMEOUT_MS", 10_000)?,
            shutdown_grace: millis("ESB_SHUTDOWN_GRACE_MS", 2000)?,
            log_flush_timeout: millis("ESB_LOG_FLUSH_TIMEOUT_MS", 3000)?,
            log_buffer_bytes: match var("ESB_LOG_BUFFER_BYTES") {
                None => 8 << 20,
                Some(v) => v.trim().parse().map_err(|_| {
                    ConfigError(format!(
                        "ESB_LOG_BUFFER_BYTES={v:?} is not a number of bytes"
                    ))
                })?,
            },
        })
    }

    /// The ARN handed to the runtime as Lambda-Runtime-Invoked-Function-Arn.
    pub fn function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, self.function_name
        )
    }

    /// The standard Lambda environment given to the runtime process, on top of the
    /// supervisor's own environment (what the worker was given).
    pub fn runtime_env(&self, runtime_api: SocketAddr) -> Vec<(String, String)> {
        let task_root = self.task_root.to_string_lossy().into_owned();
        let mut env = vec![
            ("AWS_LAMBDA_RUNTIME_API".into(), runtime_api.to_string()),
            ("LAMBDA_TASK_ROOT".into(), task_root.clone()),
            ("LAMBDA_RUNTIME_DIR".into(), "/var/runtime".into()),
            ("_HANDLER".into(), self.handler.clone()),
            (
                "AWS_LAMBDA_FUNCTION_NAME".into(),
                self.function_name.clone(),
            ),
            (
                "AWS_LAMBDA_FUNCTION_VERSION".into(),
                self.function_version.clone(),
            ),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                self.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_FUNCTION_TIMEOUT".into(),
                self.timeout.as_secs().max(1).to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME".into(),
                crate::logs::log_group_name(&self.function_name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                crate::util::log_stream_name().into(),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.region.clone()),
        ];
        if !self.runtime.is_empty() {
            env.push((
                "AWS_EXECUTION_ENV".into(),
                format!("AWS_Lambda_{}", self.runtime),
            ));
        }
        if self.runtime.starts_with("python") {
            let mut path = format!("{task_root}:/opt/python");
            if let Ok(old) = std::env::var("PYTHONPATH") {
                if !old.is_empty() {
                    path = format!("{path}:{old}");
                }
            }
            env.push(("PYTHONPATH".into(), path));
        }
        if let Some(major) = self
            .runtime
            .strip_prefix("nodejs")
            .and_then(|v| v.strip_suffix(".x"))
        {
            // Lambda's module path: layers (version-specific first), the runtime's SDK,
            // the runtime itself, the task root.
            let mut path = format!(
                "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                 /var/runtime/node_modules:/var/runtime:{task_root}"
            );
            if let Ok(old) = std::env::var("NODE_PATH") {
                if !old.is_empty() {
                    path = format!("{path}:{old}");
                }
            }
            env.push(("NODE_PATH".into(), path));
        }
        if std::env::var_os("PATH").is_none() {
            env.push((
                "PATH".into(),
                "/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin".into(),
            ));
        }
        if std::env::var_os("TZ").is_none() {
            env.push(("TZ".into(), ":UTC".into()));
        }
        env
    }
}

/// Where a custom runtime's `bootstrap` lives, by the image conventions: for `provided.*`
/// the function's own (`$LAMBDA_TASK_ROOT/bootstrap`), then a layer's (`/opt/bootstrap`),
/// then the image's (`/var/runtime/bootstrap`); for other runtimes the image's first.
pub fn find_bootstrap(runtime: &str, task_root: &Path) -> PathBuf {
    let task = task_root.join("bootstrap");
    let candidates: Vec<PathBuf> = if runtime.starts_with("provided") {
        vec![
            task.clone(),
            "/opt/bootstrap".into(),
            "/var/runtime/bootstrap".into(),
        ]
    } else {
        vec![
            "/var/runtime/bootstrap".into(),
            task.clone(),
            "/opt/bootstrap".into(),
        ]
    };
    candidates.into_iter().find(|p| p.is_file()).unwrap_or(task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned(), vec![])
    }

    #[test]
    fn python_runtime_runs_awslambdaric() {
        let c = cfg(&[("ESB_RUNTIME", "python3.12"), ("_HANDLER", "app.handler")]).unwrap();
        assert_eq!(
            c.command,
            vec!["python3", "-m", "awslambdaric", "app.handler"]
        );
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.runtime_api_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert!(cfg(&[("ESB_RUNTIME", "python3.12")]).is_err());
    }

    #[test]
    fn nodejs_runtime_runs_the_esb_client_with_lambdas_module_path() {
        let c = cfg(&[("ESB_RUNTIME", "nodejs20.x"), ("_HANDLER", "app.handler")]).unwrap();
        assert_eq!(c.command, vec!["node", "/var/runtime/esb/ric.mjs"]);
        let env = c.runtime_env("127.0.0.1:9001".parse().unwrap());
        let node_path = &env.iter().find(|(k, _)| k == "NODE_PATH").unwrap().1;
        assert!(
            node_path.starts_with(
                "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:\
                 /var/runtime/node_modules:/var/runtime:/var/task"
            ),
            "{node_path}"
        );
        assert!(cfg(&[("ESB_RUNTIME", "nodejs18.x")]).is_err());
    }

    #[test]
    fn provided_runtime_uses_bootstrap() {
        let c = cfg(&[
            ("ESB_RUNTIME", "provided.al2023"),
            ("LAMBDA_TASK_ROOT", "/t"),
        ])
        .unwrap();
        assert_eq!(
            c.command,
            vec![PathBuf::from("/t/bootstrap").into_os_string()]
        );
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(cfg(&[("AWS_LAMBDA_FUNCTION_TIMEOUT", "soon")]).is_err());
        assert!(cfg(&[("ESB_SUPERVISOR_LISTEN", "nowhere")]).is_err());
        assert!(cfg(&[("VICTORIALOGS_URL", "https://x")]).is_err());
        let c = cfg(&[
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", "1.5"),
            ("AWS_REGION", "ap-northeast-1"),
        ])
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(
            c.function_arn(),
            "arn:aws:lambda:ap-northeast-1:000000000000:function:function"
        );
    }
}
