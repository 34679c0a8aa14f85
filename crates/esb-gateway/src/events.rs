//! API Gateway proxy events: REST API v1 for `Api` events, HTTP API payload 2.0 for
//! `HttpApi` events, and the conversion of the function's answer into an HTTP response.

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

/// What an event is built from.
pub struct EventRequest<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path as received (percent-encoded).
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Request body.
    pub body: &'a [u8],
    /// Client address.
    pub source_ip: &'a str,
    /// `x-amzn-RequestId` of this request.
    pub request_id: &'a str,
    /// Arrival time, ms since the epoch.
    pub now_ms: u64,
    /// The route's path as in the template (`/items/{id}`) — v1 `resource`.
    pub resource: &'a str,
    /// The route key (`GET /items/{id}`, `$default`) — v2.
    pub route_key: &'a str,
    /// Bound path parameters.
    pub path_params: &'a [(String, String)],
    /// JWT claims of an authorised request.
    pub claims: Option<&'a Value>,
    /// REST stage name (v1); HTTP APIs use `$default`.
    pub stage: &'a str,
    /// Account id.
    pub account_id: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'a str,
}

const API_ID: &str = "esbapi0001";

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Query pairs, decoded, in order.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn header_str(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// Whether the body goes to the function base64-encoded: bodies that are not UTF-8 and
/// bodies of binary media types.
pub fn is_binary(headers: &HeaderMap, body: &[u8]) -> bool {
    if std::str::from_utf8(body).is_err() {
        return true;
    }
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    [
        "image/",
        "audio/",
        "video/",
        "application/octet-stream",
        "application/zip",
        "application/pdf",
        "application/gzip",
    ]
    .iter()
    .any(|p| ct.starts_with(p))
}

fn body_fields(req: &EventRequest<'_>) -> (Value, bool) {
    if req.body.is_empty() {
        return (Value::Null, false);
    }
    if is_binary(req.headers, req.body) {
        (
            Value::String(base64::engine::general_purpose::STANDARD.encode(req.body)),
            true,
        )
    } else {
        (
            Value::String(String::from_utf8_lossy(req.body).into_owned()),
            false,
        )
    }
}

fn user_agent(req: &EventRequest<'_>) -> Value {
    req.headers
        .get(http::header::USER_AGENT)
        .map(|v| Value::String(header_str(v)))
        .unwrap_or(Value::Null)
}

fn host(req: &EventRequest<'_>) -> String {
    req.headers
        .get(http::header::HOST)
        .map(header_str)
        .unwrap_or_else(|| "localhost".into())
}

fn params_obj(params: &[(String, String)]) -> Value {
    if params.is_empty() {
        return Value::Null;
    }
    Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A token's claims as upstream ESB's events carry them: `cognito:username` and `username`
/// both set (each from the other, else from `sub`).
fn with_username(claims: &Value) -> Value {
    let mut c = claims.clone();
    if let Value::Object(m) = &mut c {
        let user = ["cognito:username", "username", "sub"]
            .iter()
            .find_map(|k| m.get(*k).filter(|v| v.is_string()).cloned());
        if let Some(user) = user {
            m.entry("cognito:username").or_insert_with(|| user.clone());
            m.entry("username").or_insert(user);
        }
    }
    c
}

/// The REST API (v1) proxy event.
pub fn v1_event(req: &EventRequest<'_>) -> Value {
    let mut headers = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for (name, value) in req.headers.iter() {
        // API Gateway passes header names as the client sent them; HTTP/2 and hyper
        // give lower case.
        let v = header_str(value);
        headers.insert(name.as_str().to_string(), Value::String(v.clone()));
        match multi.get_mut(name.as_str()) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            _ => {
                multi.insert(name.as_str().to_string(), json!([v]));
            }
        }
    }
    let pairs = query_pairs(req.query);
    let (qs, mqs) = if pairs.is_empty() {
        (Value::Null, Value::Null)
    } else {
        let mut single = Map::new();
        let mut multi_q: Map<String, Value> = Map::new();
        for (k, v) in &pairs {
            // The last value wins in the single-value map, as in API Gateway.
            single.insert(k.clone(), Value::String(v.clone()));
            match multi_q.get_mut(k) {
                Some(Value::Array(a)) => a.push(Value::String(v.clone())),
                _ => {
                    multi_q.insert(k.clone(), json!([v]));
                }
            }
        }
        (Value::Object(single), Value::Object(multi_q))
    };
    let (body, b64) = body_fields(req);
    let authorizer = match req.claims {
        Some(c) => {
            let claims = with_username(c);
            // Upstream ESB also puts the user at the authorizer's top level.
            let user = claims["cognito:username"].clone();
            json!({ "claims": claims, "cognito:username": user })
        }
        None => Value::Null,
    };
    let host = host(req);
    let resource_path = req.resource;
    json!({
        "resource": resource_path,
        "path": decode(req.path),
        "httpMethod": req.method,
        "headers": if headers.is_empty() { Value::Null } else { Value::Object(headers) },
        "multiValueHeaders": if multi.is_empty() { Value::Null } else { Value::Object(multi) },
        "queryStringParameters": qs,
        "multiValueQueryStringParameters": mqs,
        "pathParameters": params_obj(req.path_params),
        "stageVariables": Value::Null,
        "requestContext": {
            "accountId": req.account_id,
            "apiId": API_ID,
            "authorizer": authorizer,
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "extendedRequestId": req.request_id,
            "httpMethod": req.method,
            "identity": {
                "accessKey": Value::Null,
                "accountId": Value::Null,
                "caller": Value::Null,
                "cognitoAuthenticationProvider": Value::Null,
                "cognitoAuthenticationType": Value::Null,
                "cognitoIdentityId": Value::Null,
                "cognitoIdentityPoolId": Value::Null,
                "principalOrgId": Value::Null,
                "sourceIp": req.source_ip,
                "user": Value::Null,
                "userAgent": user_agent(req),
                "userArn": Value::Null,
                "clientCert": Value::Null,
            },
            "path": format!("/{}{}", req.stage, decode(req.path)),
            "protocol": req.protocol,
            "requestId": req.request_id,
            "requestTime": crate::ids::request_time(req.now_ms),
            "requestTimeEpoch": req.now_ms,
            "resourceId": API_ID,
            "resourcePath": resource_path,
            "stage": req.stage,
        },
        "body": body,
        "isBase64Encoded": b64,
    })
}

/// The HTTP API payload 2.0 event.
pub fn v2_event(req: &EventRequest<'_>) -> Value {
    let mut headers: Map<String, Value> = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in req.headers.iter() {
        let v = header_str(value);
        if name == http::header::COOKIE {
            cookies.extend(
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| Value::String(c.to_string())),
            );
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    let mut event = Map::new();
    event.insert("version".into(), json!("2.0"));
    event.insert("routeKey".into(), json!(req.route_key));
    event.insert("rawPath".into(), json!(req.path));
    event.insert("rawQueryString".into(), json!(req.query));
    if !cookies.is_empty() {
        event.insert("cookies".into(), Value::Array(cookies));
    }
    event.insert("headers".into(), Value::Object(headers));
    let pairs = query_pairs(req.query);
    if !pairs.is_empty() {
        let mut q: Map<String, Value> = Map::new();
        for (k, v) in pairs {
            match q.get_mut(&k) {
                Some(Value::String(s)) => {
                    s.push(',');
                    s.push_str(&v);
                }
                _ => {
                    q.insert(k, Value::String(v));
                }
            }
        }
        event.insert("queryStringParameters".into(), Value::Object(q));
    }
    let host = host(req);
    let mut ctx = json!({
        "accountId": req.account_id,
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": host.split('.').next().unwrap_or(""),
        "http": {
            "method": req.method,
            "path": decode(req.path),
            "protocol": req.protocol,
            "sourceIp": req.source_ip,
            "userAgent": user_agent(req).as_str().unwrap_or(""),
        },
        "requestId": req.request_id,
        "routeKey": req.route_key,
        "stage": "$default",
        "time": crate::ids::request_time(req.now_ms),
        "timeEpoch": req.now_ms,
    });
    if let Some(c) = req.claims {
        ctx["authorizer"] = json!({ "jwt": { "claims": with_username(c), "scopes": Value::Null } });
    }
    event.insert("requestContext".into(), ctx);
    if !req.path_params.is_empty() {
        event.insert("pathParameters".into(), params_obj(req.path_params));
    }
    let (body, b64) = body_fields(req);
    if !body.is_null() {
        event.insert("body".into(), body);
    }
    event.insert("isBase64Encoded".into(), json!(b64));
    Value::Object(event)
}

/// An HTTP response built from the function's answer.
#[derive(Debug)]
pub struct ProxyResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers, in order (repeated names allowed).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// Why a function's answer could not be turned into a response (API Gateway: 502).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn push_header(
    out: &mut Vec<(HeaderName, HeaderValue)>,
    k: &str,
    v: &str,
) -> Result<(), Malformed> {
    let name = HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| Malformed(format!("bad header name {k:?}")))?;
    let value =
        HeaderValue::from_str(v).map_err(|_| Malformed(format!("bad value of header {k}")))?;
    out.push((name, value));
    Ok(())
}

