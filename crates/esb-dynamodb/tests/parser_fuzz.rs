//! Bounded fuzzing of the expression parser and evaluator, run in CI: a fixed number of
//! generated inputs (grammar-based expressions, their random mutations, and token soup)
//! go through every parser; none may panic, and every accepted expression is evaluated
//! against generated items, which must not panic either. `fuzz/` holds the same target for
//! open-ended runs with cargo-fuzz.

use esb_dynamodb::expr::{
    apply_update, eval, parse_condition, parse_key_condition, parse_projection, parse_update,
    project, Placeholders,
};
use esb_dynamodb::value::{item_from_json, Item};
use serde_json::json;

const CASES: usize = 30_000;

/// xorshift64*: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

const PATHS: &[&str] = &[
    "a", "b", "#n", "#m", "a.b", "l[0]", "l[1].c", "#n.x[2]", "m.#m", "size", "and",
];
const VALUES: &[&str] = &[":s", ":n", ":l", ":m", ":ss", ":ns", ":b", ":t", ":z"];
const CMP: &[&str] = &["=", "<>", "<", "<=", ">", ">="];

fn operand(r: &mut Rng) -> String {
    match r.below(4) {
        0 => r.pick(VALUES).to_owned(),
        1 => format!("size({})", r.pick(PATHS)),
        _ => r.pick(PATHS).to_owned(),
    }
}

fn condition(r: &mut Rng, depth: usize) -> String {
    let k = if depth > 4 { r.below(5) } else { r.below(9) };
    match k {
        0 => format!("{} {} {}", operand(r), r.pick(CMP), operand(r)),
        1 => format!("{} BETWEEN {} AND {}", operand(r), operand(r), operand(r)),
        2 => format!("{} IN ({}, {})", operand(r), operand(r), operand(r)),
        3 => format!(
            "{}({}{})",
            r.pick(&[
                "attribute_exists",
                "attribute_not_exists",
                "begins_with",
                "contains",
                "attribute_type",
                "size",
                "nope"
            ]),
            r.pick(PATHS),
            if r.below(2) == 0 {
                format!(", {}", operand(r))
            } else {
                String::new()
            }
        ),
        4 => format!("{} = {}", r.pick(PATHS), r.pick(VALUES)),
        5 => format!(
            "{} AND {}",
            condition(r, depth + 1),
            condition(r, depth + 1)
        ),
        6 => format!("{} OR {}", condition(r, depth + 1), condition(r, depth + 1)),
        7 => format!("NOT {}", condition(r, depth + 1)),
        _ => format!("({})", condition(r, depth + 1)),
    }
}

fn set_operand(r: &mut Rng, depth: usize) -> String {
    match if depth > 3 { r.below(2) } else { r.below(4) } {
        0 => r.pick(VALUES).to_owned(),
        1 => r.pick(PATHS).to_owned(),
        2 => format!(
            "if_not_exists({}, {})",
            r.pick(PATHS),
            set_operand(r, depth + 1)
        ),
        _ => format!(
            "list_append({}, {})",
            set_operand(r, depth + 1),
            set_operand(r, depth + 1)
        ),
    }
}

fn update(r: &mut Rng) -> String {
    let mut out = Vec::new();
    for clause in ["SET", "REMOVE", "ADD", "DELETE"] {
        if r.below(2) == 0 {
            continue;
        }
        let n = 1 + r.below(3);
        let actions: Vec<String> = (0..n)
            .map(|_| match clause {
                "SET" => {
                    let rhs = match r.below(3) {
                        0 => format!("{} + {}", set_operand(r, 0), set_operand(r, 0)),
                        1 => format!("{} - {}", set_operand(r, 0), set_operand(r, 0)),
                        _ => set_operand(r, 0),
                    };
                    format!("{} = {rhs}", r.pick(PATHS))
                }
                "REMOVE" => r.pick(PATHS).to_owned(),
                _ => format!("{} {}", r.pick(PATHS), r.pick(VALUES)),
            })
            .collect();
        out.push(format!("{clause} {}", actions.join(", ")));
    }
    out.join(" ")
}

const SOUP: &[&str] = &[
    "a",
    "#n",
    ":s",
    "(",
    ")",
    "[",
    "]",
    ".",
    ",",
    "=",
    "<>",
    "<",
    ">=",
    "+",
    "-",
    "AND",
    "OR",
    "NOT",
    "BETWEEN",
    "IN",
    "SET",
    "REMOVE",
    "ADD",
    "DELETE",
    "size",
    "contains",
    "if_not_exists",
    "0",
    "99999999999999999999999",
    " ",
    "é",
    "\u{0}",
    "#",
    ":",
    "::",
    "##",
    "\"",
    ";",
    "$",
];

