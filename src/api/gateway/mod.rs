//! HTTP/JSON → gRPC transcoding gateway, driven by `google.api.http`
//! annotations in a [`DescriptorPool`] (the design of Envoy's gRPC-JSON
//! transcoder and grpc-gateway).
//!
//! [`Gateway`] is a tower service meant to be the fallback of the server's
//! axum router. For each request it finds the matching [`Route`], builds the
//! request message from the body, path and query string (see
//! [`transcode`]), and calls the gRPC service *in-process*
//! through the inner service (the tonic routes as an `axum::Router`), so
//! the gRPC handlers — and any layers in front of them — run exactly as for
//! a native gRPC call, with the HTTP request's extensions (e.g. the
//! authenticated caller) and headers (as metadata) carried over.
//!
//! Errors, the gateway's own and the gRPC service's, are JSON shaped like
//! `google.rpc.Status`: `{"code": 5, "message": "...", "details": []}`;
//! [`error_response`] lets the rest of the server answer in the same shape.
//!
//! ```ignore
//! let pool = DescriptorPool::decode(DESCRIPTOR_SET_BYTES)?; // encoded set: keeps the options
//! let grpc = tonic::service::Routes::new(InboxServiceServer::new(inbox))
//!     .add_service(MediaServiceServer::new(media))
//!     .into_axum_router();
//! let gateway = Gateway::new(&pool, grpc.clone(), BodyLimits::default())?;
//! let app = axum::Router::new()
//!     .route("/healthz", get(health))
//!     .fallback_service(gateway)
//!     .layer(auth_layer); // puts the Caller into the request extensions
//! ```

pub mod rules;
pub mod template;
pub mod transcode;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
    header::{self, CONTENT_LENGTH, CONTENT_TYPE},
    uri::{Authority, Scheme},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;
use tower::{Service, ServiceExt};

pub use rules::{BodyRule, Route, RouteMethod, RouteTable};
pub use template::{Template, TemplateError};
pub use transcode::RequestError;

use rules::Lookup;

/// Start-up errors: the annotations or limits cannot be served as written.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A path template does not follow the `google.api.http` grammar.
    #[error("method {method}: {reason}")]
    Template {
        /// Full name of the gRPC method.
        method: String,
        /// The parse error.
        reason: TemplateError,
    },
    /// A rule names a missing field, binds a non-scalar in the path, etc.
    #[error("method {method}: {message}")]
    InvalidRule {
        /// Full name of the gRPC method.
        method: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Two rules match exactly the same requests.
    #[error(
        "http rules collide: {first} and {second} match the same requests; \
         change one of the path templates or http methods"
    )]
    Conflict {
        /// The rule declared first.
        first: String,
        /// The rule declared later.
        second: String,
    },
    /// A per-service body limit names a service the pool does not have.
    #[error(
        "body limit given for service {0:?}, which is not in the descriptor pool; \
         use the full service name, e.g. \"package.v1.Service\""
    )]
    UnknownService(String),
}

/// Request body size limits: a default, and overrides per gRPC service
/// (full name, e.g. `piqchat.inbox.v1.MediaService`).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Bytes allowed for services without an override.
    pub default: usize,
    /// Overrides by full service name.
    pub per_service: HashMap<String, usize>,
}

impl BodyLimits {
    /// 1 MiB, a generous size for JSON requests.
    pub const DEFAULT: usize = 1 << 20;

    /// Limits with `default` bytes for every service.
    pub fn new(default: usize) -> Self {
        BodyLimits {
            default,
            per_service: HashMap::new(),
        }
    }

    /// Overrides the limit for one service (full name).
    pub fn with_service(mut self, service: impl Into<String>, limit: usize) -> Self {
        self.per_service.insert(service.into(), limit);
        self
    }

    /// The limit for a service.
    pub fn limit_for(&self, service: &str) -> usize {
        self.per_service
            .get(service)
            .copied()
            .unwrap_or(self.default)
    }
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits::new(Self::DEFAULT)
    }
}

struct Shared {
    table: RouteTable,
    limits: BodyLimits,
    /// Used to render `grpc-status-details-bin` entries as JSON.
    pool: DescriptorPool,
}

/// The transcoding service. See the module docs.
pub struct Gateway<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S: Clone> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Gateway {
            shared: Arc::clone(&self.shared),
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.shared.table.len())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl<S> Gateway<S> {
    /// Builds the route table from `pool` (which must be decoded from
    /// encoded descriptor bytes so the `google.api.http` options survive)
    /// and wraps `inner`, the in-process gRPC service.
    pub fn new(pool: &DescriptorPool, inner: S, limits: BodyLimits) -> Result<Self, GatewayError> {
        if let Some(unknown) = limits
            .per_service
            .keys()
            .find(|name| pool.get_service_by_name(name).is_none())
        {
            return Err(GatewayError::UnknownService(unknown.clone()));
        }
        let table = RouteTable::from_pool(pool)?;
        tracing::debug!(routes = table.len(), "http/json gateway routes built");
        Ok(Gateway {
            shared: Arc::new(Shared {
                table,
                limits,
                pool: pool.clone(),
            }),
            inner,
        })
    }

    /// The route table, e.g. for generating an OpenAPI document.
    pub fn routes(&self) -> &RouteTable {
        &self.shared.table
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Gateway<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per call (`oneshot` on
        // a clone), so one request never consumes another's reservation.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move {
            Ok(match transcode_call(&shared, inner, request).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            })
        })
    }
}

