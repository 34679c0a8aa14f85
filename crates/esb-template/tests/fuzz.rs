//! Bounded fuzzing of the template loader, run in CI: mutations of a real SAM template
//! (intrinsics, nesting, anchors, long runs) go through `parse_str`; it may refuse them,
//! never panic.

use std::path::Path;

use esb_testkit::fuzz::{cases, mutate, Rng};

const SPECIALS: &[&str] = &[
    "!Ref ",
    "!Sub ",
    "!GetAtt ",
    "!If [",
    "!Join [",
    "!Select [",
    "!Split [",
    "!FindInMap [",
    "!Equals [",
    "!Not [",
    "!And [",
    "!Or [",
    "${",
    "}",
    "[",
    "]",
    "{",
    "}",
    ":",
    "- ",
    "&a ",
    "*a",
    "<<: ",
    "\n  ",
    "\n",
    "'",
    "\"",
    "AWS::NoValue",
    "Fn::If",
    "Ref",
    "#",
];

#[test]
fn the_template_loader_never_panics() {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../esb/tests/e2e/template.yaml"),
    )
    .unwrap();
    let mut r = Rng::new(0x7e3b_1a7e);
    let dir = Path::new("/tmp");
    for _ in 0..cases(5_000) {
        let src = mutate(&mut r, &base, SPECIALS);
        let result = std::panic::catch_unwind(|| {
            let _ = esb_template::parse_str(&src, dir, &Default::default());
        });
        assert!(result.is_ok(), "parse_str panicked on:\n{src}");
    }
}
