//! `esb-supervisor`: see the library documentation and docs/supervisor.md.

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "\
usage: esb-supervisor [--] [RUNTIME-COMMAND [ARGS...]]

Serves Lambda invocations on ESB_SUPERVISOR_LISTEN (default 0.0.0.0:8080) and the Lambda
Runtime API on ESB_RUNTIME_API_LISTEN (default 127.0.0.1:9001) to the runtime process:
RUNTIME-COMMAND when given, else derived from ESB_RUNTIME and _HANDLER (python3.x runs
`python3 -m awslambdaric $_HANDLER`, others a bootstrap). Logs go to VICTORIALOGS_URL or
stdout. See docs/supervisor.md for every setting.";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("--version" | "-V") if args.len() == 1 => {
            println!("esb-supervisor {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") if args.len() == 1 => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--") => {
            args.remove(0);
        }
        _ => {}
    }
    let cfg = match esb_supervisor::Config::from_env(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("esb-supervisor: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esb-supervisor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(esb_supervisor::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esb-supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}
