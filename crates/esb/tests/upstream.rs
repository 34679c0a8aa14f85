//! Coming from upstream ESB (issue 18), against `esb up` serving an application as its
//! users have it: `crates/esb/tests/e2e/upstream` (template and `.env` with upstream's
//! names). The clients' side (auth paths, raw tokens, the Invoke API with an IdToken, log
//! queries on upstream's field names, CloudWatch Logs from a function and from the host,
//! `aws logs tail`, LoggingConfig) is test_upstream.py; this file adds the command line:
//! the `.env` layer in `esb config`, `esb -t`, `esb trust`, `esb down -v`, `esb reset -y`.

mod boxkit;

use std::path::Path;
use std::process::Command;

use boxkit::TestBox;

fn upstream_app() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/upstream")
}

/// Takes the box CA out of the system trust store again, whatever happens to the test.
struct Untrust<'a>(&'a TestBox);

impl Drop for Untrust<'_> {
    fn drop(&mut self) {
        let _ = self.0.esb(&["trust", "--remove"]);
    }
}

/// curl of the gateway's /health without --cacert: its exit code.
fn curl_system_trust(b: &TestBox) -> i32 {
    b.in_host("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "30",
            &b.url("/health"),
        ])
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn upstream_users_contracts_against_esb_up() {
    let b = TestBox::new(&upstream_app());
    // `esb -t TEMPLATE up` from elsewhere: the global flag, and the .env beside it.
    let template = b.app.join("template.yaml").display().to_string();
    let out = b.esb(&["-t", &template, "up"]);
    assert!(
        out.status.success(),
        "esb -t … up failed:\n{}{}\nbox log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        b.log_tail("box", 40)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LAMBDA_NETWORK has no meaning in esb"),
        "{stderr}"
    );
    assert!(stderr.contains("GATEWAY_INTERNAL_URL"), "{stderr}");

    // The .env layer in `esb config`, with upstream's names translated.
    let config = b.ok(&["-t", &template, "config"]);
    let line = |key: &str| {
        config
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} missing from esb config:\n{config}"))
            .to_string()
    };
    assert!(line("ESB_DEFAULT_CONCURRENCY").contains('4'), "{config}");
    assert!(line("ESB_DEFAULT_CONCURRENCY").contains(".env"), "{config}");
    assert!(line("JWT_EXPIRES_DELTA").contains("1234"), "{config}");
    assert!(line("X_API_KEY").contains(".env"), "{config}");
    assert!(
        !config.contains("upstream-api-key-from-dotenv"),
        "a secret printed:\n{config}"
    );

    // The clients' side.
    let user = b.secrets()["AUTH_USER"].clone();
    let pass = b.secrets()["AUTH_PASS"].clone();
    let out = b
        .python(&[
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "test_upstream.py",
        ])
        .env("E2E_API_KEY", "upstream-api-key-from-dotenv")
        .env("E2E_USER", &user)
        .env("E2E_PASS", &pass)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    if !out.status.success() {
        let functions = b.esb(&["logs", "--since", "10m", "-n", "100"]);
        panic!(
            "test_upstream.py failed:\n{text}\ngateway log:\n{}\nfunctions' logs:\n{}{}",
            b.log_events("gateway", 100),
            String::from_utf8_lossy(&functions.stdout),
            String::from_utf8_lossy(&functions.stderr)
        );
    }

    // `esb trust`: curl and Python's default context accept the gateway without --cacert.
    assert_ne!(
        curl_system_trust(&b),
        0,
        "the box CA was trusted before esb trust"
    );
    let guard = Untrust(&b);
    let said = b.ok(&["trust"]);
    assert!(said.contains("trusted system-wide"), "{said}");
    assert_eq!(
        curl_system_trust(&b),
        0,
        "curl without --cacert after esb trust"
    );
    let py = b
        .python(&[
            "-c",
            "import ssl, sys, urllib.request; \
             print(urllib.request.urlopen(sys.argv[1], context=ssl.create_default_context()).status)",
            &b.url("/health"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&py.stdout).trim() == "200",
        "Python without a CA file: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(b.ok(&["trust"]).contains("trusted already"));
    let said = b.ok(&["trust", "--remove"]);
    assert!(said.contains("no longer trusted"), "{said}");
    assert_ne!(
        curl_system_trust(&b),
        0,
        "still trusted after esb trust --remove"
    );
    drop(guard);

    // `esb down -v` deletes the data too; `esb reset -y` the whole state.
    let pids = b.recorded_pids();
    b.ok(&["down", "-v"]);
    assert!(b.leftovers(&pids).is_empty(), "{:#?}", b.leftovers(&pids));
    for data in ["s3", "dynamodb", "logstore"] {
        assert!(
            !b.state.join(data).exists(),
            "esb down -v left {}",
            b.state.join(data).display()
        );
    }
    b.ok(&["reset", "-y"]);
    assert!(!b.state.exists(), "esb reset -y left {}", b.state.display());
    let _ = Command::new("true").status();
}
