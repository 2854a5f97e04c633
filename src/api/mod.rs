//! The edge: the only code that sees tonic, axum, prost or wire JSON.
//!
//! One service answers every request on the port. From the outside in:
//! HTTP rules and draining of refused bodies (`edge`) → client address →
//! CORS → per-address rate limit → authentication (RFC 9421 and the nonce,
//! inserts a `Caller`) → the upload gate → the covered body digest → a split by
//! content type: `application/grpc` to the tonic routes, `application/grpc-web`
//! to the same routes behind `GrpcWebLayer`, everything else to an axum router
//! with the plain HTTP pages and, as its fallback, the JSON gateway that
//! transcodes `/v1/...` requests into in-process calls of the same routes.

mod accounts;
pub mod auth;
mod backups;
pub mod edge;
mod exchanges;
mod framing;
pub mod gateway;
mod info;
pub mod limits;
mod observe;
pub mod openapi;
mod pages;
mod parcels;
pub mod peer;
pub mod replay;
pub mod uploads;

use std::collections::HashMap;

use axum::body::Body;
use http::{HeaderName, Method, Request, header};
use prost_reflect::DescriptorPool;
use tonic::{Status, service::Routes};
use tower::{ServiceBuilder, ServiceExt as _, util::BoxCloneSyncService};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    app::{AppState, HttpService},
    config::Limits,
    domain::Caller,
    pb,
};

pub use peer::{ClientIp, IpKey, PeerAddr};

/// The encoded descriptor set of `proto/`, with `google.api.http` options
/// intact: the source of reflection and of the gateway's route table.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/piqchat_descriptor.bin"));

/// Builds the whole HTTP service for one server instance.
pub fn service(state: &AppState) -> anyhow::Result<HttpService> {
    let limits = MessageLimits::new(&state.config.limits);
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)?;
    let grpc = grpc_router(state, &limits, &pool)?;

    let grpc_web: HttpService = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_response(|res: http::Response<tonic::body::Body>| res.map(Body::new))
            .layer(tonic_web::GrpcWebLayer::new())
            .map_response(|res: http::Response<Body>| res.map(tonic::body::Body::new))
            .service(grpc.clone()),
    );

    let gateway = gateway::Gateway::new(&pool, grpc.clone(), limits.gateway_limits())?;
    let openapi = openapi::document(gateway.routes(), &pool, env!("CARGO_PKG_VERSION"));
    let http = pages::router(&openapi, state).fallback_service(gateway);

    let dispatch = tower::service_fn(move |mut req: Request<Body>| {
        let protocol = Protocol::of(&req);
        req.extensions_mut().insert(protocol);
        let target = match protocol {
            Protocol::Grpc => Target::Router(grpc.clone()),
            Protocol::GrpcWeb => Target::Service(grpc_web.clone()),
            Protocol::Http => Target::Router(http.clone()),
        };
        async move {
            match target {
                Target::Router(r) => r.oneshot(req).await,
                Target::Service(s) => s.oneshot(req).await,
            }
        }
    });

    let dispatch = edge::answer_head(BoxCloneSyncService::new(dispatch));
    let verifier = auth::Verifier::new(state);
    let l = &state.config.limits;
    Ok(BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(edge::EdgeLayer::new(edge::Drain::new(
                &state.config.connections,
            )))
            .layer(peer::ClientIpLayer::new(
                state.config.trusted_proxies.clone(),
            ))
            .layer(cors())
            .layer(limits::LimitLayer::per_address(state.limits.clone()))
            // Signature and nonce first: only a signed upload draws from the
            // upload budget; then the gate; then the body digest, which reads the body.
            .layer(auth::AuthLayer::new(verifier))
            // The memory of MAX_CONCURRENT_UPLOADS bodies of the largest
            // size any route takes (a JSON body: twice the message).
            .layer(uploads::UploadGateLayer::new(
                l.max_concurrent_uploads as usize * limits.largest() * 2,
                uploads::UploadLimits {
                    queue: std::time::Duration::from_secs(30),
                    complete: std::time::Duration::from_secs(l.upload_timeout_secs.into()),
                    per_client: l.max_concurrent_uploads_per_client as usize,
                    min_rate: l.min_upload_bytes_per_second.into(),
                    grace: std::time::Duration::from_secs(l.upload_rate_grace_secs.into()),
                },
            ))
            .layer(auth::DigestLayer::new(
                limits.largest() * 2,
                state.metrics.clone(),
            ))
            .service(dispatch),
    ))
}