/// Reads a structured (`statusCode`, `headers`, …) proxy response.
fn structured(obj: &Map<String, Value>, v2: bool) -> Result<ProxyResponse, Malformed> {
    let status = match obj.get("statusCode") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if v2 => s.parse().ok(),
        _ => None,
    }
    .and_then(|s| u16::try_from(s).ok())
    .and_then(|s| StatusCode::from_u16(s).ok())
    .ok_or_else(|| Malformed("statusCode is not an HTTP status".into()))?;
    let mut headers = Vec::new();
    let mut seen_multi = std::collections::HashSet::new();
    match obj.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, vs) in m {
                let Value::Array(vs) = vs else {
                    return Err(Malformed(format!("multiValueHeaders.{k} is not a list")));
                };
                for v in vs {
                    let s = scalar_to_string(v)
                        .ok_or_else(|| Malformed(format!("multiValueHeaders.{k}")))?;
                    push_header(&mut headers, k, &s)?;
                }
                seen_multi.insert(k.to_ascii_lowercase());
            }
        }
        Some(_) => return Err(Malformed("multiValueHeaders is not an object".into())),
    }
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if seen_multi.contains(&k.to_ascii_lowercase()) {
                    continue;
                }
                let s = scalar_to_string(v).ok_or_else(|| Malformed(format!("headers.{k}")))?;
                push_header(&mut headers, k, &s)?;
            }
        }
        Some(_) => return Err(Malformed("headers is not an object".into())),
    }
    if v2 {
        match obj.get("cookies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(cs)) => {
                for c in cs {
                    let s = c.as_str().ok_or_else(|| Malformed("cookies".into()))?;
                    push_header(&mut headers, "set-cookie", s)?;
                }
            }
            Some(_) => return Err(Malformed("cookies is not a list".into())),
        }
    }
    let b64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => return Err(Malformed("isBase64Encoded is not a boolean".into())),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            if b64 {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|_| Malformed("body is not base64".into()))?
                    .into()
            } else {
                Bytes::from(s.clone())
            }
        }
        Some(other) if v2 => Bytes::from(other.to_string()),
        Some(_) => return Err(Malformed("body is not a string".into())),
    };
    if v2 && !headers.iter().any(|(n, _)| n == CONTENT_TYPE) && !body.is_empty() {
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    }
    Ok(ProxyResponse {
        status,
        headers,
        body,
    })
}

