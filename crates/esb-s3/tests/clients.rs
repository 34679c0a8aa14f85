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

#[test]
fn awscli_s3_and_s3api() {
    let server = TestServer::start();
    let mut cmd = server.command("bash");
    cmd.arg(sh_dir().join("awscli.sh"));
    run_ok(cmd, "awscli.sh");
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
