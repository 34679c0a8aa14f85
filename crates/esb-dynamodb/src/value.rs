//! DynamoDB attribute values: parsing from and rendering to the JSON wire format, numbers
//! with 38 digits of precision, item sizes and the order-preserving key encoding.

use crate::error::{DdbError, Result};
use base64::Engine as _;
use serde_json::{Map, Value as Json};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// Deepest nesting of maps and lists DynamoDB accepts.
const MAX_NESTING: usize = 32;

/// An item: attribute name to value.
pub type Item = BTreeMap<String, Value>;

/// One attribute value of any DynamoDB type.
#[derive(Debug, Clone)]
pub enum Value {
    /// String.
    S(String),
    /// Number.
    N(Number),
    /// Binary.
    B(Vec<u8>),
    /// Boolean.
    Bool(bool),
    /// Null.
    Null,
    /// Map.
    M(Item),
    /// List.
    L(Vec<Value>),
    /// String set.
    SS(Vec<String>),
    /// Number set.
    NS(Vec<Number>),
    /// Binary set.
    BS(Vec<Vec<u8>>),
}

impl Value {
    /// The DynamoDB type name (`S`, `N`, `B`, `BOOL`, `NULL`, `M`, `L`, `SS`, `NS`, `BS`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::S(_) => "S",
            Value::N(_) => "N",
            Value::B(_) => "B",
            Value::Bool(_) => "BOOL",
            Value::Null => "NULL",
            Value::M(_) => "M",
            Value::L(_) => "L",
            Value::SS(_) => "SS",
            Value::NS(_) => "NS",
            Value::BS(_) => "BS",
        }
    }

    /// The size DynamoDB counts for this value (without the attribute name).
    pub fn size(&self) -> usize {
        match self {
            Value::S(s) => s.len(),
            Value::N(n) => n.size(),
            Value::B(b) => b.len(),
            Value::Bool(_) | Value::Null => 1,
            Value::M(m) => 3 + m.iter().map(|(k, v)| k.len() + v.size() + 1).sum::<usize>(),
            Value::L(l) => 3 + l.iter().map(|v| v.size() + 1).sum::<usize>(),
            Value::SS(s) => s.iter().map(|s| s.len()).sum(),
            Value::NS(s) => s.iter().map(|n| n.size()).sum(),
            Value::BS(s) => s.iter().map(|b| b.len()).sum(),
        }
    }

    /// Parses a wire-format attribute value (`{"S": "x"}`), validating it as DynamoDB does.
    pub fn from_json(json: &Json) -> Result<Value> {
        Value::from_json_at(json, 0)
    }

    fn from_json_at(json: &Json, depth: usize) -> Result<Value> {
        if depth > MAX_NESTING {
            return Err(DdbError::validation(
                "Nesting Levels have exceeded supported limits: Attribute value nesting exceeds the maximum of 32 levels",
            ));
        }
        let obj = json.as_object().ok_or_else(|| {
            DdbError::serialization(
                "Unexpected value type in payload, an AttributeValue must be a map",
            )
        })?;
        let mut set: Vec<(&String, &Json)> = obj.iter().filter(|(_, v)| !v.is_null()).collect();
        if set.is_empty() {
            return Err(DdbError::validation(
                "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes",
            ));
        }
        if set.len() > 1 {
            return Err(DdbError::validation(
                "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
            ));
        }
        let (ty, v) = set.remove(0);
        Ok(match ty.as_str() {
            "S" => Value::S(v.as_str().ok_or_else(|| unexpected_type("S"))?.to_owned()),
            "N" => Value::N(Number::parse(
                v.as_str().ok_or_else(|| unexpected_type("N"))?,
            )?),
            "B" => Value::B(decode_b64(v)?),
            "BOOL" => Value::Bool(v.as_bool().ok_or_else(|| unexpected_type("BOOL"))?),
            "NULL" => {
                if v.as_bool() != Some(true) {
                    return Err(DdbError::validation(
                        "One or more parameter values were invalid: Null attribute value types must have the value of true",
                    ));
                }
                Value::Null
            }
            "M" => {
                let m = v.as_object().ok_or_else(|| unexpected_type("M"))?;
                let mut out = Item::new();
                for (k, v) in m {
                    out.insert(k.clone(), Value::from_json_at(v, depth + 1)?);
                }
                Value::M(out)
            }
            "L" => {
                let l = v.as_array().ok_or_else(|| unexpected_type("L"))?;
                Value::L(
                    l.iter()
                        .map(|v| Value::from_json_at(v, depth + 1))
                        .collect::<Result<_>>()?,
                )
            }
            "SS" => {
                let l = set_members(v, "SS", "An string set  may not be empty")?;
                let mut out = Vec::with_capacity(l.len());
                for s in l {
                    out.push(s.as_str().ok_or_else(|| unexpected_type("SS"))?.to_owned());
                }
                check_dups(&out, |a, b| a == b, |s| s.clone())?;
                Value::SS(out)
            }
            "NS" => {
                let l = set_members(v, "NS", "An number set  may not be empty")?;
                let mut out = Vec::with_capacity(l.len());
                for s in l {
                    out.push(Number::parse(
                        s.as_str().ok_or_else(|| unexpected_type("NS"))?,
                    )?);
                }
                check_dups(&out, |a, b| a == b, |n| n.to_string())?;
                Value::NS(out)
            }
            "BS" => {
                let l = set_members(v, "BS", "Binary sets should not be empty")?;
                let out: Vec<Vec<u8>> = l.iter().map(decode_b64).collect::<Result<_>>()?;
                check_dups(&out, |a, b| a == b, |b| b64(b))?;
                Value::BS(out)
            }
            other => {
                return Err(DdbError::serialization(format!(
                    "Supplied AttributeValue has an unknown data type: {other}"
                )))
            }
        })
    }

    /// Renders the wire format.
    pub fn to_json(&self) -> Json {
        let mut m = Map::with_capacity(1);
        let (k, v) = match self {
            Value::S(s) => ("S", Json::String(s.clone())),
            Value::N(n) => ("N", Json::String(n.to_string())),
            Value::B(b) => ("B", Json::String(b64(b))),
            Value::Bool(b) => ("BOOL", Json::Bool(*b)),
            Value::Null => ("NULL", Json::Bool(true)),
            Value::M(item) => ("M", item_to_json(item)),
            Value::L(l) => ("L", Json::Array(l.iter().map(Value::to_json).collect())),
            Value::SS(s) => (
                "SS",
                Json::Array(s.iter().cloned().map(Json::String).collect()),
            ),
            Value::NS(s) => (
                "NS",
                Json::Array(s.iter().map(|n| Json::String(n.to_string())).collect()),
            ),
            Value::BS(s) => (
                "BS",
                Json::Array(s.iter().map(|b| Json::String(b64(b))).collect()),
            ),
        };
        m.insert(k.to_owned(), v);
        Json::Object(m)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::S(a), Value::S(b)) => a == b,
            (Value::N(a), Value::N(b)) => a == b,
            (Value::B(a), Value::B(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Null, Value::Null) => true,
            (Value::M(a), Value::M(b)) => a == b,
            (Value::L(a), Value::L(b)) => a == b,
            (Value::SS(a), Value::SS(b)) => set_eq(a, b),
            (Value::NS(a), Value::NS(b)) => set_eq(a, b),
            (Value::BS(a), Value::BS(b)) => set_eq(a, b),
            _ => false,
        }
    }
}

