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
