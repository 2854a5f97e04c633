//! Bounds memory for large requests: parcel sends (up to the attachment limit
//! each, buffered whole because browsers cannot stream over gRPC-web) and
//! requests whose body is read to check a `Content-Digest` take a permit from
//! a semaphore before anything reads their body, and hold it until the
//! response is ready. More wait their turn.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use std::time::Duration;
use tonic::Status;

use super::Protocol;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// The gRPC path of the one RPC that takes large messages.
pub const SEND_PARCEL_PATH: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";
/// Its JSON gateway route (checked against the route table by a test).
pub const SEND_PARCEL_ROUTE: (Method, &str) = (Method::POST, "/v1/parcels");

/// Parcel sends, and any request with a `Content-Digest`: the authentication
/// layer reads such a body whole to check the digest before the handler runs.
fn is_upload<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path == SEND_PARCEL_PATH
        || (req.method() == SEND_PARCEL_ROUTE.0 && path == SEND_PARCEL_ROUTE.1)
        || req.headers().contains_key("content-digest")
}

/// How long an upload may wait for a permit, and how long it may then take.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    pub queue: Duration,
    pub complete: Duration,
}

#[derive(Clone)]
pub struct UploadGateLayer {
    permits: Arc<Semaphore>,
    limits: UploadLimits,
}

impl UploadGateLayer {
    pub fn new(max_concurrent: usize, limits: UploadLimits) -> Self {
        UploadGateLayer {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            limits,
        }
    }
}

impl<S> Layer<S> for UploadGateLayer {
    type Service = UploadGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UploadGate {
            inner,
            permits: self.permits.clone(),
            limits: self.limits,
        }
    }
}

#[derive(Clone)]
pub struct UploadGate<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limits: UploadLimits,
}

impl<S> Service<Request<Body>> for UploadGate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
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
        if !is_upload(&req) {
            return Box::pin(inner.call(req));
        }
        let (permits, limits) = (self.permits.clone(), self.limits);
        let protocol = Protocol::of(&req);
        Box::pin(async move {
            let Ok(Ok(_permit)) = tokio::time::timeout(limits.queue, permits.acquire_owned()).await
            else {
                let status = Status::unavailable("too many uploads in progress; retry shortly");
                return Ok(protocol.error_response(status, StatusCode::SERVICE_UNAVAILABLE));
            };
            // A slow upload must not hold its permit (and memory) for ever.
            match tokio::time::timeout(limits.complete, inner.call(req)).await {
                Ok(result) => result,
                Err(_) => {
                    let status = Status::deadline_exceeded(
                        "the upload took too long; send it faster or smaller",
                    );
                    Ok(protocol.error_response(status, StatusCode::REQUEST_TIMEOUT))
                }
            }
        })
    }
}
