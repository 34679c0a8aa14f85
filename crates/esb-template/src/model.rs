//! The template model: what esb needs to know about a SAM application, with every
//! intrinsic function resolved and Globals merged.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A parsed, resolved template.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Template {
    /// The template file (absent for templates parsed from a string).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Directory that relative `CodeUri` / `ContentUri` paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// `Description`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Effective parameter values (defaults, then overrides), as strings
    /// (list parameters joined with commas, as CloudFormation does).
    pub parameters: IndexMap<String, String>,
    /// Functions (`AWS::Serverless::Function` and `AWS::Lambda::Function`), in template order.
    pub functions: Vec<Function>,
    /// Layers (`AWS::Serverless::LayerVersion`).
    pub layers: Vec<Layer>,
    /// DynamoDB tables (`AWS::DynamoDB::Table`, `AWS::Serverless::SimpleTable`).
    pub tables: Vec<Table>,
    /// S3 buckets (`AWS::S3::Bucket`).
    pub buckets: Vec<Bucket>,
    /// Resources esb does not act on (unknown types, or a false `Condition`).
    pub ignored: Vec<IgnoredResource>,
    /// Non-fatal findings (unused overrides, ignored event types, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Template {
    /// The function with this logical id.
    pub fn function(&self, logical_id: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.logical_id == logical_id)
    }

    /// The layer with this logical id.
    pub fn layer(&self, logical_id: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.logical_id == logical_id)
    }
}

/// Which resource type a function came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FunctionKind {
    /// `AWS::Serverless::Function`
    Serverless,
    /// `AWS::Lambda::Function`
    Lambda,
}

/// Where a function's or layer's code comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Code {
    /// A local directory (`CodeUri: src/`), as written, and resolved against the template's
    /// directory.
    Dir {
        /// As written in the template.
        uri: String,
        /// Absolute path.
        #[serde(skip)]
        path: PathBuf,
    },
    /// A local zip archive (`CodeUri: app.zip`, what `sam build` and CI pipelines make),
    /// as written and resolved; unpacked into the image.
    Zip {
        /// As written in the template.
        uri: String,
        /// Absolute path.
        #[serde(skip)]
        path: PathBuf,
    },
    /// `InlineCode` / `Code.ZipFile`.
    Inline {
        /// The source text.
        source: String,
    },
    /// An S3 location (`s3://bucket/key` or `{Bucket, Key}`): not buildable locally.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// `PackageType: Image` with `ImageUri`.
    Image {
        /// The image reference.
        uri: String,
    },
}

/// A function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Function {
    /// Logical id in the template.
    pub logical_id: String,
    /// `FunctionName`, or the logical id.
    pub name: String,
    /// The resource type it came from.
    pub kind: FunctionKind,
    /// Its code.
    pub code: Code,
    /// `Handler` (absent for images and some custom runtimes).
    #[serde(default)]
    pub handler: Option<String>,
    /// `Runtime` (absent for images).
    #[serde(default)]
    pub runtime: Option<String>,
    /// `Timeout` in seconds (default 3).
    pub timeout: u32,
    /// `MemorySize` in MiB (default 128).
    pub memory_size: u32,
    /// `Environment.Variables`, resolved to strings.
    pub environment: IndexMap<String, String>,
    /// `Layers`, in order.
    pub layers: Vec<LayerRef>,
    /// `Architectures` (default `["x86_64"]`).
    pub architectures: Vec<String>,
    /// API events, in template order.
    pub events: Vec<Event>,
    /// `ReservedConcurrentExecutions`.
    #[serde(default)]
    pub reserved_concurrency: Option<u32>,
    /// `ProvisionedConcurrencyConfig.ProvisionedConcurrentExecutions`.
    #[serde(default)]
    pub provisioned_concurrency: Option<u32>,
    /// `AutoPublishAlias`.
    #[serde(default)]
    pub auto_publish_alias: Option<String>,
    /// The function's permissions, intrinsics resolved: each item a managed policy name or
    /// ARN, a SAM policy template (`{DynamoDBReadPolicy: {TableName: …}}`) or a policy
    /// document, from `Policies` or from the template role named by `Role`. `None`: the
    /// template gives none.
    #[serde(default)]
    pub policies: Option<Vec<serde_json::Value>>,
    /// `LoggingConfig` (Lambda's advanced logging controls).
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Line of the resource in the template.
    #[serde(skip)]
    pub line: usize,
}

