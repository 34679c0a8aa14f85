//! `greeter`: the Rust function of esb's example application.
//!
//! A `provided.al2023` function on the `lambda_runtime` crate. It is invoked directly (the
//! `hello` function calls it through the Lambda Invoke API), so its event is a plain JSON
//! object rather than an API Gateway event:
//!
//! ```json
//! {"name": "edge"}            ->  {"greeting": "Hello, edge!", "from": "greeter", ...}
//! ```
//!
//! Build it and install the binary as the function's `bootstrap` (the template's CodeUri
//! points at `dist/`):
//!
//! ```sh
//! cargo build --release -p esb-example-greeter
//! install -D target/release/esb-example-greeter examples/functions/greeter/dist/bootstrap
//! ```

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::{Deserialize, Serialize};

/// The event: who to greet. Every field is optional, so `{}` is a valid event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Request {
    name: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize, PartialEq)]
struct Greeting {
    greeting: String,
    from: &'static str,
    runtime: &'static str,
    request_id: String,
}

/// Names longer than this are refused (a greeting is no place for a novel).
const MAX_NAME_CHARS: usize = 64;

fn greet(request: Request, request_id: String) -> Result<Greeting, Error> {
    let name = request.name.as_deref().map(str::trim).unwrap_or_default();
    let name = if name.is_empty() { "world" } else { name };
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name is longer than {MAX_NAME_CHARS} characters").into());
    }
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
        from: "greeter",
        runtime: "provided.al2023 (Rust, lambda_runtime)",
        request_id,
    })
}

async fn handler(event: LambdaEvent<Request>) -> Result<Greeting, Error> {
    let (request, context) = event.into_parts();
    let greeting = greet(request, context.request_id)?;
    // One log line per invocation; the supervisor ships it to the log store with the
    // request id and trace id of the invocation.
    println!("greeted: {}", greeting.greeting);
    Ok(greeting)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name_or_the_world() {
        let g = greet(
            Request {
                name: Some(" edge ".into()),
            },
            "r1".into(),
        )
        .unwrap();
        assert_eq!(g.greeting, "Hello, edge!");
        assert_eq!(g.request_id, "r1");
        let g = greet(Request::default(), "r2".into()).unwrap();
        assert_eq!(g.greeting, "Hello, world!");
    }

    #[test]
    fn refuses_long_names() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let err = greet(Request { name: Some(long) }, "r".into()).unwrap_err();
        assert!(err.to_string().contains("longer than"));
    }

    #[test]
    fn an_empty_event_is_valid() {
        let r: Request = serde_json::from_str("{}").unwrap();
        assert!(r.name.is_none());
    }
}
