//! A signing client: what a server-to-server client or a tool in Rust uses to
//! talk to an inbox server. Every request is signed as `docs/AUTH.md` says;
//! nothing else in the project implements signing.
//!
//! - [`UserKey`]: an Ed25519 key pair and its user id.
//! - [`RequestSigner`]: adds `Signature-Input` / `Signature` to an HTTP request.
//! - [`SigningLayer`]: a tower layer that signs every request, e.g. around a
//!   tonic [`Channel`] for gRPC ([`connect`]).
//! - [`HttpClient`]: HTTP/1.1 calls for gRPC-web (unary and server streaming)
//!   and the JSON gateway.
//! - [`InviteLink`], [`server_key`]: what a client needs before its first
//!   signed call.
//!
//! Built alone with `--no-default-features --features client`. A send to a
//! user of any server (the README's example; `examples/federation.rs` has
//! the whole flow):
//!
//! ```no_run
//! use piqchat_inbox::client::{self, RequestSigner, UserKey};
//! use piqchat_inbox::pb::{ParcelRecipient, SendParcelRequest};
//! use piqchat_inbox::pb::parcel_service_client::ParcelServiceClient;
//!
//! # async fn send(recipient_id: String, image: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! let key = UserKey::from_base64url(&std::env::var("PIQCHAT_KEY")?)?;
//! let server = "http://127.0.0.1:8080"; // the recipient's server
//! // Signatures name the server's key (`tag`): valid there and nowhere else.
//! let signer = RequestSigner::new(key, client::server_key(server).await?);
//! let mut parcels = ParcelServiceClient::new(client::connect(server, signer).await?);
//! let sent = parcels
//!     .send_parcel(SendParcelRequest {
//!         r#type: "MEDIA".into(),
//!         recipients: vec![ParcelRecipient { user_id: recipient_id, content: "…".into() }],
//!         attachment: Some(image), // encrypted by the app; the server never reads it
//!     })
//!     .await?
//!     .into_inner();
//! println!("delivered to {:?}", sent.delivered_recipient_ids);
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tonic::{Code, Status, transport::Channel};
use tower::{Layer, Service};

use crate::{
    clock::Clock,
    httpsig::{self, ComponentId, PREFERRED_LABEL, RequestParts, SigError, SignatureParams},
    ids::{ExchangeToken, HOST_PLACEHOLDER, UserId},
    pb,
    random::random_bytes,
};

/// An Ed25519 key pair: the secret is the 32-byte seed.
#[derive(Clone)]
pub struct UserKey {
    secret: [u8; 32],
    user_id: UserId,
}

impl UserKey {
    pub fn generate() -> Self {
        Self::from_secret(random_bytes::<32>())
    }

    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = httpsig::public_key_from_secret(&secret);
        UserKey {
            secret,
            user_id: UserId::from_bytes(public),
        }
    }

    /// Parses a secret key written as unpadded base64url (43 characters).
    pub fn from_base64url(text: &str) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| "secret key must be unpadded base64url".to_owned())?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "secret key must be 32 bytes".to_owned())?;
        Ok(Self::from_secret(secret))
    }

    pub fn user_id(&self) -> UserId {
        self.user_id
    }

    pub fn secret_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret)
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Signs requests for one server with one key.
#[derive(Clone)]
pub struct RequestSigner {
    key: Arc<UserKey>,
    /// The target server's public key (GetInfo's `server_public_key`).
    server_tag: String,
    clock: Clock,
    extra_components: Vec<String>,
}

impl RequestSigner {
    pub fn new(key: UserKey, server_tag: impl Into<String>) -> Self {
        RequestSigner {
            key: Arc::new(key),
            server_tag: server_tag.into(),
            clock: Clock::system(),
            extra_components: Vec::new(),
        }
    }

