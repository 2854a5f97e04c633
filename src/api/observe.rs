//! One log line and the request metrics per RPC call.
//!
//! The layer wraps the tonic routes, which every protocol reaches: gRPC
//! directly, gRPC-web behind `GrpcWebLayer`, JSON through the gateway's
//! in-process call. So the RPC name is the gRPC path and the outcome is the
//! `grpc-status` for all three, read when the response body ends (for a
//! download, that is after the last chunk).

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Body;
use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame};
use tonic::Code;
use tower::{Layer, Service};

use super::Protocol;
use crate::{
    config::RequestLog,
    domain::Caller,
    metrics::{Metrics, RequestLabels, RpcLabels},
};

/// With `LOG_REQUESTS=errors`, calls at least this long are logged too.
pub const SLOW_CALL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
    log: RequestLog,
    /// gRPC paths of the served RPCs; anything else is labelled "other" so
    /// that clients cannot grow the label set.
    known: Arc<HashSet<String>>,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics, log: RequestLog, known: impl IntoIterator<Item = String>) -> Self {
        ObserveLayer {
            metrics,
            log,
            known: Arc::new(known.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// What is known about a call before its outcome.
struct Call {
    metrics: Metrics,
    log: RequestLog,
    protocol: &'static str,
    rpc: String,
    caller: Option<String>,
    start: Instant,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.start.elapsed();
        let code_name = code_name(code);
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                protocol: self.protocol,
                rpc: self.rpc.clone(),
                code: code_name,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&RpcLabels {
                protocol: self.protocol,
                rpc: self.rpc.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if self.log == RequestLog::ErrorsAndSlow && code == Code::Ok && elapsed < SLOW_CALL {
            return;
        }
        tracing::info!(
            rpc = %self.rpc,
            protocol = self.protocol,
            code = code_name,
            ms = elapsed.as_secs_f64() * 1000.0,
            caller = self.caller.as_deref().unwrap_or("-"),
            "request"
        );
    }
}

/// The code's name as `Debug` writes it, without formatting a string per call.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

impl<S> Service<Request<Body>> for Observe<S>
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
        let path = req.uri().path();
        let call = Call {
            metrics: self.layer.metrics.clone(),
            log: self.layer.log,
            protocol: match req.extensions().get::<Protocol>() {
                Some(Protocol::GrpcWeb) => "grpc-web",
                Some(Protocol::Http) => "json",
                _ => "grpc",
            },
            rpc: if self.layer.known.contains(path) {
                path.to_owned()
            } else {
                "other".to_owned()
            },
            caller: req.extensions().get::<Caller>().map(|c| c.user_id.short()),
            start: Instant::now(),
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        inner
            .call(req)
            .map(move |result| {
                result.map(|response| {
                    // Trailers-only responses (errors, mostly) carry the status
                    // in the headers; otherwise it comes at the body's end.
                    if let Some(code) = grpc_code(response.headers()) {
                        call.finish(code);
                        return response;
                    }
                    response.map(|body| {
                        Body::new(ObservedBody {
                            inner: body,
                            call: Some(call),
                        })
                    })
                })
            })
            .boxed()
    }
}

struct ObservedBody {
    inner: Body,
    call: Option<Call>,
}

impl ObservedBody {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_code(trailers).unwrap_or(Code::Unknown);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Internal),
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    /// A body dropped before its end: the client went away.
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_those_of_debug() {
        for n in 0..17 {
            let code = Code::from_i32(n);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