/// The standard gRPC → HTTP status mapping (as grpc-gateway's
/// `HTTPStatusFromCode`).
pub fn http_status_from_code(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON error response, `{"code": <grpc code>, "message": ..., "details": []}`
/// with `status`; the same shape the gateway uses for all its errors.
pub fn error_response(status: StatusCode, code: Code, message: &str) -> Response<Body> {
    HttpError::new(status, code, message).into_response()
}

/// `status` as the same JSON error with `http_status`, its details rendered
/// and, when they hold a `RetryInfo`, a `Retry-After` header.
pub fn status_response(http_status: StatusCode, status: &tonic::Status) -> Response<Body> {
    HttpError {
        status: http_status,
        code: status.code(),
        message: status.message().to_owned(),
        details: decode_details(None, status.details()),
        allow: None,
        retry_after: retry_delay(status.details()),
    }
    .into_response()
}

/// Whole seconds, rounded up and at least 1: what `Retry-After` can say.
pub fn retry_secs(after: std::time::Duration) -> u64 {
    after.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: i32,
    message: &'a str,
    details: &'a [serde_json::Value],
}

fn error_json(code: Code, message: &str, details: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        code: code as i32,
        message,
        details,
    })
    .unwrap_or_else(|_| b"{\"code\":13,\"message\":\"error\",\"details\":[]}".to_vec())
}

/// An error answered as JSON before any response byte was sent.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    code: Code,
    message: String,
    details: Vec<serde_json::Value>,
    allow: Option<String>,
    /// From a `RetryInfo` detail: sent as `Retry-After`.
    retry_after: Option<std::time::Duration>,
}

impl HttpError {
    fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            allow: None,
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    /// A failure of the gRPC side that is not the client's fault.
    fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::warn!(%message, "http/json gateway internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, message)
    }

    fn from_status(shared: &Shared, status: &GrpcStatus) -> Self {
        HttpError {
            status: http_status_from_code(status.code),
            code: status.code,
            message: status.message.clone(),
            details: decode_details(Some(&shared.pool), &status.details),
            allow: None,
            retry_after: retry_delay(&status.details),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(error_json(
            self.code,
            &self.message,
            &self.details,
        )));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(after)));
        }
        response
    }
}

async fn transcode_call<S>(
    shared: &Arc<Shared>,
    inner: S,
    request: Request<Body>,
) -> Result<Response<Body>, HttpError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (parts, body) = request.into_parts();
    let (route, captures) = match shared.table.find(&parts.method, parts.uri.path()) {
        Lookup::Found(route, captures) => (Arc::clone(route), captures),
        Lookup::MethodNotAllowed(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut error = HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!(
                    "method {} is not allowed for {}; allowed: {allow}",
                    parts.method,
                    parts.uri.path()
                ),
            );
            error.allow = Some(allow);
            return Err(error);
        }
        Lookup::NotFound => {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!("no route for {} {}", parts.method, parts.uri.path()),
            ));
        }
    };

    // Routes without a body rule ignore any body rather than wait for it.
    let body = if matches!(route.body(), BodyRule::None) {
        Bytes::new()
    } else {
        let limit = shared.limits.limit_for(route.service_name());
        let body = read_body(&parts.headers, body, limit).await?;
        if !body.iter().all(u8::is_ascii_whitespace) {
            check_json_content_type(&parts.headers)?;
        }
        body
    };

    let message = transcode::build_request(&route, &captures, parts.uri.query(), &body)
        .map_err(|err| HttpError::bad_request(err.to_string()))?;
    let grpc_request = grpc_request(&route, parts, &message)?;
    let response = match inner.oneshot(grpc_request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if route.is_server_streaming() {
        streaming_reply(Arc::clone(shared), route, response).await
    } else {
        unary_reply(shared, &route, response).await
    }
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    // Refuse early when the client announces an oversized body.
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => Err(HttpError::bad_request(format!(
            "could not read the request body: {err}"
        ))),
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), HttpError> {
    let unsupported = |what: &str| {
        HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!("{what}; send the body as content-type: application/json"),
        )
    };
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported("the request has a body but no content-type"));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("the content-type header is not valid text"))?;
    let mut params = value.split(';');
    let media_type = params.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(&format!(
            "content-type {media_type:?} is not supported"
        )));
    }
    for param in params {
        if let Some((name, charset)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let charset = charset.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(&format!(
                    "charset {charset:?} is not supported; use utf-8"
                )));
            }
        }
    }
    Ok(())
}

