//! The SAM / CloudFormation template model.
//!
//! [`load`] reads a `template.yaml` (YAML or JSON, short or long intrinsic forms), applies
//! parameter overrides (from `generator.yml` or `--parameter-overrides`), merges
//! `Globals.Function` into every `AWS::Serverless::Function` as SAM does, resolves the
//! intrinsic functions, and returns a [`Template`]: functions, layers, tables and buckets.
//! Resource types esb does not act on are listed in [`Template::ignored`]. Every error names
//! the resource, the property and the line.

mod extract;
mod globals;
pub mod model;
mod resolve;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

pub use model::*;

/// What went wrong, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The template file, when known.
    pub file: Option<PathBuf>,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// The resource (logical id), or the section (`Parameters`, `Globals`, …).
    pub resource: Option<String>,
    /// The property path within the resource (e.g. `Environment.Variables.TABLE`).
    pub property: Option<String>,
    /// The message.
    pub message: String,
}

impl Error {
    pub(crate) fn invalid(
        resource: &str,
        property: &str,
        line: usize,
        message: impl Into<String>,
    ) -> Error {
        Error {
            file: None,
            line,
            resource: (!resource.is_empty()).then(|| resource.to_string()),
            property: (!property.is_empty()).then(|| property.to_string()),
            message: message.into(),
        }
    }

    pub(crate) fn plain(line: usize, message: impl Into<String>) -> Error {
        Error {
            file: None,
            line,
            resource: None,
            property: None,
            message: message.into(),
        }
    }

    fn in_file(mut self, file: &Path) -> Error {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => write!(f, "template")?,
        }
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": ")?;
        if let Some(r) = &self.resource {
            write!(f, "resource {r}")?;
            if let Some(p) = &self.property {
                write!(f, ", property {p}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

/// Values that replace template defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Parameter values by name.
    pub parameters: IndexMap<String, String>,
    /// `AWS::Region` (default `ap-northeast-1`).
    pub region: Option<String>,
    /// `AWS::AccountId` (default `000000000000`).
    pub account_id: Option<String>,
    /// `AWS::StackName` (default `esb`).
    pub stack_name: Option<String>,
}

impl Overrides {
    /// Adds `other`'s values over these (later wins): e.g. generator.yml, then the
    /// command line.
    pub fn merge(mut self, other: Overrides) -> Overrides {
        self.parameters.extend(other.parameters);
        self.region = other.region.or(self.region);
        self.account_id = other.account_id.or(self.account_id);
        self.stack_name = other.stack_name.or(self.stack_name);
        self
    }
}

/// Reads and resolves the template at `path`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Template, Error> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| Error::plain(0, format!("cannot read the template: {e}")).in_file(path))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    let mut t = parse_str(&src, &base, overrides).map_err(|e| e.in_file(path))?;
    t.path = Some(path.to_path_buf());
    Ok(t)
}

/// Parses and resolves template text; relative code paths are resolved against `base_dir`.
pub fn parse_str(src: &str, base_dir: &Path, overrides: &Overrides) -> Result<Template, Error> {
    let root = yaml::parse(src)
        .map_err(|e| Error::plain(e.line, format!("syntax error: {}", e.message)))?;
    extract::template(&root, base_dir, overrides)
}

/// Reads the `parameters:` map (and optional `stack_name:`, `region:`) of a `generator.yml`.
pub fn load_generator(path: &Path) -> Result<Overrides, Error> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| Error::plain(0, format!("cannot read generator file: {e}")).in_file(path))?;
    let root = yaml::parse(&src)
        .map_err(|e| Error::plain(e.line, format!("syntax error: {}", e.message)).in_file(path))?;
    let mut o = Overrides::default();
    if let Some(p) = root.get("parameters") {
        let m = p.as_map().ok_or_else(|| {
            Error::invalid(
                "parameters",
                "",
                p.line,
                "`parameters` must be a map of NAME: value",
            )
            .in_file(path)
        })?;
        for (k, v) in m {
            let s = v.scalar_string().ok_or_else(|| {
                Error::invalid(
                    "parameters",
                    k,
                    v.line,
                    format!("must be a string, found {}", v.type_name()),
                )
                .in_file(path)
            })?;
            o.parameters.insert(k.clone(), s);
        }
    }
    for (key, slot) in [
        ("stack_name", &mut o.stack_name),
        ("region", &mut o.region),
        ("account_id", &mut o.account_id),
    ] {
        if let Some(v) = root.get(key) {
            *slot = Some(v.scalar_string().ok_or_else(|| {
                Error::invalid(key, "", v.line, "must be a string").in_file(path)
            })?);
        }
    }
    Ok(o)
}

