//! Pushing images to an OCI registry (the distribution API: blob uploads and manifest PUT),
//! for compute nodes that pull from the box's registry (`CONTAINER_REGISTRY`).
//!
//! HTTPS with the box's CA (or the system roots), or plain HTTP when the URL says so;
//! optional basic auth. Blobs the registry already has are not sent again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::store::{Layout, MEDIA_MANIFEST};
use crate::Error;

/// A registry to push to.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `https://host:port` or `http://host:port`.
    pub url: String,
    /// PEM file of the CA that signed the registry's certificate (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Basic auth user and password.
    pub auth: Option<(String, String)>,
    /// Named network namespace to dial from (a compute node reaches the box's registry
    /// over WireGuard from its runtime-node namespace; the host namespace must not send
    /// traffic to private addresses). `None`: the caller's namespace.
    pub netns: Option<String>,
}

impl Registry {
    /// From a `CONTAINER_REGISTRY` value: `host:port` (HTTPS) or a full `http(s)://` URL.
    pub fn from_setting(value: &str) -> Result<Registry, Error> {
        let v = value.trim().trim_end_matches('/');
        if v.is_empty() {
            return Err(Error::Registry("CONTAINER_REGISTRY is empty".into()));
        }
        let url = if v.starts_with("http://") || v.starts_with("https://") {
            v.to_string()
        } else {
            format!("https://{v}")
        };
        url.parse::<Uri>()
            .map_err(|e| Error::Registry(format!("{value:?} is not a registry address: {e}")))?;
        Ok(Registry {
            url,
            ca_file: None,
            auth: None,
            netns: None,
        })
    }

    /// `host:port`, as used in image references.
    pub fn host(&self) -> String {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, h)| h)
            .to_string()
    }
}

/// What [`push`] did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The pushed reference (`host:port/repository:tag`).
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Blobs sent.
    pub blobs_uploaded: usize,
    /// Blobs the registry already had.
    pub blobs_present: usize,
    /// Of the blobs sent, how many were layers (the rest: the config).
    pub layers_uploaded: usize,
    /// Whether the manifest was sent (false: the registry had it under this tag already,
    /// and nothing at all was pushed).
    pub manifest_pushed: bool,
}

/// How long a connection to the registry may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the registry may take to answer a request's headers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a body (a blob) may take to arrive in full.
const BODY_TIMEOUT: Duration = Duration::from_secs(900);

fn reg(m: impl Into<String>) -> Error {
    Error::Registry(m.into())
}