fn set_eq<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// A value whose JSON type is not the one its type tag (`what`) calls for.
fn unexpected_type(what: &str) -> DdbError {
    DdbError::serialization(format!("Unexpected value type for {what}"))
}

/// The members of a set value (`ty` is SS, NS or BS): a list, which may not be empty
/// (`empty` says so in DynamoDB's words).
fn set_members<'a>(v: &'a Json, ty: &str, empty: &str) -> Result<&'a [Json]> {
    let members = v.as_array().ok_or_else(|| unexpected_type(ty))?;
    if members.is_empty() {
        return Err(DdbError::validation(format!(
            "One or more parameter values were invalid: {empty}"
        )));
    }
    Ok(members)
}

fn check_dups<T>(v: &[T], eq: impl Fn(&T, &T) -> bool, show: impl Fn(&T) -> String) -> Result<()> {
    for (i, a) in v.iter().enumerate() {
        if v[..i].iter().any(|b| eq(a, b)) {
            let all: Vec<String> = v.iter().map(show).collect();
            return Err(DdbError::validation(format!(
                "One or more parameter values were invalid: Input collection [{}] contains duplicates.",
                all.join(", ")
            )));
        }
    }
    Ok(())
}

/// Base64 of bytes (the wire form of B).
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn decode_b64(v: &Json) -> Result<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| DdbError::serialization("Unexpected value type for B"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| {
            DdbError::serialization(
                "Base64 encoded length is expected a multiple of 4 bytes but found: ".to_owned()
                    + &s.len().to_string(),
            )
        })
}

