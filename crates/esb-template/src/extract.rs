//! From the document tree to the [`Template`] model.

use std::path::Path;

use indexmap::IndexMap;

use crate::globals;
use crate::model::*;
use crate::resolve::{Loc, ParamValue, RawResource, Resolver};
use crate::yaml::{Node, Value};
use crate::{Error, Overrides};

const DEFAULT_REGION: &str = "ap-northeast-1";
const DEFAULT_ACCOUNT: &str = "000000000000";
const DEFAULT_STACK: &str = "esb";

fn section<'a>(root: &'a Node, name: &str) -> Result<Option<&'a Node>, Error> {
    match root.get(name) {
        None => Ok(None),
        Some(n) if matches!(n.value, Value::Null) => Ok(None),
        Some(n) if n.as_map().is_some() => Ok(Some(n)),
        Some(n) => Err(Error::invalid(
            name,
            "",
            n.line,
            format!("`{name}` must be a map, found {}", n.type_name()),
        )),
    }
}

pub(crate) fn template(
    root: &Node,
    base_dir: &Path,
    overrides: &Overrides,
) -> Result<Template, Error> {
    if root.as_map().is_none() {
        return Err(Error::plain(
            root.line,
            "a template must be a map with a Resources section",
        ));
    }
    let mut warnings = Vec::new();
    let params = parameters(section(root, "Parameters")?, overrides, &mut warnings)?;
    let resources_node = section(root, "Resources")?
        .ok_or_else(|| Error::plain(root.line, "the template has no Resources section"))?;
    let globals_node = section(root, "Globals")?;
    let function_globals = globals_node.and_then(|g| g.get("Function"));
    if let Some(fg) = function_globals {
        globals::validate("Function", fg, globals::FUNCTION_GLOBALS)?;
    }
    let table_globals = globals_node.and_then(|g| g.get("SimpleTable"));
    if let Some(tg) = table_globals {
        globals::validate("SimpleTable", tg, globals::SIMPLE_TABLE_GLOBALS)?;
    }

    // Raw resources with Globals merged.
    let mut raw: IndexMap<String, RawResource> = IndexMap::new();
    for (id, r) in resources_node.as_map().unwrap_or_default() {
        let loc = Loc::new(id, "");
        if r.as_map().is_none() {
            return Err(loc.err(
                r.line,
                format!("a resource must be a map, found {}", r.type_name()),
            ));
        }
        let rtype = r
            .get("Type")
            .ok_or_else(|| loc.err(r.line, "the resource has no Type"))?
            .as_str()
            .ok_or_else(|| Loc::new(id, "Type").err(r.line, "Type must be a string"))?
            .to_string();
        let empty = Node::new(Value::Map(vec![]), r.line);
        let props = match r.get("Properties") {
            None => empty,
            Some(p) if matches!(p.value, Value::Null) => empty,
            Some(p) if p.as_map().is_some() => p.clone(),
            Some(p) => {
                return Err(Loc::new(id, "Properties").err(
                    p.line,
                    format!("Properties must be a map, found {}", p.type_name()),
                ))
            }
        };
        let g = match rtype.as_str() {
            "AWS::Serverless::Function" => function_globals,
            "AWS::Serverless::SimpleTable" => table_globals,
            _ => None,
        };
        let props = match g {
            Some(g) => globals::merge(g, &props),
            None => props,
        };
        let condition = match r.get("Condition") {
            Some(c) => Some((
                c.as_str()
                    .ok_or_else(|| {
                        Loc::new(id, "Condition").err(c.line, "Condition must be a name")
                    })?
                    .to_string(),
                c.line,
            )),
            None => None,
        };
        raw.insert(
            id.clone(),
            RawResource {
                rtype,
                props,
                line: r.line,
                condition,
                metadata: r.get("Metadata").cloned(),
            },
        );
    }

    let mut implicit = vec![
        "ServerlessRestApi".to_string(),
        "ServerlessHttpApi".to_string(),
    ];
    for (id, r) in &raw {
        if r.rtype == "AWS::Serverless::Function" {
            implicit.push(format!("{id}Role"));
            if let Some(alias) = r.props.get("AutoPublishAlias").and_then(Node::as_str) {
                implicit.push(format!("{id}Alias{alias}"));
            }
        }
    }
    let mut rv = Resolver::new(
        params.clone(),
        overrides
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.into()),
        overrides
            .account_id
            .clone()
            .unwrap_or_else(|| DEFAULT_ACCOUNT.into()),
        overrides
            .stack_name
            .clone()
            .unwrap_or_else(|| DEFAULT_STACK.into()),
        section(root, "Mappings")?,
        section(root, "Conditions")?,
        &raw,
    );
    rv.implicit = implicit;

    // Every reference must name something, in any property.
    for (id, r) in &raw {
        rv.check_references(&r.props, &Loc::new(id, ""))?;
    }
    if let Some(outputs) = section(root, "Outputs")? {
        rv.check_references(outputs, &Loc::new("Outputs", ""))?;
    }
    if let Some(conds) = section(root, "Conditions")? {
        for (name, c) in conds.as_map().unwrap_or_default() {
            rv.check_references(c, &Loc::new("Conditions", name))?;
        }
    }

    let mut t = Template {
        base_dir: base_dir.to_path_buf(),
        description: root.get("Description").and_then(Node::scalar_string),
        parameters: params
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    match v {
                        ParamValue::Str(s) => s.clone(),
                        ParamValue::List(l) => l.join(","),
                    },
                )
            })
            .collect(),
        ..Template::default()
    };

    for (id, r) in &raw {
        if let Some((cond, line)) = &r.condition {
            if !rv.condition(cond, *line, &Loc::new(id, "Condition"))? {
                t.ignored.push(IgnoredResource {
                    logical_id: id.clone(),
                    resource_type: r.rtype.clone(),
                    reason: format!("condition {cond} is false"),
                });
                continue;
            }
        }
        let p = Props {
            rv: &rv,
            id,
            res: r,
        };
        match r.rtype.as_str() {
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                t.functions.push(function(&p, base_dir, &mut warnings)?)
            }
            "AWS::Serverless::LayerVersion" => t.layers.push(layer(&p, base_dir)?),
            "AWS::DynamoDB::Table" => t.tables.push(dynamodb_table(&p)?),
            "AWS::Serverless::SimpleTable" => t.tables.push(simple_table(&p)?),
            "AWS::S3::Bucket" => t.buckets.push(bucket(&p)?),
            other => t.ignored.push(IgnoredResource {
                logical_id: id.clone(),
                resource_type: other.to_string(),
                reason: "resource type not handled by esb".into(),
            }),
        }
    }
    t.warnings = warnings;
    Ok(t)
}