fn soup(r: &mut Rng) -> String {
    (0..r.below(24))
        .map(|_| r.pick(SOUP))
        .collect::<Vec<_>>()
        .join(if r.below(2) == 0 { " " } else { "" })
}

fn mutate(r: &mut Rng, s: String) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..1 + r.below(3) {
        if chars.is_empty() {
            break;
        }
        let i = r.below(chars.len());
        match r.below(4) {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(
                i,
                ['(', ')', '[', ']', ' ', ',', '.', '#', ':', '9', 'x'][r.below(11)],
            ),
            2 => {
                let j = r.below(chars.len());
                chars.swap(i, j)
            }
            _ => chars.truncate(i),
        }
    }
    chars.into_iter().collect()
}

fn placeholders() -> Placeholders {
    Placeholders::from_request(&json!({
        "ExpressionAttributeNames": {"#n": "name", "#m": "m"},
        "ExpressionAttributeValues": {
            ":s": {"S": "str"}, ":n": {"N": "12.5"}, ":l": {"L": [{"S": "x"}]}, ":m": {"M": {"k": {"N": "1"}}},
            ":ss": {"SS": ["a", "b"]}, ":ns": {"NS": ["1", "2"]}, ":b": {"B": "AAE="}, ":t": {"S": "N"},
            ":z": {"NULL": true}
        }
    }))
    .unwrap()
}

fn items() -> Vec<Item> {
    [
        json!({}),
        json!({"a": {"N": "1"}, "b": {"S": "str"}, "name": {"M": {"x": {"L": [{"N": "0"}, {"N": "1"}, {"S": "s"}]}}},
               "l": {"L": [{"S": "x"}, {"M": {"c": {"NS": ["1"]}}}]}, "m": {"M": {"m": {"SS": ["a"]}}}}),
        json!({"a": {"SS": ["a", "b"]}, "b": {"NS": ["1", "2"]}, "l": {"S": "not a list"}, "m": {"NULL": true}}),
    ]
    .iter()
    .map(|j| item_from_json(j).unwrap())
    .collect()
}

fn exercise(src: &str, items: &[Item]) {
    let ph = placeholders();
    if let Ok(c) = parse_condition(src, "ConditionExpression", &ph) {
        for it in items {
            eval(&c, it);
        }
    }
    if let Ok(u) = parse_update(src, &ph) {
        for it in items {
            let mut it = it.clone();
            let _ = apply_update(&u, &mut it);
        }
    }
    if let Ok(p) = parse_projection(src, &ph) {
        for it in items {
            project(&p, it);
        }
    }
    let _ = parse_key_condition(src, &ph, "a", Some("b"));
    let _ = parse_key_condition(src, &ph, "name", None);
    let _ = ph.check_unused();
}

#[test]
fn parsers_never_panic_on_generated_input() {
    let items = items();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = [0usize; 3];
    for i in 0..CASES {
        let src = match i % 6 {
            0 => condition(&mut r, 0),
            1 => update(&mut r),
            2 => {
                let c = condition(&mut r, 0);
                mutate(&mut r, c)
            }
            3 => {
                let u = update(&mut r);
                mutate(&mut r, u)
            }
            4 => soup(&mut r),
            _ => (0..r.below(40))
                .map(|_| (r.below(96) as u8 + 32) as char)
                .collect(),
        };
        let ph = placeholders();
        accepted[0] += parse_condition(&src, "ConditionExpression", &ph).is_ok() as usize;
        accepted[1] += parse_update(&src, &ph).is_ok() as usize;
        accepted[2] += parse_projection(&src, &ph).is_ok() as usize;
        exercise(&src, &items);
    }
    // The generator must reach the interesting parts, not only syntax errors.
    assert!(
        accepted[0] > CASES / 20,
        "few conditions parsed: {accepted:?}"
    );
    assert!(
        accepted[1] > CASES / 100,
        "few updates parsed: {accepted:?}"
    );
    assert!(accepted[2] > 0, "no projection parsed: {accepted:?}");
}

#[test]
fn pathological_inputs() {
    let items = items();
    for src in [
        "(".repeat(4_000),
        "NOT ".repeat(1_000) + "a = :s",
        format!("a{}", ".b".repeat(2_000)),
        format!("a{}", "[0]".repeat(1_300)),
        "a[99999999999999999999999999]".to_owned(),
        format!(
            "SET a = {}:s{}",
            "list_append(".repeat(150),
            ", :l)".repeat(150)
        ),
        format!("a IN ({})", vec![":s"; 200].join(", ")),
        "x".repeat(4_096),
        "x".repeat(4_097),
        "\u{feff}a = :s".to_owned(),
    ] {
        exercise(&src, &items);
    }
}