/// Parses a wire-format item (`{"a": {"S": "x"}, …}`).
pub fn item_from_json(json: &Json) -> Result<Item> {
    let obj = json.as_object().ok_or_else(|| {
        DdbError::serialization("Unexpected value type in payload, an item must be a map")
    })?;
    let mut out = Item::new();
    for (k, v) in obj {
        out.insert(k.clone(), Value::from_json(v)?);
    }
    Ok(out)
}

/// Renders an item in the wire format.
pub fn item_to_json(item: &Item) -> Json {
    Json::Object(item.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// The size DynamoDB counts for an item: names plus values.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size()).sum()
}

/// A DynamoDB number: up to 38 significant digits, magnitude between 1E-130 and 1E+126.
///
/// Stored normalised: the value is `0.d1d2…dn × 10^exp` with no leading or trailing zero
/// digit; zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Number {
    neg: bool,
    digits: Vec<u8>,
    exp: i32,
}

const MAX_DIGITS: usize = 38;

impl Number {
    /// Zero.
    pub fn zero() -> Number {
        Number {
            neg: false,
            digits: Vec::new(),
            exp: 0,
        }
    }

    /// Parses DynamoDB's number syntax (`-12.5`, `1e10`, `.5`…).
    pub fn parse(s: &str) -> Result<Number> {
        let err = || {
            DdbError::validation(format!(
                "The parameter cannot be converted to a numeric value: {s}"
            ))
        };
        let t = s.trim();
        let bytes = t.as_bytes();
        let mut i = 0;
        let mut neg = false;
        if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
            neg = bytes[i] == b'-';
            i += 1;
        }
        let mut int = Vec::new();
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            int.push(bytes[i] - b'0');
            i += 1;
        }
        let mut frac = Vec::new();
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                frac.push(bytes[i] - b'0');
                i += 1;
            }
        }
        if int.is_empty() && frac.is_empty() {
            return Err(err());
        }
        let mut e: i64 = 0;
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            let mut eneg = false;
            if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
                eneg = bytes[i] == b'-';
                i += 1;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                e = (e * 10 + (bytes[i] - b'0') as i64).min(1_000_000);
                i += 1;
            }
            if start == i {
                return Err(err());
            }
            if eneg {
                e = -e;
            }
        }
        if i != bytes.len() {
            return Err(err());
        }
        let exp = int.len() as i64 + e;
        let mut digits = int;
        digits.extend(frac);
        Number::from_parts(neg, digits, exp)
    }

    fn from_parts(neg: bool, mut digits: Vec<u8>, mut exp: i64) -> Result<Number> {
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        exp -= lead as i64;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Number::zero());
        }
        if digits.len() > MAX_DIGITS {
            return Err(DdbError::validation(
                "Attempting to store more than 38 significant digits in a Number",
            ));
        }
        // value = 0.d × 10^exp, so magnitude is in [10^(exp-1), 10^exp).
        if exp > 126 {
            return Err(DdbError::validation(
                "Number overflow. Attempting to store a number with magnitude larger than supported range",
            ));
        }
        if exp - 1 < -130 {
            return Err(DdbError::validation(
                "Number underflow. Attempting to store a number with magnitude smaller than supported range",
            ));
        }
        Ok(Number {
            neg,
            digits,
            exp: exp as i32,
        })
    }

    /// True for zero.
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The size DynamoDB counts for a number.
    pub fn size(&self) -> usize {
        self.digits.len().div_ceil(2) + 1 + usize::from(self.neg)
    }

    /// The value as an i64 when it is an integer in range (used for TTL and list indexes).
    pub fn to_i64(&self) -> Option<i64> {
        if self.is_zero() {
            return Some(0);
        }
        if self.exp < self.digits.len() as i32 || self.exp > 18 {
            return None;
        }
        let mut v: i64 = 0;
        for i in 0..self.exp as usize {
            v = v * 10 + *self.digits.get(i).unwrap_or(&0) as i64;
        }
        Some(if self.neg { -v } else { v })
    }

    /// The value as a float, rounded (used for TTL only).
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(0.0)
    }

    /// Negation.
    pub fn neg(&self) -> Number {
        let mut n = self.clone();
        if !n.is_zero() {
            n.neg = !n.neg;
        }
        n
    }

    /// Sum, rounded to 38 significant digits as DynamoDB rounds arithmetic; overflow and
    /// underflow of the rounded result fail like DynamoDB.
    pub fn add(&self, other: &Number) -> Result<Number> {
        if self.is_zero() {
            return Ok(other.clone());
        }
        if other.is_zero() {
            return Ok(self.clone());
        }
        // Align both on a common lowest exponent: value = int × 10^low.
        let low = (self.exp - self.digits.len() as i32).min(other.exp - other.digits.len() as i32);
        let high = self.exp.max(other.exp);
        let width = (high - low) as usize + 1;
        let place = |n: &Number| -> Vec<u8> {
            // Little-endian digits of n scaled by 10^-low.
            let mut v = vec![0u8; width];
            let shift = (n.exp - n.digits.len() as i32 - low) as usize;
            for (i, d) in n.digits.iter().rev().enumerate() {
                v[shift + i] = *d;
            }
            v
        };
        let a = place(self);
        let b = place(other);
        let (neg, mut res) = if self.neg == other.neg {
            let mut out = vec![0u8; width + 1];
            let mut carry = 0;
            for i in 0..width {
                let s = a[i] + b[i] + carry;
                out[i] = s % 10;
                carry = s / 10;
            }
            out[width] = carry;
            (self.neg, out)
        } else {
            let (big, small, neg) = if cmp_le_digits(&a, &b) == Ordering::Less {
                (&b, &a, other.neg)
            } else {
                (&a, &b, self.neg)
            };
            let mut out = vec![0u8; width];
            let mut borrow = 0i8;
            for i in 0..width {
                let mut d = big[i] as i8 - small[i] as i8 - borrow;
                if d < 0 {
                    d += 10;
                    borrow = 1;
                } else {
                    borrow = 0;
                }
                out[i] = d as u8;
            }
            (neg, out)
        };
        res.reverse(); // big-endian
        let exp = low as i64 + res.len() as i64;
        let (res, exp) = round_digits(res, exp);
        Number::from_parts(neg, res, exp)
    }

    /// Exact difference.
    pub fn sub(&self, other: &Number) -> Result<Number> {
        self.add(&other.neg())
    }

    /// Order-preserving byte encoding (for keys): comparing encodings as bytes compares
    /// the numbers by value.
    pub fn encode_key(&self, out: &mut Vec<u8>) {
        if self.is_zero() {
            out.push(0x02);
            return;
        }
        let start = out.len();
        out.push(if self.neg { 0x01 } else { 0x03 });
        let e = (self.exp + 1000) as u16;
        out.extend_from_slice(&e.to_be_bytes());
        out.extend(self.digits.iter().map(|d| d + b'0'));
        out.push(0x00);
        if self.neg {
            for b in &mut out[start + 1..] {
                *b = !*b;
            }
        }
    }

    /// Decodes [`Number::encode_key`] output.
    pub fn decode_key(bytes: &[u8]) -> Option<Number> {
        match bytes.first()? {
            0x02 => Some(Number::zero()),
            tag @ (0x01 | 0x03) => {
                let neg = *tag == 0x01;
                let rest: Vec<u8> = if neg {
                    bytes[1..].iter().map(|b| !b).collect()
                } else {
                    bytes[1..].to_vec()
                };
                if rest.len() < 3 {
                    return None;
                }
                let exp = u16::from_be_bytes([rest[0], rest[1]]) as i32 - 1000;
                let digits: Vec<u8> = rest[2..rest.len() - 1].iter().map(|d| d - b'0').collect();
                Some(Number { neg, digits, exp })
            }
            _ => None,
        }
    }
}