struct Http {
    base: Uri,
    tls: Option<tokio_rustls::TlsConnector>,
    auth: Option<HeaderValue>,
    netns: Option<Arc<esb_netns::NetNs>>,
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let files: Vec<PathBuf> = match ca_file {
        Some(f) => vec![f.to_path_buf()],
        None => ["/etc/ssl/certs/ca-certificates.crt"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    for f in files {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&f)
            .map_err(|e| reg(format!("{}: {e}", f.display())))?;
        for c in certs {
            let c = c.map_err(|e| reg(format!("{}: {e}", f.display())))?;
            roots
                .add(c)
                .map_err(|e| reg(format!("{}: {e}", f.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| reg(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn basic(user: &str, pass: &str) -> HeaderValue {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    HeaderValue::from_str(&out).expect("base64 is a valid header")
}

impl Http {
    fn new(r: &Registry) -> Result<Http, Error> {
        let base: Uri = r.url.parse().map_err(|e| reg(format!("{}: {e}", r.url)))?;
        let tls = match base.scheme_str() {
            Some("https") => Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                r.ca_file.as_deref(),
            )?))),
            Some("http") => None,
            _ => return Err(reg(format!("{}: the scheme must be http or https", r.url))),
        };
        let netns = match &r.netns {
            Some(n) => Some(Arc::new(esb_netns::NetNs::open(n).map_err(|e| {
                reg(format!("network namespace {n} (to reach {}): {e}", r.url))
            })?)),
            None => None,
        };
        Ok(Http {
            base,
            tls,
            auth: r.auth.as_ref().map(|(u, p)| basic(u, p)),
            netns,
        })
    }

    /// Opens a TCP connection to `host:port`, from the registry's namespace when set.
    async fn connect(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, Error> {
        let fail = |e: std::io::Error| reg(format!("connect to {host}:{port}: {e}"));
        let attempt = async {
            let Some(ns) = &self.netns else {
                return tokio::net::TcpStream::connect((host, port)).await;
            };
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("the name has no address"))?;
            let ns = ns.clone();
            let socket = tokio::task::spawn_blocking(move || {
                ns.run(move || {
                    if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()
                    } else {
                        tokio::net::TcpSocket::new_v6()
                    }
                })
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)??;
            socket.connect(addr).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(r) => r.map_err(fail),
            Err(_) => Err(fail(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))),
        }
    }

    /// The digest of the manifest `repository:tag` names (`HEAD`), if the tag exists.
    async fn tagged_digest(&self, repository: &str, tag: &str) -> Result<Option<String>, Error> {
        let (status, headers, _) = self
            .send(
                Method::HEAD,
                &format!("/v2/{repository}/manifests/{tag}"),
                &[("accept", ACCEPT_MANIFESTS.into())],
                Bytes::new(),
            )
            .await?;
        Ok(headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|_| status.is_success())
            .map(str::to_string))
    }

    /// Resolves a path or a `Location` header (absolute or relative) against the base.
    fn uri(&self, target: &str) -> Result<Uri, Error> {
        if target.starts_with("http://") || target.starts_with("https://") {
            return target.parse().map_err(|e| reg(format!("{target}: {e}")));
        }
        let auth = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        format!(
            "{}://{auth}{target}",
            self.base.scheme_str().unwrap_or("https")
        )
        .parse()
        .map_err(|e| reg(format!("{target}: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Error> {
        let uri = self.uri(target)?;
        let host = uri
            .host()
            .ok_or_else(|| reg(format!("{uri}: no host")))?
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let tcp = self.connect(&host, port).await?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()));
        req = req.header(
            http::header::HOST,
            uri.authority().map_or(host.clone(), |a| a.to_string()),
        );
        req = req.header(http::header::USER_AGENT, "esb-image");
        if let Some(a) = &self.auth {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| reg(e.to_string()))?;
        let what = format!("{method} {uri}");
        let answer = async {
            match &self.tls {
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| reg(format!("{host}: {e}")))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| reg(format!("TLS with {host}:{port}: {e}")))?;
                    exchange(hyper_util::rt::TokioIo::new(stream), req).await
                }
                None => exchange(hyper_util::rt::TokioIo::new(tcp), req).await,
            }
            .map_err(|e| reg(format!("{what}: {e}")))
        };
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| {
                reg(format!(
                    "{what}: no answer in {}s",
                    ANSWER_TIMEOUT.as_secs()
                ))
            })??;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(BODY_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| {
                reg(format!(
                    "{what}: body not read in {}s",
                    BODY_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| reg(format!("{what}: {e}")))?
            .to_bytes();
        Ok((status, headers, body))
    }
}

async fn exchange<I>(
    io: I,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

fn check_repository(repo: &str) -> Result<(), Error> {
    let ok = !repo.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(reg(format!(
            "{repo:?} is not a valid repository name (lower-case letters, digits, . _ - and /)"
        )))
    }
}

/// Pushes the image stored under `local_ref` in `layout` to `registry` as
/// `repository:tag`.
pub async fn push(
    layout: &Layout,
    local_ref: &str,
    registry: &Registry,
    repository: &str,
    tag: &str,
) -> Result<PushReport, Error> {
    push_mounting(layout, local_ref, registry, repository, tag, &[]).await
}

/// [`push`], mounting blobs the registry holds in other repositories (`mount_from`, e.g.
/// the images of other functions sharing a base layer) instead of sending them again.
pub async fn push_mounting(
    layout: &Layout,
    local_ref: &str,
    registry: &Registry,
    repository: &str,
    tag: &str,
    mount_from: &[String],
) -> Result<PushReport, Error> {
    check_repository(repository)?;
    let entry = layout
        .lookup(local_ref)?
        .ok_or_else(|| reg(format!("{local_ref} is not in {}", layout.root().display())))?;
    let manifest_digest = entry["digest"]
        .as_str()
        .ok_or_else(|| reg("index entry without digest"))?
        .to_string();
    let manifest_bytes = layout.read_blob(&manifest_digest)?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::Corrupt(format!("manifest {manifest_digest}: {e}")))?;
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(MEDIA_MANIFEST)
        .to_string();
    let mut blobs: Vec<String> = vec![];
    if let Some(d) = manifest["config"]["digest"].as_str() {
        blobs.push(d.to_string());
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            blobs.push(d.to_string());
        }
    }
    let http = Http::new(registry)?;
    let (status, _, body) = http.send(Method::GET, "/v2/", &[], Bytes::new()).await?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(reg(format!(
            "{}: authentication required (only basic auth is supported)",
            registry.url
        )));
    }
    if !status.is_success() {
        return Err(reg(format!(
            "{}/v2/ answered {status}: {}",
            registry.url,
            String::from_utf8_lossy(&body)
        )));
    }
    // The same manifest under the same tag already: nothing to send.
    if http.tagged_digest(repository, tag).await?.as_deref() == Some(manifest_digest.as_str()) {
        return Ok(PushReport {
            reference: format!("{}/{repository}:{tag}", registry.host()),
            digest: manifest_digest,
            blobs_uploaded: 0,
            blobs_present: blobs.len(),
            layers_uploaded: 0,
            manifest_pushed: false,
        });
    }
    let config_digest = blobs.first().cloned();
    let (mut uploaded, mut present, mut layers_uploaded) = (0, 0, 0);
    for d in &blobs {
        let (status, _, _) = http
            .send(
                Method::HEAD,
                &format!("/v2/{repository}/blobs/{d}"),
                &[],
                Bytes::new(),
            )
            .await?;
        if status == StatusCode::OK {
            present += 1;
            continue;
        }
        // Mounted from another repository (201), or an upload started instead (202).
        let mut started = None;
        for from in mount_from.iter().filter(|r| *r != repository).take(3) {
            let (status, headers, _) = http
                .send(
                    Method::POST,
                    &format!("/v2/{repository}/blobs/uploads/?mount={d}&from={from}"),
                    &[("content-length", "0".into())],
                    Bytes::new(),
                )
                .await?;
            if status == StatusCode::CREATED {
                started = Some(None);
                break;
            }
            if status == StatusCode::ACCEPTED {
                started = Some(Some(headers));
                break;
            }
        }
        let headers = match started {
            Some(None) => {
                present += 1;
                continue;
            }
            Some(Some(headers)) => headers,
            None => {
                let (status, headers, body) = http
                    .send(
                        Method::POST,
                        &format!("/v2/{repository}/blobs/uploads/"),
                        &[("content-length", "0".into())],
                        Bytes::new(),
                    )
                    .await?;
                if status != StatusCode::ACCEPTED {
                    return Err(reg(format!(
                        "starting the upload of {d}: {status} {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                headers
            }
        };
        let location = headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| reg("upload answer without Location"))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let data = Bytes::from(layout.read_blob(d)?);
        let (status, _, body) = http
            .send(
                Method::PUT,
                &format!("{location}{sep}digest={d}"),
                &[
                    ("content-type", "application/octet-stream".into()),
                    ("content-length", data.len().to_string()),
                ],
                data,
            )
            .await?;
        if status != StatusCode::CREATED {
            return Err(reg(format!(
                "uploading {d}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        uploaded += 1;
        if Some(d) != config_digest.as_ref() {
            layers_uploaded += 1;
        }
    }
    let (status, headers, body) = http
        .send(
            Method::PUT,
            &format!("/v2/{repository}/manifests/{tag}"),
            &[
                ("content-type", media_type),
                ("content-length", manifest_bytes.len().to_string()),
            ],
            Bytes::from(manifest_bytes),
        )
        .await?;
    if status != StatusCode::CREATED {
        return Err(reg(format!(
            "putting the manifest: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    if let Some(d) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if d != manifest_digest {
            return Err(reg(format!(
                "the registry stored the manifest as {d}, expected {manifest_digest}"
            )));
        }
    }
    Ok(PushReport {
        reference: format!("{}/{repository}:{tag}", registry.host()),
        digest: manifest_digest,
        blobs_uploaded: uploaded,
        blobs_present: present,
        layers_uploaded,
        manifest_pushed: true,
    })
}

/// What [`pull`] did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The local reference it is stored under.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Blobs fetched.
    pub blobs_fetched: usize,
    /// Blobs already in the layout.
    pub blobs_present: usize,
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Fetches `repository:tag` (or `repository@sha256:…`) from `registry` into `layout`,
/// choosing this machine's platform from a multi-platform index, verifying every digest,
/// and names it `local_ref`.
pub async fn pull(
    layout: &Layout,
    registry: &Registry,
    repository: &str,
    reference: &str,
    local_ref: &str,
) -> Result<PullReport, Error> {
    pull_missing(
        layout,
        registry,
        repository,
        reference,
        local_ref,
        &HashSet::new(),
    )
    .await
}

/// [`pull`], leaving out the layers whose digests are in `have` (a containerd that holds
/// them already needs only the manifest and the config).
pub async fn pull_missing(
    layout: &Layout,
    registry: &Registry,
    repository: &str,
    reference: &str,
    local_ref: &str,
    have: &HashSet<String>,
) -> Result<PullReport, Error> {
    check_repository(repository)?;
    let http = Http::new(registry)?;
    let get_manifest = |r: String| {
        let http = &http;
        async move {
            let (status, headers, body) = http
                .send(
                    Method::GET,
                    &format!("/v2/{repository}/manifests/{r}"),
                    &[("accept", ACCEPT_MANIFESTS.into())],
                    Bytes::new(),
                )
                .await?;
            if !status.is_success() {
                return Err(reg(format!(
                    "{repository}:{r}: {status} {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            let media = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Ok::<_, Error>((media, body))
        }
    };
    let (media, first) = get_manifest(reference.to_string()).await?;
    if reference.starts_with("sha256:") && crate::store::sha256_digest(&first) != reference {
        return Err(Error::Corrupt(format!(
            "manifest {reference} from the registry does not match its digest"
        )));
    }
    let first_doc: serde_json::Value =
        serde_json::from_slice(&first).map_err(|e| reg(format!("manifest: {e}")))?;
    let is_index = media.contains("index")
        || media.contains("manifest.list")
        || first_doc["manifests"].is_array();
    let (body, doc) = if is_index {
        let arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            _ => "amd64",
        };
        let chosen = first_doc["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch
                })
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| {
                reg(format!(
                    "{repository}:{reference} has no linux/{arch} image"
                ))
            })?
            .to_string();
        let (_, body) = get_manifest(chosen).await?;
        let doc = serde_json::from_slice(&body).map_err(|e| reg(format!("manifest: {e}")))?;
        (body, doc)
    } else {
        (first, first_doc)
    };
    let mut digests = Vec::new();
    if let Some(d) = doc["config"]["digest"].as_str() {
        digests.push(d.to_string());
    }
    let mut layers = HashSet::new();
    for l in doc["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            digests.push(d.to_string());
            layers.insert(d.to_string());
        }
    }
    let (mut fetched, mut present) = (0, 0);
    for d in &digests {
        if layout.has_blob(d) || (layers.contains(d) && have.contains(d)) {
            present += 1;
            continue;
        }
        let (status, _, data) = http
            .send(
                Method::GET,
                &format!("/v2/{repository}/blobs/{d}"),
                &[],
                Bytes::new(),
            )
            .await?;
        if !status.is_success() {
            return Err(reg(format!("blob {d}: {status}")));
        }
        let stored = layout.put_bytes(&data)?;
        if stored.digest != *d {
            return Err(Error::Corrupt(format!(
                "blob {d} from the registry has digest {}",
                stored.digest
            )));
        }
        fetched += 1;
    }
    let manifest = layout.put_bytes(&body)?;
    layout.set_refs(&[(local_ref.to_string(), manifest.clone())])?;
    Ok(PullReport {
        reference: local_ref.to_string(),
        digest: manifest.digest,
        blobs_fetched: fetched,
        blobs_present: present,
    })
}

/// The repositories the registry holds (`GET /v2/_catalog`).
pub async fn catalog(registry: &Registry) -> Result<Vec<String>, Error> {
    let http = Http::new(registry)?;
    let (status, _, body) = http
        .send(Method::GET, "/v2/_catalog?n=1000", &[], Bytes::new())
        .await?;
    if !status.is_success() {
        return Err(reg(format!(
            "catalog: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| reg(format!("catalog: {e}")))?;
    Ok(strings(&v["repositories"]))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The manifest digests of a repository, by tag (`GET /v2/REPO/tags/list`, then a `HEAD`
/// of each tag). An unknown repository has none.
pub async fn tagged_digests(
    registry: &Registry,
    repository: &str,
) -> Result<Vec<(String, String)>, Error> {
    check_repository(repository)?;
    let http = Http::new(registry)?;
    let (status, _, body) = http
        .send(
            Method::GET,
            &format!("/v2/{repository}/tags/list"),
            &[],
            Bytes::new(),
        )
        .await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(vec![]);
    }
    if !status.is_success() {
        return Err(reg(format!(
            "{repository} tags: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| reg(format!("{repository} tags: {e}")))?;
    let mut out = Vec::new();
    for tag in strings(&v["tags"]) {
        if let Some(d) = http.tagged_digest(repository, &tag).await? {
            out.push((tag, d));
        }
    }
    Ok(out)
}

/// Deletes a manifest by digest (every tag naming it goes too); its blobs are reclaimed by
/// the registry's garbage collection. A manifest already gone is not an error.
pub async fn delete_manifest(
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> Result<(), Error> {
    check_repository(repository)?;
    let http = Http::new(registry)?;
    let (status, _, body) = http
        .send(
            Method::DELETE,
            &format!("/v2/{repository}/manifests/{digest}"),
            &[],
            Bytes::new(),
        )
        .await?;
    if status.is_success() || status == StatusCode::NOT_FOUND {
        return Ok(());
    }
    Err(reg(format!(
        "deleting {repository}@{digest}: {status} {}",
        String::from_utf8_lossy(&body)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_names() {
        assert_eq!(
            Registry::from_setting("10.99.0.1:5010").unwrap().url,
            "https://10.99.0.1:5010"
        );
        assert_eq!(
            Registry::from_setting("http://127.0.0.1:5000/")
                .unwrap()
                .host(),
            "127.0.0.1:5000"
        );
        assert!(Registry::from_setting(" ").is_err());
        assert!(check_repository("esb/functions/hello-python").is_ok());
        assert!(check_repository("Esb/x").is_err());
        assert!(check_repository("a//b").is_err());
        assert_eq!(
            basic("Aladdin", "open sesame").to_str().unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
