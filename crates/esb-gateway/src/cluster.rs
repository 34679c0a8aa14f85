//! `/esb/v1/nodes/…` on the public port: the join exchange of compute nodes, served by the
//! box process on a Unix socket (`ESB_CLUSTER_SOCKET`) and forwarded here, so that the
//! outside reaches one HTTPS port only. The client's address goes along as
//! `X-Forwarded-For` (the control node learns a joining node's WireGuard endpoint from it).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

/// The forwarded path prefix.
pub const PREFIX: &str = "/esb/v1/nodes/";
/// What the outside may ask under it (a node's own join and leave); the rest of the
/// exchange (`remove`, for the control host's root) is served on the socket only.
const PUBLIC: [&str; 3] = ["ca", "join", "leave"];
/// How long the exchange may take (a leave waits for the node's workers to drain).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BODY: usize = 64 << 10;

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::json!({ "error": msg }).to_string(),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// Forwards `req` to the exchange at `socket`.
pub async fn forward(
    socket: &Path,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // The body is read before any refusal: a client still sending it would see its
    // connection reset instead of the answer.
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the request is too large"),
    };
    let public = parts
        .uri
        .path()
        .strip_prefix(PREFIX)
        .is_some_and(|p| PUBLIC.contains(&p));
    if !public {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let mut out = Request::builder()
        .method(parts.method)
        .uri(parts.uri.path())
        .header("host", "esb-cluster")
        .header("x-forwarded-for", remote.ip().to_string());
    if let Some(ct) = parts.headers.get("content-type") {
        out = out.header("content-type", ct.clone());
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return error(StatusCode::BAD_REQUEST, "bad request");
    };
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let resp = send
            .send_request(out)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok::<_, std::io::Error>(Response::from_parts(parts, Full::new(body)))
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("cluster exchange: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the control node cannot take joins now",
            )
        }
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the control node did not answer",
        ),
    }
}
