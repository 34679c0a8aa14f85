//! Signs DynamoDB JSON requests as the SDKs do (SigV4): shared by the integration tests'
//! minimal client and the bench load generator (examples/loadgen.rs).

use sha2::Digest;

/// The headers of a request for operation `op` carrying `payload`, in this order: the
/// signed `host`, `x-amz-date` and `x-amz-target`, then `content-type` and `authorization`.
pub fn signed_headers(
    host: &str,
    op: &str,
    payload: &[u8],
    (access_key, secret_key): (&str, &str),
    region: &str,
) -> Vec<(String, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut headers = vec![
        ("host".to_owned(), host.to_owned()),
        ("x-amz-date".to_owned(), esb_sigv4::format_amz_date(now)),
        ("x-amz-target".to_owned(), format!("DynamoDB_20120810.{op}")),
    ];
    let hash = hex::encode(sha2::Sha256::digest(payload));
    let req = esb_sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
    };
    let auth = esb_sigv4::sign(access_key, secret_key, region, "dynamodb", &req, &hash);
    headers.push((
        "content-type".to_owned(),
        "application/x-amz-json-1.0".to_owned(),
    ));
    headers.push(("authorization".to_owned(), auth));
    headers
}
