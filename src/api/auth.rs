//! Request authentication: one tower layer in front of all three protocols
//! verifies the RFC 9421 signature on the request *as received* (so
//! `@method`, `@authority` and `@path` are what the client signed) and puts a
//! [`Caller`] into the request extensions. Unsigned requests pass through
//! without one; handlers that need a caller answer UNAUTHENTICATED. A request
//! with a signature that does not check out stops here with 401, before any
//! other work. The scheme is specified in `docs/AUTH.md`.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256, Sha512};
use tonic::Status;
use tower::{Layer, Service};

use super::{
    Https, Protocol, RequestAuthority, gateway,
    replay::{NonceStore, Replay},
};
use crate::{
    app::AppState,
    clock::{Clock, Millis, SECOND},
    domain::{Caller, UserId},
    httpsig::{self, DigestAlg, PREFERRED_LABEL, ParsedSignature, RequestParts, SigError},
    metrics::Metrics,
};

/// When a refused nonce (full budget, key at its cap) is worth retrying.
const NONCE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest accepted `Signature-Input` / `Signature` header (all lines together).
const MAX_SIGNATURE_HEADER_BYTES: usize = 8 * 1024;
/// Nonces: at least 16 random bytes (22 base64url characters), at most 128.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 22..=128;

/// Checks signatures against this server's policy.
pub struct Verifier {
    /// The server's public key: the `tag` every signature must carry.
    tag: String,
    max_skew: Millis,
    clock: Clock,
    nonces: Arc<NonceStore>,
    metrics: Metrics,
}

/// Why a request was refused before it reached a handler.
#[derive(Debug)]
pub enum Rejection {
    /// 401 / UNAUTHENTICATED: a metric label and a short reason for the client.
    Unauthenticated(&'static str, String),
    /// 503 / UNAVAILABLE: the nonce budget of the caller's class of key is
    /// full, or the nonce could not be recorded.
    Unavailable(String),
    /// 429 / RESOURCE_EXHAUSTED: this key has too many live nonces.
    KeyLimit,
    /// 413 / RESOURCE_EXHAUSTED: a digest-covered body over the size limit.
    TooLarge,
}

/// A verified signature: who signed, its nonce and how long it could be
/// valid, and the body digests to check, if covered.
struct Verified {
    caller: Caller,
    nonce: String,
    forget_after: Millis,
    now: Millis,
    digests: Vec<(DigestAlg, Vec<u8>)>,
}

/// The body digests a verified signature covers: the digest layer checks
/// them once the upload gate let the request in.
#[derive(Clone, Debug)]
pub struct CoveredDigests(Vec<(DigestAlg, Vec<u8>)>);

impl Verifier {
    pub fn new(state: &AppState) -> Self {
        Verifier {
            metrics: state.metrics.clone(),
            tag: state.identity.public_key().to_owned(),
            max_skew: i64::from(state.config.signature_max_skew_secs) * SECOND,
            clock: state.clock.clone(),
            nonces: state.nonces.clone(),
        }
    }

