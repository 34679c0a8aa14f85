//! A YAML/JSON document tree that keeps the line of every node and turns CloudFormation's
//! short-form tags (`!Ref x`, `!Sub ...`, `!GetAtt a.b`) into their long form
//! (`{"Ref": x}`, `{"Fn::Sub": ...}`, `{"Fn::GetAtt": [a, b]}`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A node of the document, with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// 1-based line in the source file (0 when unknown).
    pub line: usize,
}

/// The value of a [`Node`]. Maps keep their source order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer written without quotes.
    Int(i64),
    /// A float written without quotes.
    Float(f64),
    /// Any other scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// A node holding `value` at `line`.
    pub fn new(value: Value, line: usize) -> Node {
        Node { value, line }
    }

    /// A string node.
    pub fn str(s: impl Into<String>, line: usize) -> Node {
        Node::new(Value::Str(s.into()), line)
    }

    /// The value under `key` when this node is a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The entries when this node is a map.
    pub fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The items when this node is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The string when this node is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar rendered as CloudFormation renders it into a string property
    /// (numbers and booleans become their text); `None` for maps, sequences and null.
    pub fn scalar_string(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// When this node is an intrinsic function call (a one-key map whose key is `Ref`,
    /// `Condition` or starts with `Fn::`), its name and argument.
    pub fn intrinsic(&self) -> Option<(&str, &Node)> {
        match &self.value {
            Value::Map(m) if m.len() == 1 => {
                let (k, v) = &m[0];
                if k == "Ref" || k == "Condition" || k.starts_with("Fn::") {
                    Some((k.as_str(), v))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// A short human description of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// Converts to JSON (used by tests and for diagnostics).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(s) => J::Array(s.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Builds a node tree from JSON (no line information).
    pub fn from_json(v: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let value = match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::Seq(a.iter().map(Node::from_json).collect()),
            J::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        };
        Node::new(value, 0)
    }
}

/// A syntax error: message and 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// 1-based line.
    pub line: usize,
}

/// Parses one YAML (or JSON) document into a [`Node`] tree.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(src);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        message: match e.info() {
            // The scanner's own bound on `[`/`{` nesting.
            "recursion limit exceeded" => {
                "the document nests flow maps and lists ([…], {…}) deeper than 255 levels"
                    .to_string()
            }
            other => other.to_string(),
        },
        line: e.marker().line(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node::new(Value::Null, 1)))
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: usize,
        tag: Option<Tag>,
        anchor: usize,
    },
    Map {
        entries: Vec<(String, Node)>,
        key: Option<(String, usize)>,
        line: usize,
        tag: Option<Tag>,
        anchor: usize,
    },
}

/// Deepest nesting of maps and sequences a template may have (CloudFormation templates
/// stay far below; the bound keeps every recursive pass over the tree on a small stack).
pub const MAX_DEPTH: usize = 100;
/// Most nodes a document may expand to, aliases counted at their full size (a "billion
/// laughs" document of nested aliases stops here instead of taking the memory).
pub const MAX_NODES: usize = 1_000_000;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
    /// Nodes made so far, aliases at their full size.
    nodes: usize,
}

/// Nodes in the tree under `n` (itself included).
fn tree_size(n: &Node) -> usize {
    1 + match &n.value {
        Value::Seq(items) => items.iter().map(tree_size).sum(),
        Value::Map(entries) => entries.iter().map(|(_, v)| tree_size(v)).sum(),
        _ => 0,
    }
}

impl Builder {
    fn fail(&mut self, message: String, line: usize) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { message, line });
        }
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let line = node.line;
                    match node.scalar_string() {
                        Some(k) => {
                            if entries.iter().any(|(e, _)| *e == k) {
                                let msg = format!("duplicate key `{k}`");
                                self.fail(msg, line);
                            } else if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                                *key = Some((k, line));
                            }
                        }
                        None => self.fail("a map key must be a plain scalar".into(), line),
                    }
                }
                Some((k, key_line)) => {
                    // A block value starts on the line after its key: errors point at the key.
                    let mut node = node;
                    if matches!(node.value, Value::Map(_) | Value::Seq(_)) {
                        node.line = key_line;
                    }
                    entries.push((k, node))
                }
            },
        }
    }
}

fn plain_scalar(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            let looks_numeric = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
            if looks_numeric {
                if let Ok(i) = s.parse::<i64>() {
                    return Value::Int(i);
                }
                if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) {
                    if let Ok(f) = s.parse::<f64>() {
                        return Value::Float(f);
                    }
                }
            }
            Value::Str(s.to_string())
        }
    }
}

