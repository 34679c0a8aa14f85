//! Bounded fuzzing of SigV4 header parsing and verification, run in CI: mutated
//! `Authorization` values, dates and requests go through `parse_authorization`,
//! `precheck_headers` and `Verifier::verify`; none may panic.

use std::time::{Duration, SystemTime};

use esb_testkit::fuzz::{cases, mutate, Rng};

const AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                    SignedHeaders=host;x-amz-date, \
                    Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
const SPECIALS: &[&str] = &[
    "/",
    ",",
    "=",
    ";",
    " ",
    "Credential=",
    "SignedHeaders=",
    "Signature=",
    "aws4_request",
    "\u{00e9}",
    "%",
    "AWS4-HMAC-SHA256",
    "\t",
    ",,",
    "==",
];

#[test]
fn sigv4_parsing_and_verification_never_panic() {
    let mut r = Rng::new(0x5149_0004);
    let verifier =
        esb_sigv4::Verifier::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
    for _ in 0..cases(30_000) {
        let auth = mutate(&mut r, AUTH, SPECIALS);
        let date = mutate(&mut r, "20150830T123600Z", &["T", "Z", "9", "-", ":"]);
        let path = mutate(&mut r, "/a/b%20c", &["%", "%zz", "/..", "//", "?"]);
        let query = mutate(&mut r, "x=1&y=%2F&z", &["&", "=", "%", "%%", "+"]);
        let result = std::panic::catch_unwind(|| {
            let _ = esb_sigv4::parse_authorization(&auth);
            let mut req = http::Request::builder()
                .method("POST")
                .uri(format!("http://example.amazonaws.com{path}?{query}"));
            if let Ok(v) = http::HeaderValue::from_str(&auth) {
                req = req.header(http::header::AUTHORIZATION, v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&date) {
                req = req.header("x-amz-date", v);
            }
            req = req.header("host", "example.amazonaws.com");
            let Ok(req) = req.body(()) else { return };
            let (parts, ()) = req.into_parts();
            let _ = esb_sigv4::precheck_headers(
                &parts.headers,
                |k| (k == "AKIDEXAMPLE").then_some(()),
                esb_sigv4::DEFAULT_MAX_SKEW,
                now,
            );
            let _ = verifier.verify_at(&parts, b"body", now);
        });
        assert!(
            result.is_ok(),
            "sigv4 panicked on authorization {auth:?}, date {date:?}, path {path:?}, query {query:?}"
        );
    }
}