fn parameters(
    node: Option<&Node>,
    overrides: &Overrides,
    warnings: &mut Vec<String>,
) -> Result<IndexMap<String, ParamValue>, Error> {
    let mut out = IndexMap::new();
    let entries = node.and_then(Node::as_map).unwrap_or_default();
    for (name, def) in entries {
        let loc = Loc::new("Parameters", name);
        if def.as_map().is_none() {
            return Err(loc.err(
                def.line,
                format!("a parameter must be a map, found {}", def.type_name()),
            ));
        }
        let ptype = def
            .get("Type")
            .and_then(Node::as_str)
            .ok_or_else(|| loc.err(def.line, "the parameter has no Type"))?;
        let value = match overrides.parameters.get(name) {
            Some(v) => v.clone(),
            None => match def.get("Default") {
                Some(d) => match &d.value {
                    Value::Seq(items) => items.iter().filter_map(Node::scalar_string).collect::<Vec<_>>().join(","),
                    _ => d
                        .scalar_string()
                        .ok_or_else(|| loc.err(d.line, format!("Default must be a string, found {}", d.type_name())))?,
                },
                None => {
                    return Err(loc.err(
                        def.line,
                        "no value: give the parameter a Default, or set it in generator.yml (parameters:) or --parameter-overrides",
                    ))
                }
            },
        };
        if let Some(allowed) = def.get("AllowedValues").and_then(Node::as_seq) {
            let allowed: Vec<String> = allowed.iter().filter_map(Node::scalar_string).collect();
            if !allowed.contains(&value) {
                return Err(loc.err(
                    def.line,
                    format!("value {value:?} is not one of AllowedValues {allowed:?}"),
                ));
            }
        }
        let len = value.chars().count();
        if let Some(min) = def
            .get("MinLength")
            .and_then(Node::scalar_string)
            .and_then(|s| s.parse::<usize>().ok())
        {
            if len < min {
                return Err(loc.err(
                    def.line,
                    format!("value {value:?} is shorter than MinLength {min}"),
                ));
            }
        }
        if let Some(max) = def
            .get("MaxLength")
            .and_then(Node::scalar_string)
            .and_then(|s| s.parse::<usize>().ok())
        {
            if len > max {
                return Err(loc.err(
                    def.line,
                    format!("value {value:?} is longer than MaxLength {max}"),
                ));
            }
        }
        let pv = if ptype == "CommaDelimitedList" || ptype.starts_with("List<") {
            ParamValue::List(if value.is_empty() {
                vec![]
            } else {
                value.split(',').map(|s| s.trim().to_string()).collect()
            })
        } else {
            if ptype == "Number" && value.parse::<f64>().is_err() {
                return Err(loc.err(def.line, format!("value {value:?} is not a Number")));
            }
            ParamValue::Str(value)
        };
        out.insert(name.clone(), pv);
    }
    for k in overrides.parameters.keys() {
        if !out.contains_key(k) {
            warnings.push(format!(
                "parameter override {k} does not match any template parameter"
            ));
        }
    }
    Ok(out)
}

