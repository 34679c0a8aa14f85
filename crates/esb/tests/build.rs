//! `esb init` and `esb build` as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

const TEMPLATE: &str = r#"AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: dev
Resources:
  Hello:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub "hello-${Stage}"
      CodeUri: hello/
      Handler: app.handler
      Runtime: python3.11
"#;

fn esb(dir: &Path, args: &[&str]) -> Output {
    let supervisor = esb_supervisor::build_static(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        &std::env::current_exe()
            .unwrap()
            .ancestors()
            .nth(3)
            .unwrap()
            .join("esb-supervisor-static"),
    )
    .expect("static supervisor");
    Command::new(env!("CARGO_BIN_EXE_esb"))
        .current_dir(dir)
        .arg(format!("--state-dir={}", dir.join("state").display()))
        .args(args)
        .env("ESB_SUPERVISOR_BIN", supervisor)
        .output()
        .expect("run esb")
}

#[test]
fn init_then_build_then_rebuild_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("hello")).unwrap();
    std::fs::write(
        dir.path().join("hello/app.py"),
        "def handler(e, c):\n    return e\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("template.yaml"), TEMPLATE).unwrap();

    let out = esb(dir.path(), &["init", "-y"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generator = std::fs::read_to_string(dir.path().join("generator.yml")).unwrap();
    assert!(
        generator.contains("Stage") && generator.contains("dev"),
        "{generator}"
    );

    let out = esb(
        dir.path(),
        &["build", "--parameter-overrides", "Stage=prod"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 image(s)"), "{stdout}");
    assert!(
        stderr.contains("hello-prod"),
        "the override names the image: {stderr}"
    );

    let out = esb(
        dir.path(),
        &["build", "--parameter-overrides", "Stage=prod"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(0 layer(s) built"),
        "an unchanged build rebuilt something: {stdout}"
    );
}

#[test]
fn a_bad_template_is_named_with_its_line_and_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("template.yaml"),
        "Resources:\n  Broken:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: app.handler\n      Runtime: python3.11\n      MemorySize: lots\n",
    )
    .unwrap();
    let out = esb(dir.path(), &["build"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Broken"), "{err}");
    assert!(
        err.contains("MemorySize") || err.contains("CodeUri"),
        "{err}"
    );
    assert!(!dir.path().join(".esb").exists(), "something was written");
}

#[test]
fn other_architectures_and_zip_slip_archives_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("hello")).unwrap();
    std::fs::write(
        dir.path().join("hello/app.py"),
        "def handler(e, c):\n    return e\n",
    )
    .unwrap();
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "arm64"
    };
    std::fs::write(
        dir.path().join("template.yaml"),
        TEMPLATE.replace(
            "      Runtime: python3.11\n",
            &format!("      Runtime: python3.11\n      Architectures: [{other}]\n"),
        ),
    )
    .unwrap();
    let out = esb(dir.path(), &["build"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("function Hello")
            && stderr.contains(&format!("Architectures [{other}]"))
            && stderr.contains("does not emulate"),
        "{stderr}"
    );
    assert!(!dir.path().join(".esb/build/index.json").exists());

    // A code archive with an entry that climbs out of /var/task.
    let zip_path = dir.path().join("evil.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("app.py", o).unwrap();
    std::io::Write::write_all(&mut w, b"def handler(e, c):\n    return e\n").unwrap();
    w.start_file("../../etc/cron.d/evil", o).unwrap();
    std::io::Write::write_all(&mut w, b"* * * * * root true\n").unwrap();
    w.finish().unwrap();
    std::fs::write(
        dir.path().join("template.yaml"),
        TEMPLATE.replace("CodeUri: hello/", "CodeUri: evil.zip"),
    )
    .unwrap();
    let out = esb(dir.path(), &["build"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("../../etc/cron.d/evil") && stderr.contains("refused"),
        "{stderr}"
    );
}
