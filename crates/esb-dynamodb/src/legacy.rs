//! The legacy (pre-expression) request parameters, translated into the expression AST:
//! Expected, QueryFilter, ScanFilter and ConditionalOperator into conditions, KeyConditions
//! into a key condition, AttributeUpdates into an update, AttributesToGet into a projection.

use crate::error::{DdbError, Result};
use crate::expr::{
    CmpOp, Cond, KeyCond, Operand, Path, PathElem, RangeCond, SetOperand, SetValue, Update,
};
use crate::value::Value;
use serde_json::Value as Json;

fn path(name: &str) -> Path {
    Path(vec![PathElem::Attr(name.to_owned())])
}

fn values(spec: &Json) -> Result<Vec<Value>> {
    match spec.get("AttributeValueList").filter(|v| !v.is_null()) {
        None => Ok(Vec::new()),
        Some(l) => l
            .as_array()
            .ok_or_else(|| DdbError::serialization("AttributeValueList must be a list"))?
            .iter()
            .map(Value::from_json)
            .collect(),
    }
}

fn invalid(msg: impl std::fmt::Display) -> DdbError {
    DdbError::validation(format!("One or more parameter values were invalid: {msg}"))
}

/// How many values each operator takes (`None`: one or more, for IN).
fn arity_of(op: &str) -> Option<usize> {
    match op {
        "NULL" | "NOT_NULL" => Some(0),
        "BETWEEN" => Some(2),
        "IN" => None,
        _ => Some(1),
    }
}

/// The value types an operator accepts in its AttributeValueList (EQ and NE take any).
fn allowed_types(op: &str) -> Option<&'static [&'static str]> {
    match op {
        "LE" | "LT" | "GE" | "GT" | "CONTAINS" | "NOT_CONTAINS" | "IN" | "BETWEEN" => {
            Some(&["S", "N", "B"])
        }
        "BEGINS_WITH" => Some(&["S", "B"]),
        _ => None,
    }
}

/// The ComparisonOperator values, in the order DynamoDB's error message lists them.
const COMPARISON_OPERATORS: &[&str] = &[
    "IN",
    "NULL",
    "BETWEEN",
    "LT",
    "NOT_CONTAINS",
    "EQ",
    "GT",
    "NOT_NULL",
    "NE",
    "LE",
    "BEGINS_WITH",
    "GE",
    "CONTAINS",
];

/// Checks an operator's values as DynamoDB does: their number, one type for all of
/// them, a type the operator takes, BETWEEN bounds in order.
fn check_values(op: &str, vals: &[Value]) -> Result<()> {
    let count_ok = match arity_of(op) {
        Some(n) => vals.len() == n,
        None => !vals.is_empty(),
    };
    if !count_ok {
        return Err(invalid(format!(
            "Invalid number of argument(s) for the {op} ComparisonOperator"
        )));
    }
    if let Some(first) = vals.first() {
        if vals.iter().any(|v| v.type_name() != first.type_name()) {
            return Err(invalid(
                "AttributeValues inside AttributeValueList must be of same type",
            ));
        }
    }
    if let Some(types) = allowed_types(op) {
        if let Some(v) = vals.iter().find(|v| !types.contains(&v.type_name())) {
            return Err(invalid(format!(
                "ComparisonOperator {op} is not valid for {} AttributeValue type",
                v.type_name()
            )));
        }
    }
    if op == "BETWEEN"
        && crate::value::compare_values(&vals[0], &vals[1]) == Some(std::cmp::Ordering::Greater)
    {
        return Err(DdbError::validation(
            "The BETWEEN condition was provided a range where the lower bound is greater than the upper bound",
        ));
    }
    Ok(())
}

/// The operator of one condition; `at` names it in messages (`queryFilter.a.member`).
fn operator<'a>(spec: &'a Json, at: &str) -> Result<&'a str> {
    let op = spec
        .get("ComparisonOperator")
        .filter(|v| !v.is_null())
        .ok_or_else(|| DdbError::missing_member(&format!("{at}.comparisonOperator")))?
        .as_str()
        .ok_or_else(|| DdbError::serialization("ComparisonOperator must be a string"))?;
    if !COMPARISON_OPERATORS.contains(&op) {
        return Err(DdbError::not_in_enum(
            op,
            &format!("{at}.comparisonOperator"),
            COMPARISON_OPERATORS,
        ));
    }
    Ok(op)
}

