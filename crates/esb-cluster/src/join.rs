//! The join exchange. The control node serves it on a Unix socket behind the gateway's
//! public HTTPS port (`/esb/v1/nodes/…`, the one port the outside reaches); a joining node:
//!
//! 1. fetches the CA (`GET /esb/v1/nodes/ca`) and accepts it only if its SHA-256 is the
//!    token's fingerprint;
//! 2. connects again, now checking the gateway's certificate against that CA (not its
//!    name: the control node may be reached by any address), and `POST
//!    /esb/v1/nodes/join` with the secret, its id, its WireGuard key and port and its clock;
//! 3. gets its number, addresses, the control's WireGuard key and endpoint, the CA and its
//!    own certificate and key, and a secret of its own to leave with.
//!
//! A node that leaves `POST /esb/v1/nodes/leave` with that secret (over the same pinned CA):
//! the control node stops placing workers there, waits for the node's workers to drain,
//! then forgets it (record, certificate, tunnel peer, route).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use crate::registry::NodeRecord;
use crate::token::JoinToken;
use crate::{sha256_hex, ClusterError};

/// Path prefix of the exchange on the gateway.
pub const PREFIX: &str = "/esb/v1/nodes/";
/// How long a joining node waits for each answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the control node waits for a leaving node's workers to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a leaving node waits for the answer (the drain, then the rest).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest clock difference accepted (seconds).
pub const MAX_SKEW: i64 = 300;

/// What a joining node sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret.
    pub secret: String,
    /// Its id.
    pub node_id: String,
    /// Its WireGuard public key.
    pub wg_public_key: String,
    /// Its WireGuard UDP port (the control node takes the address the request came from).
    pub wg_port: u16,
    /// Its clock (Unix seconds).
    pub clock: i64,
    /// Memory its workers may use (MiB, `ESB_NODE_MAX_MEMORY_MB`; 0 = unlimited).
    #[serde(default)]
    pub max_memory_mb: u32,
}

/// What it gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Its record (number, addresses).
    pub node: NodeRecord,
    /// The control node's WireGuard address (`ESB_CONTROL_HOST`, 10.99.0.1).
    pub control_host: String,
    /// The control node's WireGuard public key.
    pub control_wg_public_key: String,
    /// The control node's WireGuard UDP port (its address is the token's endpoint host).
    pub control_wg_port: u16,
    /// The box CA (PEM).
    pub ca_pem: String,
    /// The node's certificate (PEM; server and client use, SAN 10.99.0.N).
    pub node_cert_pem: String,
    /// Its key (PEM).
    pub node_key_pem: String,
    /// The credential pair and region workers get (system.md §6).
    pub credentials: (String, String, String),
    /// The node's own secret for leaving (hex; the control node keeps only its hash).
    #[serde(default)]
    pub leave_secret: String,
}

/// What a leaving node sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// Its id.
    pub node_id: String,
    /// The leave secret of its join.
    pub secret: String,
}

/// What the control node answers when a node left.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaveAnswer {
    /// The node that left.
    pub node_id: String,
    /// Workers the gateway still held there when the drain's time ran out (0: drained).
    pub workers_left: usize,
}

/// `sha256:HEX` of the first certificate in a PEM text.
pub fn pem_fingerprint(pem: &str) -> Result<String, ClusterError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| ClusterError::Invalid {
            field: "CA",
            msg: "no certificate in the PEM text".into(),
        })?
        .map_err(|e| ClusterError::Invalid {
            field: "CA",
            msg: e.to_string(),
        })?;
    Ok(format!("sha256:{}", sha256_hex(der.as_ref())))
}

/// What the control node does with a join (the box implements it).
pub trait Control: Send + Sync + 'static {
    /// The CA's PEM text.
    fn ca_pem(&self) -> String;
    /// Admits the node of `req`, seen coming from `peer`.
    fn join(&self, req: JoinRequest, peer: Option<IpAddr>) -> Result<JoinAnswer, ClusterError>;
    /// Lets the node of `req` go (drained first); blocking, called off the async threads.
    fn leave(&self, req: LeaveRequest) -> Result<LeaveAnswer, ClusterError>;
    /// Removes node `node_id` without its secret (a node gone for good), asked by the
    /// control host's root through the socket; blocking.
    fn remove(&self, node_id: &str) -> Result<LeaveAnswer, ClusterError>;
}