    /// `Ok(None)` for an unsigned request.
    fn verify(&self, parts: &http::request::Parts) -> Result<Option<Verified>, Rejection> {
        let headers = &parts.headers;
        let has_input = headers.contains_key("signature-input");
        let has_sig = headers.contains_key("signature");
        if !has_input && !has_sig {
            return Ok(None);
        }
        let fail =
            |kind: &'static str, reason: &str| Rejection::Unauthenticated(kind, reason.to_owned());
        if !has_input || !has_sig {
            return Err(fail(
                "missing_header",
                "both signature-input and signature headers are required",
            ));
        }
        let size = |name: &str| headers.get_all(name).iter().map(|v| v.len()).sum::<usize>();
        if size("signature-input") > MAX_SIGNATURE_HEADER_BYTES
            || size("signature") > MAX_SIGNATURE_HEADER_BYTES
        {
            return Err(fail("too_large", "signature headers are too large"));
        }
        let sigs = httpsig::parse(headers).map_err(sig_error)?;
        // Every signature present must be well-formed, also those not verified.
        if sigs.iter().any(|s| s.signature.len() != 64) {
            return Err(sig_error(SigError::SignatureLength));
        }
        let sig = choose(sigs)?;
        let p = &sig.params;

        if p.alg.as_deref() != Some("ed25519") {
            return Err(fail("policy", "alg must be \"ed25519\""));
        }
        let keyid = p
            .keyid
            .as_deref()
            .ok_or_else(|| fail("policy", "keyid is required"))?;
        let user_id = UserId::parse(keyid).map_err(|_| {
            fail(
                "policy",
                "keyid must be a user id (43 characters of unpadded base64url)",
            )
        })?;
        if p.tag.as_deref() != Some(self.tag.as_str()) {
            return Err(fail(
                "wrong_server",
                "tag must be this server's public key (server_public_key of GetInfo): the signature was made for another server",
            ));
        }
        let nonce = p
            .nonce
            .as_deref()
            .ok_or_else(|| fail("policy", "nonce is required"))?;
        if !NONCE_LEN.contains(&nonce.len()) {
            return Err(fail(
                "policy",
                "nonce must be 22 to 128 characters (at least 16 random bytes)",
            ));
        }
        if !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(fail(
                "policy",
                "nonce must use only A-Z a-z 0-9 - _ (unpadded base64url or hex)",
            ));
        }
        let now = self.clock.now();
        let created = p
            .created
            .ok_or_else(|| fail("policy", "created is required"))?;
        let created_ms = created.saturating_mul(SECOND);
        if created_ms < now - self.max_skew {
            return Err(fail(
                "stale",
                "signature is too old (created is outside the allowed window)",
            ));
        }
        if created_ms > now + self.max_skew {
            return Err(fail(
                "stale",
                "signature is from the future (check the client's clock)",
            ));
        }
        let mut forget_after = created_ms + self.max_skew;
        if let Some(expires) = p.expires {
            let expires_ms = expires.saturating_mul(SECOND);
            if expires_ms <= now {
                return Err(fail("stale", "signature has expired"));
            }
            forget_after = forget_after.min(expires_ms);
        }
        for required in ["@method", "@authority", "@path"] {
            if !p.covers(required) {
                return Err(Rejection::Unauthenticated(
                    "policy",
                    format!("the signature must cover \"{required}\""),
                ));
            }
        }
        let query = parts.uri.query();
        if query.is_some() && !p.covers("@query") {
            return Err(fail(
                "policy",
                "the signature must cover \"@query\" when the request has a query",
            ));
        }

        let authority = authority_of(parts)
            .ok_or_else(|| fail("malformed", "the request has no authority (Host header)"))?;
        let request = RequestParts {
            method: parts.method.as_str(),
            authority,
            scheme: parts.uri.scheme_str().unwrap_or(
                if parts.extensions.get::<Https>().is_some() {
                    "https"
                } else {
                    "http"
                },
            ),
            path: parts.uri.path(),
            query,
            headers,
        };
        let base = httpsig::signature_base(&sig, &request).map_err(sig_error)?;
        httpsig::verify_ed25519(&base, &sig.signature, user_id.as_bytes()).map_err(sig_error)?;

        let digests = if p.covers("content-digest") {
            let value = headers
                .get("content-digest")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail("digest", "content-digest is covered but missing"))?;
            httpsig::parse_content_digest(value).map_err(sig_error)?
        } else {
            Vec::new()
        };
        Ok(Some(Verified {
            caller: Caller { user_id },
            nonce: nonce.to_owned(),
            forget_after,
            now,
            digests,
        }))
    }

    /// Uses up the nonce of a verified signature; `Ok` carries the future
    /// that resolves once the nonce is durable.
    async fn use_nonce(
        &self,
        v: &Verified,
    ) -> Result<BoxFuture<'static, crate::error::Result<()>>, Rejection> {
        let replay = self
            .nonces
            .check_and_insert(&v.caller.user_id, &v.nonce, v.forget_after, v.now)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "checking a nonce failed");
                Rejection::Unavailable(
                    "could not check the signature's nonce; retry shortly".into(),
                )
            })?;
        match replay {
            Replay::Fresh(durable) => Ok(durable),
            Replay::Replayed => Err(Rejection::Unauthenticated(
                "replayed",
                "nonce was already used (replayed request)".into(),
            )),
            Replay::KeyFull => Err(Rejection::KeyLimit),
            Replay::Full(class) => Err(Rejection::Unavailable(format!(
                "too many signed requests from {} keys; retry in a minute",
                class.name()
            ))),
        }
    }
}

