//! The provisioner: makes the template's tables and buckets exist in the box's DynamoDB
//! and S3, through their public APIs (SigV4-signed, as any client would). Missing ones
//! are created; existing ones are left alone with their data; a difference between the
//! template and what exists (key schema, indexes, versioning) is reported as drift, not
//! "fixed" by destroying data.

use std::time::Duration;

use serde_json::{json, Value};

use crate::http;
use crate::{Error, Result, ResultExt};

/// Where and as whom to provision.
pub struct Target<'a> {
    /// DynamoDB `host:port`.
    pub dynamodb: &'a str,
    /// S3 `host:port`.
    pub s3: &'a str,
    /// The box's credential pair.
    pub creds: (&'a str, &'a str),
    /// Region.
    pub region: &'a str,
}

/// What provisioning did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Tables and buckets created now.
    pub created: Vec<String>,
    /// Ones that already existed.
    pub existing: Vec<String>,
    /// Differences between the template and what exists.
    pub drift: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

async fn dynamodb(t: &Target<'_>, op: &str, body: Value) -> Result<(u16, Value)> {
    let payload = serde_json::to_vec(&body)?;
    let mut req = http::request("POST", &format!("http://{}/", t.dynamodb), payload.clone())?;
    req.headers_mut().insert(
        "x-amz-target",
        ::http::HeaderValue::from_str(&format!("DynamoDB_20120810.{op}"))
            .map_err(http::HttpError::from)?,
    );
    req.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    http::sign(&mut req, &payload, t.creds, t.region, "dynamodb")?;
    let r = http::tcp(t.dynamodb, req, TIMEOUT).await?;
    Ok((r.status, r.json()))
}

fn key_schema(t: &esb_template::Table) -> (Vec<Value>, Vec<(String, String)>) {
    let mut schema = vec![json!({"AttributeName": t.hash_key.name, "KeyType": "HASH"})];
    let mut attrs = vec![(t.hash_key.name.clone(), t.hash_key.attr_type.clone())];
    if let Some(r) = &t.range_key {
        schema.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
        attrs.push((r.name.clone(), r.attr_type.clone()));
    }
    (schema, attrs)
}

fn index_json(
    i: &esb_template::Index,
    attrs: &mut Vec<(String, String)>,
    provisioned: bool,
) -> Value {
    let mut schema = vec![json!({"AttributeName": i.hash_key.name, "KeyType": "HASH"})];
    attrs.push((i.hash_key.name.clone(), i.hash_key.attr_type.clone()));
    if let Some(r) = &i.range_key {
        schema.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
        attrs.push((r.name.clone(), r.attr_type.clone()));
    }
    let mut v = json!({
        "IndexName": i.name,
        "KeySchema": schema,
        "Projection": {"ProjectionType": if i.projection.is_empty() { "ALL" } else { &i.projection }},
    });
    if provisioned {
        v["ProvisionedThroughput"] = json!({"ReadCapacityUnits": 5, "WriteCapacityUnits": 5});
    }
    v
}

/// The CreateTable request of a template table.
pub fn create_table_request(t: &esb_template::Table) -> Value {
    let (schema, mut attrs) = key_schema(t);
    let billing = t
        .billing_mode
        .clone()
        .unwrap_or_else(|| "PAY_PER_REQUEST".to_string());
    let provisioned = billing == "PROVISIONED";
    let gsis: Vec<Value> = t
        .global_indexes
        .iter()
        .map(|i| index_json(i, &mut attrs, provisioned))
        .collect();
    let lsis: Vec<Value> = t
        .local_indexes
        .iter()
        .map(|i| index_json(i, &mut attrs, false))
        .collect();
    attrs.sort();
    attrs.dedup();
    let mut req = json!({
        "TableName": t.name,
        "KeySchema": schema,
        "AttributeDefinitions": attrs.iter().map(|(n, ty)| json!({"AttributeName": n, "AttributeType": ty})).collect::<Vec<_>>(),
        "BillingMode": billing,
    });
    if provisioned {
        req["ProvisionedThroughput"] = json!({"ReadCapacityUnits": 5, "WriteCapacityUnits": 5});
    }
    if !gsis.is_empty() {
        req["GlobalSecondaryIndexes"] = Value::Array(gsis);
    }
    if !lsis.is_empty() {
        req["LocalSecondaryIndexes"] = Value::Array(lsis);
    }
    if let Some(view) = &t.stream_view_type {
        req["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": view});
    }
    req
}