/// Rounds big-endian digits (value `0.d × 10^exp`) to [`MAX_DIGITS`] significant digits,
/// half up, as DynamoDB does with the result of arithmetic (an input number with more
/// digits is refused instead).
fn round_digits(mut digits: Vec<u8>, mut exp: i64) -> (Vec<u8>, i64) {
    let lead = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..lead);
    exp -= lead as i64;
    if digits.len() <= MAX_DIGITS {
        return (digits, exp);
    }
    let up = digits[MAX_DIGITS] >= 5;
    digits.truncate(MAX_DIGITS);
    if up {
        let mut i = MAX_DIGITS;
        loop {
            if i == 0 {
                // 99…9 rounded up: one more digit in front.
                digits.insert(0, 1);
                digits.truncate(MAX_DIGITS);
                exp += 1;
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    (digits, exp)
}

fn cmp_le_digits(a: &[u8], b: &[u8]) -> Ordering {
    for i in (0..a.len()).rev() {
        match a[i].cmp(&b[i]) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Number) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Number) -> Ordering {
        let mut a = Vec::new();
        let mut b = Vec::new();
        self.encode_key(&mut a);
        other.encode_key(&mut b);
        a.cmp(&b)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let mut s = String::with_capacity(self.digits.len() + 4);
        if self.neg {
            s.push('-');
        }
        let n = self.digits.len() as i32;
        let d = |i: usize| (self.digits[i] + b'0') as char;
        if self.exp <= 0 {
            s.push_str("0.");
            for _ in 0..(-self.exp) {
                s.push('0');
            }
            for i in 0..n as usize {
                s.push(d(i));
            }
        } else if self.exp >= n {
            for i in 0..n as usize {
                s.push(d(i));
            }
            for _ in 0..(self.exp - n) {
                s.push('0');
            }
        } else {
            for i in 0..n as usize {
                if i as i32 == self.exp {
                    s.push('.');
                }
                s.push(d(i));
            }
        }
        f.write_str(&s)
    }
}

/// Key attribute types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// String key.
    S,
    /// Number key.
    N,
    /// Binary key.
    B,
}