/// Parses `--parameter-overrides` text: `Key=Value Key2=Value2` or the CloudFormation form
/// `ParameterKey=Key,ParameterValue=Value ...`. Values may be quoted.
pub fn parse_parameter_overrides(text: &str) -> Result<IndexMap<String, String>, Error> {
    let mut out = IndexMap::new();
    for word in split_words(text)? {
        if let Some(rest) = word.strip_prefix("ParameterKey=") {
            let (k, v) = rest.split_once(",ParameterValue=").ok_or_else(|| {
                Error::plain(
                    0,
                    format!("parameter override {word:?} lacks ,ParameterValue="),
                )
            })?;
            out.insert(k.to_string(), v.to_string());
        } else {
            let (k, v) = word.split_once('=').ok_or_else(|| {
                Error::plain(0, format!("parameter override {word:?} is not Key=Value"))
            })?;
            if k.is_empty() {
                return Err(Error::plain(
                    0,
                    format!("parameter override {word:?} has an empty name"),
                ));
            }
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

fn split_words(text: &str) -> Result<Vec<String>, Error> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(Error::plain(0, "unterminated quote in parameter overrides"));
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_overrides_forms() {
        let m =
            parse_parameter_overrides("Stage=prod  Name='a b' ParameterKey=X,ParameterValue=1,2")
                .unwrap();
        assert_eq!(m["Stage"], "prod");
        assert_eq!(m["Name"], "a b");
        assert_eq!(m["X"], "1,2");
        assert!(parse_parameter_overrides("novalue").is_err());
    }
}

/// A template parameter as declared (for `esb init`, which asks for each value).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParameterSpec {
    /// Name.
    pub name: String,
    /// `Type`.
    pub param_type: String,
    /// `Default`, as text (lists joined with commas).
    pub default: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `AllowedValues`.
    pub allowed_values: Vec<String>,
}

/// The parameters declared by the template at `path`, in order.
pub fn parameter_specs(path: &Path) -> Result<Vec<ParameterSpec>, Error> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| Error::plain(0, format!("cannot read the template: {e}")).in_file(path))?;
    let root = yaml::parse(&src)
        .map_err(|e| Error::plain(e.line, format!("syntax error: {}", e.message)).in_file(path))?;
    let mut out = Vec::new();
    for (name, def) in root
        .get("Parameters")
        .and_then(yaml::Node::as_map)
        .unwrap_or_default()
    {
        let text = |k: &str| {
            def.get(k).and_then(|n| match &n.value {
                yaml::Value::Seq(items) => Some(
                    items
                        .iter()
                        .filter_map(yaml::Node::scalar_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => n.scalar_string(),
            })
        };
        out.push(ParameterSpec {
            name: name.clone(),
            param_type: text("Type").unwrap_or_else(|| "String".into()),
            default: text("Default"),
            description: text("Description"),
            allowed_values: def
                .get("AllowedValues")
                .and_then(yaml::Node::as_seq)
                .map(|s| s.iter().filter_map(yaml::Node::scalar_string).collect())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Renders a `generator.yml` that [`load_generator`] reads back: `stack_name` and the
/// `parameters:` map (values quoted as YAML strings).
pub fn render_generator(stack_name: &str, parameters: &IndexMap<String, String>) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut out = String::from("# Written by `esb init`: values for the template's parameters.\n");
    out.push_str(&format!("stack_name: {}\n", q(stack_name)));
    if parameters.is_empty() {
        out.push_str("parameters: {}\n");
    } else {
        out.push_str("parameters:\n");
        for (k, v) in parameters {
            out.push_str(&format!("  {k}: {}\n", q(v)));
        }
    }
    out
}