/// Typed, resolved access to one resource's properties.
struct Props<'a, 't> {
    rv: &'a Resolver<'t>,
    id: &'a str,
    res: &'a RawResource,
}

impl Props<'_, '_> {
    fn loc(&self, prop: &str) -> Loc {
        Loc::new(self.id, prop)
    }

    fn raw(&self, prop: &str) -> Option<&Node> {
        self.res.props.get(prop)
    }

    /// The property with intrinsics resolved (`None` if absent or `AWS::NoValue`).
    fn get(&self, prop: &str) -> Result<Option<Node>, Error> {
        match self.raw(prop) {
            None => Ok(None),
            Some(n) => self.rv.resolve(n, &self.loc(prop)),
        }
    }

    fn string(&self, prop: &str) -> Result<Option<String>, Error> {
        self.get(prop)?
            .map(|n| string_of(&n, &self.loc(prop)))
            .transpose()
    }

    fn u32(&self, prop: &str) -> Result<Option<u32>, Error> {
        self.get(prop)?
            .map(|n| u32_of(&n, &self.loc(prop)))
            .transpose()
    }

    fn string_list(&self, prop: &str) -> Result<Vec<String>, Error> {
        match self.get(prop)? {
            None => Ok(vec![]),
            Some(n) => string_list_of(&n, &self.loc(prop)),
        }
    }

    fn err(&self, prop: &str, line: usize, msg: impl Into<String>) -> Error {
        self.loc(prop).err(line, msg)
    }

    fn line_of(&self, prop: &str) -> usize {
        self.raw(prop).map_or(self.res.line, |n| n.line)
    }
}

fn string_of(n: &Node, loc: &Loc) -> Result<String, Error> {
    n.scalar_string().ok_or_else(|| {
        loc.err(
            n.line,
            format!("expected a string, found {}", n.type_name()),
        )
    })
}

fn u32_of(n: &Node, loc: &Loc) -> Result<u32, Error> {
    let bad = || {
        loc.err(
            n.line,
            format!("expected a whole number, found {}", describe(n)),
        )
    };
    match &n.value {
        Value::Int(i) => u32::try_from(*i).map_err(|_| bad()),
        Value::Str(s) => s.trim().parse::<u32>().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn bool_of(n: &Node, loc: &Loc) -> Result<bool, Error> {
    match &n.value {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(loc.err(
            n.line,
            format!("expected true or false, found {}", describe(n)),
        )),
    }
}

fn string_list_of(n: &Node, loc: &Loc) -> Result<Vec<String>, Error> {
    match &n.value {
        Value::Seq(items) => items.iter().map(|i| string_of(i, loc)).collect(),
        _ => Err(loc.err(
            n.line,
            format!("expected a list of strings, found {}", n.type_name()),
        )),
    }
}

fn describe(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => format!("{s:?}"),
        _ => n.type_name().to_string(),
    }
}

fn map_of<'n>(n: &'n Node, loc: &Loc) -> Result<&'n [(String, Node)], Error> {
    n.as_map()
        .ok_or_else(|| loc.err(n.line, format!("expected a map, found {}", n.type_name())))
}

fn local_code(uri: &str, base_dir: &Path) -> Code {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        return Code::S3 {
            bucket: bucket.into(),
            key: key.into(),
        };
    }
    let path = base_dir.join(uri);
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let is_zip = path.is_file()
        || Path::new(uri)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if is_zip {
        return Code::Zip {
            uri: uri.to_string(),
            path,
        };
    }
    Code::Dir {
        uri: uri.to_string(),
        path,
    }
}

fn code_uri(p: &Props, prop: &str, base_dir: &Path) -> Result<Option<Code>, Error> {
    let Some(n) = p.get(prop)? else {
        return Ok(None);
    };
    let loc = p.loc(prop);
    Ok(Some(match &n.value {
        Value::Map(_) => {
            let bucket = n
                .get("Bucket")
                .ok_or_else(|| loc.err(n.line, "an S3 location needs Bucket and Key"))?;
            let key = n
                .get("Key")
                .ok_or_else(|| loc.err(n.line, "an S3 location needs Bucket and Key"))?;
            Code::S3 {
                bucket: string_of(bucket, &loc.child("Bucket"))?,
                key: string_of(key, &loc.child("Key"))?,
            }
        }
        _ => local_code(&string_of(&n, &loc)?, base_dir),
    }))
}