enum Target {
    Router(axum::Router),
    Service(HttpService),
}

/// Which of the three protocols a request speaks, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    Http,
}

impl Protocol {
    /// An error in this protocol: a trailers-only gRPC(-web) response, or the
    /// gateway's JSON error body with `http_status`.
    pub fn error_response(
        self,
        status: Status,
        http_status: http::StatusCode,
    ) -> http::Response<Body> {
        match self {
            Protocol::Http => gateway::status_response(http_status, &status),
            Protocol::Grpc | Protocol::GrpcWeb => {
                let mut res = status.into_http::<Body>();
                if self == Protocol::GrpcWeb {
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc-web+proto"),
                    );
                }
                res
            }
        }
    }

    pub fn of<B>(req: &Request<B>) -> Self {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if ct.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }
}

fn grpc_router(
    state: &AppState,
    limits: &MessageLimits,
    pool: &DescriptorPool,
) -> anyhow::Result<axum::Router> {
    use pb::{
        account_service_server::AccountServiceServer, backup_service_server::BackupServiceServer,
        exchange_service_server::ExchangeServiceServer, info_service_server::InfoServiceServer,
        parcel_service_server::ParcelServiceServer,
    };

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Everything is served by this one process: SERVING for "" and each name.
    for name in SERVICE_NAMES {
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            reporter
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await
        });
    }

    let api = Api(state.clone());
    let routes = Routes::builder()
        .add_service(
            InfoServiceServer::new(api.clone()).max_decoding_message_size(limits.get(INFO_SERVICE)),
        )
        .add_service(
            ExchangeServiceServer::new(api.clone())
                .max_decoding_message_size(limits.get(EXCHANGE_SERVICE)),
        )
        .add_service(
            ParcelServiceServer::new(api.clone())
                .max_decoding_message_size(limits.get(PARCEL_SERVICE)),
        )
        .add_service(
            AccountServiceServer::new(api.clone())
                .max_decoding_message_size(limits.get(ACCOUNT_SERVICE)),
        )
        .add_service(
            BackupServiceServer::new(api).max_decoding_message_size(limits.get(BACKUP_SERVICE)),
        )
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health)
        .clone()
        .routes();
    let known = pool_rpc_paths(pool).into_iter().chain(
        [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(str::to_owned),
    );
    Ok(routes
        .into_axum_router()
        .layer(framing::FramingLayer::new(limits.frame_limits()))
        .layer(limits::LimitLayer::per_rpc(state.limits.clone()))
        .layer(observe::ObserveLayer::new(
            state.metrics.clone(),
            state.config.request_log,
            known,
        )))
}

