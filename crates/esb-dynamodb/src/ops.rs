//! The DynamoDB operations: request validation, execution against [`Db`], responses.

use crate::error::{DdbError, Result};
use crate::expr::{
    self, apply_update, eval, parse_condition, parse_key_condition, parse_projection, parse_update,
    project, Cond, Path, Placeholders, RangeCond, Update,
};
use crate::legacy;
use crate::store::{self, Catalog, Db, Range, WriteCtx};
use crate::table::{self, partition_hash, IndexMeta, Projection, StoredKey, TableMeta};
use crate::value::{
    encode_key_value, item_from_json, item_size, item_to_json, Item, KeyType, Value,
};
use rusqlite::Connection;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Largest item.
pub const MAX_ITEM_SIZE: usize = 400 * 1024;
/// Largest page of Query and Scan.
pub const MAX_PAGE_SIZE: usize = 1024 * 1024;
/// Largest BatchGetItem response before keys are left unprocessed.
pub const MAX_BATCH_GET_SIZE: usize = 16 * 1024 * 1024;
/// Most keys per BatchGetItem.
pub const MAX_BATCH_GET: usize = 100;
/// Most requests per BatchWriteItem.
pub const MAX_BATCH_WRITE: usize = 25;
/// Most items per transaction.
pub const MAX_TRANSACT: usize = 100;

/// A response body: JSON to serialise, or bytes already serialised (items are stored in
/// their wire format, so reads can often copy them out without parsing).
pub enum Reply {
    /// A JSON value.
    Json(Json),
    /// Serialised JSON.
    Raw(Vec<u8>),
}

impl From<Json> for Reply {
    fn from(j: Json) -> Reply {
        Reply::Json(j)
    }
}

/// Runs one operation by its name (the part of X-Amz-Target after the dot).
pub async fn dispatch(db: &Arc<Db>, op: &str, req: Json) -> Result<Reply> {
    let capacity = consumed_capacity(op, &req);
    let reply = match op {
        "GetItem" => get_item(db, req)?,
        "Query" => query(db, req, false)?,
        "Scan" => query(db, req, true)?,
        _ => Reply::Json(dispatch_json(db, op, req).await?),
    };
    Ok(match capacity {
        None => reply,
        Some(c) => match reply {
            Reply::Json(mut j) => {
                j["ConsumedCapacity"] = c;
                Reply::Json(j)
            }
            Reply::Raw(mut bytes) => {
                // Raw replies are one JSON object: append the field before its last brace.
                if bytes.last() == Some(&b'}') {
                    bytes.pop();
                    if bytes.len() > 1 {
                        bytes.push(b',');
                    }
                    bytes.extend_from_slice(b"\"ConsumedCapacity\":");
                    bytes.extend_from_slice(c.to_string().as_bytes());
                    bytes.push(b'}');
                }
                Reply::Raw(bytes)
            }
        },
    })
}

/// The ConsumedCapacity to report when the request asks for it (TOTAL or INDEXES). The
/// box has no capacity to consume: it reports one unit per table touched, so code that
/// reads the field keeps working.
fn consumed_capacity(op: &str, req: &Json) -> Option<Json> {
    let mode = req.get("ReturnConsumedCapacity")?.as_str()?;
    if mode != "TOTAL" && mode != "INDEXES" {
        return None;
    }
    let one = |t: &str| json!({"TableName": t, "CapacityUnits": 1.0});
    match op {
        "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" | "Query" | "Scan" => {
            Some(one(req.get("TableName")?.as_str()?))
        }
        "BatchGetItem" | "BatchWriteItem" => {
            let tables = req.get("RequestItems")?.as_object()?;
            Some(Json::Array(tables.keys().map(|t| one(t)).collect()))
        }
        "TransactWriteItems" | "TransactGetItems" => {
            let mut tables: Vec<&str> = req
                .get("TransactItems")?
                .as_array()?
                .iter()
                .filter_map(|e| e.as_object()?.values().next()?.get("TableName")?.as_str())
                .collect();
            tables.sort_unstable();
            tables.dedup();
            Some(Json::Array(tables.into_iter().map(one).collect()))
        }
        _ => None,
    }
}

async fn dispatch_json(db: &Arc<Db>, op: &str, req: Json) -> Result<Json> {
    if !req.is_object() {
        return Err(DdbError::serialization(
            "Start of structure or map found where not expected",
        ));
    }
    match op {
        "CreateTable" => create_table(db, req).await,
        "DescribeTable" => describe_table(db, req).await,
        "ListTables" => list_tables(db, req).await,
        "DeleteTable" => delete_table(db, req).await,
        "UpdateTable" => update_table(db, req).await,
        "UpdateTimeToLive" => update_ttl(db, req).await,
        "DescribeTimeToLive" => describe_ttl(db, req).await,
        "PutItem" => put_item(db, req).await,
        "UpdateItem" => update_item(db, req).await,
        "DeleteItem" => delete_item(db, req).await,
        "BatchGetItem" => batch_get(db, req).await,
        "BatchWriteItem" => batch_write(db, req).await,
        "TransactWriteItems" => transact_write(db, req).await,
        "TransactGetItems" => transact_get(db, req).await,
        "TagResource" => tag_resource(db, req, true).await,
        "UntagResource" => tag_resource(db, req, false).await,
        "ListTagsOfResource" => list_tags(db, req).await,
        "DescribeLimits" => Ok(json!({
            "AccountMaxReadCapacityUnits": 80000, "AccountMaxWriteCapacityUnits": 80000,
            "TableMaxReadCapacityUnits": 40000, "TableMaxWriteCapacityUnits": 40000})),
        "DescribeEndpoints" => {
            Ok(json!({"Endpoints": [{"Address": "localhost", "CachePeriodInMinutes": 1440}]}))
        }
        _ => Err(DdbError::new("UnknownOperationException", "")),
    }
}

// ---------------------------------------------------------------------------------------
// Request helpers

/// The member `field` of the request, unless absent or null.
fn present<'a>(req: &'a Json, field: &str) -> Option<&'a Json> {
    req.get(field).filter(|v| !v.is_null())
}

/// How DynamoDB's messages name a request member: `TableName` is `tableName`.
fn member_path(field: &str) -> String {
    let mut path = field.to_owned();
    if let Some(first) = path.get_mut(0..1) {
        first.make_ascii_lowercase();
    }
    path
}

/// The member `field`, which the request must have.
fn required<'a>(req: &'a Json, field: &str) -> Result<&'a Json> {
    present(req, field).ok_or_else(|| DdbError::missing_member(&member_path(field)))
}

fn table_name(req: &Json) -> Result<String> {
    let name = required(req, "TableName")?
        .as_str()
        .ok_or_else(|| DdbError::serialization("TableName must be a string"))?;
    table::validate_name(name, "tableName")?;
    Ok(name.to_owned())
}

fn opt_str<'a>(req: &'a Json, field: &str) -> Result<Option<&'a str>> {
    match present(req, field) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| DdbError::serialization(format!("{field} must be a string"))),
    }
}

fn enum_field<'a>(
    req: &'a Json,
    field: &str,
    allowed: &[&'static str],
    default: &'static str,
) -> Result<&'a str> {
    let v = opt_str(req, field)?.unwrap_or(default);
    if allowed.contains(&v) {
        Ok(v)
    } else {
        Err(DdbError::not_in_enum(v, &member_path(field), allowed))
    }
}

/// ReturnValuesOnConditionCheckFailure: whether a failed condition returns the old item.
fn return_old_on_condition_failure(req: &Json) -> Result<bool> {
    let v = enum_field(
        req,
        "ReturnValuesOnConditionCheckFailure",
        &["ALL_OLD", "NONE"],
        "NONE",
    )?;
    Ok(v == "ALL_OLD")
}

