//! The image builder on real templates: layers, config, caching, rebuild granularity,
//! dry runs and bad input. Uses the cached python base (built with debootstrap on first
//! use, under $ESB_CACHE_DIR) and the provided base (from this host's glibc).

mod common;

use common::*;

fn load(dir: &std::path::Path) -> esb_template::Template {
    esb_template::load(&dir.join("template.yaml"), &Default::default()).unwrap()
}

#[test]
fn python_function_with_layer_image_layout_and_config() {
    esb_testkit::require_root();
    let app = fixture("python-layer");
    let out = tempfile::tempdir().unwrap();
    let t = load(app.path());
    let sup = fake_supervisor(app.path());
    let (report, events) = build(&t, &options(&t, out.path(), &sup));
    assert_eq!(report.images.len(), 2);
    assert!(events
        .iter()
        .any(|e| matches!(e, esb_image::Progress::Planned { images: 2, .. })));

    let hello = report
        .images
        .iter()
        .find(|i| i.function == "HelloFunction")
        .unwrap();
    assert_eq!(hello.reference, "esb.local/functions/hello-python:latest");
    let whats: Vec<&str> = hello.layers.iter().map(|l| l.what.as_str()).collect();
    assert_eq!(whats.len(), 4);
    assert!(whats[0].starts_with("base python3.11"), "{whats:?}");
    assert_eq!(
        &whats[1..],
        ["supervisor", "layer GreetingLayer", "code HelloFunction"]
    );

    // index.json names both images; the manifest and config are what the runtime needs.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let manifest = json_blob(out.path(), &hello.manifest_digest);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 4);
    let config = json_blob(out.path(), manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/esb-supervisor"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/var/task");
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "ESB_RUNTIME=python3.11",
        "_HANDLER=app.handler",
        "AWS_LAMBDA_FUNCTION_NAME=hello-python",
        "AWS_LAMBDA_FUNCTION_TIMEOUT=10",
        "LAMBDA_TASK_ROOT=/var/task",
        "GREETING_STYLE=warm",
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);

    // Layer contents: the layer under /opt, the code under /var/task, the supervisor.
    let layer = layer_entries(out.path(), &hello.layers[2].digest);
    assert!(
        layer.iter().any(|(p, _)| p == "opt/python/greeting.py"),
        "{layer:?}"
    );
    let code = layer_entries(out.path(), &hello.layers[3].digest);
    assert!(code.iter().any(|(p, _)| p == "var/task/app.py"), "{code:?}");
    let sup_layer = layer_entries(out.path(), &hello.layers[1].digest);
    assert!(
        sup_layer.contains(&("usr/local/bin/esb-supervisor".to_string(), 0o755)),
        "{sup_layer:?}"
    );
    // The base has python and the runtime client.
    let base = layer_entries(out.path(), &hello.layers[0].digest);
    assert!(base
        .iter()
        .any(|(p, _)| p == "usr/bin/python3.11" || p == "./usr/bin/python3.11"));
    assert!(base
        .iter()
        .any(|(p, _)| p.contains("var/runtime/awslambdaric/")));
    assert!(!base
        .iter()
        .any(|(p, _)| p.contains("usr/share/doc/") && p.len() > "usr/share/doc/".len() + 2));
}

#[test]
fn no_change_rebuilds_nothing_and_one_file_rebuilds_one_layer_of_one_image() {
    esb_testkit::require_root();
    let app = fixture("python-layer");
    let out = tempfile::tempdir().unwrap();
    let t = load(app.path());
    let sup = fake_supervisor(app.path());
    let opts = options(&t, out.path(), &sup);
    let (first, _) = build(&t, &opts);
    let digests = |r: &esb_image::BuildReport| -> Vec<String> {
        r.images.iter().map(|i| i.manifest_digest.clone()).collect()
    };

    // No change: nothing rebuilt, every image unchanged.
    let (again, _) = build(&t, &opts);
    assert_eq!(again.layers_built, 0);
    assert!(again.images.iter().all(|i| !i.changed));
    assert_eq!(digests(&first), digests(&again));

    // One file of one function: one layer of one image.
    std::fs::write(
        app.path().join("src/app.py"),
        "def handler(e, c):\n    return 'changed'\n",
    )
    .unwrap();
    let (changed, _) = build(&t, &opts);
    assert_eq!(changed.layers_built, 1, "{changed:#?}");
    let rebuilt: Vec<(&str, &str)> = changed
        .images
        .iter()
        .flat_map(|i| {
            i.layers
                .iter()
                .filter(|l| l.rebuilt)
                .map(move |l| (i.function.as_str(), l.what.as_str()))
        })
        .collect();
    assert_eq!(rebuilt, [("HelloFunction", "code HelloFunction")]);
    let hello = changed
        .images
        .iter()
        .find(|i| i.function == "HelloFunction")
        .unwrap();
    let other = changed
        .images
        .iter()
        .find(|i| i.function == "OtherFunction")
        .unwrap();
    assert!(hello.changed && !other.changed);
    assert_eq!(
        other.manifest_digest,
        first
            .images
            .iter()
            .find(|i| i.function == "OtherFunction")
            .unwrap()
            .manifest_digest
    );

    // Touching a file without changing it rebuilds the layer to the same digest.
    let before = hello.layers[3].digest.clone();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        app.path().join("src/app.py"),
        "def handler(e, c):\n    return 'changed'\n",
    )
    .unwrap();
    let (touched, _) = build(&t, &opts);
    let hello2 = touched
        .images
        .iter()
        .find(|i| i.function == "HelloFunction")
        .unwrap();
    assert_eq!(hello2.layers[3].digest, before);
    assert!(!hello2.changed);

    // --no-cache rebuilds every layer but the base, to the same digests.
    let mut nc = opts.clone();
    nc.no_cache = true;
    let (fresh, _) = build(&t, &nc);
    assert_eq!(digests(&fresh), digests(&touched));
}

