//! The DynamoDB expression language: condition, filter, key-condition, update and
//! projection expressions. A hand-written lexer and recursive-descent parser resolve
//! `#name` and `:value` placeholders while parsing; evaluation works on [`Item`]s.

use crate::error::{DdbError, Result};
use crate::value::{compare_values, Item, Number, Value};
use serde_json::Value as Json;
use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Longest expression string DynamoDB accepts.
pub const MAX_EXPRESSION_LEN: usize = 4096;
const MAX_NESTING: usize = 32;
const MAX_IN_OPERANDS: usize = 100;

/// One step of a document path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathElem {
    /// Map key (or top-level attribute).
    Attr(String),
    /// List index.
    Index(usize),
}

/// A document path such as `a.b[2].c`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Path(pub Vec<PathElem>);

impl Path {
    /// The top-level attribute name.
    pub fn root(&self) -> &str {
        match &self.0[0] {
            PathElem::Attr(a) => a,
            PathElem::Index(_) => "",
        }
    }

    fn display(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| match e {
                PathElem::Attr(a) => a.clone(),
                PathElem::Index(i) => format!("[{i}]"),
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }

    /// Looks the path up in an item.
    pub fn get<'a>(&self, item: &'a Item) -> Option<&'a Value> {
        let mut cur: Option<&Value> = None;
        for (i, e) in self.0.iter().enumerate() {
            cur = match (i, e, cur) {
                (0, PathElem::Attr(a), _) => item.get(a),
                (_, PathElem::Attr(a), Some(Value::M(m))) => m.get(a),
                (_, PathElem::Index(j), Some(Value::L(l))) => l.get(*j),
                _ => None,
            };
            cur?;
        }
        cur
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// An operand of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A document path.
    Path(Path),
    /// A constant from ExpressionAttributeValues.
    Value(Value),
    /// `size(path)`.
    Size(Path),
}

/// A boolean condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `a op b`.
    Cmp(Operand, CmpOp, Operand),
    /// `a BETWEEN b AND c`.
    Between(Operand, Operand, Operand),
    /// `a IN (b, c, …)`.
    In(Operand, Vec<Operand>),
    /// `a AND b`.
    And(Box<Cond>, Box<Cond>),
    /// `a OR b`.
    Or(Box<Cond>, Box<Cond>),
    /// `NOT a`.
    Not(Box<Cond>),
    /// `attribute_exists(path)`.
    Exists(Path),
    /// `attribute_not_exists(path)`.
    NotExists(Path),
    /// `attribute_type(path, :t)`.
    Type(Path, String),
    /// `begins_with(a, b)`.
    BeginsWith(Operand, Operand),
    /// `contains(a, b)`.
    Contains(Operand, Operand),
}

/// The right-hand side of a SET action.
#[derive(Debug, Clone, PartialEq)]
pub enum SetOperand {
    /// A path of the item before the update.
    Path(Path),
    /// A constant.
    Value(Value),
    /// `if_not_exists(path, operand)`.
    IfNotExists(Path, Box<SetOperand>),
    /// `list_append(a, b)`.
    ListAppend(Box<SetOperand>, Box<SetOperand>),
}

/// `operand`, `operand + operand` or `operand - operand`.
#[derive(Debug, Clone, PartialEq)]
pub enum SetValue {
    /// A plain operand.
    Plain(SetOperand),
    /// Sum of two numbers.
    Plus(SetOperand, SetOperand),
    /// Difference of two numbers.
    Minus(SetOperand, SetOperand),
}

/// A parsed update expression.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// SET actions.
    pub set: Vec<(Path, SetValue)>,
    /// REMOVE actions.
    pub remove: Vec<Path>,
    /// ADD actions.
    pub add: Vec<(Path, Value)>,
    /// DELETE actions.
    pub delete: Vec<(Path, Value)>,
}

/// The sort-key part of a key condition.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeCond {
    /// `sk op :v`.
    Cmp(CmpOp, Value),
    /// `sk BETWEEN :a AND :b`.
    Between(Value, Value),
    /// `begins_with(sk, :v)`.
    BeginsWith(Value),
}

/// A key condition resolved against the key schema.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyCond {
    /// Value of the partition key.
    pub hash: Value,
    /// Condition on the sort key.
    pub range: Option<RangeCond>,
}

impl KeyCond {
    /// The key condition made of the parts found; the partition key (named `hash`) must
    /// have had one.
    pub(crate) fn from_parts(
        hash: &str,
        hash_value: Option<Value>,
        range: Option<RangeCond>,
    ) -> Result<KeyCond> {
        let hash_value = hash_value.ok_or_else(|| {
            DdbError::validation(format!("Query condition missed key schema element: {hash}"))
        })?;
        Ok(KeyCond {
            hash: hash_value,
            range,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Placeholders

/// ExpressionAttributeNames and ExpressionAttributeValues of one request, with the record
/// of which placeholders the request's expressions used.
#[derive(Debug, Default)]
pub struct Placeholders {
    names: HashMap<String, String>,
    values: HashMap<String, Value>,
    used_names: RefCell<BTreeSet<String>>,
    used_values: RefCell<BTreeSet<String>>,
}

impl Placeholders {
    /// Reads `ExpressionAttributeNames` and `ExpressionAttributeValues` from a request.
    pub fn from_request(req: &Json) -> Result<Placeholders> {
        let mut p = Placeholders::default();
        if let Some(names) = req.get("ExpressionAttributeNames").filter(|v| !v.is_null()) {
            let names = names
                .as_object()
                .ok_or_else(|| DdbError::serialization("ExpressionAttributeNames must be a map"))?;
            if names.is_empty() {
                return Err(DdbError::validation(
                    "ExpressionAttributeNames must not be empty",
                ));
            }
            for (k, v) in names {
                if !k.starts_with('#') || k.len() < 2 {
                    return Err(DdbError::validation(format!(
                        "ExpressionAttributeNames contains invalid key: Syntax error; key: \"{k}\""
                    )));
                }
                let v = v.as_str().ok_or_else(|| {
                    DdbError::serialization("ExpressionAttributeNames values must be strings")
                })?;
                if v.is_empty() {
                    return Err(DdbError::validation(format!(
                        "ExpressionAttributeNames contains invalid value: Empty attribute name for key {k}"
                    )));
                }
                p.names.insert(k.clone(), v.to_owned());
            }
        }
        if let Some(values) = req
            .get("ExpressionAttributeValues")
            .filter(|v| !v.is_null())
        {
            let values = values.as_object().ok_or_else(|| {
                DdbError::serialization("ExpressionAttributeValues must be a map")
            })?;
            if values.is_empty() {
                return Err(DdbError::validation(
                    "ExpressionAttributeValues must not be empty",
                ));
            }
            for (k, v) in values {
                if !k.starts_with(':') || k.len() < 2 {
                    return Err(DdbError::validation(format!(
                        "ExpressionAttributeValues contains invalid key: Syntax error; key: \"{k}\""
                    )));
                }
                let v = Value::from_json(v).map_err(|e| {
                    DdbError::validation(format!(
                        "ExpressionAttributeValues contains invalid value: {} for key {k}",
                        e.message
                    ))
                })?;
                p.values.insert(k.clone(), v);
            }
        }
        Ok(p)
    }

    /// Fails like DynamoDB when a placeholder was given but no expression used it.
    pub fn check_unused(&self) -> Result<()> {
        let used = self.used_names.borrow();
        let unused: Vec<&String> = {
            let mut v: Vec<&String> = self.names.keys().filter(|k| !used.contains(*k)).collect();
            v.sort();
            v
        };
        if !unused.is_empty() {
            let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            return Err(DdbError::validation(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                list.join(", ")
            )));
        }
        let used = self.used_values.borrow();
        let mut unused: Vec<&String> = self.values.keys().filter(|k| !used.contains(*k)).collect();
        unused.sort();
        if !unused.is_empty() {
            let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            return Err(DdbError::validation(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                list.join(", ")
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Val(String),
    Int(String),
    Sym(&'static str),
    Eof,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Name(s) | Tok::Val(s) | Tok::Int(s) => s.clone(),
            Tok::Sym(s) => (*s).to_owned(),
            Tok::Eof => "<EOF>".to_owned(),
        }
    }
}

fn lex(src: &str, kind: &str) -> Result<Vec<Tok>> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let tok = match c {
            b'#' | b':' => {
                i += 1;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                if i == start + 1 {
                    return Err(syntax(kind, &(c as char).to_string(), src, start));
                }
                let s = src[start..i].to_owned();
                if c == b'#' {
                    Tok::Name(s)
                } else {
                    Tok::Val(s)
                }
            }
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                Tok::Int(src[start..i].to_owned())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_owned())
            }
            _ => {
                let two = src.get(i..i + 2).unwrap_or("");
                let sym = match two {
                    "<>" => Some("<>"),
                    "<=" => Some("<="),
                    ">=" => Some(">="),
                    _ => None,
                };
                if let Some(s) = sym {
                    i += 2;
                    Tok::Sym(s)
                } else {
                    let s = match c {
                        b'=' => "=",
                        b'<' => "<",
                        b'>' => ">",
                        b'(' => "(",
                        b')' => ")",
                        b'[' => "[",
                        b']' => "]",
                        b',' => ",",
                        b'.' => ".",
                        b'+' => "+",
                        b'-' => "-",
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or('?');
                            return Err(DdbError::validation(format!(
                                "Invalid {kind}: Syntax error; token: \"{ch}\", near: \"{}\"",
                                near(src, i)
                            )));
                        }
                    };
                    i += 1;
                    Tok::Sym(s)
                }
            }
        };
        out.push(tok);
    }
    out.push(Tok::Eof);
    Ok(out)
}

fn near(src: &str, at: usize) -> String {
    let mut lo = at.saturating_sub(8);
    while !src.is_char_boundary(lo) {
        lo -= 1;
    }
    let mut hi = (at + 8).min(src.len());
    while !src.is_char_boundary(hi) {
        hi += 1;
    }
    src[lo..hi].to_owned()
}

fn syntax(kind: &str, token: &str, src: &str, at: usize) -> DdbError {
    DdbError::validation(format!(
        "Invalid {kind}: Syntax error; token: \"{token}\", near: \"{}\"",
        near(src, at)
    ))
}

// ---------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    kind: &'static str,
    ph: &'a Placeholders,
    depth: usize,
    /// Token positions of the opening and closing parenthesis of the last parenthesised
    /// condition or operand parsed (to find `((…))`, which DynamoDB refuses as redundant).
    last_group: Option<(usize, usize)>,
}