fn function(p: &Props, base_dir: &Path, warnings: &mut Vec<String>) -> Result<Function, Error> {
    let serverless = p.res.rtype == "AWS::Serverless::Function";
    let name =
        p.rv.resource_name(p.id, &p.loc("FunctionName"), p.line_of("FunctionName"))?;
    let package_type = p.string("PackageType")?.unwrap_or_else(|| "Zip".into());
    let code = match package_type.as_str() {
        "Image" => {
            let uri = if serverless {
                p.string("ImageUri")?
            } else {
                p.get("Code")?
                    .and_then(|c| c.get("ImageUri").and_then(Node::scalar_string))
            };
            let prop = if serverless {
                "ImageUri"
            } else {
                "Code.ImageUri"
            };
            Code::Image {
                uri: uri.ok_or_else(|| {
                    p.err(
                        prop,
                        p.res.line,
                        format!("{prop} is required for PackageType Image"),
                    )
                })?,
            }
        }
        "Zip" => {
            if serverless {
                match (p.get("InlineCode")?, code_uri(p, "CodeUri", base_dir)?) {
                    (Some(src), None) => Code::Inline {
                        source: string_of(&src, &p.loc("InlineCode"))?,
                    },
                    (None, Some(c)) => c,
                    (Some(_), Some(_)) => {
                        return Err(p.err(
                            "CodeUri",
                            p.line_of("CodeUri"),
                            "CodeUri and InlineCode cannot both be set",
                        ))
                    }
                    (None, None) => {
                        return Err(p.err(
                            "CodeUri",
                            p.res.line,
                            "CodeUri is required (or InlineCode) for a Zip function",
                        ))
                    }
                }
            } else {
                let n = p
                    .get("Code")?
                    .ok_or_else(|| p.err("Code", p.res.line, "Code is required"))?;
                let loc = p.loc("Code");
                match &n.value {
                    Value::Map(_) => {
                        if let Some(z) = n.get("ZipFile") {
                            Code::Inline {
                                source: string_of(z, &loc.child("ZipFile"))?,
                            }
                        } else {
                            let b = n.get("S3Bucket").ok_or_else(|| {
                                loc.err(n.line, "Code needs ZipFile or S3Bucket/S3Key")
                            })?;
                            let k = n.get("S3Key").ok_or_else(|| {
                                loc.err(n.line, "Code needs ZipFile or S3Bucket/S3Key")
                            })?;
                            Code::S3 {
                                bucket: string_of(b, &loc)?,
                                key: string_of(k, &loc)?,
                            }
                        }
                    }
                    _ => local_code(&string_of(&n, &loc)?, base_dir),
                }
            }
        }
        other => {
            return Err(p.err(
                "PackageType",
                p.line_of("PackageType"),
                format!("PackageType must be Zip or Image, not {other:?}"),
            ))
        }
    };
    let is_image = matches!(code, Code::Image { .. });
    let runtime = p.string("Runtime")?;
    let handler = p.string("Handler")?;
    if !is_image {
        let rt = runtime.as_deref().ok_or_else(|| {
            p.err(
                "Runtime",
                p.res.line,
                "Runtime is required for a Zip function",
            )
        })?;
        if handler.is_none() && !rt.starts_with("provided") {
            return Err(p.err(
                "Handler",
                p.res.line,
                format!("Handler is required for runtime {rt}"),
            ));
        }
    }
    let mut environment = IndexMap::new();
    if let Some(env) = p.get("Environment")? {
        let loc = p.loc("Environment");
        map_of(&env, &loc)?;
        if let Some(vars) = env.get("Variables") {
            let vloc = loc.child("Variables");
            for (k, v) in map_of(vars, &vloc)? {
                environment.insert(k.clone(), string_of(v, &vloc.child(k))?);
            }
        }
    }
    let mut layers = Vec::new();
    if let Some(raw) = p.raw("Layers") {
        let loc = p.loc("Layers");
        let items = raw.as_seq().ok_or_else(|| {
            loc.err(
                raw.line,
                format!("expected a list, found {}", raw.type_name()),
            )
        })?;
        for item in items {
            let local = item
                .intrinsic()
                .and_then(|(f, a)| (f == "Ref").then_some(a))
                .and_then(Node::as_str)
                .filter(|id| {
                    p.rv.resources
                        .get(*id)
                        .is_some_and(|r| r.rtype == "AWS::Serverless::LayerVersion")
                });
            match local {
                Some(id) => layers.push(LayerRef::Resource(id.to_string())),
                None => {
                    if let Some(v) = p.rv.resolve(item, &loc)? {
                        let arn = string_of(&v, &loc)?;
                        // `!If [C, !Ref Layer, …]` resolves to the layer's ARN: map it back.
                        let own = p.rv.resources.iter().find(|(id, r)| {
                            r.rtype == "AWS::Serverless::LayerVersion"
                                && p.rv
                                    .reference(id, item.line, &loc)
                                    .ok()
                                    .flatten()
                                    .and_then(|n| n.scalar_string())
                                    == Some(arn.clone())
                        });
                        match own {
                            Some((id, _)) => layers.push(LayerRef::Resource(id.clone())),
                            None => layers.push(LayerRef::Arn(arn)),
                        }
                    }
                }
            }
        }
    }
    let mut architectures = p.string_list("Architectures")?;
    for a in &architectures {
        if a != "x86_64" && a != "arm64" {
            return Err(p.err(
                "Architectures",
                p.line_of("Architectures"),
                format!("unknown architecture {a:?} (x86_64 or arm64)"),
            ));
        }
    }
    if architectures.len() > 1 {
        return Err(p.err(
            "Architectures",
            p.line_of("Architectures"),
            format!("a function has exactly one architecture, found {architectures:?} (Globals lists are added to the function's)"),
        ));
    }
    if architectures.is_empty() {
        architectures.push("x86_64".into());
    }
    let provisioned_concurrency = match p.get("ProvisionedConcurrencyConfig")? {
        None => None,
        Some(n) => {
            let loc = p.loc("ProvisionedConcurrencyConfig");
            map_of(&n, &loc)?;
            let v = n
                .get("ProvisionedConcurrentExecutions")
                .ok_or_else(|| loc.err(n.line, "ProvisionedConcurrentExecutions is required"))?;
            Some(u32_of(v, &loc.child("ProvisionedConcurrentExecutions"))?)
        }
    };
    let events = if serverless {
        events(p, warnings)?
    } else {
        vec![]
    };
    let policies = permissions(p, serverless, warnings)?;
    let logging = logging_config(p)?;
    Ok(Function {
        logical_id: p.id.to_string(),
        name,
        kind: if serverless {
            FunctionKind::Serverless
        } else {
            FunctionKind::Lambda
        },
        code,
        handler,
        runtime,
        timeout: p.u32("Timeout")?.unwrap_or(3),
        memory_size: p.u32("MemorySize")?.unwrap_or(128),
        environment,
        layers,
        architectures,
        events,
        reserved_concurrency: p.u32("ReservedConcurrentExecutions")?,
        provisioned_concurrency,
        auto_publish_alias: if serverless {
            p.string("AutoPublishAlias")?
        } else {
            None
        },
        policies,
        logging,
        line: p.res.line,
    })
}