/// Differences between a template table and a DescribeTable answer.
pub fn table_drift(t: &esb_template::Table, described: &Value) -> Vec<String> {
    let mut drift = Vec::new();
    let table = &described["Table"];
    let (schema, _) = key_schema(t);
    if table["KeySchema"] != Value::Array(schema) {
        drift.push(format!(
            "table {}: key schema differs from the template (kept as it is: {})",
            t.name, table["KeySchema"]
        ));
    }
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["IndexName"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    let mut want: Vec<String> = t.global_indexes.iter().map(|i| i.name.clone()).collect();
    want.sort();
    let have = names(&table["GlobalSecondaryIndexes"]);
    if want != have {
        drift.push(format!(
            "table {}: global secondary indexes {:?} in the template, {:?} in the box",
            t.name, want, have
        ));
    }
    drift
}

async fn s3(t: &Target<'_>, method: &str, path: &str, body: &'static [u8]) -> Result<http::Reply> {
    let mut req = http::request(method, &format!("http://{}{path}", t.s3), body)?;
    http::sign(&mut req, body, t.creds, t.region, "s3")?;
    Ok(http::tcp(t.s3, req, TIMEOUT).await?)
}

/// Makes every table and bucket of `template` exist.
pub async fn provision(template: &esb_template::Template, t: &Target<'_>) -> Result<Report> {
    let mut report = Report::default();
    for table in &template.tables {
        let (status, body) = dynamodb(t, "DescribeTable", json!({"TableName": table.name}))
            .await
            .with_step(|| format!("DynamoDB at {}", t.dynamodb))?;
        if status == 200 {
            report.existing.push(format!("table {}", table.name));
            report.drift.extend(table_drift(table, &body));
            continue;
        }
        if !body["__type"]
            .as_str()
            .is_some_and(|s| s.ends_with("ResourceNotFoundException"))
        {
            return Err(Error::Provision {
                resource: format!("DescribeTable {}", table.name),
                answer: format!("{status} {body}"),
            });
        }
        let (status, body) = dynamodb(t, "CreateTable", create_table_request(table)).await?;
        if status != 200 {
            return Err(Error::Provision {
                resource: format!("table {} (template line {})", table.name, table.line),
                answer: format!("CreateTable refused: {body}"),
            });
        }
        if let Some(attr) = &table.ttl_attribute {
            let (status, body) = dynamodb(
                t,
                "UpdateTimeToLive",
                json!({"TableName": table.name,
                       "TimeToLiveSpecification": {"Enabled": true, "AttributeName": attr}}),
            )
            .await?;
            if status != 200 {
                report.drift.push(format!(
                    "table {}: time to live not enabled: {body}",
                    table.name
                ));
            }
        }
        report.created.push(format!("table {}", table.name));
    }
    for bucket in &template.buckets {
        let path = format!("/{}", bucket.name);
        let head = s3(t, "HEAD", &path, b"")
            .await
            .with_step(|| format!("S3 at {}", t.s3))?;
        match head.status {
            200 => {
                report.existing.push(format!("bucket {}", bucket.name));
                let v = s3(t, "GET", &format!("{path}?versioning"), b"").await?;
                let enabled = String::from_utf8_lossy(&v.body).contains("<Status>Enabled</Status>");
                if enabled != bucket.versioned {
                    report.drift.push(format!(
                        "bucket {}: versioning {} in the template, {} in the box",
                        bucket.name,
                        if bucket.versioned { "Enabled" } else { "off" },
                        if enabled { "Enabled" } else { "off" }
                    ));
                }
            }
            404 => {
                let r = s3(t, "PUT", &path, b"").await?;
                if r.status != 200 {
                    return Err(Error::Provision {
                        resource: format!("bucket {} (template line {})", bucket.name, bucket.line),
                        answer: format!(
                            "CreateBucket refused: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ),
                    });
                }
                if bucket.versioned {
                    const BODY: &[u8] = b"<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></VersioningConfiguration>";
                    let r = s3(t, "PUT", &format!("{path}?versioning"), BODY).await?;
                    if r.status != 200 {
                        report
                            .drift
                            .push(format!("bucket {}: versioning not enabled", bucket.name));
                    }
                }
                report.created.push(format!("bucket {}", bucket.name));
            }
            s => {
                return Err(Error::Provision {
                    resource: format!("HEAD bucket {}", bucket.name),
                    answer: format!("status {s}"),
                })
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> esb_template::Table {
        let t = esb_template::parse_str(
            "Resources:\n  T:\n    Type: AWS::DynamoDB::Table\n    Properties:\n      TableName: orders\n      BillingMode: PAY_PER_REQUEST\n      AttributeDefinitions:\n        - {AttributeName: pk, AttributeType: S}\n        - {AttributeName: sk, AttributeType: N}\n        - {AttributeName: g, AttributeType: S}\n      KeySchema:\n        - {AttributeName: pk, KeyType: HASH}\n        - {AttributeName: sk, KeyType: RANGE}\n      GlobalSecondaryIndexes:\n        - IndexName: byG\n          KeySchema: [{AttributeName: g, KeyType: HASH}]\n          Projection: {ProjectionType: ALL}\n",
            std::path::Path::new("."),
            &Default::default(),
        )
        .unwrap();
        t.tables[0].clone()
    }

    #[test]
    fn create_table_request_has_keys_attributes_and_indexes() {
        let r = create_table_request(&table());
        assert_eq!(r["TableName"], "orders");
        assert_eq!(r["KeySchema"][1]["KeyType"], "RANGE");
        assert_eq!(r["AttributeDefinitions"].as_array().unwrap().len(), 3);
        assert_eq!(r["GlobalSecondaryIndexes"][0]["IndexName"], "byG");
        assert_eq!(r["BillingMode"], "PAY_PER_REQUEST");
        assert!(r.get("ProvisionedThroughput").is_none());
    }

    #[test]
    fn drift_is_reported_not_hidden() {
        let t = table();
        let same = json!({"Table": {"KeySchema": key_schema(&t).0,
            "GlobalSecondaryIndexes": [{"IndexName": "byG"}]}});
        assert!(table_drift(&t, &same).is_empty());
        let other = json!({"Table": {"KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}]}});
        let d = table_drift(&t, &other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("orders"));
    }

    #[test]
    fn refusals_name_the_resource_and_its_template_line() {
        let e = Error::Provision {
            resource: "table orders (template line 3)".into(),
            answer: "CreateTable refused: {}".into(),
        };
        assert_eq!(
            e.to_string(),
            "table orders (template line 3): CreateTable refused: {}"
        );
    }
}