    /// Uses `clock` for `created` (tests move time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Also covers these request headers when present (e.g. `x-client-version`).
    pub fn covering(mut self, headers: &[&str]) -> Self {
        self.extra_components = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    pub fn key(&self) -> &UserKey {
        &self.key
    }

    pub fn user_id(&self) -> UserId {
        self.key.user_id
    }

    /// The parameters of a fresh signature: now, a new 128-bit nonce.
    pub fn params(
        &self,
        has_query: bool,
        headers: &HeaderMap,
    ) -> Result<SignatureParams, SigError> {
        let mut names = vec!["@method", "@authority", "@path"];
        if has_query {
            names.push("@query");
        }
        for h in &self.extra_components {
            if headers.contains_key(h.as_str()) {
                names.push(h);
            }
        }
        Ok(SignatureParams {
            components: names
                .into_iter()
                .map(ComponentId::parse)
                .collect::<Result<_, _>>()?,
            created: Some(self.clock.now().div_euclid(1000)),
            expires: None,
            nonce: Some(URL_SAFE_NO_PAD.encode(random_bytes::<16>())),
            alg: Some("ed25519".into()),
            keyid: Some(self.key.user_id.to_string()),
            tag: Some(self.server_tag.clone()),
        })
    }

    /// Computes the two header values for a request to `uri` (absolute, or
    /// origin-form with the authority taken from the `Host` header).
    pub fn sign(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(String, String), SigError> {
        self.sign_with(
            &self.params(uri.query().is_some(), headers)?,
            method,
            uri,
            headers,
        )
    }

    /// Like [`sign`](Self::sign) with given parameters (tests use this to
    /// make deliberately wrong signatures).
    pub fn sign_with(
        &self,
        params: &SignatureParams,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(String, String), SigError> {
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .ok_or(SigError::BadInput("the request has no authority"))?;
        let parts = RequestParts {
            method: method.as_str(),
            authority,
            scheme: uri.scheme_str().unwrap_or("http"),
            path: uri.path(),
            query: uri.query(),
            headers,
        };
        httpsig::sign_ed25519(PREFERRED_LABEL, params, &parts, &self.key.secret)
    }

    /// Adds the signature headers to `req`.
    pub fn sign_request<B>(&self, req: &mut Request<B>) -> Result<(), SigError> {
        let (input, signature) = self.sign(req.method(), req.uri(), req.headers())?;
        let headers = req.headers_mut();
        headers.insert(
            "signature-input",
            HeaderValue::try_from(input).map_err(|_| SigError::BadInput("header value"))?,
        );
        headers.insert(
            "signature",
            HeaderValue::try_from(signature).map_err(|_| SigError::BadInput("header value"))?,
        );
        Ok(())
    }
}

/// Signs every request passing through.
#[derive(Clone)]
pub struct SigningLayer {
    signer: RequestSigner,
}

impl SigningLayer {
    pub fn new(signer: RequestSigner) -> Self {
        SigningLayer { signer }
    }
}

impl<S> Layer<S> for SigningLayer {
    type Service = Signing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Signing {
            inner,
            signer: self.signer.clone(),
            origin: None,
        }
    }
}

/// The service made by [`SigningLayer`].
#[derive(Clone)]
pub struct Signing<S> {
    inner: S,
    signer: RequestSigner,
    /// Scheme and authority for requests that have none: generated tonic
    /// clients send origin-form URIs and let the channel add the origin.
    origin: Option<Uri>,
}

impl<S> Signing<S> {
    /// Fills in `origin` (e.g. `http://127.0.0.1:8080`) for requests whose
    /// URI has no authority, so that `@authority` can be signed.
    pub fn with_origin(mut self, origin: Uri) -> Self {
        self.origin = Some(origin);
        self
    }
}

impl<S, B> Service<Request<B>> for Signing<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let (None, Some(origin)) = (req.uri().authority(), &self.origin) {
            let mut parts = origin.clone().into_parts();
            parts.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        // Signing fails only for a request without an authority, which a
        // tonic channel never sends; the server then refuses it as unsigned.
        if let Err(e) = self.signer.sign_request(&mut req) {
            tracing::warn!(error = %e, "could not sign request");
        }
        self.inner.call(req)
    }
}

/// A gRPC channel that signs every call.
pub type SignedChannel = Signing<Channel>;

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server URL {0:?}: expected an absolute URL such as http://127.0.0.1:8080")]
    BadUrl(String),
    /// The channel speaks cleartext HTTP/2 only (tonic's TLS features are
    /// off): reach a TLS server through a local TLS proxy or tunnel.
    #[error("{0}: this client connects over cleartext HTTP/2 only (http://), not TLS")]
    NoTls(String),
    #[error("could not connect to {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, ConnectError> {
    let endpoint = Channel::from_shared(url.trim_end_matches('/').to_owned())
        .map_err(|_| ConnectError::BadUrl(url.to_owned()))?;
    match endpoint.uri().scheme_str() {
        _ if endpoint.uri().authority().is_none() => Err(ConnectError::BadUrl(url.to_owned())),
        Some("http") => Ok(endpoint),
        Some("https") => Err(ConnectError::NoTls(url.to_owned())),
        _ => Err(ConnectError::BadUrl(url.to_owned())),
    }
}

async fn open(endpoint: tonic::transport::Endpoint) -> Result<Channel, ConnectError> {
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Transport {
            url: endpoint.uri().to_string(),
            source,
        })
}

/// Connects to `url` (e.g. `http://127.0.0.1:8080`) over HTTP/2.
pub async fn connect(url: &str, signer: RequestSigner) -> Result<SignedChannel, ConnectError> {
    let endpoint = endpoint(url)?;
    let origin = endpoint.uri().clone();
    let channel = open(endpoint).await?;
    Ok(SigningLayer::new(signer).layer(channel).with_origin(origin))
}

