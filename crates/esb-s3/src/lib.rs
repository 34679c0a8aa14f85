//! esb-s3: the box's embedded S3-compatible object store.
//!
//! The S3 REST protocol (routing, XML, SigV4 header and presigned-URL authentication,
//! aws-chunked bodies) comes from the [`s3s`] crate; this crate supplies the storage:
//! an ACID index ([`redb`]) plus immutable data files on local disk (see `docs/s3.md`).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = esb_s3::Config {
//!     listen: "127.0.0.1:9000".parse()?,
//!     data_dir: "/var/lib/esb/s3".into(),
//!     access_key: "esb".into(),
//!     secret_key: "esb-secret".into(),
//!     region: esb_s3::DEFAULT_REGION.into(),
//!     iam_file: None,
//!     allow_sigv2: false,
//! };
//! esb_s3::serve(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod access;
mod host;
pub mod iam;
mod io;
mod service;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

/// Region reported by the store when none is configured.
pub const DEFAULT_REGION: &str = "ap-northeast-1";

/// Settings of one S3 server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (the box uses 127.0.0.1:9000).
    pub listen: SocketAddr,
    /// Directory holding the index and the object data; created when missing.
    pub data_dir: PathBuf,
    /// The box's access key id (SigV4 credential).
    pub access_key: String,
    /// The box's secret access key.
    pub secret_key: String,
    /// Region reported by GetBucketLocation / HeadBucket (default [`DEFAULT_REGION`]).
    pub region: String,
    /// The box's credentials file of functions' keys and policies (`STATE/iam/
    /// credentials.json`); `None`: only the box's key is accepted.
    pub iam_file: Option<PathBuf>,
    /// Accept Signature Version 2 (header and presigned); off by default, as AWS has
    /// retired it (`ESB_S3_SIGV2` in the box).
    pub allow_sigv2: bool,
}

/// A bound, ready-to-run S3 server.
pub struct Server {
    listener: TcpListener,
    service: s3s::service::S3Service,
    limits: esb_serve::Limits,
}

impl Server {
    /// Opens (or creates) the store under `config.data_dir`, recovers it after a crash
    /// (removing unreferenced data files) and binds the listening socket.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        anyhow::ensure!(
            !config.access_key.is_empty(),
            "the S3 access key must not be empty"
        );
        anyhow::ensure!(
            !config.secret_key.is_empty(),
            "the S3 secret key must not be empty"
        );
        let region = if config.region.is_empty() {
            DEFAULT_REGION.to_owned()
        } else {
            config.region.clone()
        };
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || store::Store::open(&data_dir))
            .await
            .context("store open task failed")?
            .with_context(|| format!("opening the S3 store in {}", config.data_dir.display()))?;
        let s3 = service::EsbS3::new(Arc::new(store), region.clone());

        let mut builder = s3s::service::S3ServiceBuilder::new(s3);
        let functions = match &config.iam_file {
            Some(path) => Some(Arc::new(
                esb_iam::CredentialStore::open(path).context("the credentials file")?,
            )),
            None => None,
        };
        builder.set_auth(iam::Keys {
            box_key: config.access_key.clone(),
            box_secret: config.secret_key.clone(),
            functions: functions.clone(),
        });
        // One access hook: the box's rules on signatures, then the functions' policies.
        builder.set_access(iam::Policies {
            box_key: config.access_key.clone(),
            functions,
            rules: access::BoxAccess {
                allow_sigv2: config.allow_sigv2,
            },
        });
        builder.set_host(host::BoxHost::new(&region));
        let mut s3config = s3s::config::S3Config::default();
        // Browser POST uploads are buffered in memory by s3s; keep them small.
        s3config.post_object_max_file_size = 64 * 1024 * 1024;
        builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
            s3config,
        ))));
        let service = builder.build();

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the S3 listener on {}", config.listen))?;
        let limits = esb_serve::Limits::from_env("s3").map_err(anyhow::Error::msg)?;
        Ok(Server {
            listener,
            service,
            limits,
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves requests until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            service,
            mut limits,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, "S3 server listening");
        // Large objects take their time: in-flight uploads get 30 s after shutdown.
        limits.shutdown_grace = std::time::Duration::from_secs(30);
        esb_serve::serve(
            listener,
            limits,
            move |_peer| {
                let svc = service.clone();
                hyper::service::service_fn(move |req| close_after_unread_body(svc.clone(), req))
            },
            shutdown,
        )
        .await;
        Ok(())
    }
}

