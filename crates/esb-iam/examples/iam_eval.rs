//! Policy evaluation time per request (bench/iam/run.sh): a function policy as SAM
//! writes it (four templates and an inline document, 7 statements), evaluated for an
//! allowed and a denied request, N times each; prints JSON with ns per evaluation.

use std::time::Instant;

use esb_iam::sam::{function_policy, ArnContext};
use serde_json::json;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cx = ArnContext {
        region: "ap-northeast-1".into(),
        account: "000000000000".into(),
    };
    let items = vec![
        json!({"DynamoDBCrudPolicy": {"TableName": "orders"}}),
        json!({"DynamoDBReadPolicy": {"TableName": "customers"}}),
        json!({"S3CrudPolicy": {"BucketName": "uploads"}}),
        json!({"LambdaInvokePolicy": {"FunctionName": "mailer"}}),
        json!({"Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::assets/*"},
            {"Effect": "Deny", "Action": "dynamodb:DeleteItem", "Resource": "arn:aws:dynamodb:*:*:table/customers"},
            {"Effect": "Allow", "Action": "logs:*", "Resource": "*"}
        ]}),
    ];
    let policy = function_policy("bench", &items, &cx)
        .expect("policy")
        .policy;
    let allowed = vec![cx.table("orders")];
    let denied = vec![cx.table("payments")];
    let mut out = serde_json::Map::new();
    for (name, action, res) in [
        ("allowed_getitem", "dynamodb:GetItem", &allowed),
        ("denied_getitem", "dynamodb:GetItem", &denied),
    ] {
        let t = Instant::now();
        let mut allows = 0u64;
        for _ in 0..n {
            if matches!(
                std::hint::black_box(&policy).evaluate(action, std::hint::black_box(res)),
                esb_iam::Decision::Allow
            ) {
                allows += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        std::hint::black_box(allows);
        out.insert(name.into(), json!((ns * 10.0).round() / 10.0));
    }
    out.insert("statements".into(), json!(policy.statements.len()));
    out.insert("evaluations".into(), json!(n));
    println!("{}", serde_json::Value::Object(out));
}
