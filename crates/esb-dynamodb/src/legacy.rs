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

fn arity(op: &str, n: usize, want: usize) -> Result<()> {
    if n != want {
        return Err(DdbError::validation(format!(
            "One or more parameter values were invalid: Invalid number of argument(s) for the {op} ComparisonOperator"
        )));
    }
    Ok(())
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

/// One `{ComparisonOperator, AttributeValueList}` on an attribute.
fn comparison(attr: &str, spec: &Json) -> Result<Cond> {
    let op = spec
        .get("ComparisonOperator")
        .and_then(|v| v.as_str())
        .ok_or_else(|| DdbError::validation("ComparisonOperator is required"))?;
    let mut vals = values(spec)?;
    let p = || Operand::Path(path(attr));
    let cmp = |o| -> Result<Cond> {
        arity(op, vals.len(), 1)?;
        Ok(Cond::Cmp(p(), o, Operand::Value(vals[0].clone())))
    };
    Ok(match op {
        "EQ" => cmp(CmpOp::Eq)?,
        "NE" => cmp(CmpOp::Ne)?,
        "LT" => cmp(CmpOp::Lt)?,
        "LE" => cmp(CmpOp::Le)?,
        "GT" => cmp(CmpOp::Gt)?,
        "GE" => cmp(CmpOp::Ge)?,
        "NOT_NULL" => {
            arity(op, vals.len(), 0)?;
            Cond::Exists(path(attr))
        }
        "NULL" => {
            arity(op, vals.len(), 0)?;
            Cond::NotExists(path(attr))
        }
        "CONTAINS" | "NOT_CONTAINS" => {
            arity(op, vals.len(), 1)?;
            let c = Cond::Contains(p(), Operand::Value(vals.remove(0)));
            if op == "CONTAINS" {
                c
            } else {
                Cond::And(
                    Box::new(Cond::Exists(path(attr))),
                    Box::new(Cond::Not(Box::new(c))),
                )
            }
        }
        "BEGINS_WITH" => {
            arity(op, vals.len(), 1)?;
            Cond::BeginsWith(p(), Operand::Value(vals.remove(0)))
        }
        "IN" => {
            if vals.is_empty() {
                return Err(DdbError::validation(
                    "One or more parameter values were invalid: Invalid number of argument(s) for the IN ComparisonOperator",
                ));
            }
            Cond::In(p(), vals.into_iter().map(Operand::Value).collect())
        }
        "BETWEEN" => {
            arity(op, vals.len(), 2)?;
            let hi = vals.remove(1);
            let lo = vals.remove(0);
            Cond::Between(p(), Operand::Value(lo), Operand::Value(hi))
        }
        other => {
            return Err(DdbError::not_in_enum(
                other,
                "comparisonOperator",
                COMPARISON_OPERATORS,
            ))
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

/// `Expected` as a condition.
pub fn expected(req: &Json) -> Result<Option<Cond>> {
    let Some(map) = req.get("Expected").and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let mut conds = Vec::new();
    for (attr, spec) in map {
        if spec.get("ComparisonOperator").is_some_and(|v| !v.is_null()) {
            conds.push(comparison(attr, spec)?);
            continue;
        }
        let exists = spec.get("Exists").and_then(|v| v.as_bool());
        let value = spec
            .get("Value")
            .filter(|v| !v.is_null())
            .map(Value::from_json)
            .transpose()?;
        conds.push(match (exists, value) {
            (Some(false), None) => Cond::NotExists(path(attr)),
            (Some(false), Some(_)) => {
                return Err(DdbError::validation(
                    "One or more parameter values were invalid: Value cannot be used when Exists is false",
                ))
            }
            (_, Some(v)) => Cond::Cmp(Operand::Path(path(attr)), CmpOp::Eq, Operand::Value(v)),
            (_, None) => {
                return Err(DdbError::validation(
                    "One or more parameter values were invalid: Value must be provided when Exists is true",
                ))
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
    let conds = map
        .iter()
        .map(|(attr, spec)| comparison(attr, spec))
        .collect::<Result<Vec<_>>>()?;
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
    Ok(Some(
        list.iter().filter_map(|v| v.as_str()).map(path).collect(),
    ))
}

/// `KeyConditions` against a key schema.
pub fn key_conditions(req: &Json, hash: &str, range: Option<&str>) -> Result<KeyCond> {
    let map = req
        .get("KeyConditions")
        .and_then(|v| v.as_object())
        .ok_or_else(|| DdbError::validation("KeyConditions must be a map"))?;
    let mut hash_v = None;
    let mut range_c = None;
    for (attr, spec) in map {
        let op = spec
            .get("ComparisonOperator")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let mut vals = values(spec)?;
        if attr == hash {
            if op != "EQ" || vals.len() != 1 {
                return Err(DdbError::validation("Query key condition not supported"));
            }
            hash_v = Some(vals.remove(0));
        } else if Some(attr.as_str()) == range {
            let want = if op == "BETWEEN" { 2 } else { 1 };
            arity(op, vals.len(), want)?;
            range_c = Some(match op {
                "EQ" => RangeCond::Cmp(CmpOp::Eq, vals.remove(0)),
                "LT" => RangeCond::Cmp(CmpOp::Lt, vals.remove(0)),
                "LE" => RangeCond::Cmp(CmpOp::Le, vals.remove(0)),
                "GT" => RangeCond::Cmp(CmpOp::Gt, vals.remove(0)),
                "GE" => RangeCond::Cmp(CmpOp::Ge, vals.remove(0)),
                "BEGINS_WITH" => RangeCond::BeginsWith(vals.remove(0)),
                "BETWEEN" => {
                    let hi = vals.remove(1);
                    RangeCond::Between(vals.remove(0), hi)
                }
                _ => return Err(DdbError::validation("Query key condition not supported")),
            });
        } else {
            return Err(DdbError::validation(
                "Query condition missed key schema element",
            ));
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

/// Refuses requests mixing legacy and expression parameters, as DynamoDB does.
pub fn check_mixing(req: &Json) -> Result<()> {
    let present = |f: &str| req.get(f).is_some_and(|v| !v.is_null());
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