/// Serves one request; when it carried a body and the answer is an error (given before
/// the body was read: no such bucket, bad signature, a refused precondition), the answer
/// says `Connection: close`. The client may still be sending that body (or have sent it
/// after `Expect: 100-continue` went unanswered), so the connection cannot be trusted for
/// the next request: closing it makes well-behaved clients reconnect instead of reusing
/// a connection the server is about to drop.
async fn close_after_unread_body(
    service: s3s::service::S3Service,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<s3s::Body>, s3s::HttpError> {
    if let Some(resp) = health(&req) {
        return Ok(resp);
    }
    let request_id = new_request_id();
    // An empty Authorization header is no credential at all: the request is anonymous
    // and refused as such (403 AccessDenied), as S3 answers it.
    if req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace))
    {
        req.headers_mut().remove(hyper::header::AUTHORIZATION);
    }
    if let Some(resp) = refuse_plain_chunked(&req, &request_id) {
        return Ok(resp);
    }
    let has_body = req.headers().contains_key(hyper::header::EXPECT)
        || req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let amz_date = req
        .headers()
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut resp = hyper::service::Service::call(&service, req).await?;
    let failed = resp.status().is_client_error() || resp.status().is_server_error();
    if has_body && failed {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    if failed {
        add_request_id_to_error_body(&mut resp, &request_id, amz_date.as_deref());
    }
    set_request_id_headers(resp.headers_mut(), &request_id);
    Ok(resp)
}

/// A request id as S3 makes them: 16 upper-case hex digits.
fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase()
}

/// `x-amz-request-id` (and `x-amz-id-2`, the host id) on every answer.
fn set_request_id_headers(headers: &mut http::HeaderMap, request_id: &str) {
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        headers.insert("x-amz-request-id", v.clone());
        headers.insert("x-amz-id-2", v);
    }
}

/// Puts `<RequestId>` and `<HostId>` into an XML error body (s3s leaves them out), so that
/// the body's RequestId equals the `x-amz-request-id` header, as on S3. A
/// RequestTimeTooSkewed error gets S3's message and its `RequestTime`, `ServerTime` and
/// `MaxAllowedSkewMilliseconds` elements (`amz_date`: the request's `x-amz-date`).
fn add_request_id_to_error_body(
    resp: &mut hyper::Response<s3s::Body>,
    request_id: &str,
    amz_date: Option<&str>,
) {
    let Some(body) = resp.body().bytes() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return;
    };
    if text.contains("<RequestId>") {
        return;
    }
    let Some(at) = text.rfind("</Error>") else {
        return;
    };
    let mut head = text[..at].to_owned();
    if head.contains("<Code>RequestTimeTooSkewed</Code>") {
        if let (Some(m0), Some(m1)) = (head.find("<Message>"), head.find("</Message>")) {
            head.replace_range(
                m0 + "<Message>".len()..m1,
                "The difference between the request time and the current time is too large.",
            );
        }
        let now = time::OffsetDateTime::now_utc();
        let server_time = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        // The header was parsed as a SigV4 date: plain ASCII digits, `T` and `Z`.
        let request_time: String = amz_date
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        head.push_str(&format!(
            "<RequestTime>{request_time}</RequestTime><ServerTime>{server_time}</ServerTime>\
             <MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds>"
        ));
    }
    let new = format!(
        "{head}<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId>{}",
        &text[at..]
    );
    if let Ok(len) = http::HeaderValue::from_str(&new.len().to_string()) {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, len);
    }
    *resp.body_mut() = s3s::Body::from(new);
}

/// S3 does not take a `Transfer-Encoding: chunked` upload whose length it cannot know in
/// advance (neither `Content-Length` nor the `x-amz-decoded-content-length` of an
/// aws-chunked body): 501 NotImplemented, naming the header. Checked before the body is read.
fn refuse_plain_chunked(
    req: &hyper::Request<hyper::body::Incoming>,
    request_id: &str,
) -> Option<hyper::Response<s3s::Body>> {
    let h = req.headers();
    let chunked = h.get_all(hyper::header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
    });
    if !chunked || h.contains_key("x-amz-decoded-content-length") {
        return None;
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code>\
         <Message>A header you provided implies functionality that is not implemented</Message>\
         <Header>Transfer-Encoding</Header><RequestId>{request_id}</RequestId>\
         <HostId>{request_id}</HostId></Error>"
    );
    let mut resp = hyper::Response::new(s3s::Body::from(body));
    *resp.status_mut() = http::StatusCode::NOT_IMPLEMENTED;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    // The body was not read: the connection cannot carry another request.
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    set_request_id_headers(headers, request_id);
    Some(resp)
}

/// `GET`/`HEAD /health` without credentials, as RustFS (the seed's S3) answers it: 200 with
/// a small JSON body. A signed request to `/health` is the S3 API's (a bucket so named).
fn health(req: &hyper::Request<hyper::body::Incoming>) -> Option<hyper::Response<s3s::Body>> {
    let anonymous = !req.headers().contains_key(hyper::header::AUTHORIZATION)
        && !req
            .uri()
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature"));
    let method = req.method();
    if req.uri().path() != "/health"
        || !anonymous
        || !(method == hyper::Method::GET || method == hyper::Method::HEAD)
    {
        return None;
    }
    let body = r#"{"status":"ok","service":"esb-s3"}"#;
    let mut resp = hyper::Response::new(if method == hyper::Method::HEAD {
        s3s::Body::empty()
    } else {
        s3s::Body::from(body.to_string())
    });
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Some(resp)
}

/// Runs the S3 server described by `config` until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