/// `LoggingConfig`, each value checked against the set Lambda accepts.
fn logging_config(p: &Props) -> Result<LoggingConfig, Error> {
    let mut out = LoggingConfig::default();
    let Some(n) = p.get("LoggingConfig")? else {
        return Ok(out);
    };
    let loc = p.loc("LoggingConfig");
    let one_of = |key: &str, allowed: &[&str]| -> Result<Option<String>, Error> {
        let Some(v) = n.get(key) else {
            return Ok(None);
        };
        let s = string_of(v, &loc.child(key))?;
        if !allowed.contains(&s.as_str()) {
            return Err(loc.child(key).err(
                v.line,
                format!("{s:?} is not one of {}", allowed.join(", ")),
            ));
        }
        Ok(Some(s))
    };
    for (key, _) in map_of(&n, &loc)? {
        if ![
            "LogFormat",
            "ApplicationLogLevel",
            "SystemLogLevel",
            "LogGroup",
        ]
        .contains(&key.as_str())
        {
            return Err(loc.err(n.line, format!("unknown property {key}")));
        }
    }
    out.json = one_of("LogFormat", &["Text", "JSON"])?.as_deref() == Some("JSON");
    out.application_log_level = one_of(
        "ApplicationLogLevel",
        &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"],
    )?;
    out.system_log_level = one_of("SystemLogLevel", &["DEBUG", "INFO", "WARN"])?;
    if !out.json && (out.application_log_level.is_some() || out.system_log_level.is_some()) {
        // As Lambda: the levels need the JSON format.
        return Err(loc.err(
            n.line,
            "ApplicationLogLevel and SystemLogLevel need LogFormat: JSON",
        ));
    }
    out.log_group = match n.get("LogGroup") {
        None => None,
        Some(v) => Some(string_of(v, &loc.child("LogGroup"))?),
    };
    Ok(out)
}

