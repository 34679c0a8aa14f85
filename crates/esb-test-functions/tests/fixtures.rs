//! The fixtures are in place. Having an integration test also makes `cargo test` /
//! `cargo nextest run --workspace` build the `esb-test-function` binary itself (cargo builds
//! a package's binaries for its integration tests), so other crates' tests find it.

use std::path::Path;

#[test]
fn rust_function_binary_is_built_and_found() {
    let built = Path::new(env!("CARGO_BIN_EXE_esb-test-function"));
    assert!(built.is_file(), "{} missing", built.display());
    let found = esb_test_functions::rust_function();
    assert_eq!(found.canonicalize().unwrap(), built.canonicalize().unwrap());
}

#[test]
fn python_handlers_are_present() {
    let dir = esb_test_functions::python_dir();
    for f in ["handlers.py", "init_error.py", "floor.py"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let handlers = std::fs::read_to_string(dir.join("handlers.py")).unwrap();
    assert!(handlers.contains("def dispatch(event, context):"));
}
