//! Functions' keys and policies: which secret verifies a request, and what the request
//! asks of IAM (`dynamodb:ACTION` on table ARNs, as AWS evaluates it).

use esb_iam::Access;
use serde_json::Value;

/// The IAM requests of one DynamoDB operation: every table (or index) it touches with the
/// action AWS checks there.
pub fn accesses(op: &str, req: &Value, region: &str, account: &str) -> Vec<Access> {
    let table = |name: &str| format!("arn:aws:dynamodb:{region}:{account}:table/{name}");
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let action = |a: &str| format!("dynamodb:{a}");
    match op {
        "ListTables" | "DescribeLimits" | "DescribeEndpoints" => {
            vec![Access::new(action(op), "*")]
        }
        "BatchGetItem" | "BatchWriteItem" => {
            let tables: Vec<String> = req
                .get("RequestItems")
                .and_then(Value::as_object)
                .map(|m| m.keys().map(|t| table(t)).collect())
                .unwrap_or_default();
            vec![Access {
                action: action(op),
                resources: tables,
            }]
        }
        "TransactWriteItems" | "TransactGetItems" => req
            .get("TransactItems")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        let (kind, body) = item.as_object()?.iter().next()?;
                        let a = match kind.as_str() {
                            "Put" => "PutItem",
                            "Update" => "UpdateItem",
                            "Delete" => "DeleteItem",
                            "ConditionCheck" => "ConditionCheckItem",
                            "Get" => "GetItem",
                            _ => return None,
                        };
                        Some(Access::new(action(a), table(&str_of(body, "TableName")?)))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => {
            let name = str_of(req, "TableName")
                .or_else(|| {
                    // Tagging calls name the table by its ARN.
                    str_of(req, "ResourceArn")
                        .and_then(|a| a.split_once(":table/").map(|(_, t)| t.to_string()))
                })
                .unwrap_or_default();
            let resource = match (op, str_of(req, "IndexName")) {
                ("Query" | "Scan", Some(index)) => format!("{}/index/{index}", table(&name)),
                _ => table(&name),
            };
            vec![Access::new(action(op), resource)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_name_their_tables() {
        let a = accesses("GetItem", &json!({"TableName": "t"}), "r", "1");
        assert_eq!(
            a,
            vec![Access::new(
                "dynamodb:GetItem",
                "arn:aws:dynamodb:r:1:table/t"
            )]
        );
        let a = accesses(
            "Query",
            &json!({"TableName": "t", "IndexName": "i"}),
            "r",
            "1",
        );
        assert_eq!(a[0].resources, vec!["arn:aws:dynamodb:r:1:table/t/index/i"]);
        let a = accesses(
            "BatchWriteItem",
            &json!({"RequestItems": {"a": [], "b": []}}),
            "r",
            "1",
        );
        assert_eq!(a[0].resources.len(), 2);
        let a = accesses(
            "TransactWriteItems",
            &json!({"TransactItems": [{"Put": {"TableName": "a"}}, {"ConditionCheck": {"TableName": "b"}}]}),
            "r",
            "1",
        );
        assert_eq!(a[0].action, "dynamodb:PutItem");
        assert_eq!(a[1].action, "dynamodb:ConditionCheckItem");
        assert_eq!(
            accesses("ListTables", &json!({}), "r", "1")[0].resources,
            vec!["*"]
        );
    }
}
