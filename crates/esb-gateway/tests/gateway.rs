//! Integration tests of the gateway with real functions (Python on awslambdaric, Rust on
//! lambda_runtime) under real `esb-supervisor` processes on 127.0.0.1, started by the
//! test scaffolding agent of `common` (stands in for the containerd agent), and real
//! clients (boto3, an HTTPS client over HTTP/1.1 and HTTP/2).

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use esb_template::EventKind;
use serde_json::{json, Value};

fn echo_fn() -> esb_gateway::FunctionSpec {
    let mut f = spec("echo", "python:gwfn.echo");
    f.events = vec![
        event(EventKind::Api, "GET", "/items/{id}", false),
        event(EventKind::Api, "POST", "/items/{id}", false),
        event(EventKind::Api, "ANY", "/open/{proxy+}", true),
    ];
    f
}

fn echo_v2_fn() -> esb_gateway::FunctionSpec {
    let mut f = spec("echo2", "python:gwfn.echo");
    f.events = vec![event(EventKind::HttpApi, "ANY", "/v2/{thing}", false)];
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flow_and_errors() {
    let b = TestBox::start(vec![echo_fn()], |_| {}).await;
    let c = b.client();
    let h = c.get("/health", &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json(), json!({"status": "healthy"}));
    assert!(h.header("x-amzn-requestid").is_some());
    let trace = h.header("x-amzn-trace-id").unwrap();
    assert!(
        trace.starts_with("Root=1-") && trace.ends_with(";Sampled=1"),
        "{trace}"
    );

    let login = |key: &'static str, pass: &'static str| {
        let c = c.clone();
        async move {
            c.send(
                "POST",
                "/user/auth/ver1.0",
                &[("x-api-key", key)],
                json!({"AuthParameters": {"USERNAME": USER, "PASSWORD": pass}})
                    .to_string()
                    .into_bytes(),
            )
            .await
        }
    };
    // Wrong API key: 401 without PADMA_USER_AUTHORIZED.
    let r = login("wrong", PASS).await;
    assert_eq!(r.status, 401);
    assert!(r.header("padma_user_authorized").is_none());
    // Wrong password: 401 with PADMA_USER_AUTHORIZED: true.
    let r = login(API_KEY, "wrong").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("padma_user_authorized").as_deref(), Some("true"));
    // Right: an IdToken with cognito:username.
    let token = b.token().await;
    let claims_b64 = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cognito:username"], USER);

    // Routes need the token.
    let r = c.get("/items/1", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"message": "Unauthorized"}));
    let r = c
        .get("/items/1", &[("authorization", "Bearer not.a.jwt")])
        .await;
    assert_eq!(r.status, 401);
    // A token signed with another key, and an expired one.
    let other = esb_gateway::auth::Auth::new(
        "another-secret-another-secret-another",
        API_KEY,
        USER,
        PASS,
        Duration::from_secs(60),
    );
    let now = now_secs() as u64;
    let forged = format!("Bearer {}", other.issue(USER, now));
    assert_eq!(
        c.get("/items/1", &[("authorization", &forged)])
            .await
            .status,
        401
    );
    let same_key =
        esb_gateway::auth::Auth::new(JWT_SECRET, API_KEY, USER, PASS, Duration::from_secs(60));
    let expired = format!("Bearer {}", same_key.issue(USER, now - 3600));
    assert_eq!(
        c.get("/items/1", &[("authorization", &expired)])
            .await
            .status,
        401
    );
    // No worker was started for any of these.
    assert_eq!(*b.agent.created.lock().unwrap(), 0);

    let bearer = format!("Bearer {token}");
    let r = c.get("/items/1", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Unknown path: 404 like API Gateway; known path, other method: 405.
    let r = c.get("/nothing/here", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"message": "Not Found"}));
    let r = c
        .send(
            "DELETE",
            "/items/1",
            &[("authorization", &bearer)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, POST"));
    // An open route needs no token.
    let r = c.get("/open/a/b", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Metrics and the authenticated container list.
    let m = c.get("/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains("esb_gateway_requests_total{function=\"echo\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("esb_gateway_cold_starts_total{function=\"echo\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("esb_gateway_pool_workers{function=\"echo\",state=\"idle\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("esb_gateway_breaker_state{function=\"echo\"} 0"),
        "{text}"
    );
    assert_eq!(c.get("/metrics/containers", &[]).await.status, 401);
    let r = c
        .get("/metrics/containers", &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list["containers"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["containers"][0]["function_name"], "echo");
    assert_eq!(list["containers"][0]["managed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_event_field_by_field() {
    let b = TestBox::start(vec![echo_fn()], |c| c.stage = "Prod".into()).await;
    let token = b.token().await;
    let bearer = format!("Bearer {token}");
    let trace_in = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";
    let r = b
        .client()
        .send(
            "POST",
            "/items/a%20b?x=1&x=2&y=%2F",
            &[
                ("authorization", &bearer),
                ("x-custom", "one"),
                ("x-custom", "two"),
                ("user-agent", "esb-test/1"),
                ("content-type", "application/json"),
                ("x-amzn-trace-id", trace_in),
            ],
            b"{\"hello\":\"world\"}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The function's headers and multiValueHeaders come back.
    assert_eq!(r.header("x-echo").as_deref(), Some("1"));
    let multi: Vec<_> = r.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(r.header("x-amzn-trace-id").as_deref(), Some(trace_in));
    let out = r.json();
    let e = &out["event"];
    assert_eq!(e["resource"], "/items/{id}");
    assert_eq!(e["path"], "/items/a b");
    assert_eq!(e["httpMethod"], "POST");
    assert_eq!(e["headers"]["x-custom"], "two");
    assert_eq!(e["multiValueHeaders"]["x-custom"], json!(["one", "two"]));
    assert_eq!(e["headers"]["user-agent"], "esb-test/1");
    assert_eq!(e["queryStringParameters"], json!({"x": "2", "y": "/"}));
    assert_eq!(
        e["multiValueQueryStringParameters"],
        json!({"x": ["1", "2"], "y": ["/"]})
    );
    assert_eq!(e["pathParameters"], json!({"id": "a b"}));
    assert_eq!(e["stageVariables"], Value::Null);
    assert_eq!(e["body"], "{\"hello\":\"world\"}");
    assert_eq!(e["isBase64Encoded"], false);
    let ctx = &e["requestContext"];
    assert_eq!(
        ctx["requestId"],
        r.header("x-amzn-requestid").unwrap().as_str()
    );
    assert_eq!(ctx["stage"], "Prod");
    assert_eq!(ctx["resourcePath"], "/items/{id}");
    assert_eq!(ctx["httpMethod"], "POST");
    assert_eq!(ctx["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(ctx["identity"]["userAgent"], "esb-test/1");
    assert_eq!(ctx["authorizer"]["claims"]["cognito:username"], USER);
    assert_eq!(ctx["protocol"], "HTTP/1.1");
    let rt = ctx["requestTime"].as_str().unwrap();
    assert_eq!(rt.len(), 26, "{rt}");
    assert!(rt.ends_with(" +0000"));
    assert!(ctx["requestTimeEpoch"].as_u64().unwrap() > 1_600_000_000_000);
    // The trace reaches the function.
    assert!(out["trace_env"]
        .as_str()
        .unwrap()
        .contains("Root=1-5759e988-bd862e3fe1be46a994272793"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_event_field_by_field_over_http2() {
    let b = TestBox::start(vec![echo_v2_fn()], |_| {}).await;
    let token = b.token().await;
    let bearer = format!("Bearer {token}");
    let c = Client::with_alpn(b.addr, &b.ca, true);
    let r = c
        .send(
            "PUT",
            "/v2/thing%201?a=1&a=2&b=x",
            &[
                ("authorization", &bearer),
                ("cookie", "c1=v1; c2=v2"),
                ("x-custom", "one"),
                ("x-custom", "two"),
                ("user-agent", "esb-test/2"),
            ],
            b"plain text".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    let e = &out["event"];
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /v2/{thing}");
    assert_eq!(e["rawPath"], "/v2/thing%201");
    assert_eq!(e["rawQueryString"], "a=1&a=2&b=x");
    assert_eq!(e["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(e["headers"]["x-custom"], "one,two");
    assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x"}));
    assert_eq!(e["pathParameters"], json!({"thing": "thing 1"}));
    assert_eq!(e["body"], "plain text");
    assert_eq!(e["isBase64Encoded"], false);
    let ctx = &e["requestContext"];
    assert_eq!(ctx["http"]["method"], "PUT");
    assert_eq!(ctx["http"]["path"], "/v2/thing 1");
    assert_eq!(ctx["http"]["protocol"], "HTTP/2.0");
    assert_eq!(ctx["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(ctx["http"]["userAgent"], "esb-test/2");
    assert_eq!(
        ctx["requestId"],
        r.header("x-amzn-requestid").unwrap().as_str()
    );
    assert_eq!(ctx["routeKey"], "ANY /v2/{thing}");
    assert_eq!(ctx["stage"], "$default");
    assert_eq!(ctx["authorizer"]["jwt"]["claims"]["cognito:username"], USER);
    assert!(ctx["timeEpoch"].as_u64().unwrap() > 1_600_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_round_trip() {
    let mut f = spec("bin", "python:gwfn.binary");
    f.events = vec![
        event(EventKind::Api, "POST", "/bin", true),
        event(EventKind::HttpApi, "POST", "/bin2", true),
    ];
    let b = TestBox::start(vec![f], |_| {}).await;
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    for path in ["/bin", "/bin2"] {
        let r = b
            .client()
            .send(
                "POST",
                path,
                &[("content-type", "application/octet-stream")],
                data.clone(),
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert!(
            r.body == data,
            "{path}: body differs ({} bytes back)",
            r.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_function_answer_is_502() {
    let mut f = spec("bad", "python:gwfn.malformed");
    f.events = vec![event(EventKind::Api, "GET", "/bad", true)];
    let b = TestBox::start(vec![f], |_| {}).await;
    let r = b.client().get("/bad", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json(), json!({"message": "Internal server error"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_api_with_boto3_and_errors() {
    let b = TestBox::start(vec![spec("rust-echo", "rust")], |_| {}).await;
    let out = b.python(
        r#"
import base64, json, sys, boto3, botocore
c = boto3.client("lambda")
r = c.invoke(FunctionName="rust-echo", Payload=json.dumps({"k": [1, 2]}).encode())
sync = {"status": r["StatusCode"], "payload": json.loads(r["Payload"].read()),
        "version": r.get("ExecutedVersion"), "error": r.get("FunctionError")}
ctx = base64.b64encode(json.dumps({"custom": {"who": "test"}}).encode()).decode()
r = c.invoke(FunctionName="rust-echo", ClientContext=ctx, Payload=json.dumps({"action": "env"}).encode())
env = json.loads(r["Payload"].read())
r = c.invoke(FunctionName="rust-echo", Payload=json.dumps({"action": "error", "message": "bad"}).encode())
err = {"error": r.get("FunctionError"), "payload": json.loads(r["Payload"].read())}
dry = c.invoke(FunctionName="rust-echo", InvocationType="DryRun")["StatusCode"]
ev = c.invoke(FunctionName="rust-echo", InvocationType="Event", Payload=b"{}")["StatusCode"]
try:
    c.invoke(FunctionName="nope", Payload=b"{}")
    missing = None
except botocore.exceptions.ClientError as e:
    missing = {"code": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
try:
    c.invoke(FunctionName="rust-echo", Payload=b"{not json")
    badjson = None
except botocore.exceptions.ClientError as e:
    badjson = {"code": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
bad = boto3.client("lambda", aws_access_key_id="AKIAWRONG", aws_secret_access_key="x")
try:
    bad.invoke(FunctionName="rust-echo", Payload=b"{}")
    wrongkey = None
except botocore.exceptions.ClientError as e:
    wrongkey = {"code": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
print(json.dumps({"sync": sync, "env": env, "err": err, "dry": dry, "event": ev,
                  "missing": missing, "badjson": badjson, "wrongkey": wrongkey}))
"#,
        &[],
    );
    assert_eq!(out["sync"]["status"], 200);
    assert_eq!(out["sync"]["payload"], json!({"k": [1, 2]}));
    assert_eq!(out["sync"]["version"], "$LATEST");
    assert_eq!(out["sync"]["error"], Value::Null);
    assert_eq!(out["env"]["client_context"]["custom"]["who"], "test");
    assert!(out["env"]["trace_id"]
        .as_str()
        .unwrap()
        .starts_with("Root=1-"));
    assert_eq!(out["err"]["error"], "Unhandled");
    assert_eq!(out["err"]["payload"]["errorMessage"], "bad");
    assert_eq!(out["dry"], 204);
    assert_eq!(out["event"], 202);
    assert_eq!(
        out["missing"],
        json!({"code": "ResourceNotFoundException", "status": 404})
    );
    assert_eq!(
        out["badjson"],
        json!({"code": "InvalidRequestContentException", "status": 400})
    );
    assert_eq!(out["wrongkey"]["code"], "UnrecognizedClientException");
    assert_eq!(out["wrongkey"]["status"], 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_invoke_keeps_one_trace_root() {
    let mut chain = spec("chain", "python:gwfn.chain");
    chain.events = vec![event(EventKind::Api, "POST", "/chain", true)];
    let target = spec("target", "python:gwfn.invoked");
    let b = TestBox::start(vec![chain, target], |_| {}).await;
    let record = b.dir.path().join("async-record.json");
    let trace_in = "Root=1-65000000-0123456789abcdef01234567;Sampled=1";
    let r = b
        .client()
        .send(
            "POST",
            "/chain",
            &[("x-amzn-trace-id", trace_in)],
            json!({"target": "target", "record": record.to_str().unwrap()})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    let root = "Root=1-65000000-0123456789abcdef01234567";
    assert!(out["trace_env"].as_str().unwrap().contains(root), "{out}");
    assert_eq!(out["sync_status"], 200);
    assert_eq!(out["async_status"], 202);
    assert!(
        out["sync"]["trace_env"].as_str().unwrap().contains(root),
        "sync chain lost the trace: {out}"
    );
    // The async invocation runs from the gateway's queue with the same root.
    wait_until("the async invocation", Duration::from_secs(120), || {
        record.exists()
    })
    .await;
    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(
        rec["trace_env"].as_str().unwrap().contains(root),
        "async chain lost the trace: {rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_are_retried_twice() {
    let b = TestBox::start(vec![spec("target", "python:gwfn.invoked")], |c| {
        c.event_retry_delay = Duration::from_millis(100);
    })
    .await;
    let record = b.dir.path().join("fail-record.json");
    let r = b
        .client()
        .invoke(
            "target",
            json!({"record": record.to_str().unwrap(), "fail": true})
                .to_string()
                .as_bytes(),
            &[("x-amz-invocation-type", "Event")],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let metrics = || async { b.client().get("/metrics", &[]).await.text() };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = metrics().await;
        if m.contains("esb_gateway_async_failures_total{function=\"target\"} 1") {
            assert!(m.contains("esb_gateway_event_queue_depth 0"), "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no async failure recorded: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 1 attempt + 2 retries; every failed (Unhandled) attempt evicts its worker.
    assert_eq!(*b.agent.created.lock().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_concurrency_holds_exactly_n_workers() {
    const N: usize = 2;
    let mut f = spec("rust-echo", "rust");
    f.reserved = Some(N as u32);
    let b = TestBox::start(vec![f], |c| {
        c.pool_acquire_timeout = Duration::from_secs(60)
    })
    .await;
    let c = b.client();
    let mut tasks = Vec::new();
    for i in 0..4 * N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.invoke(
                "rust-echo",
                json!({"action": "sleep", "ms": 300, "i": i})
                    .to_string()
                    .as_bytes(),
                &[],
            )
            .await
        }));
    }
    let mut max_running = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        max_running = max_running.max(b.agent.running_of("rust-echo"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!("woke"));
    }
    assert_eq!(*b.agent.created.lock().unwrap(), N);
    assert!(max_running <= N);
    assert_eq!(b.agent.running_of("rust-echo"), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pool_answers_429_after_the_acquire_timeout() {
    let mut f = spec("rust-echo", "rust");
    f.reserved = Some(1);
    let b = TestBox::start(vec![f], |c| {
        c.pool_acquire_timeout = Duration::from_millis(200)
    })
    .await;
    let c = b.client();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.invoke("rust-echo", br#"{"action":"sleep","ms":5000}"#, &[])
                .await
        })
    };
    wait_until("the first worker", Duration::from_secs(60), || {
        b.agent.running_of("rust-echo") == 1
    })
    .await;
    // Polled: the slow invocation holds the only worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.get("/metrics", &[]).await.text();
        if m.contains("esb_gateway_pool_workers{function=\"rust-echo\",state=\"busy\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow invocation never held the worker: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("TooManyRequestsException")
    );
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_scale_to_zero_and_cold_start_again() {
    let mut f = spec("rust-echo", "rust");
    f.events = vec![event(EventKind::HttpApi, "GET", "/hi", true)];
    let b = TestBox::start(vec![f], |c| {
        c.idle_timeout = Duration::from_secs(1);
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    let c = b.client();
    assert_eq!(c.get("/hi", &[]).await.status, 200);
    assert_eq!(b.agent.running_of("rust-echo"), 1);
    wait_until("scale to zero", Duration::from_secs(60), || {
        b.agent.running_of("rust-echo") == 0
    })
    .await;
    let r = c.get("/hi", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(*b.agent.created.lock().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_workers_start_at_boot_and_stay() {
    let mut f = spec("rust-echo", "rust");
    f.provisioned = 2;
    f.reserved = Some(3);
    let b = TestBox::start(vec![f], |c| {
        c.idle_timeout = Duration::from_millis(200);
        c.heartbeat = Duration::from_millis(200);
    })
    .await;
    wait_until("provisioned workers", Duration::from_secs(60), || {
        b.agent.running_of("rust-echo") == 2
    })
    .await;
    // Running on the agent is not yet in the pool: wait until both are idle there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = b.client().get("/metrics", &[]).await.text();
        if m.contains("esb_gateway_pool_workers{function=\"rust-echo\",state=\"idle\"} 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "provisioned workers not idle: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm: no cold start for a request; and the janitor never goes below 2.
    let r = b.client().invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.agent.running_of("rust-echo"), 2);
    assert_eq!(*b.agent.created.lock().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_answers_503_and_recovers() {
    let b = TestBox::start(vec![spec("rust-echo", "rust")], |c| {
        c.breaker_threshold = 2;
        c.breaker_recovery = Duration::from_secs(2);
    })
    .await;
    let c = b.client();
    for _ in 0..2 {
        let r = c.invoke("rust-echo", br#"{"action":"error"}"#, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-amz-function-error").as_deref(),
            Some("Unhandled")
        );
    }
    let created = *b.agent.created.lock().unwrap();
    let r = c.invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    // Open: refused without touching any worker.
    assert_eq!(*b.agent.created.lock().unwrap(), created);
    assert!(c
        .get("/metrics", &[])
        .await
        .text()
        .contains("esb_gateway_breaker_state{function=\"rust-echo\"} 1"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = c.invoke("rust-echo", b"{\"ok\":1}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": 1}));
    let r = c.invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_timeout_is_504_and_the_worker_is_replaced() {
    let mut f = spec("sleepy", "python:gwfn.sleepy");
    f.timeout = Duration::from_secs(1);
    f.events = vec![event(EventKind::Api, "GET", "/sleep", true)];
    let b = TestBox::start(vec![f], |_| {}).await;
    let c = b.client();
    assert_eq!(c.get("/sleep?s=0", &[]).await.status, 200);
    let r = c.get("/sleep?s=5", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "Endpoint request timed out"}));
    let r = c.get("/sleep?s=0", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(*b.agent.created.lock().unwrap(), 2);
    wait_until(
        "the timed-out worker to go",
        Duration::from_secs(60),
        || b.agent.running_of("sleepy") == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_leaves_no_orphan_workers() {
    let mut b = TestBox::start(vec![spec("rust-echo", "rust")], |c| {
        c.orphan_grace = Duration::from_secs(30);
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    let c = b.client();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.invoke("rust-echo", br#"{"action":"sleep","ms":300}"#, &[])
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(b.agent.running_of("rust-echo"), 3);
    // A crash leaves workers behind; the next start removes them.
    b.crash_gateway().await;
    assert_eq!(b.agent.running_of("rust-echo"), 3);
    b.start_gateway(vec![spec("rust-echo", "rust")], |c| {
        c.orphan_grace = Duration::from_secs(30);
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    wait_until("leftovers removed", Duration::from_secs(60), || {
        b.agent.running_of("rust-echo") == 0
    })
    .await;
    // Orphans appearing later: old ones go, young ones are left to their grace period.
    let old = b.agent.spawn_orphan("rust-echo", "rust", now_secs() - 3600);
    let young = b.agent.spawn_orphan("rust-echo", "rust", now_secs());
    wait_until("old orphan removed", Duration::from_secs(60), || {
        !b.agent.running().contains(&old)
    })
    .await;
    assert!(b.agent.running().contains(&young));
    // A clean stop destroys the gateway's own workers.
    let r = b.client().invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 200);
    b.stop_gateway().await;
    assert_eq!(b.agent.running(), vec![young]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let mut f = echo_fn();
    f.events
        .push(event(EventKind::Api, "POST", "/upload", true));
    let b = TestBox::start(vec![f, spec("rust-echo", "rust")], |_| {}).await;
    let c = b.client();
    // A body over API Gateway's 10 MB limit.
    let big = vec![b'a'; 10 * 1024 * 1024 + 1];
    let r = c.send("POST", "/upload", &[], big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json(), json!({"message": "Request Too Long"}));
    // The Invoke API: bad JSON, unknown function, bad invocation type, bad client context,
    // unsigned, too large.
    let r = c.invoke("rust-echo", b"{nope", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("InvalidRequestContentException")
    );
    let r = c.invoke("ghost", b"{}", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("ResourceNotFoundException")
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("function:ghost"));
    let r = c
        .invoke(
            "rust-echo",
            b"{}",
            &[("x-amz-invocation-type", "Sometimes")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("InvalidParameterValueException")
    );
    let r = c
        .invoke("rust-echo", b"{}", &[("x-amz-client-context", "%%%")])
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .send(
            "POST",
            "/2015-03-31/functions/rust-echo/invocations",
            &[],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("MissingAuthenticationTokenException")
    );
    let r = c
        .invoke_as("rust-echo", b"{}", &[], ACCESS_KEY, "wrong-secret")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("InvalidSignatureException")
    );
    // An unsigned 6 MiB body is refused from its headers: the answer comes after 64 KiB
    // of it were sent, the rest never is.
    let head = format!(
        "POST /2015-03-31/functions/rust-echo/invocations HTTP/1.1\r\nhost: localhost:{}\r\ncontent-length: {}\r\n\r\n",
        b.addr.port(),
        6 * 1024 * 1024
    );
    let first = c.partial(&head, 64 * 1024).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 403"), "{first}");
    let huge = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
    let r = c.invoke("rust-echo", huge.as_bytes(), &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("RequestTooLargeException")
    );
    // No worker was needed for any of that.
    assert_eq!(*b.agent.created.lock().unwrap(), 0);
    // Malformed HTTP on the TLS connection: 400, and the gateway carries on.
    let raw = raw_tls(&b, b"GARBAGE / NOT-HTTP\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    let raw = raw_tls(
        &b,
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // Plain HTTP on the TLS port is refused.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("healthy"));
    }
    assert_eq!(c.get("/health", &[]).await.status, 200);
}

async fn raw_tls(b: &TestBox, bytes: &[u8]) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&b.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_shipped_and_shutdown_drains_in_flight_requests() {
    let (log_addr, lines) = common::capture_server().await;
    let mut b = TestBox::start(vec![spec("rust-echo", "rust")], |c| {
        c.victorialogs_url = Some(format!("http://{log_addr}"));
    })
    .await;
    let c = b.client();
    let r = c.invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 200);
    let rid = r.header("x-amzn-requestid").unwrap();
    let trace = r.header("x-amzn-trace-id").unwrap();
    let root = trace
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("Root=")
        .to_string();
    wait_until("the access record", Duration::from_secs(60), || {
        lines.lock().unwrap().iter().any(|l| l.contains(&rid))
    })
    .await;
    let rec: Value = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["aws_request_id"] == rid.as_str())
        .unwrap();
    // The Invoke API answers with the invocation's own request id, as Lambda does.
    assert_ne!(rec["request_id"], rec["aws_request_id"]);
    assert_eq!(rec["kind"], "access");
    assert!(
        rec["trace_id"]
            .as_str()
            .unwrap()
            .contains(&format!("Root={root}")),
        "{rec}"
    );
    assert_eq!(rec["function"], "rust-echo");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["container_name"], "esb-gateway");
    assert_eq!(rec["job"], "gateway");
    assert!(rec["_time"].as_str().unwrap().ends_with('Z'));

    // SIGTERM-like stop while a request runs: it completes, then the workers go.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.invoke("rust-echo", br#"{"action":"sleep","ms":1500}"#, &[])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop_gateway().await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!("woke"));
    assert!(b.agent.running().is_empty(), "{:?}", b.agent.running());
    wait_until("the stop record", Duration::from_secs(30), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("gateway stopped"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_gives_503_and_is_marked_down() {
    let mut f = spec("rust-echo", "rust");
    f.events = vec![event(EventKind::Api, "GET", "/x", true)];
    let b = TestBox::start(vec![f], |c| {
        // Nothing listens there (a port of this host's loopback that was just freed).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        c.agents[0].endpoint = format!("http://127.0.0.1:{port}");
        c.agent_timeout = Duration::from_secs(5);
    })
    .await;
    let c = b.client();
    let r = c.get("/x", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "Service Unavailable"}));
    let r = c.invoke("rust-echo", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("ServiceException")
    );
    let m = c.get("/metrics", &[]).await.text();
    assert!(m.contains("esb_gateway_agent_up{node=\"test\"} 0"), "{m}");
    // The gateway itself stays healthy.
    assert_eq!(c.get("/health", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_comes_back_is_used_again() {
    let mut b = TestBox::start(vec![spec("rust-echo", "rust")], |_| {}).await;
    // Point a new gateway at an agent address that is not served yet: the port is held
    // by a bound socket that does not listen (connections are refused, and no other test
    // can take the port meanwhile) until the agent takes it.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = reserved.local_addr().unwrap();
    b.stop_gateway().await;
    // The agent's calls get the default (generous) timeout: creating a worker on a loaded
    // machine may take seconds, and a refused connection fails at once anyway.
    b.start_gateway(vec![spec("rust-echo", "rust")], |c| {
        c.agents[0].endpoint = format!("http://{addr}");
    })
    .await;
    let c = b.client();
    assert_eq!(c.invoke("rust-echo", b"{}", &[]).await.status, 503);
    // The agent appears on that address; the next request uses it without waiting for
    // a heartbeat.
    let agent = ProcessAgent::new();
    *agent.env.lock().unwrap() = b.agent.env.lock().unwrap().clone();
    drop(reserved);
    let _stop = agent.serve_on(addr).await;
    let r = c.invoke("rust-echo", b"{\"back\":1}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"back": 1}));
    agent.kill_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_request_does_not_cost_the_warm_worker() {
    let mut f = spec("sleepy", "python:gwfn.sleepy");
    f.events = vec![event(EventKind::Api, "GET", "/sleep", true)];
    let b = TestBox::start(vec![f], |_| {}).await;
    let c = b.client();
    assert_eq!(c.get("/sleep?s=0", &[]).await.status, 200);
    assert_eq!(*b.agent.created.lock().unwrap(), 1);
    // The client gives up while the function runs: the invocation still ends normally
    // and the worker goes back to the pool.
    let c2 = c.clone();
    let gone = tokio::spawn(async move { c2.get("/sleep?s=1", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    let _ = gone.await;
    // The invocation ends normally: the worker is back in the pool (polled, as a loaded
    // machine may take its time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.get("/metrics", &[]).await.text();
        if m.contains("esb_gateway_pool_workers{function=\"sleepy\",state=\"idle\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not go back to the pool: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.get("/sleep?s=0", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        *b.agent.created.lock().unwrap(),
        1,
        "the same warm worker served again"
    );
    assert_eq!(b.agent.running_of("sleepy"), 1);
}

/// A log store (the box's, in this process, on a real socket) that can be stopped and
/// started again on the same address and data.
struct LogStore {
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    stop: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl LogStore {
    async fn start(addr: std::net::SocketAddr, dir: &std::path::Path) -> LogStore {
        let config = esb_logstore::Config {
            listen: addr,
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let server = esb_logstore::Server::bind(config).await.expect("log store");
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        LogStore {
            addr,
            dir: dir.to_path_buf(),
            stop: Some((tx, task)),
        }
    }

    async fn stop(&mut self) {
        if let Some((tx, task)) = self.stop.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
    }

    /// The records a LogsQL query finds (JSON lines of `/select/logsql/query`).
    async fn query(&self, logsql: &str) -> Vec<Value> {
        let addr = self.addr;
        let q: String = logsql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                return Vec::new();
            };
            let _ = write!(
                s,
                "GET /select/logsql/query?query={q} HTTP/1.0\r\nHost: logs\r\n\r\n"
            );
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
            body.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_shipped_while_the_log_store_is_down_arrive_after_it_returns() {
    let data = tempfile::tempdir().unwrap();
    let mut store = LogStore::start("127.0.0.1:0".parse().unwrap(), data.path()).await;
    let url = format!("http://{}", store.addr);
    let mut b = TestBox::start(vec![spec("rust-echo", "rust")], |c| {
        c.victorialogs_url = Some(url.clone());
    })
    .await;
    // Workers ship to the same store.
    b.agent
        .env
        .lock()
        .unwrap()
        .push(("VICTORIALOGS_URL".into(), url.clone()));
    let c = b.client();
    let lines = 20;
    let invoke = |c: &Client| {
        let c = c.clone();
        async move {
            let r = c
                .invoke(
                    "rust-echo",
                    json!({"action": "log", "lines": lines})
                        .to_string()
                        .as_bytes(),
                    &[],
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-amzn-requestid").unwrap()
        }
    };
    let before = invoke(&c).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store
        .query(&format!("aws_request_id:\"{before}\""))
        .await
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no record reached the log store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The store goes away for a while; invocations go on and log.
    store.stop().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(invoke(&c).await);
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    ids.push(invoke(&c).await);
    let mut store = LogStore::start(store.addr, &store.dir).await;

    // Every record of every invocation arrives: the workers' lines (the function logs
    // `lines` lines on stdout and on stderr per invocation) and the gateway's access
    // records.
    let invocations = ids.len() + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let recs = store.query("function_name:rust-echo").await;
        let function_lines = recs
            .iter()
            .filter(|r| {
                r["_msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("stdout line") || m.starts_with("stderr line"))
            })
            .count();
        let access = store.query("kind:access").await;
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !access.iter().any(|r| r["aws_request_id"] == id.as_str()))
            .collect();
        if function_lines == 2 * lines * invocations && missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the log store came back: {function_lines} of {} function lines, access \
             records missing for {missing:?}",
            2 * lines * invocations
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing was dropped on the way.
    let m = c.get("/metrics", &[]).await.text();
    assert!(m.contains("esb_gateway_logs_dropped_total 0"), "{m}");
    b.stop_gateway().await;
    store.stop().await;
}