/// HTTP/2 `:authority` (in the URI) or the HTTP/1.1 `Host` header.
fn authority_of(parts: &http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The signature to verify: the one labelled `piqchat`, else the only one.
fn choose(sigs: Vec<ParsedSignature>) -> Result<ParsedSignature, Rejection> {
    if sigs.len() == 1 {
        return Ok(sigs.into_iter().next().expect("one element"));
    }
    sigs.into_iter()
        .find(|s| s.label == PREFERRED_LABEL)
        .ok_or_else(|| {
            Rejection::Unauthenticated(
                "malformed",
                format!("several signatures and none labelled \"{PREFERRED_LABEL}\""),
            )
        })
}

fn sig_error(e: SigError) -> Rejection {
    let kind = match e {
        SigError::VerifyFailed | SigError::BadPublicKey | SigError::SignatureLength => {
            "bad_signature"
        }
        SigError::ContentDigest(_) => "digest",
        _ => "malformed",
    };
    Rejection::Unauthenticated(kind, e.to_string())
}

impl Rejection {
    /// The metric label of this refusal.
    fn kind(&self) -> &'static str {
        match self {
            Rejection::Unauthenticated(kind, _) => kind,
            Rejection::Unavailable(_) => "overloaded",
            Rejection::KeyLimit => "key_limit",
            Rejection::TooLarge => "too_large",
        }
    }

    fn status(&self) -> Status {
        match self {
            Rejection::Unauthenticated(_, reason) => Status::unauthenticated(reason.clone()),
            // A full nonce budget or key frees up as signatures age out of
            // the window: hint a retry within a minute.
            Rejection::Unavailable(reason) => Status::with_details(
                tonic::Code::Unavailable,
                reason.clone(),
                gateway::retry_details(tonic::Code::Unavailable, reason, NONCE_RETRY),
            ),
            Rejection::KeyLimit => Status::from(crate::error::Error::RateLimited {
                message: "too many signed requests with this key in the last minutes; slow down and retry shortly".into(),
                retry_after: NONCE_RETRY,
            }),
            Rejection::TooLarge => {
                Status::resource_exhausted("request body is larger than any call accepts")
            }
        }
    }

    /// The refusal in the caller's protocol.
    fn into_response(self, protocol: Protocol) -> Response<Body> {
        let http_status = match self {
            Rejection::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => gateway::http_status_from_code(self.status().code()),
        };
        protocol.error_response(self.status(), http_status)
    }
}

fn refuse_now(
    metrics: &Metrics,
    protocol: Protocol,
    uri: &http::Uri,
    rejection: Rejection,
) -> Response<Body> {
    metrics.auth_failure(rejection.kind());
    tracing::info!(path = %redacted_path(uri.path()), reason = ?rejection, "request refused");
    rejection.into_response(protocol)
}