/// A function's `LoggingConfig`, as Lambda's advanced logging controls take it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `LogFormat`: `Text` (default) or `JSON`.
    #[serde(default)]
    pub json: bool,
    /// `ApplicationLogLevel` (`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`).
    #[serde(default)]
    pub application_log_level: Option<String>,
    /// `SystemLogLevel` (`DEBUG`, `INFO`, `WARN`).
    #[serde(default)]
    pub system_log_level: Option<String>,
    /// `LogGroup` (default `/aws/lambda/FUNCTION`).
    #[serde(default)]
    pub log_group: Option<String>,
}

/// A reference to a layer from a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum LayerRef {
    /// A `LayerVersion` of this template, by logical id.
    Resource(String),
    /// Anything else (an ARN): cannot be built locally.
    Arn(String),
}

/// The kind of an API event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EventKind {
    /// `Type: Api` (REST API).
    Api,
    /// `Type: HttpApi`.
    HttpApi,
}

/// An API event of a function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Event name (key under `Events`).
    pub name: String,
    /// `Api` or `HttpApi`.
    pub kind: EventKind,
    /// `Path` (`$default` for an HttpApi event without one).
    pub path: String,
    /// `Method`, upper-case (`ANY` for an HttpApi event without one).
    pub method: String,
    /// `Auth`, when present.
    #[serde(default)]
    pub auth: Option<EventAuth>,
    /// `RestApiId` / `ApiId` as a logical id, when the event names an explicit API.
    #[serde(default)]
    pub api: Option<String>,
}

/// `Auth` of an API event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventAuth {
    /// `Authorizer` (`NONE` disables the API's default authorizer).
    #[serde(default)]
    pub authorizer: Option<String>,
    /// `ApiKeyRequired` (Api events).
    #[serde(default)]
    pub api_key_required: bool,
    /// `AuthorizationScopes`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Layer {
    /// Logical id.
    pub logical_id: String,
    /// `LayerName`, or the logical id.
    pub name: String,
    /// `ContentUri`.
    pub content: Code,
    /// `CompatibleRuntimes`.
    pub compatible_runtimes: Vec<String>,
    /// `CompatibleArchitectures`.
    #[serde(default)]
    pub compatible_architectures: Vec<String>,
    /// `Metadata.BuildMethod` (e.g. `python3.12`: install requirements.txt into python/).
    #[serde(default)]
    pub build_method: Option<String>,
    /// Line of the resource.
    #[serde(skip)]
    pub line: usize,
}

/// The resource type a table came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TableKind {
    /// `AWS::DynamoDB::Table`
    DynamoDb,
    /// `AWS::Serverless::SimpleTable`
    Simple,
}

/// A key attribute of a table or index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyAttribute {
    /// Attribute name.
    pub name: String,
    /// `S`, `N` or `B`.
    pub attr_type: String,
}

/// A secondary index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Index {
    /// `IndexName`.
    pub name: String,
    /// Partition key.
    pub hash_key: KeyAttribute,
    /// Sort key.
    #[serde(default)]
    pub range_key: Option<KeyAttribute>,
    /// `Projection.ProjectionType` (default `ALL`).
    pub projection: String,
}

/// A DynamoDB table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Table {
    /// Logical id.
    pub logical_id: String,
    /// `TableName`, or the logical id.
    pub name: String,
    /// Resource type.
    pub kind: TableKind,
    /// Partition key.
    pub hash_key: KeyAttribute,
    /// Sort key.
    #[serde(default)]
    pub range_key: Option<KeyAttribute>,
    /// Global secondary indexes.
    #[serde(default)]
    pub global_indexes: Vec<Index>,
    /// Local secondary indexes.
    #[serde(default)]
    pub local_indexes: Vec<Index>,
    /// `BillingMode` (default `PROVISIONED` for Table, `PAY_PER_REQUEST` if unset on SimpleTable).
    #[serde(default)]
    pub billing_mode: Option<String>,
    /// `StreamSpecification.StreamViewType`.
    #[serde(default)]
    pub stream_view_type: Option<String>,
    /// `TimeToLiveSpecification.AttributeName` when enabled.
    #[serde(default)]
    pub ttl_attribute: Option<String>,
    /// Line of the resource.
    #[serde(skip)]
    pub line: usize,
}

/// An S3 bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Logical id.
    pub logical_id: String,
    /// `BucketName`, or the logical id in lower case.
    pub name: String,
    /// `VersioningConfiguration.Status == Enabled`.
    pub versioned: bool,
    /// Line of the resource.
    #[serde(skip)]
    pub line: usize,
}

/// A resource esb does not act on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IgnoredResource {
    /// Logical id.
    pub logical_id: String,
    /// Its `Type`.
    pub resource_type: String,
    /// Why it is ignored.
    pub reason: String,
}