fn is_kw(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
}

impl<'a> Parser<'a> {
    fn new(src: &str, kind: &'static str, ph: &'a Placeholders) -> Result<Parser<'a>> {
        if src.trim().is_empty() {
            return Err(DdbError::validation(format!(
                "Invalid {kind}: The expression can not be empty;"
            )));
        }
        if src.len() > MAX_EXPRESSION_LEN {
            return Err(DdbError::validation(format!(
                "Invalid {kind}: Expression size has exceeded the maximum allowed size; expression size: {}",
                src.len()
            )));
        }
        Ok(Parser {
            toks: lex(src, kind)?,
            pos: 0,
            kind,
            ph,
            depth: 0,
            last_group: None,
        })
    }

    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).unwrap_or(&Tok::Eof)
    }

    fn peek2(&self) -> &Tok {
        self.toks.get(self.pos + 1).unwrap_or(&Tok::Eof)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn err(&self) -> DdbError {
        let tok = self.peek().text();
        let hi = (self.pos + 2).min(self.toks.len());
        let lo = self.pos.saturating_sub(1).min(hi);
        let near: Vec<String> = self.toks[lo..hi]
            .iter()
            .filter(|t| **t != Tok::Eof)
            .map(Tok::text)
            .collect();
        DdbError::validation(format!(
            "Invalid {}: Syntax error; token: \"{tok}\", near: \"{}\"",
            self.kind,
            near.join(" ")
        ))
    }

    fn invalid(&self, msg: impl AsRef<str>) -> DdbError {
        DdbError::validation(format!("Invalid {}: {}", self.kind, msg.as_ref()))
    }

    fn expect(&mut self, sym: &str) -> Result<()> {
        if *self.peek()
            == Tok::Sym(match sym {
                "(" => "(",
                ")" => ")",
                "," => ",",
                "]" => "]",
                "=" => "=",
                _ => "",
            })
        {
            self.next();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn expect_eof(&self) -> Result<()> {
        if *self.peek() == Tok::Eof {
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.invalid("The expression has too many levels of nesting"));
        }
        Ok(())
    }

    fn name(&self, placeholder: &str) -> Result<String> {
        match self.ph.names.get(placeholder) {
            Some(n) => {
                self.ph.used_names.borrow_mut().insert(placeholder.to_owned());
                Ok(n.clone())
            }
            None => Err(self.invalid(format!(
                "An expression attribute name used in the document path is not defined; attribute name: {placeholder}"
            ))),
        }
    }

    fn value(&self, placeholder: &str) -> Result<Value> {
        match self.ph.values.get(placeholder) {
            Some(v) => {
                self.ph.used_values.borrow_mut().insert(placeholder.to_owned());
                Ok(v.clone())
            }
            None => Err(self.invalid(format!(
                "An expression attribute value used in expression is not defined; attribute value: {placeholder}"
            ))),
        }
    }

    fn ident(&self, s: String) -> Result<String> {
        if is_reserved(&s) {
            return Err(self.invalid(format!(
                "Attribute name is a reserved keyword; reserved keyword: {s}"
            )));
        }
        Ok(s)
    }

    fn path(&mut self) -> Result<Path> {
        let mut elems = Vec::new();
        let first = match self.next() {
            Tok::Ident(s) => self.ident(s)?,
            Tok::Name(n) => self.name(&n)?,
            _ => {
                self.pos -= 1;
                return Err(self.err());
            }
        };
        elems.push(PathElem::Attr(first));
        self.path_tail(elems)
    }

    /// The `.name` and `[index]` elements following the start of a path.
    fn path_tail(&mut self, mut elems: Vec<PathElem>) -> Result<Path> {
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.next();
                    let e = match self.next() {
                        Tok::Ident(s) => self.ident(s)?,
                        Tok::Name(n) => self.name(&n)?,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err());
                        }
                    };
                    elems.push(PathElem::Attr(e));
                }
                Tok::Sym("[") => {
                    self.next();
                    let idx = match self.next() {
                        Tok::Int(s) => s.parse::<usize>().map_err(|_| {
                            self.invalid(
                                "List index is not within the allowable range; index: ".to_owned()
                                    + &s,
                            )
                        })?,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err());
                        }
                    };
                    self.expect("]")?;
                    elems.push(PathElem::Index(idx));
                }
                _ => break,
            }
        }
        if elems.len() > MAX_NESTING {
            return Err(self.invalid("The document path has too many nesting levels"));
        }
        Ok(Path(elems))
    }

    // ----- conditions

    fn condition(&mut self) -> Result<Cond> {
        let c = self.or()?;
        self.expect_eof()?;
        Ok(c)
    }

    fn or(&mut self) -> Result<Cond> {
        let mut left = self.and()?;
        while is_kw(self.peek(), "OR") {
            self.next();
            let right = self.and()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond> {
        let mut left = self.not()?;
        while is_kw(self.peek(), "AND") {
            self.next();
            let right = self.not()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Cond> {
        if is_kw(self.peek(), "NOT") {
            self.next();
            self.enter()?;
            let c = self.not()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(c)));
        }
        self.primary()
    }

    /// Whether the parenthesis at the current position opens an operand (`(a) = :v`,
    /// `(size(a)) > :v`) rather than a condition: nothing between it and its closing
    /// parenthesis belongs only to conditions (a comparison, a keyword, a function other
    /// than `size`).
    fn parenthesised_operand(&self) -> bool {
        let mut depth = 0usize;
        for (i, t) in self.toks.iter().enumerate().skip(self.pos) {
            match t {
                Tok::Sym("(") => depth += 1,
                Tok::Sym(")") => {
                    depth -= 1;
                    if depth == 0 {
                        return true;
                    }
                }
                Tok::Sym("=" | "<>" | "<" | "<=" | ">" | ">=") => return false,
                Tok::Ident(f)
                    if ["BETWEEN", "IN", "AND", "OR", "NOT"]
                        .iter()
                        .any(|k| f.eq_ignore_ascii_case(k))
                        || (f != "size" && self.toks.get(i + 1) == Some(&Tok::Sym("("))) =>
                {
                    return false;
                }
                _ => {}
            }
        }
        false
    }

    /// `( inner )` at `(`: parses `inner` one level deeper; `((x))` (the inner group ends
    /// right where this one does) is refused as redundant parentheses, as DynamoDB does.
    fn group<T>(&mut self, inner: fn(&mut Self) -> Result<T>) -> Result<T> {
        let open = self.pos;
        self.next();
        self.enter()?;
        let x = inner(self)?;
        self.depth -= 1;
        if self.last_group == Some((open + 1, self.pos.wrapping_sub(1)))
            && *self.peek() == Tok::Sym(")")
        {
            return Err(self.invalid("The expression has redundant parentheses;"));
        }
        self.expect(")")?;
        self.last_group = Some((open, self.pos - 1));
        Ok(x)
    }

    fn primary(&mut self) -> Result<Cond> {
        if *self.peek() == Tok::Sym("(") && !self.parenthesised_operand() {
            return self.group(Self::or);
        }
        if let (Tok::Ident(f), Tok::Sym("(")) = (self.peek().clone(), self.peek2().clone()) {
            if f != "size" {
                return self.function(&f);
            }
        }
        let left = self.operand()?;
        match self.peek().clone() {
            Tok::Sym(s @ ("=" | "<>" | "<" | "<=" | ">" | ">=")) => {
                self.next();
                let op = match s {
                    "=" => CmpOp::Eq,
                    "<>" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let right = self.operand()?;
                Ok(Cond::Cmp(left, op, right))
            }
            t if is_kw(&t, "BETWEEN") => {
                self.next();
                let lo = self.operand()?;
                if !is_kw(self.peek(), "AND") {
                    return Err(self.err());
                }
                self.next();
                let hi = self.operand()?;
                if let (Operand::Value(a), Operand::Value(b)) = (&lo, &hi) {
                    if compare_values(a, b) == Some(Ordering::Greater) {
                        return Err(self.invalid(format!(
                            "The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound operand: AttributeValue: {{{}:{}}}, upper bound operand: AttributeValue: {{{}:{}}}",
                            a.type_name(), show_scalar(a), b.type_name(), show_scalar(b)
                        )));
                    }
                }
                Ok(Cond::Between(left, lo, hi))
            }
            t if is_kw(&t, "IN") => {
                self.next();
                self.expect("(")?;
                let mut list = vec![self.operand()?];
                while *self.peek() == Tok::Sym(",") {
                    self.next();
                    list.push(self.operand()?);
                }
                self.expect(")")?;
                if list.len() > MAX_IN_OPERANDS {
                    return Err(self.invalid(format!(
                        "The IN operator is provided with too many operands; number of operands: {}",
                        list.len()
                    )));
                }
                Ok(Cond::In(left, list))
            }
            _ => Err(self.err()),
        }
    }

    fn operand(&mut self) -> Result<Operand> {
        match self.peek().clone() {
            Tok::Sym("(") => {
                // `(a) = :v`: one pair of parentheses around an operand; `((a))` is refused
                // as around a condition.
                match self.group(Self::operand)? {
                    // `(a).b`, `(a)[0]`: the path goes on after its parentheses.
                    Operand::Path(p) if matches!(self.peek(), Tok::Sym("." | "[")) => {
                        Ok(Operand::Path(self.path_tail(p.0)?))
                    }
                    other => Ok(other),
                }
            }
            Tok::Val(v) => {
                self.next();
                Ok(Operand::Value(self.value(&v)?))
            }
            Tok::Ident(f) if *self.peek2() == Tok::Sym("(") => {
                if f != "size" {
                    if is_function(&f) {
                        return Err(self.invalid(format!(
                            "The function is not allowed to be used this way in an expression; function: {f}"
                        )));
                    }
                    return Err(self.invalid(format!("Invalid function name; function: {f}")));
                }
                self.next();
                self.next();
                let p = self.path_arg("size")?;
                self.expect(")")?;
                Ok(Operand::Size(p))
            }
            Tok::Ident(_) | Tok::Name(_) => Ok(Operand::Path(self.path()?)),
            _ => Err(self.err()),
        }
    }

    fn function(&mut self, f: &str) -> Result<Cond> {
        self.next();
        self.next();
        let c = match f {
            "attribute_exists" | "attribute_not_exists" => {
                let p = self.path_arg(f)?;
                self.no_more_operands(f, 1)?;
                if f == "attribute_exists" {
                    Cond::Exists(p)
                } else {
                    Cond::NotExists(p)
                }
            }
            "attribute_type" => {
                let p = self.path_arg(f)?;
                self.more_operands(f, 1)?;
                let t = match self.operand()? {
                    Operand::Value(Value::S(s)) => s,
                    Operand::Value(v) => {
                        return Err(self.invalid(format!(
                            "Incorrect operand type for operator or function; operator or function: attribute_type, operand type: {}",
                            v.type_name()
                        )))
                    }
                    _ => return Err(self.invalid("Incorrect operand type for operator or function; operator or function: attribute_type, operand type: PATH")),
                };
                if !["S", "SS", "N", "NS", "B", "BS", "BOOL", "NULL", "L", "M"]
                    .contains(&t.as_str())
                {
                    return Err(self.invalid(format!(
                        "Invalid attribute type name found; type: {t}, valid types: {{B,NULL,SS,BOOL,L,BS,N,NS,S,M}}"
                    )));
                }
                self.no_more_operands(f, 2)?;
                Cond::Type(p, t)
            }
            "begins_with" => {
                let a = self.operand()?;
                self.more_operands(f, 1)?;
                let b = self.operand()?;
                self.no_more_operands(f, 2)?;
                for o in [&a, &b] {
                    if let Operand::Value(v) = o {
                        if !matches!(v, Value::S(_) | Value::B(_)) {
                            return Err(self.invalid(format!(
                                "Incorrect operand type for operator or function; operator or function: begins_with, operand type: {}",
                                v.type_name()
                            )));
                        }
                    }
                }
                Cond::BeginsWith(a, b)
            }
            "contains" => {
                let a = self.operand()?;
                self.more_operands(f, 1)?;
                let b = self.operand()?;
                self.no_more_operands(f, 2)?;
                Cond::Contains(a, b)
            }
            "size" | "if_not_exists" | "list_append" => {
                return Err(self.invalid(format!(
                "The function is not allowed to be used this way in an expression; function: {f}"
            )))
            }
            _ => return Err(self.invalid(format!("Invalid function name; function: {f}"))),
        };
        self.expect(")")?;
        Ok(c)
    }

    /// The document path a function takes as its first operand: a value or a function
    /// there is refused as DynamoDB refuses it.
    fn path_arg(&mut self, f: &str) -> Result<Path> {
        match (self.peek().clone(), self.peek2().clone()) {
            (Tok::Val(_), _) => Err(self.invalid(format!(
                "Operator or function requires a document path; operator or function: {f}"
            ))),
            (Tok::Sym("("), _) => match self.operand()? {
                Operand::Path(p) => Ok(p),
                _ => Err(self.invalid(format!(
                    "Operator or function requires a document path; operator or function: {f}"
                ))),
            },
            (Tok::Ident(g), Tok::Sym("(")) => {
                if g == "size" && f == "size" {
                    Err(self.invalid(
                        "Incorrect operand type for operator or function; operator or function: size, operand type: N",
                    ))
                } else if g == "size" {
                    Err(self.invalid(format!(
                        "Operator or function requires a document path; operator or function: {f}"
                    )))
                } else if is_function(&g) {
                    Err(self.invalid(format!(
                        "The function is not allowed to be used this way in an expression; function: {g}"
                    )))
                } else {
                    Err(self.invalid(format!("Invalid function name; function: {g}")))
                }
            }
            _ => self.path(),
        }
    }

    /// Skips the rest of a function's operand list and reports how many there were.
    fn operand_count(&mut self, f: &str, mut n: usize) -> DdbError {
        let start = self.pos;
        let mut depth = 0usize;
        let mut any = false;
        loop {
            match self.peek() {
                Tok::Eof => {
                    self.pos = start;
                    return self.err();
                }
                Tok::Sym("(") => depth += 1,
                Tok::Sym(")") if depth == 0 => break,
                Tok::Sym(")") => depth -= 1,
                Tok::Sym(",") if depth == 0 => {
                    n += usize::from(any);
                    any = false;
                    self.next();
                    continue;
                }
                _ => {}
            }
            any = true;
            self.next();
        }
        n += usize::from(any);
        self.invalid(format!(
            "Incorrect number of operands for operator or function; operator or function: {f}, number of operands: {n}"
        ))
    }

    /// After `n` operands of `f`, a comma must follow (more are needed).
    fn more_operands(&mut self, f: &str, n: usize) -> Result<()> {
        match self.peek() {
            Tok::Sym(",") => {
                self.next();
                Ok(())
            }
            Tok::Sym(")") => Err(self.operand_count(f, n)),
            _ => Err(self.err()),
        }
    }

    /// After `n` operands of `f`, the list must end.
    fn no_more_operands(&mut self, f: &str, n: usize) -> Result<()> {
        match self.peek() {
            Tok::Sym(",") => Err(self.operand_count(f, n)),
            _ => Ok(()),
        }
    }

    // ----- update expressions

    fn update(&mut self) -> Result<Update> {
        let mut u = Update::default();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        while *self.peek() != Tok::Eof {
            let clause = match self.next() {
                Tok::Ident(s) => s.to_ascii_uppercase(),
                _ => {
                    self.pos -= 1;
                    return Err(self.err());
                }
            };
            if !matches!(clause.as_str(), "SET" | "REMOVE" | "ADD" | "DELETE") {
                self.pos -= 1;
                return Err(self.err());
            }
            if !seen.insert(clause.clone()) {
                return Err(self.invalid(format!(
                    "The \"{clause}\" section can only be used once in an update expression;"
                )));
            }
            loop {
                match clause.as_str() {
                    "SET" => {
                        let p = self.path()?;
                        self.expect("=")?;
                        // `SET a = (b + :c)`: one pair of parentheses around the value.
                        let grouped = *self.peek() == Tok::Sym("(");
                        if grouped {
                            self.next();
                        }
                        let a = self.set_operand()?;
                        let v = match self.peek() {
                            Tok::Sym("+") => {
                                self.next();
                                SetValue::Plus(a, self.set_operand()?)
                            }
                            Tok::Sym("-") => {
                                self.next();
                                SetValue::Minus(a, self.set_operand()?)
                            }
                            _ => SetValue::Plain(a),
                        };
                        if grouped {
                            self.expect(")")?;
                        }
                        u.set.push((p, v));
                    }
                    "REMOVE" => u.remove.push(self.path()?),
                    _ => {
                        let p = self.path()?;
                        let v = match self.next() {
                            Tok::Val(v) => self.value(&v)?,
                            _ => {
                                self.pos -= 1;
                                return Err(self.err());
                            }
                        };
                        let ok = if clause == "ADD" {
                            matches!(v, Value::N(_) | Value::SS(_) | Value::NS(_) | Value::BS(_))
                        } else {
                            matches!(v, Value::SS(_) | Value::NS(_) | Value::BS(_))
                        };
                        if !ok {
                            return Err(self.invalid(format!(
                                "Incorrect operand type for operator or function; operator: {clause}, operand type: {}",
                                type_long_name(&v)
                            )));
                        }
                        if clause == "ADD" {
                            u.add.push((p, v));
                        } else {
                            u.delete.push((p, v));
                        }
                    }
                }
                if *self.peek() == Tok::Sym(",") {
                    self.next();
                } else {
                    break;
                }
            }
        }
        // No two actions may touch overlapping paths.
        let mut all: Vec<&Path> = Vec::new();
        all.extend(u.set.iter().map(|(p, _)| p));
        all.extend(u.remove.iter());
        all.extend(u.add.iter().map(|(p, _)| p));
        all.extend(u.delete.iter().map(|(p, _)| p));
        check_overlaps(&all, self.kind)?;
        Ok(u)
    }

    fn set_operand(&mut self) -> Result<SetOperand> {
        match self.peek().clone() {
            Tok::Val(v) => {
                self.next();
                Ok(SetOperand::Value(self.value(&v)?))
            }
            Tok::Ident(f) if *self.peek2() == Tok::Sym("(") => {
                self.next();
                self.next();
                self.enter()?;
                let r = match f.as_str() {
                    "if_not_exists" => {
                        let p = self.path_arg("if_not_exists")?;
                        self.expect(",")?;
                        let v = self.set_operand()?;
                        SetOperand::IfNotExists(p, Box::new(v))
                    }
                    "list_append" => {
                        let a = self.set_operand()?;
                        self.expect(",")?;
                        let b = self.set_operand()?;
                        for o in [&a, &b] {
                            if let SetOperand::Value(v) = o {
                                if !matches!(v, Value::L(_)) {
                                    return Err(self.invalid(format!(
                                        "Incorrect operand type for operator or function; operator or function: list_append, operand type: {}",
                                        v.type_name()
                                    )));
                                }
                            }
                        }
                        SetOperand::ListAppend(Box::new(a), Box::new(b))
                    }
                    other if is_function(other) => {
                        return Err(self.invalid(format!(
                            "The function is not allowed in an update expression; function: {other}"
                        )))
                    }
                    other => {
                        return Err(
                            self.invalid(format!("Invalid function name; function: {other}"))
                        )
                    }
                };
                self.depth -= 1;
                self.expect(")")?;
                Ok(r)
            }
            Tok::Ident(_) | Tok::Name(_) => Ok(SetOperand::Path(self.path()?)),
            _ => Err(self.err()),
        }
    }

    // ----- projections

    fn projection(&mut self) -> Result<Vec<Path>> {
        let mut paths = vec![self.path()?];
        while *self.peek() == Tok::Sym(",") {
            self.next();
            paths.push(self.path()?);
        }
        self.expect_eof()?;
        let refs: Vec<&Path> = paths.iter().collect();
        check_overlaps(&refs, self.kind)?;
        Ok(paths)
    }
}

/// Whether a word is one of DynamoDB's reserved words (any case).
pub fn is_reserved(word: &str) -> bool {
    static WORDS: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    let words = WORDS.get_or_init(|| {
        include_str!("reserved_words.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    });
    word.len() <= 16 && words.contains(word.to_ascii_uppercase().as_str())
}

fn is_function(f: &str) -> bool {
    matches!(
        f,
        "attribute_exists"
            | "attribute_not_exists"
            | "attribute_type"
            | "begins_with"
            | "contains"
            | "size"
            | "if_not_exists"
            | "list_append"
    )
}

fn type_long_name(v: &Value) -> &'static str {
    match v {
        Value::S(_) => "STRING",
        Value::N(_) => "NUMBER",
        Value::B(_) => "BINARY",
        Value::Bool(_) => "BOOLEAN",
        Value::Null => "NULL",
        Value::M(_) => "MAP",
        Value::L(_) => "LIST",
        Value::SS(_) => "SS",
        Value::NS(_) => "NS",
        Value::BS(_) => "BS",
    }
}

fn show_scalar(v: &Value) -> String {
    match v {
        Value::S(s) => s.clone(),
        Value::N(n) => n.to_string(),
        Value::B(b) => crate::value::b64(b),
        other => other.type_name().to_owned(),
    }
}

/// How two document paths relate: `Overlap` when one is a prefix of the other (or both
/// are equal), `Conflict` when they part where one takes a map key and the other a
/// list index.
fn relation(a: &Path, b: &Path) -> Option<&'static str> {
    for (x, y) in a.0.iter().zip(&b.0) {
        match (x, y) {
            (PathElem::Attr(_), PathElem::Index(_)) | (PathElem::Index(_), PathElem::Attr(_)) => {
                return Some("conflict")
            }
            _ if x != y => return None,
            _ => {}
        }
    }
    Some("overlap")
}

/// Refuses two paths that overlap (reported first) or conflict, naming them in the order
/// the expression gives them, as DynamoDB does.
fn check_overlaps(paths: &[&Path], kind: &str) -> Result<()> {
    for wanted in ["overlap", "conflict"] {
        for (i, later) in paths.iter().enumerate() {
            for earlier in &paths[..i] {
                if relation(earlier, later) == Some(wanted) {
                    return Err(DdbError::validation(format!(
                        "Invalid {kind}: Two document paths {wanted} with each other; must remove or rewrite one of these paths; path one: {}, path two: {}",
                        earlier.display(),
                        later.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Parses a condition (ConditionExpression or FilterExpression; `kind` names it in errors).
pub fn parse_condition(src: &str, kind: &'static str, ph: &Placeholders) -> Result<Cond> {
    Parser::new(src, kind, ph)?.condition()
}

/// Parses an UpdateExpression.
pub fn parse_update(src: &str, ph: &Placeholders) -> Result<Update> {
    Parser::new(src, "UpdateExpression", ph)?.update()
}

/// Parses a ProjectionExpression.
pub fn parse_projection(src: &str, ph: &Placeholders) -> Result<Vec<Path>> {
    Parser::new(src, "ProjectionExpression", ph)?.projection()
}

/// Parses a KeyConditionExpression against a key schema (`hash`, optional `range` names).
pub fn parse_key_condition(
    src: &str,
    ph: &Placeholders,
    hash: &str,
    range: Option<&str>,
) -> Result<KeyCond> {
    let kind = "KeyConditionExpression";
    let cond = Parser::new(src, kind, ph)?.condition()?;
    let mut parts = Vec::new();
    flatten_and(cond, &mut parts, kind)?;
    if parts.len() > 2 {
        return Err(DdbError::validation(format!(
            "Invalid {kind}: The expression has too many conditions; conditions: {}",
            parts.len()
        )));
    }
    let mut hash_v = None;
    let mut range_c = None;
    for part in parts {
        let (attr, rc) = key_part(part, kind)?;
        if attr == hash && hash_v.is_none() {
            match rc {
                RangeCond::Cmp(CmpOp::Eq, v) => hash_v = Some(v),
                _ => return Err(DdbError::validation("Query key condition not supported")),
            }
        } else if Some(attr.as_str()) == range && range_c.is_none() {
            range_c = Some(rc);
        } else if attr == hash || Some(attr.as_str()) == range {
            return Err(DdbError::validation(
                "KeyConditionExpressions must only contain one condition per key",
            ));
        } else {
            return Err(DdbError::validation(format!(
                "Query condition missed key schema element: {}",
                if hash_v.is_none() {
                    hash
                } else {
                    range.unwrap_or(hash)
                }
            )));
        }
    }
    KeyCond::from_parts(hash, hash_v, range_c)
}

fn flatten_and(c: Cond, out: &mut Vec<Cond>, kind: &str) -> Result<()> {
    match c {
        Cond::And(a, b) => {
            flatten_and(*a, out, kind)?;
            flatten_and(*b, out, kind)
        }
        Cond::Or(..) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: OR"
        ))),
        Cond::Not(..) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: NOT"
        ))),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn key_part(c: Cond, kind: &str) -> Result<(String, RangeCond)> {
    let single = |p: &Path| -> Result<String> {
        if p.0.len() != 1 {
            return Err(DdbError::validation(format!(
                "Invalid {kind}: Key conditions must only refer to top-level key attributes"
            )));
        }
        Ok(p.root().to_owned())
    };
    match c {
        Cond::Cmp(Operand::Path(p), op, Operand::Value(v)) => {
            if op == CmpOp::Ne {
                return Err(DdbError::validation(format!(
                    "Unsupported operator in {kind}: <>"
                )));
            }
            Ok((single(&p)?, RangeCond::Cmp(op, v)))
        }
        Cond::Cmp(Operand::Value(v), op, Operand::Path(p)) => {
            let op = match op {
                CmpOp::Lt => CmpOp::Gt,
                CmpOp::Le => CmpOp::Ge,
                CmpOp::Gt => CmpOp::Lt,
                CmpOp::Ge => CmpOp::Le,
                CmpOp::Ne => {
                    return Err(DdbError::validation(format!(
                        "Unsupported operator in {kind}: <>"
                    )))
                }
                CmpOp::Eq => CmpOp::Eq,
            };
            Ok((single(&p)?, RangeCond::Cmp(op, v)))
        }
        Cond::Between(Operand::Path(p), Operand::Value(a), Operand::Value(b)) => {
            Ok((single(&p)?, RangeCond::Between(a, b)))
        }
        Cond::BeginsWith(Operand::Path(p), Operand::Value(v)) => {
            Ok((single(&p)?, RangeCond::BeginsWith(v)))
        }
        Cond::In(..) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: IN"
        ))),
        Cond::Exists(_) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: attribute_exists"
        ))),
        Cond::NotExists(_) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: attribute_not_exists"
        ))),
        Cond::Type(..) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: attribute_type"
        ))),
        Cond::Contains(..) => Err(DdbError::validation(format!(
            "Invalid operator used in {kind}: contains"
        ))),
        Cond::Cmp(Operand::Size(_), ..) | Cond::Cmp(_, _, Operand::Size(_)) => Err(
            DdbError::validation(format!("Invalid operator used in {kind}: size")),
        ),
        _ => Err(DdbError::validation(format!(
            "Invalid {kind}: The key conditions must compare a key attribute with a value"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

fn operand<'a>(o: &'a Operand, item: &'a Item) -> Option<Cow<'a, Value>> {
    match o {
        Operand::Value(v) => Some(Cow::Borrowed(v)),
        Operand::Path(p) => p.get(item).map(Cow::Borrowed),
        Operand::Size(p) => {
            let n = match p.get(item)? {
                Value::S(s) => s.chars().count(),
                Value::B(b) => b.len(),
                Value::SS(s) => s.len(),
                Value::NS(s) => s.len(),
                Value::BS(s) => s.len(),
                Value::L(l) => l.len(),
                Value::M(m) => m.len(),
                _ => return None,
            };
            Some(Cow::Owned(Value::N(Number::parse(&n.to_string()).ok()?)))
        }
    }
}

fn cmp(op: CmpOp, a: Option<&Value>, b: Option<&Value>) -> bool {
    match op {
        CmpOp::Eq => matches!((a, b), (Some(a), Some(b)) if a == b),
        CmpOp::Ne => !matches!((a, b), (Some(a), Some(b)) if a == b),
        _ => {
            let (Some(a), Some(b)) = (a, b) else {
                return false;
            };
            match compare_values(a, b) {
                Some(o) => match op {
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                },
                None => false,
            }
        }
    }
}

/// Evaluates a condition against an item (an absent item is the empty item).
pub fn eval(c: &Cond, item: &Item) -> bool {
    match c {
        Cond::Cmp(a, op, b) => {
            let a = operand(a, item);
            let b = operand(b, item);
            cmp(*op, a.as_deref(), b.as_deref())
        }
        Cond::Between(x, lo, hi) => {
            let x = operand(x, item);
            let lo = operand(lo, item);
            let hi = operand(hi, item);
            cmp(CmpOp::Ge, x.as_deref(), lo.as_deref())
                && cmp(CmpOp::Le, x.as_deref(), hi.as_deref())
        }
        Cond::In(x, list) => {
            let Some(x) = operand(x, item) else {
                return false;
            };
            list.iter()
                .any(|o| operand(o, item).is_some_and(|v| *v == *x))
        }
        Cond::And(a, b) => eval(a, item) && eval(b, item),
        Cond::Or(a, b) => eval(a, item) || eval(b, item),
        Cond::Not(a) => !eval(a, item),
        Cond::Exists(p) => p.get(item).is_some(),
        Cond::NotExists(p) => p.get(item).is_none(),
        Cond::Type(p, t) => p.get(item).is_some_and(|v| v.type_name() == t),
        Cond::BeginsWith(a, b) => {
            match (operand(a, item).as_deref(), operand(b, item).as_deref()) {
                (Some(Value::S(a)), Some(Value::S(b))) => a.starts_with(b.as_str()),
                (Some(Value::B(a)), Some(Value::B(b))) => a.starts_with(b),
                _ => false,
            }
        }
        Cond::Contains(a, b) => match (operand(a, item).as_deref(), operand(b, item).as_deref()) {
            (Some(Value::S(a)), Some(Value::S(b))) => a.contains(b.as_str()),
            (Some(Value::B(a)), Some(Value::B(b))) => {
                b.is_empty() || a.windows(b.len()).any(|w| w == b.as_slice())
            }
            (Some(Value::SS(a)), Some(Value::S(b))) => a.contains(b),
            (Some(Value::NS(a)), Some(Value::N(b))) => a.contains(b),
            (Some(Value::BS(a)), Some(Value::B(b))) => a.contains(b),
            (Some(Value::L(a)), Some(b)) => a.contains(b),
            _ => false,
        },
    }
}

/// Applies a projection to an item.
pub fn project(paths: &[Path], item: &Item) -> Item {
    enum Proj {
        Leaf(Value),
        Map(BTreeMap<String, Proj>),
        List(BTreeMap<usize, Proj>),
    }
    fn insert(node: &mut BTreeMap<String, Proj>, path: &[PathElem], v: Value) {
        let PathElem::Attr(k) = &path[0] else { return };
        if path.len() == 1 {
            node.insert(k.clone(), Proj::Leaf(v));
            return;
        }
        let child = node.entry(k.clone()).or_insert_with(|| match path[1] {
            PathElem::Attr(_) => Proj::Map(BTreeMap::new()),
            PathElem::Index(_) => Proj::List(BTreeMap::new()),
        });
        insert_into(child, &path[1..], v);
    }
    fn insert_into(node: &mut Proj, path: &[PathElem], v: Value) {
        match (node, &path[0]) {
            (Proj::Map(m), PathElem::Attr(_)) => insert(m, path, v),
            (Proj::List(l), PathElem::Index(i)) => {
                if path.len() == 1 {
                    l.insert(*i, Proj::Leaf(v));
                } else {
                    let child = l.entry(*i).or_insert_with(|| match path[1] {
                        PathElem::Attr(_) => Proj::Map(BTreeMap::new()),
                        PathElem::Index(_) => Proj::List(BTreeMap::new()),
                    });
                    insert_into(child, &path[1..], v);
                }
            }
            _ => {}
        }
    }
    fn build(p: Proj) -> Value {
        match p {
            Proj::Leaf(v) => v,
            Proj::Map(m) => Value::M(m.into_iter().map(|(k, v)| (k, build(v))).collect()),
            Proj::List(l) => Value::L(l.into_values().map(build).collect()),
        }
    }
    let mut root: BTreeMap<String, Proj> = BTreeMap::new();
    for p in paths {
        if let Some(v) = p.get(item) {
            insert(&mut root, &p.0, v.clone());
        }
    }
    root.into_iter().map(|(k, v)| (k, build(v))).collect()
}

/// Every attribute name a projection, condition or update refers to at the top level
/// (used to know which attributes an index projection must hold).
pub fn cond_roots(c: &Cond, out: &mut BTreeSet<String>) {
    let op = |o: &Operand, out: &mut BTreeSet<String>| match o {
        Operand::Path(p) | Operand::Size(p) => {
            out.insert(p.root().to_owned());
        }
        Operand::Value(_) => {}
    };
    match c {
        Cond::Cmp(a, _, b) | Cond::BeginsWith(a, b) | Cond::Contains(a, b) => {
            op(a, out);
            op(b, out);
        }
        Cond::Between(a, b, d) => {
            op(a, out);
            op(b, out);
            op(d, out);
        }
        Cond::In(a, l) => {
            op(a, out);
            for o in l {
                op(o, out);
            }
        }
        Cond::And(a, b) | Cond::Or(a, b) => {
            cond_roots(a, out);
            cond_roots(b, out);
        }
        Cond::Not(a) => cond_roots(a, out),
        Cond::Exists(p) | Cond::NotExists(p) | Cond::Type(p, _) => {
            out.insert(p.root().to_owned());
        }
    }
}

fn update_err(msg: &str) -> DdbError {
    DdbError::validation(format!("The provided expression refers to {msg}"))
}

fn eval_set_operand(o: &SetOperand, item: &Item) -> Result<Value> {
    match o {
        SetOperand::Value(v) => Ok(v.clone()),
        SetOperand::Path(p) => p
            .get(item)
            .cloned()
            .ok_or_else(|| update_err("an attribute that does not exist in the item")),
        SetOperand::IfNotExists(p, v) => match p.get(item) {
            Some(x) => Ok(x.clone()),
            None => eval_set_operand(v, item),
        },
        SetOperand::ListAppend(a, b) => {
            let a = eval_set_operand(a, item)?;
            let b = eval_set_operand(b, item)?;
            match (a, b) {
                (Value::L(mut a), Value::L(b)) => {
                    a.extend(b);
                    Ok(Value::L(a))
                }
                _ => Err(DdbError::validation(
                    "An operand in the update expression has an incorrect data type",
                )),
            }
        }
    }
}

fn invalid_path() -> DdbError {
    DdbError::validation(
        "The document path provided in the update expression is invalid for update",
    )
}

/// Parent container of the last path element, created nowhere: DynamoDB requires the
/// parents of a nested SET target to exist.
fn parent_mut<'a>(item: &'a mut Item, path: &[PathElem]) -> Result<Option<&'a mut Value>> {
    if path.len() == 1 {
        return Ok(None);
    }
    let PathElem::Attr(first) = &path[0] else {
        return Err(invalid_path());
    };
    let mut cur = item.get_mut(first).ok_or_else(invalid_path)?;
    for e in &path[1..path.len() - 1] {
        cur = match (e, cur) {
            (PathElem::Attr(a), Value::M(m)) => m.get_mut(a).ok_or_else(invalid_path)?,
            (PathElem::Index(i), Value::L(l)) => l.get_mut(*i).ok_or_else(invalid_path)?,
            _ => return Err(invalid_path()),
        };
    }
    Ok(Some(cur))
}

fn set_path(item: &mut Item, path: &Path, v: Value) -> Result<()> {
    let last = path.0.last().expect("paths are never empty");
    match parent_mut(item, &path.0)? {
        None => {
            let PathElem::Attr(a) = last else {
                return Err(invalid_path());
            };
            item.insert(a.clone(), v);
        }
        Some(parent) => match (last, parent) {
            (PathElem::Attr(a), Value::M(m)) => {
                m.insert(a.clone(), v);
            }
            (PathElem::Index(i), Value::L(l)) => {
                if *i < l.len() {
                    l[*i] = v;
                } else {
                    l.push(v);
                }
            }
            _ => return Err(invalid_path()),
        },
    }
    Ok(())
}

fn remove_path(item: &mut Item, path: &Path) -> Result<()> {
    let last = path.0.last().expect("paths are never empty");
    let parent = match parent_mut(item, &path.0) {
        Ok(p) => p,
        Err(_) => return Ok(()), // removing below a missing parent is a no-op
    };
    match parent {
        None => {
            if let PathElem::Attr(a) = last {
                item.remove(a);
            }
        }
        Some(parent) => match (last, parent) {
            (PathElem::Attr(a), Value::M(m)) => {
                m.remove(a);
            }
            (PathElem::Index(i), Value::L(l)) if *i < l.len() => {
                l.remove(*i);
            }
            _ => {}
        },
    }
    Ok(())
}

fn type_mismatch() -> DdbError {
    DdbError::validation("An operand in the update expression has an incorrect data type")
}

/// Applies an update to an item (the old item, or just the key for a new one).
pub fn apply_update(u: &Update, item: &mut Item) -> Result<()> {
    // All right-hand sides see the item as it was before the update.
    let mut sets = Vec::with_capacity(u.set.len());
    for (p, v) in &u.set {
        let value = match v {
            SetValue::Plain(o) => eval_set_operand(o, item)?,
            SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
                let a = eval_set_operand(a, item)?;
                let b = eval_set_operand(b, item)?;
                let (Value::N(a), Value::N(b)) = (a, b) else {
                    return Err(type_mismatch());
                };
                Value::N(if matches!(v, SetValue::Plus(..)) {
                    a.add(&b)?
                } else {
                    a.sub(&b)?
                })
            }
        };
        sets.push((p, value));
    }
    let mut adds = Vec::with_capacity(u.add.len());
    for (p, v) in &u.add {
        let new = match (p.get(item), v) {
            (None, v) => v.clone(),
            (Some(Value::N(a)), Value::N(b)) => Value::N(a.add(b)?),
            (Some(Value::SS(a)), Value::SS(b)) => Value::SS(union(a, b)),
            (Some(Value::NS(a)), Value::NS(b)) => Value::NS(union(a, b)),
            (Some(Value::BS(a)), Value::BS(b)) => Value::BS(union(a, b)),
            _ => return Err(type_mismatch()),
        };
        adds.push((p, new));
    }
    let mut deletes = Vec::with_capacity(u.delete.len());
    for (p, v) in &u.delete {
        let new = match (p.get(item), v) {
            (None, _) => continue,
            (Some(Value::SS(a)), Value::SS(b)) => minus(a, b).map(Value::SS),
            (Some(Value::NS(a)), Value::NS(b)) => minus(a, b).map(Value::NS),
            (Some(Value::BS(a)), Value::BS(b)) => minus(a, b).map(Value::BS),
            _ => return Err(type_mismatch()),
        };
        deletes.push((p, new));
    }
    for (p, v) in sets.into_iter().chain(adds) {
        set_path(item, p, v)?;
    }
    for (p, v) in deletes {
        match v {
            Some(v) => set_path(item, p, v)?,
            None => remove_path(item, p)?,
        }
    }
    // Remove list elements from the highest index down so earlier removals do not shift
    // later ones.
    let mut removes: Vec<&Path> = u.remove.iter().collect();
    removes.sort_by(|a, b| b.cmp(a));
    for p in removes {
        remove_path(item, p)?;
    }
    Ok(())
}

