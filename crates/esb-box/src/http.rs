//! Small HTTP/1.1 client calls to the box's own services: the provisioner (S3 and DynamoDB
//! on loopback, SigV4-signed), `esb status` (the gateway's admin unix socket) and
//! `esb invoke` / `esb doctor` (the gateway's HTTPS API, trusting the box CA).
//! Built on hyper's connection API; one request per connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Results of the client.
pub type Result<T, E = HttpError> = std::result::Result<T, E>;

/// What went wrong with a call; `Display` names the peer, `source()` gives the cause.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be made.
    #[error("connect {peer}")]
    Connect {
        /// `host:port` or the socket's path.
        peer: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection was not made in time.
    #[error("connect {0}: timed out")]
    ConnectTimeout(String),
    /// The TLS handshake failed.
    #[error("TLS with {host}")]
    Tls {
        /// The server's name.
        host: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS with {0}: timed out")]
    TlsTimeout(String),
    /// The CA file could not be read.
    #[error("read the box CA {}", path.display())]
    Ca {
        /// The CA file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// No answer in time.
    #[error("no answer in time")]
    NoAnswer,
    /// A request without host cannot be signed.
    #[error("request without host")]
    NoHost,
    /// The server name is not a DNS name or address.
    #[error(transparent)]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    /// TLS configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The exchange itself.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// A request that cannot be built.
    #[error(transparent)]
    Request(#[from] http::Error),
    /// A header value that cannot be sent.
    #[error(transparent)]
    Header(#[from] http::header::InvalidHeaderValue),
    /// Socket options.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A response: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send<S>(io: S, req: Request<Full<Bytes>>, timeout: Duration) -> Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let fut = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, HttpError>(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HttpError::NoAnswer)?
}

/// One request over TCP to `addr` (`host:port`).
pub async fn tcp(addr: &str, req: Request<Full<Bytes>>, timeout: Duration) -> Result<Reply> {
    let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectTimeout(addr.to_string()))?
        .map_err(|source| HttpError::Connect {
            peer: addr.to_string(),
            source,
        })?;
    s.set_nodelay(true)?;
    send(s, req, timeout).await
}

/// One request over the unix socket at `path`.
pub async fn unix(path: &Path, req: Request<Full<Bytes>>, timeout: Duration) -> Result<Reply> {
    let s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| HttpError::Connect {
            peer: path.display().to_string(),
            source,
        })?;
    send(s, req, timeout).await
}

/// One request over HTTPS to `host:port`, trusting only the CA in `ca_file`.
pub async fn https(
    host: &str,
    port: u16,
    ca_file: &Path,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Reply> {
    let connect_host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((connect_host, port)),
    )
    .await
    .map_err(|_| HttpError::ConnectTimeout(format!("{host}:{port}")))?
    .map_err(|source| HttpError::Connect {
        peer: format!("{host}:{port}"),
        source,
    })?;
    https_over(tcp, host, ca_file, req, timeout).await
}

/// One request over HTTPS on a connected socket (e.g. one made inside a namespace),
/// verifying the server as `host` against the CA in `ca_file`.
pub async fn https_over(
    tcp: tokio::net::TcpStream,
    host: &str,
    ca_file: &Path,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Reply> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    let ca_error = |source| HttpError::Ca {
        path: ca_file.to_path_buf(),
        source,
    };
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(ca_error)? {
        roots.add(cert.map_err(ca_error)?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_string())?;
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpError::TlsTimeout(host.to_string()))?
        .map_err(|source| HttpError::Tls {
            host: host.to_string(),
            source,
        })?;
    send(tls, req, timeout).await
}

/// Signs `req` with SigV4 for `service` (adds `host`, `x-amz-date`,
/// `x-amz-content-sha256` and `authorization`).
pub fn sign(
    req: &mut Request<Full<Bytes>>,
    body: &[u8],
    creds: (&str, &str),
    region: &str,
    service: &str,
) -> Result<()> {
    use sha2::Digest;
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or(HttpError::NoHost)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let date = esb_sigv4::format_amz_date(now);
    let hash = hex::encode(sha2::Sha256::digest(body));
    let h = req.headers_mut();
    h.insert(http::header::HOST, host.parse()?);
    h.insert("x-amz-date", date.parse()?);
    h.insert("x-amz-content-sha256", hash.parse()?);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = esb_sigv4::sign(
        creds.0,
        creds.1,
        region,
        service,
        &esb_sigv4::Request {
            method: req.method().as_str(),
            path: &path,
            query: &query,
            headers: &headers,
        },
        &hash,
    );
    req.headers_mut()
        .insert(http::header::AUTHORIZATION, auth.parse()?);
    Ok(())
}

/// A request with a body.
pub fn request(method: &str, uri: &str, body: impl Into<Bytes>) -> Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body.into()))?)
}
