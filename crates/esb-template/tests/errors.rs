//! Bad templates: each error names the resource, the property and the line.

use std::path::Path;

use esb_template::{parse_str, Error, Overrides};

fn err(src: &str) -> Error {
    match parse_str(src, Path::new("/tmp"), &Overrides::default()) {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e,
    }
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in template"))
        + 1
}

fn check(e: &Error, resource: &str, property: &str, line: usize, words: &str) {
    assert_eq!(e.resource.as_deref(), Some(resource), "{e}");
    assert_eq!(e.property.as_deref(), Some(property), "{e}");
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(words), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains(resource) && shown.contains(property) && shown.contains(&format!(":{line}")),
        "{shown}"
    );
}

const HEAD: &str = "Transform: AWS::Serverless-2016-10-31\nResources:\n";

#[test]
fn wrong_type_for_timeout() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Timeout: [1, 2]\n"
    );
    check(
        &err(&src),
        "Fn",
        "Timeout",
        line_of(&src, "Timeout"),
        "whole number",
    );
}

#[test]
fn wrong_type_for_memory_string() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      MemorySize: lots\n"
    );
    check(
        &err(&src),
        "Fn",
        "MemorySize",
        line_of(&src, "MemorySize"),
        "\"lots\"",
    );
}

#[test]
fn environment_variable_must_be_a_string() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Environment:\n        Variables:\n          NESTED:\n            a: b\n"
    );
    check(
        &err(&src),
        "Fn",
        "Environment.Variables.NESTED",
        line_of(&src, "NESTED"),
        "a map",
    );
}

#[test]
fn missing_code_uri() {
    let src = format!("{HEAD}  NoCode:\n    Type: AWS::Serverless::Function\n    Properties:\n      Handler: a.b\n      Runtime: python3.12\n");
    check(
        &err(&src),
        "NoCode",
        "CodeUri",
        line_of(&src, "NoCode:"),
        "CodeUri is required",
    );
}

#[test]
fn dangling_ref() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Environment:\n        Variables:\n          TABLE: !Ref MissingTable\n"
    );
    check(
        &err(&src),
        "Fn",
        "Environment.Variables.TABLE",
        line_of(&src, "MissingTable"),
        "MissingTable",
    );
}

#[test]
fn dangling_ref_in_a_property_esb_does_not_read() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Role: !GetAtt NoSuchRole.Arn\n"
    );
    check(
        &err(&src),
        "Fn",
        "Role",
        line_of(&src, "NoSuchRole"),
        "NoSuchRole",
    );
}

#[test]
fn dangling_sub_variable() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: !Sub '${{Prefix}}-fn'\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n"
    );
    check(
        &err(&src),
        "Fn",
        "FunctionName",
        line_of(&src, "Prefix"),
        "${Prefix}",
    );
}

#[test]
fn cyclic_sub() {
    let src = format!(
        "{HEAD}  A:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: !Sub '${{B}}-fn'\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n  B:\n    Type: AWS::Serverless::SimpleTable\n    Properties:\n      TableName: !Sub '${{A}}-table'\n"
    );
    let e = err(&src);
    check(
        &e,
        "B",
        "TableName",
        line_of(&src, "TableName"),
        "circular reference: A -> B -> A",
    );
}

#[test]
fn self_referencing_sub() {
    let src = format!(
        "{HEAD}  Self:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: !Sub '${{Self}}-x'\n"
    );
    check(
        &err(&src),
        "Self",
        "BucketName",
        line_of(&src, "BucketName"),
        "circular reference",
    );
}

#[test]
fn missing_handler_for_python() {
    let src = format!("{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Runtime: python3.12\n");
    check(
        &err(&src),
        "Fn",
        "Handler",
        line_of(&src, "Fn:"),
        "Handler is required",
    );
}

