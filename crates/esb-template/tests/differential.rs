//! Differential test against AWS's own SAM translator (PyPI `aws-sam-translator`).
//!
//! For every corpus template, the translator expands Globals and events into plain
//! CloudFormation (`AWS::Lambda::Function`, API Gateway bodies). We parse that output with
//! our own model (as `AWS::Lambda::Function` resources) and compare each function's merged
//! properties with what our Globals merge produced, and compare the routes (path, method,
//! function, auth) that the translator wrote into the API definitions with our events.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use esb_template::{Code, LayerRef, Overrides, Template};
use serde_json::Value;

fn corpus() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
    v.sort();
    v
}

fn template_file(dir: &Path) -> PathBuf {
    ["template.yaml", "template.json"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .unwrap()
}

fn overrides(dir: &Path) -> Overrides {
    let gen = dir.join("generator.yml");
    if gen.exists() {
        esb_template::load_generator(&gen).unwrap()
    } else {
        Overrides::default()
    }
}

fn translate(dir: &Path, model: &Template) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sam_translate.py");
    let params = serde_json::to_string(&model.parameters).unwrap();
    let out = Command::new(esb_testkit::python())
        .arg(&script)
        .arg(template_file(dir))
        .arg(params)
        .env("AWS_DEFAULT_REGION", "ap-northeast-1")
        .output()
        .expect("run the SAM translator");
    assert!(
        out.status.success(),
        "aws-sam-translator failed on {} (is it installed? see crates/esb-template/deps/requirements.txt):\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Layers as the ARNs they resolve to, so a template layer (renamed with a hash by the
/// translator) and its reference compare equal.
fn layer_arns(t: &Template, refs: &[LayerRef]) -> Vec<String> {
    refs.iter()
        .map(|r| match r {
            LayerRef::Arn(a) => a.clone(),
            LayerRef::Resource(id) => {
                format!(
                    "arn:aws:lambda:ap-northeast-1:000000000000:layer:{}:1",
                    t.layer(id).unwrap().name
                )
            }
        })
        .collect()
}

type Route = (String, String, String); // path, METHOD, function logical id
/// `security` entries of an operation: authorizer (or `api_key`) name and scopes.
type Security = Vec<(String, Vec<String>)>;

fn sub_text(uri: &Value) -> Option<&str> {
    match uri.get("Fn::Sub")? {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first()?.as_str(),
        _ => None,
    }
}

/// Routes and their `security` entries from the translator's API definitions.
fn translated_routes(cfn: &Value) -> Vec<(Route, Security)> {
    let resources = cfn["Resources"].as_object().unwrap();
    let mut out = Vec::new();
    for res in resources.values() {
        let rtype = res["Type"].as_str().unwrap_or("");
        if rtype != "AWS::ApiGateway::RestApi" && rtype != "AWS::ApiGatewayV2::Api" {
            continue;
        }
        let Some(paths) = res["Properties"]["Body"]["paths"].as_object() else {
            continue;
        };
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                // A conditional function's operation is wrapped in Fn::If.
                let op = match op.get("Fn::If") {
                    Some(branches) => &branches[1],
                    None => op,
                };
                let Some(uri) = op["x-amazon-apigateway-integration"].get("uri") else {
                    continue;
                };
                let text = sub_text(uri).expect("integration uri is a Fn::Sub");
                let start =
                    text.find("functions/${").expect("lambda integration") + "functions/${".len();
                let inner = &text[start..start + text[start..].find('}').unwrap()];
                let function = match inner.strip_suffix(".Arn") {
                    Some(f) => f.to_string(),
                    // `${FnAliaslive}`: the alias names its function.
                    None => resources[inner]["Properties"]["FunctionName"]["Ref"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                };
                let method = if method == "x-amazon-apigateway-any-method" {
                    "ANY".to_string()
                } else {
                    method.to_uppercase()
                };
                let security = op
                    .get("security")
                    .and_then(Value::as_array)
                    .map(|entries| {
                        entries
                            .iter()
                            .flat_map(|e| e.as_object().unwrap().iter())
                            .map(|(name, scopes)| {
                                let scopes = scopes
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|s| s.as_str().unwrap().to_string())
                                    .collect();
                                (name.clone(), scopes)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(((path.clone(), method, function), security));
            }
        }
    }
    out
}

#[test]
fn globals_and_events_match_the_sam_translator() {
    let mut problems = Vec::new();
    for dir in corpus() {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let ov = overrides(&dir);
        let model = esb_template::load(&template_file(&dir), &ov).unwrap();
        let cfn_text = translate(&dir, &model);
        let translated = esb_template::parse_str(&cfn_text, &dir, &ov)
            .unwrap_or_else(|e| panic!("{case}: our parser rejects the translator's output: {e}"));
        let cfn: Value = serde_json::from_str(&cfn_text).unwrap();

        let ours: BTreeSet<_> = model
            .functions
            .iter()
            .map(|f| f.logical_id.clone())
            .collect();
        let theirs: BTreeSet<_> = translated
            .functions
            .iter()
            .map(|f| f.logical_id.clone())
            .collect();
        if ours != theirs {
            problems.push(format!(
                "{case}: functions {ours:?} vs translator {theirs:?}"
            ));
            continue;
        }
        for f in &model.functions {
            let t = translated.function(&f.logical_id).unwrap();
            let mut check = |field: &str, a: String, b: String| {
                if a != b {
                    problems.push(format!(
                        "{case}: {}.{field}: ours {a}, translator {b}",
                        f.logical_id
                    ));
                }
            };
            check("name", f.name.clone(), t.name.clone());
            check(
                "handler",
                format!("{:?}", f.handler),
                format!("{:?}", t.handler),
            );
            check(
                "runtime",
                format!("{:?}", f.runtime),
                format!("{:?}", t.runtime),
            );
            check("timeout", f.timeout.to_string(), t.timeout.to_string());
            check(
                "memory_size",
                f.memory_size.to_string(),
                t.memory_size.to_string(),
            );
            check(
                "environment",
                format!("{:?}", f.environment),
                format!("{:?}", t.environment),
            );
            check(
                "architectures",
                format!("{:?}", f.architectures),
                format!("{:?}", t.architectures),
            );
            check(
                "reserved_concurrency",
                format!("{:?}", f.reserved_concurrency),
                format!("{:?}", t.reserved_concurrency),
            );
            check(
                "layers",
                format!("{:?}", layer_arns(&model, &f.layers)),
                format!("{:?}", layer_arns(&translated, &t.layers)),
            );
            let code = |c: &Code| match c {
                Code::Dir { uri, .. } | Code::Zip { uri, .. } => {
                    format!("s3://esb-test-bucket/{}", uri.trim_matches('/'))
                }
                Code::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
                Code::Image { uri } => uri.clone(),
                Code::Inline { source } => source.clone(),
            };
            check("code", code(&f.code), code(&t.code));
        }

        let routes = translated_routes(&cfn);
        let ours: BTreeSet<Route> = model
            .functions
            .iter()
            .flat_map(|f| {
                f.events
                    .iter()
                    .map(|e| (e.path.clone(), e.method.clone(), f.logical_id.clone()))
            })
            .collect();
        let theirs: BTreeSet<Route> = routes.iter().map(|(r, _)| r.clone()).collect();
        if ours != theirs {
            problems.push(format!(
                "{case}: routes differ:\n  ours       {ours:?}\n  translator {theirs:?}"
            ));
        }
        for f in &model.functions {
            for e in &f.events {
                let Some(auth) = &e.auth else { continue };
                let key = (e.path.clone(), e.method.clone(), f.logical_id.clone());
                let Some((_, security)) = routes.iter().find(|(r, _)| *r == key) else {
                    continue;
                };
                let names: Vec<&str> = security.iter().map(|(n, _)| n.as_str()).collect();
                if auth.api_key_required && !names.contains(&"api_key") {
                    problems.push(format!(
                        "{case}: {}: ApiKeyRequired but translator security is {security:?}",
                        e.name
                    ));
                }
                if let Some(a) = &auth.authorizer {
                    if !names.contains(&a.as_str()) {
                        problems.push(format!(
                            "{case}: {}: authorizer {a} but translator security is {security:?}",
                            e.name
                        ));
                    }
                }
                if !auth.scopes.is_empty() && !security.iter().any(|(_, s)| *s == auth.scopes) {
                    problems.push(format!(
                        "{case}: {}: scopes {:?} but translator security is {security:?}",
                        e.name, auth.scopes
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "differences with aws-sam-translator:\n{}",
        problems.join("\n")
    );
}
