//! Bounded fuzzing of the LogsQL parser and the ingestion line parser, run in CI:
//! grammar-shaped queries, their mutations and token soup go through `logsql::parse`;
//! JSON-ish lines and their mutations through `ingest::parse_line`; none may panic.

use esb_logstore::logsql;
use esb_testkit::fuzz::{cases, mutate, soup, Rng};

const WORDS: &[&str] = &[
    "error",
    "\"two words\"",
    "*",
    "foo*",
    "_msg:hello",
    "level:error",
    "_time:5m",
    "_time:[2024-01-01, 2024-02-01)",
    "_stream:{app=\"x\"}",
    "function_name:greeter",
    "trace_id:\"Root=1-a\"",
    "status:>=500",
    "duration_ms:<10",
    "~\"re.*x\"",
    "i(Error)",
    "exact(\"a b\")",
    "seq(\"a\", \"b\")",
    "x:in(a, b)",
    "len:range[1, 9]",
    "-",
    "!",
    "NOT",
];
const PIPES: &[&str] = &[
    "| sort by (_time desc)",
    "| limit 10",
    "| fields _msg, level",
    "| stats count() hits",
    "| stats by (level) count() n",
    "| uniq by (level)",
    "| head 3",
    "| offset 2",
    "| copy a b",
    "| rename a b",
    "| delete x",
    "| filter level:error",
    "| sort by (x) limit 5",
];
const TOKENS: &[&str] = &[
    "(", ")", "AND", "OR", "NOT", "|", ":", "\"", "*", "{", "}", "[", "]", ",", "=", "~", "by",
    "sort", "stats", "count()", "limit", "_time", "5m", "-", "!", ">=", "\\",
];

fn query(r: &mut Rng, depth: usize) -> String {
    let mut q = match r.below(if depth > 5 { 2 } else { 5 }) {
        0 | 1 => r.pick(WORDS).to_string(),
        2 => format!(
            "({} {} {})",
            query(r, depth + 1),
            r.pick(&["AND", "OR", ""]),
            query(r, depth + 1)
        ),
        3 => format!("NOT {}", query(r, depth + 1)),
        _ => format!("{} {}", query(r, depth + 1), query(r, depth + 1)),
    };
    if depth == 0 {
        for _ in 0..r.below(3) {
            q.push(' ');
            q.push_str(r.pick(PIPES));
        }
    }
    q
}

#[test]
fn the_logsql_parser_never_panics() {
    let mut r = Rng::new(0x1065_0c0d);
    let now = 1_700_000_000_000_000_000;
    for i in 0..cases(30_000) {
        let q = match i % 3 {
            0 => query(&mut r, 0),
            1 => {
                let base = query(&mut r, 0);
                mutate(&mut r, &base, TOKENS)
            }
            _ => {
                let n = 1 + r.below(40);
                soup(&mut r, TOKENS, n)
            }
        };
        let result = std::panic::catch_unwind(|| logsql::parse(&q, now).is_ok());
        assert!(result.is_ok(), "logsql::parse panicked on {q:?}");
    }
}

#[test]
fn the_ingestion_line_parser_never_panics() {
    let mut r = Rng::new(0x11e5);
    let lines = [
        r#"{"_msg":"hello","level":"info","_time":"2024-01-01T00:00:00Z"}"#,
        r#"{"message":"x","nested":{"a":[1,2,{"b":null}]},"n":1.5e300}"#,
        r#"{"_msg":"\u00e9\ud83d\ude00","ts":1700000000}"#,
    ];
    let specials = &[
        "{", "}", "[", "]", "\"", "\\u", "\\ud800", ":", ",", "1e999", "null",
    ];
    let params = esb_logstore::ingest::IngestParams::default();
    for _ in 0..cases(30_000) {
        let base = r.pick(&lines);
        let line = mutate(&mut r, base, specials);
        let result = std::panic::catch_unwind(|| {
            let _ = esb_logstore::ingest::parse_line(
                line.as_bytes(),
                &params,
                1_700_000_000_000_000_000,
                esb_logstore::ingest::Format::JsonLine,
            );
        });
        assert!(result.is_ok(), "parse_line panicked on {line:?}");
    }
}