/// What `POST /esb/v1/nodes/remove` carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// The node to remove.
    pub node_id: String,
}

/// The HTTP status of a refusal.
fn refusal_status(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        ClusterError::IdTaken(_) => StatusCode::CONFLICT,
        ClusterError::UnknownNode(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::FORBIDDEN,
    }
}

/// Reads a JSON request body of at most 64 KiB.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
    what: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": format!("the {what} is too large")}).to_string(),
            ))
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("not a {what}: {e}")}).to_string(),
        )
    })
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

async fn handle(
    control: Arc<dyn Control>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let peer: Option<IpAddr> = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok());
    match (req.method().clone(), path.strip_prefix(PREFIX)) {
        (Method::GET, Some("ca")) => Response::builder()
            .header("content-type", "application/x-pem-file")
            .body(Full::new(Bytes::from(control.ca_pem())))
            .expect("a valid response"),
        (Method::POST, Some("join")) => {
            let parsed: JoinRequest = match read_json(req, "join request").await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let node = parsed.node_id.clone();
            let c = control.clone();
            match tokio::task::spawn_blocking(move || c.join(parsed, peer)).await {
                Ok(Ok(answer)) => {
                    tracing::info!(node = %node, number = answer.node.number, "node joined");
                    json(
                        StatusCode::OK,
                        serde_json::to_string(&answer).expect("serializable"),
                    )
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node, "join refused: {e}");
                    json(
                        refusal_status(&e),
                        serde_json::json!({"error": e.to_string()}).to_string(),
                    )
                }
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": e.to_string()}).to_string(),
                ),
            }
        }
        (Method::POST, Some(op @ ("leave" | "remove"))) => {
            // `remove` skips the node's secret: only for callers on the socket itself
            // (root on the control host), never for what the gateway forwards.
            let forwarded = req.headers().contains_key("x-forwarded-for");
            if op == "remove" && forwarded {
                return json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into());
            }
            let parsed: LeaveRequest = if op == "leave" {
                match read_json(req, "leave request").await {
                    Ok(r) => r,
                    Err(resp) => return resp,
                }
            } else {
                match read_json::<RemoveRequest>(req, "remove request").await {
                    Ok(r) => LeaveRequest {
                        node_id: r.node_id,
                        secret: String::new(),
                    },
                    Err(resp) => return resp,
                }
            };
            let node = parsed.node_id.clone();
            let c = control.clone();
            let by_secret = op == "leave";
            let work = move || {
                if by_secret {
                    c.leave(parsed)
                } else {
                    c.remove(&parsed.node_id)
                }
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok(answer)) => {
                    tracing::info!(node = %node, left = answer.workers_left, "node left");
                    json(
                        StatusCode::OK,
                        serde_json::to_string(&answer).expect("serializable"),
                    )
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node, "leave refused: {e}");
                    json(
                        refusal_status(&e),
                        serde_json::json!({"error": e.to_string()}).to_string(),
                    )
                }
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": e.to_string()}).to_string(),
                ),
            }
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    }
}