/// `/package.Service/Method` for every RPC in `pool`.
fn pool_rpc_paths(pool: &DescriptorPool) -> Vec<String> {
    pool.services()
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

const INFO_SERVICE: &str = "piqchat.inbox.v1.InfoService";
const EXCHANGE_SERVICE: &str = "piqchat.inbox.v1.ExchangeService";
const PARCEL_SERVICE: &str = "piqchat.inbox.v1.ParcelService";
const ACCOUNT_SERVICE: &str = "piqchat.inbox.v1.AccountService";
const BACKUP_SERVICE: &str = "piqchat.inbox.v1.BackupService";
const SERVICE_NAMES: [&str; 6] = [
    "",
    INFO_SERVICE,
    EXCHANGE_SERVICE,
    PARCEL_SERVICE,
    ACCOUNT_SERVICE,
    BACKUP_SERVICE,
];

/// The largest request message each service decodes, derived from the
/// configured limits: only the parcel service takes large messages. With
/// each, the sentence that names the limit in configured terms, for the
/// refusal of a larger message.
struct MessageLimits(HashMap<&'static str, (usize, String)>);

/// Room for field tags, ids and the other small fields of a message.
const ENVELOPE: usize = 16 * 1024;

impl MessageLimits {
    fn new(l: &Limits) -> Self {
        let n = |v: u32| v as usize;
        let per_recipient = n(l.max_content_bytes) + 128;
        let envelope = size_text(ENVELOPE);
        MessageLimits(HashMap::from([
            (
                INFO_SERVICE,
                (ENVELOPE, format!("the {envelope} InfoService accepts")),
            ),
            (
                EXCHANGE_SERVICE,
                (
                    2 * n(l.max_exchange_card_bytes) + ENVELOPE,
                    format!(
                        "two exchange cards of at most {} (MAX_EXCHANGE_CARD_BYTES) and {envelope}",
                        size_text(n(l.max_exchange_card_bytes))
                    ),
                ),
            ),
            (
                PARCEL_SERVICE,
                (
                    n(l.max_attachment_bytes) + n(l.max_recipients) * per_recipient + ENVELOPE,
                    format!(
                        "the attachment limit of {} (MAX_ATTACHMENT_BYTES) with {} recipients (MAX_RECIPIENTS) of {} content each (MAX_CONTENT_BYTES)",
                        size_text(n(l.max_attachment_bytes)),
                        l.max_recipients,
                        size_text(n(l.max_content_bytes))
                    ),
                ),
            ),
            (
                ACCOUNT_SERVICE,
                (
                    n(l.max_contacts) * 48 + ENVELOPE,
                    format!("a list of {} contacts (MAX_CONTACTS)", l.max_contacts),
                ),
            ),
            (
                BACKUP_SERVICE,
                (
                    n(l.max_backup_bytes) + ENVELOPE,
                    format!(
                        "the backup limit of {} (MAX_BACKUP_BYTES)",
                        size_text(n(l.max_backup_bytes))
                    ),
                ),
            ),
        ]))
    }

    fn largest(&self) -> usize {
        self.0
            .values()
            .map(|(max, _)| *max)
            .max()
            .unwrap_or(ENVELOPE)
    }

    fn get(&self, service: &str) -> usize {
        self.0.get(service).map_or(ENVELOPE, |(max, _)| *max)
    }

    /// JSON spells the same message larger: base64 for bytes (4/3) and
    /// escapes in strings; allow twice the binary size.
    fn gateway_limits(&self) -> gateway::BodyLimits {
        self.0.iter().fold(
            gateway::BodyLimits::new(ENVELOPE * 2),
            |limits, (service, (max, _))| limits.with_service(*service, max * 2),
        )
    }

    fn frame_limits(&self) -> framing::FrameLimits {
        framing::FrameLimits::new(self.0.clone(), ENVELOPE)
    }
}

/// A size as configured sizes are usually given: `20 MiB`, `64 KiB`.
fn size_text(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// CORS for the browser app on another origin: signatures, not cookies,
/// authenticate, so any origin may call; gRPC-web clients must be able to
/// read the status headers.
fn cors() -> CorsLayer {
    const ALLOW: [&str; 10] = [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "signature",
        "signature-input",
        "content-digest",
        "x-client-version",
        "connect-protocol-version",
        "accept",
    ];
    const EXPOSE: [&str; 6] = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-content-length",
        "content-length",
        "retry-after",
    ];
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ])
        .allow_headers(ALLOW.map(HeaderName::from_static))
        .expose_headers(EXPOSE.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(24 * 3600))
}

/// The handle every generated service trait is implemented on.
#[derive(Clone)]
pub(crate) struct Api(pub(crate) AppState);

/// Marks requests that arrived over the built-in TLS.
#[derive(Clone, Copy, Debug)]
pub struct Https;

/// The authority (host and port) a request was sent to, as received; the
/// authentication layer records it for every request.
#[derive(Clone, Debug)]
pub struct RequestAuthority(pub String);

/// The authority a request was sent to, if known.
pub(crate) fn request_authority<T>(req: &tonic::Request<T>) -> Option<&str> {
    req.extensions()
        .get::<RequestAuthority>()
        .map(|a| a.0.as_str())
}

/// The authenticated caller of a request, or UNAUTHENTICATED.
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().copied().ok_or_else(|| {
        Status::unauthenticated("this call needs a signed request (see docs/AUTH.md)")
    })
}

/// The `x-client-version` header, if present and printable.
pub(crate) fn client_version<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata()
        .get("x-client-version")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
}

/// Converts unix milliseconds to a protobuf timestamp.
pub(crate) fn timestamp(ms: crate::clock::Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
