//! Table metadata: key schema, secondary indexes, billing mode, TTL; validation of
//! CreateTable / UpdateTable input and the TableDescription output.

use crate::error::{DdbError, Result};
use crate::value::{encode_key_value, Item, KeyType, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeSet;

/// Most global secondary indexes per table.
pub const MAX_GSI: usize = 20;
/// Most local secondary indexes per table.
pub const MAX_LSI: usize = 5;
/// The billing modes a table can have.
pub(crate) const BILLING_MODES: &[&str] = &["PROVISIONED", "PAY_PER_REQUEST"];

/// A key attribute: name and type.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAttr {
    /// Attribute name.
    pub name: String,
    /// S, N or B.
    pub ty: KeyType,
}

/// Which attributes an index holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// Every attribute.
    All,
    /// Only the table's and the index's keys.
    KeysOnly,
    /// Keys plus these attributes.
    Include(Vec<String>),
}

/// A secondary index.
#[derive(Debug, Clone)]
pub struct IndexMeta {
    /// Storage id (names the SQLite table `x<id>`).
    pub id: i64,
    /// IndexName.
    pub name: String,
    /// Partition key.
    pub hash: KeyAttr,
    /// Sort key.
    pub range: Option<KeyAttr>,
    /// Projection.
    pub projection: Projection,
    /// Local (shares the table's partition key) or global.
    pub local: bool,
    /// Provisioned throughput, when given.
    pub throughput: Option<(i64, i64)>,
}

/// A table.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// Storage id (names the SQLite table `t<id>`).
    pub id: i64,
    /// TableName.
    pub name: String,
    /// Opaque id reported as TableId.
    pub uuid: String,
    /// Partition key.
    pub hash: KeyAttr,
    /// Sort key.
    pub range: Option<KeyAttr>,
    /// All AttributeDefinitions.
    pub attrs: Vec<KeyAttr>,
    /// Indexes, global and local.
    pub indexes: Vec<IndexMeta>,
    /// PROVISIONED or PAY_PER_REQUEST.
    pub billing: String,
    /// Provisioned throughput (read, write).
    pub throughput: Option<(i64, i64)>,
    /// Creation time, seconds since the epoch.
    pub created: f64,
    /// TTL attribute, when TTL is enabled.
    pub ttl: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

/// The encoded key of an item in the table or an index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredKey {
    /// Hash of the partition key (scan order and segments).
    pub h: i64,
    /// Encoded partition key.
    pub hk: Vec<u8>,
    /// Encoded sort key (empty without one).
    pub rk: Vec<u8>,
}

/// Hash of an encoded partition key into 31 bits (FNV-1a).
pub fn partition_hash(hk: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hk {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 33) as i64
}

fn key_of(item: &Item, hash: &KeyAttr, range: Option<&KeyAttr>) -> Option<StoredKey> {
    let hv = item.get(&hash.name).filter(|v| hash.ty.matches(v))?;
    let hk = encode_key_value(hv);
    let rk = match range {
        Some(r) => encode_key_value(item.get(&r.name).filter(|v| r.ty.matches(v))?),
        None => Vec::new(),
    };
    Some(StoredKey {
        h: partition_hash(&hk),
        hk,
        rk,
    })
}

impl TableMeta {
    /// The stored key of an item whose key was validated.
    pub fn key(&self, item: &Item) -> StoredKey {
        key_of(item, &self.hash, self.range.as_ref()).expect("validated key")
    }

    /// The index key of an item, None when the item lacks the index's key attributes
    /// (indexes are sparse).
    pub fn index_key(&self, index: &IndexMeta, item: &Item) -> Option<StoredKey> {
        key_of(item, &index.hash, index.range.as_ref())
    }

    /// The table's key attribute names.
    pub fn key_names(&self) -> Vec<&str> {
        let mut v = vec![self.hash.name.as_str()];
        if let Some(r) = &self.range {
            v.push(r.name.as_str());
        }
        v
    }

    /// Looks up an index by name.
    pub fn index(&self, name: &str) -> Result<&IndexMeta> {
        self.indexes.iter().find(|i| i.name == name).ok_or_else(|| {
            DdbError::validation(format!(
                "The table does not have the specified index: {name}"
            ))
        })
    }

