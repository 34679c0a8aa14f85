//! The seed's client auth contract: an auth endpoint that trades an API key plus a user
//! name and password for an HS256 IdToken, and Bearer checks on routes.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

/// The response header that tells a wrong user apart from a wrong API key.
pub const AUTHORIZED_HEADER: &str = "PADMA_USER_AUTHORIZED";

/// Compares two secrets in constant time (for equal lengths; the length itself leaks).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Issues and checks IdTokens.
pub struct Auth {
    api_key: String,
    user: String,
    pass: String,
    expires: Duration,
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

/// The outcome of a call to the auth endpoint.
#[derive(Debug, PartialEq)]
pub enum Login {
    /// The IdToken response body.
    Ok(Value),
    /// Wrong or missing `x-api-key`: 401 without the header.
    BadApiKey,
    /// Right API key, wrong user or password: 401 with `PADMA_USER_AUTHORIZED: true` (a
    /// successful login carries that header too, as upstream ESB's does).
    BadUser,
    /// The body is not `{"AuthParameters":{"USERNAME","PASSWORD"}}`: 400.
    BadRequest(String),
}

impl Auth {
    /// An authenticator from the box's settings.
    pub fn new(secret: &str, api_key: &str, user: &str, pass: &str, expires: Duration) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Auth {
            api_key: api_key.into(),
            user: user.into(),
            pass: pass.into(),
            expires,
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The auth endpoint: `x-api-key` header value and the request body.
    pub fn login(&self, api_key: Option<&[u8]>, body: &[u8], now_secs: u64) -> Login {
        if !api_key.is_some_and(|k| secret_eq(k, self.api_key.as_bytes())) {
            return Login::BadApiKey;
        }
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Login::BadRequest(format!("body is not JSON: {e}")),
        };
        let params = &parsed["AuthParameters"];
        let (Some(user), Some(pass)) = (params["USERNAME"].as_str(), params["PASSWORD"].as_str())
        else {
            return Login::BadRequest(
                "expected {\"AuthParameters\":{\"USERNAME\":...,\"PASSWORD\":...}}".into(),
            );
        };
        // Both compared, always, so timing does not tell which one was wrong.
        let user_ok = secret_eq(user.as_bytes(), self.user.as_bytes());
        let pass_ok = secret_eq(pass.as_bytes(), self.pass.as_bytes());
        if !(user_ok & pass_ok) {
            return Login::BadUser;
        }
        let token = self.issue(user, now_secs);
        Login::Ok(json!({
            "AuthenticationResult": {
                "IdToken": token,
                "ExpiresIn": self.expires.as_secs(),
                "TokenType": "Bearer",
            }
        }))
    }

    /// A signed IdToken for `user`.
    pub fn issue(&self, user: &str, now_secs: u64) -> String {
        let claims = json!({
            "sub": user,
            "cognito:username": user,
            "token_use": "id",
            "iss": "esb",
            "iat": now_secs,
            "exp": now_secs + self.expires.as_secs(),
        });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing does not fail")
    }

    /// Checks an `Authorization` header value, `Bearer TOKEN` or (as upstream ESB accepts)
    /// the bare token; returns the token's claims.
    pub fn check_bearer(&self, header: Option<&[u8]>) -> Option<Value> {
        self.check_token(bearer_token(header?)?)
    }

    /// Verifies a token (signature, HS256 only, not expired); returns its claims.
    pub fn check_token(&self, token: &str) -> Option<Value> {
        jsonwebtoken::decode::<Value>(token, &self.dec, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// The token of an `Authorization` value: `Bearer TOKEN` (any case), or a bare token (three
/// dot-separated parts, no scheme) as upstream ESB's clients send it. `None` for any other
/// scheme (SigV4's `AWS4-HMAC-SHA256 …`, `Basic …`).
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let h = std::str::from_utf8(header).ok()?.trim();
    match h.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        Some(_) => None,
        None if h.split('.').count() == 3 => Some(h),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(SECRET, "key", "alice", "pw", Duration::from_secs(60))
    }

    fn now() -> u64 {
        crate::ids::now_ms() / 1000
    }

    #[test]
    fn login_contract() {
        let a = auth();
        let body = br#"{"AuthParameters":{"USERNAME":"alice","PASSWORD":"pw"}}"#;
        assert_eq!(a.login(None, body, now()), Login::BadApiKey);
        assert_eq!(a.login(Some(b"kex"), body, now()), Login::BadApiKey);
        assert_eq!(a.login(Some(b"keyy"), body, now()), Login::BadApiKey);
        let wrong = br#"{"AuthParameters":{"USERNAME":"alice","PASSWORD":"px"}}"#;
        assert_eq!(a.login(Some(b"key"), wrong, now()), Login::BadUser);
        assert!(matches!(
            a.login(Some(b"key"), b"{", now()),
            Login::BadRequest(_)
        ));
        assert!(matches!(
            a.login(Some(b"key"), b"{}", now()),
            Login::BadRequest(_)
        ));
        let Login::Ok(v) = a.login(Some(b"key"), body, now()) else {
            panic!()
        };
        let token = v["AuthenticationResult"]["IdToken"].as_str().unwrap();
        let claims = a
            .check_bearer(Some(format!("Bearer {token}").as_bytes()))
            .unwrap();
        assert_eq!(claims["cognito:username"], "alice");
        // Upstream's clients send the bare token too; any case of the scheme works.
        assert!(a.check_bearer(Some(token.as_bytes())).is_some());
        assert!(a
            .check_bearer(Some(format!("bearer  {token} ").as_bytes()))
            .is_some());
        assert!(a.check_bearer(Some(b"notatoken")).is_none());
    }

    #[test]
    fn forged_and_expired_tokens() {
        let a = auth();
        // Expired.
        let old = a.issue("alice", now() - 3600);
        assert!(a.check_token(&old).is_none());
        // Signed with another key.
        let other = Auth::new(
            "another-secret-another-secret-xx",
            "key",
            "alice",
            "pw",
            Duration::from_secs(60),
        );
        assert!(a.check_token(&other.issue("alice", now())).is_none());
        // alg=none and garbage.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(format!(r#"{{"exp":{}}}"#, now() + 100).as_bytes())
        );
        assert!(a.check_token(&none).is_none());
        assert!(a.check_token("a.b.c").is_none());
        assert!(a.check_bearer(Some(b"Basic abc")).is_none());
        assert!(a
            .check_bearer(Some(b"AWS4-HMAC-SHA256 Credential=x"))
            .is_none());
        assert!(a.check_bearer(None).is_none());
        // Tampered payload.
        let good = a.issue("alice", now());
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = base64_url(
            format!(r#"{{"cognito:username":"root","exp":{}}}"#, now() + 100).as_bytes(),
        );
        assert!(a.check_token(&parts.join(".")).is_none());
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}