/// One `{ComparisonOperator, AttributeValueList}` on an attribute, as a condition.
fn comparison(attr: &str, op: &str, mut vals: Vec<Value>) -> Result<Cond> {
    check_values(op, &vals)?;
    let p = || Operand::Path(path(attr));
    let cmp = |o, vals: &mut Vec<Value>| Cond::Cmp(p(), o, Operand::Value(vals.remove(0)));
    Ok(match op {
        "EQ" => cmp(CmpOp::Eq, &mut vals),
        "NE" => cmp(CmpOp::Ne, &mut vals),
        "LT" => cmp(CmpOp::Lt, &mut vals),
        "LE" => cmp(CmpOp::Le, &mut vals),
        "GT" => cmp(CmpOp::Gt, &mut vals),
        "GE" => cmp(CmpOp::Ge, &mut vals),
        "NOT_NULL" => Cond::Exists(path(attr)),
        "NULL" => Cond::NotExists(path(attr)),
        "CONTAINS" => Cond::Contains(p(), Operand::Value(vals.remove(0))),
        "NOT_CONTAINS" => Cond::And(
            Box::new(Cond::Exists(path(attr))),
            Box::new(Cond::Not(Box::new(Cond::Contains(
                p(),
                Operand::Value(vals.remove(0)),
            )))),
        ),
        "BEGINS_WITH" => Cond::BeginsWith(p(), Operand::Value(vals.remove(0))),
        "IN" => Cond::In(p(), vals.into_iter().map(Operand::Value).collect()),
        _ => {
            let hi = vals.remove(1);
            let lo = vals.remove(0);
            Cond::Between(p(), Operand::Value(lo), Operand::Value(hi))
        }
    })
}

fn combine(conds: Vec<Cond>, req: &Json) -> Result<Option<Cond>> {
    let or = match req.get("ConditionalOperator").and_then(|v| v.as_str()) {
        None | Some("AND") => false,
        Some("OR") => true,
        Some(other) => {
            return Err(DdbError::not_in_enum(
                other,
                "conditionalOperator",
                &["OR", "AND"],
            ))
        }
    };
    Ok(conds.into_iter().reduce(|a, b| {
        if or {
            Cond::Or(Box::new(a), Box::new(b))
        } else {
            Cond::And(Box::new(a), Box::new(b))
        }
    }))
}

/// `Expected` as a condition, checked as DynamoDB checks it (Value, Exists,
/// ComparisonOperator and AttributeValueList combinations).
pub fn expected(req: &Json) -> Result<Option<Cond>> {
    let Some(map) = req.get("Expected").and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let mut conds = Vec::new();
    for (attr, spec) in map {
        let has = |f: &str| spec.get(f).is_some_and(|v| !v.is_null());
        let value = spec
            .get("Value")
            .filter(|v| !v.is_null())
            .map(Value::from_json)
            .transpose()?;
        if has("AttributeValueList") && has("Value") {
            return Err(invalid(format!(
                "Value and AttributeValueList cannot be used together for Attribute: {attr}"
            )));
        }
        if has("ComparisonOperator") {
            if has("Exists") {
                return Err(invalid(format!(
                    "Exists and ComparisonOperator cannot be used together for Attribute: {attr}"
                )));
            }
            let op = operator(spec, &format!("expected.{attr}.member"))?;
            if op != "NULL" && op != "NOT_NULL" && !has("AttributeValueList") && !has("Value") {
                return Err(invalid(format!(
                    "Value or AttributeValueList must be used with ComparisonOperator: {op} for Attribute: {attr}"
                )));
            }
            let vals = match value {
                Some(v) => vec![v],
                None => values(spec)?,
            };
            conds.push(comparison(attr, op, vals)?);
            continue;
        }
        if has("AttributeValueList") {
            return Err(invalid(format!(
                "AttributeValueList can only be used with a ComparisonOperator for Attribute: {attr}"
            )));
        }
        let exists = match spec.get("Exists").filter(|v| !v.is_null()) {
            None => None,
            Some(v) => Some(
                v.as_bool()
                    .ok_or_else(|| DdbError::serialization("Exists must be a boolean"))?,
            ),
        };
        conds.push(match (exists, value) {
            (Some(false), None) => Cond::NotExists(path(attr)),
            (Some(false), Some(_)) => {
                return Err(invalid(format!(
                    "Value cannot be used when Exists is false for Attribute: {attr}"
                )))
            }
            (_, Some(v)) => Cond::Cmp(Operand::Path(path(attr)), CmpOp::Eq, Operand::Value(v)),
            (e, None) => {
                return Err(invalid(format!(
                    "Value must be provided when Exists is {} for Attribute: {attr}",
                    if e.is_some() { "true" } else { "null" }
                )))
            }
        });
    }
    combine(conds, req)
}