/// Applies a tag: CloudFormation short forms become long-form maps.
fn apply_tag(node: Node, tag: Option<Tag>) -> Result<Node, SyntaxError> {
    let Some(tag) = tag else { return Ok(node) };
    let line = node.line;
    if tag.handle != "!" {
        // Standard tags (`!!str`, `!!int`, …): only `str` changes the value we keep.
        if tag.suffix == "str" {
            if let Some(s) = node.scalar_string() {
                return Ok(Node::str(s, line));
            }
        }
        return Ok(node);
    }
    let name = tag.suffix.as_str();
    let long = match name {
        "Ref" => "Ref".to_string(),
        "Condition" => "Condition".to_string(),
        "Sub" | "GetAtt" | "Join" | "If" | "FindInMap" | "Select" | "Split" | "Base64"
        | "GetAZs" | "ImportValue" | "Equals" | "And" | "Or" | "Not" | "Cidr" | "Transform"
        | "Length" | "ToJsonString" => format!("Fn::{name}"),
        _ => {
            return Err(SyntaxError {
                message: format!("unknown tag `!{name}`"),
                line,
            });
        }
    };
    let arg = if name == "GetAtt" {
        // `!GetAtt Res.Attr` is the string form of `[Res, Attr]`.
        match &node.value {
            Value::Str(s) => match s.split_once('.') {
                Some((r, a)) => Node::new(
                    Value::Seq(vec![Node::str(r, line), Node::str(a, line)]),
                    line,
                ),
                None => {
                    return Err(SyntaxError {
                        message: format!("`!GetAtt {s}` must have the form Resource.Attribute"),
                        line,
                    })
                }
            },
            _ => node,
        }
    } else {
        node
    };
    Ok(Node::new(Value::Map(vec![(long, arg)]), line))
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        if matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..))
            && self.stack.len() >= MAX_DEPTH
        {
            self.fail(
                format!("the document nests maps and lists deeper than {MAX_DEPTH} levels"),
                line,
            );
            return;
        }
        let grows = match &ev {
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => 1,
            Event::Alias(id) => self.anchors.get(id).map_or(0, tree_size),
            _ => 0,
        };
        self.nodes += grows;
        if self.nodes > MAX_NODES {
            self.fail(
                format!(
                    "the document expands to more than {MAX_NODES} values (aliases counted \
                     at their full size)"
                ),
                line,
            );
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let value = if style == TScalarStyle::Plain && tag.is_none() {
                    plain_scalar(&text)
                } else if style == TScalarStyle::Plain && text.is_empty() {
                    Value::Str(String::new())
                } else {
                    Value::Str(text)
                };
                match apply_tag(Node::new(value, line), tag) {
                    Ok(n) => self.push_node(n, anchor),
                    Err(e) => self.error = Some(e),
                }
            }
            Event::SequenceStart(anchor, tag) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                line,
                tag,
                anchor,
            }),
            Event::MappingStart(anchor, tag) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                key: None,
                line,
                tag,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, tag, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        line,
                        tag,
                        anchor,
                    }) => (Node::new(Value::Seq(items), line), tag, anchor),
                    Some(Frame::Map {
                        entries,
                        line,
                        tag,
                        anchor,
                        ..
                    }) => (Node::new(Value::Map(entries), line), tag, anchor),
                    None => return,
                };
                match apply_tag(node, tag) {
                    Ok(n) => self.push_node(n, anchor),
                    Err(e) => self.error = Some(e),
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(n) => self.push_node(n, 0),
                None => self.fail("alias to an unknown anchor".into(), line),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_and_lines() {
        let doc =
            parse("A: !Ref B\nC: !GetAtt D.Arn\nE:\n  - !Sub '${X}'\n  - 12\n  - '12'\n").unwrap();
        assert_eq!(
            doc.get("A").unwrap().to_json(),
            serde_json::json!({"Ref": "B"})
        );
        assert_eq!(
            doc.get("C").unwrap().to_json(),
            serde_json::json!({"Fn::GetAtt": ["D", "Arn"]})
        );
        let e = doc.get("E").unwrap().as_seq().unwrap();
        assert_eq!(e[0].line, 4);
        assert_eq!(e[1].value, Value::Int(12));
        assert_eq!(e[2].value, Value::Str("12".into()));
    }

    #[test]
    fn json_document() {
        let doc = parse("{\n  \"A\": {\"Ref\": \"B\"},\n  \"N\": 3\n}").unwrap();
        assert_eq!(doc.get("N").unwrap().value, Value::Int(3));
        assert_eq!(doc.get("A").unwrap().line, 2);
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused_by_name() {
        let flow = format!("A: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&flow).unwrap_err();
        assert!(
            e.message.contains("deeper than 255 levels"),
            "{}",
            e.message
        );
        let block: String = (0..150)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        let e = parse(&block).unwrap_err();
        assert!(
            e.message.contains("deeper than 100 levels"),
            "{}",
            e.message
        );
        assert!(parse(&format!("A: {}{}\n", "[".repeat(50), "]".repeat(50))).is_ok());
        // Nine levels of ten aliases each: 10^9 values once expanded.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(
            e.message.contains("more than 1000000 values"),
            "{}",
            e.message
        );
    }

    #[test]
    fn duplicate_key_and_bad_tag() {
        assert_eq!(parse("A: 1\nA: 2\n").unwrap_err().line, 2);
        assert!(parse("A: !Nope x\n").unwrap_err().message.contains("!Nope"));
    }
}

#[cfg(test)]
mod json_tests {
    #[test]
    fn json_with_tabs() {
        let doc = super::parse("{\n\t\"A\": {\n\t\t\"B\": [1, \"x\"]\n\t}\n}\n").unwrap();
        assert_eq!(doc.to_json(), serde_json::json!({"A": {"B": [1, "x"]}}));
    }
}