/// An unsigned channel, for public calls.
pub async fn connect_anonymous(url: &str) -> Result<Channel, ConnectError> {
    open(endpoint(url)?).await
}

/// The server's public key (GetInfo's `server_public_key`): the `tag` that
/// signatures for that server must carry.
pub async fn server_key(url: &str) -> Result<String, Status> {
    let channel = connect_anonymous(url)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let info = pb::info_service_client::InfoServiceClient::new(channel)
        .get_info(pb::GetInfoRequest {})
        .await?
        .into_inner();
    Ok(info.server_public_key)
}

/// An invite link: `https://piqchat.net/#?exchange-url=<accept URL>&exchange-key=<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// The accept URL as the link gives it (maybe with the placeholder host).
    pub exchange_url: String,
    /// The app's key for the exchange's cards; empty for a sign-up invite.
    pub exchange_key: String,
    /// The exchange token, the credential of AcceptExchange.
    pub token: ExchangeToken,
    /// Whether the accept URL names [`HOST_PLACEHOLDER`] (a sign-up invite,
    /// accepted on whichever server the user chooses).
    pub needs_server: bool,
}

impl InviteLink {
    /// Parses a link as the server prints it; the error says what is wrong.
    pub fn parse(link: &str) -> Result<Self, String> {
        let link = link.trim();
        let (_, fragment) = link
            .split_once('#')
            .ok_or("the invite link has no #?exchange-url=… fragment")?;
        let mut exchange_url = None;
        let mut exchange_key = None;
        for pair in fragment.trim_start_matches('?').split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // The app reads these with URLSearchParams: `+` is a space.
            let value = value.replace('+', " ");
            let value = percent_encoding::percent_decode_str(&value)
                .decode_utf8()
                .map_err(|_| format!("the invite link's {name} is not UTF-8"))?
                .into_owned();
            match name {
                "exchange-url" => exchange_url = Some(value),
                "exchange-key" => exchange_key = Some(value),
                _ => {}
            }
        }
        let exchange_url = exchange_url.ok_or("the invite link has no exchange-url")?;
        let exchange_key = exchange_key.ok_or("the invite link has no exchange-key")?;
        let accept: Uri = exchange_url
            .parse()
            .map_err(|_| "the invite link's exchange-url is not a URL".to_owned())?;
        let not_accept_url = || {
            format!(
                "the exchange-url is not an accept URL (…/v1/exchanges/<token>:accept): {exchange_url}"
            )
        };
        let token = accept
            .path()
            .rsplit_once("/v1/exchanges/")
            .and_then(|(_, rest)| rest.strip_suffix(":accept"))
            .ok_or_else(not_accept_url)?;
        let token = ExchangeToken::parse(token).map_err(|e| e.to_string())?;
        Ok(InviteLink {
            needs_server: accept.host() == Some(HOST_PLACEHOLDER),
            exchange_url,
            exchange_key,
            token,
        })
    }
}

/// HTTP/1.1 client for gRPC-web and the JSON gateway, signing when it has a
/// signer.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    signer: Option<RequestSigner>,
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl HttpClient {
    /// `base` is the server's URL without a trailing slash.
    pub fn new(base: &str, signer: Option<RequestSigner>) -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            signer,
        }
    }

    pub fn signer(&self) -> Option<&RequestSigner> {
        self.signer.as_ref()
    }

    /// Builds a request to `path_and_query`, signed if this client signs.
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .body(Full::new(body))
            .expect("valid request parts");
        req.headers_mut().extend(headers);
        if let Some(signer) = &self.signer
            && let Err(e) = signer.sign_request(&mut req)
        {
            tracing::warn!(error = %e, "could not sign request");
        }
        req
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<HttpReply, Status> {
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| Status::unavailable(format!("request failed: {e}")))?;
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Status::unavailable(format!("reading the response failed: {e}")))?
            .to_bytes();
        Ok(HttpReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A JSON gateway call; `body` is sent as `application/json` when given.
    pub async fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<HttpReply, Status> {
        let mut headers = HeaderMap::new();
        let bytes = match body {
            Some(v) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Bytes::from(serde_json::to_vec(v).expect("JSON values serialise"))
            }
            None => Bytes::new(),
        };
        self.send(self.request(method, path_and_query, headers, bytes))
            .await
    }

    /// A unary gRPC-web call (binary `application/grpc-web+proto`), as a
    /// browser makes it.
    pub async fn grpc_web_unary<Req, Res>(&self, path: &str, message: &Req) -> Result<Res, Status>
    where
        Req: prost::Message,
        Res: prost::Message + Default,
    {
        let mut messages = self.grpc_web_call(path, message).await?;
        if messages.len() != 1 {
            return Err(Status::internal(format!(
                "expected one response message, got {}",
                messages.len()
            )));
        }
        Ok(messages.remove(0))
    }

    /// A server-streaming gRPC-web call; returns every message.
    pub async fn grpc_web_call<Req, Res>(
        &self,
        path: &str,
        message: &Req,
    ) -> Result<Vec<Res>, Status>
    where
        Req: prost::Message,
        Res: prost::Message + Default,
    {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
        headers.insert("x-grpc-web", HeaderValue::from_static("1"));
        let reply = self
            .send(self.request(
                Method::POST,
                path,
                headers,
                grpc_frame(0, &message.encode_to_vec()),
            ))
            .await?;
        decode_grpc_web(reply)
    }
}

