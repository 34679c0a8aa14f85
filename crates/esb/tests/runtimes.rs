//! The runtimes users bring, against `esb up` (issue 20): a Node.js 20 ES module using the
//! runtime's AWS SDK for JavaScript v3 against the box's DynamoDB and S3 and invoking a
//! Python 3.13 function (one trace id through both), Node.js 18 in callback style, Python
//! 3.12 code served by 3.13 with the warning naming it, a function and a layer from zip
//! archives (modes kept), a `PackageType: Image` function from a `docker save` archive on
//! disk, and Node.js failures reported as Lambda reports them.

mod boxkit;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use boxkit::TestBox;

fn runtimes_app() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/runtimes")
}

/// Zips `src` into `dest` as `sam build` would, keeping each file's unix mode.
fn zip_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            let o = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode);
            if path.is_dir() {
                w.add_directory(format!("{rel}/"), o).unwrap();
                stack.push(path);
            } else {
                w.start_file(rel, o).unwrap();
                w.write_all(&std::fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    w.finish().unwrap();
}

fn root_of(trace: &str) -> &str {
    trace
        .split(';')
        .find(|p| p.starts_with("Root="))
        .unwrap_or("")
}

#[test]
fn node_python_and_zip_functions_run_as_on_lambda() {
    let b = TestBox::new(&runtimes_app());
    let src = b.app.join("functions/zipped-src");
    let set_mode = |p: &str, m: u32| {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set_mode("app/bin/run.sh", 0o755);
    set_mode("app/app.py", 0o644);
    set_mode("app/private.txt", 0o600);
    zip_dir(&src.join("app"), &b.app.join("zipped/app.zip"));
    zip_dir(&src.join("layer"), &b.app.join("zipped/layer.zip"));

    // A container image on disk (PackageType Image), made as `docker save` would from a
    // base `esb build` leaves in the cache.
    b.ok(&["build"]);
    std::fs::create_dir_all(b.app.join("images")).unwrap();
    let made = std::process::Command::new(esb_testkit::python())
        .arg(b.app.join("make_image.py"))
        .arg(b.app.join("images/python-function.tar"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");

    // python3.12 is served by the trixie base's 3.13, and the box says so.
    let status = b.esb(&["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(
        status_text.contains("python3.12") && status_text.contains("Python 3.13 (Debian trixie)"),
        "{status_text}"
    );

    // Python 3.13, with 3.12+ syntax.
    let (ok, v, text) = b.invoke("py313", r#"{"n":1}"#);
    assert!(ok, "{text}");
    assert_eq!(v["major_minor"], "3.13", "{text}");
    assert_eq!(v["joined"], "python on trixie", "{text}");
    let (ok, v, text) = b.invoke("py312", "{}");
    assert!(ok && v["major_minor"] == "3.13", "{text}");

    // Node.js 20, ES module: DynamoDB, S3 and Lambda through the runtime's SDK; the Python
    // function it invoked saw the same trace.
    let (ok, v, text) = b.invoke("node-esm", r#"{"hello":"node"}"#);
    assert!(ok, "{text}\n{}", b.log_events("gateway", 20));
    assert!(
        v["node"].as_str().is_some_and(|n| n.starts_with("20.")),
        "{text}"
    );
    assert_eq!(v["answer"], "42", "{text}");
    assert_eq!(v["greeting"], "hello esm from a layer", "{text}");
    assert_eq!(v["text"], "hello from node", "{text}");
    assert_eq!(v["event"]["hello"], "node", "{text}");
    assert_eq!(v["python"]["major_minor"], "3.13", "{text}");
    assert_eq!(v["python"]["event"]["from"], "node-esm", "{text}");
    let node_trace = v["trace"].as_str().unwrap_or_default();
    let py_trace = v["python"]["trace"].as_str().unwrap_or_default();
    assert!(
        !root_of(node_trace).is_empty() && root_of(node_trace) == root_of(py_trace),
        "one trace through both: {node_trace} / {py_trace}"
    );
    // What the function wrote is in the box's S3, seen from the host.
    let key = v["key"].as_str().unwrap().to_string();
    let s3 = b
        .python(&[
            "-c",
            &format!(
                "import boto3,os; c=boto3.client('s3', endpoint_url=os.environ['E2E_S3']); \
                 print(c.get_object(Bucket='rt-files', Key='{key}')['Body'].read().decode())"
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&s3.stdout).trim(),
        "hello from node",
        "{}",
        String::from_utf8_lossy(&s3.stderr)
    );

    // Node.js 18, CommonJS, callback style: the answer waited for the event loop to empty.
    let (ok, v, text) = b.invoke("node-callback", "{}");
    assert!(ok, "{text}");
    assert!(
        v["node"].as_str().is_some_and(|n| n.starts_with("18.")),
        "{text}"
    );
    assert_eq!(v["sdk"], "function", "{text}");
    assert_eq!(v["late"], true, "callbackWaitsForEmptyEventLoop: {text}");
    assert_eq!(v["functionName"], "node-callback", "{text}");
    let remaining = v["remaining"].as_i64().unwrap_or(0);
    assert!(remaining > 20_000 && remaining <= 30_000, "{text}");
    assert!(
        v["arn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":function:node-callback")),
        "{text}"
    );

    // Code and layer from zip archives, unix modes kept.
    let (ok, v, text) = b.invoke("zipped", "{}");
    assert!(ok, "{text}");
    assert_eq!(v["layer"], "from the zip layer", "{text}");
    assert_eq!(v["script_mode"], "0o755", "{text}");
    assert_eq!(v["app_mode"], "0o644", "{text}");
    assert_eq!(v["private_mode"], "0o600", "{text}");

    // The image's own ENTRYPOINT and CMD run as the runtime, with its environment.
    let (ok, v, text) = b.invoke("from-image", r#"{"via":"image"}"#);
    assert!(ok, "{text}");
    assert_eq!(v["from_image"], true, "{text}");
    assert_eq!(v["cwd"], "/var/task", "{text}");
    assert_eq!(v["image_env"], "set by the image", "{text}");
    assert_eq!(v["function"], "from-image", "{text}");
    assert_eq!(v["event"]["via"], "image", "{text}");

    // Failures as Lambda reports them.
    let (_, v, text) = b.invoke("node-init-error", "{}");
    assert_eq!(v["errorType"], "Error", "{text}");
    assert!(
        v["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("init failed on purpose")),
        "{text}"
    );
    let (_, v, text) = b.invoke("node-rejection", "{}");
    assert_eq!(
        v["errorType"], "Runtime.UnhandledPromiseRejection",
        "{text}"
    );
    assert_eq!(v["errorMessage"], "Error: rejected on purpose", "{text}");
    // The worker's runtime came back: the next call is answered the same way, not hung.
    let (_, v, text) = b.invoke("node-rejection", "{}");
    assert_eq!(
        v["errorType"], "Runtime.UnhandledPromiseRejection",
        "{text}"
    );

    b.down_clean();
}