impl KeyType {
    /// Parses `S`, `N` or `B`.
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "S" => Some(KeyType::S),
            "N" => Some(KeyType::N),
            "B" => Some(KeyType::B),
            _ => None,
        }
    }

    /// The type name.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        }
    }

    /// Whether a value has this type.
    pub fn matches(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (KeyType::S, Value::S(_)) | (KeyType::N, Value::N(_)) | (KeyType::B, Value::B(_))
        )
    }
}

/// Encodes a key attribute so that byte order is DynamoDB's order for its type.
pub fn encode_key_value(v: &Value) -> Vec<u8> {
    match v {
        Value::S(s) => s.as_bytes().to_vec(),
        Value::B(b) => b.clone(),
        Value::N(n) => {
            let mut out = Vec::with_capacity(24);
            n.encode_key(&mut out);
            out
        }
        _ => Vec::new(),
    }
}

/// Compares two scalars of the same type in DynamoDB's order; None across types or for
/// non-scalar types.
pub fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::S(x), Value::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::N(x), Value::N(y)) => Some(x.cmp(y)),
        (Value::B(x), Value::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    #[test]
    fn parse_and_print() {
        for (i, o) in [
            ("0", "0"),
            ("-0", "0"),
            ("00.000", "0"),
            ("1", "1"),
            ("1.50", "1.5"),
            ("-001.0500", "-1.05"),
            ("1e2", "100"),
            ("1.5E-3", "0.0015"),
            (".5", "0.5"),
            ("5.", "5"),
            (
                "12345678901234567890123456789012345678",
                "12345678901234567890123456789012345678",
            ),
        ] {
            assert_eq!(n(i).to_string(), o, "{i}");
        }
        for bad in ["", "-", "abc", "1e", "1.2.3", "0x10", "1 2", "e5"] {
            assert!(Number::parse(bad).is_err(), "{bad}");
        }
        assert!(Number::parse("123456789012345678901234567890123456789").is_err());
        assert!(Number::parse("1e126").is_err());
        assert!(Number::parse("9.9e125").is_ok());
        assert!(Number::parse("1e-130").is_ok());
        assert!(Number::parse("1e-131").is_err());
    }

    #[test]
    fn order_by_value() {
        let sorted = [
            "-1e125", "-100", "-10.5", "-10", "-1", "-0.5", "-0.05", "0", "0.001", "0.01", "0.5",
            "1", "1.5", "2", "10", "11", "100", "1e30", "9.99e125",
        ];
        for w in sorted.windows(2) {
            let (a, b) = (n(w[0]), n(w[1]));
            assert!(a < b, "{} < {}", w[0], w[1]);
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            a.encode_key(&mut ea);
            b.encode_key(&mut eb);
            assert!(ea < eb, "encoded {} < {}", w[0], w[1]);
            assert_eq!(Number::decode_key(&ea).unwrap(), a);
        }
        assert_eq!(n("1.0"), n("1"));
    }

    #[test]
    fn arithmetic() {
        for (a, b, s) in [
            ("1", "2", "3"),
            ("0.1", "0.2", "0.3"),
            ("-5", "3", "-2"),
            ("5", "-5", "0"),
            ("99", "1", "100"),
            ("1e10", "1e-10", "10000000000.0000000001"),
            ("-1.5", "-1.5", "-3"),
            ("100", "-0.01", "99.99"),
        ] {
            assert_eq!(n(a).add(&n(b)).unwrap().to_string(), s, "{a} + {b}");
        }
        assert_eq!(n("10").sub(&n("20")).unwrap().to_string(), "-10");
        // Results are rounded to 38 significant digits, half up.
        assert_eq!(
            n("1e30").add(&n("1e-30")).unwrap().to_string(),
            "1000000000000000000000000000000"
        );
        assert_eq!(
            n("12345678901234567890123456789012345678")
                .add(&n("0.6"))
                .unwrap()
                .to_string(),
            "12345678901234567890123456789012345679"
        );
        assert_eq!(
            n("99999999999999999999999999999999999999")
                .add(&n("0.5"))
                .unwrap()
                .to_string(),
            "100000000000000000000000000000000000000"
        );
        assert!(n("9.9999999999999999999999999999999999999e125")
            .add(&n("1e125"))
            .unwrap_err()
            .message
            .starts_with("Number overflow"));
        assert!(n("1.5e-130")
            .sub(&n("1e-130"))
            .unwrap_err()
            .message
            .starts_with("Number underflow"));
        assert_eq!(n("42").to_i64(), Some(42));
        assert_eq!(n("-7").to_i64(), Some(-7));
        assert_eq!(n("1.5").to_i64(), None);
    }

    #[test]
    fn json_roundtrip_and_validation() {
        let j: Json = serde_json::json!({"M": {"a": {"L": [{"N": "1"}, {"B": "AAE="}, {"NULL": true}]},
            "s": {"SS": ["x", "y"]}, "b": {"BOOL": false}}});
        let v = Value::from_json(&j).unwrap();
        assert_eq!(v.to_json(), j);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"S": "a", "N": "1"}),
            serde_json::json!({"SS": []}),
            serde_json::json!({"SS": ["a", "a"]}),
            serde_json::json!({"NS": ["1", "1.0"]}),
            serde_json::json!({"N": "x"}),
            serde_json::json!({"NULL": false}),
            serde_json::json!({"X": "a"}),
        ] {
            assert!(Value::from_json(&bad).is_err(), "{bad}");
        }
    }
}