/// `QueryFilter` / `ScanFilter` as a condition.
pub fn filter(req: &Json, field: &str) -> Result<Option<Cond>> {
    let Some(map) = req.get(field).and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let at = if field == "QueryFilter" {
        "queryFilter"
    } else {
        "scanFilter"
    };
    let mut conds = Vec::with_capacity(map.len());
    for (attr, spec) in map {
        let op = operator(spec, &format!("{at}.{attr}.member"))?;
        conds.push(comparison(attr, op, values(spec)?)?);
    }
    combine(conds, req)
}

/// `AttributesToGet` as a projection.
pub fn attributes_to_get(req: &Json) -> Result<Option<Vec<Path>>> {
    let Some(list) = req.get("AttributesToGet").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = list
        .as_array()
        .ok_or_else(|| DdbError::serialization("AttributesToGet must be a list"))?;
    if list.is_empty() {
        return Err(DdbError::validation(
            "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    let mut names: Vec<&str> = Vec::with_capacity(list.len());
    for v in list {
        let name = v
            .as_str()
            .ok_or_else(|| DdbError::serialization("AttributesToGet members must be strings"))?;
        if names.contains(&name) {
            return Err(invalid(format!(
                "Duplicate value in attribute name: {name}"
            )));
        }
        names.push(name);
    }
    Ok(Some(names.into_iter().map(path).collect()))
}

/// `KeyConditions` against a key schema, validated as DynamoDB does: only EQ on the
/// partition key, only EQ, LE, LT, GE, GT, BEGINS_WITH and BETWEEN on the sort key.
pub fn key_conditions(req: &Json, hash: &str, range: Option<&str>) -> Result<KeyCond> {
    let map = req
        .get("KeyConditions")
        .and_then(|v| v.as_object())
        .ok_or_else(|| DdbError::serialization("KeyConditions must be a map"))?;
    let mut parsed = Vec::with_capacity(map.len());
    for (attr, spec) in map {
        let op = operator(spec, &format!("keyConditions.{attr}.member"))?;
        let vals = values(spec)?;
        check_values(op, &vals)?;
        parsed.push((attr, op, vals));
    }
    if parsed.is_empty() || parsed.len() > 2 {
        return Err(DdbError::validation(
            "Conditions can be of length 1 or 2 only",
        ));
    }
    if parsed.iter().any(|(_, op, _)| {
        !matches!(
            *op,
            "EQ" | "LE" | "LT" | "GE" | "GT" | "BEGINS_WITH" | "BETWEEN"
        )
    }) {
        return Err(DdbError::validation(
            "Attempted conditional constraint is not an indexable operation",
        ));
    }
    let mut hash_v = None;
    let mut range_c = None;
    for (attr, op, mut vals) in parsed {
        if attr == hash {
            if op != "EQ" {
                return Err(DdbError::validation("Query key condition not supported"));
            }
            hash_v = Some(vals.remove(0));
        } else if Some(attr.as_str()) == range {
            range_c = Some(match op {
                "EQ" => RangeCond::Cmp(CmpOp::Eq, vals.remove(0)),
                "LT" => RangeCond::Cmp(CmpOp::Lt, vals.remove(0)),
                "LE" => RangeCond::Cmp(CmpOp::Le, vals.remove(0)),
                "GT" => RangeCond::Cmp(CmpOp::Gt, vals.remove(0)),
                "GE" => RangeCond::Cmp(CmpOp::Ge, vals.remove(0)),
                "BEGINS_WITH" => RangeCond::BeginsWith(vals.remove(0)),
                _ => {
                    let hi = vals.remove(1);
                    RangeCond::Between(vals.remove(0), hi)
                }
            });
        } else {
            return Err(DdbError::validation(format!(
                "Query condition missed key schema element: {}",
                if map.contains_key(hash) {
                    range.unwrap_or(hash)
                } else {
                    hash
                }
            )));
        }
    }
    KeyCond::from_parts(hash, hash_v, range_c)
}

/// `AttributeUpdates` as an update.
pub fn attribute_updates(req: &Json) -> Result<Option<Update>> {
    let Some(map) = req.get("AttributeUpdates").and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let mut u = Update::default();
    for (attr, spec) in map {
        let action = spec.get("Action").and_then(|v| v.as_str()).unwrap_or("PUT");
        let value = spec
            .get("Value")
            .filter(|v| !v.is_null())
            .map(Value::from_json)
            .transpose()?;
        match (action, value) {
            ("PUT", Some(v)) => u.set.push((path(attr), SetValue::Plain(SetOperand::Value(v)))),
            ("DELETE", None) => u.remove.push(path(attr)),
            ("DELETE", Some(v @ (Value::SS(_) | Value::NS(_) | Value::BS(_)))) => u.delete.push((path(attr), v)),
            ("ADD", Some(v @ (Value::N(_) | Value::SS(_) | Value::NS(_) | Value::BS(_)))) => {
                u.add.push((path(attr), v))
            }
            ("ADD", Some(Value::L(l))) => u.set.push((
                path(attr),
                SetValue::Plain(SetOperand::ListAppend(
                    Box::new(SetOperand::IfNotExists(path(attr), Box::new(SetOperand::Value(Value::L(Vec::new()))))),
                    Box::new(SetOperand::Value(Value::L(l))),
                )),
            )),
            ("PUT", None) | ("ADD", None) => {
                return Err(DdbError::validation(format!(
                    "One or more parameter values were invalid: Only DELETE action is allowed when no attribute value is specified, attribute: {attr}"
                )))
            }
            ("ADD" | "DELETE", Some(_)) => {
                return Err(DdbError::validation(format!(
                    "One or more parameter values were invalid: {action} action with value is not supported for the type of attribute {attr}"
                )))
            }
            (other, _) => {
                return Err(DdbError::not_in_enum(
                    other,
                    &format!("attributeUpdates.{attr}.member.action"),
                    &["ADD", "PUT", "DELETE"],
                ))
            }
        }
    }
    Ok(Some(u))
}

/// Refuses a `ConditionalOperator` that has fewer than two conditions to join in
/// `conditions` (`Expected`, `QueryFilter` or `ScanFilter`), as DynamoDB does (dynalite
/// accepts it). Call it after [`check_mixing`].
pub fn check_conditional_operator(req: &Json, conditions: &str) -> Result<()> {
    let Some(op) = req.get("ConditionalOperator").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    if let Some(other) = op.as_str().filter(|o| !matches!(*o, "AND" | "OR")) {
        return Err(DdbError::not_in_enum(
            other,
            "conditionalOperator",
            &["OR", "AND"],
        ));
    }
    match req
        .get(conditions)
        .and_then(|v| v.as_object())
        .map(|m| m.len())
    {
        None | Some(0) => Err(DdbError::validation(
            "ConditionalOperator cannot be used without Filter or Expected",
        )),
        Some(1) => Err(DdbError::validation(
            "ConditionalOperator can only be used when Filter or Expected has two or more elements",
        )),
        Some(_) => Ok(()),
    }
}

/// Refuses requests mixing legacy and expression parameters, as DynamoDB does.
pub fn check_mixing(req: &Json) -> Result<()> {
    let present = |f: &str| req.get(f).is_some_and(|v| !v.is_null());
    // Most requests use one kind only: decided without collecting the names.
    let any_modern = [
        "ConditionExpression",
        "UpdateExpression",
        "KeyConditionExpression",
        "FilterExpression",
        "ProjectionExpression",
    ]
    .into_iter()
    .any(present);
    if !any_modern {
        return Ok(());
    }
    let legacy: Vec<&str> = [
        "Expected",
        "AttributeUpdates",
        "KeyConditions",
        "QueryFilter",
        "ScanFilter",
        "ConditionalOperator",
        "AttributesToGet",
    ]
    .into_iter()
    .filter(|f| present(f))
    .collect();
    let modern: Vec<&str> = [
        "ConditionExpression",
        "UpdateExpression",
        "KeyConditionExpression",
        "FilterExpression",
        "ProjectionExpression",
    ]
    .into_iter()
    .filter(|f| present(f))
    .collect();
    if !legacy.is_empty() && !modern.is_empty() {
        return Err(DdbError::validation(format!(
            "Can not use both expression and non-expression parameters in the same request: Non-expression parameters: {{{}}} Expression parameters: {{{}}}",
            legacy.join(", "),
            modern.join(", ")
        )));
    }
    Ok(())
}