#[test]
fn api_event_without_path() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Events:\n        Get:\n          Type: Api\n          Properties:\n            Method: get\n"
    );
    check(
        &err(&src),
        "Fn",
        "Events.Get.Properties",
        line_of(&src, "Get:"),
        "Path is required",
    );
}

#[test]
fn unsupported_global() {
    let src = format!(
        "Globals:\n  Function:\n    FunctionName: nope\n{HEAD}  Fn:\n    Type: AWS::SNS::Topic\n"
    );
    check(
        &err(&src),
        "Globals",
        "Function.FunctionName",
        3,
        "not supported",
    );
}

#[test]
fn parameter_without_value() {
    let src = format!(
        "Parameters:\n  Needed:\n    Type: String\n{HEAD}  T:\n    Type: AWS::SNS::Topic\n"
    );
    check(&err(&src), "Parameters", "Needed", 2, "no value");
}

#[test]
fn parameter_not_allowed() {
    let src = format!("Parameters:\n  Stage:\n    Type: String\n    Default: qa\n    AllowedValues: [dev, prod]\n{HEAD}  T:\n    Type: AWS::SNS::Topic\n");
    check(&err(&src), "Parameters", "Stage", 2, "AllowedValues");
}

#[test]
fn unknown_condition_in_if() {
    let src = format!(
        "{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Timeout: !If [Nope, 1, 2]\n"
    );
    check(
        &err(&src),
        "Fn",
        "Timeout",
        line_of(&src, "Nope"),
        "no condition named `Nope`",
    );
}

#[test]
fn findinmap_missing_key() {
    let src = format!(
        "Mappings:\n  M:\n    a:\n      x: '1'\n{HEAD}  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: a.b\n      Runtime: python3.12\n      Timeout: !FindInMap [M, b, x]\n"
    );
    check(
        &err(&src),
        "Fn",
        "Timeout",
        line_of(&src, "FindInMap"),
        "Mappings.M.b.x",
    );
}

#[test]
fn table_key_not_defined() {
    let src = format!(
        "{HEAD}  T:\n    Type: AWS::DynamoDB::Table\n    Properties:\n      AttributeDefinitions:\n        - AttributeName: id\n          AttributeType: S\n      KeySchema:\n        - AttributeName: pk\n          KeyType: HASH\n"
    );
    check(
        &err(&src),
        "T",
        "KeySchema",
        line_of(&src, "AttributeName: pk"),
        "AttributeDefinitions",
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("Resources:\n  A: [1, 2\n  B: 3\n");
    assert!(e.line >= 2, "{e}");
    assert!(e.message.contains("syntax"), "{e}");
}

#[test]
fn unknown_types_are_listed_not_fatal() {
    let t = parse_str(
        &format!("{HEAD}  Q:\n    Type: AWS::SQS::Queue\n  S:\n    Type: Custom::Thing\n"),
        Path::new("/tmp"),
        &Overrides::default(),
    )
    .unwrap();
    let ids: Vec<_> = t
        .ignored
        .iter()
        .map(|i| (i.logical_id.as_str(), i.resource_type.as_str()))
        .collect();
    assert_eq!(ids, [("Q", "AWS::SQS::Queue"), ("S", "Custom::Thing")]);
}

#[test]
fn a_layer_chosen_by_if_is_still_a_template_layer() {
    let t = parse_str(
        "Conditions:\n  Yes: !Equals [a, a]\nResources:\n  L:\n    Type: AWS::Serverless::LayerVersion\n    Properties:\n      ContentUri: l\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: f\n      Handler: a.b\n      Runtime: python3.12\n      Layers:\n        - !If [Yes, !Ref L, !Ref AWS::NoValue]\n        - arn:aws:lambda:us-east-1:1:layer:x:2\n",
        Path::new("/tmp"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        t.functions[0].layers,
        [
            esb_template::LayerRef::Resource("L".into()),
            esb_template::LayerRef::Arn("arn:aws:lambda:us-east-1:1:layer:x:2".into())
        ]
    );
}