/// The ReturnValues of an operation that can return only the old item (PutItem,
/// DeleteItem): whether it asks for it.
fn return_old_item(req: &Json) -> Result<bool> {
    let rv = return_values(req)?;
    if rv != "NONE" && rv != "ALL_OLD" {
        return Err(DdbError::validation(
            "ReturnValues can only be ALL_OLD or NONE",
        ));
    }
    Ok(rv == "ALL_OLD")
}

/// ReturnValues, one of the values DynamoDB knows.
fn return_values(req: &Json) -> Result<&str> {
    enum_field(
        req,
        "ReturnValues",
        &["NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"],
        "NONE",
    )
}

fn item_field(req: &Json, field: &str) -> Result<Item> {
    item_from_json(required(req, field)?)
}

fn check_item_size(item: &Item) -> Result<()> {
    if item_size(item) > MAX_ITEM_SIZE {
        return Err(DdbError::validation(
            "Item size has exceeded the maximum allowed size",
        ));
    }
    Ok(())
}

/// The expressions of one item-level request, parsed.
struct Exprs {
    cond: Option<Cond>,
    projection: Option<Vec<Path>>,
}

fn parse_exprs(req: &Json, ph: &Placeholders, cond_field: &'static str) -> Result<Exprs> {
    let cond = match opt_str(req, cond_field)? {
        Some(s) => Some(parse_condition(s, cond_field, ph)?),
        None => legacy::expected(req)?,
    };
    let projection = projection_of(req, ph)?;
    Ok(Exprs { cond, projection })
}

/// The condition of a write, which takes no projection; `op` names the operation in the
/// error ("a PutItem").
fn write_condition(req: &Json, ph: &Placeholders, op: &str) -> Result<Option<Cond>> {
    let ex = parse_exprs(req, ph, "ConditionExpression")?;
    if ex.projection.is_some() {
        return Err(DdbError::validation(format!(
            "ProjectionExpression is not {op} parameter"
        )));
    }
    Ok(ex.cond)
}

/// ProjectionExpression, or the legacy AttributesToGet.
fn projection_of(req: &Json, ph: &Placeholders) -> Result<Option<Vec<Path>>> {
    match opt_str(req, "ProjectionExpression")? {
        Some(s) => Ok(Some(parse_projection(s, ph)?)),
        None => legacy::attributes_to_get(req),
    }
}

fn attrs_response(item: Option<&Item>) -> Json {
    match item {
        Some(i) if !i.is_empty() => json!({"Attributes": item_to_json(i)}),
        _ => json!({}),
    }
}

/// The answer of PutItem and DeleteItem: the old item's attributes if asked for.
fn old_attrs_response(return_old: bool, old: Option<&Item>) -> Json {
    if return_old {
        attrs_response(old)
    } else {
        json!({})
    }
}

/// The item with only the projected attributes, if there is a projection.
fn projected(projection: Option<&[Path]>, item: Item) -> Item {
    match projection {
        Some(p) => project(p, &item),
        None => item,
    }
}

fn condition_failed(old: Option<&Item>, return_old: bool) -> DdbError {
    let e = DdbError::conditional_failed();
    match (old, return_old) {
        (Some(o), true) => e.with_extra(json!({"Item": item_to_json(o)})),
        _ => e,
    }
}

