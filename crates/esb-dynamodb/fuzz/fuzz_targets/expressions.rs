//! Feeds arbitrary text to every expression parser, then evaluates what parses against a
//! few items. Any panic is a bug.
#![no_main]

use esb_dynamodb::expr::{
    apply_update, eval, parse_condition, parse_key_condition, parse_projection, parse_update, project,
    Placeholders,
};
use esb_dynamodb::value::item_from_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let ph = Placeholders::from_request(&serde_json::json!({
        "ExpressionAttributeNames": {"#n": "name", "#m": "m"},
        "ExpressionAttributeValues": {
            ":s": {"S": "str"}, ":n": {"N": "12.5"}, ":l": {"L": [{"S": "x"}]},
            ":ss": {"SS": ["a", "b"]}, ":b": {"B": "AAE="}, ":t": {"S": "N"}
        }
    }))
    .unwrap();
    let item = item_from_json(&serde_json::json!({
        "a": {"N": "1"}, "b": {"S": "str"}, "name": {"M": {"x": {"L": [{"N": "0"}, {"S": "s"}]}}},
        "l": {"L": [{"S": "x"}, {"M": {"c": {"NS": ["1"]}}}]}, "m": {"M": {"m": {"SS": ["a"]}}}
    }))
    .unwrap();
    if let Ok(c) = parse_condition(src, "ConditionExpression", &ph) {
        eval(&c, &item);
    }
    if let Ok(u) = parse_update(src, &ph) {
        let mut it = item.clone();
        let _ = apply_update(&u, &mut it);
    }
    if let Ok(p) = parse_projection(src, &ph) {
        project(&p, &item);
    }
    let _ = parse_key_condition(src, &ph, "a", Some("b"));
    let _ = ph.check_unused();
});