/// The function's permissions as policy items (see [`Function::policies`]): its `Role`
/// when that is a role of the template (the role's `Policies[].PolicyDocument` and
/// `ManagedPolicyArns`), else its `Policies` (SAM ignores `Policies` when `Role` is set).
fn permissions(
    p: &Props,
    serverless: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<serde_json::Value>>, Error> {
    if let Some(raw) = p.raw("Role") {
        let loc = p.loc("Role");
        let role_id = raw.intrinsic().and_then(|(f, a)| match f {
            "Ref" => a.as_str().map(str::to_string),
            "Fn::GetAtt" => match &a.value {
                Value::Str(s) => s.split_once('.').map(|(id, _)| id.to_string()),
                Value::Seq(items) => items.first().and_then(Node::as_str).map(str::to_string),
                _ => None,
            },
            _ => None,
        });
        let role = role_id.as_deref().and_then(|id| {
            p.rv.resources
                .get(id)
                .filter(|r| r.rtype == "AWS::IAM::Role")
                .map(|r| (id, r))
        });
        let Some((id, role)) = role else {
            let shown = p.rv.resolve(raw, &loc)?.and_then(|n| n.scalar_string());
            warnings.push(format!(
                "{}: Role {} is not a role of this template: the function gets no permissions",
                p.id,
                shown.unwrap_or_else(|| "(unresolved)".into())
            ));
            return Ok(Some(Vec::new()));
        };
        let rloc = Loc::new(id, "Policies");
        let mut items = Vec::new();
        if let Some(list) = role.props.get("Policies") {
            if let Some(list) = p.rv.resolve(list, &rloc)? {
                for (i, pol) in list.as_seq().unwrap_or_default().iter().enumerate() {
                    let doc = pol.get("PolicyDocument").ok_or_else(|| {
                        rloc.err(pol.line, format!("Policies[{i}] has no PolicyDocument"))
                    })?;
                    items.push(doc.to_json());
                }
            }
        }
        if let Some(arns) = role.props.get("ManagedPolicyArns") {
            let mloc = Loc::new(id, "ManagedPolicyArns");
            if let Some(arns) = p.rv.resolve(arns, &mloc)? {
                for a in arns.as_seq().unwrap_or_default() {
                    items.push(serde_json::Value::String(string_of(a, &mloc)?));
                }
            }
        }
        return Ok(Some(items));
    }
    if !serverless {
        return Ok(None);
    }
    Ok(p.get("Policies")?.map(|n| match n.to_json() {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    }))
}

fn events(p: &Props, warnings: &mut Vec<String>) -> Result<Vec<Event>, Error> {
    let mut out = Vec::new();
    let Some(raw) = p.raw("Events") else {
        return Ok(out);
    };
    let loc = p.loc("Events");
    for (name, ev) in map_of(raw, &loc)? {
        let eloc = loc.child(name);
        map_of(ev, &eloc)?;
        let etype = ev
            .get("Type")
            .ok_or_else(|| eloc.err(ev.line, "the event has no Type"))?
            .as_str()
            .ok_or_else(|| eloc.child("Type").err(ev.line, "Type must be a string"))?;
        let kind = match etype {
            "Api" => EventKind::Api,
            "HttpApi" => EventKind::HttpApi,
            other => {
                warnings.push(format!("{}: event {name} of type {other} is ignored", p.id));
                continue;
            }
        };
        let ploc = eloc.child("Properties");
        let props = match ev.get("Properties") {
            Some(pn) => {
                map_of(pn, &ploc)?;
                Some(pn)
            }
            None => None,
        };
        let field = |key: &str| -> Result<Option<String>, Error> {
            match props.and_then(|pn| pn.get(key)) {
                None => Ok(None),
                Some(n) => {
                    let l = ploc.child(key);
                    p.rv.resolve(n, &l)?.map(|r| string_of(&r, &l)).transpose()
                }
            }
        };
        let (path, method) = match kind {
            EventKind::Api => (
                field("Path")?
                    .ok_or_else(|| ploc.err(ev.line, "Path is required for an Api event"))?,
                field("Method")?
                    .ok_or_else(|| ploc.err(ev.line, "Method is required for an Api event"))?,
            ),
            EventKind::HttpApi => (
                field("Path")?.unwrap_or_else(|| "$default".into()),
                field("Method")?.unwrap_or_else(|| "ANY".into()),
            ),
        };
        if path != "$default" && !path.starts_with('/') {
            return Err(ploc
                .child("Path")
                .err(ev.line, format!("Path {path:?} must start with /")));
        }
        let method = method.to_ascii_uppercase();
        const METHODS: &[&str] = &[
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY",
        ];
        if !METHODS.contains(&method.as_str()) {
            return Err(ploc
                .child("Method")
                .err(ev.line, format!("unknown method {method:?}")));
        }
        let auth = match props.and_then(|pn| pn.get("Auth")) {
            None => None,
            Some(a) => {
                let aloc = ploc.child("Auth");
                let a =
                    p.rv.resolve(a, &aloc)?
                        .unwrap_or(Node::new(Value::Map(vec![]), a.line));
                map_of(&a, &aloc)?;
                Some(EventAuth {
                    authorizer: a
                        .get("Authorizer")
                        .map(|n| string_of(n, &aloc.child("Authorizer")))
                        .transpose()?,
                    api_key_required: a
                        .get("ApiKeyRequired")
                        .map(|n| bool_of(n, &aloc.child("ApiKeyRequired")))
                        .transpose()?
                        .unwrap_or(false),
                    scopes: a
                        .get("AuthorizationScopes")
                        .map(|n| string_list_of(n, &aloc.child("AuthorizationScopes")))
                        .transpose()?
                        .unwrap_or_default(),
                })
            }
        };
        let api_key = if kind == EventKind::Api {
            "RestApiId"
        } else {
            "ApiId"
        };
        let api = match props.and_then(|pn| pn.get(api_key)) {
            None => None,
            Some(n) => match n.intrinsic() {
                Some(("Ref", a)) => a.as_str().map(str::to_string),
                _ => {
                    let l = ploc.child(api_key);
                    p.rv.resolve(n, &l)?
                        .map(|r| string_of(&r, &l))
                        .transpose()?
                }
            },
        };
        out.push(Event {
            name: name.clone(),
            kind,
            path,
            method,
            auth,
            api,
        });
    }
    Ok(out)
}

fn layer(p: &Props, base_dir: &Path) -> Result<Layer, Error> {
    let content = code_uri(p, "ContentUri", base_dir)?
        .ok_or_else(|| p.err("ContentUri", p.res.line, "ContentUri is required"))?;
    let build_method = match p.res.metadata.as_ref().and_then(|m| m.get("BuildMethod")) {
        Some(n) => Some(string_of(n, &Loc::new(p.id, "Metadata.BuildMethod"))?),
        None => None,
    };
    Ok(Layer {
        logical_id: p.id.to_string(),
        name: p
            .rv
            .resource_name(p.id, &p.loc("LayerName"), p.line_of("LayerName"))?,
        content,
        compatible_runtimes: p.string_list("CompatibleRuntimes")?,
        compatible_architectures: p.string_list("CompatibleArchitectures")?,
        build_method,
        line: p.res.line,
    })
}

fn key_schema(
    p: &Props,
    schema: &Node,
    attrs: &IndexMap<String, String>,
    loc: &Loc,
) -> Result<(KeyAttribute, Option<KeyAttribute>), Error> {
    let items = schema
        .as_seq()
        .ok_or_else(|| loc.err(schema.line, "KeySchema must be a list"))?;
    let mut hash = None;
    let mut range = None;
    for item in items {
        let name = item
            .get("AttributeName")
            .ok_or_else(|| loc.err(item.line, "a key needs AttributeName"))
            .and_then(|n| string_of(n, &loc.child("AttributeName")))?;
        let ktype = item
            .get("KeyType")
            .ok_or_else(|| loc.err(item.line, "a key needs KeyType"))
            .and_then(|n| string_of(n, &loc.child("KeyType")))?;
        let attr_type = attrs.get(&name).cloned().ok_or_else(|| {
            loc.err(
                item.line,
                format!("key attribute {name:?} is not in AttributeDefinitions"),
            )
        })?;
        let k = KeyAttribute { name, attr_type };
        match ktype.as_str() {
            "HASH" if hash.is_none() => hash = Some(k),
            "RANGE" if range.is_none() => range = Some(k),
            _ => return Err(loc.err(item.line, format!("unexpected KeyType {ktype:?}"))),
        }
    }
    let _ = p;
    Ok((
        hash.ok_or_else(|| loc.err(schema.line, "KeySchema needs a HASH key"))?,
        range,
    ))
}

fn dynamodb_table(p: &Props) -> Result<Table, Error> {
    let mut attrs = IndexMap::new();
    let aloc = p.loc("AttributeDefinitions");
    let defs = p
        .get("AttributeDefinitions")?
        .ok_or_else(|| aloc.err(p.res.line, "AttributeDefinitions is required"))?;
    for d in defs
        .as_seq()
        .ok_or_else(|| aloc.err(defs.line, "AttributeDefinitions must be a list"))?
    {
        let name = d
            .get("AttributeName")
            .ok_or_else(|| aloc.err(d.line, "AttributeName is required"))?;
        let t = d
            .get("AttributeType")
            .ok_or_else(|| aloc.err(d.line, "AttributeType is required"))?;
        let t = string_of(t, &aloc.child("AttributeType"))?;
        if !["S", "N", "B"].contains(&t.as_str()) {
            return Err(aloc.child("AttributeType").err(
                d.line,
                format!("AttributeType must be S, N or B, not {t:?}"),
            ));
        }
        attrs.insert(string_of(name, &aloc.child("AttributeName"))?, t);
    }
    let kloc = p.loc("KeySchema");
    let schema = p
        .get("KeySchema")?
        .ok_or_else(|| kloc.err(p.res.line, "KeySchema is required"))?;
    let (hash_key, range_key) = key_schema(p, &schema, &attrs, &kloc)?;
    let indexes = |prop: &str| -> Result<Vec<Index>, Error> {
        let loc = p.loc(prop);
        let Some(list) = p.get(prop)? else {
            return Ok(vec![]);
        };
        let items = list
            .as_seq()
            .ok_or_else(|| loc.err(list.line, "expected a list"))?;
        items
            .iter()
            .map(|i| {
                let name = i
                    .get("IndexName")
                    .ok_or_else(|| loc.err(i.line, "IndexName is required"))?;
                let ks = i
                    .get("KeySchema")
                    .ok_or_else(|| loc.err(i.line, "KeySchema is required"))?;
                let (h, r) = key_schema(p, ks, &attrs, &loc.child("KeySchema"))?;
                let projection = i
                    .get("Projection")
                    .and_then(|pr| pr.get("ProjectionType"))
                    .and_then(Node::scalar_string)
                    .unwrap_or_else(|| "ALL".into());
                Ok(Index {
                    name: string_of(name, &loc.child("IndexName"))?,
                    hash_key: h,
                    range_key: r,
                    projection,
                })
            })
            .collect()
    };
    let global_indexes = indexes("GlobalSecondaryIndexes")?;
    let local_indexes = indexes("LocalSecondaryIndexes")?;
    let stream_view_type = match p.get("StreamSpecification")? {
        Some(s) => s.get("StreamViewType").and_then(Node::scalar_string),
        None => None,
    };
    let ttl_attribute = match p.get("TimeToLiveSpecification")? {
        Some(s) => {
            let enabled = s
                .get("Enabled")
                .map(|e| bool_of(e, &p.loc("TimeToLiveSpecification.Enabled")))
                .transpose()?;
            if enabled == Some(true) {
                s.get("AttributeName").and_then(Node::scalar_string)
            } else {
                None
            }
        }
        None => None,
    };
    Ok(Table {
        logical_id: p.id.to_string(),
        name: p
            .rv
            .resource_name(p.id, &p.loc("TableName"), p.line_of("TableName"))?,
        kind: TableKind::DynamoDb,
        hash_key,
        range_key,
        global_indexes,
        local_indexes,
        billing_mode: p.string("BillingMode")?,
        stream_view_type,
        ttl_attribute,
        line: p.res.line,
    })
}

fn simple_table(p: &Props) -> Result<Table, Error> {
    let hash_key = match p.get("PrimaryKey")? {
        None => KeyAttribute {
            name: "id".into(),
            attr_type: "S".into(),
        },
        Some(pk) => {
            let loc = p.loc("PrimaryKey");
            map_of(&pk, &loc)?;
            let name = pk
                .get("Name")
                .ok_or_else(|| loc.err(pk.line, "PrimaryKey needs Name"))?;
            let t = pk
                .get("Type")
                .ok_or_else(|| loc.err(pk.line, "PrimaryKey needs Type"))?;
            let t = string_of(t, &loc.child("Type"))?;
            let attr_type = match t.as_str() {
                "String" => "S",
                "Number" => "N",
                "Binary" => "B",
                _ => {
                    return Err(loc.child("Type").err(
                        pk.line,
                        format!("Type must be String, Number or Binary, not {t:?}"),
                    ))
                }
            };
            KeyAttribute {
                name: string_of(name, &loc.child("Name"))?,
                attr_type: attr_type.into(),
            }
        }
    };
    let billing_mode = if p.raw("ProvisionedThroughput").is_some() {
        "PROVISIONED"
    } else {
        "PAY_PER_REQUEST"
    };
    Ok(Table {
        logical_id: p.id.to_string(),
        name: p
            .rv
            .resource_name(p.id, &p.loc("TableName"), p.line_of("TableName"))?,
        kind: TableKind::Simple,
        hash_key,
        range_key: None,
        global_indexes: vec![],
        local_indexes: vec![],
        billing_mode: Some(billing_mode.into()),
        stream_view_type: None,
        ttl_attribute: None,
        line: p.res.line,
    })
}

fn bucket(p: &Props) -> Result<Bucket, Error> {
    let versioned = match p.get("VersioningConfiguration")? {
        Some(v) => v.get("Status").and_then(Node::scalar_string).as_deref() == Some("Enabled"),
        None => false,
    };
    Ok(Bucket {
        logical_id: p.id.to_string(),
        name: p
            .rv
            .resource_name(p.id, &p.loc("BucketName"), p.line_of("BucketName"))?,
        versioned,
        line: p.res.line,
    })
}