/// Checks an operation's condition against the current item (a missing item reads as
/// empty); `return_old` puts the item into the error.
fn check_condition(cond: Option<&Cond>, old: Option<&Item>, return_old: bool) -> Result<()> {
    match cond {
        Some(c) if !eval(c, old.unwrap_or(&Item::new())) => Err(condition_failed(old, return_old)),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Control plane

async fn create_table(db: &Arc<Db>, req: Json) -> Result<Json> {
    let mut meta = table::parse_create_table(&req)?;
    let region = db.region.clone();
    db.write(move |ctx| {
        if ctx.try_table(&meta.name).is_some() {
            return Err(DdbError::in_use(format!(
                "Table already exists: {}",
                meta.name
            )));
        }
        meta.id = ctx.next_id();
        for i in 0..meta.indexes.len() {
            meta.indexes[i].id = ctx.next_id();
        }
        store::create_storage(ctx.conn, &meta)?;
        let stats = vec![(0, 0); meta.indexes.len()];
        let desc = meta.describe(&region, "ACTIVE", 0, 0, &stats);
        ctx.save_table(meta)?;
        Ok(json!({"TableDescription": desc}))
    })
    .await
}

fn table_missing(name: &str) -> DdbError {
    DdbError::not_found(format!(
        "Requested resource not found: Table: {name} not found"
    ))
}

fn describe(conn: &Connection, meta: &TableMeta, region: &str, status: &str) -> Result<Json> {
    let ((count, size), idx) = store::stats(conn, meta)?;
    Ok(meta.describe(region, status, count, size, &idx))
}

async fn describe_table(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    let region = db.region.clone();
    let db = db.clone();
    // Counting a large table reads all of it: keep that off the async workers.
    tokio::task::spawn_blocking(move || {
        db.read(|conn, cat| {
            let meta = cat.get(&name).ok_or_else(|| table_missing(&name))?;
            Ok(json!({"Table": describe(conn, meta, &region, "ACTIVE")?}))
        })
    })
    .await
    .map_err(|e| DdbError::internal(format!("DescribeTable task failed: {e}")))?
}

async fn list_tables(db: &Arc<Db>, req: Json) -> Result<Json> {
    let limit = match present(&req, "Limit") {
        Some(v) => {
            let l = v
                .as_i64()
                .ok_or_else(|| DdbError::serialization("Limit must be a number"))?;
            if !(1..=100).contains(&l) {
                return Err(DdbError::validation(format!(
                    "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value {} 100",
                    if l < 1 { "greater than or equal to 1, and" } else { "less than or equal to" }
                )));
            }
            l as usize
        }
        None => 100,
    };
    let start = opt_str(&req, "ExclusiveStartTableName")?.map(str::to_owned);
    let cat = db.catalog();
    let mut names: Vec<&String> = cat.keys().collect();
    names.sort();
    let names: Vec<&String> = names
        .into_iter()
        .filter(|n| start.as_ref().is_none_or(|s| n.as_str() > s.as_str()))
        .collect();
    let page: Vec<&String> = names.iter().take(limit).copied().collect();
    let mut out = json!({"TableNames": page});
    if names.len() > limit {
        out["LastEvaluatedTableName"] = json!(page.last());
    }
    Ok(out)
}

async fn delete_table(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    let region = db.region.clone();
    db.write(move |ctx| {
        let meta = ctx.table(&name).map_err(|_| table_missing(&name))?;
        let desc = describe(ctx.conn, &meta, &region, "DELETING")?;
        store::drop_storage(ctx.conn, &meta)?;
        ctx.remove_table(&name)?;
        Ok(json!({"TableDescription": desc}))
    })
    .await
}

async fn update_table(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    let region = db.region.clone();
    db.write(move |ctx| {
        let old = ctx.table(&name).map_err(|_| table_missing(&name))?;
        let mut meta: TableMeta = (*old).clone();
        if let Some(defs) = present(&req, "AttributeDefinitions") {
            for a in table::parse_attribute_definitions(defs)? {
                match meta.attrs.iter().find(|x| x.name == a.name) {
                    Some(x) if x.ty != a.ty => {
                        return Err(DdbError::validation(format!(
                            "One or more parameter values were invalid: Attribute {} is already defined with type {}",
                            a.name,
                            x.ty.name()
                        )))
                    }
                    Some(_) => {}
                    None => meta.attrs.push(a),
                }
            }
        }
        if let Some(b) = opt_str(&req, "BillingMode")? {
            if !table::BILLING_MODES.contains(&b) {
                return Err(DdbError::not_in_enum(b, "billingMode", table::BILLING_MODES));
            }
            meta.billing = b.to_owned();
            if b == "PAY_PER_REQUEST" {
                meta.throughput = None;
            }
        }
        if let Some(t) = present(&req, "ProvisionedThroughput") {
            meta.throughput = Some(updated_throughput(t));
        }
        let mut created: Vec<IndexMeta> = Vec::new();
        if let Some(updates) = present(&req, "GlobalSecondaryIndexUpdates") {
            let updates = updates
                .as_array()
                .ok_or_else(|| DdbError::serialization("GlobalSecondaryIndexUpdates must be a list"))?;
            for (n, u) in updates.iter().enumerate() {
                if let Some(c) = present(u, "Create") {
                    let at = format!("globalSecondaryIndexUpdates.{}.member.create", n + 1);
                    let mut idx = table::parse_index(c, &meta.attrs, &meta.hash, meta.range.as_ref(), false, &meta.billing, &at)?;
                    if meta.indexes.iter().any(|i| i.name == idx.name) {
                        return Err(DdbError::validation(format!(
                            "One or more parameter values were invalid: Index with name: {} already exists",
                            idx.name
                        )));
                    }
                    if meta.indexes.iter().filter(|i| !i.local).count() >= table::MAX_GSI {
                        return Err(DdbError::new(
                            "LimitExceededException",
                            format!("Subscriber limit exceeded: Number of GSIs for table {} exceeded the limit of {}", meta.name, table::MAX_GSI),
                        ));
                    }
                    idx.id = ctx.next_id();
                    meta.indexes.push(idx.clone());
                    created.push(idx);
                } else if let Some(d) = present(u, "Delete") {
                    let idx = meta.indexes.remove(gsi_position(&meta, d)?);
                    ctx.conn.execute_batch(&format!("DROP TABLE IF EXISTS x{}", idx.id))?;
                } else if let Some(up) = present(u, "Update") {
                    let pos = gsi_position(&meta, up)?;
                    if let Some(t) = present(up, "ProvisionedThroughput") {
                        meta.indexes[pos].throughput = Some(updated_throughput(t));
                    }
                } else {
                    return Err(DdbError::validation(
                        "One or more parameter values were invalid: One of GlobalSecondaryIndexUpdate.Create, Update or Delete must be specified",
                    ));
                }
            }
        }
        // Attribute definitions must be exactly the key attributes in use.
        let mut used: BTreeSet<&str> = meta.key_names().into_iter().collect();
        for i in &meta.indexes {
            used.insert(&i.hash.name);
            if let Some(r) = &i.range {
                used.insert(&r.name);
            }
        }
        let used: BTreeSet<String> = used.into_iter().map(str::to_owned).collect();
        meta.attrs.retain(|a| used.contains(&a.name));
        if meta.attrs.len() != used.len() {
            return Err(DdbError::validation(
                "One or more parameter values were invalid: Some index key attributes are not defined in AttributeDefinitions",
            ));
        }
        for idx in &created {
            store::create_index_storage(ctx.conn, idx.id)?;
            let mut err = None;
            store::for_each_item(ctx.conn, &old, |item| {
                if let Some(ik) = meta.index_key(idx, item) {
                    let tk = meta.key(item);
                    if let Err(e) = store::insert_index_row(ctx.conn, idx.id, &ik, &tk, &meta.index_projection(idx, item)) {
                        err = Some(e);
                    }
                }
                Ok(())
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        let desc = describe(ctx.conn, &meta, &region, "ACTIVE")?;
        ctx.save_table(meta)?;
        Ok(json!({"TableDescription": desc}))
    })
    .await
}

/// The ProvisionedThroughput of an UpdateTable (of the table or one of its indexes): a
/// unit left out reads as 1.
fn updated_throughput(t: &Json) -> (i64, i64) {
    (
        t["ReadCapacityUnits"].as_i64().unwrap_or(1),
        t["WriteCapacityUnits"].as_i64().unwrap_or(1),
    )
}

/// Where the global secondary index named by an index update's `IndexName` is.
fn gsi_position(meta: &TableMeta, update: &Json) -> Result<usize> {
    let name = update["IndexName"].as_str().unwrap_or_default();
    meta.indexes
        .iter()
        .position(|i| i.name == name && !i.local)
        .ok_or_else(|| {
            DdbError::not_found(format!(
                "Requested resource not found: Index: {name} not found"
            ))
        })
}

async fn update_ttl(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    let spec = required(&req, "TimeToLiveSpecification")?.clone();
    let enabled = spec["Enabled"]
        .as_bool()
        .ok_or_else(|| DdbError::validation("TimeToLiveSpecification.Enabled is required"))?;
    let attr = spec["AttributeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if attr.is_empty() || attr.len() > 255 {
        return Err(DdbError::validation(
            "1 validation error detected: Value at 'timeToLiveSpecification.attributeName' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    db.write(move |ctx| {
        let mut meta: TableMeta = (*ctx.table(&name).map_err(|_| table_missing(&name))?).clone();
        match (&meta.ttl, enabled) {
            (Some(_), true) => return Err(DdbError::validation("TimeToLive is already enabled")),
            (None, false) => return Err(DdbError::validation("TimeToLive is already disabled")),
            (Some(a), false) if *a != attr => {
                return Err(DdbError::validation(format!(
                    "TimeToLive is enabled on attribute {a}, not {attr}"
                )))
            }
            _ => {}
        }
        meta.ttl = if enabled { Some(attr.clone()) } else { None };
        store::refresh_ttl(ctx.conn, &meta)?;
        ctx.save_table(meta)?;
        Ok(json!({"TimeToLiveSpecification": {"Enabled": enabled, "AttributeName": attr}}))
    })
    .await
}

async fn describe_ttl(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    let cat = db.catalog();
    let meta = cat.get(&name).ok_or_else(|| table_missing(&name))?;
    Ok(match &meta.ttl {
        Some(a) => {
            json!({"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": a}})
        }
        None => json!({"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}),
    })
}

fn table_from_arn(arn: &str) -> Result<String> {
    arn.split_once(":table/")
        .map(|(_, t)| t.split('/').next().unwrap_or(t).to_owned())
        .ok_or_else(|| {
            DdbError::validation(format!(
                "Invalid TableArn: Invalid ResourceArn provided as input {arn}"
            ))
        })
}

async fn tag_resource(db: &Arc<Db>, req: Json, add: bool) -> Result<Json> {
    let arn = opt_str(&req, "ResourceArn")?.unwrap_or_default().to_owned();
    let name = table_from_arn(&arn)?;
    let tags = table::parse_tags(&req["Tags"])?;
    let remove: Vec<String> = req["TagKeys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    db.write(move |ctx| {
        let mut meta: TableMeta = (*ctx.table(&name)?).clone();
        if add {
            for (k, v) in tags {
                meta.tags.retain(|(x, _)| *x != k);
                meta.tags.push((k, v));
            }
        } else {
            meta.tags.retain(|(k, _)| !remove.contains(k));
        }
        ctx.save_table(meta)?;
        Ok(json!({}))
    })
    .await
}

async fn list_tags(db: &Arc<Db>, req: Json) -> Result<Json> {
    let arn = opt_str(&req, "ResourceArn")?.unwrap_or_default().to_owned();
    let name = table_from_arn(&arn)?;
    let cat = db.catalog();
    let meta = cat.get(&name).ok_or_else(DdbError::table_not_found)?;
    let tags: Vec<Json> = meta
        .tags
        .iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    Ok(json!({"Tags": tags}))
}

// ---------------------------------------------------------------------------------------
// Single-item operations

async fn put_item(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    legacy::check_mixing(&req)?;
    legacy::check_conditional_operator(&req, "Expected")?;
    let item = item_field(&req, "Item")?;
    check_item_size(&item)?;
    let return_old = return_old_item(&req)?;
    let rvcf = return_old_on_condition_failure(&req)?;
    let ph = Placeholders::from_request(&req)?;
    let cond = write_condition(&req, &ph, "a PutItem")?;
    ph.check_unused()?;
    db.write(move |ctx| {
        let meta = ctx.table(&name)?;
        meta.validate_item_key(&item)?;
        // The old item is needed only for a condition, ReturnValues or index maintenance.
        let old = if cond.is_none() && !return_old && meta.indexes.is_empty() {
            None
        } else {
            store::get(ctx.conn, &meta, &meta.key(&item))?
        };
        check_condition(cond.as_ref(), old.as_ref(), rvcf)?;
        ctx.put(&meta, &item, old.as_ref())?;
        Ok(old_attrs_response(return_old, old.as_ref()))
    })
    .await
}

fn get_item(db: &Arc<Db>, req: Json) -> Result<Reply> {
    let name = table_name(&req)?;
    legacy::check_mixing(&req)?;
    let key = item_field(&req, "Key")?;
    let ph = Placeholders::from_request(&req)?;
    let ex = parse_exprs(&req, &ph, "ConditionExpression")?;
    if ex.cond.is_some() {
        return Err(DdbError::validation(
            "ConditionExpression is not a GetItem parameter",
        ));
    }
    ph.check_unused()?;
    let projection = ex.projection;
    let cat = db.catalog();
    let meta = cat.get(&name).ok_or_else(DdbError::table_not_found)?;
    meta.validate_key(&key)?;
    let Some(raw) = db.get_item_raw(meta, meta.key(&key))? else {
        return Ok(Reply::Json(json!({})));
    };
    Ok(match &projection {
        Some(p) => {
            let item = store::decode_item(&raw)?;
            Reply::Json(json!({"Item": item_to_json(&project(p, &item))}))
        }
        None => {
            let mut out = Vec::with_capacity(raw.len() + 10);
            out.extend_from_slice(b"{\"Item\":");
            out.extend_from_slice(&raw);
            out.push(b'}');
            Reply::Raw(out)
        }
    })
}

fn update_paths(u: &Update) -> Vec<Path> {
    let mut v: Vec<Path> = u.set.iter().map(|(p, _)| p.clone()).collect();
    v.extend(u.remove.iter().cloned());
    v.extend(u.add.iter().map(|(p, _)| p.clone()));
    v.extend(u.delete.iter().map(|(p, _)| p.clone()));
    v
}

fn check_key_not_updated(meta: &TableMeta, u: &Update) -> Result<()> {
    let roots = expr::update_roots(u);
    for k in meta.key_names() {
        if roots.contains(k) {
            return Err(DdbError::validation(format!(
                "One or more parameter values were invalid: Cannot update attribute {k}. This attribute is part of the key"
            )));
        }
    }
    Ok(())
}

/// Applies an update to the current item (or a new one made of the key).
fn updated_item(
    meta: &TableMeta,
    key: &Item,
    old: Option<&Item>,
    u: Option<&Update>,
) -> Result<Item> {
    let mut new = old.cloned().unwrap_or_else(|| key.clone());
    if let Some(u) = u {
        apply_update(u, &mut new)?;
    }
    check_item_size(&new)?;
    meta.validate_item_key(&new)?;
    Ok(new)
}

async fn update_item(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    legacy::check_mixing(&req)?;
    legacy::check_conditional_operator(&req, "Expected")?;
    let key = item_field(&req, "Key")?;
    let rv = return_values(&req)?.to_owned();
    let rvcf = return_old_on_condition_failure(&req)?;
    let ph = Placeholders::from_request(&req)?;
    let update = match opt_str(&req, "UpdateExpression")? {
        Some(s) => Some(parse_update(s, &ph)?),
        None => legacy::attribute_updates(&req)?,
    };
    let cond = write_condition(&req, &ph, "an UpdateItem")?;
    ph.check_unused()?;
    db.write(move |ctx| {
        let meta = ctx.table(&name)?;
        meta.validate_key(&key)?;
        if let Some(u) = &update {
            check_key_not_updated(&meta, u)?;
        }
        let old = store::get(ctx.conn, &meta, &meta.key(&key))?;
        check_condition(cond.as_ref(), old.as_ref(), rvcf)?;
        let new = updated_item(&meta, &key, old.as_ref(), update.as_ref())?;
        ctx.put(&meta, &new, old.as_ref())?;
        let paths = update.as_ref().map(update_paths).unwrap_or_default();
        // UPDATED_* answer with the (possibly empty) updated attributes whenever there is an
        // item to take them from, as DynamoDB does.
        Ok(match (rv.as_str(), &old) {
            ("ALL_OLD", _) => attrs_response(old.as_ref()),
            ("ALL_NEW", _) => attrs_response(Some(&new)),
            ("UPDATED_OLD", Some(o)) => json!({"Attributes": item_to_json(&project(&paths, o))}),
            ("UPDATED_NEW", _) => json!({"Attributes": item_to_json(&project(&paths, &new))}),
            _ => json!({}),
        })
    })
    .await
}

async fn delete_item(db: &Arc<Db>, req: Json) -> Result<Json> {
    let name = table_name(&req)?;
    legacy::check_mixing(&req)?;
    legacy::check_conditional_operator(&req, "Expected")?;
    let key = item_field(&req, "Key")?;
    let return_old = return_old_item(&req)?;
    let rvcf = return_old_on_condition_failure(&req)?;
    let ph = Placeholders::from_request(&req)?;
    let ex = parse_exprs(&req, &ph, "ConditionExpression")?;
    ph.check_unused()?;
    let cond = ex.cond;
    db.write(move |ctx| {
        let meta = ctx.table(&name)?;
        meta.validate_key(&key)?;
        let old = store::get(ctx.conn, &meta, &meta.key(&key))?;
        check_condition(cond.as_ref(), old.as_ref(), rvcf)?;
        if let Some(o) = &old {
            ctx.delete(&meta, o)?;
        }
        Ok(old_attrs_response(return_old, old.as_ref()))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Query and Scan

fn prefix_successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xFF {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

fn key_type_matches(ty: KeyType, v: &Value) -> Result<()> {
    if ty.matches(v) {
        Ok(())
    } else {
        Err(DdbError::validation(
            "One or more parameter values were invalid: Condition parameter type does not match schema type",
        ))
    }
}

/// Reads ExclusiveStartKey into storage positions.
/// A Query whose start key does not name exactly the key attributes is told so briefly,
/// a Scan at length, as DynamoDB words them; a key of the wrong type gets the long form.
fn start_key(
    meta: &TableMeta,
    index: Option<&IndexMeta>,
    esk: &Item,
    scan: bool,
) -> Result<(Option<StoredKey>, StoredKey)> {
    let invalid = || {
        DdbError::validation("The provided starting key is invalid: The provided key element does not match the schema")
    };
    let wrong_names = || {
        if scan {
            invalid()
        } else {
            DdbError::validation("The provided starting key is invalid")
        }
    };
    let mut names: BTreeSet<&str> = meta.key_names().into_iter().collect();
    if let Some(i) = index {
        names.insert(&i.hash.name);
        if let Some(r) = &i.range {
            names.insert(&r.name);
        }
    }
    if esk.len() != names.len() || !names.iter().all(|n| esk.contains_key(*n)) {
        return Err(wrong_names());
    }
    let index_keys = index
        .into_iter()
        .flat_map(|i| std::iter::once(&i.hash).chain(i.range.as_ref()));
    for ka in std::iter::once(&meta.hash)
        .chain(meta.range.as_ref())
        .chain(index_keys)
    {
        if !ka.ty.matches(&esk[&ka.name]) {
            return Err(invalid());
        }
    }
    let tk = meta.key(esk);
    let ik = match index {
        Some(i) => Some(meta.index_key(i, esk).ok_or_else(invalid)?),
        None => None,
    };
    Ok((ik, tk))
}

/// Where a Query's key condition comes from.
enum KeySource {
    /// KeyConditionExpression.
    Expr(String),
    /// The request, holding the legacy KeyConditions.
    Legacy(Json),
}

struct QueryPlan {
    name: String,
    index: Option<String>,
    key_cond: Option<KeySource>,
    filter: Option<Cond>,
    projection: Option<Vec<Path>>,
    select: String,
    limit: Option<usize>,
    forward: bool,
    esk: Option<Item>,
    segment: Option<(i64, i64)>,
    ph: Placeholders,
    /// ConsistentRead (refused on a GSI).
    consistent: bool,
    scan: bool,
}

fn parse_query(req: &Json, scan: bool) -> Result<QueryPlan> {
    let name = table_name(req)?;
    legacy::check_mixing(req)?;
    legacy::check_conditional_operator(req, if scan { "ScanFilter" } else { "QueryFilter" })?;
    let index = opt_str(req, "IndexName")?.map(str::to_owned);
    if let Some(i) = &index {
        table::validate_name(i, "indexName")?;
    }
    let ph = Placeholders::from_request(req)?;
    let key_cond = if scan {
        None
    } else if let Some(src) = opt_str(req, "KeyConditionExpression")? {
        Some(KeySource::Expr(src.to_owned()))
    } else if present(req, "KeyConditions").is_some() {
        Some(KeySource::Legacy(req.clone()))
    } else {
        return Err(DdbError::validation(
            "Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.",
        ));
    };
    let filter = match opt_str(req, "FilterExpression")? {
        Some(s) => Some(parse_condition(s, "FilterExpression", &ph)?),
        None => legacy::filter(req, if scan { "ScanFilter" } else { "QueryFilter" })?,
    };
    let projection = projection_of(req, &ph)?;
    let select = enum_field(
        req,
        "Select",
        &[
            "ALL_ATTRIBUTES",
            "ALL_PROJECTED_ATTRIBUTES",
            "SPECIFIC_ATTRIBUTES",
            "COUNT",
        ],
        "",
    )
    .or_else(|e| {
        if present(req, "Select").is_none() {
            Ok("")
        } else {
            Err(e)
        }
    })?;
    // Query words these refusals as a validation error, Scan bare, as DynamoDB does.
    let select_error = |m: String| {
        DdbError::validation(if scan {
            m
        } else {
            format!("1 validation error detected: {m}")
        })
    };
    let projection_field = if present(req, "ProjectionExpression").is_some() {
        "ProjectionExpression"
    } else {
        "AttributesToGet"
    };
    let select = match (select, projection.is_some()) {
        ("", true) => "SPECIFIC_ATTRIBUTES",
        ("", false) => {
            if index.is_some() {
                "ALL_PROJECTED_ATTRIBUTES"
            } else {
                "ALL_ATTRIBUTES"
            }
        }
        ("SPECIFIC_ATTRIBUTES", true) => "SPECIFIC_ATTRIBUTES",
        (s, true) => {
            return Err(select_error(format!(
                "Cannot specify the {projection_field} when choosing to get {}",
                if s == "COUNT" { "only the Count" } else { s }
            )))
        }
        ("SPECIFIC_ATTRIBUTES", false) => {
            return Err(select_error(
                "Must specify the AttributesToGet or ProjectionExpression when choosing to get SPECIFIC_ATTRIBUTES".to_owned(),
            ))
        }
        ("ALL_PROJECTED_ATTRIBUTES", false) if index.is_none() => {
            return Err(DdbError::validation(
                "One or more parameter values were invalid: Select type ALL_PROJECTED_ATTRIBUTES is supported only with IndexName",
            ))
        }
        (s, false) => s,
    }
    .to_owned();
    let limit = match present(req, "Limit") {
        Some(v) => {
            let l = v
                .as_i64()
                .ok_or_else(|| DdbError::serialization("Limit must be a number"))?;
            if l < 1 {
                return Err(DdbError::validation(format!(
                    "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
                )));
            }
            Some(l as usize)
        }
        None => None,
    };
    let forward = match present(req, "ScanIndexForward") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| DdbError::serialization("ScanIndexForward must be a boolean"))?,
        None => true,
    };
    let esk = present(req, "ExclusiveStartKey")
        .map(|k| {
            item_from_json(k).map_err(|e| {
                DdbError::validation(format!(
                    "The provided starting key is invalid: {}",
                    e.message
                ))
            })
        })
        .transpose()?;
    let consistent = match present(req, "ConsistentRead") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| DdbError::serialization("ConsistentRead must be a boolean"))?,
        None => false,
    };
    let segment = if scan {
        match (present(req, "Segment"), present(req, "TotalSegments")) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(DdbError::validation(
                    "The TotalSegments parameter is required but was not present in the request when Segment parameter is present",
                ))
            }
            (None, Some(_)) => {
                return Err(DdbError::validation(
                    "The Segment parameter is required but was not present in the request when parameter TotalSegments is present",
                ))
            }
            (Some(s), Some(t)) => {
                let s = s.as_i64().unwrap_or(-1);
                let t = t.as_i64().unwrap_or(0);
                if !(1..=1_000_000).contains(&t) {
                    return Err(DdbError::validation(format!(
                        "1 validation error detected: Value '{t}' at 'totalSegments' failed to satisfy constraint: Member must have value {} 1000000",
                        if t < 1 { "greater than or equal to 1, and less than or equal to" } else { "less than or equal to" }
                    )));
                }
                if s < 0 || s >= t {
                    return Err(DdbError::validation(format!(
                        "The Segment parameter is zero-based and must be less than parameter TotalSegments: Segment: {s} is not less than TotalSegments: {t}"
                    )));
                }
                let span = 1i64 << 31;
                Some((span * s / t, span * (s + 1) / t))
            }
        }
    } else {
        None
    };
    Ok(QueryPlan {
        name,
        index,
        key_cond,
        filter,
        projection,
        select,
        limit,
        forward,
        esk,
        segment,
        ph,
        consistent,
        scan,
    })
}

fn query(db: &Arc<Db>, req: Json, scan: bool) -> Result<Reply> {
    let plan = parse_query(&req, scan)?;
    if !matches!(plan.key_cond, Some(KeySource::Expr(_))) {
        plan.ph.check_unused()?;
    }
    db.read(|conn, cat| run_query(conn, cat, plan))
}

fn run_query(conn: &Connection, cat: &Catalog, plan: QueryPlan) -> Result<Reply> {
    let meta = cat.get(&plan.name).ok_or_else(DdbError::table_not_found)?;
    let index = match &plan.index {
        Some(n) => Some(meta.index(n)?),
        None => None,
    };
    if plan.consistent && index.is_some_and(|i| !i.local) {
        return Err(DdbError::validation(
            "Consistent reads are not supported on global secondary indexes",
        ));
    }
    let (hash, range) = match index {
        Some(i) => (&i.hash, i.range.as_ref()),
        None => (&meta.hash, meta.range.as_ref()),
    };
    let mut r = Range {
        backward: !plan.forward,
        segment: plan.segment,
        ..Default::default()
    };
    let key_cond = match &plan.key_cond {
        Some(KeySource::Expr(src)) => {
            let kc =
                parse_key_condition(src, &plan.ph, &hash.name, range.map(|r| r.name.as_str()))?;
            plan.ph.check_unused()?;
            Some(kc)
        }
        Some(KeySource::Legacy(req)) => Some(legacy::key_conditions(
            req,
            &hash.name,
            range.map(|r| r.name.as_str()),
        )?),
        None => None,
    };
    if let Some(kc) = key_cond {
        key_type_matches(hash.ty, &kc.hash)?;
        let hk = encode_key_value(&kc.hash);
        r.partition = Some((partition_hash(&hk), hk));
        if let (Some(rc), Some(ra)) = (&kc.range, range) {
            use crate::expr::CmpOp::*;
            match rc {
                RangeCond::Cmp(op, v) => {
                    key_type_matches(ra.ty, v)?;
                    let e = encode_key_value(v);
                    match op {
                        Eq => {
                            r.lower = Some((e.clone(), true));
                            r.upper = Some((e, true));
                        }
                        Lt => r.upper = Some((e, false)),
                        Le => r.upper = Some((e, true)),
                        Gt => r.lower = Some((e, false)),
                        Ge => r.lower = Some((e, true)),
                        Ne => unreachable!("refused by the parser"),
                    }
                }
                RangeCond::Between(a, b) => {
                    key_type_matches(ra.ty, a)?;
                    key_type_matches(ra.ty, b)?;
                    if crate::value::compare_values(a, b) == Some(std::cmp::Ordering::Greater) {
                        return Err(DdbError::validation(
                            "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound",
                        ));
                    }
                    r.lower = Some((encode_key_value(a), true));
                    r.upper = Some((encode_key_value(b), true));
                }
                RangeCond::BeginsWith(v) => {
                    if ra.ty == KeyType::N {
                        return Err(DdbError::validation(
                            "Invalid KeyConditionExpression: Incorrect operand type for operator or function; operator or function: begins_with, operand type: N",
                        ));
                    }
                    key_type_matches(ra.ty, v)?;
                    let e = encode_key_value(v);
                    r.upper = prefix_successor(&e).map(|s| (s, false));
                    r.lower = Some((e, true));
                }
            }
        }
        if let Some(f) = &plan.filter {
            let mut roots = BTreeSet::new();
            expr::cond_roots(f, &mut roots);
            for k in std::iter::once(&hash.name).chain(range.map(|r| &r.name)) {
                if roots.contains(k) {
                    return Err(DdbError::validation(format!(
                        "Filter Expression can only contain non-primary key attributes: Primary key attribute: {k}"
                    )));
                }
            }
        }
    }
    if let Some(esk) = &plan.esk {
        let (ik, tk) = start_key(meta, index, esk, plan.scan)?;
        if let Some((h, hk)) = &r.partition {
            let pos = ik.as_ref().unwrap_or(&tk);
            let below =
                r.lower.as_ref().is_some_and(
                    |(lo, incl)| {
                        if *incl {
                            pos.rk < *lo
                        } else {
                            pos.rk <= *lo
                        }
                    },
                );
            let above =
                r.upper.as_ref().is_some_and(
                    |(hi, incl)| {
                        if *incl {
                            pos.rk > *hi
                        } else {
                            pos.rk >= *hi
                        }
                    },
                );
            if pos.h != *h || pos.hk != *hk || below || above {
                return Err(DdbError::validation(
                    "The provided starting key is outside query boundaries based on provided conditions",
                ));
            }
        }
        if let Some((lo, hi)) = r.segment {
            let pos = ik.as_ref().unwrap_or(&tk);
            if pos.h < lo || pos.h >= hi {
                return Err(DdbError::validation(
                    "The provided Exclusive start key does not map to the provided Segment and TotalSegments values.",
                ));
            }
        }
        r.after = Some((ik, tk));
    }
    let mut fetch_from_table = false;
    if let Some(i) = index {
        if i.projection != Projection::All {
            match plan.select.as_str() {
                "ALL_ATTRIBUTES" if !i.local => {
                    return Err(DdbError::validation(format!(
                        "One or more parameter values were invalid: Select type ALL_ATTRIBUTES is not supported for global secondary index {} because its projection type is not ALL",
                        i.name
                    )))
                }
                "ALL_ATTRIBUTES" | "SPECIFIC_ATTRIBUTES" if i.local => fetch_from_table = true,
                _ => {}
            }
        }
    }
    let count_only = plan.select == "COUNT";
    // Without filter, projection or fetch, stored items are copied out as they are.
    let raw_copy = plan.filter.is_none() && plan.projection.is_none() && !fetch_from_table;
    let mut raw_items: Vec<u8> = Vec::new();
    let mut items = Vec::new();
    let mut count = 0usize;
    let mut scanned = 0usize;
    let mut size = 0usize;
    let mut last: Option<Vec<u8>> = None;
    let mut stopped = false;
    store::walk(conn, meta.id, index.map(|i| i.id), &r, |raw, sz| {
        scanned += 1;
        if raw_copy {
            size += sz;
            count += 1;
            if !count_only {
                if count > 1 {
                    raw_items.push(b',');
                }
                raw_items.extend_from_slice(raw);
            }
        } else {
            let mut item = store::decode_item(raw)?;
            let mut item_sz = sz;
            if fetch_from_table {
                if let Some((full, full_sz)) = store::get_raw(conn, meta, &meta.key(&item))? {
                    item = store::decode_item(&full)?;
                    item_sz = full_sz;
                }
            }
            size += item_sz;
            if plan.filter.as_ref().is_none_or(|f| eval(f, &item)) {
                count += 1;
                if !count_only {
                    items.push(match &plan.projection {
                        Some(p) => item_to_json(&project(p, &item)),
                        None => item_to_json(&item),
                    });
                }
            }
        }
        if plan.limit.is_some_and(|l| scanned >= l) || size >= MAX_PAGE_SIZE {
            last = Some(raw.to_vec());
            stopped = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    let lek = match (stopped, last) {
        (true, Some(raw)) => {
            let item = store::decode_item(&raw)?;
            let mut key = meta.key_item(&item);
            if let Some(i) = index {
                for ka in std::iter::once(&i.hash).chain(i.range.as_ref()) {
                    if let Some(v) = item.get(&ka.name) {
                        key.insert(ka.name.clone(), v.clone());
                    }
                }
            }
            Some(item_to_json(&key))
        }
        _ => None,
    };
    let mut out = Vec::with_capacity(raw_items.len() + 128);
    out.push(b'{');
    if !count_only {
        out.extend_from_slice(b"\"Items\":[");
        if raw_copy {
            out.extend_from_slice(&raw_items);
        } else {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, it)
                    .map_err(|e| DdbError::internal(e.to_string()))?;
            }
        }
        out.extend_from_slice(b"],");
    }
    out.extend_from_slice(format!("\"Count\":{count},\"ScannedCount\":{scanned}").as_bytes());
    if let Some(k) = lek {
        out.extend_from_slice(b",\"LastEvaluatedKey\":");
        serde_json::to_writer(&mut out, &k).map_err(|e| DdbError::internal(e.to_string()))?;
    }
    out.push(b'}');
    Ok(Reply::Raw(out))
}

// ---------------------------------------------------------------------------------------
// Batches

fn request_items(req: &Json) -> Result<&Map<String, Json>> {
    let ri = required(req, "RequestItems")?
        .as_object()
        .ok_or_else(|| DdbError::serialization("RequestItems must be a map"))?;
    if ri.is_empty() {
        return Err(DdbError::validation(
            "1 validation error detected: Value '{}' at 'requestItems' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    Ok(ri)
}

/// A batch naming one item twice.
fn duplicate_keys() -> DdbError {
    DdbError::validation("Provided list of item keys contains duplicates")
}

struct BatchGetTable {
    name: String,
    keys: Vec<Item>,
    projection: Option<Vec<Path>>,
    raw: Json,
}

async fn batch_get(db: &Arc<Db>, req: Json) -> Result<Json> {
    let ri = request_items(&req)?;
    let mut tables = Vec::new();
    let mut total = 0;
    for (name, spec) in ri {
        table::validate_name(name, "requestItems")?;
        legacy::check_mixing(spec)?;
        let keys = spec["Keys"]
            .as_array()
            .ok_or_else(|| DdbError::missing_member("requestItems.keys"))?;
        if keys.is_empty() {
            return Err(DdbError::validation(
                "1 validation error detected: Value '[]' at 'requestItems.keys' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        total += keys.len();
        let keys: Vec<Item> = keys.iter().map(item_from_json).collect::<Result<_>>()?;
        let ph = Placeholders::from_request(spec)?;
        let projection = projection_of(spec, &ph)?;
        ph.check_unused()?;
        tables.push(BatchGetTable {
            name: name.clone(),
            keys,
            projection,
            raw: spec.clone(),
        });
    }
    if total > MAX_BATCH_GET {
        return Err(DdbError::validation(
            "Too many items requested for the BatchGetItem call",
        ));
    }
    db.read(|conn, cat| {
        let mut responses = Map::new();
        let mut unprocessed = Map::new();
        let mut size = 0usize;
        for t in &tables {
            let meta = cat.get(&t.name).ok_or_else(DdbError::table_not_found)?;
            let mut seen = BTreeSet::new();
            for k in &t.keys {
                meta.validate_key(k)?;
                if !seen.insert(meta.key(k)) {
                    return Err(duplicate_keys());
                }
            }
        }
        for t in tables {
            let meta = &cat[&t.name];
            let mut got = Vec::new();
            let mut left = Vec::new();
            for k in &t.keys {
                if size >= MAX_BATCH_GET_SIZE {
                    left.push(item_to_json(k));
                    continue;
                }
                if let Some(item) = store::get(conn, meta, &meta.key(k))? {
                    size += item_size(&item);
                    got.push(item_to_json(&projected(t.projection.as_deref(), item)));
                }
            }
            responses.insert(t.name.clone(), Json::Array(got));
            if !left.is_empty() {
                let mut spec = t.raw.clone();
                spec["Keys"] = Json::Array(left);
                unprocessed.insert(t.name, spec);
            }
        }
        Ok(json!({"Responses": responses, "UnprocessedKeys": unprocessed}))
    })
}

enum WriteReq {
    Put(Item),
    Delete(Item),
}

async fn batch_write(db: &Arc<Db>, req: Json) -> Result<Json> {
    let ri = request_items(&req)?;
    let mut work: Vec<(String, Vec<WriteReq>)> = Vec::new();
    let mut total = 0;
    for (name, list) in ri {
        table::validate_name(name, "requestItems")?;
        let list = list
            .as_array()
            .ok_or_else(|| DdbError::serialization("RequestItems values must be lists"))?;
        if list.is_empty() {
            return Err(DdbError::validation(
                "1 validation error detected: Value '[]' at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to 25, Member must have length greater than or equal to 1]",
            ));
        }
        total += list.len();
        let mut reqs = Vec::new();
        for w in list {
            match (present(w, "PutRequest"), present(w, "DeleteRequest")) {
                (Some(p), None) => {
                    let item = item_field(p, "Item")?;
                    check_item_size(&item)?;
                    reqs.push(WriteReq::Put(item));
                }
                (None, Some(d)) => reqs.push(WriteReq::Delete(item_field(d, "Key")?)),
                _ => {
                    return Err(DdbError::validation(
                        "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
                    ))
                }
            }
        }
        work.push((name.clone(), reqs));
    }
    if total > MAX_BATCH_WRITE {
        return Err(DdbError::validation(format!(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to {MAX_BATCH_WRITE}, Member must have length greater than or equal to 1]"
        )));
    }
    db.write(move |ctx| {
        // Validate everything first: a bad request writes nothing.
        let mut metas = Vec::new();
        for (name, reqs) in &work {
            let meta = ctx.table(name)?;
            let mut seen = BTreeSet::new();
            for r in reqs {
                let key = match r {
                    WriteReq::Put(item) => {
                        meta.validate_item_key(item)?;
                        meta.key(item)
                    }
                    WriteReq::Delete(key) => {
                        meta.validate_key(key)?;
                        meta.key(key)
                    }
                };
                if !seen.insert(key) {
                    return Err(duplicate_keys());
                }
            }
            metas.push(meta);
        }
        for ((_, reqs), meta) in work.iter().zip(metas) {
            for r in reqs {
                match r {
                    WriteReq::Put(item) => {
                        let old = store::get(ctx.conn, &meta, &meta.key(item))?;
                        ctx.put(&meta, item, old.as_ref())?;
                    }
                    WriteReq::Delete(key) => {
                        if let Some(old) = store::get(ctx.conn, &meta, &meta.key(key))? {
                            ctx.delete(&meta, &old)?;
                        }
                    }
                }
            }
        }
        Ok(json!({"UnprocessedItems": {}}))
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Transactions

enum TxKind {
    Check,
    Put(Item),
    Delete,
    Update(Option<Update>),
}

struct TxOp {
    table: String,
    key: Item,
    kind: TxKind,
    cond: Option<Cond>,
    return_old: bool,
}

fn parse_tx_op(entry: &Json) -> Result<TxOp> {
    let kinds = ["ConditionCheck", "Put", "Delete", "Update"];
    let given: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| present(entry, k).is_some())
        .collect();
    if given.len() != 1 {
        return Err(DdbError::validation(
            "TransactItems can only contain one of Check, Put, Update or Delete",
        ));
    }
    let k = given[0];
    let spec = &entry[k];
    let table = table_name(spec)?;
    let ph = Placeholders::from_request(spec)?;
    let cond = opt_str(spec, "ConditionExpression")?
        .map(|s| parse_condition(s, "ConditionExpression", &ph))
        .transpose()?;
    let return_old = return_old_on_condition_failure(spec)?;
    let (key, kind) = match k {
        "ConditionCheck" => {
            if cond.is_none() {
                return Err(DdbError::missing_member(
                    "transactItems.1.member.conditionCheck.conditionExpression",
                ));
            }
            (item_field(spec, "Key")?, TxKind::Check)
        }
        "Put" => {
            let item = item_field(spec, "Item")?;
            check_item_size(&item)?;
            (Item::new(), TxKind::Put(item))
        }
        "Delete" => (item_field(spec, "Key")?, TxKind::Delete),
        _ => {
            let u = opt_str(spec, "UpdateExpression")?
                .map(|s| parse_update(s, &ph))
                .transpose()?;
            (item_field(spec, "Key")?, TxKind::Update(u))
        }
    };
    ph.check_unused()?;
    Ok(TxOp {
        table,
        key,
        kind,
        cond,
        return_old,
    })
}

/// A transaction with two operations on one item.
fn one_item_twice() -> DdbError {
    DdbError::validation("Transaction request cannot include multiple operations on one item")
}

fn cancelled(reasons: Vec<Json>) -> DdbError {
    let codes: Vec<String> = reasons
        .iter()
        .map(|r| r["Code"].as_str().unwrap_or("None").to_owned())
        .collect();
    DdbError::new(
        "TransactionCanceledException",
        format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
    )
    .with_extra(json!({"CancellationReasons": reasons}))
}

fn transact_items(req: &Json) -> Result<&Vec<Json>> {
    let items = required(req, "TransactItems")?
        .as_array()
        .ok_or_else(|| DdbError::serialization("TransactItems must be a list"))?;
    if items.is_empty() || items.len() > MAX_TRANSACT {
        return Err(DdbError::validation(format!(
            "1 validation error detected: Value at 'transactItems' failed to satisfy constraint: Member must have length {} {MAX_TRANSACT}",
            if items.is_empty() { "greater than or equal to 1, and less than or equal to" } else { "less than or equal to" }
        )));
    }
    Ok(items)
}

/// Largest TransactWriteItems, counting its items, keys and expression values.
pub const MAX_TRANSACT_SIZE: usize = 4 * 1024 * 1024;
/// How long a ClientRequestToken makes TransactWriteItems idempotent.
const TOKEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The size a transaction counts against [`MAX_TRANSACT_SIZE`]: its items, keys and
/// expression attribute values, sized as DynamoDB sizes items.
fn transaction_size(items: &[Json], ops: &[TxOp]) -> Result<usize> {
    let mut total = 0;
    for (entry, op) in items.iter().zip(ops) {
        total += item_size(&op.key);
        if let TxKind::Put(item) = &op.kind {
            total += item_size(item);
        }
        if let Some(spec) = entry.as_object().and_then(|o| o.values().next()) {
            if let Some(values) = present(spec, "ExpressionAttributeValues") {
                total += item_size(&item_from_json(values)?);
            }
        }
    }
    Ok(total)
}

async fn transact_write(db: &Arc<Db>, req: Json) -> Result<Json> {
    let items = transact_items(&req)?;
    let token = opt_str(&req, "ClientRequestToken")?.map(str::to_owned);
    if let Some(t) = &token {
        if t.is_empty() || t.len() > 36 {
            return Err(DdbError::validation(format!(
                "1 validation error detected: Value '{t}' at 'clientRequestToken' failed to satisfy constraint: Member must have length {}",
                if t.is_empty() { "greater than or equal to 1" } else { "less than or equal to 36" }
            )));
        }
    }
    let ops: Vec<TxOp> = items.iter().map(parse_tx_op).collect::<Result<_>>()?;
    if transaction_size(items, &ops)? > MAX_TRANSACT_SIZE {
        return Err(DdbError::validation(
            "Transaction request cannot be larger than 4 MB",
        ));
    }
    let Some(token) = token else {
        return db.write(move |ctx| run_transaction(ctx, ops)).await;
    };
    // The token is looked up and recorded inside the write, which the single writer
    // serialises: of two concurrent requests with one token, the second sees the first.
    let items = Json::Array(items.clone());
    let shared = db.clone();
    let key = token.clone();
    let answer = db
        .write(move |ctx| {
            let now = std::time::Instant::now();
            {
                let mut tokens = shared.tx_tokens.lock().unwrap_or_else(|p| p.into_inner());
                tokens.retain(|_, t| now.duration_since(t.at) < TOKEN_WINDOW);
                if let Some(t) = tokens.get(&key) {
                    if t.items != items {
                        return Err(DdbError::new(
                            "IdempotentParameterMismatchException",
                            "DynamoDB rejected the request because you retried a request with a different payload but with an idempotent token that was already used.",
                        ));
                    }
                    return Ok(t.answer.clone());
                }
            }
            let answer = run_transaction(ctx, ops)?;
            let mut tokens = shared.tx_tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens.insert(
                key,
                store::TxToken {
                    items,
                    answer: answer.clone(),
                    at: now,
                },
            );
            Ok(answer)
        })
        .await;
    if let Err(e) = &answer {
        // A commit that failed after the token was recorded: forget it, nothing was written.
        if e.status >= 500 {
            db.tx_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
        }
    }
    answer
}

fn run_transaction(ctx: &mut WriteCtx<'_>, ops: Vec<TxOp>) -> Result<Json> {
    // Validate keys and refuse two operations on one item.
    let mut metas = Vec::with_capacity(ops.len());
    let mut seen = BTreeSet::new();
    for op in &ops {
        let meta = ctx.table(&op.table)?;
        let key = match &op.kind {
            TxKind::Put(item) => {
                meta.validate_item_key(item)?;
                meta.key(item)
            }
            _ => {
                meta.validate_key(&op.key)?;
                meta.key(&op.key)
            }
        };
        if let TxKind::Update(Some(u)) = &op.kind {
            check_key_not_updated(&meta, u)?;
        }
        if !seen.insert((meta.id, key.clone())) {
            return Err(one_item_twice());
        }
        metas.push((meta, key));
    }
    // Check every condition and compute every new item before writing anything.
    let mut reasons = Vec::with_capacity(ops.len());
    let mut failed = false;
    let mut plans: Vec<(Option<Item>, Option<Item>)> = Vec::with_capacity(ops.len());
    for (op, (meta, key)) in ops.iter().zip(&metas) {
        let old = store::get(ctx.conn, meta, key)?;
        if let Some(c) = &op.cond {
            if !eval(c, old.as_ref().unwrap_or(&Item::new())) {
                failed = true;
                let mut r = json!({"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"});
                if let (true, Some(o)) = (op.return_old, &old) {
                    r["Item"] = item_to_json(o);
                }
                reasons.push(r);
                plans.push((None, None));
                continue;
            }
        }
        let new = match &op.kind {
            TxKind::Check => None,
            TxKind::Delete => None,
            TxKind::Put(item) => Some(item.clone()),
            TxKind::Update(u) => match updated_item(meta, &op.key, old.as_ref(), u.as_ref()) {
                Ok(n) => Some(n),
                Err(e) => {
                    failed = true;
                    reasons.push(json!({"Code": "ValidationError", "Message": e.message}));
                    plans.push((None, None));
                    continue;
                }
            },
        };
        reasons.push(json!({"Code": "None"}));
        plans.push((old, new));
    }
    if failed {
        return Err(cancelled(reasons));
    }
    for ((op, (meta, _)), (old, new)) in ops.iter().zip(&metas).zip(plans) {
        match (&op.kind, new) {
            (TxKind::Check, _) => {}
            (TxKind::Delete, _) => {
                if let Some(o) = &old {
                    ctx.delete(meta, o)?;
                }
            }
            (_, Some(n)) => ctx.put(meta, &n, old.as_ref())?,
            (_, None) => {}
        }
    }
    Ok(json!({}))
}

async fn transact_get(db: &Arc<Db>, req: Json) -> Result<Json> {
    let items = transact_items(&req)?;
    let mut gets = Vec::with_capacity(items.len());
    for entry in items {
        let spec = present(entry, "Get")
            .ok_or_else(|| DdbError::missing_member("transactItems.1.member.get"))?;
        let table = table_name(spec)?;
        let key = item_field(spec, "Key")?;
        let ph = Placeholders::from_request(spec)?;
        let projection = opt_str(spec, "ProjectionExpression")?
            .map(|s| parse_projection(s, &ph))
            .transpose()?;
        ph.check_unused()?;
        gets.push((table, key, projection));
    }
    db.read(|conn, cat| {
        let mut seen = BTreeSet::new();
        for (table, key, _) in &gets {
            let meta = cat.get(table).ok_or_else(DdbError::table_not_found)?;
            meta.validate_key(key)?;
            if !seen.insert((meta.id, meta.key(key))) {
                return Err(one_item_twice());
            }
        }
        let mut out = Vec::with_capacity(gets.len());
        for (table, key, projection) in &gets {
            let meta = &cat[table];
            out.push(match store::get(conn, meta, &meta.key(key))? {
                Some(item) => {
                    json!({"Item": item_to_json(&projected(projection.as_deref(), item))})
                }
                None => json!({}),
            });
        }
        Ok(json!({"Responses": out}))
    })
}

// ---------------------------------------------------------------------------------------
// TTL

/// Deletes items whose TTL passed (at most `limit` per table per call). Returns how many.
pub async fn sweep_ttl(db: &Arc<Db>, limit: usize) -> Result<usize> {
    if db.catalog().values().all(|t| t.ttl.is_none()) {
        return Ok(0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let r = db
        .write(move |ctx| {
            let metas: Vec<Arc<TableMeta>> =
                ctx.tables().filter(|t| t.ttl.is_some()).cloned().collect();
            let mut n = 0;
            for meta in metas {
                for item in store::expired(ctx.conn, &meta, now, limit)? {
                    ctx.delete(&meta, &item)?;
                    n += 1;
                }
            }
            Ok(json!(n))
        })
        .await?;
    Ok(r.as_u64().unwrap_or(0) as usize)
}