/// The path for logs: segments that may be ids or tokens (long ones) are cut
/// to their first 6 characters; the query is never logged.
fn redacted_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.len() > 16 && !segment.contains('.') {
                let cut: String = segment.chars().take(6).collect();
                format!("{cut}…")
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The tower layer that runs a [`Verifier`] on every request.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        AuthLayer {
            verifier: Arc::new(verifier),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S> Service<Request<Body>> for Auth<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let protocol = Protocol::of(&req);
        let (mut parts, body) = req.into_parts();
        if let Some(authority) = authority_of(&parts) {
            let authority = RequestAuthority(authority.to_owned());
            parts.extensions.insert(authority);
        }
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verified = match self.verifier.verify(&parts) {
            Ok(None) => return Box::pin(inner.call(Request::from_parts(parts, body))),
            Ok(Some(verified)) => verified,
            Err(rejection) => {
                let response = refuse_now(&self.verifier.metrics, protocol, &parts.uri, rejection);
                return Box::pin(async move { Ok(response) });
            }
        };
        let verifier = self.verifier.clone();
        Box::pin(async move {
            // Only a verified signature may use up a nonce.
            let durable = match verifier.use_nonce(&verified).await {
                Ok(durable) => durable,
                Err(rejection) => {
                    return Ok(refuse_now(
                        &verifier.metrics,
                        protocol,
                        &parts.uri,
                        rejection,
                    ));
                }
            };
            parts.extensions.insert(verified.caller);
            if !verified.digests.is_empty() {
                parts.extensions.insert(CoveredDigests(verified.digests));
            }
            // The request runs while its nonce commits; the response waits
            // for the commit, so no acknowledged request can be replayed
            // after a crash.
            let (response, durable) =
                futures_util::future::join(inner.call(Request::from_parts(parts, body)), durable)
                    .await;
            // The nonce could not be written (a full or failing disk): the
            // memory front still refuses its replays until a restart. The
            // handler's own writes went to the same disk after it, so they
            // failed too and its answer says so; refusing a read here would
            // take the inbox away on a full disk, and answering an error
            // for a write that did commit would invite a duplicate.
            if let Err(e) = durable {
                tracing::warn!(error = %e, "recording a nonce failed; it is kept in memory only");
            }
            response
        })
    }
}

/// Checks a Content-Digest that a verified signature covers, before the
/// handler sees the body; sits behind the upload gate, since it reads the
/// body whole (bounded by the largest request any route accepts). Only
/// clients that opt into the digest pay for it.
#[derive(Clone)]
pub struct DigestLayer {
    max_body: usize,
    metrics: Metrics,
}

impl DigestLayer {
    pub fn new(max_body: usize, metrics: Metrics) -> Self {
        DigestLayer { max_body, metrics }
    }
}

impl<S> Layer<S> for DigestLayer {
    type Service = DigestCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DigestCheck {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct DigestCheck<S> {
    inner: S,
    layer: DigestLayer,
}

impl<S> Service<Request<Body>> for DigestCheck<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let protocol = Protocol::of(&req);
        let (mut parts, body) = req.into_parts();
        let Some(CoveredDigests(digests)) = parts.extensions.remove::<CoveredDigests>() else {
            return Box::pin(inner.call(Request::from_parts(parts, body)));
        };
        let DigestLayer { max_body, metrics } = self.layer.clone();
        Box::pin(async move {
            let bytes = match Limited::new(body, max_body).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(refuse_now(
                        &metrics,
                        protocol,
                        &parts.uri,
                        Rejection::TooLarge,
                    ));
                }
            };
            let matches = digests.iter().all(|(alg, expected)| {
                let actual = match alg {
                    DigestAlg::Sha256 => Sha256::digest(&bytes).to_vec(),
                    DigestAlg::Sha512 => Sha512::digest(&bytes).to_vec(),
                };
                &actual == expected
            });
            if !matches {
                let rejection = Rejection::Unauthenticated(
                    "digest",
                    "content-digest does not match the body".into(),
                );
                return Ok(refuse_now(&metrics, protocol, &parts.uri, rejection));
            }
            inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_path;

    #[test]
    fn logged_paths_carry_no_full_ids() {
        let id = "BCytIJplx__UQ_OUNuBGdBIYRr4hD8RWtuf7DyXs3-M";
        assert_eq!(
            redacted_path(&format!("/v1/recipients/{id}/acceptance")),
            "/v1/recipients/BCytIJ…/acceptance"
        );
        assert_eq!(
            redacted_path("/v1/exchanges/3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f:accept"),
            "/v1/exchanges/3f2b8c…"
        );
        assert_eq!(
            redacted_path("/piqchat.inbox.v1.ParcelService/SendParcel"),
            "/piqchat.inbox.v1.ParcelService/SendParcel"
        );
    }
}
