//! The embedded S3 store driven by real clients not written here: boto3, the AWS CLI,
//! Debian's s3cmd and rclone. Each test gets its own server and data directory.

mod common;

use common::{pytest, run_ok, sh_dir, TestServer};

#[test]
fn boto3_buckets_objects_listing() {
    let server = TestServer::start();
    pytest(
        &server,
        "test_boto3.py",
        Some("not multipart and not upload_part and not parallel"),
    );
}

#[test]
fn boto3_multipart_and_concurrency() {
    let server = TestServer::start();
    pytest(
        &server,
        "test_boto3.py",
        Some("multipart or upload_part or parallel"),
    );
}

/// tests/py/test_conformance.py: issue 19's behaviours as AWS S3 answers them (docs/s3.md,
/// "Conformance").
#[test]
fn boto3_conformance_with_aws() {
    let server = TestServer::start();
    pytest(&server, "test_conformance.py", Some("not restart"));
}

/// Versions, delete markers and the versioning status survive a restart of the server.
#[test]
fn boto3_versions_survive_a_restart() {
    let server = TestServer::start();
    pytest(&server, "test_conformance.py", Some("restart_phase1"));
    let server = server.restart();
    pytest(&server, "test_conformance.py", Some("restart_phase2"));
}

#[test]
fn awscli_s3_and_s3api() {
    let server = TestServer::start();
    let mut cmd = server.command("bash");
    cmd.arg(sh_dir().join("awscli.sh"));
    run_ok(cmd, "awscli.sh");
}

/// tests/sh/awscli_conformance.sh: `aws s3api` for issue 19's behaviours.
#[test]
fn awscli_s3api_conformance_with_aws() {
    let server = TestServer::start();
    let mut cmd = server.command("bash");
    cmd.arg(sh_dir().join("awscli_conformance.sh"));
    run_ok(cmd, "awscli_conformance.sh");
}

#[test]
fn rclone_sync_2000_odd_names_both_ways() {
    sync_tool("rclone", 2000);
}

#[test]
fn s3cmd_sync_1000_odd_names_both_ways() {
    // s3cmd works one file at a time; 1000 files keep this test around a minute.
    sync_tool("s3cmd", 1000);
}

/// Syncs `files` files with odd names up and back down with `tool` (tests/sh/sync_tools.sh).
fn sync_tool(tool: &str, files: usize) {
    let server = TestServer::start();
    let mut cmd = server.command("bash");
    cmd.arg(sh_dir().join("sync_tools.sh"))
        .arg(tool)
        .env("FILES", files.to_string());
    run_ok(cmd, &format!("sync_tools.sh {tool}"));
}
