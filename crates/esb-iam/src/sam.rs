//! A function's policy from its template: SAM policy templates, AWS managed policy names,
//! inline policy documents.

use serde_json::Value;

use crate::{Error, Policy};

/// Where ARNs point.
#[derive(Debug, Clone)]
pub struct ArnContext {
    /// Region of the box (`ESB_REGION`).
    pub region: String,
    /// Account id of the box (`ESB_ACCOUNT_ID`).
    pub account: String,
}

impl ArnContext {
    /// `arn:aws:dynamodb:REGION:ACCOUNT:table/NAME`.
    pub fn table(&self, name: &str) -> String {
        format!(
            "arn:aws:dynamodb:{}:{}:table/{name}",
            self.region, self.account
        )
    }
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
    pub fn function(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account
        )
    }
    /// `arn:aws:s3:::BUCKET` or `arn:aws:s3:::BUCKET/KEY`.
    pub fn s3(bucket: &str, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("arn:aws:s3:::{bucket}/{k}"),
            None => format!("arn:aws:s3:::{bucket}"),
        }
    }
    /// The principal AWS names in denials: the function's assumed role.
    pub fn principal(&self, function: &str) -> String {
        format!(
            "arn:aws:sts::{}:assumed-role/{function}-role/{function}",
            self.account
        )
    }
}

/// A function's policy and what was not understood (warnings for `esb up`).
#[derive(Debug, Clone, Default)]
pub struct FunctionPolicy {
    /// The statements.
    pub policy: Policy,
    /// Items that grant nothing here (unknown templates or managed policies, conditions).
    pub warnings: Vec<String>,
}

const DDB_READ: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:Scan",
    "dynamodb:Query",
    "dynamodb:BatchGetItem",
    "dynamodb:DescribeTable",
];
const DDB_WRITE: &[&str] = &[
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:BatchWriteItem",
];
const DDB_CRUD: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:DeleteItem",
    "dynamodb:PutItem",
    "dynamodb:Scan",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:BatchGetItem",
    "dynamodb:DescribeTable",
    "dynamodb:ConditionCheckItem",
];
const S3_READ: &[&str] = &[
    "s3:GetObject",
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:GetObjectVersion",
    "s3:GetLifecycleConfiguration",
];
const S3_WRITE: &[&str] = &[
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:PutLifecycleConfiguration",
];
const S3_CRUD: &[&str] = &[
    "s3:GetObject",
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:DeleteObject",
];

/// The parameter `name` of a SAM policy template.
fn param(args: &Value, name: &str, what: &str) -> Result<String, Error> {
    args.get(name)
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(|| Error::Policy(format!("{what}: the template needs the parameter {name}")))
}