fn union<T: Clone + PartialEq>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

fn minus<T: Clone + PartialEq>(a: &[T], b: &[T]) -> Option<Vec<T>> {
    let out: Vec<T> = a.iter().filter(|x| !b.contains(x)).cloned().collect();
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// Top-level attributes an update writes (to refuse key updates).
pub fn update_roots(u: &Update) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (p, _) in &u.set {
        out.insert(p.root().to_owned());
    }
    for p in &u.remove {
        out.insert(p.root().to_owned());
    }
    for (p, _) in u.add.iter().chain(&u.delete) {
        out.insert(p.root().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ph(names: Json, values: Json) -> Placeholders {
        let mut req = json!({});
        if !names.is_null() {
            req["ExpressionAttributeNames"] = names;
        }
        if !values.is_null() {
            req["ExpressionAttributeValues"] = values;
        }
        Placeholders::from_request(&req).unwrap()
    }

    fn item(j: Json) -> Item {
        crate::value::item_from_json(&j).unwrap()
    }

    #[test]
    fn conditions() {
        let p = ph(
            json!({"#s": "status", "#n": "nested"}),
            json!({":a": {"N": "5"}, ":b": {"N": "10"}, ":s": {"S": "ok"}, ":p": {"S": "o"},
                   ":t": {"S": "N"}, ":l": {"N": "2"}}),
        );
        let it = item(json!({"x": {"N": "7"}, "status": {"S": "ok"},
            "nested": {"M": {"lst": {"L": [{"S": "a"}, {"N": "1"}]}}},
            "tags": {"SS": ["a", "b"]}}));
        for (src, want) in [
            ("x = :a", false),
            ("x <> :a", true),
            ("x BETWEEN :a AND :b", true),
            ("x > :a AND #s = :s", true),
            ("x < :a OR NOT #s = :s", false),
            ("NOT (x < :a OR #s <> :s)", true),
            ("x IN (:a, :b)", false),
            ("attribute_exists(#n.lst[1])", true),
            ("attribute_not_exists(#n.lst[2])", true),
            ("attribute_type(x, :t)", true),
            ("begins_with(#s, :p)", true),
            ("contains(#s, :p)", true),
            ("contains(tags, :p)", false),
            ("size(#n.lst) = :l", true),
            ("size(tags) <= :l AND x >= :a", true),
            ("nothere <> :a", true),
            ("nothere = :a", false),
            ("nothere < :a", false),
            ("x = :s", false),
        ] {
            let c = parse_condition(src, "ConditionExpression", &p)
                .unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(eval(&c, &it), want, "{src}");
        }
        p.check_unused().unwrap();
    }

    #[test]
    fn precedence() {
        let p = ph(
            Json::Null,
            json!({":t": {"BOOL": true}, ":f": {"BOOL": false}}),
        );
        let it = Item::new();
        // NOT binds tighter than AND, AND tighter than OR.
        let c =
            parse_condition(":t = :t OR :t = :f AND :t = :f", "ConditionExpression", &p).unwrap();
        assert!(eval(&c, &it));
        let c = parse_condition("NOT :t = :f AND :t = :f", "ConditionExpression", &p).unwrap();
        assert!(!eval(&c, &it));
    }

    #[test]
    fn parenthesised_operands() {
        let p = ph(
            json!({"#a": "a"}),
            json!({":v": {"N": "1"}, ":w": {"N": "3"}, ":s": {"S": "x"}}),
        );
        let mut it = Item::new();
        it.insert("a".into(), Value::N(Number::parse("2").unwrap()));
        let mut m = Item::new();
        m.insert("b".into(), Value::S("xy".into()));
        it.insert("m".into(), Value::M(m));
        for (src, want) in [
            ("(a) = :v", false),
            ("(#a) > :v", true),
            ("a > (:v)", true),
            ("(a) BETWEEN (:v) AND :w", true),
            ("(a) IN ((:v), :w)", false),
            ("(m).b = :s", false),
            ("begins_with((m.b), :s)", true),
            ("attribute_exists((a))", true),
            ("size((m.b)) = (:v)", false),
            ("((a) > :v) AND (:w > (a))", true),
            ("NOT ((a) = :v)", true),
        ] {
            let c = parse_condition(src, "ConditionExpression", &p)
                .unwrap_or_else(|e| panic!("{src}: {}", e.message));
            assert_eq!(eval(&c, &it), want, "{src}");
        }
    }

    #[test]
    fn errors() {
        let p = ph(
            json!({"#a": "a"}),
            json!({":v": {"N": "1"}, ":w": {"N": "0"}}),
        );
        for (src, msg) in [
            ("a = ", "Syntax error; token: \"<EOF>\""),
            ("a = :nope", "attribute value: :nope"),
            ("#nope = :v", "attribute name: #nope"),
            ("foo(a)", "Invalid function name; function: foo"),
            (
                "a BETWEEN :v AND :w",
                "BETWEEN operator requires upper bound",
            ),
            ("a = :v)", "Syntax error; token: \")\""),
            ("a == :v", "Syntax error"),
            ("a = :v ;", "Syntax error; token: \";\""),
            ("", "can not be empty"),
            ("((a)) = :v", "redundant parentheses"),
            ("a = ((:v))", "redundant parentheses"),
            ("((a = :v))", "redundant parentheses"),
            ("begins_with(((a)), :v)", "redundant parentheses"),
            ("attribute_exists((:v))", "requires a document path"),
            ("(a) :v", "Syntax error; token: \":v\""),
        ] {
            let e = parse_condition(src, "ConditionExpression", &p).unwrap_err();
            assert!(e.message.contains(msg), "{src}: {}", e.message);
            assert_eq!(e.kind, "ValidationException");
        }
        let p = ph(json!({"#a": "a"}), Json::Null);
        parse_projection("b", &p).unwrap();
        let e = p.check_unused().unwrap_err();
        assert!(
            e.message.contains("unused in expressions: keys: {#a}"),
            "{}",
            e.message
        );
    }

    #[test]
    fn updates() {
        let p = ph(
            json!({"#c": "count"}),
            json!({":one": {"N": "1"}, ":l": {"L": [{"S": "z"}]}, ":ss": {"SS": ["b", "c"]},
                   ":d": {"SS": ["a"]}, ":v": {"S": "v"}}),
        );
        let e = parse_update("SET lst = list_append(lst, :l) REMOVE lst[0]", &p).unwrap_err();
        assert!(e.message.contains("overlap"), "{}", e.message);
        let u = parse_update(
            "SET #c = if_not_exists(#c, :one) + :one, lst = list_append(lst, :l), m.k = :v \
             REMOVE gone ADD tags :ss DELETE extra :d",
            &p,
        )
        .unwrap();
        let mut it = item(json!({"lst": {"L": [{"S": "x"}]}, "m": {"M": {}},
            "gone": {"S": "g"}, "tags": {"SS": ["a"]}, "extra": {"SS": ["a"]}}));
        apply_update(&u, &mut it).unwrap();
        assert_eq!(
            crate::value::item_to_json(&it),
            json!({"count": {"N": "2"}, "lst": {"L": [{"S": "x"}, {"S": "z"}]},
                   "m": {"M": {"k": {"S": "v"}}}, "tags": {"SS": ["a", "b", "c"]}})
        );
        let e = parse_update("SET a = :one SET b = :one", &p).unwrap_err();
        assert!(e.message.contains("can only be used once"));
        let e = parse_update("ADD a :v", &p).unwrap_err();
        assert!(
            e.message.contains("operator: ADD, operand type: STRING"),
            "{}",
            e.message
        );
        // Nested SET below a missing parent.
        let u = parse_update("SET nope.k = :v", &p).unwrap();
        let e = apply_update(&u, &mut Item::new()).unwrap_err();
        assert!(e
            .message
            .contains("document path provided in the update expression is invalid"));
    }

    #[test]
    fn remove_several_list_elements() {
        let p = Placeholders::default();
        let u = parse_update("REMOVE l[0], l[2]", &p).unwrap();
        let mut it = item(json!({"l": {"L": [{"N": "0"}, {"N": "1"}, {"N": "2"}, {"N": "3"}]}}));
        apply_update(&u, &mut it).unwrap();
        assert_eq!(
            crate::value::item_to_json(&it),
            json!({"l": {"L": [{"N": "1"}, {"N": "3"}]}})
        );
    }

    #[test]
    fn projections() {
        let p = Placeholders::default();
        let paths = parse_projection("a.b, l[1], l[3], z", &p).unwrap();
        let it = item(json!({"a": {"M": {"b": {"N": "1"}, "c": {"N": "2"}}},
            "l": {"L": [{"N": "0"}, {"N": "1"}, {"N": "2"}, {"N": "3"}]}, "y": {"S": "y"}}));
        assert_eq!(
            crate::value::item_to_json(&project(&paths, &it)),
            json!({"a": {"M": {"b": {"N": "1"}}}, "l": {"L": [{"N": "1"}, {"N": "3"}]}})
        );
        assert!(parse_projection("a, a.b", &p).is_err());
    }

    #[test]
    fn key_conditions() {
        let p = ph(
            json!({"#k": "pk"}),
            json!({":h": {"S": "h"}, ":a": {"N": "1"}, ":b": {"N": "2"}}),
        );
        let k =
            parse_key_condition("#k = :h AND sk BETWEEN :a AND :b", &p, "pk", Some("sk")).unwrap();
        assert!(matches!(k.range, Some(RangeCond::Between(..))));
        let p = ph(Json::Null, json!({":h": {"S": "h"}, ":a": {"N": "1"}}));
        let k = parse_key_condition(":a < sk AND pk = :h", &p, "pk", Some("sk")).unwrap();
        assert_eq!(
            k.range,
            Some(RangeCond::Cmp(
                CmpOp::Gt,
                Value::N(Number::parse("1").unwrap())
            ))
        );
        for (src, msg) in [
            ("sk = :a", "missed key schema element: pk"),
            ("pk = :h OR sk = :a", "OR"),
            ("pk < :h", "not supported"),
            ("pk = :h AND extra = :a", "missed key schema element"),
        ] {
            let e = parse_key_condition(src, &p, "pk", Some("sk")).unwrap_err();
            assert!(e.message.contains(msg), "{src}: {}", e.message);
        }
    }
}