/// Request headers that describe the HTTP hop or its framing rather than
/// the call, so they must not become gRPC metadata.
fn is_forwarded_header(name: &HeaderName, connection_tokens: &[String]) -> bool {
    let name = name.as_str();
    !(matches!(
        name,
        "host"
            | "connection"
            | "content-length"
            | "content-type"
            | "content-encoding"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "accept"
            | "accept-encoding"
            | "keep-alive"
            | "upgrade"
            | "http2-settings"
            // The gateway frames the message itself, uncompressed, and
            // cannot decompress a reply, so compression must not be
            // negotiated on the client's behalf.
            | "grpc-encoding"
            | "grpc-accept-encoding"
    ) || name.starts_with("proxy-")
        || connection_tokens.iter().any(|t| t == name))
}

fn grpc_request(
    route: &Route,
    parts: http::request::Parts,
    message: &DynamicMessage,
) -> Result<Request<Body>, HttpError> {
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len()).map_err(|_| {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "request message is larger than 4 GiB",
        )
    })?;
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.extend_from_slice(&encoded);

    // Keep the authority the client used (URI for HTTP/2, Host for
    // HTTP/1.1) so layers in front of the gRPC service see the same one.
    let authority = parts.uri.authority().cloned().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
    });
    let mut uri = Uri::builder().path_and_query(route.grpc_path());
    if let Some(authority) = authority {
        uri = uri
            .scheme(parts.uri.scheme().cloned().unwrap_or(Scheme::HTTP))
            .authority(authority);
    }
    let uri = uri
        .build()
        .map_err(|err| HttpError::internal(format!("cannot build the grpc uri: {err}")))?;

    let connection_tokens: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if is_forwarded_header(name, &connection_tokens) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));

    let mut request = Request::new(Body::from(frame.freeze()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    // Everything earlier layers attached (the authenticated caller, the
    // peer address, ...) reaches the gRPC handler.
    *request.extensions_mut() = parts.extensions;
    Ok(request)
}

/// A gRPC status read from `grpc-status`, `grpc-message` and
/// `grpc-status-details-bin`.
#[derive(Debug, Clone)]
struct GrpcStatus {
    code: Code,
    message: String,
    details: Bytes,
}

impl GrpcStatus {
    fn from_headers(headers: &HeaderMap) -> Option<GrpcStatus> {
        let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
        // tonic percent-encodes grpc-message.
        let message = headers
            .get("grpc-message")
            .map(|v| {
                percent_encoding::percent_decode(v.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let details = headers
            .get("grpc-status-details-bin")
            .and_then(|v| decode_base64_header(v.as_bytes()))
            .unwrap_or_default();
        Some(GrpcStatus {
            code,
            message,
            details,
        })
    }

    /// Status when the server answered without gRPC framing: the mapping
    /// from the gRPC HTTP/2 spec.
    fn from_http_status(status: StatusCode) -> GrpcStatus {
        let code = match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        };
        GrpcStatus {
            code,
            message: format!("grpc service answered with http status {status} and no grpc-status"),
            details: Bytes::new(),
        }
    }
}

fn decode_base64_header(value: &[u8]) -> Option<Bytes> {
    use base64::Engine;
    const CONFIG: base64::engine::GeneralPurposeConfig =
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    const ENGINE: base64::engine::GeneralPurpose =
        base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    ENGINE.decode(value).ok().map(Bytes::from)
}

/// `google.rpc.Status`, for `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`: how long to wait before retrying a refused call.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// `grpc-status-details-bin` for a refusal that may be retried after `after`:
/// a `google.rpc.Status` with one `RetryInfo`.
pub fn retry_details(code: Code, message: &str, after: std::time::Duration) -> Bytes {
    let info = RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: after.as_secs().try_into().unwrap_or(i64::MAX),
            nanos: after.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE.to_owned(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
    .into()
}

/// A duration in the proto3 JSON mapping: seconds with 0, 3, 6 or 9 decimals.
fn duration_json(d: &prost_types::Duration) -> String {
    let (s, n) = (d.seconds, d.nanos);
    match n {
        0 => format!("{s}s"),
        n if n % 1_000_000 == 0 => format!("{s}.{:03}s", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{s}.{:06}s", n / 1_000),
        n => format!("{s}.{n:09}s"),
    }
}

/// The retry delay of a `RetryInfo` in encoded status details, if any.
fn retry_delay(raw: &[u8]) -> Option<std::time::Duration> {
    let status = RpcStatus::decode(raw).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(std::time::Duration::new(
        u64::try_from(delay.seconds).ok()?,
        u32::try_from(delay.nanos).ok()?,
    ))
}

/// Renders `google.rpc.Status.details` as proto3 JSON `Any`s. `RetryInfo` is
/// known without a pool; types the pool does not know are kept as
/// `{"@type": ..., "value": <base64>}` rather than dropped.
fn decode_details(pool: Option<&DescriptorPool>, raw: &[u8]) -> Vec<serde_json::Value> {
    if raw.is_empty() {
        return Vec::new();
    }
    let Ok(status) = RpcStatus::decode(raw) else {
        return Vec::new();
    };
    status
        .details
        .iter()
        .map(|any| {
            if any.type_url == RETRY_INFO_TYPE
                && let Ok(RetryInfo {
                    retry_delay: Some(d),
                }) = RetryInfo::decode(any.value.as_slice())
            {
                return serde_json::json!({"@type": any.type_url, "retryDelay": duration_json(&d)});
            }
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            let json = pool
                .and_then(|pool| pool.get_message_by_name(type_name))
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
                .and_then(|message| transcode::message_json(&message).ok());
            match json {
                Some(serde_json::Value::Object(mut map)) => {
                    map.insert("@type".into(), any.type_url.clone().into());
                    serde_json::Value::Object(map)
                }
                Some(other) => serde_json::json!({"@type": any.type_url, "value": other}),
                None => {
                    use base64::Engine;
                    serde_json::json!({
                        "@type": any.type_url,
                        "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                    })
                }
            }
        })
        .collect()
}

/// Takes one gRPC length-prefixed message off the front of `buf`, if it is
/// complete.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let flag = buf[0];
    let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() - 5 < length {
        return Ok(None);
    }
    if flag != 0 {
        return Err(format!(
            "grpc message has compression flag {flag}; the gateway only handles uncompressed messages"
        ));
    }
    buf.advance(5);
    Ok(Some(buf.split_to(length).freeze()))
}

async fn unary_reply(
    shared: &Shared,
    route: &Route,
    response: Response<Body>,
) -> Result<Response<Body>, HttpError> {
    let (parts, body) = response.into_parts();
    // Trailers-only response: the status is in the headers, no message.
    if let Some(status) = GrpcStatus::from_headers(&parts.headers) {
        return Err(if status.code == Code::Ok {
            HttpError::internal(format!("{} returned no message", route.grpc_path()))
        } else {
            HttpError::from_status(shared, &status)
        });
    }
    if parts.status != StatusCode::OK {
        return Err(HttpError::from_status(
            shared,
            &GrpcStatus::from_http_status(parts.status),
        ));
    }
    let collected = body
        .collect()
        .await
        .map_err(|err| HttpError::internal(format!("reading the grpc response failed: {err}")))?;
    let status = collected
        .trailers()
        .and_then(GrpcStatus::from_headers)
        .ok_or_else(|| HttpError::internal("grpc response ended without a grpc-status"))?;
    if status.code != Code::Ok {
        return Err(HttpError::from_status(shared, &status));
    }
    let mut data = BytesMut::from(collected.to_bytes());
    let payload = next_frame(&mut data)
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::internal(format!("{} returned no message", route.grpc_path())))?;
    if !data.is_empty() {
        return Err(HttpError::internal(format!(
            "{} returned more than one message",
            route.grpc_path()
        )));
    }
    let reply = DynamicMessage::decode(route.output(), payload)
        .map_err(|err| HttpError::internal(format!("cannot decode the grpc reply: {err}")))?;
    let json = transcode::reply_json(route, &reply)
        .map_err(|err| HttpError::internal(format!("cannot encode the reply as json: {err}")))?;
    let mut response = Response::new(Body::from(json));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Reads gRPC messages off a response body as they arrive.
struct GrpcReader {
    body: Body,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl GrpcReader {
    fn new(body: Body) -> Self {
        GrpcReader {
            body,
            buf: BytesMut::new(),
            trailers: None,
            finished: false,
        }
    }

    async fn next_message(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(message) = next_frame(&mut self.buf)? {
                return Ok(Some(message));
            }
            if self.finished {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("grpc response ended in the middle of a message".into())
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Some(Err(err)) => return Err(format!("reading the grpc response failed: {err}")),
                None => self.finished = true,
            }
        }
    }

    fn final_status(&self) -> GrpcStatus {
        self.trailers
            .as_ref()
            .and_then(GrpcStatus::from_headers)
            .unwrap_or_else(|| GrpcStatus {
                code: Code::Internal,
                message: "grpc response ended without a grpc-status".into(),
                details: Bytes::new(),
            })
    }
}

/// How streamed messages are written to the HTTP body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamFormat {
    /// The raw bytes of the `response_body` bytes field.
    RawBytes,
    /// One JSON document per line.
    NdJson,
}

impl StreamFormat {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            StreamFormat::RawBytes => "application/octet-stream",
            StreamFormat::NdJson => "application/x-ndjson",
        })
    }
}

/// Ends a streamed body abnormally, so the client sees a truncated
/// response instead of a clean end.
#[derive(Debug, thiserror::Error)]
#[error("grpc stream failed with code {code:?}: {message}")]
struct StreamAborted {
    code: Code,
    message: String,
}

fn encode_stream_item(
    route: &Route,
    format: StreamFormat,
    payload: Bytes,
) -> Result<Bytes, String> {
    let message = DynamicMessage::decode(route.output(), payload)
        .map_err(|err| format!("cannot decode a streamed grpc message: {err}"))?;
    match format {
        StreamFormat::RawBytes => Ok(transcode::reply_bytes(route, &message)),
        StreamFormat::NdJson => {
            let mut json = transcode::reply_json(route, &message)
                .map_err(|err| format!("cannot encode a streamed message as json: {err}"))?;
            json.push(b'\n');
            Ok(Bytes::from(json))
        }
    }
}

enum StreamState {
    First(Bytes, GrpcReader),
    Streaming(GrpcReader),
    Fail(StreamAborted),
    Done,
}

async fn streaming_reply(
    shared: Arc<Shared>,
    route: Arc<Route>,
    response: Response<Body>,
) -> Result<Response<Body>, HttpError> {
    let format = if route.streams_raw_bytes() {
        StreamFormat::RawBytes
    } else {
        StreamFormat::NdJson
    };
    let (parts, body) = response.into_parts();
    let ok_response = |body: Body| {
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, format.content_type());
        response
    };
    if let Some(status) = GrpcStatus::from_headers(&parts.headers) {
        return if status.code == Code::Ok {
            Ok(ok_response(Body::empty()))
        } else {
            Err(HttpError::from_status(&shared, &status))
        };
    }
    if parts.status != StatusCode::OK {
        return Err(HttpError::from_status(
            &shared,
            &GrpcStatus::from_http_status(parts.status),
        ));
    }

    // Wait for the first message so that an immediate failure still gets a
    // proper HTTP status and JSON error.
    let mut reader = GrpcReader::new(body);
    let Some(first) = reader.next_message().await.map_err(HttpError::internal)? else {
        let status = reader.final_status();
        return if status.code == Code::Ok {
            Ok(ok_response(Body::empty()))
        } else {
            Err(HttpError::from_status(&shared, &status))
        };
    };
    let first = encode_stream_item(&route, format, first).map_err(HttpError::internal)?;

    let stream_route = Arc::clone(&route);
    let stream = futures_util::stream::unfold(StreamState::First(first, reader), move |state| {
        let route = Arc::clone(&stream_route);
        let shared = Arc::clone(&shared);
        async move {
            let next = next_chunk(&shared, &route, format, state).await;
            if matches!(next, Some((Err(_), _))) {
                // hyper drops its unflushed output when a body fails;
                // yielding once lets it flush what was already produced
                // (the head, earlier chunks, the ndjson error line).
                tokio::task::yield_now().await;
            }
            next
        }
    });
    let mut response = ok_response(Body::from_stream(stream));
    if format == StreamFormat::RawBytes
        && let Some(length) = parts
            .headers
            .get("x-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(response)
}

async fn next_chunk(
    shared: &Shared,
    route: &Route,
    format: StreamFormat,
    state: StreamState,
) -> Option<(Result<Bytes, StreamAborted>, StreamState)> {
    let mut reader = match state {
        StreamState::First(chunk, reader) => {
            return Some((Ok(chunk), StreamState::Streaming(reader)));
        }
        StreamState::Streaming(reader) => reader,
        StreamState::Fail(error) => return Some((Err(error), StreamState::Done)),
        StreamState::Done => return None,
    };
    let abort = |message: String| {
        tracing::warn!(%message, "http/json gateway stream aborted");
        Some((
            Err(StreamAborted {
                code: Code::Internal,
                message,
            }),
            StreamState::Done,
        ))
    };
    loop {
        match reader.next_message().await {
            Ok(Some(payload)) => match encode_stream_item(route, format, payload) {
                // An empty chunk would be a no-op at best; skip it.
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Some((Ok(chunk), StreamState::Streaming(reader))),
                Err(message) => return abort(message),
            },
            Ok(None) => {
                let status = reader.final_status();
                if status.code == Code::Ok {
                    return None;
                }
                let aborted = StreamAborted {
                    code: status.code,
                    message: status.message.clone(),
                };
                return match format {
                    // The status line is gone, so say what happened in-band
                    // first, then end the body abnormally.
                    StreamFormat::NdJson => {
                        let mut line = br#"{"error":"#.to_vec();
                        line.extend_from_slice(&error_json(
                            status.code,
                            &status.message,
                            &decode_details(Some(&shared.pool), &status.details),
                        ));
                        line.extend_from_slice(b"}\n");
                        Some((Ok(Bytes::from(line)), StreamState::Fail(aborted)))
                    }
                    StreamFormat::RawBytes => Some((Err(aborted), StreamState::Done)),
                };
            }
            Err(message) => return abort(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body::Frame;
    use http_body_util::StreamBody;
    use prost_reflect::Value;
    use serde_json::json;

    use super::{rules::fixture::*, *};

    /// What the fake gRPC service saw.
    #[derive(Default)]
    struct Seen {
        method: Option<Method>,
        uri: Option<Uri>,
        headers: HeaderMap,
        marker: Option<&'static str>,
        frame: Bytes,
    }

    #[derive(Clone)]
    struct Marker(&'static str);

    fn frame(payload: &[u8], flag: u8) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(flag);
        out.put_u32(payload.len() as u32);
        out.extend_from_slice(payload);
        out.freeze()
    }

    fn grpc_body(frames: Vec<Bytes>, trailers: &[(&'static str, &'static str)]) -> Body {
        let mut map = HeaderMap::new();
        for (name, value) in trailers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        let mut items: Vec<Result<Frame<Bytes>, Infallible>> =
            frames.into_iter().map(|f| Ok(Frame::data(f))).collect();
        items.push(Ok(Frame::trailers(map)));
        Body::new(StreamBody::new(futures_util::stream::iter(items)))
    }

    fn grpc_response(body: Body) -> Response<Body> {
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }

    /// A stand-in for the tonic router: echoes `Item`s, and misbehaves on
    /// request by item name.
    async fn fake_grpc(seen: Arc<Mutex<Seen>>, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let data = body.collect().await.unwrap().to_bytes();
        let pool = pool(methods());
        let item = DynamicMessage::decode(
            pool.get_message_by_name("fixture.v1.Item").unwrap(),
            &data[5..],
        )
        .unwrap();
        let name = item
            .get_field_by_name("name")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        {
            let mut seen = seen.lock().unwrap();
            seen.method = Some(parts.method.clone());
            seen.uri = Some(parts.uri.clone());
            seen.headers = parts.headers.clone();
            seen.marker = parts.extensions.get::<Marker>().map(|m| m.0);
            seen.frame = data.clone();
        }
        match name.as_str() {
            "trailers-only" => {
                let mut response = grpc_response(Body::empty());
                let headers = response.headers_mut();
                headers.insert("grpc-status", HeaderValue::from_static("5"));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("item%20%22x%22%20not%20found%20%E2%9C%93"),
                );
                response
            }
            "trailer-error" => grpc_response(grpc_body(
                vec![],
                &[("grpc-status", "7"), ("grpc-message", "nope")],
            )),
            "no-status" => grpc_response(grpc_body(vec![frame(&data[5..], 0)], &[])),
            "compressed" => grpc_response(grpc_body(
                vec![frame(&data[5..], 1)],
                &[("grpc-status", "0")],
            )),
            "two" => grpc_response(grpc_body(
                vec![frame(&data[5..], 0), frame(&data[5..], 0)],
                &[("grpc-status", "0")],
            )),
            "garbage" => grpc_response(grpc_body(
                vec![frame(b"\xff\xff\xff", 0)],
                &[("grpc-status", "0")],
            )),
            "http-error" => {
                let mut response = Response::new(Body::from("upstream down"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
            _ if parts.uri.path().ends_with("/Stream") => {
                // Three chunks split awkwardly across body frames.
                let mut all = BytesMut::new();
                for chunk in [&b"ab"[..], b"", b"cde"] {
                    let mut message =
                        DynamicMessage::new(pool.get_message_by_name("fixture.v1.Chunk").unwrap());
                    message.set_field_by_name("data", Value::Bytes(Bytes::copy_from_slice(chunk)));
                    all.extend_from_slice(&frame(&message.encode_to_vec(), 0));
                }
                let all = all.freeze();
                let pieces = vec![all.slice(..3), all.slice(3..9), all.slice(9..)];
                let mut response = grpc_response(grpc_body(pieces, &[("grpc-status", "0")]));
                response
                    .headers_mut()
                    .insert("x-content-length", HeaderValue::from_static("5"));
                response
            }
            _ => grpc_response(grpc_body(
                vec![frame(&data[5..], 0)],
                &[("grpc-status", "0")],
            )),
        }
    }

    fn methods() -> Vec<M> {
        vec![
            method("Get", "Item", "Item").rule(get("/v1/items/{name}")),
            method("Create", "Item", "Item").rule(post("/v1/items", "*")),
            method("Stream", "Item", "Chunk")
                .rule(HttpRule {
                    response_body: "data".into(),
                    ..get("/v1/items/{name}/data")
                })
                .server_streaming(),
            method("Lines", "Item", "Item")
                .rule(get("/v1/items/{name}/lines"))
                .server_streaming(),
        ]
    }

    type Fake = tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible>;

    fn gateway() -> (Gateway<Fake>, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = Arc::clone(&seen);
        let inner = tower::util::BoxCloneService::new(tower::service_fn(move |request| {
            let seen = Arc::clone(&recorder);
            async move { Ok::<_, Infallible>(fake_grpc(seen, request).await) }
        }));
        let limits = BodyLimits::new(64).with_service(SERVICE, 128);
        (Gateway::new(&pool(methods()), inner, limits).unwrap(), seen)
    }

    async fn call(request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let (gateway, _) = gateway();
        let response = gateway.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    fn get_request(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn as_json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[tokio::test]
    async fn unary_call_is_framed_with_metadata_and_extensions() {
        let (gateway, seen) = gateway();
        let mut request = Request::get("/v1/items/a%20b?count=2")
            .header(header::HOST, "example.test")
            .header(header::ACCEPT, "application/json")
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "dropped")
            .header("x-keep", "kept")
            .header("grpc-accept-encoding", "gzip")
            .header("proxy-authorization", "secret")
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(Marker("caller"));
        let response = gateway.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v = as_json(&body);
        assert_eq!(v["name"], "a b");
        assert_eq!(v["count"], 2);
        assert_eq!(v["flag"], false);
        assert_eq!(v["big"], "0");

        let seen = seen.lock().unwrap();
        assert_eq!(seen.method, Some(Method::POST));
        let uri = seen.uri.as_ref().unwrap();
        assert_eq!(uri.path(), "/fixture.v1.ItemService/Get");
        assert_eq!(uri.authority().unwrap().as_str(), "example.test");
        assert_eq!(seen.headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(seen.headers[header::TE], "trailers");
        assert_eq!(seen.headers["x-keep"], "kept");
        for dropped in [
            "host",
            "accept",
            "connection",
            "x-hop",
            "grpc-accept-encoding",
            "proxy-authorization",
        ] {
            assert!(
                seen.headers.get(dropped).is_none(),
                "{dropped} was forwarded"
            );
        }
        assert_eq!(seen.marker, Some("caller"));
        assert_eq!(seen.frame[0], 0);
        let length =
            u32::from_be_bytes([seen.frame[1], seen.frame[2], seen.frame[3], seen.frame[4]]);
        assert_eq!(length as usize, seen.frame.len() - 5);
    }

    #[tokio::test]
    async fn grpc_failures_become_json_errors() {
        let cases = [
            ("trailers-only", 404, 5, "item \"x\" not found ✓"),
            ("trailer-error", 403, 7, "nope"),
            ("http-error", 503, 14, "http status 503"),
            ("no-status", 500, 13, "without a grpc-status"),
            ("compressed", 500, 13, "compression flag 1"),
            ("two", 500, 13, "more than one message"),
            ("garbage", 500, 13, "cannot decode the grpc reply"),
        ];
        for (name, status, code, message) in cases {
            let (got, headers, body) = call(get_request(&format!("/v1/items/{name}"))).await;
            assert_eq!(got.as_u16(), status, "{name}");
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            let v = as_json(&body);
            assert_eq!(v["code"], code, "{name}: {v}");
            assert!(
                v["message"].as_str().unwrap().contains(message),
                "{name}: {v}"
            );
            assert_eq!(v["details"], json!([]));
        }
    }

    #[tokio::test]
    async fn request_errors_are_answered_by_the_gateway() {
        let (status, headers, body) = call(get_request("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(as_json(&body)["code"], 5);
        assert_eq!(headers[CONTENT_TYPE], "application/json");

        let (status, headers, body) =
            call(Request::delete("/v1/items/x").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET");
        assert_eq!(as_json(&body)["code"], 12);

        let post = |body: &'static str, content_type: Option<&'static str>| {
            let mut builder = Request::post("/v1/items");
            if let Some(content_type) = content_type {
                builder = builder.header(CONTENT_TYPE, content_type);
            }
            builder.body(Body::from(body)).unwrap()
        };
        let (status, _, body) = call(post(r#"{"name":"n"}"#, Some("application/json"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(as_json(&body)["name"], "n");
        // An empty body needs no content type.
        let (status, _, _) = call(post("", None)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = call(post("{}", Some("application/xml"))).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(as_json(&body)["code"], 3);
        let (status, _, _) = call(post("{}", Some("application/json; charset=latin1"))).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _, body) = call(post(r#"{"nme":"n"}"#, Some("application/json"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(as_json(&body)["message"].as_str().unwrap().contains("nme"));
        // The per-service limit (128) applies, not the default (64).
        let padded = Box::leak(format!(r#"{{"name":"{}"}}"#, "n".repeat(100)).into_boxed_str());
        let (status, _, _) = call(post(padded, Some("application/json"))).await;
        assert_eq!(status, StatusCode::OK);
        let padded = Box::leak(format!(r#"{{"name":"{}"}}"#, "n".repeat(130)).into_boxed_str());
        let (status, _, body) = call(post(padded, Some("application/json"))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(as_json(&body)["code"], 8);
    }

    #[tokio::test]
    async fn server_streams_are_raw_bytes_or_ndjson() {
        let (status, headers, body) = call(get_request("/v1/items/x/data")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(headers[CONTENT_LENGTH], "5");
        assert_eq!(&body[..], b"abcde");

        let (status, headers, body) = call(get_request("/v1/items/x/lines")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/x-ndjson");
        assert!(body.ends_with(b"\n"));
        assert_eq!(as_json(body.strip_suffix(b"\n").unwrap())["name"], "x");

        let (status, _, body) = call(get_request("/v1/items/trailer-error/lines")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(as_json(&body)["code"], 7);
        let (status, _, body) = call(get_request("/v1/items/trailers-only/lines")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(as_json(&body)["code"], 5);
    }

    #[test]
    fn http_status_table_matches_grpc_gateway() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status_from_code(code).as_u16(), status, "{code:?}");
        }
    }

    #[tokio::test]
    async fn error_response_is_a_status_json() {
        let response = error_response(StatusCode::FORBIDDEN, Code::PermissionDenied, "no \"way\"");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"code":7,"message":"no \"way\"","details":[]}"#
        );
    }

    #[tokio::test]
    async fn a_retry_hint_becomes_retry_after() {
        let after = std::time::Duration::from_millis(2500);
        let details = retry_details(Code::ResourceExhausted, "slow down", after);
        assert_eq!(retry_delay(&details), Some(after));
        let status = tonic::Status::with_details(Code::ResourceExhausted, "slow down", details);
        let response = status_response(StatusCode::TOO_MANY_REQUESTS, &status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"code": 8, "message": "slow down", "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.500s"}
            ]})
        );
        let plain = status_response(
            StatusCode::BAD_REQUEST,
            &tonic::Status::invalid_argument("x"),
        );
        assert!(!plain.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn frames_are_split_only_when_complete() {
        let mut buf = BytesMut::from(&frame(b"hello", 0)[..]);
        buf.extend_from_slice(&[0, 0, 0]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap(), "hello");
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(next_frame(&mut buf).unwrap().unwrap(), "");
        let mut huge = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff, 1][..]);
        assert_eq!(next_frame(&mut huge).unwrap(), None);
        let mut compressed = BytesMut::from(&frame(b"x", 1)[..]);
        assert!(next_frame(&mut compressed).is_err());
    }

    #[test]
    fn status_details_render_known_and_unknown_types() {
        let pool = pool(methods());
        let mut inner = DynamicMessage::new(pool.get_message_by_name("fixture.v1.Inner").unwrap());
        inner.set_field_by_name("label", Value::String("why".into()));
        let status = RpcStatus {
            code: 3,
            message: "bad".into(),
            details: vec![
                prost_types::Any {
                    type_url: "type.googleapis.com/fixture.v1.Inner".into(),
                    value: inner.encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.Duration".into(),
                    value: prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }
                    .encode_to_vec(),
                },
                prost_types::Any {
                    type_url: "type.googleapis.com/nowhere.Thing".into(),
                    value: vec![0xff],
                },
            ],
        };
        assert_eq!(
            decode_details(Some(&pool), &status.encode_to_vec()),
            [
                json!({"@type": "type.googleapis.com/fixture.v1.Inner", "label": "why", "depth": 0}),
                json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"}),
                json!({"@type": "type.googleapis.com/nowhere.Thing", "value": "/w=="}),
            ]
        );
        assert!(decode_details(Some(&pool), b"\xff\xff").is_empty());
        // Unpadded base64, as tonic sends it.
        assert_eq!(decode_base64_header(b"AQID").unwrap(), &[1u8, 2, 3][..]);
        assert!(decode_base64_header(b"!!").is_none());
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert("grpc-message", HeaderValue::from_static("50%25%20off%0A"));
        let status = GrpcStatus::from_headers(&headers).unwrap();
        assert_eq!(status.code, Code::InvalidArgument);
        assert_eq!(status.message, "50% off\n");
        headers.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(
            GrpcStatus::from_headers(&headers).unwrap().code,
            Code::Unknown
        );
    }

    #[test]
    fn unknown_service_limit_is_rejected() {
        let err = Gateway::new(
            &pool(methods()),
            (),
            BodyLimits::default().with_service("fixture.v1.Nope", 1),
        )
        .unwrap_err();
        assert!(matches!(err, GatewayError::UnknownService(ref s) if s == "fixture.v1.Nope"));
    }
}