/// Turns the function's answer (its JSON result) into an HTTP response, as API Gateway's
/// Lambda proxy integration does for `Api` (v1) or `HttpApi` (v2) events.
pub fn proxy_response(payload: &[u8], v2: bool) -> Result<ProxyResponse, Malformed> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Malformed(format!("the function's answer is not JSON: {e}")))?;
    match &value {
        Value::Object(obj) if obj.contains_key("statusCode") || !v2 => structured(obj, v2),
        // Payload 2.0 infers the response when there is no statusCode.
        _ => {
            let body = match &value {
                Value::String(s) => Bytes::from(s.clone()),
                other => Bytes::from(other.to_string()),
            };
            Ok(ProxyResponse {
                status: StatusCode::OK,
                headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                body,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        headers: &'a HeaderMap,
        body: &'a [u8],
        params: &'a [(String, String)],
    ) -> EventRequest<'a> {
        EventRequest {
            method: "POST",
            path: "/items/a%20b",
            query: "x=1&x=2&y=%2F&flag",
            headers,
            body,
            source_ip: "127.0.0.1",
            request_id: "rid",
            now_ms: 1_428_582_896_123,
            resource: "/items/{id}",
            route_key: "POST /items/{id}",
            path_params: params,
            claims: None,
            stage: "Prod",
            account_id: "000000000000",
            protocol: "HTTP/1.1",
        }
    }

    #[test]
    fn v1_fields() {
        let mut h = HeaderMap::new();
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        h.insert("user-agent", "ua/1".parse().unwrap());
        let params = vec![("id".to_string(), "a b".to_string())];
        let claims = json!({"cognito:username": "alice"});
        let mut r = req(&h, b"{\"k\":1}", &params);
        r.claims = Some(&claims);
        let e = v1_event(&r);
        assert_eq!(e["resource"], "/items/{id}");
        assert_eq!(e["path"], "/items/a b");
        assert_eq!(e["httpMethod"], "POST");
        assert_eq!(e["headers"]["x-multi"], "b");
        assert_eq!(e["multiValueHeaders"]["x-multi"], json!(["a", "b"]));
        assert_eq!(
            e["queryStringParameters"],
            json!({"x": "2", "y": "/", "flag": ""})
        );
        assert_eq!(e["multiValueQueryStringParameters"]["x"], json!(["1", "2"]));
        assert_eq!(e["pathParameters"], json!({"id": "a b"}));
        assert!(e["stageVariables"].is_null());
        let c = &e["requestContext"];
        assert_eq!(c["requestId"], "rid");
        assert_eq!(c["stage"], "Prod");
        assert_eq!(c["resourcePath"], "/items/{id}");
        assert_eq!(c["identity"]["sourceIp"], "127.0.0.1");
        assert_eq!(c["identity"]["userAgent"], "ua/1");
        assert_eq!(c["requestTime"], "09/Apr/2015:12:34:56 +0000");
        assert_eq!(c["requestTimeEpoch"], 1_428_582_896_123u64);
        assert_eq!(c["authorizer"]["claims"]["cognito:username"], "alice");
        assert_eq!(c["authorizer"]["claims"]["username"], "alice");
        assert_eq!(c["authorizer"]["cognito:username"], "alice");
        assert_eq!(e["body"], "{\"k\":1}");
        assert_eq!(e["isBase64Encoded"], false);
    }

    #[test]
    fn v2_fields_and_binary() {
        let mut h = HeaderMap::new();
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        h.insert("cookie", "a=1; b=2".parse().unwrap());
        h.insert("content-type", "application/octet-stream".parse().unwrap());
        let e = v2_event(&req(&h, &[0, 159, 146, 150], &[]));
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "POST /items/{id}");
        assert_eq!(e["rawPath"], "/items/a%20b");
        assert_eq!(e["rawQueryString"], "x=1&x=2&y=%2F&flag");
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["queryStringParameters"]["x"], "1,2");
        assert!(e.get("pathParameters").is_none());
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["path"], "/items/a b");
        assert_eq!(e["requestContext"]["stage"], "$default");
        assert_eq!(e["body"], "AJ+Slg==");
        assert_eq!(e["isBase64Encoded"], true);
    }

    #[test]
    fn responses() {
        let r = proxy_response(
            br#"{"statusCode":201,"headers":{"a":"1","b":"x"},"multiValueHeaders":{"b":["2","3"]},"body":"aGk=","isBase64Encoded":true}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, "hi");
        let names: Vec<_> = r
            .headers
            .iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        assert_eq!(names, ["b=2", "b=3", "a=1"]);
        // v2: cookies, inferred responses.
        let r =
            proxy_response(br#"{"statusCode":200,"cookies":["c=1"],"body":"x"}"#, true).unwrap();
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "set-cookie" && v == "c=1"));
        let r = proxy_response(br#"{"hello":"world"}"#, true).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r#"{"hello":"world"}"#);
        let r = proxy_response(br#""plain""#, true).unwrap();
        assert_eq!(r.body, "plain");
        // Malformed answers.
        assert!(proxy_response(b"not json", false).is_err());
        assert!(proxy_response(br#"{"hello":"world"}"#, false).is_err());
        assert!(proxy_response(br#"{"statusCode":"abc"}"#, false).is_err());
        assert!(proxy_response(br#"{"statusCode":200,"body":{}}"#, false).is_err());
        assert!(
            proxy_response(br#"{"statusCode":200,"headers":{"bad name":"x"}}"#, false).is_err()
        );
        assert!(proxy_response(
            br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
            false
        )
        .is_err());
        assert!(proxy_response(br#"{"statusCode":99}"#, false).is_err());
    }
}