/// A gRPC length-prefixed frame.
pub fn grpc_frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(flags);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Splits a gRPC-web response into messages and checks its status, which
/// comes in the headers (trailers-only) or in a trailer frame.
fn decode_grpc_web<Res: prost::Message + Default>(reply: HttpReply) -> Result<Vec<Res>, Status> {
    if reply.status != http::StatusCode::OK {
        return Err(Status::unknown(format!("HTTP status {}", reply.status)));
    }
    let mut trailers = reply.headers.clone();
    let mut body = reply.body;
    let mut messages = Vec::new();
    while body.has_remaining() {
        if body.len() < 5 {
            return Err(Status::internal("truncated gRPC-web frame"));
        }
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err(Status::internal("truncated gRPC-web frame"));
        }
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            for line in String::from_utf8_lossy(&payload).split("\r\n") {
                if let Some((name, value)) = line.split_once(':')
                    && let (Ok(n), Ok(v)) = (
                        http::HeaderName::try_from(name.trim().to_ascii_lowercase()),
                        HeaderValue::try_from(value.trim()),
                    )
                {
                    trailers.insert(n, v);
                }
            }
        } else {
            messages.push(
                Res::decode(payload).map_err(|e| Status::internal(format!("bad message: {e}")))?,
            );
        }
    }
    let code = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or_else(|| Status::internal("gRPC-web response without grpc-status"))?;
    if code != 0 {
        let message = trailers
            .get("grpc-message")
            .map(|v| {
                percent_encoding::percent_decode(v.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        return Err(Status::new(Code::from_i32(code), message));
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f";

    #[test]
    fn invite_links_parse_like_the_app() {
        let sign_up = format!(
            "https://piqchat.net/#?exchange-url=https%3A%2F%2Finput_inbox_server_host%2Fv1%2Fexchanges%2F{TOKEN}%3Aaccept&exchange-key="
        );
        let link = InviteLink::parse(&sign_up).unwrap();
        assert_eq!(link.token.to_string(), TOKEN);
        assert!(link.needs_server);
        assert_eq!(link.exchange_key, "");
        assert_eq!(
            link.exchange_url,
            format!("https://input_inbox_server_host/v1/exchanges/{TOKEN}:accept")
        );

        let friend = format!(
            "https://piqchat.net/#?exchange-url=https%3A%2F%2Finbox.example.org%2Fv1%2Fexchanges%2F{TOKEN}%3Aaccept&exchange-key=k%2By"
        );
        let link = InviteLink::parse(&friend).unwrap();
        assert!(!link.needs_server);
        assert_eq!(link.exchange_key, "k+y");
    }

    #[test]
    fn bad_invite_links_say_what_is_wrong() {
        for (link, says) in [
            ("https://piqchat.net/", "fragment"),
            ("https://piqchat.net/#?exchange-key=", "no exchange-url"),
            (
                "https://piqchat.net/#?exchange-url=https%3A%2F%2Fa.example%2Fv1%2Fexchanges%2Fnope%3Aaccept&exchange-key=",
                "invalid exchange token",
            ),
            (
                "https://piqchat.net/#?exchange-url=https%3A%2F%2Fa.example%2Fother&exchange-key=",
                "not an accept URL",
            ),
            (
                "https://piqchat.net/#?exchange-url=https%3A%2F%2Fa.example%2Fv1%2Fexchanges%2Fx%3Aaccept",
                "no exchange-key",
            ),
        ] {
            let err = InviteLink::parse(link).unwrap_err();
            assert!(err.contains(says), "{link}: {err}");
        }
    }

    #[tokio::test]
    async fn bad_server_urls_are_errors_not_panics() {
        for url in ["", "not a url", "127.0.0.1:8080", "ftp://127.0.0.1/"] {
            let err = connect_anonymous(url).await.unwrap_err();
            assert!(matches!(err, ConnectError::BadUrl(_)), "{url}: {err}");
        }
        let err = connect_anonymous("https://inbox.example.org")
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::NoTls(_)), "{err}");
    }
}