/// Serves the exchange on `listener` until `shutdown` completes. Joins are handled one at
/// a time (numbers and tokens are read and written whole).
pub async fn serve(
    listener: tokio::net::UnixListener,
    control: Arc<dyn Control>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let one = Arc::new(tokio::sync::Mutex::new(()));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("cluster socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let control = control.clone();
        let one = one.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let control = control.clone();
                let one = one.clone();
                async move {
                    let _turn = one.lock().await;
                    Ok::<_, std::convert::Infallible>(handle(control, req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Accepts any certificate: used only to fetch the CA, which is then checked against the
/// token's fingerprint before anything else is sent.
#[derive(Debug)]
struct FetchOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for FetchOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain against the pinned CA, whatever name the control node is reached by.
#[derive(Debug)]
struct PinnedCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        im: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(ee, im, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Sends `req` over `io` (HTTP/1.1) and reads the whole answer.
async fn send_over<Io>(io: Io, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn exchange(
    endpoint: &str,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClusterError> {
    let fail = |msg: String| ClusterError::Unreachable {
        endpoint: endpoint.to_string(),
        msg,
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(endpoint)
        .to_string();
    let name = ServerName::try_from(host).map_err(|e| fail(e.to_string()))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        send_over(tls, req).await.map_err(fail)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("no answer in {} s", timeout.as_secs())))?
}

fn request(method: Method, endpoint: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", endpoint)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("a valid request")
}

/// A verifier of the control node's certificate against the box CA `ca_pem` (not its
/// name: the control node may be reached by any address).
fn pinned(ca_pem: &str) -> Result<Arc<PinnedCa>, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(c);
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| ClusterError::Invalid {
                field: "CA",
                msg: e.to_string(),
            })?;
    Ok(Arc::new(PinnedCa(verifier)))
}

/// The error text of a refusal's JSON body (or its status).
fn refusal(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| format!("{status}"))
}

/// Removes node `node_id` through the control node's own exchange socket (`esb node
/// remove` on the control host): drained, then forgotten, without the node's secret.
pub async fn remove_local(
    socket: &std::path::Path,
    node_id: &str,
) -> Result<LeaveAnswer, ClusterError> {
    let fail = |msg: String| ClusterError::Unreachable {
        endpoint: socket.display().to_string(),
        msg,
    };
    let body = serde_json::to_vec(&RemoveRequest {
        node_id: node_id.to_string(),
    })
    .expect("serializable");
    let req = request(
        Method::POST,
        "esb-cluster",
        &format!("{PREFIX}remove"),
        Bytes::from(body),
    );
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| fail(format!("connect: {e} (is the box running?)")))?;
        send_over(stream, req).await.map_err(fail)
    };
    let (status, answer) = tokio::time::timeout(LEAVE_TIMEOUT, work)
        .await
        .map_err(|_| fail(format!("no answer in {} s", LEAVE_TIMEOUT.as_secs())))??;
    if !status.is_success() {
        return Err(ClusterError::LeaveRefused(refusal(status, &answer)));
    }
    serde_json::from_slice(&answer).map_err(|e| fail(format!("not a leave answer: {e}")))
}

/// Leaves the box whose gateway is at `endpoint`, trusted through the box CA `ca_pem`:
/// answers once the control node drained and forgot the node.
pub async fn leave(
    endpoint: &str,
    ca_pem: &str,
    req: &LeaveRequest,
) -> Result<LeaveAnswer, ClusterError> {
    let body = Bytes::from(serde_json::to_vec(req).expect("serializable"));
    let (status, answer) = exchange(
        endpoint,
        pinned(ca_pem)?,
        request(Method::POST, endpoint, &format!("{PREFIX}leave"), body),
        LEAVE_TIMEOUT,
    )
    .await?;
    if !status.is_success() {
        return Err(ClusterError::LeaveRefused(refusal(status, &answer)));
    }
    serde_json::from_slice(&answer).map_err(|e| ClusterError::Unreachable {
        endpoint: endpoint.into(),
        msg: format!("not a leave answer: {e}"),
    })
}

/// Joins the control node of `token`: checks its CA against the token's fingerprint, then
/// sends `req`. Returns the answer and the verified CA.
pub async fn join(token: &JoinToken, req: &JoinRequest) -> Result<JoinAnswer, ClusterError> {
    let ep = token.endpoint.as_str();
    let (status, ca) = exchange(
        ep,
        Arc::new(FetchOnly(provider())),
        request(Method::GET, ep, &format!("{PREFIX}ca"), Bytes::new()),
        JOIN_TIMEOUT,
    )
    .await?;
    let ca_pem = String::from_utf8_lossy(&ca).to_string();
    if !status.is_success() {
        return Err(ClusterError::Unreachable {
            endpoint: ep.into(),
            msg: format!("GET {PREFIX}ca: {status} (is this a box's gateway?)"),
        });
    }
    let got = pem_fingerprint(&ca_pem)?;
    if got != token.ca_fingerprint {
        return Err(ClusterError::Fingerprint {
            endpoint: ep.into(),
            got,
            want: token.ca_fingerprint.clone(),
        });
    }
    let verifier = pinned(&ca_pem)?;
    let body = Bytes::from(serde_json::to_vec(req).expect("serializable"));
    let (status, answer) = exchange(
        ep,
        verifier,
        request(Method::POST, ep, &format!("{PREFIX}join"), body),
        JOIN_TIMEOUT,
    )
    .await?;
    if !status.is_success() {
        return Err(ClusterError::Refused(refusal(status, &answer)));
    }
    serde_json::from_slice(&answer).map_err(|e| ClusterError::Unreachable {
        endpoint: ep.into(),
        msg: format!("not a join answer: {e}"),
    })
}
