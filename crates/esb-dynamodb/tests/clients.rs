//! The real AWS clients (boto3 client and resource APIs, the AWS CLI) against the store.
//! Each suite runs against its own fresh server.

mod common;

#[test]
fn boto3_client_control_plane_and_items() {
    common::pytest("test_client.py");
}

#[test]
fn boto3_query_scan_pagination() {
    common::pytest("test_query.py");
}

#[test]
fn boto3_resource_table_api() {
    common::pytest("test_resource.py");
}

#[test]
fn boto3_batches_and_transactions() {
    common::pytest("test_batch_tx.py");
}

#[test]
fn boto3_indexes_and_ttl() {
    common::pytest("test_indexes_ttl.py");
}

#[test]
fn boto3_errors_and_limits() {
    common::pytest("test_errors.py");
}

#[test]
fn concurrent_conditional_writes_one_winner() {
    common::pytest("test_concurrency.py");
}

#[test]
fn aws_cli() {
    common::pytest("test_awscli.py");
}

#[test]
fn differential_against_dynalite_golden() {
    common::pytest("test_differential.py");
}

#[test]
fn boto3_legacy_parameters() {
    common::pytest("test_legacy.py");
}

/// Sends `head` then at most `body` bytes of a large declared body, without ever
/// finishing it; the answer the server gives meanwhile (empty: none within 10 s).
fn answer_before_body(addr: std::net::SocketAddr, head: &str, body: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(&vec![b' '; body]);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn unsigned_and_unknown_requests_are_refused_before_their_body_is_read() {
    let server = common::TestServer::start();
    // 16 MiB declared, 64 KiB sent: the answer comes from the headers alone.
    let unsigned =
        "POST / HTTP/1.1\r\nhost: localhost\r\nx-amz-target: DynamoDB_20120810.PutItem\r\n\
                    content-type: application/x-amz-json-1.0\r\ncontent-length: 16000000\r\n\r\n";
    let answer = answer_before_body(server.addr, unsigned, 64 * 1024);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("MissingAuthenticationToken"), "{answer}");
    let unknown = format!(
        "POST / HTTP/1.1\r\nhost: localhost\r\nx-amz-target: DynamoDB_20120810.PutItem\r\n\
         x-amz-date: {}\r\nauthorization: AWS4-HMAC-SHA256 Credential=AKIDNOBODY/20260101/\
         ap-northeast-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\n\
         content-length: 16000000\r\n\r\n",
        esb_sigv4::format_amz_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        )
    );
    let answer = answer_before_body(server.addr, &unknown, 64 * 1024);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("UnrecognizedClient"), "{answer}");
}

#[test]
fn conformance_validation_messages() {
    common::pytest("test_conformance_validation.py");
}

#[test]
fn conformance_updates_legacy_and_transactions() {
    common::pytest("test_conformance_updates.py");
}