    /// The item restricted to the table's key attributes.
    pub fn key_item(&self, item: &Item) -> Item {
        self.key_names()
            .into_iter()
            .filter_map(|k| item.get(k).map(|v| (k.to_owned(), v.clone())))
            .collect()
    }

    /// The part of an item an index stores.
    pub fn index_projection(&self, index: &IndexMeta, item: &Item) -> Item {
        match &index.projection {
            Projection::All => item.clone(),
            p => {
                let mut keep: BTreeSet<&str> = self.key_names().into_iter().collect();
                keep.insert(&index.hash.name);
                if let Some(r) = &index.range {
                    keep.insert(&r.name);
                }
                if let Projection::Include(extra) = p {
                    keep.extend(extra.iter().map(|s| s.as_str()));
                }
                item.iter()
                    .filter(|(k, _)| keep.contains(k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }
        }
    }

    /// Validates a full primary key (`Key` of GetItem etc.): exactly the key attributes
    /// with the right types.
    pub fn validate_key(&self, key: &Item) -> Result<()> {
        let names = self.key_names();
        if key.len() != names.len() || !names.iter().all(|n| key.contains_key(*n)) {
            return Err(DdbError::validation(
                "The provided key element does not match the schema",
            ));
        }
        self.check_key_values(key, true)
    }

    /// Validates the key attributes of an item being written.
    pub fn validate_item_key(&self, item: &Item) -> Result<()> {
        for k in self.key_names() {
            if !item.contains_key(k) {
                return Err(DdbError::validation(format!(
                    "One or more parameter values were invalid: Missing the key {k} in the item"
                )));
            }
        }
        self.check_key_values(item, false)?;
        // Index keys present in the item must have the index's type.
        for idx in &self.indexes {
            for ka in std::iter::once(&idx.hash).chain(idx.range.as_ref()) {
                if let Some(v) = item.get(&ka.name) {
                    if !ka.ty.matches(v) {
                        return Err(DdbError::validation(format!(
                            "One or more parameter values were invalid: Type mismatch for Index Key {} Expected: {} Actual: {} IndexName: {}",
                            ka.name, ka.ty.name(), v.type_name(), idx.name
                        )));
                    }
                    if key_value_empty(v) {
                        return Err(DdbError::validation(format!(
                            "One or more parameter values are not valid. A value specified for a secondary index key is not supported. The AttributeValue for a key attribute cannot contain an empty string value. IndexName: {}, IndexKey: {}",
                            idx.name, ka.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_key_values(&self, item: &Item, for_key: bool) -> Result<()> {
        for (i, ka) in std::iter::once(&self.hash)
            .chain(self.range.as_ref())
            .enumerate()
        {
            let v = &item[&ka.name];
            if !ka.ty.matches(v) {
                return Err(DdbError::validation(if for_key {
                    "The provided key element does not match the schema".to_owned()
                } else {
                    format!(
                        "One or more parameter values were invalid: Type mismatch for key {} expected: {} actual: {}",
                        ka.name,
                        ka.ty.name(),
                        v.type_name()
                    )
                }));
            }
            if key_value_empty(v) {
                return Err(DdbError::validation(format!(
                    "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {} value. Key: {}",
                    if matches!(v, Value::S(_)) { "string" } else { "binary" },
                    ka.name
                )));
            }
            let len = encode_key_value(v).len();
            let max = if i == 0 { 2048 } else { 1024 };
            let size = match v {
                Value::S(s) => s.len(),
                Value::B(b) => b.len(),
                _ => len.min(max),
            };
            if size > max {
                // DynamoDB's wording, missing space included.
                return Err(DdbError::validation(if i == 0 {
                    "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of2048 bytes"
                } else {
                    "One or more parameter values were invalid: Aggregated size of all range keys has exceeded the size limit of 1024 bytes"
                }));
            }
        }
        Ok(())
    }

    /// The TableDescription of DescribeTable (and friends).
    pub fn describe(
        &self,
        region: &str,
        status: &str,
        count: i64,
        size: i64,
        index_stats: &[(i64, i64)],
    ) -> Json {
        let arn = format!("arn:aws:dynamodb:{region}:000000000000:table/{}", self.name);
        let mut t = Map::new();
        t.insert(
            "AttributeDefinitions".into(),
            Json::Array(
                self.attrs
                    .iter()
                    .map(|a| json!({"AttributeName": a.name, "AttributeType": a.ty.name()}))
                    .collect(),
            ),
        );
        t.insert("TableName".into(), json!(self.name));
        t.insert(
            "KeySchema".into(),
            key_schema_json(&self.hash, self.range.as_ref()),
        );
        t.insert("TableStatus".into(), json!(status));
        t.insert("CreationDateTime".into(), json!(self.created));
        t.insert(
            "ProvisionedThroughput".into(),
            throughput_json(self.throughput),
        );
        t.insert("TableSizeBytes".into(), json!(size));
        t.insert("ItemCount".into(), json!(count));
        t.insert("TableArn".into(), json!(arn));
        t.insert("TableId".into(), json!(self.uuid));
        if self.billing == "PAY_PER_REQUEST" {
            t.insert(
                "BillingModeSummary".into(),
                json!({"BillingMode": "PAY_PER_REQUEST", "LastUpdateToPayPerRequestDateTime": self.created}),
            );
        }
        let mut gsis = Vec::new();
        let mut lsis = Vec::new();
        for (i, idx) in self.indexes.iter().enumerate() {
            let (c, s) = index_stats.get(i).copied().unwrap_or((0, 0));
            let mut d = json!({
                "IndexName": idx.name,
                "KeySchema": key_schema_json(&idx.hash, idx.range.as_ref()),
                "Projection": projection_json(&idx.projection),
                "IndexSizeBytes": s,
                "ItemCount": c,
                "IndexArn": format!("{arn}/index/{}", idx.name),
            });
            if idx.local {
                lsis.push(d);
            } else {
                d["IndexStatus"] = json!("ACTIVE");
                d["ProvisionedThroughput"] = throughput_json(idx.throughput);
                gsis.push(d);
            }
        }
        if !gsis.is_empty() {
            t.insert("GlobalSecondaryIndexes".into(), Json::Array(gsis));
        }
        if !lsis.is_empty() {
            t.insert("LocalSecondaryIndexes".into(), Json::Array(lsis));
        }
        t.insert("DeletionProtectionEnabled".into(), json!(false));
        Json::Object(t)
    }

    /// Serialises the metadata for the catalog.
    pub fn to_json(&self) -> Json {
        json!({
            "id": self.id,
            "name": self.name,
            "uuid": self.uuid,
            "hash": key_attr_json(&self.hash),
            "range": self.range.as_ref().map(key_attr_json),
            "attrs": self.attrs.iter().map(key_attr_json).collect::<Vec<_>>(),
            "indexes": self.indexes.iter().map(|i| json!({
                "id": i.id,
                "name": i.name,
                "hash": key_attr_json(&i.hash),
                "range": i.range.as_ref().map(key_attr_json),
                "projection": projection_json(&i.projection),
                "local": i.local,
                "throughput": i.throughput.map(|(r, w)| json!([r, w])),
            })).collect::<Vec<_>>(),
            "billing": self.billing,
            "throughput": self.throughput.map(|(r, w)| json!([r, w])),
            "created": self.created,
            "ttl": self.ttl,
            "tags": self.tags.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        })
    }

    /// Reads metadata written by [`TableMeta::to_json`].
    pub fn from_json(j: &Json) -> Option<TableMeta> {
        let ka = |v: &Json| -> Option<KeyAttr> {
            Some(KeyAttr {
                name: v["name"].as_str()?.to_owned(),
                ty: KeyType::parse(v["ty"].as_str()?)?,
            })
        };
        let tp = |v: &Json| -> Option<(i64, i64)> { Some((v[0].as_i64()?, v[1].as_i64()?)) };
        let mut indexes = Vec::new();
        for i in j["indexes"].as_array()? {
            indexes.push(IndexMeta {
                id: i["id"].as_i64()?,
                name: i["name"].as_str()?.to_owned(),
                hash: ka(&i["hash"])?,
                range: if i["range"].is_null() {
                    None
                } else {
                    Some(ka(&i["range"])?)
                },
                projection: parse_projection(&i["projection"]).ok()?,
                local: i["local"].as_bool()?,
                throughput: tp(&i["throughput"]),
            });
        }
        Some(TableMeta {
            id: j["id"].as_i64()?,
            name: j["name"].as_str()?.to_owned(),
            uuid: j["uuid"].as_str()?.to_owned(),
            hash: ka(&j["hash"])?,
            range: if j["range"].is_null() {
                None
            } else {
                Some(ka(&j["range"])?)
            },
            attrs: j["attrs"]
                .as_array()?
                .iter()
                .map(ka)
                .collect::<Option<_>>()?,
            indexes,
            billing: j["billing"].as_str()?.to_owned(),
            throughput: tp(&j["throughput"]),
            created: j["created"].as_f64()?,
            ttl: j["ttl"].as_str().map(str::to_owned),
            tags: j["tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| {
                            Some((t[0].as_str()?.to_owned(), t[1].as_str()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

fn key_value_empty(v: &Value) -> bool {
    matches!(v, Value::S(s) if s.is_empty()) || matches!(v, Value::B(b) if b.is_empty())
}

fn key_attr_json(k: &KeyAttr) -> Json {
    json!({"name": k.name, "ty": k.ty.name()})
}

fn key_schema_json(hash: &KeyAttr, range: Option<&KeyAttr>) -> Json {
    let mut v = vec![json!({"AttributeName": hash.name, "KeyType": "HASH"})];
    if let Some(r) = range {
        v.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
    }
    Json::Array(v)
}

fn throughput_json(t: Option<(i64, i64)>) -> Json {
    let (r, w) = t.unwrap_or((0, 0));
    json!({"NumberOfDecreasesToday": 0, "ReadCapacityUnits": r, "WriteCapacityUnits": w})
}

fn projection_json(p: &Projection) -> Json {
    match p {
        Projection::All => json!({"ProjectionType": "ALL"}),
        Projection::KeysOnly => json!({"ProjectionType": "KEYS_ONLY"}),
        Projection::Include(a) => json!({"ProjectionType": "INCLUDE", "NonKeyAttributes": a}),
    }
}

/// Validates a table or index name.
pub fn validate_name(name: &str, what: &str) -> Result<()> {
    if name.len() < 3 || name.len() > 255 {
        return Err(DdbError::validation(format!(
            "1 validation error detected: Value '{name}' at '{what}' failed to satisfy constraint: Member must have length {} 3",
            if name.len() < 3 { "greater than or equal to" } else { "less than or equal to 255, and at least" }
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(DdbError::validation(format!(
            "1 validation error detected: Value '{name}' at '{what}' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )));
    }
    Ok(())
}

fn parse_key_schema(v: &Json, attrs: &[KeyAttr], what: &str) -> Result<(KeyAttr, Option<KeyAttr>)> {
    let list = v
        .as_array()
        .ok_or_else(|| DdbError::validation(format!("{what}: KeySchema is required")))?;
    if list.is_empty() || list.len() > 2 {
        return Err(DdbError::validation(format!(
            "1 validation error detected: Value '{}' at 'keySchema' failed to satisfy constraint: Member must have length less than or equal to 2",
            list.len()
        )));
    }
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let name = e["AttributeName"].as_str().unwrap_or_default();
        let kt = e["KeyType"].as_str().unwrap_or_default();
        let want = if i == 0 { "HASH" } else { "RANGE" };
        if kt != want {
            return Err(DdbError::validation(format!(
                "Invalid KeySchema: The {} KeySchemaElement is not a {want} key type",
                if i == 0 { "first" } else { "second" }
            )));
        }
        let def = attrs.iter().find(|a| a.name == name).ok_or_else(|| {
            DdbError::validation(format!(
                "One or more parameter values were invalid: Some index key attributes are not defined in AttributeDefinitions. Keys: [{name}], AttributeDefinitions: [{}]",
                attrs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        out.push(def.clone());
    }
    if out.len() == 2 && out[0].name == out[1].name {
        return Err(DdbError::validation(
            "Both the Hash Key and the Range Key element in the KeySchema have the same name",
        ));
    }
    let range = out.get(1).cloned();
    Ok((out.swap_remove(0), range))
}

/// Parses a `Projection` object.
pub fn parse_projection(p: &Json) -> Result<Projection> {
    let ty = p["ProjectionType"].as_str().ok_or_else(|| {
        DdbError::validation(
            "One or more parameter values were invalid: Unknown ProjectionType: null",
        )
    })?;
    let nka = p.get("NonKeyAttributes").filter(|v| !v.is_null());
    match ty {
        "ALL" | "KEYS_ONLY" if nka.is_some() => Err(DdbError::validation(format!(
            "One or more parameter values were invalid: ProjectionType is {ty}, but NonKeyAttributes is specified"
        ))),
        "ALL" => Ok(Projection::All),
        "KEYS_ONLY" => Ok(Projection::KeysOnly),
        "INCLUDE" => {
            let list = nka.and_then(|v| v.as_array()).ok_or_else(|| {
                DdbError::validation(
                    "One or more parameter values were invalid: NonKeyAttributes must not be empty",
                )
            })?;
            Ok(Projection::Include(
                list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            ))
        }
        other => Err(DdbError::not_in_enum(
            other,
            "projection.projectionType",
            &["ALL", "INCLUDE", "KEYS_ONLY"],
        )),
    }
}

fn parse_throughput(v: &Json) -> Result<Option<(i64, i64)>> {
    if v.is_null() {
        return Ok(None);
    }
    let r = v["ReadCapacityUnits"].as_i64();
    let w = v["WriteCapacityUnits"].as_i64();
    match (r, w) {
        (Some(r), Some(w)) if r >= 1 && w >= 1 => Ok(Some((r, w))),
        (Some(_), Some(_)) => Err(DdbError::validation(
            "One or more parameter values were invalid: Provisioned throughput values must be greater than or equal to 1",
        )),
        _ => Err(DdbError::validation(
            "One or more parameter values were invalid: ReadCapacityUnits and WriteCapacityUnits must both be specified",
        )),
    }
}

/// Parses AttributeDefinitions.
pub fn parse_attribute_definitions(v: &Json) -> Result<Vec<KeyAttr>> {
    let list = v
        .as_array()
        .ok_or_else(|| DdbError::missing_member("attributeDefinitions"))?;
    let mut out: Vec<KeyAttr> = Vec::new();
    for a in list {
        let name = a["AttributeName"].as_str().unwrap_or_default().to_owned();
        let ty = a["AttributeType"].as_str().unwrap_or_default();
        let ty = KeyType::parse(ty).ok_or_else(|| {
            DdbError::not_in_enum(
                ty,
                "attributeDefinitions.1.member.attributeType",
                &["B", "N", "S"],
            )
        })?;
        if out.iter().any(|o| o.name == name) {
            return Err(DdbError::validation(format!(
                "Attribute Name is duplicated: {name}"
            )));
        }
        out.push(KeyAttr { name, ty });
    }
    Ok(out)
}

/// Parses one GSI or LSI definition; `at` names it in messages
/// (`globalSecondaryIndexes.1.member`).
pub fn parse_index(
    v: &Json,
    attrs: &[KeyAttr],
    table_hash: &KeyAttr,
    table_range: Option<&KeyAttr>,
    local: bool,
    billing: &str,
    at: &str,
) -> Result<IndexMeta> {
    let name = v["IndexName"].as_str().unwrap_or_default().to_owned();
    validate_name(&name, "indexName")?;
    let (hash, range) = parse_key_schema(&v["KeySchema"], attrs, "Index")?;
    if local {
        if table_range.is_none() {
            return Err(DdbError::validation(
                "One or more parameter values were invalid: Table KeySchema does not have a range key, which is required when specifying a LocalSecondaryIndex",
            ));
        }
        if hash.name != table_hash.name {
            return Err(DdbError::validation(format!(
                "One or more parameter values were invalid: Index KeySchema does not have the same leading hash key as table KeySchema for index: {name}. index hash key: {}, table hash key: {}",
                hash.name, table_hash.name
            )));
        }
        if range.is_none() {
            return Err(DdbError::validation(format!(
                "One or more parameter values were invalid: Index KeySchema for index {name} must have a range key"
            )));
        }
    }
    if v.get("Projection").is_none_or(Json::is_null) {
        return Err(DdbError::missing_member(&format!("{at}.projection")));
    }
    let projection = parse_projection(&v["Projection"])?;
    let throughput = parse_throughput(&v["ProvisionedThroughput"])?;
    if !local && billing == "PROVISIONED" && throughput.is_none() {
        return Err(DdbError::validation(format!(
            "One or more parameter values were invalid: ProvisionedThroughput must be specified for index: {name}"
        )));
    }
    Ok(IndexMeta {
        id: 0,
        name,
        hash,
        range,
        projection,
        local,
        throughput,
    })
}

/// Validates CreateTable input into metadata (ids left at 0).
pub fn parse_create_table(req: &Json) -> Result<TableMeta> {
    let name = req["TableName"].as_str().unwrap_or_default().to_owned();
    validate_name(&name, "tableName")?;
    let attrs = parse_attribute_definitions(&req["AttributeDefinitions"])?;
    let (hash, range) = parse_key_schema(&req["KeySchema"], &attrs, "Table")?;
    let billing = req["BillingMode"]
        .as_str()
        .unwrap_or("PROVISIONED")
        .to_owned();
    let throughput = parse_throughput(&req["ProvisionedThroughput"])?;
    match billing.as_str() {
        "PROVISIONED" if throughput.is_none() => {
            return Err(DdbError::validation(
                "One or more parameter values were invalid: ReadCapacityUnits and WriteCapacityUnits must both be specified when BillingMode is PROVISIONED",
            ))
        }
        "PAY_PER_REQUEST" if throughput.is_some() => {
            return Err(DdbError::validation(
                "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST",
            ))
        }
        "PROVISIONED" | "PAY_PER_REQUEST" => {}
        other => return Err(DdbError::not_in_enum(other, "billingMode", BILLING_MODES)),
    }
    let mut indexes = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    used.insert(hash.name.clone());
    if let Some(r) = &range {
        used.insert(r.name.clone());
    }
    for (field, local, max) in [
        ("GlobalSecondaryIndexes", false, MAX_GSI),
        ("LocalSecondaryIndexes", true, MAX_LSI),
    ] {
        if let Some(list) = req.get(field).filter(|v| !v.is_null()) {
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                return Err(DdbError::validation(format!(
                    "One or more parameter values were invalid: List of {field} is empty"
                )));
            }
            if list.len() > max {
                return Err(DdbError::validation(format!(
                    "One or more parameter values were invalid: {} indexes exceed the limit of {max}",
                    if local { "LocalSecondaryIndex" } else { "GlobalSecondaryIndex" }
                )));
            }
            for (n, v) in list.iter().enumerate() {
                let idx = parse_index(
                    v,
                    &attrs,
                    &hash,
                    range.as_ref(),
                    local,
                    &billing,
                    &format!(
                        "{}.{}.member",
                        if local {
                            "localSecondaryIndexes"
                        } else {
                            "globalSecondaryIndexes"
                        },
                        n + 1
                    ),
                )?;
                if indexes.iter().any(|i: &IndexMeta| i.name == idx.name) {
                    return Err(DdbError::validation(format!(
                        "One or more parameter values were invalid: Duplicate index name: {}",
                        idx.name
                    )));
                }
                used.insert(idx.hash.name.clone());
                if let Some(r) = &idx.range {
                    used.insert(r.name.clone());
                }
                indexes.push(idx);
            }
        }
    }
    if used.len() != attrs.len() {
        // Every defined attribute is used (a missing definition was refused above), so
        // some definition is not.
        let has_indexes = !indexes.is_empty();
        return Err(DdbError::validation(if has_indexes {
            let mut keys: Vec<&str> = vec![hash.name.as_str()];
            keys.extend(range.as_ref().map(|r| r.name.as_str()));
            for i in &indexes {
                for k in std::iter::once(&i.hash).chain(i.range.as_ref()) {
                    if !keys.contains(&k.name.as_str()) {
                        keys.push(&k.name);
                    }
                }
            }
            format!(
                "One or more parameter values were invalid: Some AttributeDefinitions are not used. AttributeDefinitions: [{}], keys used: [{}]",
                attrs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "),
                keys.join(", ")
            )
        } else {
            "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions".to_owned()
        }));
    }
    let tags = parse_tags(&req["Tags"])?;
    Ok(TableMeta {
        id: 0,
        name,
        uuid: uuid::Uuid::new_v4().to_string(),
        hash,
        range,
        attrs,
        indexes,
        billing,
        throughput,
        created: now_secs(),
        ttl: None,
        tags,
    })
}

/// Parses a Tags list.
pub fn parse_tags(v: &Json) -> Result<Vec<(String, String)>> {
    let Some(list) = v.as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|t| {
            let k = t["Key"]
                .as_str()
                .ok_or_else(|| DdbError::validation("Tag Key is required"))?;
            let v = t["Value"].as_str().unwrap_or_default();
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Seconds since the epoch, as DynamoDB reports dates.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}
