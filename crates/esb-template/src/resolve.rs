//! Intrinsic functions, conditions, parameters and pseudo parameters.

use std::cell::RefCell;
use std::collections::HashMap;

use indexmap::IndexMap;

use crate::yaml::{Node, Value};
use crate::Error;

/// Where in the template a value is being resolved: used to name the resource, property
/// and line in errors.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub resource: String,
    pub property: String,
}

impl Loc {
    pub fn new(resource: &str, property: &str) -> Loc {
        Loc {
            resource: resource.to_string(),
            property: property.to_string(),
        }
    }

    pub fn child(&self, key: &str) -> Loc {
        let property = if self.property.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.property)
        };
        Loc {
            resource: self.resource.clone(),
            property,
        }
    }

    pub fn err(&self, line: usize, message: impl Into<String>) -> Error {
        Error::invalid(&self.resource, &self.property, line, message)
    }
}

/// A parameter's effective value.
#[derive(Debug, Clone)]
pub(crate) enum ParamValue {
    Str(String),
    List(Vec<String>),
}

/// A resource as written, with Globals already merged into its properties.
#[derive(Debug, Clone)]
pub(crate) struct RawResource {
    pub rtype: String,
    pub props: Node,
    pub line: usize,
    pub condition: Option<(String, usize)>,
    pub metadata: Option<Node>,
}

pub(crate) struct Resolver<'t> {
    pub params: IndexMap<String, ParamValue>,
    pub region: String,
    pub account_id: String,
    pub stack_name: String,
    pub mappings: Option<&'t Node>,
    pub conditions: Option<&'t Node>,
    pub resources: &'t IndexMap<String, RawResource>,
    /// Resources SAM generates (ServerlessRestApi, `<Function>Role`, …): references to
    /// them are valid and resolve to their logical id.
    pub implicit: Vec<String>,
    cond_cache: RefCell<HashMap<String, bool>>,
    cond_stack: RefCell<Vec<String>>,
    name_cache: RefCell<HashMap<String, String>>,
    name_stack: RefCell<Vec<String>>,
}

const PSEUDO: &[&str] = &[
    "AWS::Region",
    "AWS::AccountId",
    "AWS::StackName",
    "AWS::StackId",
    "AWS::Partition",
    "AWS::URLSuffix",
    "AWS::NoValue",
    "AWS::NotificationARNs",
];

/// The property holding a resource type's physical name, if it has one.
fn name_property(rtype: &str) -> Option<&'static str> {
    match rtype {
        "AWS::Serverless::Function" | "AWS::Lambda::Function" => Some("FunctionName"),
        "AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable" => Some("TableName"),
        "AWS::S3::Bucket" => Some("BucketName"),
        "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => Some("LayerName"),
        _ => None,
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A piece of an `Fn::Sub` string.
#[derive(Debug, PartialEq)]
pub(crate) enum SubPart {
    Lit(String),
    Var(String),
}

/// Splits an `Fn::Sub` string into literals and `${Var}` references (`${!X}` is the literal `${X}`).
pub(crate) fn parse_sub(s: &str) -> Result<Vec<SubPart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in Fn::Sub string {s:?}"));
        };
        let inner = &after[..end];
        if let Some(literal) = inner.strip_prefix('!') {
            lit.push_str("${");
            lit.push_str(literal);
            lit.push('}');
        } else {
            let name = inner.trim();
            if name.is_empty() {
                return Err(format!("empty `${{}}` in Fn::Sub string {s:?}"));
            }
            if !lit.is_empty() {
                parts.push(SubPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(SubPart::Var(name.to_string()));
        }
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(SubPart::Lit(lit));
    }
    Ok(parts)
}

impl<'t> Resolver<'t> {
    pub fn new(
        params: IndexMap<String, ParamValue>,
        region: String,
        account_id: String,
        stack_name: String,
        mappings: Option<&'t Node>,
        conditions: Option<&'t Node>,
        resources: &'t IndexMap<String, RawResource>,
    ) -> Self {
        Resolver {
            params,
            region,
            account_id,
            stack_name,
            mappings,
            conditions,
            resources,
            implicit: Vec::new(),
            cond_cache: RefCell::default(),
            cond_stack: RefCell::default(),
            name_cache: RefCell::default(),
            name_stack: RefCell::default(),
        }
    }