#[test]
fn provided_runtime_dry_run_and_errors() {
    esb_testkit::require_root();
    let app = fixture("rust-fn");
    std::fs::create_dir_all(app.path().join("bootstrap-dir")).unwrap();
    std::fs::write(app.path().join("bootstrap-dir/bootstrap"), "#!/bin/sh\n").unwrap();
    let t = load(app.path());
    let out = tempfile::tempdir().unwrap();
    let sup = fake_supervisor(app.path());

    // A dry run reports and writes nothing.
    let mut dry = options(&t, &out.path().join("layout"), &sup);
    dry.dry_run = true;
    let (r, _) = build(&t, &dry);
    assert_eq!(r.images.len(), 1);
    assert!(!out.path().join("layout").exists());

    let (r, _) = build(&t, &options(&t, &out.path().join("layout"), &sup));
    let img = &r.images[0];
    assert!(img.layers[0].what.starts_with("base provided"));
    let base = layer_entries(&out.path().join("layout"), &img.layers[0].digest);
    assert!(
        base.iter().any(|(p, _)| p.ends_with("libc.so.6")),
        "{base:?}"
    );
    let code = layer_entries(&out.path().join("layout"), &img.layers[2].digest);
    assert!(
        code.contains(&("var/task/bootstrap".to_string(), 0o644))
            || code.iter().any(|(p, _)| p == "var/task/bootstrap")
    );

    // A CodeUri that does not exist names the function.
    std::fs::remove_dir_all(app.path().join("bootstrap-dir")).unwrap();
    let err =
        esb_image::build(&t, &options(&t, &out.path().join("layout"), &sup), &|_| {}).unwrap_err();
    assert!(
        err.to_string().contains("RustFunction") && err.to_string().contains("bootstrap-dir"),
        "{err}"
    );

    // An unsupported runtime is refused with the function's name.
    let t2 = esb_template::parse_str(
        "Resources:\n  Js:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: .\n      Handler: i.h\n      Runtime: nodejs16.x\n",
        app.path(),
        &Default::default(),
    )
    .unwrap();
    let err = esb_image::build(
        &t2,
        &options(&t2, &out.path().join("layout"), &sup),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("Js") && err.to_string().contains("nodejs16.x"),
        "{err}"
    );
}

#[test]
fn python_requirements_go_to_their_own_layer() {
    esb_testkit::require_root();
    let app = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(app.path().join("fn")).unwrap();
    std::fs::write(
        app.path().join("fn/app.py"),
        "import six\n\ndef handler(e, c):\n    return six.PY3\n",
    )
    .unwrap();
    std::fs::write(app.path().join("fn/requirements.txt"), "six==1.16.0\n").unwrap();
    std::fs::write(
        app.path().join("template.yaml"),
        "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: fn\n      Handler: app.handler\n      Runtime: python3.11\n",
    )
    .unwrap();
    let t = load(app.path());
    let out = tempfile::tempdir().unwrap();
    let opts = options(&t, out.path(), &fake_supervisor(app.path()));
    let (r, _) = build(&t, &opts);
    let whats: Vec<&str> = r.images[0].layers.iter().map(|l| l.what.as_str()).collect();
    assert_eq!(&whats[1..], ["supervisor", "deps Fn", "code Fn"]);
    let deps = layer_entries(out.path(), &r.images[0].layers[2].digest);
    assert!(deps.iter().any(|(p, _)| p == "var/task/six.py"), "{deps:?}");

    // A code change leaves the dependencies alone.
    std::fs::write(
        app.path().join("fn/app.py"),
        "def handler(e, c):\n    return 1\n",
    )
    .unwrap();
    let (r2, _) = build(&t, &opts);
    let rebuilt: Vec<&str> = r2.images[0]
        .layers
        .iter()
        .filter(|l| l.rebuilt)
        .map(|l| l.what.as_str())
        .collect();
    assert_eq!(rebuilt, ["code Fn"]);
}
