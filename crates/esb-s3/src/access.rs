//! Authentication rules the box adds to those of s3s, checked once s3s has verified the
//! signature: presigned URLs valid for at most seven days, as on AWS; Signature Version 2
//! (header or query) refused unless [`crate::Config::allow_sigv2`] is set; anonymous
//! requests refused (s3s's default).

use s3s::access::{S3Access, S3AccessContext};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// The longest `X-Amz-Expires` AWS accepts: seven days, in seconds.
pub const MAX_PRESIGNED_EXPIRES: u64 = 604_800;

/// The box's access rules.
pub struct BoxAccess {
    /// Accept Signature Version 2 (off by default).
    pub allow_sigv2: bool,
}

#[async_trait::async_trait]
impl S3Access for BoxAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "Signature is required",
            ));
        }
        let auth = cx
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        check(cx.uri().query().unwrap_or(""), auth, self.allow_sigv2)
    }
}

/// The rules on a request's query string and `Authorization` header.
pub fn check(query: &str, authorization: Option<&str>, allow_sigv2: bool) -> S3Result<()> {
    let mut v2_query = (false, false);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "X-Amz-Expires" => match v.parse::<u64>() {
                Ok(n) if n <= MAX_PRESIGNED_EXPIRES => {}
                Ok(_) => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::AuthorizationQueryParametersError,
                        "X-Amz-Expires must be less than a week (in seconds) that is; 604800",
                    ))
                }
                Err(_) => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::AuthorizationQueryParametersError,
                        "X-Amz-Expires should be a number",
                    ))
                }
            },
            "AWSAccessKeyId" => v2_query.0 = true,
            "Signature" => v2_query.1 = true,
            _ => {}
        }
    }
    let v2_header = authorization.is_some_and(|a| a.starts_with("AWS "));
    if !allow_sigv2 && (v2_header || v2_query == (true, true)) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "The authorization mechanism you have provided is not supported. Please use \
             AWS4-HMAC-SHA256. (Signature Version 2 is off on this server: \
             ESB_S3_SIGV2=1 turns it on.)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: S3Result<()>) -> Option<S3ErrorCode> {
        r.err().map(|e| e.code().clone())
    }

    #[test]
    fn presigned_urls_last_at_most_a_week() {
        let q = |e: &str| {
            format!("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={e}&X-Amz-Signature=ab")
        };
        assert!(check(&q("604800"), None, false).is_ok());
        assert_eq!(
            code(check(&q("604801"), None, false)),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
        assert_eq!(
            code(check(&q("-1"), None, false)),
            Some(S3ErrorCode::AuthorizationQueryParametersError)
        );
    }

    #[test]
    fn signature_v2_only_when_enabled() {
        let v2 = Some("AWS AKID:c2lnbmF0dXJl");
        assert_eq!(
            code(check("", v2, false)),
            Some(S3ErrorCode::InvalidRequest)
        );
        assert!(check("", v2, true).is_ok());
        let q = "AWSAccessKeyId=AKID&Expires=1700000000&Signature=abc";
        assert_eq!(
            code(check(q, None, false)),
            Some(S3ErrorCode::InvalidRequest)
        );
        assert!(check(q, None, true).is_ok());
        let v4 = Some("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=ab");
        assert!(check("", v4, false).is_ok());
    }
}
