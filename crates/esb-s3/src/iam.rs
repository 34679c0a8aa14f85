//! Who may do what: the box's key pair may do everything; a function's key (from the
//! box's credentials file, [`esb_iam::CredentialStore`]) only what its policy allows.

use std::sync::Arc;

use esb_iam::{Access, CredentialStore};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, DeleteObjectsInput, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{s3_error, S3Request, S3Result};

/// The box's key and the functions' keys.
pub struct Keys {
    /// The box's access key id.
    pub box_key: String,
    /// The box's secret.
    pub box_secret: String,
    /// The functions' keys (`None`: only the box's key is accepted).
    pub functions: Option<Arc<CredentialStore>>,
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.box_key {
            return Ok(SecretKey::from(self.box_secret.as_str()));
        }
        match self.functions.as_ref().and_then(|s| s.lookup(access_key)) {
            Some(p) => Ok(SecretKey::from(p.secret_key.as_str())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// The IAM action of an S3 operation (AWS's mapping; operations without an entry use
/// `s3:` + their name).
pub fn action_of(op: &str) -> String {
    let a = match op {
        "GetObject" | "HeadObject" | "GetObjectAttributes" | "SelectObjectContent" => "GetObject",
        "PutObject"
        | "PostObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "CopyObject"
        | "UploadPartCopy" => "PutObject",
        "ListParts" => "ListMultipartUploadParts",
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => "ListBucket",
        "ListObjectVersions" => "ListBucketVersions",
        "ListMultipartUploads" => "ListBucketMultipartUploads",
        "ListBuckets" => "ListAllMyBuckets",
        "DeleteObjects" => "DeleteObject",
        other => other,
    };
    format!("s3:{a}")
}

/// The IAM action of an operation on one object version (a request with `versionId`), as
/// AWS maps them; `None` when the operation has no version-specific action.
pub fn version_action_of(op: &str) -> Option<&'static str> {
    Some(match op {
        "GetObject" | "HeadObject" => "s3:GetObjectVersion",
        "DeleteObject" => "s3:DeleteObjectVersion",
        "GetObjectTagging" => "s3:GetObjectVersionTagging",
        "PutObjectTagging" => "s3:PutObjectVersionTagging",
        "DeleteObjectTagging" => "s3:DeleteObjectVersionTagging",
        _ => return None,
    })
}

/// Whether a query string names an object version (`versionId=`).
fn names_version(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "versionId"))
}

/// The resource ARN of a path (`*` for the service itself).
pub fn resource_of(path: &S3Path) -> String {
    match path {
        S3Path::Root => "*".into(),
        S3Path::Bucket { bucket } => esb_iam::sam::ArnContext::s3(bucket, None),
        S3Path::Object { bucket, key } => esb_iam::sam::ArnContext::s3(bucket, Some(key)),
    }
}

/// Evaluates functions' requests against their policies.
pub struct Policies {
    /// The box's access key id (never evaluated).
    pub box_key: String,
    /// The functions' keys and policies.
    pub functions: Option<Arc<CredentialStore>>,
    /// The box's rules on signatures, checked first.
    pub rules: crate::access::BoxAccess,
}

impl Policies {
    fn decide(&self, access_key: Option<&str>, access: Access) -> S3Result<()> {
        let Some(key) = access_key else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        if key == self.box_key {
            return Ok(());
        }
        let Some(store) = &self.functions else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        let Some(p) = store.lookup(key) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        store
            .check(&p, &access)
            .map_err(|m| s3_error!(AccessDenied, "{m}"))
    }

    fn key_of<T>(req: &S3Request<T>) -> Option<&str> {
        req.credentials.as_ref().map(|c| c.access_key.as_str())
    }

    fn check_source(&self, key: Option<&str>, source: &CopySource) -> S3Result<()> {
        if let CopySource::Bucket {
            bucket,
            key: k,
            version_id,
        } = source
        {
            let action = if version_id.is_some() {
                "s3:GetObjectVersion"
            } else {
                "s3:GetObject"
            };
            self.decide(
                key,
                Access::new(action, esb_iam::sam::ArnContext::s3(bucket, Some(k))),
            )?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3Access for Policies {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        self.rules.check(cx).await?;
        let key = cx.credentials().map(|c| c.access_key.clone());
        let op = cx.s3_op().name();
        let action = match version_action_of(op) {
            Some(a) if names_version(cx.uri().query()) => a.to_owned(),
            _ => action_of(op),
        };
        // DeleteObjects names its keys in the body: each is checked in `delete_objects`
        // (s3:DeleteObject on the key); here only the signature.
        if cx.s3_op().name() == "DeleteObjects" {
            return match key {
                Some(_) => Ok(()),
                None => Err(s3_error!(AccessDenied, "Signature is required")),
            };
        }
        let resource = resource_of(cx.s3_path());
        self.decide(key.as_deref(), Access::new(action, resource))
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        self.check_source(Self::key_of(req), &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        self.check_source(Self::key_of(req), &req.input.copy_source)
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let key = Self::key_of(req);
        let bucket = req.input.bucket.clone();
        for o in &req.input.delete.objects {
            let action = if o.version_id.is_some() {
                "s3:DeleteObjectVersion"
            } else {
                "s3:DeleteObject"
            };
            self.decide(
                key,
                Access::new(action, esb_iam::sam::ArnContext::s3(&bucket, Some(&o.key))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_aws_actions() {
        assert_eq!(action_of("HeadObject"), "s3:GetObject");
        assert_eq!(action_of("UploadPart"), "s3:PutObject");
        assert_eq!(action_of("ListObjectsV2"), "s3:ListBucket");
        assert_eq!(action_of("DeleteObject"), "s3:DeleteObject");
        assert_eq!(action_of("CreateBucket"), "s3:CreateBucket");
        assert_eq!(
            resource_of(&S3Path::Object {
                bucket: "b".into(),
                key: "a/b".into()
            }),
            "arn:aws:s3:::b/a/b"
        );
        assert_eq!(resource_of(&S3Path::Root), "*");
        assert_eq!(version_action_of("HeadObject"), Some("s3:GetObjectVersion"));
        assert_eq!(
            version_action_of("DeleteObject"),
            Some("s3:DeleteObjectVersion")
        );
        assert_eq!(version_action_of("PutObject"), None);
        assert!(names_version(Some("versionId=abc&x=1")));
        assert!(!names_version(Some("versions")));
        assert!(!names_version(None));
    }
}