/// Adds the statements of SAM policy template `name` with `args`; `false` if unknown.
fn sam_template(
    out: &mut Policy,
    name: &str,
    args: &Value,
    cx: &ArnContext,
    what: &str,
) -> Result<bool, Error> {
    let table = |out: &mut Policy, actions: &[&str]| -> Result<(), Error> {
        let t = cx.table(&param(args, "TableName", what)?);
        out.allow(actions, vec![t.clone(), format!("{t}/index/*")]);
        Ok(())
    };
    let bucket = |out: &mut Policy, actions: &[&str]| -> Result<(), Error> {
        let b = param(args, "BucketName", what)?;
        out.allow(
            actions,
            vec![ArnContext::s3(&b, None), ArnContext::s3(&b, Some("*"))],
        );
        Ok(())
    };
    match name {
        "DynamoDBCrudPolicy" => table(out, DDB_CRUD)?,
        "DynamoDBReadPolicy" => table(out, DDB_READ)?,
        "DynamoDBWritePolicy" => table(out, DDB_WRITE)?,
        "S3CrudPolicy" | "S3FullAccessPolicy" => bucket(out, S3_CRUD)?,
        "S3ReadPolicy" => bucket(out, S3_READ)?,
        "S3WritePolicy" => bucket(out, S3_WRITE)?,
        "LambdaInvokePolicy" => {
            let f = param(args, "FunctionName", what)?;
            out.allow(
                &["lambda:InvokeFunction"],
                vec![format!("{}*", cx.function(&f))],
            );
        }
        "AWSLambdaBasicExecutionRole" => out.allow(
            &[
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            vec!["*".into()],
        ),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Adds the statements of an AWS managed policy (name or ARN); `false` if unknown here.
fn managed(out: &mut Policy, name_or_arn: &str) -> bool {
    let name = name_or_arn.rsplit('/').next().unwrap_or(name_or_arn);
    let all = || vec!["*".to_string()];
    match name {
        "AdministratorAccess" => out.allow(&["*"], all()),
        "AmazonS3FullAccess" => out.allow(&["s3:*"], all()),
        "AmazonS3ReadOnlyAccess" => out.allow(&["s3:Get*", "s3:List*"], all()),
        "AmazonDynamoDBFullAccess" => out.allow(&["dynamodb:*"], all()),
        "AmazonDynamoDBReadOnlyAccess" => out.allow(
            &[
                "dynamodb:BatchGetItem",
                "dynamodb:Describe*",
                "dynamodb:List*",
                "dynamodb:GetItem",
                "dynamodb:Query",
                "dynamodb:Scan",
            ],
            all(),
        ),
        "AWSLambdaRole" => out.allow(&["lambda:InvokeFunction"], all()),
        "AWSLambda_FullAccess" | "AWSLambdaFullAccess" => out.allow(&["lambda:*"], all()),
        "AWSLambdaBasicExecutionRole" | "AWSLambdaExecute" | "AWSLambdaVPCAccessExecutionRole" => {
            out.allow(
                &[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                ],
                all(),
            )
        }
        _ => return false,
    }
    true
}

/// The policy of function `function` from its template's policy items (the `Policies`
/// list, resolved; a role's documents and managed policy ARNs come as the same items).
pub fn function_policy(
    function: &str,
    items: &[Value],
    cx: &ArnContext,
) -> Result<FunctionPolicy, Error> {
    let mut out = FunctionPolicy::default();
    for (i, item) in items.iter().enumerate() {
        let what = format!("function {function}: Policies[{i}]");
        match item {
            Value::String(name) => {
                if !managed(&mut out.policy, name) {
                    out.warnings.push(format!(
                        "{what}: managed policy {name} is not known to esb; it grants nothing here"
                    ));
                }
            }
            Value::Object(map) if map.contains_key("Statement") => {
                let w = out.policy.add_document(item, &what)?;
                out.warnings.extend(w);
            }
            Value::Object(map) if map.len() == 1 => {
                let (name, args) = map.iter().next().expect("one entry");
                let what = format!("{what} ({name})");
                if !sam_template(&mut out.policy, name, args, cx, &what)? {
                    out.warnings.push(format!(
                        "{what}: SAM policy template {name} is not known to esb; it grants nothing here"
                    ));
                }
            }
            other => {
                return Err(Error::Policy(format!(
                    "{what}: expected a managed policy name, a SAM policy template or a policy document, found {other}"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;
    use serde_json::json;

    fn cx() -> ArnContext {
        ArnContext {
            region: "ap-northeast-1".into(),
            account: "000000000000".into(),
        }
    }

    #[test]
    fn sam_templates_grant_what_aws_grants() {
        let items = vec![
            json!({"DynamoDBReadPolicy": {"TableName": "a"}}),
            json!({"S3ReadPolicy": {"BucketName": "x"}}),
            json!({"LambdaInvokePolicy": {"FunctionName": "f"}}),
            json!("AWSLambdaBasicExecutionRole"),
        ];
        let p = function_policy("fn", &items, &cx()).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let p = p.policy;
        let c = cx();
        assert_eq!(
            p.evaluate("dynamodb:GetItem", &[c.table("a")]),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate("dynamodb:Query", &[format!("{}/index/by-x", c.table("a"))]),
            Decision::Allow
        );
        assert!(matches!(
            p.evaluate("dynamodb:PutItem", &[c.table("a")]),
            Decision::ImplicitDeny(_)
        ));
        assert!(matches!(
            p.evaluate("dynamodb:GetItem", &[c.table("b")]),
            Decision::ImplicitDeny(_)
        ));
        assert_eq!(
            p.evaluate("s3:GetObject", &[ArnContext::s3("x", Some("k/1"))]),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate("s3:ListBucket", &[ArnContext::s3("x", None)]),
            Decision::Allow
        );
        assert!(matches!(
            p.evaluate("s3:PutObject", &[ArnContext::s3("x", Some("k"))]),
            Decision::ImplicitDeny(_)
        ));
        assert_eq!(
            p.evaluate("lambda:InvokeFunction", &[c.function("f")]),
            Decision::Allow
        );
        assert!(matches!(
            p.evaluate("lambda:InvokeFunction", &[c.function("g")]),
            Decision::ImplicitDeny(_)
        ));
    }

    #[test]
    fn inline_documents_managed_names_and_unknowns() {
        let items = vec![
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": "arn:aws:s3:::up/*"}]}),
            json!("arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess"),
            json!("SomeCustomerPolicy"),
            json!({"SQSSendMessagePolicy": {"QueueName": "q"}}),
        ];
        let p = function_policy("fn", &items, &cx()).unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(
            p.policy
                .evaluate("s3:PutObject", &[ArnContext::s3("up", Some("a"))]),
            Decision::Allow
        );
        assert_eq!(
            p.policy.evaluate("dynamodb:Scan", &[cx().table("any")]),
            Decision::Allow
        );
        assert!(function_policy("fn", &[json!({"DynamoDBCrudPolicy": {}})], &cx()).is_err());
        assert!(function_policy("fn", &[json!(3)], &cx()).is_err());
    }
}