    /// Resolves every intrinsic in `n`. `None` means the value is `AWS::NoValue`.
    pub fn resolve(&self, n: &Node, loc: &Loc) -> Result<Option<Node>, Error> {
        if let Some((f, arg)) = n.intrinsic() {
            if f != "Condition" {
                return self.call(f, arg, n.line, loc);
            }
        }
        Ok(Some(match &n.value {
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    if let Some(r) = self.resolve(v, &loc.child(k))? {
                        out.push((k.clone(), r));
                    }
                }
                Node::new(Value::Map(out), n.line)
            }
            Value::Seq(s) => {
                let mut out = Vec::with_capacity(s.len());
                for v in s {
                    if let Some(r) = self.resolve(v, loc)? {
                        out.push(r);
                    }
                }
                Node::new(Value::Seq(out), n.line)
            }
            _ => n.clone(),
        }))
    }

    /// Resolves `n` to a string (numbers and booleans become text).
    pub fn resolve_string(&self, n: &Node, loc: &Loc, what: &str) -> Result<String, Error> {
        let r = self
            .resolve(n, loc)?
            .ok_or_else(|| loc.err(n.line, format!("{what} resolves to AWS::NoValue")))?;
        r.scalar_string().ok_or_else(|| {
            loc.err(
                n.line,
                format!("{what} must be a string, found {}", r.type_name()),
            )
        })
    }

    fn resolve_list(&self, n: &Node, loc: &Loc, what: &str) -> Result<Vec<String>, Error> {
        let r = self
            .resolve(n, loc)?
            .unwrap_or(Node::new(Value::Seq(vec![]), n.line));
        match &r.value {
            Value::Seq(items) => items
                .iter()
                .map(|i| {
                    i.scalar_string().ok_or_else(|| {
                        loc.err(
                            i.line,
                            format!(
                                "{what} must be a list of strings, found {} in it",
                                i.type_name()
                            ),
                        )
                    })
                })
                .collect(),
            _ => Err(loc.err(
                n.line,
                format!("{what} must be a list, found {}", r.type_name()),
            )),
        }
    }

    fn args<'a>(
        &self,
        f: &str,
        arg: &'a Node,
        n: usize,
        line: usize,
        loc: &Loc,
    ) -> Result<&'a [Node], Error> {
        match arg.as_seq() {
            Some(s) if s.len() == n => Ok(s),
            _ => Err(loc.err(line, format!("{f} takes a list of {n} arguments"))),
        }
    }

    fn call(&self, f: &str, arg: &Node, line: usize, loc: &Loc) -> Result<Option<Node>, Error> {
        let s = |v: String| Ok(Some(Node::str(v, line)));
        match f {
            "Ref" => {
                let name = arg.as_str().ok_or_else(|| {
                    loc.err(line, format!("Ref takes a name, found {}", arg.type_name()))
                })?;
                self.reference(name, line, loc)
            }
            "Fn::GetAtt" => {
                let (res, attr) = match &arg.value {
                    Value::Str(x) => match x.split_once('.') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return Err(loc.err(line, "Fn::GetAtt takes [Resource, Attribute]")),
                    },
                    _ => {
                        let a = self.args(f, arg, 2, line, loc)?;
                        (
                            self.resolve_string(&a[0], loc, "Fn::GetAtt resource")?,
                            self.resolve_string(&a[1], loc, "Fn::GetAtt attribute")?,
                        )
                    }
                };
                s(self.get_att(&res, &attr, line, loc)?)
            }
            "Fn::Sub" => {
                let (text, vars) = match &arg.value {
                    Value::Str(t) => (t.as_str(), None),
                    Value::Seq(items) if items.len() == 2 => {
                        let t = items[0].as_str().ok_or_else(|| {
                            loc.err(line, "the first argument of Fn::Sub must be a string")
                        })?;
                        let vars = items[1].as_map().ok_or_else(|| {
                            loc.err(
                                items[1].line,
                                "the second argument of Fn::Sub must be a map",
                            )
                        })?;
                        (t, Some(vars))
                    }
                    _ => {
                        return Err(loc.err(line, "Fn::Sub takes a string or [string, {variables}]"))
                    }
                };
                let parts = parse_sub(text).map_err(|m| loc.err(line, m))?;
                let mut out = String::new();
                for p in parts {
                    match p {
                        SubPart::Lit(l) => out.push_str(&l),
                        SubPart::Var(v) => {
                            if let Some((_, node)) =
                                vars.and_then(|vs| vs.iter().find(|(k, _)| *k == v))
                            {
                                out.push_str(&self.resolve_string(
                                    node,
                                    &loc.child(&v),
                                    "a Fn::Sub variable",
                                )?);
                            } else if let Some((res, attr)) = v.split_once('.') {
                                out.push_str(&self.get_att(res, attr, line, loc)?);
                            } else {
                                let r = self.reference(&v, line, loc)?;
                                match r.and_then(|n| n.scalar_string()) {
                                    Some(x) => out.push_str(&x),
                                    None => {
                                        return Err(loc.err(line, format!("`${{{v}}}` in Fn::Sub is not a string (a list parameter?)")))
                                    }
                                }
                            }
                        }
                    }
                }
                s(out)
            }
            "Fn::Join" => {
                let a = self.args(f, arg, 2, line, loc)?;
                let delim = self.resolve_string(&a[0], loc, "the Fn::Join delimiter")?;
                let items = self.resolve_list(&a[1], loc, "the Fn::Join list")?;
                s(items.join(&delim))
            }
            "Fn::Select" => {
                let a = self.args(f, arg, 2, line, loc)?;
                let idx = self.resolve_string(&a[0], loc, "the Fn::Select index")?;
                let idx: usize = idx.parse().map_err(|_| {
                    loc.err(line, format!("Fn::Select index {idx:?} is not a number"))
                })?;
                let items = self.resolve_list(&a[1], loc, "the Fn::Select list")?;
                let v = items.get(idx).ok_or_else(|| {
                    loc.err(
                        line,
                        format!(
                            "Fn::Select index {idx} is out of range ({} items)",
                            items.len()
                        ),
                    )
                })?;
                s(v.clone())
            }
            "Fn::Split" => {
                let a = self.args(f, arg, 2, line, loc)?;
                let delim = self.resolve_string(&a[0], loc, "the Fn::Split delimiter")?;
                let text = self.resolve_string(&a[1], loc, "the Fn::Split string")?;
                if delim.is_empty() {
                    return Err(loc.err(line, "Fn::Split delimiter is empty"));
                }
                Ok(Some(Node::new(
                    Value::Seq(text.split(&delim).map(|p| Node::str(p, line)).collect()),
                    line,
                )))
            }
            "Fn::If" => {
                let a = self.args(f, arg, 3, line, loc)?;
                let name = a[0].as_str().ok_or_else(|| {
                    loc.err(
                        line,
                        "the first argument of Fn::If must be a condition name",
                    )
                })?;
                let branch = if self.condition(name, line, loc)? {
                    &a[1]
                } else {
                    &a[2]
                };
                self.resolve(branch, loc)
            }
            "Fn::FindInMap" => {
                let a = match arg.as_seq() {
                    Some(x) if x.len() == 3 || x.len() == 4 => x,
                    _ => {
                        return Err(loc.err(
                            line,
                            "Fn::FindInMap takes [MapName, TopLevelKey, SecondLevelKey]",
                        ))
                    }
                };
                let m = self.resolve_string(&a[0], loc, "the map name")?;
                let k1 = self.resolve_string(&a[1], loc, "the top-level key")?;
                let k2 = self.resolve_string(&a[2], loc, "the second-level key")?;
                let found = self
                    .mappings
                    .and_then(|ms| ms.get(&m))
                    .and_then(|mm| mm.get(&k1))
                    .and_then(|x| x.get(&k2));
                match found {
                    Some(v) => Ok(Some(v.clone())),
                    None => match a.get(3).and_then(|d| d.get("DefaultValue")) {
                        Some(d) => self.resolve(d, loc),
                        None => Err(loc.err(
                            line,
                            format!("Fn::FindInMap: no value at Mappings.{m}.{k1}.{k2}"),
                        )),
                    },
                }
            }
            "Fn::Base64" => {
                let text = self.resolve_string(arg, loc, "the Fn::Base64 argument")?;
                s(base64(text.as_bytes()))
            }
            "Fn::GetAZs" => {
                let r = &self.region;
                Ok(Some(Node::new(
                    Value::Seq(
                        ["a", "b", "c"]
                            .iter()
                            .map(|z| Node::str(format!("{r}{z}"), line))
                            .collect(),
                    ),
                    line,
                )))
            }
            "Fn::Length" => {
                let r = self.resolve(arg, loc)?;
                match r.as_ref().and_then(|n| n.as_seq()) {
                    Some(items) => Ok(Some(Node::new(Value::Int(items.len() as i64), line))),
                    None => Err(loc.err(line, "Fn::Length takes a list")),
                }
            }
            "Fn::ToJsonString" => {
                let r = self
                    .resolve(arg, loc)?
                    .unwrap_or(Node::new(Value::Null, line));
                s(r.to_json().to_string())
            }
            "Fn::Equals" | "Fn::And" | "Fn::Or" | "Fn::Not" => {
                Err(loc.err(line, format!("{f} may only be used in Conditions")))
            }
            _ => Err(loc.err(line, format!("{f} is not supported by esb"))),
        }
    }

    /// `Ref` of a parameter, pseudo parameter or resource.
    pub fn reference(&self, name: &str, line: usize, loc: &Loc) -> Result<Option<Node>, Error> {
        if let Some(p) = self.params.get(name) {
            return Ok(Some(match p {
                ParamValue::Str(s) => Node::str(s.clone(), line),
                ParamValue::List(l) => Node::new(
                    Value::Seq(l.iter().map(|x| Node::str(x.clone(), line)).collect()),
                    line,
                ),
            }));
        }
        let pseudo = match name {
            "AWS::Region" => self.region.clone(),
            "AWS::AccountId" => self.account_id.clone(),
            "AWS::StackName" => self.stack_name.clone(),
            "AWS::StackId" => format!(
                "arn:aws:cloudformation:{}:{}:stack/{}/00000000-0000-0000-0000-000000000000",
                self.region, self.account_id, self.stack_name
            ),
            "AWS::Partition" => "aws".into(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            "AWS::NoValue" => return Ok(None),
            "AWS::NotificationARNs" => return Ok(Some(Node::new(Value::Seq(vec![]), line))),
            _ => {
                if let Some(res) = self.resources.get(name) {
                    let physical = self.resource_name(name, loc, line)?;
                    return Ok(Some(Node::str(
                        match res.rtype.as_str() {
                            "AWS::Serverless::LayerVersion" | "AWS::Lambda::LayerVersion" => {
                                format!(
                                    "arn:aws:lambda:{}:{}:layer:{physical}:1",
                                    self.region, self.account_id
                                )
                            }
                            _ => physical,
                        },
                        line,
                    )));
                }
                if self.is_implicit(name) {
                    return Ok(Some(Node::str(name, line)));
                }
                return Err(loc.err(
                    line,
                    format!("Ref to `{name}`, which is neither a parameter nor a resource"),
                ));
            }
        };
        Ok(Some(Node::str(pseudo, line)))
    }

    /// Whether `name` is a resource SAM generates, or `Function.Alias` / `Function.Version`.
    fn is_implicit(&self, name: &str) -> bool {
        if self.implicit.iter().any(|i| i == name) {
            return true;
        }
        match name.split_once('.') {
            Some((f, "Alias" | "Version")) => self
                .resources
                .get(f)
                .is_some_and(|r| r.rtype == "AWS::Serverless::Function"),
            _ => false,
        }
    }

    /// The physical name esb gives a resource: its name property, else its logical id
    /// (lower-cased for buckets, whose names must be lower case).
    pub fn resource_name(&self, id: &str, from: &Loc, line: usize) -> Result<String, Error> {
        if let Some(n) = self.name_cache.borrow().get(id) {
            return Ok(n.clone());
        }
        let res = self
            .resources
            .get(id)
            .ok_or_else(|| from.err(0, format!("no resource `{id}`")))?;
        if self.name_stack.borrow().iter().any(|x| x == id) {
            let mut chain: Vec<String> = self.name_stack.borrow().clone();
            chain.push(id.to_string());
            return Err(from.err(line, format!("circular reference: {}", chain.join(" -> "))));
        }
        let explicit =
            match name_property(&res.rtype).and_then(|p| res.props.get(p).map(|n| (p, n))) {
                Some((prop, node)) => {
                    let loc = Loc::new(id, prop);
                    self.name_stack.borrow_mut().push(id.to_string());
                    let r = self.resolve(node, &loc);
                    self.name_stack.borrow_mut().pop();
                    match r? {
                        // `!If [C, name, !Ref AWS::NoValue]`: no explicit name.
                        None => None,
                        Some(v) => Some(v.scalar_string().ok_or_else(|| {
                            loc.err(
                                node.line,
                                format!("{prop} must be a string, found {}", v.type_name()),
                            )
                        })?),
                    }
                }
                None => None,
            };
        let name = match explicit {
            Some(n) => n,
            None if res.rtype == "AWS::S3::Bucket" => id.to_ascii_lowercase(),
            None => id.to_string(),
        };
        self.name_cache
            .borrow_mut()
            .insert(id.to_string(), name.clone());
        Ok(name)
    }

    fn get_att(&self, id: &str, attr: &str, line: usize, loc: &Loc) -> Result<String, Error> {
        let Some(res) = self.resources.get(id) else {
            if self.is_implicit(id) {
                return Ok(format!("{id}.{attr}"));
            }
            return Err(loc.err(
                line,
                format!("Fn::GetAtt of `{id}`, which is not a resource"),
            ));
        };
        let (r, a) = (&self.region, &self.account_id);
        let name = || self.resource_name(id, loc, line);
        Ok(match (res.rtype.as_str(), attr) {
            ("AWS::Serverless::Function" | "AWS::Lambda::Function", "Arn") => {
                format!("arn:aws:lambda:{r}:{a}:function:{}", name()?)
            }
            ("AWS::DynamoDB::Table" | "AWS::Serverless::SimpleTable", "Arn") => {
                format!("arn:aws:dynamodb:{r}:{a}:table/{}", name()?)
            }
            ("AWS::DynamoDB::Table", "StreamArn") => {
                format!(
                    "arn:aws:dynamodb:{r}:{a}:table/{}/stream/1970-01-01T00:00:00.000",
                    name()?
                )
            }
            ("AWS::S3::Bucket", "Arn") => format!("arn:aws:s3:::{}", name()?),
            ("AWS::S3::Bucket", "DomainName") => format!("{}.s3.amazonaws.com", name()?),
            ("AWS::S3::Bucket", "RegionalDomainName") => {
                format!("{}.s3.{r}.amazonaws.com", name()?)
            }
            ("AWS::S3::Bucket", "WebsiteURL") => {
                format!("http://{}.s3-website-{r}.amazonaws.com", name()?)
            }
            ("AWS::IAM::Role", "Arn") => format!("arn:aws:iam::{a}:role/{id}"),
            _ => format!("{id}.{attr}"),
        })
    }

    /// Evaluates the named condition.
    pub fn condition(&self, name: &str, line: usize, loc: &Loc) -> Result<bool, Error> {
        if let Some(v) = self.cond_cache.borrow().get(name) {
            return Ok(*v);
        }
        let node = self
            .conditions
            .and_then(|c| c.get(name))
            .ok_or_else(|| loc.err(line, format!("no condition named `{name}`")))?;
        if self.cond_stack.borrow().iter().any(|c| c == name) {
            return Err(loc.err(line, format!("condition `{name}` refers to itself")));
        }
        self.cond_stack.borrow_mut().push(name.to_string());
        let cloc = Loc::new("Conditions", name);
        let r = self.eval_condition(node, &cloc);
        self.cond_stack.borrow_mut().pop();
        let v = r?;
        self.cond_cache.borrow_mut().insert(name.to_string(), v);
        Ok(v)
    }

    fn eval_condition(&self, n: &Node, loc: &Loc) -> Result<bool, Error> {
        let Some((f, arg)) = n.intrinsic() else {
            return match &n.value {
                Value::Bool(b) => Ok(*b),
                Value::Str(s) if s == "true" || s == "false" => Ok(s == "true"),
                _ => Err(loc.err(
                    n.line,
                    "a condition must be Fn::Equals, Fn::And, Fn::Or, Fn::Not or Condition",
                )),
            };
        };
        let items = || {
            arg.as_seq()
                .ok_or_else(|| loc.err(n.line, format!("{f} takes a list")))
        };
        match f {
            "Condition" => {
                let name = arg
                    .as_str()
                    .ok_or_else(|| loc.err(n.line, "Condition takes a name"))?;
                self.condition(name, n.line, loc)
            }
            "Fn::Equals" => {
                let a = self.args(f, arg, 2, n.line, loc)?;
                let x = self.resolve(&a[0], loc)?.map(|v| v.to_json());
                let y = self.resolve(&a[1], loc)?.map(|v| v.to_json());
                let norm = |v: Option<serde_json::Value>| match v {
                    Some(serde_json::Value::String(s)) => serde_json::Value::String(s),
                    Some(serde_json::Value::Number(n)) => serde_json::Value::String(n.to_string()),
                    Some(serde_json::Value::Bool(b)) => serde_json::Value::String(b.to_string()),
                    other => other.unwrap_or(serde_json::Value::Null),
                };
                Ok(norm(x) == norm(y))
            }
            "Fn::And" => {
                let mut all = true;
                for c in items()? {
                    all &= self.eval_condition(c, loc)?;
                }
                Ok(all)
            }
            "Fn::Or" => {
                let mut any = false;
                for c in items()? {
                    any |= self.eval_condition(c, loc)?;
                }
                Ok(any)
            }
            "Fn::Not" => {
                let a = self.args(f, arg, 1, n.line, loc)?;
                Ok(!self.eval_condition(&a[0], loc)?)
            }
            _ => Err(loc.err(n.line, format!("{f} cannot be used in a condition"))),
        }
    }

    /// Checks that every `Ref`, `Fn::GetAtt` and `${...}` in `n` names something that
    /// exists, so a dangling reference is reported even in properties esb never reads.
    pub fn check_references(&self, n: &Node, loc: &Loc) -> Result<(), Error> {
        let known = |name: &str| {
            self.params.contains_key(name)
                || PSEUDO.contains(&name)
                || self.resources.contains_key(name)
                || self.is_implicit(name)
        };
        let known_resource =
            |name: &str| self.resources.contains_key(name) || self.is_implicit(name);
        if let Some((f, arg)) = n.intrinsic() {
            match f {
                "Ref" => {
                    if let Some(name) = arg.as_str() {
                        if !known(name) {
                            return Err(loc.err(
                                n.line,
                                format!(
                                    "Ref to `{name}`, which is neither a parameter nor a resource"
                                ),
                            ));
                        }
                    }
                    return Ok(());
                }
                "Fn::GetAtt" => {
                    let res = match &arg.value {
                        Value::Str(s) => s.split('.').next().map(str::to_string),
                        Value::Seq(items) => {
                            items.first().and_then(|i| i.as_str()).map(str::to_string)
                        }
                        _ => None,
                    };
                    if let Some(res) = res {
                        if !known_resource(&res) {
                            return Err(loc.err(
                                n.line,
                                format!("Fn::GetAtt of `{res}`, which is not a resource"),
                            ));
                        }
                    }
                    return Ok(());
                }
                "Fn::Sub" => {
                    let (text, vars) = match &arg.value {
                        Value::Str(t) => (Some(t.as_str()), None),
                        Value::Seq(items) if items.len() == 2 => {
                            (items[0].as_str(), items[1].as_map())
                        }
                        _ => (None, None),
                    };
                    if let Some(text) = text {
                        for part in parse_sub(text).map_err(|m| loc.err(n.line, m))? {
                            if let SubPart::Var(v) = part {
                                if vars.is_some_and(|vs| vs.iter().any(|(k, _)| *k == v)) {
                                    continue;
                                }
                                let head = v.split('.').next().unwrap_or("");
                                let ok = if v.contains('.') {
                                    known_resource(head) || known(&v)
                                } else {
                                    known(&v)
                                };
                                if !ok {
                                    return Err(loc.err(n.line, format!("`${{{v}}}` in Fn::Sub names neither a parameter nor a resource")));
                                }
                            }
                        }
                    }
                    if let Some(vs) = vars {
                        for (k, v) in vs {
                            self.check_references(v, &loc.child(k))?;
                        }
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        match &n.value {
            Value::Map(m) => m
                .iter()
                .try_for_each(|(k, v)| self.check_references(v, &loc.child(k))),
            Value::Seq(s) => s.iter().try_for_each(|v| self.check_references(v, loc)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_parsing() {
        assert_eq!(
            parse_sub("a-${X}-${!Y}-${R.Arn}").unwrap(),
            vec![
                SubPart::Lit("a-".into()),
                SubPart::Var("X".into()),
                SubPart::Lit("-${Y}-".into()),
                SubPart::Var("R.Arn".into())
            ]
        );
        assert!(parse_sub("${oops").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
