//! A Rust Lambda function on the `lambda_runtime` crate, used as a test fixture.
//! Set `ESB_TEST_INIT_FAIL=1` to make its init fail (it exits before polling).

use std::io::Write;
use std::time::Duration;

use esb_test_functions::Action;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    match Action::from_event(&payload) {
        Action::Echo => Ok(esb_test_functions::echo(payload)),
        Action::Error(msg) => Err(msg.into()),
        Action::Panic => panic!("handler panicked on purpose"),
        Action::Crash(code) => {
            println!("crashing with exit code {code}");
            std::process::exit(code)
        }
        Action::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!("woke"))
        }
        Action::SpawnAndSleep(pid_file) => {
            let child = std::process::Command::new("sleep").arg("600").spawn()?;
            std::fs::write(&pid_file, format!("{} {}", std::process::id(), child.id()))?;
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(json!("woke"))
        }
        Action::Big(size) => Ok(Value::String("x".repeat(size))),
        Action::Env => Ok(json!({
            "trace_id": std::env::var("_X_AMZN_TRACE_ID").ok(),
            "context_trace_id": ctx.xray_trace_id,
            "request_id": ctx.request_id,
            "function_arn": ctx.invoked_function_arn,
            "deadline_ms": ctx.deadline,
            "function_name": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
            "memory": std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").ok(),
            "region": std::env::var("AWS_REGION").ok(),
            "task_root": std::env::var("LAMBDA_TASK_ROOT").ok(),
            "client_context": ctx.client_context.map(|c| json!({"custom": c.custom, "env": c.environment})),
        })),
        Action::Log(lines) => {
            let id = ctx.request_id;
            let mut out = std::io::stdout().lock();
            for i in 0..lines {
                writeln!(out, "stdout line {i} of {id}")?;
            }
            writeln!(
                out,
                "{}",
                json!({"message": "structured", "level": "WARN", "order": 1})
            )?;
            out.flush()?;
            let mut err = std::io::stderr().lock();
            for i in 0..lines {
                writeln!(err, "stderr line {i} of {id}")?;
            }
            Ok(json!("logged"))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    if std::env::var_os("ESB_TEST_INIT_FAIL").is_some() {
        eprintln!("init failed on purpose");
        std::process::exit(1);
    }
    lambda_runtime::run(service_fn(handler)).await
}
